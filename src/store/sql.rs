//! SQL text built at run time: search queries from a [`SearchQuery`], and multi-row
//! writes. Placeholders are `$n`, which both SQLite and PostgreSQL accept.

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::{Backend, Staged, StoredResource};
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
}

pub fn bind<'q>(
    mut q: Query<'q, Any, AnyArguments>,
    args: Vec<Arg>,
) -> Query<'q, Any, AnyArguments> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(i) => q.bind(i),
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

/// Multi-row statements that write staged versions, current pointers and index rows.
pub(super) fn write_batch(backend: Backend, staged: &[Staged]) -> Vec<(String, Vec<Arg>)> {
    let mut out = Vec::new();

    let mut p = Params::default();
    let rows: Vec<String> = staged
        .iter()
        .map(|s| {
            let r = &s.resource;
            format!(
                "({}, {}, {}, {}, {})",
                p.text(&r.resource_type),
                p.text(&r.id),
                p.int(r.version),
                p.int(r.last_updated),
                p.text(&r.body)
            )
        })
        .collect();
    out.push((
        format!(
            "INSERT INTO resource_versions (res_type, res_id, version, last_updated, body) VALUES {}",
            rows.join(", ")
        ),
        p.args,
    ));

    let mut p = Params::default();
    let rows: Vec<String> = staged
        .iter()
        .map(|s| {
            let r = &s.resource;
            let seq = match backend {
                Backend::Sqlite => p.int(s.seq),
                Backend::Postgres => "nextval('resource_seq')".to_string(),
            };
            format!(
                "({}, {}, {}, {seq}, {})",
                p.text(&r.resource_type),
                p.text(&r.id),
                p.int(r.version),
                p.int(r.last_updated)
            )
        })
        .collect();
    out.push((
        format!(
            "INSERT INTO resources (res_type, res_id, version, seq, last_updated) VALUES {} \
             ON CONFLICT (res_type, res_id) DO UPDATE SET version = excluded.version, \
             seq = excluded.seq, last_updated = excluded.last_updated",
            rows.join(", ")
        ),
        p.args,
    ));

    let replaced: Vec<&Staged> = staged.iter().filter(|s| !s.is_new).collect();
    if !replaced.is_empty() {
        for t in [
            "search_tokens",
            "search_refs",
            "search_strings",
            "search_dates",
        ] {
            let mut p = Params::default();
            let keys: Vec<String> = replaced
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

    let mut p = Params::default();
    let mut rows = Vec::new();
    for s in staged {
        let (ty, id) = (&s.resource.resource_type, &s.resource.id);
        for (param, system, code) in &s.index.tokens {
            rows.push(format!(
                "({}, {}, {}, {}, {})",
                p.text(ty),
                p.text(id),
                p.text(*param),
                p.text(system),
                p.text(code)
            ));
        }
    }
    if !rows.is_empty() {
        out.push((
            format!(
                "INSERT INTO search_tokens (res_type, res_id, param, system, code) VALUES {}",
                rows.join(", ")
            ),
            p.args,
        ));
    }

    let mut p = Params::default();
    let mut rows = Vec::new();
    for s in staged {
        let (ty, id) = (&s.resource.resource_type, &s.resource.id);
        for (param, target, target_type, target_id) in &s.index.references {
            let local = i64::from(!target.contains("://"));
            rows.push(format!(
                "({}, {}, {}, {}, {}, {}, {})",
                p.text(ty),
                p.text(id),
                p.text(*param),
                p.text(target),
                p.text(target_type),
                p.text(target_id),
                p.int(local)
            ));
        }
    }
    if !rows.is_empty() {
        out.push((
            format!(
                "INSERT INTO search_refs (res_type, res_id, param, target, target_type, target_id, is_local) VALUES {}",
                rows.join(", ")
            ),
            p.args,
        ));
    }

    let mut p = Params::default();
    let mut rows = Vec::new();
    for s in staged {
        let (ty, id) = (&s.resource.resource_type, &s.resource.id);
        for (param, value) in &s.index.strings {
            rows.push(format!(
                "({}, {}, {}, {})",
                p.text(ty),
                p.text(id),
                p.text(*param),
                p.text(value)
            ));
        }
    }
    if !rows.is_empty() {
        out.push((
            format!(
                "INSERT INTO search_strings (res_type, res_id, param, value) VALUES {}",
                rows.join(", ")
            ),
            p.args,
        ));
    }

    let mut p = Params::default();
    let mut rows = Vec::new();
    for s in staged {
        let (ty, id) = (&s.resource.resource_type, &s.resource.id);
        for (param, range) in &s.index.dates {
            rows.push(format!(
                "({}, {}, {}, {}, {})",
                p.text(ty),
                p.text(id),
                p.text(*param),
                p.int(range.lo),
                p.int(range.hi)
            ));
        }
    }
    if !rows.is_empty() {
        out.push((
            format!(
                "INSERT INTO search_dates (res_type, res_id, param, lo, hi) VALUES {}",
                rows.join(", ")
            ),
            p.args,
        ));
    }
    out
}
