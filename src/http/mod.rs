//! The HTTP adapter: routes, request parsing and response writing. Only this module
//! knows about actix-web; it turns requests into calls on the domain and errors into
//! their wire format (OperationOutcome on `/fhir`, problem+json on `/cbo/v1`).
//!
//! [`routes`] is the route table: `/fhir` (`fhir`, with `fhir/subscription.rs` and
//! `fhir/measure.rs`), `/hsds/` (`hsds`), `/reports/v1` (`reports`), `/auth/token` and
//! discovery (`auth`, whose `authenticate` both faces call first), `/healthz`,
//! `/readyz`, `/metrics` (`health`). `/cbo/v1` is [`cbo::routes`], mounted by `startup`
//! through utoipa-actix-web, which collects the OpenAPI 3.1 document
//! (`/cbo/v1/openapi.json`) from the same registrations. Middleware adds the security headers and the audit
//! record (`X-Request-Id`); [`wire_errors`] rewrites the framework's own 413s into the
//! face's error format; forwarded headers count only from `trusted_proxies`
//! (`origin`); JSON bodies go through `strict_json`.

mod auth;
pub mod cbo;
mod fhir;
mod health;
mod hsds;
pub(crate) mod reports;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};

use crate::audit::{Access, AuditLog};
use crate::auth::{Authority, Principal};

use crate::cache::Cache;
use crate::cbo::Cbo;
use crate::feeds::Feed;
use crate::fhir::engine::Fhir;
use crate::identity::cache::IdentityCache;

fn header_str<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Scheme, host and port clients use to reach us, for the audience of client
/// assertions, discovery documents and the links we hand out: the configured public
/// base when there is one; else this connection's own scheme and `Host`, and the
/// `Forwarded` / `X-Forwarded-*` headers only from a configured proxy (from anyone
/// else they are the client's word about which server it talks to).
fn origin(req: &actix_web::HttpRequest, state: &AppState) -> String {
    if !state.public_base_url.is_empty() {
        let base = state.public_base_url.trim_end_matches('/');
        return base.strip_suffix("/fhir").unwrap_or(base).to_string();
    }
    let via_proxy = req
        .peer_addr()
        .is_some_and(|peer| state.trusted_proxies.iter().any(|p| p.contains(peer.ip())));
    if via_proxy {
        let info = req.connection_info();
        return format!("{}://{}", info.scheme(), info.host());
    }
    let scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let host = header_str(req.headers(), "host")
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| req.app_config().host().to_string());
    format!("{scheme}://{host}")
}

/// The address a request came from: the peer, or, from a configured proxy, the client
/// address the proxy forwarded.
fn peer_ip(req: &actix_web::HttpRequest, state: &AppState) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !state.trusted_proxies.iter().any(|p| p.contains(peer)) {
        return Some(peer);
    }
    let info = req.connection_info();
    let forwarded = info.realip_remote_addr()?;
    forwarded
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| forwarded.trim_matches(['[', ']']).parse())
        .ok()
        .or(Some(peer))
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
    /// Peers whose forwarded headers are believed ([`origin`]).
    pub trusted_proxies: Vec<crate::config::IpRange>,
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
        .configure(reports::routes)
        .configure(hsds::routes)
        .service(web::scope("/fhir").configure(fhir::routes))
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .content_type("application/json")
                .body(r#"{"error":"not found"}"#)
        }));
}

/// Errors actix itself answers before a handler runs (a body over the limit, read by an
/// extractor) leave in the face's wire format too: an OperationOutcome on `/fhir`,
/// problem+json on `/cbo/v1`, not actix's plain text.
pub async fn wire_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    // Every 405 on `/fhir` says what the path does take (RFC 9110 §15.5.6), also when
    // the engine refused the method (a Bundle entry's DELETE).
    if res.status() == actix_web::http::StatusCode::METHOD_NOT_ALLOWED
        && !res.headers().contains_key(actix_web::http::header::ALLOW)
        && let Some(methods) = res
            .request()
            .match_pattern()
            .as_deref()
            .and_then(fhir::allow)
    {
        res.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(methods),
        );
    }
    let plain = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.contains("json"));
    if res.status() != actix_web::http::StatusCode::PAYLOAD_TOO_LARGE || !plain {
        return Ok(res.map_into_boxed_body());
    }
    let limit = res
        .request()
        .app_data::<web::Data<AppState>>()
        .map_or(0, |s| s.max_body_bytes);
    let path = res.request().path().to_string();
    let answer = if path.starts_with("/fhir") {
        fhir::too_large(limit)
    } else if path.starts_with("/cbo/v1") {
        cbo::too_large(res.request(), limit)
    } else {
        return Ok(res.map_into_boxed_body());
    };
    Ok(res.into_response(answer))
}

/// Query parameters whose values name no person, kept in the audit trail as sent: ids,
/// paging, codes, statuses and references to resources. Any other value (a name, a birth
/// date, an identifier, a phone number …) is stored as `*`: the trail says that someone
/// searched Patients by name and birth date, not for whom.
const PLAIN_PARAMS: &[&str] = &[
    // Report periods and formats.
    "from",
    "to",
    "format",
    "periodStart",
    "periodEnd",
    "reportType",
    "_id",
    "_count",
    "_cursor",
    "_include",
    "_revinclude",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_lastUpdated",
    "_format",
    "_pretty",
    "_type",
    "status",
    "intent",
    "priority",
    "code",
    "category",
    "owner",
    "requester",
    "focus",
    "subject",
    "patient",
    "based-on",
    "part-of",
    "performer",
    "encounter",
    "topic",
    "url",
    "type",
    "agent",
    "entity",
    "action",
    "outcome",
    "cursor",
    "limit",
    "updated_since",
    "eventsSinceNumber",
    "eventsUntilNumber",
    "content",
    "id",
];

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if PLAIN_PARAMS.contains(&name.split(':').next().unwrap_or("")) => {
                pair.to_string()
            }
            Some((name, _)) => format!("{name}=*"),
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
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
    } else if path.starts_with("/reports/") {
        "reports"
    } else if path.starts_with("/hsds") {
        "hsds"
    } else {
        ""
    };
    // The directory (`/hsds`) holds no personal data: counted, not audited.
    let open = path == "/fhir/metadata"
        || path.contains(".well-known")
        || path.ends_with("openapi.json")
        || face == "hsds";
    let method = req.method().clone();
    let query = req.query_string().to_string();
    let started = std::time::Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
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
    let Some(state) = state else {
        return Ok(res);
    };
    let mut principal = res.request().extensions().get::<Principal>().cloned();
    // Refused before the handler authenticated (a body over the limit): a valid token
    // still names the caller in the trail.
    if principal.is_none()
        && let Ok(token) = auth::bearer(res.request())
    {
        principal = state.auth.identify(token).await.ok();
    }
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
    state.audit.record(Access {
        client_id: principal
            .as_ref()
            .map_or("anonymous", |p| p.client_id.as_str()),
        organization: principal.as_ref().and_then(|p| p.organization.as_deref()),
        face,
        action,
        entity: if query.is_empty() {
            path
        } else {
            format!("{path}?{}", redact_query(&query))
        },
        detail: method.to_string(),
        outcome: res.status().as_u16(),
        trace_id: &trace_id,
    });
    Ok(res)
}
