//! What a Subscription asks for, read from the R4 Subscriptions Backport form: the
//! topic (`Subscription.criteria`), its filters (the `backport-filter-criteria`
//! extension), the channel and what each notification carries. Pure: no I/O.

use serde_json::{Value, json};

use crate::fhir::FhirError;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
const SDOHCC_TOPICS: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic";

/// The topics offered, with the resource type each is about and the filters it takes
/// (the IG writes the ServiceRequest topic `Servicerequest`; both spellings are taken).
const TOPICS: &[(&str, &str, &[&str])] = &[
    (
        "Task",
        "Task",
        &["owner", "requester", "status", "patient", "focus"],
    ),
    (
        "ServiceRequest",
        "ServiceRequest",
        &["requester", "performer", "status", "patient"],
    ),
    (
        "Servicerequest",
        "ServiceRequest",
        &["requester", "performer", "status", "patient"],
    ),
];

/// The topic canonicals, for the CapabilityStatement.
pub fn topic_urls() -> Vec<String> {
    TOPICS
        .iter()
        .map(|(name, _, _)| format!("{SDOHCC_TOPICS}/{name}"))
        .collect()
}

/// Headers a subscription may not set: they are the request's own.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    RestHook,
    Email,
}

impl Channel {
    pub fn code(self) -> &'static str {
        match self {
            Channel::RestHook => "rest-hook",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "rest-hook" => Some(Channel::RestHook),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    pub fn code(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }

    pub fn parse(s: &str) -> Option<Content> {
        match s {
            "empty" => Some(Content::Empty),
            "id-only" => Some(Content::IdOnly),
            "full-resource" => Some(Content::FullResource),
            _ => None,
        }
    }
}

/// A Subscription as the gateway runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub topic: String,
    pub resource_type: &'static str,
    /// (search parameter, value): all must match.
    pub filters: Vec<(String, String)>,
    pub channel: Channel,
    /// The rest-hook URL, or the mail address (without `mailto:`).
    pub endpoint: String,
    /// `Name: value` lines sent with each rest-hook notification.
    pub headers: Vec<(String, String)>,
    pub content: Content,
    /// Seconds between heartbeats when nothing else was sent; 0: none.
    pub heartbeat_seconds: u64,
}

fn invalid(path: &str, message: impl Into<String>) -> FhirError {
    FhirError::invalid(format!("Subscription.{path}"), message)
}

fn extension<'a>(element: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    let url = format!("{BACKPORT}/{name}");
    element
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
}

/// Reads a Subscription resource; the error names the element and the rule.
pub fn plan(subscription: &Value) -> Result<Plan, FhirError> {
    let criteria = subscription
        .get("criteria")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("criteria", "is required: the topic's canonical URL"))?;
    let topic_name = criteria
        .split('|')
        .next()
        .unwrap_or("")
        .strip_prefix(&format!("{SDOHCC_TOPICS}/"));
    let Some((_, resource_type, allowed)) = topic_name
        .and_then(|name| TOPICS.iter().find(|(n, _, _)| *n == name))
        .copied()
    else {
        return Err(invalid(
            "criteria",
            format!(
                "{criteria:?} is not a topic this server offers ({})",
                topic_urls().join(", ")
            ),
        ));
    };
    let mut filters = Vec::new();
    let empty = json!({});
    for f in extension(
        subscription.get("_criteria").unwrap_or(&empty),
        "backport-filter-criteria",
    ) {
        let text = f.get("valueString").and_then(Value::as_str).unwrap_or("");
        let query = text
            .strip_prefix(&format!("{resource_type}?"))
            .ok_or_else(|| {
                invalid(
                    "criteria.extension",
                    format!("filter {text:?} must read {resource_type}?param=value"),
                )
            })?;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !allowed.contains(&name) || value.is_empty() {
                return Err(invalid(
                    "criteria.extension",
                    format!(
                        "filter {pair:?}: the topic filters by {} (param=value)",
                        allowed.join(", ")
                    ),
                ));
            }
            filters.push((name.to_string(), value.to_string()));
        }
    }
    let channel = subscription
        .get("channel")
        .ok_or_else(|| invalid("channel", "is required"))?;
    let kind = channel.get("type").and_then(Value::as_str).unwrap_or("");
    let kind = Channel::parse(kind).ok_or_else(|| {
        invalid(
            "channel.type",
            format!("{kind:?} is not offered (rest-hook, email)"),
        )
    })?;
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .unwrap_or("");
    let endpoint = match kind {
        Channel::RestHook
            if endpoint.starts_with("https://") || endpoint.starts_with("http://") =>
        {
            endpoint.to_string()
        }
        Channel::Email => match endpoint.strip_prefix("mailto:") {
            Some(address) if address.contains('@') && !address.contains(['\r', '\n', ',']) => {
                address.to_string()
            }
            _ => {
                return Err(invalid(
                    "channel.endpoint",
                    "an email channel needs mailto:someone@example.org",
                ));
            }
        },
        Channel::RestHook => {
            return Err(invalid(
                "channel.endpoint",
                "a rest-hook channel needs an https:// URL",
            ));
        }
    };
    let mut headers = Vec::new();
    for (i, h) in channel
        .get("header")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let line = h.as_str().unwrap_or("");
        let (name, value) = line
            .split_once(':')
            .filter(|(n, v)| {
                reqwest::header::HeaderName::from_bytes(n.trim().as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(v.trim()).is_ok()
            })
            .ok_or_else(|| invalid(&format!("channel.header[{i}]"), "must read \"Name: value\""))?;
        let lower = name.trim().to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            return Err(invalid(
                &format!("channel.header[{i}]"),
                format!(
                    "{} is set by the gateway, not by a subscription",
                    name.trim()
                ),
            ));
        }
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let content = match extension(
        channel.get("_payload").unwrap_or(&empty),
        "backport-payload-content",
    )
    .next()
    {
        None => Content::IdOnly,
        Some(e) => {
            let code = e.get("valueCode").and_then(Value::as_str).unwrap_or("");
            Content::parse(code).ok_or_else(|| {
                invalid(
                    "channel.payload.extension",
                    format!("content {code:?} is not one of empty, id-only, full-resource"),
                )
            })?
        }
    };
    if kind == Channel::Email && content == Content::FullResource {
        return Err(invalid(
            "channel.payload.extension",
            "an email carries no personal data: use id-only or empty",
        ));
    }
    let heartbeat_seconds = match extension(channel, "backport-heartbeat-period").next() {
        None => 0,
        Some(e) => e
            .get("valueUnsignedInt")
            .and_then(Value::as_u64)
            .filter(|s| *s <= 86_400)
            .ok_or_else(|| {
                invalid(
                    "channel.extension",
                    "the heartbeat period is a number of seconds up to 86400",
                )
            })?,
    };
    Ok(Plan {
        topic: criteria.to_string(),
        resource_type,
        filters,
        channel: kind,
        endpoint,
        headers,
        content,
        heartbeat_seconds,
    })
}

