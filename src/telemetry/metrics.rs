//! Prometheus metrics: the names (one place, so `deploy/prometheus/alerts.yml` and the
//! code cannot drift apart unnoticed: a test checks every name the rules use), the
//! recorder, and the scrape text.
//!
//! Counters and histograms are recorded where things happen, through the `metrics`
//! facade (a no-op until [`install`] runs, as in unit tests). Backlogs are read from the
//! store at each scrape: they are store-wide, so every replica reports the same figure
//! and alert rules take `max()` over replicas, not `sum()`.
//!
//! Labels take a few fixed values each; an error text never becomes a label.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{Backlog, CacheStats};

/// In-memory caches, by `cache` (`versions`, `views`): JSON bytes and entries held,
/// lookups that found or missed, entries dropped to stay within the memory budget.
pub const CACHE_BYTES: &str = "cache_bytes";
pub const CACHE_ENTRIES: &str = "cache_entries";
pub const CACHE_HITS: &str = "cache_hits_total";
pub const CACHE_MISSES: &str = "cache_misses_total";
pub const CACHE_EVICTIONS: &str = "cache_evictions_total";
/// HL7 v2 messages answered, by `ack` (AA, AE, AR, or `none` when the store could
/// not take it and no ACK was sent).
pub const HL7_MESSAGES: &str = "hl7_messages_received_total";
/// Feed messages taken although they deviate from the standard in a way with one
/// meaning, by `deviation` (`msh2-doubled-escape`).
pub const FEED_TOLERATED: &str = "feed_deviations_tolerated_total";
/// Codes a feed sent that a table does not map, carried through as sent under the
/// table's `keep` policy, by `table`.
pub const FEED_UNMAPPED_CODES: &str = "feed_unmapped_codes_kept_total";
/// From a framed message handed to the feed to its ACK, by `ack`.
pub const HL7_ACK_LATENCY: &str = "hl7_ack_latency_seconds";
/// Webhook delivery attempts, by `outcome` (delivered, retrying, failed).
pub const WEBHOOK_DELIVERIES: &str = "webhook_deliveries_total";
/// Endpoints disabled (each time). Not `webhook_endpoints_disabled_total`: an OpenMetrics
/// reader names a counter's family without `_total`, which would be the gauge
/// [`WEBHOOK_DISABLED`]'s name.
pub const WEBHOOK_ENDPOINTS_DISABLED: &str = "webhook_endpoint_disablements_total";
/// Requests on `/fhir` and `/cbo/v1`, by `face` and `status` class (2xx … 5xx).
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_LATENCY: &str = "http_request_duration_seconds";
/// Group commits: time from BEGIN to COMMIT, and commands per commit.
pub const STORE_COMMIT_LATENCY: &str = "store_commit_seconds";
pub const STORE_COMMIT_SIZE: &str = "store_commit_commands";
/// The flush that makes committed batches durable before they are answered; its tail
/// is every write's tail (PostgreSQL zero-filling a new WAL segment shows here).
pub const STORE_FLUSH_LATENCY: &str = "store_flush_seconds";
/// Write batches rolled back (the database was unreachable or refused them).
pub const STORE_COMMIT_FAILURES: &str = "store_commit_failures_total";

/// Gauges, set at each scrape.
pub const WEBHOOK_PENDING: &str = "webhook_deliveries_pending";
pub const WEBHOOK_LAG: &str = "webhook_delivery_lag_seconds";
pub const WEBHOOK_FAILED: &str = "webhook_deliveries_failed";
pub const WEBHOOK_DISABLED: &str = "webhook_endpoints_disabled";
pub const HL7_DEAD_LETTERS: &str = "hl7_dead_letters";
pub const IDENTITY_CONFLICTS_OPEN: &str = "identity_conflicts_open";
pub const STORE_UP: &str = "store_up";
/// EHR write-backs whose last attempt failed (store-wide).
pub const EHR_WRITEBACKS_STUCK: &str = "ehr_writebacks_stuck";
/// EHR write-back attempts that failed, by server and status (`gone`, `403`, `5xx` …).
pub const EHR_WRITEBACK_FAILURES: &str = "ehr_writeback_failures_total";
/// EHR Tasks found deleted on their server (their referrals withdrawn).
pub const EHR_TASKS_GONE: &str = "ehr_tasks_gone_total";
pub const STORE_WRITE_QUEUE: &str = "store_write_queue_depth";
pub const AUDIT_QUEUE: &str = "audit_queue_depth";

