//! FHIR Subscriptions for EHRs, in the R4 Subscriptions Backport form, on the SDOH
//! Clinical Care IG's Task and ServiceRequest topics. A client creates a Subscription
//! (`requested`); a handshake is sent and, when the endpoint answers, it is `active`.
//! From then every Task or ServiceRequest version that matches its filters is an event:
//! numbered per subscription in the transaction that wrote the resource
//! (`fhir::engine` asks [`Registry`] which subscriptions match, `store` numbers and
//! queues them), kept for `$events`, and sent through the webhook outbox (retries,
//! backoff, the same lease) as a `history` Bundle: `rest-hook` to an https URL with the
//! headers the client configured, or `email` — a mail that says only that something
//! changed and links to it. Heartbeats go out when nothing else did for the period.
//!
//! A subscriber detects a gap from `events-since-subscription-start` and fills it
//! with `$events`; `$status` says where the subscription stands.

pub mod notification;
pub mod topic;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fhir::FhirError;
use crate::fhir::datetime::{format_instant, now_micros};
use crate::fhir::engine::Fhir;
use crate::outbox::Failure;
use crate::outbox::destination::url_problem;
use crate::store::{DueDelivery, Store, StoreError, SubscriptionRow};
use notification::{Event, Kind, Standing};
use topic::{Channel, Content, Plan};

/// Subscription id and what it asks for.
type Live = Arc<Vec<(String, Plan)>>;

/// How long a subscription waits for its handshake before it is sent again.
const HANDSHAKE_RETRY_MICROS: i64 = 30_000_000;

/// The live subscriptions (requested or active), as the writer matches them.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<RwLock<Live>>);

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

    /// The subscriptions `resource` (a new version of `focus`) is an event of.
    pub fn matching(&self, resource: &Value) -> Vec<String> {
        self.current()
            .iter()
            .filter(|(_, plan)| topic::matches(plan, resource))
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
    allow_insecure: bool,
}

impl Subscriptions {
    pub fn new(
        fhir: Fhir,
        registry: Registry,
        mailer: Option<Mailer>,
        base: String,
        timeout: Duration,
        allow_insecure: bool,
    ) -> Subscriptions {
        Subscriptions {
            store: fhir.store().clone(),
            fhir,
            registry,
            http: crate::outbox::tenant_client(timeout, allow_insecure),
            mailer,
            base: base.trim_end_matches('/').to_string(),
            allow_insecure,
        }
    }

