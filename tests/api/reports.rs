//! The programme's report (`/reports/v1/referrals`, `/cbo/v1/reports`): exact counts
//! for an analyst's scope, small cells suppressed for everyone else, CSV, and an HTML
//! page whose server-drawn chart a real browser (Debian's headless Chromium) shows with
//! the same numbers as the JSON.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const ORG: &str = "cbo-riverside-food-bank";

fn this_month() -> String {
    crossway::resource::datetime::format_instant(crossway::resource::datetime::now_micros())[..7]
        .to_string()
}

fn days_from_now(days: i64) -> String {
    crossway::resource::datetime::format_instant(
        crossway::resource::datetime::now_micros() + days * 86_400 * 1_000_000,
    )
}

/// A referral for a person of their own (MRN `mrn`); (Patient id, Task id).
async fn referral(app: &TestApp, mrn: &str) -> (String, String) {
    let mut bundle = referral_bundle();
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = json!(mrn);
    let r = app.post("", &bundle).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    (entry_id(&body, 0), entry_id(&body, 4))
}

/// The referral id of Task `task` as the CBO sees it.
async fn referral_of(app: &TestApp, task: &str) -> String {
    let cbo = app.cbo(ORG);
    for id in cbo.referral_ids().await {
        if cbo.get(&format!("referrals/{id}")).await.body["task"]
            .as_str()
            .is_some_and(|t| t.ends_with(task))
        {
            return id;
        }
    }
    panic!("no referral for Task/{task}");
}

fn encounter(patient: &str, class: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": start, "end": end}})
}

