//! The declarative rules in `mappings/`, loaded and checked once at start (never per
//! message): which parts of the referral projection each organisation sees
//! (`cbo/visibility.toml`), how identifiers from each source become person identifiers
//! (`identity/sources.toml`), the HIE feed tables (`hie/feeds.toml`), the codes of
//! decline reasons and close outcomes (`cbo/codes.toml`), the connectors to CBO
//! case-management systems (`connectors/*.toml`), and which directory taxonomy terms
//! mean which SDOH need (`directory/domains.toml`).
//!
//! Invariant: a rule that names an unknown field or organisation stops the gateway at
//! start with the file, line and rule id, rather than silently showing or hiding data.
//!
//! [`Live`] holds the set in force: the feed, the FHIR engine and the CBO API take one
//! snapshot per message or request, and SIGHUP swaps in a freshly loaded set only when
//! all of it is valid (a broken set is refused and the old one stays). Rules only: no
//! store, no network. `check` (every problem, with file:line) lives here; the tools that
//! run the rules over samples and stored traffic are `workbench`'s.

pub mod connector;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;

use crate::directory::needs::Needs;
use crate::hie::FeedTables;
use crate::identity::IdentityRules;
use crate::measures::Screening;
use crate::referral::action::ReasonCodes;
use crate::referral::projection::OMITTABLE;
use crate::referral::routing::{Domains, Routes};
pub use connector::Spec;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a value of the wrong type: where the parser stopped.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A rule that parsed but cannot be right; `line` is where its `id` is written.
    #[error("{path}:{line}: rule {rule}: {message}")]
    Rule {
        path: PathBuf,
        line: usize,
        rule: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityFile {
    #[serde(default)]
    rule: Vec<VisibilityRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityRule {
    id: String,
    organizations: Vec<String>,
    omit: Vec<String>,
}

/// Every loaded mapping.
#[derive(Debug, Default, Clone)]
pub struct Mappings {
    /// Organisation id → projection paths it may not see.
    omit: HashMap<String, Vec<String>>,
    /// Paths omitted for every organisation.
    omit_all: Vec<String>,
    pub identity: IdentityRules,
    pub feeds: FeedTables,
    /// CBO decline reasons and close outcomes → `Task.statusReason` codings.
    pub reason_codes: ReasonCodes,
    /// Connectors to case-management systems, by id.
    pub connectors: BTreeMap<String, Arc<Spec>>,
    /// Task.owner identifiers and references → organisation, besides `config/`.
    pub routes: Routes,
    /// ServiceRequest.category codings → SDOH domain.
    pub domains: Domains,
    /// Screening items and their positive answers, for outcome measures.
    pub screening: Screening,
    /// SDOH domain ↔ directory taxonomy terms, for `/hsds/…?sdoh_domain=`.
    pub needs: Needs,
}

/// The mappings in force. A reload swaps the whole set at once; each message or
/// request works with the one snapshot it took ([`Live::current`]).
#[derive(Clone, Default, Debug)]
pub struct Live(Arc<RwLock<Arc<Mappings>>>);

impl Live {
    pub fn new(mappings: Mappings) -> Live {
        Live(Arc::new(RwLock::new(Arc::new(mappings))))
    }

    pub fn current(&self) -> Arc<Mappings> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads `dir` and, when every file is valid, puts it in force; otherwise the set
    /// in force stays and the error says why.
    pub fn reload(&self, dir: &Path, organizations: &[String]) -> Result<(), MappingError> {
        let fresh = Arc::new(Mappings::load(dir, organizations)?);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

const IDENTITY: &str = "identity/sources.toml";
const FEEDS: &str = "hie/feeds.toml";
const VISIBILITY: &str = "cbo/visibility.toml";
const CODES: &str = "cbo/codes.toml";
const CONNECTORS: &str = "connectors";
const ROUTING: &str = "cbo/routing.toml";
const DOMAINS: &str = "cbo/domains.toml";
const SCREENING: &str = "measures/screening.toml";
const NEEDS: &str = "directory/domains.toml";

/// HL7 table 0004 (patient class): the codes a feed may send in PV1-2.
const PATIENT_CLASSES: &[&str] = &["E", "I", "O", "P", "R", "B", "C", "N", "U"];

impl Mappings {
    /// Loads `dir`; `organizations` are the configured organisation ids, which rules
    /// must name. A missing directory or file means "no rules".
    pub fn load(dir: &Path, organizations: &[String]) -> Result<Mappings, MappingError> {
        let mut m = Mappings::default();
        if let Some(rules) = load_identity(dir)? {
            m.identity = rules;
        }
        if let Some(tables) = load_feeds(dir)? {
            m.feeds = tables;
        }
        if let Some((omit, omit_all)) = load_visibility(dir, organizations)? {
            m.omit = omit;
            m.omit_all = omit_all;
        }
        if let Some(codes) = load_codes(dir)? {
            m.reason_codes = codes;
        }
        if let Some(routes) = load_routes(dir, organizations)? {
            m.routes = routes;
        }
        if let Some(domains) = load_rules(dir, DOMAINS, Domains::build)? {
            m.domains = domains;
        }
        if let Some(screening) = load_rules(dir, SCREENING, Screening::build)? {
            m.screening = screening;
        }
        if let Some(needs) = load_rules(dir, NEEDS, Needs::build)? {
            m.needs = needs;
        }
        for spec in load_connectors(dir, organizations)? {
            m.connectors.insert(spec.id.clone(), Arc::new(spec));
        }
        duplicate_ids(dir)?;
        Ok(m)
    }

    /// Projection paths `organization` may not see.
    pub fn omitted_for(&self, organization: &str) -> Vec<String> {
        let mut all = self.omit_all.clone();
        all.extend(self.omit.get(organization).into_iter().flatten().cloned());
        all
    }
}

/// `crossway mappings check`: every problem in every file (not only the first), then
/// notes that are not errors, such as HL7 codes no table maps.
pub fn check(dir: &Path, organizations: &[String]) -> (Vec<MappingError>, Vec<String>) {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = load_identity(dir) {
        errors.push(e);
    }
    match load_feeds(dir) {
        Err(e) => errors.push(e),
        Ok(None) => notes.push(format!("{FEEDS}: missing: no HIE feed is accepted")),
        Ok(Some(tables)) => {
            let unmapped: Vec<&str> = PATIENT_CLASSES
                .iter()
                .copied()
                .filter(|c| tables.patient_class(c).is_none())
                .collect();
            if !unmapped.is_empty() {
                notes.push(format!(
                    "{FEEDS}: PV1-2 (HL7 table 0004) codes {} have no [patient_class] entry: messages with them become dead letters",
                    unmapped.join(", ")
                ));
            }
        }
    }
    if let Err(e) = load_visibility(dir, organizations) {
        errors.push(e);
    }
    match load_codes(dir) {
        Err(e) => errors.push(e),
        Ok(codes) => {
            let unmapped = codes.unwrap_or_default().unmapped();
            if !unmapped.is_empty() {
                notes.push(format!(
                    "{CODES}: {} have no entry: Task.statusReason uses the gateway's own code system for them",
                    unmapped.join(", ")
                ));
            }
        }
    }
    if let Err(e) = load_routes(dir, organizations) {
        errors.push(e);
    }
    if let Err(e) = load_rules(dir, DOMAINS, Domains::build) {
        errors.push(e);
    }
    match load_rules(dir, SCREENING, Screening::build) {
        Err(e) => errors.push(e),
        Ok(None) => notes.push(format!(
            "{SCREENING}: missing: no screening is recognised, so every measure counts none"
        )),
        Ok(Some(_)) => {}
    }
    match load_rules(dir, NEEDS, Needs::build) {
        Err(e) => errors.push(e),
        Ok(None) => notes.push(format!(
            "{NEEDS}: missing: /hsds/ cannot search by need (sdoh_domain=)"
        )),
        Ok(Some(_)) => {}
    }
    for name in connector_files(dir) {
        match load_connector(dir, &name, organizations) {
            Err(e) => errors.push(e),
            Ok(spec) => {
                let missing = spec.missing_environment();
                if !missing.is_empty() {
                    notes.push(format!(
                        "{name}: connector {} stays inactive until {} {} set",
                        spec.id,
                        missing.join(", "),
                        if missing.len() == 1 { "is" } else { "are" }
                    ));
                }
            }
        }
    }
    if let Err(e) = duplicate_ids(dir) {
        errors.push(e);
    }
    (errors, notes)
}

/// A rules file built by `build`; `None` when the file does not exist. A rule `build`
/// refuses is reported at its line.
fn load_rules<F: serde::de::DeserializeOwned, T>(
    dir: &Path,
    name: &str,
    build: impl FnOnce(F) -> Result<T, (String, String)>,
) -> Result<Option<T>, MappingError> {
    let Some((path, text, file)) = read_toml(dir, name)? else {
        return Ok(None);
    };
    build(file)
        .map(Some)
        .map_err(|(rule, message)| rule_error(&path, &text, rule, message))
}

fn load_identity(dir: &Path) -> Result<Option<IdentityRules>, MappingError> {
    load_rules(dir, IDENTITY, IdentityRules::build)
}

fn load_feeds(dir: &Path) -> Result<Option<FeedTables>, MappingError> {
    load_rules(dir, FEEDS, FeedTables::build)
}

fn load_codes(dir: &Path) -> Result<Option<ReasonCodes>, MappingError> {
    load_rules(dir, CODES, ReasonCodes::build)
}

fn load_routes(dir: &Path, organizations: &[String]) -> Result<Option<Routes>, MappingError> {
    load_rules(dir, ROUTING, |file| Routes::build(file, organizations))
}

/// `connectors/<name>.toml` names, sorted.
fn connector_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join(CONNECTORS)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("{CONNECTORS}/{n}"))
        .collect();
    names.sort();
    names
}

fn load_connectors(dir: &Path, organizations: &[String]) -> Result<Vec<Spec>, MappingError> {
    connector_files(dir)
        .iter()
        .map(|name| load_connector(dir, name, organizations))
        .collect()
}

fn load_connector(dir: &Path, name: &str, organizations: &[String]) -> Result<Spec, MappingError> {
    let Some((path, text, spec)) = read_toml::<Spec>(dir, name)? else {
        return Err(MappingError::Read {
            path: dir.join(name),
            source: std::io::ErrorKind::NotFound.into(),
        });
    };
    let id = spec.id.clone();
    spec.build(&dir.join(CONNECTORS), organizations)
        .map_err(|message| rule_error(&path, &text, id, message))
}

type Visibility = (HashMap<String, Vec<String>>, Vec<String>);

fn load_visibility(
    dir: &Path,
    organizations: &[String],
) -> Result<Option<Visibility>, MappingError> {
    let Some((path, text, file)) = read_toml::<VisibilityFile>(dir, VISIBILITY)? else {
        return Ok(None);
    };
    let mut omit: HashMap<String, Vec<String>> = HashMap::new();
    let mut omit_all = Vec::new();
    for rule in file.rule {
        let fail = |message: String| rule_error(&path, &text, rule.id.clone(), message);
        if let Some(bad) = rule.omit.iter().find(|p| !OMITTABLE.contains(&p.as_str())) {
            return Err(fail(format!(
                "omit names {bad:?}, which is not a projection field (known: {})",
                OMITTABLE.join(", ")
            )));
        }
        for org in &rule.organizations {
            if org == "*" {
                omit_all.extend(rule.omit.iter().cloned());
            } else if organizations.contains(org) {
                omit.entry(org.clone())
                    .or_default()
                    .extend(rule.omit.iter().cloned());
            } else {
                return Err(fail(format!(
                    "organizations names {org:?}, which is not a configured organisation"
                )));
            }
        }
    }
    Ok(Some((omit, omit_all)))
}

/// Two rules with one id, in one file or across files: a rule id must name one rule.
fn duplicate_ids(dir: &Path) -> Result<(), MappingError> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let files = [
        IDENTITY, FEEDS, VISIBILITY, CODES, ROUTING, DOMAINS, SCREENING, NEEDS,
    ]
    .map(String::from);
    for name in files.into_iter().chain(connector_files(dir)) {
        let name = name.as_str();
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let Some(id) = rule_id_on(line) else { continue };
            let here = format!("{name}:{}", i + 1);
            if let Some(first) = seen.insert(id.to_string(), here) {
                return Err(MappingError::Rule {
                    path,
                    line: i + 1,
                    rule: id.to_string(),
                    message: format!("the id is already used at {first}"),
                });
            }
        }
    }
    Ok(())
}

