//! SQL text built at run time: search queries from a [`SearchQuery`], and multi-row
//! writes. Placeholders are `$n`, which both SQLite and PostgreSQL accept.
//!
//! # How a search runs
//! One filter that names a record (identifier, patient, subject, focus, based-on,
//! part-of, output) drives the query from its index; other token and reference filters
//! are probed per candidate by primary key while walking `resources` in result order,
//! so a page of a broad query (all Tasks of an owner, newest first) stops after one
//! page. A parameter that is another's subset (`patient` of `subject`) stores no index
//! rows and is answered from the other's (`ParamDef::indexed_as`). Results are ordered
//! by `(last_updated, seq)` (oldest first unless `_sort=-_lastUpdated`); paging is
//! keyset (`_cursor` = the last row's pair), so `next` links stay correct while data
//! changes. `_include` reads targets from the matches' stored index rows. The page is
//! chosen on the narrow `resources` rows and bodies are joined (or, on the embedded
//! store, taken from memory) afterwards; a search page checks the versions it matched
//! against memory.

use std::collections::HashMap;

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::{Backend, Staged};
use crate::resource::search::{
    Filter, Include, IndexEntries, Modifier, ParamDef, ParamType, Prefix, SearchQuery, SearchValue,
    Sort,
};

/// The highest committed version is the current one (versions are never removed).
pub const READ_CURRENT: &str = "SELECT version, last_updated, body FROM resource_versions \
     WHERE res_type = $1 AND res_id = $2 ORDER BY version DESC LIMIT 1";

/// The write path also needs the index rows the current version produced.
pub const READ_CURRENT_TO_REPLACE: &str = "SELECT r.version, r.last_updated, v.body, v.index_rows FROM resources r \
     JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
     WHERE r.res_type = $1 AND r.res_id = $2";

/// As [`READ_CURRENT_TO_REPLACE`], locking the row until COMMIT (PostgreSQL).
pub const READ_CURRENT_TO_REPLACE_LOCKED: &str = "SELECT r.version, r.last_updated, v.body, v.index_rows FROM resources r \
     JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
     WHERE r.res_type = $1 AND r.res_id = $2 FOR UPDATE OF r";

#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
    /// Fills the unused rows of a fixed-size insert (`insert_values`).
    Null,
}

/// A statement run once per batch over the batch's keys. On PostgreSQL it is planned at
/// each execution, for the table sizes of the moment: a generic plan cached while a
/// table was still small (a fresh database) keeps scanning it in full until the next
/// ANALYZE, 5 ms per batch at 35,000 identifiers in the MLLP benchmark.
pub fn per_batch<'q>(
    backend: Backend,
    q: Query<'q, Any, AnyArguments>,
) -> Query<'q, Any, AnyArguments> {
    q.persistent(backend == Backend::Sqlite)
}

pub fn bind<'q>(
    mut q: Query<'q, Any, AnyArguments>,
    args: Vec<Arg>,
) -> Query<'q, Any, AnyArguments> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(i) => q.bind(i),
            Arg::Null => q.bind(None::<String>),
        };
    }
    q
}

/// Collects bind arguments and hands out their placeholders.
#[derive(Default)]
pub(super) struct Params {
    pub(super) args: Vec<Arg>,
}

