//! `/fhir`: FHIR R4 REST over JSON. Handlers parse the HTTP request, call the engine,
//! and write the answer; [`FhirResponse`] is the single place FHIR errors become
//! OperationOutcome responses.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde_json::Value;

use super::auth::authenticate;
use super::{AppState, etag, header_str};
use crate::auth::{AuthError, Principal};
use crate::fhir::bundle::parse_query_string;
use crate::fhir::capability::capability_statement;
use crate::fhir::engine::Written;
use crate::fhir::outcome::operation_outcome;
use crate::fhir::{FhirError, Issue};
use crate::resource::datetime;
use crate::store::StoredResource;

mod measure;
mod subscription;

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

pub fn routes(cfg: &mut web::ServiceConfig) {
    // One resource per path, so each request is matched against each pattern once.
    // `_search` comes before `{id}`, which would otherwise claim it.
    cfg.service(resource("/metadata").route(web::get().to(metadata)))
        .service(
            resource("/.well-known/smart-configuration")
                .route(web::get().to(super::auth::smart_configuration)),
        )
        .service(resource("").route(web::post().to(transaction)))
        .service(resource("/").route(web::post().to(transaction)))
        .service(resource("/$process-message").route(web::post().to(process_message)))
        .service(
            resource("/Subscription")
                .route(web::post().to(subscription::create))
                .route(web::get().to(subscription::search)),
        )
        .service(resource("/Subscription/_search").route(web::post().to(subscription::search)))
        .service(
            resource("/Subscription/$status")
                .route(web::get().to(subscription::status_of_type))
                .route(web::post().to(subscription::status_of_type)),
        )
        .service(
            resource("/Subscription/{id}")
                .route(web::get().to(subscription::read))
                .route(web::put().to(subscription::update))
                .route(web::delete().to(subscription::delete)),
        )
        .service(
            resource("/Subscription/{id}/$status")
                .route(web::get().to(subscription::status))
                .route(web::post().to(subscription::status)),
        )
        .service(
            resource("/Subscription/{id}/$events")
                .route(web::get().to(subscription::events))
                .route(web::post().to(subscription::events)),
        )
        .service(resource("/Measure").route(web::get().to(measure::search)))
        .service(resource("/Measure/{id}").route(web::get().to(measure::read)))
        .service(
            resource("/Measure/{id}/$evaluate-measure").route(web::get().to(measure::evaluate)),
        )
        .service(resource("/{type}/_search").route(web::post().to(search_post)))
        .service(
            resource("/{type}/{id}")
                .route(web::get().to(read))
                .route(web::put().to(update)),
        )
        .service(
            resource("/{type}")
                .route(web::get().to(search))
                .route(web::post().to(create))
                .route(web::put().to(conditional_update)),
        )
        .service(resource("/{type}/{id}/_history").route(web::get().to(history)))
        .service(resource("/{type}/{id}/_history/{vid}").route(web::get().to(vread)))
        .default_service(web::to(unsupported));
}

/// The methods each `/fhir` path answers, for `Allow` on its 405s. [`resource`] takes
/// a path's entry from here, so a path cannot be routed without one.
const METHODS: &[(&str, &str)] = &[
    ("/metadata", "GET"),
    ("/.well-known/smart-configuration", "GET"),
    ("", "POST"),
    ("/", "POST"),
    ("/$process-message", "POST"),
    ("/Subscription", "GET, POST"),
    ("/Subscription/_search", "POST"),
    ("/Subscription/$status", "GET, POST"),
    ("/Subscription/{id}", "GET, PUT, DELETE"),
    ("/Subscription/{id}/$status", "GET, POST"),
    ("/Subscription/{id}/$events", "GET, POST"),
    ("/Measure", "GET"),
    ("/Measure/{id}", "GET"),
    ("/Measure/{id}/$evaluate-measure", "GET"),
    ("/{type}/_search", "POST"),
    ("/{type}/{id}", "GET, PUT"),
    ("/{type}", "GET, POST, PUT"),
    ("/{type}/{id}/_history", "GET"),
    ("/{type}/{id}/_history/{vid}", "GET"),
];

/// The `Allow` value of a routed `/fhir` pattern (`req.match_pattern()`).
pub(super) fn allow(pattern: &str) -> Option<&'static str> {
    let path = pattern.strip_prefix("/fhir")?;
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
}

