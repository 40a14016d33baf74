//! Search by need: the SDOH domains of the SDOH Clinical Care IG (`food-insecurity`,
//! `housing-instability`, …) mapped to the taxonomy terms directories classify their
//! services by, from `mappings/directory/domains.toml` (loaded and checked by
//! `mapping`). `api` asks [`Needs::term_matches`] of the terms a service carries.
//!
//! A directory's term (an HSDS `taxonomy_term` object) matches a domain when
//! - its taxonomy is one the file declares (its `taxonomy` text, or its
//!   `taxonomy_detail`'s `name` or `uri`, contains one of the taxonomy's `names`,
//!   ignoring case) and its `code` is one of the domain's codes in that taxonomy
//!   (trimmed, ignoring case); or
//! - whatever its taxonomy, its `name` is one of the domain's names: the names of the
//!   domain's terms and its extra `names`, compared ignoring case, punctuation and
//!   spacing, with `&` read as "and" — so a directory's own taxonomy ("Food Pantry",
//!   "Emergency food") matches without a rule of its own.
//!
//! `api` also tries the term's ancestors (`parent_id`), so a rule for "Food" covers
//! the terms filed under it.
//!
//! Invariant: no IO; every domain named is an SDOH domain of the IG.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use crate::referral::routing::SDOH_DOMAINS;

/// `mappings/directory/domains.toml`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeedsFile {
    #[serde(default)]
    taxonomy: Vec<TaxonomyRule>,
    #[serde(default)]
    domain: Vec<DomainRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyRule {
    id: String,
    /// How the domain rules name this taxonomy.
    key: String,
    /// What a directory's term says its taxonomy is called (any one, ignoring case).
    names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainRule {
    id: String,
    domain: String,
    #[serde(default)]
    terms: Vec<TermRule>,
    /// Further term names that mean this need, in any taxonomy.
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermRule {
    taxonomy: String,
    code: String,
    name: String,
}

#[derive(Debug, Default, Clone)]
struct DomainTerms {
    /// (taxonomy key, code as compared).
    codes: HashSet<(String, String)>,
    /// Names as compared ([`name_key`]).
    names: HashSet<String>,
}

/// The SDOH domain ↔ taxonomy term rules in force.
#[derive(Debug, Default, Clone)]
pub struct Needs {
    /// Taxonomy key → the lower-cased names that identify it.
    taxonomies: BTreeMap<String, Vec<String>>,
    domains: BTreeMap<String, DomainTerms>,
}

impl Needs {
    /// Checks and indexes the file; a refused rule comes back as (rule id, why).
    pub fn build(file: NeedsFile) -> Result<Needs, (String, String)> {
        let mut needs = Needs::default();
        for t in file.taxonomy {
            if t.key.trim().is_empty() || t.names.iter().all(|n| n.trim().is_empty()) {
                return Err((t.id, "a taxonomy needs a key and at least one name".into()));
            }
            let names = t.names.iter().map(|n| n.trim().to_lowercase()).collect();
            if needs.taxonomies.insert(t.key.clone(), names).is_some() {
                return Err((t.id, format!("taxonomy key {:?} is declared twice", t.key)));
            }
        }
        let mut rule_of: HashMap<String, String> = HashMap::new();
        for rule in file.domain {
            let fail = |message: String| Err((rule.id.clone(), message));
            if !SDOH_DOMAINS.contains(&rule.domain.as_str()) {
                return fail(format!(
                    "domain {:?} is not an SDOH domain (known: {})",
                    rule.domain,
                    SDOH_DOMAINS.join(", ")
                ));
            }
            if let Some(first) = rule_of.insert(rule.domain.clone(), rule.id.clone()) {
                return fail(format!(
                    "domain {} already has rule {first}; one rule per domain",
                    rule.domain
                ));
            }
            if rule.terms.is_empty() && rule.names.is_empty() {
                return fail("names no terms and no names: it would match nothing".into());
            }
            let mut terms = DomainTerms::default();
            for term in &rule.terms {
                if !needs.taxonomies.contains_key(&term.taxonomy) {
                    return fail(format!(
                        "term {} {:?} names taxonomy {:?}, which no [[taxonomy]] declares",
                        term.code, term.name, term.taxonomy
                    ));
                }
                let code = code_key(&term.code);
                if code.is_empty() || name_key(&term.name).is_empty() {
                    return fail("a term needs a code and a name".into());
                }
                if !terms.codes.insert((term.taxonomy.clone(), code)) {
                    return fail(format!(
                        "term {} of {} is listed twice",
                        term.code, term.taxonomy
                    ));
                }
                terms.names.insert(name_key(&term.name));
            }
            for name in &rule.names {
                let key = name_key(name);
                if key.is_empty() {
                    return fail("an empty name".into());
                }
                terms.names.insert(key);
            }
            needs.domains.insert(rule.domain, terms);
        }
        Ok(needs)
    }

    /// The domains that have a rule, sorted.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    pub fn knows(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// Whether `term` (an HSDS taxonomy term object) means `domain`.
    pub fn term_matches(&self, domain: &str, term: &Value) -> bool {
        let Some(rules) = self.domains.get(domain) else {
            return false;
        };
        if let Some(name) = term.get("name").and_then(Value::as_str)
            && rules.names.contains(&name_key(name))
        {
            return true;
        }
        let Some(code) = term.get("code").and_then(Value::as_str) else {
            return false;
        };
        let code = code_key(code);
        self.taxonomies_of(term)
            .any(|key| rules.codes.contains(&(key.to_string(), code.clone())))
    }

    /// The declared taxonomies `term` says it belongs to.
    fn taxonomies_of<'a>(&'a self, term: &Value) -> impl Iterator<Item = &'a str> {
        let detail = term.get("taxonomy_detail");
        let said: Vec<String> = [
            term.get("taxonomy"),
            detail.and_then(|d| d.get("name")),
            detail.and_then(|d| d.get("uri")),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_lowercase)
        .collect();
        self.taxonomies
            .iter()
            .filter(move |(_, names)| {
                said.iter()
                    .any(|s| names.iter().any(|n| s.contains(n.as_str())))
            })
            .map(|(key, _)| key.as_str())
    }
}