impl Params {
    fn push(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    pub(super) fn text(&mut self, s: impl Into<String>) -> String {
        self.push(Arg::Text(s.into()))
    }

    pub(super) fn int(&mut self, i: i64) -> String {
        self.push(Arg::Int(i))
    }
}

/// `SELECT id, version, last_updated, seq, body` for one page (+1 row to detect a next page).
pub fn search(backend: Backend, q: &SearchQuery, with_bodies: bool) -> (String, Vec<Arg>) {
    let mut p = Params::default();
    let ty = p.text(&q.resource_type);
    let mut sql = matching(backend, q, &ty, &mut p);
    if let Some(c) = q.cursor {
        let cond = match q.sort {
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
    let order = match q.sort {
        Sort::LastUpdatedAsc => "ORDER BY r.last_updated, r.seq",
        Sort::LastUpdatedDesc => "ORDER BY r.last_updated DESC, r.seq DESC",
    };
    // Columns: id, version, last_updated, seq, then index_rows (for `_include`) and the
    // body when asked for.
    let mut columns = String::from("r.res_id, r.version, r.last_updated, r.seq");
    if !q.includes.is_empty() {
        columns.push_str(", v.index_rows");
    }
    if with_bodies {
        columns.push_str(", v.body");
    }
    let limit = p.int(q.count as i64 + 1);
    let sql = if q.includes.is_empty() && !with_bodies {
        format!("SELECT {columns} FROM ({sql} {order} LIMIT {limit}) r {order}")
    } else {
        format!(
            "SELECT {columns} FROM ({sql} {order} LIMIT {limit}) r \
             JOIN resource_versions v ON v.res_type = {ty} AND v.res_id = r.res_id AND v.version = r.version {order}"
        )
    };
    (sql, p.args)
}

/// `SELECT COUNT(*)` of every resource the query matches (`_total=accurate`,
/// `_count=0`): the page's own conditions without cursor, order or limit.
pub fn count(backend: Backend, q: &SearchQuery) -> (String, Vec<Arg>) {
    let mut p = Params::default();
    let ty = p.text(&q.resource_type);
    let sql = matching(backend, q, &ty, &mut p);
    (format!("SELECT COUNT(*) FROM ({sql}) c"), p.args)
}

/// The rows a query matches, unordered: `SELECT id, version, last_updated, seq`.
fn matching(backend: Backend, q: &SearchQuery, ty: &str, p: &mut Params) -> String {
    // A filter that names one record (an identifier, a patient, a focus) matches few
    // resources: the query starts from its matches. Otherwise it walks the resources in
    // result order and probes each filter's primary key, stopping at a page.
    let driver = q.filters.iter().position(drives);
    // SQLite keeps the written join order only for CROSS JOIN; PostgreSQL plans by cost.
    let join = match backend {
        Backend::Sqlite => "CROSS JOIN",
        Backend::Postgres => "JOIN",
    };
    let from = match driver {
        Some(i) => format!(
            "(SELECT DISTINCT res_id FROM ({}) d) m {join} resources r ON r.res_type = {ty} AND r.res_id = m.res_id",
            matching_ids(ty, &q.filters[i], p)
        ),
        None => "resources r".to_string(),
    };
    // The page is chosen on the narrow `resources` rows; bodies are joined to it after.
    let mut sql = format!(
        "SELECT r.res_id, r.version, r.last_updated, r.seq FROM {from} WHERE r.res_type = {ty}"
    );
    for (i, f) in q.filters.iter().enumerate() {
        if Some(i) != driver {
            sql.push_str(" AND ");
            sql.push_str(&filter(ty, f, p));
        }
    }
    sql
}

fn table(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Token | ParamType::Uri | ParamType::Id => "search_tokens",
        ParamType::Reference => "search_refs",
        ParamType::String => "search_strings",
        ParamType::Date | ParamType::LastUpdated => "search_dates",
    }
}

/// One filter as `r.res_id IN (…)`: an uncorrelated subquery that the index table's
/// primary key (type, parameter, value) answers directly.
/// Filters that identify one record's resources, and so match few of them.
fn drives(f: &Filter) -> bool {
    f.modifier == Modifier::None
        && match f.param.kind {
            ParamType::Token => f.param.name == "identifier",
            ParamType::Reference => matches!(
                f.param.name,
                "patient" | "subject" | "focus" | "based-on" | "part-of" | "output"
            ),
            _ => false,
        }
}

/// `x.param = …`, or `x.param IN (…)` for a parameter that other parameters' rows also
/// answer (`ParamDef::also`).
fn param_rows(def: &ParamDef, p: &mut Params) -> String {
    if def.also.is_empty() {
        return format!("x.param = {}", p.text(def.indexed_as));
    }
    let names: Vec<String> = std::iter::once(def.indexed_as)
        .chain(def.also.iter().copied())
        .map(|name| p.text(name))
        .collect();
    format!("x.param IN ({})", names.join(", "))
}

/// `SELECT x.res_id FROM <index> x WHERE …` for one filter's values.
fn matching_ids(ty: &str, f: &Filter, p: &mut Params) -> String {
    let rows = param_rows(f.param, p);
    let alternatives: Vec<String> = f.values.iter().map(|v| value_condition(f, v, p)).collect();
    format!(
        "SELECT x.res_id FROM {} x WHERE x.res_type = {ty} AND {rows} AND ({})",
        table(f.param.kind),
        alternatives.join(" OR ")
    )
}

/// One filter as a condition on `r`. Token and reference filters probe their index's
/// primary key (type, parameter, value, id) for each candidate; string and date filters,
/// whose keys do not end in the id, and `:missing` test membership in the matching set.
/// The probe's `OFFSET 0` keeps PostgreSQL from turning it into a join over every match
/// (it cannot tell a status shared by most rows from a rare one).
fn filter(ty: &str, f: &Filter, p: &mut Params) -> String {
    let def = f.param;
    if f.modifier == Modifier::Missing {
        let mut sub = format!(
            "SELECT x.res_id FROM {} x WHERE x.res_type = {ty} AND {}",
            table(def.kind),
            param_rows(def, p)
        );
        if def.indexed_as != def.name {
            // Only the shared rows to a target type this parameter allows count.
            let types: Vec<String> = def
                .targets
                .iter()
                .flat_map(|t| [format!("{t}/%"), format!("%/{t}/%")])
                .map(|pattern| format!("x.target LIKE {}", p.text(pattern)))
                .collect();
            sub.push_str(&format!(" AND ({})", types.join(" OR ")));
        }
        let op = if f.missing { "NOT IN" } else { "IN" };
        return format!("r.res_id {op} ({sub})");
    }
    match def.kind {
        ParamType::Id | ParamType::LastUpdated => {
            let alternatives: Vec<String> =
                f.values.iter().map(|v| value_condition(f, v, p)).collect();
            format!("({})", alternatives.join(" OR "))
        }
        ParamType::Token | ParamType::Uri | ParamType::Reference => {
            let rows = param_rows(def, p);
            let alternatives: Vec<String> =
                f.values.iter().map(|v| value_condition(f, v, p)).collect();
            format!(
                "EXISTS (SELECT 1 FROM {} x WHERE x.res_type = r.res_type AND {rows} AND ({}) AND x.res_id = r.res_id LIMIT 1 OFFSET 0)",
                table(def.kind),
                alternatives.join(" OR ")
            )
        }
        ParamType::String | ParamType::Date => format!("r.res_id IN ({})", matching_ids(ty, f, p)),
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
        (_, SearchValue::Reference { target: None, id }) => {
            // A bare id matches a local reference to any type the parameter allows.
            let types = if f.param.targets.is_empty() {
                crate::resource::RESOURCE_TYPES
            } else {
                f.param.targets
            };
            let targets: Vec<String> = types.iter().map(|t| p.text(format!("{t}/{id}"))).collect();
            format!("x.target IN ({})", targets.join(", "))
        }
        (_, SearchValue::String(s)) => {
            let norm = crate::resource::search::normalize_string(s);
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

/// Current versions of the given `(type, id)` pairs (for `_include`).
pub fn read_many(keys: &[(String, String)]) -> (String, Vec<Arg>) {
    let mut p = Params::default();
    let pairs: Vec<String> = keys
        .iter()
        .map(|(t, id)| format!("({}, {})", p.text(t), p.text(id)))
        .collect();
    let sql = format!(
        "SELECT r.res_type, r.res_id, r.version, r.last_updated, v.body FROM resources r \
         JOIN resource_versions v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
         WHERE (r.res_type, r.res_id) IN (VALUES {})",
        pairs.join(", ")
    );
    (sql, p.args)
}

/// As [`read_many_to_replace`] on PostgreSQL, locking the rows until COMMIT: `$1` is a
/// JSON array of `[type, id]`, read and locked in its order, each by its own index
/// probe whatever the statistics say (see `Tx::preload_identity`). A fixed text, so it
/// is prepared once: planning the key list anew cost a third of a millisecond per
/// batch, at ~600 batches/s in CBO accepts.
pub const READ_MANY_TO_REPLACE_LOCKED: &str = "SELECT f.* FROM jsonb_array_elements($1::jsonb) AS k \
     CROSS JOIN LATERAL (SELECT r.res_type, r.res_id, r.version, r.last_updated, v.body, v.index_rows \
     FROM resources r JOIN resource_versions v \
     ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version = r.version \
     WHERE r.res_type = k ->> 0 AND r.res_id = k ->> 1 LIMIT 1 FOR UPDATE OF r) AS f";

/// As [`read_many`], with each version's index rows (for replacing it).
pub fn read_many_to_replace(keys: &[(String, String)]) -> (String, Vec<Arg>) {
    let (text, args) = read_many(keys);
    (
        text.replacen("v.body FROM", "v.body, v.index_rows FROM", 1),
        args,
    )
}

/// The `(type, id)` targets of local references one `_include` returns, read from a
/// version's stored index rows.
pub fn local_targets(index_rows: &str, include: &Include) -> Vec<(String, String)> {
    let param = include.param;
    let Ok(rows) = serde_json::from_str::<IndexRows<String, i64>>(index_rows) else {
        return Vec::new();
    };
    rows.r
        .into_iter()
        .filter(|(p, target)| {
            p == param.indexed_as && !target.contains("://") && include.returns(target)
        })
        .filter_map(|(_, target)| {
            target
                .split_once('/')
                .map(|(t, id)| (t.to_string(), id.to_string()))
        })
        .collect()
}

/// A JSON array of rows, expanded by the database: one fixed statement text per
/// table whatever the batch size, so it is prepared once and cached, and binding costs
/// one argument instead of thousands.
pub(super) fn rows_from_json(backend: Backend, columns: &[(&str, bool)]) -> String {
    let exprs = json_fields(backend, columns);
    // Binary JSON is parsed once; `->>` on text JSON would re-parse it per column.
    match backend {
        Backend::Sqlite => format!("SELECT {} FROM jsonb_each(jsonb($1))", exprs.join(", ")),
        Backend::Postgres => format!(
            "SELECT {} FROM jsonb_array_elements($1::jsonb) AS x",
            exprs.join(", ")
        ),
    }
}

/// The columns of one row of [`rows_from_json`]'s array (`value` on SQLite, `x` on
/// PostgreSQL).
pub(super) fn json_fields(backend: Backend, columns: &[(&str, bool)]) -> Vec<String> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (_, int))| match (backend, int) {
            (Backend::Sqlite, _) => format!("value ->> {i}"),
            (Backend::Postgres, false) => format!("x ->> {i}"),
            (Backend::Postgres, true) => format!("(x ->> {i})::bigint"),
        })
        .collect()
}

/// `INSERT INTO table (cols) SELECT … FROM <json rows>`; `rows` is a JSON array of arrays.
pub fn bulk_insert(
    backend: Backend,
    table: &str,
    columns: &[(&str, bool)],
    rows: String,
    suffix: &str,
) -> (String, Vec<Arg>) {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) {} {suffix}",
        names.join(", "),
        rows_from_json(backend, columns)
    );
    (sql, vec![Arg::Text(rows)])
}

