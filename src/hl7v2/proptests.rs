//! Whole-module properties: generated messages round-trip and index exactly as built,
//! arbitrary input never panics.

use proptest::prelude::*;

use super::*;

/// segments → fields → repetitions → components → subcomponents (encoded leaves).
type Tree = Vec<(String, Vec<Vec<Vec<Vec<String>>>>)>;

fn delimiters() -> impl Strategy<Value = Delimiters> {
    let pool: Vec<char> = "|^~\\&#!*/$%@+=;:?".chars().collect();
    (Just(pool).prop_shuffle(), any::<bool>()).prop_map(|(p, trunc)| {
        Delimiters::new(p[0], p[1], p[2], p[3], p[4], trunc.then_some(p[5]))
            .expect("pool characters are distinct punctuation")
    })
}

fn leaf(d: Delimiters) -> impl Strategy<Value = String> {
    let e = d.escape_char();
    let piece = prop_oneof![
        4 => "[A-Za-z0-9 .é]{0,5}",
        1 => prop::sample::select(vec!["F", "S", "T", "R", "E", ".br", "X0D0A", "H", "Zfoo"])
            .prop_map(move |c| format!("{e}{c}{e}")),
        1 => Just("\"\"".to_owned()),
    ];
    prop::collection::vec(piece, 0..3).prop_map(|v| v.concat())
}

fn segment_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "Z[A-Z0-9]{2}",
        prop::sample::select(vec!["PID", "PV1", "NK1", "OBX", "IN1", "DG1", "EVN", "AL1"])
            .prop_map(str::to_owned),
    ]
}

fn tree(d: Delimiters) -> impl Strategy<Value = Tree> {
    let sub = prop::collection::vec(leaf(d), 1..3);
    let comp = prop::collection::vec(sub, 1..4);
    let rep = prop::collection::vec(comp, 1..3);
    let fields = prop::collection::vec(rep, 0..7);
    let msh = prop::collection::vec(
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(leaf(d), 1..2), 1..3),
            1..2,
        ),
        0..10,
    )
    .prop_map(|f| ("MSH".to_owned(), f));
    let segs = prop::collection::vec((segment_id(), fields), 0..6);
    (msh, segs).prop_map(|(m, mut s)| {
        s.insert(0, m);
        s
    })
}

fn encode_tree(d: &Delimiters, tree: &Tree) -> String {
    let join = |parts: Vec<String>, sep: char| parts.join(sep.encode_utf8(&mut [0; 4]));
    let mut out = String::new();
    for (id, fields) in tree {
        out.push_str(id);
        if id == "MSH" {
            out.push(d.field());
            out.push_str(&d.encoding_chars());
        }
        for field in fields {
            out.push(d.field());
            let reps = field.iter().map(|rep| {
                let comps = rep
                    .iter()
                    .map(|c| join(c.clone(), d.subcomponent()))
                    .collect();
                join(comps, d.component())
            });
            out.push_str(&join(reps.collect(), d.repetition()));
        }
        out.push('\r');
    }
    out
}

/// MSH fields in the tree start at MSH-3; other segments at field 1.
fn first_field(id: &str) -> usize {
    if id == "MSH" { 3 } else { 1 }
}

fn message() -> impl Strategy<Value = (Delimiters, Tree, String)> {
    delimiters().prop_flat_map(|d| {
        tree(d).prop_map(move |t| {
            let text = encode_tree(&d, &t);
            (d, t, text)
        })
    })
}

