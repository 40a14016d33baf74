//! Group commit: one writer task per process takes every queued write command (up to
//! 256 at a time), runs them one after another inside a single transaction, writes what
//! they staged with a few multi-row statements, commits once, and only then answers each
//! caller.
//!
//! An fsync costs ~4 ms here; with one transaction per request that caps a store near
//! 250 writes/s. Batching turns N waiting requests into one fsync, and on SQLite the
//! fsync of batch N overlaps the execution of batch N+1: answers wait for it.
//!
//! # A batch
//! - **Preload.** Before a batch's commands run, the writer asks each what it will read
//!   ([`Command::preload`]: current versions to replace, referral rows) and reads them in
//!   one statement each, locking them on PostgreSQL as `Tx::current` would: each query is
//!   a round trip to the database thread, and the writer is serial. New persons,
//!   identifiers and inbound feed messages are staged too (`store::identity`): the batch
//!   reads the owners of all its identifiers and whether its messages were seen, one
//!   statement each, after taking their PostgreSQL advisory locks in one sorted
//!   statement; so an ADT message costs no round trip of its own and duplicates inside
//!   one batch are still caught.
//! - **Staging.** Commands *stage* their rows in memory (reads see staged rows first). A
//!   new version rewrites only the index rows that differ from the replaced version's (a
//!   status change touches one or two rows, not thirty). A command that fails is undone
//!   in memory (its staged rows are dropped). A command that writes rows straight to the
//!   transaction, or must search inside it (conditional create, conditional references),
//!   runs in a SAVEPOINT ([`Command::isolation`]) after what earlier commands staged has
//!   been written; so do commands that change stored identity rows (merges, unmerges,
//!   Patient writes that link or merge, replays).
//! - **Statements.** At the end the batch is written with a handful of statements. On
//!   PostgreSQL the inserts and upserts go as one, each a data-modifying sub-statement
//!   of a `WITH` (`sql::combine`); index-row deletes and the event counter bump follow on
//!   their own, then the events, their webhook deliveries and the `pg_notify`
//!   announcement as one statement. Identity and referral preloads read each key by its
//!   own index probe, and the other statements over a batch's keys are planned per
//!   execution, so that no plan is stuck with a young table's statistics. Index rows
//!   arrive as one binary-JSON argument (`jsonb_each` / `jsonb_array_elements`); version
//!   rows (with their large bodies) as bound values in groups of 32/16/8/4/2/1 rows on
//!   PostgreSQL, in groups of 32 padded with NULL rows on SQLite, so statement texts are
//!   few and prepared once. On SQLite the queued writes go to the library as one
//!   multi-statement text (`sql::sequence`): each statement sent alone is a hand-off to
//!   the connection's worker thread and back.
//! - **Timestamps.** New resources are serialised and indexed on the request's thread;
//!   the writer only patches in `meta.lastUpdated`, so that timestamps follow commit
//!   order within a process (what `_lastUpdated=gt…` polling needs; with several
//!   PostgreSQL writers or processes, pollers should overlap their window by a few
//!   seconds).
//!
//! # Threads
//! Each writer runs on a thread of its own, with a connection of its own opened there,
//! so a statement's answer resumes it at once instead of queueing behind the
//! connections' tasks or the other writer's work. The SQLite writer's thread is pinned
//! to one core, and the worker thread SQLite's driver starts for its connection inherits
//! that core: their many hand-offs per batch are then context switches on one core, not
//! wake-ups sent across.
//!
//! # SQLite: one writer per file, its own fsync and checkpoints
//! The writer begins its batches with `BEGIN IMMEDIATE`, so the few writes made outside
//! it (audit batches, `jti` claims, operator commands) make it wait on the lock rather
//! than fail its batch; the writer and the audit trail take the file's write lock in turn
//! through an in-process queue (SQLite's busy handler would sleep up to 100 ms). The
//! writer sets `synchronous=NORMAL` and fsyncs the WAL itself in a separate task before
//! answering, so batch N's fsync overlaps batch N+1's execution.
//!
//! A background task runs a PASSIVE checkpoint every 100 ms and fsyncs the database
//! file. The WAL can start over only at a write that begins after a checkpoint reached
//! its end, which a pass beside a busy writer never does; so once the WAL is past 8,000
//! frames the task runs a last pass in the writer's turn, and the next batch starts the
//! WAL over. Before it, passes beside the writer copy and flush what came in during the
//! previous pass until one takes under 4 ms, so the writer waits for a few milliseconds
//! of frames, not for all since the first pass. (SQLite's own way, the checkpoint at
//! commit, made the writer copy and flush up to 100 ms of frames while every caller
//! waited; it is left as a backstop past 32,000 frames.) The task flushes through one
//! descriptor it never closes: closing any descriptor of the file drops every POSIX lock
//! the process holds on it, SQLite's shared lock included, and another process that then
//! opens and closes the database (an operator's `sqlite3`, a backup) deletes the WAL from
//! under the gateway.
//!
//! New databases use 2 KiB pages: writes dirty index pages at random keys, each written
//! whole to the WAL and again by the checkpoint, and smaller pages write 38 % fewer
//! bytes per CBO accept, which is what fsyncs wait for.
//!
//! # PostgreSQL: two writers and a flush of their own
//! PostgreSQL gets two writers so one batch executes while the other commits (a third
//! measured slower), and each keeps its own queue: a command goes to the writer its
//! affinity key (the person a Patient or feed message names, the referral an action is
//! on) hashes to, so commands on one person share a batch instead of one writer waiting
//! on the other's locks. The writers commit with `synchronous_commit = off`, so COMMIT
//! releases the batch's row locks at once; the task that answers bumps a row of
//! `log_flushes` and commits that synchronously (PostgreSQL then flushes its log through
//! it and through every batch committed before it; a transaction that writes no log of
//! its own is committed without a flush), and only then answers. A batch committed by
//! an earlier run of the server than the one that flushed (`pg_postmaster_start_time()`;
//! a crash in between may have lost it) is answered with an error. Held through a flush,
//! the event counter row made the two writers take turns at the disk.
//!
//! On either store a reader may see a commit a few milliseconds before its log is
//! flushed; only the writer's own client is promised durability, and it is answered
//! after the flush.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::recent::RecentVersions;
use super::referral_index::ReferralIndex;

