//! `/cbo/v1/reports`: an organisation's own numbers (`measures::programme`), as the
//! programme sees them, small counts suppressed.

use actix_web::{HttpRequest, HttpResponse, get, web};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{AppState, Problem, ProblemBody, Result, tenant};
use crate::auth::CboScope;
use crate::fhir::FhirError;
use crate::measures::programme::{self, Report};

/// The formats a report comes in.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum ReportFormat {
    Json,
    Csv,
    Html,
}

/// The report's query, as documented (read by `http::reports::period`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ReportQuery {
    /// First month, YYYY-MM.
    #[param(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    from: String,
    /// Last month, YYYY-MM (before `from`: an empty report).
    #[param(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    to: String,
    /// json (default), csv or html.
    #[param(inline)]
    format: Option<ReportFormat>,
}

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(report);
}

#[utoipa::path(
    tag = "reports",
    summary = "My organisation's referral numbers",
    description = "Referrals addressed to this organisation made from month `from` to month `to`: by month and domain, made, accepted, declined by reason, closed by outcome, cancelled, expired, median hours to the first answer and to close; and the hospital use of the persons referred in the 90 days before and after. Counts from 1 to 10 are null (small-cell suppression). `format=csv` or `format=html` (also by Accept) for a spreadsheet or a page.",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report", content(
            (Report = "application/json"),
            (String = "text/csv"),
            (String = "text/html"),
        )),
        (status = 422, description = "A parameter is invalid", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
#[get("/reports")]
async fn report(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let org = tenant(&req, &state, Some(CboScope::ReferralsRead))
        .await?
        .org;
    let (from, to) = crate::http::reports::period(&req).map_err(|e| Problem::new(e, &req))?;
    let report = programme::referrals(state.fhir.store(), &from, &to, Some(&org.id), false)
        .await
        .map_err(|e| Problem::new(FhirError::from(e), &req))?;
    Ok(crate::http::reports::render(&req, &report))
}
