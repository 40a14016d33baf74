//! Search parameters: the table of what is searchable, extraction of index entries from a
//! resource, and the typed query the store runs (parsing a request into one is the
//! FHIR face's: `fhir::search`).
//!
//! The table is the single source for the store's indexes, the query parser and the
//! CapabilityStatement, so what we advertise is exactly what we implement.

use serde_json::Value;

use super::datetime::{self, Range};
use super::issue::Issue;
use super::reference::{self, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `_id`: the logical id column.
    Id,
    /// `_lastUpdated`: the meta.lastUpdated column.
    LastUpdated,
    Token,
    Reference,
    String,
    Date,
    Uri,
}

impl ParamType {
    pub fn fhir_name(self) -> &'static str {
        match self {
            ParamType::Id | ParamType::Token => "token",
            ParamType::LastUpdated | ParamType::Date => "date",
            ParamType::Reference => "reference",
            ParamType::String => "string",
            ParamType::Uri => "uri",
        }
    }
}

#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub kind: ParamType,
    /// Dot paths from the resource root; arrays are flattened at every step.
    pub paths: &'static [&'static str],
    /// Reference params: the target types (empty means any).
    pub targets: &'static [&'static str],
    /// The parameter whose index rows answer this one. `patient` is `subject` limited
    /// to Patient targets on most types: it stores no rows of its own (three fewer per
    /// referral) and is answered from `subject`'s rows to a Patient.
    pub indexed_as: &'static str,
    /// Parameters whose rows also answer this one, indexed at this one's sub-elements
    /// of the same name. Patient `name` matches any part of a name; its `family` and
    /// `given` parts are those parameters' rows (three fewer rows per Patient).
    pub also: &'static [&'static str],
}

impl ParamDef {
    /// Whether a reference target (`Type/id` or an absolute URL) is one this
    /// parameter allows.
    pub fn allows_target(&self, target: &str) -> bool {
        self.targets.is_empty() || self.targets.contains(&target_type(target))
    }
}

/// The type of a reference target: `Type` of `Type/id`, the second-last path segment of
/// an absolute URL.
pub fn target_type(target: &str) -> &str {
    if target.contains("://") {
        target
            .trim_end_matches('/')
            .rsplit('/')
            .nth(1)
            .unwrap_or("")
    } else {
        target.split('/').next().unwrap_or("")
    }
}

const fn p(name: &'static str, kind: ParamType, paths: &'static [&'static str]) -> ParamDef {
    ParamDef {
        name,
        kind,
        paths,
        targets: &[],
        indexed_as: name,
        also: &[],
    }
}

const fn r(
    name: &'static str,
    paths: &'static [&'static str],
    targets: &'static [&'static str],
) -> ParamDef {
    ParamDef {
        name,
        kind: ParamType::Reference,
        paths,
        targets,
        indexed_as: name,
        also: &[],
    }
}

/// `patient` on a type whose `subject` (at the same paths) may name any type.
const fn patient_of_subject(paths: &'static [&'static str]) -> ParamDef {
    ParamDef {
        indexed_as: "subject",
        ..r("patient", paths, PATIENT)
    }
}

use ParamType::{Date, String as Str, Token};

/// Parameters every resource type has.
pub static COMMON: &[ParamDef] = &[
    p("_id", ParamType::Id, &[]),
    p("_lastUpdated", ParamType::LastUpdated, &[]),
    p("_profile", ParamType::Uri, &["meta.profile"]),
    p("identifier", Token, &["identifier"]),
];

const PATIENT: &[&str] = &["Patient"];

