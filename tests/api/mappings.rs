//! `crossway mappings check | test | replay`: the integration engineer's loop. The
//! shipped mappings pass; a mapping broken on purpose fails with a diff and an error
//! that name the rule and the paths; a candidate is tried on stored traffic without
//! writing anything.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

const MAPPINGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings");

/// `crossway mappings ARGS --dir DIR`; returns (success, stdout + stderr).
fn mappings(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crossway"))
        .arg("mappings")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
        ])
        .env("CROSSWAY_LOG", "warn")
        .output()
        .expect("run crossway");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_shipped_mappings_check_clean_and_pass_their_samples() {
    let (ok, out) = mappings(&["check"], Path::new(MAPPINGS));
    assert!(ok, "{out}");
    let (ok, out) = mappings(&["test"], Path::new(MAPPINGS));
    assert!(ok, "{out}");
    // Every kind of sample is there: HL7 v2, Da Vinci notifications, the CBO projection.
    assert!(out.contains("hie/samples/a01-admit.hl7"), "{out}");
    assert!(out.contains("hie/samples/davinci-discharge.json"), "{out}");
    assert!(
        out.contains("cbo/samples/transport-minimum-necessary.json"),
        "{out}"
    );
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn a_mapping_broken_on_purpose_fails_with_a_diff_naming_the_rule_and_the_paths() {
    let dir = copy_of_mappings();
    let feeds = dir.join("hie/feeds.toml");
    // A table entry removed: outpatients can no longer be mapped.
    replace_in(&feeds, "O = \"AMB\"\n", "");
    // A table entry changed: "discharged home" now says "hospice".
    replace_in(&feeds, "\"01\" = \"home\"", "\"01\" = \"hosp\"");
    let (ok, out) = mappings(&["test"], &dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  ") && out.contains("statehie-no-offset.hl7"),
        "{out}"
    );
    // The outpatient registration now earns an AE, whose error names the source path,
    // the rule and the target path.
    let outpatient = out.split("statehie-no-offset.hl7").nth(1).unwrap();
    assert!(
        outpatient.contains("-  \"ack\": \"AA\"") && outpatient.contains("+  \"ack\": \"AE\""),
        "{out}"
    );
    assert!(outpatient.contains("\"path\": \"PV1-2\""), "{out}");
    assert!(
        outpatient.contains("rule hie/feeds.toml [patient_class]")
            && outpatient.contains("target Encounter.class"),
        "{out}"
    );
    // Samples the change does not touch still pass.
    assert!(
        out.lines()
            .any(|l| l.starts_with("pass") && l.ends_with("a01-admit.hl7")),
        "{out}"
    );
    // The discharge shows the one value that changed.
    let discharge = out.split("timezones.hl7").nth(1).unwrap();
    assert!(
        discharge.contains("-    \"disposition\": \"home\"")
            && discharge.contains("+    \"disposition\": \"hosp\""),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_names_file_line_and_rule_for_unknown_keys_conflicts_and_duplicates() {
    let dir = copy_of_mappings();
    replace_in(
        &dir.join("cbo/visibility.toml"),
        "omit = [\"need.conditions\"]",
        "omit = [\"need.conditions\"]\ncolour = \"red\"",
    );
    let (ok, out) = mappings(&["check"], &dir);
    assert!(!ok, "{out}");
    let line = std::fs::read_to_string(dir.join("cbo/visibility.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("colour"))
        .unwrap()
        + 1;
    assert!(
        out.contains(&format!(
            "cbo/visibility.toml:{line}: unknown field `colour`"
        )),
        "{out}"
    );

    let dir = copy_of_mappings();
    let sources = dir.join("identity/sources.toml");
    let text = std::fs::read_to_string(&sources).unwrap()
        + "\n[[authority]]\nid = \"authority.rvh-again\"\nnamespace = \"RVH\"\nsystem = \"http://elsewhere.example.org/mrn\"\n";
    std::fs::write(&sources, text).unwrap();
    let (ok, out) = mappings(&["check"], &dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("rule authority.rvh-again: \"RVH\" is already mapped to \"urn:oid:2.16.840.1.113883.3.9999.1\""),
        "{out}"
    );
    assert!(out.contains("identity/sources.toml:"), "{out}");

    let dir = copy_of_mappings();
    replace_in(
        &dir.join("hie/feeds.toml"),
        "id = \"facility.statehie\"",
        "id = \"visibility.default\"",
    );
    let (ok, out) = mappings(&["check"], &dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("rule visibility.default: the id is already used at"),
        "{out}"
    );
}

#[tokio::test]
async fn replay_shows_what_a_candidate_would_change_on_stored_traffic_and_writes_nothing() {
    let app = spawn_app().await;
    // The admit and the discharge carry PV1-36 = 01 (discharged home); only the
    // discharge reads it (an admit never records a disposition). The update has no
    // encounter part.
    for message in [
        adt("A01", "rp-0", &mrn("RP-1"), "V-RP1"),
        adt("A03", "rp-1", &mrn("RP-1"), "V-RP1"),
        adt("A08", "rp-2", &mrn("RP-2"), "V-RP2"),
    ] {
        assert_eq!(ack_code(&app.send_hl7(&message).await), "AA");
    }
    let candidate = copy_of_mappings();
    replace_in(
        &candidate.join("hie/feeds.toml"),
        "\"01\" = \"home\"",
        "\"01\" = \"hosp\"",
    );
    let out = app.operator(&[
        "mappings",
        "replay",
        "--since",
        "2000-01-01",
        "--dir",
        candidate.to_str().unwrap(),
    ]);
    assert!(out.contains("3 messages since 2000-01-01"), "{out}");
    assert!(out.contains("1 would change"), "{out}");
    assert!(
        !out.contains(" rp-0 ") && out.contains(" rp-1 ") && !out.contains(" rp-2 "),
        "{out}"
    );
    assert!(
        out.contains("-    \"disposition\": \"home\"")
            && out.contains("+    \"disposition\": \"hosp\""),
        "{out}"
    );

    // Nothing was written: the stored encounter still says home.
    let patient = app
        .search_ids("Patient?identifier=http://hospital.example.org/mrn|RP-1")
        .await
        .remove(0);
    let encounters = app
        .get_json(&format!("Encounter?subject=Patient/{patient}"))
        .await;
    let disposition = &encounters["entry"][0]["resource"]["hospitalization"]["dischargeDisposition"]
        ["coding"][0]["code"];
    assert_eq!(disposition, "home", "{encounters}");
    std::fs::remove_dir_all(candidate).unwrap();
}

/// Waits (at most 10 s) until the gateway's log has `line` `times` times.
async fn logged(app: &TestApp, line: &str, times: usize) {
    for _ in 0..200 {
        if app.logs.lock().unwrap().matches(line).count() >= times {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "{line:?} not logged {times} time(s):\n{}",
        app.logs.lock().unwrap()
    );
}

#[tokio::test]
async fn sighup_reloads_the_mappings_and_a_broken_set_is_refused() {
    let dir = copy_of_mappings();
    let app = spawn_app_with(&[("CROSSWAY_MAPPINGS_DIR", dir.to_str().unwrap())]).await;
    let class_z =
        |control: &str| adt("A01", control, &mrn("HUP-1"), "V-HUP").replace("PV1|1|I|", "PV1|1|Z|");
    assert_eq!(ack_code(&app.send_hl7(&class_z("hup-1")).await), "AE");

    // The feed's new patient class gets a mapping; the running gateway takes it.
    let feeds = dir.join("hie/feeds.toml");
    replace_in(
        &feeds,
        "[patient_class]\n",
        "[patient_class]\nZ = \"IMP\"\n",
    );
    app.hangup();
    logged(&app, "Mappings reloaded.", 1).await;
    assert_eq!(ack_code(&app.send_hl7(&class_z("hup-2")).await), "AA");

    // A broken file is refused with where and why; the set in force stays.
    replace_in(&feeds, "processing_ids =", "processing_idz =");
    app.hangup();
    logged(&app, "Mappings not reloaded", 1).await;
    let logs = app.logs.lock().unwrap().clone();
    assert!(
        logs.contains("hie/feeds.toml:") && logs.contains("unknown field `processing_idz`"),
        "{logs}"
    );
    assert_eq!(ack_code(&app.send_hl7(&class_z("hup-3")).await), "AA");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_decline_reason_mapped_to_the_ehrs_code_reaches_the_task_in_that_code() {
    let dir = copy_of_mappings();
    replace_in(
        &dir.join("cbo/codes.toml"),
        "no_capacity = { system = \"https://crossway.dev/fhir/CodeSystem/referral-status-reason\", code = \"no_capacity\", display = \"No capacity\" }",
        "no_capacity = { system = \"http://hospital.example.org/referral-reasons\", code = \"NOCAP\", display = \"Program full\" }",
    );
    let app = spawn_app_with(&[("CROSSWAY_MAPPINGS_DIR", dir.to_str().unwrap())]).await;
    let r: serde_json::Value = app.post("", &referral_bundle()).await.json().await.unwrap();
    let task_id = entry_id(&r, 4);
    let cbo = app.cbo("cbo-riverside-food-bank");
    let id = cbo.referral_ids().await.pop().unwrap();
    let declined = cbo
        .post(
            &format!("referrals/{id}/decline"),
            &serde_json::json!({"reason": "no_capacity"}),
        )
        .await;
    assert_eq!(declined.status, 200, "{}", declined.body);
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "rejected");
    assert_eq!(
        task["statusReason"]["coding"][0],
        serde_json::json!({"system": "http://hospital.example.org/referral-reasons", "code": "NOCAP", "display": "Program full"})
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn routing_and_domain_rules_send_a_referral_named_in_the_ehrs_own_terms() {
    let app = spawn_app().await;
    let mut bundle = referral_bundle();
    for entry in bundle["entry"].as_array_mut().unwrap() {
        let r = &mut entry["resource"];
        if r["resourceType"] == "Task" {
            // Metro Rides has no identifier in config/: cbo/routing.toml routes this one.
            r["owner"] = serde_json::json!({"identifier": {
                "system": "https://211.example.org/fhir/sid/agency", "value": "MR-0193"}});
        }
        if r["resourceType"] == "ServiceRequest" {
            r["category"] = serde_json::json!([{"coding": [{"code": "TRANSPORT",
                "system": "https://ehr.stmary.example.org/fhir/CodeSystem/sdoh-category"}]}]);
        }
    }
    let resp = app.post("", &bundle).await;
    assert_eq!(resp.status(), 200);
    let metro = app.cbo("cbo-metro-rides");
    let id = metro
        .referral_ids()
        .await
        .pop()
        .expect("routed to Metro Rides");
    let view = metro.get(&format!("referrals/{id}")).await.body;
    assert_eq!(view["need"]["domain"], "transportation-insecurity");
    let listed = metro.get("referrals").await.body;
    assert_eq!(listed["data"][0]["domain"], "transportation-insecurity");
    assert!(
        app.cbo("cbo-riverside-food-bank")
            .referral_ids()
            .await
            .is_empty()
    );
}

/// The loop an integration engineer lives in, end to end: a new sender's traffic is
/// dead-lettered for a missing rule → `feeds profile` on the captured traffic (a BOM and LF
/// line ends in one file, an MLLP-framed capture in another) → `--draft` → the human
/// takes the choices it marks → `mappings test --update`, review, `mappings test` → SIGHUP → `dlq replay --all` →
/// every message applied once, and a resend changes nothing.
#[tokio::test]
async fn onboarding_a_feed_profile_draft_test_reload_replay() {
    let dir = copy_of_mappings();
    // The sender is declared (as a new user does first); its identifiers have no rule.
    let feeds = dir.join("hie/feeds.toml");
    let text = std::fs::read_to_string(&feeds).unwrap()
        + "\n[[facility]]\nid = \"facility.newhosp\"\nfacility = \"NEWHOSP\"\n";
    std::fs::write(&feeds, text).unwrap();
    let app = spawn_app_with(&[("CROSSWAY_MAPPINGS_DIR", dir.to_str().unwrap())]).await;
    let new_sender = |trigger: &str, control: &str| {
        adt(trigger, control, "4711^^^^MR", "NH-V1").replace("|SMH|CROSSWAY|", "|NEWHOSP|CROSSWAY|")
    };
    let (admit, discharge) = (new_sender("A01", "nh-1"), new_sender("A03", "nh-2"));
    for m in [&admit, &discharge] {
        assert_eq!(ack_code(&app.send_hl7(m).await), "AE");
    }
    let capture = std::env::temp_dir().join(format!("crossway-capture-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&capture).unwrap();
    std::fs::write(capture.join("a.hl7"), format!("\u{feff}{admit}")).unwrap();
    let framed = [
        b"\x0b".as_slice(),
        discharge.replace('\n', "\r").as_bytes(),
        b"\x1c\r",
    ]
    .concat();
    std::fs::write(capture.join("b.mllp"), framed).unwrap();

    let draft = std::env::temp_dir().join(format!("crossway-draft-{}", uuid::Uuid::new_v4()));
    let (ok, out, err) = app.try_operator(&[
        "feeds",
        "profile",
        capture.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--draft",
        draft.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("2 message(s), 0 would be applied"), "{out}");
    assert!(out.contains("NEWHOSP: 2 message(s); AE ×2"), "{out}");
    assert!(out.contains("(no CX.4) / MR ignored"), "{out}");
    let (ok, json, _) =
        app.try_operator(&["feeds", "profile", capture.to_str().unwrap(), "--json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["senders"]["NEWHOSP"]["messages"], 2);

    // The human's choice: this sender's bare MRNs are its own (the marked lines).
    let sources = draft.join("identity/sources.toml");
    let text = std::fs::read_to_string(&sources).unwrap();
    assert!(text.contains("# CHOOSE: CX.4 is empty"), "{text}");
    let (head, drafted) = text.split_once("Drafted by").unwrap();
    let taken: Vec<String> = drafted
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rule) if !rule.starts_with("CHOOSE") => rule.to_string(),
            _ => l.to_string(),
        })
        .collect();
    std::fs::write(&sources, format!("{head}Drafted by{}\n", taken.join("\n"))).unwrap();
    // The drafted samples' expected outputs follow the choices: rewritten, reviewed
    // (here: both messages now applied), tested.
    let (ok, out) = mappings(&["test", "--update"], &draft);
    assert!(ok, "{out}");
    for n in 1..=2 {
        let expected = std::fs::read_to_string(
            draft.join(format!("hie/samples/draft-newhosp-{n}.expected.json")),
        )
        .unwrap();
        assert!(expected.contains("\"ack\": \"AA\""), "{expected}");
    }
    let (ok, out) = mappings(&["test"], &draft);
    assert!(ok, "{out}");

    let copy = std::process::Command::new("cp")
        .arg("-rT")
        .arg(&draft)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copy.success());
    app.hangup();
    logged(&app, "Mappings reloaded.", 1).await;
    let out = app.operator(&["dlq", "replay", "--all"]);
    assert_eq!(out.matches("replayed: Applied").count(), 2, "{out}");
    let found = app
        .search_ids("Patient?identifier=urn:crossway:authority:NEWHOSP|4711")
        .await;
    assert_eq!(found.len(), 1);
    let enc = app
        .get_json(&format!("Encounter?subject=Patient/{}", found[0]))
        .await;
    assert_eq!(enc["entry"].as_array().unwrap().len(), 1, "{enc}");
    assert_eq!(enc["entry"][0]["resource"]["status"], "finished");
    for m in [&admit, &discharge] {
        assert_eq!(ack_code(&app.send_hl7(m).await), "AA");
    }
    let again = app
        .get_json(&format!("Encounter?subject=Patient/{}", found[0]))
        .await;
    assert_eq!(
        again["entry"][0]["resource"]["meta"],
        enc["entry"][0]["resource"]["meta"]
    );
    std::fs::remove_dir_all(capture).ok();
    std::fs::remove_dir_all(draft).ok();
    std::fs::remove_dir_all(dir).ok();
}
