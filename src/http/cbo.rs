//! `/cbo/v1`: the JSON API for community organisations. Handlers find the caller's
//! organisation, call [`crate::cbo::Cbo`], and write JSON; [`Problem`] is the single place
//! CBO errors become problem+json (RFC 9457).

use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, get, post, put, web};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{AppState, etag, header_str};
use crate::auth::{AuthError, CboScope, ClientKind, Credential, Principal, Scopes};
use crate::cbo::{
    AcceptRequest, ActionCall, CapacityInput, CboError, CloseRequest, DeclineRequest, FeedEvent,
    FieldError, HoldRequest, ListQuery, NoteRequest, Page, ProgressRequest, Service, ServiceInput,
};
use crate::config::OrganizationConfig;
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;
use crate::referral::projection::{Note, Projection, Summary};

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";
/// Where each problem type is described for humans.
const PROBLEM_BASE: &str = "https://crossway.dev/problems/";
/// The development-only tenant header (`CROSSWAY_DEV_AUTH=1`).
const DEV_ORG_HEADER: &str = "x-crossway-organization";

mod connectors;
mod contract;
mod reports;
mod webhooks;

/// Registers every `/cbo/v1` handler. The OpenAPI document is collected from the same
/// registrations (utoipa-actix-web), so a route cannot exist undocumented.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_referrals)
        .service(get_referral)
        .service(referral_events)
        .service(accept)
        .service(decline)
        .service(start)
        .service(hold)
        .service(resume)
        .service(close)
        .service(add_note)
        .service(events)
        .service(me)
        .service(list_services)
        .service(get_service)
        .service(put_service)
        .service(put_capacity)
        .service(openapi)
        .configure(webhooks::routes)
        .configure(reports::routes)
        .configure(connectors::routes)
        .default_service(web::to(not_found));
}

/// The OpenAPI 3.1 document of `/cbo/v1`, built once from [`routes`].
pub fn openapi_document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = actix_web::App::new()
            .into_utoipa_app()
            .service(utoipa_actix_web::scope("/cbo/v1").configure(routes))
            .split_for_parts();
        let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serialises");
        contract::complete(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
    })
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
            CboError::NotFound | CboError::Unknown(_) => (404, "not-found", "No such resource"),
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
            CboError::Conflict(_) => (409, "conflict", "The resource is managed elsewhere"),
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
            CboError::RateLimited { .. } => (429, "rate-limited", "Too many requests"),
            CboError::Fhir(FhirError::PayloadTooLarge { .. }) => {
                (413, "payload-too-large", "The request body is too large")
            }
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

/// The referral id of a `/cbo/v1/referrals/{id}[/…]` path.
fn referral_in(path: &str) -> Option<&str> {
    path.strip_prefix("/cbo/v1/referrals/")?.split('/').next()
}

/// The answer to a body over the size limit that an extractor refused before any
/// handler ran (`http::wire_errors`).
pub(super) fn too_large(req: &HttpRequest, limit: usize) -> HttpResponse {
    Problem::new(FhirError::PayloadTooLarge { limit }, req).error_response()
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (status, slug, title) = self.kind();
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let detail = if status >= 500 {
            tracing::error!(message = "CBO request failed.", trace_id, error = %self.error);
            "the request could not be completed; retry later".to_string()
        } else if let CboError::NotFound = self.error {
            // Name the referral: the last path segment that is not the action.
            match referral_in(&self.instance) {
                Some(id) => format!("no referral {id:?} for this organisation"),
                None => self.error.to_string(),
            }
        } else {
            self.error.to_string()
        };
        let mut body = ProblemBody {
            problem_type: format!("{PROBLEM_BASE}{slug}"),
            title,
            status,
            detail,
            instance: self.instance.clone(),
            trace_id,
            errors: None,
            current_status: None,
            allowed_actions: None,
            current_version: None,
            oldest_sequence: None,
        };
        match &self.error {
            CboError::Validation(errors) => body.errors = Some(errors.clone()),
            CboError::InvalidTransition {
                current, allowed, ..
            } => {
                body.current_status = Some(current.as_str());
                body.allowed_actions = Some(allowed.clone());
            }
            CboError::VersionConflict { current } => body.current_version = Some(*current),
            CboError::CursorExpired { oldest } => body.oldest_sequence = Some(*oldest),
            CboError::Fhir(FhirError::Unprocessable(issues) | FhirError::Invalid(issues)) => {
                body.errors = Some(
                    issues
                        .iter()
                        .map(|i| FieldError::fhir(i.expression.clone(), i.diagnostics.clone()))
                        .collect(),
                );
            }
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code());
        match &self.error {
            CboError::RateLimited { retry_after } => {
                resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            CboError::Unauthenticated(_) => {
                resp.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"crossway\""));
            }
            _ if status == 503 => {
                resp.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        resp.content_type(PROBLEM_JSON)
            .body(serde_json::to_string(&body).expect("problems serialise"))
    }
}

