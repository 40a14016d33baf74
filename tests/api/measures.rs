//! Outcome measures (`/fhir/Measure/{id}/$evaluate-measure`) on a small population
//! whose every rate is known: persons with screenings, referrals, CBO contacts,
//! procedures and inpatient stays at chosen dates, one of them with two Patient
//! records. Each rate is checked exactly, on both stores.

use serde_json::{Value, json};

use crate::helpers::*;

const LOINC: &str = "http://loinc.org";
const MRN: &str = "http://hospital.example.org/mrn";
const SDOHCC: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

fn patient(mrn: &str, born: &str) -> Value {
    json!({"resourceType": "Patient",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": MRN, "value": mrn}],
        "name": [{"family": "Measure", "given": [mrn]}], "birthDate": born})
}

fn screen(patient: &str, item: &str, answer: &str, date: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
        "code": {"coding": [{"system": LOINC, "code": item}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": date,
        "valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer}]}})
}

fn stay(patient: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": start, "end": end}})
}

async fn id_of(app: &TestApp, body: Value) -> String {
    app.create(&body).await["id"].as_str().unwrap().to_string()
}

/// A referral (the fixture's Patient, Consent, Condition, ServiceRequest and Task) for a
/// person with `mrn`, its ServiceRequest authored on `authored`; (Patient id, Task id).
async fn referral(app: &TestApp, mrn: &str, authored: &str) -> (String, String) {
    let mut bundle = referral_bundle();
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = json!(mrn);
    bundle["entry"][3]["resource"]["authoredOn"] = json!(authored);
    let r = app.post("", &bundle).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    (entry_id(&body, 0), entry_id(&body, 4))
}

/// The CBO accepts the Task on `date` (as the Task's `lastModified` says).
async fn accept(app: &TestApp, task: &str, date: &str) {
    let mut t = app.get_json(&format!("Task/{task}")).await;
    t["status"] = json!("accepted");
    t["lastModified"] = json!(date);
    let r = app.put(&format!("Task/{task}"), &t).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn evaluate(app: &TestApp, measure: &str, query: &str) -> Value {
    let r = app
        .get(&format!("Measure/{measure}/$evaluate-measure?{query}"))
        .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "MeasureReport");
    assert_eq!(body["type"], "summary");
    body
}

/// (rate code, denominator, numerator) of every group.
fn rates(report: &Value) -> Vec<(String, u64, u64)> {
    report["group"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let count = |code: &str| {
                g["population"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["code"]["coding"][0]["code"] == code)
                    .and_then(|p| p["count"].as_u64())
                    .unwrap()
            };
            (
                g["code"]["coding"][0]["code"].as_str().unwrap().to_string(),
                count("denominator"),
                count("numerator"),
            )
        })
        .collect()
}

fn r(code: &str, d: u64, n: u64) -> (String, u64, u64) {
    (code.to_string(), d, n)
}

#[tokio::test]
async fn every_rate_counts_persons_exactly() {
    let app = spawn_app().await;
    // P1: two Patient records (same MRN). A food-positive screen on one, a housing
    // screen on the other; a food referral 9 days later, accepted by the CBO 19 days
    // after the screen.
    let (a1, task1) = referral(&app, "MRN-M1", "2026-03-10T10:00:00Z").await;
    let a2 = id_of(&app, patient("MRN-M1", "1984-03-12")).await;
    id_of(&app, screen(&a2, "88122-7", "LA28397-0", "2026-03-01")).await;
    id_of(&app, screen(&a1, "71802-3", "LA31993-1", "2026-03-01")).await;
    accept(&app, &task1, "2026-03-20T09:00:00Z").await;
    // P2: food negative, transportation positive; nothing follows.
    let p2 = id_of(&app, patient("MRN-M2", "1990-01-01")).await;
    id_of(&app, screen(&p2, "88122-7", "LA28398-8", "2026-04-01")).await;
    id_of(&app, screen(&p2, "93030-5", "LA33-6", "2026-05-01")).await;
    // P3: food positive too late in the period for the 30-day window.
    let p3 = id_of(&app, patient("MRN-M3", "1975-05-05")).await;
    id_of(&app, screen(&p3, "88123-5", "LA6729-3", "2026-12-15")).await;
    // P4: food positive; an SDOH procedure 42 days later (outside 30).
    let p4 = id_of(&app, patient("MRN-M4", "1966-06-06")).await;
    id_of(&app, screen(&p4, "88122-7", "LA6729-3", "2026-02-01")).await;
    id_of(
        &app,
        json!({"resourceType": "Procedure", "status": "completed",
        "category": [{"coding": [{"system": SDOHCC, "code": "food-insecurity"}]}],
        "code": {"text": "Food pantry enrollment"},
        "subject": {"reference": format!("Patient/{p4}")}, "performedDateTime": "2026-03-15"}),
    )
    .await;
    // P5: an adult inpatient screened for all five domains during the stay (one
    // QuestionnaireResponse): food positive, safety total 12 (> 10), the rest negative.
    let p5 = id_of(&app, patient("MRN-M5", "1970-07-07")).await;
    id_of(&app, stay(&p5, "2026-06-01T08:00:00Z", "2026-06-05")).await;
    let item = |code: &str, answer: &str| {
        json!({"linkId": code,
        "answer": [{"valueCoding": {"system": LOINC, "code": answer}}]})
    };
    id_of(
        &app,
        json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "subject": {"reference": format!("Patient/{p5}")}, "authored": "2026-06-02T12:00:00Z",
        "item": [item("88122-7", "LA28397-0"), item("71802-3", "LA31993-1"),
            item("93030-5", "LA32-8"), item("96779-4", "LA32-8"),
            item("95618-5", "LA16644-9"), item("95617-7", "LA10082-8"),
            item("95616-9", "LA10066-1"), item("95615-1", "LA10082-8")]}),
    )
    .await;
    // P6: an adult inpatient screened for food only.
    let p6 = id_of(&app, patient("MRN-M6", "1960-01-01")).await;
    id_of(&app, stay(&p6, "2026-07-01T08:00:00Z", "2026-07-03")).await;
    id_of(&app, screen(&p6, "88122-7", "LA28398-8", "2026-07-02")).await;
    // A transportation screen entered in error, then voided: it no longer counts.
    let voided = id_of(&app, screen(&p6, "93030-5", "LA33-6", "2026-07-02")).await;
    let mut v = app.get_json(&format!("Observation/{voided}")).await;
    v["status"] = json!("entered-in-error");
    assert_eq!(
        app.put(&format!("Observation/{voided}"), &v).await.status(),
        200
    );
    // P7: a child's stay.
    let p7 = id_of(&app, patient("MRN-M7", "2015-01-01")).await;
    id_of(&app, stay(&p7, "2026-08-01T08:00:00Z", "2026-08-02")).await;

    let year = "periodStart=2026-01-01&periodEnd=2026-12-31";
    // Seven persons had activity in the year (P1 once, with two Patient records).
    assert_eq!(
        rates(&evaluate(&app, "sns-e", year).await),
        [
            r("food-screening", 7, 6),
            r("food-intervention", 3, 1),
            r("housing-screening", 7, 2),
            r("housing-intervention", 0, 0),
            r("transportation-screening", 7, 2),
            r("transportation-intervention", 1, 0),
        ]
    );
    assert_eq!(
        rates(&evaluate(&app, "mips-498", year).await),
        [r("contact", 4, 1)]
    );
    assert_eq!(
        rates(&evaluate(&app, "sdoh-1", year).await),
        [r("screening", 2, 1)]
    );
    assert_eq!(
        rates(&evaluate(&app, "sdoh-2", year).await),
        [
            r("food", 1, 1),
            r("housing", 1, 0),
            r("transportation", 1, 0),
            r("utilities", 1, 0),
            r("safety", 1, 1),
        ]
    );
    let report = evaluate(&app, "sns-e", year).await;
    assert_eq!(
        report["group"][0]["measureScore"]["value"]
            .as_f64()
            .unwrap(),
        6.0 / 7.0
    );
    assert!(
        report["group"][3].get("measureScore").is_none(),
        "no denominator, no score"
    );

    // A payer's attributed members: P1 (named by the Patient without the screen) and P2.
    let group = id_of(
        &app,
        json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{a1}")}},
                   {"entity": {"reference": format!("Patient/{p2}")}}]}),
    )
    .await;
    let subject = format!("{year}&subject=Group/{group}");
    let sns = rates(&evaluate(&app, "sns-e", &subject).await);
    assert_eq!(sns[0], r("food-screening", 2, 2));
    assert_eq!(sns[1], r("food-intervention", 1, 1));
    assert_eq!(
        rates(&evaluate(&app, "mips-498", &subject).await),
        [r("contact", 2, 1)]
    );
    let with_subject = evaluate(&app, "mips-498", &subject).await;
    assert_eq!(
        with_subject["subject"]["reference"],
        format!("Group/{group}")
    );

    // A period watched mid-year, ending in the future; a period without activity.
    evaluate(&app, "sns-e", "periodStart=2026-01-01&periodEnd=2099-12-31").await;
    let empty =
        rates(&evaluate(&app, "sns-e", "periodStart=2020-01-01&periodEnd=2020-12-31").await);
    assert!(
        empty.iter().all(|(_, d, n)| *d == 0 && *n == 0),
        "{empty:?}"
    );
}

