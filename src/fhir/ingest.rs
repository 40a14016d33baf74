//! Feed notices applied inside the writer's transaction: deduplication, identity,
//! the person's Patient, the Encounter, merges, and events for CBOs whose clients
//! were admitted or discharged. The raw message is recorded in the same transaction,
//! so it is never acknowledged without being stored, nor applied twice.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::FhirError;
use super::engine::{Context, local_target, put};
use crate::hie::{Effect, EncounterChange, Notice, NoticeError};
use crate::hl7v2::ErrorCode;
use crate::identity::{self, Identifier, Person, Resolved};
use crate::store::writer::Isolation;
use crate::store::{InboundMessage, Preload, Tx};

/// A feed message on its way into the store.
#[derive(Debug)]
pub struct Inbound {
    notice: Option<Notice>,
    record: InboundMessage,
    /// A replay re-applies a stored message instead of answering it as a duplicate.
    replay: bool,
}

impl Inbound {
    /// A message to apply.
    pub fn notice(notice: Notice, record: InboundMessage, replay: bool) -> Inbound {
        Inbound {
            notice: Some(notice),
            record,
            replay,
        }
    }

    /// A message only to keep (its `status` and `error` say why it is not applied).
    pub fn record(record: InboundMessage) -> Inbound {
        Inbound {
            notice: None,
            record,
            replay: false,
        }
    }

    /// A replayed message that failed again: its new status replaces the old.
    pub fn replayed_record(record: InboundMessage) -> Inbound {
        Inbound {
            replay: true,
            ..Inbound::record(record)
        }
    }

    /// Admits, discharges and demographics only stage rows: they need no savepoint.
    /// Merges and unlinks change stored identity rows, and a replay rewrites its
    /// stored message.
    pub(super) fn isolation(&self) -> Isolation {
        let changes_stored = self
            .notice
            .as_ref()
            .is_some_and(|n| matches!(n.effect, Effect::Merge | Effect::Unlink));
        if changes_stored || self.replay {
            Isolation::Savepoint
        } else {
            Isolation::None
        }
    }

    /// The person the message is about, so messages about one person share a writer.
    pub(super) fn affinity(&self) -> Option<String> {
        Some(self.notice.as_ref()?.identifiers.first()?.token())
    }

    /// The message key, the identifiers and the Encounter, read for the whole batch.
    pub(super) fn preload(&self, wanted: &mut Preload) {
        wanted
            .inbound
            .push((self.record.source.clone(), self.record.control_id.clone()));
        if let Some(notice) = &self.notice {
            wanted
                .identifiers
                .extend(notice.identifiers.iter().cloned());
            wanted.identifiers.extend(notice.retired.iter().cloned());
            if let Some(change) = &notice.encounter {
                wanted.resources.push((
                    "Encounter".into(),
                    encounter_id(
                        change.system.as_deref().unwrap_or(&notice.source),
                        &change.key,
                    ),
                ));
            }
        }
    }
}

/// What became of a feed message.
#[derive(Debug)]
pub enum Ingested {
    /// Applied; these identifiers changed owner (drop them from caches after COMMIT).
    Applied { invalidate: Vec<Identifier> },
    /// Stored; the event is ignored by rule (or the message was only to be kept).
    Ignored,
    /// Seen before: how it went the first time.
    Duplicate(InboundMessage),
    /// Names several persons; held for review.
    Conflict(Vec<String>),
    /// Parsed, but cannot be applied; kept as a dead letter.
    Dead(NoticeError),
}

pub(super) async fn ingest(
    tx: &mut Tx<'_>,
    ctx: &Context,
    inbound: Inbound,
    now: i64,
) -> Result<Ingested, FhirError> {
    let Inbound {
        notice,
        mut record,
        replay,
    } = inbound;
    let Some(notice) = notice else {
        if !replay && let Some(first) = tx.inbound(&record.source, &record.control_id).await? {
            return Ok(Ingested::Duplicate(first));
        }
        tx.record_inbound(&record).await?;
        return Ok(Ingested::Ignored);
    };
    // Claimed as applied up front (one statement on the common path); a message that
    // ends otherwise has its status rewritten below.
    record.status = "applied".into();
    if replay {
        tx.record_inbound(&record).await?;
    } else if !tx.claim_inbound(&record).await? {
        let first = tx.inbound(&record.source, &record.control_id).await?;
        return Ok(Ingested::Duplicate(first.unwrap_or(record)));
    }
    let outcome = match notice.effect {
        Effect::Ignore => Ingested::Ignored,
        Effect::Unlink => unlink(tx, ctx, &notice, now).await?,
        _ => apply(tx, ctx, &notice, &record.id, now).await?,
    };
    (record.status, record.error) = match &outcome {
        Ingested::Applied { .. } => ("applied".into(), None),
        Ingested::Ignored | Ingested::Duplicate(_) => ("ignored".into(), None),
        Ingested::Conflict(persons) => (
            "conflict".into(),
            Some(format!("identifiers name persons {}", persons.join(", "))),
        ),
        Ingested::Dead(e) => ("dead".into(), Some(e.to_string())),
    };
    if record.status != "applied" {
        tx.record_inbound(&record).await?;
    }
    Ok(outcome)
}

