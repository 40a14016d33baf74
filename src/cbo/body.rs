//! Request bodies of the CBO API (cbo-api.md §2–§3). Each body is a typed struct whose
//! OpenAPI schema is the documentation; validation reads the documented members from
//! that same schema, so the document and the checks cannot drift apart.
//!
//! Every problem is reported at once, each with the JSON pointer of the member and the
//! rule it breaks; unknown members are refused so a misspelt field is not ignored. A
//! member sent as `null` is treated as absent (generated clients send `null` for every
//! unset optional field), so an optional member is documented as nullable.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::{CboError, FieldError};
use crate::referral::action::{Enrollment, ServiceProvided};
use crate::referral::{Action, CloseOutcome, DeclineReason};
use crate::resource::datetime;

const MAX_TEXT: usize = 10_000;

/// `POST /referrals/{id}/accept`
#[derive(Debug, Deserialize, ToSchema)]
pub struct AcceptRequest {
    /// Who at the organisation handles the referral.
    pub assignee: Option<String>,
    /// A date (YYYY-MM-DD) or an RFC 3339 date-time by which the client will be
    /// contacted.
    #[schema(schema_with = date_or_date_time)]
    pub expected_contact_by: Option<String>,
    /// A note shared with the referrer.
    pub note: Option<String>,
}

/// `POST /referrals/{id}/decline`
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeclineRequest {
    /// `other` needs a note.
    #[schema(schema_with = decline_reasons)]
    pub reason: String,
    pub note: Option<String>,
}

/// `POST /referrals/{id}/start` and `/resume`
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProgressRequest {
    pub note: Option<String>,
}

/// `POST /referrals/{id}/hold`
#[derive(Debug, Deserialize, ToSchema)]
pub struct HoldRequest {
    /// Why the work is paused (shared with the referrer).
    pub reason: Option<String>,
    pub note: Option<String>,
}

/// `POST /referrals/{id}/close`
#[derive(Debug, Deserialize, ToSchema)]
pub struct CloseRequest {
    #[schema(schema_with = close_outcomes)]
    pub outcome: String,
    /// One SDOHCC Procedure each; the requested service when absent and resolved.
    pub services_provided: Option<Vec<CodeInput>>,
    pub enrollment: Option<EnrollmentInput>,
    pub note: Option<String>,
    /// The case id in the organisation's own system.
    pub external_case_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeInput {
    #[schema(example = "http://snomed.info/sct")]
    pub system: String,
    pub code: String,
    pub display: Option<String>,
    /// When it was provided: a date (YYYY-MM-DD) or an RFC 3339 date-time.
    #[schema(schema_with = date_or_date_time)]
    pub date: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EnrollmentInput {
    pub program: String,
    pub status: String,
}

/// `POST /referrals/{id}/notes`
#[derive(Debug, Deserialize, ToSchema)]
pub struct NoteRequest {
    pub text: String,
}

/// `PUT /services/{id}`: a service of the organisation's catalogue (HSDS-lite).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct ServiceInput {
    pub name: String,
    pub description: Option<String>,
    /// Defaults to true.
    pub active: Option<bool>,
    pub categories: Option<Vec<CategoryInput>>,
    /// BCP 47 language codes.
    pub languages: Option<Vec<String>>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub url: Option<String>,
    pub eligibility: Option<String>,
    pub service_area: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct CategoryInput {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

/// `PUT /services/{id}/capacity`
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct CapacityInput {
    #[schema(schema_with = capacity_statuses)]
    pub status: String,
    /// Only with waitlist, e.g. "2-4 weeks".
    pub wait_band: Option<String>,
}

pub const CAPACITY_STATUSES: [&str; 3] = ["available", "waitlist", "full"];

fn decline_reasons() -> utoipa::openapi::schema::Object {
    let codes: Vec<&str> = DeclineReason::ALL.iter().map(|r| r.code()).collect();
    crate::referral::projection::code_schema("Why the organisation declines", &codes)
}

fn close_outcomes() -> utoipa::openapi::schema::Object {
    let codes: Vec<&str> = CloseOutcome::ALL.iter().map(|r| r.code()).collect();
    crate::referral::projection::code_schema("How the referral ended", &codes)
}

fn capacity_statuses() -> utoipa::openapi::schema::Object {
    crate::referral::projection::code_schema("The service's capacity", &CAPACITY_STATUSES)
}

/// An optional date or date-time member (null: absent).
fn date_or_date_time() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let string = |format| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(format)))
    };
    OneOfBuilder::new()
        .item(string(utoipa::openapi::KnownFormat::Date))
        .item(string(utoipa::openapi::KnownFormat::DateTime))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// The body types whose string members [`checked_text`] checks, for the document:
/// `minLength`, `maxLength` and a non-blank pattern on each, so that what the schema
/// allows is what is accepted.
pub const CHECKED_BODIES: &[&str] = &[
    "AcceptRequest",
    "DeclineRequest",
    "ProgressRequest",
    "HoldRequest",
    "CloseRequest",
    "CodeInput",
    "EnrollmentInput",
    "NoteRequest",
    "ServiceInput",
    "CategoryInput",
    "CapacityInput",
];

/// Adds the rules of [`checked_text`] to every plain string member (and string array
/// item) of a [`CHECKED_BODIES`] schema in the document.
pub fn document_text_rules(schema: &mut Value) {
    fn is_string(v: &Value) -> bool {
        match v.get("type") {
            Some(Value::String(t)) => t == "string",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
            _ => false,
        }
    }
    fn tighten(v: &mut Value) {
        if is_string(v) && v.get("enum").is_none() && v.get("format").is_none() {
            v["minLength"] = 1.into();
            v["maxLength"] = MAX_TEXT.into();
            v["pattern"] = "\\S".into();
        }
    }
    // `Checker::only`: unknown members are refused.
    schema["additionalProperties"] = false.into();
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for prop in props.values_mut() {
        tighten(prop);
        if let Some(items) = prop.get_mut("items") {
            tighten(items);
        }
    }
}

/// The members a body type documents, in order.
pub fn members<T: PartialSchema>() -> Vec<String> {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
        _ => vec![],
    }
}

pub fn parse_action(action: &str, body: &[u8]) -> Result<Action, CboError> {
    let obj = object(body)?;
    let mut c = Checker::new(&obj);
    match action {
        "accept" => {
            c.only::<AcceptRequest>(action);
            c.text("note");
            c.text("assignee");
            c.date_time("expected_contact_by");
            c.finish::<AcceptRequest>().map(|r| Action::Accept {
                assignee: r.assignee,
                expected_contact_by: r.expected_contact_by,
                note: r.note,
            })
        }
        "decline" => {
            c.only::<DeclineRequest>(action);
            let reason = c.code("reason", DeclineReason::ALL.iter().map(|r| r.code()));
            if c.text("note").is_none() && reason.as_deref() == Some("other") {
                c.fail("/note", "is required when reason is 'other'");
            }
            c.finish::<DeclineRequest>().map(|r| Action::Decline {
                reason: DeclineReason::parse(&r.reason).unwrap_or(DeclineReason::Other),
                note: r.note,
            })
        }
        "start" | "resume" => {
            c.only::<ProgressRequest>(action);
            c.text("note");
            c.finish::<ProgressRequest>().map(|r| match action {
                "start" => Action::Start { note: r.note },
                _ => Action::Resume { note: r.note },
            })
        }
        "hold" => {
            c.only::<HoldRequest>(action);
            c.text("reason");
            c.text("note");
            c.finish::<HoldRequest>().map(|r| Action::Hold {
                reason: r.reason,
                note: r.note,
            })
        }
        "close" => {
            c.only::<CloseRequest>(action);
            c.code("outcome", CloseOutcome::ALL.iter().map(|o| o.code()));
            c.codes::<CodeInput>("services_provided", true);
            c.enrollment();
            c.text("note");
            c.text("external_case_id");
            c.finish::<CloseRequest>().map(close)
        }
        "notes" => {
            c.only::<NoteRequest>(action);
            if c.text("text").is_none() && !c.failed_at("/text") {
                c.fail("/text", "is required");
            }
            c.finish::<NoteRequest>()
                .map(|r| Action::Note { text: r.text })
        }
        _ => Err(CboError::NotFound),
    }
}