/// The in-memory views, brought up to date after each COMMIT.
struct Memory {
    recent: Arc<RecentVersions>,
    /// PostgreSQL: the name under which versions are announced (see `replicas`).
    origin: Option<String>,
    referrals: Arc<ReferralIndex>,
    turn: Option<Arc<Mutex<()>>>,
}
use super::{Backend, Preload, Store, StoreError, Tx};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What undoing a failed command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// It only stages rows: dropping them undoes it.
    None,
    /// It also writes rows straight to the transaction (identity, inbound messages):
    /// a savepoint undoes those. Staged rows stay staged, batched with the others.
    Savepoint,
    /// It searches inside the transaction: staged rows are written first, then a
    /// savepoint.
    Search,
}

/// A unit of work that runs inside the writer's transaction.
pub trait Command: Send + 'static {
    type Output: Send + 'static;
    type Error: From<StoreError> + Send + 'static;

    /// How the command must be separated from the others in its batch.
    fn isolation(&self) -> Isolation;

    /// What the command will read, so the batch reads it in one round trip.
    fn preload(&self, _wanted: &mut Preload) {}

    /// Commands with the same key (a person, a referral) go to the same writer, where
    /// they share a batch instead of one waiting on the other's locks until it commits.
    fn affinity(&self) -> Option<String> {
        None
    }

    fn apply<'a, 'c: 'a>(
        self,
        tx: &'a mut Tx<'c>,
    ) -> BoxFuture<'a, Result<Self::Output, Self::Error>>;
}

