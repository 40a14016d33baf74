//! A connector as written in `mappings/connectors/<name>.toml`: where the case system
//! is, how to authenticate, which request each event becomes (a JSON template over
//! the referral projection), and how the system's case statuses map back.
//!
//! Secrets and addresses are written `${NAME}` and read from the environment when used:
//! the files stay in version control without them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::template::{self, Maps};
use crate::config::{env_names, expand_env as expand};
use crate::referral::projection;
use crate::referral::{CboStatus, EVENT_TYPES};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub id: String,
    /// The CBO whose referrals go to this system.
    pub organization: String,
    #[serde(default)]
    pub description: String,
    /// `https://…` or `${NAME}`; request paths are appended to it.
    pub base_url: String,
    pub auth: Auth,
    /// Sent with every request (besides auth, content type and Idempotency-Key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub request: Vec<Request>,
    pub status: Option<StatusRule>,
    /// Code maps the templates name (`{{ /urgency | map urgency }}`).
    #[serde(default)]
    pub maps: Maps,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Auth {
    /// OAuth 2.0 client credentials; the token is cached until shortly before it expires.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        token: String,
    },
    /// A key in a header of the system's choosing.
    ApiKey {
        header: String,
        value: String,
    },
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub name: String,
    /// Event types (`referral.created`) that send this request.
    pub on: Vec<String>,
    pub method: String,
    /// Appended to `base_url`; `{case_id}` is the case the create request returned.
    pub path: String,
    /// File (beside the connector's) holding the body's JSON template.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(skip)]
    pub body: Option<Value>,
    /// JSON pointer to the new case's id in the answer (the create request).
    #[serde(default)]
    pub case_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The case system posts case changes to `/cbo/v1/connectors/{id}/status`.
    Push,
    /// Crossway reads `path` for each open case every `every_seconds`.
    Poll,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    pub source: Source,
    /// Pointer to the case id in a pushed message.
    #[serde(default)]
    pub case_id: Option<String>,
    /// Pointer to the case's status.
    pub field: String,
    /// Poll: the case's URL path (with `{case_id}`), and how often.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub every_seconds: Option<f64>,
    /// Case statuses that change nothing on the referral.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Case status → referral status to reach, and the body of the action reaching it.
    pub map: BTreeMap<String, StatusTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusTarget {
    /// `accepted`, `in_progress`, `on_hold`, `declined` or `closed`.
    pub status: String,
    /// Template over the case system's message for the last action's body (decline
    /// needs `reason`, close needs `outcome`).
    #[serde(default)]
    pub body: Option<Value>,
}

/// What a case system reported, as the connector reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub case_id: String,
    pub case_status: String,
    /// The referral status it means; `None` for a status the connector ignores.
    pub status: Option<CboStatus>,
    /// The body of the action that reaches `status`.
    pub body: Option<Value>,
}

/// Why a case system's message cannot be read: where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub pointer: String,
    pub message: String,
}

/// A string, or a number written as text (case ids are often numbers).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Statuses a case system may move a referral to.
const REACHABLE: &[CboStatus] = &[
    CboStatus::Accepted,
    CboStatus::InProgress,
    CboStatus::OnHold,
    CboStatus::Declined,
    CboStatus::Closed,
];

/// The member templates read the case id from, besides the projection's fields.
const CASE_ID: &str = "case_id";

const METHODS: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];

