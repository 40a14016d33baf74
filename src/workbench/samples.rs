//! `crossway mappings test`: every sample under `<dir>/**/samples/` goes through the
//! same mapping code the gateway runs (no store, no listener, no network) and its
//! output is compared with `<sample>.expected.json` beside it, as JSON (key order does
//! not matter). Values the gateway generates at run time (referral ids, timestamps,
//! `client_ref`) are written as `"<generated>"`, so samples are deterministic.
//!
//! What a sample is depends on where it lives:
//! - `hie/samples/*.hl7`: an HL7 v2 ADT message → what the feed makes of it (the ACK
//!   code, identifiers, Patient, encounter change), or the error it is answered with;
//! - `hie/samples/*.json`: a Da Vinci notification Bundle → the same;
//! - `cbo/samples/*.json`: a Bundle holding a referral Task and what it references →
//!   the CBO API projection, as the Task's owner sees it under the visibility rules;
//! - `connectors/samples/*.json`: `{"connector", "event", "referral"}` (a projection)
//!   → the request the connector sends, or `{"connector", "case_status"}` (the case
//!   system's message) → the referral status it means and the action's checked body;
//!   `"case_id"` stands for the case once it exists (or the case a poll read).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cbo::{CboError, parse_action};
use crate::hie::{Notice, NoticeError, adt, notification};
use crate::hl7v2::FieldName;
use crate::mapping::Mappings;
use crate::referral::projection::{self, Related, Summary};
use crate::referral::{CboStatus, action};

/// Stands for a value generated at run time.
pub const GENERATED: &str = "<generated>";

/// One sample's result.
#[derive(Debug)]
pub struct SampleResult {
    pub input: PathBuf,
    pub outcome: Outcome,
    /// HL7 v2 fields present in the sample that no mapping read (`PID-13`).
    pub unused: Vec<String>,
}

#[derive(Debug)]
pub enum Outcome {
    Pass,
    /// Expected and actual differ: a line diff of the two, expected `-`, actual `+`.
    Fail(String),
    /// No `.expected.json` yet (written with `--update`).
    Missing,
    /// `--update` wrote the expected output.
    Written,
    /// The sample itself could not be read or is not a sample the runner knows.
    Invalid(String),
}

/// Runs every sample under `dir`; with `update`, (re)writes the expected outputs.
pub fn run(dir: &Path, mappings: &Mappings, update: bool) -> Vec<SampleResult> {
    let mut inputs = Vec::new();
    collect(dir, &mut inputs);
    inputs.sort();
    inputs
        .into_iter()
        .map(|input| {
            let (actual, unused) = match map_sample(dir, &input, mappings) {
                Ok(r) => r,
                Err(message) => {
                    return SampleResult {
                        input,
                        outcome: Outcome::Invalid(message),
                        unused: Vec::new(),
                    };
                }
            };
            let expected_path = expected_path(&input);
            let outcome = if update {
                match std::fs::write(&expected_path, pretty(&actual) + "\n") {
                    Ok(()) => Outcome::Written,
                    Err(e) => Outcome::Invalid(format!("{}: {e}", expected_path.display())),
                }
            } else {
                compare(&expected_path, &actual)
            };
            SampleResult {
                input,
                outcome,
                unused,
            }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.parent().and_then(Path::file_name) == Some("samples".as_ref())
            && !path.to_string_lossy().ends_with(".expected.json")
        {
            out.push(path);
        }
    }
}

fn expected_path(input: &Path) -> PathBuf {
    let stem = input.file_stem().unwrap_or_default().to_string_lossy();
    input.with_file_name(format!("{stem}.expected.json"))
}

fn compare(expected_path: &Path, actual: &Value) -> Outcome {
    let text = match std::fs::read_to_string(expected_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Missing,
        Err(e) => return Outcome::Invalid(format!("{}: {e}", expected_path.display())),
    };
    let expected: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Outcome::Invalid(format!("{}: {e}", expected_path.display())),
    };
    if &expected == actual {
        Outcome::Pass
    } else {
        Outcome::Fail(diff(&pretty(&expected), &pretty(actual)))
    }
}

/// Pretty JSON with keys sorted, so that a diff shows values, not key order.
pub(super) fn pretty(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sorted(v)).unwrap_or_default()
}

