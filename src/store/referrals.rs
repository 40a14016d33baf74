//! Referrals, the per-organisation event feed, idempotency keys and client references:
//! the rows behind the CBO face. Written through [`Tx`] in the same transaction as the
//! FHIR resources they describe; read by the CBO API from the pool.

use sqlx::Row;

use super::sql::{self, INT, TEXT};
use super::{Backend, Result, Store, StoredResource, Tx};

/// A referral: a referral Task addressed to a known organisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub id: String,
    pub organization: String,
    pub task_id: String,
    /// The CBO-facing status (`pending`, `accepted`, …).
    pub status: String,
    /// The Task's versionId: the referral's ETag.
    pub version: i64,
    pub urgency: String,
    /// Microseconds since the epoch: the end of the Task's `restriction.period.end`.
    pub respond_by: Option<i64>,
    /// `restriction.period.end` as the Task states it (a date stays a date).
    pub respond_by_text: Option<String>,
    pub client_ref: Option<String>,
    pub domain: Option<String>,
    /// Microseconds since the epoch; kept as first written.
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct ReferralRow {
    pub referral: Referral,
    pub updated_at: i64,
}

/// A page request on an organisation's referrals, ordered by (`updated_at`, `id`).
#[derive(Debug, Clone, Default)]
pub struct ReferralFilter {
    pub status: Option<String>,
    pub urgency: Option<String>,
    pub updated_since: Option<i64>,
    /// Keyset cursor: the last row of the previous page.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub seq: i64,
    pub event_type: String,
    pub referral_id: String,
    pub status: String,
    pub version: i64,
    pub created_at: i64,
    /// For `webhook.*` events, the endpoint they are about (`referral_id` is empty).
    pub endpoint_id: Option<String>,
}

/// The first answer given to an Idempotency-Key.
#[derive(Debug, Clone)]
pub struct IdempotentResponse {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
}

pub(super) struct StagedReferral {
    referral: Referral,
    at: i64,
}

pub(super) struct StagedEvent {
    id: String,
    organization: String,
    event_type: String,
    referral_id: String,
    status: String,
    version: i64,
    at: i64,
}

pub(super) struct StagedKey {
    organization: String,
    key: String,
    response: IdempotentResponse,
    at: i64,
}

const REFERRAL_COLUMNS: &str = "id, organization, task_id, status, version, urgency, respond_by, \
     client_ref, domain, created_at, updated_at, respond_by_text";

/// The referral rows of a JSON array of ids (`$1`), on PostgreSQL each read by its own
/// index probe, whatever the statistics say (see `Tx::preload_identity`).
fn by_ids(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals \
             WHERE id IN (SELECT value FROM jsonb_each(jsonb($1)))"
        ),
        Backend::Postgres => format!(
            "SELECT f.* FROM jsonb_array_elements_text($1::jsonb) AS k \
             CROSS JOIN LATERAL (SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = k LIMIT 1) AS f"
        ),
    }
}

fn referral_row(r: &sqlx::any::AnyRow) -> ReferralRow {
    ReferralRow {
        referral: Referral {
            id: r.get(0),
            organization: r.get(1),
            task_id: r.get(2),
            status: r.get(3),
            version: r.get(4),
            urgency: r.get(5),
            respond_by: r.get(6),
            client_ref: r.get(7),
            domain: r.get(8),
            created_at: r.get(9),
            respond_by_text: r.get(11),
        },
        updated_at: r.get(10),
    }
}

const EVENT_COLUMNS: &str =
    "id, seq, event_type, referral_id, status, version, created_at, endpoint_id";

fn event_row(r: &sqlx::any::AnyRow) -> Event {
    Event {
        id: r.get(0),
        seq: r.get(1),
        event_type: r.get(2),
        referral_id: r.get(3),
        status: r.get(4),
        version: r.get(5),
        created_at: r.get(6),
        endpoint_id: r.get(7),
    }
}

