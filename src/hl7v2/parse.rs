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

/// Grows a scratch buffer to at least `len` entries (never shrinks, so a reused
/// [`Parser`] stops allocating once it has seen its largest message).
fn ensure<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len.max(v.len() * 2), T::default());
    }
}

/// Bytes per pass-1 step; also the slack `candidates` needs in its output buffer.
const BLOCK: usize = 64;

/// Pass 1: offsets of every byte that may be a delimiter (field, component, repetition
/// separator, CR, LF), in order. Offsets are written a fixed batch at a time whatever
/// the count, so the loop has almost no data-dependent branches. The list may hold extra
/// bytes (pass 2 re-checks each one) but never misses one.
fn candidates(b: &[u8], d: &Delimiters, out: &mut Vec<u32>) -> usize {
    ensure(out, b.len() + 2 * BLOCK);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: the cfg guarantees SSE2, the only feature `simd::candidates` enables.
    return unsafe { simd::candidates(b, d, out) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    swar::candidates(b, d, out)
}

/// Copies up to `N` bytes from `at`, zero-padded past the end of `b`.
#[inline(always)]
fn chunk<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let tail = b.get(at..).unwrap_or(&[]);
    let take = tail.len().min(N);
    if let (Some(dst), Some(src)) = (out.get_mut(..take), tail.get(..take)) {
        dst.copy_from_slice(src);
    }
    out
}

/// Block scanner on SSE2, which every x86_64 CPU has: 16 bytes per compare.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
    };

    use super::{BLOCK, Delimiters, chunk};

    /// `out` must hold `b.len() + 2 * BLOCK` entries; returns how many are meaningful.
    #[target_feature(enable = "sse2")]
    pub(super) fn candidates(b: &[u8], d: &Delimiters, out: &mut [u32]) -> usize {
        let splat = |c: u8| _mm_set1_epi8(i8::from_ne_bytes([c]));
        let targets = [
            splat(d.field_byte()),
            splat(d.component_byte()),
            splat(d.repetition_byte()),
            splat(b'\r'),
            splat(b'\n'),
        ];
        let mut len = 0;
        let mut base = 0;
        while base < b.len() {
            let padded: [u8; BLOCK];
            let block: &[u8; BLOCK] = match b.get(base..base + BLOCK).map(<&[u8; BLOCK]>::try_from)
            {
                Some(Ok(full)) => full,
                _ => {
                    padded = chunk(b, base);
                    &padded
                }
            };
            let mut marks = 0u64;
            for (i, lane) in block.as_chunks::<16>().0.iter().enumerate() {
                let (halves, _) = lane.as_chunks::<8>();
                let half = |h: usize| halves.get(h).map_or(0, |&x| i64::from_le_bytes(x));
                let v = _mm_set_epi64x(half(1), half(0));
                let hit = targets.iter().fold(_mm_set1_epi8(0), |acc, &t| {
                    _mm_or_si128(acc, _mm_cmpeq_epi8(v, t))
                });
                let bits = _mm_movemask_epi8(hit).cast_unsigned() & 0xFFFF;
                marks |= u64::from(bits) << (16 * i);
            }
            let count = marks.count_ones() as usize;
            if let Some(dst) = out.get_mut(len..len + BLOCK) {
                let (first, rest) = dst.split_at_mut(16);
                for slot in first {
                    *slot = base as u32 + marks.trailing_zeros();
                    marks &= marks.wrapping_sub(1);
                }
                for slot in rest.iter_mut().take(count.saturating_sub(16)) {
                    *slot = base as u32 + marks.trailing_zeros();
                    marks &= marks.wrapping_sub(1);
                }
            }
            len += count;
            base += BLOCK;
        }
        len
    }
}

