//! Delivery out. Deliveries are rows created with their events, in the writer's
//! transaction (`store::webhooks`: one per active, subscribed endpoint and event, by an
//! `INSERT … SELECT` right after the batch's events). [`Dispatcher`] workers (two per
//! process by default, in any number of processes) claim up to 256 due ones under a
//! lease (`claimed_until`, long enough for every request of the claim to time out;
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, the file's write lock on SQLite), send them
//! 64 at a time, and record successes in one statement, failures one by one with the
//! next attempt from [`RetryPolicy`] (backoff with jitter for 72 h, then `failed`). An
//! endpoint failing for the whole window is disabled, and in the same transaction a
//! `webhook.endpoint_disabled` event goes to its organisation's feed.
//!
//! A delivery goes to the first registered [`Sink`] that takes it (FHIR Subscription
//! notifications, connector requests: registered at start by `startup`), else it is a
//! Standard Webhook signed with [`sign`] (HMAC-SHA256, aws-lc-rs) whose body, the
//! event feed's item, is built from the `events` row at send time by the [`EventBody`]
//! handed in. The outbox names none of its sinks (the layer rule of `tests/tidy.rs`).
//! Tenant addresses are dialled through [`tenant_client`] ([`destination`]); tenants
//! see a coarse delivery error, the cause goes to the log.
//!
//! Invariants: a delivery is sent by one worker per attempt (the lease); its
//! `webhook-id` is its event's id in every attempt, so receivers deduplicate; nothing
//! is ever deleted by the dispatcher (a delivery goes only with its endpoint).

pub mod destination;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::resource::datetime::now_micros;
use crate::store::{DueDelivery, Event, Store};
use crate::telemetry::metrics::{WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS_DISABLED};

/// When to retry, and for how long.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delays after the 1st, 2nd, … failure; the last repeats.
    pub delays: Vec<Duration>,
    /// A delivery older than this that fails again is failed for good; an endpoint
    /// failing for longer than this is disabled.
    pub give_up_after: Duration,
    /// ± this fraction of each delay, at random.
    pub jitter: f64,
}

impl RetryPolicy {
    /// cbo-api.md §4: 10 s, 1 min, 5 min, 30 min, 2 h, 6 h, then every 12 h, for 72 h;
    /// `scale` shrinks every interval (tests run a three-day schedule in seconds).
    pub fn standard(scale: f64) -> RetryPolicy {
        let s = |secs: f64| Duration::from_secs_f64(secs * scale);
        RetryPolicy {
            delays: vec![
                s(10.0),
                s(60.0),
                s(300.0),
                s(1800.0),
                s(7200.0),
                s(21600.0),
                s(43200.0),
            ],
            give_up_after: s(72.0 * 3600.0),
            jitter: 0.2,
        }
    }

    /// The delay after `failures` failed attempts (1-based), jittered.
    pub fn delay(&self, failures: i64) -> Duration {
        let i = (failures.max(1) as usize - 1).min(self.delays.len() - 1);
        let base = self.delays[i].as_secs_f64();
        let mut r = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut r);
        let unit = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX); // 0..=1
        Duration::from_secs_f64(base * (1.0 + self.jitter * (2.0 * unit - 1.0)))
    }
}

/// A delivery that did not succeed: the answer's status, if any, and why (what the
/// delivery log shows).
#[derive(Debug)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
}

impl Failure {
    pub fn new(error: impl Into<String>) -> Failure {
        Failure {
            status: None,
            error: error.into(),
        }
    }
}

/// The HTTP client for calls to systems the operator configured (connectors, EHRs):
/// rustls, no redirects followed (a redirect could carry a token elsewhere), `timeout`
/// per request.
pub fn client(timeout: Duration) -> reqwest::Client {
    builder(timeout)
        .build()
        .expect("a reqwest client with rustls builds")
}

/// [`client`] for addresses a tenant registered (webhook endpoints, Subscription
/// channels): names connect only to public addresses ([`destination`]).
pub fn tenant_client(timeout: Duration, allow_loopback: bool) -> reqwest::Client {
    builder(timeout)
        .dns_resolver(Arc::new(destination::PublicOnly { allow_loopback }))
        .no_proxy()
        .build()
        .expect("a reqwest client with rustls builds")
}

/// The `User-Agent` of every request the gateway sends out (webhooks, connectors,
/// Subscription notifications), so receivers can tell it in their logs.
pub const USER_AGENT: &str = concat!(
    "Crossway/",
    env!("CARGO_PKG_VERSION"),
    " (+https://crossway.dev/webhooks)"
);

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
}

/// A kind of endpoint delivered otherwise than as a signed webhook (a FHIR
/// Subscription's notification, a connector's request to a case system). Sinks are
/// registered when the gateway starts; the outbox names none of them.
pub trait Sink: Send + Sync {
    /// Whether this sink sends `d`.
    fn takes(&self, d: &DueDelivery) -> bool;
    /// Sends `d`: the status the receiver answered, or why not. The dispatcher bounds
    /// the whole of it by its timeout.
    fn deliver<'a>(
        &'a self,
        d: &'a DueDelivery,
    ) -> futures_util::future::BoxFuture<'a, Result<u16, Failure>>;
}