/// Type-specific parameters. Names and paths follow the FHIR R4 search parameter registry.
pub fn type_params(resource_type: &str) -> &'static [ParamDef] {
    match resource_type {
        "Task" => TASK_PARAMS,
        "ServiceRequest" => SERVICE_REQUEST_PARAMS,
        "Patient" => PATIENT_PARAMS,
        "Procedure" => PROCEDURE_PARAMS,
        "Encounter" => ENCOUNTER_PARAMS,
        "Observation" => OBSERVATION_PARAMS,
        "Condition" => CONDITION_PARAMS,
        "Consent" => CONSENT_PARAMS,
        "Goal" => GOAL_PARAMS,
        "HealthcareService" => HEALTHCARE_SERVICE_PARAMS,
        "Organization" => ORGANIZATION_PARAMS,
        "Practitioner" => PRACTITIONER_PARAMS,
        "PractitionerRole" => PRACTITIONER_ROLE_PARAMS,
        "Location" => LOCATION_PARAMS,
        "RelatedPerson" => RELATED_PERSON_PARAMS,
        "DocumentReference" => DOCUMENT_REFERENCE_PARAMS,
        "CareTeam" => CARE_TEAM_PARAMS,
        "QuestionnaireResponse" => QUESTIONNAIRE_RESPONSE_PARAMS,
        "Questionnaire" => QUESTIONNAIRE_PARAMS,
        _ => &[],
    }
}

static TASK_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("code", Token, &["code"]),
    p("intent", Token, &["intent"]),
    p("business-status", Token, &["businessStatus"]),
    p("authored-on", Date, &["authoredOn"]),
    r("owner", &["owner"], &[]),
    r("requester", &["requester"], &[]),
    r("focus", &["focus"], &[]),
    patient_of_subject(&["for"]),
    r("subject", &["for"], &[]),
    r("based-on", &["basedOn"], &[]),
    r("part-of", &["partOf"], &["Task"]),
    r("output", &["output.valueReference"], &[]),
];

