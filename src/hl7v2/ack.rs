//! Acknowledgements (MSH + MSA + optional ERR, v2.5 layout): original mode, and the
//! commit and application ACKs of enhanced mode (MSH-15/MSH-16).
//!
//! The clock and id generator are the caller's: pass MSH-7 and MSH-10 of the ACK in.

use super::delimiters::Delimiters;
use super::encode::MessageBuilder;
use super::error::Error;
use super::message::Message;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// AA: accepted.
    Accept,
    /// AE: processing failed.
    Error,
    /// AR: rejected (bad MSH, unsupported type/version/processing id).
    Reject,
    /// CA: enhanced mode, the message is safely stored.
    CommitAccept,
    /// CE: enhanced mode, the message could not be stored; send it again.
    CommitError,
    /// CR: enhanced mode, the message is refused (as for AR).
    CommitReject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
            AckCode::CommitAccept => "CA",
            AckCode::CommitError => "CE",
            AckCode::CommitReject => "CR",
        }
    }
}

/// HL7 table 0155: when an acknowledgement is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// AL
    Always,
    /// NE
    Never,
    /// ER: only when the outcome is an error or a rejection.
    Error,
    /// SU: only when the outcome is a success.
    Success,
}

impl AckCondition {
    fn from_code(code: &str) -> Option<AckCondition> {
        match code {
            "AL" => Some(AckCondition::Always),
            "NE" => Some(AckCondition::Never),
            "ER" => Some(AckCondition::Error),
            "SU" => Some(AckCondition::Success),
            _ => None,
        }
    }

    /// Whether an acknowledgement of an outcome that did (or did not) succeed is sent.
    pub fn wants(self, success: bool) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::Error => !success,
            AckCondition::Success => success,
        }
    }
}

/// How a message asks to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 both empty: one application ACK (AA, AE or AR).
    Original,
    /// A commit ACK (CA, CE, CR) under MSH-15's condition, then an application ACK
    /// under MSH-16's.
    Enhanced {
        accept: AckCondition,
        application: AckCondition,
    },
}

/// The mode MSH-15/MSH-16 ask for. In enhanced mode an empty or unknown condition
/// counts as AL: an ACK the sender did not want is ignored, one it waits for and never
/// gets makes it resend.
pub fn ack_mode(msg: &Message<'_>) -> AckMode {
    let raw = |path: &str| msg.get(path).ok().flatten().unwrap_or("");
    let (accept, application) = (raw("MSH-15"), raw("MSH-16"));
    if accept.is_empty() && application.is_empty() {
        return AckMode::Original;
    }
    let condition = |code: &str| AckCondition::from_code(code).unwrap_or(AckCondition::Always);
    AckMode::Enhanced {
        accept: condition(accept),
        application: condition(application),
    }
}

/// HL7 table 0357 (message error condition codes), used in ERR-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequence,
    RequiredFieldMissing,
    DataType,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedProcessingId,
    UnsupportedVersionId,
    UnknownKey,
    DuplicateKey,
    RecordLocked,
    InternalError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKey => 204,
            ErrorCode::DuplicateKey => 205,
            ErrorCode::RecordLocked => 206,
            ErrorCode::InternalError => 207,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKey => "Unknown key identifier",
            ErrorCode::DuplicateKey => "Duplicate key identifier",
            ErrorCode::RecordLocked => "Application record locked",
            ErrorCode::InternalError => "Application internal error",
        }
    }
}

/// ERR-4 (table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
        }
    }
}

/// ERR-2 (ERL): where the problem is. Numbers are 1-based; `None` leaves a part empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorLocation {
    pub segment_id: String,
    pub sequence: Option<usize>,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

/// One ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub code: ErrorCode,
    pub severity: Severity,
    pub location: Option<ErrorLocation>,
    /// ERR-8, free text for a person.
    pub message: String,
}

impl AckError {
    /// The ERR a receiver should get for a message we could not parse.
    pub fn from_parse_error(err: &Error, input: &[u8]) -> Self {
        let (segment, field, _) = err.location();
        let location = segment.map(|position| {
            let id = segment_id_at(input, position);
            ErrorLocation {
                sequence: Some(1 + occurrences_before(input, position, &id)),
                segment_id: id,
                field: field.filter(|&f| f > 0),
                ..ErrorLocation::default()
            }
        });
        Self {
            code: err.hl7_code(),
            severity: Severity::Error,
            location,
            message: err.to_string(),
        }
    }
}

/// Builds the ACK for a parsed message, answering in the sender's delimiters.
pub fn ack(
    msg: &Message<'_>,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
) -> String {
    let raw = |path: &str| msg.get(path).ok().flatten().unwrap_or("");
    let header = Header {
        sending_app: raw("MSH-3"),
        sending_facility: raw("MSH-4"),
        receiving_app: raw("MSH-5"),
        receiving_facility: raw("MSH-6"),
        trigger: raw("MSH-9.2"),
        control_id: raw("MSH-10"),
        processing_id: raw("MSH-11"),
        version: raw("MSH-12"),
    };
    build(
        *msg.delimiters(),
        &header,
        code,
        control_id,
        timestamp,
        errors,
    )
}

