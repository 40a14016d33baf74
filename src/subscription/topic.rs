//! What a Subscription asks for, read from the R4 Subscriptions Backport form: the
//! topic (`Subscription.criteria`), its filters (the `backport-filter-criteria`
//! extension), the channel, what each notification carries and when the subscription
//! ends. Pure: no I/O.
//!
//! A filter is never ignored: a modifier extension, or an extension we do not read
//! where a filter or a backport setting would be (a cross-version or misspelt
//! `backport-filter-criteria`), is refused naming the element, since dropping it would
//! send the subscriber more than it asked for.

use serde_json::{Value, json};

use crate::fhir::FhirError;
use crate::resource::datetime;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
const SDOHCC_TOPICS: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic";
const CHANNEL_TYPES: &str = "http://terminology.hl7.org/CodeSystem/subscription-channel-type";

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

/// The extensions read, by the element (JSON path) that carries them.
const KNOWN_EXTENSIONS: &[(&str, &str)] = &[
    ("_criteria", "backport-filter-criteria"),
    ("channel", "backport-heartbeat-period"),
    ("channel", "backport-timeout"),
    ("channel", "backport-max-count"),
    ("channel._payload", "backport-payload-content"),
    ("channel._type", "backport-channel-type"),
];

/// R5 elements carried by cross-version extensions that change nothing we send (a
/// name, an identifier); every other cross-version extension on a Subscription would
/// ask for behaviour (a filter, a content level) and is refused.
const DESCRIPTIVE_CROSS_VERSION: &[&str] = &[
    "extension-Subscription.identifier",
    "extension-Subscription.name",
];

/// The MIME types a notification can be sent as (`channel.payload`); an email carries
/// text whatever is asked, so it takes `text/plain` too.
const PAYLOADS: &[&str] = &["application/fhir+json", "application/json"];

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
    /// The `Content-Type` of rest-hook notifications: `channel.payload` as asked.
    pub payload: String,
    /// Seconds between heartbeats when nothing else was sent; 0: none.
    pub heartbeat_seconds: u64,
    /// `backport-timeout`: seconds a notification may take before it has failed.
    pub timeout_seconds: Option<u64>,
    /// `Subscription.end` (microseconds): no event after it, and it is turned off.
    pub end: Option<i64>,
}

impl Plan {
    /// Whether the subscription is past its `end` at `now`.
    pub fn ended(&self, now: i64) -> bool {
        self.end.is_some_and(|end| end <= now)
    }
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

/// The one extension `name` on `element` (at `path`, for the error), if any.
fn single<'a>(element: &'a Value, name: &str, path: &str) -> Result<Option<&'a Value>, FhirError> {
    let mut found = extension(element, name);
    let first = found.next();
    if found.next().is_some() {
        return Err(invalid(path, format!("{name} may appear once")));
    }
    Ok(first)
}

/// Refuses what would otherwise be ignored: any modifier extension, and any extension
/// we do not read that is in `Subscription.criteria` (where filters are), comes from
/// the backport IG (misplaced or misspelt), is a cross-version extension that asks for
/// behaviour, or names a filter or criteria. Other extensions (an EHR's own notes) are
/// kept and shown back as sent.
fn check_extensions(value: &Value, json_path: &str, fhir_path: &str) -> Result<(), FhirError> {
    let Some(object) = value.as_object() else {
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                check_extensions(item, json_path, &format!("{fhir_path}[{i}]"))?;
            }
        }
        return Ok(());
    };
    for (key, child) in object {
        let at = if fhir_path.is_empty() {
            key.trim_start_matches('_').to_string()
        } else {
            format!("{fhir_path}.{}", key.trim_start_matches('_'))
        };
        let url_of = |e: &Value| {
            e.get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match key.as_str() {
            "modifierExtension" => {
                if let Some(e) = child.as_array().and_then(|list| list.first()) {
                    return Err(invalid(
                        &format!("{at}[0]"),
                        format!(
                            "modifier extension {:?} is not one this server understands, and a modifier cannot be ignored",
                            url_of(e)
                        ),
                    ));
                }
            }
            "extension" => {
                for (i, e) in child.as_array().into_iter().flatten().enumerate() {
                    let url = url_of(e);
                    let known = KNOWN_EXTENSIONS.iter().any(|(path, name)| {
                        *path == json_path && url == format!("{BACKPORT}/{name}")
                    });
                    if known || !unread_matters(json_path, &url) {
                        continue;
                    }
                    let here: Vec<String> = KNOWN_EXTENSIONS
                        .iter()
                        .filter(|(path, _)| *path == json_path)
                        .map(|(_, name)| format!("{BACKPORT}/{name}"))
                        .collect();
                    return Err(invalid(
                        &format!("{at}[{i}]"),
                        format!(
                            "extension {url:?} is not one this server reads here ({}); it is refused rather than ignored, so that no filter or setting is dropped",
                            if here.is_empty() {
                                "none".to_string()
                            } else {
                                here.join(", ")
                            }
                        ),
                    ));
                }
            }
            // Not read, not acted on: nothing in them can be dropped.
            "contained" | "text" => {}
            _ => {
                let path = if json_path.is_empty() {
                    key.clone()
                } else {
                    format!("{json_path}.{key}")
                };
                check_extensions(child, &path, &at)?;
            }
        }
    }
    Ok(())
}