/// Touches every view and path of a parsed message, as a consumer would.
fn walk(m: &Message<'_>) {
    for s in m.segments() {
        let occurrence = m
            .segments()
            .take(s.position())
            .filter(|o| o.id() == s.id())
            .count()
            + 1;
        for f in s.fields() {
            for (r, rep) in f.repetitions().enumerate() {
                for (c, comp) in rep.components().enumerate() {
                    for (k, sub) in comp.subcomponents().enumerate() {
                        let path = format!(
                            "{}[{occurrence}]-{}[{}].{}.{}",
                            s.id(),
                            f.number(),
                            r + 1,
                            c + 1,
                            k + 1
                        );
                        if let Ok(found) = m.get(&path) {
                            assert_eq!(found, Some(sub), "{path}");
                        }
                        let _ = m.unescape(sub);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_parse_round_trips((d, _tree, text) in message()) {
        let m = parse(&text).unwrap();
        prop_assert_eq!(*m.delimiters(), d);
        prop_assert_eq!(m.encode(), text.as_str());
        for terminator in ["\n", "\r\n"] {
            let other = text.replace('\r', terminator) + terminator;
            prop_assert_eq!(parse(&other).unwrap().encode(), text.as_str());
        }
    }

    #[test]
    fn index_matches_generated_structure((_d, tree, text) in message()) {
        let m = parse(&text).unwrap();
        prop_assert_eq!(m.segment_count(), tree.len());
        for ((id, fields), seg) in tree.iter().zip(m.segments()) {
            prop_assert_eq!(seg.id(), id.as_str());
            let base = first_field(id);
            prop_assert_eq!(seg.field_count(), fields.len() + base - 1);
            for (fi, reps) in fields.iter().enumerate() {
                let field = seg.field(fi + base).unwrap();
                prop_assert_eq!(field.repetition_count(), reps.len());
                for (ri, comps) in reps.iter().enumerate() {
                    let rep = field.repetition(ri + 1).unwrap();
                    prop_assert_eq!(rep.component_count(), comps.len());
                    for (ci, subs) in comps.iter().enumerate() {
                        let got: Vec<&str> = rep.component(ci + 1).unwrap().subcomponents().collect();
                        prop_assert_eq!(&got, subs);
                    }
                }
            }
        }
        walk(&m);
    }

    #[test]
    fn builder_set_then_get(
        d in delimiters(),
        seg in segment_id(),
        occurrence in 1..3usize,
        field in 1..12usize,
        rep in 1..3usize,
        comp in proptest::option::of(1..5usize),
        sub in 1..3usize,
        with_sub in any::<bool>(),
        text in "\\PC{0,12}|[|^~\\\\&#!*/$%\r\n]{0,6}",
    ) {
        let path = match comp {
            Some(c) if with_sub => format!("{seg}[{occurrence}]-{field}[{rep}].{c}.{sub}"),
            Some(c) => format!("{seg}[{occurrence}]-{field}[{rep}].{c}"),
            None => format!("{seg}[{occurrence}]-{field}[{rep}]"),
        };
        let mut b = MessageBuilder::new(d);
        b.set("MSH-9.1", "ADT").unwrap().set(&path, &text).unwrap();
        let encoded = b.encode();
        let m = parse(&encoded).unwrap();
        let raw = m.get(&path).unwrap().unwrap();
        prop_assert_eq!(m.unescape(raw), text.as_str());
        prop_assert_eq!(m.get("MSH-9.1").unwrap(), Some("ADT"));
        prop_assert_eq!(m.encode(), encoded.as_str());
    }

    #[test]
    fn views_agree_with_splitting(text in rough_message()) {
        if let Ok(m) = parse(&text) {
            prop_assert_eq!(indexed_reading(&m), split_reading(&text, m.delimiters()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn near_miss_messages_never_panic(
        body in "[A-Z0-9|^~\\\\&#\r\n\"é]{0,200}",
        header in prop::sample::select(vec!["MSH|^~\\&|", "MSH|^~\\&#|", "MSH#*!/$#", "MSH|", "MSH", "\r\nMSH|^~\\&"]),
    ) {
        exercise(format!("{header}{body}").as_bytes());
    }
}

/// segments → fields → repetitions → components, read by plain string splitting.
type Split = Vec<Vec<Vec<Vec<String>>>>;

/// The same message read by splitting lines and strings: the reference the indexed
/// views must agree with, blank lines, mid-message headers and all.
fn split_reading(text: &str, d: &Delimiters) -> Split {
    let (sep, rep, comp) = (d.field(), d.repetition(), d.component());
    let opaque = |s: &str| vec![vec![s.to_owned()]];
    let split = |s: &str| -> Vec<Vec<String>> {
        s.split(rep)
            .map(|r| r.split(comp).map(str::to_owned).collect())
            .collect()
    };
    text.split(['\r', '\n'])
        .filter(|line| !line.is_empty())
        .map(|line| {
            let id = line.get(..3).unwrap_or(line);
            let rest = line.get(3..).unwrap_or("");
            match rest.strip_prefix(sep) {
                Some(after) if matches!(id, "MSH" | "BHS" | "FHS") => {
                    let (enc, more) = match after.split_once(sep) {
                        Some((enc, more)) => (enc, Some(more)),
                        None => (after, None),
                    };
                    let mut fields = vec![opaque(id), opaque(&sep.to_string()), opaque(enc)];
                    fields.extend(more.into_iter().flat_map(|m| m.split(sep)).map(split));
                    fields
                }
                _ => line
                    .split(sep)
                    .enumerate()
                    .map(|(i, f)| if i == 0 { opaque(f) } else { split(f) })
                    .collect(),
            }
        })
        .collect()
}

fn indexed_reading(m: &Message<'_>) -> Split {
    m.segments()
        .map(|s| {
            (0..=s.field_count())
                .map(|n| {
                    s.field(n)
                        .expect("every field up to the count")
                        .repetitions()
                        .map(|r| r.components().map(|c| c.raw().to_owned()).collect())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Text near real traffic: values with every delimiter, all three line ends, blank
/// lines, and header segments after the first.
fn rough_message() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => "[A-Z0-9 |^~&]{0,12}",
        1 => prop::sample::select(vec![
            "\r", "\n", "\r\n", "\r\n\r\n", "\rPID|", "\nZZZ", "\rMSH|^~\\&|",
            "\r\nBHS|", "\rFHS||", "\rMSH|^~\\&\r",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| format!("MSH|^~\\&|{}", p.concat()))
}

fn exercise(bytes: &[u8]) {
    match parse_bytes(bytes) {
        Ok(m) => {
            walk(&m);
            let encoded = m.encode();
            let again = parse(&encoded).expect("encoded output parses");
            assert_eq!(again.encode(), encoded);
            let _ = ack(&m, AckCode::Accept, "1", "2", &[]);
        }
        Err(e) => {
            let out = reject(bytes, &e, "1", "2");
            assert!(parse(&out).is_ok(), "{out:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(batch) = split_batch(text)
    {
        for msg in batch.messages {
            let _ = parse(msg);
        }
    }
}
