//! Feeds arbitrary bytes through everything a listener does with a message: parse, walk
//! every value by view and by path, unescape, re-encode, batch-split and ACK.

#![no_main]

#[path = "../../src/hl7v2/mod.rs"]
#[allow(dead_code)]
mod hl7v2;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_bytes(data);
    check_bytes(text.as_bytes());
    if let Ok(batch) = hl7v2::split_batch(&text) {
        for message in batch.messages {
            check_bytes(message.as_bytes());
        }
    }
});

fn check_bytes(data: &[u8]) {
    let msg = match hl7v2::parse_bytes(data) {
        Ok(msg) => msg,
        Err(err) => {
            let ack = hl7v2::reject(data, &err, "FUZZ", "20240101");
            assert!(hl7v2::parse(&ack).is_ok(), "reject ACK must parse: {ack:?}");
            return;
        }
    };
    walk(&msg);
    let encoded = msg.encode();
    let again = hl7v2::parse(&encoded).expect("re-encoded message parses");
    assert_eq!(again.encode(), encoded, "encoding is stable");
    assert_eq!(again.segment_count(), msg.segment_count());
    let blank_lines = data.windows(2).any(|w| w == b"\r\r");
    let cr_only = !data.contains(&b'\n') && data.first() != Some(&b'\r');
    if cr_only && !blank_lines && data.ends_with(b"\r") {
        assert_eq!(encoded.as_bytes(), data, "CR-terminated input round-trips");
    }
    let error = hl7v2::AckError {
        code: hl7v2::ErrorCode::InternalError,
        severity: hl7v2::Severity::Error,
        location: None,
        message: msg.as_str().chars().take(40).collect(),
    };
    let ack = hl7v2::ack(&msg, hl7v2::AckCode::Error, "FUZZ", "20240101", &[error]);
    let parsed = hl7v2::parse(&ack).expect("ACK parses");
    let control_id = msg.get("MSH-10").ok().flatten().unwrap_or("");
    let echoed = parsed.get("MSA-2").ok().flatten().unwrap_or("");
    assert_eq!(
        msg.unescape(control_id),
        parsed.unescape(echoed),
        "MSA-2 echoes MSH-10"
    );
}

fn walk(msg: &hl7v2::Message<'_>) {
    for segment in msg.segments() {
        let occurrence = msg
            .segments()
            .take(segment.position())
            .filter(|s| s.id() == segment.id())
            .count()
            + 1;
        for field in segment.fields() {
            for (r, rep) in field.repetitions().enumerate() {
                for (c, comp) in rep.components().enumerate() {
                    for (s, sub) in comp.subcomponents().enumerate() {
                        let path = format!(
                            "{}[{occurrence}]-{}[{}].{}.{}",
                            segment.id(),
                            field.number(),
                            r + 1,
                            c + 1,
                            s + 1
                        );
                        if let Ok(found) = msg.get(&path) {
                            assert_eq!(found, Some(sub), "{path}");
                        }
                        let _ = msg.unescape(sub);
                    }
                }
            }
        }
    }
}
