//! The durable store: every version of every FHIR resource as JSON, the search indexes,
//! referrals and the per-organisation event feed, on SQLite (embedded) or PostgreSQL,
//! through sqlx's `Any` driver. No module outside this one speaks SQL; the row types
//! other modules work with (`Identifier`, `Person`, `Fact`, `Referral`, `Event`, …) are
//! defined here and re-exported where they belong (`identity`, `measures`).
//!
//! Invariants:
//! - The store is the source of truth; caches may be dropped at any time.
//! - Every write of a resource, and of the rows that go with it (referrals, events,
//!   deliveries, identity, facts), goes through the group-commit writers
//!   ([`writer::Writer`]: one per process on SQLite, two on PostgreSQL), which answer
//!   each caller only after COMMIT and the flush of the log. Rows that are not resources
//!   (clients, keys, `jti` claims, tenants, the audit trail, directory entries) are
//!   written straight to the pool.
//! - The same SQL runs on both backends except where a comment says otherwise
//!   (`scripts/check-migrations` keeps the two migration sets equal).
//! - Index rows always describe the current version.
//!
//! # Tables
//! `resource_versions` (every version's JSON and the index rows it produced),
//! `resources` (the current version, commit `seq`, `last_updated`),
//! `search_tokens|refs|strings|dates` (rows for current versions only, primary key =
//! lookup path type/param/value/id), `referrals` (the CBO list's columns; an index
//! covering them all serves a page), `events` (with id, status and version: the feed's
//! payload), `tenant_counters` (and `pruned_through`), `idempotency_keys`, `persons`,
//! `person_identifiers` (identifier → person, aliases), `person_merges`,
//! `identity_conflicts`, `identity_generation`, `inbound_messages` (every feed message,
//! raw, keyed by its dedupe key; dead letters), and the rows of the submodules below.
//!
//! # Memory
//! `recent` keeps current versions and `referral_index` the referral rows of the
//! organisations in use (CBO lists and reads need no query), both fed by the writer
//! after each commit and bounded by the memory budget (`set_cache_budget`); their maps
//! are split in 256 (`shards`). On PostgreSQL `replicas` keeps them in step with other
//! processes.
//!
//! # Several processes on PostgreSQL
//! Updates lock the current row (`FOR UPDATE`); conditional creates take an advisory
//! lock on the condition; event sequence numbers come from a per-organisation counter
//! row locked to COMMIT (a batch's numbers reach the disk before any later batch's: the
//! log is flushed in order). A locked read that waited for another transaction's COMMIT
//! can come back without the row: PostgreSQL re-checks the updated row against the join
//! with the version row read before the wait. So `Tx::preload` and `Tx::current` read
//! what is missing once more, in a new statement that sees the committed version
//! (`tests/api/cbo.rs::concurrent_notes_on_one_referral_are_all_kept`).

mod auth;
mod connectors;
mod directory;
pub mod ehr;
mod identity;
mod measures;
mod recent;
mod referral_index;
mod referrals;
mod replicas;
mod sql;
mod subscriptions;
mod webhooks;
pub mod writer;

pub use crate::telemetry::CacheStats;
pub use auth::{ApiKeyRow, AuditQuery, AuditRecord, ClientRow, TenantRow};
pub use connectors::ConnectorEndpoint;
pub use directory::{DirectoryFilter, DirectoryRow};
pub use ehr::Unpushed;
pub use identity::{Conflict, Identifier, InboundMessage, MergeRecord, PATIENT_SYSTEM, Person};
pub use measures::{
    Admitted, BORN, CONTACT, EMERGENCY, Fact, FactFilter, INPATIENT, POSITIVE, PROCEDURE,
    PersonFact, REFERRAL, REFERRAL_ACCEPTED, REFERRAL_ANSWERED, REFERRAL_CANCELLED,
    REFERRAL_CLOSED, REFERRAL_CREATED, REFERRAL_DECLINED, REFERRAL_EXPIRED, ReferralStep, SCORE,
    SCREENED,
};
use recent::RecentVersions;
pub use referrals::{Event, IdempotentResponse, Referral, ReferralFilter, ReferralRow};
pub use subscriptions::{SubscriptionRow, endpoint_id as subscription_endpoint};
pub use webhooks::{DeliveryRow, DueDelivery, EndpointRow};