/// An RFC 9457 problem with this API's extension members.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the problem type, e.g. `…/problems/invalid-transition`.
    #[serde(rename = "type")]
    problem_type: String,
    title: &'static str,
    status: u16,
    detail: String,
    /// The request path.
    instance: String,
    /// Also written to the gateway's log, to find the request there.
    trace_id: String,
    /// `validation`: one entry per problem, with a JSON pointer into the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldError>>,
    /// `invalid-transition`: the referral's status and what may be done from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    current_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_actions: Option<Vec<&'static str>>,
    /// `version-conflict`: the version If-Match should carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<i64>,
    /// `cursor-expired`: resume from this sequence (events up to it were pruned).
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_sequence: Option<i64>,
}

type Result<T> = std::result::Result<T, Problem>;

/// Who a request acts for: the organisation its credential is bound to, with the
/// principal (scopes, credential kind).
struct Caller {
    org: OrganizationConfig,
    principal: Principal,
}

fn auth_problem(e: AuthError) -> CboError {
    match e {
        AuthError::Forbidden(m) => CboError::Forbidden(m),
        AuthError::RateLimited { retry_after } => CboError::RateLimited { retry_after },
        AuthError::Store(e) => CboError::Store(e),
        other => CboError::Unauthenticated(other.to_string()),
    }
}

/// Authenticates the request and checks `scope` (none: any CBO credential). The
/// development header is honoured only when `CROSSWAY_DEV_AUTH=1`.
async fn tenant(req: &HttpRequest, state: &AppState, scope: Option<CboScope>) -> Result<Caller> {
    if state.dev_auth
        && let Some(id) = header_str(req.headers(), DEV_ORG_HEADER)
    {
        let org = state.cbo.tenant(id).ok_or_else(|| {
            Problem::new(
                CboError::Forbidden(format!(
                    "{id:?} is not a community organisation known to this gateway"
                )),
                req,
            )
        })?;
        let principal = Principal {
            client_id: format!("dev-header:{id}"),
            kind: ClientKind::Cbo,
            organization: Some(id.to_string()),
            scopes: Scopes::parse(crate::auth::registry::DEFAULT_CBO_SCOPES).unwrap_or_default(),
            credential: Credential::DevelopmentHeader,
        };
        req.extensions_mut().insert(principal.clone());
        return Ok(Caller { org, principal });
    }
    let principal = super::auth::authenticate(req, state)
        .await
        .map_err(|e| Problem::new(auth_problem(e), req))?;
    if principal.kind != ClientKind::Cbo {
        return Err(Problem::new(
            CboError::Forbidden("this is an EHR credential; /cbo/v1 takes CBO credentials".into()),
            req,
        ));
    }
    if let Some(scope) = scope {
        principal
            .require_cbo(scope)
            .map_err(|e| Problem::new(auth_problem(e), req))?;
    }
    let org = principal
        .organization
        .as_deref()
        .and_then(|id| state.cbo.tenant(id))
        .ok_or_else(|| {
            Problem::new(
                CboError::Forbidden(
                    "the credential's organisation is not a community organisation known to this gateway".into(),
                ),
                req,
            )
        })?;
    Ok(Caller { org, principal })
}

fn json_response(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type(JSON).body(body)
}

fn json_of<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    json_response(
        status,
        serde_json::to_string(value).expect("API types always serialise"),
    )
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

