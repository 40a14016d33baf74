//! The feed face: HL7 v2 bytes (from the MLLP listener, [`mllp`]) or Da Vinci
//! notification Bundles (from `$process-message`) in, an acknowledgement out, after the
//! commit. Translation into a [`Notice`] is `hie`'s; applying it is the engine's.
//!
//! Invariants: a message is stored before it is acknowledged, `AA` only after its
//! effects committed; a resent message (same sending facility and MSH-10) is answered
//! as the first time and applied once; a message that cannot be applied is kept as a
//! dead letter, never dropped.

pub mod mllp;

use serde_json::Value;

use crate::fhir::engine::{Inbound, Ingested};
use crate::fhir::{Fhir, FhirError, datetime};
use crate::hie::{Effect, Notice, NoticeError, adt, notification, stored_notice};
use crate::hl7v2::{self, AckCode, AckError, AckMode, ErrorCode, ErrorLocation, Severity};
use crate::identity::Identifier;
use crate::mapping::Live;
use crate::store::InboundMessage;
use crate::telemetry::metrics::{
    FEED_TOLERATED, FEED_UNMAPPED_CODES, HL7_ACK_LATENCY, HL7_MESSAGES,
};

#[derive(Clone)]
pub struct Feed {
    fhir: Fhir,
    /// The feed tables and identity rules in force (reloadable).
    mappings: Live,
}

/// How a notification Bundle was taken (the HTTP status is its only acknowledgement).
#[derive(Debug)]
pub enum Taken {
    Applied,
    /// Seen before; answered as the first time.
    Duplicate,
    Ignored,
}

/// Why a notification was refused; the message is kept as a dead letter unless it
/// could not even be identified.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Invalid(#[from] NoticeError),
    #[error("the message names several persons ({0}); it is held for identity review")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] FhirError),
}

/// The message's stored row before its fate is known.
fn row(source: &str, control_id: &str, format: &str, event: &str, body: String) -> InboundMessage {
    InboundMessage {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        source: source.to_string(),
        control_id: control_id.to_string(),
        format: format.to_string(),
        event: event.to_string(),
        status: String::new(),
        error: None,
        body,
        received_at: datetime::now_micros(),
    }
}

fn hl7_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn ack_id() -> String {
    format!("ACK{}", uuid::Uuid::now_v7().simple())
}

/// ERR-2 from a path like `PID-3` or `PID[2]-3`.
fn location(path: &str) -> Option<ErrorLocation> {
    let (segment, field) = path.split_once('-').unwrap_or((path, ""));
    let (id, occurrence) = match segment.split_once('[') {
        Some((id, rest)) => (id, rest.trim_end_matches(']').parse().ok()),
        None => (segment, Some(1)),
    };
    if id.len() != 3 {
        return None;
    }
    Some(ErrorLocation {
        segment_id: id.to_string(),
        sequence: occurrence,
        field: field.parse().ok(),
        ..ErrorLocation::default()
    })
}

impl Feed {
    pub fn new(fhir: Fhir, mappings: Live) -> Feed {
        Feed { fhir, mappings }
    }

    /// Handles one HL7 v2 message; returns its application outcome (`None`: not
    /// stored) and the ACKs to send, in order (in enhanced mode none, one or two, as
    /// MSH-15/MSH-16 ask), or no ACKs at all when an original-mode message could not be
    /// stored (the sender keeps it and resends).
    pub async fn hl7v2(&self, bytes: &[u8]) -> (Option<AckCode>, Option<Vec<String>>) {
        let started = std::time::Instant::now();
        let (outcome, acks) = self.answer_hl7v2(bytes).await;
        let code = outcome.map_or("none", AckCode::as_str);
        metrics::counter!(HL7_MESSAGES, "ack" => code).increment(1);
        metrics::histogram!(HL7_ACK_LATENCY, "ack" => code).record(started.elapsed().as_secs_f64());
        (outcome, acks)
    }

