//! Single-pass indexer: one scan records every segment, field, repetition and component
//! boundary in four flat vectors of `u32` offsets. Delimiters are found 64 bytes at a
//! time as bit masks (AVX2 when the CPU has it, else SSE2), and the loop walks the set
//! bits; nothing is looked up per byte. Per delimiter the loop stores three `u32`s.

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
    /// Per component: end (exclusive) byte offset. A component starts one byte after
    /// the previous one ends (past the delimiter between them), except those in
    /// `starts`.
    components: Vec<u32>,
    /// (component index, start offset), ascending, of the components that do not start
    /// one byte after the previous one: a header's opaque fields, and a segment's first
    /// when more than one end-of-line byte (CRLF, a blank line) precedes it.
    starts: Vec<(u32, u32)>,
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
        let end = *self.components.get(i)?;
        let start = match self.starts.binary_search_by_key(&(i as u32), |&(c, _)| c) {
            Ok(k) => self.starts.get(k)?.1,
            Err(_) => self.default_start(i),
        };
        Some(Span { start, end })
    }

    /// Where component `i` starts unless `starts` says otherwise.
    fn default_start(&self, i: usize) -> u32 {
        match i.checked_sub(1) {
            Some(prev) => self.components.get(prev).map_or(0, |end| end + 1),
            None => 0,
        }
    }

    /// Records that the next component, number `next`, starts at `start`.
    fn start_at(&mut self, next: usize, start: u32) {
        if self.default_start(next) != start {
            self.starts.push((next as u32, start));
        }
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

/// Levels a delimiter closes, ordered so that each level closes all lower ones.
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

/// Grows a scratch buffer to at least `len` entries (never shrinks, so a reused
/// [`Parser`] stops allocating once it has seen its largest message).
fn ensure<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len.max(v.len() * 2), T::default());
    }
}

/// Bytes per mask step.
const BLOCK: usize = 64;

/// Delimiter positions of one 64-byte block, a bit per byte (bit i: byte `base + i`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Masks {
    component: u64,
    repetition: u64,
    field: u64,
    /// CR or LF.
    segment: u64,
}

impl Masks {
    fn any(&self) -> u64 {
        self.component | self.repetition | self.field | self.segment
    }
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

/// The masks of the block starting at `base` (bytes past the end count as none), with
/// AVX2 when `AVX2` (the caller has checked the CPU), else SSE2.
#[inline(always)]
fn block_masks<const AVX2: bool>(b: &[u8], base: usize, d: &Delimiters) -> Masks {
    let padded: [u8; BLOCK];
    let block: &[u8; BLOCK] = match b.get(base..base + BLOCK).map(<&[u8; BLOCK]>::try_from) {
        Some(Ok(full)) => full,
        _ => {
            padded = chunk(b, base);
            &padded
        }
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: AVX2 is only asked for once the CPU was found to have it; the cfg
    // guarantees SSE2, the only feature `simd::masks` enables.
    return unsafe {
        if AVX2 {
            simd::masks_avx2(block, d)
        } else {
            simd::masks(block, d)
        }
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    portable_masks(block, d)
}

/// The same masks a byte at a time: the fallback off x86_64, and the reference the
/// SSE2 version is tested against.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn portable_masks(block: &[u8; BLOCK], d: &Delimiters) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in block.iter().enumerate() {
        let bit = 1u64 << i;
        if c == d.component_byte() {
            m.component |= bit;
        } else if c == d.repetition_byte() {
            m.repetition |= bit;
        } else if c == d.field_byte() {
            m.field |= bit;
        } else if c == b'\r' || c == b'\n' {
            m.segment |= bit;
        }
    }
    m
}

/// Block masks on SSE2, which every x86_64 CPU has (16 bytes per compare), and on
/// AVX2 (32).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8,
    };

    use super::{BLOCK, Delimiters, Masks};

    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn masks(block: &[u8; BLOCK], d: &Delimiters) -> Masks {
        let splat = |c: u8| _mm_set1_epi8(i8::from_ne_bytes([c]));
        let (component, repetition, field) = (
            splat(d.component_byte()),
            splat(d.repetition_byte()),
            splat(d.field_byte()),
        );
        let (cr, lf) = (splat(b'\r'), splat(b'\n'));
        let bits = |v: __m128i| u64::from(_mm_movemask_epi8(v).cast_unsigned() & 0xFFFF);
        let mut m = Masks::default();
        for (i, lane) in block.as_chunks::<16>().0.iter().enumerate() {
            // SAFETY: `lane` is 16 readable bytes; the load has no alignment need.
            let v = unsafe { _mm_loadu_si128(lane.as_ptr().cast::<__m128i>()) };
            let shift = 16 * i;
            m.component |= bits(_mm_cmpeq_epi8(v, component)) << shift;
            m.repetition |= bits(_mm_cmpeq_epi8(v, repetition)) << shift;
            m.field |= bits(_mm_cmpeq_epi8(v, field)) << shift;
            m.segment |= bits(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf))) << shift;
        }
        m
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn masks_avx2(block: &[u8; BLOCK], d: &Delimiters) -> Masks {
        let splat = |c: u8| _mm256_set1_epi8(i8::from_ne_bytes([c]));
        let (component, repetition, field) = (
            splat(d.component_byte()),
            splat(d.repetition_byte()),
            splat(d.field_byte()),
        );
        let (cr, lf) = (splat(b'\r'), splat(b'\n'));
        let bits = |v: __m256i| u64::from(_mm256_movemask_epi8(v).cast_unsigned());
        let mut m = Masks::default();
        for (i, lane) in block.as_chunks::<32>().0.iter().enumerate() {
            // SAFETY: `lane` is 32 readable bytes; the load has no alignment need.
            let v = unsafe { _mm256_loadu_si256(lane.as_ptr().cast::<__m256i>()) };
            let shift = 32 * i;
            m.component |= bits(_mm256_cmpeq_epi8(v, component)) << shift;
            m.repetition |= bits(_mm256_cmpeq_epi8(v, repetition)) << shift;
            m.field |= bits(_mm256_cmpeq_epi8(v, field)) << shift;
            m.segment |= bits(_mm256_or_si256(
                _mm256_cmpeq_epi8(v, cr),
                _mm256_cmpeq_epi8(v, lf),
            )) << shift;
        }
        m
    }
}

