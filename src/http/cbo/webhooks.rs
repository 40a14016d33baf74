//! `/cbo/v1/webhooks` routes (scope `webhooks:manage`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{AppState, Problem, ProblemBody, Result, json_of, tenant};
use crate::auth::CboScope;
use crate::cbo::webhooks::{self, Delivery, Endpoint, EndpointInput};
use crate::config::OrganizationConfig;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(read)
        .service(remove)
        .service(rotate)
        .service(test)
        .service(deliveries)
        .service(redeliver);
}

/// The organisation acting on its own endpoints (scope `webhooks:manage`).
async fn owner(req: &HttpRequest, state: &AppState) -> Result<OrganizationConfig> {
    Ok(tenant(req, state, Some(CboScope::WebhooksManage))
        .await?
        .org)
}

#[derive(Serialize, ToSchema)]
struct EndpointList {
    data: Vec<Endpoint>,
}

#[derive(Serialize, ToSchema)]
struct DeliveryList {
    data: Vec<Delivery>,
}

#[derive(Serialize, ToSchema)]
struct Queued {
    /// The `webhook-id` the receiver will see.
    event_id: String,
}

#[utoipa::path(
    tag = "webhooks",
    summary = "Register a webhook endpoint",
    description = "Standard Webhooks: each delivery carries webhook-id, webhook-timestamp and webhook-signature. The signing secret is in this answer only.",
    request_body = EndpointInput,
    responses(
        (status = 201, description = "Registered; `secret` is shown this once", body = Endpoint),
        (status = 422, description = "Not https, or an unknown event type", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[post("/webhooks")]
async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let endpoint = webhooks::create(
        state.fhir.store(),
        &org.id,
        &body,
        state.allow_insecure_webhooks,
    )
    .await
    .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::CREATED, &endpoint))
}

#[utoipa::path(tag = "webhooks", summary = "My webhook endpoints",
    responses((status = 200, description = "Every endpoint (without secrets)", body = EndpointList)),
    security(("bearer" = [])))]
#[get("/webhooks")]
async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let data = webhooks::list(state.fhir.store(), &org.id)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &EndpointList { data }))
}

#[utoipa::path(tag = "webhooks", summary = "Read an endpoint",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint", body = Endpoint), (status = 404, description = "No such endpoint", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/webhooks/{id}")]
async fn read(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let endpoint = webhooks::get(state.fhir.store(), &org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &endpoint))
}

#[utoipa::path(tag = "webhooks", summary = "Remove an endpoint and its deliveries",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such endpoint", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/webhooks/{id}")]
async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    webhooks::delete(state.fhir.store(), &org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(tag = "webhooks", summary = "Rotate the signing secret",
    description = "Returns the new secret once. For 24 hours deliveries carry two signatures, one per secret.",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint with its new secret", body = Endpoint), (status = 404, description = "No such endpoint", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/webhooks/{id}/rotate-secret")]
async fn rotate(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let endpoint = webhooks::rotate(state.fhir.store(), &org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &endpoint))
}

#[utoipa::path(tag = "webhooks", summary = "Send a signed test event",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 202, description = "Queued", body = Queued), (status = 404, description = "No such endpoint", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/webhooks/{id}/test")]
async fn test(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let event_id = webhooks::test(state.fhir.store(), &org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::ACCEPTED, &Queued { event_id }))
}

#[utoipa::path(tag = "webhooks", summary = "The delivery log",
    description = "Newest first: status, attempts, the last HTTP status and error, when the next attempt is due.",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "Deliveries", body = DeliveryList), (status = 404, description = "No such endpoint", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/webhooks/{id}/deliveries")]
async fn deliveries(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let data = webhooks::deliveries(state.fhir.store(), &org.id, &path)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &DeliveryList { data }))
}

#[utoipa::path(tag = "webhooks", summary = "Send a delivery again",
    description = "At-least-once: allowed whatever the delivery's state; the webhook-id stays the event's.",
    params(("id" = String, Path, description = "Endpoint id"), ("delivery_id" = String, Path, description = "Delivery id (from the log)")),
    responses((status = 202, description = "Queued"), (status = 404, description = "No such delivery", body = ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/webhooks/{id}/deliveries/{delivery_id}/redeliver")]
async fn redeliver(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let org = owner(&req, &state).await?;
    let (id, delivery_id) = path.into_inner();
    webhooks::redeliver(state.fhir.store(), &org.id, &id, &delivery_id)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(HttpResponse::Accepted().finish())
}