fn code_key(code: &str) -> String {
    code.trim().to_lowercase()
}

/// A term name as compared: lower case, `&` as "and", words separated by one space.
fn name_key(name: &str) -> String {
    name.to_lowercase()
        .replace('&', " and ")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn needs(text: &str) -> Result<Needs, (String, String)> {
        Needs::build(toml::from_str(text).unwrap())
    }

    const RULES: &str = r#"
        [[taxonomy]]
        id = "t.oe"
        key = "open-eligibility"
        names = ["Open Eligibility"]

        [[domain]]
        id = "d.food"
        domain = "food-insecurity"
        terms = [{ taxonomy = "open-eligibility", code = "1102", name = "Food" }]
        names = ["Emergency Food", "Home & Garden"]
    "#;

    #[test]
    fn a_term_matches_by_code_in_its_taxonomy_or_by_name_in_any() {
        let n = needs(RULES).unwrap();
        let oe = |code: &str, name: &str| json!({"id": "t", "code": code, "name": name, "taxonomy": "Open Eligibility v2"});
        assert!(n.term_matches("food-insecurity", &oe("1102", "Nourishment")));
        assert!(n.term_matches(
            "food-insecurity",
            &json!({"code": " 1102 ", "name": "x",
                    "taxonomy_detail": {"name": "open eligibility"}})
        ));
        // The same code in another taxonomy is another term.
        assert!(!n.term_matches(
            "food-insecurity",
            &json!({"code": "1102", "name": "Bus passes", "taxonomy": "211 LA"})
        ));
        // Names match in any taxonomy, ignoring case, punctuation and `&`.
        assert!(n.term_matches(
            "food-insecurity",
            &json!({"code": "X", "name": "emergency  FOOD", "taxonomy": "local"})
        ));
        assert!(n.term_matches("food-insecurity", &json!({"name": "Home and garden"})));
        assert!(!n.term_matches("food-insecurity", &oe("1103", "Housing")));
        assert!(!n.term_matches("housing-instability", &oe("1102", "Food")));
        assert_eq!(n.domains().collect::<Vec<_>>(), ["food-insecurity"]);
    }

    #[test]
    fn rules_that_cannot_be_right_are_refused_naming_the_rule() {
        let bad = RULES.replace("domain = \"food-insecurity\"", "domain = \"hunger\"");
        let (rule, why) = needs(&bad).unwrap_err();
        assert_eq!(rule, "d.food");
        assert!(why.contains("not an SDOH domain"), "{why}");

        let bad = RULES.replace("taxonomy = \"open-eligibility\"", "taxonomy = \"ole\"");
        assert!(
            needs(&bad)
                .unwrap_err()
                .1
                .contains("no [[taxonomy]] declares")
        );

        let twice = format!(
            "{RULES}\n[[domain]]\nid = \"d.food2\"\ndomain = \"food-insecurity\"\nnames = [\"Meals\"]\n"
        );
        let (rule, why) = needs(&twice).unwrap_err();
        assert_eq!(rule, "d.food2");
        assert!(why.contains("already has rule d.food"), "{why}");

        let empty = "[[domain]]\nid = \"d.x\"\ndomain = \"stress\"\n";
        assert!(needs(empty).unwrap_err().1.contains("match nothing"));
    }
}
