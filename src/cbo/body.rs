//! Request bodies of the CBO API (cbo-api.md §2–§3). Each body is a typed struct whose
//! OpenAPI schema is the documentation; validation reads the documented members from
//! that same schema, so the document and the checks cannot drift apart.
//!
//! Every problem is reported at once, each with the JSON pointer of the member and the
//! rule it breaks; unknown members are refused so a misspelt field is not ignored.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::{CboError, FieldError};
use crate::fhir::datetime;
use crate::referral::action::{Enrollment, ServiceProvided};
use crate::referral::{Action, CloseOutcome, DeclineReason};

const MAX_TEXT: usize = 10_000;

/// `POST /referrals/{id}/accept`
#[derive(Debug, Deserialize, ToSchema)]
pub struct AcceptRequest {
    /// Who at the organisation handles the referral.
    pub assignee: Option<String>,
    /// RFC 3339 date or date-time by which the client will be contacted.
    pub expected_contact_by: Option<String>,
    /// A note shared with the referrer.
    pub note: Option<String>,
}

/// `POST /referrals/{id}/decline`
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeclineRequest {
    /// no_capacity, not_eligible, out_of_service_area, service_not_offered,
    /// missing_information, client_declined, duplicate, other (needs a note).
    #[schema(example = "no_capacity")]
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
    /// resolved, partially_resolved, unresolved, client_unreachable, client_declined,
    /// referred_elsewhere, not_eligible_after_intake.
    #[schema(example = "resolved")]
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
    /// YYYY-MM-DD or a date-time.
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
    /// available, waitlist or full.
    #[schema(example = "waitlist")]
    pub status: String,
    /// Only with waitlist, e.g. "2-4 weeks".
    pub wait_band: Option<String>,
}

pub const CAPACITY_STATUSES: [&str; 3] = ["available", "waitlist", "full"];

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

/// The body as a JSON object; an empty body is an empty object.
fn object(body: &[u8]) -> Result<Map<String, Value>, CboError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        crate::strict_json::parse(body)
            .map_err(|e| CboError::Validation(vec![FieldError::body(e.pointer, e.message)]))?
    };
    match value {
        Value::Object(obj) => Ok(obj),
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
            && datetime::parse_range(&s).is_none()
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
                        if dated
                            && k == "date"
                            && text.is_some_and(|d| datetime::parse_range(&d).is_none())
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
    fn documented_members_are_the_accepted_ones() {
        assert_eq!(
            members::<AcceptRequest>(),
            ["assignee", "expected_contact_by", "note"]
        );
        assert_eq!(members::<CapacityInput>(), ["status", "wait_band"]);
    }
}