/// One writer's intake.
type Queue<C> = mpsc::Receiver<(C, Reply<C>)>;
type Intake<C> = mpsc::Sender<(C, Reply<C>)>;

type Reply<C> = oneshot::Sender<Result<<C as Command>::Output, <C as Command>::Error>>;

/// Largest number of commands in one transaction; bounds latency and lock time.
const MAX_BATCH: usize = 256;

pub struct Writer<C: Command> {
    /// One queue per writer.
    queues: Arc<[Intake<C>]>,
}

impl<C: Command> Clone for Writer<C> {
    fn clone(&self) -> Self {
        Writer {
            queues: self.queues.clone(),
        }
    }
}

impl<C: Command> Writer<C> {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(store: &Store) -> Writer<C> {
        let (committed, durable) = mpsc::unbounded_channel();
        // SQLite admits one writer. PostgreSQL runs two batches at once, so that one
        // executes while the other commits; row locks keep them from interfering.
        let writers = match store.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 2,
        };
        let mut queues = Vec::with_capacity(writers);
        // Each writer runs on a thread of its own: a statement's answer (from the
        // SQLite worker thread or the PostgreSQL socket) resumes it at once instead of
        // queueing behind the connections' tasks on the shared runtime, or behind the
        // other writer's work on the rows of its batch.
        for i in 0..writers {
            let (queue, rx) = mpsc::channel(4096);
            queues.push(queue);
            let run = run::<C>(
                store.pool.clone(),
                store.backend,
                Memory {
                    recent: store.recent.clone(),
                    origin: store.origin.clone(),
                    referrals: store.referral_index.clone(),
                    turn: store.write_turn.clone(),
                },
                rx,
                committed.clone(),
            );
            let backend = store.backend;
            std::thread::Builder::new()
                .name(format!("crossway-writer-{i}"))
                .spawn(move || {
                    if backend == Backend::Sqlite {
                        pin_to_one_core();
                    }
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("writer runtime");
                    runtime.block_on(run);
                })
                .expect("writer thread");
        }
        let flush = match &store.wal {
            Some(wal) => Flush::Wal(wal.clone()),
            None => Flush::Postgres(store.pool.clone(), None),
        };
        tokio::spawn(answer_when_durable::<C>(flush, durable));
        if let Some(wal) = &store.wal {
            let wal = wal.to_string_lossy();
            let database = wal.strip_suffix("-wal").unwrap_or(&wal).into();
            tokio::spawn(checkpoint(
                store.pool.clone(),
                database,
                store.write_turn.clone(),
            ));
        }
        Writer {
            queues: queues.into(),
        }
    }

    /// Commands waiting for a writer.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(waiting).sum()
    }

    /// Queues a command and waits until its transaction has committed (or failed).
    pub async fn submit(&self, command: C) -> Result<C::Output, C::Error> {
        let (reply, answer) = oneshot::channel();
        // With one writer (SQLite) there is nothing to choose: the key is not derived.
        let key = match self.queues.len() {
            1 => None,
            _ => command.affinity(),
        };
        let queue = match key {
            Some(key) => {
                use std::hash::BuildHasher;
                let hash = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
                    .hash_one(&key);
                &self.queues[(hash % self.queues.len() as u64) as usize]
            }
            None => self
                .queues
                .iter()
                .min_by_key(|q| waiting(q))
                .expect("at least one writer"),
        };
        queue
            .send((command, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

fn waiting<T>(queue: &mpsc::Sender<T>) -> usize {
    queue.max_capacity() - queue.capacity()
}

/// Answers of one committed batch, waiting for the commit to reach the disk.
type Answers<C> = Vec<(
    Reply<C>,
    Result<<C as Command>::Output, <C as Command>::Error>,
)>;

/// A committed batch and the run of the server that committed it (PostgreSQL: its start
/// time), so that a flush made after a restart is not taken for the flush of a commit
/// the restart lost.
struct Committed<C: Command> {
    server: Option<String>,
    answers: Answers<C>,
}

/// What a writer reads on a fresh connection: the highest commit sequence (SQLite
/// assigns sequences in the writer), and the server's run (see `Committed`).
async fn session(
    conn: &mut AnyConnection,
    backend: Backend,
) -> super::Result<(i64, Option<String>)> {
    match backend {
        Backend::Sqlite => Ok((super::max_seq(conn).await?, None)),
        Backend::Postgres => Ok((0, Some(server_run(conn).await?))),
    }
}

async fn server_run(conn: &mut AnyConnection) -> super::Result<String> {
    let row = sqlx::query("SELECT pg_postmaster_start_time()::text")
        .fetch_one(conn)
        .await?;
    Ok(row.get(0))
}

/// Keeps the SQLite writer on one core. Each statement is a hand-off between this
/// thread and its connection's worker thread, which `connect_own` starts from here, so
/// it inherits the same core: a hand-off is then a context switch on that core instead
/// of a wake-up sent to the other one. Measured on this 2-core VM with the MLLP
/// benchmark (the two threads pinned by hand, in alternating order): 3–27 % more
/// messages per second, in 6 of 6 pairs.
fn pin_to_one_core() {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.len() > 1
        && let Some(last) = cores.last()
    {
        core_affinity::set_for_current(*last);
    }
}

async fn run<C: Command>(
    pool: AnyPool,
    backend: Backend,
    memory: Memory,
    mut rx: Queue<C>,
    committed: mpsc::UnboundedSender<Committed<C>>,
) {
    let mut conn: Option<AnyConnection> = None;
    let mut next_seq: Option<i64> = None;
    let mut server: Option<String> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // (Re)connect lazily so the writer survives a database restart.
        if conn.is_none() {
            match super::connect_own(&pool, backend).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail_all(&mut batch, &e.to_string());
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connection acquired above");
        if next_seq.is_none() {
            match session(c, backend).await {
                Ok((seq, run)) => (next_seq, server) = (Some(seq), run),
                Err(e) => {
                    fail_all(&mut batch, &e.to_string());
                    conn = None;
                    continue;
                }
            }
        }
        let turn = super::take_turn(memory.turn.as_ref()).await;
        let ran = run_batch::<C>(c, backend, &memory, next_seq.unwrap_or(0), &mut batch).await;
        drop(turn);
        match ran {
            Ok((seq, answers)) => {
                next_seq = Some(seq);
                let _ = committed.send(Committed {
                    server: server.clone(),
                    answers,
                });
            }
            Err(msg) => {
                metrics::counter!(crate::telemetry::metrics::STORE_COMMIT_FAILURES).increment(1);
                tracing::warn!(message = "Write batch failed; nothing in it was acknowledged.", error = %msg);
                // The connection may be broken: start over on a fresh one and re-read
                // the sequence the store actually holds.
                conn = None;
                next_seq = None;
            }
        }
    }
}

/// Runs and commits one batch; returns the next commit sequence and the answers to
/// send once the commit is durable. On failure every caller in the batch gets an error
/// at once and the transaction is rolled back.
async fn run_batch<C: Command>(
    conn: &mut AnyConnection,
    backend: Backend,
    memory: &Memory,
    next_seq: i64,
    batch: &mut Vec<(C, Reply<C>)>,
) -> Result<(i64, Answers<C>), String> {
    let started = std::time::Instant::now();
    let size = batch.len();
    // Versions read in an earlier epoch of `recent` may be outdated (see `recent`).
    let epoch = memory.recent.epoch();
    // SQLite: take the write lock at BEGIN, so that another writer on the file (the
    // audit trail, the token endpoint, an operator command) makes this batch wait for
    // it instead of failing its first write with SQLITE_BUSY_SNAPSHOT.
    let begun = match backend {
        Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        // PostgreSQL: COMMIT returns before its WAL flush, and releases the batch's row
        // locks then; `answer_when_durable` waits for the flush (see there).
        Backend::Postgres => {
            conn.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await
        }
    };
    let begin = started.elapsed();
    let mut outer = match begun {
        Ok(t) => t,
        Err(e) => {
            fail_all(batch, &e.to_string());
            return Err(e.to_string());
        }
    };
    let mut results = Vec::with_capacity(size);
    let mut tx = Tx {
        conn: &mut outer,
        backend,
        next_seq,
        resources: Vec::new(),
        referrals: Vec::new(),
        events: Vec::new(),
        keys: Vec::new(),
        authors: Vec::new(),
        facts: Vec::new(),
        loaded: Vec::new(),
        preloaded: HashMap::new(),
        written_referrals: Vec::new(),
        written: Vec::new(),
        replaced: HashMap::new(),
        notifications: Vec::new(),
        absent: Default::default(),
        identity: Default::default(),
        identity_moves: 0,
        deferred: Vec::new(),
        deferred_after: Vec::new(),
    };
    let mut wanted = Preload::default();
    for (command, _) in batch.iter() {
        command.preload(&mut wanted);
    }
    let mut broken: Option<String> = tx.preload(&wanted).await.err().map(|e| e.to_string());
    let preloaded = started.elapsed();
    for (command, reply) in batch.drain(..) {
        if broken.is_some() {
            results.push((reply, None));
            continue;
        }
        let isolation = command.isolation();
        let result = if isolation != Isolation::None {
            match run_isolated(&mut tx, command, isolation == Isolation::Search).await {
                Ok(r) => r,
                Err(e) => {
                    broken = Some(e.to_string());
                    results.push((reply, None));
                    continue;
                }
            }
        } else {
            let mark = tx.mark();
            let r = command.apply(&mut tx).await;
            if r.is_err() {
                tx.rollback_to(mark);
            }
            r
        };
        results.push((reply, Some(result)));
    }
    let commands_done = started.elapsed();
    if broken.is_none()
        && let Err(e) = tx.finish(memory.origin.as_deref()).await
    {
        broken = Some(e.to_string());
    }
    let seq = tx.next_seq;
    let written = std::mem::take(&mut tx.written);
    let written_referrals = std::mem::take(&mut tx.written_referrals);
    let applied = started.elapsed();
    let committed = match broken {
        Some(msg) => Err(msg),
        None => outer.commit().await.map_err(|e| e.to_string()),
    };
    let committed_at = started.elapsed();
    match committed {
        Ok(()) => {
            memory.recent.offer_all(written, epoch);
            memory.referrals.apply(written_referrals);
            metrics::histogram!(crate::telemetry::metrics::STORE_COMMIT_LATENCY)
                .record(committed_at.as_secs_f64());
            metrics::histogram!(crate::telemetry::metrics::STORE_COMMIT_SIZE).record(size as f64);
            tracing::debug!(
                message = "Batch committed.",
                size,
                begin_us = begin.as_micros() as u64,
                preload_us = preloaded.as_micros() as u64,
                commands_us = commands_done.as_micros() as u64,
                apply_us = applied.as_micros() as u64,
                commit_us = (committed_at - applied).as_micros() as u64,
                memory_us = (started.elapsed() - committed_at).as_micros() as u64,
            );
            let answers = results
                .into_iter()
                .filter_map(|(reply, r)| r.map(|r| (reply, r)))
                .collect();
            Ok((seq, answers))
        }
        Err(msg) => {
            for (reply, _) in results {
                let _ = reply.send(Err(StoreError::Aborted(msg.clone()).into()));
            }
            Err(msg)
        }
    }
}

/// Runs one command in a savepoint. The outer error means the transaction itself is
/// unusable; the inner result is the command's own outcome.
async fn run_isolated<C: Command>(
    tx: &mut Tx<'_>,
    command: C,
    searches: bool,
) -> Result<Result<C::Output, C::Error>, StoreError> {
    // What earlier commands staged is written before the savepoint, so that undoing
    // this command cannot undo theirs.
    if searches {
        tx.flush().await?;
    } else {
        tx.flush_identity().await?;
    }
    tx.execute("SAVEPOINT command").await?;
    let mark = tx.mark();
    let mut result = command.apply(tx).await;
    if searches
        && result.is_ok()
        && let Err(e) = tx.flush().await
    {
        result = Err(e.into());
    }
    if result.is_err() {
        tx.rollback_to(mark);
        tx.identity.forget_reads();
        tx.execute("ROLLBACK TO SAVEPOINT command").await?;
    }
    tx.execute("RELEASE SAVEPOINT command").await?;
    Ok(result)
}

fn fail_all<C: Command>(batch: &mut Vec<(C, Reply<C>)>, message: &str) {
    for (_, reply) in batch.drain(..) {
        let _ = reply.send(Err(StoreError::Aborted(message.to_string()).into()));
    }
}

/// How a committed batch is made durable.
enum Flush {
    /// SQLite: fsync of the WAL file.
    Wal(std::path::PathBuf),
    /// PostgreSQL: a synchronous commit of a transaction of its own, on a connection
    /// kept for it.
    Postgres(AnyPool, Option<PoolConnection<sqlx::Any>>),
}

impl Flush {
    /// Flushes; on PostgreSQL returns the run of the server that flushed.
    async fn run(&mut self) -> Result<Option<String>, String> {
        match self {
            Flush::Wal(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_data())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map(|()| None)
                    .map_err(|e| format!("fsync of the write-ahead log failed: {e}"))
            }
            Flush::Postgres(pool, conn) => {
                // A synchronous commit of a transaction that wrote to the log returns
                // once the log is flushed through it: through every batch committed
                // before it (see migration 0018).
                if conn.is_none() {
                    *conn = Some(pool.acquire().await.map_err(|e| e.to_string())?);
                }
                let c = conn.as_mut().expect("acquired above");
                let flushed = sqlx::query(
                    "INSERT INTO log_flushes (slot, flushes) VALUES (pg_backend_pid() % 64, 1) \
                     ON CONFLICT (slot) DO UPDATE SET flushes = log_flushes.flushes + 1 \
                     RETURNING pg_postmaster_start_time()::text",
                )
                .fetch_one(&mut **c)
                .await;
                flushed.map(|row| Some(row.get(0))).map_err(|e| {
                    *conn = None;
                    format!("the flush of PostgreSQL's write-ahead log failed: {e}")
                })
            }
        }
    }
}

/// Sends the answers of committed batches once their commit is on disk, flushed here
/// so that the writer runs the next batch meanwhile; one flush covers every batch
/// committed before it started. On PostgreSQL this also keeps a batch's row locks
/// (a referral, an organisation's event counter) from being held through a flush,
/// which made the two writers take turns at the disk instead of sharing its flushes.
/// What a batch wrote is visible to readers from its COMMIT, before it is durable, as
/// on SQLite; nobody is told it is done before it is durable. A batch committed by
/// another run of the server than the one that flushed (it crashed in between, and
/// may have lost the commit) is answered with an error.
async fn answer_when_durable<C: Command>(
    mut flush: Flush,
    mut committed: mpsc::UnboundedReceiver<Committed<C>>,
) {
    let mut batches = Vec::new();
    while committed.recv_many(&mut batches, 1024).await > 0 {
        let started = std::time::Instant::now();
        let flushed = flush.run().await;
        metrics::histogram!(crate::telemetry::metrics::STORE_FLUSH_LATENCY)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &flushed {
            tracing::error!(message = "Committed batches could not be made durable.", error = %e);
        }
        for batch in batches.drain(..) {
            let refused = match &flushed {
                Ok(run) if *run == batch.server => None,
                Ok(_) => Some("the database restarted before the commit was flushed".to_string()),
                Err(e) => Some(e.clone()),
            };
            for (reply, result) in batch.answers {
                let result = match &refused {
                    None => result,
                    Some(e) => Err(StoreError::Aborted(e.clone()).into()),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// WAL length (in frames) past which [`checkpoint`] lets the log start over.
const RESTART_FRAMES: i64 = 8000;

/// A pass (copy and fsync) this short leaves little for the pass in the writer's turn.
const SHORT_PASS: std::time::Duration = std::time::Duration::from_millis(4);

/// Passes outside the writer's turn before the one inside it, at most.
const CATCH_UP_PASSES: usize = 4;

/// Copies the SQLite WAL back into the database file in the background, every 100 ms
/// (following every commit instead measured no better and took CPU from the writer),
/// and fsyncs the database file: PASSIVE never blocks the writer.
///
/// The WAL starts over only at a write that begins after a checkpoint reached its end,
/// which a pass beside a busy writer never does. SQLite's own answer, the checkpoint
/// at commit, made the writer copy up to 100 ms of frames and flush them, while every
/// caller waited: commit p99 41 ms on CBO accepts. So once the log is long, a last
/// pass holds the writer off, and the next commit starts the log over. Before it,
/// passes beside the writer copy and flush what came in during the previous one until
/// a pass is short: the last pass then copies and flushes a few milliseconds of
/// frames instead of everything since the first (a 35 ms stall of every writer with
/// 100,000 referrals). SQLite's checkpoint at commit stays as a backstop.
///
/// The database file is opened once and never closed: closing any descriptor of it
/// drops every POSIX lock this process holds on it, SQLite's included. Without its
/// shared lock, another process that opens the database (an operator's `sqlite3`, a
/// backup) believes itself the last user when it closes, and deletes the WAL and the
/// shared-memory index from under the gateway.
async fn checkpoint(pool: AnyPool, database: std::path::PathBuf, turn: Option<Arc<Mutex<()>>>) {
    let file = match std::fs::File::open(&database) {
        Ok(file) => Arc::new(file),
        Err(e) => {
            tracing::error!(message = "Cannot open the database file to flush it.", error = %e);
            return;
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    // A long round is not followed by another at once to make up for the ticks it took.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            std::mem::forget(file);
            return;
        }
        let frames = match copy_and_flush(&pool, &file).await {
            Some(frames) => frames,
            None => continue,
        };
        if frames < RESTART_FRAMES {
            continue;
        }
        for _ in 0..CATCH_UP_PASSES {
            let started = std::time::Instant::now();
            if copy_and_flush(&pool, &file).await.is_none() || started.elapsed() < SHORT_PASS {
                break;
            }
        }
        let _turn = super::take_turn(turn.as_ref()).await;
        let started = std::time::Instant::now();
        if let Err(e) = passive_checkpoint(&pool).await {
            tracing::warn!(message = "WAL checkpoint failed.", error = %e);
        }
        tracing::debug!(
            message = "WAL restarts.",
            frames,
            last_pass_us = started.elapsed().as_micros() as u64
        );
    }
}

/// One PASSIVE pass and an fsync of the database file; the WAL's length in frames, or
/// `None` after a failure (logged).
async fn copy_and_flush(pool: &AnyPool, file: &Arc<std::fs::File>) -> Option<i64> {
    let frames = match passive_checkpoint(pool).await {
        Ok(frames) => frames,
        Err(e) => {
            tracing::warn!(message = "WAL checkpoint failed.", error = %e);
            return None;
        }
    };
    let copy = file.clone();
    let synced = tokio::task::spawn_blocking(move || copy.sync_data()).await;
    if let Ok(Err(e)) = synced {
        tracing::warn!(message = "fsync of the database file failed.", error = %e);
        return None;
    }
    Some(frames)
}

/// Runs a PASSIVE checkpoint; returns the WAL's length in frames.
async fn passive_checkpoint(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
    Ok(frames)
}
