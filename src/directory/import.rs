//! HSDS in: read a path (a JSON file, a directory of them, or a tabular package),
//! check every entity against the HSDS rules, and store what passes.
//!
//! What a JSON document is: a page of a list (`{"contents": […], …}`, its items
//! *summaries*: they update the fields they carry and keep the rest of what is stored,
//! since a list page shows only one-to-one fields), an array of entities, or one
//! entity. Which entity: the file name when it says (`service_full.json`,
//! `taxonomy_terms.json`), else the shape (`status` → service, `location_type` →
//! location, …). The API's root document (`{"version", "openapi_url"}`) is skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::tabular::{self, Package};
use super::{DirectoryError, Kind, schema, text};
use crate::store::{DirectoryRow, Store};

/// An entity read from a source, not yet checked.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Kind,
    pub body: Value,
    /// Where it came from: `file`, `file#/contents/3`, `services.csv:2`.
    pub source: String,
    /// From a list page: merged into what is stored rather than replacing it.
    pub summary: bool,
}

/// Something in a source that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub source: String,
    pub kind: Option<Kind>,
    pub id: Option<String>,
    pub reason: String,
}

/// What a source holds: entities to check, and what could not even be read as one.
#[derive(Debug, Default)]
pub struct Read {
    pub candidates: Vec<Candidate>,
    pub refused: Vec<Refusal>,
    /// Documents that are HSDS but hold no entity (the API root), with why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub taken: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub refused: usize,
}

/// The outcome of an import.
#[derive(Debug, Default)]
pub struct Report {
    pub per_kind: BTreeMap<Kind, Counts>,
    pub refused: Vec<Refusal>,
    pub skipped: Vec<String>,
}

impl Report {
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.per_kind.values() {
            t.taken += c.taken;
            t.updated += c.updated;
            t.unchanged += c.unchanged;
        }
        t.refused = self.refused.len();
        t
    }

    /// The report for people: one line of totals, one per kind, one per refusal.
    pub fn render(&self) -> String {
        let t = self.total();
        let mut out = format!(
            "taken {}, updated {}, unchanged {}, refused {}\n",
            t.taken, t.updated, t.unchanged, t.refused
        );
        for (kind, c) in &self.per_kind {
            out.push_str(&format!(
                "  {}: taken {}, updated {}, unchanged {}, refused {}\n",
                kind.as_str(),
                c.taken,
                c.updated,
                c.unchanged,
                c.refused
            ));
        }
        for s in &self.skipped {
            out.push_str(&format!("  skipped {s}\n"));
        }
        for r in &self.refused {
            let what = match (&r.kind, &r.id) {
                (Some(k), Some(id)) => format!("{} {id}", k.as_str()),
                (Some(k), None) => k.as_str().to_string(),
                _ => "entry".into(),
            };
            out.push_str(&format!("  refused {what} ({}): {}\n", r.source, r.reason));
        }
        out
    }
}

/// Reads a file or directory: a directory with HSDS CSV files is a tabular package;
/// otherwise its `*.json` files are read in name order (not its subdirectories).
pub fn read_path(path: &Path) -> Result<Read, DirectoryError> {
    let shown = path.display().to_string();
    let io = |source| DirectoryError::Io {
        path: shown.clone(),
        source,
    };
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(io)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if tabular::table_entity(&name).is_some() {
            return read_tables(vec![(name, String::from_utf8_lossy(&bytes).into_owned())]);
        }
        return read_json(&shown, &name, &bytes);
    }
    let mut names: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    names.sort();
    let csv: Vec<_> = names
        .iter()
        .filter(|(n, _)| tabular::table_entity(n).is_some())
        .collect();
    if !csv.is_empty() {
        let mut files = Vec::new();
        for (name, p) in csv {
            let bytes = std::fs::read(p).map_err(|source| DirectoryError::Io {
                path: p.display().to_string(),
                source,
            })?;
            files.push((name.clone(), String::from_utf8_lossy(&bytes).into_owned()));
        }
        return read_tables(files);
    }
    let mut read = Read::default();
    let mut any = false;
    for (name, p) in names.iter().filter(|(n, _)| n.ends_with(".json")) {
        any = true;
        let bytes = std::fs::read(p).map_err(|source| DirectoryError::Io {
            path: p.display().to_string(),
            source,
        })?;
        match read_json(name, name, &bytes) {
            Ok(r) => {
                read.candidates.extend(r.candidates);
                read.refused.extend(r.refused);
                read.skipped.extend(r.skipped);
            }
            Err(DirectoryError::Json { path, message }) => read.refused.push(Refusal {
                source: path,
                kind: None,
                id: None,
                reason: format!("not JSON: {message}"),
            }),
            Err(e) => return Err(e),
        }
    }
    if !any {
        return Err(DirectoryError::NotHsds { path: shown });
    }
    Ok(read)
}