/// What a batch's commands will read, so the writer can read it all at once.
#[derive(Debug, Default)]
pub struct Preload {
    /// (type, id) of current versions.
    pub resources: Vec<(String, String)>,
    /// Referral ids.
    pub referrals: Vec<String>,
    /// Identifiers whose owners the batch will look up.
    pub identifiers: Vec<Identifier>,
    /// Inbound messages (source, control id) the batch will claim.
    pub inbound: Vec<(String, String)>,
}
use referrals::{StagedEvent, StagedKey, StagedReferral};

use std::collections::{HashMap, HashSet};
use std::path::Path;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::resource::search::{Cursor, IndexEntries, SearchQuery, Total};

pub use sql::Arg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the write queue is shut down")]
    WriterClosed,
    /// A whole write batch failed (connection lost, COMMIT refused); nothing was answered
    /// as a success, so the client may retry.
    #[error("write batch aborted: {0}")]
    Aborted(String),
}

impl StoreError {
    /// Failures a client may retry: the database is unreachable, busy or out of space.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::WriterClosed | StoreError::Aborted(_) => true,
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    // SQLite: BUSY(5), LOCKED(6), FULL(13), IOERR(10); PostgreSQL: class 08
                    // (connection), 53 (resources), 57P (shutdown), 40001/40P01 (retry).
                    matches!(code.as_ref(), "5" | "6" | "10" | "13" | "40001" | "40P01")
                        || code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || db.message().contains("database or disk is full")
                        || db.message().contains("readonly database")
                }
                _ => false,
            },
            _ => false,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One stored resource version, with its JSON exactly as it is returned to clients.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub body: String,
}

pub struct SearchPage {
    pub matches: Vec<StoredResource>,
    pub included: Vec<StoredResource>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
    /// How many resources match in all, when known (`_total`).
    pub total: Option<usize>,
}

