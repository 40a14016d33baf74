//! `/fhir/Measure`: the outcome measures this server evaluates, and
//! `$evaluate-measure`, which answers a summary MeasureReport (`measures`).
//! Exact counts: a client with read on Measure sees them (reports that leave for CBOs
//! and programme audiences suppress small cells; they are not served here).

use std::collections::HashSet;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{FHIR_JSON, Result, allowed, base};
use crate::fhir::FhirError;
use crate::fhir::bundle::parse_query_string;
use crate::http::AppState;
use crate::measures;

fn answer(body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::OK)
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

/// `GET /fhir/Measure`: every measure, as a searchset.
pub async fn search(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    allowed(&req, &state).await?;
    let base = base(&req, &state);
    let entries: Vec<Value> = measures::MEASURES
        .iter()
        .filter_map(|(id, ..)| measures::measure(id))
        .map(|m| json!({"fullUrl": format!("{base}/Measure/{}", m["id"].as_str().unwrap_or("")), "resource": m, "search": {"mode": "match"}}))
        .collect();
    Ok(answer(&json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })))
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    allowed(&req, &state).await?;
    let measure = measures::measure(&path).ok_or_else(|| FhirError::NotFound {
        resource: format!("Measure/{path}"),
    })?;
    Ok(answer(&measure))
}

/// `GET /fhir/Measure/{id}/$evaluate-measure?periodStart=…&periodEnd=…[&subject=Group/{id}]`
pub async fn evaluate(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    allowed(&req, &state).await?;
    let id = path.into_inner();
    if measures::measure(&id).is_none() {
        return Err(FhirError::NotFound {
            resource: format!("Measure/{id}"),
        }
        .into());
    }
    let params = parse_query_string(req.query_string());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(start), Some(end)) = (param("periodStart"), param("periodEnd")) else {
        return Err(FhirError::invalid(
            "periodStart",
            "$evaluate-measure needs periodStart and periodEnd",
        )
        .into());
    };
    let period = measures::period(start, end)?;
    for (name, _) in &params {
        if !matches!(
            name.as_str(),
            "periodStart" | "periodEnd" | "subject" | "reportType"
        ) {
            return Err(FhirError::invalid(
                name.clone(),
                "$evaluate-measure takes periodStart, periodEnd, subject and reportType",
            )
            .into());
        }
    }
    if param("reportType").is_some_and(|t| t != "summary" && t != "population") {
        return Err(FhirError::invalid("reportType", "only summary reports are produced").into());
    }
    let subject = param("subject");
    let population = match subject {
        None => None,
        Some(s) => Some(group_members(&state, s).await?),
    };
    let store = state.fhir.store();
    let mappings = state.fhir.mappings();
    let rates = measures::evaluate(store, &mappings.screening, &id, period, population).await?;
    Ok(answer(&measures::report(
        &id,
        &base(&req, &state),
        period,
        subject,
        &rates,
    )))
}

/// The persons of a Group's members (`member.entity` references to Patients).
async fn group_members(
    state: &AppState,
    subject: &str,
) -> std::result::Result<HashSet<String>, FhirError> {
    let Some(id) = subject.strip_prefix("Group/") else {
        return Err(FhirError::invalid(
            "subject",
            format!("{subject:?}: the subject must be a Group (Group/{{id}})"),
        ));
    };
    let group = state.fhir.read("Group", id).await?;
    let group: Value = serde_json::from_str(&group.body)
        .map_err(|_| FhirError::Conflict(format!("the stored Group/{id} cannot be read")))?;
    let patients: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(|r| r.rsplit_once("Patient/").map(|(_, id)| id.to_string()))
        .collect();
    Ok(state
        .fhir
        .store()
        .persons_of_patients(&patients)
        .await?
        .into_iter()
        .collect())
}
