//! The attack suite: what an attacker tried against a running gateway (issue 32), each
//! class with several variants, through real HTTP and MLLP on loopback. A class that
//! regresses fails here, not in a pen test.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const ORG: &str = "cbo-riverside-food-bank";

// ---------------------------------------------------------------------------------------
// 1. SSRF: tenant URLs that reach loopback, the internal network or a metadata service.
// ---------------------------------------------------------------------------------------

/// Every spelling of `ip` this generator can think of that the URL parser the gateway's
/// HTTP client uses (`url`, WHATWG rules) reads as `ip` itself or as an IPv6 address
/// carrying it. Candidates the parser reads otherwise are dropped, so the list is what
/// the parser accepts, not a list of guesses.
fn spellings(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    let parts4 = [u32::from(a), u32::from(b), u32::from(c), u32::from(d)];
    let radix = |v: u32, r: usize| match r {
        0 => v.to_string(),
        1 => format!("0x{v:x}"),
        2 => format!("0X{v:X}"),
        3 => format!("0{v:o}"),
        _ => format!("0x{v:08x}"),
    };
    let mut hosts = Vec::new();
    // One, two, three and four parts, each part in decimal, hex, HEX, octal or padded hex.
    let shapes: [Vec<u32>; 4] = [
        vec![n],
        vec![parts4[0], n & 0x00ff_ffff],
        vec![parts4[0], parts4[1], n & 0xffff],
        parts4.to_vec(),
    ];
    for parts in &shapes {
        let mut combos = vec![String::new()];
        for (i, &p) in parts.iter().enumerate() {
            let mut next = Vec::new();
            for prefix in &combos {
                for r in 0..5 {
                    let sep = if i == 0 { "" } else { "." };
                    next.push(format!("{prefix}{sep}{}", radix(p, r)));
                }
            }
            combos = next;
        }
        hosts.extend(combos);
    }
    // A trailing dot, percent-encoded dots, full-width digits and dots (IDNA maps them).
    let dotted = ip.to_string();
    hosts.extend(hosts.clone().iter().map(|h| format!("{h}.")));
    hosts.push(dotted.replace('.', "%2E"));
    hosts.push(
        dotted
            .chars()
            .map(|ch| match ch {
                '.' => '\u{FF0E}',
                d => char::from_u32(0xFF10 + d.to_digit(10).unwrap()).unwrap(),
            })
            .collect(),
    );
    // IPv6 forms that carry the IPv4 address.
    let (hi, lo) = (n >> 16, n & 0xffff);
    for v6 in [
        format!("::ffff:{dotted}"),
        format!("::ffff:{hi:x}:{lo:x}"),
        format!("0:0:0:0:0:ffff:{dotted}"),
        format!("::{dotted}"),
        format!("::{hi:x}:{lo:x}"),
        format!("64:ff9b::{dotted}"),
        format!("64:ff9b::{hi:x}:{lo:x}"),
        format!("2002:{hi:x}:{lo:x}::"),
        format!("2002:{hi:x}:{lo:x}::1"),
    ] {
        hosts.push(format!("[{v6}]"));
    }
    hosts.sort();
    hosts.dedup();
    hosts
        .into_iter()
        .filter(|h| {
            let Ok(url) = url::Url::parse(&format!("https://{h}/hook")) else {
                return false;
            };
            match url.host() {
                Some(url::Host::Ipv4(v4)) => v4 == ip,
                Some(url::Host::Ipv6(v6)) => carries(v6) == Some(ip),
                _ => false,
            }
        })
        .collect()
}

/// The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4).
fn carries(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo]
        | [0, 0, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Addresses a tenant must never reach, and names that always mean loopback.
const INSIDE: [Ipv4Addr; 6] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(0, 0, 0, 0),
    Ipv4Addr::new(192, 168, 1, 1),
    Ipv4Addr::new(100, 64, 0, 1),
];

