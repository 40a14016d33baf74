//! The person index (persons, identifiers, merges, conflicts) and the inbound feed log
//! (every HL7 v2 or FHIR notification message as received).
//!
//! New persons, identifiers and inbound messages are *staged* like resources, and
//! written with one statement per table at the end of the batch: a feed message costs
//! no round trip of its own. What the batch will ask about (owners of its identifiers,
//! whether its messages were seen) is read for the whole batch up front, under the
//! PostgreSQL locks that keep two gateways from creating the same person twice
//! ([`Tx::preload_identity`]). Merges and unmerges change stored rows: they write
//! what is staged first and run in a savepoint ([`super::writer::Isolation`]).

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::sql::{self, INT, TEXT};
use super::{Backend, Result, Store, Tx};

/// The identifier every stored FHIR Patient resource gives its person: the resource's id
/// under this system. A merge moves it like any hospital identifier, so references to
/// a retired Patient resource still resolve to the survivor.
pub const PATIENT_SYSTEM: &str = "urn:crossway:patient";

/// A person-level identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    pub system: String,
    pub value: String,
    /// The HL7 identifier type (table 0203: MR, PI, …), when the source said.
    pub kind: Option<String>,
}

impl Identifier {
    pub fn new(system: &str, value: &str, kind: Option<&str>) -> Identifier {
        Identifier {
            system: system.to_string(),
            value: value.to_string(),
            kind: kind.map(str::to_string),
        }
    }

    /// The identifier of a stored Patient resource.
    pub fn patient(id: &str) -> Identifier {
        Identifier::new(PATIENT_SYSTEM, id, None)
    }

    /// `system|value`, the FHIR token form, also the cache key.
    pub fn token(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// A person as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    /// The gateway-scoped reference CBOs see; kept by the survivor of a merge.
    pub client_ref: String,
}

/// One merge as recorded, with what it moved.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeRecord {
    pub id: String,
    pub survivor: String,
    pub retired: String,
    /// Identifiers moved from the retired person to the survivor.
    pub moved: Vec<Identifier>,
}

/// A message that named several persons.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub id: String,
    pub source: String,
    pub message_id: String,
    pub reason: String,
    pub persons: Vec<String>,
    pub created_at: i64,
}

/// An inbound feed message as stored.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub id: String,
    /// Sending facility (MSH-4) or Bundle.identifier.system.
    pub source: String,
    /// MSH-10 or Bundle.identifier.value.
    pub control_id: String,
    /// `hl7v2` or `fhir`.
    pub format: String,
    /// `ADT^A01`, `notification-discharge`, …
    pub event: String,
    /// `applied`, `ignored`, `dead`, `conflict`.
    pub status: String,
    pub error: Option<String>,
    pub body: String,
    pub received_at: i64,
}

/// A person's Patient resources, current ones before retired aliases, oldest first.
const PATIENTS_OF: &str = "SELECT value FROM person_identifiers WHERE person_id = $1 AND system = $2 \
     ORDER BY retired, created_at, value";

const INBOUND_COLUMNS: &str =
    "id, source, control_id, format, event, status, error, body, received_at";

const INBOUND_COLUMNS_M: &str = "m.id, m.source, m.control_id, m.format, m.event, m.status, \
     m.error, m.body, m.received_at";

const INSERT_INBOUND: &str = "INSERT INTO inbound_messages \
     (id, source, control_id, format, event, status, error, body, received_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn bind_inbound<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    m: &'q InboundMessage,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(&m.id)
        .bind(&m.source)
        .bind(&m.control_id)
        .bind(&m.format)
        .bind(&m.event)
        .bind(&m.status)
        .bind(m.error.as_deref())
        .bind(&m.body)
        .bind(m.received_at)
}

fn inbound_row(r: &sqlx::any::AnyRow) -> InboundMessage {
    InboundMessage {
        id: r.get(0),
        source: r.get(1),
        control_id: r.get(2),
        format: r.get(3),
        event: r.get(4),
        status: r.get(5),
        error: r.get(6),
        body: r.get(7),
        received_at: r.get(8),
    }
}