/// How a referral is looked up.
#[derive(Clone, Copy)]
enum Key {
    Id,
    Task,
}

impl Tx<'_> {
    /// The referral recorded for a Task, staged or committed.
    pub async fn referral_for_task(&mut self, task_id: &str) -> Result<Option<Referral>> {
        self.find_referral(Key::Task, task_id).await
    }

    /// A referral by id, staged or committed.
    pub async fn referral(&mut self, id: &str) -> Result<Option<Referral>> {
        self.find_referral(Key::Id, id).await
    }

    /// Staged first, then read earlier in this transaction, then the database.
    async fn find_referral(&mut self, key: Key, value: &str) -> Result<Option<Referral>> {
        let matches = |r: &Referral| match key {
            Key::Id => r.id == value,
            Key::Task => r.task_id == value,
        };
        if let Some(r) = self
            .referrals
            .iter()
            .rev()
            .map(|s| &s.referral)
            .chain(&self.loaded)
            .find(|r| matches(r))
        {
            return Ok(Some(r.clone()));
        }
        let column = match key {
            Key::Id => "id",
            Key::Task => "task_id",
        };
        let text = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE {column} = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(value)
            .fetch_optional(&mut *self.conn)
            .await?;
        let found = row.map(|r| referral_row(&r).referral);
        if let Some(r) = &found {
            self.loaded.push(r.clone());
        }
        Ok(found)
    }

    pub(super) async fn preload_referrals(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(by_ids(self.backend)))
            .bind(sql::json_rows(ids))
            .fetch_all(&mut *self.conn)
            .await?;
        self.loaded
            .extend(rows.iter().map(|r| referral_row(r).referral));
        Ok(())
    }

    /// Stages a new referral, or a known referral's new state.
    pub fn stage_referral(&mut self, referral: Referral, at: i64) {
        self.referrals.push(StagedReferral { referral, at });
    }

    /// Stages an event about `referral` on its organisation's feed; the sequence number
    /// is assigned when the batch is written.
    pub fn stage_event(&mut self, event_type: &str, referral: &Referral, at: i64) {
        self.events.push(StagedEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            organization: referral.organization.clone(),
            event_type: event_type.to_string(),
            referral_id: referral.id.clone(),
            status: referral.status.clone(),
            version: referral.version,
            at,
        });
    }

    /// The current version without locking it (for reading around a change).
    pub async fn peek(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        if let Some(s) = self.staged(resource_type, id) {
            return Ok(Some(s.resource.clone()));
        }
        let row = sqlx::query(sql::READ_CURRENT)
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.map(|r| super::stored(resource_type, id, &r)))
    }

    /// The answer already given to this Idempotency-Key. Takes the key's lock first, so
    /// that a concurrent request with the same key in another process waits for the
    /// first to commit and then finds its answer.
    pub async fn idempotent_response(
        &mut self,
        organization: &str,
        key: &str,
    ) -> Result<Option<IdempotentResponse>> {
        self.lock(&format!("idempotency:{organization}:{key}"))
            .await?;
        if let Some(k) = self
            .keys
            .iter()
            .find(|k| k.organization == organization && k.key == key)
        {
            return Ok(Some(k.response.clone()));
        }
        let row = sqlx::query(
            "SELECT fingerprint, status, response FROM idempotency_keys \
             WHERE organization = $1 AND idem_key = $2",
        )
        .bind(organization)
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(row.map(|r| IdempotentResponse {
            fingerprint: r.get(0),
            status: r.get::<i64, _>(1) as u16,
            body: r.get(2),
        }))
    }

    pub fn stage_idempotent_response(
        &mut self,
        organization: &str,
        key: &str,
        response: IdempotentResponse,
        at: i64,
    ) {
        self.keys.push(StagedKey {
            organization: organization.to_string(),
            key: key.to_string(),
            response,
            at,
        });
    }

    /// The client reference of a Patient: its person's, a new person on first sight.
    pub async fn client_ref(&mut self, patient_id: &str, now: i64) -> Result<String> {
        let id = super::Identifier::patient(patient_id);
        self.lock_identifiers(std::slice::from_ref(&id)).await?;
        if let Some(owner) = self.identifier_owner(&id).await?
            && let Some(person) = self.person(&owner).await?
        {
            return Ok(person.client_ref);
        }
        let person = self.new_person(now);
        self.attach(&person.id, &[id], "fhir", now);
        Ok(person.client_ref)
    }

    /// Open referrals (not closed, declined, cancelled or expired) of a client.
    pub async fn open_referrals_of(&mut self, client_ref: &str) -> Result<Vec<Referral>> {
        let text = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE client_ref = $1 \
             AND status IN ('pending', 'accepted', 'in_progress', 'on_hold') ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(client_ref)
            .fetch_all(&mut *self.conn)
            .await?;
        let mut found: Vec<Referral> = rows.iter().map(|r| referral_row(r).referral).collect();
        // Staged rows are newer than the database's.
        for s in &self.referrals {
            found.retain(|r| r.id != s.referral.id);
            if s.referral.client_ref.as_deref() == Some(client_ref)
                && ["pending", "accepted", "in_progress", "on_hold"]
                    .contains(&s.referral.status.as_str())
            {
                found.push(s.referral.clone());
            }
        }
        Ok(found)
    }

    /// Removes events and idempotency keys older than the given times. Each
    /// organisation's `pruned_through` records how far its feed was cut.
    /// Runs in the writer's transaction: on SQLite a second writer would contend for
    /// the one write lock. Every statement is an index range over what goes, and an
    /// organisation's counter row is locked only when its feed is cut: the other
    /// writer may be waiting for it.
    pub async fn prune(&mut self, events_before: i64, keys_before: i64) -> Result<()> {
        let counters = sqlx::query("SELECT organization, pruned_through FROM tenant_counters")
            .fetch_all(&mut *self.conn)
            .await?;
        for row in counters {
            let (organization, pruned_through): (String, i64) = (row.get(0), row.get(1));
            // The newest event older than the cutoff, in the order of `events_age`, so
            // that even a generic plan (which `configure` makes PostgreSQL use) reads
            // that index: with `MAX(seq)` it walked the primary key backwards through
            // all of an organisation's events, testing each one's age (4,000 rows per
            // organisation, 90–260 ms per sweep at 100,000 referrals, the writer waiting).
            let cut: Option<i64> = sqlx::query(
                "SELECT seq FROM events WHERE organization = $1 AND created_at < $2 \
                 ORDER BY created_at DESC, seq DESC LIMIT 1",
            )
            .bind(&organization)
            .bind(events_before)
            .fetch_optional(&mut *self.conn)
            .await?
            .map(|row| row.get(0));
            let Some(cut) = cut.filter(|c| *c > pruned_through) else {
                continue;
            };
            sqlx::query("UPDATE tenant_counters SET pruned_through = $2 WHERE organization = $1")
                .bind(&organization)
                .bind(cut)
                .execute(&mut *self.conn)
                .await?;
            sqlx::query("DELETE FROM events WHERE organization = $1 AND seq <= $2")
                .bind(&organization)
                .bind(cut)
                .execute(&mut *self.conn)
                .await?;
        }
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(keys_before)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    /// Writes the staged referrals, events, their webhook deliveries and idempotency
    /// keys with whatever else the flush queued, and the announcement if one is asked.
    pub(super) async fn flush_referrals(&mut self, announce_as: Option<&str>) -> Result<()> {
        let referrals = std::mem::take(&mut self.referrals);
        if !referrals.is_empty() {
            let (text, args) = write_referrals(self.backend, &referrals);
            self.defer(text, args);
            self.written_referrals
                .extend(referrals.into_iter().map(|s| ReferralRow {
                    referral: s.referral,
                    updated_at: s.at,
                }));
        }
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            self.write_events(events).await?;
        }
        let keys = std::mem::take(&mut self.keys);
        if !keys.is_empty() {
            let rows: Vec<(&str, &str, &str, u16, &str, i64)> = keys
                .iter()
                .map(|k| {
                    let r = &k.response;
                    (
                        k.organization.as_str(),
                        k.key.as_str(),
                        r.fingerprint.as_str(),
                        r.status,
                        r.body.as_str(),
                        k.at,
                    )
                })
                .collect();
            self.defer_rows(
                "idempotency_keys",
                &[
                    ("organization", TEXT),
                    ("idem_key", TEXT),
                    ("fingerprint", TEXT),
                    ("status", INT),
                    ("response", TEXT),
                    ("created_at", INT),
                ],
                sql::json_rows(&rows),
                "",
            );
        }
        if let Some(origin) = announce_as {
            self.defer_announcement(origin);
        }
        self.send_deferred().await
    }

    /// Queues the insert of a JSON array of rows into `table` (`sql::bulk_insert`).
    pub(super) fn defer_rows(
        &mut self,
        table: &str,
        columns: &[(&str, bool)],
        rows: String,
        suffix: &str,
    ) {
        let (text, args) = sql::bulk_insert(self.backend, table, columns, rows, suffix);
        self.defer(text, args);
    }

    pub(super) fn defer(&mut self, text: String, args: Vec<sql::Arg>) {
        self.deferred.push(sql::Write {
            text,
            args,
            reads_by_keys: false,
        });
    }

    /// Numbers the events (sent with the writes queued so far) and queues their insert
    /// and their webhook deliveries.
    async fn write_events(&mut self, events: Vec<StagedEvent>) -> Result<()> {
        // One counter bump per organisation reserves a block of sequence numbers. The
        // counter row stays locked until COMMIT, which keeps each organisation's feed
        // gap-free and ordered across gateway processes.
        let mut next: Vec<(String, i64)> = Vec::new();
        for e in &events {
            match next.iter_mut().find(|(o, _)| *o == e.organization) {
                Some((_, n)) => *n += 1,
                None => next.push((e.organization.clone(), 1)),
            }
        }
        // Counters are locked in one order by every writer, so two batches never wait
        // on each other's counters (a deadlock).
        next.sort();
        let counts: Vec<(&str, i64)> = next.iter().map(|(o, n)| (o.as_str(), *n)).collect();
        let (text, args) = sql::bulk_insert(
            self.backend,
            "tenant_counters",
            &[("organization", TEXT), ("last_seq", INT)],
            sql::json_rows(&counts),
            "WHERE true ON CONFLICT (organization) DO UPDATE \
             SET last_seq = tenant_counters.last_seq + excluded.last_seq \
             RETURNING organization, last_seq",
        );
        // Sent on its own, after the queued writes: the counter rows stay locked from
        // here to COMMIT, and the other writer may be waiting for them.
        self.send_deferred().await?;
        let rows = sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
            .fetch_all(&mut *self.conn)
            .await?;
        for r in &rows {
            let org: String = r.get(0);
            let last: i64 = r.get(1);
            if let Some((_, n)) = next.iter_mut().find(|(o, _)| *o == org) {
                // From the count to the first number of the reserved block.
                *n = last - *n + 1;
            }
        }
        let rows: Vec<EventRow> = events
            .into_iter()
            .map(|e| {
                let slot = next
                    .iter_mut()
                    .find(|(o, _)| *o == e.organization)
                    .expect("counted above");
                let seq = slot.1;
                slot.1 += 1;
                EventRow(
                    e.organization,
                    seq,
                    e.event_type,
                    e.referral_id,
                    e.at,
                    e.id,
                    e.status,
                    e.version,
                )
            })
            .collect();
        let deliveries: Vec<(&str, i64, &str, i64)> = rows
            .iter()
            .map(|e| (e.0.as_str(), e.1, e.2.as_str(), e.4))
            .collect();
        let deliveries = sql::json_rows(&deliveries);
        self.defer_rows(
            "events",
            &[
                ("organization", TEXT),
                ("seq", INT),
                ("event_type", TEXT),
                ("referral_id", TEXT),
                ("created_at", INT),
                ("id", TEXT),
                ("status", TEXT),
                ("version", INT),
            ],
            sql::json_rows(&rows),
            "",
        );
        // Webhook deliveries are created with their events, in the same transaction.
        let fan_out = super::webhooks::fan_out_sql(self.backend);
        self.defer(fan_out, vec![sql::Arg::Text(deliveries)]);
        Ok(())
    }
}

