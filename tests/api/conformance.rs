use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn metadata_states_what_is_implemented() {
    let app = spawn_app().await;
    let cs = app.get_json("metadata").await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/us/sdoh-clinicalcare/CapabilityStatement/SDOHCC-CoordinationPlatform"
    );
    let oauth = &cs["rest"][0]["security"]["extension"][0]["extension"][0];
    assert_eq!(oauth["valueUri"], format!("http://{}/auth/token", app.addr));
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    // RESOURCE_TYPES, plus AuditEvent, Subscription and Measure with their own handlers.
    assert_eq!(resources.len(), 24);
    let subscription = resources
        .iter()
        .find(|r| r["type"] == "Subscription")
        .unwrap();
    assert!(
        subscription["extension"]
            .to_string()
            .contains("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task")
    );
    // Every advertised search parameter is accepted by the server.
    for r in resources {
        let ty = r["type"].as_str().unwrap();
        for p in r["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                "date" => "gt2020-01-01",
                "reference" => "Patient/x",
                _ => "x",
            };
            let value = if ty != "Task" && name == "patient" {
                "x"
            } else {
                value
            };
            let query = format!("{ty}?{name}={value}");
            // The audit trail is searched with the operator's scope, which no
            // wildcard grants.
            if ty == "AuditEvent" {
                let forbidden = app.get(&query).await;
                assert_eq!(forbidden.status(), 403, "{query} with the default scopes");
                app.audit_json(&query).await;
                continue;
            }
            let resp = app.get(&query).await;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            assert!(
                status == 200 || (status == 400 && p["type"] == "reference"),
                "{ty}?{name}: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = app
        .client
        .get(format!("http://{}/readyz", app.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["store"], "ok");
    let expected_cache = if std::env::var("CROSSWAY_TEST_REDIS_URL").is_ok() {
        "redis"
    } else {
        "in-process"
    };
    assert_eq!(ready["cache"], expected_cache);
}

#[tokio::test]
async fn personal_data_stays_out_of_the_logs() {
    let app = spawn_app().await;
    app.post_referral().await;
    let mut task = referral_bundle()["entry"][4]["resource"].clone();
    task["owner"] = serde_json::json!({"reference": "Organization/unknown"});
    task["focus"] = serde_json::json!({"reference": "http://ehr.example/fhir/ServiceRequest/1"});
    task["for"] = serde_json::json!({"reference": "http://ehr.example/fhir/Patient/2"});
    app.create(&task).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = app.logs.lock().unwrap().clone();
    assert!(logs.contains("Crossway listening."), "{logs}");
    assert!(logs.contains("Stored with warning."), "{logs}");
    for phi in [
        "Rivera",
        "MRN-10001",
        "555-0100",
        "1984-03-12",
        "Harbor Way",
    ] {
        assert!(!logs.contains(phi), "{phi} appears in the logs");
    }
}
