//! CBO webhooks end to end: a local receiver that fails, times out, then recovers;
//! signatures checked by the Standard Webhooks reference library (PyPI
//! `standardwebhooks`); the delivery log, test events, redelivery, rotation; failing
//! for good and disabling; two gateway processes sharing the work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::helpers::*;

const ORG: &str = "cbo-riverside-food-bank";

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    /// When it arrived.
    pub at: std::time::Instant,
    timestamp: String,
    signature: String,
    /// The sender's `User-Agent`.
    pub user_agent: String,
    pub body: String,
}

impl Received {
    /// The event's sequence number in its organisation's feed (from the thin payload).
    pub fn sequence(&self) -> i64 {
        serde_json::from_str::<Value>(&self.body).unwrap()["sequence"]
            .as_i64()
            .unwrap()
    }
}

/// How the receiver answers its n-th request (0-based); default 200.
pub type Script = Arc<dyn Fn(usize) -> Behaviour + Send + Sync>;

#[derive(Clone, Copy)]
pub enum Behaviour {
    Ok,
    /// Keeps the request, then answers 204 after a while (deliveries stay in flight).
    SlowOk(Duration),
    Status(u16),
    Hang(Duration),
}

pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub server: actix_web::dev::ServerHandle,
}

/// A webhook receiver on loopback that answers as `script` says and keeps what it got.
pub async fn receiver(script: Script) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let count = Arc::new(Mutex::new(0usize));
    let (g, c) = (got.clone(), count.clone());
    let server = HttpServer::new(move || {
        let (g, c, script) = (g.clone(), c.clone(), script.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let (g, c, script) = (g.clone(), c.clone(), script.clone());
            async move {
                let n = {
                    let mut c = c.lock().unwrap();
                    *c += 1;
                    *c - 1
                };
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                match script(n) {
                    Behaviour::Status(s) => {
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap())
                            .finish()
                    }
                    Behaviour::Hang(d) => {
                        tokio::time::sleep(d).await;
                        HttpResponse::Ok().finish()
                    }
                    behaviour @ (Behaviour::Ok | Behaviour::SlowOk(_)) => {
                        g.lock().unwrap().push(Received {
                            id: header("webhook-id"),
                            at: std::time::Instant::now(),
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                            user_agent: header("user-agent"),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        if let Behaviour::SlowOk(d) = behaviour {
                            tokio::time::sleep(d).await;
                        }
                        HttpResponse::NoContent().finish()
                    }
                }
            }
        }))
    })
    .workers(2)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
        server: handle,
    }
}

/// Verifies every received delivery with the reference library, in one Python run.
fn verify_with_reference_library(secret: &str, got: &[Received]) {
    let samples: Vec<Value> = got
        .iter()
        .map(|r| json!({"id": r.id, "timestamp": r.timestamp, "signature": r.signature, "body": r.body}))
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, samples = sys.argv[1], json.loads(sys.stdin.read())
hook = Webhook(secret)
for s in samples:
    hook.verify(s["body"], {"webhook-id": s["id"], "webhook-timestamp": s["timestamp"],
                            "webhook-signature": s["signature"]})
print(len(samples))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(samples).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        got.len().to_string()
    );
}

pub async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A gateway that delivers to plain-http loopback receivers, with retries `scale`d.
pub fn insecure_app_env(scale: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1".into()),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", scale.into()),
        ("CROSSWAY_WEBHOOK_TIMEOUT_MS", "300".into()),
    ]
}

async fn spawn_webhook_app(scale: &str) -> TestApp {
    let env = insecure_app_env(scale);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(&env).await
}

