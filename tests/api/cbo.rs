//! The CBO API and the closed loop: what a community organisation does on `/cbo/v1`
//! shows up on the FHIR side as the IG prescribes, and the other way round.

use serde_json::{Value, json};

use crate::helpers::{
    Reply, TestApp, entry_id, referral_bundle, spawn_app, spawn_app_with, spawn_sibling, store_kind,
};

const ORG: &str = "cbo-riverside-food-bank";

/// Posts the Gravity referral; returns (referral id, Task id).
async fn referral(app: &TestApp) -> (String, String) {
    referral_from(app, referral_bundle()).await
}

async fn referral_from(app: &TestApp, bundle: Value) -> (String, String) {
    let resp = app.post("", &bundle).await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    let task_id = entry_id(&r, 4);
    // The newest referral is last: lists are ordered by (updated_at, id).
    let ids = app.cbo(ORG).referral_ids().await;
    let id = ids.last().expect("the referral is listed").clone();
    (id, task_id)
}

#[tokio::test]
async fn a_referral_is_accepted_noted_and_closed_and_the_ehr_sees_the_loop_close() {
    let app = spawn_app().await;
    let (id, task_id) = referral(&app).await;
    let cbo = app.cbo(ORG);

    // What the CBO sees: minimum necessary, a client_ref instead of the MRN.
    let view = cbo.get(&format!("referrals/{id}")).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.headers["etag"], "W/\"1\"");
    let r = &view.body;
    assert_eq!(r["status"], "pending");
    // Task.restriction.period.end is a date; it stays one (not an instant in UTC).
    assert_eq!(r["respond_by"], "2099-12-31");
    let listed = cbo.get("referrals").await.body;
    assert_eq!(listed["data"][0]["respond_by"], "2099-12-31", "{listed}");
    assert_eq!(r["need"]["domain"], "food-insecurity");
    assert!(
        r["need"].get("conditions").is_none(),
        "omitted by mappings/cbo/visibility.toml"
    );
    assert_eq!(r["service"]["requested"]["code"], "467771000124109");
    assert_eq!(r["client"]["name"]["family"], "Rivera");
    assert_eq!(r["client"]["phone"], "555-0100");
    assert_eq!(r["client"]["contact_allowed"], true);
    assert_eq!(r["consent"]["status"], "granted");
    assert_eq!(r["referrer"]["organization"], "St. Mary Community Hospital");
    assert!(
        r["client"]["client_ref"]
            .as_str()
            .unwrap()
            .starts_with("cli_")
    );
    assert!(!view.body.to_string().contains("MRN-10001"));

    let accepted = cbo
        .post(
            &format!("referrals/{id}/accept"),
            &json!({"assignee": "Ana", "note": "We will call today."}),
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.body["status"], "accepted");
    assert_eq!(accepted.body["assignee"], "Ana");
    assert_eq!(accepted.headers["etag"], "W/\"2\"");

    let note = cbo
        .post(
            &format!("referrals/{id}/notes"),
            &json!({"text": "Left a voicemail."}),
        )
        .await;
    assert_eq!(note.status, 201, "{}", note.body);
    assert_eq!(note.body["author"], "cbo");

    let start = cbo.post(&format!("referrals/{id}/start"), &json!({})).await;
    assert_eq!(start.status, 200, "{}", start.body);
    let closed = cbo
        .post(
            &format!("referrals/{id}/close"),
            &json!({"outcome": "resolved",
                    "services_provided": [{"system": "http://snomed.info/sct", "code": "467771000124109", "date": "2026-11-23"}],
                    "enrollment": {"program": "Weekly pantry", "status": "enrolled"},
                    "note": "Enrolled; first pickup Thursday.", "external_case_id": "APRICOT-55123"}),
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(closed.body["status"], "closed");

    // The EHR's view: completed, the Procedure in output, the notes, every version.
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["statusReason"]["coding"][0]["code"], "resolved");
    let notes: Vec<&str> = task["note"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        [
            "We will call today.",
            "Left a voicemail.",
            "Enrolled; first pickup Thursday."
        ]
    );
    let outputs: Vec<&str> = task["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert!(
        outputs[0].starts_with("Procedure/") && outputs[1].starts_with("Observation/"),
        "{outputs:?}"
    );
    let procedure = app.get_json(outputs[0]).await;
    assert_eq!(procedure["status"], "completed");
    assert_eq!(
        procedure["basedOn"][0]["reference"],
        task["focus"]["reference"]
    );
    assert_eq!(task["identifier"][0]["value"], "APRICOT-55123");
    let history = app.get_json(&format!("Task/{task_id}/_history")).await;
    assert_eq!(history["total"], 5);
    // `_include=Task:output` is how the IG's clients fetch the outcome.
    let bundle = app
        .get_json(&format!("Task?_id={task_id}&_include=Task:output"))
        .await;
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 3);

    let events: Vec<String> = cbo.event_types(0).await;
    assert_eq!(
        events,
        [
            "referral.created",
            "referral.status_changed",
            "referral.note_added",
            "referral.note_added",
            "referral.status_changed",
            "referral.status_changed",
            "referral.note_added",
        ]
    );
    let timeline = cbo.get(&format!("referrals/{id}/events")).await.body;
    let statuses: Vec<&str> = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"closed"));
}

