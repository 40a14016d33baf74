//! The rules of `mappings/cbo/routing.toml` and `mappings/cbo/domains.toml`: what an
//! EHR's codes and addresses mean to the gateway. A configured organisation is found
//! by its own id and the identifiers in `config/` without a rule; routing rules add
//! what EHRs use besides (their own directory's ids, a regional directory's URLs). A
//! ServiceRequest's category in the SDOHCC code system is its domain; domain rules map
//! other code systems (SNOMED CT, LOINC answers, local codes) to it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::IdentifierConfig;

/// Where the SDOH Clinical Care IG's domain codes live.
pub const SDOHCC_CATEGORY_SYSTEM: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

/// The SDOH domains (SDOHCC value set "SDOH Domains" and the IG's category codes).
pub const SDOH_DOMAINS: &[&str] = &[
    "food-insecurity",
    "housing-instability",
    "homelessness",
    "inadequate-housing",
    "transportation-insecurity",
    "financial-insecurity",
    "material-hardship",
    "educational-attainment",
    "employment-status",
    "veteran-status",
    "stress",
    "social-connection",
    "intimate-partner-violence",
    "elder-abuse",
    "personal-health-literacy",
    "health-insurance-coverage-status",
    "medical-cost-burden",
    "digital-literacy",
    "digital-access",
    "utility-insecurity",
    "incarceration-status",
    "language-access",
    "sdoh-category-unspecified",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    #[serde(default)]
    route: Vec<RouteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRule {
    id: String,
    organization: String,
    /// `Task.owner.identifier`s (or identifiers of the owner Organization) that mean it.
    #[serde(default)]
    identifiers: Vec<IdentifierConfig>,
    /// `Task.owner.reference`s, as sent (`https://directory.example.org/Organization/7`).
    #[serde(default)]
    references: Vec<String>,
}

/// Task.owner → organisation, beyond the configured ids and identifiers.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_identifier: HashMap<(String, String), String>,
    by_reference: HashMap<String, String>,
}

impl Routes {
    /// Checks the rules against the configured `organizations`; one identifier or
    /// reference routed to two places is a conflict, refused at the second rule.
    pub fn build(file: RoutingFile, organizations: &[String]) -> Result<Routes, (String, String)> {
        let mut routes = Routes::default();
        let mut rule_of: HashMap<String, String> = HashMap::new();
        for rule in file.route {
            let fail = |m: String| Err((rule.id.clone(), m));
            if !organizations.contains(&rule.organization) {
                return fail(format!(
                    "organization {:?} is not a configured organisation",
                    rule.organization
                ));
            }
            if rule.identifiers.is_empty() && rule.references.is_empty() {
                return fail("names no identifiers and no references".into());
            }
            for i in &rule.identifiers {
                let key = format!("{}|{}", i.system, i.value);
                if let Some(first) = rule_of.insert(key.clone(), rule.id.clone()) {
                    return fail(format!("{key} is already routed by rule {first}"));
                }
                routes.by_identifier.insert(
                    (i.system.clone(), i.value.clone()),
                    rule.organization.clone(),
                );
            }
            for r in &rule.references {
                if let Some(first) = rule_of.insert(r.clone(), rule.id.clone()) {
                    return fail(format!("{r} is already routed by rule {first}"));
                }
                routes
                    .by_reference
                    .insert(r.clone(), rule.organization.clone());
            }
        }
        Ok(routes)
    }

    pub fn by_identifier(&self, system: &str, value: &str) -> Option<&str> {
        self.by_identifier
            .get(&(system.to_string(), value.to_string()))
            .map(String::as_str)
    }

