//! Parsing of a FHIR search request into the typed query of [`crate::resource::search`],
//! with errors as OperationOutcome issues.

use super::{FhirError, Issue, IssueCode};
use crate::resource::datetime;
use crate::resource::reference::{self, Target};
pub use crate::resource::search::*;

pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// Parameters that change nothing in a JSON-only server and are accepted silently.
const IGNORED: &[&str] = &["_format", "_pretty"];

/// Parses search parameters. Unknown parameters are an error unless `lenient`
/// (`Prefer: handling=lenient`): silently dropping a filter would widen the result set.
pub fn parse_query(
    resource_type: &str,
    params: &[(String, String)],
    lenient: bool,
) -> Result<SearchQuery, FhirError> {
    let mut q = SearchQuery {
        resource_type: resource_type.to_string(),
        filters: Vec::new(),
        includes: Vec::new(),
        // Oldest first; with the commit sequence as tie-breaker the order is total.
        sort: Sort::LastUpdatedAsc,
        count: DEFAULT_COUNT,
        cursor: None,
        total: Total::Default,
        echo: Vec::new(),
        warnings: Vec::new(),
    };
    let mut issues = Vec::new();
    for (key, value) in params {
        let at = format!("{resource_type}?{key}");
        match key.as_str() {
            k if IGNORED.contains(&k) => continue,
            "_count" => match value.parse::<usize>() {
                Ok(n) => q.count = n.min(MAX_COUNT),
                Err(_) => issues.push(Issue::error(
                    IssueCode::Value,
                    at,
                    "_count must be a non-negative integer",
                )),
            },
            "_sort" => match value.as_str() {
                "_lastUpdated" | "_lastupdated" => q.sort = Sort::LastUpdatedAsc,
                "-_lastUpdated" | "-_lastupdated" => q.sort = Sort::LastUpdatedDesc,
                _ => issues.push(Issue::error(
                    IssueCode::NotSupported,
                    at,
                    format!("_sort={value} is not supported; use _lastUpdated or -_lastUpdated"),
                )),
            },
            "_cursor" => match parse_cursor(value) {
                Some(c) => q.cursor = Some(c),
                None => issues.push(Issue::error(
                    IssueCode::Value,
                    at,
                    "_cursor is not a cursor this server issued",
                )),
            },
            "_total" => match value.as_str() {
                "none" => q.total = Total::None,
                "estimate" => q.total = Total::Estimate,
                "accurate" => q.total = Total::Accurate,
                _ => issues.push(Issue::error(
                    IssueCode::Value,
                    at,
                    "_total must be none, estimate or accurate",
                )),
            },
            "_include" | "_include:iterate" => match parse_include(value, key != "_include") {
                // An iterated include may start from a type the first round includes.
                Ok(inc) if inc.iterate || inc.source_type == resource_type => q.includes.push(inc),
                Ok(_) => issues.push(Issue::error(
                    IssueCode::Value,
                    at,
                    format!("_include={value} does not start with {resource_type}:"),
                )),
                Err((code, msg)) => issues.push(Issue::error(code, at, msg)),
            },
            _ => match parse_filter(resource_type, key, value) {
                Ok(f) => q.filters.push(f),
                Err(issue) if lenient => {
                    q.warnings.push(Issue {
                        severity: "warning",
                        ..issue
                    });
                    continue;
                }
                Err(issue) => issues.push(issue),
            },
        }
        if key != "_cursor" {
            q.echo.push((key.clone(), value.clone()));
        }
    }
    if issues.is_empty() {
        Ok(q)
    } else {
        Err(FhirError::Invalid(issues))
    }
}

