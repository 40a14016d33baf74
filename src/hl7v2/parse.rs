//! Single-pass indexer: one walk over the message records the end of every component
//! and every field in two flat vectors of `u32` byte offsets, and each segment's ranges
//! into them. Delimiters are found 64 bytes at a time as bit masks (AVX2 when the CPU
//! has it, else SSE2); with AVX2 the set bits become offsets eight mask bits at a time
//! through a table, with no loop or branch per delimiter. Line ends are a delimiter
//! class of their own, so the walk does not stop per segment either: it stops only
//! before a header segment (MSH, BHS, FHS), whose encoding characters are not
//! delimiters.

use std::cell::Cell;
use std::fmt;

use super::delimiters::Delimiters;
use super::error::Error;
use super::message::Message;

/// Half-open range: byte offsets, or indexes into one of [`Index`]'s vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentEntry {
    /// Byte range of the segment without its terminator.
    pub(super) bytes: Span,
    /// Its fields in [`Index`]'s field ends; entry 0 is the segment id.
    pub(super) fields: Span,
    /// Its components in [`Index`]'s component ends.
    pub(super) components: Span,
}

/// Boundaries of one message. Every delimiter ends a component, so `components` holds
/// every delimiter's offset in input order (plus the end of input when it is not a line
/// end); a repetition ends at a component whose delimiter is the repetition
/// character. `fields` holds the offsets of the delimiters that end a field, a subset
/// of `components`: a field's components are found by binary search within its
/// segment.
///
/// Both vectors are scratch buffers longer than their used part (the walk writes eight
/// entries at a time); only indexes reachable from `segments` are meaningful. Blank
/// lines leave entries that no segment reaches.
#[derive(Clone, Default)]
pub(super) struct Index {
    pub(super) segments: Vec<SegmentEntry>,
    /// Per field: offset of the byte that ends it.
    fields: Vec<u32>,
    /// Per component: offset of the byte that ends it. A component starts one byte
    /// after the previous one ends, except those in `starts`.
    components: Vec<u32>,
    /// (component index, start offset), ascending, of the components that do not start
    /// one byte after the previous one: a header's opaque fields, and a message's first
    /// when line ends precede it.
    starts: Vec<(u32, u32)>,
}

impl Index {
    pub(super) fn component(&self, i: usize) -> Option<Span> {
        let end = *self.components.get(i)?;
        let start = match self.starts.binary_search_by_key(&(i as u32), |&(c, _)| c) {
            Ok(k) => self.starts.get(k)?.1,
            Err(_) => self.default_start(i),
        };
        Some(Span { start, end })
    }

    /// Byte offset that ends field entry `i`.
    pub(super) fn field_end(&self, i: usize) -> Option<u32> {
        self.fields.get(i).copied()
    }

    /// Byte offset that ends component `i`.
    pub(super) fn component_end(&self, i: usize) -> Option<u32> {
        self.components.get(i).copied()
    }

