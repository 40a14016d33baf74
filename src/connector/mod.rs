//! Connectors to CBO case-management systems that have their own APIs
//! (`mappings/connectors/`). A connector turns referral events into the system's own
//! requests (a JSON template over the referral projection) and the system's case
//! statuses back into CBO actions, so an organisation that already works in a case
//! system needs no integration of its own.
//!
//! Requests go through the webhook outbox: a connector is an endpoint row
//! (`connector:<id>`) with the same retries, delivery log and redelivery; the outbox
//! asks [`Connectors::deliver`] to send them. Statuses come back either pushed by the
//! system (`POST /cbo/v1/connectors/{id}/status`, [`Connectors::receive`]) or read by
//! [`Connectors::poll`]; both reach the reported status through the same state machine
//! as the organisation's own actions, with `If-Match` so a concurrent change is re-read
//! rather than overwritten.
//!
//! The file format and the template language are the mappings' (`mapping::connector`,
//! `mapping::template`); this is the runtime. [`Connectors::sync`] keeps one endpoint
//! row per connector in step with the mappings in force, at start and on SIGHUP
//! (inactive while its `${NAME}` variables are unset, retired when its file goes).
//! `Connectors` is registered with the outbox as a `Sink` for those rows: a delivery is
//! the projection, through the template, sent with the connector's authentication
//! (tokens from `oauth`) and `Idempotency-Key` = the event id; the case id that comes
//! back is kept (`connector_cases`).
//!
//! Invariants: a connector sends only what the organisation's projection shows; a
//! status change goes through the same state machine and writer as the organisation's
//! own actions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::config::expand_env as expand;
pub use crate::mapping::Spec;
use crate::mapping::connector::{Auth, Source, scalar_text};

use crate::cbo::{ActionCall, Cbo, CboError, FieldError};
use crate::config::OrganizationConfig;
use crate::mapping::Live;
use crate::outbox::Failure;
use crate::outbox::destination::url_problem;
use crate::referral::{CboStatus, action};
use crate::resource::datetime::now_micros;
use crate::store::{ConnectorEndpoint, DueDelivery, Store, StoreError};

/// Endpoint ids of connectors start with this.
const ENDPOINT_PREFIX: &str = "connector:";
/// Open cases read at once by one poll.
const POLL_CONCURRENCY: usize = 8;
/// Times a status is re-read and applied again when the referral changed meanwhile.
const CONFLICT_RETRIES: usize = 3;

pub struct Connectors {
    cbo: Cbo,
    store: Store,
    mappings: Live,
    http: reqwest::Client,
    tokens: crate::oauth::Tokens,
    allow_insecure: bool,
}

/// What a reported case status did to its referral.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Applied {
    pub case_id: String,
    pub referral_id: String,
    /// The case system's status as reported.
    pub case_status: String,
    /// The referral's status after the report.
    pub status: String,
    /// The actions taken to get there (none when it was there already, or the case
    /// status is one the connector ignores).
    pub actions: Vec<&'static str>,
}

impl Connectors {
    pub fn new(
        cbo: Cbo,
        store: Store,
        mappings: Live,
        timeout: Duration,
        allow_insecure: bool,
    ) -> Connectors {
        Connectors {
            cbo,
            store,
            mappings,
            http: crate::outbox::client(timeout),
            tokens: crate::oauth::Tokens::default(),
            allow_insecure,
        }
    }

