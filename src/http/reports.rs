//! `/reports/v1`: the programme's report (`measures::programme`) as JSON, CSV or an
//! HTML page with its charts drawn on the server. A caller needs read on MeasureReport
//! (`system/MeasureReport.r`; the default EHR scopes' wildcard grants it) and then sees
//! counts from 1 to 10 suppressed, as reports that leave for programme audiences must;
//! exact counts take a scope that names MeasureReport itself (an analyst's client,
//! `--scope system/MeasureReport.rs`), which no wildcard grants.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::authenticate;
use super::{AppState, header_str};
use crate::auth::Interaction;
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;
use crate::measures::MeasureError;
use crate::measures::programme::{self, Report};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/reports/v1/referrals", web::get().to(referrals));
}

/// The answer in the format asked for (`format=json|csv|html`, else `Accept`).
pub(crate) fn render(req: &HttpRequest, report: &Report) -> HttpResponse {
    let params = parse_query_string(req.query_string());
    let asked = params
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| {
            let accept = header_str(req.headers(), "accept").unwrap_or("");
            if accept.contains("text/html") {
                "html"
            } else if accept.contains("text/csv") {
                "csv"
            } else {
                "json"
            }
        });
    match asked {
        "html" => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(programme::html(report)),
        "csv" => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "content-disposition",
                "attachment; filename=\"referrals.csv\"",
            ))
            .body(programme::csv(report)),
        _ => HttpResponse::Ok().json(report),
    }
}

/// `from` and `to` (months, `YYYY-MM`) and the format, or what is wrong with them.
pub(crate) fn period(req: &HttpRequest) -> Result<(String, String), FhirError> {
    let params = parse_query_string(req.query_string());
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for (name, _) in &params {
        if !matches!(name.as_str(), "from" | "to" | "format") {
            return Err(FhirError::invalid(
                name.clone(),
                "the report takes from, to and format",
            ));
        }
    }
    if let Some(f) = get("format")
        && !matches!(f.as_str(), "json" | "csv" | "html")
    {
        return Err(FhirError::invalid("format", "must be json, csv or html"));
    }
    match (get("from"), get("to")) {
        (Some(from), Some(to)) => Ok((from, to)),
        _ => Err(FhirError::invalid(
            "from",
            "from and to (YYYY-MM) are required",
        )),
    }
}

fn problem(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": message}))
}

async fn referrals(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let principal = match authenticate(&req, &state).await {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                e.to_string(),
            );
        }
    };
    if let Err(e) = principal.require("MeasureReport", Interaction::Read) {
        return problem(StatusCode::FORBIDDEN, e.to_string());
    }
    let (from, to) = match period(&req) {
        Ok(p) => p,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let exact = principal.scopes.names("MeasureReport", Interaction::Read);
    match programme::referrals(state.fhir.store(), &from, &to, None, exact).await {
        Ok(report) => render(&req, &report),
        Err(e) if !matches!(e, MeasureError::Store(_)) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => {
            tracing::error!(message = "Report failed.", error = %e);
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the report could not be made; retry later".into(),
            )
        }
    }
}
