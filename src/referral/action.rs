//! What a CBO action does to the referral Task (cbo-api.md §5): the status it moves to,
//! `statusReason`, notes, and on close the SDOHCC Procedure(s) and enrollment
//! Observation referenced from `Task.output`.
//!
//! Pure: the caller reads the current Task and ServiceRequest inside its transaction,
//! calls [`apply`], and writes the [`Edit`] through the FHIR write path, which checks
//! the Task transition again and records the referral's new status and events.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::CboStatus;
use super::TaskStatus;

/// The gateway's code system for decline reasons, close outcomes, holds and expiry.
pub const STATUS_REASON_SYSTEM: &str =
    "https://crossway.dev/fhir/CodeSystem/referral-status-reason";
const EXTENSION_BASE: &str = "https://crossway.dev/fhir/StructureDefinition/";
const SDOHCC_TEMPORARY_CODES: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";
const PROCEDURE_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-Procedure";

macro_rules! code_list {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:literal : $display:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            pub fn display(self) -> &'static str {
                match self { $($name::$variant => $display),+ }
            }

            pub fn parse(code: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.code() == code)
            }
        }
    };
}

code_list!(
    /// Why a CBO declines a referral (cbo-api.md §2).
    DeclineReason {
        NoCapacity = "no_capacity": "No capacity",
        NotEligible = "not_eligible": "Client not eligible",
        OutOfServiceArea = "out_of_service_area": "Out of service area",
        ServiceNotOffered = "service_not_offered": "Service not offered",
        MissingInformation = "missing_information": "Missing information",
        ClientDeclined = "client_declined": "Client declined",
        Duplicate = "duplicate": "Duplicate referral",
        Other = "other": "Other",
    }
);

code_list!(
    /// How a CBO closes a referral (cbo-api.md §2).
    CloseOutcome {
        Resolved = "resolved": "Need resolved",
        PartiallyResolved = "partially_resolved": "Need partially resolved",
        Unresolved = "unresolved": "Need not resolved",
        ClientUnreachable = "client_unreachable": "Client unreachable",
        ClientDeclined = "client_declined": "Client declined",
        ReferredElsewhere = "referred_elsewhere": "Referred elsewhere",
        NotEligibleAfterIntake = "not_eligible_after_intake": "Not eligible after intake",
    }
);

impl CloseOutcome {
    /// The IG's `completed` means the requested service was performed; every other
    /// outcome is a `failed` Task whose reason says why.
    fn task_status(self) -> TaskStatus {
        match self {
            CloseOutcome::Resolved | CloseOutcome::PartiallyResolved => TaskStatus::Completed,
            _ => TaskStatus::Failed,
        }
    }
}

/// A FHIR coding written into `Task.statusReason`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coding {
    pub system: String,
    pub code: String,
    pub display: String,
}

/// `mappings/cbo/codes.toml`: the CBO API's codes → `Task.statusReason` codings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodesFile {
    #[serde(default)]
    decline_reason: HashMap<String, Coding>,
    #[serde(default)]
    close_outcome: HashMap<String, Coding>,
}

/// Which coding a decline reason or close outcome puts in `Task.statusReason`, so the
/// referring EHR receives codes it knows. A code without an entry is written in the
/// gateway's own system ([`STATUS_REASON_SYSTEM`]).
#[derive(Debug, Clone, Default)]
pub struct ReasonCodes(HashMap<String, Coding>);

impl ReasonCodes {
    /// Entries are keyed `decline_reason.<code>` / `close_outcome.<code>` (their rule
    /// ids); a key that is not a code of the API is refused.
    pub fn build(file: CodesFile) -> Result<ReasonCodes, (String, String)> {
        let mut map = HashMap::new();
        let tables = [
            (
                "decline_reason",
                file.decline_reason,
                DeclineReason::ALL
                    .iter()
                    .map(|r| r.code())
                    .collect::<Vec<_>>(),
            ),
            (
                "close_outcome",
                file.close_outcome,
                CloseOutcome::ALL.iter().map(|o| o.code()).collect(),
            ),
        ];
        for (table, entries, known) in tables {
            for (code, coding) in entries {
                let id = format!("{table}.{code}");
                if !known.contains(&code.as_str()) {
                    return Err((
                        id,
                        format!(
                            "{code:?} is not a {table} of the CBO API (known: {})",
                            known.join(", ")
                        ),
                    ));
                }
                if !coding.system.contains(':') {
                    return Err((id, format!("system {:?} is not a URI", coding.system)));
                }
                map.insert(id, coding);
            }
        }
        Ok(ReasonCodes(map))
    }

