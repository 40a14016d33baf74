//! The organisation's service catalogue (HSDS-lite) as FHIR HealthcareService
//! resources with the SDOH Clinical Care IG's capacity-status extension, so EHRs can
//! search capacity on `/fhir` before they refer (the IG's capacity use case).

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::body::{CapacityInput, ServiceInput};

const CAPACITY_EXTENSION: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ExtensionHealthcareServiceCapacityStatus";
const SDOHCC_TEMPORARY_CODES: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

/// The FHIR id of an organisation's service: both ids, so services of different
/// organisations never collide. `None` when the service id cannot be part of one.
pub fn fhir_id(org: &str, service_id: &str) -> Option<String> {
    let ok = (1..=40).contains(&service_id.len())
        && service_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    let id = format!("{org}.{service_id}");
    (ok && id.len() <= 64).then_some(id)
}

fn identifier_system(org: &str) -> String {
    format!("urn:crossway:cbo:{org}:hsds-service-id")
}

/// The HealthcareService for a service; keeps the capacity of `existing`.
pub fn to_resource(
    org: &str,
    service_id: &str,
    s: &ServiceInput,
    existing: Option<&Value>,
) -> Value {
    let mut hs = json!({
        "resourceType": "HealthcareService",
        "identifier": [{"system": identifier_system(org), "value": service_id}],
        "active": s.active.unwrap_or(true),
        "providedBy": {"reference": format!("Organization/{org}")},
        "name": s.name,
    });
    let o = hs.as_object_mut().expect("a JSON object");
    if let Some(d) = &s.description {
        o.insert("comment".into(), json!(d));
    }
    if let Some(categories) = s.categories.as_ref().filter(|c| !c.is_empty()) {
        let category: Vec<Value> = categories
            .iter()
            .map(|c| {
                let mut coding = json!({"system": c.system, "code": c.code});
                if let Some(d) = &c.display {
                    coding["display"] = json!(d);
                }
                json!({"coding": [coding]})
            })
            .collect();
        o.insert("category".into(), Value::Array(category));
    }
    let telecom: Vec<Value> = [("phone", &s.phone), ("email", &s.email), ("url", &s.url)]
        .into_iter()
        .filter_map(|(system, v)| v.as_ref().map(|v| json!({"system": system, "value": v})))
        .collect();
    if !telecom.is_empty() {
        o.insert("telecom".into(), Value::Array(telecom));
    }
    if let Some(languages) = s.languages.as_ref().filter(|l| !l.is_empty()) {
        let languages: Vec<Value> = languages
            .iter()
            .map(|l| json!({"coding": [{"system": "urn:ietf:bcp:47", "code": l}]}))
            .collect();
        o.insert("communication".into(), Value::Array(languages));
    }
    if let Some(e) = &s.eligibility {
        o.insert("eligibility".into(), json!([{"comment": e}]));
    }
    if let Some(a) = &s.service_area {
        o.insert("extraDetails".into(), json!(format!("Service area: {a}")));
    }
    if let Some(capacity) = existing.and_then(capacity_extension) {
        o.insert("extension".into(), json!([capacity]));
    }
    hs
}

/// `existing` with its capacity replaced.
pub fn with_capacity(mut hs: Value, c: &CapacityInput) -> Value {
    let code = match c.status.as_str() {
        "available" => "capacity",
        "full" => "no-capacity",
        _ => "waitlist",
    };
    let mut concept = json!({"coding": [{"system": SDOHCC_TEMPORARY_CODES, "code": code}]});
    if let Some(band) = &c.wait_band {
        concept["text"] = json!(band);
    }
    let ext = json!({"url": CAPACITY_EXTENSION, "valueCodeableConcept": concept});
    let o = hs.as_object_mut().expect("a stored resource is an object");
    let list = o.entry("extension").or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(items) = list {
        items.retain(|e| e.get("url").and_then(Value::as_str) != Some(CAPACITY_EXTENSION));
        items.push(ext);
    }
    hs
}

fn capacity_extension(hs: &Value) -> Option<Value> {
    hs.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(CAPACITY_EXTENSION))
        .cloned()
}

