//! Coordination-platform mode against a simulated EHR FHIR server that behaves like the
//! real one it was tried on (Medplum): it keeps what it is sent and what it owns, answers
//! 410 for a deleted Task, enforces `If-Match` and the token's scopes (a profiled
//! resource is validated with the caller's access, so writing one needs
//! `StructureDefinition` read), and stamps commits that may land out of timestamp
//! order. Crossway polls it for the Tasks it owns, works them as local referrals, and
//! writes the owner side's changes back; it authenticates with a SMART client
//! assertion signed by its own key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse};
use crossway::resource::datetime::parse_range;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, stub_server};

const RIVERSIDE: &str = "cbo-riverside-food-bank";

/// The EHR's side: its Tasks (with versions), what it was asked and sent.
#[derive(Default)]
struct Ehr {
    tasks: HashMap<String, (Value, u64)>,
    /// Deleted Tasks: 410 Gone from then on, as a real server answers.
    deleted: HashSet<String>,
    others: HashMap<String, Value>,
    assertions: Vec<String>,
    /// The scopes asked for with the last token.
    granted: Vec<String>,
    /// Scopes the server will not grant this client (as if not in its access policy).
    withheld: Vec<String>,
    searches: Vec<String>,
    /// Write-backs of these Tasks are refused: (status, diagnostics).
    refuse_puts: HashMap<String, (u16, String)>,
    puts: Vec<String>,
    /// The next write-back meets a change made in the EHR meanwhile (412).
    change_before_next_put: bool,
    conflicts: usize,
    tick: u64,
}

impl Ehr {
    /// The server's clock: a new commit is one second later than the last.
    fn stamp(&mut self, id: &str) {
        self.tick += 1;
        let at = format!("2026-11-23T10:{:02}:{:02}Z", self.tick / 60, self.tick % 60);
        self.stamp_at(id, &at);
    }

    fn stamp_at(&mut self, id: &str, at: &str) {
        let (task, version) = self.tasks.get_mut(id).unwrap();
        *version += 1;
        task["meta"]["versionId"] = json!(version.to_string());
        task["meta"]["lastUpdated"] = json!(at);
    }

    fn newest(&self) -> String {
        self.tasks
            .values()
            .map(|(t, _)| t["meta"]["lastUpdated"].as_str().unwrap().to_string())
            .max()
            .unwrap()
    }