/// `Source:param` or `Source:param:Target`. A target type the parameter cannot point to
/// is refused: it would silently include nothing.
fn parse_include(value: &str, iterate: bool) -> Result<Include, (IssueCode, String)> {
    let mut parts = value.split(':');
    let (Some(source), Some(name)) = (parts.next(), parts.next()) else {
        return Err((
            IssueCode::NotSupported,
            format!("_include={value} must be Type:param or Type:param:Target"),
        ));
    };
    let target = parts.next().filter(|t| !t.is_empty());
    if parts.next().is_some() {
        return Err((
            IssueCode::Value,
            format!("_include={value} must be Type:param or Type:param:Target"),
        ));
    }
    let def = match find_param(source, name) {
        Some(def) if def.kind == ParamType::Reference => def,
        _ => {
            return Err((
                IssueCode::NotSupported,
                format!("_include={value}: {source} has no reference search parameter {name:?}"),
            ));
        }
    };
    if let Some(t) = target
        && (!super::is_supported_type(t) || !def.allows_target(&format!("{t}/x")))
    {
        let can = if def.targets.is_empty() {
            "a supported resource type".to_string()
        } else {
            def.targets.join(", ")
        };
        return Err((
            IssueCode::Value,
            format!("_include={value}: {source}:{name} cannot point to {t} (only to {can})"),
        ));
    }
    Ok(Include {
        source_type: source.to_string(),
        param: def,
        target: target.map(str::to_string),
        iterate,
    })
}

fn parse_filter(resource_type: &str, key: &str, value: &str) -> Result<Filter, Issue> {
    let at = format!("{resource_type}?{key}");
    let (name, modifier) = match key.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (key, None),
    };
    if name.contains('.') || modifier.is_some_and(|m| m.contains('.')) {
        return Err(Issue::error(
            IssueCode::NotSupported,
            at,
            "chained search parameters are not supported",
        ));
    }
    let Some(def) = find_param(resource_type, name) else {
        return Err(Issue::error(
            IssueCode::NotSupported,
            at,
            format!("unknown search parameter {name:?} for {resource_type} (see /fhir/metadata)"),
        ));
    };
    let modifier = match modifier {
        None => Modifier::None,
        Some("missing") => Modifier::Missing,
        Some("exact") if def.kind == ParamType::String => Modifier::Exact,
        Some("contains") if def.kind == ParamType::String => Modifier::Contains,
        Some(m) => {
            return Err(Issue::error(
                IssueCode::NotSupported,
                at,
                format!("modifier :{m} is not supported on {name}"),
            ));
        }
    };
    if modifier == Modifier::Missing {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Issue::error(
                    IssueCode::Value,
                    at,
                    ":missing takes true or false",
                ));
            }
        };
        if matches!(def.kind, ParamType::Id | ParamType::LastUpdated) {
            return Err(Issue::error(
                IssueCode::NotSupported,
                at,
                format!("{name} is never missing"),
            ));
        }
        return Ok(Filter {
            param: def,
            modifier,
            missing,
            values: vec![],
        });
    }
    let mut values = Vec::new();
    for raw in split_or(value) {
        values.push(
            parse_value(def, &raw)
                .map_err(|msg| Issue::error(IssueCode::Value, at.clone(), msg))?,
        );
    }
    if values.is_empty() {
        return Err(Issue::error(
            IssueCode::Value,
            at,
            "a search parameter needs a value",
        ));
    }
    Ok(Filter {
        param: def,
        modifier,
        missing: false,
        values,
    })
}

/// Splits on unescaped commas and undoes `\,` `\|` `\$` `\\` escapes.
fn split_or(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '$' | '\\')) => current.push(n),
                Some(n) => {
                    current.push('\\');
                    current.push(n);
                }
                None => current.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out.retain(|s| !s.is_empty());
    out
}

