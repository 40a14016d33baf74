use serde_json::{Value, json};

use crate::helpers::*;

fn patient() -> Value {
    // Decimal precision, primitive extensions, modifier extensions, contained resources
    // and elements the server does not know must all survive a round trip.
    serde_json::from_str(
        r##"{
        "resourceType": "Patient",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"], "tag": [{"code": "t"}]},
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Inline Org"}],
        "extension": [{"url": "http://example.org/weight", "valueQuantity": {"value": 70.50, "unit": "kg"}}],
        "modifierExtension": [{"url": "http://example.org/mod", "valueBoolean": true}],
        "identifier": [{"system": "http://hospital.example.org/mrn", "value": "A-1"}],
        "name": [{"family": "Núñez", "given": ["Ana"]}],
        "birthDate": "1980-02-29",
        "_birthDate": {"extension": [{"url": "http://example.org/precision", "valueCode": "day"}]},
        "managingOrganization": {"reference": "#o1"},
        "futureElement": {"nested": [1, 2.0, "x"]}
    }"##,
    )
    .unwrap()
}

fn without_id_and_version(mut v: Value) -> Value {
    let m = v.as_object_mut().unwrap();
    m.remove("id");
    let meta = m.get_mut("meta").unwrap().as_object_mut().unwrap();
    meta.remove("versionId");
    meta.remove("lastUpdated");
    v
}

#[tokio::test]
async fn create_then_read_returns_exactly_what_was_sent() {
    let app = spawn_app().await;
    let resp = app.post("Patient", &patient()).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert!(resp.headers().contains_key("last-modified"));
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, app.url(&format!("Patient/{id}/_history/1")));

    let resp = app.get(&format!("Patient/{id}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("70.50"), "decimal precision lost: {text}");
    let read: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(without_id_and_version(read), patient());
}

#[tokio::test]
async fn update_versions_history_and_vread() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap().to_string();

    let mut changed = created.clone();
    changed["birthDate"] = json!("1980-03-01");
    let resp = app.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "W/\"2\"");

    let history = app.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(history["type"], "history");
    let versions: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"]);

    let v1 = app.get_json(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1["birthDate"], "1980-02-29");
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/3")).await.status(),
        404
    );
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let mut body = created.clone();
    body["gender"] = json!("female");
    let put = |etag: &'static str, body: Value| {
        let app = &app;
        let url = app.url(&format!("Patient/{id}"));
        async move {
            app.client
                .put(url)
                .header("content-type", FHIR_JSON)
                .header("if-match", etag)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(put("W/\"1\"", body.clone()).await.status(), 200);
    body["gender"] = json!("male");
    let stale = put("W/\"1\"", body).await;
    assert_eq!(stale.status(), 412);
    let outcome: Value = stale.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let current = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(current["gender"], "female");
}

#[tokio::test]
async fn update_as_create_with_a_client_chosen_id() {
    let app = spawn_app().await;
    let mut p = patient();
    p["id"] = json!("example-patient-1");
    let resp = app.put("Patient/example-patient-1", &p).await;
    assert_eq!(resp.status(), 201);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/Patient/example-patient-1/_history/1")
    );
    // Sending the same content again changes nothing: same version, 200.
    let again = app.put("Patient/example-patient-1", &p).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["etag"], "W/\"1\"");
    p["gender"] = json!("other");
    let changed = app.put("Patient/example-patient-1", &p).await;
    assert_eq!(changed.headers()["etag"], "W/\"2\"");
}

#[tokio::test]
async fn conditional_reads_answer_304() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let get_with = |name: &'static str, value: String| {
        let req = app.client.get(app.url(&path)).header(name, value);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(get_with("if-none-match", "W/\"1\"".into()).await, 304);
    assert_eq!(get_with("if-none-match", "W/\"7\"".into()).await, 200);
    let last_modified = app.get(&path).await.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(get_with("if-modified-since", last_modified).await, 304);
    assert_eq!(
        get_with("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT".into()).await,
        200
    );
}

