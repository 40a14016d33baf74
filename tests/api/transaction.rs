use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_gravity_referral_transaction_creates_everything_and_a_referral() {
    let app = spawn_app().await;
    let r = app.post_referral().await;
    assert_eq!(r["type"], "transaction-response");
    let statuses: Vec<&str> = r["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201 Created"; 5]);
    let (patient, consent, condition, sr, task) = (
        entry_id(&r, 0),
        entry_id(&r, 1),
        entry_id(&r, 2),
        entry_id(&r, 3),
        entry_id(&r, 4),
    );

    // urn:uuid references now point at the assigned ids.
    let stored_sr = app.get_json(&format!("ServiceRequest/{sr}")).await;
    assert_eq!(
        stored_sr["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(
        stored_sr["supportingInfo"][0]["reference"],
        format!("Consent/{consent}")
    );
    assert_eq!(
        stored_sr["reasonReference"][0]["reference"],
        format!("Condition/{condition}")
    );
    let stored_task = app.get_json(&format!("Task/{task}")).await;
    assert_eq!(
        stored_task["focus"]["reference"],
        format!("ServiceRequest/{sr}")
    );
    assert_eq!(
        stored_task["for"]["reference"],
        format!("Patient/{patient}")
    );
    // Primitive extensions survive inside transactions too.
    let stored_patient = app.get_json(&format!("Patient/{patient}")).await;
    assert_eq!(
        stored_patient["_birthDate"]["extension"][0]["valueString"],
        "day"
    );

    let cbo = app.cbo("cbo-riverside-food-bank");
    let list = cbo.get("referrals").await.body;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let referral = &list["data"][0];
    assert_eq!(referral["status"], "pending");
    let full = cbo
        .get(&format!("referrals/{}", referral["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(full["task"], format!("Task/{task}"));
    let events = cbo.get("events").await.body;
    assert_eq!(events["data"][0]["type"], "referral.created");
    assert_eq!(events["data"][0]["sequence"], 1);
    assert_eq!(events["data"][0]["data"]["referral_id"], referral["id"]);
}

#[tokio::test]
async fn a_failing_entry_rolls_back_the_whole_transaction() {
    let app = spawn_app().await;
    let mut b = referral_bundle();
    b["entry"][4]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("authoredOn");
    let resp = app.post("", &b).await;
    assert_eq!(resp.status(), 422);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(
        outcome_expressions(&oo),
        ["Bundle.entry[4].resource.authoredOn"]
    );
    assert!(
        app.search_ids("Patient").await.is_empty(),
        "nothing was created"
    );
    assert!(app.search_ids("ServiceRequest").await.is_empty());
}

#[tokio::test]
async fn conditional_references_and_conditional_creates_resolve() {
    let app = spawn_app().await;
    let existing = app
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-10001"}]}))
        .await;
    let existing_id = existing["id"].as_str().unwrap().to_string();

    // The Patient entry is conditional: it matches the existing one, and every reference
    // to its fullUrl is rewritten to that Patient.
    let mut b = referral_bundle();
    b["entry"][0]["request"]["ifNoneExist"] =
        json!("identifier=http://hospital.example.org/mrn|MRN-10001");
    let r = app.post("", &b).await;
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(entry_id(&r, 0), existing_id);
    let task = app.get_json(&format!("Task/{}", entry_id(&r, 4))).await;
    assert_eq!(task["for"]["reference"], format!("Patient/{existing_id}"));

    // A conditional reference resolves against what is stored.
    let cond = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Condition", "subject": {"reference": "Patient?identifier=http://hospital.example.org/mrn|MRN-10001"}},
        "request": {"method": "POST", "url": "Condition"}}]});
    let r: Value = app.post("", &cond).await.json().await.unwrap();
    let condition = app
        .get_json(&format!("Condition/{}", entry_id(&r, 0)))
        .await;
    assert_eq!(
        condition["subject"]["reference"],
        format!("Patient/{existing_id}")
    );

    let mut unresolved = cond.clone();
    unresolved["entry"][0]["resource"]["subject"]["reference"] =
        json!("Patient?identifier=http://nowhere|0");
    assert_eq!(app.post("", &unresolved).await.status(), 422);
}

