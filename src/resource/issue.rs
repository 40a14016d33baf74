//! OperationOutcome issues: what a check found, naming the element and the rule. The
//! FHIR face's errors carry them; a search query keeps its warnings in them.

use serde_json::{Value, json};

/// `OperationOutcome.issue.code` values we use (a subset of the FHIR IssueType codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    BusinessRule,
    NotFound,
    Conflict,
    NotSupported,
    TooLong,
    Processing,
    Transient,
    Exception,
    Informational,
    Login,
    Forbidden,
    Throttled,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::NotFound => "not-found",
            IssueCode::Conflict => "conflict",
            IssueCode::NotSupported => "not-supported",
            IssueCode::TooLong => "too-long",
            IssueCode::Processing => "processing",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Informational => "informational",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Throttled => "throttled",
        }
    }
}

/// One OperationOutcome issue. `expression` is a FHIRPath-style element path.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: &'static str,
    pub code: IssueCode,
    pub expression: Option<String>,
    pub diagnostics: String,
}

impl Issue {
    pub fn error(
        code: IssueCode,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Issue {
        Issue {
            severity: "error",
            code,
            expression: Some(expression.into()),
            diagnostics: diagnostics.into(),
        }
    }

    pub fn warning(
        code: IssueCode,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Issue {
        Issue {
            severity: "warning",
            code,
            expression: Some(expression.into()),
            diagnostics: diagnostics.into(),
        }
    }

    /// The same issue located inside an enclosing element, e.g. a Bundle entry.
    pub fn within(mut self, prefix: &str) -> Issue {
        self.expression = Some(match self.expression {
            Some(e) => match e.split_once('.') {
                Some((_, rest)) => format!("{prefix}.{rest}"),
                None => prefix.to_string(),
            },
            None => prefix.to_string(),
        });
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity,
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            issue["expression"] = json!([e]);
        }
        issue
    }
}
