//! The declarative rules in `mappings/`, loaded and checked once at start (never per
//! message): which parts of the referral projection each organisation sees
//! (`cbo/visibility.toml`), how identifiers from each source become person identifiers
//! (`identity/sources.toml`), and the HIE feed tables (`hie/feeds.toml`).
//!
//! Invariant: a rule that names an unknown field or organisation stops the gateway at
//! start with the file and rule id, rather than silently showing or hiding data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hie::FeedTables;
use crate::identity::IdentityRules;
use crate::referral::projection::OMITTABLE;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: rule {rule}: {message}")]
    Rule {
        path: PathBuf,
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
}

impl Mappings {
    /// Loads `dir`; `organizations` are the configured organisation ids, which rules
    /// must name. A missing directory or file means "no rules".
    pub fn load(dir: &Path, organizations: &[String]) -> Result<Mappings, MappingError> {
        let mut m = Mappings::default();
        let path = dir.join("identity/sources.toml");
        if let Some(file) = read_toml(&path)? {
            m.identity =
                IdentityRules::build(file).map_err(|(rule, message)| MappingError::Rule {
                    path: path.clone(),
                    rule,
                    message,
                })?;
        }
        let path = dir.join("hie/feeds.toml");
        if let Some(file) = read_toml(&path)? {
            m.feeds = FeedTables::build(file).map_err(|(rule, message)| MappingError::Rule {
                path: path.clone(),
                rule,
                message,
            })?;
        }
        let path = dir.join("cbo/visibility.toml");
        let Some(file) = read_toml::<VisibilityFile>(&path)? else {
            return Ok(m);
        };
        for rule in file.rule {
            let fail = |message: String| MappingError::Rule {
                path: path.clone(),
                rule: rule.id.clone(),
                message,
            };
            if let Some(bad) = rule.omit.iter().find(|p| !OMITTABLE.contains(&p.as_str())) {
                return Err(fail(format!(
                    "omit names {bad:?}, which is not a projection field (known: {})",
                    OMITTABLE.join(", ")
                )));
            }
            for org in &rule.organizations {
                if org == "*" {
                    m.omit_all.extend(rule.omit.iter().cloned());
                } else if organizations.contains(org) {
                    m.omit
                        .entry(org.clone())
                        .or_default()
                        .extend(rule.omit.iter().cloned());
                } else {
                    return Err(fail(format!(
                        "organizations names {org:?}, which is not a configured organisation"
                    )));
                }
            }
        }
        Ok(m)
    }

    /// Projection paths `organization` may not see.
    pub fn omitted_for(&self, organization: &str) -> Vec<String> {
        let mut all = self.omit_all.clone();
        all.extend(self.omit.get(organization).into_iter().flatten().cloned());
        all
    }
}

/// A TOML file's contents; `None` when it does not exist (no rules).
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, MappingError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MappingError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| MappingError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
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
}