    /// The application outcome (`None`: not stored) and the ACKs that answer it.
    async fn answer_hl7v2(&self, bytes: &[u8]) -> (Option<AckCode>, Option<Vec<String>>) {
        let msg = match hl7v2::parse_bytes(bytes) {
            Ok(m) => m,
            Err(e) => {
                let ack = self.refuse_unparsed(bytes, e).await;
                return (ack.as_ref().map(|_| AckCode::Reject), ack.map(|a| vec![a]));
            }
        };
        if let Some(deviation) = msg.delimiters().leniency() {
            tracing::warn!(
                message = "HL7 v2 message taken although its MSH-2 deviates from the standard.",
                deviation,
                read_as = %msg.delimiters().encoding_chars()
            );
            metrics::counter!(FEED_TOLERATED, "deviation" => deviation).increment(1);
        }
        let outcome = self.outcome_hl7v2(&msg).await;
        let ack = |code: AckCode, errors: &[AckError]| {
            hl7v2::ack(&msg, code, &ack_id(), &hl7_now(), errors)
        };
        let acks = match (hl7v2::ack_mode(&msg), &outcome) {
            (AckMode::Original, None) => None,
            (AckMode::Original, Some((code, errors))) => Some(vec![ack(*code, errors)]),
            (
                AckMode::Enhanced {
                    accept,
                    application,
                },
                _,
            ) => {
                let (commit, commit_errors) = match &outcome {
                    None => (
                        AckCode::CommitError,
                        vec![AckError {
                            code: ErrorCode::InternalError,
                            severity: Severity::Error,
                            location: None,
                            message: "the message could not be stored; send it again".into(),
                        }],
                    ),
                    Some((AckCode::Reject, errors)) => (AckCode::CommitReject, errors.clone()),
                    Some(_) => (AckCode::CommitAccept, Vec::new()),
                };
                let mut acks = Vec::new();
                if accept.wants(commit == AckCode::CommitAccept) {
                    acks.push(ack(commit, &commit_errors));
                }
                if let Some((code, errors)) = &outcome
                    && application.wants(*code == AckCode::Accept)
                {
                    acks.push(ack(*code, errors));
                }
                Some(acks)
            }
        };
        (outcome.map(|(code, _)| code), acks)
    }

    /// Keeps a message that does not parse and answers it AR (original mode: its
    /// MSH-15/MSH-16 cannot be read).
    async fn refuse_unparsed(&self, bytes: &[u8], e: hl7v2::Error) -> Option<String> {
        tracing::warn!(message = "HL7 v2 message rejected: it does not parse.", error = %e);
        let body = String::from_utf8_lossy(bytes).into_owned();
        let mut r = row("(unparsed)", &ack_id(), "hl7v2", "", body);
        r.status = "rejected".into();
        r.error = Some(e.to_string());
        self.fhir.ingest(Inbound::record(r)).await.ok()?;
        Some(hl7v2::reject(bytes, &e, &ack_id(), &hl7_now()))
    }

    /// Stores and applies a parsed message; its application outcome, `None` when the
    /// store could not take it.
    async fn outcome_hl7v2(&self, msg: &hl7v2::Message<'_>) -> Option<(AckCode, Vec<AckError>)> {
        let body = msg.as_str().to_string();
        let answer = |code: AckCode, errors: &[AckError]| Some((code, errors.to_vec()));
        let mappings = self.mappings.current();
        let notice = adt::notice(msg, &mappings.feeds, &mappings.identity);
        let (source, control, event) = adt::key(msg);
        match self
            .take(notice, &source, &control, "hl7v2", &event, body)
            .await
        {
            Ok(Taken::Applied | Taken::Ignored | Taken::Duplicate) => answer(AckCode::Accept, &[]),
            Err(FeedError::Invalid(e)) => {
                let err = AckError {
                    code: e.code,
                    severity: Severity::Error,
                    location: location(&e.path),
                    message: e.to_string(),
                };
                let code = if e.reject {
                    AckCode::Reject
                } else {
                    AckCode::Error
                };
                answer(code, &[err])
            }
            Err(e @ FeedError::Conflict(_)) => answer(
                AckCode::Error,
                &[AckError {
                    code: ErrorCode::DuplicateKey,
                    severity: Severity::Error,
                    location: location("PID-3"),
                    message: e.to_string(),
                }],
            ),
            Err(FeedError::Store(e)) => {
                tracing::warn!(message = "HL7 v2 message not acknowledged: the store did not take it.", error = %e);
                None
            }
        }
    }

    /// The AR for a message longer than the listener accepts, answered from its head
    /// (the MSH segment) so the sender can correlate it. Not stored: it was not read.
    pub fn too_large(&self, head: &[u8], len: usize, limit: usize) -> String {
        let line_end = head
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
            .unwrap_or(head.len());
        let error = AckError {
            code: ErrorCode::InternalError,
            severity: Severity::Error,
            location: None,
            message: format!("message of {len} bytes is larger than the limit of {limit} bytes"),
        };
        tracing::warn!(
            message = "HL7 v2 message rejected: too large.",
            bytes = len,
            limit
        );
        match hl7v2::parse_bytes(&head[..line_end]) {
            Ok(msg) => hl7v2::ack(&msg, AckCode::Reject, &ack_id(), &hl7_now(), &[error]),
            Err(e) => hl7v2::reject(head, &e, &ack_id(), &hl7_now()),
        }
    }

