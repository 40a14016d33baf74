//! Borrowed views over a parsed message. Every accessor returns raw (still escaped)
//! slices of the input; call [`Message::unescape`] for text.

use std::borrow::Cow;

use super::delimiters::Delimiters;
use super::error::Error;
use super::parse::{Index, SegmentEntry, Span, is_header_id};
use super::path::Path;

/// A parsed message: the input plus its boundary index.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    input: &'a str,
    delimiters: Delimiters,
    pub(super) index: Index,
    /// Fields read so far (segment position, field number), when recording: what
    /// `crossway mappings test` reports as unused is what was never read.
    reads: Option<std::sync::Arc<std::sync::Mutex<ReadLog>>>,
}

type ReadLog = std::collections::BTreeSet<(usize, usize)>;

/// A field by segment id and number (`PID-3`), small and `Copy`: profiling a capture
/// compares the fields each message has with those a rule read, millions of times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldName {
    segment: [u8; 3],
    number: u16,
}

impl FieldName {
    /// Segment ids are three characters; a longer one is cut, a shorter one padded.
    pub fn new(segment: &str, number: usize) -> FieldName {
        let mut id = [b' '; 3];
        for (slot, b) in id.iter_mut().zip(segment.bytes()) {
            *slot = b;
        }
        FieldName {
            segment: id,
            number: u16::try_from(number).unwrap_or(u16::MAX),
        }
    }
}

impl std::fmt::Display for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = String::from_utf8_lossy(&self.segment);
        write!(f, "{}-{}", id.trim_end(), self.number)
    }
}

impl<'a> Message<'a> {
    pub(super) fn new(input: &'a str, delimiters: Delimiters, index: Index) -> Self {
        Self {
            input,
            delimiters,
            index,
            reads: None,
        }
    }

    /// From now on, remembers which fields are read (off by default: the feed does not
    /// pay for it).
    pub fn record_reads(&mut self) {
        self.reads = Some(Default::default());
    }

    /// The fields read since [`Message::record_reads`] (every occurrence of a segment
    /// counts as one), sorted; recording stops, so that walking the message afterwards
    /// (to list the fields present) costs nothing and is not counted as reading.
    pub fn take_reads(&mut self) -> Vec<FieldName> {
        let Some(reads) = self.reads.take() else {
            return Vec::new();
        };
        let reads = reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<FieldName> = reads
            .iter()
            .filter_map(|&(position, field)| {
                Some(FieldName::new(self.segment_at(position)?.id(), field))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn as_str(&self) -> &'a str {
        self.input
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    pub fn segment_count(&self) -> usize {
        self.index.segments.len()
    }

    /// Segment by 0-based position in the message.
    pub fn segment_at(&self, position: usize) -> Option<Segment<'_, 'a>> {
        self.index.segments.get(position).map(|&entry| Segment {
            msg: self,
            entry,
            position,
        })
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_, 'a>> + '_ {
        (0..self.segment_count()).filter_map(|i| self.segment_at(i))
    }

    /// The `occurrence`-th (1-based) segment with this id.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'_, 'a>> {
        self.segments()
            .filter(|s| s.id() == id)
            .nth(occurrence.checked_sub(1)?)
    }

    /// Raw value at a path such as `PID-3[2].4.2`; `None` when the message does not reach
    /// that far. An empty value is `Some("")`, an explicit null `Some("\"\"")`.
    pub fn get(&self, path: &str) -> Result<Option<&'a str>, Error> {
        Ok(self.get_path(&path.parse()?))
    }

    pub fn get_path(&self, path: &Path) -> Option<&'a str> {
        let segment = self.segment(path.segment_id(), path.occurrence())?;
        let repetition = segment.field(path.field())?.repetition(path.repetition())?;
        let Some(c) = path.component() else {
            return Some(repetition.raw());
        };
        let component = repetition.component(c)?;
        match path.subcomponent() {
            None => Some(component.raw()),
            Some(s) => component.subcomponent(s),
        }
    }

    /// Decodes escape sequences with this message's delimiters.
    pub fn unescape(&self, raw: &'a str) -> Cow<'a, str> {
        self.delimiters.unescape(raw)
    }

    /// Re-encodes from the index, each segment terminated by CR: for CR-terminated input
    /// this reproduces the input byte for byte.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.input.len() + 1);
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut String) {
        let d = &self.delimiters;
        for segment in self.segments() {
            out.push_str(segment.id());
            let header = segment.is_header();
            for field in segment.fields() {
                if !(header && field.number <= 2) {
                    out.push(d.field());
                }
                for (r, rep) in field.repetitions().enumerate() {
                    if r > 0 {
                        out.push(d.repetition());
                    }
                    for (c, comp) in rep.components().enumerate() {
                        if c > 0 {
                            out.push(d.component());
                        }
                        out.push_str(comp.raw());
                    }
                }
            }
            out.push('\r');
        }
    }

    fn slice(&self, start: u32, end: u32) -> &'a str {
        self.input
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Bytes covered by a run of components (separators between them included).
    fn byte_range(&self, components: Span) -> &'a str {
        let first = self.index.component(components.start as usize);
        let last = self
            .index
            .component((components.end as usize).wrapping_sub(1));
        match (first, last) {
            (Some(first), Some(last)) => self.slice(first.start, last.end),
            _ => "",
        }
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        std::mem::take(&mut self.index).give_back();
    }
}