/// Latency buckets (seconds): an fsync here takes ~4 ms, a retried request seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// keeps its histograms trimmed.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORE_COMMIT_SIZE.into()), SIZE_BUCKETS)?
        .install_recorder()?;
    describe();
    // Counters exist from the start, so that rate() and increase() see their first
    // increment.
    for ack in ["AA", "AE", "AR", "none"] {
        metrics::counter!(HL7_MESSAGES, "ack" => ack).absolute(0);
    }
    for outcome in ["delivered", "retrying", "failed"] {
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(WEBHOOK_ENDPOINTS_DISABLED).absolute(0);
    metrics::counter!(STORE_COMMIT_FAILURES).absolute(0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HL7_MESSAGES, "HL7 v2 messages answered, by ACK code");
    describe_histogram!(HL7_ACK_LATENCY, "Time to ACK an HL7 v2 message");
    describe_counter!(
        FEED_TOLERATED,
        "Feed messages taken despite a deviation with one meaning, by deviation"
    );
    describe_counter!(
        FEED_UNMAPPED_CODES,
        "Unmapped codes carried through as sent (table policy keep), by table"
    );
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts, by outcome");
    describe_counter!(
        WEBHOOK_ENDPOINTS_DISABLED,
        "Webhook endpoints disabled after failing past the retry window"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by face and status class");
    describe_histogram!(HTTP_LATENCY, "HTTP request duration, by face");
    describe_histogram!(STORE_COMMIT_LATENCY, "Group commit: BEGIN to COMMIT");
    describe_histogram!(STORE_COMMIT_SIZE, "Commands per group commit");
    describe_histogram!(
        STORE_FLUSH_LATENCY,
        "Flush of the log that makes committed batches durable"
    );
    describe_counter!(STORE_COMMIT_FAILURES, "Write batches rolled back");
    describe_gauge!(WEBHOOK_PENDING, "Webhook deliveries waiting (store-wide)");
    describe_gauge!(
        WEBHOOK_LAG,
        "How far the most overdue webhook delivery is behind (store-wide)"
    );
    describe_gauge!(
        WEBHOOK_FAILED,
        "Webhook deliveries that exhausted their retries (store-wide)"
    );
    describe_gauge!(WEBHOOK_DISABLED, "Disabled webhook endpoints (store-wide)");
    describe_gauge!(HL7_DEAD_LETTERS, "Dead-letter feed messages (store-wide)");
    describe_gauge!(IDENTITY_CONFLICTS_OPEN, "Unresolved identity conflicts");
    describe_gauge!(STORE_UP, "1 when the store answered this scrape");
    describe_gauge!(
        EHR_WRITEBACKS_STUCK,
        "EHR write-backs whose last attempt failed (store-wide; crossway ehr stuck)"
    );
    describe_counter!(EHR_WRITEBACK_FAILURES, "Failed EHR write-back attempts");
    describe_counter!(EHR_TASKS_GONE, "EHR Tasks found deleted on their server");
    describe_gauge!(STORE_WRITE_QUEUE, "Writes queued for the next group commit");
    describe_gauge!(AUDIT_QUEUE, "Audit records not yet appended");
}

/// The scrape text. `backlog` is `None` when the store did not answer: its gauges
/// keep their last value and `store_up` says 0.
pub fn render(
    handle: &PrometheusHandle,
    backlog: Option<Backlog>,
    write_queue: usize,
    audit_queue: usize,
    caches: &[(&'static str, CacheStats)],
) -> String {
    use metrics::{counter, gauge};
    for (name, c) in caches {
        gauge!(CACHE_BYTES, "cache" => *name).set(c.bytes as f64);
        gauge!(CACHE_ENTRIES, "cache" => *name).set(c.entries as f64);
        counter!(CACHE_HITS, "cache" => *name).absolute(c.hits);
        counter!(CACHE_MISSES, "cache" => *name).absolute(c.misses);
        counter!(CACHE_EVICTIONS, "cache" => *name).absolute(c.evicted);
    }
    gauge!(STORE_UP).set(if backlog.is_some() { 1.0 } else { 0.0 });
    if let Some(b) = backlog {
        gauge!(WEBHOOK_PENDING).set(b.deliveries_pending as f64);
        gauge!(WEBHOOK_LAG).set(b.delivery_lag_micros as f64 / 1e6);
        gauge!(WEBHOOK_FAILED).set(b.deliveries_failed as f64);
        gauge!(WEBHOOK_DISABLED).set(b.endpoints_disabled as f64);
        gauge!(HL7_DEAD_LETTERS).set(b.dead_letters as f64);
        gauge!(IDENTITY_CONFLICTS_OPEN).set(b.identity_conflicts as f64);
        gauge!(EHR_WRITEBACKS_STUCK).set(b.ehr_writebacks_stuck as f64);
    }
    gauge!(STORE_WRITE_QUEUE).set(write_queue as f64);
    gauge!(AUDIT_QUEUE).set(audit_queue as f64);
    handle.render()
}

/// `2xx` … `5xx`: a bounded label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
