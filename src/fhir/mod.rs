//! The FHIR R4 face: how resources are validated, how transaction Bundles are planned
//! and applied by the engine, how search requests are parsed, and how errors become
//! OperationOutcomes. The data model itself (ids, dates, references, search
//! parameters) is [`crate::resource`].
//!
//! Invariant: the raw JSON a client sent is the truth we store and return; we only ever
//! set `id`, `meta.versionId` and `meta.lastUpdated` (and rewrite Bundle-internal
//! references). Nothing here knows about HTTP.
//!
//! [`engine::Fhir`] is what the faces call. Its writes are commands of the store's
//! group-commit writer; besides FHIR interactions they still carry the CBO actions
//! (`Fhir::act`: idempotency, `referral::action`, the answer), feed notices (`ingest`,
//! which drives the writer's `Tx` directly), tenant adoption and pruning. After a
//! command commits, `Fhir::submit` applies its effects outside the store (dropping
//! identity-cache entries a merge made stale) for every caller, whatever the face. The
//! engine hears of subscriptions only through its `Watchers` trait.

pub mod bundle;
pub mod capability;
pub mod engine;
mod ingest;
pub mod outcome;
pub mod search;
pub mod validate;

pub use crate::resource::{
    RESOURCE_TYPES, Serialized, datetime, is_supported_type, is_valid_id, new_id, profiles,
    reference, serialize, version_from_etag,
};
pub use engine::Fhir;
pub use outcome::{FhirError, Issue, IssueCode};
