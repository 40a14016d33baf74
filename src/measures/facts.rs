//! The facts measures count, read from each resource as it is written (never from
//! resource JSON at evaluation time): a screen and its result, a referral or an SDOH
//! procedure of a domain, a CBO's first contact, a stay or an ED visit, a birth date.
//! Each names the Patient it is about; evaluation counts persons through the identity
//! index, so two Patient records of one person are one member.

use serde_json::Value;

use super::screening::{Reading, Screening};
use crate::referral::routing::{Domains, SDOH_DOMAINS, SDOHCC_CATEGORY_SYSTEM};
use crate::resource::datetime;

const LOINC: &str = "http://loinc.org";

pub use crate::store::{
    BORN, CONTACT, EMERGENCY, Fact, INPATIENT, POSITIVE, PROCEDURE, REFERRAL, REFERRAL_ACCEPTED,
    REFERRAL_ANSWERED, REFERRAL_CANCELLED, REFERRAL_CLOSED, REFERRAL_CREATED, REFERRAL_DECLINED,
    REFERRAL_EXPIRED, SCORE, SCREENED,
};

/// Facts a version of a resource holds, and whether they replace those of its earlier
/// versions (a Task's contact is kept once it happened: `false`).
pub fn of(
    ty: &str,
    id: &str,
    resource: &Value,
    screening: &Screening,
    domains: &Domains,
) -> (Vec<Fact>, bool) {
    let facts = match ty {
        "Observation" => observation(resource, screening),
        "QuestionnaireResponse" => questionnaire_response(resource, screening),
        "ServiceRequest" => service_request(resource, domains),
        "Procedure" => procedure(resource),
        "Encounter" => encounter(resource),
        "Patient" => patient(id, resource),
        // A Task's contact is recorded by the engine (it needs the focus's domain).
        _ => return (Vec::new(), false),
    };
    (facts, true)
}

/// A Task version that records a CBO's first contact: accepted or started (also
/// completed, which implies both), on `Task.lastModified` when stated, else `now`.
/// `domain` is its focus ServiceRequest's.
pub fn contact(task: &Value, domain: Option<&str>, now: i64) -> Option<Fact> {
    let status = task.get("status")?.as_str()?;
    if !matches!(status, "accepted" | "in-progress" | "completed") {
        return None;
    }
    let domain = domain.filter(|d| SDOH_DOMAINS.contains(d))?;
    Some(Fact {
        kind: CONTACT,
        domain: domain.to_string(),
        patient: patient_of(task, "for")?,
        at: task
            .get("lastModified")
            .and_then(Value::as_str)
            .and_then(instant)
            .unwrap_or(now),
        until: None,
        value: None,
        ..Default::default()
    })
}

/// The steps a Task version records for its referral (of `organization`, about
/// `domain`, made at `created_at`): kept once written, so each is its first time.
pub fn referral_steps(
    task: &Value,
    organization: &str,
    domain: Option<&str>,
    created_at: i64,
    now: i64,
) -> Vec<Fact> {
    use crate::referral::CboStatus;
    let Some(status) = CboStatus::of_task(task) else {
        return Vec::new();
    };
    let reason = task
        .pointer("/statusReason/coding/0/code")
        .and_then(Value::as_str)
        .or_else(|| task.pointer("/statusReason/text").and_then(Value::as_str))
        .map(str::to_string);
    let step = |kind: &'static str, at: i64, detail: Option<String>| Fact {
        kind,
        domain: domain.unwrap_or_default().to_string(),
        patient: patient_of(task, "for").unwrap_or_default(),
        at,
        organization: Some(organization.to_string()),
        detail,
        ..Default::default()
    };
    let mut out = vec![step(REFERRAL_CREATED, created_at, None)];
    let answered = |kind| (kind, now, None);
    let steps: Vec<(&'static str, i64, Option<String>)> = match status {
        CboStatus::Pending => Vec::new(),
        CboStatus::Accepted | CboStatus::InProgress | CboStatus::OnHold => {
            vec![answered(REFERRAL_ANSWERED), answered(REFERRAL_ACCEPTED)]
        }
        CboStatus::Declined => vec![
            answered(REFERRAL_ANSWERED),
            (REFERRAL_DECLINED, now, reason.clone()),
        ],
        CboStatus::Closed => vec![
            answered(REFERRAL_ANSWERED),
            answered(REFERRAL_ACCEPTED),
            (REFERRAL_CLOSED, now, reason.clone()),
        ],
        CboStatus::Cancelled => vec![(REFERRAL_CANCELLED, now, reason.clone())],
        CboStatus::Expired => vec![(REFERRAL_EXPIRED, now, None)],
    };
    out.extend(steps.into_iter().map(|(k, at, d)| step(k, at, d)));
    out
}

