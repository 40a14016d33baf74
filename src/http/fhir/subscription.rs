//! `/fhir/Subscription`: create, read and delete a Subscription (R4 Subscriptions
//! Backport), and its `$status` and `$events` operations. A client sees only its own
//! subscriptions.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::{FHIR_JSON, Result, allowed, json_body};
use crate::auth::Interaction;
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;
use crate::http::AppState;
use crate::subscription::topic;

fn answer(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    // Notifications show the topic's resources: the client must be allowed to read them.
    principal.require(topic::plan(&body)?.resource_type, Interaction::Read)?;
    let created = state
        .subscriptions
        .create(&principal.client_id, body)
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let mut resp = answer(StatusCode::CREATED, &created);
    resp.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(&format!("Subscription/{id}")).expect("ids are header-safe"),
    );
    Ok(resp)
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let resource = state
        .subscriptions
        .read(&principal.client_id, &path)
        .await?;
    Ok(answer(StatusCode::OK, &resource))
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    state
        .subscriptions
        .delete(&principal.client_id, &path)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let bundle = state
        .subscriptions
        .status(&principal.client_id, &path)
        .await?;
    Ok(answer(StatusCode::OK, &bundle))
}

/// `$events?eventsSinceNumber=&eventsUntilNumber=&content=`
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let topic_type = state
        .subscriptions
        .topic_type(&principal.client_id, &path)
        .await?;
    principal.require(topic_type, Interaction::Read)?;
    let params = parse_query_string(req.query_string());
    let number = |name: &str| -> std::result::Result<Option<i64>, FhirError> {
        match params.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v.parse().map(Some).map_err(|_| {
                FhirError::invalid(name, format!("{name}={v:?} is not an event number"))
            }),
        }
    };
    let since = number("eventsSinceNumber")?;
    let until = number("eventsUntilNumber")?;
    let content = params
        .iter()
        .find(|(k, _)| k == "content")
        .map(|(_, v)| v.as_str());
    let bundle = state
        .subscriptions
        .events(&principal.client_id, &path, since, until, content)
        .await?;
    Ok(answer(StatusCode::OK, &bundle))
}