/// `id = "…"` on a line of its own: a rule's id.
fn rule_id_on(line: &str) -> Option<&str> {
    let rest = line
        .trim()
        .strip_prefix("id")?
        .trim_start()
        .strip_prefix('=')?;
    rest.trim().strip_prefix('"')?.strip_suffix('"')
}

/// The error for `rule`, at the line of its `id = "…"`, or for a table entry
/// (`table.key`) at the line of its key under `[table]`.
fn rule_error(path: &Path, text: &str, rule: String, message: String) -> MappingError {
    let by_id = text
        .lines()
        .position(|l| rule_id_on(l) == Some(rule.as_str()));
    let by_key = || {
        let (table, key) = rule.split_once('.')?;
        let header = format!("[{table}]");
        let start = text.lines().position(|l| l.trim() == header)?;
        text.lines()
            .enumerate()
            .skip(start + 1)
            .take_while(|(_, l)| !l.trim_start().starts_with('['))
            .find(|(_, l)| {
                let k = l.split('=').next().unwrap_or("").trim().trim_matches('"');
                k == key
            })
            .map(|(i, _)| i)
    };
    let line = by_id.or_else(by_key).map_or(0, |i| i + 1);
    MappingError::Rule {
        path: path.to_path_buf(),
        line,
        rule,
        message,
    }
}