async fn report(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn chromium_dom(html: &str) -> String {
    let dir = std::env::temp_dir().join(format!("crossway-report-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, html).unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .expect("chromium must be installed (scripts/test installs Debian's chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `data-value` of the rendered bar for `series` in `month`.
fn bar(dom: &str, month: &str, series: &str) -> Option<usize> {
    let marker = format!("data-month=\"{month}\" data-series=\"{series}\" data-value=\"");
    let at = dom.find(&marker)? + marker.len();
    dom[at..].split('"').next()?.parse().ok()
}

#[tokio::test]
async fn the_programme_sees_its_referrals_counted_and_small_cells_suppressed() {
    let app = spawn_app().await;
    let cbo = app.cbo(ORG);
    let mut tasks = Vec::new();
    let mut first_patient = String::new();
    for i in 1..=12 {
        let (patient, task) = referral(&app, &format!("MRN-R{i}")).await;
        if i == 1 {
            first_patient = patient;
        }
        tasks.push(task);
    }
    let r1 = referral_of(&app, &tasks[0]).await;
    assert_eq!(
        cbo.post(&format!("referrals/{r1}/accept"), &json!({}))
            .await
            .status,
        200
    );
    let r2 = referral_of(&app, &tasks[1]).await;
    assert_eq!(
        cbo.post(&format!("referrals/{r2}/accept"), &json!({}))
            .await
            .status,
        200
    );
    let closed = cbo
        .post(
            &format!("referrals/{r2}/close"),
            &json!({"outcome": "resolved"}),
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let r3 = referral_of(&app, &tasks[2]).await;
    let declined = cbo
        .post(
            &format!("referrals/{r3}/decline"),
            &json!({"reason": "no_capacity"}),
        )
        .await;
    assert_eq!(declined.status, 200, "{}", declined.body);
    // The referrer withdraws the fourth.
    let mut t4 = app.get_json(&format!("Task/{}", tasks[3])).await;
    t4["status"] = json!("cancelled");
    assert_eq!(
        app.put(&format!("Task/{}", tasks[3]), &t4).await.status(),
        200
    );
    // The first person's hospital use around the referral: an ED visit before, then two
    // stays after, the second within 30 days of the first discharge.
    app.create(&encounter(
        &first_patient,
        "EMER",
        &days_from_now(-5),
        &days_from_now(-5),
    ))
    .await;
    app.create(&encounter(
        &first_patient,
        "IMP",
        &days_from_now(2),
        &days_from_now(4),
    ))
    .await;
    app.create(&encounter(
        &first_patient,
        "IMP",
        &days_from_now(10),
        &days_from_now(12),
    ))
    .await;

    let month = this_month();
    let query = format!("from={month}&to={month}");
    let analyst_client = app.add_ehr(&["--scope", "system/MeasureReport.rs"]);
    let analyst = bearer(&app.ehr_token(&analyst_client, None).await);
    let (status, text) = report(
        &analyst,
        format!("http://{}/reports/v1/referrals?{query}", app.addr),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let exact: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(exact["suppressed"], false);
    let row = &exact["rows"][0];
    assert_eq!(
        (
            row["month"].as_str(),
            row["domain"].as_str(),
            row["organization"].as_str()
        ),
        (Some(month.as_str()), Some("food-insecurity"), Some(ORG))
    );
    for (field, n) in [
        ("created", 12),
        ("accepted", 2),
        ("declined", 1),
        ("closed", 1),
        ("cancelled", 1),
        ("expired", 0),
    ] {
        assert_eq!(row[field], n, "{field}: {row}");
    }
    assert_eq!(row["declined_by_reason"]["no_capacity"], 1, "{row}");
    assert_eq!(
        row["closed_by_outcome"].as_object().unwrap().len(),
        1,
        "{row}"
    );
    assert!(row["median_hours_to_first_answer"].as_f64().unwrap() >= 0.0);
    assert!(row["median_hours_to_close"].as_f64().unwrap() >= 0.0);
    let open = exact["cross_sector"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["outcome"] == "open")
        .unwrap();
    assert_eq!(open["persons"], 9, "R1 (accepted) and R5 to R12: {open}");
    assert_eq!(open["ed_visits_90_days_before"], 1);
    assert_eq!(open["admissions_90_days_after"], 2);
    assert_eq!(open["readmissions_30_days_after"], 1);
    assert!(!text.contains("MRN-R"), "no person is named");

    // The default EHR scopes (a wildcard) and the CBO see small cells suppressed.
    let (status, text) = report(
        &app.client,
        format!("http://{}/reports/v1/referrals?{query}", app.addr),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let suppressed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(suppressed["suppressed"], true);
    assert_eq!(suppressed["rows"][0]["created"], 12);
    assert_eq!(suppressed["rows"][0]["accepted"], Value::Null);
    let own = cbo.get(&format!("reports?{query}")).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["organization"], ORG);
    assert_eq!(own.body["rows"][0]["created"], 12);
    assert_eq!(own.body["rows"][0]["declined"], Value::Null);
    assert_eq!(
        app.cbo("cbo-harbor-housing")
            .get(&format!("reports?{query}"))
            .await
            .body["rows"],
        json!([])
    );
    let bad = cbo.get("reports?from=2026-13&to=2026-12").await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    // CSV: one figure per line.
    let (status, csv) = report(
        &analyst,
        format!(
            "http://{}/reports/v1/referrals?{query}&format=csv",
            app.addr
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("table,month,domain,organization,outcome,metric,value\n"));
    assert!(
        csv.contains(&format!(
            "referrals,{month},food-insecurity,{ORG},,created,12\n"
        )),
        "{csv}"
    );
    assert!(
        csv.contains(&format!(
            "referrals,{month},food-insecurity,{ORG},no_capacity,declined,1\n"
        )),
        "{csv}"
    );

    // The page, as a browser renders it: its bars carry the JSON's numbers.
    let (status, html) = report(
        &analyst,
        format!(
            "http://{}/reports/v1/referrals?{query}&format=html",
            app.addr
        ),
    )
    .await;
    assert_eq!(status, 200);
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&html))
        .await
        .unwrap();
    for (series, field) in [
        ("made", "created"),
        ("accepted", "accepted"),
        ("declined", "declined"),
        ("closed", "closed"),
    ] {
        assert_eq!(
            bar(&dom, &month, series),
            row[field].as_u64().map(|n| n as usize),
            "{series} bar"
        );
    }
    assert!(dom.contains("<table>"), "the tables behind the chart");
    // Every read of a report is in the audit trail, with its period.
    let mut entities = Vec::new();
    for _ in 0..50 {
        let trail = app
            .audit_json(&format!("AuditEvent?agent={}", analyst_client.client_id))
            .await;
        entities = trail["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["entity"][0]["what"]["display"].as_str())
            .map(str::to_string)
            .collect();
        if entities.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        entities
            .iter()
            .any(|e| *e == format!("/reports/v1/referrals?{query}&format=html")),
        "{entities:?}"
    );
}