fn parse_value(def: &ParamDef, raw: &str) -> Result<SearchValue, String> {
    match def.kind {
        ParamType::Id => Ok(SearchValue::Token {
            system: None,
            code: Some(raw.to_string()),
        }),
        ParamType::Token | ParamType::Uri => Ok(match raw.split_once('|') {
            None => SearchValue::Token {
                system: None,
                code: Some(raw.to_string()),
            },
            Some((sys, code)) => SearchValue::Token {
                system: Some(sys.to_string()),
                code: (!code.is_empty()).then(|| code.to_string()),
            },
        }),
        ParamType::Reference => {
            if raw.contains('/') {
                let (target, id) = match reference::parse(raw, None) {
                    Some(Target::Local { resource_type, id }) => {
                        (format!("{resource_type}/{id}"), id.to_string())
                    }
                    Some(Target::External { url }) => (url.to_string(), String::new()),
                    _ => {
                        return Err(format!(
                            "{raw:?} is not a reference (Type/id, id or absolute URL)"
                        ));
                    }
                };
                if !def.allows_target(&target) {
                    return Err(format!(
                        "{} only refers to {}",
                        def.name,
                        def.targets.join(", ")
                    ));
                }
                Ok(SearchValue::Reference {
                    target: Some(target),
                    id,
                })
            } else if super::is_valid_id(raw) {
                Ok(SearchValue::Reference {
                    target: None,
                    id: raw.to_string(),
                })
            } else {
                Err(format!(
                    "{raw:?} is not a reference (Type/id, id or absolute URL)"
                ))
            }
        }
        ParamType::String => Ok(SearchValue::String(raw.to_string())),
        ParamType::Date | ParamType::LastUpdated => {
            let (prefix, rest) = match raw.get(..2) {
                Some("eq") => (Prefix::Eq, &raw[2..]),
                Some("ne") => (Prefix::Ne, &raw[2..]),
                Some("gt") => (Prefix::Gt, &raw[2..]),
                Some("ge") => (Prefix::Ge, &raw[2..]),
                Some("lt") => (Prefix::Lt, &raw[2..]),
                Some("le") => (Prefix::Le, &raw[2..]),
                _ => (Prefix::Eq, raw),
            };
            let range = datetime::parse_range(rest)
                .ok_or_else(|| format!("{raw:?} is not a FHIR date, dateTime or instant"))?;
            Ok(SearchValue::Date { prefix, range })
        }
    }
}

pub fn format_cursor(c: Cursor) -> String {
    format!("{}.{}", c.last_updated, c.seq)
}

