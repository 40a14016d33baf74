//! Value addresses: `SEG[occurrence]-field[repetition].component.subcomponent`, e.g.
//! `PID-3`, `PID-3[2].4.2`, `NK1[2]-2.1`. Numbers are 1-based; omitted occurrence and
//! repetition mean the first.

use std::fmt;
use std::str::FromStr;

use super::error::Error;

/// Caps every number so a hostile path cannot make the builder allocate gigabytes.
pub const MAX_PATH_NUMBER: usize = 9_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    segment: [u8; 3],
    occurrence: usize,
    field: usize,
    repetition: usize,
    component: Option<usize>,
    subcomponent: Option<usize>,
}

impl Path {
    pub fn segment_id(&self) -> &str {
        std::str::from_utf8(&self.segment).unwrap_or_default()
    }
    pub fn occurrence(&self) -> usize {
        self.occurrence
    }
    pub fn field(&self) -> usize {
        self.field
    }
    pub fn repetition(&self) -> usize {
        self.repetition
    }
    pub fn component(&self) -> Option<usize> {
        self.component
    }
    pub fn subcomponent(&self) -> Option<usize> {
        self.subcomponent
    }
}

struct Cursor<'s> {
    rest: &'s [u8],
    path: &'s str,
}

impl Cursor<'_> {
    fn fail(&self, reason: &'static str) -> Error {
        Error::InvalidPath {
            path: self.path.to_owned(),
            reason,
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, tail)) if first == c => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    fn number(&mut self) -> Result<usize, Error> {
        let digits = self.rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let (num, tail) = self.rest.split_at(digits);
        self.rest = tail;
        let value = num
            .iter()
            .try_fold(0usize, |acc, &c| {
                let v = acc * 10 + usize::from(c - b'0');
                (v <= MAX_PATH_NUMBER).then_some(v)
            })
            .ok_or_else(|| self.fail("number too large"))?;
        if digits == 0 || value == 0 {
            return Err(self.fail("expected a number of 1 or more"));
        }
        Ok(value)
    }

    fn bracketed(&mut self) -> Result<usize, Error> {
        if !self.eat(b'[') {
            return Ok(1);
        }
        let n = self.number()?;
        if !self.eat(b']') {
            return Err(self.fail("missing ']'"));
        }
        Ok(n)
    }
}

impl FromStr for Path {
    type Err = Error;

    fn from_str(path: &str) -> Result<Self, Error> {
        let bytes = path.as_bytes();
        let mut cur = Cursor {
            rest: bytes.get(3..).unwrap_or(&[]),
            path,
        };
        let segment: [u8; 3] = bytes
            .get(..3)
            .and_then(|s| s.try_into().ok())
            .filter(|s: &[u8; 3]| s.iter().all(u8::is_ascii_alphanumeric))
            .ok_or_else(|| cur.fail("segment id must be 3 letters or digits"))?;
        let occurrence = cur.bracketed()?;
        if !cur.eat(b'-') {
            return Err(cur.fail("expected '-' after the segment id"));
        }
        let field = cur.number()?;
        let repetition = cur.bracketed()?;
        let component = if cur.eat(b'.') {
            Some(cur.number()?)
        } else {
            None
        };
        let subcomponent = if component.is_some() && cur.eat(b'.') {
            Some(cur.number()?)
        } else {
            None
        };
        if !cur.rest.is_empty() {
            return Err(cur.fail("unexpected characters after the path"));
        }
        Ok(Self {
            segment,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment_id())?;
        if self.occurrence != 1 {
            write!(f, "[{}]", self.occurrence)?;
        }
        write!(f, "-{}", self.field)?;
        if self.repetition != 1 {
            write!(f, "[{}]", self.repetition)?;
        }
        for n in [self.component, self.subcomponent].into_iter().flatten() {
            write!(f, ".{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_all_forms() {
        let p: Path = "PID[2]-3[4].5.6".parse().unwrap();
        assert_eq!(
            (p.segment_id(), p.occurrence(), p.field(), p.repetition()),
            ("PID", 2, 3, 4)
        );
        assert_eq!((p.component(), p.subcomponent()), (Some(5), Some(6)));
        let p: Path = "ZX1-10".parse().unwrap();
        assert_eq!(
            (p.occurrence(), p.repetition(), p.component()),
            (1, 1, None)
        );
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "",
            "PI",
            "PID",
            "PID-",
            "PID-0",
            "PID-3.",
            "PID-3[0]",
            "PID-3[2",
            "PID-3.1.2.3",
            "PID-3x",
            "P-D-3",
            "PID-99999",
            "PID-3.1.",
            "PID[1-3",
            "PIDé-1",
        ] {
            assert!(
                matches!(bad.parse::<Path>(), Err(Error::InvalidPath { .. })),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(
            seg in "[A-Z][A-Z0-9]{2}", occ in 1..20usize, field in 1..200usize, rep in 1..20usize,
            comp in proptest::option::of(1..30usize), sub in proptest::option::of(1..10usize),
        ) {
            let text = match (comp, sub) {
                (Some(c), Some(s)) => format!("{seg}[{occ}]-{field}[{rep}].{c}.{s}"),
                (Some(c), None) => format!("{seg}[{occ}]-{field}[{rep}].{c}"),
                _ => format!("{seg}[{occ}]-{field}[{rep}]"),
            };
            let p: Path = text.parse().unwrap();
            let again: Path = p.to_string().parse().unwrap();
            prop_assert_eq!(p, again);
        }

        #[test]
        fn never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Path>();
        }
    }
}
