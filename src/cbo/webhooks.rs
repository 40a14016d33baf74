//! `/cbo/v1/webhooks`: an organisation's endpoints, their signing secrets (shown once,
//! rotated with an overlap), test events, the delivery log and manual redelivery.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{CboError, FieldError};
use crate::outbox::sign::new_secret;
use crate::resource::datetime::{format_instant, now_micros};
use crate::store::{DeliveryRow, EndpointRow, Store};

pub use crate::referral::EVENT_TYPES;

/// The type of the event `POST /webhooks/{id}/test` sends.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// How long the previous secret keeps signing after a rotation.
const ROTATION_OVERLAP_MICROS: i64 = 24 * 3600 * 1_000_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    /// `https://…` (plain `http://` only to a loopback address, when the gateway allows
    /// insecure webhooks for local testing).
    #[schema(format = "uri", pattern = "^https?://")]
    pub url: String,
    /// Event types to receive; absent, null or empty: all.
    #[serde(default)]
    #[schema(schema_with = event_types_schema)]
    pub events: Vec<String>,
    #[serde(default)]
    #[schema(nullable)]
    pub description: String,
}

fn event_types_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, Type};
    ArrayBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Array,
            Type::Null,
        ]))
        .items(crate::referral::projection::code_schema(
            "An event type",
            EVENT_TYPES,
        ))
        .build()
        .into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: String,
    /// Where deliveries go (empty for a connector whose environment lacks its URL).
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    /// `active`; `disabled` after failing for longer than the retry window; for a
    /// connector, `inactive` while the gateway's environment lacks its settings.
    pub status: String,
    pub created_at: String,
    /// Only in the answer that created or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// For a connector to the organisation's case system: its id in
    /// `mappings/connectors/` (its log and redelivery work as for any endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// Also the `delivery_id` of redeliver: the event's sequence number.
    pub id: i64,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

fn view(e: &EndpointRow, secret: Option<String>) -> Endpoint {
    Endpoint {
        id: e.id.clone(),
        url: e.url.clone(),
        events: if e.event_types == "*" {
            Vec::new()
        } else {
            e.event_types
                .split_whitespace()
                .map(str::to_string)
                .collect()
        },
        description: e.description.clone(),
        status: e.status.clone(),
        created_at: format_instant(e.created_at),
        secret,
        connector: e.connector.clone(),
    }
}

fn delivery(d: &DeliveryRow) -> Delivery {
    Delivery {
        id: d.event_seq,
        event_type: d.event_type.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        next_attempt_at: (d.status == "pending").then(|| format_instant(d.next_attempt_at)),
        last_attempt_at: d.last_attempt_at.map(format_instant),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        delivered_at: d.delivered_at.map(format_instant),
    }
}

/// https only; http only to loopback, and only when `allow_insecure`.
fn check_url(url: &str, allow_insecure: bool) -> Result<(), CboError> {
    // A URI (RFC 3986), as the document's `format: uri` says: ASCII, no spaces.
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CboError::Validation(vec![FieldError::body(
            "/url",
            "must be a URI: ASCII without spaces (an international host name in punycode)",
        )]));
    }
    crate::outbox::destination::url_problem(url, allow_insecure).map_or(Ok(()), |m| {
        Err(CboError::Validation(vec![FieldError::body("/url", m)]))
    })
}