#[tokio::test]
async fn every_event_arrives_signed_through_failures_timeouts_and_recovery() {
    // 500, 500, a hang past the timeout, then healthy.
    let rx = receiver(Arc::new(|n| match n {
        0 | 1 => Behaviour::Status(500),
        2 => Behaviour::Hang(Duration::from_millis(1500)),
        _ => Behaviour::Ok,
    }))
    .await;
    let app = spawn_webhook_app("0.001").await;
    let cbo = app.cbo(ORG);

    let refused = cbo
        .post("webhooks", &json!({"url": "http://cbo.example.org/hook"}))
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    // Referral data never goes to a metadata service or the internal network.
    for inside in [
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.5/hook",
    ] {
        let refused = cbo.post("webhooks", &json!({ "url": inside })).await;
        assert_eq!(refused.status, 422, "{inside}: {}", refused.body);
        assert_eq!(refused.body["errors"][0]["pointer"], "/url");
    }
    let unknown = cbo
        .post(
            "webhooks",
            &json!({"url": rx.url, "events": ["referral.exploded"]}),
        )
        .await;
    assert_eq!(unknown.body["errors"][0]["pointer"], "/events/0");

    let created = cbo
        .post(
            "webhooks",
            &json!({"url": rx.url, "description": "case system"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let endpoint = created.body["id"].as_str().unwrap().to_string();
    let secret = created.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let listed = cbo.get("webhooks").await;
    assert!(
        listed.body["data"][0].get("secret").is_none(),
        "the secret is shown once"
    );
    // Another organisation does not see it.
    let other = app.cbo("cbo-harbor-housing");
    assert_eq!(other.get(&format!("webhooks/{endpoint}")).await.status, 404);
    assert_eq!(
        other
            .post(&format!("webhooks/{endpoint}/test"), &json!({}))
            .await
            .status,
        404
    );

    for _ in 0..4 {
        app.post_referral().await;
    }
    let first = cbo.referral_ids().await[0].clone();
    assert_eq!(
        cbo.post(&format!("referrals/{first}/accept"), &json!({}))
            .await
            .status,
        200
    );
    let feed = cbo.get("events?cursor=0").await.body["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(feed.len(), 5);
    let expected: Vec<String> = feed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();

    let got = rx.got.clone();
    wait_for("every event at the receiver", 20, || {
        let got = got.lock().unwrap();
        expected.iter().all(|id| got.iter().any(|r| &r.id == id))
    })
    .await;
    let received = rx.got.lock().unwrap().clone();
    for r in &received {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let event = feed.iter().find(|e| e["id"] == body["id"]).unwrap();
        assert_eq!(&body, event, "the webhook body is the feed's item");
        assert_eq!(r.id, body["id"].as_str().unwrap());
        // Receivers can tell the gateway's requests apart in their logs.
        assert!(r.user_agent.starts_with("Crossway/"), "{}", r.user_agent);
    }
    verify_with_reference_library(&secret, &received);

    // The log shows the retries of the first delivery and what went wrong.
    let log = cbo.delivery_log(&endpoint).await;
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:?}");
    let retried: i64 = log.iter().map(|d| d["attempts"].as_i64().unwrap()).sum();
    assert!(retried >= 8, "three failed attempts were retried: {log:?}");

    // A test event, a redelivery (same webhook-id), then a rotation (two signatures).
    let test = cbo
        .post(&format!("webhooks/{endpoint}/test"), &json!({}))
        .await;
    assert_eq!(test.status, 202);
    let test_id = test.body["event_id"].as_str().unwrap().to_string();
    let seq = log[0]["id"].as_i64().unwrap();
    let again = cbo
        .post(
            &format!("webhooks/{endpoint}/deliveries/{seq}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(again.status, 202);
    let redelivered_id = feed.iter().find(|e| e["sequence"] == seq).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = received.iter().filter(|r| r.id == redelivered_id).count();
    wait_for("the test event and the redelivery", 10, || {
        let got = got.lock().unwrap();
        got.iter().any(|r| r.id == test_id)
            && got.iter().filter(|r| r.id == redelivered_id).count() > before
    })
    .await;

    let rotated = cbo
        .post(&format!("webhooks/{endpoint}/rotate-secret"), &json!({}))
        .await;
    let new_secret = rotated.body["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let after = rx.got.lock().unwrap().len();
    cbo.post(&format!("webhooks/{endpoint}/test"), &json!({}))
        .await;
    wait_for("a delivery after the rotation", 10, || {
        got.lock().unwrap().len() > after
    })
    .await;
    let last = rx.got.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.signature.split(' ').count(), 2, "{}", last.signature);
    verify_with_reference_library(&new_secret, std::slice::from_ref(&last));
    verify_with_reference_library(&secret, &[last]);

    assert_eq!(cbo.delete_path(&format!("webhooks/{endpoint}")).await, 204);
    assert_eq!(cbo.get(&format!("webhooks/{endpoint}")).await.status, 404);
    rx.server.stop(false).await;
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_failed_and_its_endpoint_disabled() {
    let rx = receiver(Arc::new(|_| Behaviour::Status(503))).await;
    // A 72-hour retry window shrunk to about 5 seconds.
    let app = spawn_webhook_app("0.00002").await;
    let cbo = app.cbo(ORG);
    let created = cbo.post("webhooks", &json!({"url": rx.url})).await;
    let endpoint = created.body["id"].as_str().unwrap().to_string();
    let watcher = receiver(Arc::new(|_| Behaviour::Ok)).await;
    let watching = cbo
        .post(
            "webhooks",
            &json!({"url": watcher.url, "events": ["webhook.endpoint_disabled"]}),
        )
        .await;
    assert_eq!(watching.status, 201, "{}", watching.body);
    app.post_referral().await;
    let mut log = Vec::new();
    for _ in 0..300 {
        log = cbo.delivery_log(&endpoint).await;
        if log.first().is_some_and(|d| d["status"] == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = &log[0];
    assert_eq!(d["status"], "failed", "{log:?}");
    assert!(d["attempts"].as_i64().unwrap() >= 5, "{d}");
    assert_eq!(d["last_status"], 503);
    assert!(d["last_error"].as_str().unwrap().contains("503"));
    // Kept, not deleted; and the endpoint, failing for the whole window, is disabled.
    let mut status = String::new();
    for _ in 0..100 {
        app.post_referral().await;
        status = cbo.get(&format!("webhooks/{endpoint}")).await.body["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "disabled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "disabled");
    // The organisation is told: in its feed, and at its other endpoints.
    let feed = cbo.get("events?limit=200").await.body;
    let told = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "webhook.endpoint_disabled")
        .unwrap_or_else(|| panic!("{feed}"))
        .clone();
    assert_eq!(
        told["data"],
        json!({"endpoint_id": endpoint, "status": "disabled"})
    );
    wait_for("the other endpoint told", 20, || {
        watcher
            .got
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.body.contains(told["id"].as_str().unwrap()))
    })
    .await;
    rx.server.stop(false).await;
    watcher.server.stop(false).await;
}

/// Two gateway processes on one PostgreSQL (and Redis) deliver 5,000 events between
/// them: every one arrives, none twice (the receiver always answers 2xx, so every
/// event has exactly one attempt).
#[tokio::test]
async fn two_processes_deliver_5000_events_once_each() {
    if store_kind() != "postgres" {
        eprintln!("two_processes_deliver_5000_events_once_each: runs in the PostgreSQL pass");
        return;
    }
    let rx = receiver(Arc::new(|_| Behaviour::Ok)).await;
    let env = insecure_app_env("0.001");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let one = spawn_app_with(&env).await;
    let two = spawn_sibling(&one, &env).await;
    let created = one.cbo(ORG).post("webhooks", &json!({"url": rx.url})).await;
    assert_eq!(created.status, 201);

    // 500 transactions of ten referral Tasks each, spread over both processes.
    let mut bundle = referral_bundle();
    let task = bundle["entry"][4].clone();
    let entries = bundle["entry"].as_array_mut().unwrap();
    for i in 1..10 {
        let mut t = task.clone();
        t["fullUrl"] = json!(format!("urn:uuid:0000000{i}-0000-4000-8000-000000000000"));
        entries.push(t);
    }
    // One patient per transaction; a 503 (a batch that lost a lock race to the other
    // process) is retried, as clients are told to.
    let posts = futures::stream::iter(0..500).map(|i| {
        let app = if i % 2 == 0 { &one } else { &two };
        let mut bundle = bundle.clone();
        bundle["entry"][0]["resource"]["identifier"] =
            json!([{"system": "http://hospital.example.org/mrn", "value": format!("WH-{i}")}]);
        // Conditional Task creates: a transaction resent after a dropped connection
        // (which may have committed) makes no second set of referrals.
        for (k, entry) in bundle["entry"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            if entry["resource"]["resourceType"] == "Task" {
                let id = format!("WH-{i}-{k}");
                entry["resource"]["identifier"] =
                    json!([{"system": "urn:crossway-test:task", "value": id}]);
                entry["request"]["ifNoneExist"] =
                    json!(format!("identifier=urn:crossway-test:task|{id}"));
            }
        }
        async move {
            for _ in 0..5 {
                let sent = app
                    .client
                    .post(app.url(""))
                    .header("content-type", FHIR_JSON)
                    .body(bundle.to_string())
                    .send()
                    .await;
                // A connection the overloaded gateway dropped is retried like a 408: the
                // debug-built gateways and the receiver share two cores. Nothing is lost
                // either way: the deliveries are counted at the receiver.
                let Ok(r) = sent else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                match r.status().as_u16() {
                    200 => return,
                    503 | 408 => tokio::time::sleep(Duration::from_millis(200)).await,
                    s => panic!("{s} {}", r.text().await.unwrap()),
                }
            }
            panic!("still failing after five tries");
        }
    });
    use futures::StreamExt;
    posts.buffer_unordered(8).collect::<Vec<_>>().await;

    let got = rx.got.clone();
    wait_for("5,000 deliveries", 120, || {
        got.lock().unwrap().len() >= 5000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = rx.got.lock().unwrap().clone();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *seen.entry(r.id.clone()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(seen.len(), 5000);
    // Per referral, receivers order by sequence: every referral.created is there.
    let sequences: std::collections::HashSet<i64> =
        received.iter().map(Received::sequence).collect();
    assert_eq!(sequences.len(), 5000);
    assert_eq!(*sequences.iter().max().unwrap(), 5000);
    rx.server.stop(false).await;
}
