//! `Reference.reference` strings: what they point at, and walking them in a resource.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `Patient/123` (optionally `/_history/n`), or an absolute URL on our own base.
    Local { resource_type: &'a str, id: &'a str },
    /// An absolute URL on another server, e.g. the EHR's own FHIR base.
    External { url: &'a str },
    /// `#id`: a contained resource.
    Contained,
    /// `urn:uuid:…` / `urn:oid:…`: only meaningful inside a Bundle.
    Urn { urn: &'a str },
    /// `Patient?identifier=sys|val`: a conditional reference (transactions only).
    Conditional {
        resource_type: &'a str,
        query: &'a str,
    },
}

/// Classifies a reference string. `own_base` is our public `/fhir` base when known.
pub fn parse<'a>(reference: &'a str, own_base: Option<&str>) -> Option<Target<'a>> {
    if reference.starts_with('#') {
        return Some(Target::Contained);
    }
    if reference.starts_with("urn:") {
        return Some(Target::Urn { urn: reference });
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        if let Some(base) = own_base
            && let Some(rest) = reference.strip_prefix(base.trim_end_matches('/'))
            && let Some(rest) = rest.strip_prefix('/')
            && let Some(t @ Target::Local { .. }) = parse_relative(rest)
        {
            return Some(t);
        }
        return Some(Target::External { url: reference });
    }
    parse_relative(reference)
}

fn parse_relative(reference: &str) -> Option<Target<'_>> {
    if let Some((resource_type, query)) = reference.split_once('?') {
        return is_type_name(resource_type).then_some(Target::Conditional {
            resource_type,
            query,
        });
    }
    let mut parts = reference.split('/');
    let resource_type = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(v), None) if !v.is_empty() => {}
        _ => return None,
    }
    (is_type_name(resource_type) && super::is_valid_id(id))
        .then_some(Target::Local { resource_type, id })
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Calls `f` with every `reference` string in the resource, at any depth (contained
/// resources included), so Bundle-internal references can be rewritten.
pub fn for_each_reference_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" => f(s),
                    Value::Object(_) | Value::Array(_) => for_each_reference_mut(v, f),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                for_each_reference_mut(v, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_the_forms_real_clients_send() {
        assert_eq!(
            parse("Organization/4", None),
            Some(Target::Local {
                resource_type: "Organization",
                id: "4"
            })
        );
        assert_eq!(
            parse("Patient/2/_history/3", None),
            Some(Target::Local {
                resource_type: "Patient",
                id: "2"
            })
        );
        assert_eq!(
            parse(
                "http://ehr.example/fhir/ServiceRequest/1",
                Some("http://gw/fhir")
            ),
            Some(Target::External {
                url: "http://ehr.example/fhir/ServiceRequest/1"
            })
        );
        assert_eq!(
            parse("http://gw/fhir/ServiceRequest/1", Some("http://gw/fhir/")),
            Some(Target::Local {
                resource_type: "ServiceRequest",
                id: "1"
            })
        );
        assert_eq!(
            parse("Patient?identifier=http://h|1", None),
            Some(Target::Conditional {
                resource_type: "Patient",
                query: "identifier=http://h|1"
            })
        );
        assert_eq!(
            parse("urn:uuid:1", None),
            Some(Target::Urn { urn: "urn:uuid:1" })
        );
        assert_eq!(parse("#c1", None), Some(Target::Contained));
        assert_eq!(parse("not a reference", None), None);
        assert_eq!(parse("Patient/", None), None);
    }

    #[test]
    fn walks_nested_references() {
        let mut v = json!({"a":{"reference":"x"},"b":[{"reference":"y"},{"c":{"reference":"z"}}],"reference":1});
        let mut seen = vec![];
        for_each_reference_mut(&mut v, &mut |s| {
            seen.push(s.clone());
            s.push('!');
        });
        assert_eq!(seen, ["x", "y", "z"]);
        assert_eq!(v["b"][1]["c"]["reference"], "z!");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_reference_string_is_classified_without_panicking(s in "\\PC{0,60}") {
            if let Some(super::Target::Local { resource_type, id }) = super::parse(&s, Some("http://gw/fhir")) {
                prop_assert!(crate::resource::is_valid_id(id));
                prop_assert!(!resource_type.is_empty());
            }
        }
    }
}