/// Builds an AR for input that did not parse, salvaging what it can from the first
/// line so the sender can correlate it (MSA-2 = its MSH-10 when readable).
pub fn reject(input: &[u8], err: &Error, control_id: &str, timestamp: &str) -> String {
    let line_end = input
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(input.len());
    let line = String::from_utf8_lossy(input.get(..line_end).unwrap_or(&[]));
    let sep = line
        .strip_prefix("MSH")
        .and_then(|rest| rest.chars().next())
        .filter(char::is_ascii_punctuation);
    let fields: Vec<&str> = match sep {
        Some(sep) => line.split(sep).collect(),
        None => Vec::new(),
    };
    // After splitting, MSH-n sits at index n - 1 because MSH-1 is the separator itself.
    let field = |n: usize| fields.get(n - 1).copied().unwrap_or("");
    let trigger = field(9).split('^').nth(1).unwrap_or("");
    let header = Header {
        sending_app: field(3),
        sending_facility: field(4),
        receiving_app: field(5),
        receiving_facility: field(6),
        trigger,
        control_id: field(10),
        processing_id: field(11),
        version: field(12),
    };
    let error = AckError::from_parse_error(err, input);
    build(
        Delimiters::default(),
        &header,
        AckCode::Reject,
        control_id,
        timestamp,
        std::slice::from_ref(&error),
    )
}

/// Raw MSH values of the incoming message, already encoded for the ACK's delimiters.
struct Header<'h> {
    sending_app: &'h str,
    sending_facility: &'h str,
    receiving_app: &'h str,
    receiving_facility: &'h str,
    trigger: &'h str,
    control_id: &'h str,
    processing_id: &'h str,
    version: &'h str,
}

fn build(
    delimiters: Delimiters,
    h: &Header<'_>,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
) -> String {
    let mut b = MessageBuilder::new(delimiters);
    let mut put = |path: &str, raw: &str, escape: bool| {
        // Paths here are constants, so placing cannot fail.
        let _ = if escape {
            b.set(path, raw)
        } else {
            b.set_raw(path, raw)
        };
    };
    put("MSH-3", h.receiving_app, false);
    put("MSH-4", h.receiving_facility, false);
    put("MSH-5", h.sending_app, false);
    put("MSH-6", h.sending_facility, false);
    put("MSH-7", timestamp, true);
    put("MSH-9.1", "ACK", true);
    put("MSH-9.2", h.trigger, false);
    put("MSH-9.3", "ACK", true);
    put("MSH-10", control_id, true);
    put("MSH-11", h.processing_id, false);
    put("MSH-12", h.version, false);
    put("MSA-1", code.as_str(), true);
    put("MSA-2", h.control_id, false);
    for (i, e) in errors.iter().enumerate() {
        let err = |field: &str| format!("ERR[{}]-{field}", i + 1);
        if let Some(loc) = &e.location {
            put(&err("2.1"), &loc.segment_id, true);
            let parts = [
                loc.sequence,
                loc.field,
                loc.repetition,
                loc.component,
                loc.subcomponent,
            ];
            for (n, part) in parts.iter().enumerate() {
                if let Some(v) = part {
                    put(&err(&format!("2.{}", n + 2)), &v.to_string(), true);
                }
            }
        }
        put(&err("3.1"), &e.code.code().to_string(), true);
        put(&err("3.2"), e.code.text(), true);
        put(&err("3.3"), "HL70357", true);
        put(&err("4"), e.severity.as_str(), true);
        put(&err("8"), &e.message, true);
    }
    b.encode()
}