pub use crate::telemetry::Backlog;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's write-ahead log, which the writer fsyncs itself (see `writer`).
    wal: Option<std::path::PathBuf>,
    /// Current versions served from memory (see `recent`).
    recent: std::sync::Arc<recent::RecentVersions>,
    /// PostgreSQL: the listener that keeps `recent` in step with other processes (see
    /// `replicas`), held so that it stops with the last clone of the store.
    _listening: Option<std::sync::Arc<replicas::Listening>>,
    /// PostgreSQL: this process's name in its announcements of versions.
    origin: Option<String>,
    /// The referral rows of the organisations in use (see `referral_index`).
    referral_index: std::sync::Arc<referral_index::ReferralIndex>,
    /// SQLite only: taken by each write transaction of this process, so that the
    /// writer and the audit trail queue for the file's one write lock in turn instead
    /// of meeting SQLite's busy handler, which sleeps in steps of up to 100 ms.
    write_turn: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl Store {
    /// Opens the database (creating the SQLite file and directory when needed) and
    /// applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        if backend == Backend::Sqlite
            && let Some(path) = sqlite_path(url)
            && let Some(dir) = Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let url = &sqlite_creating(url);
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            // A reader per concurrent request on 2 cores (writers open their own).
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 20,
            })
            .acquire_timeout(std::time::Duration::from_secs(5))
            // A ping before every acquire is a round trip per query. A connection that
            // died fails its query instead (a 503 the client retries) and is replaced.
            .test_before_acquire(false)
            .after_connect(move |conn, _| Box::pin(configure(conn, backend)))
            .connect_with(options)
            .await?;
        let wal = match backend {
            Backend::Sqlite => {
                sqlite_path(url).map(|p| std::path::PathBuf::from(format!("{p}-wal")))
            }
            Backend::Postgres => None,
        };
        // On SQLite the memory is trusted from the start; on PostgreSQL once `replicas`
        // listens for the other processes' writes.
        let embedded = backend == Backend::Sqlite;
        let mut store = Store {
            pool,
            backend,
            wal,
            recent: std::sync::Arc::new(RecentVersions::new(embedded)),
            _listening: None,
            origin: (!embedded).then(|| uuid::Uuid::new_v4().to_string()),
            referral_index: std::sync::Arc::new(referral_index::ReferralIndex::new(embedded)),
            write_turn: embedded.then(Default::default),
        };
        store.migrate().await?;
        match &store.origin {
            // Organisations' referral rows are read as they are asked for.
            None => {}
            Some(origin) => {
                // The listener's copy does not hold the listener (no cycle).
                let copy = Store {
                    _listening: None,
                    ..store.clone()
                };
                store._listening = Some(std::sync::Arc::new(replicas::listen(
                    url.to_string(),
                    origin.clone(),
                    copy,
                )));
            }
        }
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Another process wrote (an operator's merge or unmerge beside the embedded
    /// gateway): the current versions kept in memory are dropped and the referral rows
    /// read again. Nothing to do on PostgreSQL, where every writer announces what it
    /// commits (see `replicas`).
    /// The bytes the current-version cache and the referral index may keep.
    pub fn set_cache_budget(&self, versions: usize, referrals: usize) {
        self.recent.set_budget(versions);
        self.referral_index.set_budget(referrals);
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.recent.stats()
    }

    /// The referral index as `/metrics` shows it.
    pub fn referral_index_stats(&self) -> CacheStats {
        self.referral_index.stats()
    }

    pub async fn reload_after_foreign_write(&self) -> Result<()> {
        if self.origin.is_some() {
            return Ok(());
        }
        self.recent.clear();
        self.referral_index.clear();
        Ok(())
    }

    /// The referral rows in memory, when they may answer.
    fn referral_index(&self) -> Option<&referral_index::ReferralIndex> {
        Some(&*self.referral_index).filter(|i| i.trusted())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// What is waiting, store-wide (every replica sees the same figures), for
    /// `/metrics`. Each count is served by an index.
    pub async fn backlog(&self, now: i64) -> Result<Backlog> {
        let row = sqlx::query(
            "SELECT \
             (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'), \
             (SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'), \
             (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'), \
             (SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled'), \
             (SELECT count(*) FROM inbound_messages WHERE status = 'dead'), \
             (SELECT count(*) FROM identity_conflicts WHERE resolved_at IS NULL), \
             (SELECT count(*) FROM ehr_links WHERE failures > 0 AND gone_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        let due: Option<i64> = row.get(1);
        Ok(Backlog {
            deliveries_pending: row.get(0),
            delivery_lag_micros: due.map_or(0, |d| (now - d).max(0)),
            deliveries_failed: row.get(2),
            endpoints_disabled: row.get(3),
            dead_letters: row.get(4),
            identity_conflicts: row.get(5),
            ehr_writebacks_stuck: row.get(6),
        })
    }

    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        if let Some(found) = self.recent.get(resource_type, id) {
            return Ok(Some(found));
        }
        let epoch = self.recent.epoch();
        let row = sqlx::query(sql::READ_CURRENT)
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let found = row.map(|r| stored(resource_type, id, &r));
        if let Some(f) = &found {
            self.recent.offer_all([f.clone()], epoch);
        }
        Ok(found)
    }

    /// The current version of a resource when it is known without asking the database
    /// (the recent versions); None when it is not known that way.
    pub fn known_version(&self, resource_type: &str, id: &str) -> Option<i64> {
        self.recent.version(resource_type, id)
    }

    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>> {
        let row = sqlx::query(
            "SELECT version, last_updated, body FROM resource_versions \
             WHERE res_type = $1 AND res_id = $2 AND version = $3",
        )
        .bind(resource_type)
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| stored(resource_type, id, &r)))
    }

    /// All versions, newest first.
    pub async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<StoredResource>> {
        let rows = sqlx::query(
            "SELECT version, last_updated, body FROM resource_versions \
             WHERE res_type = $1 AND res_id = $2 ORDER BY version DESC",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| stored(resource_type, id, r)).collect())
    }

    /// Current versions of several resources in one round trip (those that exist).
    pub async fn read_current(&self, keys: &[(String, String)]) -> Result<Vec<StoredResource>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let known: Vec<StoredResource> = keys
            .iter()
            .filter_map(|(t, id)| self.recent.get(t, id))
            .collect();
        if known.len() == keys.len() {
            return Ok(known);
        }
        let mut conn = self.pool.acquire().await?;
        current_versions(&mut conn, &self.recent, keys).await
    }

    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        let mut conn = self.pool.acquire().await?;
        search(&mut conn, self.backend, Some(&self.recent), query).await
    }
}

/// A SQLite URL that creates its file when it does not exist yet (`mode=rwc`), unless
/// the URL says otherwise: `sqlite:///var/lib/crossway/db.sqlite`, the form the README
/// documents, otherwise fails at start with "unable to open database file".
fn sqlite_creating(url: &str) -> String {
    let Some(path) = sqlite_path(url) else {
        return url.to_string();
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p.starts_with("mode=")) || path.starts_with("file:") {
        return url.to_string();
    }
    let joiner = if url.contains('?') { "&" } else { "?" };
    format!("{url}{joiner}mode=rwc")
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}

fn stored(resource_type: &str, id: &str, row: &sqlx::any::AnyRow) -> StoredResource {
    StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version: row.get(0),
        last_updated: row.get(1),
        body: row.get(2),
    }
}

