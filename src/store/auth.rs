//! Registered clients, API keys, assertion replay protection, run-time tenants and the
//! audit trail. These rows are not resources: they are written straight to the pool,
//! outside the resource writer, by the token endpoint and operator commands.

use sqlx::Row;

use super::{Result, Store};

/// A registered client as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRow {
    pub client_id: String,
    /// `ehr` or `cbo`.
    pub kind: String,
    pub organization_id: Option<String>,
    pub name: String,
    pub scopes: String,
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
    /// PHC string (argon2id) of a CBO's client secret.
    pub secret_hash: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub client_id: String,
    /// `test` or `live`.
    pub mode: String,
    pub secret_sha256: String,
    pub scopes: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    pub organization_id: String,
    pub name: String,
    /// JSON array of `{"system", "value"}`.
    pub identifiers: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub recorded_at: i64,
    pub client_id: String,
    pub organization_id: Option<String>,
    /// `fhir`, `cbo`, `mllp`.
    pub face: String,
    /// FHIR AuditEvent.action: `C`, `R`, `U`, `D`, `E`.
    pub action: String,
    /// What was touched: `Task/123`, `Task?status=…`, `referral/ab12…`, `MSH|RVH|42`.
    pub entity: String,
    /// The interaction: `read`, `search`, `accept`, `ADT^A01`, …
    pub detail: String,
    /// HTTP status (or 200 for an AA, 400 for AR, 422 for AE).
    pub outcome: i64,
    pub trace_id: String,
}

/// An `audit_events` row in the column order of the insert (serialised as a JSON array).
#[derive(serde::Serialize)]
struct AuditRow<'a>(
    &'a str,
    i64,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    &'a str,
);

/// Filters for reading the audit trail; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub client_id: Option<String>,
    pub entity: Option<String>,
    /// Records after this id (the previous page's last), oldest first.
    pub after: Option<String>,
    pub limit: i64,
}

const CLIENT_COLUMNS: &str = "client_id, kind, organization_id, name, scopes, jwks, jwks_url, \
     secret_hash, created_at, revoked_at";
const KEY_COLUMNS: &str = "key_id, client_id, mode, secret_sha256, scopes, created_at, revoked_at";
const AUDIT_COLUMNS: &str = "id, recorded_at, client_id, organization_id, face, action, entity, \
     detail, outcome, trace_id";

fn client_row(r: &sqlx::any::AnyRow) -> ClientRow {
    ClientRow {
        client_id: r.get(0),
        kind: r.get(1),
        organization_id: r.get(2),
        name: r.get(3),
        scopes: r.get(4),
        jwks: r.get(5),
        jwks_url: r.get(6),
        secret_hash: r.get(7),
        created_at: r.get(8),
        revoked_at: r.get(9),
    }
}

fn key_row(r: &sqlx::any::AnyRow) -> ApiKeyRow {
    ApiKeyRow {
        key_id: r.get(0),
        client_id: r.get(1),
        mode: r.get(2),
        secret_sha256: r.get(3),
        scopes: r.get(4),
        created_at: r.get(5),
        revoked_at: r.get(6),
    }
}

