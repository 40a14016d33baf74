//! FHIR Subscriptions for EHRs, in the R4 Subscriptions Backport form, on the SDOH
//! Clinical Care IG's Task and ServiceRequest topics. A client creates a Subscription
//! (`requested`); a handshake is sent and, when the endpoint answers, it is `active`.
//! From then every Task or ServiceRequest version that matches its filters is an event:
//! numbered per subscription in the transaction that wrote the resource
//! (`fhir::engine` asks [`Registry`], through its `Watchers` trait, which subscriptions
//! match; `store` numbers and queues them), kept for `$events`, and sent through the webhook outbox (retries,
//! backoff, the same lease) as a `history` Bundle: `rest-hook` to an https URL with the
//! headers the client configured, or `email` — a mail that says only that something
//! changed and links to it. Heartbeats go out when nothing else did for the period.
//!
//! A subscriber detects a gap from `events-since-subscription-start` and fills it
//! with `$events`; `$status` says where the subscription stands.
//!
//! [`Subscriptions`] is the runtime behind `/fhir/Subscription`, the outbox `Sink` for
//! `subscription:<id>` deliveries (registered at start), and a loop, once a second,
//! that turns off subscriptions past their `end`, sends handshakes again (requested ones
//! whose handshake was lost, those in error for the retry window) and heartbeats.
//! [`Registry`] holds the live ones (requested, active, error), refreshed from the store
//! every 500 ms. A client's update bumps the row's `version`; a handshake records its
//! outcome only for the version it was sent for.

pub mod notification;
pub mod topic;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fhir::FhirError;
use crate::fhir::engine::Fhir;
use crate::outbox::Failure;
use crate::outbox::destination::url_problem;
use crate::resource::datetime::{format_instant, now_micros};
use crate::store::{DueDelivery, Store, StoreError, SubscriptionRow};
use notification::{Event, Kind, Standing};
use topic::{Channel, Content, Plan};

/// Subscription id and what it asks for.
type Live = Arc<Vec<(String, Plan)>>;

/// How long a subscription waits for its handshake before it is sent again.
const HANDSHAKE_RETRY_MICROS: i64 = 30_000_000;

/// The live subscriptions (requested, active, or in error), as the writer matches them.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<RwLock<Live>>);

/// Subscription's entry in the CapabilityStatement: R4 Backport on the IG's topics.
pub fn capability() -> Value {
    let backport = "http://hl7.org/fhir/uv/subscriptions-backport";
    json!({
        "type": "Subscription",
        "supportedProfile": [format!("{backport}/StructureDefinition/backport-subscription")],
        "interaction": [
            {"code": "create"}, {"code": "read"}, {"code": "update"}, {"code": "delete"},
            {"code": "search-type", "documentation": "the client's own subscriptions, not paged"},
        ],
        "versioning": "versioned",
        "readHistory": false,
        "updateCreate": false,
        "searchParam": SEARCH_PARAMS.iter().map(|(name, what)| json!({
            "name": name,
            "type": match *name { "url" | "criteria" => "uri", _ => "token" },
            "documentation": what,
        })).collect::<Vec<_>>(),
        "operation": [
            {"name": "status", "definition": format!("{backport}/OperationDefinition/backport-subscription-status")},
            {"name": "events", "definition": format!("{backport}/OperationDefinition/backport-subscription-events")},
        ],
        "extension": topic::topic_urls().iter().map(|t| json!({
            "url": format!("{backport}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"),
            "valueCanonical": t,
        })).collect::<Vec<_>>(),
        "documentation": "Channels rest-hook and email (email: id-only or empty, no personal data); channel.payload application/fhir+json or application/json (sent as asked); contents empty, id-only, full-resource; handshake (retried every 30 s while unanswered), heartbeats, backport-timeout, backport-max-count (one event per notification), Subscription.end; filters Task: owner, requester, status, patient, focus; ServiceRequest: requester, performer, status, patient. Unknown filter extensions and modifier extensions are refused. PUT with status requested sends the handshake again. $status at instance and type level, $events, by GET or POST.",
    })
}

impl crate::fhir::engine::Watchers for Registry {
    fn matching(&self, resource: &Value, now: i64) -> Vec<String> {
        Registry::matching(self, resource, now)
    }
}

