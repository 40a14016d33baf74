//! The OAuth face: `POST /auth/token`, SMART discovery, our public keys; and
//! [`authenticate`], which both API faces call to turn a request's credential into a
//! [`Principal`]. OAuth errors leave here as RFC 6749 JSON.

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::{AppState, header_str, origin, peer_ip};
use crate::auth::{AuthError, CboScope, Principal, TokenRequest};
use crate::fhir::bundle::{form_decode, parse_query_string};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/token", web::post().to(token))
        .route(
            "/.well-known/smart-configuration",
            web::get().to(smart_configuration),
        )
        .route("/.well-known/jwks.json", web::get().to(jwks));
}

/// The bearer token of `Authorization` (scheme case-insensitive, token trimmed).
pub(super) fn bearer(req: &HttpRequest) -> Result<&str, AuthError> {
    let Some(value) = header_str(req.headers(), "authorization") else {
        return Err(AuthError::Unauthenticated(
            "send Authorization: Bearer <access token> (POST /auth/token to get one)".into(),
        ));
    };
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(AuthError::Unauthenticated(
                "the Authorization scheme must be Bearer".into(),
            ));
        }
    };
    if token.is_empty() {
        return Err(AuthError::Unauthenticated(
            "the bearer token is empty".into(),
        ));
    }
    Ok(token)
}

/// The caller behind `Authorization: Bearer …`. The principal is also left in the
/// request's extensions, for the audit trail.
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Principal, AuthError> {
    let token = bearer(req)?;
    let principal = state.auth.authenticate(token).await?;
    req.extensions_mut().insert(principal.clone());
    Ok(principal)
}

pub fn token_url(req: &HttpRequest, state: &AppState) -> String {
    format!("{}/auth/token", origin(req, state))
}

fn oauth_error(e: &AuthError, basic: bool) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(e.status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let description = if status.is_server_error() {
        tracing::error!(message = "Token request failed.", error = %e);
        "the request could not be completed; retry later".to_string()
    } else {
        e.to_string()
    };
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CACHE_CONTROL, "no-store"));
    if let AuthError::RateLimited { retry_after } = e {
        resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
    }
    if basic && status == actix_web::http::StatusCode::UNAUTHORIZED {
        resp.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"crossway\""));
    }
    resp.json(json!({"error": e.oauth_code(), "error_description": description}))
}

/// `client_id:client_secret` from HTTP Basic (RFC 6749 §2.3.1: both form-encoded).
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = header_str(req.headers(), "authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

async fn token(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let basic = basic_credentials(&req);
    let media = header_str(req.headers(), "content-type").unwrap_or("");
    if !media
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            &AuthError::InvalidRequest(
                "send the token request as application/x-www-form-urlencoded".into(),
            ),
            false,
        );
    }
    let form = parse_query_string(&String::from_utf8_lossy(&body));
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut request = TokenRequest {
        peer: peer_ip(&req, &state),
        grant_type: field("grant_type"),
        scope: field("scope"),
        client_id: field("client_id"),
        client_secret: field("client_secret"),
        client_assertion_type: field("client_assertion_type"),
        client_assertion: field("client_assertion"),
    };
    let used_basic = basic.is_some();
    if let Some((id, secret)) = basic {
        request.client_id = Some(id);
        request.client_secret = Some(secret);
    }
    let claimed: String = request
        .client_id
        .clone()
        .unwrap_or_else(|| "anonymous".into())
        .chars()
        .take(128)
        .collect();
    let peer = request.peer;
    let answer = state.auth.issue(request, &token_url(&req, &state)).await;
    let status = answer.as_ref().map_or_else(AuthError::status, |_| 200);
    // Every token request is in the trail, refusals with the client id they claimed.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    state.audit.record(crate::audit::Access {
        client_id: &claimed,
        organization: None,
        face: "auth",
        action: "E",
        entity: "/auth/token".into(),
        detail: "POST".into(),
        outcome: status,
        trace_id: &trace_id,
    });
    match answer {
        Ok(token) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"))
            .json(token),
        Err(e) => {
            tracing::warn!(message = "Token request refused.", client_id = %claimed, peer = ?peer, error = e.oauth_code(), status);
            oauth_error(&e, used_basic)
        }
    }
}

pub async fn smart_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let origin = origin(&req, &state);
    let mut scopes = vec![
        "system/*.cruds".to_string(),
        "system/*.rs".into(),
        "system/*.read".into(),
        "system/*.write".into(),
    ];
    scopes.extend(CboScope::ALL.iter().map(|s| s.name().to_string()));
    HttpResponse::Ok().json(json!({
        "token_endpoint": format!("{origin}/auth/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": scopes,
        "jwks_uri": format!("{origin}/.well-known/jwks.json"),
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
}

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.auth.keys().jwks())
}
