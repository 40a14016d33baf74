//! Measure facts: staged with the version that states them and written with the batch
//! (`Tx::stage_facts`), each with the person its Patient belongs to (kept so by the
//! triggers of migration 0025 through merges), and the reads an evaluation makes:
//! counted and aggregated per person in SQL from the `(kind, domain, at, person_id, …)`
//! and `(person_id, kind, domain, at)` indexes, so that what comes back is a count or
//! one row per person rather than every fact.

use sqlx::Row;

use super::identity::PATIENT_SYSTEM;
use super::sql::{self, Arg, INT, TEXT};
use super::{Backend, Result, Store, Tx};

/// Kinds of fact (what `measures::facts` reads from resources; stored here so the
/// store names nothing above it).
pub const SCREENED: &str = "screened";
pub const POSITIVE: &str = "positive";
/// One answer's score towards a scored domain's total (summed per person and day).
pub const SCORE: &str = "score";
pub const REFERRAL: &str = "referral";
pub const PROCEDURE: &str = "procedure";
/// A CBO accepted or started a referral (the Task's first such version).
pub const CONTACT: &str = "contact";
pub const INPATIENT: &str = "inpatient";
pub const EMERGENCY: &str = "ed";
pub const BORN: &str = "born";
/// A referral's steps, once each: made, first answered by the CBO (accepted, declined
/// or started), accepted, declined (`detail`: the reason), closed (`detail`: the
/// outcome), cancelled by the referrer, expired unanswered.
pub const REFERRAL_CREATED: &str = "r:created";
pub const REFERRAL_ANSWERED: &str = "r:answered";
pub const REFERRAL_ACCEPTED: &str = "r:accepted";
pub const REFERRAL_DECLINED: &str = "r:declined";
pub const REFERRAL_CLOSED: &str = "r:closed";
pub const REFERRAL_CANCELLED: &str = "r:cancelled";
pub const REFERRAL_EXPIRED: &str = "r:expired";

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fact {
    pub kind: &'static str,
    /// An SDOH domain code, or empty for kinds without one.
    pub domain: String,
    pub patient: String,
    /// Microseconds since the epoch.
    pub at: i64,
    /// The end of a stay, when known.
    pub until: Option<i64>,
    /// A score.
    pub value: Option<i64>,
    /// A referral step's organisation (the CBO).
    pub organization: Option<String>,
    /// A referral step's reason or outcome code.
    pub detail: Option<String>,
}

const DAY: i64 = 86_400 * 1_000_000;

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
            self.deferred_after.push(sql::Write {
                text: insert_facts(backend),
                args: vec![Arg::Text(sql::json_rows(&rows))],
                reads_by_keys: false,
            });
        }
    }
}

/// Inserts the facts of a JSON array of [`FactRow`]s, each with the person its
/// Patient belongs to now (the migration's triggers keep it so afterwards).
fn insert_facts(backend: Backend) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    let fields = sql::json_fields(backend, COLUMNS);
    let patient = &fields[names.iter().position(|n| *n == "patient_id").unwrap_or(4)];
    // (Qualified on SQLite: `value` alone would be the identifier's.)
    let (rows, patient) = match backend {
        Backend::Sqlite => ("jsonb_each(jsonb($1)) AS r", format!("r.{patient}")),
        Backend::Postgres => ("jsonb_array_elements($1::jsonb) AS x", patient.clone()),
    };
    format!(
        "INSERT INTO measure_facts ({}, person_id) \
         SELECT {}, (SELECT i.person_id FROM person_identifiers i \
             WHERE i.system = '{PATIENT_SYSTEM}' AND i.value = {patient}) \
         FROM {rows} \
         WHERE true ON CONFLICT (res_type, res_id, kind, domain) DO NOTHING",
        names.join(", "),
        fields.join(", "),
    )
}

