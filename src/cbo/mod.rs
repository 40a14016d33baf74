//! The CBO face without HTTP (cbo-api.md): referral lists and reads as the CBO sees
//! them, actions with idempotency, the event feed, and the background sweep that
//! expires unanswered referrals and prunes old events and keys.
//!
//! Writes go through the FHIR engine ([`Fhir::act`]), so a CBO action is a Task update
//! like any other: the same state machine, the same group commit, the same events.
//! Inside the writer the engine also checks the `Idempotency-Key` and stores the answer
//! in the same transaction (a key still running in this process answers 409). Lists page
//! by a keyset cursor on `(updated_at, id)` over `store::referral_index`; the event feed
//! answers 410 below the organisation's pruned sequence. `services` is the service
//! catalogue, `views` the built referral views, `webhooks` the endpoint management
//! API; `CboError` is the face's error. Knows nothing of HTTP (`http::cbo` does).

mod body;
mod error;
mod services;
mod views;
pub mod webhooks;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

pub use body::{
    AcceptRequest, CHECKED_BODIES, CapacityInput, CloseRequest, DeclineRequest, HoldRequest,
    NoteRequest, ProgressRequest, ServiceInput, document_text_rules, drop_nulls, parse_action,
};
pub use error::{CboError, FieldError};
pub use services::Service;

use crate::config::OrganizationConfig;
use crate::fhir::engine::{ActionRequest, Fhir, IdempotencyKey, Refusal};
use crate::mapping::Live;
use crate::referral::projection::{self, Summary};
use crate::referral::tenants::Tenants;
use crate::resource::datetime;
use crate::store::{Event, ReferralFilter, StoreError, StoredResource};
use views::{View, Views};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;
/// Idempotency keys are kept at least this long (cbo-api.md §1 asks for ≥ 72 h).
const KEY_RETENTION_HOURS: i64 = 96;

#[derive(Clone)]
pub struct Cbo {
    fhir: Fhir,
    /// The visibility rules in force (reloadable).
    mappings: Live,
    organizations: Tenants,
    /// Idempotency keys whose first request is still running in this process.
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    views: Arc<Views>,
    event_retention_days: u32,
}

/// A page of a list (cbo-api.md §1).
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// An item of the event feed (thin: ids and status, no personal data).
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedEvent {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(schema_with = event_type_schema)]
    pub event_type: String,
    /// The organisation's feed position: gap-free and increasing (a test event carries
    /// the position the feed had reached).
    #[schema(minimum = 0)]
    pub sequence: i64,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    pub data: FeedEventData,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedEventData {
    /// The referral (every `referral.*` and `client.*` event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referral_id: Option<String>,
    /// The referral's status; `disabled` for `webhook.endpoint_disabled`, `test` for
    /// `webhook.test`.
    #[schema(schema_with = event_status_schema)]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The webhook endpoint (`webhook.endpoint_disabled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
}

fn event_type_schema() -> utoipa::openapi::schema::Object {
    let mut types: Vec<&str> = webhooks::EVENT_TYPES.to_vec();
    types.push(webhooks::TEST_EVENT_TYPE);
    projection::code_schema("The event type", &types)
}

fn event_status_schema() -> utoipa::openapi::schema::Object {
    let mut statuses: Vec<&str> = crate::referral::CboStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    statuses.extend(["disabled", "test"]);
    projection::code_schema(
        "The referral's status (or the endpoint's, or `test`)",
        &statuses,
    )
}

/// Query parameters of `GET /referrals`, as received.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub urgency: Option<String>,
    pub updated_since: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// A state-changing call: which action, on what, with which preconditions.
#[derive(Debug)]
pub struct ActionCall<'a> {
    pub referral_id: &'a str,
    /// `accept`, `decline`, `start`, `hold`, `resume`, `close` or `notes`.
    pub action: &'a str,
    pub body: &'a [u8],
    pub if_match: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
}

/// The answer to an action.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

