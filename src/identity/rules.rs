//! Per-source identity rules (`mappings/identity/sources.toml`): which assigning
//! authorities a source is trusted for, how an authority (CX.4) becomes a system URI,
//! and which identifier types name a person.
//!
//! Out of the box, with no rule for a source, an authority with an ISO universal id
//! maps to `urn:oid:<id>` and is trusted, and a namespace-only authority maps under
//! `namespace_prefix`, so a new feed works before anyone writes rules.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::Identifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default = "default_prefix")]
    namespace_prefix: String,
    #[serde(default = "default_person_types")]
    person_types: Vec<String>,
    /// Whether an identifier without a type (CX.5 empty) names a person.
    #[serde(default = "yes")]
    untyped: bool,
    #[serde(default)]
    authority: Vec<AuthorityRule>,
    #[serde(default)]
    source: Vec<SourceRule>,
}

impl Default for RulesFile {
    fn default() -> Self {
        RulesFile {
            namespace_prefix: default_prefix(),
            person_types: default_person_types(),
            untyped: true,
            authority: Vec::new(),
            source: Vec::new(),
        }
    }
}

fn default_prefix() -> String {
    "urn:crossway:authority:".into()
}

fn default_person_types() -> Vec<String> {
    ["MR", "PI", "PT", "MB", "SS", "NI"]
        .map(String::from)
        .to_vec()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorityRule {
    id: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    system: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceRule {
    id: String,
    /// MSH-4 namespace or universal id, or a FHIR source's name.
    facility: String,
    /// Authorities (namespace, OID or system URI) this source may assert identifiers
    /// for; left out, every authority it sends (as without a rule).
    #[serde(default)]
    trusted: Option<Vec<String>>,
    #[serde(default)]
    person_types: Option<Vec<String>>,
    /// The source's local CX.5 type codes → HL7 table 0203 (`MRN = "MR"`).
    #[serde(default)]
    type_aliases: HashMap<String, String>,
    /// What may stand in for a missing CX.4, tried in order: `"CX.6"` (the assigning
    /// facility) and `"MSH-4"` (the sending facility itself).
    #[serde(default)]
    stand_in: Vec<String>,
    /// The authority (namespace, OID or system URI) assumed for a CX with no CX.4 when
    /// no stand-in applies: the facility's own MRN system.
    #[serde(default)]
    assume_authority: Option<String>,
}

/// What may stand in for a missing assigning authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StandIn {
    AssigningFacility,
    SendingFacility,
}

/// Why an identifier a source sent does not take part in resolution. Not an error:
/// the message is still applied, with a warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("the identifier value is empty")]
    EmptyValue,
    #[error("no assigning authority or system")]
    NoAuthority,
    #[error(
        "no assigning authority (CX.4), and no rule for this source names one (identity/sources.toml [[source]] assume_authority or stand_in)"
    )]
    NoAuthorityNoRule,
    #[error("authority {authority} is not trusted for this source (rule {rule})")]
    Untrusted { authority: String, rule: String },
    #[error("identifier type {0} does not name a person")]
    NotPersonLevel(String),
}

/// The parts of an HL7 CX value resolution needs (already unescaped).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cx<'a> {
    pub value: &'a str,
    /// CX.4.1, CX.4.2, CX.4.3.
    pub namespace: &'a str,
    pub universal_id: &'a str,
    pub universal_id_type: &'a str,
    /// CX.5.
    pub kind: &'a str,
    /// CX.6.1, CX.6.2 (the assigning facility): may stand in for an empty CX.4 when the
    /// source's rule says so.
    pub facility_namespace: &'a str,
    pub facility_universal_id: &'a str,
}

/// The loaded rules.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    prefix: String,
    person_types: Vec<String>,
    untyped: bool,
    /// Namespace, OID or system → system URI.
    authorities: HashMap<String, String>,
    sources: HashMap<String, Source>,
}

