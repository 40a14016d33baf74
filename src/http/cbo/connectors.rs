//! `/cbo/v1/connectors/{id}/status`: where an organisation's case-management system
//! reports its case statuses (scope `referrals:write`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{AppState, Problem, ProblemBody, Result, json_of, tenant};
use crate::auth::CboScope;
use crate::connector::Applied;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(status);
}

#[utoipa::path(
    tag = "connectors",
    summary = "Report a case status from the organisation's case system",
    description = "The body is the case system's own message; the connector's rules in mappings/connectors/ say where its case id and status are and which referral status each case status means. The referral is moved there by the fewest allowed actions (a case reported closed is accepted, then closed); a status it already has changes nothing.",
    params(("id" = String, Path, description = "Connector id (mappings/connectors/)")),
    request_body(content = serde_json::Value, description = "The case system's message"),
    responses(
        (status = 200, description = "What the report changed", body = Applied),
        (status = 404, description = "No such connector for this organisation, or an unknown case", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No case id or status where the connector expects them, a status the connector does not map, or one the referral cannot reach", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[post("/connectors/{id}/status")]
async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsWrite))
        .await?
        .org;
    let applied = state
        .connectors
        .receive(&org, &path, &body)
        .await
        .map_err(|e| Problem::new(e, &req))?;
    Ok(json_of(StatusCode::OK, &applied))
}