/// One segment; field 0 is its id.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m, 'a> {
    msg: &'m Message<'a>,
    entry: SegmentEntry,
    position: usize,
}

impl<'m, 'a> Segment<'m, 'a> {
    pub fn id(&self) -> &'a str {
        let start = self.entry.bytes.start;
        self.msg.slice(start, start + 3)
    }

    /// The segment without its terminator.
    pub fn raw(&self) -> &'a str {
        self.msg.slice(self.entry.bytes.start, self.entry.bytes.end)
    }

    /// 0-based position in the message.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Highest field number present (MSH counts MSH-1 and MSH-2).
    pub fn field_count(&self) -> usize {
        (self.entry.fields.end - self.entry.fields.start).saturating_sub(1) as usize
    }

    fn is_header(&self) -> bool {
        is_header_id(self.id().as_bytes())
    }

    /// Field by HL7 number; 0 is the segment id.
    pub fn field(&self, number: usize) -> Option<Field<'m, 'a>> {
        if number > self.field_count() {
            return None;
        }
        if let Some(reads) = &self.msg.reads {
            reads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((self.position, number));
        }
        let header = self.is_header();
        let comps = self
            .msg
            .index
            .field_components(&self.entry, number, header)?;
        Some(Field {
            msg: self.msg,
            comps,
            number,
            opaque: number == 0 || header && number <= 2,
        })
    }

    /// Calls `f` with each field's number and raw text (1..=field_count), reading the
    /// field boundaries directly instead of building each field's component spans: for
    /// walks over every field of every message (`crossway feeds profile`). Not
    /// recorded as reads. Header segments, whose first fields are opaque, take the
    /// general path.
    pub fn each_field_text(&self, mut f: impl FnMut(usize, &'a str)) {
        if self.is_header() {
            for field in self.fields() {
                f(field.number(), field.raw());
            }
            return;
        }
        let first = self.entry.fields.start as usize;
        let index = &self.msg.index;
        for n in 1..=self.field_count() {
            if let (Some(prev), Some(end)) =
                (index.field_end(first + n - 1), index.field_end(first + n))
            {
                f(n, self.msg.slice(prev + 1, end));
            }
        }
    }

    /// Fields 1..=field_count.
    pub fn fields(&self) -> impl Iterator<Item = Field<'m, 'a>> + use<'m, 'a> {
        let this = *self;
        (1..=self.field_count()).filter_map(move |n| this.field(n))
    }
}

/// A field with all its repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Field<'m, 'a> {
    msg: &'m Message<'a>,
    comps: Span,
    number: usize,
    opaque: bool,
}

impl<'m, 'a> Field<'m, 'a> {
    pub fn number(&self) -> usize {
        self.number
    }