#[tokio::test]
async fn prefer_return_controls_the_body() {
    let app = spawn_app().await;
    let send = |prefer: &'static str| {
        let req = app
            .client
            .post(app.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header("prefer", prefer)
            .body(patient().to_string());
        async move { req.send().await.unwrap() }
    };
    let minimal = send("return=minimal").await;
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert_eq!(minimal.text().await.unwrap(), "");
    let oo: Value = send("return=OperationOutcome").await.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let rep: Value = send("return=representation").await.json().await.unwrap();
    assert_eq!(rep["resourceType"], "Patient");
}

#[tokio::test]
async fn twenty_concurrent_conditional_creates_make_one_resource() {
    let app = spawn_app().await;
    let p = json!({"resourceType": "Patient", "identifier": [{"system": "http://hospital.example.org/mrn", "value": "RACE-1"}]});
    let requests = (0..20).map(|_| {
        app.client
            .post(app.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header(
                "if-none-exist",
                "identifier=http://hospital.example.org/mrn|RACE-1",
            )
            .body(p.to_string())
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for r in responses {
        let r = r.unwrap();
        match r.status().as_u16() {
            201 => created += 1,
            200 => {}
            s => panic!("unexpected status {s}"),
        }
        let body: Value = r.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let found = app
        .search_ids("Patient?identifier=http://hospital.example.org/mrn|RACE-1")
        .await;
    assert_eq!(found.len(), 1);
}

/// Two gateway processes on one PostgreSQL each serve current versions from memory and
/// hear of the other's commits (LISTEN/NOTIFY): a read, a conditional read and a search
/// through one never keep answering with a version the other has replaced.
#[tokio::test]
async fn a_sibling_process_never_keeps_serving_a_replaced_version() {
    if store_kind() != "postgres" {
        eprintln!(
            "a_sibling_process_never_keeps_serving_a_replaced_version: runs in the PostgreSQL pass"
        );
        return;
    }
    let one = spawn_app().await;
    let two = spawn_sibling(&one, &[]).await;
    let mut p = patient();
    p["id"] = json!("shared-1");
    assert_eq!(one.put("Patient/shared-1", &p).await.status(), 201);
    // Read through the other process, which now holds version 1 in memory.
    for _ in 0..3 {
        assert_eq!(
            two.get_json("Patient/shared-1").await["meta"]["versionId"],
            "1"
        );
    }

    p["gender"] = json!("other");
    assert_eq!(
        one.put("Patient/shared-1", &p).await.headers()["etag"],
        "W/\"2\""
    );
    // Announced at COMMIT: the other process follows within milliseconds.
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = two.get_json("Patient/shared-1").await;
        if seen["meta"]["versionId"] == "2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen["meta"]["versionId"], "2", "{seen}");
    assert_eq!(seen["gender"], "other");
    let conditional = two
        .client
        .get(two.url("Patient/shared-1"))
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 200);

    // A search answers with the version it matched, announced or not yet.
    p["name"] = json!([{"family": "Zubiri", "given": ["Ana"]}]);
    assert_eq!(
        one.put("Patient/shared-1", &p).await.headers()["etag"],
        "W/\"3\""
    );
    let page = two.get_json("Patient?name=Zubiri").await;
    let entry = &page["entry"][0]["resource"];
    assert_eq!(entry["meta"]["versionId"], "3", "{page}");
    assert_eq!(entry["name"][0]["family"], "Zubiri");
}

/// Every 405 on `/fhir` names the methods its path takes, in an OperationOutcome; and
/// those methods are answered (not 405).
#[tokio::test]
async fn a_405_says_what_the_path_allows() {
    let app = spawn_app().await;
    let cases = [
        ("DELETE", "Patient/x", "GET, PUT"),
        ("PATCH", "Patient", "GET, POST, PUT"),
        ("DELETE", "metadata", "GET"),
        ("PUT", "Task/_search", "POST"),
        ("GET", "", "POST"),
        ("DELETE", "Patient/x/_history", "GET"),
        ("POST", "Subscription/x", "GET, PUT, DELETE"),
    ];
    for (method, path, allow) in cases {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(
            resp.headers()["allow"].to_str().unwrap(),
            allow,
            "{method} {path}"
        );
        let oo: Value = resp.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert_eq!(oo["issue"][0]["code"], "not-supported", "{oo}");
        for other in allow.split(", ") {
            let resp = app
                .client
                .request(other.parse().unwrap(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_ne!(resp.status(), 405, "{other} {path} is allowed");
        }
    }
    // A Bundle entry the engine refuses with 405 carries the base's Allow too.
    let resp = app
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": "Patient/x"}}]}),
        )
        .await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"].to_str().unwrap(), "POST");
    // A path no route takes is not found, whatever the method.
    let resp = app
        .client
        .delete(app.url("Patient/x/_history/1/more"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// `PUT Type?search`: no match creates (server id, or the body's id when free), one
/// match is updated (a different body id is refused), several are 412.
#[tokio::test]
async fn conditional_update_follows_the_match_count() {
    let app = spawn_app().await;
    let practitioner = |value: &str, family: &str| {
        json!({"resourceType": "Practitioner",
            "identifier": [{"system": "http://npi", "value": value}],
            "name": [{"family": family}]})
    };
    let url = "Practitioner?identifier=http://npi|111";
    let resp = app.put(url, &practitioner("111", "Ortiz")).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().contains_key("location"));
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let resp = app.put(url, &practitioner("111", "Ortiz-Ruiz")).await;
    assert_eq!(resp.status(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(
        app.get_json(&format!("Practitioner/{id}")).await["name"][0]["family"],
        "Ortiz-Ruiz"
    );
    // The body's id must be the match's.
    let mut other = practitioner("111", "X");
    other["id"] = json!("someone-else");
    let resp = app.put(url, &other).await;
    assert_eq!(resp.status(), 400);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(outcome_expressions(&oo), ["Practitioner.id"]);
    let mut same = practitioner("111", "Ortiz");
    same["id"] = json!(id);
    assert_eq!(app.put(url, &same).await.status(), 200);

    // No match, with a free id in the body: created with that id.
    let mut chosen = practitioner("222", "Lee");
    chosen["id"] = json!("prac-222");
    let resp = app
        .put("Practitioner?identifier=http://npi|222", &chosen)
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        app.get_json("Practitioner/prac-222").await["name"][0]["family"],
        "Lee"
    );
    // No match, but the body's id belongs to another resource: 409.
    let mut taken = practitioner("333", "Kim");
    taken["id"] = json!("prac-222");
    let resp = app
        .put("Practitioner?identifier=http://npi|333", &taken)
        .await;
    assert_eq!(resp.status(), 409);

    // Two matches: 412, nothing written.
    app.create(&practitioner("444", "A")).await;
    app.create(&practitioner("444", "B")).await;
    let resp = app
        .put(
            "Practitioner?identifier=http://npi|444",
            &practitioner("444", "C"),
        )
        .await;
    assert_eq!(resp.status(), 412);
    assert_eq!(app.search_ids("Practitioner?name:exact=C").await.len(), 0);
    // A bad parameter is named; no parameters at all is refused.
    let resp = app
        .put("Practitioner?colour=red", &practitioner("1", "D"))
        .await;
    assert_eq!(resp.status(), 400);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(outcome_expressions(&oo), ["Practitioner?colour"]);
    assert_eq!(
        app.put("Practitioner", &practitioner("1", "D"))
            .await
            .status(),
        400
    );
}

/// The upsert an EHR's interface engine sends for a Task it knows by identifier: the
/// same Task transition rules as an update by id.
#[tokio::test]
async fn a_task_is_updated_by_its_identifier() {
    let app = spawn_app().await;
    let bundle = app.post_referral().await;
    let task_id = entry_id(&bundle, 4);
    let mut task = app.get_json(&format!("Task/{task_id}")).await;
    task["identifier"] = json!([{"system": "http://ehr/tasks", "value": "T-9"}]);
    assert_eq!(
        app.put(&format!("Task/{task_id}"), &task).await.status(),
        200
    );

    let mut body = task.clone();
    body.as_object_mut().unwrap().remove("id");
    body.as_object_mut().unwrap().remove("meta");
    body["status"] = json!("cancelled");
    let resp = app.put("Task?identifier=http://ehr/tasks|T-9", &body).await;
    let status = resp.status();
    let stored: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["id"], task_id.as_str());
    assert_eq!(stored["status"], "cancelled");
    // cancelled is final: the same transition check as PUT Task/id.
    body["status"] = json!("in-progress");
    let resp = app.put("Task?identifier=http://ehr/tasks|T-9", &body).await;
    assert_eq!(resp.status(), 422);
}
