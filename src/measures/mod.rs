//! Did it work? Outcome measures from screening to closed loop, as the programmes are
//! graded: NCQA HEDIS SNS-E (screened for food, housing and transportation needs; if
//! positive, an intervention within 30 days), CMS MIPS #498 (a positive screen, then
//! contact with a community service provider within 60 days) and the hospital
//! measures SDOH-1 (adult inpatients screened for five domains during the stay) and
//! SDOH-2 (the positive rate per domain among them).
//!
//! What is counted comes from [`facts`], recorded as resources are written; an
//! evaluation reads them by kind, domain and date, and counts **persons** (the
//! identity index), never Patient records. [`screening`] holds the rules that say
//! which answers screen for what. `evaluate` answers a summary MeasureReport.

pub mod facts;
pub mod programme;
pub mod screening;

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::resource::datetime;
use crate::store::{Admitted, FactFilter, PersonFact, Store, StoreError};
use facts::{CONTACT, INPATIENT, POSITIVE, PROCEDURE, REFERRAL, SCORE, SCREENED};
pub use screening::Screening;

/// Why a measure or report could not be evaluated; each face turns it into its own
/// wire format (an OperationOutcome on `/fhir`).
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A parameter breaks a rule: the parameter's name and the rule.
    #[error("{name}: {rule}")]
    Invalid { name: String, rule: String },
    #[error("no measure {0}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MeasureError {
    pub fn invalid(name: impl Into<String>, rule: impl Into<String>) -> MeasureError {
        MeasureError::Invalid {
            name: name.into(),
            rule: rule.into(),
        }
    }
}

const DAY: i64 = 86_400 * 1_000_000;
const RATE_SYSTEM: &str = "urn:crossway:measure-rate";
const POPULATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/measure-population";

/// The domains a measure names, as the SDOH domain codes that count for each.
const FOOD: &[&str] = &["food-insecurity"];
const HOUSING: &[&str] = &["housing-instability", "homelessness", "inadequate-housing"];
const TRANSPORTATION: &[&str] = &["transportation-insecurity"];
const UTILITIES: &[&str] = &["utility-insecurity"];
const SAFETY: &[&str] = &["intimate-partner-violence", "elder-abuse"];
/// SDOH-1's five domains.
const FIVE: [(&str, &[&str]); 5] = [
    ("food", FOOD),
    ("housing", HOUSING),
    ("transportation", TRANSPORTATION),
    ("utilities", UTILITIES),
    ("safety", SAFETY),
];

/// The measures this server evaluates: (id, title, description).
pub const MEASURES: [(&str, &str, &str); 4] = [
    (
        "sns-e",
        "Social Need Screening and Intervention (HEDIS SNS-E)",
        "Members screened for food, housing and transportation needs in the period, and of those screening positive (first positive screen up to 30 days before the period ends), those with a referral or an SDOH intervention of that domain within 30 days. Counts persons.",
    ),
    (
        "mips-498",
        "Connection to Community Service Provider (MIPS #498)",
        "Members with a positive screen for a health-related social need (first positive screen up to 60 days before the period ends) who were in contact with a community service provider (a CBO accepted or started a referral of a positive domain) within 60 days after it. Counts persons.",
    ),
    (
        "sdoh-1",
        "Screening for Social Drivers of Health (SDOH-1)",
        "Adults (18 or older at admission) with an inpatient admission in the period, and of them those screened for all five domains (food, housing, transportation, utilities, interpersonal safety) during the stay. Counts persons.",
    ),
    (
        "sdoh-2",
        "Screen Positive Rate for Social Drivers of Health (SDOH-2)",
        "Of the adults screened for all five domains during an inpatient stay in the period, those screening positive in each domain during that stay (interpersonal safety by the AHC HRSN total). Counts persons.",
    ),
];

/// A Measure resource for each of [`MEASURES`].
pub fn measure(id: &str) -> Option<Value> {
    let (id, title, description) = MEASURES.iter().find(|(m, ..)| *m == id)?;
    let groups: Vec<Value> = rates(id)
        .iter()
        .map(|r| json!({"code": {"coding": [{"system": RATE_SYSTEM, "code": r}]}}))
        .collect();
    Some(json!({
        "resourceType": "Measure",
        "id": id,
        "url": format!("urn:crossway:measure:{id}"),
        "name": id.replace('-', "_").to_uppercase(),
        "title": title,
        "status": "active",
        "description": description,
        "scoring": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": "proportion"}]},
        "group": groups,
    }))
}

