//! Coordination-platform links: an EHR server's Task ↔ the local Task working it.

use sqlx::Row;

use super::{Result, Store};

/// A linked Task whose local version has not been written back to the EHR yet.
#[derive(Debug, Clone)]
pub struct Unpushed {
    pub remote_task: String,
    pub local_task: String,
    pub local_version: i64,
}

impl Store {
    /// The local Task linked to `remote_task` of `ehr`.
    pub async fn ehr_link(&self, ehr: &str, remote_task: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT local_task FROM ehr_links WHERE ehr = $1 AND remote_task = $2")
                .bind(ehr)
                .bind(remote_task)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    /// Links `remote_task` to `local_task`; the first link stands (another process may
    /// have linked it meanwhile, to the same local Task: its creation is conditional).
    pub async fn link_ehr_task(
        &self,
        ehr: &str,
        remote_task: &str,
        local_task: &str,
        version: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO ehr_links (ehr, remote_task, local_task, pushed_version, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(local_task)
        .bind(version)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `ehr`'s links whose local Task changed since it was last written back.
    pub async fn unpushed(&self, ehr: &str, limit: i64) -> Result<Vec<Unpushed>> {
        Ok(sqlx::query(
            "SELECT l.remote_task, l.local_task, r.version FROM ehr_links l \
             JOIN resources r ON r.res_type = 'Task' AND r.res_id = l.local_task \
             WHERE l.ehr = $1 AND r.version > l.pushed_version ORDER BY l.created_at LIMIT $2",
        )
        .bind(ehr)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Unpushed {
            remote_task: r.get(0),
            local_task: r.get(1),
            local_version: r.get(2),
        })
        .collect())
    }

    /// Records that `version` of the local Task is what the EHR has; never goes back.
    pub async fn pushed(&self, ehr: &str, remote_task: &str, version: i64) -> Result<()> {
        sqlx::query(
            "UPDATE ehr_links SET pushed_version = $3 \
             WHERE ehr = $1 AND remote_task = $2 AND pushed_version < $3",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
