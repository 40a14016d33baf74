//! Coordination-platform mode: the SDOH Clinical Care IG's indirect referral pattern,
//! for an EHR that keeps its referral Tasks on its own FHIR server. For each configured
//! `[[ehr_server]]` the [`Coordinator`] polls
//! `Task?owner=<us>&_lastUpdated=gt…&_include=Task:focus&_include=Task:patient`, makes
//! each new requested Task a local referral (a copy of its Patient and of its requester,
//! a filler ServiceRequest `basedOn` its own, and the gateway's Task `partOf` the
//! EHR's, owned by the CBO it routes to), and writes what the owner side changes —
//! status, statusReason, businessStatus, notes and outputs added — back into the EHR's
//! current Task with `If-Match`, reading it again on 412. A Task the EHR cancels, or
//! deletes, is cancelled here too (the referrer's withdrawal).
//!
//! Nothing is missed: the poll asks from the persisted watermark less an overlap window
//! (a commit can land after a poll with an earlier timestamp), skips versions it has
//! handled, and every `reconcile` interval searches without `_lastUpdated` and reads
//! each open link's Task by id. Nothing stalls: each Task's write-back fails on its
//! own, with its own backoff and the server's diagnostics (`crossway ehr stuck`).
//!
//! State lives in the store (`ehr_links`, `ehr_watermarks`), so a restart, or a second
//! gateway process, picks up where the first stopped: creation is conditional on the
//! Task's identifier, and a push that finds the EHR already up to date only records it.
//!
//! The EHR's JSON is read and written as JSON (never through typed models, which would
//! drop elements the EHR sent); the gateway authenticates with SMART Backend Services,
//! a client assertion signed with its own key (published at `/.well-known/jwks.json`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::Authority;
use crate::config::{EhrServerConfig, expand_env};
use crate::fhir::FhirError;
use crate::fhir::engine::Fhir;
use crate::outbox::destination::url_problem;
use crate::referral::TaskStatus;
use crate::resource::datetime::{format_instant, now_micros, parse_range};
use crate::store::StoreError;
use crate::telemetry::metrics::{EHR_TASKS_GONE, EHR_WRITEBACK_FAILURES};

const TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";
/// Writes back retried after a 412 before the next cycle tries again.
const CONFLICT_RETRIES: usize = 5;
/// Links pushed per cycle and server.
const PUSH_BATCH: i64 = 100;
/// The longest wait between two write-back attempts of one Task.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The most of a server's diagnostics kept with an error.
const DIAGNOSTICS_LIMIT: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum EhrError {
    #[error("the environment variable {0} is not set")]
    Unset(String),
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the EHR: {0}")]
    Unreachable(String),
    #[error("the EHR answered {status} to {what}{}", .diagnostics.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status {
        status: u16,
        what: String,
        /// The OperationOutcome's diagnostics (or details text), when it sent one.
        diagnostics: Option<String>,
    },
    #[error("the EHR sent {0}")]
    Invalid(String),
    #[error("the local referral could not be written: {0}")]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EhrError {
    /// 410 always means deleted; 404 only when the same server answered a search in
    /// this cycle (a wrong base URL must not look like every Task deleted).
    fn gone(&self, base_answers: bool) -> bool {
        match self {
            EhrError::Status { status: 410, .. } => true,
            EhrError::Status { status: 404, .. } => base_answers,
            _ => false,
        }
    }

    /// A bounded metric label.
    fn label(&self) -> &'static str {
        match self {
            EhrError::Status { status: 401, .. } => "401",
            EhrError::Status { status: 403, .. } => "403",
            EhrError::Status { status: 412, .. } => "412",
            EhrError::Status {
                status: 400..=499, ..
            } => "4xx",
            EhrError::Status { .. } => "5xx",
            EhrError::Unreachable(_) => "unreachable",
            EhrError::Invalid(_) => "invalid",
            EhrError::Unset(_) | EhrError::Config(_) => "config",
            EhrError::Fhir(_) | EhrError::Store(_) => "local",
        }
    }
}

/// How often things happen.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between cycles (poll, then push).
    pub interval: Duration,
    /// Per request to the EHR.
    pub timeout: Duration,
    /// How far before the watermark each poll asks again.
    pub overlap: Duration,
    /// Between full reconciliations.
    pub reconcile: Duration,
}

pub struct Coordinator {
    fhir: Fhir,
    servers: Vec<EhrServerConfig>,
    http: reqwest::Client,
    tokens: crate::oauth::Tokens,
    auth: Arc<Authority>,
    /// Our `/fhir` base, for references the EHR follows back (Task.output, note authors).
    our_base: String,
    timing: Timing,
    allow_insecure: bool,
    /// Per server: Tasks that could not be taken on, read again by id each cycle (the
    /// watermark moves on without them; a reconciliation finds them after a restart).
    retry: Mutex<HashMap<String, HashSet<String>>>,
}