pub(super) fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows always serialise")
}

pub(super) const TEXT: bool = false;
pub(super) const INT: bool = true;

fn key(s: &Staged) -> (&str, &str) {
    (s.resource.resource_type.as_str(), s.resource.id.as_str())
}

/// The index rows of one resource version, as stored beside it (`index_rows`).
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct IndexRows<S, N> {
    t: Vec<(S, S, S)>,
    r: Vec<(S, S)>,
    s: Vec<(S, S)>,
    d: Vec<(S, N, N)>,
}

pub(super) fn index_rows_json(index: &IndexEntries) -> String {
    let rows: IndexRows<&str, i64> = IndexRows {
        t: index
            .tokens
            .iter()
            .map(|(p, sys, code)| (*p, code.as_str(), sys.as_str()))
            .collect(),
        r: index
            .references
            .iter()
            .map(|(p, target)| (*p, target.as_str()))
            .collect(),
        s: index
            .strings
            .iter()
            .map(|(p, v)| (*p, v.as_str()))
            .collect(),
        d: index.dates.iter().map(|(p, r)| (*p, r.lo, r.hi)).collect(),
    };
    serde_json::to_string(&rows).expect("index rows always serialise")
}

/// Joins writes into one statement for PostgreSQL, each a data-modifying sub-statement
/// of a `WITH`: one round trip instead of one per write, which on this two-core machine
/// was half of a batch's flush. All parts see one snapshot, so none may depend on
/// another's rows. Placeholders are renumbered in order. The result is prepared once
/// and reused, so writes that must be planned per batch are not parts. A last part
/// that is a `SELECT` (it only calls functions, like `pg_notify`) is the statement's
/// own query: PostgreSQL skips a `WITH` query that nothing reads.
pub(super) fn combine(mut parts: Vec<Write>) -> Write {
    let query = parts.pop_if(|last| last.text.starts_with("SELECT "));
    let mut text = String::from("WITH ");
    let mut args = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&format!("w{i} AS ("));
        text.push_str(&renumber(&part.text, args.len()));
        text.push(')');
        args.extend(part.args);
    }
    match query {
        Some(query) => {
            text.push(' ');
            text.push_str(&renumber(&query.text, args.len()));
            args.extend(query.args);
        }
        None => text.push_str(" SELECT 1"),
    }
    Write {
        text,
        args,
        reads_by_keys: false,
    }
}

