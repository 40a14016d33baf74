//! Bundles: planning transaction/batch requests before they reach the store, and
//! writing searchset / history / transaction-response Bundles.
//!
//! Planning assigns server ids to POST entries and rewrites `urn:uuid:` (and other
//! `fullUrl`) references to them, so every resource is validated in its final form.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::datetime;
use super::reference::{self, Target};
use super::search::{self, SearchQuery};
use super::validate::{self, ReferenceCheck};
use super::{FhirError, Issue, IssueCode};
use crate::store::{SearchPage, StoredResource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

#[derive(Debug)]
pub enum EntryRequest {
    /// POST with a server-assigned id; `if_none_exist` makes it conditional.
    Create {
        id: String,
        if_none_exist: Option<String>,
    },
    /// PUT Type/id; or PUT Type?search (`condition`), where `id` is the body's id or a
    /// server id, used if nothing matches (the engine decides before anything is written).
    Update {
        id: String,
        if_match: Option<String>,
        condition: Option<String>,
    },
    /// GET Type/id.
    Read { id: String },
    /// GET Type?params.
    Search { params: Vec<(String, String)> },
}

#[derive(Debug)]
pub struct PlannedEntry {
    pub index: usize,
    pub resource_type: String,
    pub request: EntryRequest,
    pub resource: Option<Value>,
    pub must_resolve: Vec<ReferenceCheck>,
    pub warnings: Vec<Issue>,
    pub full_url: Option<String>,
    /// Planning failed for this entry (batch only; a transaction fails as a whole).
    pub error: Option<FhirError>,
}

#[derive(Debug)]
pub struct Plan {
    pub kind: BundleKind,
    pub entries: Vec<PlannedEntry>,
    /// Some entry needs a search inside the transaction (conditional create, a
    /// conditional reference, or a search entry).
    pub searches: bool,
}

fn at(i: usize, rest: &str) -> String {
    format!("Bundle.entry[{i}].{rest}")
}

/// Checks a transaction or batch Bundle and prepares its entries.
pub fn plan(bundle: Value, own_base: Option<&str>) -> Result<Plan, FhirError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::invalid(
            "Bundle.resourceType",
            "POST to the base URL takes a Bundle of type transaction or batch",
        ));
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        other => {
            return Err(FhirError::invalid(
                "Bundle.type",
                format!("Bundle.type must be transaction or batch, not {other:?}"),
            ));
        }
    };
    let Value::Object(mut map) = bundle else {
        unreachable!("checked above")
    };
    let entries = match map.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(e)) => e,
        Some(_) => {
            return Err(FhirError::invalid(
                "Bundle.entry",
                "Bundle.entry must be an array",
            ));
        }
    };

    // Pass 1: requests, ids, and the fullUrl -> Type/id map.
    let mut planned = Vec::with_capacity(entries.len());
    let mut ids: HashMap<String, String> = HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let e = match plan_request(i, entry) {
            Ok(e) => e,
            Err(err) if kind == BundleKind::Batch => PlannedEntry::failed(i, err),
            Err(err) => return Err(err),
        };
        if let (Some(full_url), Some(id)) = (&e.full_url, e.request.target_id())
            && ids
                .insert(full_url.clone(), format!("{}/{id}", e.resource_type))
                .is_some()
        {
            return Err(FhirError::invalid(
                at(i, "fullUrl"),
                format!("fullUrl {full_url} appears twice"),
            ));
        }
        planned.push(e);
    }

    let mut searches = false;
    // Pass 2: rewrite Bundle-internal references (transactions only: batch entries are
    // independent), then validate each resource in its final form.
    for e in &mut planned {
        if e.error.is_some() {
            continue;
        }
        let Some(resource) = e.resource.as_mut() else {
            continue;
        };
        if kind == BundleKind::Transaction {
            reference::for_each_reference_mut(resource, &mut |r| {
                if let Some(local) = ids.get(r.as_str()) {
                    *r = local.clone();
                }
            });
        }
        let mut dangling = None;
        reference::for_each_reference_mut(resource, &mut |r| match reference::parse(r, own_base) {
            Some(Target::Urn { .. }) if dangling.is_none() => dangling = Some(r.clone()),
            Some(Target::Conditional { .. }) => searches = true,
            _ => {}
        });
        let checked = match dangling {
            Some(r) => Err(FhirError::invalid(
                e.resource_type.as_str(),
                format!("reference {r:?} matches no fullUrl in this Bundle"),
            )),
            None => {
                let id = match &e.request {
                    EntryRequest::Update {
                        id,
                        condition: None,
                        ..
                    } => Some(id.as_str()),
                    _ => None,
                };
                validate::validate(&e.resource_type, resource, id)
            }
        };
        match checked {
            Ok(v) => {
                validate::normalize(&e.resource_type, resource);
                e.must_resolve = v
                    .must_resolve
                    .into_iter()
                    .map(|c| ReferenceCheck {
                        expression: relocate(&c.expression, e.index),
                        ..c
                    })
                    .collect();
                e.warnings = v
                    .warnings
                    .into_iter()
                    .map(|w| w.within(&at(e.index, "resource")))
                    .collect();
            }
            Err(err) => {
                let err = err.within(&at(e.index, "resource"));
                if kind == BundleKind::Transaction {
                    return Err(err);
                }
                e.error = Some(err);
            }
        }
    }
    searches |= planned.iter().any(|e| {
        matches!(
            e.request,
            EntryRequest::Create {
                if_none_exist: Some(_),
                ..
            } | EntryRequest::Update {
                condition: Some(_),
                ..
            } | EntryRequest::Search { .. }
        )
    });
    Ok(Plan {
        kind,
        entries: planned,
        searches,
    })
}

