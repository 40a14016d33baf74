//! The programme's report: referrals by month, SDOH domain and CBO — made, accepted,
//! declined by reason, closed by outcome, cancelled, expired; the median time to the
//! CBO's first answer and to close — and the cross-sector view the partnerships ask
//! for: ED visits and inpatient admissions in the 90 days before and after a referral
//! (and readmissions within 30 days of a discharge) of the persons referred, by domain
//! and outcome. Read from the referrals' recorded steps and the stays of the identity
//! index's persons; no person is named.
//!
//! Counts from 1 to 10 are suppressed (`null`) unless the caller may see exact counts:
//! reports leave for CBOs and programme audiences.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use utoipa::ToSchema;

use super::MeasureError;
use super::facts::{
    EMERGENCY, INPATIENT, REFERRAL_ACCEPTED, REFERRAL_ANSWERED, REFERRAL_CANCELLED,
    REFERRAL_CLOSED, REFERRAL_CREATED, REFERRAL_DECLINED, REFERRAL_EXPIRED,
};
use crate::resource::datetime;
use crate::store::{FactFilter, PersonFact, ReferralStep, Store};

const DAY: i64 = 86_400 * 1_000_000;
const HOUR: f64 = 3_600.0 * 1_000_000.0;
/// The largest count suppressed (small-cell suppression, 1 to 10).
const SMALL: usize = 10;

/// A count as published: exact, or `null` when from 1 to 10 and suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Count(pub Option<usize>);

