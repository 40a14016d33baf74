//! HL7 v2 ADT → [`Notice`]: who the message is about (PID-3, MRG-1 through the identity
//! rules), what happened (the event table), the Patient it describes and the encounter
//! it changes. Pure: no store, no clock.

use serde_json::{Map, Value, json};

use super::tables::{Effect, FeedTables, Unmapped};
use super::{EncounterChange, Notice, NoticeError, hl7_time};
use crate::hl7v2::{ErrorCode, Message, Repetition};
use crate::identity::{Identifier, IdentityRules, rules::Cx};

fn text(msg: &Message<'_>, path: &str) -> String {
    let raw = msg.get(path).ok().flatten().unwrap_or("");
    if crate::hl7v2::is_null(raw) {
        return String::new();
    }
    msg.unescape(raw).into_owned()
}

/// The message's deduplication key and event: the sending facility (MSH-4 namespace,
/// else universal id), MSH-10, and `type^trigger` (the trigger from EVN-1 when MSH-9.2
/// is empty). Empty strings where the message leaves them out.
pub fn key(msg: &Message<'_>) -> (String, String, String) {
    let namespace = text(msg, "MSH-4.1");
    let source = if namespace.is_empty() {
        text(msg, "MSH-4.2")
    } else {
        namespace
    };
    let mut trigger = text(msg, "MSH-9.2");
    if trigger.is_empty() {
        trigger = text(msg, "EVN-1");
    }
    let event = format!("{}^{trigger}", text(msg, "MSH-9.1"));
    (source, text(msg, "MSH-10"), event)
}

/// `MSH-4 MSH-10 event` of raw message bytes, for the audit trail.
pub fn describe(bytes: &[u8]) -> String {
    match crate::hl7v2::parse_bytes(bytes) {
        Ok(msg) => {
            let (source, control, event) = key(&msg);
            format!("{source} {control} {event}")
        }
        Err(_) => "(unparseable message)".into(),
    }
}

/// MSA-1 of an acknowledgement.
pub fn ack_code(ack: &str) -> &str {
    ack.split(['\r', '\n'])
        .find_map(|seg| seg.strip_prefix("MSA|"))
        .and_then(|rest| rest.split('|').next())
        .unwrap_or("")
}

