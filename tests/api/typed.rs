//! An independent typed check (issue 31): every kind of resource the gateway itself
//! writes — the transaction-response, Task updates, the Procedure and enrollment
//! Observation of a closed referral, searchset/history/batch-response Bundles,
//! OperationOutcomes, the CapabilityStatement, a MeasureReport, Subscription
//! notifications — deserializes with fhir-sdk's models, and does so losslessly: a
//! serde round trip through the model gives back every element the gateway wrote.
//!
//! fhir-sdk 0.16 has no R4 (4.0.1) model, only R4B (4.3.0). No element the gateway
//! writes needed translating: what it writes is in the R4/R4B common ground (R4B's
//! Task, Procedure, Observation, Bundle, OperationOutcome, CapabilityStatement
//! (`fhirVersion` "4.0.1" is an R4B code too), MeasureReport, Parameters and the R4
//! Subscription, which R4B keeps; the backport's notifications are R4 `history` Bundles
//! with a Parameters status, not R4B's `subscription-notification`/SubscriptionStatus).
//! Should an R4-only element ever appear, translate it before the check with a comment
//! saying which and why; never excuse a failure wholesale.
//!
//! The only allowances are representational, not R4B ones: numbers are compared as
//! numbers (the model holds decimals as f64) and instants as instants (see [`lost`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::HttpResponse;
use fhir_sdk::r4b::resources::Resource;
use serde::de::value::{Error as DeError, MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_id, spawn_app_with, stub_server};

const ORG: &str = "cbo-riverside-food-bank";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
const TASK_TOPIC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task";

/// Feeds a `serde_json::Value` to a model with numbers as plain numbers.
///
/// Not an R4B matter but one of our build: the crate enables serde_json's
/// `arbitrary_precision`, under which serde_json hands a number to `deserialize_any` as
/// a private one-entry map. fhir-sdk's models go through `deserialize_any` wherever serde
/// buffers (the `resourceType`-tagged `Resource` enum, the flattened `value[x]` choice
/// types), so every number there — `Bundle.total`, `Quantity.value`,
/// `MeasureReport.group.population.count` — would fail as "invalid type: map". This
/// deserializer is the plain JSON data model; it accepts and refuses exactly what
/// `serde_json` without that feature would.
struct Plain(Value);