    fn add_task(&mut self, id: &str, sr: &str) {
        let task = json!({
            "resourceType": "Task", "id": id,
            "meta": {"profile": ["http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement"]},
            "extension": [{"url": "https://ehr.example.org/fhir/ext/department", "valueString": "Case management"}],
            "status": "requested", "intent": "order", "priority": "routine",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": format!("ServiceRequest/{sr}")},
            "for": {"reference": "Patient/ehr-pat-1"},
            "authoredOn": "2026-11-23T09:00:00-05:00",
            "requester": {"reference": "PractitionerRole/ehr-pr-1"},
            "owner": {"reference": "Organization/crossway"},
            "restriction": {"period": {"end": "2099-12-31"}},
        });
        self.tasks.insert(id.into(), (task, 0));
        self.stamp(id);
        self.others.insert(
            format!("ServiceRequest/{sr}"),
            json!({
                "resourceType": "ServiceRequest", "id": sr,
                "status": "active", "intent": "order",
                "category": [{"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "food-insecurity"}]}],
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109", "display": "Assistance with application for food pantry program"}]},
                "subject": {"reference": "Patient/ehr-pat-1"},
                "requester": {"reference": "PractitionerRole/ehr-pr-1"},
            }),
        );
    }

    /// A commit that lands after newer ones were already visible (a long transaction):
    /// its `lastUpdated` is earlier than what a poll has seen.
    fn add_task_late(&mut self, id: &str, sr: &str, seconds_before_newest: i64) {
        let newest = parse_range(&self.newest()).unwrap().lo;
        self.add_task(id, sr);
        let at = crossway::resource::datetime::format_instant(
            newest - seconds_before_newest * 1_000_000,
        );
        self.tasks.get_mut(id).unwrap().1 -= 1;
        self.stamp_at(id, &at);
    }

    /// Someone at the hospital edits the Task (as the EHR owns it).
    fn edit(&mut self, id: &str, f: impl FnOnce(&mut Value)) {
        f(&mut self.tasks.get_mut(id).unwrap().0);
        self.stamp(id);
    }

    fn delete(&mut self, id: &str) {
        self.tasks.remove(id);
        self.deleted.insert(id.into());
    }

    /// `system/<type>.<mode…>` (or `system/*`) granted and not withheld.
    fn allows(&self, resource_type: &str, mode: char) -> bool {
        self.granted.iter().any(|s| {
            !self.withheld.contains(s)
                && s.strip_prefix("system/")
                    .and_then(|s| s.split_once('.'))
                    .is_some_and(|(t, m)| (t == resource_type || t == "*") && m.contains(mode))
        })
    }
}

struct EhrServer {
    url: String,
    ehr: Arc<Mutex<Ehr>>,
    server: actix_web::dev::ServerHandle,
}

impl Drop for EhrServer {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

async fn ehr_server() -> EhrServer {
    let ehr = Arc::new(Mutex::new(Ehr::default()));
    {
        let mut e = ehr.lock().unwrap();
        e.others.insert(
            "Patient/ehr-pat-1".into(),
            json!({"resourceType": "Patient", "id": "ehr-pat-1",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    "system": "https://ehr.stmary.example.org/mrn", "value": "SM-77120"}],
                "name": [{"family": "Okafor", "given": ["Grace"]}], "birthDate": "1961-02-17"}),
        );
        e.others.insert(
            "PractitionerRole/ehr-pr-1".into(),
            json!({"resourceType": "PractitionerRole", "id": "ehr-pr-1",
                "practitioner": {"reference": "Practitioner/ehr-prac-1"},
                "organization": {"reference": "Organization/ehr-org-1"},
                "code": [{"text": "Social worker"}],
                "telecom": [{"system": "phone", "value": "555-0142"}]}),
        );
        e.others.insert(
            "Practitioner/ehr-prac-1".into(),
            json!({"resourceType": "Practitioner", "id": "ehr-prac-1",
                "name": [{"family": "Mensah", "given": ["Ama"], "prefix": ["Dr."]}]}),
        );
        e.others.insert(
            "Organization/ehr-org-1".into(),
            json!({"resourceType": "Organization", "id": "ehr-org-1", "name": "St Mary's Hospital"}),
        );
        e.add_task("ehr-task-1", "ehr-sr-1");
        // A Task whose focus lives on another host: not followed (our token stays
        // with the EHR), and it does not hold up the others.
        e.add_task("ehr-task-elsewhere", "ehr-sr-x");
        e.tasks.get_mut("ehr-task-elsewhere").unwrap().0["focus"] =
            json!({"reference": "https://elsewhere.example/fhir/ServiceRequest/x"});
    }
    let shared = ehr.clone();
    let (base, handle) = stub_server(move |req, body| answer(&shared, req, body));
    EhrServer {
        url: format!("{base}/fhir"),
        ehr,
        server: handle,
    }
}

fn outcome(status: u16, code: &str, diagnostics: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/fhir+json")
        .body(
            json!({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": code, "diagnostics": diagnostics}]})
            .to_string(),
        )
}

fn answer(ehr: &Mutex<Ehr>, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let mut e = ehr.lock().unwrap();
    let path = req.path().trim_start_matches("/fhir/").to_string();
    if path == "auth/token" {
        let form: HashMap<String, String> =
            pairs(&String::from_utf8_lossy(body)).into_iter().collect();
        let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        return match (ok, form.get("client_assertion")) {
            (true, Some(assertion)) => {
                e.assertions.push(assertion.clone());
                e.granted = form
                    .get("scope")
                    .map(|s| s.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                HttpResponse::Ok().json(
                    json!({"access_token": "ehr-token", "token_type": "bearer", "expires_in": 300}),
                )
            }
            _ => HttpResponse::BadRequest().json(json!({"error": "invalid_client"})),
        };
    }
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer ehr-token");
    if !authorized {
        return HttpResponse::Unauthorized().finish();
    }
    let fhir = |status: u16, v: &Value| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .content_type("application/fhir+json")
            .body(v.to_string())
    };
    let resource_type = path.split('/').next().unwrap_or_default().to_string();
    let mode = match req.method().as_str() {
        "GET" if !path.contains('/') => 's',
        "GET" => 'r',
        _ => 'u',
    };
    if !e.allows(&resource_type, mode) {
        return outcome(
            403,
            "forbidden",
            &format!("Forbidden: no scope for {resource_type} ({mode})"),
        );
    }
    match (req.method().as_str(), path.as_str()) {
        ("GET", "Task") => {
            e.searches.push(req.query_string().to_string());
            let query = pairs(req.query_string());
            let param = |k: &str| -> Vec<String> {
                query
                    .iter()
                    .filter(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            let owner = param("owner").pop().unwrap_or_default();
            let since = param("_lastUpdated")
                .pop()
                .map(|v| parse_range(v.trim_start_matches("gt")).unwrap().lo);
            let mut entries = Vec::new();
            for (task, _) in e.tasks.values() {
                let at = parse_range(task["meta"]["lastUpdated"].as_str().unwrap())
                    .unwrap()
                    .lo;
                if task["owner"]["reference"] == owner.as_str() && since.is_none_or(|s| at > s) {
                    entries.push(json!({"resource": task, "search": {"mode": "match"}}));
                    let focus = task["focus"]["reference"].as_str().unwrap();
                    if param("_include").iter().any(|i| i == "Task:focus")
                        && let Some(included) = e.others.get(focus)
                    {
                        entries.push(json!({"resource": included, "search": {"mode": "include"}}));
                    }
                }
            }
            fhir(
                200,
                &json!({"resourceType": "Bundle", "type": "searchset", "entry": entries}),
            )
        }
        ("GET", p) if e.others.contains_key(p) => fhir(200, &e.others[p]),
        (_, p) if p.starts_with("Task/") && e.deleted.contains(&p[5..]) => {
            outcome(410, "deleted", &format!("Deleted: {p}"))
        }
        ("GET", p) if p.starts_with("Task/") => match e.tasks.get(&p[5..]) {
            Some((task, version)) => HttpResponse::Ok()
                .content_type("application/fhir+json")
                .insert_header(("ETag", format!("W/\"{version}\"")))
                .body(task.to_string()),
            None => outcome(404, "not-found", "Not found"),
        },
        ("PUT", p) if p.starts_with("Task/") => {
            let id = p[5..].to_string();
            let new: Value = serde_json::from_slice(body).unwrap();
            // Medplum validates a profiled resource against its StructureDefinition,
            // read with the caller's access.
            if new["meta"]["profile"].is_array() && !e.allows("StructureDefinition", 'r') {
                return outcome(
                    403,
                    "forbidden",
                    "Forbidden: StructureDefinition for the profile is not readable",
                );
            }
            if let Some((status, diagnostics)) = e.refuse_puts.get(&id).cloned() {
                return outcome(status, "invalid", &diagnostics);
            }
            if e.change_before_next_put {
                // Someone at the hospital adds a note just before our write arrives.
                e.change_before_next_put = false;
                e.edit(&id, |t| {
                    t["note"] = json!([{"text": "Patient prefers a call after 5 pm"}])
                });
            }
            let current = format!("W/\"{}\"", e.tasks[&id].1);
            let if_match = req.headers().get("if-match").and_then(|v| v.to_str().ok());
            if if_match != Some(current.as_str()) {
                e.conflicts += 1;
                return outcome(412, "conflict", "Version mismatch");
            }
            e.puts.push(id.clone());
            let meta = e.tasks[&id].0["meta"].clone();
            let mut new = new;
            new["meta"] = meta;
            e.tasks.get_mut(&id).unwrap().0 = new;
            e.stamp(&id);
            fhir(200, &e.tasks[&id].0.clone())
        }
        _ => outcome(404, "not-found", "Not found"),
    }
}

/// `a=1&b=2` (a query string or a form body), decoded.
fn pairs(encoded: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{encoded}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn remote_task(ehr: &EhrServer, id: &str) -> Value {
    ehr.ehr.lock().unwrap().tasks[id].0.clone()
}

fn env(ehr: &EhrServer) -> [(&str, &str); 3] {
    [
        ("ST_MARY_FHIR_URL", ehr.url.as_str()),
        ("CROSSWAY_EHR_POLL_INTERVAL_MS", "200"),
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
    ]
}

async fn spawn(ehr: &EhrServer) -> TestApp {
    spawn_app_with(&env(ehr)).await
}

/// The referral working `remote` (a Task of the simulated EHR).
async fn referral_for(app: &TestApp, remote: &str) -> String {
    let cbo = app.cbo(RIVERSIDE);
    eventually(&format!("{remote} taken on"), async || {
        for id in cbo.referral_ids().await {
            let view = cbo.get(&format!("referrals/{id}")).await.body;
            let task = app.get_json(view["task"].as_str().unwrap()).await;
            if task["partOf"][0]["reference"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!("/Task/{remote}")))
            {
                return Some(id);
            }
        }
        None
    })
    .await
}

#[tokio::test]
async fn an_ehr_servers_tasks_become_referrals_and_every_change_is_written_back() {
    let ehr = ehr_server().await;
    let app = spawn(&ehr).await;
    let cbo = app.cbo(RIVERSIDE);

    // The EHR's Task becomes a referral for the organisation it is routed to.
    let id = eventually("the EHR's Task taken on", async || {
        cbo.referral_ids().await.pop()
    })
    .await;
    let view = cbo.get(&format!("referrals/{id}")).await.body;
    assert_eq!(view["client"]["name"]["family"], "Okafor");
    assert_eq!(view["need"]["domain"], "food-insecurity");
    // The referrer is read from the EHR and shown like a local one.
    assert_eq!(
        view["referrer"]["name"], "Ama Mensah",
        "{}",
        view["referrer"]
    );
    assert_eq!(view["referrer"]["role"], "Social worker");
    assert_eq!(view["referrer"]["organization"], "St Mary's Hospital");
    assert_eq!(view["referrer"]["phone"], "555-0142");
    let local = app.get_json(view["task"].as_str().unwrap()).await;
    assert_eq!(
        local["partOf"][0]["reference"],
        format!("{}/Task/ehr-task-1", ehr.url)
    );
    let role = app
        .get_json(local["requester"]["reference"].as_str().unwrap())
        .await;
    assert_eq!(role["resourceType"], "PractitionerRole");
    assert_eq!(
        role["identifier"][0]["value"], "PractitionerRole/ehr-pr-1",
        "the copy names what it copies"
    );
    let filler = app
        .get_json(local["focus"]["reference"].as_str().unwrap())
        .await;
    assert_eq!(filler["intent"], "filler-order");
    assert_eq!(
        filler["basedOn"][0]["reference"],
        format!("{}/ServiceRequest/ehr-sr-1", ehr.url)
    );

    // The client assertion is signed with the key our JWKS publishes, and the token
    // asks for what a validating server needs.
    let assertion = ehr.ehr.lock().unwrap().assertions[0].clone();
    assert!(
        ehr.ehr
            .lock()
            .unwrap()
            .granted
            .contains(&"system/StructureDefinition.rs".to_string())
    );
    let jwks = app.get_json_abs("/.well-known/jwks.json").await;
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .unwrap()
            .clone(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[format!("{}/auth/token", ehr.url)]);
    let claims = jsonwebtoken::decode::<Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .expect("the assertion verifies with our JWKS")
    .claims;
    assert_eq!(claims["iss"], "crossway-coordination");
    assert_eq!(claims["sub"], "crossway-coordination");

    // The EHR sets a businessStatus and adds an output of its own: they are the EHR's.
    ehr.ehr.lock().unwrap().edit("ehr-task-1", |t| {
        t["businessStatus"] = json!({"text": "Awaiting CBO"});
        t["output"] = json!([{"type": {"text": "discharge-summary"},
            "valueReference": {"reference": "DocumentReference/ehr-doc-1"}}]);
    });
    // The CBO accepts; the write-back meets a change made in the EHR (412), reads the
    // Task again and keeps the EHR's note.
    ehr.ehr.lock().unwrap().change_before_next_put = true;
    let r = cbo
        .post(
            &format!("referrals/{id}/accept"),
            &json!({"note": "We will call her today."}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let task = eventually("the acceptance written back", async || {
        let t = remote_task(&ehr, "ehr-task-1");
        (t["status"] == "accepted").then_some(t)
    })
    .await;
    assert_eq!(ehr.ehr.lock().unwrap().conflicts, 1);
    let notes = task["note"].to_string();
    assert!(
        notes.contains("Patient prefers a call after 5 pm"),
        "{notes}"
    );
    assert!(notes.contains("We will call her today."), "{notes}");
    for note in task["note"].as_array().unwrap() {
        if let Some(author) = note["authorReference"]["reference"].as_str() {
            assert!(author.starts_with("http://"), "a relative author: {author}");
        }
    }
    assert_eq!(
        task["extension"][0]["valueString"], "Case management",
        "what the EHR sent is kept"
    );
    assert_eq!(task["businessStatus"]["text"], "Awaiting CBO", "{task}");
    assert_eq!(
        task["output"][0]["valueReference"]["reference"],
        "DocumentReference/ehr-doc-1"
    );

    // Closed: the EHR's Task is completed, its output pointing at our Procedure, its
    // own output still there.
    let r = cbo
        .post(
            &format!("referrals/{id}/close"),
            &json!({"outcome": "resolved", "note": "Enrolled in the weekly pantry."}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let task = eventually("the closure written back", async || {
        let t = remote_task(&ehr, "ehr-task-1");
        (t["status"] == "completed").then_some(t)
    })
    .await;
    assert_eq!(
        task["output"][0]["valueReference"]["reference"],
        "DocumentReference/ehr-doc-1"
    );
    let output = task["output"][1]["valueReference"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        output.starts_with(&format!("http://{}/fhir/Procedure/", app.addr)),
        "{output}"
    );
    let procedure = app.get_json_url(&output).await;
    assert_eq!(procedure["resourceType"], "Procedure");

    // A later Task is found by the next polls; the EHR cancelling it cancels the referral.
    ehr.ehr.lock().unwrap().add_task("ehr-task-2", "ehr-sr-2");
    let second = referral_for(&app, "ehr-task-2").await;
    ehr.ehr.lock().unwrap().edit("ehr-task-2", |t| {
        t["status"] = json!("cancelled");
        t["statusReason"] = json!({"text": "Patient moved out of state"});
    });
    let status = eventually("the cancellation reaching the CBO", async || {
        let v = cbo.get(&format!("referrals/{second}")).await.body;
        (v["status"] == "cancelled").then_some(v)
    })
    .await;
    assert_eq!(
        status["status_reason"]["text"],
        "Patient moved out of state"
    );

    // Polls ask only for what changed, and nothing was taken on twice.
    let searches = ehr.ehr.lock().unwrap().searches.clone();
    assert!(
        searches
            .iter()
            .skip(1)
            .all(|q| q.contains("_lastUpdated=gt")),
        "{searches:?}"
    );
    assert_eq!(cbo.referral_ids().await.len(), 2);
    assert_eq!(app.operator(&["ehr", "stuck"]), "", "nothing is stuck");
}

#[tokio::test]
async fn a_restart_takes_nothing_twice_polls_from_its_watermark_and_pushes_what_was_left() {
    let ehr = ehr_server().await;
    let app = spawn(&ehr).await;
    let cbo = app.cbo(RIVERSIDE);
    let id = eventually("the EHR's Task taken on", async || {
        cbo.referral_ids().await.pop()
    })
    .await;
    // The overlap window returns the same versions poll after poll: handled once.
    eventually("a few incremental polls", async || {
        (ehr.ehr.lock().unwrap().searches.len() >= 4).then_some(())
    })
    .await;
    let view = cbo.get(&format!("referrals/{id}")).await.body;
    let local = app.get_json(view["task"].as_str().unwrap()).await;
    assert_eq!(
        local["meta"]["versionId"], "1",
        "nothing rewritten by re-polls"
    );

    // A restarted gateway asks from its persisted watermark, not from the start.
    let before = ehr.ehr.lock().unwrap().searches.len();
    let app = app.restart_with(&env(&ehr)).await;
    let cbo = app.cbo(RIVERSIDE);
    let r = cbo
        .post(&format!("referrals/{id}/accept"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "the acceptance written back after the restart",
        async || (remote_task(&ehr, "ehr-task-1")["status"] == "accepted").then_some(()),
    )
    .await;
    assert_eq!(cbo.referral_ids().await, [id]);
    let searches = ehr.ehr.lock().unwrap().searches.clone();
    assert!(searches.len() > before);
    assert!(
        searches[before..]
            .iter()
            .all(|q| q.contains("_lastUpdated=gt")),
        "{:?}",
        &searches[before..]
    );
}

#[tokio::test]
async fn a_commit_landing_before_the_watermark_is_still_taken_on() {
    let ehr = ehr_server().await;
    let app = spawn(&ehr).await;
    referral_for(&app, "ehr-task-1").await;
    ehr.ehr.lock().unwrap().add_task("ehr-task-2", "ehr-sr-2");
    referral_for(&app, "ehr-task-2").await;
    // Committed now, stamped 90 s before the newest Task a poll has already seen.
    ehr.ehr
        .lock()
        .unwrap()
        .add_task_late("ehr-task-late", "ehr-sr-late", 90);
    referral_for(&app, "ehr-task-late").await;
    assert_eq!(app.cbo(RIVERSIDE).referral_ids().await.len(), 3);
}

#[tokio::test]
async fn one_failing_write_back_backs_off_alone_and_is_listed_with_the_servers_diagnostics() {
    let ehr = ehr_server().await;
    ehr.ehr.lock().unwrap().add_task("ehr-task-2", "ehr-sr-2");
    let app = spawn(&ehr).await;
    let cbo = app.cbo(RIVERSIDE);
    let first = referral_for(&app, "ehr-task-1").await;
    let second = referral_for(&app, "ehr-task-2").await;
    ehr.ehr.lock().unwrap().refuse_puts.insert(
        "ehr-task-1".into(),
        (422, "Task.businessStatus: code not in value set".into()),
    );
    for id in [&first, &second] {
        let r = cbo
            .post(&format!("referrals/{id}/accept"), &json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The second is written back although the first keeps failing.
    eventually("the second acceptance written back", async || {
        (remote_task(&ehr, "ehr-task-2")["status"] == "accepted").then_some(())
    })
    .await;
    let stuck = eventually("the failing write-back listed", async || {
        let out = app.operator(&["ehr", "stuck"]);
        (!out.is_empty()).then_some(out)
    })
    .await;
    let fields: Vec<&str> = stuck.trim_end().split('\t').collect();
    assert_eq!(fields[0], "st-mary-fhir", "{stuck}");
    assert_eq!(fields[1], "ehr-task-1", "{stuck}");
    assert!(
        fields[6].contains("422") && fields[6].contains("code not in value set"),
        "{stuck}"
    );
    assert_eq!(stuck.lines().count(), 1, "{stuck}");
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("ehr_writebacks_stuck 1"), "{metrics}");
    assert!(
        metrics.contains("ehr_writeback_failures_total{ehr=\"st-mary-fhir\",status=\"4xx\"}"),
        "{metrics}"
    );
    // It backs off: far fewer attempts than polls.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let failures: u64 = app
        .operator(&["ehr", "stuck"])
        .split('\t')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=5).contains(&failures),
        "{failures} attempts in ~2 s at 200 ms polls"
    );
    // Once the EHR takes it, it is written back and no longer stuck.
    ehr.ehr.lock().unwrap().refuse_puts.clear();
    eventually("the first acceptance written back", async || {
        (remote_task(&ehr, "ehr-task-1")["status"] == "accepted").then_some(())
    })
    .await;
    assert_eq!(app.operator(&["ehr", "stuck"]), "");
}

#[tokio::test]
async fn a_403_write_back_is_kept_with_the_servers_diagnostics() {
    let ehr = ehr_server().await;
    // The server's access policy leaves out StructureDefinition: a profiled Task cannot
    // be validated, so its update is refused (what Medplum did with our old scopes).
    ehr.ehr
        .lock()
        .unwrap()
        .withheld
        .push("system/StructureDefinition.rs".into());
    let app = spawn(&ehr).await;
    let cbo = app.cbo(RIVERSIDE);
    let id = referral_for(&app, "ehr-task-1").await;
    let r = cbo
        .post(&format!("referrals/{id}/accept"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stuck = eventually("the refused write-back listed", async || {
        let out = app.operator(&["ehr", "stuck"]);
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert!(
        stuck.contains("ehr-task-1")
            && stuck.contains("403")
            && stuck.contains("StructureDefinition for the profile is not readable"),
        "{stuck}"
    );
    assert!(
        app.logs
            .lock()
            .unwrap()
            .contains("StructureDefinition for the profile is not readable"),
        "the warning carries the server's diagnostics"
    );
    ehr.ehr.lock().unwrap().withheld.clear();
    eventually("the acceptance written back once allowed", async || {
        (remote_task(&ehr, "ehr-task-1")["status"] == "accepted").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_task_deleted_on_the_ehr_withdraws_its_referral_on_write_back_and_on_reconciliation() {
    let ehr = ehr_server().await;
    ehr.ehr.lock().unwrap().add_task("ehr-task-2", "ehr-sr-2");
    let mut env = env(&ehr).to_vec();
    env.push(("CROSSWAY_EHR_RECONCILE_INTERVAL_MS", "1000"));
    let app = spawn_app_with(&env).await;
    let cbo = app.cbo(RIVERSIDE);
    let first = referral_for(&app, "ehr-task-1").await;
    let second = referral_for(&app, "ehr-task-2").await;
    let cursor = 0;

    // Deleted, then accepted by the CBO: the write-back meets 410.
    ehr.ehr.lock().unwrap().delete("ehr-task-1");
    let r = cbo
        .post(&format!("referrals/{first}/accept"), &json!({}))
        .await;
    assert!(
        r.status == 200 || r.status == 409,
        "{} {}",
        r.status,
        r.body
    );
    // Deleted with no action here: the reconciliation reads it by id.
    ehr.ehr.lock().unwrap().delete("ehr-task-2");
    for id in [&first, &second] {
        let v = eventually("the withdrawal reaching the CBO", async || {
            let v = cbo.get(&format!("referrals/{id}")).await.body;
            (v["status"] == "cancelled").then_some(v)
        })
        .await;
        assert!(
            v["status_reason"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("Withdrawn")),
            "{v}"
        );
    }
    let events = cbo.event_types(cursor).await;
    assert_eq!(
        events.iter().filter(|e| *e == "referral.cancelled").count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        app.operator(&["ehr", "stuck"]),
        "",
        "a gone Task is not stuck"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("ehr_tasks_gone_total{ehr=\"st-mary-fhir\"} 2"),
        "{metrics}"
    );
    assert!(
        ehr.ehr.lock().unwrap().puts.is_empty(),
        "nothing written to a deleted Task"
    );
}

/// The EHR merges two of its Patients (the survivor `replaces` the other): when a Task
/// of the survivor is taken on, the two persons are merged here too, and an identifier
/// search made right after finds both copies. The periodic identity watcher is slowed
/// to an hour, so only the engine's own post-commit invalidation can make the answer
/// current: on PostgreSQL + Redis, a stale Redis entry would name the retired person,
/// which has no Patient left.
#[tokio::test]
async fn an_ehr_merge_reaches_the_identity_index_and_its_cache_at_once() {
    let ehr = ehr_server().await;
    let mut vars = env(&ehr).to_vec();
    vars.push(("CROSSWAY_IDENTITY_WATCH_MS", "3600000"));
    let app = spawn_app_with(&vars).await;
    ehr.ehr.lock().unwrap().add_task("merge-1", "merge-sr-1");
    referral_for(&app, "merge-1").await;
    let by_mrn = |mrn: &str| {
        format!("Patient?identifier=https://ehr.stmary.example.org/mrn|{mrn}&_count=10")
    };
    let found = app.get_json(&by_mrn("SM-77120")).await;
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
    let retired = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    {
        let mut e = ehr.ehr.lock().unwrap();
        e.others.insert(
            "Patient/ehr-pat-2".into(),
            json!({"resourceType": "Patient", "id": "ehr-pat-2",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    "system": "https://ehr.stmary.example.org/mrn", "value": "SM-80411"}],
                "name": [{"family": "Okafor", "given": ["Grace", "A"]}], "birthDate": "1961-02-17",
                "link": [{"other": {"reference": "Patient/ehr-pat-1"}, "type": "replaces"}]}),
        );
        e.add_task("merge-2", "merge-sr-2");
        e.edit("merge-2", |t| {
            t["for"] = json!({"reference": "Patient/ehr-pat-2"})
        });
    }
    referral_for(&app, "merge-2").await;

    for mrn in ["SM-77120", "SM-80411"] {
        let found = app.get_json(&by_mrn(mrn)).await;
        let mut ids: Vec<&str> = found["entry"]
            .as_array()
            .unwrap_or_else(|| panic!("{mrn} finds nobody after the merge: {found}"))
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids.len(), 2, "{mrn}: both copies, one person: {found}");
        assert!(ids.contains(&retired.as_str()), "{mrn}: {found}");
    }
    let survivor = app.get_json(&by_mrn("SM-80411")).await;
    let copy = survivor["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|p| p["id"] != retired.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        copy["link"][0]["other"]["reference"],
        format!("Patient/{retired}"),
        "the EHR's link points at our copy: {copy}"
    );
}