#[tokio::test]
async fn a_decline_needs_a_coded_reason_and_is_final() {
    let app = spawn_app().await;
    let (id, task_id) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let missing = cbo
        .post(&format!("referrals/{id}/decline"), &json!({"note": "full"}))
        .await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.headers["content-type"], "application/problem+json");
    assert_eq!(
        missing.body["type"],
        "https://crossway.dev/problems/validation"
    );
    assert_eq!(missing.body["errors"][0]["pointer"], "/reason");

    let declined = cbo
        .post(
            &format!("referrals/{id}/decline"),
            &json!({"reason": "no_capacity", "note": "Pantry full until January."}),
        )
        .await;
    assert_eq!(declined.status, 200, "{}", declined.body);
    assert_eq!(declined.body["status"], "declined");
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "rejected");
    assert_eq!(task["statusReason"]["coding"][0]["code"], "no_capacity");
    assert_eq!(task["statusReason"]["text"], "Pantry full until January.");

    let again = cbo
        .post(&format!("referrals/{id}/accept"), &json!({}))
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["current_status"], "declined");
    assert_eq!(again.body["allowed_actions"], json!([]));
    assert!(again.body["trace_id"].is_string());
}

#[tokio::test]
async fn a_referrer_cancel_shows_as_cancelled_to_the_cbo() {
    let app = spawn_app().await;
    let (id, task_id) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let mut task = app.get_json(&format!("Task/{task_id}")).await;
    task["status"] = json!("cancelled");
    task["statusReason"] = json!({"text": "Patient moved out of state"});
    assert_eq!(
        app.put(&format!("Task/{task_id}"), &task).await.status(),
        200
    );
    let view = cbo.get(&format!("referrals/{id}")).await.body;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["status_reason"]["text"], "Patient moved out of state");
    assert_eq!(cbo.event_types(1).await, ["referral.cancelled"]);
    let accept = cbo
        .post(&format!("referrals/{id}/accept"), &json!({}))
        .await;
    assert_eq!(accept.status, 409);
    assert_eq!(accept.body["current_status"], "cancelled");
}