#[utoipa::path(
    tag = "referrals",
    summary = "List the referrals addressed to my organisation",
    description = "Ordered by last change (updated_at, then id); follow next_cursor until has_more is false.",
    params(
        ("status" = Option<String>, Query, description = "pending, accepted, in_progress, on_hold, declined, closed, cancelled or expired"),
        ("urgency" = Option<String>, Query, description = "routine, urgent, asap or stat"),
        ("updated_since" = Option<String>, Query, description = "RFC 3339 date-time"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "1-200, default 50"),
    ),
    responses(
        (status = 200, description = "A page of referral summaries", body = Page<Summary>),
        (status = 401, description = "No credential", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A filter is invalid", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[get("/referrals")]
async fn list_referrals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
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
    Ok(json_of(StatusCode::OK, &page))
}

#[utoipa::path(
    tag = "referrals",
    summary = "Read a referral",
    description = "The referral as this organisation may see it (minimum necessary); ETag is its version.",
    params(("id" = String, Path, description = "Referral id")),
    responses(
        (status = 200, description = "The referral", body = Projection, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since If-None-Match"),
        (status = 404, description = "No such referral for this organisation", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[get("/referrals/{id}")]
async fn get_referral(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
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
        .body(view))
}

/// Runs an action on behalf of the calling organisation.
async fn act(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    action: &str,
    body: &[u8],
) -> Result<HttpResponse> {
    let org = tenant(req, state, Some(CboScope::ReferralsWrite))
        .await?
        .org;
    let call = ActionCall {
        referral_id: id,
        action,
        body,
        if_match: header_str(req.headers(), "if-match"),
        idempotency_key: header_str(req.headers(), "idempotency-key"),
    };
    let answer = state
        .cbo
        .act(&org, call)
        .await
        .map_err(|e| Problem::new(e, req))?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut resp = HttpResponse::build(status);
    resp.content_type(JSON);
    if answer.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    if status == StatusCode::OK
        && let Some(version) = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("version").and_then(Value::as_i64))
    {
        resp.insert_header((header::ETAG, etag(version)));
    }
    Ok(resp.body(answer.body))
}

/// One documented endpoint per action, all answered by [`act`].
macro_rules! action {
    ($name:ident, $path:literal, $action:literal, $body:ty, $summary:literal) => {
        #[utoipa::path(
            tag = "referrals",
            summary = $summary,
            params(
                ("id" = String, Path, description = "Referral id"),
                ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body get the first answer (kept for at least 72 h)"),
                ("If-Match" = Option<String>, Header, description = "The ETag last read; 412 when the referral changed since"),
            ),
            request_body = $body,
            responses(
                (status = 200, description = "The referral after the action", body = Projection),
                (status = 404, description = "No such referral for this organisation", body = ProblemBody, content_type = "application/problem+json"),
                (status = 409, description = "Not allowed in the referral's current status (see allowed_actions), or the same Idempotency-Key is still running", body = ProblemBody, content_type = "application/problem+json"),
                (status = 412, description = "If-Match does not match the current version", body = ProblemBody, content_type = "application/problem+json"),
                (status = 422, description = "The body is invalid, or the Idempotency-Key was used for another request", body = ProblemBody, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])),
        )]
        #[post($path)]
        async fn $name(
            req: HttpRequest,
            state: web::Data<AppState>,
            path: web::Path<String>,
            body: web::Bytes,
        ) -> Result<HttpResponse> {
            act(&req, &state, &path, $action, &body).await
        }
    };
}

action!(
    accept,
    "/referrals/{id}/accept",
    "accept",
    AcceptRequest,
    "Accept a pending referral"
);
action!(
    decline,
    "/referrals/{id}/decline",
    "decline",
    DeclineRequest,
    "Decline a pending referral with a coded reason"
);
action!(
    start,
    "/referrals/{id}/start",
    "start",
    ProgressRequest,
    "Start work on an accepted referral"
);
action!(
    hold,
    "/referrals/{id}/hold",
    "hold",
    HoldRequest,
    "Put an accepted or in-progress referral on hold"
);
action!(
    resume,
    "/referrals/{id}/resume",
    "resume",
    ProgressRequest,
    "Resume a referral on hold"
);
action!(
    close,
    "/referrals/{id}/close",
    "close",
    CloseRequest,
    "Close a referral with its outcome"
);

#[utoipa::path(
    tag = "referrals",
    summary = "Add a note shared with the referrer",
    params(
        ("id" = String, Path, description = "Referral id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body get the first answer"),
    ),
    request_body = NoteRequest,
    responses(
        (status = 201, description = "The note as the referral shows it", body = Note),
        (status = 404, description = "No such referral for this organisation", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The referral is closed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[post("/referrals/{id}/notes")]
async fn add_note(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    act(&req, &state, &path, "notes", &body).await
}

#[derive(Serialize, ToSchema)]
struct EventList {
    data: Vec<FeedEvent>,
}

#[utoipa::path(
    tag = "events",
    summary = "A referral's timeline",
    params(("id" = String, Path, description = "Referral id")),
    responses(
        (status = 200, description = "Every event of the referral, in order", body = EventList),
        (status = 404, description = "No such referral for this organisation", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[get("/referrals/{id}/events")]
async fn referral_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
    let data = state
        .cbo
        .referral_events(&org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &EventList { data }))
}

#[utoipa::path(
    tag = "events",
    summary = "My organisation's event feed",
    description = "Gap-free and ordered by sequence; pass the last sequence seen as cursor. The same items webhooks carry.",
    params(
        ("cursor" = Option<i64>, Query, description = "The last sequence already processed (default 0)"),
        ("limit" = Option<i64>, Query, description = "1-200, default 50"),
    ),
    responses(
        (status = 200, description = "Events after the cursor", body = Page<FeedEvent>),
        (status = 410, description = "The cursor is older than the feed's retention: resume from oldest_sequence and re-read referrals", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[get("/events")]
async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
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
    Ok(json_of(StatusCode::OK, &page))
}

#[derive(Serialize, ToSchema)]
struct Me {
    organization: MeOrganization,
    client_id: String,
    /// `access-token`, `api-key` or `development-header`.
    credential: &'static str,
    /// Space-separated, as granted.
    scopes: String,
    environment: &'static str,
}

#[derive(Serialize, ToSchema)]
struct MeOrganization {
    id: String,
    name: String,
    /// The FHIR Organization that Task.owner names.
    fhir: String,
}

#[utoipa::path(
    tag = "organisation",
    summary = "Who am I",
    responses((status = 200, description = "The organisation this credential acts for", body = Me), (status = 401, description = "No credential", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])),
)]
#[get("/me")]
async fn me(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let Caller { org, principal } = tenant(&req, &state, None).await?;
    let body = Me {
        organization: MeOrganization {
            id: org.id.clone(),
            name: org.name.clone(),
            fhir: format!("Organization/{}", org.id),
        },
        client_id: principal.client_id.clone(),
        credential: principal.credential.as_str(),
        scopes: principal.scopes.to_string(),
        environment: if state.production {
            "production"
        } else {
            "development"
        },
    };
    Ok(json_of(StatusCode::OK, &body))
}