    /// Components of field `number` (0 = the id) of `segment`; a header's first three
    /// fields are one opaque component each.
    pub(super) fn field_components(
        &self,
        segment: &SegmentEntry,
        number: usize,
        header: bool,
    ) -> Option<Span> {
        let last = |n: usize| -> Option<usize> {
            let first = segment.components.start as usize;
            if header && n <= 2 {
                return Some(first + n);
            }
            let end = *self.fields.get(segment.fields.start as usize + n)?;
            let from = if header { first + 3 } else { first };
            let within = self.components.get(from..segment.components.end as usize)?;
            Some(from + within.partition_point(|&e| e < end))
        };
        let start = match number.checked_sub(1) {
            Some(prev) => last(prev)? + 1,
            None => segment.components.start as usize,
        };
        let end = last(number)? + 1;
        (start < end && end <= segment.components.end as usize).then_some(Span {
            start: start as u32,
            end: end as u32,
        })
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

/// Segments whose field 1 is the separator itself and field 2 the encoding characters.
pub(super) fn is_header_id(id: &[u8]) -> bool {
    matches!(id, b"MSH" | b"FHS" | b"BHS")
}

/// Parses one message, borrowing `input`. The index buffers come from the previous
/// message parsed on this thread (see [`Index::give_back`]), so a feed parses without
/// allocating.
pub fn parse(input: &str) -> Result<Message<'_>, Error> {
    let mut index = SPARE
        .try_with(|spare| spare.replace(Index::EMPTY))
        .unwrap_or_default();
    match scan(input.as_bytes(), &mut index) {
        Ok(delimiters) => Ok(Message::new(input, delimiters, index)),
        Err(e) => {
            index.give_back();
            Err(e)
        }
    }
}

/// Like [`parse`] for raw bytes; HL7 payloads must already be UTF-8 (transcode MSH-18
/// charsets such as 8859/1 before calling).
pub fn parse_bytes(input: &[u8]) -> Result<Message<'_>, Error> {
    let text = std::str::from_utf8(input).map_err(|e| Error::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse(text)
}

thread_local! {
    /// The buffers of the last message dropped on this thread, for the next [`parse`].
    static SPARE: Cell<Index> = const { Cell::new(Index::EMPTY) };
}

/// Buffers above this many entries are freed rather than kept for the next message:
/// one large message must not pin megabytes per thread.
const KEEP_ENTRIES: usize = 1 << 16;

impl Index {
    const EMPTY: Index = Index {
        segments: Vec::new(),
        fields: Vec::new(),
        components: Vec::new(),
        starts: Vec::new(),
    };

    /// Keeps the buffers for this thread's next [`parse`] (a message hands its index
    /// back when dropped).
    pub(super) fn give_back(self) {
        if self.components.len() <= KEEP_ENTRIES {
            let _ = SPARE.try_with(|spare| spare.set(self));
        }
    }
}

/// Grows a scratch buffer to at least `len` entries (never shrinks, so a thread stops
/// allocating once it has seen its largest message).
fn ensure(v: &mut Vec<u32>, len: usize) {
    if v.len() < len {
        v.resize(len.max(v.len() * 2), 0);
    }
}

/// Bytes per mask step.
const BLOCK: usize = 64;

/// Entries a flatten step may write past the count it reports.
const SLACK: usize = 8;

/// Delimiter positions of one 64-byte block, a bit per byte (bit i: byte `base + i`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Masks {
    /// Every delimiter: each ends a component.
    all: u64,
    /// Field separators and line ends: each ends a field.
    closers: u64,
    /// CR or LF.
    segment: u64,
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
        let segment = c == b'\r' || c == b'\n';
        let closer = segment || c == d.field_byte();
        if closer || c == d.component_byte() || c == d.repetition_byte() {
            m.all |= bit;
        }
        if closer {
            m.closers |= bit;
        }
        if segment {
            m.segment |= bit;
        }
    }
    m
}