/// Whether an extension we do not read at `json_path` would change what is sent.
fn unread_matters(json_path: &str, url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let cross_version = url
        .strip_prefix("http://hl7.org/fhir/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(version, _)| {
            version.split('.').count() == 2
                && version
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    json_path == "_criteria"
        || url.starts_with("http://hl7.org/fhir/uv/subscriptions-backport/")
        || (cross_version && !DESCRIPTIVE_CROSS_VERSION.iter().any(|d| url.ends_with(d)))
        || lower.contains("filter")
        || lower.contains("criteria")
}

/// `channel.payload`: the MIME type notifications are sent as.
fn payload(channel: &Value, kind: Channel) -> Result<String, FhirError> {
    let Some(asked) = channel.get("payload") else {
        return Ok(PAYLOADS[0].to_string());
    };
    let asked = asked
        .as_str()
        .ok_or_else(|| invalid("channel.payload", "must be a MIME type (a string)"))?;
    let mut parts = asked.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("").to_ascii_lowercase();
    let offered =
        PAYLOADS.contains(&essence.as_str()) || (kind == Channel::Email && essence == "text/plain");
    if !offered {
        return Err(invalid(
            "channel.payload",
            format!(
                "{asked:?} is not a MIME type this server sends ({}{})",
                PAYLOADS.join(", "),
                if kind == Channel::Email {
                    ", text/plain"
                } else {
                    ""
                }
            ),
        ));
    }
    for parameter in parts.filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "fhirversion" if !matches!(value, "4.0" | "4.0.1") => {
                return Err(invalid(
                    "channel.payload",
                    format!("fhirVersion={value}: notifications are FHIR R4 (4.0)"),
                ));
            }
            "charset" if !value.eq_ignore_ascii_case("utf-8") => {
                return Err(invalid(
                    "channel.payload",
                    format!("charset={value}: notifications are sent in utf-8"),
                ));
            }
            _ => {}
        }
    }
    Ok(asked.trim().to_string())
}