/// An `events` row in the column order of the insert (serialised as a JSON array).
#[derive(serde::Serialize)]
struct EventRow(String, i64, String, String, i64, String, String, i64);

/// One upsert for the batch; a referral staged twice is written in its last state.
fn write_referrals(backend: Backend, staged: &[StagedReferral]) -> (String, Vec<sql::Arg>) {
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        i64,
        &'a str,
        Option<i64>,
        Option<&'a str>,
        Option<&'a str>,
        i64,
        i64,
        Option<&'a str>,
    );
    let mut rows: Vec<Row> = Vec::new();
    for s in staged {
        let r = &s.referral;
        let row: Row = (
            &r.id,
            &r.organization,
            &r.task_id,
            &r.status,
            r.version,
            &r.urgency,
            r.respond_by,
            r.client_ref.as_deref(),
            r.domain.as_deref(),
            r.created_at,
            s.at,
            r.respond_by_text.as_deref(),
        );
        match rows.iter_mut().find(|existing| existing.0 == r.id) {
            Some(existing) => {
                *existing = (
                    row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, existing.9,
                    s.at, row.11,
                )
            }
            None => rows.push(row),
        }
    }
    sql::bulk_insert(
        backend,
        "referrals",
        &[
            ("id", TEXT),
            ("organization", TEXT),
            ("task_id", TEXT),
            ("status", TEXT),
            ("version", INT),
            ("urgency", TEXT),
            ("respond_by", INT),
            ("client_ref", TEXT),
            ("domain", TEXT),
            ("created_at", INT),
            ("updated_at", INT),
            ("respond_by_text", TEXT),
        ],
        sql::json_rows(&rows),
        "WHERE true ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
         version = excluded.version, urgency = excluded.urgency, \
         respond_by = excluded.respond_by, respond_by_text = excluded.respond_by_text, \
         client_ref = excluded.client_ref, \
         domain = excluded.domain, updated_at = excluded.updated_at",
    )
}