/// The body of a signed webhook for a stored event (the CBO API's event form).
pub type EventBody = fn(Event) -> serde_json::Value;

/// Deliveries claimed at once by one worker.
const CLAIM: usize = 256;

pub struct Dispatcher {
    store: Store,
    http: reqwest::Client,
    policy: RetryPolicy,
    /// How long a receiver has to answer.
    timeout: Duration,
    /// Deliveries in flight at once, across endpoints.
    concurrency: usize,
    /// The other kinds of endpoint, asked in order.
    sinks: Vec<Arc<dyn Sink>>,
    event_body: EventBody,
    /// Loopback endpoints allowed (`CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1`).
    allow_loopback: bool,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

impl Dispatcher {
    pub fn new(
        store: Store,
        policy: RetryPolicy,
        timeout: Duration,
        sinks: Vec<Arc<dyn Sink>>,
        event_body: EventBody,
        allow_loopback: bool,
    ) -> Dispatcher {
        Dispatcher {
            store,
            sinks,
            event_body,
            timeout,
            http: tenant_client(timeout, allow_loopback),
            policy,
            concurrency: 64,
            allow_loopback,
        }
    }

    /// Claims and sends due deliveries until `shutdown`; a claim in hand is finished.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut idle = Duration::from_millis(20);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.pass().await {
                Ok(0) => {
                    tokio::select! {
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    idle = (idle * 2).min(Duration::from_millis(200));
                }
                Ok(_) => idle = Duration::from_millis(20),
                Err(e) => {
                    tracing::warn!(message = "Webhook dispatcher cannot reach the store; retrying.", error = %e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One claim-and-send round; returns how many deliveries it handled.
    pub async fn pass(&self) -> Result<usize, crate::store::StoreError> {
        let now = now_micros();
        // The lease outlives the slowest the claim can take (every request timing out,
        // `concurrency` at a time), so no other worker sends these in this attempt.
        let rounds = CLAIM.div_ceil(self.concurrency) as i64 + 1;
        let lease = now + rounds * self.timeout.as_micros() as i64 + 5_000_000;
        let due = self.store.claim_due(now, lease, CLAIM as i64).await?;
        let count = due.len();
        if count == 0 {
            return Ok(0);
        }
        let results: Vec<(DueDelivery, Outcome)> = futures_util::stream::iter(due)
            .map(|d| async move {
                let outcome = self.send(&d).await;
                (d, outcome)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let now = now_micros();
        // Successes by the status they got: one statement each (per 200 rows).
        let mut delivered: std::collections::BTreeMap<u16, Vec<(String, i64)>> = Default::default();
        let mut healthy: Vec<String> = Vec::new();
        // Endpoints that failed in this round, once each: their health is one write.
        let mut failing: Vec<&DueDelivery> = Vec::new();
        for (d, outcome) in &results {
            match outcome {
                Outcome::Delivered(status) => {
                    if d.failing_since.is_some() && !healthy.contains(&d.endpoint_id) {
                        healthy.push(d.endpoint_id.clone());
                    }
                    delivered
                        .entry(*status)
                        .or_default()
                        .push((d.endpoint_id.clone(), d.event_seq));
                }
                Outcome::Failed { status, error } => {
                    self.failed(d, *status, error, now).await?;
                    if !failing.iter().any(|f| f.endpoint_id == d.endpoint_id) {
                        failing.push(d);
                    }
                }
            }
        }
        let give_up = self.policy.give_up_after.as_micros() as i64;
        for d in failing {
            match d.failing_since {
                None => {
                    self.store
                        .endpoint_health(&d.endpoint_id, true, now)
                        .await?
                }
                Some(since) if now - since > give_up => {
                    if self.store.disable_endpoint(&d.endpoint_id, now).await? {
                        metrics::counter!(WEBHOOK_ENDPOINTS_DISABLED).increment(1);
                        tracing::warn!(message = "Webhook endpoint disabled: it has failed for longer than the retry window.", endpoint = %d.endpoint_id, organization = %d.organization);
                    }
                }
                Some(_) => {}
            }
        }
        for (status, keys) in delivered {
            self.store.delivered(&keys, i64::from(status), now).await?;
            metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => "delivered")
                .increment(keys.len() as u64);
        }
        for id in healthy {
            self.store.endpoint_health(&id, false, now).await?;
            tracing::info!(message = "Webhook endpoint recovered.", endpoint = %id);
        }
        Ok(count)
    }

    async fn failed(
        &self,
        d: &DueDelivery,
        status: Option<u16>,
        error: &str,
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
        let failures = d.attempts + 1;
        let give_up = self.policy.give_up_after.as_micros() as i64;
        let next = now + self.policy.delay(failures).as_micros() as i64;
        let expired = next - d.created_at > give_up;
        self.store
            .attempt_failed(
                &d.endpoint_id,
                d.event_seq,
                status.map(i64::from),
                error,
                (!expired).then_some(next),
                now,
            )
            .await?;
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => if expired { "failed" } else { "retrying" })
            .increment(1);
        if expired {
            tracing::warn!(message = "Webhook delivery failed for good.", endpoint = %d.endpoint_id, sequence = d.event_seq, attempts = failures, error);
        } else if d.attempts == 0 {
            tracing::info!(message = "Webhook delivery failed; retrying with backoff.", endpoint = %d.endpoint_id, sequence = d.event_seq, error);
        }
        Ok(())
    }

    /// A delivery another module builds (a connector may also ask for a token): the
    /// whole of it gets the one timeout, so the claim's lease still covers it.
    async fn bounded(
        &self,
        delivery: impl std::future::Future<Output = Result<u16, Failure>>,
    ) -> Outcome {
        match tokio::time::timeout(self.timeout, delivery).await {
            Ok(Ok(status)) => Outcome::Delivered(status),
            Ok(Err(f)) => Outcome::Failed {
                status: f.status,
                error: f.error,
            },
            Err(_) => Outcome::Failed {
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        }
    }

    async fn send(&self, d: &DueDelivery) -> Outcome {
        if let Some(sink) = self.sinks.iter().find(|s| s.takes(d)) {
            return self.bounded(sink.deliver(d)).await;
        }
        // Judged again before every send: the row may predate a stricter rule.
        if let Some(problem) = destination::url_problem(&d.url, self.allow_loopback) {
            tracing::warn!(message = "Webhook endpoint refused as a destination.", endpoint = %d.endpoint_id, problem);
            return Outcome::Failed {
                status: None,
                error: format!("the endpoint's URL {problem}"),
            };
        }
        let (id, body) = payload(d, self.event_body);
        let timestamp = now_micros() / 1_000_000;
        let mut secrets = vec![d.secret.as_str()];
        if let (Some(previous), Some(until)) = (&d.previous_secret, d.previous_expires_at)
            && until > now_micros()
        {
            secrets.push(previous);
        }
        let signature = match sign::signature(&secrets, &id, timestamp, body.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: e.to_string(),
                };
            }
        };
        let sent = self
            .http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered(r.status().as_u16()),
            Ok(r) => Outcome::Failed {
                status: Some(r.status().as_u16()),
                error: format!("the endpoint answered {}", r.status()),
            },
            Err(e) if e.is_timeout() => Outcome::Failed {
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
            Err(e) => {
                // The tenant sees only that the endpoint could not be reached: the
                // causes (refused, TLS alerts, certificate names) describe whatever
                // answered, which is for operators.
                tracing::info!(message = "Webhook endpoint unreachable.", endpoint = %d.endpoint_id, error = %causes(&e.without_url()));
                Outcome::Failed {
                    status: None,
                    error: UNREACHABLE.into(),
                }
            }
        }
    }
}

/// What a tenant's delivery log says of a connection that failed, whatever the cause.
pub const UNREACHABLE: &str = "cannot reach the endpoint (connection or TLS failed)";

/// An error with its causes (reqwest's own text names only the step that failed).
/// Callers strip the URL first: it could carry a token in its query.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// (`webhook-id`, body): the event as the feed shows it (thin, id-only).
fn payload(d: &DueDelivery, event_body: EventBody) -> (String, String) {
    if let Some(p) = &d.payload {
        let id = serde_json::from_str::<serde_json::Value>(p)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("evt_{}_{}", d.organization, d.event_seq));
        return (id, p.clone());
    }
    match &d.event {
        Some(e) => {
            let body = event_body(e.clone()).to_string();
            (e.id.clone(), body)
        }
        // The event was pruned by retention; say so rather than send nothing.
        None => {
            let id = format!("evt_{}_{}", d.organization, d.event_seq);
            let body = json!({"id": id, "type": "event.expired", "sequence": d.event_seq});
            (id, body.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_jitter() {
        let p = RetryPolicy::standard(1.0);
        let secs = |n| p.delay(n).as_secs_f64();
        assert!((8.0..=12.0).contains(&secs(1)));
        assert!((48.0..=72.0).contains(&secs(2)));
        assert!((34560.0..=51840.0).contains(&secs(7)));
        assert!(
            (34560.0..=51840.0).contains(&secs(30)),
            "the last delay repeats"
        );
        // Three days of retries take at least nine attempts.
        let mut elapsed = 0.0;
        let mut attempts = 0;
        while elapsed < p.give_up_after.as_secs_f64() {
            attempts += 1;
            elapsed += secs(attempts);
        }
        assert!(attempts >= 9, "{attempts}");
    }
}
