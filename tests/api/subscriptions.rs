//! FHIR Subscriptions (R4 Backport) for EHRs: a rest-hook endpoint and a mailbox stand
//! in for the subscriber; handshake, numbered event notifications through a failing
//! endpoint, heartbeats, `$status` and `$events`, email without personal data.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::HttpResponse;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{TestApp, bearer, spawn_app_with, stub_server};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
const TASK_TOPIC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task";
const OWNER: &str = "Organization/cbo-riverside-food-bank";

/// What the subscriber's endpoint got: (Authorization header, Bundle).
type Got = Arc<Mutex<Vec<(String, Value)>>>;

struct Hook {
    url: String,
    got: Got,
    server: actix_web::dev::ServerHandle,
}

/// A rest-hook endpoint that answers 500 to the request numbered in `fail` (0-based).
async fn hook(fail: &'static [usize]) -> Hook {
    let got: Got = Arc::default();
    let seen = Arc::new(Mutex::new(0usize));
    let (g, n) = (got.clone(), seen.clone());
    let (base, server) = stub_server(move |req, body| {
        let i = {
            let mut n = n.lock().unwrap();
            *n += 1;
            *n - 1
        };
        if fail.contains(&i) {
            return HttpResponse::InternalServerError().finish();
        }
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        g.lock()
            .unwrap()
            .push((auth, serde_json::from_slice(body).unwrap_or(Value::Null)));
        HttpResponse::Ok().finish()
    });
    Hook {
        url: format!("{base}/notify"),
        got,
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
    let hook = hook(&[1]).await;
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
    assert_eq!(created["channel"]["header"][0], "Authorization: ***");

    // The handshake arrives with the configured header; the subscription is active.
    let handshake = eventually("the handshake", || {
        hook.got.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(handshake.0, "Bearer subscriber-secret");
    assert_eq!(kind(&handshake.1), "handshake");
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
        let got = hook.got.lock().unwrap();
        let events: Vec<Value> = got
            .iter()
            .filter(|(_, b)| kind(b) == "event-notification")
            .map(|(_, b)| b.clone())
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
        hook.got
            .lock()
            .unwrap()
            .iter()
            .any(|(_, b)| kind(b) == "heartbeat")
            .then_some(())
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