    /// Makes the outbox's connector endpoints match the mappings in force; a connector
    /// whose environment is incomplete stays inactive (no deliveries are queued for it)
    /// and the log says which variables are missing.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let mappings = self.mappings.current();
        let mut endpoints = Vec::new();
        for spec in mappings.connectors.values() {
            let missing = spec.missing_environment();
            if missing.is_empty() {
                tracing::info!(message = "Connector active.", connector = %spec.id, organization = %spec.organization);
            } else {
                tracing::warn!(message = "Connector inactive: its environment is incomplete; no requests are queued for it.", connector = %spec.id, missing = %missing.join(", "));
            }
            endpoints.push(ConnectorEndpoint {
                id: format!("{ENDPOINT_PREFIX}{}", spec.id),
                connector: spec.id.clone(),
                organization: spec.organization.clone(),
                description: spec.description.clone(),
                event_types: spec.event_types(),
                status: if missing.is_empty() {
                    "active"
                } else {
                    "inactive"
                },
            });
        }
        self.store.sync_connectors(&endpoints, now_micros()).await
    }

    /// Sends one queued event as the connector's request for it; on success, the case
    /// id the system answered with is recorded.
    pub async fn deliver(&self, d: &DueDelivery, connector: &str) -> Result<u16, Failure> {
        let mappings = self.mappings.current();
        let spec = mappings.connectors.get(connector).ok_or_else(|| {
            Failure::new(format!("connector {connector} is no longer configured"))
        })?;
        let event = d.event.as_ref().ok_or_else(|| {
            Failure::new("the event was pruned by retention before it could be sent")
        })?;
        let view = match self.cbo.view(&spec.organization, &event.referral_id).await {
            Ok((view, _)) => view,
            Err(e) => return Err(Failure::new(format!("cannot read the referral: {e}"))),
        };
        let case = self
            .store
            .case_of(connector, &event.referral_id)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let (request, body) = spec
            .request_for(&event.event_type, &view, case.as_deref())
            .ok_or_else(|| {
                Failure::new(format!(
                    "no request of connector {connector} is sent on {}",
                    event.event_type
                ))
            })?
            .map_err(Failure::new)?;
        if request.case_id.is_some()
            && let Some(case) = &case
        {
            tracing::info!(message = "Connector create skipped: the referral already has its case.", connector, referral = %event.referral_id, case = %case);
            return Ok(200);
        }
        let path = match (request.path.contains("{case_id}"), &case) {
            (false, _) => request.path.clone(),
            (true, Some(case)) => request.path.replace("{case_id}", &encode_segment(case)),
            (true, None) => {
                return Err(Failure::new(format!(
                    "referral {} has no case in {connector} yet (its create request has not succeeded)",
                    event.referral_id
                )));
            }
        };
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| Failure::new(format!("method {} is not valid", request.method)))?;
        let answer = self
            .send(spec, method, &path, body.as_ref(), Some(&event.id))
            .await?;
        let Some(pointer) = &request.case_id else {
            return Ok(answer.0);
        };
        // The case exists now: sending the create again would open a second one, so an
        // answer without a usable case id is logged, not retried.
        let case = answer.1.pointer(pointer).and_then(scalar_text);
        let Some(case) = case.filter(|c| c != "." && c != "..") else {
            tracing::error!(message = "Connector created a case but its answer has no usable case id; statuses for it cannot be matched.", connector, referral = %event.referral_id, pointer = %pointer);
            return Ok(answer.0);
        };
        let recorded = self
            .store
            .record_case(connector, &case, &event.referral_id, now_micros())
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        if recorded != case {
            tracing::warn!(message = "Connector answered with another case for a referral that has one; the first is kept.", connector, referral = %event.referral_id, case = %case, kept = %recorded);
            return Ok(answer.0);
        }
        tracing::info!(message = "Connector created a case.", connector, referral = %event.referral_id, case = %case);
        Ok(answer.0)
    }

    /// One authenticated request to the case system: (status, JSON answer or null).
    /// A refused OAuth token is renewed and the request sent once more.
    async fn send(
        &self,
        spec: &Spec,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value), Failure> {
        let base = expand(&spec.base_url).map_err(unset)?;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        if let Some(problem) = url_problem(&url, self.allow_insecure) {
            return Err(Failure::new(format!("the connector's URL {problem}")));
        }
        let mut renewed = false;
        loop {
            let mut r = self.http.request(method.clone(), &url);
            if let Some(b) = body {
                r = r.header("content-type", "application/json").json(b);
            }
            if let Some(key) = idempotency_key {
                r = r.header("idempotency-key", key);
            }
            for (name, value) in &spec.headers {
                r = r.header(name, expand(value).map_err(unset)?);
            }
            r = match &spec.auth {
                Auth::Oauth2ClientCredentials {
                    token_url,
                    client_id,
                    client_secret,
                    scope,
                } => {
                    let token_url = expand(token_url).map_err(unset)?;
                    if let Some(problem) = url_problem(&token_url, self.allow_insecure) {
                        return Err(Failure::new(format!("the connector's token_url {problem}")));
                    }
                    let client_id = expand(client_id).map_err(unset)?;
                    let client_secret = expand(client_secret).map_err(unset)?;
                    let mut form = vec![("grant_type", "client_credentials")];
                    if let Some(scope) = scope {
                        form.push(("scope", scope.as_str()));
                    }
                    let token = self
                        .tokens
                        .get(&spec.id, || {
                            Ok(self
                                .http
                                .post(&token_url)
                                .basic_auth(&client_id, Some(&client_secret))
                                .form(&form))
                        })
                        .await
                        .map_err(Failure::new)?;
                    r.bearer_auth(token)
                }
                Auth::Bearer { token } => r.bearer_auth(expand(token).map_err(unset)?),
                Auth::ApiKey { header, value } => r.header(header, expand(value).map_err(unset)?),
                Auth::None => r,
            };
            let answer = r.send().await.map_err(|e| {
                Failure::new(if e.is_timeout() {
                    "no answer in time".to_string()
                } else {
                    format!("cannot reach the case system: {}", e.without_url())
                })
            })?;
            let status = answer.status().as_u16();
            let oauth = matches!(spec.auth, Auth::Oauth2ClientCredentials { .. });
            if status == 401 && oauth && !renewed {
                self.tokens.forget(&spec.id).await;
                renewed = true;
                continue;
            }
            if !answer.status().is_success() {
                return Err(Failure {
                    status: Some(status),
                    error: format!("the case system answered {}", answer.status()),
                });
            }
            let bytes = answer.bytes().await.map_err(|e| Failure {
                status: Some(status),
                error: format!("the answer could not be read: {}", e.without_url()),
            })?;
            let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Ok((status, json));
        }
    }

    /// A case status pushed by the system (`POST /cbo/v1/connectors/{id}/status`) for
    /// `org`, which must own the connector.
    pub async fn receive(
        &self,
        org: &OrganizationConfig,
        connector: &str,
        body: &[u8],
    ) -> Result<Applied, CboError> {
        let mappings = self.mappings.current();
        let spec = mappings
            .connectors
            .get(connector)
            .filter(|s| s.organization == org.id)
            .ok_or_else(|| {
                CboError::Unknown(format!("this organisation has no connector {connector:?}"))
            })?;
        if !spec
            .status
            .as_ref()
            .is_some_and(|s| s.source == Source::Push)
        {
            return Err(CboError::Unknown(format!(
                "connector {connector} takes no pushed statuses (its [status] rule is not source = \"push\")"
            )));
        }
        let message: Value = serde_json::from_slice(body).map_err(|e| {
            CboError::Validation(vec![FieldError::body("", format!("not JSON: {e}"))])
        })?;
        self.apply(spec, org, &message, None).await
    }

    /// Moves the referral of the reported case to where the case system's `message`
    /// says the case is, by the fewest CBO actions; nothing when it is there already.
    async fn apply(
        &self,
        spec: &Spec,
        org: &OrganizationConfig,
        message: &Value,
        case: Option<&str>,
    ) -> Result<Applied, CboError> {
        let report = spec
            .report(message, case)
            .map_err(|r| CboError::Validation(vec![FieldError::body(r.pointer, r.message)]))?;
        let referral_id = self
            .store
            .referral_of_case(&spec.id, &report.case_id)
            .await?;
        // An ignored status needs no case: a system may report "new" before the create's
        // answer is recorded.
        if report.status.is_none() && referral_id.is_none() {
            return Ok(Applied {
                case_id: report.case_id,
                referral_id: String::new(),
                case_status: report.case_status,
                status: String::new(),
                actions: Vec::new(),
            });
        }
        let referral_id = referral_id.ok_or_else(|| {
            CboError::Unknown(format!(
                "connector {} opened no case {:?}",
                spec.id, report.case_id
            ))
        })?;
        let mut applied = Applied {
            case_id: report.case_id.clone(),
            referral_id,
            case_status: report.case_status.clone(),
            status: String::new(),
            actions: Vec::new(),
        };
        let field = spec
            .status
            .as_ref()
            .map(|s| s.field.clone())
            .unwrap_or_default();
        let Some(to) = report.status else {
            let (view, _) = self.cbo.view(&org.id, &applied.referral_id).await?;
            applied.status = view["status"].as_str().unwrap_or_default().to_string();
            return Ok(applied);
        };
        let last_body = report
            .body
            .map_or_else(|| "{}".to_string(), |b| b.to_string());
        // The body of the last step is checked before the first, so a report is applied
        // whole or not at all.
        if let Some(last) = action::route(CboStatus::Pending, to).and_then(|s| s.last().copied()) {
            crate::cbo::parse_action(last, last_body.as_bytes())?;
        }
        let mut conflicts = 0;
        'fresh: loop {
            let (view, mut version) = self.cbo.view(&org.id, &applied.referral_id).await?;
            let from = view["status"]
                .as_str()
                .and_then(CboStatus::parse)
                .ok_or(CboError::NotFound)?;
            applied.status = from.as_str().to_string();
            // A report behind the referral (the system says accepted, the referral is
            // already in progress) is old news, not an error.
            if action::route(from, to).is_none() && action::route(to, from).is_some() {
                return Ok(applied);
            }
            let steps = action::route(from, to).ok_or_else(|| {
                CboError::Validation(vec![FieldError::body(
                    field.clone(),
                    format!(
                        "case status {:?} means {}, which a referral that is {} cannot reach",
                        report.case_status,
                        to.as_str(),
                        from.as_str()
                    ),
                )])
            })?;
            for (i, step) in steps.iter().enumerate() {
                let body = if i + 1 == steps.len() {
                    last_body.as_bytes()
                } else {
                    b"{}".as_slice()
                };
                let etag = format!("\"{version}\"");
                let call = ActionCall {
                    referral_id: &applied.referral_id,
                    action: step,
                    body,
                    if_match: Some(&etag),
                    idempotency_key: None,
                };
                match self.cbo.act(org, call).await {
                    Ok(answer) => {
                        let view: Value = serde_json::from_str(&answer.body).unwrap_or_default();
                        version = view["version"].as_i64().unwrap_or(version + 1);
                        applied.actions.push(step);
                        applied.status = view["status"].as_str().unwrap_or_default().to_string();
                    }
                    Err(CboError::VersionConflict { .. }) if conflicts < CONFLICT_RETRIES => {
                        conflicts += 1;
                        continue 'fresh;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !applied.actions.is_empty() {
                tracing::info!(message = "Connector case status applied.", connector = %spec.id, case = %applied.case_id, referral = %applied.referral_id, case_status = %applied.case_status, status = %applied.status);
            }
            return Ok(applied);
        }
    }

    /// Reads the status of every open case of each polling connector, each at its own
    /// interval, until `shutdown`.
    pub async fn poll(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let mappings = self.mappings.current();
            for spec in mappings.connectors.values() {
                let Some(rule) = spec.status.as_ref().filter(|s| s.source == Source::Poll) else {
                    continue;
                };
                if !spec.missing_environment().is_empty()
                    || due.get(&spec.id).is_some_and(|at| Instant::now() < *at)
                {
                    continue;
                }
                let every = Duration::from_secs_f64(rule.every_seconds.unwrap_or(300.0));
                due.insert(spec.id.clone(), Instant::now() + every);
                self.poll_once(spec).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One round over `spec`'s open cases; failures are logged once per round.
    async fn poll_once(&self, spec: &Spec) {
        let Some(org) = self.cbo.tenant(&spec.organization) else {
            return;
        };
        let Some(path) = spec.status.as_ref().and_then(|s| s.path.as_deref()) else {
            return;
        };
        let cases = match self.store.open_cases(&spec.id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(message = "Connector poll cannot read its cases.", connector = %spec.id, error = %e);
                return;
            }
        };
        let results: Vec<(String, Result<Applied, String>)> = futures_util::stream::iter(cases)
            .map(|case| {
                let org = &org;
                async move {
                    let path = path.replace("{case_id}", &encode_segment(&case));
                    let result = match self
                        .send(spec, reqwest::Method::GET, &path, None, None)
                        .await
                    {
                        Ok((_, message)) => self
                            .apply(spec, org, &message, Some(&case))
                            .await
                            .map_err(|e| e.to_string()),
                        Err(f) => Err(f.error),
                    };
                    (case, result)
                }
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        let failed: Vec<&(String, Result<Applied, String>)> =
            results.iter().filter(|(_, r)| r.is_err()).collect();
        if let Some((case, Err(error))) = failed.first() {
            tracing::warn!(message = "Connector poll: some case statuses could not be applied.", connector = %spec.id, failed = failed.len(), of = results.len(), case = %case, error = %error);
        }
    }
}

fn unset(name: String) -> Failure {
    Failure::new(format!("the environment variable {name} is not set"))
}

/// A case id as one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl crate::outbox::Sink for Connectors {
    fn takes(&self, d: &DueDelivery) -> bool {
        d.connector.is_some()
    }

    fn deliver<'a>(
        &'a self,
        d: &'a DueDelivery,
    ) -> futures_util::future::BoxFuture<'a, Result<u16, Failure>> {
        Box::pin(async move {
            let connector = d.connector.as_deref().unwrap_or_default();
            Connectors::deliver(self, d, connector).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_are_one_path_segment() {
        assert_eq!(encode_segment("c-12_3.x~"), "c-12_3.x~");
        assert_eq!(encode_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
