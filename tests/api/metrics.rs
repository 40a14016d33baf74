//! `/metrics`: what operators alert on, behind its own token, and in step with the
//! alert rules shipped in `deploy/prometheus/alerts.yml`.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::*;

/// Samples of a Prometheus text scrape: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}/metrics", app.addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The metric names an alert expression reads: identifiers that are neither PromQL
/// functions and keywords nor label names.
fn alert_metrics(rules: &str) -> Vec<String> {
    const PROMQL: &[&str] = &[
        "max",
        "min",
        "sum",
        "by",
        "rate",
        "delta",
        "histogram_quantile",
        "offset",
        "le",
        "instance",
        "job",
        "ack",
        "status",
        "face",
        "up",
    ];
    let mut names = Vec::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("expr:") {
            in_expr = true;
            scan(rest, &mut names);
        } else if in_expr && line.starts_with("          ") && !t.contains(':') {
            scan(t, &mut names);
        } else {
            in_expr = false;
        }
    }
    names.retain(|n| !PROMQL.contains(&n.as_str()));
    names.sort();
    names.dedup();
    return names;

    fn scan(expr: &str, names: &mut Vec<String>) {
        // Label values and durations are quoted or bracketed: drop them first.
        let mut plain = String::new();
        let mut skip = None;
        for c in expr.chars() {
            match (skip, c) {
                (None, '"') => skip = Some('"'),
                (None, '[') => skip = Some(']'),
                (Some(end), c) if c == end => skip = None,
                (None, c) => plain.push(c),
                _ => {}
            }
        }
        for word in plain.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with(|c: char| c.is_ascii_lowercase()) {
                names.push(word.to_string());
            }
        }
    }
}

#[tokio::test]
async fn metrics_need_their_token_and_count_what_operators_alert_on() {
    let app = spawn_app_with(&[("CROSSWAY_METRICS_TOKEN", "metrics-token-for-tests")]).await;
    assert_eq!(scrape(&app, None).await.0, 401);
    assert_eq!(scrape(&app, Some("wrong")).await.0, 401);
    // An EHR's access token is not the metrics token.
    let ehr = app.ehr_token(&app.ehr, None).await;
    assert_eq!(scrape(&app, Some(&ehr)).await.0, 401);

    // Traffic: an accepted ADT, one that parses but cannot be applied (a dead letter),
    // a FHIR create and a read of something missing.
    let ack = app.send_hl7(&adt("A01", "m1", &mrn("M-1"), "V1")).await;
    assert_eq!(ack_code(&ack), "AA", "{ack}");
    let odd = adt("A01", "m2", &mrn("M-2"), "V2").replace("PV1|1|I|", "PV1|1|Z|");
    assert_eq!(ack_code(&app.send_hl7(&odd).await), "AE");
    app.create(
        &json!({"resourceType": "Patient", "identifier": [{"system": "http://m", "value": "1"}]}),
    )
    .await;
    assert_eq!(app.get("Patient/no-such-patient").await.status(), 404);

    let (status, text) = scrape(&app, Some("metrics-token-for-tests")).await;
    assert_eq!(status, 200, "{text}");
    let s = samples(&text);
    let value = |series: &str| {
        *s.get(series)
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
    };
    assert_eq!(value(r#"hl7_messages_received_total{ack="AA"}"#), 1.0);
    assert_eq!(value(r#"hl7_messages_received_total{ack="AE"}"#), 1.0);
    assert_eq!(value(r#"hl7_messages_received_total{ack="none"}"#), 0.0);
    assert_eq!(value(r#"hl7_ack_latency_seconds_count{ack="AA"}"#), 1.0);
    assert_eq!(value("hl7_dead_letters"), 1.0);
    assert_eq!(value("identity_conflicts_open"), 0.0);
    assert_eq!(value("store_up"), 1.0);
    assert_eq!(value("webhook_deliveries_pending"), 0.0);
    assert!(value(r#"http_requests_total{face="fhir",status="2xx"}"#) >= 1.0);
    assert_eq!(
        value(r#"http_requests_total{face="fhir",status="4xx"}"#),
        1.0
    );
    assert!(value("store_commit_seconds_count") >= 2.0);
    assert!(value("store_flush_seconds_count") >= 1.0);
    assert_eq!(value("webhook_endpoint_disablements_total"), 0.0);
    assert_eq!(value("webhook_endpoints_disabled"), 0.0);

    // Each metric family has a name of its own, also as OpenMetrics readers (Python's
    // prometheus_client among them) name a counter: without `_total`.
    let mut families: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            match kind {
                "counter" => name.strip_suffix("_total").unwrap_or(name).to_string(),
                _ => name.to_string(),
            }
        })
        .collect();
    let declared = families.len();
    families.sort();
    families.dedup();
    assert_eq!(
        families.len(),
        declared,
        "two families share a name:\n{text}"
    );

    // Every metric an alert rule reads is one the gateway exports.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let names = alert_metrics(&rules);
    assert!(names.len() >= 10, "rules read {names:?}");
    for name in names {
        assert!(
            s.keys()
                .any(|series| series == &name || series.starts_with(&format!("{name}{{"))),
            "deploy/prometheus/alerts.yml reads {name}, which /metrics does not export:\n{text}"
        );
    }
}

#[tokio::test]
async fn without_a_metrics_token_development_answers_loopback_and_production_nobody() {
    let app = spawn_app().await;
    let (status, text) = scrape(&app, None).await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE store_up gauge"), "{text}");
    // Nothing identifies a client in the scrape.
    assert!(!text.contains(&app.ehr.client_id), "{text}");

    let production = spawn_app_with(&[("CROSSWAY_ENVIRONMENT", "production")]).await;
    let (status, text) = scrape(&production, None).await;
    assert_eq!(status, 403);
    assert!(text.contains("CROSSWAY_METRICS_TOKEN"), "{text}");
}