/// Reads a Subscription resource; the error names the element and the rule.
pub fn plan(subscription: &Value) -> Result<Plan, FhirError> {
    check_extensions(subscription, "", "")?;
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
    if let Some(e) = single(
        channel.get("_type").unwrap_or(&empty),
        "backport-channel-type",
        "channel.type.extension",
    )? {
        let coding = e.get("valueCoding").unwrap_or(&empty);
        let code = coding.get("code").and_then(Value::as_str).unwrap_or("");
        let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
        if code != kind.code() || system != CHANNEL_TYPES {
            return Err(invalid(
                "channel.type.extension",
                format!("channel type {system}|{code} is not offered (rest-hook, email)"),
            ));
        }
    }
    let payload = payload(channel, kind)?;
    let content = match single(
        channel.get("_payload").unwrap_or(&empty),
        "backport-payload-content",
        "channel.payload.extension",
    )? {
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
    let heartbeat_seconds = match single(channel, "backport-heartbeat-period", "channel.extension")?
    {
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
    let timeout_seconds = match single(channel, "backport-timeout", "channel.extension")? {
        None => None,
        Some(e) => Some(
            e.get("valueUnsignedInt")
                .and_then(Value::as_u64)
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    invalid(
                        "channel.extension",
                        "backport-timeout is a number of seconds above 0",
                    )
                })?,
        ),
    };
    // One event per notification: any maximum count is kept, as long as it is one.
    if let Some(e) = single(channel, "backport-max-count", "channel.extension")?
        && e.get("valuePositiveInt")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            == 0
    {
        return Err(invalid(
            "channel.extension",
            "backport-max-count is a positive integer",
        ));
    }
    let end = match subscription.get("end") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(datetime::parse_range)
                .ok_or_else(|| invalid("end", "must be an instant (2026-01-31T17:00:00Z)"))?
                .lo,
        ),
    };
    Ok(Plan {
        topic: criteria.to_string(),
        resource_type,
        filters,
        channel: kind,
        endpoint,
        headers,
        content,
        payload,
        heartbeat_seconds,
        timeout_seconds,
        end,
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

    fn expression(e: FhirError) -> String {
        e.to_operation_outcome()["issue"][0]["expression"][0]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn a_filter_or_modifier_that_cannot_be_read_is_refused_not_dropped() {
        let hook = json!({"type": "rest-hook", "endpoint": "https://ehr.example/hook"});
        let base = subscription("Task?owner=Organization/a", hook.clone());
        for url in [
            "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-critera",
            "http://example.org/anything",
        ] {
            let mut s = base.clone();
            s["_criteria"]["extension"][0]["url"] = json!(url);
            let e = plan(&s).unwrap_err();
            assert_eq!(expression(e), "Subscription.criteria.extension[0]", "{url}");
        }
        // Elsewhere, an extension naming a filter, a cross-version one that asks for
        // behaviour, or a misplaced backport one is refused too.
        for (url, at) in [
            (
                "http://hl7.org/fhir/5.0/StructureDefinition/extension-Subscription.filterBy",
                "Subscription.extension[0]",
            ),
            (
                "http://ehr.example/fhir/my-filter",
                "Subscription.extension[0]",
            ),
            (
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                "Subscription.extension[0]",
            ),
        ] {
            let mut s = base.clone();
            s["extension"] = json!([{"url": url, "valueString": "Task?status=completed"}]);
            assert_eq!(expression(plan(&s).unwrap_err()), at, "{url}");
        }
        let mut s = base.clone();
        s["channel"]["modifierExtension"] =
            json!([{"url": "http://ehr.example/only-on-weekdays", "valueBoolean": true}]);
        assert_eq!(
            expression(plan(&s).unwrap_err()),
            "Subscription.channel.modifierExtension[0]"
        );
        // A descriptive extension of the EHR's own, or an R5 name, is kept.
        let mut s = base;
        s["extension"] = json!([
            {"url": "http://ehr.example/fhir/department", "valueString": "ED"},
            {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Subscription.name", "valueString": "referrals"},
        ]);
        assert!(plan(&s).is_ok());
    }

    #[test]
    fn the_payload_mime_type_is_one_we_send_and_is_sent_as_asked() {
        let with = |payload: &str| {
            let mut s = subscription(
                "Task?owner=Organization/a",
                json!({"type": "rest-hook", "endpoint": "https://ehr.example/hook"}),
            );
            s["channel"]["payload"] = json!(payload);
            plan(&s)
        };
        assert_eq!(
            with("application/json").unwrap().payload,
            "application/json"
        );
        assert_eq!(
            with("application/fhir+json;fhirVersion=4.0")
                .unwrap()
                .payload,
            "application/fhir+json;fhirVersion=4.0"
        );
        for refused in [
            "application/fhir+xml",
            "text/plain",
            "application/fhir+json;fhirVersion=5.0",
        ] {
            let e = with(refused).unwrap_err();
            assert_eq!(expression(e), "Subscription.channel.payload", "{refused}");
        }
        let mut s = subscription(
            "Task?owner=Organization/a",
            json!({"type": "rest-hook", "endpoint": "https://ehr.example/hook"}),
        );
        assert_eq!(plan(&s).unwrap().payload, "application/fhir+json");
        s["end"] = json!("2030-01-01T00:00:00Z");
        let p = plan(&s).unwrap();
        assert!(!p.ended(0) && p.ended(p.end.unwrap()));
        s["end"] = json!("soon");
        assert_eq!(expression(plan(&s).unwrap_err()), "Subscription.end");
    }
}