/// Counts of the entries written so far.
#[derive(Clone, Copy)]
struct Counts {
    fields: usize,
    repetitions: usize,
    components: usize,
}

/// Scratch slices the scan writes.
struct Out<'i> {
    fields: &'i mut [u32],
    repetitions: &'i mut [u32],
    components: &'i mut [u32],
}

impl Out<'_> {
    /// Closes the open component and, by class, its repetition and field. Entries are
    /// always written and the counts advance by 0 or 1: no branch on the class.
    #[inline(always)]
    fn close(&mut self, c: &mut Counts, class: u8, at: u32) {
        if let Some(slot) = self.components.get_mut(c.components) {
            *slot = at;
        }
        c.components += 1;
        if let Some(slot) = self.repetitions.get_mut(c.repetitions) {
            *slot = c.components as u32;
        }
        c.repetitions += usize::from(class >= REPETITION);
        if let Some(slot) = self.fields.get_mut(c.fields) {
            *slot = c.repetitions as u32;
        }
        c.fields += usize::from(class >= FIELD);
    }
}

/// Walks the delimiter bits block by block, keeping the current block's masks between
/// segments.
struct Walker<'d> {
    d: &'d Delimiters,
    /// Start of the loaded block (`usize::MAX`: none yet).
    base: usize,
    masks: Masks,
    /// The CPU has AVX2 and BMI1.
    avx2: bool,
}

impl Walker<'_> {
    /// Closes entries from `resume` up to the segment's terminator (or the end of
    /// input) and returns where the segment ends.
    #[inline(never)]
    fn segment_end(&mut self, b: &[u8], resume: usize, counts: &mut Counts, out: Out<'_>) -> usize {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2 and BMI1.
            return unsafe { self.segment_end_avx2(b, resume, counts, out) };
        }
        self.walk::<false>(b, resume, counts, out)
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[target_feature(enable = "avx2,bmi1")]
    fn segment_end_avx2(
        &mut self,
        b: &[u8],
        resume: usize,
        counts: &mut Counts,
        out: Out<'_>,
    ) -> usize {
        self.walk::<true>(b, resume, counts, out)
    }

    /// The hot loop. Entries are written unconditionally and counts advance by 0 or 1,
    /// so the only branches are per block and per segment. State lives in locals so it
    /// stays in registers.
    #[inline(always)]
    fn walk<const AVX2: bool>(
        &mut self,
        b: &[u8],
        resume: usize,
        counts: &mut Counts,
        out: Out<'_>,
    ) -> usize {
        let n = b.len();
        let Out {
            fields,
            repetitions,
            components,
        } = out;
        // Every entry closes at a delimiter byte (each byte at most once) or is one of a
        // header's three opaque fields, which skip at least three delimiter bytes (MSH-1
        // and the component and repetition characters); plus one at the end of input.
        // So counts stay below `n + 2`.
        let room = n + 2;
        assert!(fields.len() >= room && repetitions.len() >= room && components.len() >= room);
        let Counts {
            fields: mut nf,
            repetitions: mut nr,
            components: mut nc,
        } = *counts;
        let mut base = resume & !(BLOCK - 1);
        if base != self.base {
            self.base = base;
            self.masks = block_masks::<AVX2>(b, base, self.d);
        }
        let mut m = self.masks;
        let mut pending = m.any() & (!0u64 << (resume - base));
        let end = loop {
            let closes_repetition = m.repetition | m.field | m.segment;
            let closes_field = m.field | m.segment;
            let terminators = pending & m.segment;
            // Bits before the first terminator: components, repetitions, fields.
            let mut run = if terminators == 0 {
                pending
            } else {
                pending & ((terminators & terminators.wrapping_neg()) - 1)
            };
            pending ^= run;
            while run != 0 {
                let bit = run.trailing_zeros();
                run &= run - 1;
                let at = base as u32 + bit;
                // SAFETY: nc, nr, nf < room ≤ the slices' lengths (asserted above).
                unsafe {
                    *components.get_unchecked_mut(nc) = at;
                    nc += 1;
                    *repetitions.get_unchecked_mut(nr) = nc as u32;
                    nr += ((closes_repetition >> bit) & 1) as usize;
                    *fields.get_unchecked_mut(nf) = nr as u32;
                    nf += ((closes_field >> bit) & 1) as usize;
                }
            }
            if terminators != 0 {
                let bit = pending.trailing_zeros();
                break base + bit as usize;
            }
            base += BLOCK;
            if base >= n {
                break n;
            }
            m = block_masks::<AVX2>(b, base, self.d);
            self.base = base;
            self.masks = m;
            pending = m.any();
        };
        *counts = Counts {
            fields: nf,
            repetitions: nr,
            components: nc,
        };
        let mut out = Out {
            fields,
            repetitions,
            components,
        };
        out.close(counts, SEGMENT, end as u32);
        end
    }
}