fn parse_cursor(s: &str) -> Option<Cursor> {
    let (a, b) = s.split_once('.')?;
    Some(Cursor {
        last_updated: a.parse().ok()?,
        seq: b.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(ty: &str, params: &[(&str, &str)]) -> Result<SearchQuery, FhirError> {
        let params: Vec<_> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_query(ty, &params, false)
    }

    #[test]
    fn extracts_what_task_search_needs() {
        let task = json!({
            "resourceType": "Task", "status": "requested",
            "meta": {"profile": ["http://p"]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": "ServiceRequest/sr1"},
            "for": {"reference": "http://ehr/fhir/Patient/2"},
            "owner": {"reference": "Organization/4"},
            "output": [{"type": {}, "valueReference": {"reference": "Procedure/p1"}}],
            "authoredOn": "2026-11-23"
        });
        let e = extract("Task", &task, None);
        assert!(
            e.tokens
                .contains(&("status", "".into(), "requested".into()))
        );
        assert!(
            e.tokens
                .contains(&("_profile", "".into(), "http://p".into()))
        );
        assert!(e.tokens.contains(&(
            "code",
            "http://hl7.org/fhir/CodeSystem/task-code".into(),
            "fulfill".into()
        )));
        assert!(
            e.references
                .contains(&("focus", "ServiceRequest/sr1".into()))
        );
        assert!(
            e.references
                .contains(&("subject", "http://ehr/fhir/Patient/2".into()))
        );
        assert!(e.references.contains(&("output", "Procedure/p1".into())));
        assert_eq!(e.dates.len(), 1);
    }

    #[test]
    fn patient_reference_param_ignores_other_targets() {
        let consent = json!({"resourceType": "Consent", "patient": {"reference": "Group/g"}});
        assert!(extract("Consent", &consent, None).references.is_empty());
        let task = json!({"resourceType": "Task", "for": {"reference": "Group/g"}});
        let e = extract("Task", &task, None);
        assert_eq!(e.references, [("subject", "Group/g".to_string())]);
    }

    /// A parameter answered from another's rows must find them: same type, same paths,
    /// a reference whose own targets are no narrower.
    #[test]
    fn every_shared_parameter_names_a_sibling_with_the_same_paths() {
        for ty in crate::resource::RESOURCE_TYPES {
            for def in type_params(ty).iter().filter(|d| d.indexed_as != d.name) {
                let owner = type_params(ty)
                    .iter()
                    .find(|o| o.name == def.indexed_as)
                    .unwrap_or_else(|| panic!("{ty}: {} has no {}", def.name, def.indexed_as));
                assert_eq!(owner.paths, def.paths, "{ty}.{}", def.name);
                assert_eq!(owner.kind, ParamType::Reference);
                assert!(owner.targets.is_empty(), "{ty}.{}", owner.name);
            }
        }
    }

    #[test]
    fn target_types_of_local_and_absolute_references() {
        assert_eq!(target_type("Patient/1"), "Patient");
        assert_eq!(target_type("http://ehr/fhir/Patient/2"), "Patient");
        assert_eq!(target_type("http://ehr/fhir/Group/2/"), "Group");
    }

    #[test]
    fn names_are_indexed_lower_case() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Núñez", "given": ["Ana", "María"]}]});
        let e = extract("Patient", &p, None);
        assert!(e.strings.contains(&("family", "núñez".into())));
        assert!(e.strings.contains(&("given", "maría".into())));
    }

    /// `name` searches `family`'s and `given`'s rows too, so a Patient's name parts are
    /// stored once; the parts only `name` covers keep rows of their own.
    #[test]
    fn a_patient_s_family_and_given_names_are_not_stored_twice() {
        let p = json!({"resourceType": "Patient", "name": [{
            "text": "Dr Ana Núñez", "prefix": ["Dr"], "family": "Núñez", "given": ["Ana"]
        }]});
        let mut e = extract("Patient", &p, None).strings;
        e.sort();
        let expected: Vec<(&str, String)> = vec![
            ("family", "núñez".into()),
            ("given", "ana".into()),
            ("name", "dr".into()),
            ("name", "dr ana núñez".into()),
        ];
        assert_eq!(e, expected);
        let practitioner = json!({"resourceType": "Practitioner", "name": [{"family": "Ortiz"}]});
        let e = extract("Practitioner", &practitioner, None).strings;
        assert_eq!(e, [("name", "ortiz".to_string())]);
    }

    #[test]
    fn token_forms() {
        let f = &q("Task", &[("identifier", "http://s|1,|2,3,http://t|")])
            .unwrap()
            .filters[0];
        assert_eq!(
            f.values,
            vec![
                SearchValue::Token {
                    system: Some("http://s".into()),
                    code: Some("1".into())
                },
                SearchValue::Token {
                    system: Some("".into()),
                    code: Some("2".into())
                },
                SearchValue::Token {
                    system: None,
                    code: Some("3".into())
                },
                SearchValue::Token {
                    system: Some("http://t".into()),
                    code: None
                },
            ]
        );
    }

    #[test]
    fn lower_case_last_updated_and_prefixes() {
        let query = q(
            "Task",
            &[
                ("_lastupdated", "gt2026-01-01T00:00:00Z"),
                ("_sort", "-_lastUpdated"),
            ],
        )
        .unwrap();
        assert_eq!(query.filters[0].param.name, "_lastUpdated");
        assert!(matches!(
            query.filters[0].values[0],
            SearchValue::Date {
                prefix: Prefix::Gt,
                ..
            }
        ));
        assert_eq!(query.sort, Sort::LastUpdatedDesc);
    }

    #[test]
    fn unknown_parameters_fail_unless_lenient() {
        let err = q("Task", &[("colour", "red")]).unwrap_err();
        assert_eq!(err.issues()[0].expression.as_deref(), Some("Task?colour"));
        let params = vec![("colour".to_string(), "red".to_string())];
        let lenient = parse_query("Task", &params, true).unwrap();
        assert!(lenient.filters.is_empty() && lenient.echo.is_empty());
        assert_eq!(lenient.warnings.len(), 1);
    }

    #[test]
    fn includes_must_name_a_reference_param() {
        assert_eq!(
            q("Task", &[("_include", "Task:focus")]).unwrap().includes[0]
                .param
                .name,
            "focus"
        );
        assert!(q("Task", &[("_include", "Task:status")]).is_err());
        assert!(q("Task", &[("_include", "ServiceRequest:subject")]).is_err());
        let typed = &q("Task", &[("_include", "Task:focus:ServiceRequest")])
            .unwrap()
            .includes[0];
        assert_eq!(typed.target.as_deref(), Some("ServiceRequest"));
        assert!(typed.returns("ServiceRequest/1") && !typed.returns("Patient/1"));
        // part-of points only to Tasks; an unknown type is no target either.
        for bad in [
            "Task:part-of:ServiceRequest",
            "Task:focus:Spaceship",
            "Task:focus:A:B",
        ] {
            let err = q("Task", &[("_include", bad)]).unwrap_err();
            assert_eq!(err.issues()[0].expression.as_deref(), Some("Task?_include"));
        }
        let it = &q("Task", &[("_include:iterate", "ServiceRequest:subject")])
            .unwrap()
            .includes[0];
        assert!(it.iterate && it.source_type == "ServiceRequest");
    }

    #[test]
    fn total_takes_three_values() {
        assert_eq!(
            q("Task", &[("_total", "accurate")]).unwrap().total,
            Total::Accurate
        );
        assert_eq!(q("Task", &[("_total", "none")]).unwrap().total, Total::None);
        assert_eq!(q("Task", &[]).unwrap().total, Total::Default);
        assert!(q("Task", &[("_total", "exact")]).is_err());
    }

    #[test]
    fn missing_and_bad_values() {
        let f = &q("Task", &[("owner:missing", "true")]).unwrap().filters[0];
        assert!(f.missing && f.modifier == Modifier::Missing);
        assert!(q("Task", &[("owner:missing", "yes")]).is_err());
        assert!(q("Task", &[("_lastUpdated", "yesterday")]).is_err());
        assert!(q("Task", &[("patient", "Organization/1")]).is_err());
        assert!(q("Task", &[("owner:Organization.identifier", "x")]).is_err());
        assert!(q("Task", &[("_count", "-1")]).is_err());
    }

    #[test]
    fn escaped_commas_are_not_separators() {
        assert_eq!(split_or(r"a\,b,c"), vec!["a,b", "c"]);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a client puts in a query string, the parser answers Ok or a named
        /// error; it never panics.
        #[test]
        fn any_query_parses_or_fails_cleanly(
            pairs in proptest::collection::vec(("[_a-z:.-]{0,20}", "\\PC{0,40}"), 0..6),
            ty in prop::sample::select(crate::resource::RESOURCE_TYPES.to_vec()),
        ) {
            let params: Vec<(String, String)> = pairs;
            match parse_query(ty, &params, false) {
                Ok(q) => prop_assert!(q.count <= MAX_COUNT),
                Err(e) => prop_assert!(e.issues().iter().all(|i| i.expression.is_some())),
            }
        }

        #[test]
        fn any_date_string_parses_to_a_non_empty_range_or_none(s in "\\PC{0,32}") {
            if let Some(r) = datetime::parse_range(&s) {
                prop_assert!(r.lo < r.hi);
            }
        }

        #[test]
        fn generated_dates_round_trip(y in 1900i32..2100, m in 1u8..=12, d in 1u8..=28, h in 0u8..24, min in 0u8..60) {
            let text = format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:00Z");
            let r = datetime::parse_range(&text).unwrap();
            prop_assert_eq!(&datetime::format_instant(r.lo)[..19], &text[..19]);
        }
    }
}