/// Joins writes into one multi-statement text for SQLite, run in order by one call
/// into the library: each statement sent on its own costs a hand-off to the
/// connection's worker thread and back, a third of a feed batch's writes measured.
/// Placeholders become absolute `$n`, which SQLite binds across the statements.
/// Every part's text must be the same from batch to batch (no row-count-dependent
/// text), so the joined text is prepared once and cached.
pub(super) fn sequence(parts: Vec<Write>) -> Write {
    let mut text = String::new();
    let mut args = Vec::new();
    for part in parts {
        if !text.is_empty() {
            text.push_str(";\n");
        }
        text.push_str(&renumber(&part.text, args.len()));
        args.extend(part.args);
    }
    Write {
        text,
        args,
        reads_by_keys: false,
    }
}

/// `text` with every placeholder `$n` outside a quoted literal made `$(n + offset)`.
fn renumber(text: &str, offset: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut quoted = false;
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c == '\'' {
            quoted = !quoted;
        } else if c == '$' && !quoted {
            let mut n = String::new();
            while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            match n.parse::<usize>() {
                Ok(n) => out.push_str(&(n + offset).to_string()),
                Err(_) => out.push_str(&n),
            }
        }
    }
    out
}

/// One statement of a batch's writes.
pub(super) struct Write {
    pub text: String,
    pub args: Vec<Arg>,
    /// Reads the table by the batch's keys, so it is planned per batch (`per_batch`).
    pub reads_by_keys: bool,
}