#[derive(Debug, Clone)]
struct Source {
    /// The rule's id, for the warning an untrusted identifier gets.
    id: String,
    trusted: Option<Vec<String>>,
    person_types: Option<Vec<String>>,
    type_aliases: HashMap<String, String>,
    stand_in: Vec<StandIn>,
    assume_authority: Option<String>,
}

impl Default for IdentityRules {
    fn default() -> Self {
        IdentityRules::build(RulesFile::default()).expect("the defaults are valid")
    }
}

impl IdentityRules {
    /// Checks a parsed rules file; an error names the rule id.
    pub fn build(file: RulesFile) -> Result<IdentityRules, (String, String)> {
        let mut authorities = HashMap::new();
        for a in &file.authority {
            if a.namespace.is_none() && a.oid.is_none() {
                return Err((a.id.clone(), "needs a namespace or an oid".into()));
            }
            if !a.system.contains(':') {
                return Err((a.id.clone(), format!("system {:?} is not a URI", a.system)));
            }
            for key in [&a.namespace, &a.oid].into_iter().flatten() {
                if let Some(other) = authorities.insert(key.clone(), a.system.clone())
                    && other != a.system
                {
                    return Err((
                        a.id.clone(),
                        format!("{key:?} is already mapped to {other:?}"),
                    ));
                }
            }
        }
        let mut sources = HashMap::new();
        for s in file.source {
            let mut stand_in = Vec::new();
            for field in &s.stand_in {
                stand_in.push(match field.as_str() {
                    "CX.6" => StandIn::AssigningFacility,
                    "MSH-4" => StandIn::SendingFacility,
                    other => {
                        return Err((
                            s.id.clone(),
                            format!("stand_in {other:?}: expected \"CX.6\" or \"MSH-4\""),
                        ));
                    }
                });
            }
            if let Some(a) = &s.assume_authority
                && a.trim().is_empty()
            {
                return Err((s.id.clone(), "assume_authority is empty".into()));
            }
            let mut type_aliases = HashMap::new();
            for (local, standard) in s.type_aliases {
                if standard.trim().is_empty() {
                    return Err((
                        s.id.clone(),
                        format!("type_aliases {local:?} maps to nothing"),
                    ));
                }
                type_aliases.insert(local.to_ascii_uppercase(), standard);
            }
            let source = Source {
                id: s.id.clone(),
                trusted: s.trusted,
                person_types: s.person_types,
                type_aliases,
                stand_in,
                assume_authority: s.assume_authority,
            };
            if sources.insert(s.facility.clone(), source).is_some() {
                return Err((s.id, format!("facility {:?} has two rules", s.facility)));
            }
        }
        Ok(IdentityRules {
            prefix: file.namespace_prefix,
            person_types: file.person_types,
            untyped: file.untyped,
            authorities,
            sources,
        })
    }

    /// The system URI an authority maps to.
    fn system_of(&self, cx: &Cx) -> Option<String> {
        for key in [cx.universal_id, cx.namespace] {
            if let Some(system) = self.authorities.get(key).filter(|_| !key.is_empty()) {
                return Some(system.clone());
            }
        }
        if !cx.universal_id.is_empty() && cx.universal_id_type.eq_ignore_ascii_case("ISO") {
            return Some(format!("urn:oid:{}", cx.universal_id));
        }
        if !cx.namespace.is_empty() {
            return Some(format!("{}{}", self.prefix, cx.namespace));
        }
        None
    }

    fn person_level(&self, source: Option<&Source>, kind: &str) -> Result<(), Skipped> {
        if kind.is_empty() {
            return if self.untyped {
                Ok(())
            } else {
                Err(Skipped::NotPersonLevel("(none)".into()))
            };
        }
        let types = source
            .and_then(|s| s.person_types.as_ref())
            .unwrap_or(&self.person_types);
        if types.iter().any(|t| t.eq_ignore_ascii_case(kind)) {
            Ok(())
        } else {
            Err(Skipped::NotPersonLevel(kind.to_string()))
        }
    }

