//! Owned builder for outgoing messages (ACKs, generated messages).

use super::delimiters::Delimiters;
use super::error::Error;
use super::parse::is_header_id;
use super::path::Path;

/// repetitions → components → subcomponents, each leaf already encoded.
type FieldValue = Vec<Vec<Vec<String>>>;

#[derive(Debug, Clone, Default)]
struct SegmentValue {
    id: String,
    /// Index n is field n; index 0 (the id) stays empty.
    fields: Vec<FieldValue>,
}

/// Builds a message by path. The first segment is always MSH, whose MSH-1/MSH-2 come from
/// the delimiters; other segments are appended in the order they are first named.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    delimiters: Delimiters,
    segments: Vec<SegmentValue>,
}

impl Default for MessageBuilder {
    fn default() -> Self {
        Self::new(Delimiters::default())
    }
}

impl MessageBuilder {
    pub fn new(delimiters: Delimiters) -> Self {
        Self {
            delimiters,
            segments: vec![SegmentValue {
                id: "MSH".to_owned(),
                fields: Vec::new(),
            }],
        }
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// Appends a new, empty segment (use it to add a second NK1, OBX…).
    pub fn add_segment(&mut self, id: &str) -> Result<&mut Self, Error> {
        let path: Path = format!("{id}-1").parse()?;
        self.segments.push(SegmentValue {
            id: path.segment_id().to_owned(),
            fields: Vec::new(),
        });
        Ok(self)
    }

    /// Sets text at a path, escaping it. A path without component replaces the whole
    /// repetition; missing segments, fields, repetitions and components are created.
    pub fn set(&mut self, path: &str, text: &str) -> Result<&mut Self, Error> {
        let escaped = self.delimiters.escape(text).into_owned();
        self.place(&path.parse()?, vec![vec![escaped]])?;
        Ok(self)
    }

    /// Sets an already-encoded value (same delimiters), e.g. a component copied from a
    /// parsed message. Separators below the path's level split it; separators at or above
    /// it, and line breaks, are escaped so they cannot change the structure.
    pub fn set_raw(&mut self, path: &str, raw: &str) -> Result<&mut Self, Error> {
        let path: Path = path.parse()?;
        let d = self.delimiters;
        let mut reserved = vec!['\r', '\n', d.field(), d.repetition()];
        if path.component().is_some() {
            reserved.push(d.component());
        }
        if path.subcomponent().is_some() {
            reserved.push(d.subcomponent());
        }
        let mut safe = String::with_capacity(raw.len());
        for ch in raw.chars() {
            if reserved.contains(&ch) {
                safe.push_str(&d.escape(ch.encode_utf8(&mut [0; 4])));
            } else {
                safe.push(ch);
            }
        }
        let value = safe
            .split(d.component())
            .map(|c| c.split(d.subcomponent()).map(str::to_owned).collect())
            .collect();
        self.place(&path, value)?;
        Ok(self)
    }

    /// Stores a repetition-shaped value at the path's level, creating what is missing.
    fn place(&mut self, path: &Path, value: Vec<Vec<String>>) -> Result<(), Error> {
        let id = path.segment_id();
        if is_header_id(id.as_bytes()) && path.field() <= 2 {
            return Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "MSH-1 and MSH-2 come from the delimiters",
            });
        }
        let mut seen = 0;
        let mut found = None;
        for (i, s) in self.segments.iter().enumerate() {
            if s.id == id {
                seen += 1;
                if seen == path.occurrence() {
                    found = Some(i);
                    break;
                }
            }
        }
        let at = match found {
            Some(i) => i,
            None => {
                for _ in seen..path.occurrence() {
                    self.segments.push(SegmentValue {
                        id: id.to_owned(),
                        fields: Vec::new(),
                    });
                }
                self.segments.len() - 1
            }
        };
        let segment = grow(&mut self.segments, at);
        let field = grow(&mut segment.fields, path.field());
        let rep = grow(field, path.repetition().saturating_sub(1));
        let mut value = value.into_iter();
        match (path.component(), path.subcomponent()) {
            (None, _) => *rep = value.collect(),
            (Some(c), None) => {
                *grow(rep, c.saturating_sub(1)) = value.next().unwrap_or_default();
            }
            (Some(c), Some(s)) => {
                let comp = grow(rep, c.saturating_sub(1));
                *grow(comp, s.saturating_sub(1)) = value
                    .next()
                    .and_then(|subs| subs.into_iter().next())
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> String {
        let d = &self.delimiters;
        let mut out = String::new();
        for segment in &self.segments {
            out.push_str(&segment.id);
            let first = if is_header_id(segment.id.as_bytes()) {
                out.push(d.field());
                out.push_str(&d.encoding_chars());
                3
            } else {
                1
            };
            for field in segment.fields.iter().skip(first) {
                out.push(d.field());
                join(&mut out, field, d.repetition(), |out, rep| {
                    join(out, rep, d.component(), |out, comp| {
                        join(out, comp, d.subcomponent(), |out, sub| out.push_str(sub));
                    });
                });
            }
            out.push('\r');
        }
        out
    }
}

fn join<T>(out: &mut String, items: &[T], sep: char, mut each: impl FnMut(&mut String, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        each(out, item);
    }
}

/// Extends `items` so index `at` exists and returns it.
fn grow<T: Default>(items: &mut Vec<T>, at: usize) -> &mut T {
    if items.len() <= at {
        items.resize_with(at + 1, T::default);
    }
    &mut items[at]
}
