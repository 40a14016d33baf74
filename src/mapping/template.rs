//! JSON templates: a JSON document whose strings may hold `{{ expression }}`s that are
//! filled from a source document. A template is shaped like the payload it produces,
//! so an integration engineer reads the target system's format directly.
//!
//! - A string that is one expression (`"{{ /client/name/family }}"`) becomes the value
//!   found, with its JSON type; when there is none, the member (or array element) is
//!   left out rather than sent as `null` or `""`.
//! - Expressions inside longer text (`"Referral {{ /id }}"`) are written as text; an
//!   absent value writes nothing.
//! - An expression is a JSON pointer into the source followed by filters:
//!   `| map NAME` (a code map of the connector; an unmapped code is an error, unless
//!   the map has a `"*"` entry), `| default "text"`, `| text` (numbers and booleans as
//!   strings) and `| required` (absence is an error).
//!
//! Errors name the target path (where in the output) and the source path (where in the
//! input), so a failing mapping points at both ends.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Code maps by name: source code → target code.
pub type Maps = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{target} (from {input}): {message}")]
pub struct TemplateError {
    /// JSON pointer in the output being built.
    pub target: String,
    /// The expression's JSON pointer in the input.
    pub input: String,
    pub message: String,
}

/// One parsed `{{ … }}`.
#[derive(Debug, Clone, PartialEq)]
struct Expression {
    pointer: String,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Map(String),
    Default(String),
    Text,
    Required,
}

/// Fills `template` from `source`.
pub fn render(template: &Value, source: &Value, maps: &Maps) -> Result<Value, TemplateError> {
    Ok(fill(template, source, maps, "")?.unwrap_or(Value::Null))
}

/// Every expression of `template` with the target path where it is written, or the
/// first one that cannot be parsed, for checking a template before it is used.
pub fn expressions(template: &Value) -> Result<Vec<(String, String)>, TemplateError> {
    let mut found = Vec::new();
    walk(template, "", &mut found)?;
    Ok(found)
}

/// The map names an expression uses, for checking that they exist.
pub fn maps_used(template: &Value) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    for (target, text) in expressions(template)? {
        for f in parse(&text, &target)?.filters {
            if let Filter::Map(name) = f {
                names.push(name);
            }
        }
    }
    Ok(names)
}

fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) -> Result<(), TemplateError> {
    match v {
        Value::String(s) => {
            for (_, text, _) in spans(s, at)? {
                parse(text, at)?;
                out.push((target_or_root(at), text.to_string()));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{at}/{i}"), out)?;
            }
        }
        Value::Object(members) => {
            for (k, item) in members {
                walk(item, &format!("{at}/{}", escape(k)), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn fill(
    template: &Value,
    source: &Value,
    maps: &Maps,
    at: &str,
) -> Result<Option<Value>, TemplateError> {
    match template {
        Value::String(s) => string(s, source, maps, at),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(v) = fill(item, source, maps, &format!("{at}/{i}"))? {
                    out.push(v);
                }
            }
            Ok(Some(Value::Array(out)))
        }
        Value::Object(members) => {
            let mut out = Map::new();
            for (k, item) in members {
                if let Some(v) = fill(item, source, maps, &format!("{at}/{}", escape(k)))? {
                    out.insert(k.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        other => Ok(Some(other.clone())),
    }
}

fn string(s: &str, source: &Value, maps: &Maps, at: &str) -> Result<Option<Value>, TemplateError> {
    let spans = spans(s, at)?;
    if spans.is_empty() {
        return Ok(Some(Value::String(s.to_string())));
    }
    if let [(0, text, end)] = spans[..]
        && end == s.len()
    {
        return evaluate(&parse(text, at)?, source, maps, at);
    }
    let mut out = String::new();
    let mut last = 0;
    for (start, text, end) in spans {
        out.push_str(&s[last..start]);
        let e = parse(text, at)?;
        match evaluate(&e, source, maps, at)? {
            Some(Value::String(v)) => out.push_str(&v),
            Some(Value::Null) | None => {}
            Some(v) => out.push_str(&v.to_string()),
        }
        last = end;
    }
    out.push_str(&s[last..]);
    Ok(Some(Value::String(out)))
}

/// `(start, inner text, end)` of each `{{ … }}` in `s`.
fn spans<'a>(s: &'a str, at: &str) -> Result<Vec<(usize, &'a str, usize)>, TemplateError> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = s[from..].find("{{") {
        let start = from + open;
        let Some(close) = s[start + 2..].find("}}") else {
            return Err(TemplateError {
                target: target_or_root(at),
                input: String::new(),
                message: format!("{s:?} opens {{{{ without closing it"),
            });
        };
        let end = start + 2 + close + 2;
        found.push((start, s[start + 2..end - 2].trim(), end));
        from = end;
    }
    Ok(found)
}

fn parse(text: &str, at: &str) -> Result<Expression, TemplateError> {
    let mut parts = text.split('|').map(str::trim);
    let pointer = parts.next().unwrap_or("").to_string();
    let fail = |message: String| TemplateError {
        target: target_or_root(at),
        input: pointer.clone(),
        message,
    };
    if !pointer.starts_with('/') {
        return Err(fail(format!(
            "{{{{ {text} }}}} must start with a JSON pointer such as /client/name/family"
        )));
    }
    let mut filters = Vec::new();
    for part in parts {
        let (name, arg) = part.split_once(' ').unwrap_or((part, ""));
        let arg = arg.trim();
        filters.push(match name {
            "map" if !arg.is_empty() => Filter::Map(arg.to_string()),
            "default" if arg.len() >= 2 && arg.starts_with('"') && arg.ends_with('"') => {
                Filter::Default(arg[1..arg.len() - 1].to_string())
            }
            "text" if arg.is_empty() => Filter::Text,
            "required" if arg.is_empty() => Filter::Required,
            _ => {
                return Err(fail(format!(
                    "unknown filter {part:?} (known: map NAME, default \"text\", text, required)"
                )));
            }
        });
    }
    Ok(Expression { pointer, filters })
}

fn evaluate(
    e: &Expression,
    source: &Value,
    maps: &Maps,
    at: &str,
) -> Result<Option<Value>, TemplateError> {
    let fail = |message: String| TemplateError {
        target: target_or_root(at),
        input: e.pointer.clone(),
        message,
    };
    let mut value = source.pointer(&e.pointer).filter(|v| !v.is_null()).cloned();
    for f in &e.filters {
        value = match (f, value) {
            (Filter::Map(name), Some(v)) => {
                let table = maps
                    .get(name)
                    .ok_or_else(|| fail(format!("there is no map {name:?}")))?;
                let code = match &v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => return Err(fail(format!("map {name} needs a code, found {v}"))),
                };
                let mapped = table
                    .get(&code)
                    .or_else(|| table.get("*"))
                    .ok_or_else(|| fail(format!("{code:?} has no entry in map {name}")))?;
                Some(Value::String(mapped.clone()))
            }
            (Filter::Default(text), None) => Some(Value::String(text.clone())),
            (Filter::Text, Some(v @ (Value::Number(_) | Value::Bool(_)))) => {
                Some(Value::String(v.to_string()))
            }
            (Filter::Required, None) => {
                return Err(fail("is required but absent from the input".into()));
            }
            (_, v) => v,
        };
    }
    Ok(value)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn target_or_root(at: &str) -> String {
    if at.is_empty() { "/".into() } else { at.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn maps() -> Maps {
        let mut m = Maps::new();
        m.insert(
            "urgency".into(),
            [("routine".to_string(), "LOW".to_string())]
                .into_iter()
                .collect(),
        );
        m
    }

    #[test]
    fn values_keep_their_type_and_absent_ones_are_left_out() {
        let source = json!({"id": "r1", "version": 3, "client": {"name": {"family": "Rivera"}},
            "flags": ["consent_revoked"], "urgency": "routine"});
        let template = json!({"data": {"type": "cases", "attributes": {
            "external_id": "{{ /id }}", "revision": "{{/version}}", "flags": "{{ /flags }}",
            "last_name": "{{ /client/name/family }}", "phone": "{{ /client/phone }}",
            "title": "Referral {{ /id }} for {{ /client/name/family }}{{ /client/phone }}",
            "priority": "{{ /urgency | map urgency }}", "source": "crossway",
            "list": ["{{ /id }}", "{{ /missing }}", 7]}}});
        let out = render(&template, &source, &maps()).unwrap();
        assert_eq!(
            out,
            json!({"data": {"type": "cases", "attributes": {
                "external_id": "r1", "revision": 3, "flags": ["consent_revoked"],
                "last_name": "Rivera", "title": "Referral r1 for Rivera",
                "priority": "LOW", "source": "crossway", "list": ["r1", 7]}}})
        );
    }

    #[test]
    fn filters_default_text_and_required() {
        let source = json!({"n": 12});
        let t = json!({"a": "{{ /x | default \"none\" }}", "b": "{{ /n | text }}"});
        assert_eq!(
            render(&t, &source, &maps()).unwrap(),
            json!({"a": "none", "b": "12"})
        );
        let e = render(&json!({"c": ["{{ /x | required }}"]}), &source, &maps()).unwrap_err();
        assert_eq!((e.target.as_str(), e.input.as_str()), ("/c/0", "/x"));
    }

    #[test]
    fn an_unmapped_code_names_both_paths_and_the_map() {
        let e = render(
            &json!({"priority": "{{ /urgency | map urgency }}"}),
            &json!({"urgency": "stat"}),
            &maps(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/priority (from /urgency): \"stat\" has no entry in map urgency"
        );
    }

    #[test]
    fn bad_expressions_are_found_before_use() {
        assert!(expressions(&json!({"a": "{{ client }}"})).is_err());
        assert!(expressions(&json!({"a": "{{ /a | upper }}"})).is_err());
        assert!(expressions(&json!({"a": "{{ /a "})).is_err());
        assert_eq!(
            maps_used(&json!({"a": ["{{ /a | map m1 }}"], "b": "{{/b|map m2|required}}"})).unwrap(),
            ["m1", "m2"]
        );
    }
}