/// A path whose other methods (DELETE, PATCH, …) get 405 with `Allow` and an
/// OperationOutcome.
fn resource(path: &str) -> actix_web::Resource {
    let methods = METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| panic!("/fhir{path} is missing from METHODS"));
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let mut resp = FhirResponse(FhirError::NotSupported(format!(
            "{} is not supported on {}; use {methods}",
            req.method(),
            req.path()
        )))
        .error_response();
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(methods));
        resp
    }))
}

/// Every FHIR error leaves through here, as an OperationOutcome.
#[derive(Debug)]
pub struct FhirResponse(FhirError);

impl std::fmt::Display for FhirResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<crate::measures::MeasureError> for FhirResponse {
    fn from(e: crate::measures::MeasureError) -> Self {
        FhirResponse(e.into())
    }
}

impl From<FhirError> for FhirResponse {
    fn from(e: FhirError) -> Self {
        FhirResponse(e)
    }
}

impl ResponseError for FhirResponse {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let FhirError::Store(e) = &self.0 {
            tracing::error!(message = "Storage failure.", error = %e);
        }
        let mut resp = HttpResponse::build(self.status_code());
        match &self.0 {
            FhirError::Store(e) if e.is_transient() => {
                resp.insert_header((header::RETRY_AFTER, "1"));
            }
            FhirError::TooManyRequests { retry_after } => {
                resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            FhirError::Unauthorized(_) => {
                resp.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"crossway\""));
            }
            _ => {}
        }
        resp.content_type(FHIR_JSON)
            .body(self.0.to_operation_outcome().to_string())
    }
}

type Result<T> = std::result::Result<T, FhirResponse>;

/// The answer to a body over the size limit that an extractor refused before any
/// handler ran (`http::wire_errors`).
pub(super) fn too_large(limit: usize) -> HttpResponse {
    FhirResponse(FhirError::PayloadTooLarge { limit }).error_response()
}

impl From<AuthError> for FhirResponse {
    fn from(e: AuthError) -> Self {
        FhirResponse(match e {
            AuthError::Forbidden(message) => FhirError::Forbidden {
                expression: None,
                message,
            },
            AuthError::RateLimited { retry_after } => FhirError::TooManyRequests { retry_after },
            AuthError::Store(e) => FhirError::Store(e),
            other => FhirError::Unauthorized(other.to_string()),
        })
    }
}

/// Authenticates the request and checks every permission it needs
/// ([`Principal::authorize`], the same check a Bundle entry passes).
async fn allowed(req: &HttpRequest, state: &AppState) -> Result<Principal> {
    let principal = authenticate(req, state).await?;
    let params = parse_query_string(req.query_string());
    let path = req.path().strip_prefix("/fhir").unwrap_or(req.path());
    principal.authorize(req.method().as_str(), path, &params)?;
    Ok(principal)
}

/// Each Bundle entry passes exactly the check its stand-alone request would, before
/// anything runs.
fn check_entries(principal: &Principal, bundle: &Value) -> Result<()> {
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(request) = entry.get("request") else {
            continue;
        };
        let url = request.get("url").and_then(Value::as_str).unwrap_or("");
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        principal.authorize(method, path, &parse_query_string(query))?;
    }
    Ok(())
}

/// Deeper JSON than any FHIR resource needs is refused before it reaches the engine.
const MAX_JSON_DEPTH: usize = 64;

fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// The `/fhir` base clients see: configured, or derived from the request.
fn base(req: &HttpRequest, state: &AppState) -> String {
    if !state.public_base_url.is_empty() {
        return state.public_base_url.trim_end_matches('/').to_string();
    }
    format!("{}/fhir", super::origin(req, state))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// `Prefer: return=…` and `handling=…`.
fn prefer(req: &HttpRequest) -> (Return, bool) {
    let mut ret = Return::Representation;
    let mut lenient = false;
    for value in req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
    {
        for part in value.split([',', ';']).map(str::trim) {
            match part {
                "return=minimal" => ret = Return::Minimal,
                "return=representation" => ret = Return::Representation,
                "return=OperationOutcome" => ret = Return::OperationOutcome,
                "handling=lenient" => lenient = true,
                "handling=strict" => lenient = false,
                _ => {}
            }
        }
    }
    (ret, lenient)
}

/// Reads a JSON body: checks the media type, enforces the size limit while streaming
/// (413 before the whole body is buffered), and reports JSON syntax errors with position.
async fn json_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Value> {
    let media = header_str(req.headers(), "content-type").unwrap_or("");
    let essence = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/fhir+json" && essence != "application/json" {
        return Err(FhirError::UnsupportedMediaType(if media.is_empty() {
            "(none)".into()
        } else {
            media.into()
        })
        .into());
    }
    if let Some(len) =
        header_str(req.headers(), "content-length").and_then(|l| l.parse::<usize>().ok())
        && len > limit
    {
        return Err(FhirError::PayloadTooLarge { limit }.into());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            FhirError::invalid("body", format!("cannot read the request body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(FhirError::PayloadTooLarge { limit }.into());
        }
        body.extend_from_slice(&chunk);
    }
    let value = crate::strict_json::parse(&body).map_err(|e| {
        FhirError::Invalid(vec![Issue::error(
            crate::fhir::IssueCode::Structure,
            "body",
            e.to_string(),
        )])
    })?;
    if json_depth(&value) > MAX_JSON_DEPTH {
        return Err(FhirError::Invalid(vec![Issue::error(
            crate::fhir::IssueCode::Structure,
            "body",
            format!("the body nests deeper than {MAX_JSON_DEPTH} levels"),
        )])
        .into());
    }
    Ok(value)
}

fn resource_response(
    status: StatusCode,
    stored: StoredResource,
    base: &str,
    ret: Return,
    warnings: &[Issue],
) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::ETAG, etag(stored.version)))
        .insert_header((
            header::LAST_MODIFIED,
            datetime::format_http_date(stored.last_updated),
        ));
    if status == StatusCode::CREATED {
        resp.insert_header((
            header::LOCATION,
            format!(
                "{base}/{}/{}/_history/{}",
                stored.resource_type, stored.id, stored.version
            ),
        ));
    }
    match ret {
        Return::Minimal => resp.finish(),
        Return::Representation => resp.content_type(FHIR_JSON).body(stored.body),
        Return::OperationOutcome => {
            let issues = if warnings.is_empty() {
                vec![Issue {
                    severity: "information",
                    code: crate::fhir::IssueCode::Informational,
                    expression: None,
                    diagnostics: format!(
                        "{}/{} version {} stored",
                        stored.resource_type, stored.id, stored.version
                    ),
                }]
            } else {
                warnings.to_vec()
            };
            resp.content_type(FHIR_JSON)
                .body(operation_outcome(&issues).to_string())
        }
    }
}

fn written_response(w: Written, base: &str, ret: Return) -> HttpResponse {
    let status = if w.status == 201 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    for warning in &w.warnings {
        tracing::info!(
            message = "Stored with warning.",
            resource = %format!("{}/{}", w.stored.resource_type, w.stored.id),
            expression = warning.expression.as_deref().unwrap_or(""),
            diagnostics = %warning.diagnostics,
        );
    }
    resource_response(status, w.stored, base, ret, &w.warnings)
}

/// The answer to a create or update.
fn after_write(req: &HttpRequest, state: &AppState, written: Written) -> HttpResponse {
    written_response(written, &base(req, state), prefer(req).0)
}

async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let cs = capability_statement(
        &base(&req, &state),
        env!("CARGO_PKG_VERSION"),
        vec![crate::subscription::capability()],
    );
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(cs.to_string())
}

async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let resource_type = path.into_inner();
    let caller = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    let if_none_exist = header_str(req.headers(), "if-none-exist");
    let written = state
        .fhir
        .create(
            &resource_type,
            body,
            if_none_exist,
            caller.organization.as_deref(),
        )
        .await?;
    Ok(after_write(&req, &state, written))
}

async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (resource_type, id) = path.into_inner();
    let caller = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    let if_match = header_str(req.headers(), "if-match");
    let written = state
        .fhir
        .update(
            &resource_type,
            &id,
            body,
            if_match,
            caller.organization.as_deref(),
        )
        .await?;
    Ok(after_write(&req, &state, written))
}

/// `PUT Type?search`: conditional update (what `upsertResource` clients send).
async fn conditional_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let resource_type = path.into_inner();
    let caller = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    let if_match = header_str(req.headers(), "if-match");
    let written = state
        .fhir
        .conditional_update(
            &resource_type,
            req.query_string(),
            body,
            if_match,
            caller.organization.as_deref(),
        )
        .await?;
    Ok(after_write(&req, &state, written))
}

