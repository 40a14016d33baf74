//! Action request bodies (cbo-api.md §2–§3) to [`Action`]s. Every problem is reported
//! at once, each with the JSON pointer of the member and the rule it breaks; unknown
//! members are refused so that a misspelt field is not silently ignored.

use serde_json::{Map, Value};

use super::{CboError, FieldError};
use crate::fhir::datetime;
use crate::referral::action::{Enrollment, ServiceProvided};
use crate::referral::{Action, CloseOutcome, DeclineReason};

const MAX_TEXT: usize = 10_000;

/// The body as a JSON object; an empty body is an empty object.
fn object(body: &[u8]) -> Result<Map<String, Value>, CboError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            CboError::Validation(vec![FieldError::body(
                "",
                format!("the body is not valid JSON: {e}"),
            )])
        })?
    };
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(CboError::Validation(vec![FieldError::body(
            "",
            "the body must be a JSON object",
        )])),
    }
}

/// A service of the organisation's catalogue, as `PUT /services/{id}` sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInput {
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub categories: Vec<ServiceProvided>,
    pub languages: Vec<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub url: Option<String>,
    pub eligibility: Option<String>,
    pub service_area: Option<String>,
}

pub fn parse_service(body: &[u8]) -> Result<ServiceInput, CboError> {
    let obj = object(body)?;
    let mut r = Reader {
        obj: &obj,
        errors: Vec::new(),
    };
    r.only(
        &[
            "name",
            "description",
            "active",
            "categories",
            "languages",
            "phone",
            "email",
            "url",
            "eligibility",
            "service_area",
            "capacity",
            "id",
        ],
        "service",
    );
    let name = r.text("name");
    if name.is_none() && !obj.contains_key("name") {
        r.fail("/name", "is required");
    }
    let active = match obj.get("active") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            r.fail("/active", "must be true or false");
            true
        }
    };
    let categories = r.codes("categories");
    let languages = r.texts("languages");
    let input = ServiceInput {
        name: name.unwrap_or_default(),
        description: r.text("description"),
        active,
        categories,
        languages,
        phone: r.text("phone"),
        email: r.text("email"),
        url: r.text("url"),
        eligibility: r.text("eligibility"),
        service_area: r.text("service_area"),
    };
    if r.errors.is_empty() {
        Ok(input)
    } else {
        Err(CboError::Validation(r.errors))
    }
}

/// `PUT /services/{id}/capacity`: `available`, `waitlist` (with a wait band) or `full`.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityInput {
    pub status: String,
    pub wait_band: Option<String>,
}

pub const CAPACITY_STATUSES: [&str; 3] = ["available", "waitlist", "full"];

pub fn parse_capacity(body: &[u8]) -> Result<CapacityInput, CboError> {
    let obj = object(body)?;
    let mut r = Reader {
        obj: &obj,
        errors: Vec::new(),
    };
    r.only(&["status", "wait_band"], "capacity");
    let status = r.code(
        "status",
        |s| CAPACITY_STATUSES.contains(&s).then(|| s.to_string()),
        CAPACITY_STATUSES.into_iter(),
    );
    let wait_band = r.text("wait_band");
    if wait_band.is_some() && status.as_deref() != Some("waitlist") {
        r.fail("/wait_band", "is only meaningful when status is 'waitlist'");
    }
    match status {
        Some(status) if r.errors.is_empty() => Ok(CapacityInput { status, wait_band }),
        _ => Err(CboError::Validation(r.errors)),
    }
}