/// Whether a new version of a resource is an event of this subscription.
pub fn matches(plan: &Plan, resource: &Value) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some(plan.resource_type)
        && plan.filters.iter().all(|(name, value)| {
            let element = match (plan.resource_type, name.as_str()) {
                ("Task", "patient") => "for",
                ("ServiceRequest", "patient") => "subject",
                (_, other) => other,
            };
            // A comma lists alternatives, as in a search (`status=completed,cancelled`).
            value.split(',').any(|value| match element {
                "status" => resource.get("status").and_then(Value::as_str) == Some(value),
                _ => references(resource.get(element)).any(|r| same_reference(r, value)),
            })
        })
}

/// The references of an element that is one Reference or a list of them.
fn references(element: Option<&Value>) -> impl Iterator<Item = &str> {
    let items: Vec<&Value> = match element {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|v| v.get("reference").and_then(Value::as_str))
}

/// `Organization/a` matches `Organization/a` and any absolute URL ending in it.
fn same_reference(reference: &str, filter: &str) -> bool {
    reference == filter
        || reference
            .strip_suffix(filter)
            .is_some_and(|base| base.ends_with('/'))
        || filter
            .strip_suffix(reference)
            .is_some_and(|base| base.ends_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(filter: &str, channel: Value) -> Value {
        json!({"resourceType": "Subscription", "status": "requested",
            "criteria": format!("{SDOHCC_TOPICS}/Task"),
            "_criteria": {"extension": [{"url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": filter}]},
            "channel": channel})
    }

    #[test]
    fn a_backport_subscription_is_read_with_its_filters_and_channel() {
        let p = plan(&subscription(
            "Task?owner=Organization/cbo-a&status=completed",
            json!({"type": "rest-hook", "endpoint": "https://ehr.example/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "full-resource"}]},
                "header": ["Authorization: Bearer abc"],
                "extension": [{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": 60}]}),
        ))
        .unwrap();
        assert_eq!(p.resource_type, "Task");
        assert_eq!(
            p.filters,
            [
                ("owner".into(), "Organization/cbo-a".into()),
                ("status".into(), "completed".into())
            ]
        );
        assert_eq!(p.content, Content::FullResource);
        assert_eq!(p.headers, [("Authorization".into(), "Bearer abc".into())]);
        assert_eq!(p.heartbeat_seconds, 60);
        let task = json!({"resourceType": "Task", "status": "completed",
            "owner": {"reference": "https://gw.example/fhir/Organization/cbo-a"}});
        assert!(matches(&p, &task));
        assert!(!matches(
            &p,
            &json!({"resourceType": "Task", "status": "accepted",
            "owner": {"reference": "Organization/cbo-a"}})
        ));
        assert!(!matches(
            &p,
            &json!({"resourceType": "Task", "status": "completed",
            "owner": {"reference": "Organization/cbo-ab"}})
        ));
    }

    #[test]
    fn what_cannot_be_offered_is_refused_naming_the_element() {
        let hook = json!({"type": "rest-hook", "endpoint": "https://ehr.example/hook"});
        let e = plan(&subscription("Task?colour=red", hook.clone())).unwrap_err();
        assert!(e.to_string().contains("owner, requester"), "{e}");
        let mut s = subscription("Task?owner=Organization/a", hook);
        s["criteria"] = json!("http://example.org/SubscriptionTopic/encounter-start");
        assert!(plan(&s).unwrap_err().to_string().contains("not a topic"));
        let e = plan(&subscription(
            "Task?owner=Organization/a",
            json!({"type": "email", "endpoint": "mailto:care@ehr.example",
                "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "full-resource"}]}}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("no personal data"), "{e}");
        let e = plan(&subscription(
            "Task?owner=Organization/a",
            json!({"type": "websocket"}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rest-hook, email"), "{e}");
    }
}
