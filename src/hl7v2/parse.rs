//! Single-pass indexer: one scan records every segment, field, repetition and component
//! boundary in four flat vectors of `u32` offsets.

use std::fmt;

use super::delimiters::Delimiters;
use super::error::Error;
use super::message::Message;

/// Half-open range: byte offsets for components, child indexes for the other levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentEntry {
    /// Byte range of the segment without its terminator.
    pub(super) bytes: Span,
    /// Range into `Index::fields`; entry 0 is the segment id, entry n is field n.
    pub(super) fields: Span,
}

/// Boundaries of one message. Every field has at least one repetition and every
/// repetition at least one component, so ranges are never empty.
///
/// `fields`, `repetitions` and `components` are scratch buffers kept longer than their
/// used part: the scanner writes every delimiter's entries unconditionally and only
/// advances the counts (no unpredictable branch per delimiter). Only ranges reachable
/// from `segments` are meaningful.
#[derive(Clone, Default)]
pub(super) struct Index {
    pub(super) segments: Vec<SegmentEntry>,
    pub(super) fields: Vec<Span>,
    pub(super) repetitions: Vec<Span>,
    pub(super) components: Vec<Span>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

/// Byte classes of the scanner, ordered so that each level closes all lower ones.
const COMPONENT: u8 = 1;
const REPETITION: u8 = 2;
const FIELD: u8 = 3;
const SEGMENT: u8 = 4;

/// Segments whose field 1 is the separator itself and field 2 the encoding characters.
pub(super) fn is_header_id(id: &[u8]) -> bool {
    matches!(id, b"MSH" | b"FHS" | b"BHS")
}

/// Parses one message, borrowing `input`.
pub fn parse(input: &str) -> Result<Message<'_>, Error> {
    Parser::new().parse(input)
}

/// Like [`parse`] for raw bytes; HL7 payloads must already be UTF-8 (transcode MSH-18
/// charsets such as 8859/1 before calling).
pub fn parse_bytes(input: &[u8]) -> Result<Message<'_>, Error> {
    let text = std::str::from_utf8(input).map_err(|e| Error::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse(text)
}

/// Keeps index buffers between messages so a listener parses without allocating.
#[derive(Debug, Default)]
pub struct Parser {
    spare: Index,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse<'a>(&mut self, input: &'a str) -> Result<Message<'a>, Error> {
        let mut index = std::mem::take(&mut self.spare);
        match scan(input.as_bytes(), &mut index) {
            Ok(delimiters) => Ok(Message::new(input, delimiters, index)),
            Err(e) => {
                self.spare = index;
                Err(e)
            }
        }
    }

    /// Hands a finished message's buffers back for the next [`Parser::parse`].
    pub fn recycle(&mut self, message: Message<'_>) {
        self.spare = message.into_index();
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
/// Entries one word can add per level, so one capacity check per word suffices.
const WORD: usize = 8;

/// Marks (high bit) bytes of `x` that are zero. Bytes above a zero byte may be marked
/// too; candidates are re-checked, so only misses would matter, and there are none.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x
}

/// Eight bytes from `at`, zero-padded past the end (zero is never a delimiter).
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    match b.get(at..at + 8) {
        Some(s) => buf.copy_from_slice(s),
        None => {
            let tail = b.get(at..).unwrap_or(&[]);
            if let Some(dst) = buf.get_mut(..tail.len()) {
                dst.copy_from_slice(tail);
            }
        }
    }
    u64::from_le_bytes(buf)
}

/// Makes `v[at..at + WORD]` writable; growth is geometric, so amortised O(1).
#[inline(always)]
fn ensure(v: &mut Vec<Span>, at: usize) {
    if v.len() < at + WORD {
        let want = (at + WORD).max(v.len() * 2).max(64);
        v.resize(want, Span::default());
    }
}

#[inline(always)]
fn put(v: &mut [Span], at: usize, start: u32, end: u32) {
    if let Some(slot) = v.get_mut(at) {
        *slot = Span { start, end };
    }
}

/// Scanner state: counts of committed entries and starts of the open ones.
struct Scan<'i> {
    index: &'i mut Index,
    fields: usize,
    repetitions: usize,
    components: usize,
    component_start: u32,
    first_component: u32,
    first_repetition: u32,
}

impl Scan<'_> {
    /// Closes the open component and, by class, its repetition and field. Branch-free:
    /// entries are always written and the counts advance by 0 or 1.
    #[inline(always)]
    fn close(&mut self, class: u8, at: u32) {
        let idx = &mut *self.index;
        put(
            &mut idx.components,
            self.components,
            self.component_start,
            at,
        );
        self.components += 1;
        self.component_start = at + 1;
        let nc = self.components as u32;
        put(
            &mut idx.repetitions,
            self.repetitions,
            self.first_component,
            nc,
        );
        let rep = class >= REPETITION;
        self.repetitions += usize::from(rep);
        self.first_component = if rep { nc } else { self.first_component };
        let nr = self.repetitions as u32;
        put(&mut idx.fields, self.fields, self.first_repetition, nr);
        let field = class >= FIELD;
        self.fields += usize::from(field);
        self.first_repetition = if field { nr } else { self.first_repetition };
    }

    fn reserve(&mut self) {
        ensure(&mut self.index.components, self.components);
        ensure(&mut self.index.repetitions, self.repetitions);
        ensure(&mut self.index.fields, self.fields);
    }

    /// A field that is one opaque component (segment id, MSH-1, MSH-2).
    fn opaque_field(&mut self, start: u32, end: u32) {
        self.reserve();
        self.component_start = start;
        self.close(FIELD, end);
    }
}