/// The five domains of SDOH-1 answered in one QuestionnaireResponse on `authored`:
/// food positive, safety total 12 (> 10), the rest negative.
fn five_domains(patient: &str, authored: &str) -> Value {
    let item = |code: &str, answer: &str| {
        json!({"linkId": code,
        "answer": [{"valueCoding": {"system": LOINC, "code": answer}}]})
    };
    json!({"resourceType": "QuestionnaireResponse", "status": "completed",
    "subject": {"reference": format!("Patient/{patient}")}, "authored": authored,
    "item": [item("88122-7", "LA28397-0"), item("71802-3", "LA31993-1"),
        item("93030-5", "LA32-8"), item("96779-4", "LA32-8"),
        item("95618-5", "LA16644-9"), item("95617-7", "LA10082-8"),
        item("95616-9", "LA10066-1"), item("95615-1", "LA10082-8")]})
}

/// Facts are counted by the person their Patient belongs to now: two persons merged
/// after their facts were recorded are one member (a stay on one record and the
/// screens during it on the other count together), a fact recorded after the merge on
/// the retired record is the survivor's, and undoing the merge separates them again.
#[tokio::test]
async fn a_merge_after_facts_counts_the_person_once() {
    let app = spawn_app().await;
    let a = id_of(&app, patient("MRN-MG1", "1970-07-07")).await;
    let b = id_of(&app, patient("MRN-MG2", "1970-07-07")).await;
    id_of(&app, screen(&a, "88122-7", "LA28398-8", "2026-03-01")).await;
    id_of(&app, stay(&a, "2026-06-01T08:00:00Z", "2026-06-05")).await;
    id_of(&app, screen(&b, "88122-7", "LA28397-0", "2026-04-01")).await;
    id_of(&app, five_domains(&b, "2026-06-02T12:00:00Z")).await;
    let year = "periodStart=2026-01-01&periodEnd=2026-12-31";
    let two_persons = [
        r("food-screening", 2, 2),
        r("food-intervention", 1, 0),
        r("housing-screening", 2, 1),
        r("housing-intervention", 0, 0),
        r("transportation-screening", 2, 1),
        r("transportation-intervention", 0, 0),
    ];
    assert_eq!(rates(&evaluate(&app, "sns-e", year).await), two_persons);
    assert_eq!(
        rates(&evaluate(&app, "sdoh-1", year).await),
        [r("screening", 1, 0)]
    );

    let merge = adt("A40", "mg-1", &mrn("MRN-MG1"), "") + &format!("MRG|{}\n", mrn("MRN-MG2"));
    assert_eq!(ack_code(&app.send_hl7(&merge).await), "AA");
    assert_eq!(
        rates(&evaluate(&app, "sns-e", year).await),
        [
            r("food-screening", 1, 1),
            r("food-intervention", 1, 0),
            r("housing-screening", 1, 1),
            r("housing-intervention", 0, 0),
            r("transportation-screening", 1, 1),
            r("transportation-intervention", 0, 0),
        ]
    );
    assert_eq!(
        rates(&evaluate(&app, "sdoh-1", year).await),
        [r("screening", 1, 1)]
    );
    assert_eq!(
        rates(&evaluate(&app, "sdoh-2", year).await),
        [
            r("food", 1, 1),
            r("housing", 1, 0),
            r("transportation", 1, 0),
            r("utilities", 1, 0),
            r("safety", 1, 1),
        ]
    );
    // Recorded on the retired record after the merge: the survivor's.
    id_of(&app, screen(&b, "88122-7", "LA28397-0", "2026-02-01")).await;
    assert_eq!(
        rates(&evaluate(&app, "sns-e", year).await)[0],
        r("food-screening", 1, 1)
    );
    assert_eq!(
        rates(&evaluate(&app, "mips-498", year).await),
        [r("contact", 1, 0)]
    );

    let out = app.operator(&[
        "identity",
        "unmerge",
        "http://hospital.example.org/mrn|MRN-MG2",
    ]);
    assert!(out.contains("Applied"), "{out}");
    assert_eq!(rates(&evaluate(&app, "sns-e", year).await), two_persons);
    assert_eq!(
        rates(&evaluate(&app, "sdoh-1", year).await),
        [r("screening", 1, 0)]
    );
}

