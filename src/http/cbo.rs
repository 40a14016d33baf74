//! `/cbo/v1`: the JSON API for community organisations. Handlers find the caller's
//! organisation, call [`crate::cbo::Cbo`], and write JSON; [`Problem`] is the single place
//! CBO errors become problem+json (RFC 9457).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use super::AppState;
use crate::cbo::{ActionCall, CboError, ListQuery};
use crate::config::OrganizationConfig;
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";
/// Where each problem type is described for humans.
const PROBLEM_BASE: &str = "https://crossway.dev/problems/";
/// The development-only tenant header (`CROSSWAY_DEV_AUTH=1`).
const DEV_ORG_HEADER: &str = "x-crossway-organization";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/referrals", web::get().to(list))
        .route("/referrals/{id}", web::get().to(get))
        .route("/referrals/{id}/events", web::get().to(referral_events))
        .route("/referrals/{id}/{action}", web::post().to(act))
        .route("/events", web::get().to(events))
        .route("/me", web::get().to(me))
        .route("/services", web::get().to(list_services))
        .route("/services/{id}", web::get().to(get_service))
        .route("/services/{id}", web::put().to(put_service))
        .route("/services/{id}/capacity", web::put().to(put_capacity))
        .default_service(web::to(not_found));
}

/// Every CBO error leaves through here: problem+json with a trace id that is also logged.
#[derive(Debug)]
pub struct Problem {
    error: CboError,
    instance: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Problem {
    fn new(error: impl Into<CboError>, req: &HttpRequest) -> Problem {
        Problem {
            error: error.into(),
            instance: req.path().to_string(),
        }
    }

    /// (status, type slug, title)
    fn kind(&self) -> (u16, &'static str, &'static str) {
        match &self.error {
            CboError::Validation(_) => (422, "validation", "The request is not valid"),
            CboError::NotFound => (404, "not-found", "No such resource"),
            CboError::InvalidTransition { .. } => (
                409,
                "invalid-transition",
                "This action is not allowed in the referral's current status",
            ),
            CboError::VersionConflict { .. } => (
                412,
                "version-conflict",
                "The referral changed since you read it",
            ),
            CboError::IdempotencyKeyReused => (
                422,
                "idempotency-key-reused",
                "This Idempotency-Key was used for a different request",
            ),
            CboError::RequestInProgress => (
                409,
                "request-in-progress",
                "A request with this Idempotency-Key is still running",
            ),
            CboError::CursorExpired { .. } => (
                410,
                "cursor-expired",
                "The cursor is older than the feed's retention",
            ),
            CboError::Unauthenticated(_) => (401, "unauthenticated", "Authentication required"),
            CboError::Forbidden(_) => (403, "forbidden", "Not allowed"),
            CboError::Fhir(e) => match e.status() {
                s @ 400..=499 => (
                    if s == 400 { 422 } else { s },
                    "validation",
                    "The change breaks a rule of the FHIR record behind it",
                ),
                s => (s, "unavailable", "The service is temporarily unavailable"),
            },
            CboError::Store(e) if e.is_transient() => {
                (503, "unavailable", "The service is temporarily unavailable")
            }
            CboError::Store(_) => (500, "internal", "Internal error"),
        }
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (status, slug, title) = self.kind();
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{slug}"),
            "title": title,
            "status": status,
            "instance": self.instance,
            "trace_id": trace_id,
        });
        if status >= 500 {
            tracing::error!(message = "CBO request failed.", trace_id, error = %self.error);
            body["detail"] = json!("the request could not be completed; retry later");
        } else {
            body["detail"] = json!(self.error.to_string());
        }
        match &self.error {
            CboError::Validation(errors) => body["errors"] = json!(errors),
            CboError::InvalidTransition {
                current, allowed, ..
            } => {
                body["current_status"] = json!(current.as_str());
                body["allowed_actions"] = json!(allowed);
            }
            CboError::VersionConflict { current } => body["current_version"] = json!(current),
            CboError::CursorExpired { oldest } => body["oldest_sequence"] = json!(oldest),
            CboError::Fhir(FhirError::Unprocessable(issues) | FhirError::Invalid(issues)) => {
                body["errors"] = json!(
                    issues
                        .iter()
                        .map(|i| json!({"fhir_path": i.expression, "message": i.diagnostics}))
                        .collect::<Vec<_>>()
                );
            }
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code());
        if status == 503 {
            resp.insert_header((header::RETRY_AFTER, "1"));
        }
        resp.content_type(PROBLEM_JSON).body(body.to_string())
    }
}

