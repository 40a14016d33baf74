//! FHIR Subscriptions: their rows, their events (numbered per subscription in the
//! transaction that wrote the resource), and the outbox rows their notifications take.

use sqlx::Row;

use super::{Result, Store, Tx};

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: String,
    pub client_id: String,
    pub resource: String,
    pub status: String,
    pub events_since_start: i64,
    pub last_sent_at: Option<i64>,
    /// Bumped by each update of the subscription by its client.
    pub version: i64,
    /// When it went into `error` (its handshake is retried for a while after).
    pub error_since: Option<i64>,
}

/// The outbox endpoint of a subscription's notifications.
pub fn endpoint_id(subscription: &str) -> String {
    format!("subscription:{subscription}")
}

/// The outbox endpoint sends only while its subscription is active.
fn endpoint_status(subscription_status: &str) -> &'static str {
    if subscription_status == "active" {
        "active"
    } else {
        "inactive"
    }
}

/// A subscription event waiting for the batch's flush.
#[derive(Debug)]
pub(super) struct StagedNotification {
    subscription: String,
    focus: String,
    version: i64,
    at: i64,
}

const COLUMNS: &str =
    "id, client_id, resource, status, events_since_start, last_sent_at, version, error_since";

fn row(r: &sqlx::any::AnyRow) -> SubscriptionRow {
    SubscriptionRow {
        id: r.get(0),
        client_id: r.get(1),
        resource: r.get(2),
        status: r.get(3),
        events_since_start: r.get(4),
        last_sent_at: r.get(5),
        version: r.get(6),
        error_since: r.get(7),
    }
}