    pub fn raw(&self) -> &'a str {
        self.msg.byte_range(self.comps)
    }

    pub fn repetition_count(&self) -> usize {
        self.repetition_spans().count()
    }

    /// Repetition by 1-based number.
    pub fn repetition(&self, number: usize) -> Option<Repetition<'m, 'a>> {
        let comps = self.repetition_spans().nth(number.checked_sub(1)?)?;
        Some(Repetition {
            msg: self.msg,
            comps,
            opaque: self.opaque,
        })
    }

    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'m, 'a>> + use<'m, 'a> {
        let this = *self;
        self.repetition_spans().map(move |comps| Repetition {
            msg: this.msg,
            comps,
            opaque: this.opaque,
        })
    }

    /// Each repetition's components: a repetition ends at the field's end or at a
    /// component ended by the repetition character (never in an opaque field).
    fn repetition_spans(&self) -> impl Iterator<Item = Span> + use<'m, 'a> {
        let (msg, Span { start, end }, opaque) = (self.msg, self.comps, self.opaque);
        let repetition = msg.delimiters.repetition_byte();
        let mut from = start;
        (start..end).filter_map(move |i| {
            let last = i + 1 == end;
            let closes = last
                || !opaque
                    && msg
                        .index
                        .component_end(i as usize)
                        .and_then(|at| msg.input.as_bytes().get(at as usize))
                        == Some(&repetition);
            closes.then(|| {
                let span = Span {
                    start: from,
                    end: i + 1,
                };
                from = i + 1;
                span
            })
        })
    }
}

/// One repetition of a field.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'m, 'a> {
    msg: &'m Message<'a>,
    comps: Span,
    opaque: bool,
}

impl<'m, 'a> Repetition<'m, 'a> {
    pub fn raw(&self) -> &'a str {
        self.msg.byte_range(self.comps)
    }

    pub fn component_count(&self) -> usize {
        (self.comps.end - self.comps.start) as usize
    }

    /// Component by 1-based number.
    pub fn component(&self, number: usize) -> Option<Component<'a>> {
        if number == 0 || number > self.component_count() {
            return None;
        }
        let span = self
            .msg
            .index
            .component(self.comps.start as usize + number - 1)?;
        Some(Component {
            raw: self.msg.slice(span.start, span.end),
            subcomponent: (!self.opaque).then(|| self.msg.delimiters.subcomponent_byte()),
        })
    }

    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'m, 'a> {
        let this = *self;
        (1..=self.component_count()).filter_map(move |n| this.component(n))
    }
}

/// One component; subcomponents are split on demand since they are rare.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    /// `None` for MSH-1/MSH-2, whose characters are not separators.
    subcomponent: Option<u8>,
}