/// A service as the organisation sees it (HSDS-lite).
#[derive(Debug, Serialize, ToSchema)]
pub struct Service {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub active: bool,
    pub categories: Vec<Value>,
    pub languages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_area: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// The HealthcareService behind it.
    pub fhir: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Capacity {
    /// available, waitlist, full (or unknown for a code this API does not map).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_band: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// The HSDS-lite view of a stored HealthcareService.
pub fn from_resource(org: &str, hs: &Value) -> Service {
    let s = |k: &str| hs.get(k).and_then(Value::as_str).map(str::to_string);
    let system = identifier_system(org);
    let telecom = |system: &str| {
        hs.get("telecom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|t| t.get("system").and_then(Value::as_str) == Some(system))
            .and_then(|t| t.get("value").and_then(Value::as_str))
            .map(str::to_string)
    };
    Service {
        id: hs
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
            .and_then(|i| i.get("value").and_then(Value::as_str))
            .map(str::to_string),
        name: s("name"),
        description: s("comment"),
        active: hs.get("active").and_then(Value::as_bool).unwrap_or(true),
        categories: hs
            .get("category")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.pointer("/coding/0"))
            .cloned()
            .collect(),
        languages: hs
            .get("communication")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.pointer("/coding/0/code").and_then(Value::as_str))
            .map(str::to_string)
            .collect(),
        phone: telecom("phone"),
        email: telecom("email"),
        url: telecom("url"),
        eligibility: hs
            .pointer("/eligibility/0/comment")
            .and_then(Value::as_str)
            .map(str::to_string),
        service_area: s("extraDetails")
            .and_then(|d| d.strip_prefix("Service area: ").map(str::to_string)),
        capacity: capacity_extension(hs).map(|ext| Capacity {
            status: match ext
                .pointer("/valueCodeableConcept/coding/0/code")
                .and_then(Value::as_str)
            {
                Some("capacity") => "available",
                Some("no-capacity") => "full",
                Some("waitlist") => "waitlist",
                _ => "unknown",
            },
            wait_band: ext
                .pointer("/valueCodeableConcept/text")
                .and_then(Value::as_str)
                .map(str::to_string),
            updated_at: hs
                .pointer("/meta/lastUpdated")
                .and_then(Value::as_str)
                .map(str::to_string),
        }),
        fhir: format!("HealthcareService/{}", s("id").unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ServiceInput {
        ServiceInput {
            name: "Weekly pantry".into(),
            description: Some("Groceries every week".into()),
            active: None,
            categories: None,
            languages: Some(vec!["en".into(), "es".into()]),
            phone: Some("+12175550100".into()),
            email: None,
            url: None,
            eligibility: Some("County residents".into()),
            service_area: Some("Sangamon County".into()),
        }
    }

    #[test]
    fn a_service_round_trips_through_healthcare_service_and_keeps_capacity() {
        let hs = to_resource("cbo-1", "pantry", &input(), None);
        let hs = with_capacity(
            hs,
            &CapacityInput {
                status: "waitlist".into(),
                wait_band: Some("2-4 weeks".into()),
            },
        );
        assert_eq!(
            hs["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "waitlist"
        );
        let mut stored = hs.clone();
        stored["id"] = json!("cbo-1.pantry");
        let view = from_resource("cbo-1", &stored);
        assert_eq!(view.id.as_deref(), Some("pantry"));
        assert_eq!(view.languages, ["en", "es"]);
        assert_eq!(view.phone.as_deref(), Some("+12175550100"));
        assert_eq!(view.service_area.as_deref(), Some("Sangamon County"));
        let capacity = view.capacity.unwrap();
        assert_eq!(capacity.status, "waitlist");
        assert_eq!(capacity.wait_band.as_deref(), Some("2-4 weeks"));
        // Editing the service later keeps the capacity that was reported.
        let edited = to_resource("cbo-1", "pantry", &input(), Some(&stored));
        assert_eq!(edited["extension"], stored["extension"]);
    }

    #[test]
    fn service_ids_become_fhir_ids_only_when_they_fit() {
        assert_eq!(
            fhir_id("cbo-1", "pantry-2").as_deref(),
            Some("cbo-1.pantry-2")
        );
        assert_eq!(fhir_id("cbo-1", "a/b"), None);
        assert_eq!(fhir_id("cbo-1", &"x".repeat(70)), None);
    }
}