/// Portable fallback: the same search eight bytes at a time in a `u64`.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
mod swar {
    use super::{Delimiters, chunk};

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// Marks (high bit) zero bytes of `x`; bytes above a zero byte may be marked too,
    /// which only adds candidates.
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x
    }

    pub(super) fn candidates(b: &[u8], d: &Delimiters, out: &mut [u32]) -> usize {
        let splat_field = ONES * u64::from(d.field_byte());
        let splat_component = ONES * u64::from(d.component_byte());
        let splat_repetition = ONES * u64::from(d.repetition_byte());
        let below_space = ONES * 0x20;
        let mut len = 0;
        let mut base = 0;
        while base < b.len() {
            let w = u64::from_le_bytes(chunk(b, base));
            let mut marks = (zero_bytes(w ^ splat_field)
                | zero_bytes(w ^ splat_component)
                | zero_bytes(w ^ splat_repetition)
                | (w.wrapping_sub(below_space) & !w))
                & HIGHS;
            let valid = b.len() - base;
            if valid < 8 {
                marks &= (1u64 << (valid * 8)) - 1;
            }
            // Marks sit on bit 7 of each byte: one multiply sums them (no popcnt in the
            // baseline instruction set).
            let count = ((marks >> 7).wrapping_mul(ONES) >> 56) as usize;
            if let Some(dst) = out.get_mut(len..len + 8) {
                for slot in dst {
                    *slot = base as u32 + (marks.trailing_zeros() >> 3);
                    marks &= marks.wrapping_sub(1);
                }
            }
            len += count;
            base += 8;
        }
        len
    }
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

/// The hot loop: closes entries up to the segment's terminator (or the end of input).
/// Returns how many candidates it used and where the segment ends. State lives in
/// locals so it stays in registers.
#[inline(never)]
fn segment_body(
    b: &[u8],
    class: &[u8; 256],
    cands: &[u32],
    counts: &mut Counts,
    out: Out<'_>,
) -> (usize, usize) {
    let Out {
        fields,
        repetitions,
        components,
    } = out;
    let Counts {
        fields: mut nf,
        repetitions: mut nr,
        components: mut nc,
        component_start: mut start,
    } = *counts;
    let mut used = 0;
    let mut end = b.len();
    let mut class_of_end = SEGMENT;
    for &at in cands {
        used += 1;
        let k = b.get(at as usize).map_or(0, |&x| class[usize::from(x)]);
        if k == 0 {
            continue;
        }
        if let Some(slot) = components.get_mut(nc) {
            *slot = Span { start, end: at };
        }
        nc += 1;
        start = at + 1;
        if let Some(slot) = repetitions.get_mut(nr) {
            *slot = nc as u32;
        }
        nr += usize::from(k >= REPETITION);
        if let Some(slot) = fields.get_mut(nf) {
            *slot = nr as u32;
        }
        nf += usize::from(k >= FIELD);
        if k == SEGMENT {
            end = at as usize;
            class_of_end = 0;
            break;
        }
    }
    *counts = Counts {
        fields: nf,
        repetitions: nr,
        components: nc,
        component_start: start,
    };
    if class_of_end == SEGMENT {
        let mut out = Out {
            fields,
            repetitions,
            components,
        };
        out.close(counts, SEGMENT, end as u32);
    }
    (used, end)
}

fn is_eol(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

fn scan(b: &[u8], index: &mut Index, cands: &mut Vec<u32>) -> Result<Delimiters, Error> {
    index.segments.clear();
    if b.len() >= u32::MAX as usize - 4 * BLOCK {
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
    let mut budget = cands.len() + 4;
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
                let (used, end) = segment_body(
                    b,
                    &class,
                    cands.get(next..).unwrap_or(&[]),
                    &mut c,
                    Out {
                        fields: &mut index.fields,
                        repetitions: &mut index.repetitions,
                        components: &mut index.components,
                    },
                );
                next += used;
                end
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

    proptest::proptest! {
        /// The SSE2 and portable pass 1 must agree on every real delimiter.
        #[test]
        fn candidate_scanners_agree(body in "[A-Z0-9|^~&\\\\#\r\n\t }{\x00]{0,300}") {
            let input = format!("MSH|^~\\&|{body}");
            let b = input.as_bytes();
            let d = Delimiters::default();
            let mut simd_out = Vec::new();
            let len = candidates(b, &d, &mut simd_out);
            let mut swar_out = vec![0; b.len() + 2 * BLOCK];
            let swar_len = swar::candidates(b, &d, &mut swar_out);
            let real = |out: &[u32]| -> Vec<u32> {
                out.iter()
                    .copied()
                    .filter(|&p| matches!(b.get(p as usize), Some(b'|' | b'^' | b'~' | b'\r' | b'\n')))
                    .collect()
            };
            proptest::prop_assert_eq!(real(&simd_out[..len]), real(&swar_out[..swar_len]));
            proptest::prop_assert_eq!(real(&simd_out[..len]).len(), len);
        }
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