/// Writes `base + i` for each set bit i of `mask`, ascending, from `out[at]`; returns
/// how many. May write up to [`SLACK`] entries past them.
#[inline(always)]
fn flatten<const AVX2: bool>(mask: u64, base: usize, out: &mut [u32], at: usize) -> usize {
    assert!(at + mask.count_ones() as usize + SLACK <= out.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if AVX2 {
        // SAFETY: the CPU has AVX2 (the caller checked); the assert above leaves room
        // for every 8-entry store, each at most at the count written so far.
        return unsafe { simd::flatten_avx2(mask, base as u32, out.as_mut_ptr().add(at)) };
    }
    let mut n = 0;
    let mut bits = mask;
    while bits != 0 {
        if let Some(slot) = out.get_mut(at + n) {
            *slot = base as u32 + bits.trailing_zeros();
        }
        bits &= bits - 1;
        n += 1;
    }
    n
}

/// Per step k (mask bits 8k..8k+8) and byte value: the set bits' positions in the
/// block (8k + 0..8), ascending, padded.
const POSITIONS: [[[u8; 8]; 256]; 8] = {
    let mut table = [[[0u8; 8]; 256]; 8];
    let mut step = 0;
    while step < 8 {
        let mut v = 0;
        while v < 256 {
            let mut n = 0;
            let mut bit = 0;
            while bit < 8 {
                if v & (1 << bit) != 0 {
                    table[step][v][n] = (8 * step + bit) as u8;
                    n += 1;
                }
                bit += 1;
            }
            v += 1;
        }
        step += 1;
    }
    table
};

/// Block masks on SSE2, which every x86_64 CPU has (16 bytes per compare), and on
/// AVX2 (32); mask flattening on AVX2.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_cmpeq_epi8, _mm_loadl_epi64, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8, _mm256_add_epi32, _mm256_cmpeq_epi8, _mm256_cvtepu8_epi32,
        _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
        _mm256_set1_epi32, _mm256_storeu_si256,
    };

    use super::{BLOCK, Delimiters, Masks, POSITIONS};

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
            let segment = _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf));
            let closers = _mm_or_si128(segment, _mm_cmpeq_epi8(v, field));
            let inner = _mm_or_si128(_mm_cmpeq_epi8(v, component), _mm_cmpeq_epi8(v, repetition));
            m.all |= bits(_mm_or_si128(closers, inner)) << shift;
            m.closers |= bits(closers) << shift;
            m.segment |= bits(segment) << shift;
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
            let segment = _mm256_or_si256(_mm256_cmpeq_epi8(v, cr), _mm256_cmpeq_epi8(v, lf));
            let closers = _mm256_or_si256(segment, _mm256_cmpeq_epi8(v, field));
            let inner = _mm256_or_si256(
                _mm256_cmpeq_epi8(v, component),
                _mm256_cmpeq_epi8(v, repetition),
            );
            m.all |= bits(_mm256_or_si256(closers, inner)) << shift;
            m.closers |= bits(closers) << shift;
            m.segment |= bits(segment) << shift;
        }
        m
    }

    /// Eight mask bits per step: the table gives the set bits' positions, which are
    /// widened to `u32`, offset and stored as eight entries; the output advances by the
    /// step's bit count.
    ///
    /// # Safety
    /// The CPU has AVX2 and POPCNT, and `out` has room for the set bits plus eight.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    pub(super) unsafe fn flatten_avx2(mask: u64, base: u32, out: *mut u32) -> usize {
        let mut written = 0;
        let offset = _mm256_set1_epi32(base.cast_signed());
        for ((byte, rows), _) in mask.to_le_bytes().into_iter().zip(&POSITIONS).zip(0..8) {
            let positions = &rows[usize::from(byte)];
            // SAFETY: the table row is 8 readable bytes; the load has no alignment need.
            let narrow = unsafe { _mm_loadl_epi64(positions.as_ptr().cast::<__m128i>()) };
            let entries = _mm256_add_epi32(_mm256_cvtepu8_epi32(narrow), offset);
            // SAFETY: the caller leaves room for eight entries past every count.
            unsafe { _mm256_storeu_si256(out.add(written).cast::<__m256i>(), entries) };
            written += byte.count_ones() as usize;
        }
        written
    }
}

/// Entries written so far.
#[derive(Clone, Copy, Default)]
struct Counts {
    fields: usize,
    components: usize,
}

impl Counts {
    /// Closes a field of one component at `at`, outside the walk's flattening: a
    /// header's opaque fields, and the last field when the input ends without a line
    /// end.
    fn close_field(&mut self, components: &mut [u32], fields: &mut [u32], at: usize) {
        if let (Some(comp), Some(field)) = (
            components.get_mut(self.components),
            fields.get_mut(self.fields),
        ) {
            *comp = at as u32;
            *field = at as u32;
        }
        self.components += 1;
        self.fields += 1;
    }
}

/// A segment end as the walk notes it; the segment's start follows from the previous.
fn raw_end(end: usize, c: Counts) -> SegmentEntry {
    SegmentEntry {
        bytes: Span {
            start: 0,
            end: end as u32,
        },
        fields: Span {
            start: 0,
            end: c.fields as u32,
        },
        components: Span {
            start: 0,
            end: c.components as u32,
        },
    }
}

/// Whether the CPU has what the AVX2 walk uses (AVX2, BMI1, POPCNT); checked once per
/// message, the answer is cached by std.
fn has_avx2() -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("popcnt");
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    false
}

