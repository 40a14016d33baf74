//! Crossway: a gateway that carries social-care referrals between EHRs (FHIR R4, SDOH
//! Clinical Care IG), HIE feeds and community organisations. See ARCHITECTURE.md.

pub mod config;
pub mod connector;
pub mod ehr;
pub mod telemetry;

pub mod feeds;
pub mod fhir;
pub mod generations;
pub mod hie;
pub mod hl7v2;
pub mod identity;
pub mod mapping;
pub mod measures;
pub mod mllp;
pub mod oauth;
pub mod outbox;
pub mod referral;
pub mod resource;

pub mod audit;
pub mod auth;
pub mod cbo;
pub mod directory;
pub mod store;
pub mod subscription;
pub mod workbench;

pub mod cache;
pub mod http;
pub mod reclaim;
pub(crate) mod shards;
pub mod startup;
pub mod strict_json;

/// Lower-case hex of `bytes`: digests in ids, cache keys and stored key hashes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
