//! Da Vinci Unsolicited Notifications (a `message` Bundle: MessageHeader, Encounter in
//! focus, Patient, …) → [`Notice`], with the same effects as the HL7 v2 path.

use serde_json::Value;

use super::{EncounterChange, Notice, NoticeError, tables::Effect};
use crate::hl7v2::ErrorCode;
use crate::identity::IdentityRules;

fn invalid(path: &str, rule: &str) -> NoticeError {
    NoticeError::reject(ErrorCode::RequiredFieldMissing, path, rule)
}

/// The deduplication key. `Bundle.identifier` (system, value) when the sender gives
/// one; otherwise the message's own identity in FHIR messaging, `MessageHeader.id`
/// within its source: `MessageHeader.source.endpoint`, or (an endpoint being required
/// by FHIR, this is for senders that leave it out) the authenticated client, as
/// `client:<id>`.
pub fn key(bundle: &Value, client: Option<&str>) -> Result<(String, String), NoticeError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || bundle.get("type").and_then(Value::as_str) != Some("message")
    {
        return Err(invalid(
            "Bundle.type",
            "$process-message takes a Bundle of type message",
        ));
    }
    let text = |v: Option<&Value>, name: &str| {
        v.and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let id = bundle.get("identifier");
    if let (Some(s), Some(v)) = (text(id, "system"), text(id, "value")) {
        return Ok((s, v));
    }
    let header = header(bundle);
    let Some(control) = text(header, "id") else {
        return Err(invalid(
            "MessageHeader.id",
            "a message without Bundle.identifier (system and value) is identified by MessageHeader.id, which is required: it is the deduplication key",
        ));
    };
    let endpoint = text(header.and_then(|h| h.get("source")), "endpoint");
    match (endpoint, client.filter(|c| !c.is_empty())) {
        (Some(e), _) => Ok((e, control)),
        (None, Some(c)) => Ok((format!("client:{c}"), control)),
        (None, None) => Err(invalid(
            "MessageHeader.source.endpoint",
            "the source endpoint is required: with MessageHeader.id it is the deduplication key",
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

/// Reads a notification; `client` is the authenticated caller (for the key of a
/// message without a source endpoint).
pub fn notice(
    bundle: &Value,
    rules: &IdentityRules,
    client: Option<&str>,
) -> Result<Notice, NoticeError> {
    let (source, control_id) = key(bundle, client)?;
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
        .and_then(|ids| ids.first());
    let part = |name: &str| {
        visit
            .and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let occurred = bundle
        .get("timestamp")
        .and_then(Value::as_str)
        .map(str::to_string);
    // An end on an encounter still in progress (the IG's own admit examples carry
    // one) is not a discharge: only a discharge, or a finished encounter, ends it.
    let status = text("/status").unwrap_or_default();
    let end = match text("/period/end") {
        Some(end) if effect == Effect::Discharge || status == "finished" => Some(end),
        Some(end) => {
            notice.warnings.push(format!(
                "Encounter.period.end {end:?} ignored: the encounter is {status:?} and the event is not a discharge"
            ));
            None
        }
        None if effect == Effect::Discharge => occurred.clone(),
        None => None,
    };
    let start = match text("/period/start") {
        Some(start) => Some(start),
        None if effect == Effect::Admit => occurred.clone(),
        None => None,
    };
    const DISPOSITION: &str = "http://terminology.hl7.org/CodeSystem/discharge-disposition";
    let sent_disposition = encounter.pointer("/hospitalization/dischargeDisposition");
    let standard_disposition = sent_disposition
        .and_then(|d| d.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("system").and_then(Value::as_str) == Some(DISPOSITION))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    notice.encounter = Some(EncounterChange {
        key: match part("value") {
            Some(v) => format!("visit:{v}"),
            None => format!("msg:{}", notice.control_id),
        },
        system: part("value").and(part("system")).map(str::to_string),
        class: text("/class/code"),
        start,
        end,
        disposition: standard_disposition.clone(),
        class_local: None,
        // A disposition in another code system is carried through as the sender wrote
        // it, never relabelled as a standard code.
        disposition_local: match (&standard_disposition, sent_disposition) {
            (None, Some(d)) => Some(d.clone()),
            _ => None,
        },
        occurred,
    });
    Ok(notice)
}
