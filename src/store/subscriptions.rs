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
}

/// The outbox endpoint of a subscription's notifications.
pub fn endpoint_id(subscription: &str) -> String {
    format!("subscription:{subscription}")
}

const COLUMNS: &str = "id, client_id, resource, status, events_since_start, last_sent_at";

fn row(r: &sqlx::any::AnyRow) -> SubscriptionRow {
    SubscriptionRow {
        id: r.get(0),
        client_id: r.get(1),
        resource: r.get(2),
        status: r.get(3),
        events_since_start: r.get(4),
        last_sent_at: r.get(5),
    }
}

impl Tx<'_> {
    /// An event of `subscription` about `focus` (`Task/abc`): numbered, kept, and
    /// queued for notification, all with the write that caused it.
    pub fn stage_notification(&mut self, subscription: &str, focus: String, now: i64) {
        self.notifications
            .push((subscription.to_string(), focus, now));
    }

    pub(super) async fn flush_notifications(&mut self) -> Result<()> {
        for (subscription, focus, now) in std::mem::take(&mut self.notifications) {
            let Some(number) = sqlx::query(
                "UPDATE subscriptions SET events_since_start = events_since_start + 1 \
                 WHERE id = $1 AND status IN ('requested', 'active') RETURNING events_since_start",
            )
            .bind(&subscription)
            .fetch_optional(&mut *self.conn)
            .await?
            .map(|r| r.get::<i64, _>(0)) else {
                continue;
            };
            sqlx::query(
                "INSERT INTO subscription_events (subscription_id, event_number, focus, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&subscription)
            .bind(number)
            .bind(&focus)
            .bind(now)
            .execute(&mut *self.conn)
            .await?;
            sqlx::query(
                "INSERT INTO webhook_deliveries (endpoint_id, organization, event_seq, status, \
                 attempts, next_attempt_at, created_at) VALUES ($1, '', $2, 'pending', 0, $3, $3)",
            )
            .bind(endpoint_id(&subscription))
            .bind(number)
            .bind(now)
            .execute(&mut *self.conn)
            .await?;
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

    /// Subscriptions that take events (requested or active).
    pub async fn live_subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let text = format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE status IN ('requested', 'active') ORDER BY id"
        );
        Ok(sqlx::query(sqlx::AssertSqlSafe(text))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(row)
            .collect())
    }

    /// A new status (with the resource showing it); the outbox endpoint sends only while
    /// the subscription is active.
    pub async fn set_subscription_status(
        &self,
        id: &str,
        status: &str,
        resource: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE subscriptions SET status = $2, resource = $3 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(resource)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET status = $2, failing_since = NULL, disabled_at = NULL \
             WHERE id = $1",
        )
        .bind(endpoint_id(id))
        .bind(if status == "active" {
            "active"
        } else {
            "inactive"
        })
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
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

    /// Events `since..=until` of a subscription: (number, focus, created_at).
    pub async fn subscription_events(
        &self,
        id: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<(i64, String, i64)>> {
        Ok(sqlx::query(
            "SELECT event_number, focus, created_at FROM subscription_events \
             WHERE subscription_id = $1 AND event_number >= $2 AND event_number <= $3 \
             ORDER BY event_number LIMIT 1000",
        )
        .bind(id)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
    }
}