/// A line diff with two lines of context, `-` for `old`, `+` for `new`.
pub(super) fn diff(expected: &str, actual: &str) -> String {
    use similar::{ChangeTag, TextDiff};
    let mut out = String::new();
    let d = TextDiff::from_lines(expected, actual);
    for group in d.grouped_ops(2) {
        for op in group {
            for change in d.iter_changes(&op) {
                let sign = match change.tag() {
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                    ChangeTag::Equal => ' ',
                };
                out.push(sign);
                out.push_str(change.value());
                if !change.value().ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out.push_str("…\n");
    }
    out
}

/// The mapping's output for one sample, and the HL7 v2 fields it left unread.
fn map_sample(
    dir: &Path,
    input: &Path,
    mappings: &Mappings,
) -> Result<(Value, Vec<String>), String> {
    let relative = input.strip_prefix(dir).unwrap_or(input);
    let area = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = std::fs::read(input).map_err(|e| e.to_string())?;
    match (area.as_str(), ext) {
        ("hie", "hl7") => Ok(hl7_output(&bytes, mappings)),
        ("hie", "json") => {
            let bundle: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let notice = notification::notice(&bundle, &mappings.identity, None);
            Ok((notice_json(notice), Vec::new()))
        }
        ("cbo", "json") => {
            let bundle: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            Ok((projection_sample(&bundle, mappings)?, Vec::new()))
        }
        ("connectors", "json") => {
            let sample: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            Ok((connector_sample(&sample, mappings)?, Vec::new()))
        }
        _ => Err(format!(
            "not a known kind of sample: hie/samples/*.hl7, hie/samples/*.json, cbo/samples/*.json or connectors/samples/*.json (got {})",
            relative.display()
        )),
    }
}

/// What the feed makes of an HL7 v2 message, and the fields no rule read.
fn hl7_output(bytes: &[u8], mappings: &Mappings) -> (Value, Vec<String>) {
    let mut msg = match crate::hl7v2::parse_bytes(bytes) {
        Ok(m) => m,
        Err(e) => return (json!({"ack": "AR", "error": e.to_string()}), Vec::new()),
    };
    msg.record_reads();
    let notice = adt::notice(&msg, &mappings.feeds, &mappings.identity);
    let read = msg.take_reads();
    let unused = present_fields(&msg)
        .into_iter()
        .filter(|f| read.binary_search(f).is_err())
        .map(|f| f.to_string())
        .collect();
    (notice_json(notice), unused)
}

/// Fields with a value (not empty, not `""`), as `SEG-n`; MSH-1 and MSH-2 excluded.
pub(super) fn present_fields(msg: &crate::hl7v2::Message<'_>) -> Vec<FieldName> {
    let mut out = Vec::new();
    for segment in msg.segments() {
        let header = segment.id() == "MSH";
        segment.each_field_text(|n, raw| {
            let opaque = header && n <= 2;
            if !(opaque || raw.is_empty() || crate::hl7v2::is_null(raw)) {
                out.push(FieldName::new(segment.id(), n));
            }
        });
    }
    out.sort_unstable();
    out.dedup();
    out
}

pub(super) fn notice_json(notice: Result<Notice, NoticeError>) -> Value {
    match notice {
        Ok(n) => n.to_json(),
        Err(e) => json!({
            "ack": if e.reject { "AR" } else { "AE" },
            "error": {"path": e.path, "rule": e.rule, "code": e.code.code()},
        }),
    }
}

fn projection_sample(bundle: &Value, mappings: &Mappings) -> Result<Value, String> {
    let mut related = Related::default();
    let mut task = None;
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        let (Some(kind), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
            return Err("every entry needs a resource with resourceType and id".into());
        };
        if kind == "Task" {
            task = Some(r.clone());
        }
        related.resources.insert(format!("{kind}/{id}"), r.clone());
    }
    let task = task.ok_or("the Bundle holds no Task")?;
    // Routed as the gateway routes: a configured organisation's id, else the rules.
    let owner = &task["owner"];
    let reference = owner["reference"].as_str().unwrap_or("");
    let owner = mappings
        .routes
        .by_reference(reference)
        .or_else(|| {
            let (system, value) = (
                owner.pointer("/identifier/system"),
                owner.pointer("/identifier/value"),
            );
            mappings
                .routes
                .by_identifier(system?.as_str()?, value?.as_str()?)
        })
        .or_else(|| reference.strip_prefix("Organization/"))
        .ok_or("Task.owner must reference Organization/<id> or match a rule of cbo/routing.toml")?;
    let service_request = related.get(task.get("focus"));
    let (urgency, _, respond_by, domain) =
        projection::summary_fields(&task, service_request, &mappings.domains);
    let summary = Summary {
        id: GENERATED.into(),
        version: 1,
        status: CboStatus::Pending,
        urgency,
        created_at: GENERATED.into(),
        updated_at: GENERATED.into(),
        respond_by,
        domain,
        client_ref: Some(GENERATED.into()),
    };
    let mut view = projection::project(&summary, &task, &related, &mappings.omitted_for(owner));
    if let Some(m) = view.as_object_mut() {
        m.insert("_seen_by".into(), Value::String(owner.to_string()));
    }
    Ok(view)
}

/// A connector's request for an event on a referral, or what a case system's message
/// means for the referral (with the action's body checked as the CBO API checks it).
fn connector_sample(sample: &Value, mappings: &Mappings) -> Result<Value, String> {
    let id = sample["connector"]
        .as_str()
        .ok_or("a connector sample names its \"connector\"")?;
    let spec = mappings
        .connectors
        .get(id)
        .ok_or_else(|| format!("there is no connector {id:?}"))?;
    if let Some(message) = sample.get("case_status") {
        return Ok(match spec.report(message, sample["case_id"].as_str()) {
            Err(r) => json!({"error": {"pointer": r.pointer, "message": r.message}}),
            Ok(report) => {
                let Some(status) = report.status else {
                    return Ok(
                        json!({"case_id": report.case_id, "case_status": report.case_status, "ignored": true}),
                    );
                };
                let action = action::route(CboStatus::Pending, status)
                    .and_then(|steps| steps.last().copied())
                    .unwrap_or("none");
                let body = report.body.unwrap_or_else(|| json!({}));
                let mut out = json!({"case_id": report.case_id, "case_status": report.case_status,
                    "status": status.as_str(), "action": action, "body": body});
                if let Err(e) = parse_action(action, body.to_string().as_bytes()) {
                    out["invalid"] = match e {
                        CboError::Validation(errors) => json!(errors),
                        other => Value::String(other.to_string()),
                    };
                }
                out
            }
        });
    }
    let event = sample["event"]
        .as_str()
        .ok_or("a connector sample has \"event\" and \"referral\", or \"case_status\"")?;
    Ok(
        match spec.request_for(event, &sample["referral"], sample["case_id"].as_str()) {
            None => json!({"request": null}),
            Some(Err(e)) => json!({"error": e}),
            Some(Ok((request, body))) => {
                let path = match sample["case_id"].as_str() {
                    Some(case) => request.path.replace("{case_id}", case),
                    None => request.path.clone(),
                };
                json!({"request": request.name, "method": request.method, "path": path, "body": body})
            }
        },
    )
}

/// The diff and the report as `mappings test` prints them; `color` for a terminal.
pub fn render(results: &[SampleResult], color: bool) -> (String, bool) {
    let (red, green, reset) = if color {
        ("\x1b[31m", "\x1b[32m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut out = String::new();
    let mut ok = true;
    for r in results {
        let name = r.input.display();
        match &r.outcome {
            Outcome::Pass => out.push_str(&format!("{green}pass{reset}  {name}\n")),
            Outcome::Written => out.push_str(&format!("wrote {name} → expected output\n")),
            Outcome::Missing => {
                ok = false;
                out.push_str(&format!(
                    "{red}FAIL{reset}  {name}: no expected output (run `crossway mappings test --update` and review it)\n"
                ));
            }
            Outcome::Invalid(m) => {
                ok = false;
                out.push_str(&format!("{red}FAIL{reset}  {name}: {m}\n"));
            }
            Outcome::Fail(d) => {
                ok = false;
                out.push_str(&format!(
                    "{red}FAIL{reset}  {name}: output differs (- expected, + actual)\n"
                ));
                for line in d.lines() {
                    let colour = match line.chars().next() {
                        Some('-') => red,
                        Some('+') => green,
                        _ => "",
                    };
                    out.push_str(&format!("      {colour}{line}{reset}\n"));
                }
            }
        }
        if !r.unused.is_empty() {
            out.push_str(&format!(
                "      unused: {} (no rule reads them)\n",
                r.unused.join(", ")
            ));
        }
    }
    let failed = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Pass | Outcome::Written))
        .count();
    out.push_str(&format!("{} samples, {failed} failed\n", results.len()));
    (out, ok)
}