/// Reads a message the feed accepted at the MLLP level into a notice.
pub fn notice(
    msg: &Message<'_>,
    tables: &FeedTables,
    rules: &IdentityRules,
) -> Result<Notice, NoticeError> {
    let (source, control_id, event) = key(msg);
    if control_id.is_empty() {
        return Err(NoticeError::reject(
            ErrorCode::RequiredFieldMissing,
            "MSH-10",
            "message control id is required (it is the deduplication key)",
        ));
    }
    if source.is_empty() {
        return Err(NoticeError::reject(
            ErrorCode::RequiredFieldMissing,
            "MSH-4",
            "sending facility is required (it is half of the deduplication key)",
        ));
    }
    let Some(facility) = tables.facility(&text(msg, "MSH-4.1"), &text(msg, "MSH-4.2")) else {
        return Err(NoticeError::reject(
            ErrorCode::UnknownKey,
            "MSH-4",
            &format!("sending facility {source:?} is not configured in mappings/hie/feeds.toml"),
        ));
    };
    let processing = text(msg, "MSH-11.1");
    if !tables.accepts_processing_id(&processing) {
        return Err(NoticeError::reject(
            ErrorCode::UnsupportedProcessingId,
            "MSH-11",
            &format!("processing id {processing:?} is not accepted"),
        ));
    }
    let (kind, trigger) = event.split_once('^').unwrap_or((&event, ""));
    if kind != "ADT" {
        return Err(NoticeError::reject(
            ErrorCode::UnsupportedMessageType,
            "MSH-9",
            &format!("message type {kind:?} is not accepted (ADT only)"),
        ));
    }
    let effect = tables.effect(trigger);
    let offset = facility.utc_offset.as_deref();
    let mut notice = Notice::new(source.clone(), control_id, "hl7v2", event, effect);
    if let Some(deviation) = msg.delimiters().leniency() {
        notice.warnings.push(format!(
            "MSH-2 read as {:?} ({deviation}: the escape character was written twice)",
            msg.delimiters().encoding_chars()
        ));
    }
    if effect == Effect::Ignore {
        return Ok(notice);
    }
    if msg.segment("PID", 1).is_none() {
        return Err(NoticeError::error(
            ErrorCode::SegmentSequence,
            "PID",
            "the PID segment is required for this event",
        ));
    }
    let before = notice.warnings.len();
    notice.identifiers = identifiers(msg, "PID", 1, 3, &source, rules, &mut notice.warnings);
    if notice.identifiers.is_empty() {
        let why = notice.warnings[before..].join("; ");
        return Err(NoticeError::error(
            ErrorCode::RequiredFieldMissing,
            "PID-3",
            &format!(
                "no trusted person-level identifier (empty CX.1, untrusted authority or visit-level type){}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ),
        ));
    }
    notice.patient = patient(msg, &notice.identifiers, &mut notice.warnings);
    match effect {
        Effect::Merge => {
            if msg.segment("MRG", 1).is_none() {
                return Err(NoticeError::error(
                    ErrorCode::SegmentSequence,
                    "MRG",
                    "a merge needs the MRG segment naming the retired identifier",
                ));
            }
            notice.retired = identifiers(msg, "MRG", 1, 1, &source, rules, &mut notice.warnings);
            if notice.retired.is_empty() {
                return Err(NoticeError::error(
                    ErrorCode::RequiredFieldMissing,
                    "MRG-1",
                    "no trusted identifier to retire",
                ));
            }
        }
        Effect::Unlink => {
            // A37 carries the two records to separate in two PID segments.
            notice.retired = identifiers(msg, "PID", 2, 3, &source, rules, &mut notice.warnings);
            if notice.retired.is_empty() {
                return Err(NoticeError::error(
                    ErrorCode::RequiredFieldMissing,
                    "PID[2]-3",
                    "an unlink needs a second PID naming the record to separate",
                ));
            }
        }
        Effect::Admit
        | Effect::Discharge
        | Effect::Transfer
        | Effect::CancelAdmit
        | Effect::CancelDischarge => {
            let change = encounter(msg, effect, tables, offset, &mut notice)?;
            notice.encounter = Some(change);
        }
        Effect::Update | Effect::Ignore => {}
    }
    Ok(notice)
}

/// Trusted, person-level identifiers of a CX field, sorted so that resolution never
/// depends on repetition order. Skipped repetitions become warnings.
fn identifiers(
    msg: &Message<'_>,
    segment: &str,
    occurrence: usize,
    field: usize,
    source: &str,
    rules: &IdentityRules,
    warnings: &mut Vec<String>,
) -> Vec<Identifier> {
    let Some(f) = msg
        .segment(segment, occurrence)
        .and_then(|s| s.field(field))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, rep) in f.repetitions().enumerate() {
        let part = |rep: &Repetition<'_, '_>, c: usize, s: usize| -> String {
            let raw = rep
                .component(c)
                .and_then(|comp| comp.subcomponent(s))
                .unwrap_or("");
            msg.unescape(raw).into_owned()
        };
        let value = part(&rep, 1, 1);
        let (namespace, universal_id, universal_id_type) =
            (part(&rep, 4, 1), part(&rep, 4, 2), part(&rep, 4, 3));
        let kind = part(&rep, 5, 1);
        let (facility_namespace, facility_universal_id) = (part(&rep, 6, 1), part(&rep, 6, 2));
        let cx = Cx {
            value: &value,
            namespace: &namespace,
            universal_id: &universal_id,
            universal_id_type: &universal_id_type,
            kind: &kind,
            facility_namespace: &facility_namespace,
            facility_universal_id: &facility_universal_id,
        };
        let at = || {
            format!(
                "{segment}{}-{field}[{}]",
                if occurrence > 1 {
                    format!("[{occurrence}]")
                } else {
                    String::new()
                },
                n + 1
            )
        };
        match rules.from_cx_noted(source, &cx) {
            Ok((id, note)) => {
                if let Some(note) = note {
                    warnings.push(format!("{}: {note}", at()));
                }
                out.push(id);
            }
            Err(why) => warnings.push(format!("{} ignored: {why}", at())),
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.system == b.system && a.value == b.value);
    out
}

fn patient(msg: &Message<'_>, ids: &[Identifier], warnings: &mut Vec<String>) -> Value {
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    let identifiers: Vec<Value> = ids
        .iter()
        .map(|i| {
            let mut v = json!({"system": i.system, "value": i.value});
            if let Some(kind) = &i.kind {
                v["type"] = json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": kind}]});
            }
            v
        })
        .collect();
    p.insert("identifier".into(), Value::Array(identifiers));
    let family = text(msg, "PID-5.1.1");
    let given: Vec<String> = [text(msg, "PID-5.2"), text(msg, "PID-5.3")]
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect();
    if !family.is_empty() || !given.is_empty() {
        let mut name = Map::new();
        if !family.is_empty() {
            name.insert("family".into(), json!(family));
        }
        if !given.is_empty() {
            name.insert("given".into(), json!(given));
        }
        p.insert("name".into(), Value::Array(vec![Value::Object(name)]));
    }
    let dob = text(msg, "PID-7.1");
    if !dob.is_empty() {
        match birth_date(&dob) {
            Some(date) => {
                p.insert("birthDate".into(), json!(date));
            }
            None => warnings.push(format!(
                "PID-7 ignored: {dob:?} is not a date (YYYY, YYYYMM or YYYYMMDD)"
            )),
        }
    }
    let gender = match text(msg, "PID-8").as_str() {
        "F" => Some("female"),
        "M" => Some("male"),
        "O" | "A" | "N" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    };
    if let Some(g) = gender {
        p.insert("gender".into(), json!(g));
    }
    let line: Vec<String> = [text(msg, "PID-11.1.1"), text(msg, "PID-11.2")]
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    if !line.is_empty() {
        let mut a = json!({"line": line});
        for (key, path) in [
            ("city", "PID-11.3"),
            ("state", "PID-11.4"),
            ("postalCode", "PID-11.5"),
            ("country", "PID-11.6"),
        ] {
            let v = text(msg, path);
            if !v.is_empty() {
                a[key] = json!(v);
            }
        }
        p.insert("address".into(), json!([a]));
    }
    let phone = {
        let area = text(msg, "PID-13.6");
        let local = text(msg, "PID-13.7");
        let plain = text(msg, "PID-13.1");
        if !local.is_empty() {
            format!("{area}{local}")
        } else {
            plain
        }
    };
    if !phone.is_empty() {
        p.insert(
            "telecom".into(),
            json!([{"system": "phone", "value": phone}]),
        );
    }
    Value::Object(p)
}

/// A birth date stays a date, at the precision the sender gave (a year, a month or a
/// day); a time of birth is dropped, never shifted into another day by an offset.
fn birth_date(raw: &str) -> Option<String> {
    let digits = raw.bytes().take_while(u8::is_ascii_digit).count();
    let year: i32 = raw.get(..4)?.parse().ok()?;
    let month = || -> Option<u8> { raw.get(4..6)?.parse().ok().filter(|m| (1..=12).contains(m)) };
    match digits {
        4 => Some(format!("{year:04}")),
        6 => Some(format!("{year:04}-{:02}", month()?)),
        d if d >= 8 => {
            let m = time::Month::try_from(month()?).ok()?;
            let day: u8 = raw.get(6..8)?.parse().ok()?;
            time::Date::from_calendar_date(year, m, day).ok()?;
            Some(format!("{year:04}-{:02}-{day:02}", u8::from(m)))
        }
        _ => None,
    }
}

/// The sender's own code space for an HL7 table: the code is kept, never passed off as
/// a standard one.
fn local_system(source: &str, table: &str) -> String {
    format!("urn:crossway:code:{source}:{table}")
}

fn encounter(
    msg: &Message<'_>,
    effect: Effect,
    tables: &FeedTables,
    offset: Option<&str>,
    notice: &mut Notice,
) -> Result<EncounterChange, NoticeError> {
    let time = |path: &str| -> Result<Option<String>, NoticeError> {
        let raw = text(msg, path);
        if raw.is_empty() {
            return Ok(None);
        }
        hl7_time(&raw, offset).map(Some).ok_or_else(|| {
            NoticeError::error(
                ErrorCode::DataType,
                path,
                &format!("{raw:?} is not an HL7 DTM (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])"),
            )
        })
    };
    // The event time: when it occurred (EVN-6), else when it was recorded (EVN-2).
    let occurred = match time("EVN-6.1")? {
        Some(t) => Some(t),
        None => time("EVN-2.1")?,
    };
    let policies = tables.unmapped();
    let visit = text(msg, "PV1-19.1");
    let class_code = text(msg, "PV1-2.1");
    let mut class_local = None;
    let class = match class_code.as_str() {
        "" => None,
        c => match (tables.patient_class(c), policies.patient_class) {
            (Some(mapped), _) => Some(mapped.to_string()),
            (None, Unmapped::Keep) => {
                class_local = Some(json!({
                    "system": local_system(&notice.source, "patient_class"), "code": c}));
                notice.warnings.push(format!(
                    "PV1-2: patient class {c:?} has no mapping; kept as sent (hie/feeds.toml [unmapped] patient_class = \"keep\")"
                ));
                notice.kept_codes.push("patient_class");
                None
            }
            (None, Unmapped::DeadLetter) => {
                return Err(NoticeError::error(
                    ErrorCode::TableValueNotFound,
                    "PV1-2",
                    &format!(
                        "patient class {c:?} has no mapping (rule hie/feeds.toml [patient_class], target Encounter.class; or [unmapped] patient_class = \"keep\")"
                    ),
                ));
            }
        },
    };
    // Only a discharge records a disposition: any other event leaves PV1-36 unread,
    // whatever it holds.
    let mut disposition_local = None;
    let disposition_code = if effect == Effect::Discharge {
        text(msg, "PV1-36.1")
    } else {
        String::new()
    };
    let disposition = match disposition_code.as_str() {
        "" => None,
        d => match (
            tables.discharge_disposition(d),
            policies.discharge_disposition,
        ) {
            (Some(mapped), _) => Some(mapped.to_string()),
            (None, Unmapped::Keep) => {
                let display = text(msg, "PV1-36.2");
                let mut coding = json!({
                    "system": local_system(&notice.source, "discharge_disposition"), "code": d});
                if !display.is_empty() {
                    coding["display"] = json!(display);
                }
                disposition_local = Some(json!({
                    "coding": [coding],
                    "text": if display.is_empty() { d.to_string() } else { display },
                }));
                notice.warnings.push(format!(
                    "PV1-36: discharge disposition {d:?} has no mapping; kept as sent (hie/feeds.toml [unmapped] discharge_disposition = \"keep\")"
                ));
                notice.kept_codes.push("discharge_disposition");
                None
            }
            (None, Unmapped::DeadLetter) => {
                return Err(NoticeError::error(
                    ErrorCode::TableValueNotFound,
                    "PV1-36",
                    &format!(
                        "discharge disposition {d:?} has no mapping (rule hie/feeds.toml [discharge_disposition], target Encounter.hospitalization.dischargeDisposition; or [unmapped] discharge_disposition = \"keep\")"
                    ),
                ));
            }
        },
    };
    let start = match time("PV1-44.1")? {
        Some(t) => Some(t),
        None if effect == Effect::Admit => occurred.clone(),
        None => None,
    };
    let end = match time("PV1-45.1")? {
        Some(t) => Some(t),
        None if effect == Effect::Discharge => occurred.clone(),
        None => None,
    };
    Ok(EncounterChange {
        // Without a visit number the message itself is the only key: the encounter
        // cannot be matched by later messages, which the warning says.
        key: if visit.is_empty() {
            format!("msg:{}", notice.control_id)
        } else {
            format!("visit:{visit}")
        },
        system: None,
        class,
        class_local,
        disposition_local,
        start,
        end,
        disposition,
        occurred,
    })
}