/// A tabular package from (file name, CSV text) pairs.
pub fn read_tables(files: Vec<(String, String)>) -> Result<Read, DirectoryError> {
    let mut read = Read::default();
    let mut tables: HashMap<&'static str, Vec<tabular::Row>> = HashMap::new();
    for (name, text) in &files {
        let Some(entity) = tabular::table_entity(name) else {
            continue;
        };
        let (rows, bad) = tabular::rows(name, entity, text);
        read.refused.extend(bad.into_iter().map(|b| Refusal {
            source: b.source,
            kind: None,
            id: None,
            reason: b.reason,
        }));
        tables.entry(entity).or_default().extend(rows);
    }
    let package = Package::new(tables);
    read.candidates = package
        .entities()
        .into_iter()
        .map(|a| Candidate {
            kind: a.kind,
            body: a.body,
            source: a.source,
            summary: false,
        })
        .collect();
    Ok(read)
}

/// The entities of one JSON document (`shown` names it in messages; `name` is its file
/// name, the first hint of what it holds).
pub fn read_json(shown: &str, name: &str, bytes: &[u8]) -> Result<Read, DirectoryError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| DirectoryError::Json {
        path: shown.to_string(),
        message: e.to_string(),
    })?;
    let hint = kind_from_name(name);
    let mut read = Read::default();
    let take = |read: &mut Read, item: Value, source: String, summary: bool| match hint
        .or_else(|| kind_from_shape(&item))
    {
        Some(kind) => read.candidates.push(Candidate {
            kind,
            body: item,
            source,
            summary,
        }),
        None => read.refused.push(Refusal {
            id: text(&item, "id").map(str::to_string),
            source,
            kind: None,
            reason:
                "cannot tell which HSDS entity this is (name the file after it, e.g. services.json)"
                    .into(),
        }),
    };
    match doc {
        Value::Object(ref o) if o.get("contents").is_some_and(Value::is_array) => {
            let Some(Value::Array(items)) = doc.get("contents").cloned() else {
                unreachable!("checked above");
            };
            for (i, item) in items.into_iter().enumerate() {
                take(&mut read, item, format!("{shown}#/contents/{i}"), true);
            }
        }
        Value::Object(ref o) if o.get("id").is_none() && o.contains_key("openapi_url") => {
            read.skipped
                .push(format!("{shown}: the API's root document, no entity"));
        }
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                take(&mut read, item, format!("{shown}#/{i}"), false);
            }
        }
        item => take(&mut read, item, shown.to_string(), false),
    }
    Ok(read)
}

fn kind_from_name(name: &str) -> Option<Kind> {
    let n = name.to_ascii_lowercase();
    if n.contains("service_at_location") {
        Some(Kind::ServiceAtLocation)
    } else if n.contains("taxonomy_term") {
        Some(Kind::TaxonomyTerm)
    } else if n.contains("taxonom") {
        Some(Kind::Taxonomy)
    } else if n.contains("organization") || n.contains("organisation") {
        Some(Kind::Organization)
    } else if n.contains("location") {
        Some(Kind::Location)
    } else if n.contains("service") {
        Some(Kind::Service)
    } else {
        None
    }
}

