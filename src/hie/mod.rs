//! HIE feeds translated: HL7 v2 ADT and Da Vinci notification Bundles become one kind
//! of [`Notice`], which the FHIR engine applies in one transaction (identity, Patient,
//! Encounter, events for CBOs with open referrals). No I/O: the face that receives,
//! stores and acknowledges messages is `feeds`.
//!
//! A Da Vinci notification is keyed by its `Bundle.identifier`, else by its
//! `MessageHeader.id` within its source endpoint. Times keep the sender's offset
//! ([`hl7_time`]).

pub mod adt;
pub mod notification;
pub mod tables;

pub use tables::{Effect, FeedTables, Unmapped};

use crate::hl7v2;
use crate::identity::IdentityRules;
use crate::store::InboundMessage;

/// What the feed tables and identity rules make of a stored inbound message, as
/// received: for a replay, and for `crossway mappings replay`'s comparison of two
/// mapping sets.
pub fn stored_notice(
    message: &InboundMessage,
    feeds: &FeedTables,
    identity: &IdentityRules,
) -> Result<Notice, NoticeError> {
    match message.format.as_str() {
        "fhir" => match serde_json::from_str::<Value>(&message.body) {
            // A message keyed by its client was stored under `client:<id>`.
            Ok(bundle) => {
                notification::notice(&bundle, identity, message.source.strip_prefix("client:"))
            }
            Err(e) => Err(NoticeError::reject(
                ErrorCode::DataType,
                "Bundle",
                &format!("stored body is not JSON: {e}"),
            )),
        },
        "operator" => Err(NoticeError::reject(
            ErrorCode::UnsupportedMessageType,
            "",
            "operator commands are not replayed; run them again",
        )),
        _ => match hl7v2::parse(&message.body) {
            Ok(msg) => adt::notice(&msg, feeds, identity),
            Err(e) => Err(NoticeError::reject(e.hl7_code(), "MSH", &e.to_string())),
        },
    }
}

use serde_json::Value;

use crate::hl7v2::ErrorCode;
use crate::identity::Identifier;

/// What a feed message says, whichever format it came in.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The deduplication key: sending facility (MSH-4) or Bundle.identifier.system …
    pub source: String,
    /// … and MSH-10 or Bundle.identifier.value.
    pub control_id: String,
    /// `hl7v2` or `fhir`.
    pub format: &'static str,
    /// `ADT^A01`, `notification-discharge`, …
    pub event: String,
    pub effect: Effect,
    /// The person's trusted identifiers, sorted.
    pub identifiers: Vec<Identifier>,
    /// Identifiers left out, and similar notes, for the log.
    pub warnings: Vec<String>,
    /// The Patient the message describes (no id): `Value::Null` when it describes none.
    pub patient: Value,
    pub encounter: Option<EncounterChange>,
    /// A merge's retired identifiers (MRG-1), or an unlink's second record.
    pub retired: Vec<Identifier>,
    /// Tables whose unmapped code the message carries through under the `keep`
    /// policy, for the count.
    pub kept_codes: Vec<&'static str>,
}

impl Notice {
    /// What the mapping made of the message, as `crossway mappings test` and `mappings
    /// replay` show it: the ACK it earns (the store may still refuse it) and every
    /// field the rules produced. Identifiers are sorted: their order never matters.
    pub fn to_json(&self) -> Value {
        let ids = |list: &[Identifier]| {
            let mut v: Vec<Value> = list
                .iter()
                .map(|i| serde_json::json!({"system": i.system, "value": i.value, "type": i.kind}))
                .collect();
            v.sort_by_key(Value::to_string);
            Value::Array(v)
        };
        serde_json::json!({
            "ack": "AA",
            "source": self.source,
            "control_id": self.control_id,
            "event": self.event,
            "effect": self.effect,
            "identifiers": ids(&self.identifiers),
            "retired": ids(&self.retired),
            "warnings": self.warnings,
            "patient": self.patient,
            "encounter": self.encounter.as_ref().map(|e| {
                let mut v = serde_json::json!({
                "key": e.key,
                "class": e.class,
                "start": e.start,
                "end": e.end,
                "disposition": e.disposition,
                "occurred": e.occurred,
                });
                if let Some(system) = &e.system {
                    v["system"] = serde_json::json!(system);
                }
                if let Some(class) = &e.class_local {
                    v["class_local"] = class.clone();
                }
                if let Some(d) = &e.disposition_local {
                    v["disposition_local"] = d.clone();
                }
                v
            }),
        })
    }

