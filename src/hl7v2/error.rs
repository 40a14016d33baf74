//! One error type for parsing, addressing and building.

use super::ack::ErrorCode;

/// Segment indexes are 0-based positions in the message, field numbers follow HL7
/// (MSH-1 is the field separator), offsets are bytes into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty message")]
    Empty,
    #[error("message is larger than 4 GiB")]
    TooLarge,
    #[error("input is not valid UTF-8 (byte {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("message does not start with an MSH segment (byte {offset})")]
    NotMsh { offset: usize },
    #[error("MSH segment too short: no field separator (byte {offset})")]
    MshTooShort { offset: usize },
    #[error("MSH-2 must hold 4 or 5 encoding characters, found {found} (byte {offset})")]
    BadEncodingChars { found: usize, offset: usize },
    #[error("MSH-{field}: {byte:#04x} cannot be a delimiter (byte {offset})")]
    InvalidDelimiter {
        byte: u8,
        field: usize,
        offset: usize,
    },
    #[error("delimiter {:?} declared twice in MSH-1/MSH-2 (byte {offset})", char::from(*byte))]
    DuplicateDelimiter { byte: u8, offset: usize },
    #[error("segment {segment}: segment id is not 3 letters or digits (byte {offset})")]
    InvalidSegmentId { segment: usize, offset: usize },
    #[error("segment {segment}: {id} outside a message in a batch (byte {offset})")]
    UnexpectedSegment {
        segment: usize,
        id: String,
        offset: usize,
    },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
}

impl Error {
    /// Where the problem is: (0-based segment index, HL7 field number, byte offset).
    pub fn location(&self) -> (Option<usize>, Option<usize>, Option<usize>) {
        match *self {
            Error::Empty | Error::TooLarge | Error::InvalidPath { .. } => (None, None, None),
            Error::InvalidUtf8 { offset } | Error::NotMsh { offset } => (None, None, Some(offset)),
            Error::MshTooShort { offset } => (Some(0), Some(1), Some(offset)),
            Error::BadEncodingChars { offset, .. } | Error::DuplicateDelimiter { offset, .. } => {
                (Some(0), Some(2), Some(offset))
            }
            Error::InvalidDelimiter { field, offset, .. } => (Some(0), Some(field), Some(offset)),
            Error::InvalidSegmentId { segment, offset }
            | Error::UnexpectedSegment {
                segment, offset, ..
            } => (Some(segment), Some(0), Some(offset)),
        }
    }

    /// The HL7 table 0357 code an ACK should report for this error.
    pub fn hl7_code(&self) -> ErrorCode {
        match self {
            Error::NotMsh { .. }
            | Error::InvalidSegmentId { .. }
            | Error::UnexpectedSegment { .. } => ErrorCode::SegmentSequence,
            Error::MshTooShort { .. } | Error::Empty => ErrorCode::RequiredFieldMissing,
            Error::BadEncodingChars { .. }
            | Error::InvalidDelimiter { .. }
            | Error::DuplicateDelimiter { .. }
            | Error::InvalidUtf8 { .. } => ErrorCode::DataType,
            Error::TooLarge | Error::InvalidPath { .. } => ErrorCode::InternalError,
        }
    }
}
