//! The screening rules of `mappings/measures/screening.toml`: which item (a LOINC
//! question) screens for which SDOH domain, and which answers are positive.

use std::collections::HashMap;

use serde::Deserialize;

use crate::referral::routing::SDOH_DOMAINS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreeningFile {
    #[serde(default)]
    item: Vec<ItemRule>,
    #[serde(default)]
    scored: Vec<ScoredRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemRule {
    id: String,
    code: String,
    domain: String,
    positive: Vec<String>,
}

/// Items answered on a scale whose total decides (AHC HRSN interpersonal safety).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoredRule {
    id: String,
    domain: String,
    codes: Vec<String>,
    scores: HashMap<String, i64>,
    positive_above: i64,
}

/// What one answered item means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Screened for `domain`; `positive` when the answer is a positive one.
    Answer { domain: String, positive: bool },
    /// Screened for `domain`; the answer scores `score` towards its total.
    Score { domain: String, score: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct Screening {
    items: HashMap<String, (String, Vec<String>)>,
    scored: HashMap<String, (String, HashMap<String, i64>)>,
    /// Scored domain → the total above which it is positive.
    thresholds: HashMap<String, i64>,
}

impl Screening {
    pub fn build(file: ScreeningFile) -> Result<Screening, (String, String)> {
        let mut s = Screening::default();
        let domain_ok = |id: &str, domain: &str| {
            if SDOH_DOMAINS.contains(&domain) {
                Ok(())
            } else {
                Err((
                    id.to_string(),
                    format!(
                        "domain {domain:?} is not an SDOH domain (known: {})",
                        SDOH_DOMAINS.join(", ")
                    ),
                ))
            }
        };
        for rule in file.item {
            domain_ok(&rule.id, &rule.domain)?;
            if rule.positive.is_empty() {
                return Err((rule.id, "positive lists no answer code".into()));
            }
            if s.items.contains_key(&rule.code) {
                return Err((rule.id, format!("item {} is already a rule", rule.code)));
            }
            s.items.insert(rule.code, (rule.domain, rule.positive));
        }
        for rule in file.scored {
            domain_ok(&rule.id, &rule.domain)?;
            if rule.scores.is_empty() || rule.codes.is_empty() {
                return Err((rule.id, "codes and scores must not be empty".into()));
            }
            for code in &rule.codes {
                if s.items.contains_key(code) || s.scored.contains_key(code) {
                    return Err((rule.id, format!("item {code} is already a rule")));
                }
                s.scored
                    .insert(code.clone(), (rule.domain.clone(), rule.scores.clone()));
            }
            s.thresholds.insert(rule.domain, rule.positive_above);
        }
        Ok(s)
    }

    /// What answering item `code` with `answer` (None: not answered with a code) says.
    pub fn read(&self, code: &str, answer: Option<&str>) -> Option<Reading> {
        if let Some((domain, positive)) = self.items.get(code) {
            return Some(Reading::Answer {
                domain: domain.clone(),
                positive: answer.is_some_and(|a| positive.iter().any(|p| p == a)),
            });
        }
        let (domain, scores) = self.scored.get(code)?;
        Some(Reading::Score {
            domain: domain.clone(),
            score: answer.and_then(|a| scores.get(a)).copied().unwrap_or(0),
        })
    }

    /// The total above which a scored domain is positive.
    pub fn threshold(&self, domain: &str) -> Option<i64> {
        self.thresholds.get(domain).copied()
    }

    /// Every domain some rule screens for.
    pub fn domains(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .items
            .values()
            .map(|(d, _)| d.clone())
            .chain(self.scored.values().map(|(d, _)| d.clone()))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
