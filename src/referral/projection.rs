//! The referral as a CBO sees it (cbo-api.md §3): built from the Task, its
//! ServiceRequest, Patient, Consent, Conditions and referrer, then cut down to what the
//! organisation may see (minimum necessary) and to what the client's consent allows.
//!
//! Pure: [`wanted`] says which resources to read next, the caller reads them into
//! [`Related`], and [`project`] builds the view.
//!
//! Invariants: a CBO never sees a hospital identifier (the client is a gateway-scoped
//! `client_ref`), and sees contact details only with granted consent and no
//! `contacting-subject-prohibited`.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::CboStatus;
use super::action::STATUS_REASON_SYSTEM;
use crate::resource::reference::{self, Target};
use crate::store::StoredResource;

/// Resources around a referral Task, keyed `Type/id`.
#[derive(Debug, Default)]
pub struct Related {
    pub resources: HashMap<String, Value>,
    /// The version of each resource read (None: it does not exist), so that a view
    /// built from them can be reused for as long as they are all current.
    pub versions: Vec<(String, String, Option<i64>)>,
}

impl Related {
    /// The resource a Reference points at, if it was read.
    pub fn get(&self, reference: Option<&Value>) -> Option<&Value> {
        let r = reference?.get("reference")?.as_str()?;
        match reference::parse(r, None)? {
            Target::Local { resource_type, id } => {
                self.resources.get(&format!("{resource_type}/{id}"))
            }
            _ => None,
        }
    }

    /// Records what was read for `keys`; a key with no resource is remembered as
    /// missing (null) so it is not asked for again.
    pub fn add(&mut self, keys: &[(String, String)], found: Vec<StoredResource>) {
        for (ty, id) in keys {
            let stored = found.iter().find(|r| r.resource_type == *ty && r.id == *id);
            let value = stored
                .and_then(|r| serde_json::from_str(&r.body).ok())
                .unwrap_or(Value::Null);
            self.resources.insert(format!("{ty}/{id}"), value);
            self.versions
                .push((ty.clone(), id.clone(), stored.map(|r| r.version)));
        }
    }
}

/// The referral row the projection starts from (what the list also shows).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Summary {
    pub id: String,
    pub version: i64,
    pub status: CboStatus,
    #[schema(schema_with = urgency_schema)]
    pub urgency: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `Task.restriction.period.end` as the Task states it: a date stays a date, a
    /// dateTime keeps its offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
}

///
/// What an organisation sees depends on the visibility rules that apply to it
/// (`mappings/cbo/visibility.toml`) and on the client's consent: every member a rule can
/// remove ([`OMITTABLE`]) is optional here, so the schema holds for every organisation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Projection {
    pub id: String,
    pub version: i64,
    pub status: CboStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `Task.restriction.period.end` as the Task states it: a date, or a date-time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond_by: Option<String>,
    #[schema(schema_with = urgency_schema)]
    pub urgency: String,
    #[schema(required = false)]
    pub need: Need,
    #[schema(required = false)]
    pub service: RequestedService,
    pub client: Client,
    #[schema(required = false)]
    pub consent: Consent,
    #[schema(required = false)]
    pub referrer: Referrer,
    #[schema(required = false)]
    pub notes: Vec<Note>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<StatusReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Why the client may not be contacted; empty when contact is allowed.
    #[schema(schema_with = flags_schema)]
    pub flags: Vec<&'static str>,
    /// The FHIR Task behind the referral, for integrators who also speak FHIR.
    pub task: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Need {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Omitted for most organisations (`visibility.default`).
    #[schema(required = false)]
    pub conditions: Vec<Code>,
}