/// An answer read from the EHR: its JSON and its version (ETag or meta.versionId).
struct Read {
    body: Value,
    version: Option<String>,
}

impl Coordinator {
    pub fn new(
        fhir: Fhir,
        servers: Vec<EhrServerConfig>,
        auth: Arc<Authority>,
        our_base: String,
        timing: Timing,
        allow_insecure: bool,
    ) -> Coordinator {
        Coordinator {
            fhir,
            servers,
            http: crate::outbox::client(timing.timeout),
            tokens: crate::oauth::Tokens::default(),
            auth,
            our_base: our_base.trim_end_matches('/').to_string(),
            timing,
            allow_insecure,
            retry: Mutex::default(),
        }
    }

    /// Polls and pushes every `interval` until `shutdown`; an EHR whose environment is
    /// incomplete is skipped (and said so once).
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        for s in &self.servers {
            match self.missing_environment(s) {
                None => {
                    tracing::info!(message = "EHR server coordination active.", ehr = %s.id)
                }
                Some(name) => {
                    tracing::warn!(message = "EHR server coordination inactive: its environment is incomplete.", ehr = %s.id, missing = %name)
                }
            }
        }
        loop {
            for s in &self.servers {
                if self.missing_environment(s).is_some() {
                    continue;
                }
                if let Err(e) = self.cycle(s).await {
                    tracing::warn!(message = "EHR server poll failed; retrying at the next cycle.", ehr = %s.id, error = %e);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn missing_environment(&self, s: &EhrServerConfig) -> Option<String> {
        [&s.base_url, &s.token_url, &s.client_id]
            .into_iter()
            .find_map(|t| expand_env(t).err())
    }

    /// One poll for new, changed and gone Tasks, then one push of local changes; the
    /// error is the poll's (each write-back's failure is recorded with its link).
    pub async fn cycle(&self, s: &EhrServerConfig) -> Result<(), EhrError> {
        // A failed poll does not hold back the write-backs.
        let pulled = self.pull(s).await;
        let pushed = self.push(s, pulled.is_ok()).await;
        pulled.and(pushed)
    }

    async fn pull(&self, s: &EhrServerConfig) -> Result<(), EhrError> {
        let base = base_url(s)?;
        let started = now_micros();
        let mark = self.fhir.store().ehr_watermark(&s.id).await?;
        let reconcile = mark
            .is_none_or(|m| started - m.reconciled_at >= self.timing.reconcile.as_micros() as i64);
        let mut query = vec![
            ("owner", s.owner.clone()),
            ("_include", "Task:focus".into()),
            ("_include", "Task:patient".into()),
            ("_count", "50".into()),
        ];
        if let Some(m) = mark.filter(|m| !reconcile && m.last_updated > 0) {
            let from = m.last_updated - self.timing.overlap.as_micros() as i64;
            query.push(("_lastUpdated", format!("gt{}", format_instant(from))));
        }
        let first = reqwest::Url::parse_with_params(&format!("{base}/Task"), &query)
            .map_err(|e| EhrError::Config(format!("base_url {base:?}: {e}")))?;
        self.retry_failed(s, &base).await;
        let mut next = Some(first.to_string());
        let mut newest = mark.map_or(0, |m| m.last_updated);
        let mut seen = HashSet::new();
        while let Some(url) = next.take() {
            let page = self.get(s, &url).await?.body;
            let entries = page["entry"].as_array().cloned().unwrap_or_default();
            let included: HashMap<String, Value> = entries
                .iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some((
                        format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?),
                        r.clone(),
                    ))
                })
                .collect();
            for task in entries
                .iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] == "Task")
            {
                if let Some(at) = task
                    .pointer("/meta/lastUpdated")
                    .and_then(Value::as_str)
                    .and_then(parse_range)
                {
                    newest = newest.max(at.lo);
                }
                if let Some(id) = task["id"].as_str() {
                    seen.insert(id.to_string());
                }
                // One Task the gateway cannot take on does not stop the others.
                if let Err(e) = self.take(s, &base, task, &included).await {
                    tracing::warn!(message = "EHR Task not taken on; it is read again at the next poll.", ehr = %s.id, remote_task = %task["id"], error = %e);
                    if let Some(id) = task["id"].as_str() {
                        self.retries(|r| {
                            r.entry(s.id.clone()).or_default().insert(id.to_string());
                        });
                    }
                }
            }
            next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_string);
            // Our token goes only to the EHR's own base.
            if let Some(url) = &next
                && !url.starts_with(&format!("{base}/"))
            {
                return Err(EhrError::Invalid(format!(
                    "a next link outside its base ({url})"
                )));
            }
        }
        if reconcile {
            self.reconcile(s, &base, &seen).await;
        }
        self.fhir
            .store()
            .set_ehr_watermark(&s.id, newest, reconcile.then_some(started))
            .await?;
        Ok(())
    }

    /// Reads again, by id, every open link's Task that a full search did not return
    /// (deleted, or no longer ours): gone ones withdraw their referral.
    async fn reconcile(&self, s: &EhrServerConfig, base: &str, seen: &HashSet<String>) {
        let links = match self.fhir.store().ehr_open_links(&s.id).await {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!(message = "EHR reconciliation skipped: the links could not be read.", ehr = %s.id, error = %e);
                return;
            }
        };
        for (remote, local) in links.into_iter().filter(|(r, _)| !seen.contains(r)) {
            let outcome = match self.get(s, &format!("{base}/Task/{remote}")).await {
                Ok(task) => self.take(s, base, &task.body, &HashMap::new()).await,
                Err(e) if e.gone(true) => self.gone(s, &remote, &local).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(message = "EHR Task not reconciled; tried again at the next reconciliation.", ehr = %s.id, remote_task = %remote, error = %e);
            }
        }
    }

    fn retries<T>(&self, f: impl FnOnce(&mut HashMap<String, HashSet<String>>) -> T) -> T {
        f(&mut self
            .retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Reads each Task that failed before again, by id, and tries it once more.
    async fn retry_failed(&self, s: &EhrServerConfig, base: &str) {
        let ids: Vec<String> =
            self.retries(|r| r.get(&s.id).into_iter().flatten().cloned().collect());
        for id in ids {
            let outcome = match self.get(s, &format!("{base}/Task/{id}")).await {
                Ok(task) => self.take(s, base, &task.body, &HashMap::new()).await,
                // Deleted before it was taken on: nothing to do.
                Err(e) if e.gone(false) => Ok(()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    self.retries(|r| r.entry(s.id.clone()).or_default().remove(&id));
                }
                Err(e) => {
                    tracing::info!(message = "EHR Task still not taken on.", ehr = %s.id, remote_task = %id, error = %e)
                }
            }
        }
    }

    /// A Task the EHR assigned to us: a new requested one becomes a local referral; a
    /// linked one the EHR cancelled is cancelled here. A version already handled (the
    /// poll's overlap window returns it again) is skipped.
    async fn take(
        &self,
        s: &EhrServerConfig,
        base: &str,
        task: &Value,
        included: &HashMap<String, Value>,
    ) -> Result<(), EhrError> {
        let remote_id = task["id"]
            .as_str()
            .ok_or_else(|| EhrError::Invalid("a Task without an id".into()))?;
        let status = task["status"].as_str().unwrap_or("");
        let version = task.pointer("/meta/versionId").and_then(Value::as_str);
        match self.fhir.store().ehr_link(&s.id, remote_id).await? {
            Some(link) if link.gone => Ok(()),
            Some(link) if version.is_some() && link.remote_version.as_deref() == version => Ok(()),
            Some(link) => {
                if matches!(status, "cancelled" | "entered-in-error") {
                    let reason = if task["statusReason"].is_null() {
                        json!({"text": "Cancelled by the referring organisation"})
                    } else {
                        task["statusReason"].clone()
                    };
                    self.cancel_local(&link.local_task, reason).await?;
                }
                if let Some(v) = version {
                    self.fhir.store().ehr_seen(&s.id, remote_id, v).await?;
                }
                Ok(())
            }
            None if matches!(status, "requested" | "received") => {
                let focus = self.related(s, base, task, "focus", included).await?;
                let patient = self.related(s, base, task, "for", included).await?;
                self.adopt(s, base, task, &focus, &patient).await
            }
            None => Ok(()),
        }
    }

    /// The EHR's Task is gone (404/410): the referral ends for the CBO as the
    /// referrer's withdrawal, and nothing more is written back to it.
    async fn gone(&self, s: &EhrServerConfig, remote: &str, local: &str) -> Result<(), EhrError> {
        self.cancel_local(
            local,
            json!({"text": "Withdrawn by the referring organisation: its Task was deleted"}),
        )
        .await?;
        self.fhir
            .store()
            .ehr_gone(&s.id, remote, now_micros())
            .await?;
        metrics::counter!(EHR_TASKS_GONE, "ehr" => s.id.clone()).increment(1);
        tracing::info!(message = "The EHR's Task is gone; the referral is withdrawn.", ehr = %s.id, remote_task = %remote, task = %local);
        Ok(())
    }

    /// The resource `task.<element>` references: from the page's includes, else read.
    async fn related(
        &self,
        s: &EhrServerConfig,
        base: &str,
        task: &Value,
        element: &str,
        included: &HashMap<String, Value>,
    ) -> Result<Value, EhrError> {
        let reference = task[element]["reference"].as_str().ok_or_else(|| {
            EhrError::Invalid(format!("Task/{} without {element}.reference", task["id"]))
        })?;
        let relative = reference
            .strip_prefix(base)
            .map_or(reference, |r| r.trim_start_matches('/'));
        if let Some(r) = included.get(relative) {
            return Ok(r.clone());
        }
        if relative.contains("://") {
            return Err(EhrError::Invalid(format!(
                "Task.{element} {reference:?} outside its base: the gateway's token is not sent elsewhere"
            )));
        }
        let url = format!("{base}/{relative}");
        Ok(self.get(s, &url).await?.body)
    }

    /// The requester as local copies (PractitionerRole with its Practitioner and
    /// Organization, or an Organization), so that the CBO sees it like a local one:
    /// transaction entries and the reference for the local Task. One that cannot be
    /// read stays an absolute reference to the EHR (the referral is taken on anyway).
    async fn requester(
        &self,
        s: &EhrServerConfig,
        base: &str,
        task: &Value,
        system: &str,
    ) -> (Vec<Value>, Value) {
        let fallback = absolute(&task["requester"], base);
        let mut entries = Vec::new();
        let Some(role) = self
            .copy_of(
                s,
                base,
                &task["requester"],
                system,
                "urn:uuid:requester",
                &mut entries,
            )
            .await
        else {
            return (entries, fallback);
        };
        if role["resourceType"] == "PractitionerRole" {
            for element in ["practitioner", "organization"] {
                let full_url = format!("urn:uuid:requester-{element}");
                if self
                    .copy_of(s, base, &role[element], system, &full_url, &mut entries)
                    .await
                    .is_some()
                {
                    entries[0]["resource"][element]["reference"] = json!(full_url);
                }
            }
        }
        let mut reference = json!({"reference": "urn:uuid:requester"});
        if let Some(display) = task.pointer("/requester/display") {
            reference["display"] = display.clone();
        }
        (entries, reference)
    }

    /// Reads the EHR resource `reference` points at (a PractitionerRole, Practitioner
    /// or Organization on its base) and adds a conditional create of its copy.
    async fn copy_of(
        &self,
        s: &EhrServerConfig,
        base: &str,
        reference: &Value,
        system: &str,
        full_url: &str,
        entries: &mut Vec<Value>,
    ) -> Option<Value> {
        let r = reference["reference"].as_str()?;
        let relative = r
            .strip_prefix(base)
            .map_or(r, |r| r.trim_start_matches('/'));
        let (ty, id) = relative.split_once('/')?;
        if !matches!(ty, "PractitionerRole" | "Practitioner" | "Organization")
            || id.is_empty()
            || id.contains(['/', ':', '?', '#'])
        {
            return None;
        }
        let read = match self.get(s, &format!("{base}/{ty}/{id}")).await {
            Ok(read) if read.body["resourceType"] == ty => read.body,
            Ok(_) => return None,
            Err(e) => {
                tracing::info!(message = "The EHR's requester could not be read; the CBO sees its reference only.", ehr = %s.id, resource = %ty, error = %e);
                return None;
            }
        };
        let mut resource = copy(&read, base);
        push_identifier(&mut resource, system, &format!("{ty}/{id}"));
        entries.push(json!({
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "POST", "url": ty,
                "ifNoneExist": format!("identifier={system}|{ty}/{id}")},
        }));
        Some(read)
    }

    /// The EHR's own merges, as links between our copies: a `replaces` or `replaced-by`
    /// link to a Patient of the EHR we hold a copy of becomes a link to that copy, so
    /// the engine merges the two persons as for any Patient.link. Links to Patients we
    /// never copied say nothing about anyone here and are left out.
    async fn merging_links(
        &self,
        system: &str,
        base: &str,
        patient: &Value,
    ) -> Result<Vec<Value>, EhrError> {
        let mut out = Vec::new();
        for link in patient["link"].as_array().into_iter().flatten() {
            let kind = link["type"].as_str().unwrap_or_default();
            if !matches!(kind, "replaces" | "replaced-by") {
                continue;
            }
            let Some(other) = link["other"]["reference"].as_str() else {
                continue;
            };
            let remote = other
                .strip_prefix(base)
                .unwrap_or(other)
                .trim_start_matches('/');
            if !remote.starts_with("Patient/") || remote.matches('/').count() != 1 {
                continue;
            }
            let query = crate::fhir::search::parse_query(
                "Patient",
                &[("identifier".into(), format!("{system}|{remote}"))],
                false,
            )
            .map_err(|e| EhrError::Invalid(e.to_string()))?;
            let page = self.fhir.store().search(&query).await?;
            if let Some(copy) = page.matches.first() {
                out.push(
                    json!({"other": {"reference": format!("Patient/{}", copy.id)}, "type": kind}),
                );
            }
        }
        Ok(out)
    }

    /// Creates the local referral for `task` in one transaction: the Patient (once per
    /// identifier), the requester, the ServiceRequest and the gateway's Task, each
    /// conditional so that a repeated poll, or another process, makes them once.
    async fn adopt(
        &self,
        s: &EhrServerConfig,
        base: &str,
        task: &Value,
        focus: &Value,
        patient: &Value,
    ) -> Result<(), EhrError> {
        let remote_id = task["id"].as_str().unwrap_or_default();
        let system = format!("urn:crossway:ehr-server:{}", s.id);
        let mut patient_copy = copy(patient, base);
        let remote_patient = format!("Patient/{}", patient["id"].as_str().unwrap_or(""));
        let patient_condition = patient["identifier"][0]["system"]
            .as_str()
            .zip(patient["identifier"][0]["value"].as_str())
            .map(|(sys, val)| format!("identifier={sys}|{val}"))
            .or_else(|| Some(format!("identifier={system}|{remote_patient}")));
        push_identifier(&mut patient_copy, &system, &remote_patient);
        let links = self.merging_links(&system, base, patient).await?;
        match patient_copy.as_object_mut() {
            Some(p) if links.is_empty() => drop(p.remove("link")),
            Some(p) => drop(p.insert("link".into(), Value::Array(links))),
            None => {}
        }
        // The IG's filler request: ours, `basedOn` theirs.
        let mut sr = copy(focus, base);
        sr["subject"] = json!({"reference": "urn:uuid:patient"});
        sr["intent"] = json!("filler-order");
        sr["basedOn"] = json!([{"reference": format!("{base}/ServiceRequest/{}", focus["id"].as_str().unwrap_or(""))}]);
        push_identifier(
            &mut sr,
            &system,
            &format!("ServiceRequest/{}", focus["id"].as_str().unwrap_or("")),
        );
        let (requester_entries, requester) = self.requester(s, base, task, &system).await;
        if requester["reference"] == "urn:uuid:requester" {
            sr["requester"] = requester.clone();
        }
        let mut local = json!({
            "resourceType": "Task",
            "meta": {"profile": [TASK_PROFILE]},
            "identifier": [{"system": system, "value": format!("Task/{remote_id}")}],
            "partOf": [{"reference": format!("{base}/Task/{remote_id}")}],
            "status": "requested",
            "intent": "order",
            "code": task["code"],
            "focus": {"reference": "urn:uuid:service-request"},
            "for": {"reference": "urn:uuid:patient"},
            "authoredOn": task["authoredOn"],
            "requester": requester,
            "owner": {"reference": format!("Organization/{}", s.route_to)},
        });
        for element in ["priority", "restriction", "description"] {
            if !task[element].is_null() {
                local[element] = absolute(&task[element], base);
            }
        }
        let entry = |full_url: &str, resource: Value, condition: Option<String>| {
            let mut request = json!({"method": "POST", "url": resource["resourceType"]});
            if let Some(c) = condition {
                request["ifNoneExist"] = json!(c);
            }
            json!({"fullUrl": full_url, "resource": resource, "request": request})
        };
        let mut entries = vec![
            entry("urn:uuid:patient", patient_copy, patient_condition),
            entry(
                "urn:uuid:service-request",
                sr,
                Some(format!(
                    "identifier={system}|ServiceRequest/{}",
                    focus["id"].as_str().unwrap_or("")
                )),
            ),
            entry(
                "urn:uuid:task",
                local,
                Some(format!("identifier={system}|Task/{remote_id}")),
            ),
        ];
        entries.extend(requester_entries);
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let answer = self
            .fhir
            .bundle(bundle, &self.our_base, false, None)
            .await?;
        let answer: Value = serde_json::from_str(&answer).unwrap_or_default();
        let location = answer["entry"][2]["response"]["location"]
            .as_str()
            .unwrap_or_default();
        let mut parts = location.split('/');
        let (Some("Task"), Some(local_id), Some("_history"), Some(version)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(EhrError::Invalid(format!(
                "a transaction answer without the Task's location: {location:?}"
            )));
        };
        let version: i64 = version.parse().unwrap_or(1);
        let remote_version = task.pointer("/meta/versionId").and_then(Value::as_str);
        self.fhir
            .store()
            .link_ehr_task(
                &s.id,
                remote_id,
                local_id,
                version,
                remote_version,
                now_micros(),
            )
            .await?;
        tracing::info!(message = "EHR Task taken on as a referral.", ehr = %s.id, remote_task = remote_id, task = local_id, organization = %s.route_to);
        Ok(())
    }

    /// The referrer withdrew (cancelled or deleted its Task): the local one is
    /// cancelled too, which the CBO sees as `referral.cancelled`. An ended referral
    /// stays as it is.
    async fn cancel_local(&self, local_id: &str, reason: Value) -> Result<(), EhrError> {
        let stored = self.fhir.read("Task", local_id).await?;
        let mut local: Value = serde_json::from_str(&stored.body).unwrap_or_default();
        let status = local["status"].as_str().and_then(TaskStatus::parse);
        if status.is_none_or(|s| !s.can_move_to(TaskStatus::Cancelled)) {
            return Ok(());
        }
        local["status"] = json!("cancelled");
        local["statusReason"] = reason;
        let etag = format!("W/\"{}\"", stored.version);
        self.fhir
            .update("Task", local_id, local, Some(&etag), None)
            .await?;
        Ok(())
    }

    /// Writes each changed local Task back to its EHR Task. Each Task stands alone: a
    /// failure is recorded on its link (backoff, the server's diagnostics) and the
    /// others go on; a gone Task withdraws its referral.
    async fn push(&self, s: &EhrServerConfig, base_answers: bool) -> Result<(), EhrError> {
        let base = base_url(s)?;
        let now = now_micros();
        for u in self.fhir.store().unpushed(&s.id, now, PUSH_BATCH).await? {
            let outcome = match self.push_one(s, &base, &u).await {
                Err(e) if e.gone(base_answers) => self.gone(s, &u.remote_task, &u.local_task).await,
                other => other,
            };
            let Err(e) = outcome else { continue };
            let failures = u.failures + 1;
            let delay = backoff(self.timing.interval, failures);
            metrics::counter!(EHR_WRITEBACK_FAILURES, "ehr" => s.id.clone(), "status" => e.label())
                .increment(1);
            tracing::warn!(message = "EHR write-back failed; this Task is tried again after its backoff, the others go on.", ehr = %s.id, remote_task = %u.remote_task, task = %u.local_task, failures, retry_in_s = delay.as_secs(), error = %e);
            self.fhir
                .store()
                .push_failed(
                    &s.id,
                    &u.remote_task,
                    now,
                    now + delay.as_micros() as i64,
                    &e.to_string(),
                )
                .await?;
        }
        Ok(())
    }

    /// Reads the EHR's current Task, applies the owner side's changes to it and sends
    /// that with `If-Match`; on 412 the same again from a fresh read.
    async fn push_one(
        &self,
        s: &EhrServerConfig,
        base: &str,
        u: &crate::store::ehr::Unpushed,
    ) -> Result<(), EhrError> {
        let stored = self.fhir.read("Task", &u.local_task).await?;
        let local: Value = serde_json::from_str(&stored.body).unwrap_or_default();
        let url = format!("{base}/Task/{}", u.remote_task);
        let mut conflicts = 0;
        loop {
            let remote = self.get(s, &url).await?;
            // What the EHR ended stays ended: its cancellation reaches us on the poll;
            // our later status is not written over it.
            let ended = remote.body["status"]
                .as_str()
                .and_then(TaskStatus::parse)
                .is_some_and(|t| t.next_statuses().iter().all(|n| *n == "entered-in-error"));
            if ended && remote.body["status"] != local["status"] {
                tracing::info!(message = "The EHR's Task is closed there; the gateway's change is not written over it.", ehr = %s.id, remote_task = %u.remote_task, remote_status = %remote.body["status"], status = %local["status"]);
                break;
            }
            let merged = merge(&remote.body, &local, &self.our_base);
            if merged == remote.body {
                break;
            }
            let Some(version) = remote.version.as_deref() else {
                return Err(EhrError::Invalid(format!(
                    "Task/{} without a version (ETag or meta.versionId): it cannot be updated safely",
                    u.remote_task
                )));
            };
            match self.put(s, &url, &merged, version).await {
                Ok(()) => {
                    tracing::info!(message = "Referral change written back to the EHR.", ehr = %s.id, remote_task = %u.remote_task, status = %merged["status"]);
                    break;
                }
                Err(EhrError::Status { status: 412, .. }) if conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(message = "The EHR's Task changed meanwhile; reading it again.", ehr = %s.id, remote_task = %u.remote_task);
                }
                Err(e) => return Err(e),
            }
        }
        self.fhir
            .store()
            .pushed(&s.id, &u.remote_task, stored.version)
            .await?;
        Ok(())
    }

    async fn token(&self, s: &EhrServerConfig) -> Result<String, EhrError> {
        let token_url = expand_env(&s.token_url).map_err(EhrError::Unset)?;
        let client_id = expand_env(&s.client_id).map_err(EhrError::Unset)?;
        self.tokens
            .get(&s.id, || {
                let now = now_micros() / 1_000_000;
                let claims = json!({
                    "iss": client_id, "sub": client_id, "aud": token_url,
                    "iat": now, "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string(),
                });
                let assertion = self.auth.keys().sign(&claims).map_err(|e| e.to_string())?;
                Ok(self.http.post(&token_url).form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", s.scope.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                ]))
            })
            .await
            .map_err(EhrError::Config)
    }

    /// An authenticated request; a refused token is renewed and the request sent once
    /// more.
    async fn send(
        &self,
        s: &EhrServerConfig,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, EhrError> {
        let mut renewed = false;
        loop {
            let token = self.token(s).await?;
            let answer = build(&self.http)
                .bearer_auth(token)
                .header("accept", "application/fhir+json")
                .send()
                .await
                .map_err(|e| EhrError::Unreachable(e.without_url().to_string()))?;
            if answer.status() == 401 && !renewed {
                self.tokens.forget(&s.id).await;
                renewed = true;
                continue;
            }
            if !answer.status().is_success() {
                let status = answer.status().as_u16();
                let body = answer.bytes().await.unwrap_or_default();
                return Err(EhrError::Status {
                    status,
                    what: what.to_string(),
                    diagnostics: diagnostics(&body),
                });
            }
            return Ok(answer);
        }
    }

    async fn get(&self, s: &EhrServerConfig, url: &str) -> Result<Read, EhrError> {
        self.check(url)?;
        let answer = self.send(s, |h| h.get(url), "a read").await?;
        let etag = answer
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = answer
            .json()
            .await
            .map_err(|e| EhrError::Invalid(format!("a body that is not JSON: {e}")))?;
        let version = etag.or_else(|| {
            body.pointer("/meta/versionId")
                .and_then(Value::as_str)
                .map(|v| format!("W/\"{v}\""))
        });
        Ok(Read { body, version })
    }

    async fn put(
        &self,
        s: &EhrServerConfig,
        url: &str,
        body: &Value,
        version: &str,
    ) -> Result<(), EhrError> {
        self.check(url)?;
        let text = body.to_string();
        self.send(
            s,
            |h| {
                h.put(url)
                    .header("content-type", "application/fhir+json")
                    .header("if-match", version)
                    .body(text.clone())
            },
            "an update",
        )
        .await?;
        Ok(())
    }

    fn check(&self, url: &str) -> Result<(), EhrError> {
        match url_problem(url, self.allow_insecure) {
            Some(problem) => Err(EhrError::Config(format!("the EHR's URL {problem}"))),
            None => Ok(()),
        }
    }
}

fn base_url(s: &EhrServerConfig) -> Result<String, EhrError> {
    Ok(expand_env(&s.base_url)
        .map_err(EhrError::Unset)?
        .trim_end_matches('/')
        .to_string())
}

/// A resource of the EHR as a new local one: its own id and meta dropped, and its
/// references made absolute so that they still point at the EHR.
fn copy(resource: &Value, base: &str) -> Value {
    let mut out = absolute(resource, base);
    if let Some(o) = out.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    out
}

/// `value` with every relative reference (`Type/id`) made absolute against `base`.
fn absolute(value: &Value, base: &str) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("reference", Value::String(r))
                            if !r.contains(':') && !r.starts_with('#') && r.contains('/') =>
                        {
                            Value::String(format!("{base}/{r}"))
                        }
                        _ => absolute(v, base),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| absolute(i, base)).collect()),
        other => other.clone(),
    }
}