fn close(r: CloseRequest) -> Action {
    Action::Close {
        outcome: CloseOutcome::parse(&r.outcome).unwrap_or(CloseOutcome::Resolved),
        services_provided: r
            .services_provided
            .unwrap_or_default()
            .into_iter()
            .map(|s| ServiceProvided {
                system: s.system,
                code: s.code,
                display: s.display,
                date: s.date,
            })
            .collect(),
        enrollment: r.enrollment.map(|e| Enrollment {
            program: e.program,
            status: e.status,
        }),
        note: r.note,
        external_case_id: r.external_case_id,
    }
}

pub fn parse_service(body: &[u8]) -> Result<ServiceInput, CboError> {
    let obj = object(body)?;
    let mut c = Checker::new(&obj);
    c.only::<ServiceInput>("service");
    if c.text("name").is_none() && !c.failed_at("/name") {
        c.fail("/name", "is required");
    }
    if obj.get("active").is_some_and(|a| !a.is_boolean()) {
        c.fail("/active", "must be true or false");
    }
    c.codes::<CategoryInput>("categories", false);
    c.texts("languages");
    for key in [
        "description",
        "phone",
        "email",
        "url",
        "eligibility",
        "service_area",
    ] {
        c.text(key);
    }
    c.finish()
}

pub fn parse_capacity(body: &[u8]) -> Result<CapacityInput, CboError> {
    let obj = object(body)?;
    let mut c = Checker::new(&obj);
    c.only::<CapacityInput>("capacity");
    let status = c.code("status", CAPACITY_STATUSES.into_iter());
    if c.text("wait_band").is_some() && status.as_deref() != Some("waitlist") {
        c.fail("/wait_band", "is only meaningful when status is 'waitlist'");
    }
    c.finish()
}

/// Members sent as `null`, at any depth of objects, are taken as absent.
pub fn drop_nulls(obj: &mut Map<String, Value>) {
    obj.retain(|_, v| !v.is_null());
    for v in obj.values_mut() {
        match v {
            Value::Object(o) => drop_nulls(o),
            Value::Array(items) => items
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(drop_nulls),
            _ => {}
        }
    }
}

/// The body as a JSON object (members sent as null dropped); an empty body is an
/// empty object.
fn object(body: &[u8]) -> Result<Map<String, Value>, CboError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        crate::strict_json::parse(body)
            .map_err(|e| CboError::Validation(vec![FieldError::body(e.pointer, e.message)]))?
    };
    match value {
        Value::Object(mut obj) => {
            drop_nulls(&mut obj);
            Ok(obj)
        }
        _ => Err(CboError::Validation(vec![FieldError::body(
            "",
            "the body must be a JSON object",
        )])),
    }
}

