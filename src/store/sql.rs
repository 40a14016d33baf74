//! SQL text built at run time: search queries from a [`SearchQuery`], and multi-row
//! writes. Placeholders are `$n`, which both SQLite and PostgreSQL accept.

use std::collections::{HashMap, HashSet};

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::{Backend, Referral, Staged, StoredResource};
use crate::fhir::search::{Filter, Modifier, ParamType, Prefix, SearchQuery, SearchValue, Sort};

pub const READ_CURRENT: &str = "SELECT r.version, r.last_updated, v.body FROM resources r \
     JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
     WHERE r.res_type = $1 AND r.res_id = $2";

pub const READ_CURRENT_FOR_UPDATE: &str = "SELECT r.version, r.last_updated, v.body FROM resources r \
     JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
     WHERE r.res_type = $1 AND r.res_id = $2 FOR UPDATE OF r";

#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
    /// SQL written inline instead of bound, e.g. `nextval('resource_seq')`.
    Raw(&'static str),
}

pub fn bind<'q>(
    mut q: Query<'q, Any, AnyArguments>,
    args: Vec<Arg>,
) -> Query<'q, Any, AnyArguments> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(i) => q.bind(i),
            Arg::Raw(_) => unreachable!("raw SQL is written inline, never bound"),
        };
    }
    q
}

/// Collects bind arguments and hands out their placeholders.
#[derive(Default)]
struct Params {
    args: Vec<Arg>,
}

impl Params {
    fn text(&mut self, s: impl Into<String>) -> String {
        self.args.push(Arg::Text(s.into()));
        format!("${}", self.args.len())
    }

    fn int(&mut self, i: i64) -> String {
        self.args.push(Arg::Int(i));
        format!("${}", self.args.len())
    }
}

/// `SELECT id, version, last_updated, seq, body` for one page (+1 row to detect a next page).
pub fn search(q: &SearchQuery) -> (String, Vec<Arg>) {
    let mut p = Params::default();
    let mut sql = format!(
        "SELECT r.res_id, r.version, r.last_updated, r.seq, v.body FROM resources r \
         JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
         WHERE r.res_type = {}",
        p.text(&q.resource_type)
    );
    for f in &q.filters {
        sql.push_str(" AND ");
        sql.push_str(&filter(f, &mut p));
    }
    if let Some(c) = q.cursor {
        let cond = match q.sort {
            Sort::Default => format!("r.seq > {}", p.int(c.seq)),
            Sort::LastUpdatedAsc => {
                let (a, b) = (p.int(c.last_updated), p.int(c.seq));
                format!("(r.last_updated > {a} OR (r.last_updated = {a} AND r.seq > {b}))")
            }
            Sort::LastUpdatedDesc => {
                let (a, b) = (p.int(c.last_updated), p.int(c.seq));
                format!("(r.last_updated < {a} OR (r.last_updated = {a} AND r.seq < {b}))")
            }
        };
        sql.push_str(" AND ");
        sql.push_str(&cond);
    }
    sql.push_str(match q.sort {
        Sort::Default => " ORDER BY r.seq",
        Sort::LastUpdatedAsc => " ORDER BY r.last_updated, r.seq",
        Sort::LastUpdatedDesc => " ORDER BY r.last_updated DESC, r.seq DESC",
    });
    sql.push_str(&format!(" LIMIT {}", p.int(q.count as i64 + 1)));
    (sql, p.args)
}

fn table(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Token | ParamType::Uri | ParamType::Id => "search_tokens",
        ParamType::Reference => "search_refs",
        ParamType::String => "search_strings",
        ParamType::Date | ParamType::LastUpdated => "search_dates",
    }
}

fn filter(f: &Filter, p: &mut Params) -> String {
    let def = f.param;
    if f.modifier == Modifier::Missing {
        let t = table(def.kind);
        let exists = format!(
            "EXISTS (SELECT 1 FROM {t} x WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.param = {})",
            p.text(def.name)
        );
        return if f.missing {
            format!("NOT {exists}")
        } else {
            exists
        };
    }
    let alternatives: Vec<String> = f.values.iter().map(|v| value_condition(f, v, p)).collect();
    let any = format!("({})", alternatives.join(" OR "));
    match def.kind {
        ParamType::Id | ParamType::LastUpdated => any,
        kind => format!(
            "EXISTS (SELECT 1 FROM {} x WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.param = {} AND {any})",
            table(kind),
            p.text(def.name)
        ),
    }
}