async fn search(
    conn: &mut AnyConnection,
    backend: Backend,
    recent: Option<&RecentVersions>,
    query: &SearchQuery,
) -> Result<SearchPage> {
    // With the recent versions at hand, the page query fetches ids and versions only.
    let with_bodies = recent.is_none();
    let (text, args) = sql::search(backend, query, with_bodies);
    let mut rows = sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
        .fetch_all(&mut *conn)
        .await?;
    let next = if rows.len() > query.count {
        rows.truncate(query.count);
        rows.last().map(|r| Cursor {
            last_updated: r.get(2),
            seq: r.get(3),
        })
    } else {
        None
    };
    let body_at = if query.includes.is_empty() { 4 } else { 5 };
    let matches = match recent {
        None => rows
            .iter()
            .map(|r| StoredResource {
                resource_type: query.resource_type.clone(),
                id: r.get(0),
                version: r.get(1),
                last_updated: r.get(2),
                body: r.get(body_at),
            })
            .collect(),
        Some(recent) => {
            let keys: Vec<(String, String)> = rows
                .iter()
                .map(|r| (query.resource_type.clone(), r.get(0)))
                .collect();
            let mut found = current_versions(conn, recent, &keys).await?;
            // The page matched these versions; memory may not have heard of them yet
            // (another process's commit, announced a moment later).
            let behind: Vec<(String, String)> = found
                .iter()
                .zip(&rows)
                .filter(|(f, r)| f.version < r.get::<i64, _>(1))
                .map(|(f, _)| (f.resource_type.clone(), f.id.clone()))
                .collect();
            if !behind.is_empty() {
                let newer = read_many(conn, &behind).await?;
                for f in found.iter_mut() {
                    if let Some(n) = newer.iter().find(|n| n.id == f.id) {
                        *f = n.clone();
                    }
                }
            }
            found
        }
    };
    let mut included = Vec::new();
    if !query.includes.is_empty() {
        // Targets come from the matches' stored index rows: no reverse index to maintain.
        let mut keys: Vec<(String, String)> = Vec::new();
        let first_round = query
            .includes
            .iter()
            .filter(|i| i.source_type == query.resource_type);
        for r in &rows {
            let index_rows: String = r.get(4);
            add_targets(&mut keys, &index_rows, first_round.clone());
        }
        // `_include:iterate`: the same from what was just included, a few rounds deep
        // (a server may bound iteration; references rarely chain further).
        let mut round = 0..keys.len();
        for _ in 0..MAX_INCLUDE_ROUNDS {
            let sources: Vec<(String, String)> = keys[round.clone()]
                .iter()
                .filter(|(t, _)| {
                    query
                        .includes
                        .iter()
                        .any(|i| i.iterate && &i.source_type == t)
                })
                .cloned()
                .collect();
            if sources.is_empty() {
                break;
            }
            let start = keys.len();
            let (text, args) = sql::read_many_to_replace(&sources);
            for row in sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
                .fetch_all(&mut *conn)
                .await?
            {
                let ty: String = row.get(0);
                let index_rows: String = row.get(5);
                let iterated = query
                    .includes
                    .iter()
                    .filter(|i| i.iterate && i.source_type == ty);
                add_targets(&mut keys, &index_rows, iterated);
            }
            round = start..keys.len();
        }
        // A match included by an iterated round is shown once, as a match.
        keys.retain(|(t, id)| {
            t != &query.resource_type || !matches.iter().any(|m: &StoredResource| &m.id == id)
        });
        included = match recent {
            Some(recent) => current_versions(conn, recent, &keys).await?,
            None => read_many(conn, &keys).await?,
        };
    }
    // How many match in all: free when this first page holds them all, counted when
    // asked (`_total=accurate`) or when the page is only a count (`_count=0`).
    let whole = query.cursor.is_none() && next.is_none();
    let total = match query.total {
        Total::None => None,
        _ if whole && query.count > 0 => Some(matches.len()),
        Total::Accurate => Some(count(conn, backend, query).await?),
        _ if query.count == 0 => Some(count(conn, backend, query).await?),
        _ => None,
    };
    Ok(SearchPage {
        matches,
        included,
        next,
        total,
    })
}