#[derive(Serialize, ToSchema)]
struct ServiceList {
    data: Vec<Service>,
}

#[utoipa::path(
    tag = "services",
    summary = "My service catalogue",
    responses((status = 200, description = "Every service of the organisation", body = ServiceList)),
    security(("bearer" = [])),
)]
#[get("/services")]
async fn list_services(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
    let data = state
        .cbo
        .services(&org.id)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &ServiceList { data }))
}

#[utoipa::path(
    tag = "services",
    summary = "Read a service",
    params(("id" = String, Path, description = "Service id (letters, digits, '-')")),
    responses((status = 200, description = "The service", body = Service), (status = 404, description = "No such service", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])),
)]
#[get("/services/{id}")]
async fn get_service(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
    let service = state
        .cbo
        .service(&org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &service))
}

#[utoipa::path(
    tag = "services",
    summary = "Create or replace a service",
    description = "Published as a FHIR HealthcareService (providedBy my organisation); a reported capacity is kept.",
    params(("id" = String, Path, description = "Service id (letters, digits, '-')")),
    request_body = ServiceInput,
    responses(
        (status = 200, description = "Replaced", body = Service),
        (status = 201, description = "Created", body = Service),
        (status = 422, description = "The body is invalid", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[put("/services/{id}")]
async fn put_service(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::DirectoryWrite))
        .await?
        .org;
    let (status, service) = state
        .cbo
        .put_service(&org.id, &path, &body)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(json_of(status, &service))
}

#[utoipa::path(
    tag = "services",
    summary = "Report a service's capacity",
    description = "Sets the SDOH Clinical Care IG's capacity-status extension on the HealthcareService.",
    params(("id" = String, Path, description = "Service id")),
    request_body = CapacityInput,
    responses(
        (status = 200, description = "The service with its new capacity", body = Service),
        (status = 404, description = "No such service", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[put("/services/{id}/capacity")]
async fn put_capacity(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::DirectoryWrite))
        .await?
        .org;
    let service = state
        .cbo
        .put_capacity(&org.id, &path, &body)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &service))
}

#[utoipa::path(
    tag = "organisation",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document of /cbo/v1")),
)]
#[get("/openapi.json")]
async fn openapi() -> HttpResponse {
    json_response(StatusCode::OK, openapi_document().to_string())
}

/// No handler matched: a path the API has with another method is a 405 with `Allow`
/// (RFC 9110 §15.5.6); anything else a 404 naming the route.
async fn not_found(req: HttpRequest) -> HttpResponse {
    if let Some(allowed) = contract::methods_of(req.path()) {
        let allow = allowed.join(", ");
        let body = ProblemBody {
            problem_type: format!("{PROBLEM_BASE}method-not-allowed"),
            title: "Method not allowed",
            status: 405,
            detail: format!(
                "{} {} is not supported; allowed: {allow}",
                req.method(),
                req.path()
            ),
            instance: req.path().to_string(),
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            errors: None,
            current_status: None,
            allowed_actions: None,
            current_version: None,
            oldest_sequence: None,
        };
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allow))
            .content_type(PROBLEM_JSON)
            .body(serde_json::to_string(&body).expect("problems serialise"));
    }
    let route = format!("no route {} {}", req.method(), req.path());
    Problem::new(CboError::Unknown(route), &req).error_response()
}
