//! The separator set a message declares in MSH-1/MSH-2.

use super::error::Error;

/// Separators and escape character of one message.
///
/// Fields are private so a value can only exist once validated: the parser and encoder
/// rely on the separators being distinct ASCII punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    field: u8,
    component: u8,
    repetition: u8,
    escape: u8,
    subcomponent: u8,
    truncation: Option<u8>,
    /// MSH-2 had its escape character doubled (`^~\\&`, as when the message was
    /// copied out of a string literal); read as written once.
    doubled_escape: bool,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
            doubled_escape: false,
        }
    }
}

impl Delimiters {
    /// Validates a custom separator set (e.g. to answer in a partner's dialect).
    pub fn new(
        field: char,
        component: char,
        repetition: char,
        escape: char,
        subcomponent: char,
        truncation: Option<char>,
    ) -> Result<Self, Error> {
        let mut bytes = [0u8; 6];
        let chars = [field, component, repetition, escape, subcomponent];
        for (slot, ch) in bytes.iter_mut().zip(chars.into_iter().chain(truncation)) {
            *slot = delimiter_byte(ch)?;
        }
        let count = if truncation.is_some() { 6 } else { 5 };
        check_distinct(&bytes[..count], 0)?;
        Ok(Self {
            field: bytes[0],
            component: bytes[1],
            repetition: bytes[2],
            escape: bytes[3],
            subcomponent: bytes[4],
            truncation: truncation.map(|_| bytes[5]),
            doubled_escape: false,
        })
    }

    /// Reads MSH-1/MSH-2 of the header segment starting at `start`; returns the separators
    /// and the byte offset where MSH-2 ends.
    pub(super) fn from_header(b: &[u8], start: usize) -> Result<(Self, usize), Error> {
        let id = b.get(start..start + 3).unwrap_or(&[]);
        if id != b"MSH" {
            return Err(Error::NotMsh { offset: start });
        }
        let sep_at = start + 3;
        let field = *b.get(sep_at).ok_or(Error::MshTooShort { offset: sep_at })?;
        if matches!(field, b'\r' | b'\n') {
            return Err(Error::MshTooShort { offset: sep_at });
        }
        let enc_start = sep_at + 1;
        let enc_end = b
            .get(enc_start..)
            .unwrap_or(&[])
            .iter()
            .position(|&c| c == field || c == b'\r' || c == b'\n')
            .map_or(b.len(), |p| enc_start + p);
        let mut enc = b.get(enc_start..enc_end).unwrap_or(&[]).to_vec();
        // The escape character written twice (`^~\\&`, `^~\\&#`): a delimiter cannot
        // be declared twice, so the only reading is the set with it once. Anything
        // else that repeats a character stays an error.
        let doubled_escape = (5..=6).contains(&enc.len())
            && enc.get(2) == enc.get(3)
            && enc
                .get(2)
                .is_some_and(|&c| is_delimiter_byte(c) && c != field);
        if doubled_escape {
            enc.remove(3);
        }
        if !(4..=5).contains(&enc.len()) {
            return Err(Error::BadEncodingChars {
                found: enc.len(),
                offset: enc_start,
            });
        }
        let mut all = vec![field];
        all.extend_from_slice(&enc);
        for (i, &c) in all.iter().enumerate() {
            if !is_delimiter_byte(c) {
                return Err(Error::InvalidDelimiter {
                    byte: c,
                    field: if i == 0 { 1 } else { 2 },
                    offset: sep_at + i,
                });
            }
        }
        check_distinct(&all, sep_at)?;
        let at = |i: usize| enc.get(i).copied().unwrap_or(0);
        let d = Self {
            field,
            component: at(0),
            repetition: at(1),
            escape: at(2),
            subcomponent: at(3),
            truncation: enc.get(4).copied(),
            doubled_escape,
        };
        Ok((d, enc_end))
    }

