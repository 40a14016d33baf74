//! HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \P\ \Xhh..\ \.br\`).

use std::borrow::Cow;

use super::delimiters::Delimiters;

impl Delimiters {
    /// Decodes escape sequences; borrows when `raw` has no escape character.
    ///
    /// Sequences we cannot turn into text (formatting like `\H\`, charset switches, hex
    /// that is not UTF-8, an unterminated sequence) are kept verbatim so nothing is lost.
    pub fn unescape<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        let esc = self.escape_byte();
        let bytes = raw.as_bytes();
        let Some(first) = bytes.iter().position(|&c| c == esc) else {
            return Cow::Borrowed(raw);
        };
        let mut out = String::with_capacity(raw.len());
        out.push_str(raw.get(..first).unwrap_or(""));
        let mut rest = raw.get(first..).unwrap_or("");
        while let Some(pos) = rest.bytes().position(|c| c == esc) {
            out.push_str(rest.get(..pos).unwrap_or(""));
            let after = rest.get(pos + 1..).unwrap_or("");
            let Some(close) = after.bytes().position(|c| c == esc) else {
                out.push_str(rest.get(pos..).unwrap_or(""));
                return Cow::Owned(out);
            };
            let body = after.get(..close).unwrap_or("");
            if !self.decode_sequence(body, &mut out) {
                out.push(char::from(esc));
                out.push_str(body);
                out.push(char::from(esc));
            }
            rest = after.get(close + 1..).unwrap_or("");
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    fn decode_sequence(&self, body: &str, out: &mut String) -> bool {
        let ch = match body {
            "F" => self.field_byte(),
            "S" => self.component_byte(),
            "T" => self.subcomponent_byte(),
            "R" => self.repetition_byte(),
            "E" => self.escape_byte(),
            "P" => match self.truncation_byte() {
                Some(t) => t,
                None => return false,
            },
            ".br" => b'\n',
            _ => {
                return body
                    .strip_prefix('X')
                    .is_some_and(|hex| decode_hex(hex, out));
            }
        };
        out.push(char::from(ch));
        true
    }

    /// Encodes text so it survives as one value: delimiters and line breaks become escape
    /// sequences. Borrows when nothing needs escaping.
    pub fn escape<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let special = |c: u8| self.escape_code(c).is_some();
        let Some(first) = text.bytes().position(special) else {
            return Cow::Borrowed(text);
        };
        let esc = char::from(self.escape_byte());
        let mut out = String::with_capacity(text.len() + 8);
        out.push_str(text.get(..first).unwrap_or(""));
        for ch in text.get(first..).unwrap_or("").chars() {
            match u8::try_from(ch).ok().and_then(|c| self.escape_code(c)) {
                Some(code) => {
                    out.push(esc);
                    out.push_str(code);
                    out.push(esc);
                }
                None => out.push(ch),
            }
        }
        Cow::Owned(out)
    }

    fn escape_code(&self, c: u8) -> Option<&'static str> {
        Some(match c {
            b'\n' => ".br",
            b'\r' => "X0D",
            _ if c == self.field_byte() => "F",
            _ if c == self.component_byte() => "S",
            _ if c == self.subcomponent_byte() => "T",
            _ if c == self.repetition_byte() => "R",
            _ if c == self.escape_byte() => "E",
            _ if Some(c) == self.truncation_byte() => "P",
            _ => return None,
        })
    }
}

/// Appends the bytes of an `\Xhh..\` body when they form UTF-8 text.
fn decode_hex(hex: &str, out: &mut String) -> bool {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return false;
    }
    let bytes: Option<Vec<u8>> = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect();
    match bytes.map(String::from_utf8) {
        Some(Ok(text)) => {
            out.push_str(&text);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d() -> Delimiters {
        Delimiters::default()
    }

    #[test]
    fn unescape_borrows_plain_text() {
        assert!(matches!(
            d().unescape("Smith^John"),
            Cow::Borrowed("Smith^John")
        ));
    }

    #[test]
    fn unescape_standard_sequences() {
        let d = d();
        assert_eq!(d.unescape(r"a\F\b\S\c\T\d\R\e\E\f"), "a|b^c&d~e\\f");
        assert_eq!(d.unescape(r"line1\.br\line2"), "line1\nline2");
        assert_eq!(d.unescape(r"\X0D0A\"), "\r\n");
        assert_eq!(d.unescape(r"caf\XC3A9\"), "café");
    }

    #[test]
    fn unknown_and_broken_sequences_pass_through() {
        let d = d();
        assert_eq!(d.unescape(r"\H\bold\N\"), r"\H\bold\N\");
        assert_eq!(d.unescape(r"\XE9\"), r"\XE9\");
        assert_eq!(d.unescape(r"\X0\"), r"\X0\");
        assert_eq!(d.unescape(r"tail\F"), r"tail\F");
        assert_eq!(d.unescape(r"\P\"), r"\P\");
    }

    #[test]
    fn escape_uses_declared_delimiters() {
        let d = Delimiters::new('#', '*', '!', '/', '$', Some('%')).unwrap();
        assert_eq!(d.escape("a#b*c!d/e$f%g|"), "a/F/b/S/c/R/d/E/e/T/f/P/g|");
        assert_eq!(d.unescape("a/F/b/S/c/R/d/E/e/T/f/P/g|"), "a#b*c!d/e$f%g|");
        assert!(matches!(d.escape("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn escape_line_breaks() {
        assert_eq!(d().escape("a\nb\rc"), r"a\.br\b\X0D\c");
    }

    fn delimiter_sets() -> impl Strategy<Value = Delimiters> {
        let pool: Vec<char> = "|^~\\&#!*/$%@+=;:?".chars().collect();
        (Just(pool).prop_shuffle(), any::<bool>()).prop_map(|(p, trunc)| {
            Delimiters::new(p[0], p[1], p[2], p[3], p[4], trunc.then_some(p[5])).unwrap()
        })
    }

    /// Text already in canonical escaped form, as a conforming sender writes it.
    fn escaped_text(d: Delimiters) -> impl Strategy<Value = String> {
        let mut codes = vec!["F", "S", "T", "R", "E", ".br", "X0D"];
        if d.truncation().is_some() {
            codes.push("P");
        }
        let piece = prop_oneof![
            "[a-zA-Z0-9 .,'é]{0,6}".prop_map(|s| s),
            prop::sample::select(codes)
                .prop_map(move |c| format!("{e}{c}{e}", e = d.escape_char())),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn unescape_inverts_escape(d in delimiter_sets(), text in "\\PC{0,40}|[|^~\\\\&#\r\n]{0,10}") {
            let escaped = d.escape(&text);
            prop_assert_eq!(d.unescape(&escaped), text.as_str());
        }

        #[test]
        fn escape_inverts_unescape_on_canonical_text(
            (d, raw) in delimiter_sets().prop_flat_map(|d| (Just(d), escaped_text(d)))
        ) {
            let text = d.unescape(&raw);
            prop_assert_eq!(d.escape(&text), raw.as_str());
        }

        #[test]
        fn unescape_never_panics(raw in "\\PC{0,60}|[\\\\XFSA0-9.br]{0,30}") {
            let _ = d().unescape(&raw);
        }
    }
}