impl Cbo {
    /// The built views this face keeps (`/metrics`).
    pub fn view_stats(&self) -> crate::store::CacheStats {
        self.views.stats()
    }

    /// The bytes of JSON the built views may keep.
    pub fn set_view_budget(&self, bytes: usize) {
        self.views.set_budget(bytes);
    }

    pub fn new(
        fhir: Fhir,
        mappings: Live,
        organizations: Tenants,
        event_retention_days: u32,
    ) -> Cbo {
        Cbo {
            fhir,
            mappings,
            organizations,
            in_flight: Arc::default(),
            views: Arc::default(),
            event_retention_days,
        }
    }

    /// The CBO organisation with this id (configured or registered): the tenant a
    /// request acts for.
    pub fn tenant(&self, id: &str) -> Option<OrganizationConfig> {
        self.organizations.cbo(id)
    }

    pub async fn list(&self, org: &str, q: &ListQuery) -> Result<Page<Summary>, CboError> {
        let mut errors = Vec::new();
        let status = q.status.clone();
        if status
            .as_deref()
            .is_some_and(|s| crate::referral::CboStatus::parse(s).is_none())
        {
            errors.push(FieldError::query(
                "status",
                "must be one of pending, accepted, in_progress, on_hold, declined, closed, cancelled, expired",
            ));
        }
        let urgency = q.urgency.clone();
        if urgency
            .as_deref()
            .is_some_and(|u| !["routine", "urgent", "asap", "stat"].contains(&u))
        {
            errors.push(FieldError::query(
                "urgency",
                "must be one of routine, urgent, asap, stat",
            ));
        }
        let updated_since = q.updated_since.as_deref().and_then(|t| {
            let parsed = datetime::parse_range(t)
                .filter(|_| t.contains('T'))
                .map(|r| r.lo);
            if parsed.is_none() {
                errors.push(FieldError::query(
                    "updated_since",
                    "must be an RFC 3339 date-time, e.g. 2025-03-14T16:02:11Z",
                ));
            }
            parsed
        });
        let limit = match q.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::query(
                        "limit",
                        "must be an integer from 1 to 200",
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        let after = q.cursor.as_deref().and_then(|c| {
            let parsed = parse_list_cursor(c);
            if parsed.is_none() {
                errors.push(FieldError::query(
                    "cursor",
                    "is not a cursor this API returned",
                ));
            }
            parsed
        });
        if !errors.is_empty() {
            return Err(CboError::Validation(errors));
        }
        let filter = ReferralFilter {
            status,
            urgency,
            updated_since,
            after,
            limit: limit + 1,
        };
        let mut rows = self.fhir.store().referrals(org, &filter).await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = has_more
            .then(|| {
                rows.last()
                    .map(|r| format!("{}_{}", r.updated_at, r.referral.id))
            })
            .flatten();
        Ok(Page {
            data: rows
                .iter()
                .map(|r| projection::summary(&r.referral, r.updated_at))
                .collect(),
            next_cursor,
            has_more,
        })
    }

    /// The referral as this organisation may see it (JSON), and its version (the ETag).
    pub async fn get(&self, org: &str, id: &str) -> Result<(Bytes, i64), CboError> {
        let store = self.fhir.store();
        let (row, task) = store
            .referral_with_task(org, id)
            .await?
            .ok_or(CboError::NotFound)?;
        let task = task.ok_or(CboError::NotFound)?;
        let summary = projection::summary(&row.referral, row.updated_at);
        let omit = self.mappings.current().omitted_for(org);
        let version = row.referral.version;
        let current = |ty: &str, id: &str| store.known_version(ty, id);
        if let Some(body) = self.views.get(org, id, &summary, &omit, current) {
            return Ok((body, version));
        }
        let value = serde_json::from_str::<Value>(&task.body).map_err(|_| CboError::NotFound)?;
        let related = projection::gather(&value, &mut FromStore(store)).await?;
        let body = Bytes::from(projection::project(&summary, &value, &related, &omit).to_string());
        let inputs: Option<Vec<_>> = std::iter::once(Some(("Task".into(), task.id, task.version)))
            .chain(
                related
                    .versions
                    .into_iter()
                    .map(|(ty, id, v)| Some((ty, id, v?))),
            )
            .collect();
        // Kept only when built from what is current: never from a read that a write
        // overtook, and never with PostgreSQL, where versions are not known in memory.
        if let Some(inputs) =
            inputs.filter(|i| i.iter().all(|(t, id, v)| current(t, id) == Some(*v)))
        {
            let view = View {
                summary,
                omit,
                inputs,
                body: body.clone(),
            };
            self.views.put(org, id, view);
        }
        Ok((body, version))
    }

    /// [`Cbo::get`] as a JSON value, for templates and status reports.
    pub async fn view(&self, org: &str, id: &str) -> Result<(Value, i64), CboError> {
        let (body, version) = self.get(org, id).await?;
        let view = serde_json::from_slice(&body)
            .map_err(|e| CboError::Unknown(format!("the referral view is not JSON: {e}")))?;
        Ok((view, version))
    }

    /// Runs an action for `org`. A retry with the same Idempotency-Key gets the first
    /// answer again; the same key while the first is still running gets 409.
    pub async fn act(
        &self,
        org: &OrganizationConfig,
        call: ActionCall<'_>,
    ) -> Result<Answer, CboError> {
        // Another organisation's referral is not found, whatever the body says.
        let store = self.fhir.store();
        let visible = store.referral_with_task(&org.id, call.referral_id).await?;
        if visible.is_none() {
            return Err(CboError::NotFound);
        }
        let action = body::parse_action(call.action, call.body)?;
        let if_match = call.if_match.map(parse_etag).transpose()?;
        let idempotency = call.idempotency_key.map(|key| IdempotencyKey {
            key: key.to_string(),
            fingerprint: fingerprint(call.referral_id, call.action, call.body),
        });
        let _guard = match &idempotency {
            Some(k) => Some(InFlight::enter(&self.in_flight, &org.id, &k.key)?),
            None => None,
        };
        // What the answer shows besides the Task (ServiceRequest, Patient, Consent …) is
        // not changed by an action, so it is read here, in parallel with other requests,
        // rather than inside the serial writer.
        let (related, task_hint) = match visible {
            Some((row, Some(task))) => match serde_json::from_str::<Value>(&task.body) {
                Ok(task) => (
                    projection::gather(&task, &mut FromStore(store)).await?,
                    Some(row.referral.task_id),
                ),
                Err(_) => (Default::default(), None),
            },
            _ => (Default::default(), None),
        };
        let request = ActionRequest {
            organization: org.id.clone(),
            organization_name: org.name.clone(),
            referral_id: call.referral_id.to_string(),
            action,
            if_match,
            idempotency,
            omit: self.mappings.current().omitted_for(&org.id),
            related,
            task_hint,
        };
        match self.fhir.act(request).await? {
            Ok(done) => Ok(Answer {
                status: done.status,
                body: done.body,
                replayed: done.replayed,
            }),
            Err(Refusal::NotFound) => Err(CboError::NotFound),
            Err(Refusal::VersionConflict { current }) => Err(CboError::VersionConflict { current }),
            Err(Refusal::IdempotencyKeyReused) => Err(CboError::IdempotencyKeyReused),
            Err(Refusal::Transition(e)) => Err(CboError::from(e)),
        }
    }

    /// The organisation's event feed after `after` (a sequence number).
    pub async fn events(
        &self,
        org: &str,
        after: Option<&str>,
        limit: Option<&str>,
    ) -> Result<Page<FeedEvent>, CboError> {
        let after = match after {
            None => 0,
            Some(a) => a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                CboError::Validation(vec![FieldError::query(
                    "cursor",
                    "must be a sequence number from this feed",
                )])
            })?,
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    CboError::Validation(vec![FieldError::query(
                        "limit",
                        "must be an integer from 1 to 200",
                    )])
                })?,
        };
        let (events, pruned_through) = self.fhir.store().events(org, after, limit + 1).await?;
        if after < pruned_through {
            return Err(CboError::CursorExpired {
                oldest: pruned_through,
            });
        }
        let has_more = events.len() as i64 > limit;
        let data: Vec<FeedEvent> = events
            .into_iter()
            .take(limit as usize)
            .map(feed_event)
            .collect();
        Ok(Page {
            next_cursor: data.last().map(|e| e.sequence.to_string()),
            data,
            has_more,
        })
    }

    /// One referral's timeline.
    pub async fn referral_events(&self, org: &str, id: &str) -> Result<Vec<FeedEvent>, CboError> {
        let store = self.fhir.store();
        store.referral(org, id).await?.ok_or(CboError::NotFound)?;
        Ok(store
            .referral_events(org, id)
            .await?
            .into_iter()
            .map(feed_event)
            .collect())
    }

    /// The organisation's service catalogue.
    pub async fn services(&self, org: &str) -> Result<Vec<Service>, CboError> {
        let params = [
            ("organization".to_string(), format!("Organization/{org}")),
            ("_count".to_string(), "200".to_string()),
        ];
        let query = crate::fhir::search::parse_query("HealthcareService", &params, false)?;
        let page = self.fhir.store().search(&query).await?;
        Ok(page
            .matches
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
            .map(|hs| services::from_resource(org, &hs))
            .collect())
    }

    pub async fn service(&self, org: &str, id: &str) -> Result<Service, CboError> {
        let hs = self.stored_service(org, id).await?.ok_or_else(|| {
            CboError::Unknown(format!(
                "no service {id:?} in this organisation's catalogue"
            ))
        })?;
        Ok(services::from_resource(org, &hs))
    }

    /// Creates or replaces a service; answers (201 or 200, the service).
    pub async fn put_service(
        &self,
        org: &str,
        id: &str,
        body: &[u8],
    ) -> Result<(u16, Service), CboError> {
        let fid = service_fhir_id(org, id)?;
        let input = body::parse_service(body)?;
        let existing = self.stored_service(org, id).await?;
        let mut resource = services::to_resource(org, id, &input, existing.as_ref());
        resource["id"] = Value::String(fid.clone());
        let written = self
            .fhir
            .update("HealthcareService", &fid, resource, None, None)
            .await?;
        let stored: Value = serde_json::from_str(&written.stored.body).unwrap_or(Value::Null);
        Ok((written.status, services::from_resource(org, &stored)))
    }

    /// Reports a service's capacity (the IG's capacity-status extension).
    pub async fn put_capacity(
        &self,
        org: &str,
        id: &str,
        body: &[u8],
    ) -> Result<Service, CboError> {
        let fid = service_fhir_id(org, id)?;
        let input = body::parse_capacity(body)?;
        let existing = self.stored_service(org, id).await?.ok_or_else(|| {
            CboError::Unknown(format!(
                "no service {id:?} in this organisation's catalogue"
            ))
        })?;
        let resource = services::with_capacity(existing, &input);
        let written = self
            .fhir
            .update("HealthcareService", &fid, resource, None, None)
            .await?;
        let stored: Value = serde_json::from_str(&written.stored.body).unwrap_or(Value::Null);
        Ok(services::from_resource(org, &stored))
    }

    async fn stored_service(&self, org: &str, id: &str) -> Result<Option<Value>, CboError> {
        let Some(fid) = services::fhir_id(org, id) else {
            return Ok(None);
        };
        Ok(self
            .fhir
            .store()
            .read("HealthcareService", &fid)
            .await?
            .and_then(|s| serde_json::from_str(&s.body).ok()))
    }

    /// One pass of the background sweep: expire overdue referrals, prune old events
    /// and idempotency keys. Returns how many referrals expired.
    pub async fn sweep(&self) -> Result<usize, CboError> {
        let now = datetime::now_micros();
        let overdue = self.fhir.store().overdue_referrals(now, 500).await?;
        let mut expired = 0;
        for (id, org) in overdue {
            let name = self.organizations.name_of(&org);
            let request = ActionRequest {
                organization: org.clone(),
                organization_name: name,
                referral_id: id.clone(),
                action: crate::referral::Action::Expire,
                if_match: None,
                idempotency: None,
                omit: vec![],
                related: Default::default(),
                task_hint: None,
            };
            // An error means it was answered between the query and the action.
            if self.fhir.act(request).await?.is_ok() {
                expired += 1;
                tracing::info!(message = "Referral expired.", referral_id = %id, organization = %org);
            }
        }
        let day = 24 * 3600 * 1_000_000_i64;
        self.fhir
            .prune(
                now - i64::from(self.event_retention_days) * day,
                now - KEY_RETENTION_HOURS * 3600 * 1_000_000,
            )
            .await?;
        Ok(expired)
    }
}