async fn apply(
    tx: &mut Tx<'_>,
    ctx: &Context,
    notice: &Notice,
    message_id: &str,
    now: i64,
) -> Result<Ingested, FhirError> {
    let (person, created) =
        match identity::resolve(tx, &notice.identifiers, &notice.source, now).await? {
            Resolved::Person { person, created } => (person, created),
            Resolved::Conflict(persons) => {
                tx.record_conflict(
                    &notice.source,
                    message_id,
                    "the message's identifiers belong to different persons",
                    &persons,
                    now,
                );
                return Ok(Ingested::Conflict(persons));
            }
        };
    let patient_id = if notice.patient.is_null() {
        // An operator's merge describes no one: keep the person's Patient as it is.
        match tx.patients_of(&person.id).await?.into_iter().next() {
            Some(id) => id,
            None => person_patient(tx, ctx, &person, created, &json!({}), now).await?,
        }
    } else {
        person_patient(tx, ctx, &person, created, &notice.patient, now).await?
    };
    let mut invalidate = Vec::new();
    if notice.effect == Effect::Merge {
        invalidate = merge(tx, ctx, notice, &person, &patient_id, message_id, now).await?;
    }
    if let Some(change) = &notice.encounter {
        encounter(tx, ctx, notice, change, &person, created, &patient_id, now).await?;
    }
    Ok(Ingested::Applied { invalidate })
}

/// The Patient resource the feeds keep for a person (`hie-<person id>`), updated with
/// what this message says: elements it carries replace the stored ones, elements it
/// leaves out are kept (HL7: empty means unchanged), identifiers accumulate.
async fn person_patient(
    tx: &mut Tx<'_>,
    ctx: &Context,
    person: &Person,
    new_person: bool,
    patient: &Value,
    now: i64,
) -> Result<String, FhirError> {
    let id = format!("hie-{}", person.id);
    // A person created just now has no Patient yet: no need to look.
    let current = if new_person {
        None
    } else {
        tx.current("Patient", &id).await?
    };
    let mut next = match current {
        Some(stored) => serde_json::from_str::<Value>(&stored.body).unwrap_or(json!({})),
        None => {
            tx.attach(&person.id, &[Identifier::patient(&id)], "feed", now);
            json!({"resourceType": "Patient"})
        }
    };
    if let (Some(next), Some(new)) = (next.as_object_mut(), patient.as_object()) {
        for (key, value) in new {
            if key == "identifier" {
                let ids = next.entry("identifier").or_insert_with(|| json!([]));
                if let Some(ids) = ids.as_array_mut() {
                    for v in value.as_array().into_iter().flatten() {
                        let same = |o: &Value| {
                            o.get("system") == v.get("system") && o.get("value") == v.get("value")
                        };
                        if !ids.iter().any(same) {
                            ids.push(v.clone());
                        }
                    }
                }
            } else {
                next.insert(key.clone(), value.clone());
            }
        }
        next.remove("meta");
    }
    put(tx, ctx, "Patient", &id, next, new_person, now).await?;
    Ok(id)
}

fn encounter_id(source: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{source}|{key}").as_bytes());
    format!("enc-{}", crate::hex(&digest[..12]))
}

