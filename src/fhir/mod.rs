//! The FHIR R4 face: what a resource is, how it is validated, indexed and searched,
//! how transaction Bundles are planned, and how errors become OperationOutcomes.
//!
//! Invariant: the raw JSON a client sent is the truth we store and return; we only ever
//! set `id`, `meta.versionId` and `meta.lastUpdated` (and rewrite Bundle-internal
//! references). Nothing here knows about HTTP.

pub mod bundle;
pub mod capability;
pub mod datetime;
pub mod engine;
pub mod outcome;
pub mod reference;
pub mod search;
pub mod validate;

use serde_json::{Map, Value};

pub use outcome::{FhirError, Issue, IssueCode};

/// Resource types the `/fhir` endpoint serves. Keep in step with the CapabilityStatement,
/// which is generated from this list and from the search parameter table.
pub const RESOURCE_TYPES: &[&str] = &[
    "CareTeam",
    "Condition",
    "Consent",
    "Device",
    "DocumentReference",
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
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Stamps `id`, `meta.versionId` and `meta.lastUpdated` on a resource, keeping every
/// other element (and `meta.profile`, `meta.tag`, …) where the client put it.
/// `resourceType`, `id` and `meta` come first so stored JSON reads naturally.
pub fn stamp(resource: Value, id: &str, version: i64, last_updated: &str) -> Value {
    let Value::Object(fields) = resource else {
        return resource;
    };
    let mut out = Map::with_capacity(fields.len() + 2);
    let mut rest = Map::with_capacity(fields.len());
    let mut meta = Map::new();
    let mut resource_type = Value::Null;
    for (k, v) in fields {
        match k.as_str() {
            "resourceType" => resource_type = v,
            "id" => {}
            "meta" => {
                if let Value::Object(m) = v {
                    meta = m;
                }
            }
            _ => {
                rest.insert(k, v);
            }
        }
    }
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert("lastUpdated".into(), Value::String(last_updated.into()));
    out.insert("resourceType".into(), resource_type);
    out.insert("id".into(), Value::String(id.into()));
    out.insert("meta".into(), Value::Object(meta));
    out.extend(rest);
    Value::Object(out)
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
    fn stamp_keeps_everything_but_id_and_version_meta() {
        let sent: Value = serde_json::from_str(r#"{"resourceType":"Patient","meta":{"profile":["p"],"versionId":"9"},
            "extension":[{"url":"x","valueString":"y"}],"_birthDate":{"extension":[]},"unknownElement":1.50}"#).unwrap();
        let stamped = stamp(sent, "abc", 2, "2026-01-01T00:00:00.000000Z");
        assert_eq!(
            serde_json::to_string(&stamped).unwrap(),
            r#"{"resourceType":"Patient","id":"abc","meta":{"profile":["p"],"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000000Z"},"extension":[{"url":"x","valueString":"y"}],"_birthDate":{"extension":[]},"unknownElement":1.50}"#
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