#[tokio::test]
async fn measures_are_listed_and_bad_requests_name_the_parameter() {
    let app = spawn_app().await;
    let list = app.get_json("Measure").await;
    let ids: Vec<&str> = list["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sns-e", "mips-498", "sdoh-1", "sdoh-2"]);
    assert_eq!(
        app.get_json("Measure/sdoh-2").await["group"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    for (query, element) in [
        ("periodStart=2026-01-01", "periodStart"),
        ("periodStart=yesterday&periodEnd=2026-12-31", "periodStart"),
        ("periodStart=2026-12-31&periodEnd=2026-01-01", "periodEnd"),
        (
            "periodStart=2026-01-01&periodEnd=2026-12-31&subject=Patient/x",
            "subject",
        ),
        (
            "periodStart=2026-01-01&periodEnd=2026-12-31&colour=red",
            "colour",
        ),
    ] {
        let r = app
            .get(&format!("Measure/sns-e/$evaluate-measure?{query}"))
            .await;
        assert_eq!(r.status(), 400, "{query}");
        let outcome: Value = r.json().await.unwrap();
        assert_eq!(
            outcome["issue"][0]["expression"][0], element,
            "{query}: {outcome}"
        );
    }
    let r = app
        .get("Measure/nope/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-12-31")
        .await;
    assert_eq!(r.status(), 404);
    // Read on Measure is what it takes; a token without it is refused.
    let client = app.add_ehr(&["--scope", "system/Task.rs"]);
    let token = app.ehr_token(&client, None).await;
    let r = bearer(&token)
        .get(app.url("Measure/sns-e/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-12-31"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