type Result<T> = std::result::Result<T, Problem>;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The organisation this request acts for. Until credentials exist (the security
/// issue), only the development header is accepted, and only when enabled.
fn tenant<'s>(req: &HttpRequest, state: &'s AppState) -> Result<&'s OrganizationConfig> {
    if !state.dev_auth {
        return Err(Problem::new(
            CboError::Unauthenticated(
                "no credential: this gateway has no CBO credentials configured yet (development: set CROSSWAY_DEV_AUTH=1 and send X-Crossway-Organization)".into(),
            ),
            req,
        ));
    }
    let Some(id) = header_str(req.headers(), DEV_ORG_HEADER) else {
        return Err(Problem::new(
            CboError::Unauthenticated("send X-Crossway-Organization: <organisation id>".into()),
            req,
        ));
    };
    state.cbo.tenant(id).ok_or_else(|| {
        Problem::new(
            CboError::Forbidden(format!(
                "{id:?} is not a community organisation known to this gateway"
            )),
            req,
        )
    })
}

fn json_response(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type(JSON).body(body)
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    parse_query_string(req.query_string())
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let params = query(&req);
    let q = ListQuery {
        status: param(&params, "status"),
        urgency: param(&params, "urgency"),
        updated_since: param(&params, "updated_since"),
        cursor: param(&params, "cursor"),
        limit: param(&params, "limit"),
    };
    let page = state
        .cbo
        .list(&org.id, &q)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&page).expect("pages serialise"),
    ))
}

async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let (view, version) = state
        .cbo
        .get(&org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    let tag = etag(version);
    if header_str(req.headers(), "if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type(JSON)
        .insert_header((header::ETAG, tag))
        .body(view.to_string()))
}

async fn act(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let (id, action) = path.into_inner();
    let call = ActionCall {
        referral_id: &id,
        action: &action,
        body: &body,
        if_match: header_str(req.headers(), "if-match"),
        idempotency_key: header_str(req.headers(), "idempotency-key"),
    };
    let answer = state
        .cbo
        .act(org, call)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut resp = HttpResponse::build(status);
    resp.content_type(JSON);
    if answer.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    if status == StatusCode::OK
        && let Some(version) = serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_i64))
    {
        resp.insert_header((header::ETAG, etag(version)));
    }
    Ok(resp.body(answer.body))
}

async fn referral_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let events = state
        .cbo
        .referral_events(&org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "data": events }).to_string(),
    ))
}

async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let params = query(&req);
    let page = state
        .cbo
        .events(
            &org.id,
            param(&params, "cursor").as_deref(),
            param(&params, "limit").as_deref(),
        )
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&page).expect("pages serialise"),
    ))
}

async fn me(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let body = json!({
        "organization": {"id": org.id, "name": org.name, "fhir": format!("Organization/{}", org.id)},
        "credential": "development-header",
        "scopes": ["referrals:read", "referrals:write"],
        "environment": "development",
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

async fn list_services(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let data = state
        .cbo
        .services(&org.id)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "data": data }).to_string(),
    ))
}

async fn get_service(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let service = state
        .cbo
        .service(&org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(StatusCode::OK, service.to_string()))
}

async fn put_service(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let (status, service) = state
        .cbo
        .put_service(&org.id, &path, &body)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(json_response(status, service.to_string()))
}

async fn put_capacity(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state)?;
    let service = state
        .cbo
        .put_capacity(&org.id, &path, &body)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_response(StatusCode::OK, service.to_string()))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::new(CboError::NotFound, &req).error_response()
}
