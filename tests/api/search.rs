use serde_json::{Value, json};

use crate::helpers::*;

const TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";

/// Posts the referral transaction; returns (patient, service request, task) ids.
async fn referral(app: &TestApp) -> (String, String, String) {
    let r = app.post_referral().await;
    (entry_id(&r, 0), entry_id(&r, 3), entry_id(&r, 4))
}

#[tokio::test]
async fn task_search_the_way_ig_clients_poll() {
    let app = spawn_app().await;
    let (patient, sr, task) = referral(&app).await;
    let (_, _, task2) = referral(&app).await;

    // The light CBO client's poll.
    let q = format!(
        "Task?_profile={TASK_PROFILE}&owner=Organization/cbo-riverside-food-bank&_sort=-_lastUpdated"
    );
    assert_eq!(app.search_ids(&q).await, [task2.clone(), task.clone()]);
    assert_eq!(
        app.search_ids("Task?owner=cbo-riverside-food-bank&_sort=_lastUpdated")
            .await,
        [task.clone(), task2.clone()]
    );
    assert!(
        app.search_ids("Task?owner=Organization/cbo-harbor-housing")
            .await
            .is_empty()
    );

    assert_eq!(
        app.search_ids(&format!("Task?_id={task}")).await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids(&format!("Task?focus=ServiceRequest/{sr}"))
            .await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids(&format!("Task?patient=Patient/{patient}"))
            .await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids(&format!("Task?subject={patient}")).await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids("Task?requester=Organization/hospital-st-mary&status=requested")
            .await
            .len(),
        2
    );
    assert!(app.search_ids("Task?status=accepted").await.is_empty());
    assert_eq!(
        app.search_ids("Task?status=accepted,requested").await.len(),
        2
    );

    // Token forms: system|code, code, |code (no system: matches nothing here).
    assert_eq!(
        app.search_ids("Task?code=http://hl7.org/fhir/CodeSystem/task-code|fulfill")
            .await
            .len(),
        2
    );
    assert_eq!(app.search_ids("Task?code=fulfill").await.len(), 2);
    assert!(app.search_ids("Task?code=|fulfill").await.is_empty());
    assert!(
        app.search_ids("Task?code=http://other|fulfill")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn includes_bring_the_focus_patient_and_output() {
    let app = spawn_app().await;
    let (patient, sr, task) = referral(&app).await;
    let proc = app
        .create(&json!({"resourceType": "Procedure", "status": "completed",
            "basedOn": [{"reference": format!("ServiceRequest/{sr}")}],
            "subject": {"reference": format!("Patient/{patient}")}}))
        .await;
    let proc_id = proc["id"].as_str().unwrap();
    let mut t = app.get_json(&format!("Task/{task}")).await;
    t["status"] = json!("accepted");
    assert_eq!(app.put(&format!("Task/{task}"), &t).await.status(), 200);
    t["status"] = json!("completed");
    t["output"] = json!([{"type": {"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "resulting-activity"}]},
                          "valueReference": {"reference": format!("Procedure/{proc_id}")}}]);
    assert_eq!(app.put(&format!("Task/{task}"), &t).await.status(), 200);

    let b = app
        .get_json(&format!(
            "Task?_id={task}&_include=Task:focus&_include=Task:output&_include=Task:patient"
        ))
        .await;
    let mut included: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    included.sort();
    let mut expected = vec![
        format!("Patient/{patient}"),
        format!("Procedure/{proc_id}"),
        format!("ServiceRequest/{sr}"),
    ];
    expected.sort();
    assert_eq!(included, expected);
    assert_eq!(
        app.search_ids(&format!("Task?output=Procedure/{proc_id}"))
            .await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids(&format!(
            "Procedure?based-on=ServiceRequest/{sr}&status=completed"
        ))
        .await,
        [proc_id]
    );
}

#[tokio::test]
async fn last_updated_and_missing_owner() {
    let app = spawn_app().await;
    let (_, sr, task) = referral(&app).await;
    let stored = app.get_json(&format!("Task/{task}")).await;
    let lu = stored["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let enc = |s: &str| s.replace('+', "%2B").replace(':', "%3A");
    assert_eq!(
        app.search_ids(&format!("Task?_lastUpdated=ge{}", enc(&lu)))
            .await,
        vec![task.clone()]
    );
    assert!(
        app.search_ids(&format!("Task?_lastUpdated=gt{}", enc(&lu)))
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Task?_lastUpdated=gt2020-01-01").await,
        vec![task.clone()]
    );
    assert_eq!(
        app.search_ids("Task?_lastupdated=gt2020-01-01").await,
        vec![task.clone()],
        "IG example spelling"
    );
    assert!(
        app.search_ids("Task?_lastUpdated=lt2020-01-01")
            .await
            .is_empty()
    );

    // An unowned Task that a CBO could claim.
    let mut unowned = stored.clone();
    let m = unowned.as_object_mut().unwrap();
    m.remove("id");
    m.remove("owner");
    m["focus"] = json!({"reference": format!("ServiceRequest/{sr}")});
    let created = app.create(&unowned).await;
    let unowned_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.search_ids("Task?owner:missing=true").await,
        vec![unowned_id.clone()]
    );
    assert_eq!(app.search_ids("Task?owner:missing=false").await, [task]);
}

/// `patient` is `subject` when the subject is a Patient: answered from the same rows.
#[tokio::test]
async fn patient_is_the_subject_when_that_is_a_patient() {
    let app = spawn_app().await;
    let patient = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let condition = |subject: String| {
        json!({"resourceType": "Condition", "subject": {"reference": subject},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}})
    };
    let of_patient = app.create(&condition(format!("Patient/{patient}"))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let of_group = app.create(&condition("Group/g1".into())).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    for query in [
        format!("Condition?patient={patient}"),
        format!("Condition?patient=Patient/{patient}"),
        format!("Condition?subject=Patient/{patient}"),
        "Condition?patient:missing=false".into(),
    ] {
        assert_eq!(
            app.search_ids(&query).await,
            std::slice::from_ref(&of_patient),
            "{query}"
        );
    }
    assert_eq!(
        app.search_ids("Condition?subject=Group/g1").await,
        std::slice::from_ref(&of_group)
    );
    assert_eq!(
        app.search_ids("Condition?patient:missing=true").await,
        [of_group]
    );
    assert!(app.search_ids("Condition?patient=g1").await.is_empty());
    let wrong_type = app.get("Condition?patient=Group/g1").await;
    assert_eq!(wrong_type.status(), 400);
}

#[tokio::test]
async fn other_resource_searches() {
    let app = spawn_app().await;
    let (patient, sr, _) = referral(&app).await;
    assert_eq!(
        app.search_ids("Patient?name=riv").await,
        vec![patient.clone()]
    );
    assert_eq!(
        app.search_ids("Patient?name=LUCIA").await,
        vec![patient.clone()]
    );
    assert!(app.search_ids("Patient?name:exact=riv").await.is_empty());
    assert_eq!(
        app.search_ids("Patient?name:exact=Lucia").await,
        vec![patient.clone()],
        "name:exact matches a given name"
    );
    assert!(app.search_ids("Patient?family=LUCIA").await.is_empty());
    assert!(app.search_ids("Patient?name:missing=true").await.is_empty());
    assert_eq!(
        app.search_ids("Patient?birthdate=1984-03-12").await,
        vec![patient.clone()]
    );
    assert_eq!(
        app.search_ids("Patient?birthdate=1984").await,
        vec![patient.clone()]
    );
    assert!(
        app.search_ids("Patient?birthdate=gt1984-03-12")
            .await
            .is_empty()
    );
    assert_eq!(
        app.search_ids("Patient?identifier=http://hospital.example.org/mrn|MRN-10001")
            .await,
        vec![patient.clone()]
    );
    assert_eq!(
        app.search_ids("Patient?identifier=MRN-10001").await,
        vec![patient.clone()]
    );
    let cat = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes|food-insecurity";
    assert_eq!(
        app.search_ids(&format!(
            "ServiceRequest?category={cat}&patient={patient}&status=active"
        ))
        .await,
        vec![sr.clone()]
    );
    assert_eq!(
        app.search_ids("ServiceRequest?performer=Organization/cbo-riverside-food-bank")
            .await,
        vec![sr.clone()]
    );
    let hs = app
        .create(&json!({"resourceType": "HealthcareService", "providedBy": {"reference": "Organization/cbo-riverside-food-bank"},
            "category": [{"coding": [{"system": "http://example.org/cat", "code": "food"}]}]}))
        .await;
    assert_eq!(
        app.search_ids("HealthcareService?organization=Organization/cbo-riverside-food-bank&service-category=food").await,
        [hs["id"].as_str().unwrap()]
    );
    // Every type answers _id, _lastUpdated and identifier; the light CBO lists organisations.
    let orgs = app.search_ids("Organization").await;
    assert!(
        orgs.contains(&"cbo-riverside-food-bank".to_string()),
        "{orgs:?}"
    );
    assert_eq!(
        app.search_ids("Organization?identifier=http://hl7.org/fhir/sid/us-npi|1588667638")
            .await,
        ["hospital-st-mary"]
    );
}

#[tokio::test]
async fn post_search_takes_form_parameters() {
    let app = spawn_app().await;
    let (_, _, task) = referral(&app).await;
    let resp = app
        .client
        .post(app.url("Task/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("owner=Organization%2Fcbo-riverside-food-bank&status=requested")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(match_ids(&b), [task]);
}

/// Follows `next` links; returns every matched id in order.
async fn walk(app: &TestApp, first: &str, during: impl AsyncFn(usize)) -> Vec<String> {
    let mut ids = Vec::new();
    let mut url = app.url(first);
    let mut page = 0;
    loop {
        let b: Value = app
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.extend(match_ids(&b));
        during(page).await;
        page += 1;
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    ids
}

#[tokio::test]
async fn paging_stays_correct_while_data_changes() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..23 {
        let p = app.create(&json!({"resourceType": "Patient", "identifier": [{"system": "http://s", "value": format!("p{i}")}]})).await;
        created.push(p["id"].as_str().unwrap().to_string());
    }
    // While paging, new patients arrive: the original 23 are each seen exactly once, in order.
    let seen = walk(&app, "Patient?identifier=http://s|&_count=5", async |page| {
        if page < 3 {
            app.create(&json!({"resourceType": "Patient", "identifier": [{"system": "http://s", "value": format!("new{page}")}]}))
                .await;
        }
    })
    .await;
    let originals: Vec<&String> = seen.iter().filter(|id| created.contains(id)).collect();
    assert_eq!(originals, created.iter().collect::<Vec<_>>());
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no resource twice");
    assert_eq!(seen.len(), 26);

    let desc = walk(
        &app,
        "Patient?identifier=http://s|&_count=7&_sort=-_lastUpdated",
        async |_| {},
    )
    .await;
    assert_eq!(desc.len(), 26);
    assert_eq!(desc.last(), created.first());
}

#[tokio::test]
async fn bad_search_parameters_are_named() {
    let app = spawn_app().await;
    for (q, expression) in [
        ("Task?colour=red", "Task?colour"),
        ("Task?_lastUpdated=yesterday", "Task?_lastUpdated"),
        ("Task?_include=Task:nothing", "Task?_include"),
        ("Task?_sort=status", "Task?_sort"),
        (
            "Task?owner:Organization.name=x",
            "Task?owner:Organization.name",
        ),
    ] {
        let resp = app.get(q).await;
        assert_eq!(resp.status(), 400, "{q}");
        let oo: Value = resp.json().await.unwrap();
        assert_eq!(outcome_expressions(&oo), [expression], "{q}");
    }
    // Lenient handling ignores the unknown parameter and says so in the Bundle.
    let resp = app
        .client
        .get(app.url("Task?colour=red"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["entry"][0]["search"]["mode"], "outcome");
}

/// `Source:param:Target` returns only targets of that type; `_include:iterate` follows
/// references from what was included; a target the parameter cannot point to is a
/// 400 naming `_include`.
#[tokio::test]
async fn includes_with_a_target_type_and_iterated() {
    let app = spawn_app().await;
    let (patient, sr, task) = referral(&app).await;
    let included = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "include")
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    let b = app
        .get_json(&format!(
            "Task?_id={task}&_include=Task:focus:ServiceRequest&_include=Task:subject:Patient"
        ))
        .await;
    let mut want = vec![format!("Patient/{patient}"), format!("ServiceRequest/{sr}")];
    want.sort();
    assert_eq!(included(&b), want);
    // focus may point anywhere, but this Task's focus is no Patient.
    let b = app
        .get_json(&format!("Task?_id={task}&_include=Task:focus:Patient"))
        .await;
    assert!(included(&b).is_empty(), "{b}");
    // Task → ServiceRequest → its subject, in one search.
    let b = app
        .get_json(&format!(
            "Task?_id={task}&_include=Task:focus:ServiceRequest&_include:iterate=ServiceRequest:subject:Patient"
        ))
        .await;
    assert_eq!(included(&b), want);
    assert_eq!(match_ids(&b), std::slice::from_ref(&task));
    // Without :iterate the ServiceRequest's subject is not followed.
    let b = app
        .get_json(&format!(
            "Task?_id={task}&_include=Task:focus:ServiceRequest"
        ))
        .await;
    assert_eq!(included(&b), [format!("ServiceRequest/{sr}")]);

    for bad in [
        "Task:part-of:ServiceRequest",
        "Task:focus:Spaceship",
        "Task:patient:Group",
    ] {
        let resp = app.get(&format!("Task?_include={bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let oo: Value = resp.json().await.unwrap();
        assert_eq!(outcome_expressions(&oo), ["Task?_include"], "{bad}: {oo}");
        assert!(oo.to_string().contains("cannot point to"), "{oo}");
    }
}

/// `total` when it costs nothing (the first page holds every match), always with
/// `_total=accurate`, and alone with `_count=0`; never with `_total=none`.
#[tokio::test]
async fn searchsets_carry_their_total() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create(&json!({"resourceType": "Practitioner",
            "identifier": [{"system": "http://totals", "value": i.to_string()}]}))
            .await;
    }
    let q = "Practitioner?identifier=http://totals|";
    let b = app.get_json(q).await;
    assert_eq!((b["total"].as_u64(), match_ids(&b).len()), (Some(5), 5));
    // A page of a longer result: not counted unless asked.
    let b = app.get_json(&format!("{q}&_count=2")).await;
    assert!(b.get("total").is_none(), "{b}");
    let b = app.get_json(&format!("{q}&_count=2&_total=accurate")).await;
    assert_eq!((b["total"].as_u64(), match_ids(&b).len()), (Some(5), 2));
    // The next page keeps the parameter and the count.
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.contains("_total=accurate"), "{next}");
    let b2 = app.get_json_url(&next).await;
    assert_eq!((b2["total"].as_u64(), match_ids(&b2).len()), (Some(5), 2));
    let b = app.get_json(&format!("{q}&_count=0")).await;
    assert_eq!(b["total"].as_u64(), Some(5), "{b}");
    assert!(match_ids(&b).is_empty());
    assert!(
        !b["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "{b}"
    );
    let b = app.get_json(&format!("{q}&_total=estimate")).await;
    assert_eq!(b["total"].as_u64(), Some(5));
    let b = app.get_json(&format!("{q}&_total=none")).await;
    assert!(b.get("total").is_none(), "{b}");
    let b = app
        .get_json("Practitioner?identifier=http://totals|none-such&_total=accurate")
        .await;
    assert_eq!(b["total"].as_u64(), Some(0));
    let resp = app.get(&format!("{q}&_total=exact")).await;
    assert_eq!(resp.status(), 400);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(outcome_expressions(&oo), ["Practitioner?_total"]);
}