static SERVICE_REQUEST_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("intent", Token, &["intent"]),
    p("category", Token, &["category"]),
    p("code", Token, &["code"]),
    p("authored", Date, &["authoredOn"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
    r("requester", &["requester"], &[]),
    r("performer", &["performer"], &[]),
    r("based-on", &["basedOn"], &[]),
];

static PATIENT_PARAMS: &[ParamDef] = &[
    ParamDef {
        also: &["family", "given"],
        ..p("name", Str, &["name"])
    },
    p("family", Str, &["name.family"]),
    p("given", Str, &["name.given"]),
    p("birthdate", Date, &["birthDate"]),
    p("gender", Token, &["gender"]),
];

static PROCEDURE_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("category", Token, &["category"]),
    p("code", Token, &["code"]),
    r("based-on", &["basedOn"], &[]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
    r("performer", &["performer.actor"], &[]),
];

static ENCOUNTER_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("class", Token, &["class"]),
    p("date", Date, &["period"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static OBSERVATION_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("category", Token, &["category"]),
    p("code", Token, &["code"]),
    r("based-on", &["basedOn"], &[]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static CONDITION_PARAMS: &[ParamDef] = &[
    p("category", Token, &["category"]),
    p("code", Token, &["code"]),
    p("clinical-status", Token, &["clinicalStatus"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static CONSENT_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("category", Token, &["category"]),
    r("patient", &["patient"], PATIENT),
];

static GOAL_PARAMS: &[ParamDef] = &[
    p("lifecycle-status", Token, &["lifecycleStatus"]),
    p("category", Token, &["category"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static HEALTHCARE_SERVICE_PARAMS: &[ParamDef] = &[
    p("name", Str, &["name"]),
    p("service-category", Token, &["category"]),
    p("service-type", Token, &["type"]),
    p("active", Token, &["active"]),
    r("organization", &["providedBy"], &["Organization"]),
    r("location", &["location"], &["Location"]),
];

static ORGANIZATION_PARAMS: &[ParamDef] = &[
    p("name", Str, &["name", "alias"]),
    p("type", Token, &["type"]),
    p("active", Token, &["active"]),
];

static PRACTITIONER_PARAMS: &[ParamDef] = &[p("name", Str, &["name"])];

static PRACTITIONER_ROLE_PARAMS: &[ParamDef] = &[
    p("role", Token, &["code"]),
    r("organization", &["organization"], &["Organization"]),
    r("practitioner", &["practitioner"], &["Practitioner"]),
];

static LOCATION_PARAMS: &[ParamDef] = &[
    p("name", Str, &["name", "alias"]),
    r("organization", &["managingOrganization"], &["Organization"]),
];

static RELATED_PERSON_PARAMS: &[ParamDef] = &[r("patient", &["patient"], PATIENT)];

static DOCUMENT_REFERENCE_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    p("type", Token, &["type"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static CARE_TEAM_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static QUESTIONNAIRE_RESPONSE_PARAMS: &[ParamDef] = &[
    p("status", Token, &["status"]),
    r("subject", &["subject"], &[]),
    patient_of_subject(&["subject"]),
];

static QUESTIONNAIRE_PARAMS: &[ParamDef] = &[
    p("url", ParamType::Uri, &["url"]),
    p("status", Token, &["status"]),
];

/// Looks a parameter up; the IG's own example writes `_lastupdated`, so that is accepted.
pub fn find_param(resource_type: &str, name: &str) -> Option<&'static ParamDef> {
    let name = if name == "_lastupdated" {
        "_lastUpdated"
    } else {
        name
    };
    COMMON
        .iter()
        .chain(type_params(resource_type))
        .find(|d| d.name == name)
}

// ---------------------------------------------------------------------------------------
// Index extraction

/// What the store indexes for one resource version.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IndexEntries {
    /// (param, system, code); system is "" when absent.
    pub tokens: Vec<(&'static str, String, String)>,
    /// (param, target); target is `Type/id` for a local reference, else the absolute URL.
    pub references: Vec<(&'static str, String)>,
    /// (param, normalised value)
    pub strings: Vec<(&'static str, String)>,
    /// (param, range)
    pub dates: Vec<(&'static str, Range)>,
}

/// Lower-cased, for case-insensitive prefix matching (FHIR string search).
pub fn normalize_string(s: &str) -> String {
    s.trim().to_lowercase()
}

pub fn extract(resource_type: &str, resource: &Value, own_base: Option<&str>) -> IndexEntries {
    let mut out = IndexEntries::default();
    let own = |def: &&ParamDef| def.indexed_as == def.name;
    for def in COMMON.iter().chain(type_params(resource_type)).filter(own) {
        for path in def.paths {
            let mut values = Vec::new();
            collect(resource, path, &mut values);
            for v in values {
                match def.kind {
                    ParamType::Token | ParamType::Uri => tokens_of(def.name, v, &mut out.tokens),
                    ParamType::Reference => {
                        if let Some(entry) = reference_of(def, v, own_base) {
                            out.references.push(entry);
                        }
                    }
                    ParamType::String => strings_of(def.name, def.also, v, &mut out.strings),
                    ParamType::Date => dates_of(def.name, v, &mut out.dates),
                    ParamType::Id | ParamType::LastUpdated => {}
                }
            }
        }
    }
    // A value repeated in one resource (the same coding twice) is one index entry.
    out.tokens.sort();
    out.tokens.dedup();
    out.references.sort();
    out.references.dedup();
    out.strings.sort();
    out.strings.dedup();
    out.dates.sort();
    out.dates.dedup();
    out
}

fn collect<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        _ if path.is_empty() => out.push(v),
        Value::Object(map) => {
            let (head, rest) = path.split_once('.').unwrap_or((path, ""));
            if let Some(child) = map.get(head) {
                collect(child, rest, out);
            }
        }
        _ => {}
    }
}

fn tokens_of(param: &'static str, v: &Value, out: &mut Vec<(&'static str, String, String)>) {
    let s = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or("").to_string();
    match v {
        Value::String(code) => out.push((param, String::new(), code.clone())),
        Value::Bool(b) => out.push((param, String::new(), b.to_string())),
        Value::Object(m) if m.contains_key("coding") => {
            for c in m["coding"].as_array().into_iter().flatten() {
                if c.get("code").is_some() {
                    out.push((param, s(c.get("system")), s(c.get("code"))));
                }
            }
        }
        Value::Object(m) if m.contains_key("value") => {
            out.push((param, s(m.get("system")), s(m.get("value"))));
        }
        Value::Object(m) if m.contains_key("code") => {
            out.push((param, s(m.get("system")), s(m.get("code"))));
        }
        _ => {}
    }
}

fn reference_of(
    def: &'static ParamDef,
    v: &Value,
    own_base: Option<&str>,
) -> Option<(&'static str, String)> {
    let reference = v.get("reference")?.as_str()?;
    let target = match reference::parse(reference, own_base)? {
        Target::Local { resource_type, id } => format!("{resource_type}/{id}"),
        Target::External { url } => url.to_string(),
        _ => return None,
    };
    def.allows_target(&target).then_some((def.name, target))
}

/// `skip`: the parts of a name that other parameters index (`ParamDef::also`).
fn strings_of(
    param: &'static str,
    skip: &[&str],
    v: &Value,
    out: &mut Vec<(&'static str, String)>,
) {
    match v {
        Value::String(s) => out.push((param, normalize_string(s))),
        Value::Array(items) => items.iter().for_each(|i| strings_of(param, skip, i, out)),
        Value::Object(m) => {
            for key in ["text", "family", "given", "prefix", "suffix"] {
                if let Some(x) = m.get(key).filter(|_| !skip.contains(&key)) {
                    strings_of(param, skip, x, out);
                }
            }
        }
        _ => {}
    }
}

fn dates_of(param: &'static str, v: &Value, out: &mut Vec<(&'static str, Range)>) {
    match v {
        Value::String(s) => {
            if let Some(r) = datetime::parse_range(s) {
                out.push((param, r));
            }
        }
        Value::Object(m) => {
            let lo = m
                .get("start")
                .and_then(Value::as_str)
                .and_then(datetime::parse_range);
            let hi = m
                .get("end")
                .and_then(Value::as_str)
                .and_then(datetime::parse_range);
            if lo.is_some() || hi.is_some() {
                out.push((
                    param,
                    Range {
                        lo: lo.map_or(i64::MIN, |r| r.lo),
                        hi: hi.map_or(i64::MAX, |r| r.hi),
                    },
                ));
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Query parsing

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `system|code`, `|code` (system must be absent), `code`, `system|`.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// A `Type/id` or absolute URL; or a bare id that matches any target type.
    Reference {
        target: Option<String>,
        id: String,
    },
    String(String),
    Date {
        prefix: Prefix,
        range: Range,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    Missing,
    Exact,
    Contains,
}

/// One search parameter occurrence: its values are ORed; occurrences are ANDed.
#[derive(Debug, Clone)]
pub struct Filter {
    pub param: &'static ParamDef,
    pub modifier: Modifier,
    /// For `:missing`, whether the element must be missing (`true`) or present.
    pub missing: bool,
    pub values: Vec<SearchValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    LastUpdatedAsc,
    LastUpdatedDesc,
}

/// Keyset position: the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub last_updated: i64,
    pub seq: i64,
}

#[derive(Debug, Clone)]
pub struct Include {
    pub source_type: String,
    pub param: &'static ParamDef,
    /// `Source:param:Target`: only targets of this type are included.
    pub target: Option<String>,
    /// `_include:iterate`: also applied to the resources included, not only to matches.
    pub iterate: bool,
}

impl Include {
    /// Whether a local reference target (`Type/id`) is one this include returns.
    pub fn returns(&self, target: &str) -> bool {
        self.param.allows_target(target)
            && self
                .target
                .as_deref()
                .is_none_or(|t| target_type(target) == t)
    }
}

/// `_total`: whether the searchset says how many resources match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Not asked: given when it costs nothing (the first page holds every match).
    Default,
    /// `_total=none`: never.
    None,
    /// `_total=estimate`: as `Default`; an exact figure is a fine estimate.
    Estimate,
    /// `_total=accurate`: always, counted when the page does not show it.
    Accurate,
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub resource_type: String,
    pub filters: Vec<Filter>,
    pub includes: Vec<Include>,
    pub sort: Sort,
    pub count: usize,
    pub cursor: Option<Cursor>,
    pub total: Total,
    /// The parameters that took effect, for the Bundle's `self` and `next` links.
    pub echo: Vec<(String, String)>,
    /// Warnings to report (e.g. ignored parameters in lenient mode).
    pub warnings: Vec<Issue>,
}
