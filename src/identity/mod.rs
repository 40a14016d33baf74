//! Who is who: one person across hospitals, HIEs and CBOs.
//!
//! Every source names people by identifiers: `(system URI, value)` pairs. This module
//! turns what a source sends (HL7 v2 CX repetitions of PID-3 or MRG-1, FHIR
//! `Patient.identifier`) into identifiers, by the per-source rules of
//! `mappings/identity/` ([`Rules`]), and decides what a set of looked-up identifiers
//! means ([`decide`]). The index itself (persons, identifiers, aliases, merges) lives in
//! the store ([`crate::store::identity`]); [`resolve`] applies a decision inside the
//! writer's transaction, and [`cache::IdentityCache`] keeps the hot lookups off the store.
//!
//! Invariants: resolution never depends on the order identifiers arrive in; several
//! persons named by one message are never merged silently (the message goes to review);
//! nobody is linked on name and birth date; a merge keeps the survivor's `client_ref` and
//! leaves the retired identifiers as aliases.

pub mod cache;
mod resolve;
pub mod rules;

pub use resolve::{Linked, Resolved, link_patient, merge, resolve, unmerge};
pub use rules::{IdentityRules, Skipped};

pub use crate::store::{Identifier, PATIENT_SYSTEM, Person};

/// What the identifiers of one message say about who it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No identifier is known: a new person.
    New,
    /// Every known identifier names this person (the others will be attached to it).
    Known(String),
    /// The identifiers name several persons: apply to none, ask a human.
    Conflict(Vec<String>),
}

/// Decides from the persons each known identifier resolved to (already following
/// merges to the survivor). Order-independent: the answer depends on the set only.
pub fn decide<'a>(persons: impl IntoIterator<Item = &'a str>) -> Decision {
    let mut found: Vec<&str> = persons.into_iter().collect();
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [] => Decision::New,
        [one] => Decision::Known(one.to_string()),
        many => Decision::Conflict(many.iter().map(|p| p.to_string()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_however_often_and_in_whatever_order_it_is_named() {
        assert_eq!(decide([]), Decision::New);
        assert_eq!(decide(["p1", "p1"]), Decision::Known("p1".into()));
        assert_eq!(
            decide(["p2", "p1", "p2"]),
            Decision::Conflict(vec!["p1".into(), "p2".into()])
        );
        assert_eq!(decide(["p1", "p2"]), decide(["p2", "p1"]));
    }
}