    /// An HL7 CX repetition from `facility` (MSH-4) as an identifier.
    pub fn from_cx(&self, facility: &str, cx: &Cx) -> Result<Identifier, Skipped> {
        self.from_cx_noted(facility, cx).map(|(id, _)| id)
    }

    /// Like [`IdentityRules::from_cx`], with a note when the source's rule supplied
    /// what the CX left out (its authority), for the message's warnings.
    pub fn from_cx_noted(
        &self,
        facility: &str,
        cx: &Cx,
    ) -> Result<(Identifier, Option<String>), Skipped> {
        let value = cx.value.trim();
        if value.is_empty() || value == "\"\"" {
            return Err(Skipped::EmptyValue);
        }
        let source = self.sources.get(facility);
        let mut cx = *cx;
        let mut note = None;
        // Set by a rule (the source's own authority): trusted because the rule says so.
        let mut assumed = false;
        if cx.namespace.is_empty() && cx.universal_id.is_empty() {
            let Some(s) = source else {
                return Err(Skipped::NoAuthorityNoRule);
            };
            let stood_in = s.stand_in.iter().find_map(|field| match field {
                StandIn::AssigningFacility => [cx.facility_namespace, cx.facility_universal_id]
                    .into_iter()
                    .find(|v| !v.is_empty())
                    .map(|v| (v, "CX.6")),
                StandIn::SendingFacility => Some((facility, "MSH-4")),
            });
            match (stood_in, &s.assume_authority) {
                (Some((authority, field)), _) => {
                    cx.namespace = authority;
                    assumed = field == "MSH-4";
                    note = Some(format!(
                        "no CX.4: {field} {authority:?} stands in (rule {})",
                        s.id
                    ));
                }
                (None, Some(authority)) => {
                    cx.namespace = authority;
                    assumed = true;
                    note = Some(format!(
                        "no CX.4: authority {authority:?} assumed (rule {})",
                        s.id
                    ));
                }
                (None, None) => return Err(Skipped::NoAuthorityNoRule),
            }
        }
        let system = if cx.namespace.contains(':') && cx.universal_id.is_empty() {
            // An assumed authority may be written as the system URI itself.
            self.authorities
                .get(cx.namespace)
                .cloned()
                .unwrap_or_else(|| cx.namespace.to_string())
        } else {
            self.system_of(&cx).ok_or(Skipped::NoAuthority)?
        };
        if let Some(s) = source
            && let Some(list) = &s.trusted
            && !assumed
        {
            let trusted = list.iter().any(|t| {
                t == &system
                    || (!cx.namespace.is_empty() && t == cx.namespace)
                    || (!cx.universal_id.is_empty() && t == cx.universal_id)
            });
            if !trusted {
                return Err(Skipped::Untrusted {
                    authority: system,
                    rule: s.id.clone(),
                });
            }
        }
        let kind = source
            .and_then(|s| s.type_aliases.get(&cx.kind.to_ascii_uppercase()))
            .map_or(cx.kind, String::as_str);
        self.person_level(source, kind)?;
        Ok((
            Identifier::new(&system, value, Some(kind).filter(|k| !k.is_empty())),
            note,
        ))
    }

