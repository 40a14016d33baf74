//! What the SDOH Clinical Care IG (and base FHIR R4) require of incoming resources.
//!
//! Lenient on input where real clients deviate and the meaning is clear (`received`,
//! relative owners), strict where a mistake would corrupt the referral. Checks that need
//! the store (references that must resolve) are returned as [`ReferenceCheck`]s for the
//! engine to run inside the write transaction.

use serde_json::Value;

use super::reference::{self, Target};
use super::{FhirError, Issue, IssueCode};
use crate::referral::TaskStatus;

pub const TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";
pub const SERVICE_REQUEST_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ServiceRequest";
pub const TASK_CODE_SYSTEM: &str = "http://hl7.org/fhir/CodeSystem/task-code";

/// A reference that must point at an existing resource of one of `allowed` types.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceCheck {
    pub expression: String,
    pub resource_type: String,
    pub id: String,
    pub allowed: &'static [&'static str],
}

#[derive(Debug, Default)]
pub struct Validated {
    pub warnings: Vec<Issue>,
    pub must_resolve: Vec<ReferenceCheck>,
}

/// Elements base FHIR R4 makes 1..1 (or 1..*), for the types referrals are made of.
fn base_required(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Task" => &["status", "intent"],
        "ServiceRequest" => &["status", "intent", "subject"],
        "Procedure" => &["status", "subject"],
        "Encounter" => &["status", "class"],
        "Observation" => &["status", "code"],
        "Condition" => &["subject"],
        "Consent" => &["status", "scope", "category"],
        "Goal" => &["lifecycleStatus", "description", "subject"],
        "DocumentReference" => &["status", "content"],
        "QuestionnaireResponse" => &["status"],
        "Questionnaire" => &["status"],
        "Group" => &["type", "actual"],
        "RelatedPerson" => &["patient"],
        _ => &[],
    }
}

/// A Task is treated as a referral when it claims the IG profile, or when it has the
/// shape of one (code = fulfill, focus on a ServiceRequest) without claiming it.
pub fn is_referral_task(task: &Value) -> bool {
    if super::profiles(task).any(|p| p.split('|').next() == Some(TASK_PROFILE)) {
        return true;
    }
    let fulfill = task
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("code").and_then(Value::as_str) == Some("fulfill"))
        });
    let focus_sr = task
        .pointer("/focus/reference")
        .and_then(Value::as_str)
        .is_some_and(|r| r.contains("ServiceRequest/") || r.starts_with("urn:"));
    fulfill && focus_sr
}

/// Structural and profile checks that need no store access. `id` is the logical id the
/// resource will have, when known (update), to check it matches the body.
pub fn validate(
    resource_type: &str,
    resource: &Value,
    id: Option<&str>,
) -> Result<Validated, FhirError> {
    let Value::Object(map) = resource else {
        return Err(FhirError::invalid(
            resource_type,
            "a resource must be a JSON object",
        ));
    };
    match map.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => {}
        Some(t) => {
            return Err(FhirError::invalid(
                format!("{resource_type}.resourceType"),
                format!("resourceType is {t:?} but the request is for {resource_type}"),
            ));
        }
        None => {
            return Err(FhirError::invalid(
                format!("{resource_type}.resourceType"),
                "resourceType is required",
            ));
        }
    }
    let mut errors = Vec::new();
    match (map.get("id"), id) {
        (Some(Value::String(body_id)), Some(url_id)) if body_id != url_id => {
            errors.push(Issue::error(
                IssueCode::Invalid,
                format!("{resource_type}.id"),
                format!("id {body_id:?} in the body does not match {url_id:?} in the URL"),
            ))
        }
        (None, Some(_)) => errors.push(Issue::error(
            IssueCode::Required,
            format!("{resource_type}.id"),
            "an update must carry the resource id in the body",
        )),
        (Some(v), _) if !v.as_str().is_some_and(super::is_valid_id) => errors.push(Issue::error(
            IssueCode::Invalid,
            format!("{resource_type}.id"),
            "id must be 1-64 characters of A-Z a-z 0-9 - .",
        )),
        _ => {}
    }
    if let Some(meta) = map.get("meta") {
        let profile_ok = meta
            .get("profile")
            .is_none_or(|p| p.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
        if !meta.is_object() || !profile_ok {
            errors.push(Issue::error(
                IssueCode::Structure,
                format!("{resource_type}.meta"),
                "meta must be an object and meta.profile an array of canonical URLs",
            ));
        }
    }
    for element in base_required(resource_type) {
        if is_absent(map.get(*element)) {
            errors.push(required(resource_type, element, "base FHIR R4"));
        }
    }
    if !errors.is_empty() {
        return Err(FhirError::Invalid(errors));
    }
    let mut out = Validated::default();
    match resource_type {
        "Task" => validate_task(resource, &mut out)?,
        "ServiceRequest" => validate_service_request(resource)?,
        _ => {}
    }
    Ok(out)
}