#[tokio::test]
async fn invalid_transitions_are_refused_with_what_is_allowed() {
    let app = spawn_app().await;
    let (id, _) = referral(&app).await;
    let cbo = app.cbo(ORG);
    for (action, status) in [
        ("start", "pending"),
        ("resume", "pending"),
        ("close", "pending"),
        ("hold", "pending"),
    ] {
        let body = if action == "close" {
            json!({"outcome": "resolved"})
        } else {
            json!({})
        };
        let r = cbo.post(&format!("referrals/{id}/{action}"), &body).await;
        assert_eq!(r.status, 409, "{action}: {}", r.body);
        assert_eq!(
            r.body["type"],
            "https://crossway.dev/problems/invalid-transition"
        );
        assert_eq!(r.body["current_status"], status);
        assert_eq!(
            r.body["allowed_actions"],
            json!(["accept", "decline", "note"])
        );
    }
    assert_eq!(
        cbo.post(&format!("referrals/{id}/accept"), &json!({}))
            .await
            .status,
        200
    );
    let r = cbo
        .post(&format!("referrals/{id}/resume"), &json!({}))
        .await;
    assert_eq!(
        r.body["allowed_actions"],
        json!(["start", "hold", "close", "note"])
    );
    assert_eq!(
        cbo.post(
            &format!("referrals/{id}/hold"),
            &json!({"reason": "Client in hospital"})
        )
        .await
        .status,
        200
    );
    let r = cbo
        .post(
            &format!("referrals/{id}/close"),
            &json!({"outcome": "resolved"}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["allowed_actions"], json!(["resume", "note"]));
    assert_eq!(
        cbo.post(&format!("referrals/{id}/resume"), &json!({}))
            .await
            .body["status"],
        "in_progress"
    );
    assert_eq!(
        cbo.post(&format!("referrals/{id}/dance"), &json!({}))
            .await
            .status,
        404
    );
}

/// Notes sent at the same moment on one referral are all kept and all answered 201:
/// on PostgreSQL two batches that write the same Task run at once, and the second must
/// wait for the first's row lock and read the version it committed.
#[tokio::test]
async fn concurrent_notes_on_one_referral_are_all_kept() {
    let app = spawn_app().await;
    let (id, task_id) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let path = format!("referrals/{id}/notes");
    let (rounds, at_once) = (10, 4);
    for round in 0..rounds {
        let sends = (0..at_once).map(|n| {
            let body = format!(r#"{{"text": "round {round} note {n}"}}"#);
            let (cbo, path) = (&cbo, &path);
            async move { cbo.post_raw(path, &body, &[]).await }
        });
        for reply in futures_util::future::join_all(sends).await {
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["note"].as_array().unwrap().len(), rounds * at_once);
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_reuse_and_race_to_one_effect() {
    let app = spawn_app().await;
    let (id, task_id) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let path = format!("referrals/{id}/notes");
    let body = r#"{"text": "Called twice"}"#;
    let first = cbo
        .post_raw(&path, body, &[("Idempotency-Key", "k-1")])
        .await;
    assert_eq!(first.status, 201);
    let replay = cbo
        .post_raw(&path, body, &[("Idempotency-Key", "k-1")])
        .await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body);
    let reused = cbo
        .post_raw(
            &path,
            r#"{"text": "Something else"}"#,
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.body["type"],
        "https://crossway.dev/problems/idempotency-key-reused"
    );
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["note"].as_array().unwrap().len(), 1);

    // Two identical requests racing: one effect; the other is a replay or "in progress".
    let accept = format!("referrals/{id}/accept");
    let (a, b) = tokio::join!(
        cbo.post_raw(&accept, "{}", &[("Idempotency-Key", "k-2")]),
        cbo.post_raw(&accept, "{}", &[("Idempotency-Key", "k-2")]),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert!(
        statuses == [200, 200] || statuses == [200, 409],
        "{statuses:?}"
    );
    let accepted_events = cbo
        .event_types(0)
        .await
        .iter()
        .filter(|e| *e == "referral.status_changed")
        .count();
    assert_eq!(accepted_events, 1);
    assert_eq!(
        app.get_json(&format!("Task/{task_id}/_history")).await["total"],
        3
    );
}

#[tokio::test]
async fn organisations_never_see_each_others_referrals() {
    let app = spawn_app().await;
    let (id, _) = referral(&app).await;
    let other = app.cbo("cbo-harbor-housing");
    assert_eq!(other.get(&format!("referrals/{id}")).await.status, 404);
    assert_eq!(other.get("referrals").await.body["data"], json!([]));
    assert_eq!(other.get("events").await.body["data"], json!([]));
    assert_eq!(
        other.get(&format!("referrals/{id}/events")).await.status,
        404
    );
    let act = other
        .post(&format!("referrals/{id}/accept"), &json!({}))
        .await;
    assert_eq!(act.status, 404);
    assert_eq!(
        app.cbo(ORG).get(&format!("referrals/{id}")).await.body["status"],
        "pending"
    );

    // A referrer cannot be given a CBO credential; an EHR token is not one; no
    // credential, no access.
    let (ok, _, err) = app.try_operator(&[
        "clients",
        "add",
        "cbo",
        "--org",
        "Organization/hospital-st-mary",
        "--json",
    ]);
    assert!(!ok && err.contains("referrer"), "{err}");
    let ehr = app
        .client
        .get(format!("http://{}/cbo/v1/referrals", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ehr.status(), 403);
    let anonymous = reqwest::Client::new()
        .get(format!("http://{}/cbo/v1/referrals", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn the_development_header_is_honoured_only_when_enabled() {
    let dev_get = |app: &TestApp| {
        reqwest::Client::new()
            .get(format!("http://{}/cbo/v1/referrals", app.addr))
            .header("X-Crossway-Organization", ORG)
            .send()
    };
    let closed = spawn_app().await;
    let r = dev_get(&closed).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://crossway.dev/problems/unauthenticated"
    );

    let open = spawn_app_with(&[("CROSSWAY_DEV_AUTH", "1")]).await;
    assert_eq!(dev_get(&open).await.unwrap().status(), 200);
}

#[tokio::test]
async fn malformed_bodies_get_422_with_a_pointer_per_error() {
    let app = spawn_app().await;
    let (id, _) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let cases = [
        ("accept", "{not json", vec![""]),
        ("accept", "[1]", vec![""]),
        (
            "accept",
            r#"{"assignee": 7, "expected_contact_by": "soon"}"#,
            vec!["/assignee", "/expected_contact_by"],
        ),
        ("notes", r#"{"text": ""}"#, vec!["/text"]),
        (
            "close",
            r#"{"outcome": "great", "services_provided": {}}"#,
            vec!["/outcome", "/services_provided"],
        ),
        ("decline", r#"{"reason": "other"}"#, vec!["/note"]),
    ];
    for (action, body, pointers) in cases {
        let r = cbo
            .post_raw(&format!("referrals/{id}/{action}"), body, &[])
            .await;
        assert_eq!(r.status, 422, "{action} {body}: {}", r.body);
        let got: Vec<&str> = r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(got, pointers, "{action} {body}");
    }
    let bad_query = cbo.get("referrals?status=open&limit=1000").await;
    assert_eq!(bad_query.status, 422);
    assert_eq!(bad_query.body["errors"][0]["parameter"], "status");
    assert_eq!(bad_query.body["errors"][1]["parameter"], "limit");
    assert_eq!(
        cbo.get(&format!("referrals/{id}")).await.body["status"],
        "pending"
    );
}

#[tokio::test]
async fn if_match_and_etags_guard_against_lost_updates() {
    let app = spawn_app().await;
    let (id, _) = referral(&app).await;
    let cbo = app.cbo(ORG);
    let stale = cbo
        .post_raw(
            &format!("referrals/{id}/accept"),
            "{}",
            &[("If-Match", "W/\"7\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["current_version"], 1);
    let ok = cbo
        .post_raw(
            &format!("referrals/{id}/accept"),
            "{}",
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(ok.status, 200);
    let not_modified = cbo
        .get_with(&format!("referrals/{id}"), &[("If-None-Match", "W/\"2\"")])
        .await;
    assert_eq!(not_modified.status, 304);
}

#[tokio::test]
async fn lists_page_with_cursors_and_filter() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(referral(&app).await.0);
    }
    let cbo = app.cbo(ORG);
    assert_eq!(
        cbo.post(&format!("referrals/{}/accept", ids[1]), &json!({}))
            .await
            .status,
        200
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("referrals?limit=2&cursor={c}"),
            None => "referrals?limit=2".to_string(),
        };
        let page = cbo.get(&path).await.body;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        if page["has_more"] == false {
            assert!(page["next_cursor"].is_null());
            break;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
    }
    // Ordered by last change: the accepted one moved to the end.
    let mut expected: Vec<String> = ids.iter().filter(|i| **i != ids[1]).cloned().collect();
    expected.push(ids[1].clone());
    assert_eq!(seen, expected);
    let accepted = cbo.get("referrals?status=accepted").await.body;
    assert_eq!(accepted["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        cbo.get("referrals?urgency=stat").await.body["data"],
        json!([])
    );
    assert_eq!(
        cbo.get("referrals?updated_since=2099-01-01T00:00:00Z")
            .await
            .body["data"],
        json!([])
    );
}

#[tokio::test]
async fn unanswered_referrals_expire_and_missing_consent_hides_contact_details() {
    let app = spawn_app().await;
    let mut bundle = referral_bundle();
    bundle["entry"][4]["resource"]["restriction"]["period"]["end"] = json!("2020-01-01T00:00:00Z");
    // No Consent linked from the ServiceRequest.
    bundle["entry"][3]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("supportingInfo");
    let (id, task_id) = referral_from(&app, bundle).await;
    let cbo = app.cbo(ORG);
    let view = cbo.get(&format!("referrals/{id}")).await.body;
    assert_eq!(view["flags"], json!(["consent_missing"]));
    assert_eq!(view["client"]["contact_allowed"], false);
    assert!(view["client"].get("phone").is_none() && view["client"].get("address").is_none());
    assert_eq!(view["client"]["name"]["family"], "Rivera");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = cbo.get(&format!("referrals/{id}")).await.body["status"].clone();
        if status == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not expired: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["statusReason"]["text"], "no response by deadline");
    assert!(
        cbo.event_types(0)
            .await
            .contains(&"referral.expired".to_string())
    );
    assert_eq!(
        cbo.post(&format!("referrals/{id}/accept"), &json!({}))
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_410() {
    let app = spawn_app_with(&[("CROSSWAY_EVENT_RETENTION_DAYS", "0")]).await;
    referral(&app).await;
    let cbo = app.cbo(ORG);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = cbo.get("events?cursor=0").await;
        if r.status == 410 {
            assert_eq!(r.body["oldest_sequence"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never pruned: {}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(cbo.get("events?cursor=1").await.status, 200);
}

#[tokio::test]
async fn a_cbo_publishes_its_services_and_capacity_for_ehrs_to_find() {
    let app = spawn_app().await;
    let cbo = app.cbo(ORG);
    let service = json!({
        "name": "Weekly pantry", "description": "Groceries every Thursday",
        "categories": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "food-insecurity"}],
        "languages": ["en", "es"], "phone": "+12175550100"
    });
    let created = cbo.put("services/weekly-pantry", &service).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["id"], "weekly-pantry");
    let capacity = cbo
        .put(
            "services/weekly-pantry/capacity",
            &json!({"status": "waitlist", "wait_band": "2-4 weeks"}),
        )
        .await;
    assert_eq!(capacity.status, 200, "{}", capacity.body);
    let updated = cbo.put("services/weekly-pantry", &service).await;
    assert_eq!(updated.status, 200);
    assert_eq!(
        updated.body["capacity"]["status"], "waitlist",
        "a catalogue edit keeps capacity"
    );

    let listed = cbo.get("services").await.body;
    assert_eq!(listed["data"][0]["capacity"]["wait_band"], "2-4 weeks");
    // The EHR finds it on the FHIR side with the IG's capacity extension.
    let bundle = app
        .get_json("HealthcareService?organization=Organization/cbo-riverside-food-bank")
        .await;
    let hs = &bundle["entry"][0]["resource"];
    assert_eq!(
        hs["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "waitlist"
    );
    assert_eq!(hs["name"], "Weekly pantry");
    // Another organisation neither sees nor changes it.
    let other = app.cbo("cbo-harbor-housing");
    assert_eq!(other.get("services").await.body["data"], json!([]));
    assert_eq!(other.get("services/weekly-pantry").await.status, 404);

    let bad = cbo
        .put(
            "services/weekly-pantry",
            &json!({"name": 5, "active": "yes"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let pointers: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/name", "/active"]);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_real_responses() {
    let app = spawn_app().await;
    let (id, _) = referral(&app).await;
    let cbo = app.cbo(ORG);
    assert_eq!(
        cbo.put("services/pantry", &json!({"name": "Pantry"}))
            .await
            .status,
        201
    );
    let hook = cbo
        .post("webhooks", &json!({"url": "https://cbo.example.org/hook"}))
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let hook = hook.body["id"].as_str().unwrap().to_string();
    cbo.post(&format!("webhooks/{hook}/test"), &json!({})).await;
    let delivery = cbo.get(&format!("webhooks/{hook}/deliveries")).await.body["data"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let doc = cbo.get("openapi.json").await.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    assert_eq!(documented.len(), 27, "{documented:?}");
    // Every documented operation is served (none falls through to "no such route");
    // the one DELETE goes last.
    let mut documented = documented;
    documented.sort_by_key(|(m, _)| m == "delete");
    for (method, path) in &documented {
        let target = if path.contains("services") {
            "pantry"
        } else if path.contains("connectors") {
            "pantrytrack-riverside"
        } else if path.contains("webhooks") {
            &hook
        } else {
            &id
        };
        let path = path
            .trim_start_matches("/cbo/v1/")
            .replace("{id}", target)
            .replace("{delivery_id}", &delivery);
        let reply = match method.as_str() {
            "get" => cbo.get(&path).await,
            "post" if path == "webhooks" => {
                cbo.post(&path, &json!({"url": "https://cbo.example.org/other"}))
                    .await
            }
            "post" => cbo.post(&path, &json!({})).await,
            "put" => {
                cbo.put(&path, &json!({"status": "full", "name": "Pantry"}))
                    .await
            }
            "delete" => Reply {
                status: cbo.delete_path(&path).await,
                headers: Default::default(),
                body: Value::Null,
            },
            other => panic!("unexpected method {other}"),
        };
        // A connector that takes no pushed statuses is a 404 of its own (not a route's).
        let unrouted = reply.body["detail"]
            .as_str()
            .is_none_or(|d| d.starts_with("no route"));
        assert!(
            reply.status != 405 && (reply.status != 404 || !unrouted),
            "{method} {path} answered {}: {}",
            reply.status,
            reply.body
        );
    }
    // What the server sends is what the document describes.
    let schemas = &doc["components"]["schemas"];
    let view = cbo.get(&format!("referrals/{id}")).await.body;
    for (key, schema) in [
        ("Projection", &view),
        ("Summary", &cbo.get("referrals").await.body["data"][0]),
    ] {
        let documented = schemas[key]["properties"].as_object().unwrap();
        for field in schema.as_object().unwrap().keys() {
            assert!(
                documented.contains_key(field),
                "{key}.{field} is not documented"
            );
        }
    }
    let problem = cbo
        .post(&format!("referrals/{id}/start"), &json!({}))
        .await
        .body;
    let documented = schemas["ProblemBody"]["properties"].as_object().unwrap();
    for field in problem.as_object().unwrap().keys() {
        assert!(
            documented.contains_key(field),
            "problem member {field} is not documented"
        );
    }
}

/// Two gateway processes on one PostgreSQL both answer CBO lists and reads from memory,
/// and each follows the other's writes (LISTEN/NOTIFY): a referral posted through one
/// is listed by the other, and an action through one shows in the other's list and view.
#[tokio::test]
async fn a_sibling_process_lists_and_shows_the_other_s_referrals_and_actions() {
    if store_kind() != "postgres" {
        eprintln!(
            "a_sibling_process_lists_and_shows_the_other_s_referrals_and_actions: runs in the PostgreSQL pass"
        );
        return;
    }
    let one = spawn_app().await;
    let two = spawn_sibling(&one, &[]).await;
    assert!(two.cbo(ORG).referral_ids().await.is_empty());
    let (id, _) = referral(&one).await;
    let path = format!("referrals/{id}");
    let mut listed = false;
    for _ in 0..50 {
        if two.cbo(ORG).referral_ids().await.contains(&id) {
            listed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(listed, "the other process lists the new referral");
    assert_eq!(two.cbo(ORG).get(&path).await.body["status"], "pending");

    let accepted = one
        .cbo(ORG)
        .post(&format!("{path}/accept"), &json!({}))
        .await;
    assert_eq!(accepted.status, 200);
    let mut view = two.cbo(ORG).get(&path).await;
    for _ in 0..50 {
        if view.body["status"] == "accepted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        view = two.cbo(ORG).get(&path).await;
    }
    assert_eq!(view.body["status"], "accepted", "{}", view.body);
    assert_eq!(view.headers["etag"], "W/\"2\"");
    let page = two.cbo(ORG).get("referrals?status=accepted").await.body;
    assert_eq!(page["data"][0]["id"], id.as_str(), "{page}");
}