fn kind_from_shape(v: &Value) -> Option<Kind> {
    let o = v.as_object()?;
    let has = |k: &str| o.contains_key(k);
    if has("service") && (has("location") || !has("name")) {
        Some(Kind::ServiceAtLocation)
    } else if has("status") {
        Some(Kind::Service)
    } else if has("location_type") {
        Some(Kind::Location)
    } else if has("taxonomy_detail") || has("code") || has("term_uri") || has("parent_id") {
        Some(Kind::TaxonomyTerm)
    } else if [
        "website",
        "email",
        "tax_status",
        "year_incorporated",
        "legal_status",
        "services",
        "locations",
        "parent_organization_id",
    ]
    .iter()
    .any(|k| has(k))
    {
        Some(Kind::Organization)
    } else if has("version") {
        Some(Kind::Taxonomy)
    } else {
        None
    }
}

/// Checks and stores `read`'s entities in `tenant`'s directory. `progress(done, all)`
/// is called as batches are written.
pub async fn import(
    store: &Store,
    tenant: &str,
    read: Read,
    now: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, DirectoryError> {
    let mut report = Report {
        refused: read.refused,
        skipped: read.skipped,
        ..Report::default()
    };
    // Checked, and the last of each (kind, id) wins within one import (summaries
    // merge into what came before them).
    let mut order: Vec<(Kind, String)> = Vec::new();
    let mut checked: HashMap<(Kind, String), (Value, bool)> = HashMap::new();
    for c in read.candidates {
        let id = text(&c.body, "id").map(str::to_string);
        let problem = match (&id, schema::check(c.kind.as_str(), &c.body)) {
            (_, Err(v)) => Some(format!("{}: {}", v.pointer, v.rule)),
            (Some(id), Ok(())) if id.trim().is_empty() => Some("/id: must not be empty".into()),
            _ => None,
        };
        if let Some(reason) = problem {
            report.per_kind.entry(c.kind).or_default().refused += 1;
            report.refused.push(Refusal {
                source: c.source,
                kind: Some(c.kind),
                id,
                reason,
            });
            continue;
        }
        let id = id.unwrap_or_default();
        let key = (c.kind, id);
        match checked.get_mut(&key) {
            Some((body, summary)) if c.summary => merge(body, c.body),
            Some(slot) => *slot = (c.body, false),
            None => {
                order.push(key.clone());
                checked.insert(key, (c.body, c.summary));
            }
        }
    }
    let all = order.len() as u64;
    let mut done = 0u64;
    for batch in order.chunks(500) {
        let mut by_kind: BTreeMap<Kind, Vec<&String>> = BTreeMap::new();
        for (kind, id) in batch {
            by_kind.entry(*kind).or_default().push(id);
        }
        let mut rows = Vec::new();
        for (kind, ids) in by_kind {
            let ids: Vec<String> = ids.into_iter().cloned().collect();
            let stored = store.directory_current(tenant, kind.as_str(), &ids).await?;
            let counts = report.per_kind.entry(kind).or_default();
            for id in ids {
                let (mut body, summary) = checked
                    .remove(&(kind, id.clone()))
                    .expect("every id in order was checked");
                let before = stored.get(&id);
                if summary && let Some((_, old)) = before {
                    let mut base: Value =
                        serde_json::from_str(old).unwrap_or(Value::Object(Map::new()));
                    merge(&mut base, body);
                    body = base;
                }
                let digest = digest(&body);
                match before {
                    Some((d, _)) if *d == digest => {
                        counts.unchanged += 1;
                        continue;
                    }
                    Some(_) => counts.updated += 1,
                    None => counts.taken += 1,
                }
                rows.push(row(kind, id, &body, digest));
            }
        }
        store.directory_put(tenant, &rows, now).await?;
        done += batch.len() as u64;
        progress(done, all);
    }
    progress(all, all);
    Ok(report)
}

/// `incoming`'s fields over `base`'s, objects field by field (a summary's
/// `organization` carries only its one-to-one fields), arrays whole.
fn merge(base: &mut Value, incoming: Value) {
    match (base.as_object_mut(), incoming) {
        (Some(b), Value::Object(i)) => {
            for (k, v) in i {
                match b.get_mut(&k) {
                    Some(old) if old.is_object() && v.is_object() => merge(old, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, incoming) => *base = incoming,
    }
}

/// SHA-256 of `v` with object keys sorted: equal JSON, equal digest.
pub fn digest(v: &Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    crate::hex(&Sha256::digest(text.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The stored row of an entity: its body and the columns lookups use.
fn row(kind: Kind, id: String, body: &Value, digest: String) -> DirectoryRow {
    let service = match kind {
        Kind::ServiceAtLocation => body.get("service"),
        _ => Some(body),
    };
    let organization_id = match kind {
        Kind::Organization => Some(id.clone()),
        _ => service.and_then(|s| {
            text(s, "organization_id")
                .or_else(|| s.get("organization").and_then(|o| text(o, "id")))
                .map(str::to_string)
        }),
    };
    let mut search = String::new();
    for part in [body, service.unwrap_or(body)] {
        for field in ["name", "alternate_name", "description"] {
            if let Some(t) = text(part, field) {
                search.push_str(&t.to_lowercase());
                search.push('\n');
            }
        }
    }
    if kind == Kind::ServiceAtLocation
        && let Some(name) = body.get("location").and_then(|l| text(l, "name"))
    {
        search.push_str(&name.to_lowercase());
    }
    let mut terms = Vec::new();
    for owner in [Some(body), service].into_iter().flatten() {
        for a in owner
            .get("attributes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let term = a.get("taxonomy_term");
            let term_id = term
                .and_then(|t| text(t, "id"))
                .or_else(|| text(a, "taxonomy_term_id"));
            let taxonomy = term.and_then(|t| {
                t.get("taxonomy_detail")
                    .and_then(|d| text(d, "id"))
                    .or_else(|| text(t, "taxonomy_id"))
            });
            if let Some(term_id) = term_id {
                let entry = (term_id.to_string(), taxonomy.map(str::to_string));
                if !terms.contains(&entry) {
                    terms.push(entry);
                }
            }
        }
    }
    DirectoryRow {
        kind: kind.as_str(),
        name: text(body, "name")
            .or_else(|| service.and_then(|s| text(s, "name")))
            .unwrap_or("")
            .to_string(),
        organization_id,
        taxonomy_id: (kind == Kind::TaxonomyTerm)
            .then(|| {
                text(body, "taxonomy_id")
                    .or_else(|| body.get("taxonomy_detail").and_then(|d| text(d, "id")))
                    .map(str::to_string)
            })
            .flatten(),
        parent_id: text(body, "parent_id").map(str::to_string),
        search,
        last_modified: service
            .and_then(|s| text(s, "last_modified"))
            .map(str::to_string),
        body: body.to_string(),
        digest,
        terms,
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_json_in_another_key_order_has_the_same_digest() {
        let a = json!({"id": "1", "phones": [{"a": 1, "b": 2}]});
        let b: Value = serde_json::from_str(r#"{"phones":[{"b":2,"a":1}],"id":"1"}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"id": "1"})));
    }

    #[test]
    fn documents_say_what_they_hold() {
        let page =
            br#"{"total_items": 1, "contents": [{"id": "s", "name": "n", "status": "active"}]}"#;
        let read = read_json("list.json", "list.json", page).unwrap();
        assert_eq!(read.candidates[0].kind, Kind::Service);
        assert!(read.candidates[0].summary);
        let root = br#"{"version": "3.0", "openapi_url": "https://x"}"#;
        assert_eq!(
            read_json("base.json", "base.json", root)
                .unwrap()
                .skipped
                .len(),
            1
        );
        let term = br#"{"id": "t", "name": "n", "description": "d", "code": "c"}"#;
        assert_eq!(
            read_json("x.json", "x.json", term).unwrap().candidates[0].kind,
            Kind::TaxonomyTerm
        );
        let odd = br#"{"id": "x"}"#;
        assert_eq!(read_json("x.json", "x.json", odd).unwrap().refused.len(), 1);
    }
}
