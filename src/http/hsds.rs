//! `/hsds/`: the community resource directory as an Open Referral HSDS 3.0 API (the
//! paths of the official OpenAPI document; `directory::api` does the work). Reading
//! the directory is not reading personal data, but it is not anonymous either: every
//! path but the root needs a valid bearer token (any client's). Errors are
//! `{"error": …}` JSON, as on `/reports/v1`. `sdoh_domain=` (search by need) is our
//! extension of the list paths; `directory::api` documents it.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::auth::authenticate;
use crate::directory::{DEFAULT_TENANT, DirectoryError, Kind, api};
use crate::fhir::bundle::parse_query_string;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // One resource per path, so that another method on it is a 405 with `Allow`
    // (RFC 9110 §15.5.6), not the gateway's 404.
    cfg.service(resource("/hsds").route(web::get().to(root)))
        .service(resource("/hsds/").route(web::get().to(root)));
    for (path, kind) in [
        ("services", Kind::Service),
        ("organizations", Kind::Organization),
        ("service_at_locations", Kind::ServiceAtLocation),
        ("taxonomies", Kind::Taxonomy),
        ("taxonomy_terms", Kind::TaxonomyTerm),
    ] {
        cfg.service(
            resource(&format!("/hsds/{path}"))
                .route(web::get().to(move |req, state| list(req, state, kind))),
        )
        .service(
            resource(&format!("/hsds/{path}/{{id}}"))
                .route(web::get().to(move |req, state, id| read(req, state, id, kind))),
        );
    }
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|req: HttpRequest| async move {
        let mut resp = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} {} is not supported; allowed: GET",
                req.method(),
                req.path()
            ),
        );
        resp.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static("GET"),
        );
        resp
    }))
}

fn problem(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": message.into()}))
}

async fn root() -> HttpResponse {
    HttpResponse::Ok().json(api::root())
}

/// The caller's token, or the 401 to answer.
async fn caller(req: &HttpRequest, state: &AppState) -> Result<(), HttpResponse> {
    match authenticate(req, state).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = problem(status, e.to_string());
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    actix_web::http::header::WWW_AUTHENTICATE,
                    actix_web::http::header::HeaderValue::from_static("Bearer"),
                );
            }
            Err(resp)
        }
    }
}

fn failed(e: DirectoryError) -> HttpResponse {
    tracing::error!(message = "Directory read failed.", error = %e);
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the directory could not be read; retry later",
    )
}

async fn list(req: HttpRequest, state: web::Data<AppState>, kind: Kind) -> HttpResponse {
    if let Err(resp) = caller(&req, &state).await {
        return resp;
    }
    let query = api::PageQuery::parse(&parse_query_string(req.query_string()));
    let mappings = state.fhir.mappings();
    match api::list(
        state.fhir.store(),
        DEFAULT_TENANT,
        kind,
        &query,
        &mappings.needs,
    )
    .await
    {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(e @ DirectoryError::UnknownDomain { .. }) => {
            problem(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => failed(e),
    }
}

async fn read(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    kind: Kind,
) -> HttpResponse {
    if let Err(resp) = caller(&req, &state).await {
        return resp;
    }
    match api::get(state.fhir.store(), DEFAULT_TENANT, kind, &id).await {
        Ok(Some(body)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            format!(
                "no {} with id {:?} in the directory",
                kind.as_str(),
                id.as_str()
            ),
        ),
        Err(e) => failed(e),
    }
}