#[derive(Debug, Serialize, Clone, PartialEq, ToSchema)]
pub struct Code {
    pub system: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// The service the referral asks for (`ServiceRequest.code`); not an entry of the
/// organisation's catalogue (`Service`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestedService {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<Code>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Client {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_contact: Option<String>,
    pub contact_allowed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Name {
    pub given: String,
    pub family: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Consent {
    #[schema(schema_with = consent_status_schema)]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obtained_at: Option<String>,
}

#[derive(Debug, Serialize, Default, ToSchema)]
pub struct Referrer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Note {
    /// Who wrote it: the referrer, or the organisation (`cbo`).
    #[schema(schema_with = note_author_schema)]
    pub author: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusReason {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A closed set of codes as a string schema with `enum`.
pub fn code_schema(description: &str, codes: &[&str]) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(codes.iter().copied()))
        .build()
}

/// `Task.priority` (FHIR request-priority).
pub const URGENCIES: [&str; 4] = ["routine", "urgent", "asap", "stat"];

fn urgency_schema() -> utoipa::openapi::schema::Object {
    code_schema("Task.priority (FHIR request-priority)", &URGENCIES)
}

fn consent_status_schema() -> utoipa::openapi::schema::Object {
    code_schema(
        "The client's consent to share with this organisation",
        &["granted", "denied", "revoked", "pending", "missing"],
    )
}

fn note_author_schema() -> utoipa::openapi::schema::Object {
    code_schema("Who wrote the note", &["referrer", "cbo"])
}

fn flags_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(code_schema(
            "Why the client may not be contacted",
            &[
                "consent_missing",
                "consent_denied",
                "consent_revoked",
                "contact_prohibited",
            ],
        ))
        .build()
}

/// Whether a JSON pointer (`/client/name/family`, `/need/conditions/0/code`) names a
/// field of the projection, by its OpenAPI schema: templates that read the projection
/// are checked against what it can hold, not against one sample.
pub fn has_field(pointer: &str) -> bool {
    static SCHEMAS: std::sync::LazyLock<(Value, HashMap<String, Value>)> =
        std::sync::LazyLock::new(|| {
            let mut named = Vec::new();
            <Projection as ToSchema>::schemas(&mut named);
            let to_json = |s| serde_json::to_value(s).unwrap_or(Value::Null);
            let root = to_json(<Projection as utoipa::PartialSchema>::schema());
            let named = named.into_iter().map(|(n, s)| (n, to_json(s))).collect();
            (root, named)
        });
    let (root, named) = &*SCHEMAS;
    fn walk<'a>(node: &'a Value, named: &'a HashMap<String, Value>, path: &[&str]) -> bool {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or(r);
            return named.get(name).is_some_and(|n| walk(n, named, path));
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(Value::Array(options)) = node.get(key) {
                return options.iter().any(|o| walk(o, named, path));
            }
        }
        let Some((first, rest)) = path.split_first() else {
            return true;
        };
        if let Some(items) = node.get("items") {
            return first.parse::<usize>().is_ok() && walk(items, named, rest);
        }
        node.get("properties")
            .and_then(|p| p.get(*first))
            .is_some_and(|field| walk(field, named, rest))
    }
    let Some(path) = pointer.strip_prefix('/') else {
        return pointer.is_empty();
    };
    walk(root, named, &path.split('/').collect::<Vec<_>>())
}

/// Projection paths an organisation's visibility rules may omit.
pub const OMITTABLE: &[&str] = &[
    "need",
    "need.conditions",
    "service",
    "client.name",
    "client.birth_date",
    "client.gender",
    "client.language",
    "client.phone",
    "client.email",
    "client.address",
    "client.preferred_contact",
    "consent",
    "referrer",
    "referrer.name",
    "referrer.role",
    "referrer.phone",
    "notes",
];

const CONTACT: &[&str] = &[
    "client.phone",
    "client.email",
    "client.address",
    "client.preferred_contact",
];

/// The summary of a stored referral, as of `updated_at` (microseconds).
pub fn summary(r: &crate::store::Referral, updated_at: i64) -> Summary {
    use crate::resource::datetime::format_instant;
    Summary {
        id: r.id.clone(),
        version: r.version,
        status: CboStatus::parse(&r.status).unwrap_or(CboStatus::Pending),
        urgency: r.urgency.clone(),
        created_at: format_instant(r.created_at),
        updated_at: format_instant(updated_at),
        // As the Task says it; rows written before the text was kept show the instant.
        respond_by: r
            .respond_by_text
            .clone()
            .or_else(|| r.respond_by.map(format_instant)),
        domain: r.domain.clone(),
        client_ref: r.client_ref.clone(),
    }
}