    pub fn by_reference(&self, reference: &str) -> Option<&str> {
        self.by_reference.get(reference).map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsFile {
    #[serde(default)]
    domain: Vec<DomainRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainRule {
    id: String,
    system: String,
    code: String,
    domain: String,
}

/// ServiceRequest.category codings → SDOH domain.
#[derive(Debug, Clone, Default)]
pub struct Domains(HashMap<(String, String), String>);

impl Domains {
    pub fn build(file: DomainsFile) -> Result<Domains, (String, String)> {
        let mut map = HashMap::new();
        let mut rule_of: HashMap<(String, String), String> = HashMap::new();
        for rule in file.domain {
            if !SDOH_DOMAINS.contains(&rule.domain.as_str()) {
                return Err((
                    rule.id,
                    format!(
                        "domain {:?} is not an SDOH domain (known: {})",
                        rule.domain,
                        SDOH_DOMAINS.join(", ")
                    ),
                ));
            }
            let key = (rule.system.clone(), rule.code.clone());
            if let Some(first) = rule_of.insert(key, rule.id.clone()) {
                return Err((
                    rule.id,
                    format!(
                        "{}|{} is already mapped by rule {first}",
                        rule.system, rule.code
                    ),
                ));
            }
            map.insert((rule.system, rule.code), rule.domain);
        }
        Ok(Domains(map))
    }

    /// The domain of a ServiceRequest: an SDOHCC category code, else a mapped coding,
    /// else the first category code as sent (so nothing is hidden for want of a rule).
    pub fn of(&self, service_request: &Value) -> Option<String> {
        let codings: Vec<&Value> = service_request
            .get("category")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("coding").and_then(Value::as_array))
            .flatten()
            .collect();
        let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        codings
            .iter()
            .find(|c| {
                text(c, "system") == SDOHCC_CATEGORY_SYSTEM
                    && SDOH_DOMAINS.contains(&text(c, "code").as_str())
            })
            .map(|c| text(c, "code"))
            .or_else(|| {
                codings
                    .iter()
                    .find_map(|c| self.0.get(&(text(c, "system"), text(c, "code"))).cloned())
            })
            .or_else(|| {
                codings
                    .first()
                    .map(|c| text(c, "code"))
                    .filter(|c| !c.is_empty())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn domains() -> Domains {
        Domains::build(
            toml::from_str(
                r#"[[domain]]
                id = "d1"
                system = "http://snomed.info/sct"
                code = "733423003"
                domain = "food-insecurity""#,
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_sdohcc_code_wins_then_a_rule_then_the_code_as_sent() {
        let d = domains();
        let sr = |codings: Value| json!({"category": [{"coding": codings}]});
        assert_eq!(
            d.of(&sr(
                json!([{"system": "http://snomed.info/sct", "code": "733423003"},
                {"system": SDOHCC_CATEGORY_SYSTEM, "code": "housing-instability"}])
            )),
            Some("housing-instability".into())
        );
        assert_eq!(
            d.of(&sr(
                json!([{"system": "http://snomed.info/sct", "code": "733423003"}])
            )),
            Some("food-insecurity".into())
        );
        assert_eq!(
            d.of(&sr(json!([{"system": "urn:local", "code": "FOOD"}]))),
            Some("FOOD".into())
        );
        assert_eq!(d.of(&json!({})), None);
    }

    #[test]
    fn rules_that_conflict_or_name_unknown_things_are_refused() {
        let file = |t: &str| toml::from_str::<RoutingFile>(t).unwrap();
        let orgs = ["cbo-a".to_string(), "cbo-b".to_string()];
        let two = file(
            r#"[[route]]
            id = "r1"
            organization = "cbo-a"
            identifiers = [{ system = "urn:dir", value = "7" }]
            [[route]]
            id = "r2"
            organization = "cbo-b"
            identifiers = [{ system = "urn:dir", value = "7" }]"#,
        );
        let (rule, message) = Routes::build(two, &orgs).unwrap_err();
        assert_eq!(rule, "r2");
        assert!(message.contains("rule r1"), "{message}");
        let unknown =
            file("[[route]]\nid = \"r3\"\norganization = \"cbo-z\"\nreferences = [\"x\"]");
        assert_eq!(Routes::build(unknown, &orgs).unwrap_err().0, "r3");
        let ok = file(
            "[[route]]\nid = \"r4\"\norganization = \"cbo-b\"\nreferences = [\"https://dir.example/Organization/9\"]",
        );
        let routes = Routes::build(ok, &orgs).unwrap();
        assert_eq!(
            routes.by_reference("https://dir.example/Organization/9"),
            Some("cbo-b")
        );
        let bad = toml::from_str::<DomainsFile>(
            "[[domain]]\nid = \"d9\"\nsystem = \"s\"\ncode = \"c\"\ndomain = \"hunger\"",
        )
        .unwrap();
        assert_eq!(Domains::build(bad).unwrap_err().0, "d9");
    }
}
