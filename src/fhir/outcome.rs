//! Errors of the FHIR face and their one wire format, the OperationOutcome.
//!
//! Every failure names the element (`issue.expression`, e.g. `Task.focus`) and the rule
//! that failed (`issue.diagnostics`), so a client developer can fix the request without
//! reading our logs.

use serde_json::{Value, json};

use crate::measures::MeasureError;
pub use crate::resource::issue::{Issue, IssueCode};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// The request is not well-formed FHIR (400).
    #[error("invalid request: {}", first(.0))]
    Invalid(Vec<Issue>),
    /// Well-formed, but breaks a profile or workflow rule (422).
    #[error("unprocessable: {}", first(.0))]
    Unprocessable(Vec<Issue>),
    #[error("{resource} not found")]
    NotFound { resource: String },
    #[error("resource type {0} is not supported")]
    UnsupportedType(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("version conflict: If-Match {expected}, current version is {current}")]
    PreconditionFailed { expected: String, current: i64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MultipleMatches(String),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// No valid credential (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that may not do this; `expression` names the element when
    /// the refusal is about one (an owner changing Task.priority).
    #[error("{message}")]
    Forbidden {
        expression: Option<String>,
        message: String,
    },
    #[error("too many requests; retry after {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("storage: {0}")]
    Store(StoreError),
}

fn first(issues: &[Issue]) -> &str {
    issues.first().map(|i| i.diagnostics.as_str()).unwrap_or("")
}

impl FhirError {
    pub fn invalid(expression: impl Into<String>, diagnostics: impl Into<String>) -> FhirError {
        FhirError::Invalid(vec![Issue::error(
            IssueCode::Invalid,
            expression,
            diagnostics,
        )])
    }

    pub fn rule(expression: impl Into<String>, diagnostics: impl Into<String>) -> FhirError {
        FhirError::Unprocessable(vec![Issue::error(
            IssueCode::BusinessRule,
            expression,
            diagnostics,
        )])
    }

    pub fn status(&self) -> u16 {
        match self {
            FhirError::Invalid(_) => 400,
            FhirError::Unprocessable(_) => 422,
            FhirError::NotFound { .. } | FhirError::UnsupportedType(_) => 404,
            FhirError::NotSupported(_) => 405,
            FhirError::PreconditionFailed { .. } => 412,
            FhirError::Conflict(_) => 409,
            FhirError::MultipleMatches(_) => 412,
            FhirError::PayloadTooLarge { .. } => 413,
            FhirError::UnsupportedMediaType(_) => 415,
            FhirError::Unauthorized(_) => 401,
            FhirError::Forbidden { .. } => 403,
            FhirError::TooManyRequests { .. } => 429,
            FhirError::Store(e) if e.is_transient() => 503,
            FhirError::Store(_) => 500,
        }
    }

    /// Prefixes every issue's expression, e.g. with `Bundle.entry[3].resource`.
    pub fn within(self, prefix: &str) -> FhirError {
        match self {
            FhirError::Invalid(issues) => {
                FhirError::Invalid(issues.into_iter().map(|i| i.within(prefix)).collect())
            }
            FhirError::Unprocessable(issues) => {
                FhirError::Unprocessable(issues.into_iter().map(|i| i.within(prefix)).collect())
            }
            other => other,
        }
    }

    pub fn issues(&self) -> Vec<Issue> {
        let single = |code, diagnostics: String| {
            vec![Issue {
                severity: "error",
                code,
                expression: None,
                diagnostics,
            }]
        };
        match self {
            FhirError::Invalid(issues) | FhirError::Unprocessable(issues) => issues.clone(),
            FhirError::NotFound { .. } => single(IssueCode::NotFound, self.to_string()),
            FhirError::UnsupportedType(_) | FhirError::NotSupported(_) => {
                single(IssueCode::NotSupported, self.to_string())
            }
            FhirError::PreconditionFailed { .. } | FhirError::Conflict(_) => {
                single(IssueCode::Conflict, self.to_string())
            }
            FhirError::MultipleMatches(_) => single(IssueCode::Processing, self.to_string()),
            FhirError::PayloadTooLarge { .. } => single(IssueCode::TooLong, self.to_string()),
            FhirError::UnsupportedMediaType(_) => single(
                IssueCode::NotSupported,
                format!("{self}; send application/fhir+json or application/json"),
            ),
            FhirError::Unauthorized(_) => single(IssueCode::Login, self.to_string()),
            FhirError::Forbidden {
                expression,
                message,
            } => vec![Issue {
                severity: "error",
                code: IssueCode::Forbidden,
                expression: expression.clone(),
                diagnostics: message.clone(),
            }],
            FhirError::TooManyRequests { .. } => single(IssueCode::Throttled, self.to_string()),
            // The cause goes to the log only; the client learns whether to retry.
            FhirError::Store(e) if e.is_transient() => single(
                IssueCode::Transient,
                "storage temporarily unavailable; retry later".into(),
            ),
            FhirError::Store(_) => single(IssueCode::Exception, "internal storage error".into()),
        }
    }

    pub fn to_operation_outcome(&self) -> Value {
        operation_outcome(&self.issues())
    }
}

pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

impl From<MeasureError> for FhirError {
    fn from(e: MeasureError) -> FhirError {
        match e {
            MeasureError::Invalid { name, rule } => FhirError::invalid(name, rule),
            MeasureError::Unknown(id) => FhirError::NotFound {
                resource: format!("Measure/{id}"),
            },
            MeasureError::Store(e) => FhirError::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_the_element_and_the_rule() {
        let e = FhirError::rule("Task.focus", "Task.focus is required (1..1)");
        assert_eq!(e.status(), 422);
        let oo = e.to_operation_outcome();
        assert_eq!(oo["issue"][0]["expression"][0], "Task.focus");
        assert_eq!(oo["issue"][0]["code"], "business-rule");
    }

    #[test]
    fn issues_are_relocated_into_bundle_entries() {
        let e = FhirError::rule("Task.focus", "x").within("Bundle.entry[4].resource");
        assert_eq!(
            e.to_operation_outcome()["issue"][0]["expression"][0],
            "Bundle.entry[4].resource.focus"
        );
    }
}
