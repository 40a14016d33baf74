//! Credentials, scopes, who may change a Task, tenant isolation, rate limits, the audit
//! trail, and hostile tokens and headers.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::*;

const ORG: &str = "cbo-riverside-food-bank";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn assertion_form(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".into()),
        ("client_assertion_type", JWT_BEARER.into()),
        ("client_assertion", assertion.to_string()),
    ]
}

async fn token_with(app: &TestApp, assertion: &str) -> (u16, Value) {
    let form = assertion_form(assertion);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.token_request(&form).await
}

fn refused(result: &(u16, Value), why: &str) {
    assert_eq!(result.0, 401, "{why}: {}", result.1);
    assert_eq!(result.1["error"], "invalid_client", "{why}: {}", result.1);
}

#[tokio::test]
async fn smart_client_assertions_are_checked_claim_by_claim() {
    let app = spawn_app().await;
    let me = app.ehr.clone();
    let aud = app.token_url();
    let now = jsonwebtoken::get_current_timestamp();

    let good = sign_assertion(&me, &aud, json!({}));
    let (status, body) = token_with(&app, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "system/*.cruds");
    refused(&token_with(&app, &good).await, "replayed jti");

    let cases = [
        (json!({"exp": now - 120}), "expired"),
        (
            json!({"aud": "https://elsewhere.example/token"}),
            "wrong audience",
        ),
        (json!({"exp": now + 3600}), "exp more than 5 minutes ahead"),
        (json!({"sub": "someone-else"}), "sub is not the client"),
        (json!({"jti": null}), "no jti"),
        (
            json!({"iss": "ehr-unknown", "sub": "ehr-unknown"}),
            "unknown client",
        ),
    ];
    for (claims, why) in cases {
        refused(
            &token_with(&app, &sign_assertion(&me, &aud, claims)).await,
            why,
        );
    }

    // Signed by a key the client never registered, under the registered kid.
    let (stranger_pem, _, _) = new_ehr_key();
    let stranger = EhrClient {
        key_pem: stranger_pem,
        ..me.clone()
    };
    refused(
        &token_with(&app, &sign_assertion(&stranger, &aud, json!({}))).await,
        "unknown key",
    );

    // alg=none, and HS256 keyed with the client's public key (algorithm confusion).
    let payload = json!({"iss": me.client_id, "sub": me.client_id, "aud": aud,
        "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    refused(&token_with(&app, &none).await, "alg none");
    let public = crossway::auth::keys::public_jwk(&me.key_pem)
        .unwrap()
        .to_string();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(me.kid.clone());
    let hs = jsonwebtoken::encode(
        &header,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    refused(&token_with(&app, &hs).await, "HS256 with the public key");

    // Grant type and request shape.
    let (status, body) = app.token_request(&[("grant_type", "password")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = app.token_request(&[("scope", "system/*.rs")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // A revoked client's tokens stop working within seconds.
    let token = app.ehr_token(&me, None).await;
    assert_eq!(
        bearer(&token)
            .get(app.url("Task"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.operator(&["clients", "revoke", &me.client_id]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = bearer(&token).get(app.url("Task")).send().await.unwrap();
    assert_eq!(after.status(), 401);
    assert!(
        after.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}

#[tokio::test]
async fn every_fhir_interaction_checks_its_scope() {
    let app = spawn_app().await;
    app.post_referral().await;
    let narrow = app.add_ehr(&[
        "--scope",
        "system/Task.rs system/Patient.r system/Encounter.read",
    ]);
    let client = bearer(&app.ehr_token(&narrow, None).await);
    let status = |r: reqwest::Response| r.status().as_u16();

    assert_eq!(
        status(client.get(app.url("Task")).send().await.unwrap()),
        200
    );
    assert_eq!(
        status(client.get(app.url("Encounter")).send().await.unwrap()),
        200
    );
    assert_eq!(
        status(client.get(app.url("Patient/none")).send().await.unwrap()),
        404
    );
    let denied = client
        .post(app.url("Task"))
        .header("content-type", FHIR_JSON)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let oo: Value = denied.json().await.unwrap();
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("system/Task.c")
    );
    assert_eq!(
        status(client.get(app.url("Patient")).send().await.unwrap()),
        403,
        "search needs s"
    );
    assert_eq!(
        status(client.get(app.url("ServiceRequest")).send().await.unwrap()),
        403
    );
    assert_eq!(
        status(
            client
                .get(app.url("Task?_include=Task:focus"))
                .send()
                .await
                .unwrap()
        ),
        403,
        "an include of any type needs a wildcard read"
    );
    let transaction = client
        .post(app.url(""))
        .header("content-type", FHIR_JSON)
        .body(referral_bundle().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(transaction.status(), 403, "every Bundle entry is checked");

    // A token may ask for less than the registration allows, never more.
    let (status, body) = app
        .ehr_token_request(&narrow, Some("system/Task.r system/Consent.cruds"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "system/Task.r");
    let (status, body) = app
        .ehr_token_request(&narrow, Some("system/Consent.cruds"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // What a SMART client library asks for beyond its registration is left out or cut
    // down, not a refusal (RFC 6749 §3.3); the answer says what was granted.
    let (status, body) = app
        .ehr_token_request(
            &narrow,
            Some("launch/patient openid fhirUser system/Task.rs system/*.cruds"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["scope"],
        "system/Task.rs system/Patient.r system/Encounter.rs"
    );
    let granted = bearer(body["access_token"].as_str().unwrap());
    assert_eq!(
        granted.get(app.url("Task")).send().await.unwrap().status(),
        200
    );
    let denied = granted
        .post(app.url("Task"))
        .header("content-type", FHIR_JSON)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403, "the wildcard was not granted");
    let (status, body) = app
        .ehr_token_request(&narrow, Some("launch/patient openid"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // A least-privilege token includes the targets it may read, named by type.
    let reader = app.add_ehr(&["--scope", "system/Task.rs system/ServiceRequest.r"]);
    let reader = bearer(&app.ehr_token(&reader, None).await);
    let resp = reader
        .get(app.url("Task?_include=Task:focus:ServiceRequest"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert!(
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["search"]["mode"] == "include"
                && e["resource"]["resourceType"] == "ServiceRequest"),
        "{b}"
    );
    let resp = reader
        .get(app.url("Task?_include=Task:subject:Patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "no read on Patient");
}

/// Conditional update needs update and search on the type, and an organisation-bound
/// client meets the same write rules as in an update by id.
#[tokio::test]
async fn conditional_update_checks_scope_and_write_rules() {
    let app = spawn_app().await;
    let bundle = app.post_referral().await;
    let task_id = entry_id(&bundle, 4);
    let mut task = app.get_json(&format!("Task/{task_id}")).await;
    task["identifier"] = json!([{"system": "http://ehr/tasks", "value": "T-1"}]);
    assert_eq!(
        app.put(&format!("Task/{task_id}"), &task).await.status(),
        200
    );
    let url = app.url("Task?identifier=http://ehr/tasks|T-1");
    let put = |client: reqwest::Client, body: Value| {
        let url = url.clone();
        async move {
            client
                .put(url)
                .header("content-type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let no_search = app.add_ehr(&["--scope", "system/Task.ru"]);
    let no_search = bearer(&app.ehr_token(&no_search, None).await);
    let r = put(no_search, task.clone()).await;
    assert_eq!(r.status(), 403);

    let owner = bearer(
        &app.ehr_token(
            &app.add_ehr(&["--org", &format!("Organization/{ORG}")]),
            None,
        )
        .await,
    );
    let mut reprioritised = task.clone();
    reprioritised["priority"] = json!("stat");
    let r = put(owner.clone(), reprioritised).await;
    assert_eq!(r.status(), 403);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "Task.priority", "{oo}");
    let mut accepted = task.clone();
    accepted["status"] = json!("accepted");
    let r = put(owner, accepted).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json(&format!("Task/{task_id}")).await["status"],
        "accepted"
    );
}

#[tokio::test]
async fn a_task_owner_may_change_only_status_output_and_notes() {
    let app = spawn_app().await;
    let bundle = app.post_referral().await;
    let task_id = entry_id(&bundle, 4);
    let task = app.get_json(&format!("Task/{task_id}")).await;
    let put = |client: reqwest::Client, body: Value| {
        let url = app.url(&format!("Task/{task_id}"));
        async move {
            client
                .put(url)
                .header("content-type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let owner = bearer(
        &app.ehr_token(
            &app.add_ehr(&["--org", &format!("Organization/{ORG}")]),
            None,
        )
        .await,
    );
    let stranger = bearer(
        &app.ehr_token(
            &app.add_ehr(&["--org", "Organization/cbo-metro-rides"]),
            None,
        )
        .await,
    );
    let requester = bearer(
        &app.ehr_token(
            &app.add_ehr(&["--org", "Organization/hospital-st-mary"]),
            None,
        )
        .await,
    );

    let mut reprioritised = task.clone();
    reprioritised["priority"] = json!("stat");
    let r = put(owner.clone(), reprioritised.clone()).await;
    assert_eq!(r.status(), 403);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "Task.priority", "{oo}");

    let r = put(stranger, reprioritised.clone()).await;
    assert_eq!(r.status(), 403);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "Task", "{oo}");

    let mut accepted = task.clone();
    accepted["status"] = json!("accepted");
    accepted["note"] = json!([{"text": "We will call on Monday"}]);
    let r = put(owner.clone(), accepted.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut rewritten = accepted.clone();
    rewritten["note"] = json!([{"text": "something else"}]);
    rewritten.as_object_mut().unwrap().remove("meta");
    let r = put(owner, rewritten).await;
    assert_eq!(r.status(), 403, "notes may be added, not rewritten");

    let mut by_requester = app.get_json(&format!("Task/{task_id}")).await;
    by_requester["priority"] = json!("urgent");
    let r = put(requester, by_requester).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn cbo_secrets_and_api_keys_rotate_and_are_scoped() {
    let app = spawn_app().await;
    let (id, secret) = app.add_cbo_client(ORG, None);
    let (status, body) = app.cbo_secret_token(&id, "cs_wrong").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = app.cbo_secret_token(&id, &secret).await;
    assert_eq!(status, 200, "{body}");

    let key = |extra: &[&str]| -> Value {
        let mut args = vec!["clients", "api-key", id.as_str(), "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&app.operator(&args)).unwrap()
    };
    let me = |api_key: String| {
        let url = format!("http://{}/cbo/v1/me", app.addr);
        async move {
            bearer(&api_key)
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let first = key(&[]);
    let second = key(&["--scope", "referrals:read"]);
    let first_key = first["api_key"].as_str().unwrap().to_string();
    assert!(first_key.starts_with("test_"));
    assert_eq!(me(first_key.clone()).await, 200);
    assert_eq!(
        me(second["api_key"].as_str().unwrap().to_string()).await,
        200
    );
    let (ok, _, err) = app.try_operator(&["clients", "api-key", &id, "--json"]);
    assert!(!ok && err.contains("2 active"), "{err}");

    app.operator(&["clients", "revoke", first["key_id"].as_str().unwrap()]);
    assert_eq!(me(first_key).await, 401);
    let third = key(&[]);
    assert_eq!(
        me(third["api_key"].as_str().unwrap().to_string()).await,
        200
    );

    // A read-only key cannot act; a live_ key is refused by a development gateway.
    let (referral_id, _) = {
        app.post_referral().await;
        let list = app.cbo(ORG).get("referrals").await;
        (list.body["data"][0]["id"].as_str().unwrap().to_string(), ())
    };
    let accept = bearer(second["api_key"].as_str().unwrap())
        .post(format!(
            "http://{}/cbo/v1/referrals/{referral_id}/accept",
            app.addr
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(accept.status(), 403);
    let (_, _, _) = app.try_operator(&["clients", "revoke", second["key_id"].as_str().unwrap()]);
    let live = key(&["--live"]);
    assert_eq!(me(live["api_key"].as_str().unwrap().to_string()).await, 401);
}

#[tokio::test]
async fn another_organisation_gets_404_on_every_referral_route() {
    let app = spawn_app().await;
    app.post_referral().await;
    let mine = app.cbo(ORG).get("referrals").await;
    let id = mine.body["data"][0]["id"].as_str().unwrap().to_string();
    let other = app.cbo("cbo-harbor-housing");

    // Every route of the published API that names a referral.
    let doc = other.get("openapi.json").await.body;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/cbo/v1/referrals/{id}") {
            continue;
        }
        let concrete = path.trim_start_matches("/cbo/v1/").replace("{id}", &id);
        for method in item.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => other.get(&concrete).await,
                "post" => {
                    other
                        .post(&concrete, &json!({"text": "x", "reason": "other"}))
                        .await
                }
                "put" => other.put(&concrete, &json!({})).await,
                m => panic!("unexpected method {m} on {path}"),
            };
            assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} referral routes found");
    assert!(other.referral_ids().await.is_empty());
    assert!(other.event_types(0).await.is_empty());
    // And the owner still sees it unchanged.
    assert_eq!(
        app.cbo(ORG).get(&format!("referrals/{id}")).await.body["status"],
        "pending"
    );
}

#[tokio::test]
async fn registering_a_cbo_makes_referrals_already_addressed_to_it_visible() {
    let app = spawn_app().await;
    app.create(
        &json!({"resourceType": "Organization", "name": "New Pantry",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.4", "value": "55-555"}]}),
    )
    .await;
    let mut bundle = referral_bundle();
    bundle["entry"][4]["resource"]["owner"] =
        json!({"identifier": {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "55-555"}});
    let resp = app.post("", &bundle).await;
    assert_eq!(resp.status(), 200);

    let out: Value = serde_json::from_str(&app.operator(&[
        "clients",
        "add",
        "cbo",
        "--org",
        "urn:oid:2.16.840.1.113883.4.4|55-555",
        "--json",
    ]))
    .unwrap();
    let org = out["organization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Organization/")
        .to_string();
    let cbo = app.cbo(&org);
    let mut ids = Vec::new();
    // The gateway looks for new tenants every 500 ms; a loaded two-core CI machine
    // running the fault tests beside this one can take seconds more.
    for _ in 0..200 {
        ids = cbo.referral_ids().await;
        if !ids.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tenant_log: Vec<String> = app
        .logs
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("tenant") || l.contains("adopt"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the existing referral was adopted: {tenant_log:#?}"
    );
    assert_eq!(
        cbo.get("me").await.body["organization"]["name"],
        "New Pantry"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let app = spawn_app_with(&[("CROSSWAY_RATE_LIMIT", "5")]).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let r = app.get("Task").await;
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
            let oo: Value = r.json().await.unwrap();
            assert_eq!(oo["issue"][0]["code"], "throttled");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(retry_after.unwrap(), "1");
    // Another client has its own budget.
    let cbo = app.cbo(ORG).get("me").await;
    assert!(cbo.status == 200 || cbo.status == 429);
}

#[tokio::test]
async fn reads_and_refusals_are_audited_and_the_trail_is_append_only() {
    let app = spawn_app().await;
    let bundle = app.post_referral().await;
    let task_id = entry_id(&bundle, 4);
    app.get_json(&format!("Task/{task_id}")).await;
    let anonymous = reqwest::Client::new()
        .get(app.url(&format!("Task/{task_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let mut events = Vec::new();
    for _ in 0..50 {
        let trail = app
            .audit_json(&format!(
                "AuditEvent?agent={}&_count=100",
                app.ehr.client_id
            ))
            .await;
        events = trail["entry"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["resource"]["action"] == "R") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = events
        .iter()
        .map(|e| &e["resource"])
        .find(|r| {
            r["action"] == "R"
                && r["entity"][0]["what"]["display"] == format!("/fhir/Task/{task_id}")
        })
        .unwrap_or_else(|| panic!("no audit record of the read: {events:?}"));
    assert_eq!(read["outcome"], "0");
    assert_eq!(
        read["agent"][0]["who"]["identifier"]["value"],
        app.ehr.client_id.as_str()
    );
    assert!(
        events.iter().any(|e| e["resource"]["action"] == "E"),
        "the transaction"
    );
    let mut refused = Value::Null;
    for _ in 0..50 {
        refused = app.audit_json("AuditEvent?agent=anonymous").await;
        if refused["entry"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes: Vec<&Value> = refused["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"]["outcome"])
        .collect();
    assert!(outcomes.iter().any(|o| *o == "4"), "{refused}");

    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .unwrap();
    for statement in [
        "UPDATE audit_events SET outcome = 200",
        "DELETE FROM audit_events",
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut db)
            .await;
        assert!(e.is_err(), "{statement} must be refused");
    }
}

#[tokio::test]
async fn hostile_tokens_and_headers_never_cause_a_500() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let app = spawn_app().await;
    let plain = reqwest::Client::new();
    let mut runner = TestRunner::deterministic();
    let token = proptest::string::string_regex("[ -~]{0,60}").unwrap();
    let segment = || proptest::string::string_regex("[A-Za-z0-9_-]{0,40}").unwrap();
    let jwtish = (segment(), segment(), segment()).prop_map(|(a, b, c)| format!("{a}.{b}.{c}"));
    let header_of = |s: &str| {
        [
            format!("Bearer {s}"),
            format!("bearer  {s}"),
            format!("Basic {s}"),
            s.to_string(),
            format!("Bearer live_{s}"),
            format!("Bearer test_k{s}_{s}"),
        ]
    };
    let good = sign_assertion(&app.ehr, &app.token_url(), json!({}));
    let mut sent = 0;
    for _ in 0..40 {
        let t = token.new_tree(&mut runner).unwrap().current();
        let j = jwtish.new_tree(&mut runner).unwrap().current();
        // A real assertion with one character changed.
        let mut bytes = good.clone().into_bytes();
        let at = (t.len() * 7) % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        for value in header_of(&t).iter().chain(header_of(&j).iter()) {
            for path in ["/fhir/Task", "/cbo/v1/me", "/fhir/AuditEvent"] {
                let r = plain
                    .get(format!("http://{}{path}", app.addr))
                    .header("authorization", value)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().as_u16() < 500,
                    "{path} with {value:?}: {}",
                    r.status()
                );
                assert!(
                    r.status() == 401 || r.status() == 403,
                    "{path} with {value:?}: {}",
                    r.status()
                );
                sent += 1;
            }
        }
        for assertion in [&t, &j, &tampered] {
            let (status, body) = token_with(&app, assertion).await;
            assert!(
                (400..500).contains(&status),
                "{assertion:?}: {status} {body}"
            );
            sent += 1;
        }
    }
    assert!(sent > 1000);
}

#[tokio::test]
async fn https_is_served_with_hsts_when_a_certificate_is_configured() {
    let dir = std::env::temp_dir().join(format!("cw-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let app = spawn_app_with(&[
        ("CROSSWAY_TLS_CERT", cert.to_str().unwrap()),
        ("CROSSWAY_TLS_KEY", key.to_str().unwrap()),
    ])
    .await;
    let port = app.addr.rsplit(':').next().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let protected = client
        .get(format!("https://localhost:{port}/fhir/Task"))
        .send()
        .await
        .unwrap();
    assert_eq!(protected.status(), 401);
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP is not served"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// An EHR registered with a JWKS URL: the gateway fetches the keys over HTTPS (rustls,
/// trusting the system roots, here a test CA through SSL_CERT_FILE) and caches them.
#[tokio::test]
async fn keys_are_fetched_from_a_jwks_url() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let dir = std::env::temp_dir().join(format!("cw-jwks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, generated.cert.pem()).unwrap();
    let (key_pem, kid, jwks) = new_ehr_key();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![generated.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let server = HttpServer::new(move || {
        let (jwks, counter) = (jwks.clone(), counter.clone());
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = jwks.to_string();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .bind_rustls_0_23("127.0.0.1:0", tls)
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);

    let app = spawn_app_with(&[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;
    let url = format!("https://localhost:{port}/jwks.json");
    let out: Value = serde_json::from_str(&app.operator(&[
        "clients",
        "add",
        "ehr",
        "--jwks-url",
        &url,
        "--json",
    ]))
    .unwrap();
    let client = EhrClient {
        client_id: out["client_id"].as_str().unwrap().to_string(),
        key_pem,
        kid,
    };
    let token = app.ehr_token(&client, None).await;
    assert_eq!(
        bearer(&token)
            .get(app.url("Task"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.ehr_token(&client, None).await;
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the key set is cached"
    );
    let (http_url, plain) = (
        format!("http://localhost:{port}/jwks.json"),
        app.try_operator(&[
            "clients",
            "add",
            "ehr",
            "--jwks-url",
            "http://localhost/jwks.json",
            "--json",
        ]),
    );
    assert!(
        !plain.0 && plain.2.contains("https"),
        "{http_url}: {}",
        plain.2
    );
    handle.stop(false).await;
    std::fs::remove_dir_all(dir).unwrap();
}
