//! Measure facts: staged with the version that states them and written with the batch
//! (`Tx::stage_facts`), and the reads an evaluation makes, each answered by the
//! `(kind, domain, at)` index and counted per person through `person_identifiers`.

use sqlx::Row;

use super::sql::{self, Arg, INT, TEXT};
use super::{Result, Store, Tx};
use crate::identity::PATIENT_SYSTEM;
use crate::measures::facts::{CONTACT, Fact};

/// A fact as written: type, id, kind, domain, patient, at, until, value, organisation,
/// detail.
type FactRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
);

/// One resource version's facts.
pub(super) struct StagedFacts {
    res_type: String,
    res_id: String,
    /// Whether they replace the earlier versions' (all but contacts, which are kept).
    replace: bool,
    facts: Vec<Fact>,
}

const KEY_COLUMNS: &[(&str, bool)] = &[("res_type", TEXT), ("res_id", TEXT)];
const COLUMNS: &[(&str, bool)] = &[
    ("res_type", TEXT),
    ("res_id", TEXT),
    ("kind", TEXT),
    ("domain", TEXT),
    ("patient_id", TEXT),
    ("at", INT),
    ("until", INT),
    ("value", INT),
    ("organization", TEXT),
    ("detail", TEXT),
];

impl Tx<'_> {
    pub fn stage_facts(&mut self, res_type: &str, res_id: &str, replace: bool, facts: Vec<Fact>) {
        if facts.is_empty() && !replace {
            return;
        }
        // (A resource may be written twice in one batch; `defer_facts` keeps the last.)
        self.facts.push(StagedFacts {
            res_type: res_type.to_string(),
            res_id: res_id.to_string(),
            replace,
            facts,
        });
    }

    /// Queues the batch's fact writes: the replaced resources' old facts go (a
    /// contact stays), then every new fact is inserted unless already there.
    pub(super) fn defer_facts(&mut self) {
        let staged = std::mem::take(&mut self.facts);
        if staged.is_empty() {
            return;
        }
        let mut gone: Vec<(&str, &str)> = staged
            .iter()
            .filter(|s| s.replace)
            .map(|s| (s.res_type.as_str(), s.res_id.as_str()))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        let backend = self.backend;
        if !gone.is_empty() {
            self.deferred.push(sql::Write {
                text: format!(
                    "DELETE FROM measure_facts WHERE kind <> '{CONTACT}' AND (res_type, res_id) IN ({})",
                    sql::rows_from_json(backend, KEY_COLUMNS)
                ),
                args: vec![Arg::Text(sql::json_rows(&gone))],
                reads_by_keys: true,
            });
        }
        // The last version of a resource in the batch states its facts.
        let mut rows: Vec<FactRow> = Vec::new();
        for (i, s) in staged.iter().enumerate() {
            let later = staged[i + 1..]
                .iter()
                .any(|o| o.replace && o.res_type == s.res_type && o.res_id == s.res_id);
            if later {
                continue;
            }
            for f in &s.facts {
                rows.push((
                    &s.res_type,
                    &s.res_id,
                    f.kind,
                    &f.domain,
                    &f.patient,
                    f.at,
                    f.until,
                    f.value,
                    f.organization.as_deref(),
                    f.detail.as_deref(),
                ));
            }
        }
        if !rows.is_empty() {
            let (text, args) = sql::bulk_insert(
                backend,
                "measure_facts",
                COLUMNS,
                sql::json_rows(&rows),
                // SQLite needs the WHERE to tell the upsert from a join condition.
                "WHERE true ON CONFLICT (res_type, res_id, kind, domain) DO NOTHING",
            );
            self.deferred.push(sql::Write {
                text,
                args,
                reads_by_keys: false,
            });
        }
    }
}

/// A fact of a person, as an evaluation reads it.
#[derive(Debug, Clone)]
pub struct PersonFact {
    pub person: String,
    pub domain: String,
    pub at: i64,
    pub until: Option<i64>,
    pub value: Option<i64>,
}

