//! Notification Bundles of the R4 Subscriptions Backport: a `history` Bundle whose first
//! entry is the subscription's status (a Parameters resource), then one entry per event
//! focus — its URL only (`id-only`), with the resource (`full-resource`), or none
//! (`empty`). Pure: the caller reads what it needs.

use serde_json::{Value, json};

use super::topic::Content;
use crate::resource::datetime::format_instant;

const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// Where a subscription stands.
#[derive(Debug, Clone)]
pub struct Standing<'a> {
    pub id: &'a str,
    /// The topic; `None` for notifications of `empty` content, which should not name
    /// it (backport-subscription-status-r4, `topic`).
    pub topic: Option<&'a str>,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    /// For an event notification, the count when its last event was numbered (event
    /// N says N, however late it is sent); otherwise the count now.
    pub events_since_start: i64,
}

/// One event: its number, when, and its focus (`Task/abc`) at `version`, with the
/// resource when the subscription asked for full resources.
#[derive(Debug, Clone)]
pub struct Event {
    pub number: i64,
    pub at: i64,
    pub focus: String,
    pub version: i64,
    pub resource: Option<Value>,
}

/// The subscription-status Parameters; `focus` says whether events name their focus
/// (not with `empty` content, which keeps only the event numbers).
pub fn status(kind: Kind, s: &Standing<'_>, events: &[Event], focus: bool, base: &str) -> Value {
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", s.id)}}),
    ];
    if let Some(topic) = s.topic {
        parameter.push(json!({"name": "topic", "valueCanonical": topic}));
    }
    parameter.extend([
        json!({"name": "status", "valueCode": s.status}),
        json!({"name": "type", "valueCode": kind.code()}),
        json!({"name": "events-since-subscription-start", "valueString": s.events_since_start.to_string()}),
    ]);
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": format_instant(e.at)}),
        ];
        if focus {
            part.push(json!({"name": "focus", "valueReference": {"reference": format!("{base}/{}", e.focus)}}));
        }
        parameter.push(json!({"name": "notification-event", "part": part}));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameter,
    })
}

/// A notification (or a `$events` answer): the status, then the events' foci.
pub fn bundle(
    kind: Kind,
    s: &Standing<'_>,
    events: &[Event],
    content: Content,
    base: &str,
    now: i64,
) -> Value {
    let mut entry = vec![json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": status(kind, s, events, content != Content::Empty, base),
        "request": {"method": "GET", "url": format!("{base}/Subscription/{}/$status", s.id)},
        "response": {"status": "200"},
    })];
    if content != Content::Empty {
        for e in events {
            // What the write was: version 1 was created, any later one updated it.
            let ty = e.focus.split('/').next().unwrap_or_default();
            let (method, url, status) = if e.version == 1 {
                ("POST", ty, "201")
            } else {
                ("PUT", e.focus.as_str(), "200")
            };
            let mut item = json!({
                "fullUrl": format!("{base}/{}", e.focus),
                "request": {"method": method, "url": url},
                "response": {
                    "status": status,
                    "location": format!("{}/_history/{}", e.focus, e.version),
                    "etag": format!("W/\"{}\"", e.version),
                },
            });
            if content == Content::FullResource
                && let Some(r) = &e.resource
            {
                item["resource"] = r.clone();
            }
            entry.push(item);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "history",
        "timestamp": format_instant(now),
        "entry": entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_only_notification_carries_the_count_and_the_focus_url_only() {
        let mut s = Standing {
            id: "s1",
            topic: Some("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task"),
            status: "active",
            events_since_start: 7,
        };
        let e = Event {
            number: 7,
            at: 0,
            focus: "Task/t1".into(),
            version: 3,
            resource: Some(json!({"resourceType": "Task"})),
        };
        let b = bundle(
            Kind::EventNotification,
            &s,
            std::slice::from_ref(&e),
            Content::IdOnly,
            "https://gw/fhir",
            0,
        );
        assert_eq!(b["type"], "history");
        let params = &b["entry"][0]["resource"]["parameter"];
        assert_eq!(params[3]["valueCode"], "event-notification");
        assert_eq!(params[4]["valueString"], "7");
        assert_eq!(
            params[5]["part"][2]["valueReference"]["reference"],
            "https://gw/fhir/Task/t1"
        );
        assert_eq!(b["entry"][1]["fullUrl"], "https://gw/fhir/Task/t1");
        assert!(b["entry"][1].get("resource").is_none());
        assert_eq!(
            b["entry"][1]["request"]["method"], "PUT",
            "version 3: an update"
        );
        assert_eq!(b["entry"][1]["request"]["url"], "Task/t1");
        assert_eq!(b["entry"][1]["response"]["status"], "200");
        let created = Event {
            version: 1,
            ..e.clone()
        };
        let b = bundle(
            Kind::EventNotification,
            &s,
            &[created],
            Content::IdOnly,
            "https://gw/fhir",
            0,
        );
        assert_eq!(b["entry"][1]["request"]["method"], "POST");
        assert_eq!(b["entry"][1]["request"]["url"], "Task");
        assert_eq!(b["entry"][1]["response"]["status"], "201");
        let full = bundle(
            Kind::EventNotification,
            &s,
            std::slice::from_ref(&e),
            Content::FullResource,
            "https://gw/fhir",
            0,
        );
        assert_eq!(full["entry"][1]["resource"]["resourceType"], "Task");
        s.topic = None;
        let empty = bundle(
            Kind::EventNotification,
            &s,
            &[e],
            Content::Empty,
            "https://gw/fhir",
            0,
        );
        assert_eq!(empty["entry"].as_array().unwrap().len(), 1);
        let params = empty["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap();
        assert!(params.iter().all(|p| p["name"] != "topic"), "no topic");
        let event = &params[4]["part"];
        assert_eq!(event[0]["valueString"], "7", "the number stays");
        assert_eq!(event.as_array().unwrap().len(), 2, "the focus does not");
    }
}