impl<'a> Component<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Subcomponent by 1-based number.
    pub fn subcomponent(&self, number: usize) -> Option<&'a str> {
        self.subcomponents().nth(number.checked_sub(1)?)
    }

    pub fn subcomponents(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let sub = self.subcomponent.map(char::from);
        self.raw.split(move |c: char| Some(c) == sub)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;

    const ADT: &str = "MSH|^~\\&|SEND|FAC|RECV|RFAC|20240101120000||ADT^A01^ADT_A01|MSG00001|P|2.5.1\r\
EVN|A01|20240101120000\r\
PID|1||123^^^HOSP^MR~456&x&y^^^SSA^SS||Doe^John^Q||19700101|M|||1 Main St\\T\\Apt^^Town^ST^12345\r\
NK1|1|Doe^Jane|SPO|\"\"\r\
NK1|2|Roe^Rick|BRO\r\
ZPD|custom|\r";

    #[test]
    fn msh_numbering_follows_hl7() {
        let m = parse(ADT).unwrap();
        assert_eq!(m.get("MSH-1").unwrap(), Some("|"));
        assert_eq!(m.get("MSH-2").unwrap(), Some("^~\\&"));
        assert_eq!(m.get("MSH-9.1").unwrap(), Some("ADT"));
        assert_eq!(m.get("MSH-9.2").unwrap(), Some("A01"));
        assert_eq!(m.get("MSH-10").unwrap(), Some("MSG00001"));
        assert_eq!(m.get("MSH-12").unwrap(), Some("2.5.1"));
        let msh2 = m.segment_at(0).unwrap().field(2).unwrap();
        assert_eq!(msh2.repetition_count(), 1);
        let comp = msh2.repetition(1).unwrap().component(1).unwrap();
        assert_eq!(comp.subcomponents().count(), 1);
    }

    #[test]
    fn paths_reach_every_level() {
        let m = parse(ADT).unwrap();
        assert_eq!(m.get("PID-3").unwrap(), Some("123^^^HOSP^MR"));
        assert_eq!(m.get("PID-3[2].4").unwrap(), Some("SSA"));
        assert_eq!(m.get("PID-3[2].1.2").unwrap(), Some("x"));
        assert_eq!(m.get("PID-3[2].1.4").unwrap(), None);
        assert_eq!(m.get("PID-3[3]").unwrap(), None);
        assert_eq!(m.get("PID-5.2").unwrap(), Some("John"));
        assert_eq!(m.get("NK1[2]-2.1").unwrap(), Some("Roe"));
        assert_eq!(m.get("NK1-2.1").unwrap(), Some("Doe"));
        assert_eq!(m.get("NK1[3]-2").unwrap(), None);
        assert_eq!(m.get("ZPD-1").unwrap(), Some("custom"));
        assert_eq!(m.get("ZPD-2").unwrap(), Some(""));
        assert_eq!(m.get("ZPD-3").unwrap(), None);
        assert!(m.get("PID-0").is_err());
    }

    #[test]
    fn empty_and_null_are_distinct() {
        let m = parse(ADT).unwrap();
        assert_eq!(m.get("NK1-4").unwrap(), Some("\"\""));
        assert_eq!(m.get("PID-2").unwrap(), Some(""));
    }

    #[test]
    fn unescape_values() {
        let m = parse(ADT).unwrap();
        let street = m.get("PID-11.1").unwrap().unwrap();
        assert_eq!(street, "1 Main St\\T\\Apt");
        assert_eq!(m.unescape(street), "1 Main St&Apt");
    }

    #[test]
    fn segment_and_field_views() {
        let m = parse(ADT).unwrap();
        let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "EVN", "PID", "NK1", "NK1", "ZPD"]);
        let pid = m.segment("PID", 1).unwrap();
        assert_eq!(pid.position(), 2);
        assert_eq!(pid.field_count(), 11);
        assert_eq!(pid.field(0).unwrap().raw(), "PID");
        let f3 = pid.field(3).unwrap();
        assert_eq!(f3.raw(), "123^^^HOSP^MR~456&x&y^^^SSA^SS");
        assert_eq!(f3.repetitions().count(), 2);
        assert_eq!(m.segment_at(5).unwrap().raw(), "ZPD|custom|");
    }

    #[test]
    fn line_endings_and_trailing_blank_lines() {
        let lf = ADT.replace('\r', "\n");
        let crlf = ADT.replace('\r', "\r\n") + "\r\n\r\n";
        for input in [lf.as_str(), crlf.as_str(), ADT.trim_end()] {
            let m = parse(input).unwrap();
            assert_eq!(m.segment_count(), 6);
            assert_eq!(m.encode(), ADT);
        }
    }

    #[test]
    fn custom_delimiters_and_truncation_char() {
        let msg = "MSH#*!/$%#A#B###X*Y!Z$1\rPID#1#a/F/b*c$d\r";
        let m = parse(msg).unwrap();
        assert_eq!(m.delimiters().truncation(), Some('%'));
        assert_eq!(m.get("MSH-2").unwrap(), Some("*!/$%"));
        assert_eq!(m.get("MSH-7.1").unwrap(), Some("X"));
        assert_eq!(m.get("MSH-7[2].1.2").unwrap(), Some("1"));
        assert_eq!(m.get("PID-2.2.2").unwrap(), Some("d"));
        assert_eq!(m.unescape(m.get("PID-2.1").unwrap().unwrap()), "a#b");
        assert_eq!(m.encode(), msg);
    }

    #[test]
    fn segments_without_fields_round_trip() {
        let msg = "MSH|^~\\&\rZZZ\rPID|\rBHS|\r";
        let m = parse(msg).unwrap();
        assert_eq!(m.segment("ZZZ", 1).unwrap().field_count(), 0);
        assert_eq!(m.segment("PID", 1).unwrap().field_count(), 1);
        assert_eq!(m.encode(), msg);
    }
}
