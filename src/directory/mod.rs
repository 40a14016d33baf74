//! The community resource directory: Open Referral HSDS 3.0 organisations, services,
//! locations, services-at-locations and taxonomies, per tenant (a named directory;
//! `/hsds/` serves [`DEFAULT_TENANT`]).
//!
//! - [`import`] takes HSDS in: API JSON (one entity, a page of a list, an array, or a
//!   directory of such files) and the tabular package (CSV, reassembled by
//!   [`tabular`]), checks each entity against the HSDS rules ([`schema`]) and stores
//!   it, reporting what was taken, updated, unchanged or refused and why.
//! - [`api`] answers the HSDS API's reads (`/hsds/…`): one entity as stored, pages of
//!   list views, services by SDOH need ([`needs`], the rules of
//!   `mappings/directory/domains.toml`).
//!
//! Invariants:
//! - An entity is stored as the HSDS JSON it came as (CSV: as the nested JSON the API
//!   would serve), so what `/hsds/` returns is what was imported, key for key.
//! - A re-import of equal data changes nothing and says "unchanged" (equality of JSON,
//!   not of key order).
//! - Knows nothing of HTTP; talks to the database only through `store`.

pub mod api;
pub mod import;
pub mod needs;
pub mod schema;
pub mod tabular;

use serde_json::Value;

use crate::store::StoreError;

/// The directory `/hsds/` serves, and the one `crossway directory import` fills unless
/// told otherwise.
pub const DEFAULT_TENANT: &str = "default";

/// The HSDS entities stored on their own (the rest are nested in these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Organization,
    Service,
    Location,
    ServiceAtLocation,
    Taxonomy,
    TaxonomyTerm,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Organization,
        Kind::Service,
        Kind::Location,
        Kind::ServiceAtLocation,
        Kind::Taxonomy,
        Kind::TaxonomyTerm,
    ];

    /// The HSDS entity name (`service_at_location`), also the stored `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Organization => "organization",
            Kind::Service => "service",
            Kind::Location => "location",
            Kind::ServiceAtLocation => "service_at_location",
            Kind::Taxonomy => "taxonomy",
            Kind::TaxonomyTerm => "taxonomy_term",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {message}")]
    Json { path: String, message: String },
    #[error(
        "{path}: neither HSDS JSON files nor an HSDS tabular package (CSV files named like services.csv)"
    )]
    NotHsds { path: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `sdoh_domain=` names a domain no rule of `mappings/directory/domains.toml` maps.
    #[error(
        "sdoh_domain {domain:?} has no rule in mappings/directory/domains.toml (known: {known})"
    )]
    UnknownDomain { domain: String, known: String },
}

impl DirectoryError {
    /// Failures of the database that a retry may cure.
    pub fn is_transient(&self) -> bool {
        matches!(self, DirectoryError::Store(e) if e.is_transient())
    }
}

/// A string field of a JSON object.
fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}
