//! Da Vinci Unsolicited Notifications (a `message` Bundle: MessageHeader, Encounter in
//! focus, Patient, …) → [`Notice`], with the same effects as the HL7 v2 path.

use serde_json::Value;

use super::{EncounterChange, Notice, NoticeError, tables::Effect};
use crate::hl7v2::ErrorCode;
use crate::identity::IdentityRules;

fn invalid(path: &str, rule: &str) -> NoticeError {
    NoticeError::reject(ErrorCode::RequiredFieldMissing, path, rule)
}

/// The deduplication key: `Bundle.identifier` (system, value).
pub fn key(bundle: &Value) -> Result<(String, String), NoticeError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || bundle.get("type").and_then(Value::as_str) != Some("message")
    {
        return Err(invalid(
            "Bundle.type",
            "$process-message takes a Bundle of type message",
        ));
    }
    let id = bundle.get("identifier");
    let part = |name: &str| {
        id.and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    match (part("system"), part("value")) {
        (Some(s), Some(v)) => Ok((s, v)),
        _ => Err(invalid(
            "Bundle.identifier",
            "system and value are required: they are the deduplication key",
        )),
    }
}

fn header(bundle: &Value) -> Option<&Value> {
    entries(bundle).find(|r| r.get("resourceType").and_then(Value::as_str) == Some("MessageHeader"))
}

fn entries(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
}

/// `MessageHeader.eventCoding.code`.
pub fn event(bundle: &Value) -> String {
    header(bundle)
        .and_then(|h| h.pointer("/eventCoding/code"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The entry a reference (`urn:uuid:…` fullUrl or `Type/id`) points to.
fn resolve<'a>(bundle: &'a Value, reference: Option<&Value>) -> Option<&'a Value> {
    let r = reference?.get("reference")?.as_str()?;
    bundle
        .get("entry")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("fullUrl").and_then(Value::as_str) == Some(r)
                || e.get("resource").is_some_and(|res| {
                    let ty = res.get("resourceType").and_then(Value::as_str);
                    let id = res.get("id").and_then(Value::as_str);
                    matches!((ty, id), (Some(t), Some(i)) if r == format!("{t}/{i}"))
                })
        })?
        .get("resource")
}

pub fn notice(bundle: &Value, rules: &IdentityRules) -> Result<Notice, NoticeError> {
    let (source, control_id) = key(bundle)?;
    let header = header(bundle).ok_or_else(|| {
        invalid(
            "Bundle.entry[0]",
            "a notification starts with a MessageHeader",
        )
    })?;
    let event = event(bundle);
    let effect = match event.as_str() {
        "notification-admit" => Effect::Admit,
        "notification-discharge" => Effect::Discharge,
        "notification-transfer" => Effect::Transfer,
        _ => Effect::Ignore,
    };
    let mut notice = Notice::new(source, control_id, "fhir", event, effect);
    if effect == Effect::Ignore {
        return Ok(notice);
    }
    let focus = header
        .get("focus")
        .and_then(Value::as_array)
        .and_then(|f| f.first());
    let encounter = resolve(bundle, focus)
        .filter(|e| e.get("resourceType").and_then(Value::as_str) == Some("Encounter"))
        .ok_or_else(|| {
            invalid(
                "MessageHeader.focus",
                "the focus must reference the Encounter in the Bundle",
            )
        })?;
    let patient = resolve(bundle, encounter.get("subject"))
        .filter(|p| p.get("resourceType").and_then(Value::as_str) == Some("Patient"))
        .ok_or_else(|| {
            NoticeError::error(
                ErrorCode::RequiredFieldMissing,
                "Encounter.subject",
                "must reference the Patient in the Bundle",
            )
        })?;
    let (ids, skipped) = rules.from_fhir_patient(patient);
    notice.identifiers = ids;
    notice.warnings.extend(
        skipped
            .into_iter()
            .map(|(path, why)| format!("{path} ignored: {why}")),
    );
    if notice.identifiers.is_empty() {
        return Err(NoticeError::error(
            ErrorCode::RequiredFieldMissing,
            "Patient.identifier",
            "no person-level identifier with a system and a value",
        ));
    }
    let mut p = patient.clone();
    if let Some(obj) = p.as_object_mut() {
        obj.remove("id");
        obj.remove("meta");
    }
    notice.patient = p;
    let text = |path: &str| {
        encounter
            .pointer(path)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let visit = encounter
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str);
    notice.encounter = Some(EncounterChange {
        key: match visit {
            Some(v) => format!("visit:{v}"),
            None => format!("msg:{}", notice.control_id),
        },
        class: text("/class/code"),
        start: text("/period/start"),
        end: text("/period/end"),
        disposition: encounter
            .pointer("/hospitalization/dischargeDisposition/coding/0/code")
            .and_then(Value::as_str)
            .map(str::to_string),
        occurred: bundle
            .get("timestamp")
            .and_then(Value::as_str)
            .map(str::to_string),
    });
    Ok(notice)
}