pub async fn create(
    store: &Store,
    organization: &str,
    body: &[u8],
    allow_insecure: bool,
) -> Result<Endpoint, CboError> {
    let mut value = crate::strict_json::parse(body)
        .map_err(|e| CboError::Validation(vec![FieldError::body(e.pointer, e.message)]))?;
    if let Some(obj) = value.as_object_mut() {
        super::drop_nulls(obj);
    }
    let input: EndpointInput = serde_json::from_value(value).map_err(|e| {
        CboError::Validation(vec![FieldError::body(
            "",
            format!("not a valid webhook: {e}"),
        )])
    })?;
    check_url(&input.url, allow_insecure)?;
    let mut errors = Vec::new();
    for (i, t) in input.events.iter().enumerate() {
        if !EVENT_TYPES.contains(&t.as_str()) {
            errors.push(FieldError::body(
                format!("/events/{i}"),
                format!(
                    "unknown event type {t:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(CboError::Validation(errors));
    }
    let secret = new_secret();
    let row = EndpointRow {
        id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
        organization_id: organization.to_string(),
        url: input.url,
        description: input.description,
        event_types: if input.events.is_empty() {
            "*".into()
        } else {
            format!(" {} ", input.events.join(" "))
        },
        secret: secret.clone(),
        previous_secret: None,
        previous_expires_at: None,
        status: "active".into(),
        failing_since: None,
        created_at: now_micros(),
        connector: None,
    };
    store.insert_endpoint(&row).await?;
    tracing::info!(message = "Webhook endpoint registered.", organization, endpoint = %row.id);
    Ok(view(&row, Some(secret)))
}

pub async fn list(store: &Store, organization: &str) -> Result<Vec<Endpoint>, CboError> {
    Ok(store
        .endpoints_of(organization)
        .await?
        .iter()
        .map(|e| view(e, None))
        .collect())
}

fn no_endpoint(id: &str) -> CboError {
    CboError::Unknown(format!("no webhook endpoint {id:?} for this organisation"))
}

async fn find(store: &Store, organization: &str, id: &str) -> Result<EndpointRow, CboError> {
    store
        .endpoint(organization, id)
        .await?
        .ok_or_else(|| no_endpoint(id))
}

/// A webhook endpoint the organisation manages itself (a connector's is managed by
/// its mappings: it has no secret to rotate and is removed by removing its file).
async fn find_own(store: &Store, organization: &str, id: &str) -> Result<EndpointRow, CboError> {
    let endpoint = find(store, organization, id).await?;
    match &endpoint.connector {
        None => Ok(endpoint),
        Some(c) => Err(CboError::Conflict(format!(
            "{id} is the connector {c}, managed by mappings/connectors/: change its file and reload"
        ))),
    }
}

pub async fn get(store: &Store, organization: &str, id: &str) -> Result<Endpoint, CboError> {
    Ok(view(&find(store, organization, id).await?, None))
}

pub async fn delete(store: &Store, organization: &str, id: &str) -> Result<(), CboError> {
    find_own(store, organization, id).await?;
    if store.delete_endpoint(organization, id).await? {
        Ok(())
    } else {
        Err(no_endpoint(id))
    }
}

/// A new secret; the old one keeps signing (a second signature) for 24 hours.
pub async fn rotate(store: &Store, organization: &str, id: &str) -> Result<Endpoint, CboError> {
    find_own(store, organization, id).await?;
    let secret = new_secret();
    let until = now_micros() + ROTATION_OVERLAP_MICROS;
    if !store
        .rotate_endpoint_secret(organization, id, &secret, until)
        .await?
    {
        return Err(no_endpoint(id));
    }
    Ok(view(&find(store, organization, id).await?, Some(secret)))
}

/// Queues a signed `webhook.test` event to the endpoint.
pub async fn test(store: &Store, organization: &str, id: &str) -> Result<String, CboError> {
    let endpoint = find_own(store, organization, id).await?;
    let now = now_micros();
    let event_id = store
        .enqueue_test_event(&endpoint, now, |sequence, event_id| {
            let event = super::FeedEvent {
                id: event_id.to_string(),
                event_type: TEST_EVENT_TYPE.to_string(),
                sequence,
                occurred_at: format_instant(now),
                data: super::FeedEventData {
                    referral_id: None,
                    status: "test".into(),
                    version: None,
                    endpoint_id: Some(endpoint.id.clone()),
                },
            };
            serde_json::to_string(&event).expect("events serialise")
        })
        .await?;
    Ok(event_id)
}

pub async fn deliveries(
    store: &Store,
    organization: &str,
    id: &str,
) -> Result<Vec<Delivery>, CboError> {
    let endpoint = find(store, organization, id).await?;
    Ok(store
        .deliveries_of(&endpoint.id, 200)
        .await?
        .iter()
        .map(delivery)
        .collect())
}

pub async fn redeliver(
    store: &Store,
    organization: &str,
    id: &str,
    delivery_id: &str,
) -> Result<(), CboError> {
    let endpoint = find(store, organization, id).await?;
    let missing = || {
        CboError::Unknown(format!(
            "no delivery {delivery_id:?} in the log of webhook endpoint {id:?}"
        ))
    };
    let seq: i64 = delivery_id.parse().map_err(|_| missing())?;
    if store.redeliver(&endpoint.id, seq, now_micros()).await? {
        Ok(())
    } else {
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_when_allowed() {
        assert!(check_url("https://cbo.example.org/hooks", false).is_ok());
        assert!(check_url("https://cbo.example.org:8443/hooks", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/hooks", true).is_ok());
        assert!(check_url("http://localhost:9000/hooks", true).is_ok());
        assert!(check_url("http://[::1]/hooks", true).is_ok());
        assert!(check_url("http://[::1]:9000/hooks", true).is_ok());
        for (url, allow) in [
            ("http://127.0.0.1:9000/hooks", false),
            ("http://cbo.example.org/hooks", true),
            ("ftp://cbo.example.org", true),
            ("cbo.example.org/hooks", true),
            ("https://user@cbo.example.org/", true),
            ("https:///path", true),
            // Not public: a metadata service, the internal network, loopback over https.
            ("https://169.254.169.254/latest/meta-data", true),
            ("https://10.0.0.5/hooks", true),
            ("https://[fd00::1]:8443/hooks", true),
            ("https://[::ffff:192.168.1.1]/hooks", true),
            ("https://127.0.0.1/hooks", false),
        ] {
            assert!(check_url(url, allow).is_err(), "{url} {allow}");
        }
    }
}
