//! Single-pass indexer: one scan records every segment, field, repetition and component
//! boundary in four flat vectors of `u32` offsets.

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
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    pub(super) segments: Vec<SegmentEntry>,
    pub(super) fields: Vec<Span>,
    pub(super) repetitions: Vec<Span>,
    pub(super) components: Vec<Span>,
}

impl Index {
    fn clear(&mut self) {
        self.segments.clear();
        self.fields.clear();
        self.repetitions.clear();
        self.components.clear();
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

struct Builder<'i> {
    index: &'i mut Index,
    component_start: u32,
    first_component: u32,
    first_repetition: u32,
}

impl Builder<'_> {
    #[inline(always)]
    fn close(&mut self, class: u8, at: u32) {
        let components = &mut self.index.components;
        components.push(Span {
            start: self.component_start,
            end: at,
        });
        self.component_start = at + 1;
        if class >= REPETITION {
            let n = components.len() as u32;
            self.index.repetitions.push(Span {
                start: self.first_component,
                end: n,
            });
            self.first_component = n;
            if class >= FIELD {
                let n = self.index.repetitions.len() as u32;
                self.index.fields.push(Span {
                    start: self.first_repetition,
                    end: n,
                });
                self.first_repetition = n;
            }
        }
    }

    /// Records a field that is a single opaque component (segment id, MSH-1, MSH-2).
    fn opaque_field(&mut self, start: u32, end: u32) {
        self.component_start = start;
        self.close(FIELD, end);
    }
}

fn scan(b: &[u8], index: &mut Index) -> Result<Delimiters, Error> {
    index.clear();
    if b.len() >= u32::MAX as usize {
        return Err(Error::TooLarge);
    }
    let n = b.len();
    let is_eol = |c: &u8| matches!(*c, b'\r' | b'\n');
    let mut i = b.iter().position(|c| !is_eol(c)).ok_or(Error::Empty)?;
    let (d, _) = Delimiters::from_header(b, i)?;

    let mut class = [0u8; 256];
    class[usize::from(d.component_byte())] = COMPONENT;
    class[usize::from(d.repetition_byte())] = REPETITION;
    class[usize::from(d.field_byte())] = FIELD;
    class[usize::from(b'\r')] = SEGMENT;
    class[usize::from(b'\n')] = SEGMENT;

    let reserve = n / 8;
    index.components.reserve(reserve);
    index.repetitions.reserve(reserve / 2);
    index.fields.reserve(reserve / 2);
    index.segments.reserve(16);

    let mut st = Builder {
        index,
        component_start: 0,
        first_component: 0,
        first_repetition: 0,
    };
    let sep = d.field_byte();
    loop {
        let seg_start = i;
        let first_field = st.index.fields.len() as u32;
        let id = b.get(i..i + 3).unwrap_or(&[]);
        let after_id = b.get(i + 3).copied();
        if id.len() != 3
            || !id.iter().all(u8::is_ascii_alphanumeric)
            || !matches!(after_id, None | Some(b'\r' | b'\n')) && after_id != Some(sep)
        {
            return Err(Error::InvalidSegmentId {
                segment: st.index.segments.len(),
                offset: i,
            });
        }
        st.opaque_field(i as u32, i as u32 + 3);
        i += 3;
        if after_id == Some(sep) && is_header_id(id) {
            st.opaque_field(i as u32, i as u32 + 1);
            let enc_end = b
                .get(i + 1..)
                .unwrap_or(&[])
                .iter()
                .position(|&c| c == sep || is_eol(&c))
                .map_or(n, |p| i + 1 + p);
            st.opaque_field(i as u32 + 1, enc_end as u32);
            i = enc_end;
        }
        let end = if b.get(i) == Some(&sep) {
            i += 1;
            st.component_start = i as u32;
            loop {
                let Some(&c) = b.get(i) else {
                    st.close(FIELD, n as u32);
                    break n;
                };
                let k = class[usize::from(c)];
                if k != 0 {
                    st.close(k, i as u32);
                    if k == SEGMENT {
                        break i;
                    }
                }
                i += 1;
            }
        } else {
            i
        };
        st.index.segments.push(SegmentEntry {
            bytes: Span {
                start: seg_start as u32,
                end: end as u32,
            },
            fields: Span {
                start: first_field,
                end: st.index.fields.len() as u32,
            },
        });
        match b.get(end..).unwrap_or(&[]).iter().position(|c| !is_eol(c)) {
            Some(p) => i = end + p,
            None => return Ok(d),
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
