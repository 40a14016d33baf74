//! The audit trail: who read or changed personal data, when, through which face, with
//! what outcome. Records are queued and appended in batches by one task (a row per
//! request would cost a transaction per read); the table refuses UPDATE and DELETE.
//!
//! A crash loses at most the records of the last [`FLUSH_EVERY`], never a change: every
//! change is also in the resource history, with its version and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{AuditRecord, Store};

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BATCH: usize = 2000;

/// What one request did, for the trail.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    pub client_id: &'a str,
    pub organization: Option<&'a str>,
    pub face: &'static str,
    /// `C`, `R`, `U`, `D` or `E` (execute), as FHIR AuditEvent.action.
    pub action: &'static str,
    pub entity: String,
    pub detail: String,
    pub outcome: u16,
    pub trace_id: &'a str,
}

#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::UnboundedSender<AuditRecord>,
    /// Records queued and not yet appended: grows while the store is unreachable.
    pending: Arc<AtomicUsize>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime; it drains the queue when every
    /// sender is gone.
    pub fn start(store: Store) -> AuditLog {
        let (queue, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(flush_forever(store, rx, pending.clone()));
        AuditLog { queue, pending }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until every record queued so far is appended, or `limit` passes; true
    /// when nothing is left.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn record(&self, a: Access<'_>) {
        let record = AuditRecord {
            id: uuid::Uuid::now_v7().to_string(),
            recorded_at: crate::resource::datetime::now_micros(),
            client_id: a.client_id.to_string(),
            organization_id: a.organization.map(str::to_string),
            face: a.face.to_string(),
            action: a.action.to_string(),
            entity: a.entity,
            detail: a.detail,
            outcome: i64::from(a.outcome),
            trace_id: a.trace_id.to_string(),
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.queue.send(record).is_err() {
            tracing::error!(message = "Audit writer is gone; an access went unrecorded.");
        }
    }
}

async fn flush_forever(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<AuditRecord>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return;
        }
        if batch.len() < BATCH {
            // Let a burst gather into one statement.
            tokio::time::sleep(FLUSH_EVERY).await;
            while batch.len() < BATCH
                && let Ok(r) = rx.try_recv()
            {
                batch.push(r);
            }
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.append_audit(&batch).await {
            tracing::warn!(message = "Cannot append audit records; retrying.", count = batch.len(), error = %e);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        pending.fetch_sub(batch.len(), Ordering::Relaxed);
        batch.clear();
    }
}

/// `GET /fhir/AuditEvent`: the trail as FHIR AuditEvents, oldest first. Parameters:
/// `date` (with `ge`/`gt`/`le`/`lt`), `agent` (client id), `entity` (what was touched,
/// as recorded), `_count`, and `_after` (the cursor of the next-page link).
pub async fn search(
    store: &Store,
    params: &[(String, String)],
    base: &str,
) -> Result<String, crate::fhir::FhirError> {
    use crate::fhir::FhirError;
    use crate::resource::datetime::parse_range;
    let mut q = crate::store::AuditQuery {
        limit: 50,
        ..Default::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "date" => {
                let (prefix, rest) = match value.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
                    _ => ("eq", value.as_str()),
                };
                let range = parse_range(rest).ok_or_else(|| {
                    FhirError::invalid("date", format!("{value:?} is not a FHIR date or dateTime"))
                })?;
                match prefix {
                    "ge" => q.since = Some(range.lo),
                    "gt" => q.since = Some(range.hi),
                    "le" => q.until = Some(range.hi),
                    "lt" => q.until = Some(range.lo),
                    _ => {
                        q.since = Some(range.lo);
                        q.until = Some(range.hi);
                    }
                }
            }
            "agent" => q.client_id = Some(value.clone()),
            "entity" => q.entity = Some(value.clone()),
            "_after" => q.after = Some(value.clone()),
            "_count" => {
                q.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| FhirError::invalid("_count", "_count must be 1 to 1000"))?;
            }
            other => {
                return Err(FhirError::invalid(
                    other,
                    format!("AuditEvent supports date, agent, entity, _count; not {other}"),
                ));
            }
        }
    }
    let records = store.audit(&q).await.map_err(FhirError::Store)?;
    let mut links =
        vec![serde_json::json!({"relation": "self", "url": format!("{base}/AuditEvent")})];
    if records.len() as i64 == q.limit
        && let Some(last) = records.last()
    {
        let mut next: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "_after")
            .cloned()
            .collect();
        next.push(("_after".into(), last.id.clone()));
        let query = crate::fhir::bundle::encode_query(&next);
        links.push(
            serde_json::json!({"relation": "next", "url": format!("{base}/AuditEvent?{query}")}),
        );
    }
    let entries: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let resource = audit_event(r);
            serde_json::json!({"fullUrl": format!("{base}/AuditEvent/{}", r.id), "resource": resource, "search": {"mode": "match"}})
        })
        .collect();
    Ok(serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    })
    .to_string())
}

/// One record as a FHIR R4 AuditEvent (rest interaction, outcome 0 success / 4 minor
/// failure / 8 serious failure).
fn audit_event(r: &AuditRecord) -> serde_json::Value {
    let outcome = match r.outcome {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut agent = serde_json::json!({
        "who": {"identifier": {"system": "urn:crossway:client", "value": r.client_id}},
        "requestor": true,
    });
    if let Some(org) = &r.organization_id {
        agent["who"]["display"] = serde_json::json!(format!("Organization/{org}"));
    }
    serde_json::json!({
        "resourceType": "AuditEvent",
        "id": r.id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "action": r.action,
        "recorded": crate::resource::datetime::format_instant(r.recorded_at),
        "outcome": outcome,
        "outcomeDesc": format!("{} {}", r.detail, r.outcome),
        "agent": [agent],
        "source": {"site": r.face, "observer": {"display": "Crossway"}},
        "entity": [{"what": {"display": r.entity}, "description": format!("trace {}", r.trace_id)}],
    })
}