/// Collects every problem of a body before anything is converted.
struct Checker<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    fn new(obj: &'a Map<String, Value>) -> Checker<'a> {
        Checker {
            obj,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, pointer: &str, message: impl Into<String>) {
        self.errors.push(FieldError::body(pointer, message));
    }

    fn failed_at(&self, pointer: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.pointer.as_deref() == Some(pointer))
    }

    /// Refuses members the body type does not document.
    fn only<T: PartialSchema>(&mut self, what: &str) {
        let allowed = members::<T>();
        for key in self.obj.keys() {
            if !allowed.contains(key) {
                let message = format!(
                    "is not a member of a '{what}' request (allowed: {})",
                    allowed.join(", ")
                );
                self.errors.push(FieldError::body(pointer(key), message));
            }
        }
    }

    /// An optional non-empty string member.
    fn text(&mut self, key: &str) -> Option<String> {
        let v = self.obj.get(key)?;
        checked_text(v, &pointer(key), &mut self.errors)
    }

    fn texts(&mut self, key: &str) {
        let Some(v) = self.obj.get(key) else { return };
        let Some(items) = v.as_array() else {
            self.fail(&pointer(key), "must be an array of strings");
            return;
        };
        for (i, item) in items.iter().enumerate() {
            checked_text(item, &format!("{}/{i}", pointer(key)), &mut self.errors);
        }
    }

    fn date_time(&mut self, key: &str) {
        if let Some(s) = self.text(key)
            && !full_date_or_date_time(&s)
        {
            self.fail(&pointer(key), "must be an RFC 3339 date or date-time");
        }
    }

    /// A required code from a fixed list.
    fn code(&mut self, key: &str, codes: impl Iterator<Item = &'static str>) -> Option<String> {
        let codes: Vec<&str> = codes.collect();
        let Some(s) = self.text(key) else {
            if !self.obj.contains_key(key) {
                self.fail(
                    &pointer(key),
                    format!("is required: one of {}", codes.join(", ")),
                );
            }
            return None;
        };
        if !codes.contains(&s.as_str()) {
            self.fail(
                &pointer(key),
                format!("{s:?} is not a known code: one of {}", codes.join(", ")),
            );
        }
        Some(s)
    }

    /// An optional array of codings (`system` and `code` required).
    fn codes<T: PartialSchema>(&mut self, key: &str, dated: bool) {
        let Some(v) = self.obj.get(key) else { return };
        let Some(items) = v.as_array() else {
            self.fail(&pointer(key), "must be an array");
            return;
        };
        let allowed = members::<T>();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{}/{i}", pointer(key));
            let Some(o) = item.as_object() else {
                self.fail(&at, "must be an object with system and code");
                continue;
            };
            for k in o.keys().filter(|k| !allowed.contains(k)) {
                self.fail(
                    &format!("{at}{}", pointer(k)),
                    format!("is not a member (allowed: {})", allowed.join(", ")),
                );
            }
            for (k, required) in [
                ("system", true),
                ("code", true),
                ("display", false),
                ("date", false),
            ] {
                match o.get(k) {
                    Some(v) => {
                        let text = checked_text(v, &format!("{at}/{k}"), &mut self.errors);
                        if dated && k == "date" && text.is_some_and(|d| !full_date_or_date_time(&d))
                        {
                            self.fail(
                                &format!("{at}/date"),
                                "must be a date (YYYY-MM-DD) or date-time",
                            );
                        }
                    }
                    None if required => self.fail(&format!("{at}/{k}"), "is required"),
                    None => {}
                }
            }
        }
    }

    fn enrollment(&mut self) {
        let Some(v) = self.obj.get("enrollment") else {
            return;
        };
        let Some(o) = v.as_object() else {
            self.fail("/enrollment", "must be an object with program and status");
            return;
        };
        let allowed = members::<EnrollmentInput>();
        for k in o.keys().filter(|k| !allowed.contains(k)) {
            self.fail(
                &format!("/enrollment{}", pointer(k)),
                "is not a member of enrollment (allowed: program, status)",
            );
        }
        for k in ["program", "status"] {
            match o.get(k) {
                Some(v) => {
                    checked_text(v, &format!("/enrollment/{k}"), &mut self.errors);
                }
                None => self.fail(&format!("/enrollment/{k}"), "is required"),
            }
        }
    }

    /// The typed body, once every check passed.
    fn finish<T: DeserializeOwned>(self) -> Result<T, CboError> {
        if !self.errors.is_empty() {
            return Err(CboError::Validation(self.errors));
        }
        serde_json::from_value(Value::Object(self.obj.clone()))
            .map_err(|e| CboError::Validation(vec![FieldError::body("", e.to_string())]))
    }
}

/// A whole date (YYYY-MM-DD) or an RFC 3339 date-time (with seconds and an offset):
/// what the document's `format: date` and `format: date-time` promise.
fn full_date_or_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let date = b.len() == 10;
    let date_time = b.len() >= 20
        && matches!(b.get(10), Some(b'T' | b't'))
        && (b.ends_with(b"Z")
            || b.ends_with(b"z")
            || b[b.len() - 6] == b'+'
            || b[b.len() - 6] == b'-');
    (date || date_time) && datetime::parse_range(&s.replace('t', "T").replace('z', "Z")).is_some()
}

fn checked_text(v: &Value, at: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match v.as_str() {
        None => errors.push(FieldError::body(at, "must be a string")),
        Some(s) if s.trim().is_empty() => errors.push(FieldError::body(at, "must not be empty")),
        Some(s) if s.chars().count() > MAX_TEXT => errors.push(FieldError::body(
            at,
            format!("must be at most {MAX_TEXT} characters"),
        )),
        Some(s) => return Some(s.to_string()),
    }
    None
}