fn encode_identifiers(ids: &[Identifier]) -> String {
    let list: Vec<_> = ids
        .iter()
        .map(|i| serde_json::json!([i.system, i.value, i.kind]))
        .collect();
    serde_json::Value::Array(list).to_string()
}

fn decode_identifiers(text: &str) -> Vec<Identifier> {
    let list: Vec<(String, String, Option<String>)> =
        serde_json::from_str(text).unwrap_or_default();
    list.into_iter()
        .map(|(system, value, kind)| Identifier {
            system,
            value,
            kind,
        })
        .collect()
}

/// An identifier attached in this batch.
#[derive(Debug, Clone)]
struct StagedIdentifier {
    id: Identifier,
    person: String,
    source: String,
    at: i64,
}

/// A `person_identifiers` row as bulk-inserted: system, value, person, type, source, time.
type IdentifierRow<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, i64);

/// A key of the inbound log: (source, control id).
type InboundKey = (String, String);

/// Identity rows staged by one batch, and what the batch read up front.
#[derive(Default)]
pub(super) struct Staging {
    persons: Vec<(Person, i64)>,
    identifiers: Vec<StagedIdentifier>,
    /// New inbound rows; a later row with the same key replaces an earlier one.
    inbound: Vec<InboundMessage>,
    /// Owners read by [`Tx::preload_identity`]: (system, value) → person, `None` when
    /// unknown then. Dropped by a merge, which moves identifiers in the database.
    owners: HashMap<(String, String), Option<String>>,
    /// Inbound keys read by [`Tx::preload_identity`] → the stored row, if any.
    seen: HashMap<InboundKey, Option<InboundMessage>>,
    /// The persons those owners are, read with them.
    persons_seen: HashMap<String, Person>,
    /// Identity conflicts recorded for review.
    conflicts: Vec<StagedConflict>,
    /// PostgreSQL advisory locks held, in the order taken (a savepoint rollback
    /// releases the ones taken inside it).
    locks: Vec<String>,
    locked: HashSet<String>,
}

/// Where a command's staged identity rows start.
#[derive(Clone, Copy)]
pub(super) struct StagingMark {
    persons: usize,
    identifiers: usize,
    inbound: usize,
    conflicts: usize,
    locks: usize,
}

/// An `identity_conflicts` row: id, source, message id, reason, persons, time.
#[derive(Debug, Clone, serde::Serialize)]
struct StagedConflict(String, String, String, String, String, i64);

impl Staging {
    pub(super) fn mark(&self) -> StagingMark {
        StagingMark {
            persons: self.persons.len(),
            identifiers: self.identifiers.len(),
            inbound: self.inbound.len(),
            conflicts: self.conflicts.len(),
            locks: self.locks.len(),
        }
    }

    /// Forgets what was read up front: after a savepoint rollback it may describe
    /// rows the rollback removed.
    pub(super) fn forget_reads(&mut self) {
        self.owners.clear();
        self.seen.clear();
        self.persons_seen.clear();
    }

    pub(super) fn rollback_to(&mut self, m: StagingMark) {
        self.persons.truncate(m.persons);
        self.identifiers.truncate(m.identifiers);
        self.inbound.truncate(m.inbound);
        self.conflicts.truncate(m.conflicts);
        for released in self.locks.drain(m.locks..) {
            self.locked.remove(&released);
        }
    }

    /// The owner of an identifier as far as this batch knows without asking: staged,
    /// or read up front. `None`: ask the database.
    fn owner(&self, id: &Identifier) -> Option<Option<String>> {
        if let Some(s) = self
            .identifiers
            .iter()
            .rev()
            .find(|s| s.id.system == id.system && s.id.value == id.value)
        {
            return Some(Some(s.person.clone()));
        }
        self.owners
            .get(&(id.system.clone(), id.value.clone()))
            .cloned()
    }

