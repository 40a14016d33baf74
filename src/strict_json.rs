//! JSON as both API faces take it: RFC 8259 text, refused where its meaning is not
//! certain. A member name twice in one object (RFC 8259 §4: "names SHOULD be unique";
//! parsers differ on which one wins, so a validator and a consumer may read different
//! documents) and a number no IEEE double can hold (`1e999`, stored as sent would
//! reach every reader as infinity or an error) are refused, naming where they are.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What is wrong with a body, and where (a JSON pointer; empty for the whole body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonProblem {
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{} (at {})", self.message, self.pointer)
        }
    }
}

/// Parses `bytes` as JSON, refusing duplicate member names and numbers that are not
/// finite doubles.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonProblem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| JsonProblem {
        pointer: String::new(),
        message: format!("the body is not valid JSON: {e}"),
    })?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Check {
        path: &mut Vec::new(),
    }
    .deserialize(&mut de)
    .map_err(|e| {
        let text = e.to_string();
        // serde_json appends " at line L column C"; the pointer is in the text.
        let (pointer, message) = text
            .split_once('\u{1f}')
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .unwrap_or((String::new(), text.clone()));
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.clone(), |(m, _)| m.to_string());
        JsonProblem { pointer, message }
    })?;
    finite(&value, &mut String::new())?;
    Ok(value)
}

/// Every number is a finite double.
fn finite(value: &Value, at: &mut String) -> Result<(), JsonProblem> {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(()),
            _ => Err(JsonProblem {
                pointer: at.clone(),
                message: format!("the number {n} is out of range (not a finite IEEE 754 double)"),
            }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                finite(item, at)?;
                at.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                finite(v, at)?;
                at.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Walks a document without building it, failing on the first object that names a
/// member twice. `path` is the JSON pointer of the value being walked.
struct Check<'p> {
    path: &'p mut Vec<String>,
}

fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.path.push(i.to_string());
            let more = seq.next_element_seed(Check {
                path: &mut *self.path,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!(
                    "{}\u{1f}the member {key:?} appears twice in one object",
                    pointer(self.path)
                )));
            }
            self.path.push(key.clone());
            map.next_value_seed(Check {
                path: &mut *self.path,
            })?;
            self.path.pop();
            seen.push(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_and_infinite_numbers_are_refused_where_they_are() {
        assert!(parse(br#"{"a": [1, 2.5, -3e10, {"b": null}], "c": "x"}"#).is_ok());
        let dup = parse(br#"{"resourceType": "Task", "note": [{"text": "a", "text": "b"}]}"#)
            .unwrap_err();
        assert_eq!(dup.pointer, "/note/0");
        assert!(dup.message.contains("\"text\" appears twice"), "{dup}");
        let top = parse(br#"{"status": "ready", "status": "cancelled"}"#).unwrap_err();
        assert_eq!(top.pointer, "");
        for (body, at) in [
            (&br#"{"valueDecimal": 1e999}"#[..], "/valueDecimal"),
            (br#"{"x": [0, -1E400]}"#, "/x/1"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.pointer, at, "{e}");
            assert!(e.message.contains("out of range"), "{e}");
        }
        // Large but finite, and exact decimals, are kept as sent.
        let v = parse(br#"{"n": 1.7976931348623157e308, "d": 0.10}"#).unwrap();
        assert_eq!(v["d"].to_string(), "0.10");
        assert!(
            parse(b"{not json")
                .unwrap_err()
                .message
                .contains("not valid JSON")
        );
    }
}
