//! The HIE feed tables of `mappings/hie/feeds.toml`: which senders are accepted, what
//! each ADT event means, and the HL7 tables (patient class, discharge disposition)
//! mapped to FHIR codes. Data, not code, so an integration engineer can change them.

use std::collections::HashMap;

use serde::Deserialize;

/// What an event does to the gateway's view of a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// An encounter starts (A01 admit, A04 registration).
    Admit,
    /// The encounter ends (A03).
    Discharge,
    /// The patient moves (A02); the encounter's class may change.
    Transfer,
    /// Demographics only (A08, A28, A31).
    Update,
    /// Retract an admit (A11) or a discharge (A13).
    CancelAdmit,
    CancelDischarge,
    /// Identity maintenance (A40 merge, A37 unlink).
    Merge,
    Unlink,
    /// Stored, acknowledged, nothing else.
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedsFile {
    /// MSH-11 processing ids accepted (P production, T training, D debugging).
    #[serde(default = "production")]
    processing_ids: Vec<String>,
    /// Trigger event (MSH-9.2 or EVN-1) → effect; events not listed are ignored.
    #[serde(default)]
    events: HashMap<String, Effect>,
    /// PV1-2 patient class → v3 ActCode (Encounter.class).
    #[serde(default)]
    patient_class: HashMap<String, String>,
    /// PV1-36 discharge disposition → FHIR discharge-disposition code.
    #[serde(default)]
    discharge_disposition: HashMap<String, String>,
    #[serde(default)]
    facility: Vec<FacilityRule>,
    /// What a code a table does not map does, per table: `dead-letter` (the default)
    /// or `keep` (carried through as the sender wrote it, counted).
    #[serde(default)]
    unmapped: UnmappedPolicies,
}

/// What becomes of a code a table does not map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmapped {
    /// The message is not applied (AE, dead letter) until the table maps the code.
    #[default]
    DeadLetter,
    /// The sender's code is carried through in a system naming the sender and table
    /// (never as a standard code), with a warning and a count.
    Keep,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmappedPolicies {
    #[serde(default)]
    pub patient_class: Unmapped,
    #[serde(default)]
    pub discharge_disposition: Unmapped,
}

fn production() -> Vec<String> {
    vec!["P".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FacilityRule {
    id: String,
    /// MSH-4.1 namespace or MSH-4.2 universal id.
    facility: String,
    /// Offset for timestamps the sender writes without one (`-05:00`).
    #[serde(default)]
    utc_offset: Option<String>,
}

/// A sending facility the gateway accepts.
#[derive(Debug, Clone, Default)]
pub struct Facility {
    pub utc_offset: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FeedTables {
    processing_ids: Vec<String>,
    events: HashMap<String, Effect>,
    patient_class: HashMap<String, String>,
    discharge_disposition: HashMap<String, String>,
    facilities: HashMap<String, Facility>,
    unmapped: UnmappedPolicies,
}

impl Default for FeedTables {
    fn default() -> Self {
        FeedTables {
            processing_ids: production(),
            events: HashMap::new(),
            patient_class: HashMap::new(),
            discharge_disposition: HashMap::new(),
            facilities: HashMap::new(),
            unmapped: UnmappedPolicies::default(),
        }
    }
}

impl FeedTables {
    /// Checks a parsed file; an error names the rule id.
    pub fn build(file: FeedsFile) -> Result<FeedTables, (String, String)> {
        let mut facilities = HashMap::new();
        for f in file.facility {
            if let Some(offset) = &f.utc_offset
                && !valid_offset(offset)
            {
                return Err((f.id, format!("utc_offset {offset:?} is not ±hh:mm")));
            }
            let facility = Facility {
                utc_offset: f.utc_offset,
            };
            if facilities.insert(f.facility.clone(), facility).is_some() {
                return Err((f.id, format!("facility {:?} is listed twice", f.facility)));
            }
        }
        Ok(FeedTables {
            processing_ids: file.processing_ids,
            events: file.events,
            patient_class: file.patient_class,
            discharge_disposition: file.discharge_disposition,
            facilities,
            unmapped: file.unmapped,
        })
    }

    pub fn accepts_processing_id(&self, id: &str) -> bool {
        self.processing_ids.iter().any(|p| p == id)
    }

    /// The facility named by MSH-4's namespace or universal id.
    pub fn facility(&self, namespace: &str, universal_id: &str) -> Option<&Facility> {
        [namespace, universal_id]
            .into_iter()
            .filter(|k| !k.is_empty())
            .find_map(|k| self.facilities.get(k))
    }

    pub fn effect(&self, trigger: &str) -> Effect {
        self.events.get(trigger).copied().unwrap_or(Effect::Ignore)
    }

    pub fn patient_class(&self, code: &str) -> Option<&str> {
        self.patient_class.get(code).map(String::as_str)
    }

    pub fn discharge_disposition(&self, code: &str) -> Option<&str> {
        self.discharge_disposition.get(code).map(String::as_str)
    }

    /// The policy for codes the tables do not map.
    pub fn unmapped(&self) -> UnmappedPolicies {
        self.unmapped
    }
}

fn valid_offset(s: &str) -> bool {
    let b = s.as_bytes();
    s == "Z"
        || (b.len() == 6
            && (b[0] == b'+' || b[0] == b'-')
            && b[1..3].iter().all(u8::is_ascii_digit)
            && b[3] == b':'
            && b[4..6].iter().all(u8::is_ascii_digit))
}