/// A `(person_id, domain, at, until, value)` row.
fn person_fact(r: &sqlx::any::AnyRow) -> PersonFact {
    PersonFact {
        person: r.get(0),
        domain: r.get(1),
        at: r.get(2),
        until: r.get(3),
        value: r.get(4),
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

/// A person's inpatient stays admitted in a period, in summary.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub person: String,
    /// The earliest birth date of their Patients, when known.
    pub born: Option<i64>,
    pub first_at: i64,
    pub last_at: i64,
    /// The latest end of a stay (the period's end for a stay without one).
    pub last_until: i64,
}

/// Which facts to read: of `kind`, in `domains` (any when empty), `at` in `[from, to)`,
/// of a person.
#[derive(Debug, Clone, Copy)]
pub struct FactFilter<'a> {
    pub kind: &'a str,
    pub domains: &'a [String],
    pub from: i64,
    pub to: i64,
}

impl FactFilter<'_> {
    /// The WHERE conditions on `measure_facts` aliased `f`.
    fn conditions(&self, p: &mut sql::Params) -> String {
        let mut text = format!(
            "f.kind = {} AND f.at >= {} AND f.at < {} AND f.person_id IS NOT NULL",
            p.text(self.kind),
            p.int(self.from),
            p.int(self.to)
        );
        if !self.domains.is_empty() {
            let marks: Vec<String> = self.domains.iter().map(|d| p.text(d.as_str())).collect();
            text.push_str(&format!(" AND f.domain IN ({})", marks.join(", ")));
        }
        text
    }
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
            "SELECT f.res_id, f.kind, f.domain, f.organization, f.detail, f.at, f.person_id \
             FROM measure_facts f \
             WHERE f.res_type = 'Task' AND f.res_id IN ( \
                 SELECT res_id FROM measure_facts WHERE kind = 'r:created' AND at >= $1 AND at < $2 \
                 AND ($3 = '' OR organization = $3)) \
             AND f.kind LIKE 'r:%'",
        )
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

    /// The facts `filter` selects, each with the person its Patient belongs to now
    /// (`persons`: only theirs).
    pub async fn person_facts(
        &self,
        filter: FactFilter<'_>,
        persons: Option<&[String]>,
    ) -> Result<Vec<PersonFact>> {
        let mut p = sql::Params::default();
        let mut text = format!(
            "SELECT f.person_id, f.domain, f.at, f.until, f.value FROM measure_facts f WHERE {}",
            filter.conditions(&mut p)
        );
        if let Some(persons) = persons {
            if persons.is_empty() {
                return Ok(Vec::new());
            }
            let list = p.text(sql::json_rows(persons));
            text.push_str(&format!(" AND f.person_id IN ({})", self.json_texts(&list)));
        }
        let rows = self.fetch(text, p).await?;
        Ok(rows.iter().map(person_fact).collect())
    }

    /// The persons with a fact `filter` selects.
    pub async fn persons_with(&self, filter: FactFilter<'_>) -> Result<Vec<String>> {
        let mut p = sql::Params::default();
        let text = format!(
            "SELECT DISTINCT f.person_id FROM measure_facts f WHERE {}",
            filter.conditions(&mut p)
        );
        Ok(self
            .fetch(text, p)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// How many persons have a fact `filter` selects.
    pub async fn count_persons_with(&self, filter: FactFilter<'_>) -> Result<usize> {
        let mut p = sql::Params::default();
        let text = format!(
            "SELECT count(DISTINCT f.person_id) FROM measure_facts f WHERE {}",
            filter.conditions(&mut p)
        );
        let n: i64 = self.fetch(text, p).await?[0].get(0);
        Ok(n as usize)
    }

    /// Each person's first fact that `filter` selects, per domain (`until` and
    /// `value` are not read).
    pub async fn first_facts(&self, filter: FactFilter<'_>) -> Result<Vec<PersonFact>> {
        let mut p = sql::Params::default();
        let text = format!(
            "SELECT f.person_id, f.domain, MIN(f.at) FROM measure_facts f WHERE {} \
             GROUP BY f.person_id, f.domain",
            filter.conditions(&mut p)
        );
        Ok(self
            .fetch(text, p)
            .await?
            .iter()
            .map(|r| PersonFact {
                person: r.get(0),
                domain: r.get(1),
                at: r.get(2),
                until: None,
                value: None,
            })
            .collect())
    }

    /// How many persons have any fact other than a birth date in `[from, to)`: the
    /// population when no Group names one.
    pub async fn active_persons(&self, from: i64, to: i64) -> Result<usize> {
        // One probe of each person's facts (every person a fact names is one an
        // identifier names), rather than sorting every fact.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT person_id FROM person_identifiers) p \
             WHERE EXISTS (SELECT 1 FROM measure_facts f WHERE f.person_id = p.person_id \
             AND f.kind <> 'born' AND f.at >= $1 AND f.at < $2)",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as usize)
    }

    /// The persons with an inpatient stay admitted in `[from, to)`, with their birth
    /// date; `end` stands for a missing discharge.
    pub async fn admitted(&self, from: i64, to: i64, end: i64) -> Result<Vec<Admitted>> {
        let rows = sqlx::query(
            "SELECT s.person_id, MIN(s.at), MAX(s.at), MAX(COALESCE(s.until, $3)), \
             (SELECT MIN(b.at) FROM measure_facts b WHERE b.person_id = s.person_id AND b.kind = 'born') \
             FROM measure_facts s \
             WHERE s.kind = 'inpatient' AND s.at >= $1 AND s.at < $2 AND s.person_id IS NOT NULL \
             GROUP BY s.person_id",
        )
        .bind(from)
        .bind(to)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Admitted {
                person: r.get(0),
                first_at: r.get(1),
                last_at: r.get(2),
                last_until: r.get(3),
                born: r.get(4),
            })
            .collect())
    }

    /// The inpatient stays admitted in `[from, to)` during which their person was
    /// screened in each of `domains` (every list screened at least once, before
    /// `horizon`). A stay lasts until its end (`end` when it has none), and at least a
    /// day.
    pub async fn screened_stays(
        &self,
        (from, to): (i64, i64),
        end: i64,
        horizon: i64,
        domains: &[Vec<String>],
    ) -> Result<Vec<PersonFact>> {
        let mut p = sql::Params::default();
        let mut text = format!(
            "SELECT s.person_id, s.domain, s.at, s.until, s.value FROM measure_facts s \
             WHERE s.kind = 'inpatient' AND s.at >= {} AND s.at < {} AND s.person_id IS NOT NULL",
            p.int(from),
            p.int(to)
        );
        let (end, day, horizon) = (p.int(end), p.int(DAY), p.int(horizon));
        let screened = p.text(SCREENED);
        for list in domains {
            let marks: Vec<String> = list.iter().map(|d| p.text(d.as_str())).collect();
            // A stay's end: the later of its discharge (or `end`) and a day after admission.
            text.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM measure_facts x WHERE x.person_id = s.person_id \
                 AND x.kind = {screened} AND x.domain IN ({}) AND x.at >= s.at \
                 AND x.at < CASE WHEN COALESCE(s.until, {end}) > s.at + {day} \
                     THEN COALESCE(s.until, {end}) ELSE s.at + {day} END \
                 AND x.at < {horizon})",
                marks.join(", ")
            ));
        }
        Ok(self.fetch(text, p).await?.iter().map(person_fact).collect())
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

    /// The texts of a JSON array bound at `mark`, as a subquery.
    fn json_texts(&self, mark: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("SELECT value FROM json_each({mark})"),
            Backend::Postgres => format!("SELECT jsonb_array_elements_text({mark}::jsonb)"),
        }
    }

    async fn fetch(&self, text: String, p: sql::Params) -> Result<Vec<sqlx::any::AnyRow>> {
        Ok(sql::bind(sqlx::query(sqlx::AssertSqlSafe(text)), p.args)
            .fetch_all(&self.pool)
            .await?)
    }
}