/// Where [`gather`] reads resources from: the store, or a transaction in progress.
pub trait Fetch {
    type Error;
    /// The current versions of those of `keys` (type, id) that exist.
    fn fetch(
        &mut self,
        keys: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<StoredResource>, Self::Error>> + Send;
}

/// Reads what [`project`] needs, level by level (Task → ServiceRequest → Consent …),
/// one batch per level. Unreadable or missing resources are left out of the view.
pub async fn gather<F: Fetch + Send>(task: &Value, fetch: &mut F) -> Result<Related, F::Error> {
    let mut related = Related::default();
    for _ in 0..3 {
        let want = wanted(task, &related);
        if want.is_empty() {
            break;
        }
        let found = fetch.fetch(&want).await?;
        related.add(&want, found);
    }
    Ok(related)
}

/// References still to read before [`project`] has all it needs.
pub fn wanted(task: &Value, related: &Related) -> Vec<(String, String)> {
    let mut refs: Vec<&Value> = Vec::new();
    refs.extend(
        ["focus", "for", "requester"]
            .iter()
            .filter_map(|k| task.get(*k)),
    );
    if let Some(sr) = related.get(task.get("focus")) {
        for key in ["supportingInfo", "reasonReference"] {
            refs.extend(sr.get(key).and_then(Value::as_array).into_iter().flatten());
        }
        refs.extend(sr.get("requester"));
    }
    if let Some(role) = related.get(task.get("requester"))
        && role.get("resourceType").and_then(Value::as_str) == Some("PractitionerRole")
    {
        refs.extend(
            ["practitioner", "organization"]
                .iter()
                .filter_map(|k| role.get(*k)),
        );
    }
    let mut out = Vec::new();
    for r in refs {
        let Some(s) = r.get("reference").and_then(Value::as_str) else {
            continue;
        };
        if let Some(Target::Local { resource_type, id }) = reference::parse(s, None) {
            let key = (resource_type.to_string(), id.to_string());
            if !related
                .resources
                .contains_key(&format!("{resource_type}/{id}"))
                && !out.contains(&key)
            {
                out.push(key);
            }
        }
    }
    out
}

/// Builds the CBO's view of a referral. `omit` are the organisation's visibility rules
/// (paths from [`OMITTABLE`]).
pub fn project(summary: &Summary, task: &Value, related: &Related, omit: &[String]) -> Value {
    let sr = related.get(task.get("focus"));
    let patient = related.get(task.get("for"));
    let consent_resource = sr.and_then(|sr| {
        sr.get("supportingInfo")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| related.get(Some(r)))
            .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("Consent"))
    });
    let consent = consent(consent_resource);
    let mut flags = Vec::new();
    match consent.status {
        "granted" => {}
        "denied" => flags.push("consent_denied"),
        "revoked" => flags.push("consent_revoked"),
        _ => flags.push("consent_missing"),
    }
    if sr.is_some_and(contact_prohibited) {
        flags.push("contact_prohibited");
    }
    let contact_allowed = flags.is_empty();
    let status_reason = task.get("statusReason").map(|r| StatusReason {
        code: r
            .get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| str_at(c, "system") == Some(STATUS_REASON_SYSTEM))
            .and_then(|c| str_at(c, "code"))
            .map(str::to_string),
        text: str_at(r, "text").map(str::to_string),
    });
    let view = Projection {
        id: summary.id.clone(),
        version: summary.version,
        status: summary.status,
        created_at: summary.created_at.clone(),
        updated_at: summary.updated_at.clone(),
        respond_by: summary.respond_by.clone(),
        urgency: summary.urgency.clone(),
        need: Need {
            domain: summary.domain.clone(),
            conditions: sr
                .and_then(|sr| sr.get("reasonReference"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| related.get(Some(r)))
                .filter_map(|c| first_code(c.get("code")))
                .collect(),
        },
        service: RequestedService {
            requested: sr.and_then(|sr| first_code(sr.get("code"))),
        },
        client: client(summary, patient, contact_allowed),
        consent,
        referrer: referrer(task, related),
        notes: notes(task, sr),
        status_reason,
        assignee: task
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| str_at(e, "url").is_some_and(|u| u.ends_with("/cbo-assignee")))
            .and_then(|e| str_at(e, "valueString"))
            .map(str::to_string),
        flags,
        task: format!("Task/{}", str_at(task, "id").unwrap_or_default()),
    };
    let mut value = serde_json::to_value(view).expect("projections always serialise");
    for path in omit.iter().map(String::as_str) {
        remove_path(&mut value, path);
    }
    if !contact_allowed {
        for path in CONTACT {
            remove_path(&mut value, path);
        }
    }
    value
}

