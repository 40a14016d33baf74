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