#[test]
fn the_spelling_generator_finds_what_the_parser_accepts() {
    let forms = spellings(Ipv4Addr::LOCALHOST);
    // Decimal, hex, octal and mixed forms in one to four parts, trailing dots,
    // percent-encoding, full-width characters and the IPv6 wrappings.
    assert!(forms.len() > 200, "{}", forms.len());
    for expected in [
        "2130706433",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "127.0.0.1.",
        "[::ffff:7f00:1]",
    ] {
        assert!(forms.iter().any(|f| f == expected), "{expected} missing");
    }
    assert!(spellings(Ipv4Addr::UNSPECIFIED).contains(&"0".to_string()));
}

#[tokio::test]
async fn every_spelling_of_an_inside_address_is_refused_at_registration() {
    let app = spawn_app().await;
    let cbo = app.cbo(ORG);
    let mut tried = 0;
    let mut hosts: Vec<String> = INSIDE.iter().flat_map(|ip| spellings(*ip)).collect();
    hosts.extend(
        [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "api.localhost",
            "[::1]",
            "[::]",
            "[fd00::1]",
            "[fe80::1]",
            "198.18.0.1",
            "240.0.0.1",
            "[64:ff9b:1::1]",
        ]
        .map(String::from),
    );
    for host in &hosts {
        for url in [
            format!("https://{host}/hook"),
            format!("https://{host}:8443/hook"),
        ] {
            let r = cbo.post("webhooks", &json!({ "url": url })).await;
            assert_eq!(r.status, 422, "webhook {url}: {}", r.body);
            assert_eq!(r.body["errors"][0]["pointer"], "/url", "{url}");
            tried += 1;
        }
    }
    // The same rule for an EHR's Subscription channel (a sample: each is a FHIR create).
    for host in hosts.iter().step_by(7) {
        let url = format!("https://{host}/hook");
        let r = app
            .client
            .post(app.url("Subscription"))
            .header("content-type", FHIR_JSON)
            .body(subscription(&url).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "subscription {url}");
        let outcome: Value = r.json().await.unwrap();
        assert_eq!(
            outcome["issue"][0]["expression"][0], "Subscription.channel.endpoint",
            "{outcome}"
        );
    }
    assert!(tried > 1000, "{tried}");
    // A public name is still taken (checked again as it resolves).
    let r = cbo
        .post("webhooks", &json!({"url": "https://cbo.example.org/hook"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

fn subscription(endpoint: &str) -> Value {
    const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "attack",
        "criteria": "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task",
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "id-only"}]},
        },
    })
}

/// A TCP listener that counts connections and answers each with `answer` (raw bytes).
async fn listener(answer: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
                let _ = stream.write_all(answer).await;
            });
        }
    });
    (port, count)
}