/// Statements that write staged versions, current pointers and index rows, and
/// remove the index rows of the versions they replace (`replaced`: type, id → rows).
pub(super) fn write_resources(
    backend: Backend,
    all: &[Staged],
    replaced: &HashMap<(String, String), String>,
) -> Vec<Write> {
    // Every version is kept; the current pointer and the index describe the last one.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, s) in all.iter().enumerate() {
        last.insert(key(s), i);
    }
    let latest: Vec<&Staged> = all
        .iter()
        .enumerate()
        .filter(|(i, s)| last[&key(s)] == *i)
        .map(|(_, s)| s)
        .collect();

    let mut out: Vec<(String, Vec<Arg>)> = Vec::new();
    // Bodies are bound directly rather than escaped into a JSON array.
    let text = |v: &str| Arg::Text(v.to_string());
    out.extend(insert_values(
        backend,
        "INSERT INTO resource_versions (res_type, res_id, version, last_updated, index_rows, body)",
        all.iter()
            .map(|s| {
                let r = &s.resource;
                vec![
                    text(&r.resource_type),
                    text(&r.id),
                    Arg::Int(r.version),
                    Arg::Int(r.last_updated),
                    Arg::Text(index_rows_json(&s.index)),
                    text(&r.body),
                ]
            })
            .collect(),
        "",
    ));

    let current: Vec<(&str, &str, i64, i64, i64)> = latest
        .iter()
        .map(|s| {
            let r = &s.resource;
            (
                r.resource_type.as_str(),
                r.id.as_str(),
                r.version,
                r.last_updated,
                s.seq,
            )
        })
        .collect();
    // SQLite needs `WHERE true` to tell the upsert clause from a join's ON.
    let upsert = "WHERE true ON CONFLICT (res_type, res_id) DO UPDATE SET version = excluded.version, \
                  seq = excluded.seq, last_updated = excluded.last_updated";
    let (mut sql, args) = bulk_insert(
        backend,
        "resources",
        &[
            ("res_type", TEXT),
            ("res_id", TEXT),
            ("version", INT),
            ("last_updated", INT),
            ("seq", INT),
        ],
        json_rows(&current),
        upsert,
    );
    if backend == Backend::Postgres {
        // PostgreSQL numbers commits from a sequence shared by all gateway processes.
        sql = sql.replace("(x ->> 4)::bigint", "nextval('resource_seq')");
    }
    out.push((sql, args));

    // Index rows describe the current version only. A new version usually changes few
    // of them (a status, a date), so only rows that differ from the replaced version's
    // are deleted and inserted, by primary key: every row is a B-tree write.
    let (mut gone, mut added) = (IndexChanges::default(), IndexChanges::default());
    for s in &latest {
        let (ty, id) = key(s);
        let old = match replaced.get(&(ty.to_string(), id.to_string())) {
            Some(stored) => serde_json::from_str::<IndexRows<String, i64>>(stored).unwrap_or_else(|_| {
                tracing::error!(message = "Stored index rows are unreadable.", resource_type = %ty, id = %id);
                IndexRows::default()
            }),
            None => IndexRows::default(),
        };
        let new = IndexRows::<String, i64> {
            t: s.index
                .tokens
                .iter()
                .map(|(p, sys, code)| (p.to_string(), code.clone(), sys.clone()))
                .collect(),
            r: s.index
                .references
                .iter()
                .map(|(p, t)| (p.to_string(), t.clone()))
                .collect(),
            s: s.index
                .strings
                .iter()
                .map(|(p, v)| (p.to_string(), v.clone()))
                .collect(),
            d: s.index
                .dates
                .iter()
                .map(|(p, r)| (p.to_string(), r.lo, r.hi))
                .collect(),
        };
        for (from, to, rows) in [(&old, &new, &mut gone), (&new, &old, &mut added)] {
            let owner = |v: &str| v.to_string();
            rows.t.extend(
                only_in(&from.t, &to.t)
                    .map(|(p, c, sy)| (owner(ty), p.clone(), c.clone(), sy.clone(), owner(id))),
            );
            rows.r.extend(
                only_in(&from.r, &to.r).map(|(p, t)| (owner(ty), p.clone(), t.clone(), owner(id))),
            );
            rows.s.extend(
                only_in(&from.s, &to.s).map(|(p, v)| (owner(ty), p.clone(), v.clone(), owner(id))),
            );
            rows.d.extend(
                only_in(&from.d, &to.d)
                    .map(|(p, lo, hi)| (owner(ty), p.clone(), *lo, *hi, owner(id))),
            );
        }
    }
    let (mut deletes, mut index) = (Vec::new(), Vec::new());
    let delete = |table: &str, columns: &[(&str, bool)], rows: String| {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        (
            format!(
                "DELETE FROM {table} WHERE ({}) IN ({})",
                names.join(", "),
                rows_from_json(backend, columns)
            ),
            vec![Arg::Text(rows)],
        )
    };
    if !gone.t.is_empty() {
        deletes.push(delete("search_tokens", TOKEN_COLUMNS, json_rows(&gone.t)));
    }
    if !gone.r.is_empty() {
        deletes.push(delete("search_refs", REF_COLUMNS, json_rows(&gone.r)));
    }
    if !gone.s.is_empty() {
        deletes.push(delete("search_strings", STRING_COLUMNS, json_rows(&gone.s)));
    }
    if !gone.d.is_empty() {
        deletes.push(delete("search_dates", DATE_COLUMNS, json_rows(&gone.d)));
    }
    if !added.t.is_empty() {
        index.push(bulk_insert(
            backend,
            "search_tokens",
            TOKEN_COLUMNS,
            json_rows(&added.t),
            "",
        ));
    }
    if !added.r.is_empty() {
        index.push(bulk_insert(
            backend,
            "search_refs",
            REF_COLUMNS,
            json_rows(&added.r),
            "",
        ));
    }
    if !added.s.is_empty() {
        index.push(bulk_insert(
            backend,
            "search_strings",
            STRING_COLUMNS,
            json_rows(&added.s),
            "",
        ));
    }
    if !added.d.is_empty() {
        index.push(bulk_insert(
            backend,
            "search_dates",
            DATE_COLUMNS,
            json_rows(&added.d),
            "",
        ));
    }
    let write = |reads_by_keys| {
        move |(text, args)| Write {
            text,
            args,
            reads_by_keys,
        }
    };
    out.into_iter()
        .map(write(false))
        .chain(deletes.into_iter().map(write(true)))
        .chain(index.into_iter().map(write(false)))
        .collect()
}

