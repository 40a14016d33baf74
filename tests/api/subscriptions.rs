//! FHIR Subscriptions (R4 Backport) for EHRs: a rest-hook endpoint and a mailbox stand
//! in for the subscriber; handshake, numbered event notifications through a failing
//! endpoint, heartbeats, `$status` and `$events`, email without personal data.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::HttpResponse;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{TestApp, bearer, spawn_app_with, stub_server};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
const TASK_TOPIC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task";
const OWNER: &str = "Organization/cbo-riverside-food-bank";

/// One notification the subscriber's endpoint accepted: its headers (names in lower
/// case) and its Bundle.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// What the subscriber's endpoint accepted, in order.
type Got = Arc<Mutex<Vec<Received>>>;

struct Hook {
    url: String,
    got: Got,
    /// Every request, accepted or not.
    attempts: Arc<AtomicUsize>,
    server: actix_web::dev::ServerHandle,
}

impl Hook {
    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Accepted notifications of `kind` (handshake, heartbeat, event-notification).
    fn of_kind(&self, kind_code: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| kind(&r.body) == kind_code)
            .collect()
    }
}

/// A rest-hook endpoint that answers 500 to the request numbered in `fail` (0-based).
fn hook(fail: &'static [usize]) -> Hook {
    hook_with(move |i, _| if fail.contains(&i) { 500 } else { 200 })
}

/// A rest-hook endpoint that answers what `decide` says for request `i` (0-based) and
/// its Bundle; it may also wait before answering (it runs on the endpoint's thread).
fn hook_with(decide: impl Fn(usize, &Value) -> u16 + Clone + Send + 'static) -> Hook {
    let got: Got = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (g, n) = (got.clone(), attempts.clone());
    let (base, server) = stub_server(move |req, body| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let status = decide(i, &body);
        if status >= 300 {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .finish();
        }
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        g.lock().unwrap().push(Received { headers, body });
        HttpResponse::Ok().finish()
    });
    Hook {
        url: format!("{base}/notify"),
        got,
        attempts,
        server,
    }
}