fn is_eol(c: u8) -> bool {
    c == b'\r' || c == b'\n'
}

/// Whether a header segment (id, then the field separator) starts at `at`.
fn header_at(b: &[u8], at: usize, sep: u8) -> bool {
    b.get(at..at + 3).is_some_and(is_header_id) && b.get(at + 3) == Some(&sep)
}

fn scan(b: &[u8], index: &mut Index) -> Result<Delimiters, Error> {
    index.segments.clear();
    index.starts.clear();
    if b.len() >= u32::MAX as usize - 4 * BLOCK {
        return Err(Error::TooLarge);
    }
    let start = b.iter().position(|&c| !is_eol(c)).ok_or(Error::Empty)?;
    let (d, _) = Delimiters::from_header(b, start)?;
    let room = b.len() + 2 + SLACK;
    ensure(&mut index.components, room);
    ensure(&mut index.fields, room);
    let avx2 = has_avx2();
    let mut c = Counts::default();
    let mut header = Some(start);
    while let Some(at) = header {
        header = match open_header(b, at, &d, &mut c, index) {
            After::Fields(from) => walk(b, from, &d, avx2, &mut c, index),
            After::Line(next) if header_at(b, next, d.field_byte()) => Some(next),
            After::Line(next) => walk(b, next, &d, avx2, &mut c, index),
            After::Nothing => None,
        };
    }
    cut_segments(b, start, d.field_byte(), index)?;
    Ok(d)
}

/// What follows a header's encoding characters.
enum After {
    /// Its next field, starting here.
    Fields(usize),
    /// A line end: the next line starts here.
    Line(usize),
    /// The end of input.
    Nothing,
}

/// Closes a header segment's three opaque fields (its id, the separator itself and
/// the encoding characters). When the header has no further field it ends there, and
/// is noted as ended.
fn open_header(b: &[u8], at: usize, d: &Delimiters, c: &mut Counts, index: &mut Index) -> After {
    let n = b.len();
    let sep = d.field_byte();
    let sep_at = at + 3;
    let enc_end = b
        .get(sep_at + 1..)
        .unwrap_or(&[])
        .iter()
        .position(|&x| x == sep || is_eol(x))
        .map_or(n, |p| sep_at + 1 + p);
    index.start_at(c.components, at as u32);
    for (start, end) in [
        (None, sep_at),
        (Some(sep_at), sep_at + 1),
        (Some(sep_at + 1), enc_end),
    ] {
        if let Some(start) = start {
            index.start_at(c.components, start as u32);
        }
        c.close_field(&mut index.components, &mut index.fields, end);
    }
    if b.get(enc_end) == Some(&sep) {
        return After::Fields(enc_end + 1);
    }
    index.segments.push(raw_end(enc_end, *c));
    if enc_end < n {
        After::Line(enc_end + 1)
    } else {
        After::Nothing
    }
}

/// Indexes from `from` up to the next header segment (returning its start) or the end
/// of input, noting each line end, and the end of input when it is not one, as a
/// segment end.
#[inline(never)]
fn walk(
    b: &[u8],
    from: usize,
    d: &Delimiters,
    avx2: bool,
    c: &mut Counts,
    index: &mut Index,
) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if avx2 {
        // SAFETY: `avx2` is set only when the CPU has AVX2, BMI1 and POPCNT.
        return unsafe { walk_avx2(b, from, d, c, index) };
    }
    let _ = avx2;
    walk_blocks::<false>(b, from, d, c, index)
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx2,bmi1,popcnt")]
fn walk_avx2(
    b: &[u8],
    from: usize,
    d: &Delimiters,
    c: &mut Counts,
    index: &mut Index,
) -> Option<usize> {
    walk_blocks::<true>(b, from, d, c, index)
}

