//! The community resource directory's rows (`directory::`): HSDS entities as JSON with
//! the columns their lookups need. Writes come from imports, in batches of one
//! transaction each; nothing here goes through the FHIR writer, because directory
//! entries are not FHIR resources and have no versions.

use std::collections::HashMap;

use sqlx::Row;

use super::{Result, Store, take_turn};

/// One entity as stored.
#[derive(Debug, Clone)]
pub struct DirectoryRow {
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    pub organization_id: Option<String>,
    pub taxonomy_id: Option<String>,
    pub parent_id: Option<String>,
    pub search: String,
    pub last_modified: Option<String>,
    pub digest: String,
    pub body: String,
    /// (taxonomy term id, its taxonomy's id when known).
    pub terms: Vec<(String, Option<String>)>,
}

/// What a page of one kind is filtered by; every filter present must hold.
#[derive(Debug, Default, Clone)]
pub struct DirectoryFilter {
    /// Lower-cased text the name, alternate name or description contains.
    pub search: Option<String>,
    pub organization_id: Option<String>,
    pub taxonomy_term_id: Option<String>,
    /// Entities classified by a term of this taxonomy; for terms, their own taxonomy.
    pub taxonomy_id: Option<String>,
    pub parent_id: Option<String>,
    /// Terms without a parent.
    pub top_only: bool,
    /// `last_modified` at or after this text (ISO 8601 compares as text).
    pub modified_after: Option<String>,
}

impl Store {
    /// The stored (digest, body) of those of `ids` that exist.
    pub async fn directory_current(
        &self,
        tenant: &str,
        kind: &str,
        ids: &[String],
    ) -> Result<HashMap<String, (String, String)>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (3..chunk.len() + 3).map(|i| format!("${i}")).collect();
            let text = format!(
                "SELECT id, digest, body FROM directory_entities \
                 WHERE tenant = $1 AND kind = $2 AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text))
                .bind(tenant)
                .bind(kind);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                found.insert(r.get(0), (r.get(1), r.get(2)));
            }
        }
        Ok(found)
    }

    /// Inserts or replaces `rows` (and their terms) in one transaction.
    pub async fn directory_put(&self, tenant: &str, rows: &[DirectoryRow], now: i64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let _turn = take_turn(self.write_turn.as_ref()).await;
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO directory_entities (tenant, kind, id, name, organization_id, \
                 taxonomy_id, parent_id, search, last_modified, digest, body, imported_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (tenant, kind, id) DO UPDATE SET name = $4, organization_id = $5, \
                 taxonomy_id = $6, parent_id = $7, search = $8, last_modified = $9, \
                 digest = $10, body = $11, imported_at = $12",
            )
            .bind(tenant)
            .bind(r.kind)
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.organization_id)
            .bind(&r.taxonomy_id)
            .bind(&r.parent_id)
            .bind(&r.search)
            .bind(&r.last_modified)
            .bind(&r.digest)
            .bind(&r.body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM directory_terms WHERE tenant = $1 AND kind = $2 AND id = $3")
                .bind(tenant)
                .bind(r.kind)
                .bind(&r.id)
                .execute(&mut *tx)
                .await?;
            for (term, taxonomy) in &r.terms {
                sqlx::query(
                    "INSERT INTO directory_terms (tenant, kind, id, term_id, taxonomy_id) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(r.kind)
                .bind(&r.id)
                .bind(term)
                .bind(taxonomy)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored body of one entity.
    pub async fn directory_get(
        &self,
        tenant: &str,
        kind: &str,
        id: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query(
            "SELECT body FROM directory_entities WHERE tenant = $1 AND kind = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(kind)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0)))
    }

    /// How many entities of `kind` match, and the bodies of `limit` of them from
    /// `offset`, in id order.
    pub async fn directory_page(
        &self,
        tenant: &str,
        kind: &str,
        filter: &DirectoryFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<String>)> {
        let mut args: Vec<String> = vec![tenant.to_string(), kind.to_string()];
        let mut clauses = String::new();
        let mut add = |clauses: &mut String, clause: &str, value: String| {
            args.push(value);
            clauses.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = &filter.search {
            let escaped = s
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            add(
                &mut clauses,
                " AND e.search LIKE ? ESCAPE '\\'",
                format!("%{escaped}%"),
            );
        }
        if let Some(v) = &filter.organization_id {
            add(&mut clauses, " AND e.organization_id = ?", v.clone());
        }
        if let Some(v) = &filter.parent_id {
            add(&mut clauses, " AND e.parent_id = ?", v.clone());
        }
        if filter.top_only {
            clauses.push_str(" AND e.parent_id IS NULL");
        }
        if let Some(v) = &filter.modified_after {
            add(&mut clauses, " AND e.last_modified >= ?", v.clone());
        }
        if let Some(v) = &filter.taxonomy_term_id {
            add(
                &mut clauses,
                " AND EXISTS (SELECT 1 FROM directory_terms t WHERE t.tenant = e.tenant \
                 AND t.kind = e.kind AND t.id = e.id AND t.term_id = ?)",
                v.clone(),
            );
        }
        if let Some(v) = &filter.taxonomy_id {
            if kind == "taxonomy_term" {
                add(&mut clauses, " AND e.taxonomy_id = ?", v.clone());
            } else {
                add(
                    &mut clauses,
                    " AND EXISTS (SELECT 1 FROM directory_terms t WHERE t.tenant = e.tenant \
                     AND t.kind = e.kind AND t.id = e.id AND t.taxonomy_id = ?)",
                    v.clone(),
                );
            }
        }
        let from =
            format!("FROM directory_entities e WHERE e.tenant = $1 AND e.kind = $2{clauses}");
        let mut count = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT count(*) {from}")));
        for a in &args {
            count = count.bind(a);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.get(0);
        if total == 0 || limit == 0 {
            return Ok((total, Vec::new()));
        }
        let n = args.len();
        let text = format!(
            "SELECT e.body {from} ORDER BY e.id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
        for a in &args {
            q = q.bind(a);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((total, rows.into_iter().map(|r| r.get(0)).collect()))
    }
}