async fn count(conn: &mut AnyConnection, backend: Backend, query: &SearchQuery) -> Result<usize> {
    let (text, args) = sql::count(backend, query);
    let n: i64 = sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Iterated `_include` rounds after the first.
const MAX_INCLUDE_ROUNDS: usize = 3;

fn add_targets<'a>(
    keys: &mut Vec<(String, String)>,
    index_rows: &str,
    includes: impl Iterator<Item = &'a crate::resource::search::Include>,
) {
    for include in includes {
        for key in sql::local_targets(index_rows, include) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
}

/// Current versions of `keys`, in order, from memory where known and otherwise from the
/// database (and then remembered).
async fn current_versions(
    conn: &mut AnyConnection,
    recent: &RecentVersions,
    keys: &[(String, String)],
) -> Result<Vec<StoredResource>> {
    let epoch = recent.epoch();
    let mut found: Vec<Option<StoredResource>> =
        keys.iter().map(|(t, id)| recent.get(t, id)).collect();
    let missing: Vec<(String, String)> = keys
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if !missing.is_empty() {
        let fetched = read_many(conn, &missing).await?;
        recent.offer_all(fetched.iter().cloned(), epoch);
        for (slot, (t, id)) in found.iter_mut().zip(keys) {
            if slot.is_none() {
                *slot = fetched
                    .iter()
                    .find(|r| &r.resource_type == t && &r.id == id)
                    .cloned();
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
}

async fn read_many(
    conn: &mut AnyConnection,
    keys: &[(String, String)],
) -> Result<Vec<StoredResource>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (text, args) = sql::read_many(keys);
    let rows = sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredResource {
            resource_type: r.get(0),
            id: r.get(1),
            version: r.get(2),
            last_updated: r.get(3),
            body: r.get(4),
        })
        .collect())
}

/// A resource version staged for writing when the batch is flushed.
struct Staged {
    resource: StoredResource,
    seq: i64,
    index: IndexEntries,
}

/// Where a command's staged rows start, so a failed command can be undone in memory.
#[derive(Clone, Copy)]
pub struct Mark {
    resources: usize,
    referrals: usize,
    events: usize,
    keys: usize,
    authors: usize,
    facts: usize,
    loaded: usize,
    written: usize,
    written_referrals: usize,
    notifications: usize,
    next_seq: i64,
    identity: identity::StagingMark,
}

/// The write side of one group-commit transaction, handed to each command in turn.
///
/// Commands read through it and *stage* their writes in memory; the whole batch is
/// written with a handful of multi-row statements at the end. Reads check staged rows
/// first, so a command sees what earlier commands in the batch did. A command that
/// fails is undone by dropping its staged rows: nothing reached the database.
pub struct Tx<'c> {
    conn: &'c mut AnyConnection,
    backend: Backend,
    next_seq: i64,
    resources: Vec<Staged>,
    referrals: Vec<StagedReferral>,
    events: Vec<StagedEvent>,
    keys: Vec<StagedKey>,
    /// (type, id, organisation) of resources an organisation-bound client created.
    authors: Vec<(String, String, String)>,
    /// Measure facts of the versions written (see `measures`).
    facts: Vec<measures::StagedFacts>,
    /// Referrals read from the database in this transaction (a command reads a
    /// referral, then the Task write it causes looks it up again).
    loaded: Vec<Referral>,
    /// Current versions (with their index rows) read from the database in this
    /// transaction: for the whole batch before its commands run (see [`Tx::preload`]),
    /// or one by one by [`Tx::current`]; dropped once a newer version is written.
    preloaded: HashMap<(String, String), (StoredResource, String)>,
    /// Referral rows written in this transaction, for `referral_index` after COMMIT.
    written_referrals: Vec<ReferralRow>,
    /// Versions written to the database in this transaction, for `recent` after COMMIT.
    written: Vec<StoredResource>,
    /// Index rows of current versions read for replacement: (type, id) → rows.
    replaced: HashMap<(String, String), String>,
    /// Subscription events to number and queue.
    notifications: Vec<subscriptions::StagedNotification>,
    /// Resources the batch preloaded and found not stored.
    absent: HashSet<(String, String)>,
    /// Persons, identifiers and inbound messages (see `identity`).
    identity: identity::Staging,
    /// Merges and unmerges so far ([`Tx::identity_moves`]).
    identity_moves: u64,
    /// Writes queued by the flush, sent together by [`Tx::send_deferred`].
    deferred: Vec<sql::Write>,
    /// Writes that read what `deferred` writes (a measure fact looks up its Patient's
    /// person), sent after it: on PostgreSQL the combined statement's parts all see
    /// one snapshot, so a fact inserted beside its Patient's identifier would find no
    /// person and have to be repointed row by row by the trigger afterwards (measured:
    /// new-patient intake at a fifth of its rate, falling as the table grew).
    deferred_after: Vec<sql::Write>,
}

