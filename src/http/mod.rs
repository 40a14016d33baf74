//! The HTTP adapter: routes, request parsing and response writing. Only this module
//! knows about actix-web; it turns requests into calls on the domain and errors into
//! their wire format (OperationOutcome on `/fhir`, problem+json on `/cbo/v1`).

pub mod cbo;
mod fhir;
mod health;

use actix_web::{HttpResponse, web};

use crate::cache::Cache;
use crate::cbo::Cbo;
use crate::fhir::engine::Fhir;
use crate::hie::Feed;
use crate::identity::cache::IdentityCache;

fn header_str<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The weak ETag of a version, on both faces.
fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Shared by every worker.
pub struct AppState {
    pub fhir: Fhir,
    pub cbo: Cbo,
    pub cache: Cache,
    pub identities: std::sync::Arc<IdentityCache>,
    pub feed: Feed,
    /// Honour the development tenant header on `/cbo/v1` (`CROSSWAY_DEV_AUTH=1`).
    pub dev_auth: bool,
    /// Configured public base for `/fhir`; empty means "derive from the request".
    pub public_base_url: String,
    pub max_body_bytes: usize,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .service(web::scope("/fhir").configure(fhir::routes))
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .content_type("application/json")
                .body(r#"{"error":"not found"}"#)
        }));
}