/// One step of a referral's life, as the programme's report reads it.
#[derive(Debug, Clone)]
pub struct ReferralStep {
    pub task: String,
    pub kind: String,
    pub domain: String,
    pub organization: String,
    pub detail: Option<String>,
    pub at: i64,
    /// The person the referral is for (None: its Patient has no person yet).
    pub person: Option<String>,
}

impl Store {
    /// Every step of the referrals made in `[from, to)` (optionally one organisation's).
    pub async fn referral_steps(
        &self,
        from: i64,
        to: i64,
        organization: Option<&str>,
    ) -> Result<Vec<ReferralStep>> {
        let rows = sqlx::query(
            "SELECT f.res_id, f.kind, f.domain, f.organization, f.detail, f.at, i.person_id \
             FROM measure_facts f \
             LEFT JOIN person_identifiers i ON i.system = $1 AND i.value = f.patient_id \
             WHERE f.res_type = 'Task' AND f.res_id IN ( \
                 SELECT res_id FROM measure_facts WHERE kind = 'r:created' AND at >= $2 AND at < $3 \
                 AND ($4 = '' OR organization = $4)) \
             AND f.kind LIKE 'r:%'",
        )
        .bind(PATIENT_SYSTEM)
        .bind(from)
        .bind(to)
        .bind(organization.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ReferralStep {
                task: r.get(0),
                kind: r.get(1),
                domain: r.get(2),
                organization: r.get::<Option<String>, _>(3).unwrap_or_default(),
                detail: r.get(4),
                at: r.get(5),
                person: r.get(6),
            })
            .collect())
    }

    /// Facts of `kind` in `domains` (any domain when empty) with `at` in `[from, to)`,
    /// each with the person its Patient belongs to now.
    pub async fn person_facts(
        &self,
        kind: &str,
        domains: &[String],
        from: i64,
        to: i64,
    ) -> Result<Vec<PersonFact>> {
        let mut text = String::from(
            "SELECT i.person_id, f.domain, f.at, f.until, f.value FROM measure_facts f \
             JOIN person_identifiers i ON i.system = $1 AND i.value = f.patient_id \
             WHERE f.kind = $2 AND f.at >= $3 AND f.at < $4",
        );
        if !domains.is_empty() {
            let marks: Vec<String> = (0..domains.len()).map(|i| format!("${}", i + 5)).collect();
            text.push_str(&format!(" AND f.domain IN ({})", marks.join(", ")));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(text))
            .bind(PATIENT_SYSTEM)
            .bind(kind)
            .bind(from)
            .bind(to);
        for d in domains {
            q = q.bind(d);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| PersonFact {
                person: r.get(0),
                domain: r.get(1),
                at: r.get(2),
                until: r.get(3),
                value: r.get(4),
            })
            .collect())
    }

    /// The persons the Patients `ids` belong to (a Group's members).
    pub async fn persons_of_patients(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut persons = Vec::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let text = format!(
                "SELECT DISTINCT person_id FROM person_identifiers WHERE system = $1 AND value IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text)).bind(PATIENT_SYSTEM);
            for id in chunk {
                q = q.bind(id);
            }
            persons.extend(
                q.fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| r.get::<String, _>(0)),
            );
        }
        persons.sort();
        persons.dedup();
        Ok(persons)
    }

    /// Persons with any fact in `[from, to)`: the population when no Group names one.
    pub async fn active_persons(&self, from: i64, to: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.person_id FROM measure_facts f \
             JOIN person_identifiers i ON i.system = $1 AND i.value = f.patient_id \
             WHERE f.at >= $2 AND f.at < $3 AND f.kind <> 'born'",
        )
        .bind(PATIENT_SYSTEM)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Birth dates of persons (any of their Patients'), for the adults of SDOH-1.
    pub async fn births(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT i.person_id, MIN(f.at) FROM measure_facts f \
             JOIN person_identifiers i ON i.system = $1 AND i.value = f.patient_id \
             WHERE f.kind = 'born' GROUP BY i.person_id",
        )
        .bind(PATIENT_SYSTEM)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