impl<'de> de::Deserializer<'de> for Plain {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::custom(format!("number out of range: {n}")))
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Array(a) => visitor.visit_seq(SeqDeserializer::new(a.into_iter().map(Plain))),
            Value::Object(o) => visitor.visit_map(MapDeserializer::new(
                o.into_iter().map(|(k, v)| (k, Plain(v))),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(Plain(v)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Object(o) if o.len() == 1 => visitor.visit_enum(MapAccessDeserializer::new(
                MapDeserializer::new(o.into_iter().map(|(k, v)| (k, Plain(v)))),
            )),
            other => Err(de::Error::custom(format!(
                "expected an enum, found {other}"
            ))),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Plain {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn model<T: DeserializeOwned>(json: &Value) -> Result<T, DeError> {
    T::deserialize(Plain(json.clone()))
}

/// Elements of `written` the round trip lost or changed, as paths (`Task.output[0]…`).
fn lost(path: &str, written: &Value, back: Option<&Value>, out: &mut Vec<String>) {
    match (written, back) {
        (Value::Object(w), Some(Value::Object(b))) => {
            for (k, v) in w {
                lost(&format!("{path}.{k}"), v, b.get(k), out);
            }
        }
        (Value::Array(w), Some(Value::Array(b))) => {
            for (i, v) in w.iter().enumerate() {
                lost(&format!("{path}[{i}]"), v, b.get(i), out);
            }
        }
        // Decimals go through f64 in the model (and our JSON keeps their text).
        (Value::Number(w), Some(Value::Number(b))) if w.as_f64() == b.as_f64() => {}
        (w, Some(b)) if w == b => {}
        // The model keeps instants as `time::OffsetDateTime` and writes the shortest
        // RFC 3339 form back ("…00.000000Z" → "…00Z", ".479020Z" → ".47902Z"): the same
        // instant, not a loss.
        (Value::String(w), Some(Value::String(b))) if same_instant(w, b) => {}
        (w, b) => out.push(format!("{path}: wrote {w}, model gave {b:?}")),
    }
}

fn same_instant(a: &str, b: &str) -> bool {
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    match (
        OffsetDateTime::parse(a, &Rfc3339),
        OffsetDateTime::parse(b, &Rfc3339),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The typed check of one resource the gateway wrote: it deserializes as a FHIR R4B
/// resource of its `resourceType`, and serializing that back loses nothing.
fn check(what: &str, json: &Value) -> Result<(), String> {
    let ty = json["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let typed: Resource = model(json).map_err(|e| format!("{what} ({ty}): {e}"))?;
    let back = serde_json::to_value(&typed).unwrap();
    if back["resourceType"] != ty.as_str() {
        return Err(format!(
            "{what}: read as {}, not {ty}",
            back["resourceType"]
        ));
    }
    let mut diffs = Vec::new();
    lost(&ty, json, Some(&back), &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: the R4B model does not carry\n  {}",
            diffs.join("\n  ")
        ))
    }
}

#[track_caller]
fn typed(what: &str, written: &Value) {
    if let Err(e) = check(what, written) {
        panic!("{e}\nwritten: {written:#}");
    }
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = probe() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Makes a written resource malformed in one known element.
type Spoil = fn(&mut Value);

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn everything_the_gateway_writes_deserializes_with_fhir_sdk_r4b_models() {
    // A rest-hook subscriber, to receive the notification Bundles the gateway writes.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let (hook, _server) = stub_server(move |_, body| {
        g.lock()
            .unwrap()
            .push(serde_json::from_slice(body).unwrap_or(Value::Null));
        HttpResponse::Ok().finish()
    });
    let app: TestApp = spawn_app_with(&[
        ("CROSSWAY_ALLOW_INSECURE_WEBHOOKS", "1"),
        ("CROSSWAY_WEBHOOK_RETRY_SCALE", "0.001"),
    ])
    .await;

    // /fhir/metadata.
    typed("CapabilityStatement", &app.get_json("metadata").await);

    let subscription = json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription")]},
        "status": "requested",
        "reason": "Follow referrals to Riverside",
        "criteria": TASK_TOPIC,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}/backport-filter-criteria"),
            "valueString": format!("Task?owner=Organization/{ORG}")}]},
        "channel": {
            "extension": [{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": 3600}],
            "type": "rest-hook",
            "endpoint": format!("{hook}/notify"),
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "full-resource"}]},
        },
    });
    let created = app.create(&subscription).await;
    typed("created Subscription", &created);
    let sub_id = created["id"].as_str().unwrap().to_string();

    // The referral transaction and its transaction-response Bundle.
    let response = app.post_referral().await;
    assert_eq!(response["type"], "transaction-response");
    typed("transaction-response Bundle", &response);
    let task_id = entry_id(&response, 4);

    // The CBO's actions: Task updates, then a Procedure and an enrollment Observation.
    let cbo = app.cbo(ORG);
    let id = cbo.referral_ids().await.last().unwrap().clone();
    let accepted = cbo
        .post(
            &format!("referrals/{id}/accept"),
            &json!({"assignee": "Ana", "note": "We will call today."}),
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    typed(
        "accepted Task",
        &app.get_json(&format!("Task/{task_id}")).await,
    );
    assert_eq!(
        cbo.post(&format!("referrals/{id}/start"), &json!({}))
            .await
            .status,
        200
    );
    let closed = cbo
        .post(
            &format!("referrals/{id}/close"),
            &json!({"outcome": "resolved",
                    "services_provided": [{"system": "http://snomed.info/sct", "code": "467771000124109", "date": "2026-11-23"}],
                    "enrollment": {"program": "Weekly pantry", "status": "enrolled"},
                    "note": "Enrolled; first pickup Thursday.", "external_case_id": "APRICOT-55123"}),
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let task = app.get_json(&format!("Task/{task_id}")).await;
    assert_eq!(task["status"], "completed");
    typed("completed Task", &task);
    let outputs: Vec<String> = task["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["valueReference"]["reference"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        outputs[0].starts_with("Procedure/") && outputs[1].starts_with("Observation/"),
        "{outputs:?}"
    );
    typed("Procedure", &app.get_json(&outputs[0]).await);
    typed("enrollment Observation", &app.get_json(&outputs[1]).await);

    // Bundles: history, searchset with _include, batch-response.
    typed(
        "history Bundle",
        &app.get_json(&format!("Task/{task_id}/_history")).await,
    );
    let searchset = app
        .get_json(&format!("Task?_id={task_id}&_include=Task:output"))
        .await;
    assert_eq!(searchset["entry"].as_array().unwrap().len(), 3);
    typed("searchset Bundle", &searchset);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "ServiceRequest", "status": "active"}, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"request": {"method": "GET", "url": "Organization/cbo-metro-rides"}},
        {"request": {"method": "GET", "url": "Patient?gender=female"}}
    ]});
    let (status, batch_response) = status_and_json(app.post("", &batch).await).await;
    assert_eq!(status, 200);
    assert_eq!(batch_response["type"], "batch-response");
    assert_eq!(batch_response["entry"][1]["response"]["status"], "400");
    typed("batch-response Bundle", &batch_response);

    // OperationOutcomes of refused requests: a 422 update, a 404 read.
    let mut bad = task.clone();
    bad["status"] = json!("requested");
    let (status, oo) = status_and_json(app.put(&format!("Task/{task_id}"), &bad).await).await;
    assert_eq!(status, 422, "{oo}");
    typed("422 OperationOutcome", &oo);
    let (status, oo) = status_and_json(app.get("Task/no-such-task").await).await;
    assert_eq!(status, 404, "{oo}");
    typed("404 OperationOutcome", &oo);

    // $evaluate-measure's MeasureReport.
    let report = app
        .get_json("Measure/sns-e/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-12-31")
        .await;
    assert_eq!(report["resourceType"], "MeasureReport");
    typed("MeasureReport", &report);

    // Subscription notifications (handshake, event notifications) and $status.
    let notifications = eventually("an event notification", || {
        let got = got.lock().unwrap();
        let events = got
            .iter()
            .filter(|b| b.to_string().contains("event-notification"))
            .count();
        (events > 0).then(|| got.clone())
    })
    .await;
    for (i, bundle) in notifications.iter().enumerate() {
        typed(&format!("notification Bundle #{i}"), bundle);
    }
    typed(
        "$status Bundle",
        &app.get_json(&format!("Subscription/{sub_id}/$status"))
            .await,
    );

    // The check is not a rubber stamp: what the gateway wrote, made malformed in a known
    // element, is refused — a wrong type, a code outside a required binding, a primitive
    // in place of a complex type, an element R4B does not have.
    let wrong: [(&str, Spoil); 5] = [
        ("Task.authoredOn as a number", |t| {
            t["authoredOn"] = json!(20261123)
        }),
        ("Task.status outside its codes", |t| {
            t["status"] = json!("finished")
        }),
        ("Task.for as a string", |t| t["for"] = json!("Patient/1")),
        ("Task.output.valueReference as a string", |t| {
            t["output"][0]["valueReference"] = json!("Procedure/1")
        }),
        ("Task.outcome (not an element)", |t| {
            t["outcome"] = json!("resolved")
        }),
    ];
    for (what, spoil) in wrong {
        let mut t = task.clone();
        spoil(&mut t);
        assert!(check(what, &t).is_err(), "{what} passed the typed check");
    }
    let mut report = report.clone();
    report["group"][0]["population"][0]["count"] = json!("3");
    assert!(
        check("MeasureReport count as a string", &report).is_err(),
        "a string count passed the typed check"
    );
}