fn is_absent(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

fn required(resource_type: &str, element: &str, by: &str) -> Issue {
    Issue::error(
        IssueCode::Required,
        format!("{resource_type}.{element}"),
        format!("{resource_type}.{element} is required ({by})"),
    )
}

fn validate_task(task: &Value, out: &mut Validated) -> Result<(), FhirError> {
    let status = task.get("status").and_then(Value::as_str).unwrap_or("");
    let parsed = TaskStatus::parse(status);
    let referral = is_referral_task(task);
    if !referral {
        return match status {
            "ready" => Ok(()),
            _ if parsed.is_some() => Ok(()),
            _ => Err(FhirError::invalid(
                "Task.status",
                format!("{status:?} is not a Task status"),
            )),
        };
    }
    const BY: &str = "SDOHCC Task for Referral Management";
    let mut errors = Vec::new();
    if parsed.is_none() {
        errors.push(Issue::error(
            IssueCode::Value,
            "Task.status",
            format!("{status:?} is not allowed for a referral Task (draft, requested, accepted, rejected, cancelled, in-progress, on-hold, completed, failed, entered-in-error)"),
        ));
    }
    if task.get("intent").and_then(Value::as_str) != Some("order") {
        errors.push(Issue::error(
            IssueCode::Value,
            "Task.intent",
            format!("Task.intent must be \"order\" ({BY})"),
        ));
    }
    let fulfill = task
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("code").and_then(Value::as_str) == Some("fulfill")
                    && c.get("system")
                        .and_then(Value::as_str)
                        .is_none_or(|s| s == TASK_CODE_SYSTEM)
            })
        });
    if !fulfill {
        errors.push(Issue::error(
            IssueCode::Value,
            "Task.code",
            format!("Task.code must be {TASK_CODE_SYSTEM}#fulfill ({BY})"),
        ));
    }
    for element in ["authoredOn", "requester"] {
        if is_absent(task.get(element)) {
            errors.push(required("Task", element, BY));
        }
    }
    for (element, allowed) in [
        ("focus", &["ServiceRequest"][..]),
        ("for", &["Patient", "RelatedPerson", "Group"][..]),
    ] {
        match task
            .get(element)
            .and_then(|f| f.get("reference"))
            .and_then(Value::as_str)
        {
            None => errors.push(required("Task", element, BY)),
            Some(r) => match reference::parse(r, None) {
                Some(Target::Local { resource_type, id }) => {
                    if allowed.contains(&resource_type) {
                        out.must_resolve.push(ReferenceCheck {
                            expression: format!("Task.{element}"),
                            resource_type: resource_type.into(),
                            id: id.into(),
                            allowed,
                        });
                    } else {
                        errors.push(Issue::error(
                            IssueCode::Value,
                            format!("Task.{element}"),
                            format!(
                                "Task.{element} must refer to {} ({BY})",
                                allowed.join(" or ")
                            ),
                        ));
                    }
                }
                Some(Target::External { .. } | Target::Urn { .. } | Target::Conditional { .. }) => {
                }
                Some(Target::Contained) | None => errors.push(Issue::error(
                    IssueCode::Value,
                    format!("Task.{element}"),
                    format!("Task.{element}.reference {r:?} is not a resolvable reference"),
                )),
            },
        }
    }
    if let Some(s) = parsed {
        let has_reason_text = task
            .pointer("/statusReason/text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if s.expects_reason() && !has_reason_text {
            out.warnings.push(Issue::warning(
                IssueCode::BusinessRule,
                "Task.statusReason",
                format!(
                    "a Task that is {} should carry statusReason.text saying why",
                    s.as_str()
                ),
            ));
        }
        if s == TaskStatus::Completed && is_absent(task.get("output")) {
            errors.push(Issue::error(
                IssueCode::BusinessRule,
                "Task.output",
                "a completed referral Task needs at least one output (resulting-activity: the Procedure performed)",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FhirError::Unprocessable(errors))
    }
}

fn validate_service_request(sr: &Value) -> Result<(), FhirError> {
    if !super::profiles(sr).any(|p| p.split('|').next() == Some(SERVICE_REQUEST_PROFILE)) {
        return Ok(());
    }
    if is_absent(sr.get("code")) {
        return Err(FhirError::Unprocessable(vec![required(
            "ServiceRequest",
            "code",
            "SDOHCC ServiceRequest",
        )]));
    }
    Ok(())
}

/// Replaces values real clients send that the IG does not allow us to emit.
pub fn normalize(resource_type: &str, resource: &mut Value) {
    if resource_type == "Task"
        && resource.get("status").and_then(Value::as_str) == Some("received")
        && is_referral_task(resource)
    {
        resource["status"] = Value::String("requested".into());
    }
}

/// Refuses a referral Task update whose status change the IG's state machine forbids.
pub fn check_task_transition(old: &Value, new: &Value) -> Result<(), FhirError> {
    if !is_referral_task(new) {
        return Ok(());
    }
    let status = |v: &Value| {
        v.get("status")
            .and_then(Value::as_str)
            .and_then(TaskStatus::parse)
    };
    let (Some(from), Some(to)) = (status(old), status(new)) else {
        return Ok(());
    };
    if from.can_move_to(to) {
        return Ok(());
    }
    // The gateway's sweep fails a referral nobody answered by its deadline
    // (architecture.md), a move the IG's diagram does not draw; only that reason makes
    // it legal.
    if from == TaskStatus::Requested
        && to == TaskStatus::Failed
        && crate::referral::action::is_expiry(new)
    {
        return Ok(());
    }
    let next = from.next_statuses();
    Err(FhirError::rule(
        "Task.status",
        format!(
            "a referral Task cannot move from {} to {}; allowed next: {}",
            from.as_str(),
            to.as_str(),
            if next.is_empty() {
                "none (final status)".to_string()
            } else {
                next.join(", ")
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task() -> Value {
        json!({
            "resourceType": "Task",
            "meta": {"profile": [TASK_PROFILE]},
            "status": "requested", "intent": "order",
            "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
            "focus": {"reference": "ServiceRequest/sr1"},
            "for": {"reference": "Patient/p1"},
            "authoredOn": "2026-11-23T08:00:00Z",
            "requester": {"reference": "PractitionerRole/r1"},
            "owner": {"reference": "Organization/cbo"}
        })
    }

    fn expressions(e: FhirError) -> Vec<String> {
        e.issues()
            .into_iter()
            .filter_map(|i| i.expression)
            .collect()
    }

    #[test]
    fn a_valid_referral_task_lists_references_to_resolve() {
        let v = validate("Task", &task(), None).unwrap();
        let targets: Vec<_> = v
            .must_resolve
            .iter()
            .map(|c| (c.expression.as_str(), c.resource_type.as_str()))
            .collect();
        assert_eq!(
            targets,
            [("Task.focus", "ServiceRequest"), ("Task.for", "Patient")]
        );
    }

    #[test]
    fn each_missing_or_wrong_element_is_named() {
        let mut t = task();
        t.as_object_mut().unwrap().remove("focus");
        t["intent"] = json!("plan");
        t["focus"] = json!(null);
        t["code"]["coding"][0]["system"] = json!("http://example.org/other");
        // Still a referral: it claims the profile.
        let e = validate("Task", &t, None).unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(expressions(e), ["Task.intent", "Task.code", "Task.focus"]);
    }

    #[test]
    fn focus_must_be_a_service_request() {
        let mut t = task();
        t["focus"] = json!({"reference": "Patient/p1"});
        assert_eq!(
            expressions(validate("Task", &t, None).unwrap_err()),
            ["Task.focus"]
        );
    }

    #[test]
    fn external_references_need_no_local_resolution() {
        let mut t = task();
        t["focus"] = json!({"reference": "http://ehr.example/fhir/ServiceRequest/1"});
        let v = validate("Task", &t, None).unwrap();
        assert_eq!(v.must_resolve.len(), 1);
    }

    #[test]
    fn wrong_resource_type_and_id_mismatch_are_400() {
        let e = validate("Patient", &task(), None).unwrap_err();
        assert_eq!(
            (e.status(), expressions(e)),
            (400, vec!["Patient.resourceType".to_string()])
        );
        let mut t = task();
        t["id"] = json!("a");
        assert_eq!(
            expressions(validate("Task", &t, Some("b")).unwrap_err()),
            ["Task.id"]
        );
    }

    #[test]
    fn completed_needs_output_and_reasons_are_warned() {
        let mut t = task();
        t["status"] = json!("completed");
        assert_eq!(
            expressions(validate("Task", &t, None).unwrap_err()),
            ["Task.output"]
        );
        t["status"] = json!("rejected");
        let v = validate("Task", &t, None).unwrap();
        assert_eq!(
            v.warnings[0].expression.as_deref(),
            Some("Task.statusReason")
        );
    }

    #[test]
    fn received_is_normalised_to_requested() {
        let mut t = task();
        t["status"] = json!("received");
        validate("Task", &t, None).unwrap();
        normalize("Task", &mut t);
        assert_eq!(t["status"], "requested");
    }

    #[test]
    fn transitions_follow_the_state_machine() {
        let old = task();
        let mut new = task();
        new["status"] = json!("completed");
        let e = check_task_transition(&old, &new).unwrap_err();
        assert!(
            e.to_string()
                .contains("allowed next: accepted, rejected, cancelled"),
            "{e}"
        );
        new["status"] = json!("accepted");
        check_task_transition(&old, &new).unwrap();
    }

    #[test]
    fn base_required_elements() {
        let sr = json!({"resourceType": "ServiceRequest", "status": "active"});
        assert_eq!(
            expressions(validate("ServiceRequest", &sr, None).unwrap_err()),
            ["ServiceRequest.intent", "ServiceRequest.subject"]
        );
    }
}
