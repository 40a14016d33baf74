//! `/fhir/Subscription`: create, read, update, delete and search Subscriptions (R4
//! Subscriptions Backport), and their `$status` (instance and type level) and
//! `$events` operations, by GET or POST. A client sees only its own subscriptions.

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::{FHIR_JSON, Result, allowed, json_body};
use crate::auth::Interaction;
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;
use crate::http::{AppState, etag, header_str};
use crate::subscription::{Filters, topic};

fn answer(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

fn with_version(status: StatusCode, resource: &Value, version: i64) -> HttpResponse {
    let mut resp = answer(status, resource);
    if let Ok(v) = header::HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
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
    let mut resp = with_version(StatusCode::CREATED, &created, 1);
    resp.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(&format!("Subscription/{id}/_history/1"))
            .expect("ids are header-safe"),
    );
    Ok(resp)
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let (resource, version) = state
        .subscriptions
        .read(&principal.client_id, &path)
        .await?;
    Ok(with_version(StatusCode::OK, &resource, version))
}

/// PUT: `status`, `end`, the channel (a new endpoint is handshaken first), filters;
/// `If-Match` is honoured.
pub async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let body = json_body(&req, payload, state.max_body_bytes).await?;
    principal.require(topic::plan(&body)?.resource_type, Interaction::Read)?;
    let if_match = match header_str(req.headers(), "if-match") {
        None => None,
        Some(v) => Some(crate::resource::version_from_etag(v).ok_or_else(|| {
            FhirError::invalid(
                "If-Match",
                format!("{v:?} is not an ETag this server issued (W/\"n\")"),
            )
        })?),
    };
    let updated = state
        .subscriptions
        .update(&principal.client_id, &path, body, if_match)
        .await?;
    let version = updated
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Ok(with_version(StatusCode::OK, &updated, version))
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

/// `GET /fhir/Subscription?…` and `POST /fhir/Subscription/_search`.
pub async fn search(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let mut params = parse_query_string(req.query_string());
    if req.method() == Method::POST {
        let mut body = web::BytesMut::new();
        let mut payload = payload;
        use futures_util::StreamExt;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                FhirError::invalid("body", format!("cannot read the request body: {e}"))
            })?;
            if body.len() + chunk.len() > state.max_body_bytes {
                return Err(FhirError::PayloadTooLarge {
                    limit: state.max_body_bytes,
                }
                .into());
            }
            body.extend_from_slice(&chunk);
        }
        params.extend(parse_query_string(&String::from_utf8_lossy(&body)));
    }
    let bundle = state
        .subscriptions
        .search(&principal.client_id, &params)
        .await?;
    Ok(answer(StatusCode::OK, &bundle))
}

/// The operation's parameters: the query string's, and by POST a Parameters body's
/// (each value as text).
async fn operation_params(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Filters> {
    let mut params = parse_query_string(req.query_string());
    let empty = header_str(req.headers(), "content-length") == Some("0")
        || (header_str(req.headers(), "content-type").is_none()
            && header_str(req.headers(), "transfer-encoding").is_none());
    if req.method() != Method::POST || empty {
        return Ok(params);
    }
    let body = json_body(req, payload, state.max_body_bytes).await?;
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::invalid(
            "Parameters.resourceType",
            "an operation's body is a Parameters resource",
        )
        .into());
    }
    for (i, p) in body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let value = p.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.starts_with("value"))
                .and_then(|(_, v)| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
        });
        match (name, value) {
            ("", _) | (_, None) => {
                return Err(FhirError::invalid(
                    format!("Parameters.parameter[{i}]"),
                    "needs a name and a simple value[x]",
                )
                .into());
            }
            (name, Some(value)) => params.push((name.to_string(), value)),
        }
    }
    Ok(params)
}

/// `$status` of one subscription; its `id` and `status` parameters are ignored there.
pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    operation_params(&req, payload, &state).await?;
    let bundle = state
        .subscriptions
        .status(&principal.client_id, Some(&path), &Vec::new())
        .await?;
    Ok(answer(StatusCode::OK, &bundle))
}

/// `Subscription/$status?id=…&status=…`: the client's subscriptions with any of the
/// ids and any of the statuses (repeated or comma-separated); all of them with none.
pub async fn status_of_type(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let params = operation_params(&req, payload, &state).await?;
    for (name, _) in &params {
        if !["id", "status", "_format", "_pretty"].contains(&name.as_str()) {
            return Err(FhirError::invalid(
                format!("$status.{name}"),
                "is not a parameter of $status (id, status)",
            )
            .into());
        }
    }
    let bundle = state
        .subscriptions
        .status(&principal.client_id, None, &params)
        .await?;
    Ok(answer(StatusCode::OK, &bundle))
}

/// `$events?eventsSinceNumber=&eventsUntilNumber=&content=`, or the same in a
/// Parameters body by POST.
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let principal = allowed(&req, &state).await?;
    let topic_type = state
        .subscriptions
        .topic_type(&principal.client_id, &path)
        .await?;
    principal.require(topic_type, Interaction::Read)?;
    let params = operation_params(&req, payload, &state).await?;
    let number = |name: &str| -> std::result::Result<Option<i64>, FhirError> {
        match params.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v.trim().parse().map(Some).map_err(|_| {
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
