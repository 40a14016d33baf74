//! Webhook endpoints and deliveries. Deliveries are created by the writer, in the
//! transaction that writes their event (`fan_out`); workers in any process claim due
//! ones with a lease (`claim_due`) and record each attempt.

use sqlx::Row;

use super::{Backend, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    pub id: String,
    pub organization_id: String,
    pub url: String,
    pub description: String,
    /// `*` or ` type type … ` (space-padded).
    pub event_types: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires_at: Option<i64>,
    /// `active` or `disabled`; a connector's also `inactive` or `retired`.
    pub status: String,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    /// The connector's rule id, for a connector's endpoint (managed by its mappings).
    pub connector: Option<String>,
}

/// A delivery as its owner sees it in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub endpoint_id: String,
    pub event_seq: i64,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub endpoint_id: String,
    pub organization: String,
    pub event_seq: i64,
    pub attempts: i64,
    pub created_at: i64,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires_at: Option<i64>,
    pub failing_since: Option<i64>,
    /// Set when the endpoint is a connector's: the request is built from its mappings.
    pub connector: Option<String>,
    /// The body: a test event's stored payload, or built from the event row.
    pub payload: Option<String>,
    pub event: Option<super::Event>,
}

/// Creates the deliveries of new events for every active endpoint subscribed to their
/// type. `$1` is a JSON array of the events' (organisation, sequence, type, created
/// at): built from the rows being written rather than read back, so that on PostgreSQL
/// it travels in one statement with the events' own insert.
pub(super) fn fan_out_sql(backend: Backend) -> String {
    let (from, org, seq, event_type, at) = match backend {
        Backend::Sqlite => (
            "jsonb_each(jsonb($1)) AS e",
            "e.value ->> 0",
            "e.value ->> 1",
            "e.value ->> 2",
            "e.value ->> 3",
        ),
        Backend::Postgres => (
            "jsonb_array_elements($1::jsonb) AS e",
            "e ->> 0",
            "(e ->> 1)::bigint",
            "e ->> 2",
            "(e ->> 3)::bigint",
        ),
    };
    format!(
        "INSERT INTO webhook_deliveries \
         (endpoint_id, organization, event_seq, status, attempts, next_attempt_at, created_at) \
         SELECT w.id, w.organization_id, {seq}, 'pending', 0, {at}, {at} \
         FROM {from} JOIN webhook_endpoints w ON w.organization_id = {org} \
         WHERE w.status = 'active' \
         AND (w.event_types = '*' OR w.event_types LIKE '% ' || ({event_type}) || ' %')"
    )
}

const ENDPOINT_COLUMNS: &str = "id, organization_id, url, description, event_types, secret, \
     previous_secret, previous_expires_at, status, failing_since, created_at, connector";