/// `Patient/{id}` that a reference element names, as a local id.
fn patient_of(resource: &Value, element: &str) -> Option<String> {
    let r = resource.get(element)?.get("reference")?.as_str()?;
    let rest = r.rsplit_once("Patient/").map(|(_, id)| id)?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

fn instant(s: &str) -> Option<i64> {
    datetime::parse_range(s).map(|r| r.lo)
}

/// `effective[x]` (dateTime, instant or Period start).
fn effective(resource: &Value) -> Option<i64> {
    ["effectiveDateTime", "effectiveInstant"]
        .iter()
        .find_map(|k| resource.get(*k).and_then(Value::as_str))
        .or_else(|| {
            resource
                .pointer("/effectivePeriod/start")
                .and_then(Value::as_str)
        })
        .and_then(instant)
}

fn void(resource: &Value) -> bool {
    matches!(
        resource.get("status").and_then(Value::as_str),
        Some("entered-in-error" | "cancelled" | "not-done" | "revoked" | "draft")
    )
}

fn codes<'v>(concept: Option<&'v Value>, system: &'v str) -> impl Iterator<Item = &'v str> {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |c| c.get("system").and_then(Value::as_str) == Some(system))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
}

fn any_code(concept: Option<&Value>) -> Option<&str> {
    concept?
        .get("coding")?
        .as_array()?
        .iter()
        .find_map(|c| c.get("code").and_then(Value::as_str))
}

/// Facts of one reading, merged into `out` (one screen per domain; scores summed).
fn record(out: &mut Vec<Fact>, reading: Reading, patient: &str, at: i64) {
    let (domain, positive, score) = match reading {
        Reading::Answer { domain, positive } => (domain, positive, None),
        Reading::Score { domain, score } => (domain, false, Some(score)),
    };
    let fact = |kind: &'static str, value: Option<i64>| Fact {
        kind,
        domain: domain.clone(),
        patient: patient.to_string(),
        at,
        value,
        ..Default::default()
    };
    if !out.iter().any(|f| f.kind == SCREENED && f.domain == domain) {
        out.push(fact(SCREENED, None));
    }
    if positive && !out.iter().any(|f| f.kind == POSITIVE && f.domain == domain) {
        out.push(fact(POSITIVE, None));
    }
    if let Some(score) = score {
        match out
            .iter_mut()
            .find(|f| f.kind == SCORE && f.domain == domain)
        {
            Some(f) => f.value = Some(f.value.unwrap_or(0) + score),
            None => out.push(fact(SCORE, Some(score))),
        }
    }
}

fn observation(o: &Value, screening: &Screening) -> Vec<Fact> {
    let mut out = Vec::new();
    let (Some(patient), Some(at)) = (patient_of(o, "subject"), effective(o)) else {
        return out;
    };
    if void(o) {
        return out;
    }
    let answer = any_code(o.get("valueCodeableConcept"));
    for code in codes(o.get("code"), LOINC) {
        if let Some(reading) = screening.read(code, answer) {
            record(&mut out, reading, &patient, at);
        }
    }
    out
}

