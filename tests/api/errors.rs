//! Bad input gets an OperationOutcome naming the element and the rule: never a 500.

use serde_json::{Value, json};

use crate::helpers::*;

async fn outcome(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    oo
}

#[tokio::test]
async fn referral_task_rules_name_the_element() {
    let app = spawn_app().await;
    let mut b = referral_bundle();
    let task = b["entry"][4]["resource"].as_object_mut().unwrap();
    task.remove("focus");
    task.insert("intent".into(), json!("proposal"));
    let oo = outcome(app.post("", &b).await, 422).await;
    assert_eq!(
        outcome_expressions(&oo),
        [
            "Bundle.entry[4].resource.intent",
            "Bundle.entry[4].resource.focus"
        ]
    );
    assert!(
        oo["issue"][1]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("required")
    );
}

#[tokio::test]
async fn references_that_must_resolve_are_checked() {
    let app = spawn_app().await;
    let task = json!({
        "resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": "ServiceRequest/does-not-exist"},
        "for": {"reference": "Patient/nope"}, "authoredOn": "2026-11-23",
        "requester": {"reference": "Organization/hospital-st-mary"}
    });
    let oo = outcome(app.post("Task", &task).await, 422).await;
    assert_eq!(outcome_expressions(&oo), ["Task.focus", "Task.for"]);
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("ServiceRequest/does-not-exist")
    );
}

#[tokio::test]
async fn malformed_requests() {
    let app = spawn_app().await;
    let huge = format!(
        "{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}",
        "x".repeat(9 * 1024 * 1024)
    );
    // (path, content type, body, status, what the diagnostics or expression must say)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "Patient",
            FHIR_JSON,
            "{\"resourceType\": ".into(),
            400,
            "not valid JSON",
        ),
        (
            "Patient",
            FHIR_JSON,
            json!({"resourceType": "Task"}).to_string(),
            400,
            "Patient.resourceType",
        ),
        (
            "Patient",
            "text/plain",
            "{}".into(),
            415,
            "application/fhir+json",
        ),
        (
            "Patient",
            "application/fhir+xml",
            "<Patient/>".into(),
            415,
            "application/fhir+json",
        ),
        (
            "Spaceship",
            FHIR_JSON,
            json!({"resourceType": "Spaceship"}).to_string(),
            404,
            "Spaceship",
        ),
        ("Patient", FHIR_JSON, "[1,2]".into(), 400, "JSON object"),
        ("Patient", FHIR_JSON, huge, 413, "exceeds"),
    ];
    for (path, content_type, body, status, says) in cases {
        let resp = app
            .client
            .post(app.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let oo = outcome(resp, status).await;
        assert!(oo.to_string().contains(says), "{path} {content_type}: {oo}");
    }

    outcome(
        app.client
            .delete(app.url("Patient/x"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    outcome(app.get("Patient/does-not-exist").await, 404).await;

    let mut p = json!({"resourceType": "Patient", "id": "a"});
    outcome(app.put("Patient/b", &p).await, 400).await;
    p["id"] = json!("bad/id");
    outcome(app.put("Patient/bad", &p).await, 400).await;

    let oo = outcome(
        app.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .await,
        400,
    )
    .await;
    assert_eq!(outcome_expressions(&oo), ["Bundle.type"]);

    // After all of that the server is still healthy.
    assert_eq!(
        app.client
            .get(format!("http://{}/healthz", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
