//! Connector state: the endpoint rows through which connector requests share the
//! webhook outbox, and the case each referral became in a connector's system.

use sqlx::Row;

use super::{Result, Store};

/// A connector as the outbox knows it.
#[derive(Debug, Clone)]
pub struct ConnectorEndpoint {
    /// The endpoint id: `connector:` and the connector's rule id.
    pub id: String,
    pub connector: String,
    pub organization: String,
    pub description: String,
    /// Space-delimited, with a space at each end (as webhook endpoints store them).
    pub event_types: String,
    /// `active`, or `inactive` while its environment is incomplete.
    pub status: &'static str,
}

impl Store {
    /// Makes the connector endpoints match `connectors`: new ones are added, changed
    /// ones updated (a disabled one is active again, its failures forgotten: a restart
    /// or reload is how an operator says the system is back), and ones no longer
    /// configured are retired.
    pub async fn sync_connectors(&self, connectors: &[ConnectorEndpoint], now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for c in connectors {
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, organization_id, url, description, event_types, \
                 secret, status, created_at, connector) VALUES ($1, $2, '', $3, $4, '', $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET organization_id = $2, description = $3, \
                 event_types = $4, status = $5, disabled_at = NULL, connector = $7, \
                 failing_since = CASE WHEN webhook_endpoints.status = 'disabled' THEN NULL \
                 ELSE webhook_endpoints.failing_since END",
            )
            .bind(&c.id)
            .bind(&c.organization)
            .bind(&c.description)
            .bind(&c.event_types)
            .bind(c.status)
            .bind(now)
            .bind(&c.connector)
            .execute(&mut *tx)
            .await?;
        }
        // One statement, so two processes syncing at once cannot deadlock on the rows.
        let keep: Vec<String> = (1..=connectors.len()).map(|i| format!("${i}")).collect();
        let retire = if keep.is_empty() {
            "UPDATE webhook_endpoints SET status = 'retired' WHERE connector IS NOT NULL"
                .to_string()
        } else {
            format!(
                "UPDATE webhook_endpoints SET status = 'retired' WHERE connector IS NOT NULL \
                 AND id NOT IN ({})",
                keep.join(", ")
            )
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(retire));
        for c in connectors {
            q = q.bind(&c.id);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the case `referral_id` became and returns the case on record: the first
    /// record stands (a retried create that the system deduplicated answers with the
    /// same case; one that did not, with a second case that is not kept).
    pub async fn record_case(
        &self,
        connector: &str,
        case_id: &str,
        referral_id: &str,
        now: i64,
    ) -> Result<String> {
        sqlx::query(
            "INSERT INTO connector_cases (connector, case_id, referral_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(connector)
        .bind(case_id)
        .bind(referral_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self
            .case_of(connector, referral_id)
            .await?
            .unwrap_or_else(|| case_id.to_string()))
    }

    /// The case `referral_id` became in `connector`'s system.
    pub async fn case_of(&self, connector: &str, referral_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query(
            "SELECT case_id FROM connector_cases WHERE connector = $1 AND referral_id = $2",
        )
        .bind(connector)
        .bind(referral_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0)))
    }

    /// The referral a case of `connector`'s system stands for.
    pub async fn referral_of_case(&self, connector: &str, case_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query(
            "SELECT referral_id FROM connector_cases WHERE connector = $1 AND case_id = $2",
        )
        .bind(connector)
        .bind(case_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0)))
    }

    /// The case ids of `connector`'s cases whose referral is still open.
    pub async fn open_cases(&self, connector: &str) -> Result<Vec<String>> {
        Ok(sqlx::query(
            "SELECT c.case_id FROM connector_cases c \
             JOIN referrals r ON r.id = c.referral_id \
             WHERE c.connector = $1 AND r.status IN ('pending', 'accepted', 'in_progress', 'on_hold') \
             ORDER BY c.created_at",
        )
        .bind(connector)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
    }
}