    pub fn field(&self) -> char {
        char::from(self.field)
    }
    pub fn component(&self) -> char {
        char::from(self.component)
    }
    pub fn repetition(&self) -> char {
        char::from(self.repetition)
    }
    pub fn escape_char(&self) -> char {
        char::from(self.escape)
    }
    pub fn subcomponent(&self) -> char {
        char::from(self.subcomponent)
    }
    /// What the sender's MSH-2 got wrong in a way that still has one meaning, for the
    /// warning the receiver logs and counts; `None` when it is as the standard writes it.
    pub fn leniency(&self) -> Option<&'static str> {
        self.doubled_escape.then_some("msh2-doubled-escape")
    }

    /// The v2.7 truncation character, when MSH-2 declares one.
    pub fn truncation(&self) -> Option<char> {
        self.truncation.map(char::from)
    }

    pub(super) fn field_byte(&self) -> u8 {
        self.field
    }
    pub(super) fn component_byte(&self) -> u8 {
        self.component
    }
    pub(super) fn repetition_byte(&self) -> u8 {
        self.repetition
    }
    pub(super) fn escape_byte(&self) -> u8 {
        self.escape
    }
    pub(super) fn subcomponent_byte(&self) -> u8 {
        self.subcomponent
    }
    pub(super) fn truncation_byte(&self) -> Option<u8> {
        self.truncation
    }

    /// MSH-2 as it should be written, e.g. `^~\&`.
    pub fn encoding_chars(&self) -> String {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .chain(self.truncation)
        .map(char::from)
        .collect()
    }
}

/// Separators must be printable ASCII punctuation: letters and digits would collide with
/// segment ids, and non-ASCII bytes would let slicing split a UTF-8 character.
fn is_delimiter_byte(c: u8) -> bool {
    c.is_ascii_graphic() && !c.is_ascii_alphanumeric()
}

fn delimiter_byte(ch: char) -> Result<u8, Error> {
    match u8::try_from(ch) {
        Ok(c) if is_delimiter_byte(c) => Ok(c),
        _ => Err(Error::InvalidDelimiter {
            byte: u8::try_from(ch).unwrap_or(0),
            field: 2,
            offset: 0,
        }),
    }
}

fn check_distinct(bytes: &[u8], base: usize) -> Result<(), Error> {
    for (i, c) in bytes.iter().enumerate() {
        if bytes.get(..i).unwrap_or(&[]).contains(c) {
            return Err(Error::DuplicateDelimiter {
                byte: *c,
                offset: base + i,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_standard_and_truncation_sets() {
        let (d, end) = Delimiters::from_header(b"MSH|^~\\&|A", 0).unwrap();
        assert_eq!(d, Delimiters::default());
        assert_eq!(end, 8);
        let (d, end) = Delimiters::from_header(b"MSH|^~\\&#|A", 0).unwrap();
        assert_eq!(d.truncation(), Some('#'));
        assert_eq!(d.encoding_chars(), "^~\\&#");
        assert_eq!(end, 9);
    }

    #[test]
    fn a_doubled_escape_character_is_read_once() {
        let (d, end) = Delimiters::from_header(b"MSH|^~\\\\&|A", 0).unwrap();
        assert_eq!(d.encoding_chars(), "^~\\&");
        assert_eq!(d.escape_char(), '\\');
        assert_eq!(d.leniency(), Some("msh2-doubled-escape"));
        assert_eq!(end, 9);
        let (d, _) = Delimiters::from_header(b"MSH|^~\\\\&#|A", 0).unwrap();
        assert_eq!(d.truncation(), Some('#'));
        assert_eq!(Delimiters::default().leniency(), None);
        // Other repeats have no single reading.
        assert!(matches!(
            Delimiters::from_header(b"MSH|^^~\\&|", 0),
            Err(Error::DuplicateDelimiter { .. })
        ));
        assert!(matches!(
            Delimiters::from_header(b"MSH|^~\\&&|", 0),
            Err(Error::DuplicateDelimiter { .. })
        ));
    }

    #[test]
    fn rejects_damaged_headers() {
        assert!(matches!(
            Delimiters::from_header(b"PID|", 0),
            Err(Error::NotMsh { offset: 0 })
        ));
        assert!(matches!(
            Delimiters::from_header(b"MSH", 0),
            Err(Error::MshTooShort { .. })
        ));
        assert!(matches!(
            Delimiters::from_header(b"MSH|^~|", 0),
            Err(Error::BadEncodingChars { found: 2, .. })
        ));
        assert!(matches!(
            Delimiters::from_header(b"MSH|^~^&|", 0),
            Err(Error::DuplicateDelimiter {
                byte: b'^',
                offset: 6
            })
        ));
        assert!(matches!(
            Delimiters::from_header(b"MSH|^~A&|", 0),
            Err(Error::InvalidDelimiter { byte: b'A', .. })
        ));
    }

    #[test]
    fn custom_sets_are_validated() {
        assert!(Delimiters::new('#', '*', '!', '/', '$', None).is_ok());
        assert!(Delimiters::new('|', '|', '~', '\\', '&', None).is_err());
        assert!(Delimiters::new('|', 'é', '~', '\\', '&', None).is_err());
    }
}