    /// Handles one Da Vinci notification Bundle (`$process-message`).
    /// `client` is the authenticated caller.
    pub async fn notification(
        &self,
        bundle: &Value,
        body: String,
        client: &str,
    ) -> Result<Taken, FeedError> {
        let (source, control) =
            notification::key(bundle, Some(client)).map_err(FeedError::Invalid)?;
        let event = notification::event(bundle);
        let notice = notification::notice(bundle, &self.mappings.current().identity, Some(client));
        self.take(notice, &source, &control, "fhir", &event, body)
            .await
    }

    /// Stores and applies a notice (or stores why it is not applicable).
    async fn take(
        &self,
        notice: Result<Notice, NoticeError>,
        source: &str,
        control: &str,
        format: &str,
        event: &str,
        body: String,
    ) -> Result<Taken, FeedError> {
        let mut record = row(source, control, format, event, body);
        let invalid = match notice {
            Ok(n) => {
                for table in &n.kept_codes {
                    metrics::counter!(FEED_UNMAPPED_CODES, "table" => *table).increment(1);
                }
                for w in &n.warnings {
                    tracing::warn!(message = "Feed message: identifier ignored.", source, control_id = control, detail = %w);
                }
                return self.apply(Inbound::notice(n, record, false)).await;
            }
            Err(e) => e,
        };
        if source.is_empty() || control.is_empty() {
            // Without a key it cannot be deduplicated or replayed; still kept for
            // forensics under a key of its own.
            record.source = "(unidentified)".into();
            record.control_id = ack_id();
        }
        record.status = if invalid.reject { "rejected" } else { "dead" }.into();
        record.error = Some(invalid.to_string());
        tracing::warn!(message = "Feed message not applied.", source, control_id = control, status = %record.status, error = %invalid);
        match self.fhir.ingest(Inbound::record(record)).await? {
            // A resend of a message that was applied the first time is answered so.
            Ingested::Duplicate(first) if first.status == "applied" => Ok(Taken::Duplicate),
            _ => Err(FeedError::Invalid(invalid)),
        }
    }

    async fn apply(&self, inbound: Inbound) -> Result<Taken, FeedError> {
        match self.fhir.ingest(inbound).await? {
            Ingested::Applied { .. } => Ok(Taken::Applied),
            Ingested::Ignored => Ok(Taken::Ignored),
            Ingested::Duplicate(first) => match first.status.as_str() {
                "dead" | "rejected" => Err(FeedError::Invalid(NoticeError::error(
                    ErrorCode::InternalError,
                    "",
                    first.error.as_deref().unwrap_or("not applicable"),
                ))),
                "conflict" => Err(FeedError::Conflict(
                    first
                        .error
                        .unwrap_or_else(|| "see identity conflicts".into()),
                )),
                _ => Ok(Taken::Duplicate),
            },
            Ingested::Conflict(persons) => {
                tracing::warn!(
                    message = "Feed message names several persons; held for review.",
                    persons = persons.len()
                );
                Err(FeedError::Conflict(persons.join(", ")))
            }
            Ingested::Dead(why) => Err(FeedError::Invalid(why)),
        }
    }

    /// An operator's merge (`retire` into `survive`) or, with no `survive`, unlink of
    /// `retire`: applied like an A40/A37, recorded like a feed message.
    pub async fn operator(
        &self,
        survive: Option<Identifier>,
        retire: Identifier,
    ) -> Result<Taken, FeedError> {
        let control = format!("op_{}", uuid::Uuid::now_v7().simple());
        let (effect, event) = match survive {
            Some(_) => (Effect::Merge, "operator-merge"),
            None => (Effect::Unlink, "operator-unlink"),
        };
        let body = serde_json::json!({"survivor": survive.as_ref().map(Identifier::token), "retired": retire.token()});
        let mut notice = Notice::new(
            "operator".into(),
            control.clone(),
            "operator",
            event.into(),
            effect,
        );
        notice.identifiers = survive.into_iter().collect();
        notice.retired = vec![retire];
        let record = row("operator", &control, "operator", event, body.to_string());
        self.apply(Inbound::notice(notice, record, false)).await
    }

    /// Re-runs a stored message through the current mappings (dead letters after a fix).
    pub async fn replay(&self, message: &InboundMessage) -> Result<Taken, FeedError> {
        let mut record = message.clone();
        record.status = String::new();
        record.error = None;
        let mappings = self.mappings.current();
        match stored_notice(message, &mappings.feeds, &mappings.identity) {
            Ok(n) => self.apply(Inbound::notice(n, record, true)).await,
            Err(e) => {
                record.status = if e.reject { "rejected" } else { "dead" }.into();
                record.error = Some(e.to_string());
                self.fhir.ingest(Inbound::replayed_record(record)).await?;
                Err(FeedError::Invalid(e))
            }
        }
    }
}
