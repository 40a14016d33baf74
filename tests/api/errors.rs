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
    let send = |method: reqwest::Method, path: &str, ct: &str, body: String| {
        app.client
            .request(method, app.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let post = reqwest::Method::POST;

    let oo = outcome(
        send(
            post.clone(),
            "Patient",
            FHIR_JSON,
            "{\"resourceType\": ".into(),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let oo = outcome(
        send(
            post.clone(),
            "Patient",
            FHIR_JSON,
            json!({"resourceType": "Task"}).to_string(),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(outcome_expressions(&oo), ["Patient.resourceType"]);

    outcome(
        send(post.clone(), "Patient", "text/plain", "{}".into())
            .await
            .unwrap(),
        415,
    )
    .await;
    outcome(
        send(
            post.clone(),
            "Patient",
            "application/fhir+xml",
            "<Patient/>".into(),
        )
        .await
        .unwrap(),
        415,
    )
    .await;
    outcome(
        send(
            post.clone(),
            "Spaceship",
            FHIR_JSON,
            json!({"resourceType": "Spaceship"}).to_string(),
        )
        .await
        .unwrap(),
        404,
    )
    .await;
    outcome(
        send(post.clone(), "Patient", FHIR_JSON, "[1,2]".into())
            .await
            .unwrap(),
        400,
    )
    .await;

    let huge = format!(
        "{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}",
        "x".repeat(9 * 1024 * 1024)
    );
    outcome(
        send(post.clone(), "Patient", FHIR_JSON, huge)
            .await
            .unwrap(),
        413,
    )
    .await;

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