    /// A notice that so far names no one (the reader fills in what the message says).
    pub fn new(
        source: String,
        control_id: String,
        format: &'static str,
        event: String,
        effect: Effect,
    ) -> Notice {
        Notice {
            source,
            control_id,
            format,
            event,
            effect,
            identifiers: Vec::new(),
            warnings: Vec::new(),
            patient: Value::Null,
            encounter: None,
            retired: Vec::new(),
            kept_codes: Vec::new(),
        }
    }
}

/// What a message says about one encounter. Times are FHIR dateTimes with the
/// sender's offset kept.
#[derive(Debug, Clone, PartialEq)]
pub struct EncounterChange {
    /// Identifies the encounter within the source (`visit:<PV1-19>`).
    pub key: String,
    /// The system of the encounter's own identifier when the message names one (a FHIR
    /// `Encounter.identifier`): the key is then scoped by it rather than by the message
    /// source, so that one encounter relayed by several senders stays one.
    pub system: Option<String>,
    /// v3 ActCode (`IMP`, `EMER`, `AMB`).
    pub class: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub disposition: Option<String>,
    /// A patient class no table maps, kept as the sender wrote it (a `Coding` in a
    /// system naming the sender and the table), in place of `class`.
    pub class_local: Option<Value>,
    /// A discharge disposition kept as sent (a `CodeableConcept`), in place of
    /// `disposition`.
    pub disposition_local: Option<Value>,
    /// When the event happened (EVN-6, else EVN-2).
    pub occurred: Option<String>,
}

/// Why a message was not applied: where (an HL7 path like `PID-3` or a FHIR path) and
/// which rule. `reject` means the message is not accepted at all (AR); otherwise it
/// parsed but could not be applied (AE, dead letter).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {rule}")]
pub struct NoticeError {
    pub code: ErrorCode,
    pub path: String,
    pub rule: String,
    pub reject: bool,
}

impl NoticeError {
    pub fn reject(code: ErrorCode, path: &str, rule: &str) -> NoticeError {
        NoticeError {
            code,
            path: path.to_string(),
            rule: rule.to_string(),
            reject: true,
        }
    }

    pub fn error(code: ErrorCode, path: &str, rule: &str) -> NoticeError {
        NoticeError {
            reject: false,
            ..NoticeError::reject(code, path, rule)
        }
    }
}

/// HL7 DTM → FHIR dateTime, keeping the sender's offset. Without one, the facility's
/// configured offset is used; without that, a time is cut to its date (a FHIR
/// dateTime with hours needs an offset, and guessing one would move the event).
pub fn hl7_time(raw: &str, default_offset: Option<&str>) -> Option<String> {
    let (body, offset) = match raw.find(['+', '-']) {
        Some(i) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || ![4, 6, 8, 10, 12, 14].contains(&digits.len())
        || fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let offset = match offset {
        Some(o) => {
            let o = o.as_bytes();
            if o.len() != 5 || !o[1..].iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(format!(
                "{}{}:{}",
                o[0] as char,
                std::str::from_utf8(&o[1..3]).ok()?,
                std::str::from_utf8(&o[3..5]).ok()?
            ))
        }
        None => default_offset.map(str::to_string),
    };
    let d = digits;
    let date = match d.len() {
        4 => d.to_string(),
        6 => format!("{}-{}", &d[..4], &d[4..6]),
        _ => format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]),
    };
    if d.len() <= 8 {
        return Some(date);
    }
    let Some(offset) = offset else {
        return Some(date);
    };
    let minute = if d.len() >= 12 { &d[10..12] } else { "00" };
    let second = if d.len() >= 14 { &d[12..14] } else { "00" };
    let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
    Some(format!(
        "{date}T{}:{minute}:{second}{fraction}{offset}",
        &d[8..10]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_times_keep_their_offset_and_dates_stay_dates() {
        assert_eq!(
            hl7_time("20250314152900-0500", None).as_deref(),
            Some("2025-03-14T15:29:00-05:00")
        );
        assert_eq!(
            hl7_time("202503141529", Some("+01:00")).as_deref(),
            Some("2025-03-14T15:29:00+01:00")
        );
        assert_eq!(
            hl7_time("20250314152900.25+0000", None).as_deref(),
            Some("2025-03-14T15:29:00.25+00:00")
        );
        assert_eq!(hl7_time("20250314", None).as_deref(), Some("2025-03-14"));
        assert_eq!(
            hl7_time("20250314152900", None).as_deref(),
            Some("2025-03-14")
        );
        assert_eq!(hl7_time("2025031415290", None), None);
        assert_eq!(hl7_time("yesterday", None), None);
        assert_eq!(hl7_time("20250314-05", None), None);
    }
}