    /// The API codes that fall back to the gateway's own system.
    pub fn unmapped(&self) -> Vec<String> {
        let declines = DeclineReason::ALL
            .iter()
            .map(|r| format!("decline_reason.{}", r.code()));
        let outcomes = CloseOutcome::ALL
            .iter()
            .map(|o| format!("close_outcome.{}", o.code()));
        declines
            .chain(outcomes)
            .filter(|k| !self.0.contains_key(k))
            .collect()
    }

    fn concept(&self, table: &str, code: &str, display: &str, text: &str) -> Value {
        match self.0.get(&format!("{table}.{code}")) {
            Some(c) => json!({
                "coding": [{"system": c.system, "code": c.code, "display": c.display}],
                "text": text,
            }),
            None => reason_concept(code, display, text),
        }
    }
}

/// A service the CBO reports as provided: one SDOHCC Procedure each.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceProvided {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
    /// `YYYY-MM-DD` (or a dateTime); the action's time when absent.
    pub date: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub program: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Accept {
        assignee: Option<String>,
        expected_contact_by: Option<String>,
        note: Option<String>,
    },
    Decline {
        reason: DeclineReason,
        note: Option<String>,
    },
    Start {
        note: Option<String>,
    },
    Hold {
        reason: Option<String>,
        note: Option<String>,
    },
    Resume {
        note: Option<String>,
    },
    Close {
        outcome: CloseOutcome,
        services_provided: Vec<ServiceProvided>,
        enrollment: Option<Enrollment>,
        note: Option<String>,
        external_case_id: Option<String>,
    },
    Note {
        text: String,
    },
    /// The gateway's sweep: no answer by `respond_by`.
    Expire,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Accept { .. } => "accept",
            Action::Decline { .. } => "decline",
            Action::Start { .. } => "start",
            Action::Hold { .. } => "hold",
            Action::Resume { .. } => "resume",
            Action::Close { .. } => "close",
            Action::Note { .. } => "note",
            Action::Expire => "expire",
        }
    }

    fn allowed_from(&self, s: CboStatus) -> bool {
        use CboStatus::*;
        match self {
            Action::Accept { .. } | Action::Decline { .. } | Action::Expire => s == Pending,
            Action::Start { .. } => s == Accepted,
            Action::Hold { .. } => matches!(s, Accepted | InProgress),
            Action::Resume { .. } => s == OnHold,
            Action::Close { .. } => matches!(s, Accepted | InProgress),
            Action::Note { .. } => !s.is_terminal(),
        }
    }
}

/// The actions a CBO may take on a referral in this status (for 409 answers).
pub fn allowed_actions(s: CboStatus) -> Vec<&'static str> {
    let samples = [
        Action::Accept {
            assignee: None,
            expected_contact_by: None,
            note: None,
        },
        Action::Decline {
            reason: DeclineReason::Other,
            note: None,
        },
        Action::Start { note: None },
        Action::Hold {
            reason: None,
            note: None,
        },
        Action::Resume { note: None },
        Action::Close {
            outcome: CloseOutcome::Resolved,
            services_provided: vec![],
            enrollment: None,
            note: None,
            external_case_id: None,
        },
        Action::Note {
            text: String::new(),
        },
    ];
    samples
        .iter()
        .filter(|a| a.allowed_from(s))
        .map(Action::name)
        .collect()
}

/// The CBO actions that take a referral from `from` to `to`, fewest first; `None`
/// when the state machine has no way there. A case system reports where a case is,
/// not each step it took: a case first seen closed was accepted on the way.
pub fn route(from: CboStatus, to: CboStatus) -> Option<Vec<&'static str>> {
    let reaches = |action: &str| match action {
        "accept" => Some(CboStatus::Accepted),
        "decline" => Some(CboStatus::Declined),
        "start" | "resume" => Some(CboStatus::InProgress),
        "hold" => Some(CboStatus::OnHold),
        "close" => Some(CboStatus::Closed),
        _ => None,
    };
    let mut queue = std::collections::VecDeque::from([(from, Vec::new())]);
    let mut seen = vec![from];
    while let Some((at, path)) = queue.pop_front() {
        if at == to {
            return Some(path);
        }
        for action in allowed_actions(at) {
            if let Some(next) = reaches(action)
                && !seen.contains(&next)
            {
                seen.push(next);
                let mut longer = path.clone();
                longer.push(action);
                queue.push_back((next, longer));
            }
        }
    }
    None
}