/// Applies an encounter change so that the result does not depend on arrival order:
/// the start comes from the admit, the end from the discharge, whichever came first;
/// a cancel removes what its original set. CBOs with open referrals for the person are
/// told of an admission or discharge the first time it is seen — the event says only
/// that, never a diagnosis or a location. A person created by this very message has no
/// referrals to look for.
#[allow(clippy::too_many_arguments)]
async fn encounter(
    tx: &mut Tx<'_>,
    ctx: &Context,
    notice: &Notice,
    change: &EncounterChange,
    person: &Person,
    new_person: bool,
    patient_id: &str,
    now: i64,
) -> Result<(), FhirError> {
    let scope = change.system.as_deref().unwrap_or(&notice.source);
    let id = encounter_id(scope, &change.key);
    let stored = tx.current("Encounter", &id).await?;
    let new = stored.is_none();
    let existing = stored.and_then(|s| serde_json::from_str::<Value>(&s.body).ok());
    let mut enc = existing.unwrap_or_else(|| {
        json!({
            "resourceType": "Encounter",
            "identifier": [{"system": format!("urn:crossway:encounter:{scope}"), "value": change.key}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK"},
        })
    });
    if let Some(obj) = enc.as_object_mut() {
        obj.remove("meta");
    }
    enc["subject"] = json!({"reference": format!("Patient/{patient_id}")});
    if let Some(class) = &change.class {
        enc["class"] =
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class});
    } else if let Some(class) = &change.class_local {
        enc["class"] = class.clone();
    }
    let had_start = enc.pointer("/period/start").is_some();
    let had_end = enc.pointer("/period/end").is_some();
    let mut period = enc.get("period").cloned().unwrap_or_else(|| json!({}));
    let mut event = None;
    match notice.effect {
        Effect::Admit | Effect::Transfer | Effect::Discharge => {
            if let Some(start) = &change.start
                && !had_start
            {
                period["start"] = json!(start);
            }
            if notice.effect == Effect::Admit && !had_start {
                event = Some("client.admitted");
            }
            if notice.effect == Effect::Discharge {
                if let Some(end) = &change.end {
                    period["end"] = json!(end);
                }
                if let Some(d) = &change.disposition {
                    enc["hospitalization"] = json!({"dischargeDisposition": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": d}]}});
                } else if let Some(d) = &change.disposition_local {
                    enc["hospitalization"] = json!({"dischargeDisposition": d});
                }
                if !had_end {
                    event = Some("client.discharged");
                }
            }
        }
        Effect::CancelAdmit => {
            enc["status"] = json!("cancelled");
            if had_start {
                event = Some("client.admission_cancelled");
            }
        }
        Effect::CancelDischarge => {
            if let Some(p) = period.as_object_mut() {
                p.remove("end");
            }
            if let Some(obj) = enc.as_object_mut() {
                obj.remove("hospitalization");
            }
            if had_end {
                event = Some("client.discharge_cancelled");
            }
        }
        _ => {}
    }
    if period.as_object().is_some_and(|p| !p.is_empty()) {
        enc["period"] = period;
    } else if let Some(obj) = enc.as_object_mut() {
        obj.remove("period");
    }
    if enc.get("status").and_then(Value::as_str) != Some("cancelled") {
        let ended = enc.pointer("/period/end").is_some();
        enc["status"] = json!(if ended { "finished" } else { "in-progress" });
    }
    put(tx, ctx, "Encounter", &id, enc, new, now).await?;
    if let Some(event) = event
        && !new_person
    {
        for referral in tx.open_referrals_of(&person.client_ref).await? {
            tx.stage_event(event, &referral, now);
        }
    }
    Ok(())
}

/// An A40: the persons named by MRG-1 are retired into the survivor. Their open
/// referrals follow (Task.for and ServiceRequest.subject re-pointed to the survivor's
/// Patient, so the EHR sees it), their feed Patient is marked `replaced-by`, and their
/// identifiers stay as aliases. Returns the identifiers that changed owner.
async fn merge(
    tx: &mut Tx<'_>,
    ctx: &Context,
    notice: &Notice,
    survivor: &Person,
    survivor_patient: &str,
    message_id: &str,
    now: i64,
) -> Result<Vec<Identifier>, FhirError> {
    tx.lock_identifiers(&notice.retired).await?;
    let mut retired = Vec::new();
    let mut unknown = Vec::new();
    let owners = tx.identifier_owners(&notice.retired).await?;
    for (id, owner) in notice.retired.iter().zip(owners) {
        match owner {
            Some(owner) if owner != survivor.id => retired.push(owner),
            Some(_) => {}
            None => unknown.push(id.clone()),
        }
    }
    retired.sort();
    retired.dedup();
    // Identifiers first seen in MRG-1 become aliases: a late message still resolves.
    tx.attach(&survivor.id, &unknown, &notice.source, now);
    let mut moved = Vec::new();
    for person_id in retired {
        let Some(person) = tx.person(&person_id).await? else {
            continue;
        };
        let Some(record) =
            identity::merge(tx, &person, survivor, &notice.source, message_id, now).await?
        else {
            continue;
        };
        follow_survivor(
            tx,
            ctx,
            &record.id,
            &person.client_ref,
            survivor_patient,
            now,
        )
        .await?;
        moved.extend(record.moved);
        let old_patient = format!("hie-{}", person.id);
        if let Some(stored) = tx.current("Patient", &old_patient).await? {
            let mut p: Value = serde_json::from_str(&stored.body).unwrap_or(json!({}));
            p["active"] = json!(false);
            p["link"] = json!([{"other": {"reference": format!("Patient/{survivor_patient}")}, "type": "replaced-by"}]);
            if let Some(obj) = p.as_object_mut() {
                obj.remove("meta");
            }
            put(tx, ctx, "Patient", &old_patient, p, false, now).await?;
        }
    }
    Ok(moved)
}

/// The open referrals of the retired client follow a merge to the survivor's Patient
/// (`Task.for` and the ServiceRequest's `subject`, so the EHR sees it), each change
/// recorded under `merge_id` so an unlink can point it back. A40s and FHIR
/// `Patient.link` merges both come through here.
pub(super) async fn follow_survivor(
    tx: &mut Tx<'_>,
    ctx: &Context,
    merge_id: &str,
    retired_client_ref: &str,
    survivor_patient: &str,
    now: i64,
) -> Result<(), FhirError> {
    for referral in tx.open_referrals_of(retired_client_ref).await? {
        repoint(
            tx,
            ctx,
            merge_id,
            "Task",
            &referral.task_id,
            "for",
            survivor_patient,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Points a resource's patient reference (and, for a Task, its ServiceRequest's
/// subject) at another Patient, recording it under `merge_id` so an unlink can point it
/// back.
#[allow(clippy::too_many_arguments)]
async fn repoint(
    tx: &mut Tx<'_>,
    ctx: &Context,
    merge_id: &str,
    resource_type: &str,
    id: &str,
    element: &str,
    patient_id: &str,
    now: i64,
) -> Result<(), FhirError> {
    let Some(stored) = tx.current(resource_type, id).await? else {
        return Ok(());
    };
    let Ok(mut resource) = serde_json::from_str::<Value>(&stored.body) else {
        return Ok(());
    };
    let focus = match local_target(resource.get("focus"), ctx) {
        Some(("ServiceRequest", sr)) if resource_type == "Task" => Some(sr.to_string()),
        _ => None,
    };
    let after = format!("Patient/{patient_id}");
    let before = resource[element]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if before != after {
        tx.record_repoint(merge_id, resource_type, id, element, &before, &after)
            .await?;
        resource[element] = json!({"reference": after});
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("meta");
        }
        put(tx, ctx, resource_type, id, resource, false, now).await?;
    }
    if let Some(sr) = focus {
        Box::pin(repoint(
            tx,
            ctx,
            merge_id,
            "ServiceRequest",
            &sr,
            "subject",
            patient_id,
            now,
        ))
        .await?;
    }
    Ok(())
}

/// Undoing a merge: what it re-pointed and still points where the merge left it points
/// back (a referral the survivor's side changed since keeps that change).
pub(super) async fn repoint_back(
    tx: &mut Tx<'_>,
    ctx: &Context,
    merge_id: &str,
    now: i64,
) -> Result<(), FhirError> {
    for (resource_type, id, element, before, after) in tx.repoints_of(merge_id).await? {
        let Some(stored) = tx.current(&resource_type, &id).await? else {
            continue;
        };
        let Ok(mut resource) = serde_json::from_str::<Value>(&stored.body) else {
            continue;
        };
        if resource[element.as_str()]["reference"].as_str() != Some(after.as_str()) {
            continue;
        }
        resource[element.as_str()] = json!({"reference": before});
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("meta");
        }
        put(tx, ctx, &resource_type, &id, resource, false, now).await?;
    }
    Ok(())
}

/// An A37: undoes the merge that retired the second PID's identifier.
async fn unlink(
    tx: &mut Tx<'_>,
    ctx: &Context,
    notice: &Notice,
    now: i64,
) -> Result<Ingested, FhirError> {
    let mut invalidate = Vec::new();
    for id in &notice.retired {
        if let Some(record) = identity::unmerge(tx, id, now).await? {
            repoint_back(tx, ctx, &record.id, now).await?;
            invalidate.extend(record.moved);
        }
    }
    if invalidate.is_empty() {
        return Ok(Ingested::Dead(NoticeError::error(
            ErrorCode::UnknownKey,
            "PID[2]-3",
            "no merge in effect moved these identifiers; nothing to unlink",
        )));
    }
    Ok(Ingested::Applied { invalidate })
}