impl Tx<'_> {
    /// An event of `subscription` about `version` of `focus` (`Task/abc`): numbered,
    /// kept, and queued for notification, all with the write that caused it.
    pub fn stage_notification(
        &mut self,
        subscription: &str,
        focus: String,
        version: i64,
        now: i64,
    ) {
        self.notifications.push(StagedNotification {
            subscription: subscription.to_string(),
            focus,
            version,
            at: now,
        });
    }

    pub(super) async fn flush_notifications(&mut self) -> Result<()> {
        let mut staged = std::mem::take(&mut self.notifications);
        // Subscription rows are locked in id order, one bump each, so two batches (two
        // writers, or two processes) never wait on each other in a cycle.
        staged.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        for group in staged.chunk_by(|a, b| a.subscription == b.subscription) {
            let subscription = &group[0].subscription;
            let count = group.len() as i64;
            // A subscription in error keeps numbering its events (the subscriber fills
            // the gap with `$events` once it is back) but queues no notification.
            let Some((last, status)) = sqlx::query(
                "UPDATE subscriptions SET events_since_start = events_since_start + $2 \
                 WHERE id = $1 AND status IN ('requested', 'active', 'error') \
                 RETURNING events_since_start, status",
            )
            .bind(subscription)
            .bind(count)
            .fetch_optional(&mut *self.conn)
            .await?
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1))) else {
                continue;
            };
            for (n, event) in (last - count + 1..).zip(group) {
                sqlx::query(
                    "INSERT INTO subscription_events (subscription_id, event_number, focus, version, \
                     created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(subscription)
                .bind(n)
                .bind(&event.focus)
                .bind(event.version)
                .bind(event.at)
                .execute(&mut *self.conn)
                .await?;
                if status == "error" {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO webhook_deliveries (endpoint_id, organization, event_seq, status, \
                     attempts, next_attempt_at, created_at) VALUES ($1, '', $2, 'pending', 0, $3, $3)",
                )
                .bind(endpoint_id(subscription))
                .bind(n)
                .bind(event.at)
                .execute(&mut *self.conn)
                .await?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// A new subscription and its (inactive) outbox endpoint.
    pub async fn insert_subscription(
        &self,
        s: &SubscriptionRow,
        url: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO subscriptions (id, client_id, resource, status, events_since_start, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(&s.id)
        .bind(&s.client_id)
        .bind(&s.resource)
        .bind(&s.status)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, organization_id, url, description, event_types, \
             secret, status, created_at) VALUES ($1, '', $2, 'FHIR Subscription', '', '', 'inactive', $3)",
        )
        .bind(endpoint_id(&s.id))
        .bind(url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>> {
        let text = format!("SELECT {COLUMNS} FROM subscriptions WHERE id = $1");
        Ok(sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row))
    }

    /// Subscriptions that take events: requested, active, or in error (which number
    /// their events without sending them).
    pub async fn live_subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let text = format!(
            "SELECT {COLUMNS} FROM subscriptions \
             WHERE status IN ('requested', 'active', 'error') ORDER BY id"
        );
        Ok(sqlx::query(sqlx::AssertSqlSafe(text))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row)
            .collect())
    }

    /// Every subscription of `client`, in id order.
    pub async fn client_subscriptions(&self, client: &str) -> Result<Vec<SubscriptionRow>> {
        let text = format!("SELECT {COLUMNS} FROM subscriptions WHERE client_id = $1 ORDER BY id");
        Ok(sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(client)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row)
            .collect())
    }

    /// The client's update: the resource, the status it leads to and the endpoint's
    /// URL, only if the subscription is still at `version` and `was` (what the update
    /// was decided from); the new version, or `None` when something changed first.
    pub async fn update_subscription(
        &self,
        id: &str,
        version: i64,
        was: &str,
        resource: &str,
        status: &str,
        url: &str,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let Some(new_version) = sqlx::query(
            "UPDATE subscriptions SET resource = $3, status = $4, version = version + 1, \
             error_since = NULL WHERE id = $1 AND version = $2 AND status = $5 \
             RETURNING version",
        )
        .bind(id)
        .bind(version)
        .bind(resource)
        .bind(status)
        .bind(was)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get::<i64, _>(0)) else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE webhook_endpoints SET url = $2, status = $3, failing_since = NULL, \
             disabled_at = NULL WHERE id = $1",
        )
        .bind(endpoint_id(id))
        .bind(url)
        .bind(endpoint_status(status))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(new_version))
    }

    /// A handshake's outcome for the subscription at `version`: `active`, or `error`
    /// (since when, if it already was); false when it is no longer the requested
    /// subscription the handshake was for (updated, or turned off meanwhile).
    pub async fn handshake_done(
        &self,
        id: &str,
        version: i64,
        status: &str,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE subscriptions SET status = $3, error_since = CASE WHEN $3 = 'error' \
             THEN COALESCE(error_since, $4) END \
             WHERE id = $1 AND version = $2 AND status = 'requested'",
        )
        .bind(id)
        .bind(version)
        .bind(status)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE webhook_endpoints SET status = $2, failing_since = NULL, disabled_at = NULL \
             WHERE id = $1",
        )
        .bind(endpoint_id(id))
        .bind(endpoint_status(status))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Back from `error` to `requested` for another handshake; false when it was not
    /// in error.
    pub async fn retry_handshake(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE subscriptions SET status = 'requested' WHERE id = $1 AND status = 'error'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Turns a subscription off (deleted, or past its `end`), only at `version` when
    /// given (an update may have moved its end); false when it was not changed.
    pub async fn switch_off_subscription(&self, id: &str, version: Option<i64>) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE subscriptions SET status = 'off', error_since = NULL \
             WHERE id = $1 AND status <> 'off' AND ($2 < 0 OR version = $2)",
        )
        .bind(id)
        .bind(version.unwrap_or(-1))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE webhook_endpoints SET status = 'inactive' WHERE id = $1")
            .bind(endpoint_id(id))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that something was sent to the subscriber (heartbeats wait a period after).
    pub async fn subscription_sent(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE subscriptions SET last_sent_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Events `since..=until` of a subscription (at most 1000): (number, focus,
    /// version, created_at).
    pub async fn subscription_events(
        &self,
        id: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<(i64, String, i64, i64)>> {
        Ok(sqlx::query(
            "SELECT event_number, focus, version, created_at FROM subscription_events \
             WHERE subscription_id = $1 AND event_number >= $2 AND event_number <= $3 \
             ORDER BY event_number LIMIT 1000",
        )
        .bind(id)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
    }
}