fn rates(id: &str) -> Vec<String> {
    match id {
        "sns-e" => ["food", "housing", "transportation"]
            .iter()
            .flat_map(|d| [format!("{d}-screening"), format!("{d}-intervention")])
            .collect(),
        "mips-498" => vec!["contact".into()],
        "sdoh-1" => vec!["screening".into()],
        "sdoh-2" => FIVE.iter().map(|(d, _)| d.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// One rate's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub code: String,
    pub initial: usize,
    pub denominator: usize,
    pub numerator: usize,
}

/// The period `[start, end)` in microseconds, from `periodStart`/`periodEnd` (dates
/// include their whole day).
pub fn period(start: &str, end: &str) -> Result<(i64, i64), MeasureError> {
    let start = datetime::parse_range(start)
        .ok_or_else(|| {
            MeasureError::invalid(
                "periodStart",
                format!("{start:?} is not a FHIR date or dateTime"),
            )
        })?
        .lo;
    let end = datetime::parse_range(end)
        .ok_or_else(|| {
            MeasureError::invalid(
                "periodEnd",
                format!("{end:?} is not a FHIR date or dateTime"),
            )
        })?
        .hi;
    if end <= start {
        return Err(MeasureError::invalid(
            "periodEnd",
            "must be after periodStart",
        ));
    }
    Ok((start, end))
}

/// Whom a measure counts: a Group's members, or without one every person with
/// activity in the period — which every person a count below reads already is, so
/// only their number is asked for (by SNS-E's screening rates).
enum Population {
    Active,
    Members(HashSet<String>),
}

impl Population {
    fn has(&self, person: &str) -> bool {
        match self {
            Population::Active => true,
            Population::Members(m) => m.contains(person),
        }
    }

    fn within(&self, facts: Vec<PersonFact>) -> Vec<PersonFact> {
        facts.into_iter().filter(|f| self.has(&f.person)).collect()
    }

    async fn size(&self, store: &Store, (start, end): (i64, i64)) -> Result<usize, MeasureError> {
        Ok(match self {
            Population::Active => store.active_persons(start, end).await?,
            Population::Members(m) => m.len(),
        })
    }
}

/// Facts of `kind` in `domains` (any when empty) with `at` in `[from, to)`.
fn facts<'a>(kind: &'a str, domains: &'a [String], from: i64, to: i64) -> FactFilter<'a> {
    FactFilter {
        kind,
        domains,
        from,
        to,
    }
}

/// Counts every rate of measure `id` over `[start, end)` for `population` (persons;
/// `None`: every person with activity in the period).
pub async fn evaluate(
    store: &Store,
    screening: &Screening,
    id: &str,
    (start, end): (i64, i64),
    population: Option<HashSet<String>>,
) -> Result<Vec<Rate>, MeasureError> {
    let members = population.map_or(Population::Active, Population::Members);
    let domains = |list: &[&str]| list.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let mut out = Vec::new();
    match id {
        "sns-e" => {
            let size = members.size(store, (start, end)).await?;
            for (name, list) in [
                ("food", FOOD),
                ("housing", HOUSING),
                ("transportation", TRANSPORTATION),
            ] {
                let list = domains(list);
                let screened = facts(SCREENED, &list, start, end);
                let screened = match &members {
                    Population::Active => store.count_persons_with(screened).await?,
                    Population::Members(m) => {
                        let persons = store.persons_with(screened).await?;
                        persons.iter().filter(|p| m.contains(*p)).count()
                    }
                };
                out.push(rate(&format!("{name}-screening"), size, size, screened));
                let positives =
                    members.within(first_positives(store, screening, &list, start, end).await?);
                let first = first_per_person(&positives, end - 30 * DAY);
                let mut helped = Vec::new();
                for kind in [REFERRAL, PROCEDURE] {
                    helped.extend(
                        members.within(
                            store
                                .person_facts(facts(kind, &list, start, end + 30 * DAY), None)
                                .await?,
                        ),
                    );
                }
                let numerator = followed_within(&first, &helped, 30 * DAY, None);
                out.push(rate(
                    &format!("{name}-intervention"),
                    first.len(),
                    first.len(),
                    numerator,
                ));
            }
        }
        "mips-498" => {
            let positives =
                members.within(first_positives(store, screening, &[], start, end).await?);
            let first = first_per_person(&positives, end - 60 * DAY);
            let positive_domains: HashMap<&str, HashSet<&str>> =
                positives.iter().fold(HashMap::new(), |mut m, f| {
                    m.entry(f.person.as_str())
                        .or_default()
                        .insert(f.domain.as_str());
                    m
                });
            let contacts = members.within(
                store
                    .person_facts(facts(CONTACT, &[], start, end + 60 * DAY), None)
                    .await?,
            );
            let numerator = followed_within(&first, &contacts, 60 * DAY, Some(&positive_domains));
            out.push(rate("contact", first.len(), first.len(), numerator));
        }
        "sdoh-1" | "sdoh-2" => {
            let admitted: Vec<Admitted> = store
                .admitted(start, end, end)
                .await?
                .into_iter()
                .filter(|a| members.has(&a.person))
                .collect();
            let born: HashMap<&str, Option<i64>> = admitted
                .iter()
                .map(|a| (a.person.as_str(), a.born))
                .collect();
            let adult = |person: &str, at: i64| {
                born.get(person)
                    .copied()
                    .flatten()
                    .is_some_and(|b| datetime::years_between(b, at) >= 18)
            };
            // Adults at their last stay had an adult stay. Screens count up to the
            // latest end of an adult stay: every stay's of a person adult at their
            // first, each stay's own of one who came of age in between.
            let adults: HashSet<&str> = admitted
                .iter()
                .filter(|a| adult(&a.person, a.last_at))
                .map(|a| a.person.as_str())
                .collect();
            let mut ends: Vec<i64> = Vec::new();
            let mut came_of_age: Vec<String> = Vec::new();
            for a in &admitted {
                if adult(&a.person, a.first_at) {
                    ends.push(a.last_until);
                } else if adults.contains(a.person.as_str()) {
                    came_of_age.push(a.person.clone());
                }
            }
            if !came_of_age.is_empty() {
                let stays = store
                    .person_facts(facts(INPATIENT, &[], start, end), Some(&came_of_age))
                    .await?;
                ends.extend(
                    stays
                        .iter()
                        .filter(|s| adult(&s.person, s.at))
                        .map(|s| s.until.unwrap_or(end)),
                );
            }
            let horizon = ends.into_iter().max().unwrap_or(end);
            // The adults' stays during which they were screened for all five domains.
            let lists: Vec<Vec<String>> = FIVE.iter().map(|(_, list)| domains(list)).collect();
            let stays: Vec<PersonFact> = store
                .screened_stays((start, end), end, horizon, &lists)
                .await?
                .into_iter()
                .filter(|s| members.has(&s.person) && adult(&s.person, s.at))
                .collect();
            let fully: HashSet<&str> = stays.iter().map(|s| s.person.as_str()).collect();
            if id == "sdoh-1" {
                out.push(rate("screening", adults.len(), adults.len(), fully.len()));
            } else {
                // Then the domains each of those stays' person screened positive in
                // during it.
                let persons: Vec<String> = fully.iter().map(|p| p.to_string()).collect();
                let during = |ats: &HashMap<String, Vec<i64>>, s: &PersonFact| {
                    let until = s.until.unwrap_or(end).max(s.at + DAY);
                    ats.get(&s.person)
                        .is_some_and(|ats| ats.iter().any(|at| *at >= s.at && *at < until))
                };
                for (name, list) in lists.iter().enumerate().map(|(i, l)| (FIVE[i].0, l)) {
                    let mut ats: HashMap<String, Vec<i64>> = HashMap::new();
                    for f in
                        positives_of(store, screening, list, (start, horizon), &persons).await?
                    {
                        ats.entry(f.person).or_default().push(f.at);
                    }
                    let positive: HashSet<&str> = stays
                        .iter()
                        .filter(|s| during(&ats, s))
                        .map(|s| s.person.as_str())
                        .collect();
                    out.push(rate(name, fully.len(), fully.len(), positive.len()));
                }
            }
        }
        other => {
            return Err(MeasureError::Unknown(other.to_string()));
        }
    }
    Ok(out)
}

fn rate(code: &str, initial: usize, denominator: usize, numerator: usize) -> Rate {
    Rate {
        code: code.to_string(),
        initial,
        denominator,
        numerator,
    }
}

/// Each person's first positive screen per domain in `domains` (every domain when
/// empty) in `[from, to)`, and the positive totals of scored domains.
async fn first_positives(
    store: &Store,
    screening: &Screening,
    domains: &[String],
    from: i64,
    to: i64,
) -> Result<Vec<PersonFact>, MeasureError> {
    let mut out = store
        .first_facts(facts(POSITIVE, domains, from, to))
        .await?;
    out.extend(scored_positives(store, screening, facts(SCORE, domains, from, to), None).await?);
    Ok(out)
}

/// Every positive screen of `persons` in `domains` in `[from, to)`: answers that are
/// positive, and scored domains' positive totals.
async fn positives_of(
    store: &Store,
    screening: &Screening,
    domains: &[String],
    (from, to): (i64, i64),
    persons: &[String],
) -> Result<Vec<PersonFact>, MeasureError> {
    let mut out = store
        .person_facts(facts(POSITIVE, domains, from, to), Some(persons))
        .await?;
    out.extend(
        scored_positives(
            store,
            screening,
            facts(SCORE, domains, from, to),
            Some(persons),
        )
        .await?,
    );
    Ok(out)
}

/// Scored domains whose total on one day is above their threshold, at that day's
/// first score.
async fn scored_positives(
    store: &Store,
    screening: &Screening,
    scores: FactFilter<'_>,
    persons: Option<&[String]>,
) -> Result<Vec<PersonFact>, MeasureError> {
    let mut totals: HashMap<(String, String, i64), (i64, i64)> = HashMap::new();
    for f in store.person_facts(scores, persons).await? {
        let day = f.at.div_euclid(DAY);
        let e = totals.entry((f.person, f.domain, day)).or_insert((0, f.at));
        e.0 += f.value.unwrap_or(0);
        e.1 = e.1.min(f.at);
    }
    Ok(totals
        .into_iter()
        .filter(|((_, domain, _), (total, _))| {
            screening.threshold(domain).is_some_and(|t| *total > t)
        })
        .map(|((person, domain, _), (total, at))| PersonFact {
            person,
            domain,
            at,
            until: None,
            value: Some(total),
        })
        .collect())
}

/// Each person's first fact, kept when it falls before `latest`.
fn first_per_person(facts: &[PersonFact], latest: i64) -> HashMap<&str, i64> {
    let mut first: HashMap<&str, i64> = HashMap::new();
    for f in facts {
        let e = first.entry(f.person.as_str()).or_insert(f.at);
        *e = (*e).min(f.at);
    }
    first.retain(|_, at| *at < latest);
    first
}

/// How many of `first` (person → time) have a fact in `then` within `window` after
/// their time, of one of their `domains` when given.
fn followed_within(
    first: &HashMap<&str, i64>,
    then: &[PersonFact],
    window: i64,
    domains: Option<&HashMap<&str, HashSet<&str>>>,
) -> usize {
    let mut hit: HashSet<&str> = HashSet::new();
    for f in then {
        let Some((person, at)) = first.get_key_value(f.person.as_str()) else {
            continue;
        };
        let in_domain = domains.is_none_or(|d| {
            d.get(f.person.as_str())
                .is_some_and(|set| set.contains(f.domain.as_str()))
        });
        if in_domain && f.at >= *at && f.at <= at + window {
            hit.insert(person);
        }
    }
    hit.len()
}

/// A summary MeasureReport of `rates`.
pub fn report(
    id: &str,
    base: &str,
    (start, end): (i64, i64),
    subject: Option<&str>,
    rates: &[Rate],
) -> Value {
    let count = |code: &str, n: usize| json!({"code": {"coding": [{"system": POPULATION_SYSTEM, "code": code}]}, "count": n});
    let groups: Vec<Value> = rates
        .iter()
        .map(|r| {
            let mut g = json!({
                "code": {"coding": [{"system": RATE_SYSTEM, "code": r.code}]},
                "population": [
                    count("initial-population", r.initial),
                    count("denominator", r.denominator),
                    count("denominator-exclusion", 0),
                    count("numerator", r.numerator),
                ],
            });
            if r.denominator > 0 {
                g["measureScore"] = json!({"value": r.numerator as f64 / r.denominator as f64});
            }
            g
        })
        .collect();
    let mut report = json!({
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": format!("{base}/Measure/{id}"),
        "date": datetime::format_instant(datetime::now_micros()),
        "period": {
            "start": datetime::format_instant(start),
            "end": datetime::format_instant(end - 1),
        },
        "group": groups,
    });
    if let Some(s) = subject {
        report["subject"] = json!({"reference": s});
    }
    report
}