impl<'c> Tx<'c> {
    /// The current version, staged or committed. On PostgreSQL the row is locked until
    /// COMMIT, so concurrent gateway processes serialise their updates.
    pub async fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>> {
        if let Some(s) = self.staged(resource_type, id) {
            return Ok(Some(s.resource.clone()));
        }
        let key = (resource_type.to_string(), id.to_string());
        if let Some((found, index_rows)) = self.preloaded.get(&key) {
            let found = found.clone();
            self.replaced.insert(key, index_rows.clone());
            return Ok(Some(found));
        }
        if self.absent.contains(&key) {
            return Ok(None);
        }
        let text = match self.backend {
            Backend::Sqlite => sql::READ_CURRENT_TO_REPLACE,
            Backend::Postgres => sql::READ_CURRENT_TO_REPLACE_LOCKED,
        };
        let mut row = None;
        for _ in 0..self.locked_reads() {
            row = sqlx::query(text)
                .bind(resource_type)
                .bind(id)
                .fetch_optional(&mut *self.conn)
                .await?;
            if row.is_some() {
                break;
            }
        }
        Ok(row.map(|r| {
            let found = stored(resource_type, id, &r);
            let key = (resource_type.to_string(), id.to_string());
            // Remembered so that a new version can remove exactly these index rows, and
            // so that the command that read it to build the next version does not read
            // it again when writing that version.
            self.replaced.insert(key.clone(), r.get(3));
            self.preloaded.insert(key, (found.clone(), r.get(3)));
            found
        }))
    }