impl Registry {
    pub fn current(&self) -> Live {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the live subscriptions (another process may have created one).
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let live: Vec<(String, Plan)> = store
            .live_subscriptions()
            .await?
            .into_iter()
            .filter_map(|row| {
                let resource: Value = serde_json::from_str(&row.resource).ok()?;
                Some((row.id, topic::plan(&resource).ok()?))
            })
            .collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
        Ok(())
    }

    /// The subscriptions `resource` (a new version written at `now`) is an event of;
    /// none past its `end`.
    pub fn matching(&self, resource: &Value, now: i64) -> Vec<String> {
        self.current()
            .iter()
            .filter(|(_, plan)| !plan.ended(now) && topic::matches(plan, resource))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// How mail leaves: an SMTP relay and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    /// `url` as lettre reads it (`smtp://host:25`, `smtps://user:pass@host`,
    /// `smtp://host:587?tls=required`).
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        Ok(Mailer {
            transport: lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
                .map_err(|e| format!("smtp_url: {e}"))?
                .timeout(Some(Duration::from_secs(10)))
                .build(),
            from: from
                .parse()
                .map_err(|e| format!("smtp_from {from:?}: {e}"))?,
        })
    }
}

pub struct Subscriptions {
    store: Store,
    /// Reads the foci of full-resource notifications.
    fhir: Fhir,
    registry: Registry,
    http: reqwest::Client,
    mailer: Option<Mailer>,
    /// Our `/fhir` base: notifications name resources by absolute URL.
    base: String,
    /// How long a subscriber has to answer (`backport-timeout` may ask for less).
    timeout: Duration,
    /// How often a handshake is sent again while it is not answered.
    handshake_retry_micros: i64,
    /// How long after going into error a subscription's handshake is still retried:
    /// the outbox's retry window.
    retry_window_micros: i64,
    /// Subscriptions whose handshake is being sent: one at a time each.
    handshakes: Mutex<HashSet<String>>,
    allow_insecure: bool,
}

/// The parameters of a type-level `$status` (the ids and statuses asked for; none
/// means all) or of a Subscription search.
pub type Filters = Vec<(String, String)>;

/// Search parameters of `GET /fhir/Subscription` and the element each compares.
pub const SEARCH_PARAMS: &[(&str, &str)] = &[
    ("_id", "the subscription's id"),
    ("status", "requested, active, error or off"),
    ("url", "channel.endpoint"),
    ("criteria", "the topic's canonical URL"),
    ("type", "channel.type"),
    ("payload", "channel.payload"),
];

impl Subscriptions {
    pub fn new(
        fhir: Fhir,
        registry: Registry,
        mailer: Option<Mailer>,
        base: String,
        timeout: Duration,
        retry_scale: f64,
        allow_insecure: bool,
    ) -> Subscriptions {
        let scaled = |micros: f64| (micros * retry_scale).max(1.0) as i64;
        Subscriptions {
            store: fhir.store().clone(),
            fhir,
            registry,
            http: crate::outbox::tenant_client(timeout, allow_insecure),
            mailer,
            base: base.trim_end_matches('/').to_string(),
            timeout,
            handshake_retry_micros: scaled(HANDSHAKE_RETRY_MICROS as f64),
            retry_window_micros: scaled(72.0 * 3600.0 * 1e6),
            handshakes: Mutex::default(),
            allow_insecure,
        }
    }

    /// What a channel needs beyond the resource: a public https URL, or a mail relay.
    fn check_channel(&self, plan: &Plan, now: i64) -> Result<(), FhirError> {
        match plan.channel {
            Channel::RestHook => {
                if let Some(problem) = url_problem(&plan.endpoint, self.allow_insecure) {
                    return Err(FhirError::invalid("Subscription.channel.endpoint", problem));
                }
            }
            Channel::Email if self.mailer.is_none() => {
                return Err(FhirError::invalid(
                    "Subscription.channel.type",
                    "email needs the gateway's smtp_url to be configured",
                ));
            }
            Channel::Email => {}
        }
        if plan.ended(now) {
            return Err(FhirError::invalid(
                "Subscription.end",
                "has passed: a subscription is turned off with status off or DELETE",
            ));
        }
        Ok(())
    }

