//! HL7 v2 ER7 ("pipe and hat") parsing, encoding, batches and ACKs.
//!
//! Pure and self-contained (std + thiserror, only `super::` paths) so the fuzz target and
//! the benchmark can include it with `#[path]`.
//!
//! # Parsing
//! [`parse`] records the end of every component and every field in two flat `u32`
//! offset vectors, and each segment's ranges into them; a repetition ends at a
//! component ended by the repetition character. One walk computes, 64 bytes at a time,
//! a bit mask per delimiter class (SSE2 or AVX2 on x86_64, else a portable byte loop)
//! and turns the masks into offsets eight bits at a time through a table (AVX2), so
//! there is no branch per delimiter; line ends are a class of their own, so there is
//! none per segment either. The module's `unsafe` is that SIMD code, whose stores'
//! bound is asserted per block. Nothing is copied: values are raw, still-escaped slices of the input, and
//! [`Message::unescape`] decodes one when text is needed (borrowing if it has no escape).
//! Subcomponents are split on demand. A thread reuses the buffers of the last message it
//! dropped.
//!
//! ```text
//! let msg = hl7v2::parse(text)?;
//! let mrn = msg.get("PID-3[2].1")?;          // Option<&str>, None = not present
//! let name = msg.unescape(msg.get("PID-5.1")?.unwrap_or(""));
//! ```
//!
//! Paths: `SEG[occurrence]-field[repetition].component.subcomponent`, 1-based, occurrence
//! and repetition default to 1. MSH numbering follows HL7: MSH-1 is the field separator,
//! MSH-2 the encoding characters (FHS and BHS likewise).
//!
//! Values: `Some("")` is an empty value, `Some("\"\"")` the explicit null (see [`is_null`]),
//! `None` a value the message does not reach.
//!
//! # Leniency
//! Only damage that makes the rest unreadable is an [`Error`]: no MSH first, missing or
//! invalid/duplicate MSH-1/MSH-2 (except the escape character written twice, `^~\\&`,
//! which has one reading and is noted in [`Delimiters::leniency`]), invalid UTF-8 (via
//! [`parse_bytes`]). A segment id that
//! is not 3 letters/digits is also an error, with its location: it almost always means an
//! unescaped line break inside a value, and accepting it would silently cut that value.
//! Everything else is accepted: CR, LF or CRLF terminators, blank lines, any field count,
//! unknown and Z segments, unknown escape sequences (kept verbatim by `unescape`).
//!
//! # Encoding
//! [`Message::encode`] rebuilds the message from the index, ending each segment with CR,
//! so for CR-terminated input `parse(m)?.encode() == m`. [`MessageBuilder`] builds new
//! messages by path, escaping text. [`ack`] and [`reject`] build original-mode ACKs;
//! [`split_batch`] splits FHS/BHS batch files into messages.

mod ack;
mod batch;
mod delimiters;
mod encode;
mod error;
mod escape;
mod message;
mod parse;
mod path;
#[cfg(test)]
mod proptests;

pub use ack::{
    AckCode, AckCondition, AckError, AckMode, ErrorCode, ErrorLocation, Severity, ack, ack_mode,
    reject,
};
pub use batch::{Batch, split_batch};
pub use delimiters::Delimiters;
pub use encode::MessageBuilder;
pub use error::Error;
pub use message::{Component, Field, FieldName, Message, Repetition, Segment};
pub use parse::{parse, parse_bytes};
pub use path::{MAX_PATH_NUMBER, Path};

/// True for the explicit null `""`, which tells the receiver to delete a stored value
/// (unlike an empty value, which means "unchanged").
pub fn is_null(raw: &str) -> bool {
    raw == "\"\""
}
