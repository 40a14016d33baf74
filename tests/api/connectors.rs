//! Connectors to CBO case-management systems, against stub case systems on loopback
//! shaped like the two shipped examples: a JSON:API system with OAuth2 client
//! credentials that pushes its statuses (`casebook-harbor`), and a flat REST system
//! with an API key that Crossway polls (`pantrytrack-riverside`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, copy_of_mappings, entry_id, referral_bundle, spawn_app_with, stub_server,
};
use crate::webhooks::wait_for;

const HARBOR: &str = "cbo-harbor-housing";
const RIVERSIDE: &str = "cbo-riverside-food-bank";

/// A request a stub case system was sent.
#[derive(Clone, Debug)]
struct Sent {
    method: String,
    path: String,
    /// The headers that matter here.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Sent {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(h, _)| h == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// What a stub case system was sent, and what it will answer.
#[derive(Default)]
struct Stub {
    token_requests: usize,
    requests: Vec<Sent>,
    /// Create requests still to refuse with 503 (the outbox retries them).
    refuse_creates: usize,
    /// The next case request is answered 401 once (the token was revoked).
    revoke_token: bool,
    /// PantryTrack: case id → the state a poll reads.
    states: std::collections::HashMap<String, Value>,
    next_case: usize,
}

struct CaseSystem {
    url: String,
    stub: Arc<Mutex<Stub>>,
    server: actix_web::dev::ServerHandle,
}

impl CaseSystem {
    fn requests(&self, method: &str, prefix: &str) -> Vec<Sent> {
        self.stub
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl Drop for CaseSystem {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

const CLIENT_ID: &str = "crossway-at-harbor";
const CLIENT_SECRET: &str = "s3cret-harbor";
const API_KEY: &str = "pt-key-riverside";

/// Both stub systems on one loopback port: Casebook under `/api/v2` and `/oauth`,
/// PantryTrack under `/v1`.
async fn case_system() -> CaseSystem {
    let stub: Arc<Mutex<Stub>> = Arc::default();
    let s = stub.clone();
    let (url, server) = stub_server(move |req, body| answer(&s, req, body));
    CaseSystem { url, stub, server }
}

fn answer(stub: &Mutex<Stub>, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut s = stub.lock().unwrap();
    let path = req.path().to_string();
    let method = req.method().to_string();
    if path == "/oauth/token" {
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let form = String::from_utf8_lossy(body);
        if header("authorization") != format!("Basic {expected}")
            || !form.contains("grant_type=client_credentials")
        {
            return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
        }
        s.token_requests += 1;
        return HttpResponse::Ok()
            .json(json!({"access_token": format!("tok-{}", s.token_requests),
            "token_type": "Bearer", "expires_in": 3600}));
    }
    let kept: Vec<(String, String)> = ["authorization", "x-api-key", "idempotency-key", "accept"]
        .iter()
        .map(|h| (h.to_string(), header(h)))
        .collect();
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if path.starts_with("/api/v2/") {
        let issued = header("authorization")
            .strip_prefix("Bearer tok-")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n <= s.token_requests);
        if !issued {
            return HttpResponse::Unauthorized().finish();
        }
        if s.revoke_token {
            s.revoke_token = false;
            return HttpResponse::Unauthorized().finish();
        }
    } else if header("x-api-key") != API_KEY {
        return HttpResponse::Forbidden().finish();
    }
    if method == "POST" && s.refuse_creates > 0 {
        s.refuse_creates -= 1;
        return HttpResponse::ServiceUnavailable().finish();
    }
    s.requests.push(Sent {
        method: method.clone(),
        path: path.clone(),
        headers: kept,
        body: json,
    });
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v2/cases") => {
            s.next_case += 1;
            HttpResponse::Created().json(json!({"data": {"type": "cases",
                "id": format!("CB-{}", s.next_case), "attributes": {"status": "new"}}}))
        }
        ("POST", "/v1/referrals") => {
            s.next_case += 1;
            let id = 48000 + s.next_case;
            s.states
                .insert(id.to_string(), json!({"referral_id": id, "state": "NEW"}));
            HttpResponse::Created().json(json!({"referral_id": id, "state": "NEW"}))
        }
        ("GET", p) if p.starts_with("/v1/referrals/") => {
            match s.states.get(p.trim_start_matches("/v1/referrals/")) {
                Some(state) => HttpResponse::Ok().json(state),
                None => HttpResponse::NotFound().finish(),
            }
        }
        _ => HttpResponse::Ok().json(json!({})),
    }
}

/// A referral owned by `org`; returns (CBO referral id, Task id).
async fn referral_for(app: &TestApp, org: &str) -> (String, String) {
    let mut bundle = referral_bundle();
    for entry in bundle["entry"].as_array_mut().unwrap() {
        if entry["resource"]["resourceType"] == "Task" {
            entry["resource"]["owner"]["reference"] = json!(format!("Organization/{org}"));
        }
    }
    let resp = app.post("", &bundle).await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    let task_id = entry_id(&r, 4);
    let id = app.cbo(org).referral_ids().await.last().unwrap().clone();
    (id, task_id)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[tokio::test]
async fn a_json_api_case_system_gets_cases_through_oauth_and_its_pushed_statuses_close_the_loop() {
    let cases = case_system().await;
    cases.stub.lock().unwrap().refuse_creates = 1;
    let app = spawn_app_with(&[
        ("CASEBOOK_HARBOR_URL", cases.url.as_str()),
        ("CASEBOOK_HARBOR_CLIENT_ID", CLIENT_ID),
        ("CASEBOOK_HARBOR_CLIENT_SECRET", CLIENT_SECRET),
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001"),
    ])
    .await;
    let harbor = app.cbo(HARBOR);
    let (first, first_task) = referral_for(&app, HARBOR).await;
    let (second, second_task) = referral_for(&app, HARBOR).await;
    wait_for("two cases opened", 20, || {
        cases.requests("POST", "/api/v2/cases").len() == 2
    })
    .await;

    // The create payload is the template over the projection Harbor may see.
    let created = cases.requests("POST", "/api/v2/cases");
    let by_ref = |id: &str| {
        created
            .iter()
            .find(|r| r.body["data"]["attributes"]["external_ids"]["crossway_referral"] == id)
            .unwrap_or_else(|| panic!("no case for {id}: {created:?}"))
            .clone()
    };
    let sent = by_ref(&first);
    let attributes = &sent.body["data"]["attributes"];
    assert_eq!(sent.body["data"]["type"], "cases");
    assert_eq!(attributes["client"]["last_name"], "Rivera");
    assert_eq!(attributes["program"], "housing-navigation");
    assert!(attributes["external_ids"]["crossway_client"].is_string());
    assert!(
        sent.header("idempotency-key").starts_with("evt_"),
        "{sent:?}"
    );
    assert_eq!(sent.header("accept"), "application/vnd.api+json");
    // One token for both cases and the retried create: it is cached.
    assert_eq!(cases.stub.lock().unwrap().token_requests, 1);

    // The outbox log shows the connector, its refused first attempt and the retry.
    let endpoints = harbor.get("webhooks").await.body;
    let endpoint = endpoints["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["connector"] == "casebook-harbor")
        .unwrap_or_else(|| panic!("{endpoints}"))
        .clone();
    let id = endpoint["id"].as_str().unwrap();
    // The case system has the request a moment before the outbox records the answer.
    let mut log = Vec::new();
    for _ in 0..100 {
        log = harbor.delivery_log(id).await;
        if log.iter().all(|d| d["status"] == "delivered") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:?}");
    assert!(
        log.iter().any(|d| d["attempts"].as_i64() == Some(2)),
        "{log:?}"
    );
    assert_eq!(
        harbor.delete_path(&format!("webhooks/{id}")).await,
        409,
        "a connector is managed by its file"
    );

    // Casebook pushes statuses; "enrolled" is in progress, reached by accept + start.
    let first_case = cases_id(&cases, &first);
    let push = |case: &str, attributes: Value| json!({"data": {"type": "cases", "id": case, "attributes": attributes}});
    let r = harbor
        .post(
            "connectors/casebook-harbor/status",
            &push(&first_case, json!({"status": "enrolled"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["actions"], json!(["accept", "start"]));
    assert_eq!(r.body["status"], "in_progress");
    let task = app.get_json(&format!("Task/{first_task}")).await;
    assert_eq!(task["status"], "in-progress");

    // The same report again changes nothing; an older one is old news.
    for old in ["enrolled", "intake_scheduled"] {
        let r = harbor
            .post(
                "connectors/casebook-harbor/status",
                &push(&first_case, json!({"status": old})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["actions"], json!([]), "{old}");
    }

    // Housed: closed as resolved, the case id kept, a Procedure in Task.output.
    let r = harbor
        .post(
            "connectors/casebook-harbor/status",
            &push(
                &first_case,
                json!({"status": "housed", "status_note": "Moved in on 2026-12-03."}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["actions"], json!(["close"]));
    let task = app.get_json(&format!("Task/{first_task}")).await;
    assert_eq!(task["status"], "completed");
    assert!(task["output"].to_string().contains("Procedure/"), "{task}");
    assert!(
        task["note"].to_string().contains("Moved in on 2026-12-03."),
        "{task}"
    );

    // What cannot be applied is refused, naming the field and the rule.
    let r = harbor
        .post(
            "connectors/casebook-harbor/status",
            &push(&first_case, json!({"status": "archived"})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/data/attributes/status");
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("status.map")
    );
    let r = harbor
        .post(
            "connectors/casebook-harbor/status",
            &push("CB-999", json!({"status": "enrolled"})),
        )
        .await;
    assert_eq!(r.status, 404, "an unknown case");
    let r = app
        .cbo(RIVERSIDE)
        .post(
            "connectors/casebook-harbor/status",
            &push(&first_case, json!({"status": "enrolled"})),
        )
        .await;
    assert_eq!(r.status, 404, "another organisation's connector");

    // The referrer cancels the second referral: Casebook's case is withdrawn, with a
    // renewed token after Casebook refuses the cached one.
    cases.stub.lock().unwrap().revoke_token = true;
    let mut task = app.get_json(&format!("Task/{second_task}")).await;
    task["status"] = json!("cancelled");
    assert_eq!(
        app.put(&format!("Task/{second_task}"), &task)
            .await
            .status(),
        200
    );
    let second_case = cases_id(&cases, &second);
    wait_for("the case withdrawn", 20, || {
        !cases.requests("PATCH", "/api/v2/cases/").is_empty()
    })
    .await;
    let withdrawn = cases.requests("PATCH", "/api/v2/cases/").remove(0);
    assert_eq!(withdrawn.path, format!("/api/v2/cases/{second_case}"));
    assert_eq!(withdrawn.body["data"]["id"], second_case);
    assert_eq!(withdrawn.body["data"]["attributes"]["status"], "withdrawn");
    assert_eq!(cases.stub.lock().unwrap().token_requests, 2);
}

/// The case Casebook opened for `referral` (cases are numbered in creation order).
fn cases_id(cases: &CaseSystem, referral: &str) -> String {
    let created = cases.requests("POST", "/api/v2/cases");
    let n = created
        .iter()
        .position(|r| r.body["data"]["attributes"]["external_ids"]["crossway_referral"] == referral)
        .unwrap();
    format!("CB-{}", n + 1)
}

#[tokio::test]
async fn a_flat_rest_case_system_is_polled_and_a_broken_mapping_is_fixed_by_reload() {
    let cases = case_system().await;
    let dir = copy_of_mappings();
    let file = dir.join("connectors/pantrytrack-riverside.toml");
    edit(&file, "every_seconds = 300", "every_seconds = 0.2");
    // Broken on purpose: routine referrals have no priority.
    edit(&file, "routine = \"normal\"\n", "");
    let app = spawn_app_with(&[
        ("CROSSWAY_MAPPINGS_DIR", dir.to_str().unwrap()),
        ("PANTRYTRACK_RIVERSIDE_URL", cases.url.as_str()),
        ("PANTRYTRACK_RIVERSIDE_API_KEY", API_KEY),
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.01"),
    ])
    .await;
    let riverside = app.cbo(RIVERSIDE);
    let (id, task_id) = referral_for(&app, RIVERSIDE).await;
    let endpoint = "connector:pantrytrack-riverside";

    // The delivery log names the rule, the source path and the target path.
    let mut error = String::new();
    for _ in 0..100 {
        let log = riverside.delivery_log(endpoint).await;
        if let Some(e) = log.first().and_then(|d| d["last_error"].as_str()) {
            error = e.to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        error,
        "rule pantrytrack-riverside, request create-referral: /urgency → /priority: \"routine\" has no entry in map priority"
    );
    assert!(cases.requests("POST", "/v1/referrals").is_empty());

    // Fixed and reloaded: the next retry goes through.
    edit(
        &file,
        "[maps.priority]\n",
        "[maps.priority]\nroutine = \"normal\"\n",
    );
    app.hangup();
    wait_for("the referral created in PantryTrack", 30, || {
        cases.requests("POST", "/v1/referrals").len() == 1
    })
    .await;
    let created = cases.requests("POST", "/v1/referrals").remove(0);
    assert_eq!(created.body["last_name"], "Rivera");
    assert_eq!(created.body["priority"], "normal");
    assert_eq!(created.body["source_ref"], id);
    assert_eq!(created.header("x-api-key"), API_KEY);
    let case = "48001";

    // PantryTrack's state is read by polling and reaches the referral.
    let set = |state: Value| {
        cases
            .stub
            .lock()
            .unwrap()
            .states
            .insert(case.to_string(), state);
    };
    let status = || async {
        riverside.get(&format!("referrals/{id}")).await.body["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    set(json!({"referral_id": 48001, "state": "SCHEDULED", "pickup_date": "2026-11-24"}));
    for _ in 0..100 {
        if status().await == "accepted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status().await, "accepted");
    set(json!({"referral_id": 48001, "state": "SERVED", "staff_note": "Two weeks of groceries."}));
    for _ in 0..100 {
        if status().await == "closed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status().await, "closed");
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "completed");
    assert!(
        task["note"].to_string().contains("Two weeks of groceries."),
        "{task}"
    );

    // A closed referral is not polled any more.
    let polls = cases.requests("GET", "/v1/referrals/").len();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(cases.requests("GET", "/v1/referrals/").len(), polls);
    std::fs::remove_dir_all(&dir).unwrap();
}