    /// Checks and stores a new Subscription for `client`, then sends its handshake in
    /// the background; the answer shows it `requested`.
    pub async fn create(
        self: &Arc<Self>,
        client: &str,
        mut resource: Value,
    ) -> Result<Value, FhirError> {
        resource_type(&resource)?;
        let plan = topic::plan(&resource)?;
        let now = now_micros();
        self.check_channel(&plan, now)?;
        let id = crate::resource::new_id();
        let sent_headers = resource.pointer("/channel/header").cloned();
        stamp(&mut resource, &id, 1, now);
        let row = SubscriptionRow {
            id: id.clone(),
            client_id: client.to_string(),
            resource: resource.to_string(),
            status: "requested".into(),
            events_since_start: 0,
            last_sent_at: None,
            version: 1,
            error_since: None,
        };
        self.store
            .insert_subscription(&row, &plan.endpoint, now)
            .await?;
        self.registry.refresh(&self.store).await?;
        tracing::info!(message = "Subscription requested.", subscription = %id, client, channel = plan.channel.code(), topic = %plan.topic);
        self.spawn_handshake(&id);
        Ok(answered(self.shown(&row, resource), sent_headers))
    }

    /// A client's update (PUT) of its subscription: anything the create takes, checked
    /// the same way. `status` says what the client wants: `off` stops it; `requested`
    /// sends the handshake again (the way back from `error`); `active` keeps an active
    /// subscription active unless its endpoint changed, which needs a handshake first.
    /// A header sent back as `Name: ***` (as reads show it) keeps its stored value.
    pub async fn update(
        self: &Arc<Self>,
        client: &str,
        id: &str,
        mut resource: Value,
        if_match: Option<i64>,
    ) -> Result<Value, FhirError> {
        resource_type(&resource)?;
        if let Some(body_id) = resource.get("id").and_then(Value::as_str)
            && body_id != id
        {
            return Err(FhirError::invalid(
                "Subscription.id",
                format!("{body_id:?} is not the id in the URL ({id:?})"),
            ));
        }
        let (row, _, old) = self.own(client, id).await?;
        let stored_resource = stored(&row).unwrap_or_default();
        if let Some(expected) = if_match
            && expected != row.version
        {
            return Err(FhirError::PreconditionFailed {
                expected: format!("W/\"{expected}\""),
                current: row.version,
            });
        }
        let sent_headers = resource.pointer("/channel/header").cloned();
        keep_masked_headers(&mut resource, &stored_resource)?;
        let plan = topic::plan(&resource)?;
        let now = now_micros();
        self.check_channel(&plan, now)?;
        let asked = resource.get("status").and_then(Value::as_str).unwrap_or("");
        let status = match asked {
            "off" => "off",
            "requested" => "requested",
            "active"
                if row.status == "active"
                    && old.as_ref().is_some_and(|o| {
                        o.endpoint == plan.endpoint && o.channel == plan.channel
                    }) =>
            {
                "active"
            }
            "active" => "requested",
            "error" => {
                return Err(FhirError::invalid(
                    "Subscription.status",
                    "error is set by the server; PUT requested to send the handshake again",
                ));
            }
            other => {
                return Err(FhirError::invalid(
                    "Subscription.status",
                    format!("{other:?}: a client asks for requested, active or off"),
                ));
            }
        };
        stamp(&mut resource, id, row.version + 1, now);
        resource["status"] = json!(status);
        let Some(version) = self
            .store
            .update_subscription(
                id,
                row.version,
                &row.status,
                &resource.to_string(),
                status,
                &plan.endpoint,
            )
            .await?
        else {
            return Err(FhirError::Conflict(format!(
                "Subscription/{id} was updated meanwhile: read it and try again"
            )));
        };
        self.registry.refresh(&self.store).await?;
        tracing::info!(message = "Subscription updated.", subscription = %id, client, status, version);
        if status == "requested" {
            self.spawn_handshake(id);
        }
        let row = SubscriptionRow {
            status: status.to_string(),
            version,
            error_since: None,
            ..row
        };
        Ok(answered(self.shown(&row, resource), sent_headers))
    }