fn relocate(expression: &str, i: usize) -> String {
    match expression.split_once('.') {
        Some((_, rest)) => at(i, &format!("resource.{rest}")),
        None => at(i, "resource"),
    }
}

impl EntryRequest {
    /// The id a write entry will have, for mapping its fullUrl.
    fn target_id(&self) -> Option<&str> {
        match self {
            EntryRequest::Create { id, .. } | EntryRequest::Update { id, .. } => Some(id),
            _ => None,
        }
    }
}

impl PlannedEntry {
    fn failed(index: usize, error: FhirError) -> PlannedEntry {
        PlannedEntry {
            index,
            resource_type: String::new(),
            request: EntryRequest::Search { params: vec![] },
            resource: None,
            must_resolve: vec![],
            warnings: vec![],
            full_url: None,
            error: Some(error),
        }
    }
}

fn plan_request(i: usize, entry: Value) -> Result<PlannedEntry, FhirError> {
    let Value::Object(mut entry) = entry else {
        return Err(FhirError::invalid(
            at(i, ""),
            "a Bundle entry must be an object",
        ));
    };
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    let request = entry.remove("request").unwrap_or(Value::Null);
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request.get("url").and_then(Value::as_str).unwrap_or("");
    if url.is_empty() {
        return Err(FhirError::invalid(
            at(i, "request.url"),
            "request.url is required",
        ));
    }
    let header = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let url = url.trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut segments = path.split('/');
    let resource_type = segments.next().unwrap_or("").to_string();
    let id = segments.next();
    if segments.next().is_some() || !super::is_supported_type(&resource_type) {
        return Err(FhirError::invalid(
            at(i, "request.url"),
            format!("request.url {url:?} must be Type, Type/id or Type?query for a supported type"),
        ));
    }
    let resource = entry.remove("resource");
    let needs_resource = |r: Option<Value>| {
        r.ok_or_else(|| {
            FhirError::invalid(
                at(i, "resource"),
                format!("a {method} entry needs a resource"),
            )
        })
    };
    let (request, resource) = match (method, id, query) {
        ("POST", None, None) => (
            EntryRequest::Create {
                id: super::new_id(),
                if_none_exist: header("ifNoneExist"),
            },
            Some(needs_resource(resource)?),
        ),
        ("PUT", Some(id), None) if super::is_valid_id(id) => (
            EntryRequest::Update {
                id: id.to_string(),
                if_match: header("ifMatch"),
                condition: None,
            },
            Some(needs_resource(resource)?),
        ),
        ("PUT", None, Some(q)) => {
            let resource = needs_resource(resource)?;
            let id = match resource.get("id").and_then(Value::as_str) {
                Some(id) if super::is_valid_id(id) => id.to_string(),
                Some(_) => {
                    return Err(FhirError::invalid(
                        at(i, "resource.id"),
                        "id must be 1-64 characters of A-Z a-z 0-9 - .",
                    ));
                }
                None => super::new_id(),
            };
            (
                EntryRequest::Update {
                    id,
                    if_match: header("ifMatch"),
                    condition: Some(q.to_string()),
                },
                Some(resource),
            )
        }
        ("GET", Some(id), None) if super::is_valid_id(id) => {
            (EntryRequest::Read { id: id.to_string() }, None)
        }
        ("GET", None, q) => (
            EntryRequest::Search {
                params: parse_query_string(q.unwrap_or("")),
            },
            None,
        ),
        ("DELETE" | "PATCH" | "HEAD", _, _) => {
            return Err(FhirError::NotSupported(format!(
                "Bundle.entry[{i}]: {method} is not supported"
            )));
        }
        _ => {
            return Err(FhirError::invalid(
                at(i, "request"),
                format!(
                    "{method:?} {url:?} is not a supported entry request (POST Type, PUT Type/id, PUT Type?search, GET)"
                ),
            ));
        }
    };
    if let Some(r) = &resource
        && r.get("resourceType").and_then(Value::as_str) != Some(resource_type.as_str())
    {
        return Err(FhirError::invalid(
            at(i, "resource.resourceType"),
            format!("resource is not a {resource_type} as request.url says"),
        ));
    }
    Ok(PlannedEntry {
        index: i,
        resource_type,
        request,
        resource,
        must_resolve: vec![],
        warnings: vec![],
        full_url,
        error: None,
    })
}