fn is_eol(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

fn scan(b: &[u8], index: &mut Index) -> Result<Delimiters, Error> {
    index.segments.clear();
    if b.len() >= u32::MAX as usize - WORD {
        return Err(Error::TooLarge);
    }
    let start = b.iter().position(|&c| !is_eol(c)).ok_or(Error::Empty)?;
    let (d, _) = Delimiters::from_header(b, start)?;
    let mut st = Scan {
        index,
        fields: 0,
        repetitions: 0,
        components: 0,
        component_start: 0,
        first_component: 0,
        first_repetition: 0,
    };
    scan_segments(b, start, &d, &mut st)?;
    Ok(d)
}

/// Scans eight bytes at a time: a SWAR test flags candidate delimiter bytes and only
/// those are classified, so ordinary text costs a few ALU operations per word.
fn scan_segments(b: &[u8], start: usize, d: &Delimiters, st: &mut Scan<'_>) -> Result<(), Error> {
    let n = b.len();
    let sep = d.field_byte();
    let mut class = [0u8; 256];
    class[usize::from(d.component_byte())] = COMPONENT;
    class[usize::from(d.repetition_byte())] = REPETITION;
    class[usize::from(sep)] = FIELD;
    class[usize::from(b'\r')] = SEGMENT;
    class[usize::from(b'\n')] = SEGMENT;
    let splat_field = ONES * u64::from(sep);
    let splat_component = ONES * u64::from(d.component_byte());
    let splat_repetition = ONES * u64::from(d.repetition_byte());
    let below_space = ONES * 0x20;

    let mut pos = start;
    loop {
        let seg_start = pos;
        let first_field = st.fields as u32;
        st.component_start = pos as u32;
        st.first_component = st.components as u32;
        st.first_repetition = st.repetitions as u32;
        let id = b.get(pos..pos + 3).unwrap_or(&[]);
        let after_id = b.get(pos + 3).copied();
        let id_ok = id.len() == 3 && id.iter().all(u8::is_ascii_alphanumeric);
        if !id_ok || after_id.is_some_and(|c| c != sep && !is_eol(c)) {
            return Err(Error::InvalidSegmentId {
                segment: st.index.segments.len(),
                offset: pos,
            });
        }
        // The id holds no delimiters: scanning starts after it and closes it as field 0.
        let mut base = pos + 3;
        let mut header_end = None;
        if after_id == Some(sep) && is_header_id(id) {
            st.opaque_field(pos as u32, pos as u32 + 3);
            st.opaque_field(base as u32, base as u32 + 1);
            let enc_end = b
                .get(base + 1..)
                .unwrap_or(&[])
                .iter()
                .position(|&c| c == sep || is_eol(c))
                .map_or(n, |p| base + 1 + p);
            st.opaque_field(base as u32 + 1, enc_end as u32);
            if b.get(enc_end) == Some(&sep) {
                st.component_start = enc_end as u32 + 1;
                base = enc_end + 1;
            } else {
                header_end = Some(enc_end);
            }
        }
        let end = match header_end {
            Some(end) => end,
            None => 'words: loop {
                st.reserve();
                if base >= n {
                    st.close(SEGMENT, n as u32);
                    break 'words n;
                }
                let w = word_at(b, base);
                let mut marks = (zero_bytes(w ^ splat_field)
                    | zero_bytes(w ^ splat_component)
                    | zero_bytes(w ^ splat_repetition)
                    | (w.wrapping_sub(below_space) & !w))
                    & HIGHS;
                while marks != 0 {
                    let shift = marks.trailing_zeros() & !7;
                    marks &= marks - 1;
                    let k = class[usize::from((w >> shift) as u8)];
                    if k == 0 {
                        continue;
                    }
                    let at = base + (shift >> 3) as usize;
                    st.close(k, at as u32);
                    if k == SEGMENT {
                        break 'words at;
                    }
                }
                base += WORD;
            },
        };
        st.index.segments.push(SegmentEntry {
            bytes: Span {
                start: seg_start as u32,
                end: end as u32,
            },
            fields: Span {
                start: first_field,
                end: st.fields as u32,
            },
        });
        match b.get(end..).unwrap_or(&[]).iter().position(|&c| !is_eol(c)) {
            Some(p) => pos = end + p,
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_location() {
        assert_eq!(parse("").unwrap_err(), Error::Empty);
        assert_eq!(parse("\r\n\r").unwrap_err(), Error::Empty);
        assert_eq!(parse("PID|1\r").unwrap_err(), Error::NotMsh { offset: 0 });
        assert_eq!(
            parse("MSH|^~\\&|A\rPI|1\r").unwrap_err(),
            Error::InvalidSegmentId {
                segment: 1,
                offset: 11
            }
        );
        assert_eq!(
            parse("MSH|^~\\&|A\rPID^1\r").unwrap_err(),
            Error::InvalidSegmentId {
                segment: 1,
                offset: 11
            }
        );
        assert_eq!(
            parse_bytes(b"MSH|^~\\&|\xff").unwrap_err(),
            Error::InvalidUtf8 { offset: 9 }
        );
    }

    #[test]
    fn parser_reuses_buffers() {
        let mut p = Parser::new();
        let m = p.parse("MSH|^~\\&|A|B\rPID|1|2^3~4\r").unwrap();
        assert_eq!(m.get("PID-2[2]").unwrap(), Some("4"));
        p.recycle(m);
        assert!(p.parse("nope").is_err());
        let m = p.parse("MSH|^~\\&|X\r").unwrap();
        assert_eq!(m.get("MSH-3").unwrap(), Some("X"));
        assert_eq!(m.segments().count(), 1);
    }
}
