//! `crossway feeds profile`: what captured feed traffic would get from the gateway
//! today, per sender, and (`--draft`) a copy of `mappings/` with the rules that can be
//! written from the traffic itself and the choices a human must make marked as such.
//! The same pure code the gateway runs (`hie::adt::notice`, `hie::notification`); no
//! store, no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::hie::{adt, notification};
use crate::hl7v2::{self, FieldName};
use crate::identity::rules::Cx;
use crate::mapping::Mappings;

/// One message found in a capture.
#[derive(Debug, Clone)]
pub enum Captured {
    Hl7(String),
    Bundle(Value),
    /// Bytes that are neither (the reason).
    Unreadable(String),
}

/// One message of a capture as it is read: HL7 v2 text borrowed from a buffer that is
/// reused for the next message (a capture of millions allocates nothing per message).
#[derive(Debug)]
pub enum Piece<'a> {
    Hl7(&'a str),
    Bundle(Value),
    Unreadable(String),
}

impl Piece<'_> {
    pub fn to_owned(&self) -> Captured {
        match self {
            Piece::Hl7(m) => Captured::Hl7((*m).to_string()),
            Piece::Bundle(b) => Captured::Bundle(b.clone()),
            Piece::Unreadable(why) => Captured::Unreadable(why.clone()),
        }
    }
}

/// Calls `f` with each message of a captured file: one or many HL7 v2 messages (CR, LF
/// or CRLF; a UTF-8 BOM; FHS/BHS batch envelopes; MLLP frames), each with its segments
/// ended by CR whatever the file used, or a JSON Bundle.
pub fn each_message(bytes: &[u8], mut f: impl FnMut(Piece<'_>)) {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return f(match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Piece::Bundle(v),
            Err(e) => Piece::Unreadable(format!("not JSON: {e}")),
        });
    }
    // MLLP framing: <VT> message <FS><CR>; bytes between frames are dropped.
    let mut texts = Vec::new();
    if bytes.contains(&0x0b) {
        for frame in bytes.split(|&b| b == 0x0b).skip(1) {
            let end = frame.iter().position(|&b| b == 0x1c).unwrap_or(frame.len());
            texts.push(String::from_utf8_lossy(&frame[..end]));
        }
    } else {
        texts.push(String::from_utf8_lossy(bytes));
    }
    let mut message = String::new();
    let mut open = false;
    for text in &texts {
        let text = text.trim_start_matches('\u{feff}');
        for seg in text.split(['\r', '\n']) {
            let header = seg.starts_with("MSH");
            if header
                || ["FHS", "BHS", "BTS", "FTS"]
                    .iter()
                    .any(|h| seg.starts_with(h))
            {
                if open {
                    f(Piece::Hl7(&message));
                }
                message.clear();
                open = header;
            } else if !open || seg.trim().is_empty() {
                continue;
            }
            message.push_str(seg);
            message.push('\r');
        }
        if open {
            f(Piece::Hl7(&message));
        }
        message.clear();
        open = false;
    }
}