impl Spec {
    /// Checks the connector and reads its templates from `dir`; the error is the
    /// message for the connector's rule.
    pub fn build(mut self, dir: &Path, organizations: &[String]) -> Result<Spec, String> {
        if !organizations.contains(&self.organization) {
            return Err(format!(
                "organization {:?} is not a configured organisation",
                self.organization
            ));
        }
        check_url("base_url", &self.base_url)?;
        for name in self.environment().iter().flat_map(|t| env_names(t)) {
            if name.starts_with("CROSSWAY_") {
                return Err(format!(
                    "${{{name}}} is the gateway's own setting and is not sent to other systems"
                ));
            }
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("headers: {name:?} is not a valid header name"));
            }
        }
        if let Auth::ApiKey { header, .. } = &self.auth
            && reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            return Err(format!(
                "auth.header: {header:?} is not a valid header name"
            ));
        }
        if let Auth::Oauth2ClientCredentials { token_url, .. } = &self.auth {
            check_url("auth.token_url", token_url)?;
        }
        if self.request.is_empty() {
            return Err("has no [[request]]".into());
        }
        let mut seen_events: Vec<&str> = Vec::new();
        let mut creates = 0;
        let mut requests = std::mem::take(&mut self.request);
        for r in &mut requests {
            let at = format!("request {:?}", r.name);
            if !METHODS.contains(&r.method.as_str()) {
                return Err(format!(
                    "{at}: method {:?} is not one of {}",
                    r.method,
                    METHODS.join(", ")
                ));
            }
            check_path(&at, &r.path)?;
            if let Some(p) = &r.case_id {
                check_pointer(&format!("{at}: case_id"), p)?;
                creates += 1;
                if r.path.contains("{case_id}") {
                    return Err(format!(
                        "{at} creates the case (case_id) so its path cannot name {{case_id}}"
                    ));
                }
            }
            if let Some(file) = &r.template {
                let body = read_template(dir, file).map_err(|e| format!("{at}: {e}"))?;
                for (target, text) in
                    template::expressions(&body).map_err(|e| format!("{at}: {file}: {e}"))?
                {
                    let pointer = text.split('|').next().unwrap_or("").trim();
                    if !projection::has_field(pointer) && pointer != format!("/{CASE_ID}") {
                        return Err(format!(
                            "{at}: {file}: {target} reads {pointer}, which is neither a field of the referral projection nor /{CASE_ID}"
                        ));
                    }
                }
                self.check_maps(&at, &body)?;
                r.body = Some(body);
            }
        }
        self.request = requests;
        if creates > 1 {
            return Err("only one request may set case_id (the one that creates the case)".into());
        }
        for r in &self.request {
            for e in &r.on {
                if !EVENT_TYPES.contains(&e.as_str()) {
                    return Err(format!(
                        "request {:?}: on names {e:?}, which is not an event type (known: {})",
                        r.name,
                        EVENT_TYPES.join(", ")
                    ));
                }
                if seen_events.contains(&e.as_str()) {
                    return Err(format!(
                        "request {:?}: {e} already sends another request (one request per event)",
                        r.name
                    ));
                }
                seen_events.push(e);
            }
        }
        if let Some(status) = &self.status {
            self.check_status(status)?;
        }
        Ok(self)
    }

    fn check_status(&self, s: &StatusRule) -> Result<(), String> {
        check_pointer("status.field", &s.field)?;
        match s.source {
            Source::Push => match &s.case_id {
                Some(p) => check_pointer("status.case_id", p)?,
                None => return Err("status.source = \"push\" needs status.case_id".into()),
            },
            Source::Poll => {
                let path = s
                    .path
                    .as_deref()
                    .ok_or("status.source = \"poll\" needs status.path")?;
                check_path("status.path", path)?;
                if !path.contains("{case_id}") {
                    return Err("status.path must name {case_id}".into());
                }
                if !s.every_seconds.is_some_and(|n| n > 0.0 && n <= 86_400.0) {
                    return Err(
                        "status.source = \"poll\" needs every_seconds between 0 and 86400".into(),
                    );
                }
            }
        }
        for (code, target) in &s.map {
            let at = format!("status.map.{code}");
            if s.ignore.contains(code) {
                return Err(format!("{at}: {code:?} is also in status.ignore"));
            }
            let Some(status) = CboStatus::parse(&target.status).filter(|c| REACHABLE.contains(c))
            else {
                return Err(format!(
                    "{at}: status {:?} is not one of {}",
                    target.status,
                    REACHABLE
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let needs = match status {
                CboStatus::Declined => Some("reason"),
                CboStatus::Closed => Some("outcome"),
                _ => None,
            };
            if let Some(member) = needs
                && target.body.as_ref().and_then(|b| b.get(member)).is_none()
            {
                return Err(format!(
                    "{at}: reaching {} needs body.{member}",
                    status.as_str()
                ));
            }
            if let Some(body) = &target.body {
                template::expressions(body).map_err(|e| format!("{at}: {e}"))?;
                self.check_maps(&at, body)?;
            }
        }
        Ok(())
    }

    fn check_maps(&self, at: &str, body: &Value) -> Result<(), String> {
        for name in template::maps_used(body).map_err(|e| format!("{at}: {e}"))? {
            if !self.maps.contains_key(&name) {
                return Err(format!(
                    "{at}: uses map {name:?}, which is not under [maps]"
                ));
            }
        }
        Ok(())
    }

    /// The request `event_type` sends, if any, and its body filled from the referral
    /// projection `view` and, once the case exists, `/case_id`; the error names the
    /// rule, the source and the target path.
    pub fn request_for(
        &self,
        event_type: &str,
        view: &Value,
        case_id: Option<&str>,
    ) -> Option<Result<(&Request, Option<Value>), String>> {
        let request = self
            .request
            .iter()
            .find(|r| r.on.iter().any(|e| e == event_type))?;
        let mut source = view.clone();
        if let (Some(case), Some(m)) = (case_id, source.as_object_mut()) {
            m.insert(CASE_ID.into(), Value::String(case.to_string()));
        }
        let body = match &request.body {
            None => Ok(None),
            Some(t) => template::render(t, &source, &self.maps)
                .map(Some)
                .map_err(|e| {
                    format!(
                        "rule {}, request {}: {} → {}: {}",
                        self.id, request.name, e.input, e.target, e.message
                    )
                }),
        };
        Some(body.map(|b| (request, b)))
    }

    /// What a case system's `message` reports, read by the status rule; `case_id` is
    /// the case when the caller knows it (a poll), else read from the message.
    pub fn report(&self, message: &Value, case_id: Option<&str>) -> Result<Report, Refused> {
        let rule = self.status.as_ref().ok_or_else(|| Refused {
            pointer: String::new(),
            message: format!("connector {} has no [status] rule", self.id),
        })?;
        let refuse = |pointer: &str, message: String| Refused {
            pointer: pointer.to_string(),
            message,
        };
        let case_id = match (case_id, &rule.case_id) {
            (Some(c), _) => c.to_string(),
            (None, Some(p)) => message.pointer(p).and_then(scalar_text).ok_or_else(|| {
                refuse(
                    p,
                    format!(
                        "is required: the case id (connector {}, status.case_id)",
                        self.id
                    ),
                )
            })?,
            (None, None) => return Err(refuse("", "no case id".into())),
        };
        let code = message
            .pointer(&rule.field)
            .and_then(scalar_text)
            .ok_or_else(|| {
                refuse(
                    &rule.field,
                    format!(
                        "is required: the case status (connector {}, status.field)",
                        self.id
                    ),
                )
            })?;
        let mut report = Report {
            case_id,
            case_status: code.clone(),
            status: None,
            body: None,
        };
        if rule.ignore.contains(&code) {
            return Ok(report);
        }
        let target = rule.map.get(&code).ok_or_else(|| {
            refuse(
                &rule.field,
                format!(
                    "case status {code:?} has no entry in status.map of connector {}",
                    self.id
                ),
            )
        })?;
        report.status = CboStatus::parse(&target.status);
        if let Some(t) = &target.body {
            report.body = Some(template::render(t, message, &self.maps).map_err(|e| {
                refuse(
                    &e.input,
                    format!(
                        "rule {}, status.map.{code}: {} → {}: {}",
                        self.id, e.input, e.target, e.message
                    ),
                )
            })?);
        }
        Ok(report)
    }

    /// Space-delimited event types, as the webhook endpoint row stores them.
    pub fn event_types(&self) -> String {
        let mut types = String::from(" ");
        for r in &self.request {
            for e in &r.on {
                types.push_str(e);
                types.push(' ');
            }
        }
        types
    }

    /// The texts in which `${NAME}`s are expanded.
    fn environment(&self) -> Vec<&str> {
        let mut texts = vec![self.base_url.as_str()];
        texts.extend(self.headers.values().map(String::as_str));
        match &self.auth {
            Auth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                ..
            } => texts.extend([token_url.as_str(), client_id, client_secret]),
            Auth::Bearer { token } => texts.push(token),
            Auth::ApiKey { value, .. } => texts.push(value),
            Auth::None => {}
        }
        texts
    }

    /// The environment variables the connector needs that are not set.
    pub fn missing_environment(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for t in self.environment() {
            if let Err(name) = expand(t)
                && !missing.contains(&name)
            {
                missing.push(name);
            }
        }
        missing
    }
}

/// https, or `${NAME}` (checked when used); plain http only to loopback, for tests.
fn check_url(what: &str, url: &str) -> Result<(), String> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|l| {
            url.strip_prefix(l)
                .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
        });
    if url.starts_with("https://") || loopback || url.starts_with("${") {
        Ok(())
    } else {
        Err(format!(
            "{what} {url:?} must be an https:// URL or ${{NAME}}"
        ))
    }
}

fn check_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{what}: path {path:?} must start with /"));
    }
    let without = path.replace("{case_id}", "");
    if without.contains(['{', '}']) {
        return Err(format!("{what}: path {path:?} may name only {{case_id}}"));
    }
    Ok(())
}

fn check_pointer(what: &str, p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "{what} {p:?} must be a JSON pointer such as /data/id"
        ))
    }
}

fn read_template(dir: &Path, file: &str) -> Result<Value, String> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {file}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{file}:{}: {e}", e.line()))
}