    /// How many times a locked read of current versions looks for a row that exists:
    /// twice on PostgreSQL (see `preload`), once on SQLite, whose one writer never
    /// waits for another's COMMIT.
    fn locked_reads(&self) -> usize {
        match self.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 2,
        }
    }

    /// Reads, in one round trip each, the current versions and referrals the batch's
    /// commands are about to need (on PostgreSQL locking the rows, as `current` does),
    /// instead of one round trip per command on the writer's serial path.
    ///
    /// On PostgreSQL a row that another transaction (the other batch writer, another
    /// process) updates while this one waits for its lock is checked again after that
    /// COMMIT against the join with the version row read before the wait, which no
    /// longer matches: the row is left out, though it exists and is now locked by this
    /// transaction. So what is missing is read once more, by a statement that sees the
    /// committed version; only what is still missing is absent.
    pub async fn preload(&mut self, wanted: &Preload) -> Result<()> {
        let mut missing = wanted.resources.clone();
        for _ in 0..self.locked_reads() {
            if missing.is_empty() {
                break;
            }
            let rows = match self.backend {
                Backend::Sqlite => {
                    let (text, args) = sql::read_many_to_replace(&missing);
                    sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
                        .fetch_all(&mut *self.conn)
                        .await?
                }
                Backend::Postgres => {
                    // One lock order for every writer, so that two never deadlock.
                    let mut keys = missing.clone();
                    keys.sort();
                    keys.dedup();
                    sqlx::query(sql::READ_MANY_TO_REPLACE_LOCKED)
                        .bind(sql::json_rows(&keys))
                        .fetch_all(&mut *self.conn)
                        .await?
                }
            };
            for r in &rows {
                let found = StoredResource {
                    resource_type: r.get(0),
                    id: r.get(1),
                    version: r.get(2),
                    last_updated: r.get(3),
                    body: r.get(4),
                };
                let key = (found.resource_type.clone(), found.id.clone());
                self.preloaded.insert(key, (found, r.get(5)));
            }
            missing.retain(|key| !self.preloaded.contains_key(key));
        }
        self.absent.extend(missing);
        self.preload_identity(&wanted.identifiers, &wanted.inbound)
            .await?;
        self.preload_referrals(&wanted.referrals).await
    }

    fn staged(&self, resource_type: &str, id: &str) -> Option<&Staged> {
        self.resources
            .iter()
            .rev()
            .find(|s| s.resource.resource_type == resource_type && s.resource.id == id)
    }

    pub async fn exists(&mut self, resource_type: &str, id: &str) -> Result<bool> {
        if self.staged(resource_type, id).is_some() {
            return Ok(true);
        }
        let row = sqlx::query("SELECT 1 FROM resources WHERE res_type = $1 AND res_id = $2")
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.is_some())
    }

    /// Stages a new version of a resource.
    pub fn stage(&mut self, resource: StoredResource, index: IndexEntries) {
        // SQLite has one writer process, so the commit sequence is assigned here;
        // PostgreSQL takes it from a sequence at insert time.
        self.next_seq += 1;
        let seq = self.next_seq;
        self.resources.push(Staged {
            resource,
            seq,
            index,
        });
    }

    /// Ids of current resources matching a query (conditional create / references).
    pub async fn search_ids(&mut self, query: &SearchQuery) -> Result<Vec<String>> {
        Ok(self
            .search(query)
            .await?
            .matches
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// Searches inside the transaction. Staged rows are written first so the search
    /// sees them; commands that search therefore run in a savepoint (see `writer`).
    pub async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage> {
        self.flush().await?;
        search(self.conn, self.backend, None, query).await
    }

    /// Serialises conflicting commands across gateway processes (PostgreSQL advisory
    /// lock held to COMMIT). One process never needs it: its writer is already serial.
    pub async fn lock(&mut self, key: &str) -> Result<()> {
        self.lock_all(vec![key.to_string()]).await
    }

    fn mark(&self) -> Mark {
        Mark {
            resources: self.resources.len(),
            referrals: self.referrals.len(),
            events: self.events.len(),
            keys: self.keys.len(),
            authors: self.authors.len(),
            facts: self.facts.len(),
            loaded: self.loaded.len(),
            written_referrals: self.written_referrals.len(),
            written: self.written.len(),
            notifications: self.notifications.len(),
            next_seq: self.next_seq,
            identity: self.identity.mark(),
        }
    }

    fn rollback_to(&mut self, m: Mark) {
        self.resources.truncate(m.resources);
        self.referrals.truncate(m.referrals);
        self.events.truncate(m.events);
        self.keys.truncate(m.keys);
        self.authors.truncate(m.authors);
        self.facts.truncate(m.facts);
        self.loaded.truncate(m.loaded);
        self.written_referrals.truncate(m.written_referrals);
        self.written.truncate(m.written);
        self.notifications.truncate(m.notifications);
        self.next_seq = m.next_seq;
        self.identity.rollback_to(m.identity);
    }

    async fn execute(&mut self, text: &'static str) -> Result<()> {
        sqlx::query(text).execute(&mut *self.conn).await?;
        Ok(())
    }

    /// Sends the writes the flush queued in one call: on PostgreSQL as one statement
    /// (`sql::combine`), on SQLite as one multi-statement text (`sql::sequence`).
    /// Writes that read by keys go first, and on PostgreSQL on their own: planned per
    /// batch, they would make it parse and plan the whole combination every time.
    pub(super) async fn send_deferred(&mut self) -> Result<()> {
        let (mut parts, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|w| w.reads_by_keys);
        let after = std::mem::take(&mut self.deferred_after);
        match self.backend {
            Backend::Postgres => {
                if rest.len() > 1 {
                    parts.push(sql::combine(rest));
                } else {
                    parts.extend(rest);
                }
                parts.extend(after);
            }
            Backend::Sqlite => {
                parts.extend(rest);
                parts.extend(after);
                if parts.len() > 1 {
                    parts = vec![sql::sequence(parts)];
                }
            }
        }
        for w in parts {
            self.query(w).execute(&mut *self.conn).await?;
        }
        Ok(())
    }

    fn query(
        &self,
        w: sql::Write,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(w.text));
        if w.reads_by_keys {
            query = sql::per_batch(self.backend, query);
        }
        sql::bind(query, w.args)
    }

    /// Writes everything staged so far.
    pub async fn flush(&mut self) -> Result<()> {
        self.finish(None).await
    }

    /// The batch's last write: everything staged and, on PostgreSQL, the announcement
    /// of what the batch wrote (see `replicas`), sent with its last statement.
    pub(super) async fn finish(&mut self, announce_as: Option<&str>) -> Result<()> {
        self.defer_identity();
        if !self.resources.is_empty() {
            let staged = std::mem::take(&mut self.resources);
            let replaced = std::mem::take(&mut self.replaced);
            // Once written, the database has newer versions than what was preloaded.
            for s in &staged {
                let key = (s.resource.resource_type.clone(), s.resource.id.clone());
                self.preloaded.remove(&key);
                self.absent.remove(&key);
            }
            self.deferred
                .extend(sql::write_resources(self.backend, &staged, &replaced));
            self.written.extend(staged.into_iter().map(|s| s.resource));
        }
        self.defer_facts();
        self.flush_notifications().await?;
        self.flush_authors().await?;
        self.flush_referrals(announce_as).await
    }

    /// The organisation whose bound client created `type/id`, if one did.
    pub async fn author(&mut self, resource_type: &str, id: &str) -> Result<Option<String>> {
        if let Some((.., org)) = self
            .authors
            .iter()
            .rev()
            .find(|(t, i, _)| t == resource_type && i == id)
        {
            return Ok(Some(org.clone()));
        }
        let row = sqlx::query(
            "SELECT organization FROM resource_authors WHERE res_type = $1 AND res_id = $2",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records that `organization`'s client created `type/id`.
    pub fn stage_author(&mut self, resource_type: &str, id: &str, organization: &str) {
        self.authors.push((
            resource_type.to_string(),
            id.to_string(),
            organization.to_string(),
        ));
    }

    /// Rare (only organisation-bound clients' creates): one statement per row.
    async fn flush_authors(&mut self) -> Result<()> {
        for (ty, id, org) in std::mem::take(&mut self.authors) {
            sqlx::query(
                "INSERT INTO resource_authors (res_type, res_id, organization) VALUES ($1, $2, $3) \
                 ON CONFLICT (res_type, res_id) DO NOTHING",
            )
            .bind(ty)
            .bind(id)
            .bind(org)
            .execute(&mut *self.conn)
            .await?;
        }
        Ok(())
    }
}

/// Sets up a new connection: the pool's, and each writer's own (`connect_own`).
async fn configure(
    conn: &mut AnyConnection,
    backend: Backend,
) -> std::result::Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        // Takes effect when the file is created. A write dirties a few
        // index pages at random keys, and each is written whole to the
        // WAL and again by the checkpoint: 2 KiB pages write 38 % fewer
        // bytes than 4 KiB per CBO accept (67 vs 109 KB), which is what
        // an fsync waits for.
        conn.execute("PRAGMA page_size = 2048").await?;
        // WAL lets readers run beside the writer. SQLite itself does not
        // fsync at COMMIT (NORMAL); the writer fsyncs the WAL before it
        // answers, overlapped with the next batch (see `writer`).
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.execute("PRAGMA synchronous = NORMAL").await?;
        conn.execute("PRAGMA busy_timeout = 5000").await?;
        // Checkpoints are done by a background task (see `writer`),
        // which also lets the WAL start over; a commit checkpoints only
        // if that task falls behind (past ~64 MB of WAL).
        conn.execute("PRAGMA wal_autocheckpoint = 32000").await?;
        // A larger page cache and memory-mapped reads keep a batch's index
        // pages in memory instead of spilling and re-reading them.
        conn.execute("PRAGMA cache_size = -32768").await?;
        conn.execute("PRAGMA mmap_size = 268435456").await?;
        conn.execute("PRAGMA temp_store = MEMORY").await?;
    } else {
        // Our statements are few, fixed and written for the indexes. By
        // default PostgreSQL plans a statement anew at every execution
        // while it guesses a generic plan costlier: a third of its CPU
        // on the FHIR search page. A generic plan is made again whenever
        // ANALYZE (autovacuum) updates a table's statistics.
        conn.execute("SET plan_cache_mode = force_generic_plan")
            .await?;
    }
    Ok(())
}