#[tokio::test]
async fn a_batch_reports_each_entry_on_its_own() {
    let app = spawn_app().await;
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "ServiceRequest", "status": "active"}, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"request": {"method": "GET", "url": "Organization/cbo-metro-rides"}},
        {"request": {"method": "GET", "url": "Patient?gender=female"}}
    ]});
    let resp = app.post("", &b).await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["type"], "batch-response");
    assert_eq!(r["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(r["entry"][1]["response"]["status"], "400");
    assert_eq!(
        outcome_expressions(&r["entry"][1]["response"]["outcome"]),
        [
            "Bundle.entry[1].resource.intent",
            "Bundle.entry[1].resource.subject"
        ]
    );
    assert_eq!(
        r["entry"][2]["resource"]["name"],
        "Metro Rides Transportation"
    );
    assert_eq!(match_ids(&r["entry"][3]["resource"]), [entry_id(&r, 0)]);
}

#[tokio::test]
async fn task_updates_follow_the_referral_state_machine() {
    let app = spawn_app().await;
    let r = app.post_referral().await;
    let task_id = entry_id(&r, 4);
    let path = format!("Task/{task_id}");
    let mut task = app.get_json(&path).await;

    task["status"] = json!("completed");
    let resp = app.put(&path, &task).await;
    assert_eq!(resp.status(), 422);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(
        outcome_expressions(&oo),
        ["Task.output"],
        "completed needs output first"
    );
    task["output"] = json!([{"type": {"text": "resulting-activity"}, "valueString": "done"}]);
    let resp = app.put(&path, &task).await;
    assert_eq!(resp.status(), 422);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(outcome_expressions(&oo), ["Task.status"]);
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("from requested to completed")
    );

    task.as_object_mut().unwrap().remove("output");
    task["status"] = json!("accepted");
    assert_eq!(app.put(&path, &task).await.status(), 200);
    // The index follows the new version: the old status no longer matches.
    assert!(app.search_ids("Task?status=requested").await.is_empty());
    assert_eq!(
        app.search_ids("Task?status=accepted").await,
        vec![task_id.clone()]
    );
    let cbo = app.cbo("cbo-riverside-food-bank");
    assert_eq!(
        cbo.get("referrals").await.body["data"][0]["status"],
        "accepted"
    );
    assert_eq!(cbo.event_types(1).await, ["referral.status_changed"]);
}

#[tokio::test]
async fn received_is_stored_as_requested_and_unknown_owners_are_warned() {
    let app = spawn_app().await;
    let r = app.post_referral().await;
    let (patient, sr) = (entry_id(&r, 0), entry_id(&r, 3));
    let task = json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement"]},
        "status": "received", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/{sr}")},
        "for": {"reference": format!("Patient/{patient}")},
        "authoredOn": "2026-11-23", "requester": {"reference": "PractitionerRole/3"},
        "owner": {"reference": "Organization/4"}
    });
    let resp = app
        .client
        .post(app.url("Task"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=OperationOutcome")
        .body(task.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["issue"][0]["severity"], "warning");
    assert_eq!(outcome_expressions(&oo), ["Task.owner"]);
    let id = location
        .split("/Task/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert_eq!(
        app.get_json(&format!("Task/{id}")).await["status"],
        "requested"
    );
    let cbo = app.cbo("cbo-riverside-food-bank");
    assert_eq!(cbo.referral_ids().await.len(), 1);

    // The owner named by identifier routes to the configured organisation.
    let mut by_identifier = task.clone();
    by_identifier["owner"] =
        json!({"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}});
    app.create(&by_identifier).await;
    assert_eq!(cbo.referral_ids().await.len(), 2);
}

/// A transaction entry `PUT Type?search`: the first run creates and the entries that
/// refer to it by fullUrl get its id; the same Bundle again updates that resource. In
/// a batch, an entry whose condition matches twice fails alone with 412.
#[tokio::test]
async fn conditional_updates_in_bundles() {
    let app = spawn_app().await;
    let bundle = |family: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Practitioner",
                "identifier": [{"system": "http://npi", "value": "555"}],
                "name": [{"family": family}]},
             "request": {"method": "PUT", "url": "Practitioner?identifier=http://npi|555"}},
            {"resource": {"resourceType": "PractitionerRole",
                "practitioner": {"reference": "urn:uuid:11111111-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "PractitionerRole"}}
        ]})
    };
    let post = async |b: Value| {
        let resp = app.post("", &b).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    };
    let first = post(bundle("Nakamura")).await;
    assert_eq!(first["entry"][0]["response"]["status"], "201 Created");
    let id = entry_id(&first, 0);
    let role = app
        .get_json(&format!("PractitionerRole/{}", entry_id(&first, 1)))
        .await;
    assert_eq!(
        role["practitioner"]["reference"],
        format!("Practitioner/{id}")
    );

    let second = post(bundle("Nakamura-Sato")).await;
    assert_eq!(second["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(entry_id(&second, 0), id);
    let role = app
        .get_json(&format!("PractitionerRole/{}", entry_id(&second, 1)))
        .await;
    assert_eq!(
        role["practitioner"]["reference"],
        format!("Practitioner/{id}")
    );
    assert_eq!(
        app.get_json(&format!("Practitioner/{id}")).await["name"][0]["family"],
        "Nakamura-Sato"
    );

    // Batch: two matches fail that entry only.
    for family in ["A", "B"] {
        app.create(&json!({"resourceType": "Practitioner",
            "identifier": [{"system": "http://npi", "value": "666"}], "name": [{"family": family}]}))
            .await;
    }
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Practitioner",
            "identifier": [{"system": "http://npi", "value": "666"}]},
         "request": {"method": "PUT", "url": "Practitioner?identifier=http://npi|666"}},
        {"resource": {"resourceType": "Practitioner",
            "identifier": [{"system": "http://npi", "value": "777"}]},
         "request": {"method": "PUT", "url": "Practitioner?identifier=http://npi|777"}}
    ]});
    let r = post(batch).await;
    assert!(
        r["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("412"),
        "{r}"
    );
    assert_eq!(r["entry"][1]["response"]["status"], "201 Created");
}
