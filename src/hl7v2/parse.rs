//! Single-pass indexer: one scan records every segment, field, repetition and component
//! boundary in four flat vectors of `u32` offsets.

use std::fmt;

use super::delimiters::Delimiters;
use super::error::Error;
use super::message::Message;

/// Half-open range: byte offsets for components, child indexes for segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentEntry {
    /// Byte range of the segment without its terminator.
    pub(super) bytes: Span,
    /// Range of field indexes; entry 0 is the segment id, entry n is field n.
    pub(super) fields: Span,
}

/// Boundaries of one message. Fields, repetitions and components are numbered globally
/// in input order; every field has at least one repetition and every repetition at
/// least one component, so a field's repetitions run from the previous field's end to
/// its own (likewise for components): storing ends is enough.
///
/// `fields`, `repetitions` and `components` are scratch buffers longer than their used
/// part: the scanner writes entries for every delimiter unconditionally and advances
/// the counts by 0 or 1, so there is no unpredictable branch per delimiter. Only indexes
/// reachable from `segments` are meaningful.
#[derive(Clone, Default)]
pub(super) struct Index {
    pub(super) segments: Vec<SegmentEntry>,
    /// Per field: end (exclusive) of its repetitions.
    fields: Vec<u32>,
    /// Per repetition: end (exclusive) of its components.
    repetitions: Vec<u32>,
    /// Per component: byte range.
    components: Vec<Span>,
}

impl Index {
    fn children(ends: &[u32], first: usize, last: usize) -> Option<Span> {
        let start = match first.checked_sub(1) {
            Some(prev) => *ends.get(prev)?,
            None => 0,
        };
        let end = *ends.get(last)?;
        (start < end).then_some(Span { start, end })
    }

    /// Repetition indexes of the fields `first..=last`.
    pub(super) fn repetitions_of(&self, first: usize, last: usize) -> Option<Span> {
        Self::children(&self.fields, first, last)
    }

    /// Component indexes of the repetitions `first..=last`.
    pub(super) fn components_of(&self, first: usize, last: usize) -> Option<Span> {
        Self::children(&self.repetitions, first, last)
    }

    pub(super) fn component(&self, i: usize) -> Option<Span> {
        self.components.get(i).copied()
    }
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
    candidates: Vec<u32>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse<'a>(&mut self, input: &'a str) -> Result<Message<'a>, Error> {
        let mut index = std::mem::take(&mut self.spare);
        match scan(input.as_bytes(), &mut index, &mut self.candidates) {
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
const WORD: usize = 8;

/// Marks (high bit) bytes of `x` that are zero. Bytes above a zero byte may be marked
/// too; candidates are re-checked, so only misses would matter, and there are none.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x
}

/// Eight bytes from `at`, zero-padded past the end.
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    match b.get(at..at + WORD) {
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

/// Grows a scratch buffer to at least `len` entries (never shrinks, so a reused
/// [`Parser`] stops allocating once it has seen its largest message).
fn ensure<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len.max(v.len() * 2), T::default());
    }
}

/// Pass 1: offsets of every byte that may be a delimiter (field, component, repetition
/// separator or a control character), eight bytes per step. Writing a fixed four
/// offsets per word, whatever the count, keeps this loop free of data-dependent
/// branches; the rare word with more than four takes one extra branch.
fn candidates(b: &[u8], d: &Delimiters, out: &mut Vec<u32>) -> usize {
    let n = b.len();
    ensure(out, n + 2 * WORD);
    let splat_field = ONES * u64::from(d.field_byte());
    let splat_component = ONES * u64::from(d.component_byte());
    let splat_repetition = ONES * u64::from(d.repetition_byte());
    let below_space = ONES * 0x20;
    let mut len = 0;
    let mut base = 0;
    while base < n {
        let w = word_at(b, base);
        let mut marks = (zero_bytes(w ^ splat_field)
            | zero_bytes(w ^ splat_component)
            | zero_bytes(w ^ splat_repetition)
            | (w.wrapping_sub(below_space) & !w))
            & HIGHS;
        let valid = n - base;
        if valid < WORD {
            marks &= (1u64 << (valid * 8)) - 1;
        }
        let count = marks.count_ones() as usize;
        if let Some(dst) = out.get_mut(len..len + WORD) {
            let (low, high) = dst.split_at_mut(WORD / 2);
            for slot in low {
                *slot = base as u32 + (marks.trailing_zeros() >> 3);
                marks &= marks.wrapping_sub(1);
            }
            if count > WORD / 2 {
                for slot in high {
                    *slot = base as u32 + (marks.trailing_zeros() >> 3);
                    marks &= marks.wrapping_sub(1);
                }
            }
        }
        len += count;
        base += WORD;
    }
    len
}

/// Pass-2 state: counts of committed entries and the open component's start.
#[derive(Clone, Copy)]
struct Counts {
    fields: usize,
    repetitions: usize,
    components: usize,
    component_start: u32,
}

/// Scratch slices written by pass 2.
struct Out<'i> {
    fields: &'i mut [u32],
    repetitions: &'i mut [u32],
    components: &'i mut [Span],
}

