//! The person index (persons, identifiers, merges, conflicts) and the inbound feed log
//! (every HL7 v2 or FHIR notification message as received).
//!
//! Unlike resources, these rows are written straight to the transaction, not staged:
//! commands that write them run in a savepoint ([`super::writer::Isolation::Savepoint`]),
//! so a failing command still leaves nothing behind.

use sqlx::Row;

use super::{Result, Store, Tx};
use crate::identity::{Identifier, PATIENT_SYSTEM, Person};

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

impl Tx<'_> {
    /// Takes the cross-process locks for these identifiers, in one global order so two
    /// writers never wait on each other (PostgreSQL; one SQLite writer is serial anyway).
    pub async fn lock_identifiers(&mut self, ids: &[Identifier]) -> Result<()> {
        let mut tokens: Vec<String> = ids.iter().map(Identifier::token).collect();
        tokens.sort();
        tokens.dedup();
        for t in tokens {
            self.lock(&format!("identity:{t}")).await?;
        }
        Ok(())
    }

    /// The person an identifier (current or retired) names.
    pub async fn identifier_owner(&mut self, id: &Identifier) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT person_id FROM person_identifiers WHERE system = $1 AND value = $2",
        )
        .bind(&id.system)
        .bind(&id.value)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn new_person(&mut self, now: i64) -> Result<Person> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let person = Person {
            client_ref: format!("cli_{id}"),
            id,
        };
        sqlx::query(
            "INSERT INTO persons (id, client_ref, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(&person.id)
        .bind(&person.client_ref)
        .bind(now)
        .execute(&mut *self.conn)
        .await?;
        Ok(person)
    }

    /// Attaches identifiers to a person, in one statement; ones already known (to
    /// anyone) are left as they are — callers decide conflicts before attaching.
    pub async fn attach(
        &mut self,
        person: &str,
        ids: &[Identifier],
        source: &str,
        now: i64,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = (0..ids.len())
            .map(|i| {
                let b = i * 3;
                format!("(${}, ${}, $1, ${}, $2, $3)", b + 4, b + 5, b + 6)
            })
            .collect();
        let text = format!(
            "INSERT INTO person_identifiers (system, value, person_id, id_type, source, created_at) \
             VALUES {} ON CONFLICT (system, value) DO NOTHING",
            rows.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(person)
            .bind(source)
            .bind(now);
        for id in ids {
            q = q.bind(&id.system).bind(&id.value).bind(id.kind.as_deref());
        }
        q.execute(&mut *self.conn).await?;
        Ok(())
    }

    /// The person each identifier names (`None`: unknown), in one statement.
    pub async fn identifier_owners(&mut self, ids: &[Identifier]) -> Result<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let terms: Vec<String> = (0..ids.len())
            .map(|i| format!("(system = ${} AND value = ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let text = format!(
            "SELECT system, value, person_id FROM person_identifiers WHERE {}",
            terms.join(" OR ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
        for id in ids {
            q = q.bind(&id.system).bind(&id.value);
        }
        let rows = q.fetch_all(&mut *self.conn).await?;
        Ok(ids
            .iter()
            .map(|id| {
                rows.iter()
                    .find(|r| r.get::<&str, _>(0) == id.system && r.get::<&str, _>(1) == id.value)
                    .map(|r| r.get(2))
            })
            .collect())
    }

    pub async fn person(&mut self, id: &str) -> Result<Option<Person>> {
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
        let rows = sqlx::query(PATIENTS_OF)
            .bind(person)
            .bind(PATIENT_SYSTEM)
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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
        sqlx::query("UPDATE identity_generation SET generation = generation + 1 WHERE id = 1")
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    pub async fn record_conflict(
        &mut self,
        source: &str,
        message_id: &str,
        reason: &str,
        persons: &[String],
        now: i64,
    ) -> Result<String> {
        let id = format!("icf_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO identity_conflicts (id, source, message_id, reason, persons, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(source)
        .bind(message_id)
        .bind(reason)
        .bind(persons.join(","))
        .bind(now)
        .execute(&mut *self.conn)
        .await?;
        Ok(id)
    }

    /// The stored message with this deduplication key.
    pub async fn inbound(
        &mut self,
        source: &str,
        control_id: &str,
    ) -> Result<Option<InboundMessage>> {
        let text = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE source = $1 AND control_id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(source)
            .bind(control_id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.as_ref().map(inbound_row))
    }

    /// Records a message unless its key is already taken; false for a duplicate.
    pub async fn claim_inbound(&mut self, m: &InboundMessage) -> Result<bool> {
        let text =
            format!("{INSERT_INBOUND} ON CONFLICT (source, control_id) DO NOTHING RETURNING id");
        let row = bind_inbound(sqlx::query(sqlx::AssertSqlSafe(text)), m)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.is_some())
    }

    /// Records a message, or its new status when it is replayed.
    pub async fn record_inbound(&mut self, m: &InboundMessage) -> Result<()> {
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