async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (resource_type, id) = path.into_inner();
    allowed(&req, &state).await?;
    let stored = state.fhir.read(&resource_type, &id).await?;
    if not_modified(req.headers(), &stored) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag(stored.version)))
            .finish());
    }
    Ok(resource_response(
        StatusCode::OK,
        stored,
        "",
        Return::Representation,
        &[],
    ))
}

/// `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2).
fn not_modified(headers: &HeaderMap, stored: &StoredResource) -> bool {
    if let Some(tags) = header_str(headers, "if-none-match") {
        let current = etag(stored.version);
        return tags.split(',').map(str::trim).any(|t| {
            t == "*"
                || t == current
                || t.trim_start_matches("W/") == current.trim_start_matches("W/")
        });
    }
    if let Some(since) =
        header_str(headers, "if-modified-since").and_then(datetime::parse_http_date)
    {
        // HTTP dates have whole seconds; compare at that precision.
        return stored.last_updated.div_euclid(1_000_000) * 1_000_000 <= since;
    }
    false
}

async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (resource_type, id, vid) = path.into_inner();
    allowed(&req, &state).await?;
    let stored = state.fhir.vread(&resource_type, &id, &vid).await?;
    Ok(resource_response(
        StatusCode::OK,
        stored,
        "",
        Return::Representation,
        &[],
    ))
}

async fn history(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (resource_type, id) = path.into_inner();
    allowed(&req, &state).await?;
    let body = state
        .fhir
        .history(&resource_type, &id, &base(&req, &state))
        .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

async fn search(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let params = parse_query_string(req.query_string());
    run_search(&req, &path.into_inner(), params, &state).await
}

/// `POST Type/_search` with form-encoded parameters (plus any in the URL).
async fn search_post(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let media = header_str(req.headers(), "content-type").unwrap_or("");
    if !media.starts_with("application/x-www-form-urlencoded") && !body.is_empty() {
        return Err(FhirError::UnsupportedMediaType(media.into()).into());
    }
    let mut params = parse_query_string(req.query_string());
    params.extend(parse_query_string(&String::from_utf8_lossy(&body)));
    run_search(&req, &path.into_inner(), params, &state).await
}

async fn run_search(
    req: &HttpRequest,
    resource_type: &str,
    params: Vec<(String, String)>,
    state: &AppState,
) -> Result<HttpResponse> {
    let caller = authenticate(req, state).await?;
    caller.authorize("GET", resource_type, &params)?;
    if resource_type == "AuditEvent" {
        let body = crate::audit::search(state.fhir.store(), &params, &base(req, state)).await?;
        return Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body));
    }
    let lenient = prefer(req).1;
    let body = state
        .fhir
        .search(resource_type, &params, lenient, &base(req, state))
        .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

/// `$process-message`: a Da Vinci notification Bundle, answered 200 only after its
/// effects committed. A resent Bundle (same Bundle.identifier, else same MessageHeader.id
/// from the same source endpoint) is answered 200 and applied once.
async fn process_message(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    use crate::feeds::{FeedError, Taken};
    // A notification writes Patients and Encounters.
    let caller = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    let text = body.to_string();
    let taken = match state
        .feed
        .notification(&body, text, &caller.client_id)
        .await
    {
        Ok(t) => t,
        Err(FeedError::Invalid(e)) => {
            let issue = vec![Issue::error(
                crate::fhir::IssueCode::Invalid,
                e.path.clone(),
                e.rule.clone(),
            )];
            return Err(if e.reject {
                FhirError::Invalid(issue)
            } else {
                FhirError::Unprocessable(issue)
            }
            .into());
        }
        Err(e @ FeedError::Conflict(_)) => {
            return Err(FhirError::Conflict(e.to_string()).into());
        }
        Err(FeedError::Store(e)) => return Err(e.into()),
    };
    let text = match taken {
        Taken::Applied => "notification applied",
        Taken::Duplicate => "notification already received; applied once",
        Taken::Ignored => "notification stored; its event is not acted on",
    };
    let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": text}]});
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).json(outcome))
}

async fn transaction(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let caller = authenticate(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    check_entries(&caller, &body)?;
    let with_resources = prefer(&req).0 == Return::Representation;
    let response = state
        .fhir
        .bundle(
            body,
            &base(&req, &state),
            with_resources,
            caller.organization.as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(response))
}

/// A path no route takes: not found, whatever the method (a 405 would owe an `Allow`).
async fn unsupported(req: HttpRequest) -> HttpResponse {
    FhirResponse(FhirError::NotFound {
        resource: req.path().to_string(),
    })
    .error_response()
}