impl Count {
    fn of(n: usize, exact: bool) -> Count {
        Count((exact || n == 0 || n > SMALL).then_some(n))
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Row {
    pub month: String,
    pub domain: String,
    pub organization: String,
    pub created: Count,
    pub accepted: Count,
    pub declined: Count,
    pub declined_by_reason: BTreeMap<String, Count>,
    pub closed: Count,
    pub closed_by_outcome: BTreeMap<String, Count>,
    pub cancelled: Count,
    pub expired: Count,
    /// Median hours from referral to the CBO's first answer (null when suppressed).
    pub median_hours_to_first_answer: Option<f64>,
    pub median_hours_to_close: Option<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CrossSector {
    pub domain: String,
    /// `open`, `declined`, `cancelled`, `expired`, or the close outcome.
    pub outcome: String,
    pub persons: Count,
    pub ed_visits_90_days_before: Count,
    pub ed_visits_90_days_after: Count,
    pub admissions_90_days_before: Count,
    pub admissions_90_days_after: Count,
    pub readmissions_30_days_after: Count,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ReferralReport)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub organization: Option<String>,
    /// Whether counts from 1 to 10 are shown as null.
    pub suppressed: bool,
    pub rows: Vec<Row>,
    pub cross_sector: Vec<CrossSector>,
}

/// `YYYY-MM` → the month's first instant; `end`: the next month's.
pub fn month(s: &str, end: bool, name: &str) -> Result<i64, MeasureError> {
    let bad = || MeasureError::invalid(name, format!("{s:?} is not a month (YYYY-MM)"));
    if s.len() != 7 {
        return Err(bad());
    }
    let range = datetime::parse_range(s).ok_or_else(bad)?;
    Ok(if end { range.hi } else { range.lo })
}

fn month_of(at: i64) -> String {
    datetime::format_instant(at)[..7].to_string()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let m = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((m * 10.0).round() / 10.0)
}

/// The report for referrals made from month `from` to month `to` (inclusive).
pub async fn referrals(
    store: &Store,
    from: &str,
    to: &str,
    organization: Option<&str>,
    exact: bool,
) -> Result<Report, MeasureError> {
    let (start, end) = (month(from, false, "from")?, month(to, true, "to")?);
    // `to` before `from` is an empty period, not an error.
    let steps = if end <= start {
        Vec::new()
    } else {
        store.referral_steps(start, end, organization).await?
    };
    let mut by_task: HashMap<&str, Vec<&ReferralStep>> = HashMap::new();
    for s in &steps {
        by_task.entry(s.task.as_str()).or_default().push(s);
    }
    #[derive(Default)]
    struct Cell {
        created: usize,
        accepted: usize,
        declined: BTreeMap<String, usize>,
        closed: BTreeMap<String, usize>,
        cancelled: usize,
        expired: usize,
        to_answer: Vec<f64>,
        to_close: Vec<f64>,
    }
    let mut cells: BTreeMap<(String, String, String), Cell> = BTreeMap::new();
    // (domain, outcome) → (person, referred at).
    let mut referred: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
    for steps in by_task.values() {
        let Some(created) = steps.iter().find(|s| s.kind == REFERRAL_CREATED) else {
            continue;
        };
        let at = |kind: &str| steps.iter().find(|s| s.kind == kind);
        let key = (
            month_of(created.at),
            if created.domain.is_empty() {
                "unspecified".into()
            } else {
                created.domain.clone()
            },
            created.organization.clone(),
        );
        let cell = cells.entry(key.clone()).or_default();
        cell.created += 1;
        if at(REFERRAL_ACCEPTED).is_some() {
            cell.accepted += 1;
        }
        if let Some(a) = at(REFERRAL_ANSWERED) {
            cell.to_answer.push((a.at - created.at) as f64 / HOUR);
        }
        let detail = |s: &ReferralStep| s.detail.clone().unwrap_or_else(|| "unspecified".into());
        let outcome = if let Some(d) = at(REFERRAL_DECLINED) {
            *cell.declined.entry(detail(d)).or_default() += 1;
            "declined".to_string()
        } else if let Some(c) = at(REFERRAL_CLOSED) {
            *cell.closed.entry(detail(c)).or_default() += 1;
            cell.to_close.push((c.at - created.at) as f64 / HOUR);
            detail(c)
        } else if at(REFERRAL_CANCELLED).is_some() {
            cell.cancelled += 1;
            "cancelled".to_string()
        } else if at(REFERRAL_EXPIRED).is_some() {
            cell.expired += 1;
            "expired".to_string()
        } else {
            "open".to_string()
        };
        if let Some(person) = &created.person {
            referred
                .entry((key.1.clone(), outcome))
                .or_default()
                .push((person.clone(), created.at));
        }
    }
    let rows = cells
        .into_iter()
        .map(|((month, domain, organization), c)| {
            let suppressed = !exact && c.created <= SMALL;
            Row {
                month,
                domain,
                organization,
                created: Count::of(c.created, exact),
                accepted: Count::of(c.accepted, exact),
                declined: Count::of(c.declined.values().sum(), exact),
                declined_by_reason: c
                    .declined
                    .into_iter()
                    .map(|(k, n)| (k, Count::of(n, exact)))
                    .collect(),
                closed: Count::of(c.closed.values().sum(), exact),
                closed_by_outcome: c
                    .closed
                    .into_iter()
                    .map(|(k, n)| (k, Count::of(n, exact)))
                    .collect(),
                cancelled: Count::of(c.cancelled, exact),
                expired: Count::of(c.expired, exact),
                median_hours_to_first_answer: if suppressed {
                    None
                } else {
                    median(c.to_answer)
                },
                median_hours_to_close: if suppressed { None } else { median(c.to_close) },
            }
        })
        .collect();
    // Stays of the referred persons around their referrals.
    let (lo, hi) = (start - 90 * DAY, end + 90 * DAY);
    let mut persons: Vec<String> = referred
        .values()
        .flat_map(|people| people.iter().map(|(p, _)| p.clone()))
        .collect();
    persons.sort_unstable();
    persons.dedup();
    let of_kind = |kind| FactFilter {
        kind,
        domains: &[],
        from: lo,
        to: hi,
    };
    let ed = store
        .person_facts(of_kind(EMERGENCY), Some(&persons))
        .await?;
    let stays = store
        .person_facts(of_kind(INPATIENT), Some(&persons))
        .await?;
    let of_person = |facts: &[PersonFact]| {
        let mut m: HashMap<String, Vec<(i64, Option<i64>)>> = HashMap::new();
        for f in facts {
            m.entry(f.person.clone()).or_default().push((f.at, f.until));
        }
        for v in m.values_mut() {
            v.sort();
        }
        m
    };
    let (ed, stays) = (of_person(&ed), of_person(&stays));
    let cross_sector = referred
        .into_iter()
        .map(|((domain, outcome), people)| {
            let (mut ed_b, mut ed_a, mut ad_b, mut ad_a, mut re) = (0, 0, 0, 0, 0);
            // Each person once, around their first referral in the group.
            let mut first: HashMap<&str, i64> = HashMap::new();
            for (p, t) in &people {
                let e = first.entry(p.as_str()).or_insert(*t);
                *e = (*e).min(*t);
            }
            let persons = first.len();
            for (person, t) in &first {
                let before = |v: &(i64, Option<i64>)| v.0 >= t - 90 * DAY && v.0 < *t;
                let after = |v: &(i64, Option<i64>)| v.0 >= *t && v.0 < t + 90 * DAY;
                let visits = ed.get(*person).map(Vec::as_slice).unwrap_or(&[]);
                ed_b += visits.iter().filter(|v| before(v)).count();
                ed_a += visits.iter().filter(|v| after(v)).count();
                let own = stays.get(*person).map(Vec::as_slice).unwrap_or(&[]);
                ad_b += own.iter().filter(|v| before(v)).count();
                ad_a += own.iter().filter(|v| after(v)).count();
                // An admission after the referral within 30 days of an earlier discharge.
                re += own
                    .windows(2)
                    .filter(|w| after(&w[1]))
                    .filter(|w| w[0].1.is_some_and(|out| w[1].0 - out <= 30 * DAY))
                    .count();
            }
            CrossSector {
                domain,
                outcome,
                persons: Count::of(persons, exact),
                ed_visits_90_days_before: Count::of(ed_b, exact),
                ed_visits_90_days_after: Count::of(ed_a, exact),
                admissions_90_days_before: Count::of(ad_b, exact),
                admissions_90_days_after: Count::of(ad_a, exact),
                readmissions_30_days_after: Count::of(re, exact),
            }
        })
        .collect();
    Ok(Report {
        from: from.to_string(),
        to: to.to_string(),
        organization: organization.map(str::to_string),
        suppressed: !exact,
        rows,
        cross_sector,
    })
}

fn cell(c: Count) -> String {
    c.0.map_or_else(String::new, |n| n.to_string())
}

/// One line per figure: `table,month,domain,organization,outcome,metric,value` (an
/// empty value is a suppressed count).
pub fn csv(report: &Report) -> String {
    let mut out = String::from("table,month,domain,organization,outcome,metric,value\n");
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut line = |fields: [&str; 7]| {
        let cells: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    };
    for r in &report.rows {
        let base = |metric: &str, value: String| {
            [
                "referrals".to_string(),
                r.month.clone(),
                r.domain.clone(),
                r.organization.clone(),
                String::new(),
                metric.to_string(),
                value,
            ]
        };
        let mut lines = vec![
            base("created", cell(r.created)),
            base("accepted", cell(r.accepted)),
            base("declined", cell(r.declined)),
            base("closed", cell(r.closed)),
            base("cancelled", cell(r.cancelled)),
            base("expired", cell(r.expired)),
            base(
                "median_hours_to_first_answer",
                r.median_hours_to_first_answer
                    .map_or_else(String::new, |h| h.to_string()),
            ),
            base(
                "median_hours_to_close",
                r.median_hours_to_close
                    .map_or_else(String::new, |h| h.to_string()),
            ),
        ];
        for (reason, n) in &r.declined_by_reason {
            let mut l = base("declined", cell(*n));
            l[4] = reason.clone();
            lines.push(l);
        }
        for (outcome, n) in &r.closed_by_outcome {
            let mut l = base("closed", cell(*n));
            l[4] = outcome.clone();
            lines.push(l);
        }
        for l in &lines {
            line([&l[0], &l[1], &l[2], &l[3], &l[4], &l[5], &l[6]]);
        }
    }
    for c in &report.cross_sector {
        for (metric, n) in [
            ("persons", c.persons),
            ("ed_visits_90_days_before", c.ed_visits_90_days_before),
            ("ed_visits_90_days_after", c.ed_visits_90_days_after),
            ("admissions_90_days_before", c.admissions_90_days_before),
            ("admissions_90_days_after", c.admissions_90_days_after),
            ("readmissions_30_days_after", c.readmissions_30_days_after),
        ] {
            line([
                "cross_sector",
                "",
                &c.domain,
                "",
                &c.outcome,
                metric,
                &cell(n),
            ]);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page with its charts drawn on the server (inline SVG, no script, no stylesheet):
/// per month, bars of referrals made, accepted, declined and closed, each bar carrying
/// its figure (`data-value`, a `<title>` and a label), and the tables behind them.
pub fn html(report: &Report) -> String {
    let mut months: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut hidden = false;
    for r in &report.rows {
        let m = months.entry(r.month.as_str()).or_default();
        for (i, c) in [r.created, r.accepted, r.declined, r.closed]
            .iter()
            .enumerate()
        {
            match c.0 {
                Some(n) => m[i] += n,
                None => hidden = true,
            }
        }
    }
    let series = ["made", "accepted", "declined", "closed"];
    let colours = ["#1f4e79", "#2e7d32", "#b71c1c", "#4a148c"];
    let max = months
        .values()
        .flat_map(|v| v.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let (bar, gap, height) = (18, 14, 160);
    let width = 40 + months.len() * (4 * bar + gap);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="chart-title" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><title id="chart-title">Referrals per month: made, accepted, declined, closed</title>"#,
        w = width,
        h = height + 40
    );
    for (mi, (month, values)) in months.iter().enumerate() {
        let x0 = 40 + mi * (4 * bar + gap);
        for (i, v) in values.iter().enumerate() {
            let h = (*v * height) / max;
            let x = x0 + i * bar;
            let y = height - h + 10;
            svg.push_str(&format!(
                r#"<g class="bar" data-month="{m}" data-series="{s}" data-value="{v}"><title>{m} {s}: {v}</title><rect x="{x}" y="{y}" width="{bw}" height="{h}" fill="{c}"/><text x="{tx}" y="{ty}" font-size="9" text-anchor="middle">{v}</text></g>"#,
                m = escape(month),
                s = series[i],
                bw = bar - 2,
                c = colours[i],
                tx = x + bar / 2,
                ty = y.saturating_sub(2).max(9),
            ));
        }
        svg.push_str(&format!(
            r#"<text x="{x}" y="{y}" font-size="11">{m}</text>"#,
            x = x0,
            y = height + 28,
            m = escape(month)
        ));
    }
    svg.push_str("</svg>");
    let mut table = String::from(
        "<table><caption>Referrals by month, domain and organisation</caption><thead><tr><th scope=\"col\">Month</th><th scope=\"col\">Domain</th><th scope=\"col\">Organisation</th><th scope=\"col\">Made</th><th scope=\"col\">Accepted</th><th scope=\"col\">Declined</th><th scope=\"col\">Closed</th><th scope=\"col\">Cancelled</th><th scope=\"col\">Expired</th><th scope=\"col\">Median hours to first answer</th><th scope=\"col\">Median hours to close</th></tr></thead><tbody>",
    );
    let show = |c: Count| c.0.map_or_else(|| "&lt;11".to_string(), |n| n.to_string());
    let hours = |h: Option<f64>| h.map_or_else(|| "–".to_string(), |h| h.to_string());
    for r in &report.rows {
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.month), escape(&r.domain), escape(&r.organization),
            show(r.created), show(r.accepted), show(r.declined), show(r.closed),
            show(r.cancelled), show(r.expired),
            hours(r.median_hours_to_first_answer), hours(r.median_hours_to_close),
        ));
    }
    table.push_str("</tbody></table>");
    let mut cross = String::from(
        "<table><caption>Persons referred: hospital use in the 90 days before and after the referral</caption><thead><tr><th scope=\"col\">Domain</th><th scope=\"col\">Outcome</th><th scope=\"col\">Persons</th><th scope=\"col\">ED visits before</th><th scope=\"col\">ED visits after</th><th scope=\"col\">Admissions before</th><th scope=\"col\">Admissions after</th><th scope=\"col\">30-day readmissions after</th></tr></thead><tbody>",
    );
    for c in &report.cross_sector {
        cross.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.domain), escape(&c.outcome), show(c.persons),
            show(c.ed_visits_90_days_before), show(c.ed_visits_90_days_after),
            show(c.admissions_90_days_before), show(c.admissions_90_days_after),
            show(c.readmissions_30_days_after),
        ));
    }
    cross.push_str("</tbody></table>");
    let note = if report.suppressed {
        "<p>Counts from 1 to 10 are shown as &lt;11 and left out of the chart (small-cell suppression).</p>"
    } else {
        ""
    };
    let partial = if hidden {
        "<p>Some months' bars leave out suppressed counts.</p>"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Crossway: referrals {from} to {to}</title></head><body><main><h1>Referrals from {from} to {to}</h1>{note}{partial}<figure><figcaption>Referrals per month</figcaption>{svg}</figure>{table}{cross}</main></body></html>",
        from = escape(&report.from),
        to = escape(&report.to),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_are_suppressed_unless_exact() {
        assert_eq!(Count::of(0, false), Count(Some(0)));
        assert_eq!(Count::of(7, false), Count(None));
        assert_eq!(Count::of(11, false), Count(Some(11)));
        assert_eq!(Count::of(7, true), Count(Some(7)));
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert!(month("2026-13", false, "from").is_err());
        assert!(month("2026", false, "from").is_err());
    }
}
