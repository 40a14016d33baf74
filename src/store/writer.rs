//! Group commit: one writer task per process takes every queued write command, runs
//! them one after another inside a single transaction (each in its own savepoint, so one
//! failing command changes nothing and does not disturb the others), commits once, and
//! only then answers each caller.
//!
//! An fsync costs ~4 ms here; with one transaction per request that caps a store near
//! 250 writes/s. Batching turns N waiting requests into one fsync.

use std::future::Future;
use std::pin::Pin;

use sqlx::AnyPool;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, Store, StoreError, Tx};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A unit of work that runs inside the writer's transaction.
pub trait Command: Send + 'static {
    type Output: Send + 'static;
    type Error: From<StoreError> + Send + 'static;

    fn apply<'a, 'c: 'a>(
        self,
        tx: &'a mut Tx<'c>,
    ) -> BoxFuture<'a, Result<Self::Output, Self::Error>>;
}

type Reply<C> = oneshot::Sender<Result<<C as Command>::Output, <C as Command>::Error>>;

/// Largest number of commands in one transaction; bounds latency and lock time.
const MAX_BATCH: usize = 256;

pub struct Writer<C: Command> {
    queue: mpsc::Sender<(C, Reply<C>)>,
}

impl<C: Command> Clone for Writer<C> {
    fn clone(&self) -> Self {
        Writer {
            queue: self.queue.clone(),
        }
    }
}

impl<C: Command> Writer<C> {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(store: &Store) -> Writer<C> {
        let (queue, rx) = mpsc::channel(4096);
        tokio::spawn(run::<C>(store.pool.clone(), store.backend, rx));
        Writer { queue }
    }

    /// Queues a command and waits until its transaction has committed (or failed).
    pub async fn submit(&self, command: C) -> Result<C::Output, C::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((command, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

async fn run<C: Command>(pool: AnyPool, backend: Backend, mut rx: mpsc::Receiver<(C, Reply<C>)>) {
    let mut conn: Option<PoolConnection<sqlx::Any>> = None;
    let mut next_seq: Option<i64> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // (Re)connect lazily so the writer survives a database restart.
        if conn.is_none() {
            match pool.acquire().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let msg = e.to_string();
                    fail_all(&mut batch, || StoreError::Aborted(msg.clone()));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connection acquired above");
        if backend == Backend::Sqlite && next_seq.is_none() {
            match super::max_seq(c).await {
                Ok(s) => next_seq = Some(s),
                Err(e) => {
                    let msg = e.to_string();
                    fail_all(&mut batch, || StoreError::Aborted(msg.clone()));
                    conn = None;
                    continue;
                }
            }
        }
        let mut seq = next_seq.unwrap_or(0);
        let outcome = run_batch::<C>(c, backend, &mut seq, &mut batch).await;
        match outcome {
            Ok(()) => next_seq = next_seq.map(|_| seq),
            Err(()) => {
                // The connection may be broken; start the next batch on a fresh one and
                // re-read the sequence the store actually holds.
                conn = None;
                next_seq = None;
            }
        }
    }
}

/// Runs and commits one batch. On a failed COMMIT every caller gets the error.
async fn run_batch<C: Command>(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    next_seq: &mut i64,
    batch: &mut Vec<(C, Reply<C>)>,
) -> Result<(), ()> {
    let mut outer = match super::begin(conn).await {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            fail_all(batch, || StoreError::Aborted(msg.clone()));
            return Err(());
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut broken = None;
    for (command, reply) in batch.drain(..) {
        if broken.is_some() {
            results.push((reply, None));
            continue;
        }
        let mut savepoint = match super::begin(&mut outer).await {
            Ok(s) => s,
            Err(e) => {
                broken = Some(e.to_string());
                results.push((reply, None));
                continue;
            }
        };
        let seq_before = *next_seq;
        let result = {
            let mut tx = super::tx(&mut savepoint, backend, next_seq);
            match command.apply(&mut tx).await {
                Ok(out) => tx.flush().await.map(|_| out).map_err(C::Error::from),
                Err(e) => Err(e),
            }
        };
        let end = match &result {
            Ok(_) => savepoint.commit().await,
            Err(_) => {
                *next_seq = seq_before;
                savepoint.rollback().await
            }
        };
        if let Err(e) = end {
            broken = Some(e.to_string());
        }
        results.push((reply, Some(result)));
    }
    if let Some(msg) = broken {
        drop(outer);
        tracing::warn!(message = "Write batch abandoned.", error = %msg);
        for (reply, _) in results {
            let _ = reply.send(Err(StoreError::Aborted(msg.clone()).into()));
        }
        return Err(());
    }
    match outer.commit().await {
        Ok(()) => {
            for (reply, result) in results {
                if let Some(r) = result {
                    let _ = reply.send(r);
                }
            }
            Ok(())
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(message = "Commit failed.", error = %msg);
            for (reply, _) in results {
                let _ = reply.send(Err(StoreError::Aborted(msg.clone()).into()));
            }
            Err(())
        }
    }
}

fn fail_all<C: Command>(batch: &mut Vec<(C, Reply<C>)>, error: impl Fn() -> StoreError) {
    for (_, reply) in batch.drain(..) {
        let _ = reply.send(Err(error().into()));
    }
}