/// The status Parameters of a notification: parameter name → value.
fn status_of(bundle: &Value) -> Vec<(String, Value)> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn kind(bundle: &Value) -> String {
    status_of(bundle)
        .into_iter()
        .find(|(n, _)| n == "type")
        .map(|(_, p)| p["valueCode"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn event_numbers(bundle: &Value) -> Vec<i64> {
    status_of(bundle)
        .into_iter()
        .filter(|(n, _)| n == "notification-event")
        .map(|(_, p)| {
            p["part"][0]["valueString"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

fn subscription(endpoint: &str, channel: &str, content: &str, heartbeat: u64) -> Value {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription")]},
        "status": "requested",
        "reason": "Follow referrals to Riverside",
        "criteria": TASK_TOPIC,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}/backport-filter-criteria"),
            "valueString": format!("Task?owner={OWNER}")}]},
        "channel": {
            "extension": [{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": heartbeat}],
            "type": channel,
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": content}]},
            "header": ["Authorization: Bearer subscriber-secret"],
        },
    })
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = probe() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn app(smtp: Option<&str>) -> TestApp {
    let mut env = vec![
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001"),
    ];
    if let Some(url) = smtp {
        env.push(("CROSSWAY_SMTP_URL", url));
    }
    spawn_app_with(&env).await
}

#[tokio::test]
async fn a_rest_hook_subscriber_gets_numbered_notifications_heartbeats_and_can_fill_gaps() {
    // The second notification is refused once: the outbox sends it again.
    let hook = hook(&[1]);
    let app = app(None).await;
    let created = app
        .client
        .post(app.url("Subscription"))
        .header("content-type", "application/fhir+json")
        .body(subscription(&hook.url, "rest-hook", "full-resource", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "requested");
    // The answer repeats what the request sent; reads never show header values.
    assert_eq!(
        created["channel"]["header"][0],
        "Authorization: Bearer subscriber-secret"
    );
    assert_eq!(
        app.get_json(&format!("Subscription/{id}")).await["channel"]["header"][0],
        "Authorization: ***"
    );

    // The handshake arrives with the configured header; the subscription is active.
    let handshake = eventually("the handshake", || hook.received().first().cloned()).await;
    assert_eq!(
        handshake.header("authorization"),
        "Bearer subscriber-secret"
    );
    assert_eq!(kind(&handshake.body), "handshake");
    for _ in 0..100 {
        if app.get_json(&format!("Subscription/{id}")).await["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.get_json(&format!("Subscription/{id}")).await["status"],
        "active"
    );

    // A referral, then the CBO's acceptance: two events, the Task in full.
    app.post_referral().await;
    let cbo = app.cbo("cbo-riverside-food-bank");
    let referral = cbo.referral_ids().await.pop().unwrap();
    let r = cbo
        .post(&format!("referrals/{referral}/accept"), &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let notified = eventually("two event notifications", || {
        let events: Vec<Value> = hook
            .of_kind("event-notification")
            .into_iter()
            .map(|r| r.body)
            .collect();
        (events.len() == 2).then_some(events)
    })
    .await;
    let mut numbers: Vec<i64> = notified.iter().flat_map(event_numbers).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    let accepted = notified.iter().find(|b| event_numbers(b) == [2]).unwrap();
    assert_eq!(accepted["type"], "history");
    assert_eq!(accepted["entry"][1]["resource"]["resourceType"], "Task");
    assert_eq!(accepted["entry"][1]["resource"]["status"], "accepted");
    let since = status_of(accepted)
        .into_iter()
        .find(|(n, _)| n == "events-since-subscription-start")
        .unwrap()
        .1;
    assert_eq!(since["valueString"], "2");

    // Closed after: the accepted event still shows the Task as it was then.
    let r = cbo
        .post(
            &format!("referrals/{referral}/close"),
            &json!({"outcome": "resolved"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = app
        .get_json(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=2&eventsUntilNumber=2&content=full-resource"
        ))
        .await;
    assert_eq!(event_numbers(&second), [2]);
    assert_eq!(second["entry"][1]["resource"]["status"], "accepted");

    // Quiet for longer than the period: a heartbeat.
    eventually("a heartbeat", || {
        (!hook.of_kind("heartbeat").is_empty()).then_some(())
    })
    .await;

    // $status counts; $events gives the numbered events back, ids only when asked.
    let status = app.get_json(&format!("Subscription/{id}/$status")).await;
    let parameters = &status["entry"][0]["resource"]["parameter"];
    assert_eq!(parameters[3]["valueCode"], "query-status");
    assert_eq!(parameters[4]["valueString"], "3");
    let events = app
        .get_json(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=1&content=id-only"
        ))
        .await;
    assert_eq!(event_numbers(&events), [1, 2, 3]);
    assert!(events["entry"][1].get("resource").is_none());
    assert!(
        events["entry"][1]["fullUrl"]
            .as_str()
            .unwrap()
            .contains("/fhir/Task/")
    );

    // A client that may not read Tasks may not subscribe to them.
    let narrow = app
        .ehr_token(&app.ehr, Some("system/Subscription.cruds"))
        .await;
    let refused = bearer(&narrow)
        .post(app.url("Subscription"))
        .header("content-type", "application/fhir+json")
        .body(subscription(&hook.url, "rest-hook", "id-only", 0).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // Another client does not see it; once deleted, nothing more is sent.
    let other = app.add_ehr(&[]);
    let token = app.ehr_token(&other, None).await;
    let theirs = bearer(&token)
        .get(app.url(&format!("Subscription/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);
    let deleted = app
        .client
        .delete(app.url(&format!("Subscription/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = hook.got.lock().unwrap().len();
    app.post_referral().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.got.lock().unwrap().len(), before);
    hook.server.stop(false).await;
}

#[tokio::test]
async fn a_subscription_that_cannot_be_offered_is_refused_naming_the_element() {
    let app = app(None).await;
    for (body, element) in [
        (
            subscription("https://ehr.example/hook", "websocket", "id-only", 0),
            "Subscription.channel.type",
        ),
        (
            subscription("mailto:care@ehr.example", "email", "id-only", 0),
            "Subscription.channel.type",
        ),
        (
            {
                let mut s = subscription("https://ehr.example/hook", "rest-hook", "id-only", 0);
                s["_criteria"]["extension"][0]["valueString"] = json!("Task?colour=red");
                s
            },
            "Subscription.criteria.extension",
        ),
    ] {
        let r = app
            .client
            .post(app.url("Subscription"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let outcome: Value = r.json().await.unwrap();
        assert_eq!(outcome["issue"][0]["expression"][0], element, "{outcome}");
    }
}

/// A mailbox on loopback: every message it accepted, as received.
async fn smtp_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            kept.lock().unwrap().push(data.take().unwrap());
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (url, mails)
}

#[tokio::test]
async fn an_email_subscription_says_that_something_changed_and_nothing_personal() {
    let (smtp, mails) = smtp_sink().await;
    let app = app(Some(&smtp)).await;
    let r = app
        .client
        .post(app.url("Subscription"))
        .header("content-type", "application/fhir+json")
        .body(
            subscription("mailto:referrals@stmary.example.org", "email", "id-only", 0).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    app.post_referral().await;
    let mail = eventually("the event mail", || {
        mails
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.contains("/fhir/Task/"))
            .cloned()
    })
    .await;
    assert!(mail.contains("referrals@stmary.example.org"), "{mail}");
    assert!(
        mails
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("Subscription confirmed"))
    );
    for personal in ["Rivera", "Ana", "1984", "555-"] {
        assert!(!mail.contains(personal), "{personal} in {mail}");
    }
}

/// The value of parameter `name` in a notification's status (its `value[x]`).
fn status_param(bundle: &Value, name: &str) -> Option<Value> {
    status_of(bundle)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
}

fn since_start(bundle: &Value) -> i64 {
    status_param(bundle, "events-since-subscription-start").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether a notification is about subscription `id`.
fn about(bundle: &Value, id: &str) -> bool {
    status_param(bundle, "subscription").is_some_and(|p| {
        p["valueReference"]["reference"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!("/Subscription/{id}"))
    })
}

/// Creates a subscription: (status code, body).
async fn subscribe(app: &TestApp, body: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("Subscription"))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn put_subscription(app: &TestApp, id: &str, body: &Value) -> (u16, Value) {
    let r = app.put(&format!("Subscription/{id}"), body).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until the subscription shows `status`.
async fn until_status(app: &TestApp, id: &str, status: &str) -> Value {
    for _ in 0..200 {
        let s = app.get_json(&format!("Subscription/{id}")).await;
        if s["status"] == status {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Subscription/{id} never became {status}: {}",
        app.get_json(&format!("Subscription/{id}")).await
    );
}

fn expression_of(outcome: &Value) -> String {
    outcome["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Issue 39 item 1: a filter under an extension the server does not read used to be
/// dropped, and the subscription then matched everything. Now it is refused, and a
/// subscription whose filter matches nothing gets nothing.
#[tokio::test]
async fn a_filter_the_server_cannot_read_is_refused_not_dropped() {
    let hook = hook(&[]);
    let app = app(None).await;
    let elsewhere = |mut s: Value| {
        s["_criteria"]["extension"][0]["valueString"] =
            json!("Task?owner=Organization/cbo-somewhere-else");
        s
    };
    let base = elsewhere(subscription(&hook.url, "rest-hook", "full-resource", 0));
    let with_filter_url = |url: &str| {
        let mut s = base.clone();
        s["_criteria"]["extension"][0]["url"] = json!(url);
        s["_criteria"]["extension"][0]["valueString"] = json!(format!("Task?owner={OWNER}"));
        s
    };
    let cases = [
        (
            with_filter_url(
                "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            ),
            "Subscription.criteria.extension[0]",
        ),
        (
            with_filter_url(&format!("{BACKPORT}/backport-filter-critera")),
            "Subscription.criteria.extension[0]",
        ),
        (
            {
                let mut s = base.clone();
                s["extension"] = json!([{
                    "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Subscription.filterBy",
                    "extension": [{"url": "filterParameter", "valueString": "status"}],
                }]);
                s
            },
            "Subscription.extension[0]",
        ),
        (
            {
                let mut s = base.clone();
                s["modifierExtension"] = json!([{"url": "http://ehr.example/fhir/include-drafts", "valueBoolean": true}]);
                s
            },
            "Subscription.modifierExtension[0]",
        ),
    ];
    for (body, element) in cases {
        let (status, outcome) = subscribe(&app, &body).await;
        assert_eq!(status, 400, "{outcome}");
        assert_eq!(expression_of(&outcome), element, "{outcome}");
    }
    // An extension of the EHR's own that asks for nothing is kept as sent.
    let mut kept = base.clone();
    kept["extension"] = json!([{"url": "http://ehr.example/fhir/department", "valueString": "ED"}]);
    let (status, created) = subscribe(&app, &kept).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["extension"], kept["extension"]);
    let id = created["id"].as_str().unwrap();
    until_status(&app, id, "active").await;

    // A referral to Riverside: the only subscription filters on another owner.
    app.post_referral().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(hook.of_kind("event-notification").is_empty());
    let listed = app.get_json("Subscription").await;
    assert_eq!(
        listed["total"], 1,
        "the refused ones were not stored: {listed}"
    );
    hook.server.stop(false).await;
}

/// Item 2: `channel.payload` is read. What we can send is sent as asked; what we
/// cannot is refused naming the element.
#[tokio::test]
async fn channel_payload_is_sent_as_asked_and_what_cannot_be_sent_is_refused() {
    let hook = hook(&[]);
    let app = app(None).await;
    for refused in [
        "application/fhir+xml",
        "text/plain",
        "application/fhir+json; fhirVersion=5.0",
    ] {
        let mut s = subscription(&hook.url, "rest-hook", "id-only", 0);
        s["channel"]["payload"] = json!(refused);
        let (status, outcome) = subscribe(&app, &s).await;
        assert_eq!(status, 400, "{refused}: {outcome}");
        assert_eq!(expression_of(&outcome), "Subscription.channel.payload");
    }
    let mut s = subscription(&hook.url, "rest-hook", "id-only", 0);
    s["channel"]["payload"] = json!("application/json");
    let (status, created) = subscribe(&app, &s).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["channel"]["payload"], "application/json");
    until_status(&app, created["id"].as_str().unwrap(), "active").await;
    app.post_referral().await;
    let event = eventually("the event notification", || {
        hook.of_kind("event-notification").pop()
    })
    .await;
    for r in [&hook.of_kind("handshake")[0], &event] {
        assert_eq!(r.header("content-type"), "application/json");
    }
    hook.server.stop(false).await;
}

/// Item 3: each event says how many had happened when it was numbered. Four events
/// are numbered while the handshake is held up, then all sent at once: event N says N.
#[tokio::test]
async fn in_a_burst_event_n_says_n_events_happened() {
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let hook = hook_with(move |_, body| {
        if kind(body) == "handshake" {
            for _ in 0..600 {
                if gate.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        200
    });
    let app = app(None).await;
    let (status, created) =
        subscribe(&app, &subscription(&hook.url, "rest-hook", "id-only", 0)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    for _ in 0..4 {
        app.post_referral().await;
    }
    // Numbered while requested, kept until the handshake is answered.
    assert_eq!(
        app.get_json(&format!("Subscription/{id}")).await["status"],
        "requested"
    );
    open.store(true, Ordering::SeqCst);
    let events = eventually("four event notifications", || {
        let got = hook.of_kind("event-notification");
        (got.len() == 4).then_some(got)
    })
    .await;
    let mut seen = Vec::new();
    for e in &events {
        let numbers = event_numbers(&e.body);
        assert_eq!(numbers.len(), 1);
        assert_eq!(since_start(&e.body), numbers[0], "{}", e.body);
        seen.push(numbers[0]);
    }
    seen.sort();
    assert_eq!(seen, [1, 2, 3, 4]);
    hook.server.stop(false).await;
}

/// Item 4, first half: a handshake that fails puts the subscription in `error`, and
/// it is sent again (every 30 s, scaled down here) until it is answered.
#[tokio::test]
async fn a_failed_handshake_is_sent_again_until_it_is_answered() {
    // The first two handshakes fail.
    let hook = hook(&[0, 1]);
    let app = app(None).await;
    let (status, created) =
        subscribe(&app, &subscription(&hook.url, "rest-hook", "id-only", 0)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let failed = until_status(&app, &id, "error").await;
    assert!(
        failed["error"].as_str().unwrap().contains("handshake"),
        "{failed}"
    );
    let status = app.get_json(&format!("Subscription/{id}/$status")).await;
    assert_eq!(
        status["entry"][0]["resource"]["parameter"][2]["valueCode"],
        "error"
    );
    let active = until_status(&app, &id, "active").await;
    assert!(active.get("error").is_none(), "{active}");
    assert!(hook.attempts.load(Ordering::SeqCst) >= 3);
    let handshakes = hook.of_kind("handshake");
    assert_eq!(handshakes.len(), 1);
    assert_eq!(
        status_param(&handshakes[0].body, "status").unwrap()["valueCode"],
        "requested"
    );
    hook.server.stop(false).await;
}

/// Item 4, second half: PUT updates a subscription (status, end, headers); a header
/// sent back masked keeps its value; `requested` is the documented way back from
/// `error` (the handshake is sent at once, not at the next 30 s retry); `off` stops it.
#[tokio::test]
async fn a_subscription_is_updated_with_put_and_brought_back_from_error() {
    let answering = Arc::new(AtomicBool::new(false));
    let flag = answering.clone();
    let hook = hook_with(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        }
    });
    // Unscaled retries: a handshake retried on its own would take 30 s.
    let app = spawn_app_with(&[("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1")]).await;
    let (status, created) =
        subscribe(&app, &subscription(&hook.url, "rest-hook", "id-only", 0)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let in_error = until_status(&app, &id, "error").await;
    assert_eq!(in_error["meta"]["versionId"], "1");

    // Back: the endpoint answers now, and the client asks for the handshake again.
    answering.store(true, Ordering::SeqCst);
    let mut asked = in_error.clone();
    asked["status"] = json!("requested");
    asked.as_object_mut().unwrap().remove("error");
    let (status, updated) = put_subscription(&app, &id, &asked).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "requested");
    assert_eq!(updated["meta"]["versionId"], "2");
    let started = std::time::Instant::now();
    until_status(&app, &id, "active").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let handshake = eventually("the handshake", || hook.of_kind("handshake").pop()).await;
    // The masked header kept its stored value.
    assert_eq!(
        handshake.header("authorization"),
        "Bearer subscriber-secret"
    );

    // New header value and an end: no new handshake, it stays active.
    let mut changed = app.get_json(&format!("Subscription/{id}")).await;
    changed["channel"]["header"] = json!(["Authorization: Bearer rotated", "X-Trace: 1"]);
    changed["end"] = json!("2099-01-01T00:00:00Z");
    let (status, updated) = put_subscription(&app, &id, &changed).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "active");
    assert_eq!(updated["end"], "2099-01-01T00:00:00Z");
    app.post_referral().await;
    let event = eventually("the event", || hook.of_kind("event-notification").pop()).await;
    assert_eq!(event.header("authorization"), "Bearer rotated");
    assert_eq!(event.header("x-trace"), "1");
    assert_eq!(hook.of_kind("handshake").len(), 1);

    // A stale version is refused; an `error` cannot be asked for; another client's
    // subscription cannot be updated.
    let stale = app
        .client
        .put(app.url(&format!("Subscription/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(changed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let mut wrong = changed.clone();
    wrong["status"] = json!("error");
    let (status, outcome) = put_subscription(&app, &id, &wrong).await;
    assert_eq!(status, 400);
    assert_eq!(expression_of(&outcome), "Subscription.status");
    let other = app.add_ehr(&[]);
    let token = app.ehr_token(&other, None).await;
    let theirs = bearer(&token)
        .put(app.url(&format!("Subscription/{id}")))
        .header("content-type", "application/fhir+json")
        .body(changed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);

    // Off: nothing more is sent.
    let mut off = app.get_json(&format!("Subscription/{id}")).await;
    off["status"] = json!("off");
    let (status, _) = put_subscription(&app, &id, &off).await;
    assert_eq!(status, 200);
    let before = hook.received().len();
    app.post_referral().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.received().len(), before);
    hook.server.stop(false).await;
}

/// Item 5: `Subscription.end` is honoured: events until then, none after, and the
/// subscription is `off`. An end already past is refused.
#[tokio::test]
async fn a_subscription_ends_at_its_end() {
    let hook = hook(&[]);
    let app = app(None).await;
    let mut s = subscription(&hook.url, "rest-hook", "id-only", 0);
    s["end"] = json!("2001-01-01T00:00:00Z");
    let (status, outcome) = subscribe(&app, &s).await;
    assert_eq!(status, 400);
    assert_eq!(expression_of(&outcome), "Subscription.end");
    let end = crossway::resource::datetime::format_instant(
        crossway::resource::datetime::now_micros() + 3_000_000,
    );
    s["end"] = json!(end);
    let (status, created) = subscribe(&app, &s).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    until_status(&app, &id, "active").await;
    app.post_referral().await;
    eventually("the event before the end", || {
        hook.of_kind("event-notification").pop()
    })
    .await;
    until_status(&app, &id, "off").await;
    app.post_referral().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.of_kind("event-notification").len(), 1);
    let status = app.get_json(&format!("Subscription/{id}/$status")).await;
    assert_eq!(
        status["entry"][0]["resource"]["parameter"][2]["valueCode"],
        "off"
    );
    hook.server.stop(false).await;
}

/// Item 5: `$status` and `$events` by POST, `$status` at type level with `id` and
/// `status` (repeated or comma-separated, joined by OR), and search of the client's
/// own subscriptions.
#[tokio::test]
async fn operations_by_post_and_at_type_level_and_search() {
    let hook = hook(&[]);
    let app = app(None).await;
    let mut ids = Vec::new();
    for content in ["id-only", "empty"] {
        let (status, created) =
            subscribe(&app, &subscription(&hook.url, "rest-hook", content, 0)).await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        until_status(&app, id, "active").await;
    }
    // The second is turned off.
    let deleted = app
        .client
        .delete(app.url(&format!("Subscription/{}", ids[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    app.post_referral().await;
    eventually("the event", || hook.of_kind("event-notification").pop()).await;

    let post = |path: String, body: Option<Value>| {
        let mut r = app.client.post(app.url(&path));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let statuses = |b: &Value| -> Vec<(String, String)> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let p = &e["resource"]["parameter"];
                let reference = p[0]["valueReference"]["reference"].as_str().unwrap();
                let status = p
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "status")
                    .unwrap()["valueCode"]
                    .as_str()
                    .unwrap();
                (
                    reference.rsplit('/').next().unwrap().to_string(),
                    status.to_string(),
                )
            })
            .collect()
    };
    let one = post(format!("Subscription/{}/$status", ids[0]), None).await;
    assert_eq!(one["type"], "searchset");
    assert_eq!(statuses(&one), [(ids[0].clone(), "active".to_string())]);
    let mut all = statuses(&app.get_json("Subscription/$status").await);
    all.sort();
    let mut expected = vec![
        (ids[0].clone(), "active".to_string()),
        (ids[1].clone(), "off".to_string()),
    ];
    expected.sort();
    assert_eq!(all, expected);
    let by_ids = app
        .get_json(&format!(
            "Subscription/$status?id={},{}&status=off",
            ids[0], ids[1]
        ))
        .await;
    assert_eq!(statuses(&by_ids), [(ids[1].clone(), "off".to_string())]);
    let by_post = post(
        "Subscription/$status".into(),
        Some(json!({"resourceType": "Parameters", "parameter": [
            {"name": "id", "valueId": ids[0]}, {"name": "status", "valueCode": "active"},
            {"name": "status", "valueCode": "error"}]})),
    )
    .await;
    assert_eq!(statuses(&by_post), [(ids[0].clone(), "active".to_string())]);
    let events = post(
        format!("Subscription/{}/$events", ids[0]),
        Some(json!({"resourceType": "Parameters", "parameter": [
            {"name": "eventsSinceNumber", "valueString": "1"},
            {"name": "content", "valueCode": "full-resource"}]})),
    )
    .await;
    assert_eq!(events["type"], "history");
    assert_eq!(event_numbers(&events), [1]);
    assert_eq!(events["entry"][1]["resource"]["resourceType"], "Task");

    // Search: the client's own, by id, status, url.
    let search_ids = |b: Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let mut sorted = ids.clone();
    sorted.sort();
    let listed = app.get_json("Subscription").await;
    assert_eq!(listed["type"], "searchset");
    assert_eq!(
        listed["entry"][0]["resource"]["channel"]["header"][0],
        "Authorization: ***"
    );
    assert_eq!(search_ids(listed), sorted);
    assert_eq!(
        search_ids(app.get_json("Subscription?status=off").await),
        [ids[1].clone()]
    );
    assert_eq!(
        search_ids(app.get_json(&format!("Subscription?_id={}", ids[0])).await),
        [ids[0].clone()]
    );
    assert_eq!(
        search_ids(
            app.get_json(&format!("Subscription?url={}", hook.url))
                .await
        ),
        sorted
    );
    let unknown = app.get("Subscription?colour=red").await;
    assert_eq!(unknown.status(), 400);
    let other = app.add_ehr(&[]);
    let token = app.ehr_token(&other, None).await;
    let theirs: Value = bearer(&token)
        .get(app.url("Subscription"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["total"], 0);
    hook.server.stop(false).await;
}

/// Item 5: event entries say what the write was (POST/201 for the Task's creation,
/// PUT/200 for its update); the client's `meta.profile` is kept; with `empty` content
/// no notification names the topic.
#[tokio::test]
async fn notifications_say_what_the_write_was_and_keep_what_the_client_sent() {
    let hook = hook(&[]);
    let app = app(None).await;
    let (status, full) = subscribe(
        &app,
        &subscription(&hook.url, "rest-hook", "full-resource", 0),
    )
    .await;
    assert_eq!(status, 201);
    let profile = json!([format!("{BACKPORT}/backport-subscription")]);
    assert_eq!(full["meta"]["profile"], profile);
    let full = full["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.get_json(&format!("Subscription/{full}")).await["meta"]["profile"],
        profile
    );
    let (_, empty) = subscribe(&app, &subscription(&hook.url, "rest-hook", "empty", 0)).await;
    let empty = empty["id"].as_str().unwrap().to_string();
    until_status(&app, &full, "active").await;
    until_status(&app, &empty, "active").await;

    app.post_referral().await;
    let cbo = app.cbo("cbo-riverside-food-bank");
    let referral = cbo.referral_ids().await.pop().unwrap();
    let r = cbo
        .post(&format!("referrals/{referral}/accept"), &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let events = eventually("four event notifications", || {
        let got = hook.of_kind("event-notification");
        (got.len() == 4).then_some(got)
    })
    .await;
    let of = |id: &str, n: i64| {
        events
            .iter()
            .find(|e| about(&e.body, id) && event_numbers(&e.body) == [n])
            .unwrap()
            .body
            .clone()
    };
    let created = of(&full, 1);
    assert_eq!(created["entry"][1]["request"]["method"], "POST");
    assert_eq!(created["entry"][1]["request"]["url"], "Task");
    assert_eq!(created["entry"][1]["response"]["status"], "201");
    let accepted = of(&full, 2);
    assert_eq!(accepted["entry"][1]["request"]["method"], "PUT");
    assert!(
        accepted["entry"][1]["request"]["url"]
            .as_str()
            .unwrap()
            .starts_with("Task/")
    );
    assert_eq!(accepted["entry"][1]["response"]["status"], "200");
    assert!(status_param(&accepted, "topic").is_some());
    for b in hook
        .received()
        .iter()
        .map(|r| &r.body)
        .filter(|b| about(b, &empty))
    {
        assert!(status_param(b, "topic").is_none(), "{b}");
        assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    }
    hook.server.stop(false).await;
}

/// Replays the server-side checks of Inferno's Subscriptions Test Kit, version 0.12.1
/// (github.com/inferno-framework/subscriptions-test-kit, suite
/// `subscriptions_r5_backport_r4_server`: "Subscriptions R5 Backport IG v1.1.0 FHIR R4
/// Server Test Suite"), written here from the kit's published tests and its
/// requirements (`hl7.fhir.uv.subscriptions_1.1.0@N`), with a rest-hook receiver on
/// loopback in place of Inferno's. Numbers in comments are the kit's test short ids.
/// The kit's FHIR validator does not run here; where the kit asks it whether a status
/// Parameters is valid, the elements that profile requires are checked instead.
#[tokio::test]
async fn inferno_subscriptions_r4_server_suite_checks_pass() {
    const CS_EXTENSION: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
    let hook = hook(&[]);
    let app = app(None).await;

    // 2.01 Capability Statement conformance (@52, @114, @120).
    let cs = app.get_json("metadata").await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    let rest = cs["rest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mode"] == "server")
        .expect("a rest entry with mode server");
    let subscription_cs = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Subscription")
        .expect("Subscription in rest.resource")
        .clone();
    assert!(
        subscription_cs["supportedProfile"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{BACKPORT}/backport-subscription")))
    );

    // 1.1.01-03 and 3.x.1: one Subscription per content level, each as the kit
    // prepares it (rest-hook, endpoint, payload application/fhir+json, an
    // Authorization header with the session's token); heartbeats asked by one only.
    let mut created = Vec::new();
    for content in ["empty", "id-only", "full-resource"] {
        let mut s = subscription(&hook.url, "rest-hook", content, 1);
        s["channel"]["header"] = json!([format!("Authorization: Bearer inferno-{content}")]);
        if content != "id-only" {
            s["channel"].as_object_mut().unwrap().remove("extension");
        }
        assert!(s["criteria"].as_str().unwrap().starts_with("http"));
        let (status, answer) = subscribe(&app, &s).await;
        assert_eq!(status, 201, "{content}: {answer}");
        // 1.1.03 creation response (@7, @25, @29, @49).
        assert_eq!(answer["resourceType"], "Subscription");
        assert!(answer["channel"]["type"] == "rest-hook" && answer["status"] == "requested");
        created.push((content, answer));
    }
    let id_of = |content: &str| -> String {
        created.iter().find(|(c, _)| *c == content).unwrap().1["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (_, s) in &created {
        until_status(&app, s["id"].as_str().unwrap(), "active").await;
    }

    // 6.01-6.07 rejection (@8-@13): each unsupported value is refused (the kit also
    // accepts a 201 that changed the value; we refuse, naming the element).
    let workflow = subscription(&hook.url, "rest-hook", "id-only", 0);
    let mut refused: Vec<(&str, Value)> = Vec::new();
    let mut s = workflow.clone();
    s["_criteria"] = json!({"extension": [{
        "url": "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
        "valueString": "Encounter.patient=Patient/123"}]});
    refused.push(("6.01 cross-version extension", s));
    let mut s = workflow.clone();
    s["criteria"] = json!("http://example.org/SubscriptionTopic/encounter-start");
    refused.push(("6.02 topic", s));
    let mut s = workflow.clone();
    s["_criteria"] = json!({"extension": [{
        "url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": "Task?colour=red"}]});
    refused.push(("6.03 filter", s));
    let mut s = workflow.clone();
    s["channel"]["type"] = json!("websocket");
    refused.push(("6.04 channel type", s));
    for endpoint in ["ftp://ehr.example/notify", "https://10.0.0.7/notify"] {
        let mut s = workflow.clone();
        s["channel"]["endpoint"] = json!(endpoint);
        refused.push(("6.05 channel endpoint", s));
    }
    let mut s = workflow.clone();
    s["channel"]["payload"] = json!("application/fhir+xml");
    refused.push(("6.06 payload type", s));
    let mut s = workflow.clone();
    s["channel"]["type"] = json!("rest-hook");
    s["channel"]["payload"] = json!("text/plain");
    refused.push(("6.07 channel and payload combination", s));
    for (test, body) in refused {
        let (status, outcome) = subscribe(&app, &body).await;
        assert_ne!(status, 201, "{test}: {outcome}");
        assert_eq!(status, 400, "{test}: {outcome}");
        assert!(
            expression_of(&outcome).starts_with("Subscription."),
            "{test}: {outcome}"
        );
    }

    // The events: a referral (the Task created), then its acceptance (updated).
    app.post_referral().await;
    let cbo = app.cbo("cbo-riverside-food-bank");
    let referral = cbo.referral_ids().await.pop().unwrap();
    let r = cbo
        .post(&format!("referrals/{referral}/accept"), &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let got = eventually("two events per subscription and a heartbeat", || {
        let got = hook.received();
        let events = got
            .iter()
            .filter(|r| kind(&r.body) == "event-notification")
            .count();
        let beats = got.iter().any(|r| kind(&r.body) == "heartbeat");
        (events == 6 && beats).then_some(got)
    })
    .await;
    let of = |id: &str, kind_code: &str| -> Vec<Received> {
        got.iter()
            .filter(|r| kind(&r.body) == kind_code && about(&r.body, id))
            .cloned()
            .collect()
    };

    // 1.2.01 presence, 1.2.02 and 3.x.2.02 notification conformance (@14, @15, @26,
    // @27, @28, @69, @70, @138, @139), 4.01 handshake (@25), 4.02 heartbeat (@93, @94).
    for (content, answer) in &created {
        let id = answer["id"].as_str().unwrap();
        assert!(got.iter().any(|r| about(&r.body, id)), "1.2.01 {content}");
        let handshakes = of(id, "handshake");
        assert!(!handshakes.is_empty(), "4.01 {content}");
        for h in &handshakes {
            assert_eq!(
                notification_problems(&h.body, "handshake", id, Some("requested")),
                Vec::<String>::new(),
                "4.01 {content}"
            );
        }
        let beats = of(id, "heartbeat");
        assert_eq!(!beats.is_empty(), *content == "id-only", "4.02 {content}");
        for b in &beats {
            assert_eq!(
                notification_problems(&b.body, "heartbeat", id, None),
                Vec::<String>::new()
            );
        }
        let events = of(id, "event-notification");
        assert_eq!(events.len(), 2, "{content}");
        for e in &events {
            let mut problems =
                notification_problems(&e.body, "event-notification", id, Some("active"));
            // Headers (@26, @27): the Content-Type is the payload's MIME type, and
            // every header of the created Subscription is sent with its value.
            let mime = answer["channel"]["payload"].as_str().unwrap();
            if !e.header("content-type").starts_with(mime) {
                problems.push(format!("content-type {:?}", e.header("content-type")));
            }
            for line in answer["channel"]["header"].as_array().unwrap() {
                let (name, value) = line.as_str().unwrap().split_once(": ").unwrap();
                if e.header(&name.to_ascii_lowercase()) != value {
                    problems.push(format!("header {name} not sent as {value:?}"));
                }
            }
            problems.extend(content_problems(content, &e.body));
            assert_eq!(problems, Vec::<String>::new(), "{content}: {}", e.body);
            // @102, @103: the count includes this event; numbers are sequential.
            assert_eq!(since_start(&e.body), event_numbers(&e.body)[0]);
        }
        let mut numbers: Vec<i64> = events.iter().flat_map(|e| event_numbers(&e.body)).collect();
        numbers.sort();
        assert_eq!(numbers, [1, 2], "{content}");
    }

    // 2.02 topic discovery (@2, @48): the topics of the created subscriptions are
    // advertised.
    let topics: Vec<&Value> = subscription_cs["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"] == CS_EXTENSION)
        .map(|e| &e["valueCanonical"])
        .collect();
    for (_, answer) in &created {
        assert!(topics.contains(&&answer["criteria"]), "2.02");
    }

    // 5.01 $status (@20, @30, @47): a searchset with this subscription's status, active
    // after its handshake.
    let id = id_of("empty");
    let status = app.get_json(&format!("Subscription/{id}/$status")).await;
    assert_eq!(status["resourceType"], "Bundle");
    assert_eq!(status["type"], "searchset");
    let entry = status["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["resource"]["resourceType"] == "Parameters"
                && e["resource"]["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    == Some(id.as_str())
        })
        .expect("5.01 the subscription's status");
    assert_eq!(
        status_parameters_problems(&entry["resource"]),
        Vec::<String>::new()
    );
    assert_eq!(
        status_param(&json!({"entry": [entry]}), "status").unwrap()["valueCode"],
        "active"
    );

    // Requirements the kit lists for servers without a test of its own: $status at
    // type level (@107, @108, @110, @112), $events (@115, @118, @119), read (@124),
    // search by url and status (@129, @130).
    assert_eq!(app.get_json("Subscription/$status").await["total"], 3);
    let events = app
        .get_json(&format!(
            "Subscription/{}/$events?eventsSinceNumber=2&eventsUntilNumber=2",
            id_of("full-resource")
        ))
        .await;
    assert_eq!(events["type"], "history");
    assert_eq!(kind(&events), "query-event");
    assert_eq!(event_numbers(&events), [2]);
    assert_eq!(events["entry"][1]["resource"]["status"], "accepted");
    assert_eq!(
        app.get_json(&format!("Subscription?url={}&status=active", hook.url))
            .await["total"],
        3
    );
    hook.server.stop(false).await;
}

/// The kit's `notification_verification`: a history Bundle whose first entry is the
/// status (its request a `$status` call for this subscription), every entry with a
/// request and a response, the notification type and, when given, the status.
fn notification_problems(
    bundle: &Value,
    kind_code: &str,
    id: &str,
    status: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "history" {
        problems.push("not a history Bundle".to_string());
    }
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let Some(first) = entries.first() else {
        return vec!["the Bundle is empty".into()];
    };
    if !first["request"]["url"]
        .as_str()
        .unwrap_or("")
        .ends_with(&format!("Subscription/{id}/$status"))
    {
        problems.push("the status entry's request is not a $status call".into());
    }
    for (i, e) in entries.iter().enumerate() {
        if e.get("request").is_none() || e.get("response").is_none() {
            problems.push(format!("entry {} has no request or response", i + 1));
        }
    }
    problems.extend(status_parameters_problems(&first["resource"]));
    if status_param(bundle, "type").map(|p| p["valueCode"].clone()) != Some(json!(kind_code)) {
        problems.push(format!("type is not {kind_code}"));
    }
    if let Some(status) = status
        && status_param(bundle, "status").map(|p| p["valueCode"].clone()) != Some(json!(status))
    {
        problems.push(format!("status is not {status}"));
    }
    problems
}

/// In place of the validator: what backport-subscription-status-r4 requires of the
/// status Parameters (subscription, status and type once each; each event's number).
fn status_parameters_problems(parameters: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if parameters["resourceType"] != "Parameters" {
        return vec!["the status is not a Parameters".into()];
    }
    let list = parameters["parameter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (name, value) in [
        ("subscription", "valueReference"),
        ("status", "valueCode"),
        ("type", "valueCode"),
    ] {
        let found: Vec<&Value> = list.iter().filter(|p| p["name"] == name).collect();
        if found.len() != 1 || found[0].get(value).is_none() {
            problems.push(format!("{name} must appear once with {value}"));
        }
    }
    for p in list.iter().filter(|p| p["name"] == "notification-event") {
        let parts = p["part"].as_array().cloned().unwrap_or_default();
        if !parts.iter().any(|part| part["name"] == "event-number") {
            problems.push("a notification-event without its event-number".into());
        }
    }
    problems
}

/// The kit's content checks: 3.1.2.03 empty (@38, @39, @99), 3.2.2.03 id-only (@40,
/// @42), 3.3.2.03 full-resource (@43, @44, @45, @101).
fn content_problems(content: &str, bundle: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .cloned()
        .collect();
    let events: Vec<Value> = status_of(bundle)
        .into_iter()
        .filter(|(n, _)| n == "notification-event")
        .map(|(_, p)| p)
        .collect();
    if events.is_empty() {
        problems.push("no notification-event".into());
    }
    let part = |event: &Value, name: &str| -> Option<Value> {
        event["part"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    };
    let topic = status_param(bundle, "topic").is_some();
    match content {
        "empty" => {
            if topic {
                problems.push("topic SHOULD NOT be present with empty content".into());
            }
            if !entries.is_empty() {
                problems.push("entries beside the status".into());
            }
            for e in &events {
                if part(e, "focus").is_some() || part(e, "additional-context").is_some() {
                    problems.push("a reference to a resource".into());
                }
            }
        }
        "id-only" => {
            for e in &events {
                let focus = part(e, "focus").map(|f| f["valueReference"]["reference"].clone());
                if !focus.is_some_and(|f| f.as_str().unwrap_or("").contains("Task")) {
                    problems.push("no focus on a Task".into());
                }
            }
            for e in &entries {
                if e.get("resource").is_some() || e["fullUrl"].as_str().is_none() {
                    problems.push("an id-only entry with a resource or without fullUrl".into());
                }
            }
        }
        _ => {
            if !topic {
                problems.push("topic SHOULD be present with full-resource content".into());
            }
            if !entries
                .iter()
                .any(|e| e["resource"]["resourceType"] == "Task")
            {
                problems.push("no Task resource".into());
            }
            for e in &events {
                let Some(focus) = part(e, "focus") else {
                    problems.push("no focus".into());
                    continue;
                };
                let reference = focus["valueReference"]["reference"].as_str().unwrap_or("");
                let found = entries.iter().any(|entry| {
                    let r = &entry["resource"];
                    reference.contains(&format!(
                        "{}/{}",
                        r["resourceType"].as_str().unwrap_or("?"),
                        r["id"].as_str().unwrap_or("?")
                    ))
                });
                if !found {
                    problems.push(format!("no entry for the focus {reference}"));
                }
            }
        }
    }
    problems
}
