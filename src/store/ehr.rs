//! Coordination-platform links: an EHR server's Task ↔ the local Task working it, the
//! state of each link's write-back, and each server's poll watermark.

use sqlx::Row;

use super::{Result, Store};

/// A linked Task whose local version has not been written back to the EHR yet.
#[derive(Debug, Clone)]
pub struct Unpushed {
    pub remote_task: String,
    pub local_task: String,
    pub local_version: i64,
    /// Write-backs that failed in a row.
    pub failures: i64,
}

/// A link as the coordinator reads it when the EHR's Task is seen.
#[derive(Debug, Clone)]
pub struct Link {
    pub local_task: String,
    /// The EHR's Task version last handled (`meta.versionId`).
    pub remote_version: Option<String>,
    pub gone: bool,
}

/// A write-back that keeps failing, for `crossway ehr stuck`.
#[derive(Debug, Clone)]
pub struct Stuck {
    pub ehr: String,
    pub remote_task: String,
    pub local_task: String,
    pub failures: i64,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: i64,
    pub error: String,
}

/// A server's poll position: the newest `meta.lastUpdated` seen (µs) and the last full
/// reconciliation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watermark {
    pub last_updated: i64,
    pub reconciled_at: i64,
}

impl Store {
    /// The link of `remote_task` of `ehr`.
    pub async fn ehr_link(&self, ehr: &str, remote_task: &str) -> Result<Option<Link>> {
        Ok(sqlx::query(
            "SELECT local_task, remote_version, gone_at FROM ehr_links \
             WHERE ehr = $1 AND remote_task = $2",
        )
        .bind(ehr)
        .bind(remote_task)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| Link {
            local_task: r.get(0),
            remote_version: r.get(1),
            gone: r.get::<Option<i64>, _>(2).is_some(),
        }))
    }

    /// `ehr`'s links whose EHR Task has not been found gone: (remote, local).
    pub async fn ehr_open_links(&self, ehr: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query(
            "SELECT remote_task, local_task FROM ehr_links WHERE ehr = $1 AND gone_at IS NULL \
             ORDER BY created_at",
        )
        .bind(ehr)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// Links `remote_task` to `local_task`; the first link stands (another process may
    /// have linked it meanwhile, to the same local Task: its creation is conditional).
    pub async fn link_ehr_task(
        &self,
        ehr: &str,
        remote_task: &str,
        local_task: &str,
        version: i64,
        remote_version: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO ehr_links (ehr, remote_task, local_task, pushed_version, created_at, remote_version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(local_task)
        .bind(version)
        .bind(now)
        .bind(remote_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the EHR's Task version just handled.
    pub async fn ehr_seen(&self, ehr: &str, remote_task: &str, version: &str) -> Result<()> {
        sqlx::query("UPDATE ehr_links SET remote_version = $3 WHERE ehr = $1 AND remote_task = $2")
            .bind(ehr)
            .bind(remote_task)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The EHR's Task is gone (deleted there): nothing more is written back to it.
    pub async fn ehr_gone(&self, ehr: &str, remote_task: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE ehr_links SET gone_at = $3, failures = 0, last_error = NULL \
             WHERE ehr = $1 AND remote_task = $2 AND gone_at IS NULL",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `ehr`'s links whose local Task changed since it was last written back and whose
    /// backoff is over.
    pub async fn unpushed(&self, ehr: &str, now: i64, limit: i64) -> Result<Vec<Unpushed>> {
        Ok(sqlx::query(
            "SELECT l.remote_task, l.local_task, r.version, l.failures FROM ehr_links l \
             JOIN resources r ON r.res_type = 'Task' AND r.res_id = l.local_task \
             WHERE l.ehr = $1 AND r.version > l.pushed_version AND l.gone_at IS NULL \
             AND l.next_attempt_at <= $2 ORDER BY l.next_attempt_at, l.created_at LIMIT $3",
        )
        .bind(ehr)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Unpushed {
            remote_task: r.get(0),
            local_task: r.get(1),
            local_version: r.get(2),
            failures: r.get(3),
        })
        .collect())
    }

    /// Records that `version` of the local Task is what the EHR has; never goes back.
    /// A success ends the link's failure streak.
    pub async fn pushed(&self, ehr: &str, remote_task: &str, version: i64) -> Result<()> {
        sqlx::query(
            "UPDATE ehr_links SET pushed_version = CASE WHEN pushed_version < $3 THEN $3 \
             ELSE pushed_version END, failures = 0, next_attempt_at = 0, last_error = NULL \
             WHERE ehr = $1 AND remote_task = $2",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A write-back failed: tried again from `next_attempt_at`; `error` (the status and
    /// the server's diagnostics) is what `crossway ehr stuck` shows.
    pub async fn push_failed(
        &self,
        ehr: &str,
        remote_task: &str,
        now: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE ehr_links SET failures = failures + 1, last_attempt_at = $3, \
             next_attempt_at = $4, last_error = $5 WHERE ehr = $1 AND remote_task = $2",
        )
        .bind(ehr)
        .bind(remote_task)
        .bind(now)
        .bind(next_attempt_at)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Write-backs whose last attempt failed, longest failing first.
    pub async fn ehr_stuck(&self) -> Result<Vec<Stuck>> {
        Ok(sqlx::query(
            "SELECT ehr, remote_task, local_task, failures, last_attempt_at, next_attempt_at, \
             last_error FROM ehr_links WHERE failures > 0 AND gone_at IS NULL \
             ORDER BY failures DESC, ehr, remote_task",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Stuck {
            ehr: r.get(0),
            remote_task: r.get(1),
            local_task: r.get(2),
            failures: r.get(3),
            last_attempt_at: r.get(4),
            next_attempt_at: r.get(5),
            error: r.get::<Option<String>, _>(6).unwrap_or_default(),
        })
        .collect())
    }

    pub async fn ehr_watermark(&self, ehr: &str) -> Result<Option<Watermark>> {
        Ok(
            sqlx::query("SELECT last_updated, reconciled_at FROM ehr_watermarks WHERE ehr = $1")
                .bind(ehr)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Watermark {
                    last_updated: r.get(0),
                    reconciled_at: r.get(1),
                }),
        )
    }

    /// Moves the watermark forward (never back: another process may be ahead) and
    /// records a reconciliation when `reconciled_at` is given.
    pub async fn set_ehr_watermark(
        &self,
        ehr: &str,
        last_updated: i64,
        reconciled_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO ehr_watermarks (ehr, last_updated, reconciled_at) VALUES ($1, $2, $3) \
             ON CONFLICT (ehr) DO UPDATE SET \
             last_updated = CASE WHEN ehr_watermarks.last_updated < excluded.last_updated \
               THEN excluded.last_updated ELSE ehr_watermarks.last_updated END, \
             reconciled_at = CASE WHEN ehr_watermarks.reconciled_at < excluded.reconciled_at \
               THEN excluded.reconciled_at ELSE ehr_watermarks.reconciled_at END",
        )
        .bind(ehr)
        .bind(last_updated)
        .bind(reconciled_at.unwrap_or(0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