pub fn parse_action(action: &str, body: &[u8]) -> Result<Action, CboError> {
    let obj = object(body)?;
    let mut r = Reader {
        obj: &obj,
        errors: Vec::new(),
    };
    let allowed: &[&str] = match action {
        "accept" => &["assignee", "expected_contact_by", "note"],
        "decline" => &["reason", "note"],
        "start" | "resume" => &["note"],
        "hold" => &["reason", "note"],
        "close" => &[
            "outcome",
            "services_provided",
            "enrollment",
            "note",
            "external_case_id",
        ],
        "notes" => &["text"],
        _ => return Err(CboError::NotFound),
    };
    r.only(allowed, action);
    let parsed = match action {
        "accept" => Action::Accept {
            assignee: r.text("assignee"),
            expected_contact_by: r.date_time("expected_contact_by"),
            note: r.text("note"),
        },
        "decline" => {
            let reason = r.code(
                "reason",
                DeclineReason::parse,
                DeclineReason::ALL.iter().map(|c| c.code()),
            );
            let note = r.text("note");
            if reason == Some(DeclineReason::Other) && note.is_none() {
                r.fail("/note", "is required when reason is 'other'");
            }
            Action::Decline {
                reason: reason.unwrap_or(DeclineReason::Other),
                note,
            }
        }
        "start" => Action::Start {
            note: r.text("note"),
        },
        "resume" => Action::Resume {
            note: r.text("note"),
        },
        "hold" => Action::Hold {
            reason: r.text("reason"),
            note: r.text("note"),
        },
        "close" => Action::Close {
            outcome: r
                .code(
                    "outcome",
                    CloseOutcome::parse,
                    CloseOutcome::ALL.iter().map(|c| c.code()),
                )
                .unwrap_or(CloseOutcome::Resolved),
            services_provided: r.codes("services_provided"),
            enrollment: r.enrollment(),
            note: r.text("note"),
            external_case_id: r.text("external_case_id"),
        },
        _ => {
            let text = r.text("text");
            if text.is_none()
                && !r
                    .errors
                    .iter()
                    .any(|e| e.pointer.as_deref() == Some("/text"))
            {
                r.fail("/text", "is required");
            }
            Action::Note {
                text: text.unwrap_or_default(),
            }
        }
    };
    if r.errors.is_empty() {
        Ok(parsed)
    } else {
        Err(CboError::Validation(r.errors))
    }
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Reader<'_> {
    fn fail(&mut self, pointer: &str, message: impl Into<String>) {
        self.errors.push(FieldError::body(pointer, message));
    }

    fn only(&mut self, allowed: &[&str], action: &str) {
        for key in self.obj.keys() {
            if !allowed.contains(&key.as_str()) {
                let message = format!(
                    "is not a member of a '{action}' request (allowed: {})",
                    allowed.join(", ")
                );
                self.errors.push(FieldError::body(pointer(&[key]), message));
            }
        }
    }

    /// An optional non-empty string member.
    fn text(&mut self, key: &str) -> Option<String> {
        let v = self.obj.get(key)?;
        checked_text(v, &pointer(&[key]), &mut self.errors)
    }

    fn date_time(&mut self, key: &str) -> Option<String> {
        let s = self.text(key)?;
        if datetime::parse_range(&s).is_none() {
            self.fail(&pointer(&[key]), "must be an RFC 3339 date or date-time");
            return None;
        }
        Some(s)
    }

    /// A required code from a fixed list.
    fn code<T>(
        &mut self,
        key: &str,
        parse: fn(&str) -> Option<T>,
        codes: impl Iterator<Item = &'static str>,
    ) -> Option<T> {
        let codes: Vec<&str> = codes.collect();
        let Some(s) = self.text(key) else {
            if !self.obj.contains_key(key) {
                self.fail(
                    &pointer(&[key]),
                    format!("is required: one of {}", codes.join(", ")),
                );
            }
            return None;
        };
        let parsed = parse(&s);
        if parsed.is_none() {
            self.fail(
                &pointer(&[key]),
                format!("{s:?} is not a known code: one of {}", codes.join(", ")),
            );
        }
        parsed
    }

    /// An optional array of non-empty strings.
    fn texts(&mut self, key: &str) -> Vec<String> {
        let Some(v) = self.obj.get(key) else {
            return vec![];
        };
        let Some(items) = v.as_array() else {
            self.fail(&pointer(&[key]), "must be an array of strings");
            return vec![];
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                checked_text(item, &format!("{}/{i}", pointer(&[key])), &mut self.errors)
            })
            .collect()
    }

    /// An optional array of codes (`system`, `code`, `display`, `date`).
    fn codes(&mut self, key: &str) -> Vec<ServiceProvided> {
        let Some(v) = self.obj.get(key) else {
            return vec![];
        };
        let Some(items) = v.as_array() else {
            self.fail(&pointer(&[key]), "must be an array");
            return vec![];
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{}/{i}", pointer(&[key]));
            let Some(o) = item.as_object() else {
                self.fail(&at, "must be an object with system and code");
                continue;
            };
            for key in o.keys() {
                if !["system", "code", "display", "date"].contains(&key.as_str()) {
                    self.fail(
                        &format!("{at}/{}", escape(key)),
                        "is not a member of a service (allowed: system, code, display, date)",
                    );
                }
            }
            let field = |k: &str, required: bool, errors: &mut Vec<FieldError>| match o.get(k) {
                Some(v) => checked_text(v, &format!("{at}/{k}"), errors),
                None if required => {
                    errors.push(FieldError::body(format!("{at}/{k}"), "is required"));
                    None
                }
                None => None,
            };
            let system = field("system", true, &mut self.errors);
            let code = field("code", true, &mut self.errors);
            let display = field("display", false, &mut self.errors);
            let date = field("date", false, &mut self.errors);
            if let Some(d) = &date
                && datetime::parse_range(d).is_none()
            {
                self.fail(
                    &format!("{at}/date"),
                    "must be a date (YYYY-MM-DD) or date-time",
                );
            }
            if let (Some(system), Some(code)) = (system, code) {
                out.push(ServiceProvided {
                    system,
                    code,
                    display,
                    date,
                });
            }
        }
        out
    }

    fn enrollment(&mut self) -> Option<Enrollment> {
        let v = self.obj.get("enrollment")?;
        let Some(o) = v.as_object() else {
            self.fail("/enrollment", "must be an object with program and status");
            return None;
        };
        for key in o.keys() {
            if !["program", "status"].contains(&key.as_str()) {
                self.fail(
                    &format!("/enrollment/{}", escape(key)),
                    "is not a member of enrollment (allowed: program, status)",
                );
            }
        }
        let get = |k: &str, errors: &mut Vec<FieldError>| match o.get(k) {
            Some(v) => checked_text(v, &format!("/enrollment/{k}"), errors),
            None => {
                errors.push(FieldError::body(format!("/enrollment/{k}"), "is required"));
                None
            }
        };
        let program = get("program", &mut self.errors);
        let status = get("status", &mut self.errors);
        Some(Enrollment {
            program: program?,
            status: status?,
        })
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

/// RFC 6901: `~` and `/` in a member name are escaped.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn pointer(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("/{}", escape(k))).collect()
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
}