fn questionnaire_response(qr: &Value, screening: &Screening) -> Vec<Fact> {
    let mut out = Vec::new();
    let (Some(patient), Some(at)) = (
        patient_of(qr, "subject"),
        qr.get("authored").and_then(Value::as_str).and_then(instant),
    ) else {
        return out;
    };
    if !matches!(
        qr.get("status").and_then(Value::as_str),
        Some("completed" | "amended")
    ) {
        return out;
    }
    let mut stack: Vec<&Value> = qr
        .get("item")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    while let Some(item) = stack.pop() {
        let code = item
            .get("linkId")
            .and_then(Value::as_str)
            .map(|l| l.trim_start_matches('/'))
            .filter(|l| screening.read(l, None).is_some())
            .or_else(|| {
                item.get("definition")
                    .and_then(Value::as_str)
                    .and_then(|d| d.rsplit(['/', '#']).next())
            });
        let answers: Vec<&Value> = item
            .get("answer")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        if let Some(code) = code {
            let answer = answers
                .iter()
                .find_map(|a| a.pointer("/valueCoding/code").and_then(Value::as_str));
            if !answers.is_empty()
                && let Some(reading) = screening.read(code, answer)
            {
                record(&mut out, reading, &patient, at);
            }
        }
        stack.extend(
            item.get("item")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
        for a in answers {
            stack.extend(
                a.get("item")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        }
    }
    out
}

fn service_request(sr: &Value, domains: &Domains) -> Vec<Fact> {
    let (Some(patient), Some(at)) = (
        patient_of(sr, "subject"),
        sr.get("authoredOn")
            .and_then(Value::as_str)
            .and_then(instant),
    ) else {
        return Vec::new();
    };
    match domains.of(sr) {
        Some(domain) if !void(sr) && SDOH_DOMAINS.contains(&domain.as_str()) => vec![Fact {
            kind: REFERRAL,
            domain,
            patient,
            at,
            until: None,
            value: None,
            ..Default::default()
        }],
        _ => Vec::new(),
    }
}

fn procedure(p: &Value) -> Vec<Fact> {
    let performed = p
        .get("performedDateTime")
        .and_then(Value::as_str)
        .or_else(|| p.pointer("/performedPeriod/start").and_then(Value::as_str))
        .and_then(instant);
    let (Some(patient), Some(at)) = (patient_of(p, "subject"), performed) else {
        return Vec::new();
    };
    if void(p) {
        return Vec::new();
    }
    let mut out: Vec<Fact> = Vec::new();
    let categories = p
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for category in categories {
        for domain in codes(Some(category), SDOHCC_CATEGORY_SYSTEM) {
            if SDOH_DOMAINS.contains(&domain) && !out.iter().any(|f| f.domain == domain) {
                out.push(Fact {
                    kind: PROCEDURE,
                    domain: domain.to_string(),
                    patient: patient.clone(),
                    at,
                    until: None,
                    value: None,
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn encounter(e: &Value) -> Vec<Fact> {
    let kind = match e.pointer("/class/code").and_then(Value::as_str) {
        Some("IMP" | "ACUTE" | "NONAC") => INPATIENT,
        Some("EMER") => EMERGENCY,
        _ => return Vec::new(),
    };
    let start = e
        .pointer("/period/start")
        .and_then(Value::as_str)
        .and_then(instant);
    let (Some(patient), Some(at)) = (patient_of(e, "subject"), start) else {
        return Vec::new();
    };
    if void(e) {
        return Vec::new();
    }
    let until = e
        .pointer("/period/end")
        .and_then(Value::as_str)
        .and_then(datetime::parse_range)
        .map(|r| r.hi);
    vec![Fact {
        kind,
        domain: String::new(),
        patient,
        at,
        until,
        value: None,
        ..Default::default()
    }]
}

fn patient(id: &str, p: &Value) -> Vec<Fact> {
    p.get("birthDate")
        .and_then(Value::as_str)
        .and_then(instant)
        .map(|at| Fact {
            kind: BORN,
            domain: String::new(),
            patient: id.to_string(),
            at,
            until: None,
            value: None,
            ..Default::default()
        })
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn screening() -> Screening {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/mappings/measures/screening.toml"
        ))
        .unwrap();
        Screening::build(toml::from_str(&text).unwrap()).unwrap()
    }

    fn obs(code: &str, answer: &str, when: &str) -> Value {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer}]}})
    }

    #[test]
    fn a_screen_counts_on_its_effective_date_and_its_answer_decides_positive() {
        let s = screening();
        let d = Domains::default();
        let (facts, replace) = of(
            "Observation",
            "o1",
            &obs("88122-7", "LA6729-3", "2026-03-04"),
            &s,
            &d,
        );
        assert!(replace);
        let kinds: Vec<(&str, &str)> = facts.iter().map(|f| (f.kind, f.domain.as_str())).collect();
        assert_eq!(
            kinds,
            [(SCREENED, "food-insecurity"), (POSITIVE, "food-insecurity")]
        );
        assert_eq!(facts[0].at, instant("2026-03-04").unwrap());
        assert_eq!(facts[0].patient, "p1");
        let (facts, _) = of(
            "Observation",
            "o2",
            &obs("88122-7", "LA28398-8", "2026-03-04"),
            &s,
            &d,
        );
        assert_eq!(facts.len(), 1, "never true is a negative screen");
        let mut no_date = obs("93030-5", "LA33-6", "2026-03-04");
        no_date.as_object_mut().unwrap().remove("effectiveDateTime");
        assert!(
            of("Observation", "o3", &no_date, &s, &d).0.is_empty(),
            "no screening date, no screen"
        );
        let mut voided = obs("93030-5", "LA33-6", "2026-03-04");
        voided["status"] = json!("entered-in-error");
        assert!(of("Observation", "o4", &voided, &s, &d).0.is_empty());
    }

    #[test]
    fn a_questionnaire_response_scores_the_safety_items_together() {
        let s = screening();
        let item = |code: &str, answer: &str| {
            json!({"linkId": format!("/{code}"),
            "answer": [{"valueCoding": {"system": LOINC, "code": answer}}]})
        };
        let qr = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
            "subject": {"reference": "Patient/p2"}, "authored": "2026-05-01T10:00:00Z",
            "item": [{"linkId": "panel", "item": [
                item("95618-5", "LA16644-9"), item("95617-7", "LA10082-8"),
                item("95616-9", "LA10066-1"), item("95615-1", "LA6482-9"),
                item("71802-3", "LA31995-6")]}]});
        let (facts, _) = of("QuestionnaireResponse", "q", &qr, &s, &Domains::default());
        let score = facts.iter().find(|f| f.kind == SCORE).unwrap();
        assert_eq!(
            (score.domain.as_str(), score.value),
            ("intimate-partner-violence", Some(4 + 3 + 2 + 5))
        );
        assert!(
            facts
                .iter()
                .any(|f| f.kind == POSITIVE && f.domain == "housing-instability")
        );
        assert_eq!(s.threshold("intimate-partner-violence"), Some(10));
    }

    #[test]
    fn stays_referrals_procedures_and_contacts_carry_their_own_dates() {
        let inpatient = json!({"resourceType": "Encounter", "status": "finished",
            "class": {"code": "IMP"}, "subject": {"reference": "Patient/p3"},
            "period": {"start": "2026-01-10T08:00:00Z", "end": "2026-01-12"}});
        let (facts, _) = of(
            "Encounter",
            "e",
            &inpatient,
            &screening(),
            &Domains::default(),
        );
        assert_eq!(facts[0].kind, INPATIENT);
        assert_eq!(facts[0].until, Some(instant("2026-01-13").unwrap()));
        let procedure = json!({"resourceType": "Procedure", "status": "completed",
            "category": [{"coding": [{"system": SDOHCC_CATEGORY_SYSTEM, "code": "food-insecurity"}]}],
            "subject": {"reference": "Patient/p3"}, "performedDateTime": "2026-02-01"});
        assert_eq!(
            of(
                "Procedure",
                "pr",
                &procedure,
                &screening(),
                &Domains::default()
            )
            .0[0]
                .kind,
            PROCEDURE
        );
        let task = json!({"status": "accepted", "for": {"reference": "Patient/p3"},
            "lastModified": "2026-02-03T00:00:00Z"});
        let c = contact(&task, Some("food-insecurity"), 0).unwrap();
        assert_eq!(
            (c.kind, c.at),
            (CONTACT, instant("2026-02-03T00:00:00Z").unwrap())
        );
        assert!(
            contact(
                &json!({"status": "requested", "for": {"reference": "Patient/p3"}}),
                Some("food-insecurity"),
                0
            )
            .is_none()
        );
        assert!(
            !of("Task", "t", &task, &screening(), &Domains::default()).1,
            "contacts are kept"
        );
        assert!(
            !of("Consent", "c", &task, &screening(), &Domains::default()).1,
            "no facts, nothing to replace"
        );
    }
}