/// Who acts: the CBO organisation that owns the referral, or the gateway itself.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub organization: &'a str,
    pub name: &'a str,
}

/// What an action changes: the new Task and the resources to create beside it.
#[derive(Debug)]
pub struct Edit {
    pub task: Value,
    /// (resource type, id, resource)
    pub created: Vec<(&'static str, String, Value)>,
    /// The note this action added, if any (the answer to `POST …/notes`).
    pub note: Option<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ActionError {
    #[error("the referral is '{}'; '{action}' is not allowed (allowed: {allowed:?})", current.as_str())]
    InvalidTransition {
        action: &'static str,
        current: CboStatus,
        allowed: Vec<&'static str>,
    },
    #[error("the Task's status is not one the referral lifecycle knows")]
    UnknownStatus,
}

/// Whether a Task was failed by the gateway's expiry sweep.
pub fn is_expiry(task: &Value) -> bool {
    codings(task.pointer("/statusReason")).any(|c| {
        c.get("system").and_then(Value::as_str) == Some(STATUS_REASON_SYSTEM)
            && c.get("code").and_then(Value::as_str) == Some("expired")
    })
}

fn codings(concept: Option<&Value>) -> impl Iterator<Item = &Value> {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Applies `action` to `task`. `new_id` names the resources a close creates.
pub fn apply(
    action: Action,
    task: &Value,
    service_request: Option<&Value>,
    actor: Actor<'_>,
    codes: &ReasonCodes,
    now: &str,
    mut new_id: impl FnMut() -> String,
) -> Result<Edit, ActionError> {
    let current = CboStatus::of_task(task).ok_or(ActionError::UnknownStatus)?;
    if !action.allowed_from(current) {
        return Err(ActionError::InvalidTransition {
            action: action.name(),
            current,
            allowed: allowed_actions(current),
        });
    }
    let mut task = task.clone();
    let mut created = Vec::new();
    let mut edit = TaskEdit {
        task: &mut task,
        actor,
        now,
    };
    let note = match action {
        Action::Accept {
            assignee,
            expected_contact_by,
            note,
        } => {
            edit.status(TaskStatus::Accepted, None);
            if let Some(a) = assignee {
                edit.extension("cbo-assignee", json!({"valueString": a}));
            }
            if let Some(d) = expected_contact_by {
                edit.extension("expected-contact-by", json!({"valueDateTime": d}));
            }
            note.map(|n| edit.note(&n))
        }
        Action::Decline { reason, note } => {
            let text = note.clone().unwrap_or_else(|| reason.display().to_string());
            edit.status(
                TaskStatus::Rejected,
                Some(codes.concept("decline_reason", reason.code(), reason.display(), &text)),
            );
            note.map(|n| edit.note(&n))
        }
        Action::Start { note } | Action::Resume { note } => {
            edit.status(TaskStatus::InProgress, None);
            note.map(|n| edit.note(&n))
        }
        Action::Hold { reason, note } => {
            let text = reason.unwrap_or_else(|| "On hold".to_string());
            edit.status(
                TaskStatus::OnHold,
                Some(reason_concept("on_hold", "On hold", &text)),
            );
            note.map(|n| edit.note(&n))
        }
        Action::Close {
            outcome,
            services_provided,
            enrollment,
            note,
            external_case_id,
        } => {
            let text = note
                .clone()
                .unwrap_or_else(|| outcome.display().to_string());
            let status = outcome.task_status();
            let mut services = services_provided;
            // A completed Task needs a resulting activity (IG refer-10): when the CBO
            // names none, the service that was requested is the one performed.
            if services.is_empty()
                && status == TaskStatus::Completed
                && let Some(requested) =
                    service_request.and_then(|sr| codings(sr.get("code")).next())
            {
                services.push(ServiceProvided {
                    system: str_at(requested, "system").unwrap_or_default().to_string(),
                    code: str_at(requested, "code").unwrap_or_default().to_string(),
                    display: str_at(requested, "display").map(str::to_string),
                    date: None,
                });
            }
            for s in &services {
                let id = new_id();
                created.push((
                    "Procedure",
                    id.clone(),
                    procedure(s, edit.task, service_request, actor, now),
                ));
                edit.output(&format!("Procedure/{id}"));
            }
            if let Some(e) = enrollment {
                let id = new_id();
                created.push((
                    "Observation",
                    id.clone(),
                    enrollment_observation(&e, edit.task, now),
                ));
                edit.output(&format!("Observation/{id}"));
            }
            if let Some(case) = external_case_id {
                edit.identifier(&case);
            }
            edit.status(
                status,
                Some(codes.concept("close_outcome", outcome.code(), outcome.display(), &text)),
            );
            note.map(|n| edit.note(&n))
        }
        Action::Note { text } => Some(edit.note(&text)),
        Action::Expire => {
            edit.status(
                TaskStatus::Failed,
                Some(reason_concept(
                    "expired",
                    "No response by deadline",
                    "no response by deadline",
                )),
            );
            None
        }
    };
    Ok(Edit {
        task,
        created,
        note,
    })
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn reason_concept(code: &str, display: &str, text: &str) -> Value {
    json!({
        "coding": [{"system": STATUS_REASON_SYSTEM, "code": code, "display": display}],
        "text": text,
    })
}

struct TaskEdit<'t, 'a> {
    task: &'t mut Value,
    actor: Actor<'a>,
    now: &'a str,
}

impl TaskEdit<'_, '_> {
    fn object(&mut self) -> &mut Map<String, Value> {
        if !self.task.is_object() {
            *self.task = Value::Object(Map::new());
        }
        self.task.as_object_mut().expect("made an object above")
    }

    fn status(&mut self, status: TaskStatus, reason: Option<Value>) {
        let now = self.now.to_string();
        let t = self.object();
        t.insert("status".into(), Value::String(status.as_str().into()));
        match reason {
            Some(r) => {
                t.insert("statusReason".into(), r);
            }
            None => {
                t.remove("statusReason");
            }
        }
        t.insert("lastModified".into(), Value::String(now));
    }

    fn push(&mut self, key: &str, item: Value) {
        let list = self
            .object()
            .entry(key)
            .or_insert_with(|| Value::Array(vec![]));
        if !list.is_array() {
            *list = Value::Array(vec![]);
        }
        if let Value::Array(items) = list {
            items.push(item);
        }
    }

    fn note(&mut self, text: &str) -> Value {
        let note = json!({
            "authorReference": {
                "reference": format!("Organization/{}", self.actor.organization),
                "display": self.actor.name,
            },
            "time": self.now,
            "text": text,
        });
        self.push("note", note.clone());
        let now = self.now.to_string();
        self.object()
            .insert("lastModified".into(), Value::String(now));
        note
    }

    fn output(&mut self, reference: &str) {
        self.push(
            "output",
            json!({
                "type": {"coding": [{"system": SDOHCC_TEMPORARY_CODES, "code": "resulting-activity"}]},
                "valueReference": {"reference": reference},
            }),
        );
    }

    fn identifier(&mut self, case_id: &str) {
        let system = format!("urn:crossway:cbo:{}:case-id", self.actor.organization);
        self.push("identifier", json!({"system": system, "value": case_id}));
    }

    fn extension(&mut self, name: &str, value: Value) {
        let url = format!("{EXTENSION_BASE}{name}");
        if let Some(Value::Array(list)) = self.task.get_mut("extension") {
            list.retain(|e| str_at(e, "url") != Some(url.as_str()));
        }
        let mut ext = json!({ "url": url });
        if let (Value::Object(e), Value::Object(v)) = (&mut ext, value) {
            e.extend(v);
        }
        self.push("extension", ext);
    }
}

/// The SDOHCC Procedure for a provided service, `basedOn` the ServiceRequest.
fn procedure(
    s: &ServiceProvided,
    task: &Value,
    service_request: Option<&Value>,
    actor: Actor<'_>,
    now: &str,
) -> Value {
    let mut coding = json!({"system": s.system, "code": s.code});
    if let Some(d) = &s.display {
        coding["display"] = Value::String(d.clone());
    }
    let mut p = json!({
        "resourceType": "Procedure",
        "meta": {"profile": [PROCEDURE_PROFILE]},
        "status": "completed",
        "code": {"coding": [coding]},
        "subject": subject(task, service_request),
        "performedDateTime": s.date.as_deref().unwrap_or(now),
        "performer": [{"actor": {
            "reference": format!("Organization/{}", actor.organization),
            "display": actor.name,
        }}],
    });
    if let Some(sr) = service_request {
        if let Some(id) = str_at(sr, "id") {
            p["basedOn"] = json!([{"reference": format!("ServiceRequest/{id}")}]);
        }
        if let Some(category) = sr.pointer("/category/0") {
            p["category"] = category.clone();
        }
        if let Some(reasons) = sr.get("reasonReference") {
            p["reasonReference"] = reasons.clone();
        }
    }
    p
}

/// Program enrollment reported at close, as an Observation.
fn enrollment_observation(e: &Enrollment, task: &Value, now: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "social-history",
        }]}],
        "code": {
            "coding": [{"system": STATUS_REASON_SYSTEM, "code": "program-enrollment", "display": "Program enrollment status"}],
            "text": format!("Enrollment in {}", e.program),
        },
        "subject": subject(task, None),
        "effectiveDateTime": now,
        "valueCodeableConcept": {"text": e.status},
        "note": [{"text": format!("Program: {}", e.program)}],
    })
}

