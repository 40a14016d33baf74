//! Applying identity decisions inside the writer's transaction.
//!
//! Every identifier is locked (PostgreSQL advisory lock, in one global order) before it
//! is looked up, so two messages for the same new patient — on two connections or two
//! gateway processes — create one person: the second waits, then finds the first's.
//!
//! [`link_patient`] does the same for a FHIR Patient, whose own id is an identifier of
//! system `urn:crossway:patient`. [`merge`] serves an A40 (`fhir::ingest`) and a
//! Patient's `link` `replaced-by`/`replaces` (`fhir::engine`); both record what they
//! re-point in `merge_repoints`, so an unmerge ([`unmerge`], an unlink) points it back.

use serde_json::Value;

use super::{Decision, Identifier, IdentityRules, Person, Skipped, decide};
use crate::store::{MergeRecord, Result, Tx};

/// The person a message is about, or why it cannot be told.
#[derive(Debug)]
pub enum Resolved {
    Person {
        person: Person,
        created: bool,
    },
    /// Several persons: nothing was attached.
    Conflict(Vec<String>),
}

/// Resolves a message's identifiers: none known → a new person; one person → that
/// person, with the identifiers it did not have attached; several → a conflict.
pub async fn resolve(
    tx: &mut Tx<'_>,
    ids: &[Identifier],
    source: &str,
    now: i64,
) -> Result<Resolved> {
    tx.lock_identifiers(ids).await?;
    let mut owners = Vec::with_capacity(ids.len());
    let mut unknown = Vec::new();
    for (id, owner) in ids.iter().zip(tx.identifier_owners(ids).await?) {
        match owner {
            Some(owner) => owners.push(owner),
            None => unknown.push(id.clone()),
        }
    }
    let (person, created) = match decide(owners.iter().map(String::as_str)) {
        Decision::Conflict(persons) => return Ok(Resolved::Conflict(persons)),
        Decision::Known(id) => match tx.person(&id).await? {
            Some(p) => (p, false),
            None => (tx.new_person(now), true),
        },
        Decision::New => (tx.new_person(now), true),
    };
    tx.attach(&person.id, &unknown, source, now);
    Ok(Resolved::Person { person, created })
}

/// What linking a FHIR Patient resource found.
#[derive(Debug)]
pub struct Linked {
    pub person: Person,
    /// Identifiers left out, with why (reported as warnings).
    pub skipped: Vec<(String, Skipped)>,
    /// Other persons its identifiers name (recorded for review, not merged).
    pub conflict: Vec<String>,
}

/// Links a Patient resource being written to its person: the resource's own id decides
/// when it is already known; otherwise its identifiers do.
pub async fn link_patient(
    tx: &mut Tx<'_>,
    rules: &IdentityRules,
    patient_id: &str,
    resource: &Value,
    now: i64,
) -> Result<Linked> {
    let (found, skipped) = rules.from_fhir_patient(resource);
    let mut ids = vec![Identifier::patient(patient_id)];
    ids.extend(found);
    tx.lock_identifiers(&ids).await?;
    let mut owners = tx.identifier_owners(&ids).await?.into_iter();
    let own = owners.next().flatten();
    let mut others = Vec::new();
    let mut unknown = Vec::new();
    for (id, owner) in ids[1..].iter().zip(owners) {
        match owner {
            Some(owner) => others.push(owner),
            None => unknown.push(id.clone()),
        }
    }
    let (person, conflict) = match own {
        Some(own) => {
            others.retain(|o| *o != own);
            others.sort();
            others.dedup();
            (tx.person(&own).await?, others)
        }
        None => match decide(others.iter().map(String::as_str)) {
            Decision::Known(id) => (tx.person(&id).await?, Vec::new()),
            Decision::New => (None, Vec::new()),
            Decision::Conflict(persons) => (None, persons),
        },
    };
    let person = match person {
        Some(p) => p,
        None => tx.new_person(now),
    };
    let mut attach = vec![ids[0].clone()];
    if conflict.is_empty() {
        attach.extend(unknown);
    }
    tx.attach(&person.id, &attach, "fhir", now);
    Ok(Linked {
        person,
        skipped,
        conflict,
    })
}

/// Merges the person named by `retired` into the one named by `survivor` (both already
/// resolved). Returns `None` when they are already one person.
pub async fn merge(
    tx: &mut Tx<'_>,
    retired: &Person,
    survivor: &Person,
    source: &str,
    cause: &str,
    now: i64,
) -> Result<Option<MergeRecord>> {
    if retired.id == survivor.id {
        return Ok(None);
    }
    tx.merge_persons(&retired.id, &survivor.id, source, cause, now)
        .await
        .map(Some)
}

/// Undoes the merge that made `identifier` an alias (an A37 unlink or an operator's
/// command): its old person is live again with exactly the identifiers it had.
pub async fn unmerge(
    tx: &mut Tx<'_>,
    identifier: &Identifier,
    now: i64,
) -> Result<Option<MergeRecord>> {
    tx.lock_identifiers(std::slice::from_ref(identifier))
        .await?;
    let Some(owner) = tx.identifier_owner(identifier).await? else {
        return Ok(None);
    };
    let Some(record) = tx.merge_moving(&owner, identifier).await? else {
        return Ok(None);
    };
    tx.undo_merge(&record, now).await?;
    Ok(Some(record))
}