impl Store {
    pub async fn insert_client(&self, c: &ClientRow) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO auth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&c.client_id)
        .bind(&c.kind)
        .bind(&c.organization_id)
        .bind(&c.name)
        .bind(&c.scopes)
        .bind(&c.jwks)
        .bind(&c.jwks_url)
        .bind(&c.secret_hash)
        .bind(c.created_at)
        .bind(c.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE client_id = $1"
        )))
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(client_row))
    }

    pub async fn clients(&self) -> Result<Vec<ClientRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM auth_clients ORDER BY created_at, client_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(client_row).collect())
    }

    /// Revokes a client and its API keys; false when there is no such live client.
    pub async fn revoke_client(&self, client_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE auth_clients SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE auth_api_keys SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    pub async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO auth_api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )))
        .bind(&k.key_id)
        .bind(&k.client_id)
        .bind(&k.mode)
        .bind(&k.secret_sha256)
        .bind(&k.scopes)
        .bind(k.created_at)
        .bind(k.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM auth_api_keys WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_row))
    }

    pub async fn api_keys_of(&self, client_id: &str) -> Result<Vec<ApiKeyRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM auth_api_keys WHERE client_id = $1 ORDER BY created_at"
        )))
        .bind(client_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_row).collect())
    }

    pub async fn revoke_api_key(&self, key_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE auth_api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Records an assertion's `jti`; false when it was seen before (a replay). Expired
    /// entries are dropped on the way, since an expired assertion is refused anyway.
    pub async fn claim_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool> {
        sqlx::query("DELETE FROM auth_jti WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        match sqlx::query("INSERT INTO auth_jti (client_id, jti, expires_at) VALUES ($1, $2, $3)")
            .bind(client_id)
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = super::StoreError::from(e);
                if e.is_unique_violation() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Adds a tenant, or keeps the one there (registering a second credential for an
    /// organisation is not an error).
    pub async fn upsert_tenant(&self, t: &TenantRow, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (organization_id, name, identifiers, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (organization_id) DO NOTHING",
        )
        .bind(&t.organization_id)
        .bind(&t.name)
        .bind(&t.identifiers)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tenants whose existing Tasks have not been made referrals yet.
    pub async fn unadopted_tenants(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT organization_id FROM tenants WHERE adopted_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn mark_adopted(&self, organization_id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE tenants SET adopted_at = $2 WHERE organization_id = $1")
            .bind(organization_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ids of current resources of a type, in id order, after `after`.
    pub async fn resource_ids(
        &self,
        resource_type: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT res_id FROM resources WHERE res_type = $1 AND res_id > $2 ORDER BY res_id LIMIT $3",
        )
        .bind(resource_type)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>> {
        let rows = sqlx::query(
            "SELECT organization_id, name, identifiers FROM tenants ORDER BY organization_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| TenantRow {
                organization_id: r.get(0),
                name: r.get(1),
                identifiers: r.get(2),
            })
            .collect())
    }

    /// Appends audit records in one statement, the rows in one JSON argument.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<AuditRow<'_>> = records
            .iter()
            .map(|r| {
                AuditRow(
                    &r.id,
                    r.recorded_at,
                    &r.client_id,
                    r.organization_id.as_deref(),
                    &r.face,
                    &r.action,
                    &r.entity,
                    &r.detail,
                    r.outcome,
                    &r.trace_id,
                )
            })
            .collect();
        use super::sql::{INT, TEXT};
        let (text, args) = super::sql::bulk_insert(
            self.backend,
            "audit_events",
            &[
                ("id", TEXT),
                ("recorded_at", INT),
                ("client_id", TEXT),
                ("organization_id", TEXT),
                ("face", TEXT),
                ("action", TEXT),
                ("entity", TEXT),
                ("detail", TEXT),
                ("outcome", INT),
                ("trace_id", TEXT),
            ],
            super::sql::json_rows(&rows),
            "",
        );
        let _turn = super::take_turn(self.write_turn.as_ref()).await;
        super::sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), args)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut n = 0;
        let mut next = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        if q.since.is_some() {
            next(&mut sql, " AND recorded_at >= ?");
        }
        if q.until.is_some() {
            next(&mut sql, " AND recorded_at < ?");
        }
        if q.client_id.is_some() {
            next(&mut sql, " AND client_id = ?");
        }
        if q.entity.is_some() {
            next(&mut sql, " AND entity = ?");
        }
        if q.after.is_some() {
            next(&mut sql, " AND id > ?");
        }
        next(&mut sql, " ORDER BY id LIMIT ?");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in [q.since, q.until].into_iter().flatten() {
            query = query.bind(v);
        }
        for v in [&q.client_id, &q.entity, &q.after].into_iter().flatten() {
            query = query.bind(v.clone());
        }
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get(0),
                recorded_at: r.get(1),
                client_id: r.get(2),
                organization_id: r.get(3),
                face: r.get(4),
                action: r.get(5),
                entity: r.get(6),
                detail: r.get(7),
                outcome: r.get(8),
                trace_id: r.get(9),
            })
            .collect())
    }
}