fn value_condition(f: &Filter, v: &SearchValue, p: &mut Params) -> String {
    match (f.param.kind, v) {
        (ParamType::Id, SearchValue::Token { code: Some(id), .. }) => {
            format!("r.res_id = {}", p.text(id))
        }
        (ParamType::LastUpdated, SearchValue::Date { prefix, range }) => {
            // An instant is the one-microsecond range [t, t+1).
            date_condition(
                *prefix,
                "r.last_updated",
                "(r.last_updated + 1)",
                range.lo,
                range.hi,
                p,
            )
        }
        (_, SearchValue::Date { prefix, range }) => {
            date_condition(*prefix, "x.lo", "x.hi", range.lo, range.hi, p)
        }
        (_, SearchValue::Token { system, code }) => {
            let mut parts = Vec::new();
            if let Some(s) = system {
                parts.push(format!("x.system = {}", p.text(s)));
            }
            if let Some(c) = code {
                parts.push(format!("x.code = {}", p.text(c)));
            }
            if parts.is_empty() {
                "1 = 1".into()
            } else {
                parts.join(" AND ")
            }
        }
        (
            _,
            SearchValue::Reference {
                target: Some(t), ..
            },
        ) => format!("x.target = {}", p.text(t)),
        (_, SearchValue::Reference { target: None, id }) => format!("x.target_id = {}", p.text(id)),
        (_, SearchValue::String(s)) => {
            let norm = crate::fhir::search::normalize_string(s);
            match f.modifier {
                Modifier::Exact => format!("x.value = {}", p.text(norm)),
                Modifier::Contains => format!(
                    "x.value LIKE {} ESCAPE '\\'",
                    p.text(format!("%{}%", like_escape(&norm)))
                ),
                _ => format!(
                    "x.value LIKE {} ESCAPE '\\'",
                    p.text(format!("{}%", like_escape(&norm)))
                ),
            }
        }
    }
}