impl Store {
    /// Every referral row (to fill `referral_index`).
    pub(super) async fn all_referrals(&self) -> Result<Vec<ReferralRow>> {
        let text = format!("SELECT {REFERRAL_COLUMNS} FROM referrals");
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(referral_row).collect())
    }

    /// The rows of these referrals (PostgreSQL: announced by another process).
    pub(super) async fn referral_rows(&self, ids: &[String]) -> Result<Vec<ReferralRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(by_ids(self.backend)))
            .bind(sql::json_rows(ids))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(referral_row).collect())
    }

    /// An organisation's referral by id (another organisation's is not found).
    pub async fn referral(&self, organization: &str, id: &str) -> Result<Option<ReferralRow>> {
        if let Some(index) = self.referral_index() {
            return Ok(index.get(organization, id));
        }
        let text =
            format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1 AND organization = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(id)
            .bind(organization)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(referral_row))
    }

    /// An organisation's referral and the current version of its Task, in one round trip.
    pub async fn referral_with_task(
        &self,
        organization: &str,
        id: &str,
    ) -> Result<Option<(ReferralRow, Option<StoredResource>)>> {
        if let Some(index) = self.referral_index() {
            let Some(row) = index.get(organization, id) else {
                return Ok(None);
            };
            let task = self.read("Task", &row.referral.task_id).await?;
            return Ok(Some((row, task)));
        }
        let columns: Vec<String> = REFERRAL_COLUMNS
            .split(", ")
            .map(|c| format!("f.{c}"))
            .collect();
        let text = format!(
            "SELECT {}, v.version, v.last_updated, v.body FROM referrals f \
             LEFT JOIN resources r ON r.res_type = 'Task' AND r.res_id = f.task_id \
             LEFT JOIN resource_versions v ON v.res_type = 'Task' AND v.res_id = f.task_id AND v.version = r.version \
             WHERE f.id = $1 AND f.organization = $2",
            columns.join(", ")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(id)
            .bind(organization)
            .fetch_optional(&self.pool)
            .await?;
        // The Task's version, time and body come after the referral's columns.
        let n = columns.len();
        Ok(row.map(|r| {
            let referral = referral_row(&r);
            let task = r
                .get::<Option<String>, _>(n + 2)
                .map(|body| StoredResource {
                    resource_type: "Task".into(),
                    id: referral.referral.task_id.clone(),
                    version: r.get(n),
                    last_updated: r.get(n + 1),
                    body,
                });
            (referral, task)
        }))
    }

    /// A page of an organisation's referrals, oldest change first.
    pub async fn referrals(
        &self,
        organization: &str,
        f: &ReferralFilter,
    ) -> Result<Vec<ReferralRow>> {
        if let Some(index) = self.referral_index() {
            return Ok(index.page(organization, f));
        }
        let mut text = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE organization = $1");
        let mut args = vec![sql::Arg::Text(organization.to_string())];
        let arg = |a: sql::Arg, args: &mut Vec<sql::Arg>| {
            args.push(a);
            format!("${}", args.len())
        };
        if let Some(s) = &f.status {
            text += &format!(
                " AND status = {}",
                arg(sql::Arg::Text(s.clone()), &mut args)
            );
        }
        if let Some(u) = &f.urgency {
            text += &format!(
                " AND urgency = {}",
                arg(sql::Arg::Text(u.clone()), &mut args)
            );
        }
        if let Some(t) = f.updated_since {
            text += &format!(" AND updated_at >= {}", arg(sql::Arg::Int(t), &mut args));
        }
        if let Some((at, id)) = &f.after {
            let a = arg(sql::Arg::Int(*at), &mut args);
            let b = arg(sql::Arg::Text(id.clone()), &mut args);
            text += &format!(" AND (updated_at > {a} OR (updated_at = {a} AND id > {b}))");
        }
        text += &format!(
            " ORDER BY updated_at, id LIMIT {}",
            arg(sql::Arg::Int(f.limit), &mut args)
        );
        let rows = sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(referral_row).collect())
    }

    /// An organisation's feed after `after_seq`, and the highest sequence removed by
    /// retention (a cursor below it has missed events).
    pub async fn events(
        &self,
        organization: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<(Vec<Event>, i64)> {
        let pruned: i64 =
            sqlx::query("SELECT pruned_through FROM tenant_counters WHERE organization = $1")
                .bind(organization)
                .fetch_optional(&self.pool)
                .await?
                .map_or(0, |r| r.get(0));
        let text = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE organization = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(organization)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(event_row).collect(), pruned))
    }

    /// One referral's events, in order.
    pub async fn referral_events(
        &self,
        organization: &str,
        referral_id: &str,
    ) -> Result<Vec<Event>> {
        let text = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE referral_id = $1 AND organization = $2 ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(referral_id)
            .bind(organization)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(event_row).collect())
    }

    /// Pending referrals whose `respond_by` has passed: (referral id, organisation).
    pub async fn overdue_referrals(&self, now: i64, limit: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, organization FROM referrals \
             WHERE status = 'pending' AND respond_by < $1 ORDER BY respond_by LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