/// One form-encoded value decoded (`+` is a space).
pub fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Splits and percent-decodes `a=1&b=2` (also used for `If-None-Exist`).
pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    let decode = form_decode;
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

pub fn encode_query(params: &[(String, String)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b':')
        .remove(b'|')
        .remove(b'/');
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, KEEP),
                utf8_percent_encode(v, KEEP)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Appends a JSON string literal.
fn push_str_lit(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("strings always serialise"));
}

/// A searchset Bundle, written around the stored JSON without re-parsing it.
pub fn searchset(base: &str, query: &SearchQuery, page: &SearchPage) -> String {
    let mut out = String::with_capacity(
        256 + page
            .matches
            .iter()
            .chain(&page.included)
            .map(|m| m.body.len() + 96)
            .sum::<usize>(),
    );
    out.push_str(r#"{"resourceType":"Bundle","id":"#);
    push_str_lit(&mut out, &super::new_id());
    out.push_str(r#","type":"searchset","#);
    if let Some(total) = page.total {
        out.push_str(r#""total":"#);
        out.push_str(&total.to_string());
        out.push(',');
    }
    out.push_str(r#""link":[{"relation":"self","url":"#);
    let self_url = format!(
        "{base}/{}?{}",
        query.resource_type,
        encode_query(&query.echo)
    );
    push_str_lit(&mut out, &self_url);
    out.push('}');
    if let Some(next) = page.next {
        let mut params = query.echo.clone();
        params.push(("_cursor".into(), search::format_cursor(next)));
        out.push_str(r#",{"relation":"next","url":"#);
        push_str_lit(
            &mut out,
            &format!("{base}/{}?{}", query.resource_type, encode_query(&params)),
        );
        out.push('}');
    }
    out.push_str(r#"],"entry":["#);
    let mut first = true;
    for (items, mode) in [(&page.matches, "match"), (&page.included, "include")] {
        for m in items {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(r#"{"fullUrl":"#);
            push_str_lit(&mut out, &format!("{base}/{}/{}", m.resource_type, m.id));
            out.push_str(r#","resource":"#);
            out.push_str(&m.body);
            out.push_str(r#","search":{"mode":""#);
            out.push_str(mode);
            out.push_str(r#""}}"#);
        }
    }
    out.push(']');
    if !query.warnings.is_empty() {
        // Ignored parameters are reported in an OperationOutcome entry (FHIR search §3.1.1.5).
        out.pop();
        if !first {
            out.push(',');
        }
        out.push_str(r#"{"resource":"#);
        out.push_str(&super::outcome::operation_outcome(&query.warnings).to_string());
        out.push_str(r#","search":{"mode":"outcome"}}]"#);
    }
    out.push('}');
    out
}

/// A history Bundle of one resource, newest version first.
pub fn history(base: &str, versions: &[StoredResource]) -> String {
    let mut out = String::from(r#"{"resourceType":"Bundle","type":"history","total":"#);
    out.push_str(&versions.len().to_string());
    out.push_str(r#","entry":["#);
    for (i, v) in versions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"fullUrl":"#);
        push_str_lit(&mut out, &format!("{base}/{}/{}", v.resource_type, v.id));
        out.push_str(r#","resource":"#);
        out.push_str(&v.body);
        out.push_str(r#","request":{"method":"#);
        push_str_lit(&mut out, if v.version == 1 { "POST" } else { "PUT" });
        out.push_str(r#","url":"#);
        push_str_lit(&mut out, &format!("{}/{}", v.resource_type, v.id));
        out.push_str(r#"},"response":{"status":"#);
        push_str_lit(
            &mut out,
            if v.version == 1 {
                "201 Created"
            } else {
                "200 OK"
            },
        );
        out.push_str(r#","etag":"#);
        push_str_lit(&mut out, &format!("W/\"{}\"", v.version));
        out.push_str(r#","lastModified":"#);
        push_str_lit(&mut out, &datetime::format_instant(v.last_updated));
        out.push_str("}}");
    }
    out.push_str("]}");
    out
}

/// The outcome of one transaction/batch entry, in request order.
pub enum EntryResult {
    Written {
        stored: StoredResource,
        status: u16,
        warnings: Vec<Issue>,
    },
    Read(StoredResource),
    Searched(String),
    Failed(FhirError),
}

/// A transaction-response or batch-response Bundle.
pub fn response(
    kind: BundleKind,
    base: &str,
    results: &[EntryResult],
    with_resources: bool,
) -> String {
    let ty = match kind {
        BundleKind::Transaction => "transaction-response",
        BundleKind::Batch => "batch-response",
    };
    let mut out = format!(r#"{{"resourceType":"Bundle","type":"{ty}","entry":["#);
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match r {
            EntryResult::Written {
                stored,
                status,
                warnings,
            } => {
                out.push_str(r#"{"fullUrl":"#);
                push_str_lit(
                    &mut out,
                    &format!("{base}/{}/{}", stored.resource_type, stored.id),
                );
                if with_resources {
                    out.push_str(r#","resource":"#);
                    out.push_str(&stored.body);
                }
                let mut resp = json!({
                    "status": if *status == 201 { "201 Created" } else { "200 OK" },
                    "location": format!("{}/{}/_history/{}", stored.resource_type, stored.id, stored.version),
                    "etag": format!("W/\"{}\"", stored.version),
                    "lastModified": datetime::format_instant(stored.last_updated),
                });
                if !warnings.is_empty() {
                    resp["outcome"] = super::outcome::operation_outcome(warnings);
                }
                out.push_str(r#","response":"#);
                out.push_str(&resp.to_string());
                out.push('}');
            }
            EntryResult::Read(stored) => {
                out.push_str(r#"{"fullUrl":"#);
                push_str_lit(
                    &mut out,
                    &format!("{base}/{}/{}", stored.resource_type, stored.id),
                );
                out.push_str(r#","resource":"#);
                out.push_str(&stored.body);
                out.push_str(r#","response":{"status":"200 OK","etag":"#);
                push_str_lit(&mut out, &format!("W/\"{}\"", stored.version));
                out.push_str("}}");
            }
            EntryResult::Searched(bundle) => {
                out.push_str(r#"{"resource":"#);
                out.push_str(bundle);
                out.push_str(r#","response":{"status":"200 OK"}}"#);
            }
            EntryResult::Failed(e) => {
                let resp = json!({
                    "status": e.status().to_string(),
                    "outcome": e.to_operation_outcome(),
                });
                out.push_str(r#"{"response":"#);
                out.push_str(&resp.to_string());
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    out
}

/// Issue for a reference that must resolve but does not.
pub fn unresolved(check: &ReferenceCheck) -> Issue {
    Issue::error(
        IssueCode::BusinessRule,
        check.expression.clone(),
        format!(
            "{} refers to {}/{}, which does not exist on this server",
            check.expression, check.resource_type, check.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(entries: Value) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    #[test]
    fn urn_references_are_rewritten_to_assigned_ids() {
        let b = bundle(json!([
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Condition", "subject": {"reference": "urn:uuid:p"}},
             "request": {"method": "POST", "url": "Condition"}}
        ]));
        let plan = plan(b, None).unwrap();
        let EntryRequest::Create { id, .. } = &plan.entries[0].request else {
            panic!("not a create")
        };
        assert_eq!(
            plan.entries[1].resource.as_ref().unwrap()["subject"]["reference"],
            format!("Patient/{id}")
        );
    }

    #[test]
    fn a_dangling_urn_fails_the_transaction_naming_the_entry() {
        let b = bundle(json!([
            {"resource": {"resourceType": "Condition", "subject": {"reference": "urn:uuid:nope"}},
             "request": {"method": "POST", "url": "Condition"}}
        ]));
        let e = plan(b, None).unwrap_err();
        assert_eq!(
            e.issues()[0].expression.as_deref(),
            Some("Bundle.entry[0].resource")
        );
    }

    #[test]
    fn invalid_entries_fail_a_transaction_but_not_a_batch() {
        let entries = json!([
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "ServiceRequest", "status": "active"}, "request": {"method": "POST", "url": "ServiceRequest"}}
        ]);
        let e = plan(bundle(entries.clone()), None).unwrap_err();
        assert_eq!(
            e.issues()[0].expression.as_deref(),
            Some("Bundle.entry[1].resource.intent")
        );
        let batch = plan(
            json!({"resourceType": "Bundle", "type": "batch", "entry": entries}),
            None,
        )
        .unwrap();
        assert!(batch.entries[0].error.is_none());
        assert!(batch.entries[1].error.is_some());
    }

    #[test]
    fn entry_urls_are_checked() {
        let b = bundle(
            json!([{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Nope"}}]),
        );
        assert_eq!(
            plan(b, None).unwrap_err().issues()[0].expression.as_deref(),
            Some("Bundle.entry[0].request.url")
        );
        let b = bundle(json!([{"request": {"method": "DELETE", "url": "Patient/1"}}]));
        assert_eq!(plan(b, None).unwrap_err().status(), 405);
    }

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            parse_query_string("identifier=http%3A%2F%2Fx%7C1&name=a+b"),
            vec![
                ("identifier".into(), "http://x|1".into()),
                ("name".into(), "a b".into())
            ]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON built from the words Bundles and resources are made of, nested a few levels,
    /// so that generated values often look almost valid.
    fn fhirish_json() -> impl Strategy<Value = Value> {
        const WORDS: &[&str] = &[
            "Bundle",
            "transaction",
            "batch",
            "POST",
            "PUT",
            "GET",
            "DELETE",
            "Patient",
            "Task",
            "ServiceRequest",
            "Patient/1",
            "urn:uuid:1",
            "Patient?identifier=a|b",
            "requested",
            "order",
            "fulfill",
        ];
        const KEYS: &[&str] = &[
            "resourceType",
            "type",
            "entry",
            "request",
            "method",
            "url",
            "resource",
            "fullUrl",
            "reference",
            "id",
            "status",
            "intent",
            "ifNoneExist",
            "ifMatch",
            "focus",
            "for",
            "code",
            "coding",
            "meta",
            "profile",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop::sample::select(WORDS).prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        /// Planning and validation answer Ok or an error with a status for any JSON.
        #[test]
        fn any_json_plans_or_fails_cleanly(body in fhirish_json()) {
            let mut bundle = body.clone();
            if let Some(m) = bundle.as_object_mut() {
                m.insert("resourceType".into(), Value::from("Bundle"));
            }
            for candidate in [body.clone(), bundle] {
                if let Err(e) = super::plan(candidate, None) {
                    prop_assert!((400..500).contains(&e.status()));
                }
            }
            for ty in ["Task", "ServiceRequest", "Patient"] {
                if let Err(e) = super::validate::validate(ty, &body, None) {
                    prop_assert!((400..500).contains(&e.status()));
                }
            }
        }
    }
}