    fn staged_inbound(&self, source: &str, control_id: &str) -> Option<&InboundMessage> {
        self.inbound
            .iter()
            .rev()
            .find(|m| m.source == source && m.control_id == control_id)
    }
}

/// The lock key of an inbound message (so two gateways cannot both claim it).
fn inbound_lock(source: &str, control_id: &str) -> String {
    format!("inbound:{source}|{control_id}")
}

fn identity_lock(id: &Identifier) -> String {
    format!("identity:{}", id.token())
}

impl Tx<'_> {
    /// Reads, in one round trip each, the owners of the batch's identifiers and whether
    /// its messages were seen before. On PostgreSQL their locks are taken first, all in
    /// one statement and one global order, so two writers never deadlock over them.
    /// There each key is read by its own index probe (`LATERAL … LIMIT 1`): with a
    /// plain join the planner hashes the whole table whenever its statistics are those
    /// of a young database, which made the lookup 5 ms per batch at 35,000 identifiers.
    pub(super) async fn preload_identity(
        &mut self,
        identifiers: &[Identifier],
        inbound: &[InboundKey],
    ) -> Result<()> {
        let mut keys: Vec<String> = identifiers.iter().map(identity_lock).collect();
        keys.extend(inbound.iter().map(|(s, c)| inbound_lock(s, c)));
        self.lock_all(keys).await?;
        if !identifiers.is_empty() {
            let mut persons: Vec<String> = self
                .read_owners(identifiers.iter())
                .await?
                .into_iter()
                .flatten()
                .collect();
            persons.sort();
            persons.dedup();
            if !persons.is_empty() {
                let text = match self.backend {
                    Backend::Sqlite => {
                        "SELECT p.id, p.client_ref FROM jsonb_each(jsonb($1)) AS k \
                         CROSS JOIN persons AS p ON p.id = k.value"
                    }
                    Backend::Postgres => {
                        "SELECT p.id, p.client_ref FROM jsonb_array_elements_text($1::jsonb) AS k \
                         CROSS JOIN LATERAL \
                         (SELECT id, client_ref FROM persons WHERE id = k LIMIT 1) AS p"
                    }
                };
                for r in sqlx::query(text)
                    .bind(sql::json_rows(&persons))
                    .fetch_all(&mut *self.conn)
                    .await?
                {
                    let p = Person {
                        id: r.get(0),
                        client_ref: r.get(1),
                    };
                    self.identity.persons_seen.insert(p.id.clone(), p);
                }
            }
        }
        if !inbound.is_empty() {
            let text = match self.backend {
                Backend::Sqlite => format!(
                    "SELECT {INBOUND_COLUMNS_M} FROM jsonb_each(jsonb($1)) AS k \
                     CROSS JOIN inbound_messages AS m \
                     ON m.source = k.value ->> 0 AND m.control_id = k.value ->> 1"
                ),
                Backend::Postgres => format!(
                    "SELECT {INBOUND_COLUMNS_M} FROM jsonb_array_elements($1::jsonb) AS k \
                     CROSS JOIN LATERAL (SELECT * FROM inbound_messages \
                     WHERE source = k ->> 0 AND control_id = k ->> 1 LIMIT 1) AS m"
                ),
            };
            let found = sqlx::query(sqlx::AssertSqlSafe(text))
                .bind(sql::json_rows(inbound))
                .fetch_all(&mut *self.conn)
                .await?;
            let seen = &mut self.identity.seen;
            for key in inbound {
                seen.insert(key.clone(), None);
            }
            for r in &found {
                let m = inbound_row(r);
                seen.insert((m.source.clone(), m.control_id.clone()), Some(m));
            }
        }
        Ok(())
    }

    /// Reads the owners of identifiers into the batch's map (`None`: unknown), in one
    /// statement; returns them in order.
    async fn read_owners<'i>(
        &mut self,
        ids: impl Iterator<Item = &'i Identifier>,
    ) -> Result<Vec<Option<String>>> {
        let keys: Vec<(&str, &str)> = ids.map(|i| (i.system.as_str(), i.value.as_str())).collect();
        let text = match self.backend {
            Backend::Sqlite => {
                "SELECT i.system, i.value, i.person_id FROM jsonb_each(jsonb($1)) AS k \
                 CROSS JOIN person_identifiers AS i \
                 ON i.system = k.value ->> 0 AND i.value = k.value ->> 1"
            }
            Backend::Postgres => {
                "SELECT i.system, i.value, i.person_id FROM jsonb_array_elements($1::jsonb) AS k \
                 CROSS JOIN LATERAL (SELECT system, value, person_id FROM person_identifiers \
                 WHERE system = k ->> 0 AND value = k ->> 1 LIMIT 1) AS i"
            }
        };
        let found = sqlx::query(text)
            .bind(sql::json_rows(&keys))
            .fetch_all(&mut *self.conn)
            .await?;
        let owners = &mut self.identity.owners;
        for (system, value) in &keys {
            owners.insert((system.to_string(), value.to_string()), None);
        }
        for r in &found {
            owners.insert((r.get(0), r.get(1)), Some(r.get(2)));
        }
        Ok(keys
            .iter()
            .map(|(s, v)| {
                owners
                    .get(&(s.to_string(), v.to_string()))
                    .cloned()
                    .flatten()
            })
            .collect())
    }

    /// Takes the PostgreSQL advisory locks not yet held, sorted, in one statement.
    pub(super) async fn lock_all(&mut self, mut keys: Vec<String>) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        keys.sort();
        keys.dedup();
        keys.retain(|k| !self.identity.locked.contains(k));
        if keys.is_empty() {
            return Ok(());
        }
        // jsonb_array_elements_text yields the elements in array order.
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) \
             FROM jsonb_array_elements_text($1::jsonb) AS k",
        )
        .bind(sql::json_rows(&keys))
        .fetch_one(&mut *self.conn)
        .await?;
        for k in keys {
            self.identity.locked.insert(k.clone());
            self.identity.locks.push(k);
        }
        Ok(())
    }

    /// Takes the cross-process locks for these identifiers, in one global order so two
    /// writers never wait on each other (PostgreSQL; one SQLite writer is serial anyway).
    pub async fn lock_identifiers(&mut self, ids: &[Identifier]) -> Result<()> {
        self.lock_all(ids.iter().map(identity_lock).collect()).await
    }

    /// The person an identifier (current or retired) names.
    pub async fn identifier_owner(&mut self, id: &Identifier) -> Result<Option<String>> {
        Ok(self
            .identifier_owners(std::slice::from_ref(id))
            .await?
            .pop()
            .flatten())
    }

    /// A new person, staged.
    pub fn new_person(&mut self, now: i64) -> Person {
        // Time-ordered, so the persons and identifier indexes (and the feed Patient
        // `hie-<id>`) grow at their right edge instead of dirtying a random page each.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let person = Person {
            client_ref: format!("cli_{id}"),
            id,
        };
        self.identity.persons.push((person.clone(), now));
        person
    }

    /// Attaches identifiers to a person (staged); ones already known (to anyone) are
    /// left as they are — callers decide conflicts before attaching.
    pub fn attach(&mut self, person: &str, ids: &[Identifier], source: &str, now: i64) {
        for id in ids {
            if matches!(self.identity.owner(id), Some(Some(_))) {
                continue;
            }
            self.identity.identifiers.push(StagedIdentifier {
                id: id.clone(),
                person: person.to_string(),
                source: source.to_string(),
                at: now,
            });
        }
    }

    /// The person each identifier names (`None`: unknown); what the batch does not
    /// know already is read in one statement.
    pub async fn identifier_owners(&mut self, ids: &[Identifier]) -> Result<Vec<Option<String>>> {
        let unknown: Vec<&Identifier> = ids
            .iter()
            .filter(|id| self.identity.owner(id).is_none())
            .collect();
        if !unknown.is_empty() {
            self.read_owners(unknown.into_iter()).await?;
        }
        Ok(ids
            .iter()
            .map(|id| self.identity.owner(id).flatten())
            .collect())
    }

    pub async fn person(&mut self, id: &str) -> Result<Option<Person>> {
        if let Some((p, _)) = self.identity.persons.iter().find(|(p, _)| p.id == id) {
            return Ok(Some(p.clone()));
        }
        if let Some(p) = self.identity.persons_seen.get(id) {
            return Ok(Some(p.clone()));
        }
        let row = sqlx::query("SELECT id, client_ref FROM persons WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.map(|r| Person {
            id: r.get(0),
            client_ref: r.get(1),
        }))
    }

    /// Ids of the Patient resources that belong to a person, oldest first.
    pub async fn patients_of(&mut self, person: &str) -> Result<Vec<String>> {
        let is_new = self.identity.persons.iter().any(|(p, _)| p.id == person);
        let mut ids: Vec<String> = if is_new {
            Vec::new()
        } else {
            sqlx::query(PATIENTS_OF)
                .bind(person)
                .bind(PATIENT_SYSTEM)
                .fetch_all(&mut *self.conn)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        for s in &self.identity.identifiers {
            if s.person == person && s.id.system == PATIENT_SYSTEM && !ids.contains(&s.id.value) {
                ids.push(s.id.value.clone());
            }
        }
        Ok(ids)
    }

    /// Writes the staged persons, identifiers and inbound messages now: before a
    /// savepoint, or a merge that changes stored identity rows.
    pub(super) async fn flush_identity(&mut self) -> Result<()> {
        self.defer_identity();
        self.send_deferred().await
    }

    /// Queues the writes of the staged persons, identifiers and inbound messages.
    pub(super) fn defer_identity(&mut self) {
        let persons = std::mem::take(&mut self.identity.persons);
        if !persons.is_empty() {
            let rows: Vec<(&str, &str, i64, i64)> = persons
                .iter()
                .map(|(p, at)| (p.id.as_str(), p.client_ref.as_str(), *at, *at))
                .collect();
            self.defer_rows(
                "persons",
                &[
                    ("id", TEXT),
                    ("client_ref", TEXT),
                    ("created_at", INT),
                    ("updated_at", INT),
                ],
                sql::json_rows(&rows),
                "",
            );
        }
        let identifiers = std::mem::take(&mut self.identity.identifiers);
        if !identifiers.is_empty() {
            let rows: Vec<IdentifierRow<'_>> = identifiers
                .iter()
                .map(|s| {
                    (
                        s.id.system.as_str(),
                        s.id.value.as_str(),
                        s.person.as_str(),
                        s.id.kind.as_deref(),
                        s.source.as_str(),
                        s.at,
                    )
                })
                .collect();
            self.defer_rows(
                "person_identifiers",
                &[
                    ("system", TEXT),
                    ("value", TEXT),
                    ("person_id", TEXT),
                    ("id_type", TEXT),
                    ("source", TEXT),
                    ("created_at", INT),
                ],
                sql::json_rows(&rows),
                "WHERE true ON CONFLICT (system, value) DO NOTHING",
            );
            // The map may say "unknown" for these; the database now knows better (an
            // identifier someone else held was left to them): ask it next time.
            for s in identifiers {
                self.identity.owners.remove(&(s.id.system, s.id.value));
            }
        }
        let conflicts = std::mem::take(&mut self.identity.conflicts);
        if !conflicts.is_empty() {
            self.defer_rows(
                "identity_conflicts",
                &[
                    ("id", TEXT),
                    ("source", TEXT),
                    ("message_id", TEXT),
                    ("reason", TEXT),
                    ("persons", TEXT),
                    ("created_at", INT),
                ],
                sql::json_rows(&conflicts),
                "",
            );
        }
        let mut inbound = std::mem::take(&mut self.identity.inbound);
        if !inbound.is_empty() {
            // The last row staged for a key is its final state.
            let mut last = HashSet::new();
            inbound.reverse();
            inbound.retain(|m| last.insert((m.source.clone(), m.control_id.clone())));
            inbound.reverse();
            let rows: Vec<_> = inbound
                .iter()
                .map(|m| {
                    (
                        m.id.as_str(),
                        m.source.as_str(),
                        m.control_id.as_str(),
                        m.format.as_str(),
                        m.event.as_str(),
                        m.status.as_str(),
                        m.error.as_deref(),
                        m.body.as_str(),
                        m.received_at,
                    )
                })
                .collect();
            self.defer_rows(
                "inbound_messages",
                &[
                    ("id", TEXT),
                    ("source", TEXT),
                    ("control_id", TEXT),
                    ("format", TEXT),
                    ("event", TEXT),
                    ("status", TEXT),
                    ("error", TEXT),
                    ("body", TEXT),
                    ("received_at", INT),
                ],
                sql::json_rows(&rows),
                "",
            );
            for m in inbound {
                self.identity
                    .seen
                    .insert((m.source.clone(), m.control_id.clone()), Some(m));
            }
        }
    }

    /// Before a statement that changes stored identity rows: staged rows written, and
    /// what was read up front forgotten (it may no longer hold).
    async fn before_identity_change(&mut self) -> Result<()> {
        self.flush_identity().await?;
        self.identity.owners.clear();
        self.identity.persons_seen.clear();
        Ok(())
    }

    /// Retires `retired` into `survivor`: its identifiers become the survivor's aliases
    /// (so late messages still resolve) and anything that pointed at it points on.
    pub async fn merge_persons(
        &mut self,
        retired: &str,
        survivor: &str,
        source: &str,
        cause: &str,
        now: i64,
    ) -> Result<MergeRecord> {
        self.before_identity_change().await?;
        let rows = sqlx::query(
            "UPDATE person_identifiers SET person_id = $1, retired = 1 WHERE person_id = $2 \
             RETURNING system, value, id_type",
        )
        .bind(survivor)
        .bind(retired)
        .fetch_all(&mut *self.conn)
        .await?;
        let mut moved: Vec<Identifier> = rows
            .iter()
            .map(|r| Identifier {
                system: r.get(0),
                value: r.get(1),
                kind: r.get(2),
            })
            .collect();
        moved.sort();
        sqlx::query(
            "UPDATE persons SET merged_into = $1, updated_at = $3 WHERE id = $2 OR merged_into = $2",
        )
        .bind(survivor)
        .bind(retired)
        .bind(now)
        .execute(&mut *self.conn)
        .await?;
        self.bump_identity_generation().await?;
        let record = MergeRecord {
            id: format!("mrg_{}", uuid::Uuid::now_v7().simple()),
            survivor: survivor.to_string(),
            retired: retired.to_string(),
            moved,
        };
        sqlx::query(
            "INSERT INTO person_merges (id, survivor, retired, source, cause, moved, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&record.id)
        .bind(survivor)
        .bind(retired)
        .bind(source)
        .bind(cause)
        .bind(encode_identifiers(&record.moved))
        .bind(now)
        .execute(&mut *self.conn)
        .await?;
        Ok(record)
    }

    /// The merge in effect, into `survivor`, that moved `identifier` (latest first).
    pub async fn merge_moving(
        &mut self,
        survivor: &str,
        identifier: &Identifier,
    ) -> Result<Option<MergeRecord>> {
        let rows = sqlx::query(
            "SELECT id, survivor, retired, moved FROM person_merges \
             WHERE survivor = $1 AND undone_at IS NULL ORDER BY created_at DESC, id DESC",
        )
        .bind(survivor)
        .fetch_all(&mut *self.conn)
        .await?;
        Ok(rows
            .iter()
            .map(|r| MergeRecord {
                id: r.get(0),
                survivor: r.get(1),
                retired: r.get(2),
                moved: decode_identifiers(&r.get::<String, _>(3)),
            })
            .find(|m| {
                m.moved
                    .iter()
                    .any(|i| i.system == identifier.system && i.value == identifier.value)
            }))
    }

    /// Undoes a merge: the retired person is live again with the identifiers it had.
    pub async fn undo_merge(&mut self, record: &MergeRecord, now: i64) -> Result<()> {
        self.before_identity_change().await?;
        for id in &record.moved {
            sqlx::query(
                "UPDATE person_identifiers SET person_id = $1, retired = 0 \
                 WHERE system = $2 AND value = $3 AND person_id = $4",
            )
            .bind(&record.retired)
            .bind(&id.system)
            .bind(&id.value)
            .bind(&record.survivor)
            .execute(&mut *self.conn)
            .await?;
        }
        sqlx::query("UPDATE persons SET merged_into = NULL, updated_at = $2 WHERE id = $1")
            .bind(&record.retired)
            .bind(now)
            .execute(&mut *self.conn)
            .await?;
        sqlx::query("UPDATE person_merges SET undone_at = $2 WHERE id = $1")
            .bind(&record.id)
            .bind(now)
            .execute(&mut *self.conn)
            .await?;
        self.bump_identity_generation().await
    }

    /// Records that a merge changed `element` of a resource from `before` to `after`.
    pub async fn record_repoint(
        &mut self,
        merge_id: &str,
        res_type: &str,
        res_id: &str,
        element: &str,
        before: &str,
        after: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO merge_repoints (merge_id, res_type, res_id, element, before, after) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(merge_id)
        .bind(res_type)
        .bind(res_id)
        .bind(element)
        .bind(before)
        .bind(after)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    /// What a merge re-pointed: (type, id, element, before, after).
    pub async fn repoints_of(
        &mut self,
        merge_id: &str,
    ) -> Result<Vec<(String, String, String, String, String)>> {
        Ok(sqlx::query(
            "SELECT res_type, res_id, element, before, after FROM merge_repoints \
             WHERE merge_id = $1 ORDER BY res_type, res_id",
        )
        .bind(merge_id)
        .fetch_all(&mut *self.conn)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
    }

    async fn bump_identity_generation(&mut self) -> Result<()> {
        self.identity_moves += 1;
        sqlx::query("UPDATE identity_generation SET generation = generation + 1 WHERE id = 1")
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    /// How many times this transaction has moved identifiers between persons (merges,
    /// unmerges): a command compares it before and after to know whether cached
    /// identifier → person answers must be dropped after the commit.
    pub fn identity_moves(&self) -> u64 {
        self.identity_moves
    }

    /// Records (staged) that a message or resource named several persons.
    pub fn record_conflict(
        &mut self,
        source: &str,
        message_id: &str,
        reason: &str,
        persons: &[String],
        now: i64,
    ) -> String {
        let id = format!("icf_{}", uuid::Uuid::now_v7().simple());
        self.identity.conflicts.push(StagedConflict(
            id.clone(),
            source.to_string(),
            message_id.to_string(),
            reason.to_string(),
            persons.join(","),
            now,
        ));
        id
    }

    /// The message with this deduplication key, staged or stored. A key the batch did
    /// not read up front is locked and read now (and remembered).
    pub async fn inbound(
        &mut self,
        source: &str,
        control_id: &str,
    ) -> Result<Option<InboundMessage>> {
        if let Some(m) = self.identity.staged_inbound(source, control_id) {
            return Ok(Some(m.clone()));
        }
        let key = (source.to_string(), control_id.to_string());
        if let Some(seen) = self.identity.seen.get(&key) {
            return Ok(seen.clone());
        }
        self.lock_all(vec![inbound_lock(source, control_id)])
            .await?;
        let text = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE source = $1 AND control_id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(source)
            .bind(control_id)
            .fetch_optional(&mut *self.conn)
            .await?;
        let found = row.as_ref().map(inbound_row);
        self.identity.seen.insert(key, found.clone());
        Ok(found)
    }

    /// Stages a message unless its key is already taken; false for a duplicate. Nothing
    /// is written yet, so a command that fails later leaves no claim behind.
    pub async fn claim_inbound(&mut self, m: &InboundMessage) -> Result<bool> {
        if self.inbound(&m.source, &m.control_id).await?.is_some() {
            return Ok(false);
        }
        self.identity.inbound.push(m.clone());
        Ok(true)
    }

    /// Records a message, or its new status when it was stored before (a replay).
    pub async fn record_inbound(&mut self, m: &InboundMessage) -> Result<()> {
        let staged = self
            .identity
            .staged_inbound(&m.source, &m.control_id)
            .is_some();
        if staged || self.inbound(&m.source, &m.control_id).await?.is_none() {
            self.identity.inbound.push(m.clone());
            return Ok(());
        }
        let text = format!(
            "{INSERT_INBOUND} ON CONFLICT (source, control_id) \
             DO UPDATE SET status = excluded.status, error = excluded.error"
        );
        bind_inbound(sqlx::query(sqlx::AssertSqlSafe(text)), m)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Changes with every merge and unmerge, in any process.
    pub async fn identity_generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT generation FROM identity_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// The live person an identifier names (a cache miss's read).
    pub async fn identifier_owner(&self, id: &Identifier) -> Result<Option<Person>> {
        let row = sqlx::query(
            "SELECT p.id, p.client_ref FROM person_identifiers i JOIN persons p ON p.id = i.person_id \
             WHERE i.system = $1 AND i.value = $2",
        )
        .bind(&id.system)
        .bind(&id.value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Person {
            id: r.get(0),
            client_ref: r.get(1),
        }))
    }

    /// Ids of the Patient resources that belong to a person.
    pub async fn patients_of(&self, person: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(PATIENTS_OF)
            .bind(person)
            .bind(PATIENT_SYSTEM)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn person_identifiers(&self, person: &str) -> Result<Vec<(Identifier, bool)>> {
        let rows = sqlx::query(
            "SELECT system, value, id_type, retired FROM person_identifiers WHERE person_id = $1 \
             ORDER BY system, value",
        )
        .bind(person)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let retired: i64 = r.get(3);
                (
                    Identifier {
                        system: r.get(0),
                        value: r.get(1),
                        kind: r.get(2),
                    },
                    retired != 0,
                )
            })
            .collect())
    }

    /// Conflicts not yet resolved, oldest first.
    pub async fn open_conflicts(&self) -> Result<Vec<Conflict>> {
        let rows = sqlx::query(
            "SELECT id, source, message_id, reason, persons, created_at FROM identity_conflicts \
             WHERE resolved_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Conflict {
                id: r.get(0),
                source: r.get(1),
                message_id: r.get(2),
                reason: r.get(3),
                persons: r
                    .get::<String, _>(4)
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                created_at: r.get(5),
            })
            .collect())
    }

    /// Messages waiting for a human: dead letters and identity conflicts, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<InboundMessage>> {
        let text = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE status IN ('dead', 'conflict') \
             ORDER BY received_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(inbound_row).collect())
    }

    /// Messages received at or after `since` (microseconds), oldest first, at most
    /// `limit`: what `mappings replay` re-maps.
    pub async fn inbound_since(&self, since: i64, limit: i64) -> Result<Vec<InboundMessage>> {
        let text = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE received_at >= $1 \
             ORDER BY received_at, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(inbound_row).collect())
    }

    pub async fn inbound_message(&self, id: &str) -> Result<Option<InboundMessage>> {
        let text = format!("SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(inbound_row))
    }
}
