//! The HTTP adapter: routes, request parsing and response writing. Only this module
//! knows about actix-web; it turns requests into calls on the domain and errors into
//! their wire format (OperationOutcome on `/fhir`, problem+json on `/cbo/v1`).

mod auth;
pub mod cbo;
mod fhir;
mod health;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};

use crate::audit::{Access, AuditLog};
use crate::auth::{Authority, Principal};

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
    pub connectors: std::sync::Arc<crate::connector::Connectors>,
    pub subscriptions: std::sync::Arc<crate::subscription::Subscriptions>,
    pub cache: Cache,
    pub identities: std::sync::Arc<IdentityCache>,
    pub feed: Feed,
    pub auth: std::sync::Arc<Authority>,
    pub audit: AuditLog,
    /// `environment = "production"`.
    pub production: bool,
    /// `CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1`: http:// webhook URLs to loopback.
    pub allow_insecure_webhooks: bool,
    /// Honour the development tenant header on `/cbo/v1` (`CROSSWAY_DEV_AUTH=1`).
    pub dev_auth: bool,
    /// Configured public base for `/fhir`; empty means "derive from the request".
    pub public_base_url: String,
    pub max_body_bytes: usize,
    /// The Prometheus recorder's handle and the token `/metrics` asks for.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub metrics_token: String,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .configure(auth::routes)
        .service(web::scope("/fhir").configure(fhir::routes))
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .content_type("application/json")
                .body(r#"{"error":"not found"}"#)
        }));
}

/// Records every `/fhir` and `/cbo/v1` request that touches data in the audit trail
/// (who, what, outcome), refused ones included, and gives each a request id.
pub async fn audit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let path = req.path().to_string();
    let face = if path.starts_with("/fhir") {
        "fhir"
    } else if path.starts_with("/cbo/v1") {
        "cbo"
    } else {
        ""
    };
    let open =
        path == "/fhir/metadata" || path.contains(".well-known") || path.ends_with("openapi.json");
    let method = req.method().clone();
    let query = req.query_string().to_string();
    let started = std::time::Instant::now();
    let log = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.audit.clone());
    let mut res = next.call(req).await?;
    if !face.is_empty() {
        let status = crate::telemetry::metrics::status_class(res.status().as_u16());
        metrics::counter!(crate::telemetry::metrics::HTTP_REQUESTS, "face" => face, "status" => status)
            .increment(1);
        metrics::histogram!(crate::telemetry::metrics::HTTP_LATENCY, "face" => face)
            .record(started.elapsed().as_secs_f64());
    }
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    if face.is_empty() || open {
        return Ok(res);
    }
    let Some(log) = log else {
        return Ok(res);
    };
    let principal = res.request().extensions().get::<Principal>().cloned();
    let fhir_path = path.trim_start_matches("/fhir").trim_matches('/');
    let action = match method.as_str() {
        "GET" | "HEAD" => "R",
        "PUT" | "PATCH" => "U",
        "DELETE" => "D",
        // A FHIR create is POST /fhir/{type}; a Bundle, a search or an operation executes.
        "POST"
            if face == "fhir"
                && !fhir_path.is_empty()
                && !fhir_path.contains('/')
                && !fhir_path.starts_with('$') =>
        {
            "C"
        }
        "POST" if face == "fhir" => "E",
        _ => "U",
    };
    log.record(Access {
        client_id: principal
            .as_ref()
            .map_or("anonymous", |p| p.client_id.as_str()),
        organization: principal.as_ref().and_then(|p| p.organization.as_deref()),
        face,
        action,
        entity: if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        },
        detail: method.to_string(),
        outcome: res.status().as_u16(),
        trace_id: &trace_id,
    });
    Ok(res)
}