impl Out<'_> {
    /// Closes the open component and, by class, its repetition and field. Entries are
    /// always written and the counts advance by 0 or 1: no branch on the class.
    #[inline(always)]
    fn close(&mut self, c: &mut Counts, class: u8, at: u32) {
        if let Some(slot) = self.components.get_mut(c.components) {
            *slot = Span {
                start: c.component_start,
                end: at,
            };
        }
        c.components += 1;
        c.component_start = at + 1;
        if let Some(slot) = self.repetitions.get_mut(c.repetitions) {
            *slot = c.components as u32;
        }
        c.repetitions += usize::from(class >= REPETITION);
        if let Some(slot) = self.fields.get_mut(c.fields) {
            *slot = c.repetitions as u32;
        }
        c.fields += usize::from(class >= FIELD);
    }

    /// A field that is one opaque component (segment id, MSH-1, MSH-2).
    fn opaque_field(&mut self, c: &mut Counts, start: u32, end: u32) {
        c.component_start = start;
        self.close(c, FIELD, end);
    }
}

fn is_eol(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

fn scan(b: &[u8], index: &mut Index, cands: &mut Vec<u32>) -> Result<Delimiters, Error> {
    index.segments.clear();
    if b.len() >= u32::MAX as usize - 4 * WORD {
        return Err(Error::TooLarge);
    }
    let start = b.iter().position(|&c| !is_eol(c)).ok_or(Error::Empty)?;
    let (d, _) = Delimiters::from_header(b, start)?;
    let count = candidates(b, &d, cands);
    let cands = cands.get(..count).unwrap_or(&[]);
    index_segments(b, start, &d, cands, index)?;
    Ok(d)
}

/// Pass 2: walks the candidates, closing components, repetitions and fields; segment
/// starts (id check, MSH-1/MSH-2) are handled out of the hot loop.
fn index_segments(
    b: &[u8],
    start: usize,
    d: &Delimiters,
    cands: &[u32],
    index: &mut Index,
) -> Result<(), Error> {
    let n = b.len();
    let sep = d.field_byte();
    let mut class = [0u8; 256];
    class[usize::from(d.component_byte())] = COMPONENT;
    class[usize::from(d.repetition_byte())] = REPETITION;
    class[usize::from(sep)] = FIELD;
    class[usize::from(b'\r')] = SEGMENT;
    class[usize::from(b'\n')] = SEGMENT;

    // Each candidate closes at most one entry per level; header segments add three
    // opaque fields each and the end of input one more, budgeted as they come.
    let mut budget = cands.len() + WORD;
    ensure(&mut index.components, budget);
    ensure(&mut index.repetitions, budget);
    ensure(&mut index.fields, budget);
    let mut c = Counts {
        fields: 0,
        repetitions: 0,
        components: 0,
        component_start: 0,
    };
    let mut next = 0;
    let mut pos = start;
    loop {
        let seg_start = pos;
        let first_field = c.fields as u32;
        c.component_start = pos as u32;
        let id = b.get(pos..pos + 3).unwrap_or(&[]);
        let after_id = b.get(pos + 3).copied();
        let id_ok = id.len() == 3 && id.iter().all(u8::is_ascii_alphanumeric);
        if !id_ok || after_id.is_some_and(|c| c != sep && !is_eol(c)) {
            return Err(Error::InvalidSegmentId {
                segment: index.segments.len(),
                offset: pos,
            });
        }
        // The id holds no delimiters: field 0 is closed by the first candidate after it.
        let mut resume = pos + 3;
        let mut header_end = None;
        if after_id == Some(sep) && is_header_id(id) {
            budget += 3;
            ensure(&mut index.components, budget);
            ensure(&mut index.repetitions, budget);
            ensure(&mut index.fields, budget);
            let enc_end = b
                .get(resume + 1..)
                .unwrap_or(&[])
                .iter()
                .position(|&c| c == sep || is_eol(c))
                .map_or(n, |p| resume + 1 + p);
            let mut out = Out {
                fields: &mut index.fields,
                repetitions: &mut index.repetitions,
                components: &mut index.components,
            };
            out.opaque_field(&mut c, pos as u32, resume as u32);
            out.opaque_field(&mut c, resume as u32, resume as u32 + 1);
            out.opaque_field(&mut c, resume as u32 + 1, enc_end as u32);
            if b.get(enc_end) == Some(&sep) {
                c.component_start = enc_end as u32 + 1;
                resume = enc_end + 1;
            } else {
                header_end = Some(enc_end);
                resume = enc_end;
            }
        }
        while cands.get(next).is_some_and(|&p| (p as usize) < resume) {
            next += 1;
        }
        let end = match header_end {
            Some(end) => end,
            None => {
                let mut out = Out {
                    fields: &mut index.fields,
                    repetitions: &mut index.repetitions,
                    components: &mut index.components,
                };
                loop {
                    let Some(&at) = cands.get(next) else {
                        out.close(&mut c, SEGMENT, n as u32);
                        break n;
                    };
                    next += 1;
                    let k = b.get(at as usize).map_or(0, |&x| class[usize::from(x)]);
                    if k == 0 {
                        continue;
                    }
                    out.close(&mut c, k, at);
                    if k == SEGMENT {
                        break at as usize;
                    }
                }
            }
        };
        index.segments.push(SegmentEntry {
            bytes: Span {
                start: seg_start as u32,
                end: end as u32,
            },
            fields: Span {
                start: first_field,
                end: c.fields as u32,
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
