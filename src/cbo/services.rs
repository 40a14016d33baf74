//! The organisation's service catalogue (HSDS-lite) as FHIR HealthcareService
//! resources with the SDOH Clinical Care IG's capacity-status extension, so EHRs can
//! search capacity on `/fhir` before they refer (the IG's capacity use case).

use serde_json::{Map, Value, json};

use super::body::{CapacityInput, ServiceInput};

const CAPACITY_EXTENSION: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ExtensionHealthcareServiceCapacityStatus";
const SDOHCC_TEMPORARY_CODES: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

/// The FHIR id of an organisation's service: both ids, so services of different
/// organisations never collide. `None` when the service id cannot be part of one.
pub fn fhir_id(org: &str, service_id: &str) -> Option<String> {
    let ok = !service_id.is_empty()
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
        "active": s.active,
        "providedBy": {"reference": format!("Organization/{org}")},
        "name": s.name,
    });
    let o = hs.as_object_mut().expect("a JSON object");
    if let Some(d) = &s.description {
        o.insert("comment".into(), json!(d));
    }
    if !s.categories.is_empty() {
        let category: Vec<Value> = s
            .categories
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
    if !s.languages.is_empty() {
        let languages: Vec<Value> = s
            .languages
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

/// The HSDS-lite view of a stored HealthcareService.
pub fn from_resource(org: &str, hs: &Value) -> Value {
    let s = |k: &str| hs.get(k).and_then(Value::as_str);
    let system = identifier_system(org);
    let id = hs
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
        .and_then(|i| i.get("value"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("id".into(), id);
    out.insert("name".into(), json!(s("name")));
    if let Some(d) = s("comment") {
        out.insert("description".into(), json!(d));
    }
    out.insert(
        "active".into(),
        json!(hs.get("active").and_then(Value::as_bool).unwrap_or(true)),
    );
    let categories: Vec<Value> = hs
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/coding/0"))
        .cloned()
        .collect();
    out.insert("categories".into(), Value::Array(categories));
    let languages: Vec<Value> = hs
        .get("communication")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/coding/0/code"))
        .cloned()
        .collect();
    out.insert("languages".into(), Value::Array(languages));
    for t in hs
        .get("telecom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(system), Some(value)) =
            (t.get("system").and_then(Value::as_str), t.get("value"))
        {
            out.insert(system.to_string(), value.clone());
        }
    }
    if let Some(e) = hs.pointer("/eligibility/0/comment") {
        out.insert("eligibility".into(), e.clone());
    }
    if let Some(a) = s("extraDetails").and_then(|d| d.strip_prefix("Service area: ")) {
        out.insert("service_area".into(), json!(a));
    }
    if let Some(ext) = capacity_extension(hs) {
        let status = match ext
            .pointer("/valueCodeableConcept/coding/0/code")
            .and_then(Value::as_str)
        {
            Some("capacity") => "available",
            Some("no-capacity") => "full",
            Some("waitlist") => "waitlist",
            _ => "unknown",
        };
        let mut capacity = json!({"status": status});
        if let Some(band) = ext.pointer("/valueCodeableConcept/text") {
            capacity["wait_band"] = band.clone();
        }
        if let Some(at) = hs.pointer("/meta/lastUpdated") {
            capacity["updated_at"] = at.clone();
        }
        out.insert("capacity".into(), capacity);
    }
    out.insert(
        "fhir".into(),
        json!(format!("HealthcareService/{}", s("id").unwrap_or_default())),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ServiceInput {
        ServiceInput {
            name: "Weekly pantry".into(),
            description: Some("Groceries every week".into()),
            active: true,
            categories: vec![],
            languages: vec!["en".into(), "es".into()],
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
        assert_eq!(view["id"], "pantry");
        assert_eq!(view["languages"], json!(["en", "es"]));
        assert_eq!(view["phone"], "+12175550100");
        assert_eq!(view["service_area"], "Sangamon County");
        assert_eq!(view["capacity"]["status"], "waitlist");
        assert_eq!(view["capacity"]["wait_band"], "2-4 weeks");
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
