//! What a FHIR request needs of the caller's scopes, worked out from the request alone.
//! One function for a stand-alone request and for a Bundle entry, so an entry can never
//! do what the same request on its own would be refused (a batch `GET
//! Task?_include=Task:patient` needs `Patient` read exactly as `GET /fhir/Task?…` does).

use super::scopes::Interaction;
use crate::resource::search::{ParamType, find_param};

/// One permission a request needs: an interaction on a type (`*` when the request could
/// touch any type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub resource_type: String,
    pub interaction: Interaction,
}

fn need(resource_type: &str, interaction: Interaction) -> Need {
    Need {
        resource_type: resource_type.to_string(),
        interaction,
    }
}

/// The permissions `method` on `path` (below `/fhir`, without the query) with search
/// parameters `params` needs. Interactions the server does not offer need nothing
/// here: the engine refuses them with its own error.
pub fn needs(method: &str, path: &str, params: &[(String, String)]) -> Vec<Need> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = Vec::new();
    match (method, segments.as_slice()) {
        // The CapabilityStatement is open; a Bundle's entries are checked one by one.
        (_, []) | (_, ["metadata"]) => {}
        // A notification message writes Patients and Encounters.
        (_, ["$process-message"]) => out.push(need("Encounter", Interaction::Create)),
        (_, [op]) if op.starts_with('$') => {}
        ("GET" | "HEAD", [ty]) | ("GET" | "HEAD" | "POST", [ty, "_search"]) => {
            out.push(need(ty, Interaction::Search));
        }
        ("POST", [ty]) => out.push(need(ty, Interaction::Create)),
        // Conditional update and delete search first.
        ("PUT" | "PATCH", [ty]) => {
            out.push(need(ty, Interaction::Update));
            out.push(need(ty, Interaction::Search));
        }
        ("DELETE", [ty]) => {
            out.push(need(ty, Interaction::Delete));
            out.push(need(ty, Interaction::Search));
        }
        // Type- and instance-level operations read (`$status`, `$events`).
        (_, [ty, op]) | (_, [ty, _, op]) if op.starts_with('$') => {
            out.push(need(ty, Interaction::Read));
        }
        ("GET" | "HEAD", [ty, _, ..]) => out.push(need(ty, Interaction::Read)),
        ("PUT" | "PATCH", [ty, _]) => out.push(need(ty, Interaction::Update)),
        ("DELETE", [ty, _]) => out.push(need(ty, Interaction::Delete)),
        _ => {}
    }
    if out
        .first()
        .is_some_and(|n| n.interaction == Interaction::Search)
    {
        out.extend(included(params));
    }
    out
}

/// `_include` and `_revinclude` return other types: read on each type they could
/// return. `Source:param:Target` names it; otherwise the parameter's declared targets,
/// and only a parameter that may point anywhere needs read on every type.
fn included(params: &[(String, String)]) -> Vec<Need> {
    let mut out = Vec::new();
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or("");
        let mut parts = value.split(':');
        let (source, param, target) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().filter(|t| !t.is_empty()),
        );
        match base {
            "_include" => match target {
                Some(t) => out.push(need(t, Interaction::Read)),
                None => match find_param(source, param) {
                    Some(def) if def.kind == ParamType::Reference && !def.targets.is_empty() => {
                        out.extend(def.targets.iter().map(|t| need(t, Interaction::Read)));
                    }
                    _ => out.push(need("*", Interaction::Read)),
                },
            },
            "_revinclude" => out.push(need(
                if source.is_empty() { "*" } else { source },
                Interaction::Read,
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn types(needs: &[Need]) -> Vec<(&str, char)> {
        needs
            .iter()
            .map(|n| (n.resource_type.as_str(), n.interaction.letter()))
            .collect()
    }

    #[test]
    fn each_interaction_needs_its_letter_and_includes_need_read_on_their_targets() {
        assert_eq!(types(&needs("GET", "Task/1", &[])), [("Task", 'r')]);
        assert_eq!(
            types(&needs("GET", "Task/1/_history/2", &[])),
            [("Task", 'r')]
        );
        assert_eq!(types(&needs("POST", "Task", &[])), [("Task", 'c')]);
        assert_eq!(types(&needs("PUT", "Task/1", &[])), [("Task", 'u')]);
        assert_eq!(
            types(&needs("PUT", "Task", &[])),
            [("Task", 'u'), ("Task", 's')]
        );
        assert_eq!(types(&needs("DELETE", "Task/1", &[])), [("Task", 'd')]);
        assert_eq!(types(&needs("POST", "Task/_search", &[])), [("Task", 's')]);
        assert_eq!(
            types(&needs("GET", "Subscription/1/$status", &[])),
            [("Subscription", 'r')]
        );
        assert_eq!(
            types(&needs("GET", "Task", &p(&[("_include", "Task:patient")]))),
            [("Task", 's'), ("Patient", 'r')]
        );
        assert_eq!(
            types(&needs(
                "GET",
                "Task",
                &p(&[("_include:iterate", "Task:focus:ServiceRequest")])
            )),
            [("Task", 's'), ("ServiceRequest", 'r')]
        );
        assert_eq!(
            types(&needs("GET", "Task", &p(&[("_include", "Task:focus")]))),
            [("Task", 's'), ("*", 'r')]
        );
        assert_eq!(
            types(&needs(
                "GET",
                "Patient",
                &p(&[("_revinclude", "Task:patient")])
            )),
            [("Patient", 's'), ("Task", 'r')]
        );
        assert!(needs("GET", "metadata", &[]).is_empty());
    }
}