/// FHIR date search semantics on half-open ranges: resource [lo, hi) against query [ql, qh).
fn date_condition(prefix: Prefix, lo: &str, hi: &str, ql: i64, qh: i64, p: &mut Params) -> String {
    let (ql, qh) = (p.int(ql), p.int(qh));
    let eq = format!("({lo} >= {ql} AND {hi} <= {qh})");
    match prefix {
        Prefix::Eq => eq,
        Prefix::Ne => format!("NOT {eq}"),
        Prefix::Gt => format!("{hi} > {qh}"),
        Prefix::Lt => format!("{lo} < {ql}"),
        Prefix::Ge => format!("({hi} > {qh} OR {eq})"),
        Prefix::Le => format!("({lo} < {ql} OR {eq})"),
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Local targets of one reference parameter for the resources on a page.
pub fn include(source_type: &str, param: &str, page: &[StoredResource]) -> (String, Vec<Arg>) {
    let mut p = Params::default();
    let ids: Vec<String> = page.iter().map(|m| p.text(&m.id)).collect();
    let sql = format!(
        "SELECT DISTINCT r.res_type, r.res_id, r.version, r.last_updated, v.body FROM search_refs s \
         JOIN resources r ON r.res_type = s.target_type AND r.res_id = s.target_id \
         JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
         WHERE s.res_type = {} AND s.param = {} AND s.is_local = 1 AND s.res_id IN ({})",
        p.text(source_type),
        p.text(param),
        ids.join(", ")
    );
    (sql, p.args)
}

/// Bind arguments per statement: below SQLite's 32766 and PostgreSQL's 65535 limits.
const MAX_ARGS: usize = 30_000;

/// Multi-row `INSERT … VALUES (…), (…) suffix`, split so no statement exceeds
/// [`MAX_ARGS`]. `Arg::Raw` values are written inline (e.g. `nextval(…)`).
pub fn insert_rows(
    head: &str,
    rows: impl Iterator<Item = Vec<Arg>>,
    suffix: &str,
) -> Vec<(String, Vec<Arg>)> {
    let mut out = Vec::new();
    let mut p = Params::default();
    let mut values: Vec<String> = Vec::new();
    let mut finish = |p: &mut Params, values: &mut Vec<String>| {
        if !values.is_empty() {
            out.push((
                format!("{head} {} {suffix}", values.join(", ")),
                std::mem::take(&mut p.args),
            ));
            values.clear();
        }
    };
    for row in rows {
        if p.args.len() + row.len() > MAX_ARGS {
            finish(&mut p, &mut values);
        }
        let cells: Vec<String> = row
            .into_iter()
            .map(|a| match a {
                Arg::Raw(sql) => sql.to_string(),
                Arg::Text(t) => p.text(t),
                Arg::Int(i) => p.int(i),
            })
            .collect();
        values.push(format!("({})", cells.join(", ")));
    }
    finish(&mut p, &mut values);
    out
}

/// Statements that write staged versions, current pointers and index rows.
pub(super) fn write_resources(backend: Backend, all: &[Staged]) -> Vec<(String, Vec<Arg>)> {
    let text = |s: &str| Arg::Text(s.to_string());
    // Every version is kept; the current pointer and the index describe the last one.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, s) in all.iter().enumerate() {
        last.insert((&s.resource.resource_type, &s.resource.id), i);
    }
    let replaced: HashSet<(&str, &str)> = all
        .iter()
        .filter(|s| !s.is_new)
        .map(|s| (s.resource.resource_type.as_str(), s.resource.id.as_str()))
        .collect();
    let staged: Vec<&Staged> = all
        .iter()
        .enumerate()
        .filter(|(i, s)| last[&(s.resource.resource_type.as_str(), s.resource.id.as_str())] == *i)
        .map(|(_, s)| s)
        .collect();
    let mut out = insert_rows(
        "INSERT INTO resource_versions (res_type, res_id, version, last_updated, body) VALUES",
        all.iter().map(|s| {
            let r = &s.resource;
            vec![
                text(&r.resource_type),
                text(&r.id),
                Arg::Int(r.version),
                Arg::Int(r.last_updated),
                text(&r.body),
            ]
        }),
        "",
    );
    out.extend(insert_rows(
        "INSERT INTO resources (res_type, res_id, version, seq, last_updated) VALUES",
        staged.iter().map(|s| {
            let r = &s.resource;
            let seq = match backend {
                Backend::Sqlite => Arg::Int(s.seq),
                Backend::Postgres => Arg::Raw("nextval('resource_seq')"),
            };
            vec![
                text(&r.resource_type),
                text(&r.id),
                Arg::Int(r.version),
                seq,
                Arg::Int(r.last_updated),
            ]
        }),
        "ON CONFLICT (res_type, res_id) DO UPDATE SET version = excluded.version, \
         seq = excluded.seq, last_updated = excluded.last_updated",
    ));

    // Index rows describe the current version only: drop those of replaced versions.
    let replaced: Vec<&&Staged> = staged
        .iter()
        .filter(|s| replaced.contains(&(s.resource.resource_type.as_str(), s.resource.id.as_str())))
        .collect();
    for chunk in replaced.chunks(MAX_ARGS / 2) {
        for t in [
            "search_tokens",
            "search_refs",
            "search_strings",
            "search_dates",
        ] {
            let mut p = Params::default();
            let keys: Vec<String> = chunk
                .iter()
                .map(|s| {
                    format!(
                        "(res_type = {} AND res_id = {})",
                        p.text(&s.resource.resource_type),
                        p.text(&s.resource.id)
                    )
                })
                .collect();
            out.push((
                format!("DELETE FROM {t} WHERE {}", keys.join(" OR ")),
                p.args,
            ));
        }
    }

    let owner = |s: &Staged| (text(&s.resource.resource_type), text(&s.resource.id));
    out.extend(insert_rows(
        "INSERT INTO search_tokens (res_type, res_id, param, system, code) VALUES",
        staged.iter().flat_map(|s| {
            s.index.tokens.iter().map(move |(param, system, code)| {
                let (t, i) = owner(s);
                vec![t, i, text(param), text(system), text(code)]
            })
        }),
        "",
    ));
    out.extend(insert_rows(
        "INSERT INTO search_refs (res_type, res_id, param, target, target_type, target_id, is_local) VALUES",
        staged.iter().flat_map(|s| {
            s.index.references.iter().map(move |(param, target, target_type, target_id)| {
                let (t, i) = owner(s);
                let local = Arg::Int(i64::from(!target.contains("://")));
                vec![t, i, text(param), text(target), text(target_type), text(target_id), local]
            })
        }),
        "",
    ));
    out.extend(insert_rows(
        "INSERT INTO search_strings (res_type, res_id, param, value) VALUES",
        staged.iter().flat_map(|s| {
            s.index.strings.iter().map(move |(param, value)| {
                let (t, i) = owner(s);
                vec![t, i, text(param), text(value)]
            })
        }),
        "",
    ));
    out.extend(insert_rows(
        "INSERT INTO search_dates (res_type, res_id, param, lo, hi) VALUES",
        staged.iter().flat_map(|s| {
            s.index.dates.iter().map(move |(param, range)| {
                let (t, i) = owner(s);
                vec![t, i, text(param), Arg::Int(range.lo), Arg::Int(range.hi)]
            })
        }),
        "",
    ));
    out
}

pub(super) fn write_referral(r: &Referral, is_new: bool, at: i64) -> (&'static str, Vec<Arg>) {
    if is_new {
        (
            "INSERT INTO referrals (id, organization, task_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
            vec![
                Arg::Text(r.id.clone()),
                Arg::Text(r.organization.clone()),
                Arg::Text(r.task_id.clone()),
                Arg::Text(r.status.clone()),
                Arg::Int(at),
            ],
        )
    } else {
        (
            "UPDATE referrals SET status = $1, updated_at = $2 WHERE id = $3",
            vec![
                Arg::Text(r.status.clone()),
                Arg::Int(at),
                Arg::Text(r.id.clone()),
            ],
        )
    }
}