/// `($first, $first+1), …`: placeholders for `n` (endpoint, sequence) keys.
fn key_pairs(n: usize, first: usize) -> String {
    (0..n)
        .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoint_row(r: &sqlx::any::AnyRow) -> EndpointRow {
    EndpointRow {
        id: r.get(0),
        organization_id: r.get(1),
        url: r.get(2),
        description: r.get(3),
        event_types: r.get(4),
        secret: r.get(5),
        previous_secret: r.get(6),
        previous_expires_at: r.get(7),
        status: r.get(8),
        failing_since: r.get(9),
        created_at: r.get(10),
        connector: r.get(11),
    }
}

impl Store {
    pub async fn insert_endpoint(&self, e: &EndpointRow) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )))
        .bind(&e.id)
        .bind(&e.organization_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(&e.event_types)
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_expires_at)
        .bind(&e.status)
        .bind(e.failing_since)
        .bind(e.created_at)
        .bind(&e.connector)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn endpoints_of(&self, organization: &str) -> Result<Vec<EndpointRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE organization_id = $1 \
             AND status <> 'retired' ORDER BY created_at, id"
        )))
        .bind(organization)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(endpoint_row).collect())
    }

    /// An organisation's endpoint (another organisation's is not found).
    pub async fn endpoint(&self, organization: &str, id: &str) -> Result<Option<EndpointRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE organization_id = $1 AND id = $2 \
             AND status <> 'retired'"
        )))
        .bind(organization)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(endpoint_row))
    }

    /// Removes an endpoint and its deliveries; false when it is not this organisation's.
    pub async fn delete_endpoint(&self, organization: &str, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("DELETE FROM webhook_endpoints WHERE organization_id = $1 AND id = $2")
                .bind(organization)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    pub async fn rotate_endpoint_secret(
        &self,
        organization: &str,
        id: &str,
        secret: &str,
        previous_expires_at: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = $3, \
             secret = $4 WHERE organization_id = $1 AND id = $2",
        )
        .bind(organization)
        .bind(id)
        .bind(previous_expires_at)
        .bind(secret)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// A `webhook.test` event for one endpoint: a real event of the organisation's feed
    /// (the next sequence, status `test`), delivered to that endpoint only. `payload`
    /// builds the body from the event's sequence and id.
    pub async fn enqueue_test_event(
        &self,
        endpoint: &EndpointRow,
        now: i64,
        payload: impl FnOnce(i64, &str) -> String,
    ) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let seq: i64 = sqlx::query(
            "INSERT INTO tenant_counters (organization, last_seq) VALUES ($1, 1) \
             ON CONFLICT (organization) DO UPDATE SET last_seq = tenant_counters.last_seq + 1 \
             RETURNING last_seq",
        )
        .bind(&endpoint.organization_id)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO events (organization, seq, event_type, referral_id, created_at, id, \
             status, version, endpoint_id) \
             VALUES ($1, $2, 'webhook.test', '', $3, $4, 'test', 0, $5)",
        )
        .bind(&endpoint.organization_id)
        .bind(seq)
        .bind(now)
        .bind(&id)
        .bind(&endpoint.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, organization, event_seq, status, \
             attempts, next_attempt_at, payload, created_at) VALUES ($1, $2, $3, 'pending', 0, $4, $5, $4)",
        )
        .bind(&endpoint.id)
        .bind(&endpoint.organization_id)
        .bind(seq)
        .bind(now)
        .bind(payload(seq, &id))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn deliveries_of(&self, endpoint_id: &str, limit: i64) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(
            "SELECT d.endpoint_id, d.event_seq, COALESCE(e.event_type, 'webhook.test'), d.status, \
             d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, \
             d.created_at, d.delivered_at \
             FROM webhook_deliveries d LEFT JOIN events e \
             ON e.organization = d.organization AND e.seq = d.event_seq \
             WHERE d.endpoint_id = $1 ORDER BY d.created_at DESC, d.event_seq DESC LIMIT $2",
        )
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DeliveryRow {
                endpoint_id: r.get(0),
                event_seq: r.get(1),
                event_type: r.get(2),
                status: r.get(3),
                attempts: r.get(4),
                next_attempt_at: r.get(5),
                last_attempt_at: r.get(6),
                last_status: r.get(7),
                last_error: r.get(8),
                created_at: r.get(9),
                delivered_at: r.get(10),
            })
            .collect())
    }

    /// Sends a delivery again (whatever its state: at-least-once); false when missing.
    pub async fn redeliver(&self, endpoint_id: &str, seq: i64, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, \
             claimed_until = 0, created_at = $3 WHERE endpoint_id = $1 AND event_seq = $2",
        )
        .bind(endpoint_id)
        .bind(seq)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Claims up to `limit` due deliveries until `lease_until`: no other worker, in
    /// this process or another, takes them before the lease ends.
    pub async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>> {
        // An idle poll only reads: on SQLite an UPDATE takes the file's write lock even
        // when it matches nothing, and the resource writer would wait for it.
        let any = sqlx::query(
            "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND claimed_until <= $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let claim = format!(
            "UPDATE webhook_deliveries SET claimed_until = $1 \
             WHERE (endpoint_id, event_seq) IN (SELECT endpoint_id, event_seq FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $2 AND claimed_until <= $2 \
             AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE status = 'active') \
             ORDER BY next_attempt_at LIMIT $3{lock}) \
             RETURNING endpoint_id, event_seq"
        );
        let claimed = sqlx::query(sqlx::AssertSqlSafe(claim))
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut due = Vec::with_capacity(claimed.len());
        for chunk in claimed.chunks(100) {
            let keys: Vec<(String, i64)> = chunk.iter().map(|r| (r.get(0), r.get(1))).collect();
            let text = format!(
                "SELECT d.endpoint_id, d.organization, d.event_seq, d.attempts, d.created_at, \
                 w.url, w.secret, w.previous_secret, w.previous_expires_at, w.failing_since, d.payload, \
                 e.id, e.event_type, e.referral_id, e.status, e.version, e.created_at, w.connector, \
                 e.endpoint_id \
                 FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
                 LEFT JOIN events e ON e.organization = d.organization AND e.seq = d.event_seq \
                 WHERE (d.endpoint_id, d.event_seq) IN ({})",
                key_pairs(keys.len(), 1)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
            for (id, seq) in &keys {
                q = q.bind(id.clone()).bind(*seq);
            }
            for r in q.fetch_all(&self.pool).await? {
                let event_id: Option<String> = r.get(11);
                due.push(DueDelivery {
                    endpoint_id: r.get(0),
                    organization: r.get(1),
                    event_seq: r.get(2),
                    attempts: r.get(3),
                    created_at: r.get(4),
                    url: r.get(5),
                    secret: r.get(6),
                    previous_secret: r.get(7),
                    previous_expires_at: r.get(8),
                    failing_since: r.get(9),
                    payload: r.get(10),
                    connector: r.get(17),
                    event: event_id.map(|id| super::Event {
                        id,
                        seq: r.get(2),
                        event_type: r.get(12),
                        referral_id: r.get(13),
                        status: r.get(14),
                        version: r.get(15),
                        created_at: r.get(16),
                        endpoint_id: r.get(18),
                    }),
                });
            }
        }
        Ok(due)
    }

    /// Marks deliveries delivered, in one statement.
    pub async fn delivered(&self, keys: &[(String, i64)], status: i64, now: i64) -> Result<()> {
        for chunk in keys.chunks(200) {
            let text = format!(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, \
                 last_attempt_at = $1, last_status = $2, last_error = NULL, delivered_at = $1, \
                 claimed_until = 0 WHERE (endpoint_id, event_seq) IN ({})",
                key_pairs(chunk.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text))
                .bind(now)
                .bind(status);
            for (id, seq) in chunk {
                q = q.bind(id.clone()).bind(*seq);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Records a failed attempt: retry at `next`, or `failed` for good when `None`.
    pub async fn attempt_failed(
        &self,
        endpoint_id: &str,
        seq: i64,
        status: Option<i64>,
        error: &str,
        next: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $3, \
             last_status = $4, last_error = $5, claimed_until = 0, \
             status = CASE WHEN $6 < 0 THEN 'failed' ELSE 'pending' END, \
             next_attempt_at = CASE WHEN $6 < 0 THEN next_attempt_at ELSE $6 END \
             WHERE endpoint_id = $1 AND event_seq = $2",
        )
        .bind(endpoint_id)
        .bind(seq)
        .bind(now)
        .bind(status)
        .bind(error)
        .bind(next.unwrap_or(-1))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An endpoint's failure streak starts (kept if running), or ends.
    pub async fn endpoint_health(&self, endpoint_id: &str, failing: bool, now: i64) -> Result<()> {
        let text = if failing {
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1"
        } else {
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
        };
        sqlx::query(text)
            .bind(endpoint_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Disables an endpoint that has failed for too long; true when this call did it.
    /// Disables an endpoint and, in the same transaction, tells its organisation
    /// through the event feed (`webhook.endpoint_disabled`, delivered to its other
    /// endpoints too), or puts a FHIR Subscription in `error`; false when it was not
    /// active.
    pub async fn disable_endpoint(&self, endpoint_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(organization) = sqlx::query(
            "UPDATE webhook_endpoints SET status = 'disabled', disabled_at = $2 \
             WHERE id = $1 AND status = 'active' RETURNING organization_id",
        )
        .bind(endpoint_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get::<String, _>(0)) else {
            return Ok(false);
        };
        // A FHIR Subscription's subscriber learns it from the subscription's status.
        if let Some(subscription) = endpoint_id.strip_prefix("subscription:") {
            sqlx::query(
                "UPDATE subscriptions SET status = 'error', error_since = $2 \
                 WHERE id = $1 AND status = 'active'",
            )
            .bind(subscription)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(true);
        }
        let seq: i64 = sqlx::query(
            "INSERT INTO tenant_counters (organization, last_seq) VALUES ($1, 1) \
             ON CONFLICT (organization) DO UPDATE SET last_seq = tenant_counters.last_seq + 1 \
             RETURNING last_seq",
        )
        .bind(&organization)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        sqlx::query(
            "INSERT INTO events (organization, seq, event_type, referral_id, created_at, id, \
             status, version, endpoint_id) \
             VALUES ($1, $2, 'webhook.endpoint_disabled', '', $3, $4, 'disabled', 0, $5)",
        )
        .bind(&organization)
        .bind(seq)
        .bind(now)
        .bind(format!("evt_{}", uuid::Uuid::now_v7().simple()))
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        let event = (&organization, seq, "webhook.endpoint_disabled", now);
        sqlx::query(sqlx::AssertSqlSafe(fan_out_sql(self.backend)))
            .bind(super::sql::json_rows(&[event]))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
