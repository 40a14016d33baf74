//! Batch files: `FHS? (BHS? MSH… BTS?)* FTS?`, split into per-message slices.

use super::error::Error;

/// A batch split into messages; nothing is copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch<'a> {
    /// FHS, BHS, BTS and FTS segments in input order (without terminators).
    pub envelope: Vec<&'a str>,
    /// Each message from its MSH up to the next MSH or envelope segment, terminators
    /// included, ready for [`super::parse`].
    pub messages: Vec<&'a str>,
}

/// Splits on segment ids only, so one damaged message does not spoil its neighbours: each
/// slice is parsed (and ACKed) on its own. A plain message without envelope is a batch of
/// one.
pub fn split_batch(input: &str) -> Result<Batch<'_>, Error> {
    let mut batch = Batch::default();
    let mut open: Option<usize> = None;
    let mut pos = 0;
    let mut segment = 0;
    for line in input.split_inclusive(['\r', '\n']) {
        let start = pos;
        pos += line.len();
        let body = line.trim_end_matches(['\r', '\n']);
        if body.is_empty() {
            continue;
        }
        let id = body.get(..3).unwrap_or(body);
        let is_envelope = matches!(id, "FHS" | "BHS" | "BTS" | "FTS");
        if (id == "MSH" || is_envelope)
            && let Some(from) = open.take()
        {
            batch
                .messages
                .push(input.get(from..start).unwrap_or_default());
        }
        if id == "MSH" {
            open = Some(start);
        } else if is_envelope {
            batch.envelope.push(body);
        } else if open.is_none() {
            return Err(Error::UnexpectedSegment {
                segment,
                id: id.to_owned(),
                offset: start,
            });
        }
        segment += 1;
    }
    if let Some(from) = open {
        batch.messages.push(input.get(from..).unwrap_or_default());
    }
    if segment == 0 {
        return Err(Error::Empty);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    const FILE: &str = "FHS|^~\\&|APP\rBHS|^~\\&|APP\r\
MSH|^~\\&|A|B|C|D|1||ADT^A01|M1|P|2.5\rPID|1\r\
MSH|^~\\&|A|B|C|D|1||ADT^A08|M2|P|2.5\rPID|2\rZPI|x\r\
BTS|2\rFTS|1\r";

    #[test]
    fn splits_messages_and_envelope() {
        let b = split_batch(FILE).unwrap();
        assert_eq!(
            b.envelope,
            ["FHS|^~\\&|APP", "BHS|^~\\&|APP", "BTS|2", "FTS|1"]
        );
        assert_eq!(b.messages.len(), 2);
        assert_eq!(
            b.messages[1],
            "MSH|^~\\&|A|B|C|D|1||ADT^A08|M2|P|2.5\rPID|2\rZPI|x\r"
        );
        let ids: Vec<_> = b
            .messages
            .iter()
            .map(|m| parse(m).unwrap().get("MSH-10").unwrap().unwrap())
            .collect();
        assert_eq!(ids, ["M1", "M2"]);
    }

    #[test]
    fn crlf_batches_and_single_messages() {
        let crlf = FILE.replace('\r', "\r\n");
        let b = split_batch(&crlf).unwrap();
        assert_eq!(b.messages.len(), 2);
        assert!(b.messages[0].ends_with("PID|1\r\n"));
        let single = split_batch("MSH|^~\\&|A\rPID|1").unwrap();
        assert_eq!(single.messages, ["MSH|^~\\&|A\rPID|1"]);
        assert!(single.envelope.is_empty());
    }

    #[test]
    fn stray_segments_are_located() {
        assert_eq!(
            split_batch("FHS|^~\\&\rPID|1\r").unwrap_err(),
            Error::UnexpectedSegment {
                segment: 1,
                id: "PID".into(),
                offset: 9
            }
        );
        assert_eq!(split_batch("\r\n").unwrap_err(), Error::Empty);
    }
}