/// RFC 6901 pointer to a member: `~` and `/` are escaped.
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(action: &str, body: &str) -> Vec<FieldError> {
        match parse_action(action, body.as_bytes()) {
            Err(CboError::Validation(e)) => e,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn decline_needs_a_known_reason() {
        let e = errors("decline", "{}");
        assert_eq!(e[0].pointer.as_deref(), Some("/reason"));
        assert!(e[0].message.starts_with("is required"));
        let e = errors("decline", r#"{"reason": "busy"}"#);
        assert!(e[0].message.contains("no_capacity"), "{}", e[0].message);
        assert!(matches!(
            parse_action("decline", br#"{"reason": "no_capacity"}"#),
            Ok(Action::Decline {
                reason: DeclineReason::NoCapacity,
                note: None
            })
        ));
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let e = errors(
            "close",
            r#"{"outcome": 3, "services_provided": [{"code": "x"}, "y"], "enrollment": {"program": ""}, "nope": 1}"#,
        );
        let pointers: Vec<&str> = e.iter().filter_map(|e| e.pointer.as_deref()).collect();
        for p in [
            "/nope",
            "/outcome",
            "/services_provided/0/system",
            "/services_provided/1",
            "/enrollment/program",
            "/enrollment/status",
        ] {
            assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_validation_errors() {
        assert!(errors("accept", "{")[0].message.contains("not valid JSON"));
        assert_eq!(
            errors("accept", "[]")[0].message,
            "the body must be a JSON object"
        );
        assert!(matches!(
            parse_action("accept", b""),
            Ok(Action::Accept { .. })
        ));
        assert_eq!(errors("notes", "{}")[0].pointer.as_deref(), Some("/text"));
    }

    #[test]
    fn a_valid_close_becomes_the_action() {
        let body = br#"{"outcome": "client_unreachable", "services_provided": [{"system": "s", "code": "c", "date": "2026-11-23"}],
                        "enrollment": {"program": "Pantry", "status": "enrolled"}, "external_case_id": "X-1"}"#;
        let Ok(Action::Close {
            outcome,
            services_provided,
            enrollment,
            external_case_id,
            ..
        }) = parse_action("close", body)
        else {
            panic!("close did not parse");
        };
        assert_eq!(outcome, CloseOutcome::ClientUnreachable);
        assert_eq!(services_provided[0].code, "c");
        assert_eq!(enrollment.unwrap().program, "Pantry");
        assert_eq!(external_case_id.as_deref(), Some("X-1"));
    }

    #[test]
    fn null_members_are_absent_at_any_depth() {
        let body = br#"{"outcome": "resolved", "note": null, "enrollment": null,
                        "services_provided": [{"system": "s", "code": "c", "display": null, "date": null}]}"#;
        let Ok(Action::Close {
            note,
            enrollment,
            services_provided,
            ..
        }) = parse_action("close", body)
        else {
            panic!("a close with null members did not parse");
        };
        assert!(note.is_none() && enrollment.is_none());
        assert!(services_provided[0].display.is_none());
        // A required member sent as null is missing, and said so.
        let e = errors("decline", r#"{"reason": null}"#);
        assert!(e[0].message.starts_with("is required"), "{}", e[0].message);
        // null is not a string where a string is required inside an array.
        assert!(parse_service(br#"{"name": "Pantry", "languages": [null]}"#).is_err());
    }

    #[test]
    fn dates_are_whole_dates_or_date_times() {
        for ok in [
            "2025-03-17",
            "2025-03-17T10:00:00Z",
            "2025-03-17T10:00:00.5+02:00",
        ] {
            assert!(full_date_or_date_time(ok), "{ok}");
        }
        for bad in ["2025", "2025-03", "2025-02-30", "2025-03-17T10:00", "soon"] {
            assert!(!full_date_or_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn documented_members_are_the_accepted_ones() {
        assert_eq!(
            members::<AcceptRequest>(),
            ["assignee", "expected_contact_by", "note"]
        );
        assert_eq!(members::<CapacityInput>(), ["status", "wait_band"]);
    }
}