/// What one sender's traffic would get.
#[derive(Debug, Default, Serialize)]
pub struct SenderProfile {
    pub messages: usize,
    /// `AA`, `AE`, `AR` → count.
    pub acks: BTreeMap<String, usize>,
    /// Why messages are not applied → count.
    pub errors: BTreeMap<String, usize>,
    pub message_types: BTreeMap<String, usize>,
    pub versions: BTreeMap<String, usize>,
    pub processing_ids: BTreeMap<String, usize>,
    /// Whether MSH-4 is a configured facility.
    pub configured: bool,
    /// `authority / type` as sent → how it resolves (a system, or why it is ignored).
    pub identifiers: BTreeMap<String, String>,
    /// Table (`PV1-2 patient_class`) → code → mapped?
    pub codes: BTreeMap<String, BTreeMap<String, bool>>,
    /// Fields with values that no rule read.
    #[serde(serialize_with = "field_names")]
    pub unread_fields: BTreeSet<FieldName>,
    /// Warnings the gateway would log → count.
    pub warnings: BTreeMap<String, usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct Profile {
    pub files: usize,
    pub messages: usize,
    pub applied: usize,
    pub senders: BTreeMap<String, SenderProfile>,
    /// A few messages of each sender and outcome, in order, for `--draft`'s samples.
    #[serde(skip)]
    pub samples: Vec<(String, Captured)>,
}

/// `PID-3` and so on (the parser's `FieldName` knows nothing of serde: it is fuzzed
/// alone).
fn field_names<S: serde::Serializer>(set: &BTreeSet<FieldName>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(set.iter().map(FieldName::to_string))
}

fn bump(map: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

fn text(msg: &hl7v2::Message<'_>, path: &str) -> String {
    msg.get(path)
        .ok()
        .flatten()
        .map(|raw| msg.unescape(raw).into_owned())
        .unwrap_or_default()
}

/// Messages kept per sender and kind of outcome (`ADT^A01 AE`) as `--draft`'s samples:
/// enough to show each class of traffic, bounded whatever the capture's size.
const SAMPLES_PER_CLASS: usize = 3;

/// Profiles the files under `paths` (directories are walked, in name order);
/// `progress` is told the bytes read so far and in all after each file.
pub fn profile(
    paths: &[PathBuf],
    mappings: &Mappings,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<Profile> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut done = 0;
    let mut kept: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut out = Profile::default();
    // One buffer for every file: a fresh one per file costs the kernel zeroing pages.
    let mut bytes = Vec::new();
    for file in &files {
        out.files += 1;
        bytes.clear();
        std::io::Read::read_to_end(&mut std::fs::File::open(file)?, &mut bytes)?;
        done += bytes.len() as u64;
        each_message(&bytes, |piece| {
            out.messages += 1;
            let (sender, class) = profile_one(&piece, mappings, &mut out);
            let n = kept.entry((sender.clone(), class)).or_default();
            if *n < SAMPLES_PER_CLASS {
                *n += 1;
                out.samples.push((sender, piece.to_owned()));
            }
        });
        progress(done, total);
    }
    Ok(out)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            collect(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Profiles one message into its sender's entry; returns the sender and the kind of
/// outcome (`ADT^A01 AA`, `AE`: what `--draft` keeps samples of).
fn profile_one(captured: &Piece<'_>, mappings: &Mappings, out: &mut Profile) -> (String, String) {
    match captured {
        Piece::Unreadable(why) => {
            let s = out.senders.entry("(unreadable)".into()).or_default();
            s.messages += 1;
            bump(&mut s.acks, "AR");
            bump(&mut s.errors, why.clone());
            ("(unreadable)".into(), "AR".into())
        }
        Piece::Bundle(bundle) => {
            let sender = notification::key(bundle, None)
                .map(|(source, _)| source)
                .unwrap_or_else(|_| "(unidentified notification)".into());
            let s = out.senders.entry(sender.clone()).or_default();
            s.messages += 1;
            s.configured = true;
            let event = notification::event(bundle);
            bump(&mut s.message_types, event.clone());
            let ack = match notification::notice(bundle, &mappings.identity, None) {
                Ok(n) => {
                    out.applied += 1;
                    for w in n.warnings {
                        bump(&mut s.warnings, w);
                    }
                    "AA"
                }
                Err(e) => {
                    bump(&mut s.errors, e.to_string());
                    if e.reject { "AR" } else { "AE" }
                }
            };
            bump(&mut s.acks, ack);
            (sender, format!("{event} {ack}"))
        }
        Piece::Hl7(message) => {
            let mut msg = match hl7v2::parse(message) {
                Ok(m) => m,
                Err(e) => {
                    let s = out.senders.entry("(unparsed)".into()).or_default();
                    s.messages += 1;
                    bump(&mut s.acks, "AR");
                    bump(&mut s.errors, e.to_string());
                    return ("(unparsed)".into(), "AR".into());
                }
            };
            msg.record_reads();
            let (sender, _, event) = adt::key(&msg);
            let sender = if sender.is_empty() {
                "(no MSH-4)".to_string()
            } else {
                sender
            };
            let notice = adt::notice(&msg, &mappings.feeds, &mappings.identity);
            let s = out.senders.entry(sender.clone()).or_default();
            s.messages += 1;
            s.configured = mappings
                .feeds
                .facility(&text(&msg, "MSH-4.1"), &text(&msg, "MSH-4.2"))
                .is_some();
            bump(&mut s.versions, text(&msg, "MSH-12.1"));
            bump(&mut s.processing_ids, text(&msg, "MSH-11.1"));
            let ack = match notice {
                Ok(n) => {
                    out.applied += 1;
                    for w in n.warnings {
                        bump(&mut s.warnings, w);
                    }
                    "AA"
                }
                Err(e) => {
                    bump(&mut s.errors, e.to_string());
                    if e.reject { "AR" } else { "AE" }
                }
            };
            bump(&mut s.acks, ack);
            let outcome = format!("{event} {ack}");
            bump(&mut s.message_types, event);
            identifiers(&msg, &sender, mappings, s);
            let class = text(&msg, "PV1-2.1");
            if !class.is_empty() {
                let mapped = mappings.feeds.patient_class(&class).is_some();
                s.codes
                    .entry("PV1-2 patient_class".into())
                    .or_default()
                    .insert(class, mapped);
            }
            let disposition = text(&msg, "PV1-36.1");
            if !disposition.is_empty() {
                let mapped = mappings.feeds.discharge_disposition(&disposition).is_some();
                s.codes
                    .entry("PV1-36 discharge_disposition".into())
                    .or_default()
                    .insert(disposition, mapped);
            }
            let read = msg.take_reads();
            for f in super::samples::present_fields(&msg) {
                if read.binary_search(&f).is_err() {
                    s.unread_fields.insert(f);
                }
            }
            (sender, outcome)
        }
    }
}

/// Each PID-3 repetition's authority and type, and what the rules make of it.
fn identifiers(msg: &hl7v2::Message<'_>, sender: &str, mappings: &Mappings, s: &mut SenderProfile) {
    let Some(field) = msg.segment("PID", 1).and_then(|seg| seg.field(3)) else {
        return;
    };
    for rep in field.repetitions() {
        let part = |c: usize, sc: usize| -> String {
            let raw = rep
                .component(c)
                .and_then(|comp| comp.subcomponent(sc))
                .unwrap_or("");
            msg.unescape(raw).into_owned()
        };
        let (value, ns, uid, uid_type, kind, f_ns, f_uid) = (
            part(1, 1),
            part(4, 1),
            part(4, 2),
            part(4, 3),
            part(5, 1),
            part(6, 1),
            part(6, 2),
        );
        if value.is_empty() {
            continue;
        }
        let cx = Cx {
            value: &value,
            namespace: &ns,
            universal_id: &uid,
            universal_id_type: &uid_type,
            kind: &kind,
            facility_namespace: &f_ns,
            facility_universal_id: &f_uid,
        };
        let authority = match (ns.as_str(), uid.as_str()) {
            ("", "") if !f_ns.is_empty() => format!("(no CX.4; CX.6 {f_ns})"),
            ("", "") => "(no CX.4)".to_string(),
            (n, "") => n.to_string(),
            (_, u) => u.to_string(),
        };
        let shown = if kind.is_empty() {
            "(untyped)"
        } else {
            kind.as_str()
        };
        let key = format!("{authority} / {shown}");
        // The first of each authority and type tells how all of them resolve.
        if s.identifiers.contains_key(&key) {
            continue;
        }
        let resolution = match mappings.identity.from_cx_noted(sender, &cx) {
            Ok((id, _)) => format!(
                "→ {} ({})",
                id.system,
                id.kind.as_deref().unwrap_or("untyped")
            ),
            Err(why) => format!("ignored: {why}"),
        };
        s.identifiers.insert(key, resolution);
    }
}

/// HL7 table 0203 codes that name a person.
const PERSON_TYPES_0203: &[&str] = &["MR", "PI", "PT", "MB", "SS", "NI", "PN", "NH", "HC", "JHN"];

/// Writes a copy of `from` to `to` with the rules the traffic needs: senders declared,
/// the choices a human must make written as commented-out rules marked `CHOOSE:`, and
/// the messages as `hie/samples` with their expected outputs under the drafted rules.
pub fn draft(
    profile: &Profile,
    from: &Path,
    to: &Path,
    organizations: &[String],
) -> anyhow::Result<()> {
    copy_dir(from, to)?;
    let mut feeds = String::from(
        "\n# --- Drafted by `crossway feeds profile --draft` from captured traffic.\n",
    );
    let mut sources = feeds.clone();
    for (sender, s) in &profile.senders {
        if sender.starts_with('(')
            || s.message_types
                .keys()
                .all(|t| t.starts_with("notification"))
        {
            continue;
        }
        let id = sender
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>();
        if !s.configured {
            feeds.push_str(&format!(
                "\n[[facility]]\nid = \"facility.draft-{id}\"\nfacility = {sender:?}\n# CHOOSE: utc_offset for times sent without one (else they stay dates)\n"
            ));
        }
        for p in s.processing_ids.keys().filter(|p| p.as_str() != "P") {
            feeds.push_str(&format!(
                "# CHOOSE: {sender:?} sends processing id {p:?}: add it to processing_ids to accept it\n"
            ));
        }
        for (table, codes) in &s.codes {
            for (code, _) in codes.iter().filter(|(_, mapped)| !**mapped) {
                let key = table.split(' ').nth(1).unwrap_or(table);
                feeds.push_str(&format!(
                    "# CHOOSE: {table} code {code:?} from {sender:?} has no mapping: add it to [{key}], or set [unmapped] {key} = \"keep\"\n"
                ));
            }
        }
        let mut rule = Vec::new();
        let no_authority: Vec<&String> = s
            .identifiers
            .keys()
            .filter(|k| k.starts_with("(no CX.4"))
            .collect();
        if no_authority.iter().any(|k| k.contains("CX.6")) {
            rule.push("# CHOOSE: CX.4 is empty and CX.6 names the facility: let it stand in\n# stand_in = [\"CX.6\"]".to_string());
        }
        if no_authority.iter().any(|k| !k.contains("CX.6")) {
            rule.push(format!("# CHOOSE: CX.4 is empty: the sender's own MRN system?\n# stand_in = [\"MSH-4\"]   # or assume_authority = \"<namespace, OID or system of {sender}'s MRNs>\""));
        }
        let local_types: BTreeSet<&str> = s
            .identifiers
            .iter()
            .filter(|(_, r)| r.contains("does not name a person"))
            .filter_map(|(k, _)| k.rsplit(" / ").next())
            .filter(|t| !PERSON_TYPES_0203.contains(t))
            .collect();
        if !local_types.is_empty() {
            let list: Vec<String> = local_types
                .iter()
                .map(|t| format!("{t:?} = \"<0203 code>\""))
                .collect();
            rule.push(format!(
                "# CHOOSE: local identifier types; alias them to HL7 table 0203, or list them in person_types\n# type_aliases = {{ {} }}",
                list.join(", ")
            ));
        }
        if !rule.is_empty() {
            sources.push_str(&format!(
                "\n# CHOOSE: uncomment what is true of {sender:?}.\n# [[source]]\n# id = \"source.draft-{id}\"\n# facility = {sender:?}\n{}\n",
                rule.join("\n")
            ));
        }
    }
    append(&to.join("hie/feeds.toml"), &feeds)?;
    append(&to.join("identity/sources.toml"), &sources)?;
    let samples = to.join("hie/samples");
    std::fs::create_dir_all(&samples)?;
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for (sender, captured) in &profile.samples {
        let count = n.entry(sender.as_str()).or_default();
        *count += 1;
        let stem: String = sender
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let (name, body) = match captured {
            Captured::Hl7(m) => (format!("draft-{stem}-{count}.hl7"), m.clone()),
            Captured::Bundle(b) => (
                format!("draft-{stem}-{count}.json"),
                serde_json::to_string_pretty(b)?,
            ),
            Captured::Unreadable(_) => continue,
        };
        std::fs::write(samples.join(name), body)?;
    }
    let mappings = Mappings::load(to, organizations).map_err(|e| anyhow::anyhow!("{e}"))?;
    super::samples::run(to, &mappings, true);
    Ok(())
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut current = std::fs::read_to_string(path).unwrap_or_default();
    current.push_str(text);
    std::fs::write(path, current)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The profile as text, one block per sender.
pub fn render(p: &Profile) -> String {
    let mut out = format!(
        "{} file(s), {} message(s), {} would be applied ({:.1} %)\n",
        p.files,
        p.messages,
        p.applied,
        if p.messages == 0 {
            0.0
        } else {
            100.0 * p.applied as f64 / p.messages as f64
        }
    );
    let list = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (sender, s) in &p.senders {
        out.push_str(&format!(
            "\n{sender}{}: {} message(s); {}\n",
            if s.configured {
                ""
            } else {
                " (not a configured facility)"
            },
            s.messages,
            list(&s.acks)
        ));
        out.push_str(&format!("  types: {}\n", list(&s.message_types)));
        if !s.versions.is_empty() {
            out.push_str(&format!(
                "  versions: {}; processing ids: {}\n",
                list(&s.versions),
                list(&s.processing_ids)
            ));
        }
        for (e, n) in &s.errors {
            out.push_str(&format!("  not applied ×{n}: {e}\n"));
        }
        for (id, how) in &s.identifiers {
            out.push_str(&format!("  identifier {id} {how}\n"));
        }
        for (table, codes) in &s.codes {
            let codes: Vec<String> = codes
                .iter()
                .map(|(c, mapped)| format!("{c:?}{}", if *mapped { "" } else { " (unmapped)" }))
                .collect();
            out.push_str(&format!("  {table}: {}\n", codes.join(", ")));
        }
        for (w, n) in &s.warnings {
            out.push_str(&format!("  warning ×{n}: {w}\n"));
        }
        if !s.unread_fields.is_empty() {
            let f: Vec<String> = s.unread_fields.iter().map(FieldName::to_string).collect();
            out.push_str(&format!("  fields no rule reads: {}\n", f.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// The fast walk over field texts agrees with the general accessor on every field
    /// of every segment: a message with empty fields, and every message of the real feed
    /// corpus.
    #[test]
    fn each_field_text_is_what_field_raw_says() {
        let mut texts =
            vec!["MSH|^~\\&|A|B|||||ADT^A08||P|2.5\rPID|||||\rPV1|1|I|W^1^2~X||\r".to_string()];
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/feeds/corpus");
        for dir in std::fs::read_dir(corpus).unwrap() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "hl7") {
                    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap())
                        .replace("\r\n", "\r")
                        .replace('\n', "\r");
                    for part in text.split("MSH").skip(1) {
                        texts.push(format!("MSH{part}"));
                    }
                }
            }
        }
        let mut checked = 0;
        for text in &texts {
            let Ok(m) = crate::hl7v2::parse(text) else {
                continue;
            };
            for segment in m.segments() {
                let mut fast = Vec::new();
                segment.each_field_text(|n, raw| fast.push((n, raw)));
                let slow: Vec<_> = segment.fields().map(|f| (f.number(), f.raw())).collect();
                assert_eq!(fast, slow, "{}", segment.raw());
                checked += fast.len();
            }
        }
        assert!(checked > 1000, "{checked} fields compared");
    }
}