/// A file's path, text and contents; `None` when it does not exist (no rules).
fn read_toml<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<(PathBuf, String, T)>, MappingError> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MappingError::Read { path, source }),
    };
    match toml::from_str(&text) {
        Ok(file) => Ok(Some((path, text, file))),
        Err(e) => {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            Err(MappingError::Parse {
                path,
                line,
                message: e.message().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Mappings, MappingError> {
        let dir = std::env::temp_dir().join(format!("crossway-mapping-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("cbo")).unwrap();
        std::fs::write(dir.join("cbo/visibility.toml"), text).unwrap();
        let result = Mappings::load(&dir, &["cbo-a".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn rules_combine_defaults_and_the_organisations_own() {
        let m = load(
            r#"
            [[rule]]
            id = "all"
            organizations = ["*"]
            omit = ["need.conditions"]
            [[rule]]
            id = "a"
            organizations = ["cbo-a"]
            omit = ["client.birth_date"]
            "#,
        )
        .unwrap();
        assert_eq!(
            m.omitted_for("cbo-a"),
            ["need.conditions", "client.birth_date"]
        );
        assert_eq!(m.omitted_for("cbo-b"), ["need.conditions"]);
    }

    #[test]
    fn unknown_fields_and_organisations_are_refused_with_the_rule_id() {
        let e = load("[[rule]]\nid = \"x\"\norganizations = [\"*\"]\nomit = [\"client.mrn\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule x") && e.contains("client.mrn"), "{e}");
        let e = load("[[rule]]\nid = \"y\"\norganizations = [\"nobody\"]\nomit = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule y") && e.contains("nobody"), "{e}");
        let e = load("[[rule]]\nid = \"z\"\norganisations = []\nomit = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("organisations"), "{e}");
    }

    fn load_connector_file(toml: &str, template: &str) -> Result<Mappings, MappingError> {
        let dir = std::env::temp_dir().join(format!("crossway-mapping-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("connectors")).unwrap();
        std::fs::write(dir.join("connectors/cases.toml"), toml).unwrap();
        std::fs::write(dir.join("connectors/create.json"), template).unwrap();
        let result = Mappings::load(&dir, &["cbo-a".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    const CONNECTOR: &str = r#"# a case system
id = "cases-a"
organization = "cbo-a"
base_url = "${CASES_URL}"
auth = { kind = "none" }

[[request]]
name = "create"
on = ["referral.created"]
method = "POST"
path = "/cases"
template = "create.json"
case_id = "/id"
"#;

    #[test]
    fn a_connector_loads_with_its_template() {
        let m = load_connector_file(CONNECTOR, r#"{"name": "{{ /client/name/family }}"}"#).unwrap();
        let spec = &m.connectors["cases-a"];
        assert_eq!(spec.event_types(), " referral.created ");
        assert_eq!(spec.missing_environment(), ["CASES_URL"]);
    }

    #[test]
    fn connector_mistakes_are_refused_at_the_rule_with_the_paths() {
        let e = load_connector_file(CONNECTOR, r#"{"mrn": "{{ /client/mrn }}"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cases.toml:2: rule cases-a"), "{e}");
        assert!(e.contains("create.json: /mrn reads /client/mrn"), "{e}");
        let e = load_connector_file(
            &CONNECTOR.replace("referral.created", "referral.made"),
            "{}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rule cases-a") && e.contains("\"referral.made\""),
            "{e}"
        );
        let e = load_connector_file(CONNECTOR, r#"{"p": "{{ /urgency | map priority }}"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uses map \"priority\""), "{e}");
        let e = load_connector_file(&CONNECTOR.replace("method", "verb"), "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cases.toml:") && e.contains("verb"), "{e}");
        let closing = format!(
            "{CONNECTOR}[status]\nsource = \"push\"\ncase_id = \"/id\"\nfield = \"/status\"\n[status.map]\ndone = {{ status = \"closed\" }}\n"
        );
        let e = load_connector_file(&closing, "{}").unwrap_err().to_string();
        assert!(
            e.contains("status.map.done: reaching closed needs body.outcome"),
            "{e}"
        );
    }
}