fn push_identifier(resource: &mut Value, system: &str, value: &str) {
    let identifier = json!({"system": system, "value": value});
    match resource["identifier"].as_array_mut() {
        Some(list) => list.push(identifier),
        None => resource["identifier"] = json!([identifier]),
    }
}

/// What an error answer's OperationOutcome says (`issue.diagnostics`, else
/// `issue.details.text`), cut to a bounded length; nothing for any other body.
fn diagnostics(body: &[u8]) -> Option<String> {
    let outcome: Value = serde_json::from_slice(body).ok()?;
    if outcome["resourceType"] != "OperationOutcome" {
        return None;
    }
    let text = outcome["issue"]
        .as_array()?
        .iter()
        .filter_map(|i| {
            i["diagnostics"]
                .as_str()
                .or_else(|| i.pointer("/details/text").and_then(Value::as_str))
        })
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(DIAGNOSTICS_LIMIT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    })
}

/// The wait before write-back attempt `failures + 1` of one Task: the poll interval,
/// doubling with each failure, at most `MAX_BACKOFF`.
fn backoff(interval: Duration, failures: i64) -> Duration {
    let doublings = failures.clamp(1, 16) as u32 - 1;
    interval
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF.max(interval))
}

/// The EHR's current Task with the owner side's changes applied (the IG's filler owns
/// `status`, `statusReason`, and the `businessStatus` it sets; it adds outputs and
/// notes). Everything else — the EHR's own businessStatus, outputs and notes included
/// — stays as the EHR has it. Every reference we send is absolute to our base.
fn merge(remote: &Value, local: &Value, our_base: &str) -> Value {
    let mut merged = remote.clone();
    merged["status"] = local["status"].clone();
    match &local["statusReason"] {
        Value::Null => {
            merged.as_object_mut().map(|m| m.remove("statusReason"));
        }
        v => merged["statusReason"] = absolute(v, our_base),
    }
    if !local["businessStatus"].is_null() {
        merged["businessStatus"] = absolute(&local["businessStatus"], our_base);
    }
    for element in ["output", "note"] {
        let mut items = remote[element].as_array().cloned().unwrap_or_default();
        for item in local[element].as_array().into_iter().flatten() {
            let item = absolute(item, our_base);
            if !items.contains(&item) {
                items.push(item);
            }
        }
        if !items.is_empty() {
            merged[element] = Value::Array(items);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_absolute_and_urls_stay() {
        let v = json!({"requester": {"reference": "PractitionerRole/7"}, "a": [{"reference": "https://x/Patient/1"}],
            "b": {"reference": "#contained"}, "c": {"reference": "urn:uuid:1"}});
        assert_eq!(
            absolute(&v, "https://ehr/fhir"),
            json!({"requester": {"reference": "https://ehr/fhir/PractitionerRole/7"},
                "a": [{"reference": "https://x/Patient/1"}], "b": {"reference": "#contained"},
                "c": {"reference": "urn:uuid:1"}})
        );
    }

    #[test]
    fn a_merge_applies_the_owner_side_and_keeps_what_the_ehr_owns() {
        let remote = json!({"resourceType": "Task", "id": "t1", "status": "requested",
            "businessStatus": {"text": "Awaiting callback"},
            "output": [{"type": {"text": "ehr-document"}, "valueReference": {"reference": "DocumentReference/d1"}}],
            "note": [{"text": "from the EHR"}], "extension": [{"url": "x"}]});
        let local = json!({"status": "completed", "statusReason": {"text": "done"},
            "note": [{"text": "from the CBO", "authorReference": {"reference": "Organization/cbo-1"}}],
            "output": [{"type": {"text": "resulting-activity"}, "valueReference": {"reference": "Procedure/p1"}}]});
        let merged = merge(&remote, &local, "https://gw/fhir");
        assert_eq!(merged["status"], "completed");
        assert_eq!(merged["statusReason"]["text"], "done");
        assert_eq!(merged["extension"], json!([{"url": "x"}]));
        assert_eq!(merged["businessStatus"]["text"], "Awaiting callback");
        assert_eq!(
            merged["note"],
            json!([{"text": "from the EHR"}, {"text": "from the CBO",
                "authorReference": {"reference": "https://gw/fhir/Organization/cbo-1"}}])
        );
        assert_eq!(
            merged["output"][0]["valueReference"]["reference"],
            "DocumentReference/d1"
        );
        assert_eq!(
            merged["output"][1]["valueReference"]["reference"],
            "https://gw/fhir/Procedure/p1"
        );
        assert_eq!(merge(&merged, &local, "https://gw/fhir"), merged);
        let ours = json!({"status": "in-progress", "businessStatus": {"text": "Enrolling"}});
        assert_eq!(
            merge(&merged, &ours, "https://gw/fhir")["businessStatus"]["text"],
            "Enrolling"
        );
    }

    #[test]
    fn diagnostics_come_from_an_operation_outcome_only() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "forbidden", "diagnostics": "Forbidden"},
            {"severity": "error", "code": "forbidden", "details": {"text": "StructureDefinition not readable"}}]});
        assert_eq!(
            diagnostics(oo.to_string().as_bytes()).as_deref(),
            Some("Forbidden; StructureDefinition not readable")
        );
        assert_eq!(diagnostics(b"<html>nope</html>"), None);
        let long = json!({"resourceType": "OperationOutcome", "issue": [{"diagnostics": "x".repeat(900)}]});
        assert_eq!(
            diagnostics(long.to_string().as_bytes())
                .unwrap()
                .chars()
                .count(),
            DIAGNOSTICS_LIMIT + 1
        );
    }

    #[test]
    fn a_failing_task_backs_off_on_its_own_up_to_a_bound() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 1), i);
        assert_eq!(backoff(i, 3), i * 4);
        assert_eq!(backoff(i, 60), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_millis(200), 2),
            Duration::from_millis(400)
        );
    }
}
