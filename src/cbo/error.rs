//! Errors of the CBO face. `http::cbo` turns them into problem+json (RFC 9457), the one
//! wire format of errors on this face.

use serde::Serialize;

use crate::fhir::FhirError;
use crate::referral::{ActionError, CboStatus};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CboError {
    #[error("the request is invalid: {}", .0.first().map(|e| e.message.as_str()).unwrap_or(""))]
    Validation(Vec<FieldError>),
    #[error("no such referral for this organisation")]
    NotFound,
    /// Something other than a referral is not there; the text says what.
    #[error("{0}")]
    Unknown(String),
    #[error("'{action}' is not allowed while the referral is '{}'", current.as_str())]
    InvalidTransition {
        action: &'static str,
        current: CboStatus,
        allowed: Vec<&'static str>,
    },
    #[error("If-Match does not match the referral's current version {current}")]
    VersionConflict { current: i64 },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    RequestInProgress,
    #[error("the cursor points before the oldest retained event ({oldest})")]
    CursorExpired { oldest: i64 },
    /// The request conflicts with how the resource is managed; the text says why.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ActionError> for CboError {
    fn from(e: ActionError) -> CboError {
        match e {
            ActionError::InvalidTransition {
                action,
                current,
                allowed,
            } => CboError::InvalidTransition {
                action,
                current,
                allowed,
            },
            ActionError::UnknownStatus => CboError::NotFound,
        }
    }
}

/// One problem in a request: where (a JSON pointer into the body, a query parameter or
/// a header) and what rule it breaks.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// For rules of the FHIR record behind the request (e.g. `Task.output`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fhir_path: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn body(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            pointer: Some(pointer.into()),
            parameter: None,
            header: None,
            fhir_path: None,
            message: message.into(),
        }
    }

    pub fn query(parameter: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            pointer: None,
            parameter: Some(parameter.to_string()),
            header: None,
            fhir_path: None,
            message: message.into(),
        }
    }

    pub fn fhir(path: Option<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            pointer: None,
            parameter: None,
            header: None,
            fhir_path: path,
            message: message.into(),
        }
    }

    pub fn header(header: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            pointer: None,
            parameter: None,
            header: Some(header.to_string()),
            fhir_path: None,
            message: message.into(),
        }
    }
}
