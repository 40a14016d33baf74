//! Liveness and readiness for load balancers and orchestrators (no authentication), and
//! Prometheus metrics (a bearer token of their own).

use actix_web::{HttpRequest, HttpResponse, web};
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

/// `GET /metrics`: Prometheus text. With `CROSSWAY_METRICS_TOKEN` set, Prometheus
/// sends it as a bearer token; without, only loopback peers are answered, and in
/// production nobody is (metrics name no patient, but do describe the traffic).
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let denied = |status: actix_web::http::StatusCode, detail: &str| {
        HttpResponse::build(status)
            .content_type("application/problem+json")
            .json(json!({"title": "Metrics not available", "status": status.as_u16(), "detail": detail}))
    };
    if state.metrics_token.is_empty() {
        let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
        if state.production || !loopback {
            return denied(
                actix_web::http::StatusCode::FORBIDDEN,
                "set CROSSWAY_METRICS_TOKEN and send it as a bearer token",
            );
        }
    } else {
        let sent = super::auth::bearer(&req).unwrap_or("");
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            sent.as_bytes(),
            state.metrics_token.as_bytes(),
        )
        .is_err()
        {
            return denied(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "send the metrics token as a bearer token",
            );
        }
    }
    let now = crate::resource::datetime::now_micros();
    let backlog = match state.fhir.store().backlog(now).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(message = "Store unavailable for the metrics backlog.", error = %e);
            None
        }
    };
    let body = crate::telemetry::metrics::render(
        &state.metrics,
        backlog,
        state.fhir.queued_writes(),
        state.audit.pending(),
        &[
            ("versions", state.fhir.store().cache_stats()),
            ("views", state.cbo.view_stats()),
        ],
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