/// A connection outside the pool, set up like the pool's. A writer opens its own on its
/// thread, so that SQLite's worker thread for it is started there (see `writer`).
pub(super) async fn connect_own(pool: &AnyPool, backend: Backend) -> Result<AnyConnection> {
    let mut conn = sqlx::ConnectOptions::connect(&*pool.connect_options()).await?;
    configure(&mut conn, backend).await?;
    Ok(conn)
}

/// Waits for this process's turn at SQLite's write lock (see `Store::write_turn`);
/// nothing to wait for on PostgreSQL.
async fn take_turn(
    turn: Option<&std::sync::Arc<tokio::sync::Mutex<()>>>,
) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    match turn {
        Some(turn) => Some(turn.lock().await),
        None => None,
    }
}

/// Highest commit sequence so far (SQLite assigns sequences in the writer).
async fn max_seq(conn: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM resources")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::sqlite_creating;

    #[test]
    fn sqlite_urls_create_their_file_unless_they_say_otherwise() {
        assert_eq!(
            sqlite_creating("sqlite:///var/lib/crossway/db.sqlite"),
            "sqlite:///var/lib/crossway/db.sqlite?mode=rwc"
        );
        assert_eq!(
            sqlite_creating("sqlite://./data/c.db?cache=shared"),
            "sqlite://./data/c.db?cache=shared&mode=rwc"
        );
        for unchanged in [
            "sqlite://./data/c.db?mode=ro",
            "sqlite::memory:",
            "postgres://u@h/db",
        ] {
            assert_eq!(sqlite_creating(unchanged), unchanged);
        }
    }
}