/// Segment id at a 0-based segment position of unparsed input (lossy, best effort).
fn segment_id_at(input: &[u8], position: usize) -> String {
    segments(input)
        .nth(position)
        .map(|s| String::from_utf8_lossy(s.get(..3).unwrap_or(s)).into_owned())
        .filter(|id| id.len() == 3 && id.bytes().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_default()
}

fn occurrences_before(input: &[u8], position: usize, id: &str) -> usize {
    if id.is_empty() {
        return 0;
    }
    segments(input)
        .take(position)
        .filter(|s| s.get(..3) == Some(id.as_bytes()))
        .count()
}

fn segments(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    input
        .split(|&c| c == b'\r' || c == b'\n')
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    const MSG: &str =
        "MSH|^~\\&|EHR|HOSP|XWAY|CW|20240101||ADT^A01^ADT_A01|CTRL42|P|2.5.1\rPID|1||7\r";

    #[test]
    fn msh_15_and_16_choose_the_mode() {
        let mode = |tail: &str| {
            let text = format!("MSH|^~\\&|EHR|HOSP|XWAY|CW|20240101||ADT^A08|C1|P|2.5.1{tail}\r");
            ack_mode(&parse(&text).unwrap())
        };
        assert_eq!(mode(""), AckMode::Original);
        assert_eq!(mode("|||"), AckMode::Original);
        assert_eq!(
            mode("|||NE|ER"),
            AckMode::Enhanced {
                accept: AckCondition::Never,
                application: AckCondition::Error
            }
        );
        // An empty or unknown condition in enhanced mode asks for the ACK.
        assert_eq!(
            mode("|||SU|XX"),
            AckMode::Enhanced {
                accept: AckCondition::Success,
                application: AckCondition::Always
            }
        );
        assert!(AckCondition::Error.wants(false) && !AckCondition::Error.wants(true));
        assert!(AckCondition::Success.wants(true) && !AckCondition::Success.wants(false));
    }

    #[test]
    fn accept_swaps_sender_and_receiver() {
        let m = parse(MSG).unwrap();
        let out = ack(&m, AckCode::Accept, "ACK1", "20240102", &[]);
        assert_eq!(
            out,
            "MSH|^~\\&|XWAY|CW|EHR|HOSP|20240102||ACK^A01^ACK|ACK1|P|2.5.1\rMSA|AA|CTRL42\r"
        );
        let a = parse(&out).unwrap();
        assert_eq!(a.get("MSA-2").unwrap(), Some("CTRL42"));
    }

    #[test]
    fn error_ack_carries_err_segment() {
        let m = parse(MSG).unwrap();
        let e = AckError {
            code: ErrorCode::RequiredFieldMissing,
            severity: Severity::Error,
            location: Some(ErrorLocation {
                segment_id: "PID".into(),
                sequence: Some(1),
                field: Some(5),
                component: Some(1),
                ..ErrorLocation::default()
            }),
            message: "Patient name | required".into(),
        };
        let out = ack(&m, AckCode::Error, "ACK2", "20240102", &[e]);
        let a = parse(&out).unwrap();
        assert_eq!(a.get("MSA-1").unwrap(), Some("AE"));
        assert_eq!(a.get("ERR-2").unwrap(), Some("PID^1^5^^1"));
        assert_eq!(
            a.get("ERR-3").unwrap(),
            Some("101^Required field missing^HL70357")
        );
        assert_eq!(a.get("ERR-4").unwrap(), Some("E"));
        let text = a.get("ERR-8").unwrap().unwrap();
        assert_eq!(a.unescape(text), "Patient name | required");
    }

    #[test]
    fn answers_in_sender_delimiters() {
        let m = parse("MSH#*!/$#A*1#B#C#D#T##ORU*R01#9#P#2.7\r").unwrap();
        let out = ack(&m, AckCode::Accept, "X", "T", &[]);
        assert_eq!(out, "MSH#*!/$#C#D#A*1#B#T##ACK*R01*ACK#X#P#2.7\rMSA#AA#9\r");
    }

    #[test]
    fn reject_salvages_minimal_msh() {
        let input = b"MSH|^~|EHR|HOSP|XWAY|CW|2024||ADT^A04|C9|P|2.3\rPID|1\r";
        let err = parse_bytes_err(input);
        let out = reject(input, &err, "R1", "2024");
        let a = parse(&out).unwrap();
        assert_eq!(a.get("MSH-5").unwrap(), Some("EHR"));
        assert_eq!(a.get("MSH-9.2").unwrap(), Some("A04"));
        assert_eq!(a.get("MSA-1").unwrap(), Some("AR"));
        assert_eq!(a.get("MSA-2").unwrap(), Some("C9"));
        assert_eq!(a.get("ERR-2").unwrap(), Some("MSH^1^2"));
        assert_eq!(a.get("ERR-3.1").unwrap(), Some("102"));
    }

    #[test]
    fn reject_of_garbage_is_still_an_ack() {
        for input in [&b""[..], b"\xff\xfe", b"PID|1\r", b"MSH|^~\\&|A\rP\rX"] {
            let err = parse_bytes_err(input);
            let a = parse(&reject(input, &err, "R", "T")).unwrap().encode();
            assert!(a.contains("MSA|AR|"), "{a}");
        }
    }

    #[test]
    fn bad_segment_is_located() {
        let input = b"MSH|^~\\&|A\rPID|1\rOBX|1\rOBX|2\rOB\r";
        let err = parse_bytes_err(input);
        let e = AckError::from_parse_error(&err, input);
        assert_eq!(e.code, ErrorCode::SegmentSequence);
        let loc = e.location.unwrap();
        assert_eq!((loc.segment_id.as_str(), loc.sequence), ("", Some(1)));
        let input = b"MSH|^~\\&|A\rOBX|1\rOBX|2\rOBX^\r";
        let loc = AckError::from_parse_error(&parse_bytes_err(input), input).location;
        assert_eq!(
            loc.map(|l| (l.segment_id, l.sequence)),
            Some(("OBX".into(), Some(3)))
        );
    }

    fn parse_bytes_err(input: &[u8]) -> Error {
        super::super::parse::parse_bytes(input).unwrap_err()
    }
}
