//! Coordination-platform mode against a stub EHR FHIR server: Crossway polls it for
//! the Tasks it owns, works them as local referrals, and writes every change back with
//! `If-Match`, surviving a 412; it authenticates with a SMART client assertion signed
//! by its own key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, stub_server};

const RIVERSIDE: &str = "cbo-riverside-food-bank";

/// The EHR's side: its Tasks (with versions), what it was asked and sent.
#[derive(Default)]
struct Ehr {
    tasks: HashMap<String, (Value, u64)>,
    others: HashMap<String, Value>,
    assertions: Vec<String>,
    searches: Vec<String>,
    /// The next write-back meets a change made in the EHR meanwhile (412).
    change_before_next_put: bool,
    conflicts: usize,
    tick: u64,
}

impl Ehr {
    fn stamp(&mut self, id: &str) {
        self.tick += 1;
        let at = format!("2026-11-23T10:{:02}:{:02}Z", self.tick / 60, self.tick % 60);
        let (task, version) = self.tasks.get_mut(id).unwrap();
        *version += 1;
        task["meta"] = json!({"versionId": version.to_string(), "lastUpdated": at});
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
                .map(|v| v.trim_start_matches("gt").to_string());
            let mut entries = Vec::new();
            for (task, _) in e.tasks.values() {
                let at = task["meta"]["lastUpdated"].as_str().unwrap();
                if task["owner"]["reference"] == owner.as_str()
                    && since.as_deref().is_none_or(|s| at > s)
                {
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
        ("GET", p) if p.starts_with("Task/") => match e.tasks.get(&p[5..]) {
            Some((task, version)) => HttpResponse::Ok()
                .content_type("application/fhir+json")
                .insert_header(("ETag", format!("W/\"{version}\"")))
                .body(task.to_string()),
            None => HttpResponse::NotFound().finish(),
        },
        ("PUT", p) if p.starts_with("Task/") => {
            let id = p[5..].to_string();
            if e.change_before_next_put {
                // Someone at the hospital adds a note just before our write arrives.
                e.change_before_next_put = false;
                e.tasks.get_mut(&id).unwrap().0["note"] =
                    json!([{"text": "Patient prefers a call after 5 pm"}]);
                e.stamp(&id);
            }
            let current = format!("W/\"{}\"", e.tasks[&id].1);
            let if_match = req.headers().get("if-match").and_then(|v| v.to_str().ok());
            if if_match != Some(current.as_str()) {
                e.conflicts += 1;
                return HttpResponse::PreconditionFailed().finish();
            }
            let new: Value = serde_json::from_slice(body).unwrap();
            e.tasks.get_mut(&id).unwrap().0 = new;
            e.stamp(&id);
            HttpResponse::Ok().finish()
        }
        _ => HttpResponse::NotFound().finish(),
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
    let local = app.get_json(view["task"].as_str().unwrap()).await;
    assert_eq!(
        local["partOf"][0]["reference"],
        format!("{}/Task/ehr-task-1", ehr.url)
    );
    assert_eq!(
        local["requester"]["reference"],
        format!("{}/PractitionerRole/ehr-pr-1", ehr.url)
    );
    let filler = app
        .get_json(local["focus"]["reference"].as_str().unwrap())
        .await;
    assert_eq!(filler["intent"], "filler-order");
    assert_eq!(
        filler["basedOn"][0]["reference"],
        format!("{}/ServiceRequest/ehr-sr-1", ehr.url)
    );

    // The client assertion is signed with the key our JWKS publishes.
    let assertion = ehr.ehr.lock().unwrap().assertions[0].clone();
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
    assert_eq!(
        task["extension"][0]["valueString"], "Case management",
        "what the EHR sent is kept"
    );

    // Closed: the EHR's Task is completed, its output pointing at our Procedure.
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
    let output = task["output"][0]["valueReference"]["reference"]
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
    let second = eventually("the second Task taken on", async || {
        let ids = cbo.referral_ids().await;
        (ids.len() == 2).then(|| ids.into_iter().find(|i| *i != id).unwrap())
    })
    .await;
    {
        let mut e = ehr.ehr.lock().unwrap();
        let task = &mut e.tasks.get_mut("ehr-task-2").unwrap().0;
        task["status"] = json!("cancelled");
        task["statusReason"] = json!({"text": "Patient moved out of state"});
        e.stamp("ehr-task-2");
    }
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
}

#[tokio::test]
async fn a_restart_takes_nothing_twice_and_pushes_what_was_left() {
    let ehr = ehr_server().await;
    let app = spawn(&ehr).await;
    let cbo = app.cbo(RIVERSIDE);
    let id = eventually("the EHR's Task taken on", async || {
        cbo.referral_ids().await.pop()
    })
    .await;
    // A restarted gateway polls from the start again: the Task is linked already.
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
}
