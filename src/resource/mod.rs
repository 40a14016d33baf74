//! The FHIR R4 data model as this gateway uses it, with no I/O and nothing of the
//! faces: resource types and ids, dates, references, the search parameters and the
//! index entries they yield, and the stored form of a resource. Everything above the
//! store reads resources through these; the store builds its queries from
//! [`search`]'s query model.

pub mod datetime;
pub mod issue;
pub mod reference;
pub mod search;

use serde_json::{Map, Value};

/// Resource types the `/fhir` endpoint serves. Keep in step with the CapabilityStatement,
/// which is generated from this list and from the search parameter table.
pub const RESOURCE_TYPES: &[&str] = &[
    "CareTeam",
    "Condition",
    "Consent",
    "Device",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Group",
    "HealthcareService",
    "Location",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "ServiceRequest",
    "Task",
];

pub fn is_supported_type(resource_type: &str) -> bool {
    RESOURCE_TYPES.contains(&resource_type)
}

/// FHIR `id`: 1–64 characters from `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A new server-assigned logical id. Time-ordered (UUID v7) so that new rows land at
/// the right edge of every index instead of on random pages: random v4 keys made each
/// group commit dirty thousands of pages.
/// The version an ETag names: `W/"3"` (or a bare `3`), as both faces issue them.
pub fn version_from_etag(s: &str) -> Option<i64> {
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A resource serialised for storage, waiting for its `meta.lastUpdated`.
#[derive(Debug, Clone)]
pub struct Serialized {
    body: String,
    /// Byte offset of the timestamp placeholder in `body`.
    at: usize,
}

const PENDING_TIMESTAMP: &str = "0000-00-00T00:00:00.000000Z";

impl Serialized {
    /// The final JSON. The timestamp is set last, by the writer, so that
    /// `meta.lastUpdated` follows commit order (what `_lastUpdated=gt…` polling needs).
    pub fn with_last_updated(mut self, last_updated: &str) -> String {
        debug_assert_eq!(last_updated.len(), PENDING_TIMESTAMP.len());
        self.body
            .replace_range(self.at..self.at + PENDING_TIMESTAMP.len(), last_updated);
        self.body
    }
}

/// Serialises a resource with `id`, `meta.versionId` and `meta.lastUpdated` stamped and
/// every other element (`meta.profile`, `meta.tag`, …) where the client put it.
/// `resourceType`, `id` and `meta` come first so stored JSON reads naturally.
pub fn serialize(resource: &Value, id: &str, version: i64) -> Serialized {
    let lit = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let value = |v: &Value| serde_json::to_string(v).expect("JSON values serialise");
    let empty = Map::new();
    let fields = resource.as_object().unwrap_or(&empty);
    let mut body = String::with_capacity(256);
    body.push_str("{\"resourceType\":");
    body.push_str(&value(fields.get("resourceType").unwrap_or(&Value::Null)));
    body.push_str(",\"id\":");
    body.push_str(&lit(id));
    body.push_str(",\"meta\":{");
    if let Some(Value::Object(meta)) = fields.get("meta") {
        for (k, v) in meta
            .iter()
            .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
        {
            body.push_str(&lit(k));
            body.push(':');
            body.push_str(&value(v));
            body.push(',');
        }
    }
    body.push_str(&format!("\"versionId\":\"{version}\",\"lastUpdated\":\""));
    let at = body.len();
    body.push_str(PENDING_TIMESTAMP);
    body.push_str("\"}");
    for (k, v) in fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "resourceType" | "id" | "meta"))
    {
        body.push(',');
        body.push_str(&lit(k));
        body.push(':');
        body.push_str(&value(v));
    }
    body.push('}');
    Serialized { body, at }
}

/// `meta.profile` values claimed by a resource.
pub fn profiles(resource: &Value) -> impl Iterator<Item = &str> {
    resource
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn serialize_keeps_everything_but_id_and_version_meta() {
        let sent: Value = serde_json::from_str(r#"{"resourceType":"Patient","meta":{"profile":["p"],"versionId":"9"},
            "extension":[{"url":"x","valueString":"y"}],"_birthDate":{"extension":[]},"unknownElement":1.50}"#).unwrap();
        let stored = serialize(&sent, "abc", 2).with_last_updated("2026-01-01T00:00:00.000000Z");
        assert_eq!(
            stored,
            r#"{"resourceType":"Patient","id":"abc","meta":{"profile":["p"],"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000000Z"},"extension":[{"url":"x","valueString":"y"}],"_birthDate":{"extension":[]},"unknownElement":1.50}"#
        );
    }

    #[test]
    fn client_meta_timestamps_are_replaced_not_duplicated() {
        let sent = serde_json::json!({"resourceType": "Task", "id": "old",
            "meta": {"lastUpdated": "1999-01-01T00:00:00Z", "tag": [{"code": "t"}], "versionId": "7"}});
        let stored = serialize(&sent, "new", 1).with_last_updated("2026-01-01T00:00:00.000000Z");
        let v: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(v["id"], "new");
        assert_eq!(
            v["meta"],
            serde_json::json!({"tag": [{"code": "t"}], "versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000000Z"})
        );
    }

    #[test]
    fn ids_follow_the_fhir_rule() {
        assert!(is_valid_id("a-B.9"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}