/// Fields taken from the Task and ServiceRequest when the referral row is written:
/// urgency, the answer-by time (as microseconds for the sweep, and as the Task states
/// it for the CBO) and the need's domain.
pub fn summary_fields(
    task: &Value,
    service_request: Option<&Value>,
    domains: &super::routing::Domains,
) -> (String, Option<i64>, Option<String>, Option<String>) {
    let urgency = str_at(task, "priority")
        .or_else(|| service_request.and_then(|sr| str_at(sr, "priority")))
        .unwrap_or("routine")
        .to_string();
    let end = task
        .pointer("/restriction/period/end")
        .and_then(Value::as_str)
        .and_then(|s| Some((crate::resource::datetime::parse_range(s)?.hi, s.to_string())));
    let domain = service_request.and_then(|sr| domains.of(sr));
    let (respond_by, respond_by_text) = end.unzip();
    (urgency, respond_by, respond_by_text, domain)
}

fn remove_path(value: &mut Value, path: &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut v = value;
    for p in parts {
        match v.get_mut(p) {
            Some(next) => v = next,
            None => return,
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.remove(last);
    }
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn first_code(concept: Option<&Value>) -> Option<Code> {
    let concept = concept?;
    let coding = concept.get("coding").and_then(Value::as_array)?.first()?;
    Some(Code {
        system: str_at(coding, "system").unwrap_or_default().to_string(),
        code: str_at(coding, "code")?.to_string(),
        display: str_at(coding, "display")
            .or_else(|| str_at(concept, "text"))
            .map(str::to_string),
    })
}

fn contact_prohibited(sr: &Value) -> bool {
    sr.get("orderDetail")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|d| {
            d.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|c| str_at(c, "code") == Some("contacting-subject-prohibited"))
}

fn consent(resource: Option<&Value>) -> Consent {
    let Some(c) = resource else {
        return Consent {
            status: "missing",
            scope: None,
            obtained_at: None,
        };
    };
    let denies = c.pointer("/provision/type").and_then(Value::as_str) == Some("deny");
    let status = match str_at(c, "status") {
        Some("active") if denies => "denied",
        Some("active") => "granted",
        Some("rejected") => "denied",
        Some("inactive") => "revoked",
        Some("proposed" | "draft") => "pending",
        _ => "missing",
    };
    Consent {
        status,
        scope: c
            .pointer("/scope/coding/0/code")
            .and_then(Value::as_str)
            .map(str::to_string),
        obtained_at: str_at(c, "dateTime").map(str::to_string),
    }
}

fn client(summary: &Summary, patient: Option<&Value>, contact_allowed: bool) -> Client {
    let mut c = Client {
        client_ref: summary.client_ref.clone(),
        name: None,
        birth_date: None,
        gender: None,
        language: None,
        phone: None,
        email: None,
        address: None,
        preferred_contact: None,
        contact_allowed,
    };
    let Some(p) = patient else { return c };
    if let Some(name) = p.get("name").and_then(Value::as_array).and_then(|n| {
        n.iter()
            .find(|n| str_at(n, "use") == Some("official"))
            .or_else(|| n.first())
    }) {
        let given: Vec<&str> = name
            .get("given")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        c.name = Some(Name {
            given: given.join(" "),
            family: str_at(name, "family").unwrap_or_default().to_string(),
        });
    }
    c.birth_date = str_at(p, "birthDate").map(str::to_string);
    c.gender = str_at(p, "gender").map(str::to_string);
    let comms: Vec<&Value> = p
        .get("communication")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    c.language = comms
        .iter()
        .find(|m| m.get("preferred").and_then(Value::as_bool) == Some(true))
        .or_else(|| comms.first())
        .and_then(|m| m.pointer("/language/coding/0/code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut telecom: Vec<&Value> = p
        .get("telecom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    telecom.sort_by_key(|t| t.get("rank").and_then(Value::as_i64).unwrap_or(i64::MAX));
    let pick = |system: &str| {
        telecom
            .iter()
            .find(|t| str_at(t, "system") == Some(system))
            .and_then(|t| str_at(t, "value"))
            .map(str::to_string)
    };
    c.phone = pick("phone");
    c.email = pick("email");
    c.preferred_contact = telecom
        .iter()
        .find(|t| t.get("rank").is_some())
        .and_then(|t| str_at(t, "system"))
        .map(str::to_string);
    c.address = p.pointer("/address/0").map(|a| {
        if let Some(text) = str_at(a, "text") {
            return text.to_string();
        }
        let mut parts: Vec<&str> = a
            .get("line")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.extend(
            ["city", "state", "postalCode"]
                .iter()
                .filter_map(|k| str_at(a, k)),
        );
        parts.join(", ")
    });
    c
}

fn human_name(v: &Value) -> Option<String> {
    let name = v.pointer("/name/0").or_else(|| v.get("name"))?;
    if let Some(s) = name.as_str() {
        return Some(s.to_string());
    }
    if let Some(text) = str_at(name, "text") {
        return Some(text.to_string());
    }
    let mut parts: Vec<&str> = name
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    parts.extend(str_at(name, "family"));
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn phone(v: &Value) -> Option<String> {
    v.get("telecom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| str_at(t, "system") == Some("phone"))
        .and_then(|t| str_at(t, "value"))
        .map(str::to_string)
}

fn referrer(task: &Value, related: &Related) -> Referrer {
    let Some(requester) = related.get(task.get("requester")) else {
        return Referrer {
            name: task
                .pointer("/requester/display")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Referrer::default()
        };
    };
    match str_at(requester, "resourceType") {
        Some("PractitionerRole") => {
            let practitioner = related.get(requester.get("practitioner"));
            let organization = related.get(requester.get("organization"));
            Referrer {
                name: practitioner.and_then(human_name),
                role: requester
                    .pointer("/code/0")
                    .and_then(|c| {
                        str_at(c, "text")
                            .or_else(|| c.pointer("/coding/0/display").and_then(Value::as_str))
                    })
                    .map(str::to_string),
                organization: organization.and_then(human_name),
                phone: phone(requester).or_else(|| practitioner.and_then(phone)),
            }
        }
        Some("Organization") => Referrer {
            organization: human_name(requester),
            phone: phone(requester),
            ..Referrer::default()
        },
        _ => Referrer {
            name: human_name(requester),
            phone: phone(requester),
            ..Referrer::default()
        },
    }
}

fn notes(task: &Value, sr: Option<&Value>) -> Vec<Note> {
    let owner = task.pointer("/owner/reference").and_then(Value::as_str);
    let from = |v: Option<&Value>| -> Vec<Note> {
        v.and_then(|v| v.get("note"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let by_owner = owner.is_some()
                    && n.pointer("/authorReference/reference")
                        .and_then(Value::as_str)
                        == owner;
                Some(Note {
                    author: if by_owner { "cbo" } else { "referrer" },
                    at: str_at(n, "time").map(str::to_string),
                    text: str_at(n, "text")?.to_string(),
                })
            })
            .collect()
    };
    let mut all = from(sr);
    all.extend(from(Some(task)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary() -> Summary {
        Summary {
            id: "r1".into(),
            version: 2,
            status: CboStatus::Pending,
            urgency: "urgent".into(),
            created_at: "2025-03-14T16:02:11Z".into(),
            updated_at: "2025-03-14T16:02:11Z".into(),
            respond_by: None,
            domain: Some("food-insecurity".into()),
            client_ref: Some("cli_1".into()),
        }
    }

    fn related(consent_status: Option<&str>, prohibited: bool) -> (Value, Related) {
        let task = json!({"id": "t1", "focus": {"reference": "ServiceRequest/sr1"},
                          "for": {"reference": "Patient/p1"}, "owner": {"reference": "Organization/cbo-1"},
                          "note": [{"authorReference": {"reference": "Organization/cbo-1"}, "text": "Called"}]});
        let mut sr = json!({"resourceType": "ServiceRequest", "id": "sr1",
                            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]},
                            "note": [{"text": "Prefers calls after 3pm"}]});
        if consent_status.is_some() {
            sr["supportingInfo"] = json!([{"reference": "Consent/c1"}]);
        }
        if prohibited {
            sr["orderDetail"] = json!([{"coding": [{"code": "contacting-subject-prohibited"}]}]);
        }
        let mut map = HashMap::new();
        map.insert("ServiceRequest/sr1".to_string(), sr);
        map.insert(
            "Patient/p1".to_string(),
            json!({"resourceType": "Patient", "name": [{"given": ["Maria"], "family": "Rivera"}],
                   "birthDate": "1968-04-12", "telecom": [{"system": "phone", "value": "+12175550142", "rank": 1}],
                   "identifier": [{"system": "urn:mrn", "value": "MRN-1"}]}),
        );
        if let Some(s) = consent_status {
            map.insert(
                "Consent/c1".to_string(),
                json!({"resourceType": "Consent", "status": s}),
            );
        }
        (
            task,
            Related {
                resources: map,
                versions: Vec::new(),
            },
        )
    }

    #[test]
    fn template_pointers_are_checked_against_the_schema() {
        for ok in [
            "/id",
            "/client/name/family",
            "/need/conditions/0/code",
            "/flags/1",
            "/status_reason/code",
            "",
        ] {
            assert!(has_field(ok), "{ok}");
        }
        for bad in [
            "/client/mrn",
            "/need/conditions/code",
            "/client/name/family/x",
            "id",
        ] {
            assert!(!has_field(bad), "{bad}");
        }
    }

    #[test]
    fn a_consented_referral_shows_contact_details_but_never_the_mrn() {
        let (task, rel) = related(Some("active"), false);
        let v = project(&summary(), &task, &rel, &[]);
        assert_eq!(v["client"]["phone"], "+12175550142");
        assert_eq!(v["client"]["contact_allowed"], true);
        assert_eq!(v["flags"], json!([]));
        assert!(!v.to_string().contains("MRN-1"));
        assert_eq!(v["notes"][0]["author"], "referrer");
        assert_eq!(v["notes"][1]["author"], "cbo");
    }

    #[test]
    fn missing_revoked_or_prohibited_contact_hides_contact_details() {
        for (consent, prohibited, flag) in [
            (None, false, "consent_missing"),
            (Some("inactive"), false, "consent_revoked"),
            (Some("active"), true, "contact_prohibited"),
        ] {
            let (task, rel) = related(consent, prohibited);
            let v = project(&summary(), &task, &rel, &[]);
            assert!(v["client"].get("phone").is_none(), "{flag}");
            assert_eq!(v["client"]["contact_allowed"], false);
            assert!(v["flags"].as_array().unwrap().contains(&json!(flag)));
            assert_eq!(v["client"]["name"]["family"], "Rivera");
        }
    }

    #[test]
    fn visibility_rules_omit_fields() {
        let (task, rel) = related(Some("active"), false);
        let v = project(
            &summary(),
            &task,
            &rel,
            &["client.birth_date".into(), "notes".into()],
        );
        assert!(v["client"].get("birth_date").is_none());
        assert!(v.get("notes").is_none());
    }

    #[test]
    fn wanted_follows_references_level_by_level() {
        let (task, mut rel) = related(Some("active"), false);
        rel.resources.remove("Consent/c1");
        assert_eq!(
            wanted(&task, &rel),
            [("Consent".to_string(), "c1".to_string())]
        );
    }
}
