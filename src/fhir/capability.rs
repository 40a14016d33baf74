//! The CapabilityStatement, generated from the resource list and the search parameter
//! table so that it states exactly what the server implements.

use serde_json::{Value, json};

use super::RESOURCE_TYPES;
use super::search::{COMMON, ParamType, type_params};

const SDOHCC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare";

/// `more` are the entries of resources other modules serve with their own handlers
/// (Subscription).
pub fn capability_statement(base: &str, software_version: &str, more: Vec<Value>) -> Value {
    let mut resources: Vec<Value> = RESOURCE_TYPES.iter().map(|t| resource(t)).collect();
    resources.extend(more);
    // The audit trail: searchable, never written through the API.
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{"code": "search-type"}],
        "searchParam": [
            {"name": "date", "type": "date"},
            {"name": "agent", "type": "token", "documentation": "the client id"},
            {"name": "entity", "type": "string", "documentation": "what was touched, as recorded (path and query)"},
        ],
    }));
    // Outcome measures: definitions and their evaluation (`measures`).
    resources.push(json!({
        "type": "Measure",
        "interaction": [{"code": "read"}, {"code": "search-type", "documentation": "every measure, not filtered"}],
        "operation": [{
            "name": "evaluate-measure",
            "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure",
            "documentation": "GET with periodStart, periodEnd (dates or dateTimes; the period may end in the future) and optionally subject=Group/{id}; answers a summary MeasureReport counting persons, exact counts.",
        }],
    }));
    let origin = base.strip_suffix("/fhir").unwrap_or(base);
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Crossway",
        "kind": "instance",
        "instantiates": [
            format!("{SDOHCC}/CapabilityStatement/SDOHCC-CoordinationPlatform"),
            "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4",
        ],
        "software": {"name": "Crossway", "version": software_version},
        "implementation": {"description": "Crossway social-care referral gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }]}],
                "description": "SMART Backend Services: system/ scopes (v1 and v2); see /.well-known/smart-configuration",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{origin}/auth/token")}],
                }],
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}

fn resource(resource_type: &str) -> Value {
    let params: Vec<Value> = COMMON
        .iter()
        .chain(type_params(resource_type))
        .map(|p| json!({"name": p.name, "type": p.kind.fhir_name()}))
        .collect();
    let includes: Vec<Value> = type_params(resource_type)
        .iter()
        .filter(|p| p.kind == ParamType::Reference)
        .map(|p| json!(format!("{resource_type}:{}", p.name)))
        .collect();
    let interactions: Vec<Value> = [
        "read",
        "vread",
        "update",
        "history-instance",
        "create",
        "search-type",
    ]
    .iter()
    .map(|c| json!({"code": c}))
    .collect();
    let mut r = json!({
        "type": resource_type,
        "interaction": interactions,
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": true,
        "conditionalRead": "modified-since",
        "conditionalUpdate": true,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    });
    if !includes.is_empty() {
        r["searchInclude"] = json!(includes);
    }
    if let Some(profile) = supported_profile(resource_type) {
        r["supportedProfile"] = json!([profile]);
    }
    r
}

fn supported_profile(resource_type: &str) -> Option<String> {
    let name = match resource_type {
        "Task" => "SDOHCC-TaskForReferralManagement",
        "ServiceRequest" => "SDOHCC-ServiceRequest",
        "Procedure" => "SDOHCC-Procedure",
        "Consent" => "SDOHCC-Consent",
        "Condition" => "SDOHCC-Condition",
        "Goal" => "SDOHCC-Goal",
        _ => return None,
    };
    Some(format!("{SDOHCC}/StructureDefinition/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_search_parameter_and_include_the_ig_needs() {
        let cs = capability_statement("http://x/fhir", "0", Vec::new());
        let task = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Task")
            .unwrap();
        let names: Vec<&str> = task["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for needed in [
            "_id",
            "_lastUpdated",
            "_profile",
            "owner",
            "requester",
            "status",
            "focus",
            "patient",
            "code",
            "output",
        ] {
            assert!(names.contains(&needed), "{needed}");
        }
        let includes = task["searchInclude"].as_array().unwrap();
        assert!(
            includes.contains(&json!("Task:focus")) && includes.contains(&json!("Task:output"))
        );
        assert_eq!(task["conditionalUpdate"], true);
        assert_eq!(cs["fhirVersion"], "4.0.1");
    }
}