/// Whether the block masks can use AVX2 (and the walk BMI1); checked once per message,
/// the answer is cached by std.
fn has_avx2() -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1");
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    false
}

fn is_eol(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

fn scan(b: &[u8], index: &mut Index) -> Result<Delimiters, Error> {
    index.segments.clear();
    if b.len() >= u32::MAX as usize - 4 * BLOCK {
        return Err(Error::TooLarge);
    }
    let start = b.iter().position(|&c| !is_eol(c)).ok_or(Error::Empty)?;
    let (d, _) = Delimiters::from_header(b, start)?;
    index_segments(b, start, &d, index)?;
    Ok(d)
}

/// Closes components, repetitions and fields segment by segment; segment starts (id
/// check, MSH-1/MSH-2) are handled out of the hot loop.
fn index_segments(b: &[u8], start: usize, d: &Delimiters, index: &mut Index) -> Result<(), Error> {
    let n = b.len();
    let sep = d.field_byte();
    ensure(&mut index.components, n + 2);
    ensure(&mut index.repetitions, n + 2);
    ensure(&mut index.fields, n + 2);
    index.starts.clear();
    let mut walker = Walker {
        d,
        base: usize::MAX,
        masks: Masks::default(),
        avx2: has_avx2(),
    };
    let mut c = Counts {
        fields: 0,
        repetitions: 0,
        components: 0,
    };
    let mut pos = start;
    loop {
        let seg_start = pos;
        let first_field = c.fields as u32;
        index.start_at(c.components, pos as u32);
        let id = b.get(pos..pos + 3).unwrap_or(&[]);
        let after_id = b.get(pos + 3).copied();
        let id_ok = id.len() == 3 && id.iter().all(u8::is_ascii_alphanumeric);
        if !id_ok || after_id.is_some_and(|c| c != sep && !is_eol(c)) {
            return Err(Error::InvalidSegmentId {
                segment: index.segments.len(),
                offset: pos,
            });
        }
        // The id holds no delimiters: field 0 is closed by the first delimiter after it.
        let mut resume = pos + 3;
        let mut header_end = None;
        if after_id == Some(sep) && is_header_id(id) {
            let enc_end = b
                .get(resume + 1..)
                .unwrap_or(&[])
                .iter()
                .position(|&c| c == sep || is_eol(c))
                .map_or(n, |p| resume + 1 + p);
            // Three fields of one opaque component each: the id, MSH-1 (the separator
            // itself) and MSH-2 (the encoding characters).
            for (start, end) in [
                (None, resume),
                (Some(resume), resume + 1),
                (Some(resume + 1), enc_end),
            ] {
                if let Some(start) = start {
                    index.start_at(c.components, start as u32);
                }
                let mut out = Out {
                    fields: &mut index.fields,
                    repetitions: &mut index.repetitions,
                    components: &mut index.components,
                };
                out.close(&mut c, FIELD, end as u32);
            }
            if b.get(enc_end) == Some(&sep) {
                resume = enc_end + 1;
            } else {
                header_end = Some(enc_end);
                resume = enc_end;
            }
        }
        let end = match header_end {
            Some(end) => end,
            None => walker.segment_end(
                b,
                resume,
                &mut c,
                Out {
                    fields: &mut index.fields,
                    repetitions: &mut index.repetitions,
                    components: &mut index.components,
                },
            ),
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
        /// The SSE2 and AVX2 masks and the portable ones agree, whatever the bytes and however
        /// short the last block.
        #[test]
        fn block_masks_match_the_portable_ones(body in "[A-Z0-9|^~&\\\\#\r\n\t }{\x00]{0,200}") {
            let b = body.as_bytes();
            let d = Delimiters::default();
            for base in (0..b.len().max(1)).step_by(BLOCK) {
                let portable = portable_masks(&chunk(b, base), &d);
                proptest::prop_assert_eq!(block_masks::<false>(b, base, &d), portable);
                if has_avx2() {
                    proptest::prop_assert_eq!(block_masks::<true>(b, base, &d), portable);
                }
            }
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