/// Full index rows (with resource type and id) to delete or insert, per table.
#[derive(Default)]
struct IndexChanges {
    t: Vec<(String, String, String, String, String)>,
    r: Vec<(String, String, String, String)>,
    s: Vec<(String, String, String, String)>,
    d: Vec<(String, String, i64, i64, String)>,
}

/// Rows of `a` that `b` does not have (a resource has a few dozen at most).
fn only_in<'a, T: PartialEq>(a: &'a [T], b: &'a [T]) -> impl Iterator<Item = &'a T> {
    a.iter().filter(move |x| !b.contains(x))
}

/// Rows per multi-row insert on PostgreSQL: a few fixed sizes, so only a few statement
/// texts are ever prepared whatever the batch size.
const GROUPS: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// Rows per multi-row insert on SQLite: one size, the rows a batch does not fill bound
/// as NULL and skipped, so that the text is the same in every batch (see `sequence`).
const SQLITE_ROWS: usize = 32;

/// `head VALUES (…), (…) suffix` for `rows`, with every value bound (no escaping,
/// nothing for the database to parse). `rows` must not be empty; `head` names the
/// columns, and a row's first value is never NULL.
fn insert_values(
    backend: Backend,
    head: &str,
    rows: Vec<Vec<Arg>>,
    suffix: &str,
) -> Vec<(String, Vec<Arg>)> {
    let width = rows.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    let mut left = rows.len();
    while rows.peek().is_some() {
        let n = match backend {
            Backend::Sqlite => SQLITE_ROWS,
            Backend::Postgres => GROUPS.iter().copied().find(|&g| g <= left).unwrap_or(1),
        };
        left = left.saturating_sub(n);
        let mut p = Params::default();
        let values: Vec<String> = rows
            .by_ref()
            .take(n)
            .chain(std::iter::repeat_with(|| vec![Arg::Null; width]))
            .take(n)
            .map(|row| {
                let cells: Vec<String> = row.into_iter().map(|a| p.push(a)).collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let text = match backend {
            Backend::Sqlite => format!(
                "{head} SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL {suffix}",
                values.join(", ")
            ),
            Backend::Postgres => format!("{head} VALUES {} {suffix}", values.join(", ")),
        };
        out.push((text, p.args));
    }
    out
}

/// Column lists, in primary-key order.
const TOKEN_COLUMNS: &[(&str, bool)] = &[
    ("res_type", TEXT),
    ("param", TEXT),
    ("code", TEXT),
    ("system", TEXT),
    ("res_id", TEXT),
];
const REF_COLUMNS: &[(&str, bool)] = &[
    ("res_type", TEXT),
    ("param", TEXT),
    ("target", TEXT),
    ("res_id", TEXT),
];
const STRING_COLUMNS: &[(&str, bool)] = &[
    ("res_type", TEXT),
    ("param", TEXT),
    ("value", TEXT),
    ("res_id", TEXT),
];
const DATE_COLUMNS: &[(&str, bool)] = &[
    ("res_type", TEXT),
    ("param", TEXT),
    ("lo", INT),
    ("hi", INT),
    ("res_id", TEXT),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str, args: Vec<Arg>) -> Write {
        Write {
            text: text.into(),
            args,
            reads_by_keys: false,
        }
    }

    #[test]
    fn combined_statements_number_their_placeholders_in_order() {
        let combined = combine(vec![
            write(
                "INSERT INTO a SELECT x ->> $2 FROM jsonb_array_elements($1::jsonb) AS x",
                vec![Arg::Text("[]".into()), Arg::Text("0".into())],
            ),
            write(
                "INSERT INTO b VALUES ($1, 'costs $1', $2)",
                vec![Arg::Int(1), Arg::Int(2)],
            ),
            write("DELETE FROM c WHERE n = $1", vec![Arg::Int(3)]),
        ]);
        assert_eq!(
            combined.text,
            "WITH w0 AS (INSERT INTO a SELECT x ->> $2 FROM jsonb_array_elements($1::jsonb) AS x), \
             w1 AS (INSERT INTO b VALUES ($3, 'costs $1', $4)), \
             w2 AS (DELETE FROM c WHERE n = $5) SELECT 1"
        );
        let ints: Vec<i64> = combined
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Int(i) => Some(*i),
                Arg::Text(_) | Arg::Null => None,
            })
            .collect();
        assert_eq!((combined.args.len(), ints), (5, vec![1, 2, 3]));
    }

    #[test]
    fn a_sqlite_sequence_numbers_its_placeholders_across_statements() {
        let joined = sequence(vec![
            write(
                "INSERT INTO a VALUES ($1, $2)",
                vec![Arg::Int(1), Arg::Int(2)],
            ),
            write(
                "INSERT INTO b SELECT value ->> 0 FROM jsonb_each(jsonb($1)) WHERE '$1' <> $2",
                vec![Arg::Text("[]".into()), Arg::Int(3)],
            ),
            write("DELETE FROM c WHERE n = $1", vec![Arg::Int(4)]),
        ]);
        assert_eq!(
            joined.text,
            "INSERT INTO a VALUES ($1, $2);\n\
             INSERT INTO b SELECT value ->> 0 FROM jsonb_each(jsonb($3)) WHERE '$1' <> $4;\n\
             DELETE FROM c WHERE n = $5"
        );
        assert_eq!(joined.args.len(), 5);
    }

    #[test]
    fn sqlite_inserts_of_bound_rows_have_one_text_whatever_the_row_count() {
        let rows = |n: i64| (0..n).map(|i| vec![Arg::Int(i), Arg::Int(i)]).collect();
        let texts: std::collections::HashSet<String> = [1, 5, 31, 32]
            .into_iter()
            .flat_map(|n| insert_values(Backend::Sqlite, "INSERT INTO t (a, b)", rows(n), ""))
            .map(|(text, args)| {
                assert_eq!(args.len(), 2 * SQLITE_ROWS);
                text
            })
            .collect();
        assert_eq!(texts.len(), 1);
        assert_eq!(
            insert_values(Backend::Sqlite, "INSERT INTO t (a, b)", rows(33), "").len(),
            2
        );
    }

    #[test]
    fn a_last_select_is_the_combined_statement_s_own_query_so_it_runs() {
        let combined = combine(vec![
            write("INSERT INTO a VALUES ($1)", vec![Arg::Int(1)]),
            write(
                "SELECT count(pg_notify($1, $2))",
                vec![Arg::Int(2), Arg::Int(3)],
            ),
        ]);
        assert_eq!(
            combined.text,
            "WITH w0 AS (INSERT INTO a VALUES ($1)) SELECT count(pg_notify($2, $3))"
        );
        assert_eq!(combined.args.len(), 3);
    }
}