/// An event as the feed shows it, and as webhooks deliver it.
pub fn feed_event(e: Event) -> FeedEvent {
    let about_endpoint = e.endpoint_id.is_some();
    FeedEvent {
        id: e.id,
        event_type: e.event_type,
        sequence: e.seq,
        occurred_at: datetime::format_instant(e.created_at),
        data: FeedEventData {
            referral_id: (!about_endpoint).then_some(e.referral_id),
            status: e.status,
            version: (!about_endpoint).then_some(e.version),
            endpoint_id: e.endpoint_id,
        },
    }
}

/// The `next_cursor` of a referral list (`<updated_at micros>_<referral id>`), as the
/// document states it; [`parse_list_cursor`] takes exactly what it matches.
pub const LIST_CURSOR_PATTERN: &str = "^[0-9]{1,18}_[A-Za-z0-9.-]{1,64}$";

fn parse_list_cursor(c: &str) -> Option<(i64, String)> {
    let (t, id) = c.split_once('_')?;
    let digits = !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit());
    let id_ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    (digits && id_ok)
        .then(|| (t.parse().ok(), id.to_string()))
        .and_then(|(t, id)| Some((t?, id)))
}

fn service_fhir_id(org: &str, id: &str) -> Result<String, CboError> {
    services::fhir_id(org, id).ok_or_else(|| {
        CboError::Validation(vec![FieldError::body(
            "",
            format!("service id {id:?} must be 1-40 letters, digits or '-'"),
        )])
    })
}