    fn spawn_handshake(self: &Arc<Self>, id: &str) {
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { this.handshake(&id).await });
    }

    /// The handshake of a requested subscription: a success makes it active, a failure
    /// `error` (what failed is logged, not shown to a client who could probe addresses
    /// with it). While in error the handshake is sent again every 30 s for the retry
    /// window (`heartbeats`).
    async fn handshake(&self, id: &str) {
        if !self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string())
        {
            return;
        }
        let _done = Finally(|| {
            self.handshakes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
        });
        // An update while this one was out makes its outcome stale: the newer version,
        // if still requested, is handshaken in turn (its own spawn found this running).
        let error = loop {
            let Ok(Some(row)) = self.store.subscription(id).await else {
                return;
            };
            let Some((_, plan)) = parsed(&row) else {
                return;
            };
            if row.status != "requested" {
                return;
            }
            let _ = self.store.subscription_sent(id, now_micros()).await;
            let bundle = self.bundle(Kind::Handshake, &row, &plan, &[], row.events_since_start);
            let (status, error) = match self.send(id, &plan, &bundle, None).await {
                Ok(_) => ("active", None),
                Err(f) => ("error", Some(f.error)),
            };
            match self
                .store
                .handshake_done(id, row.version, status, now_micros())
                .await
            {
                Ok(true) => break error,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(message = "Subscription status not recorded.", subscription = id, error = %e);
                    return;
                }
            }
        };
        let _ = self.registry.refresh(&self.store).await;
        match error {
            None => tracing::info!(
                message = "Subscription active: its handshake was answered.",
                subscription = id
            ),
            Some(e) => {
                tracing::warn!(message = "Subscription handshake failed; the subscription is in error.", subscription = id, error = %e)
            }
        }
    }

    /// `client`'s subscription (another client's is not found), as shown, and its plan.
    async fn own(
        &self,
        client: &str,
        id: &str,
    ) -> Result<(SubscriptionRow, Value, Option<Plan>), FhirError> {
        let not_found = || FhirError::NotFound {
            resource: format!("Subscription/{id}"),
        };
        let row = self
            .store
            .subscription(id)
            .await?
            .filter(|r| r.client_id == client)
            .ok_or_else(not_found)?;
        let resource = stored(&row).ok_or_else(not_found)?;
        // One stored under older rules may no longer read (a payload or extension now
        // refused): it takes no events, but its client can still see, fix or delete it.
        let plan = topic::plan(&resource).ok();
        let shown = self.shown(&row, resource);
        Ok((row, shown, plan))
    }

    /// `own`, for what needs the subscription to run.
    async fn running(&self, client: &str, id: &str) -> Result<(SubscriptionRow, Plan), FhirError> {
        let (row, resource, plan) = self.own(client, id).await?;
        let plan = match plan {
            Some(plan) => plan,
            None => topic::plan(&resource).map_err(|e| {
                FhirError::rule(
                    "Subscription",
                    format!("this subscription no longer reads under the server's rules ({e}); PUT it again or DELETE it"),
                )
            })?,
        };
        Ok((row, plan))
    }

    /// The Subscription as shown back: the row's status (the outbox or the handshake
    /// may have changed it), its error, its version; header values (credentials for
    /// the subscriber's endpoint) are not repeated.
    fn shown(&self, row: &SubscriptionRow, mut resource: Value) -> Value {
        resource["status"] = json!(row.status);
        if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
            meta.insert("versionId".into(), json!(row.version.to_string()));
        }
        match (row.status.as_str(), row.error_since) {
            ("error", Some(since)) if now_micros() - since < self.retry_window_micros => {
                resource["error"] = json!(
                    "the endpoint did not accept what was sent to it; the handshake is sent again every 30 s, or PUT the subscription with status requested"
                );
            }
            ("error", _) => {
                resource["error"] = json!(
                    "the endpoint did not accept what was sent to it; PUT the subscription with status requested to send the handshake again"
                );
            }
            _ => {
                resource.as_object_mut().map(|r| r.remove("error"));
            }
        }
        masked(resource)
    }

    pub async fn read(&self, client: &str, id: &str) -> Result<(Value, i64), FhirError> {
        let (row, resource, _) = self.own(client, id).await?;
        Ok((resource, row.version))
    }

    /// Turns a subscription off: no more events, notifications or heartbeats.
    pub async fn delete(&self, client: &str, id: &str) -> Result<(), FhirError> {
        self.own(client, id).await?;
        self.store.switch_off_subscription(id, None).await?;
        self.registry.refresh(&self.store).await?;
        Ok(())
    }

    /// `GET /fhir/Subscription`: the client's subscriptions that match every parameter
    /// (a comma lists alternatives); all of them with none. Not paged: a client has few.
    pub async fn search(&self, client: &str, params: &Filters) -> Result<Value, FhirError> {
        let mut wanted: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in params {
            if ["_format", "_pretty", "_total"].contains(&name.as_str()) {
                continue;
            }
            if !SEARCH_PARAMS.iter().any(|(n, _)| n == name) {
                return Err(FhirError::invalid(
                    format!("Subscription?{name}"),
                    format!(
                        "is not a search parameter of Subscription here ({})",
                        SEARCH_PARAMS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            wanted.push((name, value.split(',').collect()));
        }
        let mut entry = Vec::new();
        for row in self.store.client_subscriptions(client).await? {
            let Some(resource) = stored(&row) else {
                continue;
            };
            let text = |pointer: &str| {
                resource
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let matches = wanted.iter().all(|(name, values)| {
                let actual = match *name {
                    "_id" => Some(row.id.clone()),
                    "status" => Some(row.status.clone()),
                    "url" => text("/channel/endpoint"),
                    "criteria" => text("/criteria"),
                    "type" => text("/channel/type"),
                    _ => text("/channel/payload"),
                };
                actual.is_some_and(|a| values.contains(&a.as_str()))
            });
            if matches {
                entry.push(json!({
                    "fullUrl": format!("{}/Subscription/{}", self.base, row.id),
                    "resource": self.shown(&row, resource),
                    "search": {"mode": "match"},
                }));
            }
        }
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "searchset",
            "total": entry.len(),
            "link": [{"relation": "self", "url": format!("{}/Subscription?{}", self.base, query.join("&"))}],
            "entry": entry,
        }))
    }

    /// `$status` of one subscription (`id`), or at type level of the client's
    /// subscriptions with any of `filters`' ids and any of their statuses (all with
    /// none): a searchset of status Parameters, one per subscription.
    pub async fn status(
        &self,
        client: &str,
        id: Option<&str>,
        filters: &Filters,
    ) -> Result<Value, FhirError> {
        let rows = match id {
            Some(id) => vec![self.own(client, id).await?.0],
            None => {
                let listed = |name: &str| -> Vec<&str> {
                    filters
                        .iter()
                        .filter(|(n, _)| n == name)
                        .flat_map(|(_, v)| v.split(','))
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .collect()
                };
                let (ids, statuses) = (listed("id"), listed("status"));
                self.store
                    .client_subscriptions(client)
                    .await?
                    .into_iter()
                    .filter(|r| ids.is_empty() || ids.contains(&r.id.as_str()))
                    .filter(|r| statuses.is_empty() || statuses.contains(&r.status.as_str()))
                    .collect()
            }
        };
        let entry: Vec<Value> = rows
            .iter()
            .filter_map(|row| {
                let resource = stored(row)?;
                let standing = Standing {
                    id: &row.id,
                    topic: resource.get("criteria").and_then(Value::as_str),
                    status: &row.status,
                    events_since_start: row.events_since_start,
                };
                Some(json!({
                    "resource": notification::status(Kind::QueryStatus, &standing, &[], false, &self.base),
                    "search": {"mode": "match"},
                }))
            })
            .collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "searchset",
            "total": entry.len(),
            "entry": entry,
        }))
    }

    /// `$events`: the events numbered `since..=until` (at most 1000), so a subscriber
    /// can fill a gap; `content` overrides the subscription's payload content.
    pub async fn events(
        &self,
        client: &str,
        id: &str,
        since: Option<i64>,
        until: Option<i64>,
        content: Option<&str>,
    ) -> Result<Value, FhirError> {
        let (row, mut plan) = self.running(client, id).await?;
        if let Some(c) = content {
            plan.content = Content::parse(c).ok_or_else(|| {
                FhirError::invalid(
                    "content",
                    format!("{c:?} is not one of empty, id-only, full-resource"),
                )
            })?;
            if plan.channel == Channel::Email && plan.content == Content::FullResource {
                plan.content = Content::IdOnly;
            }
        }
        let since = since.unwrap_or(1).max(1);
        let until = until.unwrap_or(row.events_since_start);
        let mut events = Vec::new();
        for (number, focus, version, at) in self.store.subscription_events(id, since, until).await?
        {
            events.push(self.event(&plan, number, focus, version, at).await);
        }
        Ok(self.bundle(
            Kind::QueryEvent,
            &row,
            &plan,
            &events,
            row.events_since_start,
        ))
    }

    async fn event(&self, plan: &Plan, number: i64, focus: String, version: i64, at: i64) -> Event {
        let resource = match plan.content {
            Content::FullResource => self.version_of(&focus, version).await,
            _ => None,
        };
        Event {
            number,
            at,
            focus,
            version,
            resource,
        }
    }

    /// `version` of `focus` (`Task/abc`): a full-resource notification shows the
    /// resource as the event saw it, not as it is now.
    async fn version_of(&self, focus: &str, version: i64) -> Option<Value> {
        let (ty, id) = focus.split_once('/')?;
        let stored = self.fhir.vread(ty, id, &version.to_string()).await.ok()?;
        serde_json::from_str(&stored.body).ok()
    }

    /// The resource type a subscription's events are about (its readers need a scope
    /// for it).
    pub async fn topic_type(&self, client: &str, id: &str) -> Result<&'static str, FhirError> {
        Ok(self.running(client, id).await?.1.resource_type)
    }

    fn bundle(
        &self,
        kind: Kind,
        row: &SubscriptionRow,
        plan: &Plan,
        events: &[Event],
        events_since_start: i64,
    ) -> Value {
        let standing = Standing {
            id: &row.id,
            topic: (plan.content != Content::Empty).then_some(plan.topic.as_str()),
            status: &row.status,
            events_since_start,
        };
        notification::bundle(
            kind,
            &standing,
            events,
            plan.content,
            &self.base,
            now_micros(),
        )
    }

    /// Sends one queued event (the outbox's delivery of `subscription:<id>`). It says
    /// as many events happened as its number: the count when it was numbered.
    pub async fn deliver(&self, d: &DueDelivery) -> Result<u16, Failure> {
        let id = d
            .endpoint_id
            .strip_prefix("subscription:")
            .unwrap_or_default();
        let row = self
            .store
            .subscription(id)
            .await
            .map_err(|e| Failure::new(e.to_string()))?
            .ok_or_else(|| Failure::new("the subscription no longer exists"))?;
        let (_, plan) =
            parsed(&row).ok_or_else(|| Failure::new("the subscription is not readable"))?;
        let (number, focus, version, at) = self
            .store
            .subscription_events(id, d.event_seq, d.event_seq)
            .await
            .map_err(|e| Failure::new(e.to_string()))?
            .pop()
            .ok_or_else(|| Failure::new("the event is no longer kept"))?;
        let event = self.event(&plan, number, focus, version, at).await;
        let bundle = self.bundle(
            Kind::EventNotification,
            &row,
            &plan,
            std::slice::from_ref(&event),
            number,
        );
        let status = self.send(id, &plan, &bundle, Some(&event)).await?;
        let _ = self.store.subscription_sent(id, now_micros()).await;
        Ok(status)
    }

    /// Once a second: turns off subscriptions past their `end`; sends the handshake
    /// again of requested ones whose handshake was lost and of those in error (every
    /// 30 s, for the retry window); heartbeats for active rest-hook subscriptions that
    /// sent nothing for their period.
    pub async fn heartbeats(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
            let Ok(live) = self.store.live_subscriptions().await else {
                continue;
            };
            let now = now_micros();
            for row in &live {
                let Some((_, plan)) = parsed(row) else {
                    continue;
                };
                if plan.ended(now) {
                    if let Ok(true) = self
                        .store
                        .switch_off_subscription(&row.id, Some(row.version))
                        .await
                    {
                        let _ = self.registry.refresh(&self.store).await;
                        tracing::info!(message = "Subscription off: its end has passed.", subscription = %row.id);
                    }
                    continue;
                }
                let quiet = |period: i64| row.last_sent_at.is_none_or(|at| now - at >= period);
                match row.status.as_str() {
                    "requested" if quiet(self.handshake_retry_micros) => {
                        self.spawn_handshake(&row.id);
                    }
                    "error"
                        if quiet(self.handshake_retry_micros)
                            && row
                                .error_since
                                .is_some_and(|since| now - since < self.retry_window_micros) =>
                    {
                        if let Ok(true) = self.store.retry_handshake(&row.id).await {
                            self.spawn_handshake(&row.id);
                        }
                    }
                    "active" => {
                        // Heartbeats keep a rest-hook subscriber sure the channel works;
                        // a mail every period would only be noise.
                        let period = plan.heartbeat_seconds as i64 * 1_000_000;
                        if plan.channel != Channel::RestHook || period == 0 || !quiet(period) {
                            continue;
                        }
                        let _ = self.store.subscription_sent(&row.id, now).await;
                        let bundle =
                            self.bundle(Kind::Heartbeat, row, &plan, &[], row.events_since_start);
                        if let Err(f) = self.send(&row.id, &plan, &bundle, None).await {
                            tracing::info!(message = "Subscription heartbeat not delivered.", subscription = %row.id, error = %f.error)
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// One notification over the subscription's channel.
    async fn send(
        &self,
        id: &str,
        plan: &Plan,
        bundle: &Value,
        event: Option<&Event>,
    ) -> Result<u16, Failure> {
        match plan.channel {
            Channel::RestHook => {
                if let Some(problem) = url_problem(&plan.endpoint, self.allow_insecure) {
                    return Err(Failure::new(format!("the endpoint {problem}")));
                }
                let mut r = self
                    .http
                    .post(&plan.endpoint)
                    .header("content-type", &plan.payload)
                    .body(bundle.to_string());
                if let Some(seconds) = plan.timeout_seconds {
                    r = r.timeout(self.timeout.min(Duration::from_secs(seconds)));
                }
                for (name, value) in &plan.headers {
                    r = r.header(name, value);
                }
                let answer = r.send().await.map_err(|e| {
                    if e.is_timeout() {
                        return Failure::new("no answer in time");
                    }
                    // The subscriber sees a coarse reason; the detail is for operators.
                    tracing::info!(message = "Subscription endpoint unreachable.", subscription = %id, error = %e.without_url());
                    Failure::new(crate::outbox::UNREACHABLE)
                })?;
                let status = answer.status().as_u16();
                if answer.status().is_success() {
                    Ok(status)
                } else {
                    Err(Failure {
                        status: Some(status),
                        error: format!("the endpoint answered {}", answer.status()),
                    })
                }
            }
            Channel::Email => {
                let mailer = self
                    .mailer
                    .as_ref()
                    .ok_or_else(|| Failure::new("no smtp_url is configured"))?;
                let mail = self.mail(id, plan, mailer, event)?;
                use lettre::AsyncTransport;
                mailer.transport.send(mail).await.map_err(|e| {
                    Failure::new(format!("the mail relay refused the message: {e}"))
                })?;
                Ok(250)
            }
        }
    }

    /// The mail: that something changed, and where to read it with one's own
    /// credentials; never what changed (no personal data leaves by mail).
    fn mail(
        &self,
        id: &str,
        plan: &Plan,
        mailer: &Mailer,
        event: Option<&Event>,
    ) -> Result<lettre::Message, Failure> {
        let to: lettre::message::Mailbox = plan
            .endpoint
            .parse()
            .map_err(|e| Failure::new(format!("the address {:?}: {e}", plan.endpoint)))?;
        let (subject, text) = match event {
            Some(e) => (
                format!("A {} you follow changed", plan.resource_type),
                format!(
                    "Event {} of subscription {id}: a {} changed.\n\nRead it with your own credentials:\n{}/{}\n",
                    e.number, plan.resource_type, self.base, e.focus
                ),
            ),
            None => (
                "Subscription confirmed".to_string(),
                format!(
                    "Subscription {id} is set up.\n\n{}/Subscription/{id}/$status\n",
                    self.base
                ),
            ),
        };
        lettre::Message::builder()
            .from(mailer.from.clone())
            .to(to)
            .subject(subject)
            .body(text)
            .map_err(|e| Failure::new(format!("the mail could not be built: {e}")))
    }
}

fn stored(row: &SubscriptionRow) -> Option<Value> {
    serde_json::from_str(&row.resource).ok()
}

fn parsed(row: &SubscriptionRow) -> Option<(Value, Plan)> {
    let resource = stored(row)?;
    let plan = topic::plan(&resource).ok()?;
    Some((resource, plan))
}

fn resource_type(resource: &Value) -> Result<(), FhirError> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Subscription") {
        return Err(FhirError::invalid(
            "Subscription.resourceType",
            "must be Subscription",
        ));
    }
    Ok(())
}

/// Sets what the server owns: id, `meta.versionId` and `meta.lastUpdated` (the rest of
/// `meta`, such as the client's `profile`, stays as sent); a new version starts
/// `requested` and carries no error until the server finds one.
fn stamp(resource: &mut Value, id: &str, version: i64, now: i64) {
    resource["id"] = json!(id);
    resource["status"] = json!("requested");
    if !resource.get("meta").is_some_and(Value::is_object) {
        resource["meta"] = json!({});
    }
    resource["meta"]["versionId"] = json!(version.to_string());
    resource["meta"]["lastUpdated"] = json!(format_instant(now));
    if let Some(r) = resource.as_object_mut() {
        r.remove("error");
    }
}

/// A header sent back as `Name: ***`, as reads show it, keeps the value stored for
/// that name; without one there is nothing to keep.
fn keep_masked_headers(resource: &mut Value, old: &Value) -> Result<(), FhirError> {
    let Some(headers) = resource
        .pointer_mut("/channel/header")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    for (i, h) in headers.iter_mut().enumerate() {
        let Some((name, value)) = h.as_str().and_then(|s| s.split_once(':')) else {
            continue;
        };
        if value.trim() != "***" {
            continue;
        }
        let name = name.trim();
        let stored = old
            .pointer("/channel/header")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str()?.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .ok_or_else(|| {
                FhirError::invalid(
                    format!("Subscription.channel.header[{i}]"),
                    format!("{name}: *** keeps a stored value, and none is stored for {name}"),
                )
            })?;
        *h = json!(format!("{name}: {stored}"));
    }
    Ok(())
}

/// Runs its closure when dropped (a handshake that ends early or panics still lets
/// the next one run).
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// The answer to a create or update shows `channel.header` as that request sent it
/// (Inferno's kit checks notifications' headers against it): it discloses nothing the
/// request did not carry. A value kept from before (`Name: ***`) stays masked.
fn answered(mut shown: Value, sent_headers: Option<Value>) -> Value {
    if let (Some(headers), Some(channel)) = (sent_headers, shown.get_mut("channel"))
        && let Some(channel) = channel.as_object_mut()
    {
        channel.insert("header".into(), headers);
    }
    shown
}

/// The Subscription as read back: header values (credentials for the subscriber's
/// endpoint) are not repeated.
fn masked(mut resource: Value) -> Value {
    if let Some(headers) = resource
        .pointer_mut("/channel/header")
        .and_then(Value::as_array_mut)
    {
        for h in headers.iter_mut() {
            if let Some((name, _)) = h.as_str().and_then(|s| s.split_once(':')) {
                *h = json!(format!("{name}: ***"));
            }
        }
    }
    resource
}

impl crate::outbox::Sink for Subscriptions {
    fn takes(&self, d: &DueDelivery) -> bool {
        d.endpoint_id.starts_with("subscription:")
    }

    fn deliver<'a>(
        &'a self,
        d: &'a DueDelivery,
    ) -> futures_util::future::BoxFuture<'a, Result<u16, Failure>> {
        Box::pin(Subscriptions::deliver(self, d))
    }
}