/// The hot loop: per block, the delimiters become component ends and the field
/// closers field ends, each with one flatten; only line ends are visited one by one.
#[inline(always)]
fn walk_blocks<const AVX2: bool>(
    b: &[u8],
    from: usize,
    d: &Delimiters,
    c: &mut Counts,
    index: &mut Index,
) -> Option<usize> {
    let n = b.len();
    let sep = d.field_byte();
    let Index {
        segments,
        fields,
        components,
        ..
    } = index;
    let mut base = from & !(BLOCK - 1);
    let mut pending = !0u64 << (from - base);
    while base < n {
        let m = block_masks::<AVX2>(b, base, d);
        let all = m.all & pending;
        let closers = m.closers & pending;
        let before = *c;
        c.components += flatten::<AVX2>(all, base, components, c.components);
        c.fields += flatten::<AVX2>(closers, base, fields, c.fields);
        let mut ends = all & m.segment;
        while ends != 0 {
            let bit = ends.trailing_zeros();
            ends &= ends - 1;
            let through = u64::MAX >> (63 - bit);
            let at_end = Counts {
                fields: before.fields + (closers & through).count_ones() as usize,
                components: before.components + (all & through).count_ones() as usize,
            };
            let end = base + bit as usize;
            segments.push(raw_end(end, at_end));
            if header_at(b, end + 1, sep) {
                *c = at_end;
                return Some(end + 1);
            }
        }
        pending = !0;
        base += BLOCK;
    }
    if !b.last().copied().is_some_and(is_eol) {
        c.close_field(components, fields, n);
        segments.push(raw_end(n, *c));
    }
    None
}

/// Which bytes may appear in a segment id.
const ALNUMERIC: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    table
};

/// Turns the noted segment ends into segments: each starts after the previous ends
/// (the first at `start`), blank lines are dropped, and ids are checked.
fn cut_segments(b: &[u8], start: usize, sep: u8, index: &mut Index) -> Result<(), Error> {
    let mut kept = 0;
    let mut next = SegmentEntry {
        bytes: Span {
            start: start as u32,
            end: 0,
        },
        fields: Span::default(),
        components: Span::default(),
    };
    for i in 0..index.segments.len() {
        let Some(&noted) = index.segments.get(i) else {
            break;
        };
        let entry = SegmentEntry {
            bytes: Span {
                start: next.bytes.start,
                end: noted.bytes.end,
            },
            fields: Span {
                start: next.fields.start,
                end: noted.fields.end,
            },
            components: Span {
                start: next.components.start,
                end: noted.components.end,
            },
        };
        next.bytes.start = noted.bytes.end + 1;
        next.fields.start = noted.fields.end;
        next.components.start = noted.components.end;
        if entry.bytes.start == entry.bytes.end {
            continue;
        }
        let pos = entry.bytes.start as usize;
        let after_id = b.get(pos + 3).copied();
        // No branch per byte: ids mix letters and digits unpredictably (PV1, OBX).
        let id_ok = match b.get(pos..pos + 3) {
            Some(&[x, y, z]) => {
                ALNUMERIC[usize::from(x)] & ALNUMERIC[usize::from(y)] & ALNUMERIC[usize::from(z)]
            }
            _ => false,
        };
        if !id_ok || after_id.is_some_and(|c| c != sep && !is_eol(c)) {
            return Err(Error::InvalidSegmentId {
                segment: kept,
                offset: pos,
            });
        }
        if let Some(slot) = index.segments.get_mut(kept) {
            *slot = entry;
        }
        kept += 1;
    }
    index.segments.truncate(kept);
    Ok(())
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
    fn a_thread_reuses_the_buffers_of_a_dropped_message() {
        let m = parse("MSH|^~\\&|A|B\rPID|1|2^3~4\r").unwrap();
        assert_eq!(m.get("PID-2[2]").unwrap(), Some("4"));
        let buffer = m.index.components.as_ptr();
        drop(m);
        assert!(parse("nope").is_err());
        let m = parse("MSH|^~\\&|X\r").unwrap();
        assert_eq!(m.index.components.as_ptr(), buffer);
        assert_eq!(m.get("MSH-3").unwrap(), Some("X"));
        assert_eq!(m.segments().count(), 1);
        let kept = parse("MSH|^~\\&|Y\r").unwrap();
        assert_ne!(
            kept.index.components.as_ptr(),
            buffer,
            "two live messages share no buffer"
        );
        assert_eq!(m.get("MSH-3").unwrap(), Some("X"));
    }
}