async fn wait_for_attempt(cbo: &CboClient<'_>, endpoint: &str) -> Value {
    for _ in 0..100 {
        let log = cbo.delivery_log(endpoint).await;
        if let Some(d) = log.iter().find(|d| d["attempts"].as_i64() > Some(0)) {
            return d.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery attempt recorded for {endpoint}");
}

/// Endpoints stored while loopback was allowed (a row that predates a stricter rule, or
/// a name that resolved elsewhere then): with the rule in force, the gateway never
/// opens a connection to them, for literals and names alike, and follows no redirect.
#[tokio::test]
async fn stored_inside_endpoints_are_never_dialled_and_redirects_are_not_followed() {
    let (port, connections) = listener(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let (hop, hop_connections) = listener(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let redirect: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{hop}/next\r\ncontent-length: 0\r\n\r\n"
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let (redirector, _) = listener(redirect).await;
    let insecure = [
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001"),
    ];
    let app = spawn_app_with(&insecure).await;
    let cbo = app.cbo(ORG);
    let mut stored = Vec::new();
    for url in [
        format!("http://127.0.0.1:{port}/a"),
        format!("http://localhost:{port}/b"),
        format!("http://[::ffff:127.0.0.1]:{port}/c"),
    ] {
        let r = cbo.post("webhooks", &json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{url}: {}", r.body);
        stored.push(r.body["id"].as_str().unwrap().to_string());
    }
    // While loopback is allowed, a redirect is still not followed.
    let r = cbo
        .post(
            "webhooks",
            &json!({"url": format!("http://127.0.0.1:{redirector}/r")}),
        )
        .await;
    let via_redirect = r.body["id"].as_str().unwrap().to_string();
    cbo.post(&format!("webhooks/{via_redirect}/test"), &json!({}))
        .await;
    let attempt = wait_for_attempt(&cbo, &via_redirect).await;
    assert_eq!(attempt["last_status"], 307, "{attempt}");
    assert_eq!(
        hop_connections.load(Ordering::SeqCst),
        0,
        "redirect followed"
    );

    // The same rows under the strict rule.
    let app = app
        .restart_with(&[("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001")])
        .await;
    let cbo = app.cbo(ORG);
    for endpoint in &stored {
        let r = cbo
            .post(&format!("webhooks/{endpoint}/test"), &json!({}))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for endpoint in &stored {
        let attempt = wait_for_attempt(&cbo, endpoint).await;
        let error = attempt["last_error"].as_str().unwrap_or("");
        assert!(error.contains("non-public"), "{endpoint}: {attempt}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "an inside address was dialled"
    );
}

/// What a tenant learns from its delivery log about the thing that answered: nothing
/// beyond "could not reach it" (no refused/TLS/certificate detail to map a network).
#[tokio::test]
async fn the_delivery_log_gives_tenants_a_coarse_error_only() {
    let (garbage, _) = listener(b"\x15\x03\x03\x00\x02\x02\x28not tls, not http").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = spawn_app_with(&[
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001"),
    ])
    .await;
    let cbo = app.cbo(ORG);
    let mut errors = Vec::new();
    for url in [
        format!("https://127.0.0.1:{garbage}/tls"),
        format!("http://127.0.0.1:{closed}/refused"),
    ] {
        let r = cbo.post("webhooks", &json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{url}: {}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        cbo.post(&format!("webhooks/{id}/test"), &json!({})).await;
        let attempt = wait_for_attempt(&cbo, &id).await;
        errors.push(attempt["last_error"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(errors[0], errors[1], "the two failures must read alike");
    for e in &errors {
        let lower = e.to_lowercase();
        for leak in ["refused", "certificate", "alert", "127.0.0.1", "os error"] {
            assert!(!lower.contains(leak), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Scope bypass through Bundles: an entry passes exactly its stand-alone checks.
// ---------------------------------------------------------------------------------------

async fn token_with_scope(app: &TestApp, scope: &str) -> reqwest::Client {
    let client = app.add_ehr(&["--scope", scope]);
    bearer(&app.ehr_token(&client, None).await)
}

/// (status, body) of `method url` on its own, the query in the URL and, for POST
/// `_search`, in a form body.
async fn alone(app: &TestApp, client: &reqwest::Client, method: &str, url: &str) -> (u16, Value) {
    let full = app.url(url);
    let r = match method {
        "POST" => {
            let (path, query) = full.split_once('?').unwrap_or((&full, ""));
            client
                .post(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(query.to_string())
                .send()
                .await
                .unwrap()
        }
        _ => client.get(full).send().await.unwrap(),
    };
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn in_bundle(
    app: &TestApp,
    client: &reqwest::Client,
    kind: &str,
    method: &str,
    url: &str,
) -> (u16, Value) {
    let bundle = json!({"resourceType": "Bundle", "type": kind,
        "entry": [{"request": {"method": method, "url": url}}]});
    let r = client
        .post(app.url(""))
        .header("content-type", FHIR_JSON)
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_bundle_entry_passes_exactly_the_checks_of_its_stand_alone_request() {
    let app = spawn_app().await;
    let referral = app.post_referral().await;
    let patient = entry_id(&referral, 0);
    let task = entry_id(&referral, 4);
    let task_only = token_with_scope(&app, "system/Task.rs").await;
    let refused = [
        ("GET", "Task?_include=Task:patient".to_string()),
        ("GET", "Task?_include:iterate=Task:patient".into()),
        ("GET", "Task?_include=Task:focus".into()),
        ("GET", "Task?_include=Task:focus:ServiceRequest".into()),
        ("GET", "Task?_include=Task:requester".into()),
        ("POST", "Task/_search?_include=Task:patient".into()),
        ("GET", format!("Patient/{patient}")),
        ("GET", "ServiceRequest?status=active".into()),
        ("GET", "AuditEvent?agent=anonymous".into()),
    ];
    for (method, url) in &refused {
        let (status, body) = alone(&app, &task_only, method, url).await;
        assert_eq!(status, 403, "alone {method} {url}: {body}");
        for kind in ["batch", "transaction"] {
            let (status, body) = in_bundle(&app, &task_only, kind, method, url).await;
            assert_eq!(status, 403, "{kind} {method} {url}: {body}");
            assert!(
                !body.to_string().contains("\"Patient\""),
                "{kind} {method} {url} leaked a Patient"
            );
        }
    }
    // What the token does allow works both ways.
    for (method, url) in [
        ("GET", format!("Task/{task}")),
        ("GET", "Task?status=requested".into()),
    ] {
        assert_eq!(alone(&app, &task_only, method, &url).await.0, 200, "{url}");
        let (status, body) = in_bundle(&app, &task_only, "batch", method, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert!(
            body["entry"][0]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("200")
        );
    }
    // Least privilege: read on the included type is enough, no wildcard needed.
    let with_patient = token_with_scope(&app, "system/Task.rs system/Patient.r").await;
    let url = "Task?_include=Task:patient";
    let (status, body) = alone(&app, &with_patient, "GET", url).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("\"Patient\""), "{body}");
    let (status, body) = in_bundle(&app, &with_patient, "batch", "GET", url).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("\"Patient\""), "{body}");
    // Focus points anywhere: without a target type it needs read on every type.
    let (status, _) = alone(&app, &with_patient, "GET", "Task?_include=Task:focus").await;
    assert_eq!(status, 403);
}

// ---------------------------------------------------------------------------------------
// 3. Write rules for every resource of a referral and of the directory.
// ---------------------------------------------------------------------------------------

async fn bound(app: &TestApp, org: &str) -> reqwest::Client {
    let client = app.add_ehr(&["--org", &format!("Organization/{org}")]);
    bearer(&app.ehr_token(&client, None).await)
}

async fn put(app: &TestApp, client: &reqwest::Client, path: &str, body: &Value) -> (u16, Value) {
    let r = client
        .put(app.url(path))
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post_fhir(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    post_text(app, client, path, &body.to_string()).await
}

/// POSTs a FHIR JSON body as text (so it may hold what `Value` cannot: a duplicate name).
async fn post_text(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let r = client
        .post(app.url(path))
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A transaction of one PUT or POST.
fn one_entry(method: &str, url: &str, resource: &Value) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": resource,
         "request": {"method": method, "url": url}}]})
}

#[tokio::test]
async fn organisation_bound_clients_write_only_their_own_side() {
    let app = spawn_app().await;
    let hospital = bound(&app, "hospital-st-mary").await;
    let stranger = bound(&app, "cbo-metro-rides").await;
    let owner = bound(&app, ORG).await;

    // The hospital's own client makes the referral.
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/referral-transaction.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (status, referral) = post_fhir(&app, &hospital, "", &fixture).await;
    assert_eq!(status, 200, "{referral}");
    let ids: Vec<(String, String)> = (0..5)
        .map(|i| {
            let loc = referral["entry"][i]["response"]["location"]
                .as_str()
                .unwrap();
            let mut parts = loc.split('/');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            )
        })
        .collect();

    // Another organisation's client changes none of it, alone or in a Bundle.
    for (ty, id) in &ids {
        let path = format!("{ty}/{id}");
        let mut changed = app.get_json(&path).await;
        changed["language"] = json!("es");
        let (status, body) = put(&app, &stranger, &path, &changed).await;
        assert_eq!(status, 403, "{path}: {body}");
        let (status, body) =
            post_fhir(&app, &stranger, "", &one_entry("PUT", &path, &changed)).await;
        assert_eq!(status, 403, "{path} in a Bundle: {body}");
        assert_eq!(
            app.get_json(&path).await["meta"]["versionId"],
            "1",
            "{path}"
        );
    }
    // The owner may not rewrite the requester's side either (only its Task fields).
    let (sr_path, task_path) = (
        format!("ServiceRequest/{}", ids[3].1),
        format!("Task/{}", ids[4].1),
    );
    let mut sr = app.get_json(&sr_path).await;
    sr["priority"] = json!("stat");
    assert_eq!(put(&app, &owner, &sr_path, &sr).await.0, 403);
    // The maker may.
    let (status, body) = put(&app, &hospital, &sr_path, &sr).await;
    assert_eq!(status, 200, "{body}");
    let mut task = app.get_json(&task_path).await;
    task["status"] = json!("accepted");
    let (status, body) = put(&app, &owner, &task_path, &task).await;
    assert_eq!(status, 200, "the owner accepts: {body}");

    // Nobody makes a Task on another organisation's behalf, by reference or identifier.
    let mut forged = app.get_json(&task_path).await;
    forged.as_object_mut().unwrap().remove("id");
    forged.as_object_mut().unwrap().remove("meta");
    forged["status"] = json!("requested");
    for requester in [
        json!({"reference": "Organization/hospital-st-mary"}),
        json!({"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": npi_of_st_mary()}}),
    ] {
        forged["requester"] = requester.clone();
        let (status, body) = post_fhir(&app, &stranger, "Task", &forged).await;
        assert_eq!(status, 403, "{requester}: {body}");
        let (status, body) =
            post_fhir(&app, &stranger, "", &one_entry("POST", "Task", &forged)).await;
        assert_eq!(status, 403, "{requester} in a Bundle: {body}");
    }

    // The directory: a CBO's HealthcareService is written only by that CBO.
    let service = json!({"resourceType": "HealthcareService", "active": true,
        "name": "Weekly groceries", "providedBy": {"reference": format!("Organization/{ORG}")}});
    let (status, body) = post_fhir(&app, &stranger, "HealthcareService", &service).await;
    assert_eq!(status, 403, "{body}");
    let (status, created) = post_fhir(&app, &owner, "HealthcareService", &service).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("HealthcareService/{}", created["id"].as_str().unwrap());
    let mut renamed = created.clone();
    renamed["name"] = json!("Closed");
    assert_eq!(put(&app, &stranger, &path, &renamed).await.0, 403);
    let mut taken = created.clone();
    taken["providedBy"] = json!({"reference": "Organization/cbo-metro-rides"});
    assert_eq!(
        put(&app, &stranger, &path, &taken).await.0,
        403,
        "taking it over"
    );
    assert_eq!(put(&app, &owner, &path, &renamed).await.0, 200);
    let own =
        json!({"resourceType": "Organization", "id": "cbo-metro-rides", "name": "Not Riverside"});
    assert_eq!(
        put(
            &app,
            &stranger,
            &format!("Organization/{ORG}"),
            &json!({"resourceType": "Organization", "id": ORG, "name": "x"})
        )
        .await
        .0,
        403
    );
    // Its own Organization (seeded from the configuration) it may.
    assert_eq!(
        put(&app, &stranger, "Organization/cbo-metro-rides", &own)
            .await
            .0,
        200
    );

    // A client bound to no organisation (the integration's own) is not restricted.
    sr["priority"] = json!("urgent");
    assert_eq!(put(&app, &app.client, &sr_path, &sr).await.0, 200);
}

fn npi_of_st_mary() -> String {
    let config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
            .unwrap();
    let at = config.find("id = \"hospital-st-mary\"").unwrap();
    let rest = &config[at..];
    let value = rest.find("value = \"").unwrap() + "value = \"".len();
    rest[value..].split('"').next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// 4. The token endpoint: guessing is metered before the hash, refusals look alike and
//    are audited.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn secret_guessing_is_metered_before_the_hash_and_audited() {
    let app = spawn_app().await;
    let (client_id, secret) = app.add_cbo_client(ORG, None);
    let ehr = app.add_ehr(&[]);
    let form = |id: &str, s: &str| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("client_id".to_string(), id.to_string()),
            ("client_secret".to_string(), s.to_string()),
        ]
    };
    let ask = |f: Vec<(String, String)>| {
        let url = app.token_url();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .form(&f)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, r.json::<Value>().await.unwrap(), retry)
        }
    };
    // Unknown, wrong, and a client that has no secret: one answer.
    let unknown = ask(form("no-such-client", "guess")).await;
    let wrong = ask(form(&client_id, "guess")).await;
    let keyed = ask(form(&ehr.client_id, "guess")).await;
    assert_eq!(unknown.0, 401);
    assert_eq!((unknown.0, &unknown.1), (wrong.0, &wrong.1));
    assert_eq!((unknown.0, &unknown.1), (keyed.0, &keyed.1));

    // Four more wrong secrets use up the client's free failures; then it is locked out,
    // even for the right secret, with a Retry-After.
    for _ in 0..4 {
        assert_eq!(ask(form(&client_id, "guess")).await.0, 401);
    }
    assert_eq!(ask(form(&client_id, "guess")).await.0, 401);
    let locked = ask(form(&client_id, &secret)).await;
    assert_eq!(locked.0, 429, "{}", locked.1);
    assert!(locked.2.is_some(), "Retry-After");

    // A flood of wrong secrets from one peer: most are refused before any hash.
    let flood: Vec<_> = (0..60)
        .map(|i| ask(form(&format!("guess-{i}"), "x")))
        .collect();
    let answers = futures::future::join_all(flood).await;
    let hashed = answers.iter().filter(|a| a.0 == 401).count();
    let metered = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(hashed + metered, 60);
    assert!(hashed <= 25, "{hashed} hashes for 60 guesses");

    // Every refusal is in the audit trail under the client id it claimed.
    let mut seen = 0;
    for _ in 0..50 {
        let trail = app
            .audit_json(&format!("AuditEvent?agent={client_id}&entity=/auth/token"))
            .await;
        seen = trail["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["outcome"] == "4")
            .count();
        if seen >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= 7, "{seen} refusals audited");
}

// ---------------------------------------------------------------------------------------
// 5. The audit trail: an operator's scope, and no search values that name a person.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_audit_trail_is_an_operators_and_keeps_no_value_that_names_a_person() {
    let app = spawn_app_with(&[("CROSSWAY_MAX_BODY_BYTES", "4096")]).await;
    // The default EHR scopes do not reach it, by wildcard, in a Bundle, or by asking.
    assert_eq!(app.get("AuditEvent").await.status(), 403);
    let (status, _) = in_bundle(&app, &app.client, "batch", "GET", "AuditEvent").await;
    assert_eq!(status, 403);
    let (status, body) = app
        .ehr_token_request(&app.ehr, Some("system/AuditEvent.rs"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");

    for query in [
        "Patient?family=Zyxwvuts&birthdate=1961-02-03&_count=5",
        "Patient?identifier=urn:mrn|4455667788",
        "Patient?name=Quorra&given=5550001234",
    ] {
        assert_eq!(app.get(query).await.status(), 200, "{query}");
    }
    // A body over the limit is refused before the handler: still in the face's format,
    // and the caller is named in the trail.
    let big = "x".repeat(8192);
    let cbo = app.cbo(ORG);
    let r = cbo
        .post_raw("webhooks", &format!("{{\"url\": \"{big}\"}}"), &[])
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.body["status"], 413);
    let r = app
        .client
        .post(app.url("Task/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("status={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let mut entities = String::new();
    for _ in 0..50 {
        let trail = app.audit_json("AuditEvent?_count=1000").await;
        entities = trail.to_string();
        if entities.contains("given=*") && entities.contains("/cbo/v1/webhooks") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for secret in [
        "Zyxwvuts",
        "1961-02-03",
        "4455667788",
        "Quorra",
        "5550001234",
    ] {
        assert!(!entities.contains(secret), "{secret} in the trail");
    }
    assert!(
        entities.contains("family=*&birthdate=*&_count=5"),
        "{entities}"
    );
    let trail = app.audit_json("AuditEvent?entity=/cbo/v1/webhooks").await;
    let refused = trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["resource"]["outcomeDesc"] == "POST 413")
        .unwrap_or_else(|| panic!("no audit of the 413: {trail}"));
    assert_ne!(
        refused["resource"]["agent"][0]["who"]["identifier"]["value"], "anonymous",
        "the 413 names its caller"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Forwarded headers decide nothing unless a configured proxy sent them.
// ---------------------------------------------------------------------------------------

async fn discovery(app: &TestApp, headers: &[(&str, &str)]) -> Value {
    let mut r = reqwest::Client::new().get(format!(
        "http://{}/.well-known/smart-configuration",
        app.addr
    ));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap().json().await.unwrap()
}

const FORGED: [[(&str, &str); 2]; 3] = [
    [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ],
    [
        ("forwarded", "host=evil.example;proto=https"),
        ("x-ignored", "1"),
    ],
    [
        ("forwarded", "for=1.2.3.4;host=\"evil.example\";proto=https"),
        ("x-forwarded-host", "evil.example"),
    ],
];

#[tokio::test]
async fn forwarded_headers_count_only_from_configured_proxies() {
    let app = spawn_app().await;
    let evil_token_url = "https://evil.example/auth/token";
    for headers in FORGED {
        let d = discovery(&app, &headers).await;
        assert_eq!(d["token_endpoint"], app.token_url(), "{headers:?}");
        // An assertion made out to another server is refused whatever the headers say.
        let assertion = sign_assertion(&app.ehr, evil_token_url, json!({}));
        let mut r = reqwest::Client::new().post(app.token_url()).form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ]);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        assert_eq!(r.send().await.unwrap().status(), 401, "{headers:?}");
        // Links in a searchset keep our own base.
        let mut r = app.client.get(app.url("Task?_count=1"));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let page: Value = r.send().await.unwrap().json().await.unwrap();
        assert!(!page.to_string().contains("evil.example"), "{page}");
    }
    // Behind a configured proxy the same headers are the truth.
    let proxied = spawn_app_with(&[("CROSSWAY_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).await;
    let d = discovery(&proxied, &FORGED[0]).await;
    assert_eq!(d["token_endpoint"], evil_token_url);
    let assertion = sign_assertion(&proxied.ehr, evil_token_url, json!({}));
    let r = reqwest::Client::new()
        .post(proxied.token_url())
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------
// 7. MLLP slots cannot be held: stray bytes are not activity, and one peer has a cap.
// ---------------------------------------------------------------------------------------

/// Reads until the server closes the connection or `limit` passes; true when closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

const ADT: &str = "MSH|^~\\&|EPIC|ST-MARY|CROSSWAY|HIE|20240101120000||ADT^A08^ADT_A01|MSG-ATTACK-1|P|2.5.1\rEVN|A08|20240101120000\rPID|1||MRN-ATTACK-1^^^ST-MARY^MR||Doe^Jane||19800101|F\rPV1|1|O\r";

#[tokio::test]
async fn mllp_slots_cannot_be_held_by_stray_bytes_or_by_one_peer() {
    let app = spawn_app_with(&[
        ("CROSSWAY_MLLP_IDLE_TIMEOUT_MS", "1500"),
        ("CROSSWAY_MLLP_MAX_CONNECTIONS_PER_PEER", "4"),
    ])
    .await;
    // One stray byte every 400 ms: once kept a connection for good, now it closes.
    let mut trickle = tokio::net::TcpStream::connect(&app.mllp_addr)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..15 {
        let _ = trickle.write_all(b"\r").await;
        if closed_within(&mut trickle, Duration::from_millis(400)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a trickle of bytes outside frames held the connection"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A burst of bytes outside any frame closes the connection at once.
    let mut garbage = tokio::net::TcpStream::connect(&app.mllp_addr)
        .await
        .unwrap();
    garbage.write_all(&[b'A'; 8192]).await.unwrap();
    assert!(closed_within(&mut garbage, Duration::from_millis(1000)).await);

    // Four idle connections from one peer take its share; the fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(&app.mllp_addr)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(&app.mllp_addr)
        .await
        .unwrap();
    assert!(closed_within(&mut fifth, Duration::from_millis(1000)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A real sender, with the CR LF some write between frames, is still answered.
    let mut sender = tokio::net::TcpStream::connect(&app.mllp_addr)
        .await
        .unwrap();
    let mut framed = vec![0x0b];
    framed.extend_from_slice(ADT.as_bytes());
    framed.extend_from_slice(&[0x1c, 0x0d, b'\r', b'\n']);
    sender.write_all(&framed).await.unwrap();
    let mut ack = Vec::new();
    let mut buf = [0u8; 1024];
    while !ack.contains(&0x1c) {
        let n = tokio::time::timeout(Duration::from_secs(5), sender.read(&mut buf))
            .await
            .expect("an ACK in time")
            .unwrap();
        assert!(n > 0, "closed without an ACK");
        ack.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&ack).contains("MSA|A"),
        "{}",
        String::from_utf8_lossy(&ack)
    );
}

// ---------------------------------------------------------------------------------------
// 8. JSON whose meaning is uncertain is refused, naming where.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn numbers_and_names_whose_meaning_is_uncertain_are_refused() {
    let app = spawn_app().await;
    let bodies = [
        r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1e999}}"#,
        r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": -1E400}}"#,
        r#"{"resourceType": "Observation", "status": "final", "status": "cancelled", "code": {"text": "x"}}"#,
        r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x", "text": "y"}}"#,
    ];
    for body in bodies {
        let (status, outcome) = post_text(&app, &app.client, "Observation", body).await;
        assert_eq!(status, 400, "{body}");
        let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            text.contains("twice") || text.contains("out of range"),
            "{text}"
        );
        // The same resource inside a transaction.
        let bundle = format!(
            r#"{{"resourceType": "Bundle", "type": "transaction", "entry": [{{"resource": {body}, "request": {{"method": "POST", "url": "Observation"}}}}]}}"#
        );
        let (status, _) = post_text(&app, &app.client, "", &bundle).await;
        assert_eq!(status, 400, "in a Bundle: {body}");
    }
    let referral_id = {
        app.post_referral().await;
        app.cbo(ORG).referral_ids().await[0].clone()
    };
    let r = app
        .cbo(ORG)
        .post_raw(
            &format!("referrals/{referral_id}/notes"),
            r#"{"text": "call Monday", "text": "call Tuesday"}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.to_string().contains("twice"), "{}", r.body);
}