    /// Checks and stores a new Subscription for `client`, then sends its handshake in
    /// the background; the answer shows it `requested`.
    pub async fn create(
        self: &Arc<Self>,
        client: &str,
        mut resource: Value,
    ) -> Result<Value, FhirError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some("Subscription") {
            return Err(FhirError::invalid(
                "Subscription.resourceType",
                "must be Subscription",
            ));
        }
        let plan = topic::plan(&resource)?;
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
        let id = crate::fhir::new_id();
        let now = now_micros();
        resource["id"] = json!(id);
        resource["status"] = json!("requested");
        resource["meta"] = json!({"versionId": "1", "lastUpdated": format_instant(now)});
        let row = SubscriptionRow {
            id: id.clone(),
            client_id: client.to_string(),
            resource: resource.to_string(),
            status: "requested".into(),
            events_since_start: 0,
            last_sent_at: None,
        };
        self.store
            .insert_subscription(&row, &plan.endpoint, now)
            .await?;
        self.registry.refresh(&self.store).await?;
        tracing::info!(message = "Subscription requested.", subscription = %id, client, channel = plan.channel.code(), topic = %plan.topic);
        let this = self.clone();
        let handshake_id = id.clone();
        tokio::spawn(async move { this.handshake(&handshake_id).await });
        Ok(masked(resource))
    }

    /// The handshake: a success makes a requested subscription active, a failure
    /// `error` (the stored error says no more than that: the details are logged, not
    /// shown to a client who could probe addresses with them).
    async fn handshake(&self, id: &str) {
        let Ok(Some(row)) = self.store.subscription(id).await else {
            return;
        };
        let Some((resource, plan)) = parsed(&row) else {
            return;
        };
        let _ = self.store.subscription_sent(id, now_micros()).await;
        let bundle = self.bundle(Kind::Handshake, &row, &plan, &[]);
        let (status, error) = match self.send(id, &plan, &bundle, None).await {
            Ok(_) => ("active", None),
            Err(f) => ("error", Some(f.error)),
        };
        let mut resource = resource;
        resource["status"] = json!(status);
        match &error {
            Some(_) => resource["error"] = json!("the endpoint did not accept the handshake"),
            None => {
                resource.as_object_mut().map(|r| r.remove("error"));
            }
        }
        match self
            .store
            .set_subscription_status(id, Some("requested"), status, &resource.to_string())
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(message = "Subscription status not recorded.", subscription = id, error = %e);
                return;
            }
        }
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

    /// `client`'s subscription (another client's is not found).
    async fn own(
        &self,
        client: &str,
        id: &str,
    ) -> Result<(SubscriptionRow, Value, Plan), FhirError> {
        let row = self
            .store
            .subscription(id)
            .await?
            .filter(|r| r.client_id == client)
            .ok_or_else(|| FhirError::NotFound {
                resource: format!("Subscription/{id}"),
            })?;
        let (mut resource, plan) = parsed(&row).ok_or_else(|| FhirError::NotFound {
            resource: format!("Subscription/{id}"),
        })?;
        // The row's status is the truth (the outbox may have put it in error).
        resource["status"] = json!(row.status);
        Ok((row, resource, plan))
    }

    pub async fn read(&self, client: &str, id: &str) -> Result<Value, FhirError> {
        Ok(masked(self.own(client, id).await?.1))
    }

    /// Turns a subscription off: no more events, notifications or heartbeats.
    pub async fn delete(&self, client: &str, id: &str) -> Result<(), FhirError> {
        let (_, mut resource, _) = self.own(client, id).await?;
        resource["status"] = json!("off");
        self.store
            .set_subscription_status(id, None, "off", &resource.to_string())
            .await?;
        self.registry.refresh(&self.store).await?;
        Ok(())
    }

    /// `$status`: a searchset with the subscription's status Parameters.
    pub async fn status(&self, client: &str, id: &str) -> Result<Value, FhirError> {
        let (row, _, plan) = self.own(client, id).await?;
        let standing = standing(&row, &plan);
        Ok(json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [{"resource": notification::status(Kind::QueryStatus, &standing, &[], false, &self.base),
                "search": {"mode": "match"}}],
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
        let (row, _, mut plan) = self.own(client, id).await?;
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
            let resource = match plan.content {
                Content::FullResource => self.version_of(&focus, version).await,
                _ => None,
            };
            events.push(Event {
                number,
                at,
                focus,
                resource,
            });
        }
        Ok(self.bundle(Kind::QueryEvent, &row, &plan, &events))
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
        Ok(self.own(client, id).await?.2.resource_type)
    }

    fn bundle(&self, kind: Kind, row: &SubscriptionRow, plan: &Plan, events: &[Event]) -> Value {
        notification::bundle(
            kind,
            &standing(row, plan),
            events,
            plan.content,
            &self.base,
            now_micros(),
        )
    }

    /// Sends one queued event (the outbox's delivery of `subscription:<id>`).
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
        let resource = match plan.content {
            Content::FullResource => self.version_of(&focus, version).await,
            _ => None,
        };
        let event = Event {
            number,
            at,
            focus,
            resource,
        };
        let bundle = self.bundle(
            Kind::EventNotification,
            &row,
            &plan,
            std::slice::from_ref(&event),
        );
        let status = self.send(id, &plan, &bundle, Some(&event)).await?;
        let _ = self.store.subscription_sent(id, now_micros()).await;
        Ok(status)
    }

    /// Heartbeats for active rest-hook subscriptions that sent nothing for their period,
    /// and handshakes again for requested ones whose handshake was lost.
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
                let quiet = |period: i64| row.last_sent_at.is_none_or(|at| now - at >= period);
                if row.status == "requested" {
                    if quiet(HANDSHAKE_RETRY_MICROS) {
                        self.handshake(&row.id).await;
                    }
                    continue;
                }
                // Heartbeats keep a rest-hook subscriber sure the channel works; a mail
                // every period would only be noise.
                let period = plan.heartbeat_seconds as i64 * 1_000_000;
                if plan.channel != Channel::RestHook || period == 0 || !quiet(period) {
                    continue;
                }
                let _ = self.store.subscription_sent(&row.id, now).await;
                let bundle = self.bundle(Kind::Heartbeat, row, &plan, &[]);
                if let Err(f) = self.send(&row.id, &plan, &bundle, None).await {
                    tracing::info!(message = "Subscription heartbeat not delivered.", subscription = %row.id, error = %f.error)
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
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string());
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

fn parsed(row: &SubscriptionRow) -> Option<(Value, Plan)> {
    let resource: Value = serde_json::from_str(&row.resource).ok()?;
    let plan = topic::plan(&resource).ok()?;
    Some((resource, plan))
}

fn standing<'a>(row: &'a SubscriptionRow, plan: &'a Plan) -> Standing<'a> {
    Standing {
        id: &row.id,
        topic: &plan.topic,
        status: &row.status,
        events_since_start: row.events_since_start,
    }
}

/// The Subscription as shown back: header values (credentials for the subscriber's
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
