//! Liveness and readiness for load balancers and orchestrators (no authentication).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the store answers. Redis being down is reported but does not make the
/// gateway unready: identity lookups fall back to the store.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.fhir.store().ping().await;
    let cache = state.cache.ping().await;
    let body = json!({
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "cache": match &cache {
            Ok(kind) => *kind,
            Err(_) => "unavailable",
        },
        "identity_cache": state.identities.kind(),
        "identity_cache_errors": state.identities.redis_errors(),
    });
    if let Err(e) = &store {
        tracing::warn!(message = "Store not ready.", error = %e);
    }
    if let Err(e) = &cache {
        tracing::warn!(message = "Cache not ready.", error = %e);
    }
    if store.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
