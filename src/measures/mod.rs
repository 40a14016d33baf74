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

use crate::fhir::FhirError;
use crate::fhir::datetime;
use crate::store::{PersonFact, Store};
use facts::{CONTACT, INPATIENT, POSITIVE, PROCEDURE, REFERRAL, SCORE, SCREENED};
pub use screening::Screening;

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
pub fn period(start: &str, end: &str) -> Result<(i64, i64), FhirError> {
    let start = datetime::parse_range(start)
        .ok_or_else(|| {
            FhirError::invalid(
                "periodStart",
                format!("{start:?} is not a FHIR date or dateTime"),
            )
        })?
        .lo;
    let end = datetime::parse_range(end)
        .ok_or_else(|| {
            FhirError::invalid(
                "periodEnd",
                format!("{end:?} is not a FHIR date or dateTime"),
            )
        })?
        .hi;
    if end <= start {
        return Err(FhirError::invalid("periodEnd", "must be after periodStart"));
    }
    Ok((start, end))
}

/// Counts every rate of measure `id` over `[start, end)` for `population` (persons;
/// `None`: every person with activity in the period).
pub async fn evaluate(
    store: &Store,
    screening: &Screening,
    id: &str,
    (start, end): (i64, i64),
    population: Option<HashSet<String>>,
) -> Result<Vec<Rate>, FhirError> {
    let members = match population {
        Some(p) => p,
        None => store
            .active_persons(start, end)
            .await?
            .into_iter()
            .collect(),
    };
    let within = |facts: Vec<PersonFact>| -> Vec<PersonFact> {
        facts
            .into_iter()
            .filter(|f| members.contains(&f.person))
            .collect()
    };
    let domains = |list: &[&str]| list.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let mut out = Vec::new();
    match id {
        "sns-e" => {
            for (name, list) in [
                ("food", FOOD),
                ("housing", HOUSING),
                ("transportation", TRANSPORTATION),
            ] {
                let list = domains(list);
                let screened = within(store.person_facts(SCREENED, &list, start, end).await?);
                out.push(rate(
                    &format!("{name}-screening"),
                    members.len(),
                    members.len(),
                    persons(&screened).len(),
                ));
                let positives = within(positives(store, screening, &list, start, end).await?);
                let first = first_per_person(&positives, end - 30 * DAY);
                let mut helped = within(
                    store
                        .person_facts(REFERRAL, &list, start, end + 30 * DAY)
                        .await?,
                );
                helped.extend(within(
                    store
                        .person_facts(PROCEDURE, &list, start, end + 30 * DAY)
                        .await?,
                ));
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
            let positives = within(positives(store, screening, &[], start, end).await?);
            let first = first_per_person(&positives, end - 60 * DAY);
            let positive_domains: HashMap<&str, HashSet<&str>> =
                positives.iter().fold(HashMap::new(), |mut m, f| {
                    m.entry(f.person.as_str())
                        .or_default()
                        .insert(f.domain.as_str());
                    m
                });
            let contacts = within(
                store
                    .person_facts(CONTACT, &[], start, end + 60 * DAY)
                    .await?,
            );
            let numerator = followed_within(&first, &contacts, 60 * DAY, Some(&positive_domains));
            out.push(rate("contact", first.len(), first.len(), numerator));
        }
        "sdoh-1" | "sdoh-2" => {
            let stays = within(store.person_facts(INPATIENT, &[], start, end).await?);
            let births: HashMap<String, i64> = store.births().await?.into_iter().collect();
            let adult = |s: &PersonFact| {
                births
                    .get(&s.person)
                    .is_some_and(|b| datetime::years_between(*b, s.at) >= 18)
            };
            let stays: Vec<&PersonFact> = stays.iter().filter(|s| adult(s)).collect();
            let horizon = stays
                .iter()
                .map(|s| s.until.unwrap_or(end))
                .max()
                .unwrap_or(end);
            // Each domain's screens and positive screens, by person: a stay looks at its
            // own person's only.
            type ByPerson = HashMap<String, Vec<i64>>;
            let by_person = |facts: Vec<PersonFact>| -> ByPerson {
                let mut m: ByPerson = HashMap::new();
                for f in facts {
                    m.entry(f.person).or_default().push(f.at);
                }
                m
            };
            let mut screened_in: Vec<ByPerson> = Vec::new();
            let mut positive_in: Vec<ByPerson> = Vec::new();
            for (_, list) in FIVE {
                let list = domains(list);
                screened_in.push(by_person(
                    store.person_facts(SCREENED, &list, start, horizon).await?,
                ));
                positive_in.push(by_person(
                    positives(store, screening, &list, start, horizon).await?,
                ));
            }
            let during = |facts: &ByPerson, s: &PersonFact| {
                let until = s.until.unwrap_or(end).max(s.at + DAY);
                facts
                    .get(&s.person)
                    .is_some_and(|ats| ats.iter().any(|at| *at >= s.at && *at < until))
            };
            // Per stay: screened for all five during it; then the domains positive in it.
            let mut fully = HashSet::new();
            let mut positive_domain: Vec<HashSet<&str>> = vec![HashSet::new(); FIVE.len()];
            for s in &stays {
                if screened_in.iter().all(|facts| during(facts, s)) {
                    fully.insert(s.person.as_str());
                    for (i, facts) in positive_in.iter().enumerate() {
                        if during(facts, s) {
                            positive_domain[i].insert(s.person.as_str());
                        }
                    }
                }
            }
            let admitted: HashSet<&str> = stays.iter().map(|s| s.person.as_str()).collect();
            if id == "sdoh-1" {
                out.push(rate(
                    "screening",
                    admitted.len(),
                    admitted.len(),
                    fully.len(),
                ));
            } else {
                for (i, (name, _)) in FIVE.iter().enumerate() {
                    out.push(rate(
                        name,
                        fully.len(),
                        fully.len(),
                        positive_domain[i].len(),
                    ));
                }
            }
        }
        other => {
            return Err(FhirError::NotFound {
                resource: format!("Measure/{other}"),
            });
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

fn persons(facts: &[PersonFact]) -> HashSet<&str> {
    facts.iter().map(|f| f.person.as_str()).collect()
}

/// Positive screens in `domains` (every domain when empty): answers that are positive,
/// and scored domains whose total on one day is above their threshold.
async fn positives(
    store: &Store,
    screening: &Screening,
    domains: &[String],
    from: i64,
    to: i64,
) -> Result<Vec<PersonFact>, FhirError> {
    let mut out = store.person_facts(POSITIVE, domains, from, to).await?;
    let mut totals: HashMap<(String, String, i64), (i64, i64)> = HashMap::new();
    for f in store.person_facts(SCORE, domains, from, to).await? {
        let day = f.at.div_euclid(DAY);
        let e = totals.entry((f.person, f.domain, day)).or_insert((0, f.at));
        e.0 += f.value.unwrap_or(0);
        e.1 = e.1.min(f.at);
    }
    for ((person, domain, _), (total, at)) in totals {
        if screening.threshold(&domain).is_some_and(|t| total > t) {
            out.push(PersonFact {
                person,
                domain,
                at,
                until: None,
                value: Some(total),
            });
        }
    }
    Ok(out)
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