fn parse_etag(s: &str) -> Result<i64, CboError> {
    crate::resource::version_from_etag(s).ok_or_else(|| {
        CboError::Validation(vec![FieldError::header(
            "If-Match",
            "must be an ETag this API returned, e.g. W/\"3\"",
        )])
    })
}

/// What makes two requests "the same" for an Idempotency-Key: target, action, body.
fn fingerprint(referral_id: &str, action: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(referral_id.as_bytes());
    h.update([0]);
    h.update(action.as_bytes());
    h.update([0]);
    h.update(body);
    crate::hex(&h.finalize())
}

/// Marks an Idempotency-Key as running in this process until dropped.
struct InFlight {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl InFlight {
    fn enter(
        set: &Arc<Mutex<HashSet<(String, String)>>>,
        org: &str,
        key: &str,
    ) -> Result<InFlight, CboError> {
        let key = (org.to_string(), key.to_string());
        let mut running = set.lock().unwrap_or_else(|e| e.into_inner());
        if !running.insert(key.clone()) {
            return Err(CboError::RequestInProgress);
        }
        Ok(InFlight {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

struct FromStore<'a>(&'a crate::store::Store);

impl projection::Fetch for FromStore<'_> {
    type Error = StoreError;

    async fn fetch(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<StoredResource>, StoreError> {
        self.0.read_current(keys).await
    }
}