    /// A FHIR Patient's identifiers, sorted and deduplicated, and those left out with
    /// their path and why.
    pub fn from_fhir_patient(&self, patient: &Value) -> (Vec<Identifier>, Vec<(String, Skipped)>) {
        let mut ids = Vec::new();
        let mut skipped = Vec::new();
        for (n, element) in patient
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match self.from_fhir(element) {
                Ok(id) => ids.push(id),
                Err(why) => skipped.push((format!("Patient.identifier[{n}]"), why)),
            }
        }
        ids.sort();
        ids.dedup_by(|a, b| a.system == b.system && a.value == b.value);
        (ids, skipped)
    }

    /// A FHIR `Identifier` element as a person identifier (EHRs are trusted for the
    /// systems they send).
    pub fn from_fhir(&self, identifier: &Value) -> Result<Identifier, Skipped> {
        let value = identifier
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or("");
        if value.trim().is_empty() {
            return Err(Skipped::EmptyValue);
        }
        let system = identifier
            .get("system")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Skipped::NoAuthority)?;
        let kind = identifier
            .pointer("/type/coding")
            .and_then(Value::as_array)
            .and_then(|codings| {
                codings.iter().find(|c| {
                    c.get("system").and_then(Value::as_str)
                        == Some("http://terminology.hl7.org/CodeSystem/v2-0203")
                })
            })
            .and_then(|c| c.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("");
        self.person_level(None, kind)?;
        Ok(Identifier::new(
            system,
            value.trim(),
            Some(kind).filter(|k| !k.is_empty()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IdentityRules {
        IdentityRules::build(toml::from_str(text).unwrap()).unwrap()
    }

    fn cx<'a>(value: &'a str, namespace: &'a str, oid: &'a str, kind: &'a str) -> Cx<'a> {
        Cx {
            value,
            namespace,
            universal_id: oid,
            universal_id_type: if oid.is_empty() { "" } else { "ISO" },
            kind,
            ..Cx::default()
        }
    }

    #[test]
    fn a_cx_without_authority_is_never_guessed_without_a_rule() {
        let r = IdentityRules::default();
        assert_eq!(
            r.from_cx("RVH", &cx("135769", "", "", "MR")),
            Err(Skipped::NoAuthorityNoRule)
        );
        let with_cx6 = Cx {
            facility_namespace: "Special Hospital",
            ..cx("135769", "", "", "MR")
        };
        assert_eq!(r.from_cx("RVH", &with_cx6), Err(Skipped::NoAuthorityNoRule));
    }

    #[test]
    fn a_source_rule_supplies_the_authority_aliases_types_and_person_types() {
        let r = rules(
            r#"
            [[authority]]
            id = "authority.uclh"
            namespace = "MRENTR"
            system = "https://uclh.example.org/mrn"

            [[source]]
            id = "source.uclh"
            facility = "UCLH"
            assume_authority = "MRENTR"
            type_aliases = { MEDREC = "MR", mrn = "MR" }
            person_types = ["MR", "HN"]

            [[source]]
            id = "source.special"
            facility = "SPECIAL"
            stand_in = ["CX.6", "MSH-4"]
            trusted = ["Special Hospital"]
            "#,
        );
        // A bare MRN resolves to the facility's own MRN system.
        let (id, note) = r
            .from_cx_noted("UCLH", &cx("40800000", "", "", "MEDREC"))
            .unwrap();
        assert_eq!(id.system, "https://uclh.example.org/mrn");
        assert_eq!(id.kind.as_deref(), Some("MR"));
        assert!(note.unwrap().contains("source.uclh"));
        // The same MRN with its authority written is the same identifier.
        assert_eq!(
            r.from_cx("UCLH", &cx("40800000", "MRENTR", "", "MRN"))
                .unwrap(),
            id
        );
        // HN is a person-level type for this source only.
        assert!(r.from_cx("UCLH", &cx("999", "NHS", "", "HN")).is_ok());
        assert!(r.from_cx("RVH", &cx("999", "NHS", "", "HN")).is_err());
        // CX.6 stands in, and must be trusted; MSH-4 stands in for itself.
        let with_cx6 = Cx {
            facility_namespace: "Special Hospital",
            ..cx("MRN12345", "", "", "MR")
        };
        let id = r.from_cx("SPECIAL", &with_cx6).unwrap();
        assert_eq!(id.system, "urn:crossway:authority:Special Hospital");
        let id = r.from_cx("SPECIAL", &cx("7", "", "", "MR")).unwrap();
        assert_eq!(id.system, "urn:crossway:authority:SPECIAL");
        let other_cx6 = Cx {
            facility_namespace: "Elsewhere",
            ..cx("7", "", "", "MR")
        };
        assert!(matches!(
            r.from_cx("SPECIAL", &other_cx6),
            Err(Skipped::Untrusted { .. })
        ));
    }

    #[test]
    fn unknown_stand_ins_are_refused_by_rule_id() {
        let file: RulesFile = toml::from_str(
            r#"
            [[source]]
            id = "source.x"
            facility = "X"
            stand_in = ["PID-4"]
            "#,
        )
        .unwrap();
        let (rule, message) = IdentityRules::build(file).unwrap_err();
        assert_eq!(rule, "source.x");
        assert!(message.contains("PID-4"), "{message}");
    }

    #[test]
    fn without_rules_oids_and_namespaces_become_systems() {
        let r = IdentityRules::default();
        let id = r.from_cx("RVH", &cx("123", "RVH", "1.2.3", "MR")).unwrap();
        assert_eq!(
            (id.system.as_str(), id.value.as_str()),
            ("urn:oid:1.2.3", "123")
        );
        let id = r.from_cx("RVH", &cx("9", "STATEHIE", "", "PI")).unwrap();
        assert_eq!(id.system, "urn:crossway:authority:STATEHIE");
    }

    #[test]
    fn empty_values_visit_numbers_and_untrusted_authorities_are_skipped() {
        let r = rules(
            r#"
            [[source]]
            id = "source.rvh"
            facility = "RVH"
            trusted = ["RVH"]
            "#,
        );
        assert_eq!(
            r.from_cx("RVH", &cx("", "RVH", "", "MR")),
            Err(Skipped::EmptyValue)
        );
        assert_eq!(
            r.from_cx("RVH", &cx("\"\"", "RVH", "", "MR")),
            Err(Skipped::EmptyValue)
        );
        assert_eq!(
            r.from_cx("RVH", &cx("A1", "RVH", "", "AN")),
            Err(Skipped::NotPersonLevel("AN".into()))
        );
        assert!(matches!(
            r.from_cx("RVH", &cx("7", "OTHER", "", "MR")),
            Err(Skipped::Untrusted { .. })
        ));
        assert!(r.from_cx("RVH", &cx("7", "RVH", "", "MR")).is_ok());
        assert!(r.from_cx("ELSEWHERE", &cx("7", "OTHER", "", "MR")).is_ok());
    }

    #[test]
    fn an_authority_rule_maps_namespace_and_oid_to_one_system() {
        let r = rules(
            r#"
            [[authority]]
            id = "authority.rvh"
            namespace = "RVH"
            oid = "2.16.840.1.113883.3.9999.1"
            system = "https://rvh.example.org/mrn"
            "#,
        );
        let a = r.from_cx("X", &cx("1", "RVH", "", "MR")).unwrap();
        let b = r
            .from_cx("X", &cx("1", "", "2.16.840.1.113883.3.9999.1", "MR"))
            .unwrap();
        assert_eq!(a.system, "https://rvh.example.org/mrn");
        assert_eq!(a, b);
    }

    #[test]
    fn conflicting_authority_rules_are_refused_by_id() {
        let file: RulesFile = toml::from_str(
            r#"
            [[authority]]
            id = "a1"
            namespace = "RVH"
            system = "urn:x:1"
            [[authority]]
            id = "a2"
            namespace = "RVH"
            system = "urn:x:2"
            "#,
        )
        .unwrap();
        let (rule, message) = IdentityRules::build(file).unwrap_err();
        assert_eq!(rule, "a2");
        assert!(message.contains("RVH"), "{message}");
    }

    #[test]
    fn fhir_identifiers_need_a_system_and_a_person_level_type() {
        let r = IdentityRules::default();
        let mr = serde_json::json!({"system": "urn:oid:1.2", "value": "5",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}});
        assert_eq!(r.from_fhir(&mr).unwrap().kind.as_deref(), Some("MR"));
        let visit = serde_json::json!({"system": "urn:oid:1.2", "value": "5",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]}});
        assert!(r.from_fhir(&visit).is_err());
        assert_eq!(
            r.from_fhir(&serde_json::json!({"value": "5"})),
            Err(Skipped::NoAuthority)
        );
    }
}