fn subject(task: &Value, service_request: Option<&Value>) -> Value {
    task.get("for")
        .or_else(|| service_request.and_then(|sr| sr.get("subject")))
        .cloned()
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTOR: Actor<'static> = Actor {
        organization: "cbo-1",
        name: "Food Bank",
    };

    fn task(status: &str) -> Value {
        json!({"resourceType": "Task", "id": "t1", "status": status,
               "for": {"reference": "Patient/p1"}, "focus": {"reference": "ServiceRequest/sr1"}})
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("new-{n}")
        }
    }

    #[test]
    fn close_resolved_completes_the_task_with_a_procedure_output() {
        let sr = json!({"id": "sr1", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]},
                        "category": [{"coding": [{"code": "food-insecurity"}]}]});
        let close = Action::Close {
            outcome: CloseOutcome::Resolved,
            services_provided: vec![],
            enrollment: Some(Enrollment {
                program: "Weekly pantry".into(),
                status: "enrolled".into(),
            }),
            note: Some("Enrolled".into()),
            external_case_id: Some("APRICOT-1".into()),
        };
        let edit = apply(
            close,
            &task("in-progress"),
            Some(&sr),
            ACTOR,
            &ReasonCodes::default(),
            "2025-03-17T10:00:00Z",
            ids(),
        )
        .unwrap();
        assert_eq!(edit.task["status"], "completed");
        assert_eq!(
            edit.task["output"][0]["valueReference"]["reference"],
            "Procedure/new-1"
        );
        assert_eq!(
            edit.task["output"][1]["valueReference"]["reference"],
            "Observation/new-2"
        );
        assert_eq!(edit.task["statusReason"]["coding"][0]["code"], "resolved");
        assert_eq!(edit.task["note"][0]["text"], "Enrolled");
        assert_eq!(edit.task["identifier"][0]["value"], "APRICOT-1");
        let (ty, _, procedure) = &edit.created[0];
        assert_eq!(*ty, "Procedure");
        assert_eq!(procedure["basedOn"][0]["reference"], "ServiceRequest/sr1");
        assert_eq!(procedure["code"]["coding"][0]["code"], "467771000124109");
        assert_eq!(procedure["subject"]["reference"], "Patient/p1");
    }

    #[test]
    fn a_mapped_decline_reason_writes_the_ehrs_coding_and_unknown_codes_are_refused() {
        let file: CodesFile = toml::from_str(
            r#"
            [decline_reason]
            no_capacity = { system = "http://hospital.example.org/codes", code = "NOCAP", display = "Program full" }
            "#,
        )
        .unwrap();
        let codes = ReasonCodes::build(file).unwrap();
        let decline = Action::Decline {
            reason: DeclineReason::NoCapacity,
            note: None,
        };
        let edit = apply(
            decline,
            &task("requested"),
            None,
            ACTOR,
            &codes,
            "now",
            ids(),
        )
        .unwrap();
        assert_eq!(
            edit.task["statusReason"]["coding"][0],
            json!({"system": "http://hospital.example.org/codes", "code": "NOCAP", "display": "Program full"})
        );
        assert!(
            codes
                .unmapped()
                .contains(&"decline_reason.duplicate".to_string())
        );
        assert!(
            !codes
                .unmapped()
                .contains(&"decline_reason.no_capacity".to_string())
        );

        let file: CodesFile = toml::from_str(
            "[close_outcome]\nsolved = { system = \"urn:x\", code = \"S\", display = \"S\" }\n",
        )
        .unwrap();
        let (rule, message) = ReasonCodes::build(file).unwrap_err();
        assert_eq!(rule, "close_outcome.solved");
        assert!(message.contains("not a close_outcome"), "{message}");
    }

    #[test]
    fn an_unresolved_close_fails_the_task_without_inventing_a_procedure() {
        let close = Action::Close {
            outcome: CloseOutcome::ClientUnreachable,
            services_provided: vec![],
            enrollment: None,
            note: None,
            external_case_id: None,
        };
        let edit = apply(
            close,
            &task("accepted"),
            None,
            ACTOR,
            &ReasonCodes::default(),
            "2025-03-17T10:00:00Z",
            ids(),
        )
        .unwrap();
        assert_eq!(edit.task["status"], "failed");
        assert!(edit.created.is_empty());
        assert_eq!(CboStatus::of_task(&edit.task), Some(CboStatus::Closed));
    }

    #[test]
    fn a_route_takes_the_steps_a_case_system_skipped() {
        use CboStatus::*;
        assert_eq!(route(Pending, Closed).unwrap(), ["accept", "close"]);
        assert_eq!(route(Pending, InProgress).unwrap(), ["accept", "start"]);
        assert_eq!(route(OnHold, Closed).unwrap(), ["resume", "close"]);
        assert_eq!(route(Accepted, Accepted).unwrap(), Vec::<&str>::new());
        assert_eq!(route(Closed, Accepted), None);
        assert_eq!(route(Accepted, Declined), None);
    }

    #[test]
    fn invalid_transitions_name_what_is_allowed() {
        let err = apply(
            Action::Start { note: None },
            &task("requested"),
            None,
            ACTOR,
            &ReasonCodes::default(),
            "now",
            ids(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ActionError::InvalidTransition {
                action: "start",
                current: CboStatus::Pending,
                allowed: vec!["accept", "decline", "note"],
            }
        );
        assert!(allowed_actions(CboStatus::Declined).is_empty());
        assert_eq!(allowed_actions(CboStatus::OnHold), ["resume", "note"]);
    }

    #[test]
    fn every_action_lands_on_a_task_status_the_ig_allows() {
        for from in ["requested", "accepted", "in-progress", "on-hold"] {
            let t = task(from);
            for action in [
                Action::Accept {
                    assignee: Some("Ana".into()),
                    expected_contact_by: None,
                    note: None,
                },
                Action::Decline {
                    reason: DeclineReason::NoCapacity,
                    note: None,
                },
                Action::Start { note: None },
                Action::Hold {
                    reason: None,
                    note: None,
                },
                Action::Resume { note: None },
                Action::Expire,
            ] {
                if let Ok(edit) = apply(
                    action,
                    &t,
                    None,
                    ACTOR,
                    &ReasonCodes::default(),
                    "now",
                    ids(),
                ) {
                    let old = TaskStatus::parse(from).unwrap();
                    let new = TaskStatus::parse(edit.task["status"].as_str().unwrap()).unwrap();
                    assert!(
                        old.can_move_to(new) || is_expiry(&edit.task),
                        "{from} -> {new:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn expiry_is_recognisable_on_the_task() {
        let edit = apply(
            Action::Expire,
            &task("requested"),
            None,
            ACTOR,
            &ReasonCodes::default(),
            "now",
            ids(),
        )
        .unwrap();
        assert!(is_expiry(&edit.task));
        assert_eq!(CboStatus::of_task(&edit.task), Some(CboStatus::Expired));
    }
}
