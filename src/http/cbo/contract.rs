//! What the handlers' annotations do not say once each, added to the OpenAPI document
//! in one place: the guide, both security schemes and each operation's scope, the
//! answers every operation can give (401, 403, 429, 503; 404 with a path parameter;
//! 413 and 422 with a body; 422 with query parameters), links between operations, the
//! request bodies' text rules, and the webhook payload of every event type.

use serde_json::{Value, json};

use crate::cbo::webhooks::{EVENT_TYPES, TEST_EVENT_TYPE};
use crate::cbo::{CHECKED_BODIES, document_text_rules};

const GUIDE: &str = "\
Referrals addressed to a community organisation (CBO): list, read, act on and close them; \
the event feed and webhooks; the service catalogue.

**Credentials.** A CBO client (`crossway clients add cbo`) has a client id and secret. \
Exchange them at `POST /auth/token` (OAuth2 client credentials, `application/x-www-form-urlencoded`, \
HTTP Basic or `client_id`/`client_secret` in the form) for a one-hour bearer token, or use an \
API key as the bearer. Scopes: `referrals:read`, `referrals:write`, `webhooks:manage`, \
`directory:write`.

**What you see.** The referral is the minimum necessary for your organisation: members \
that visibility rules or the client's consent withhold are left out, so every member the \
schema marks optional may be absent. Unknown members must be ignored (additive changes \
only within v1).

**Writing.** Request bodies are JSON objects; a member sent as `null` counts as absent. \
Unknown members are refused (422, `errors[]` with a JSON pointer per problem). Every POST \
takes `Idempotency-Key` (a retry with the same key and body gets the first answer, \
`Idempotent-Replayed: true`); actions take `If-Match` with the ETag last read (412 when \
the referral changed since).

**Lifecycle.** pending → accepted → in_progress → closed; pending → declined; \
accepted | in_progress ↔ on_hold; any open referral → cancelled (by the referrer) or \
expired (no answer by `respond_by`). An action not allowed in the current status is a 409 \
naming `current_status` and `allowed_actions`.

**Events.** `GET /cbo/v1/events` is the ordered, gap-free feed (cursor = the last \
`sequence` seen); webhooks carry the same items, signed the Standard Webhooks way \
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once and in no \
guaranteed order: use `sequence` and `version`, and re-read the referral.

**Errors** are `application/problem+json` (RFC 9457); 429 and 503 carry `Retry-After`.";

/// The scope an operation needs (none: any CBO credential).
fn scope_of(method: &str, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/cbo/v1")?;
    if rest == "/me" || rest == "/openapi.json" {
        None
    } else if rest.starts_with("/webhooks") {
        Some("webhooks:manage")
    } else if rest.starts_with("/services") && method != "get" {
        Some("directory:write")
    } else if method == "get" {
        Some("referrals:read")
    } else {
        Some("referrals:write")
    }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}},
    })
}

fn retry_after(mut response: Value, description: &str) -> Value {
    response["headers"] = json!({"Retry-After": {
        "description": description,
        "required": true,
        "schema": {"type": "integer", "minimum": 0},
    }});
    response
}

/// Completes the document utoipa generated from the handlers.
pub fn complete(doc: &mut Value) {
    doc["info"]["title"] = "Crossway CBO API".into();
    doc["info"]["version"] = "1".into();
    doc["info"]["description"] = GUIDE.into();
    security_schemes(doc);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                operation(path, method, op);
            }
        }
    }
    parameter_schemas(doc);
    links(doc);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for name in CHECKED_BODIES {
            if let Some(schema) = schemas.get_mut(*name) {
                document_text_rules(schema);
            }
        }
        if let Some(s) = schemas.get_mut("EndpointInput") {
            s["additionalProperties"] = false.into(); // deny_unknown_fields
        }
        // Rules between members (`cbo::body`): a note with reason `other`; a wait band
        // only with `waitlist`.
        if let Some(s) = schemas.get_mut("DeclineRequest") {
            s["if"] = json!({"properties": {"reason": {"const": "other"}}});
            s["then"] = json!({"required": ["note"], "properties": {"note": {"type": "string"}}});
        }
        if let Some(s) = schemas.get_mut("CapacityInput") {
            s["if"] = json!({"properties": {"status": {"not": {"const": "waitlist"}}}});
            s["then"] = json!({"properties": {"wait_band": {"type": "null"}}});
        }
        if let Some(t) = schemas
            .get_mut("ProblemBody")
            .and_then(|p| p.pointer_mut("/properties/type"))
        {
            t["format"] = "uri".into();
        }
    }
    webhooks(doc);
}

fn security_schemes(doc: &mut Value) {
    let scopes = json!({
        "referrals:read": "List and read referrals, their events and the service catalogue",
        "referrals:write": "Act on referrals (accept, decline, start, hold, resume, close, notes) and report connector statuses",
        "webhooks:manage": "Register and manage webhook endpoints",
        "directory:write": "Change the organisation's service catalogue",
    });
    let components = doc
        .as_object_mut()
        .expect("an OpenAPI document is an object")
        .entry("components")
        .or_insert_with(|| json!({}));
    components["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from POST /auth/token, or an API key (live_… / test_…).",
        },
        "oauth2": {
            "type": "oauth2",
            "description": "OAuth2 client credentials: the CBO client's id and secret (HTTP Basic or form members) for a one-hour bearer token.",
            "flows": {"clientCredentials": {"tokenUrl": "/auth/token", "scopes": scopes}},
        },
    });
}

fn operation(path: &str, method: &str, op: &mut Value) {
    let Some(obj) = op.as_object_mut() else {
        return;
    };
    if !obj.contains_key("security") {
        return; // the document itself: open
    }
    let scope = scope_of(method, path);
    obj.insert(
        "security".into(),
        json!([{"bearer": []}, {"oauth2": scope.map_or_else(Vec::new, |s| vec![s])}]),
    );
    let params: Vec<&str> = obj
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("in").and_then(Value::as_str))
        .collect();
    let has_path = params.contains(&"path");
    let has_query = params.contains(&"query");
    let has_body = obj.contains_key("requestBody");
    let responses = obj
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let mut add = |code: &str, response: Value| {
        responses.entry(code).or_insert(response);
    };
    add(
        "401",
        problem("No credential, or one that is expired, revoked or unknown"),
    );
    add(
        "403",
        problem(match scope {
            Some(_) => {
                "The credential lacks the scope this operation needs, or is not a CBO credential"
            }
            None => "Not a CBO credential",
        }),
    );
    if has_path {
        add(
            "404",
            problem("Not found for this organisation (the detail names what)"),
        );
    }
    if path.starts_with("/cbo/v1/webhooks/{id}") && method != "get" {
        add(
            "409",
            problem("A connector's endpoint: managed by mappings/connectors/, not by this API"),
        );
    }
    if has_body {
        add(
            "413",
            problem("The body is larger than the gateway accepts"),
        );
    }
    if has_body || has_query {
        add(
            "422",
            problem(
                "The request is invalid (errors[] names each member or parameter and its rule)",
            ),
        );
    }
    add(
        "429",
        retry_after(
            problem("Too many requests"),
            "Seconds to wait before retrying",
        ),
    );
    add(
        "503",
        retry_after(
            problem("Temporarily unavailable (storage busy or unreachable)"),
            "Seconds to wait before retrying",
        ),
    );
}

/// The methods the document lists for the path template `path` matches (None: no
/// such path). `{x}` matches one non-empty segment.
pub fn methods_of(path: &str) -> Option<Vec<String>> {
    static PATHS: std::sync::OnceLock<Vec<(Vec<String>, Vec<String>)>> = std::sync::OnceLock::new();
    let paths = PATHS.get_or_init(|| {
        let doc: Value = serde_json::from_str(super::openapi_document()).unwrap_or_default();
        doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(template, item)| {
                let segments = template.split('/').map(str::to_string).collect();
                let mut methods: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, _)| m.to_ascii_uppercase())
                    .collect();
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".into());
                }
                (segments, methods)
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    paths.iter().find_map(|(template, methods)| {
        let matches = template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty()));
        matches.then(|| methods.clone())
    })
}

/// The exact rules of the query parameters (what `cbo::Cbo::list` and `events` check).
fn parameter_schemas(doc: &mut Value) {
    let statuses: Vec<&str> = crate::referral::CboStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let limit = json!({"type": "integer", "minimum": 1, "maximum": crate::cbo::MAX_LIMIT, "default": crate::cbo::DEFAULT_LIMIT});
    let rules = [
        (
            "/cbo/v1/referrals",
            "status",
            json!({"type": "string", "enum": statuses}),
        ),
        (
            "/cbo/v1/referrals",
            "urgency",
            json!({"type": "string", "enum": crate::referral::projection::URGENCIES}),
        ),
        (
            "/cbo/v1/referrals",
            "updated_since",
            json!({"type": "string", "format": "date-time"}),
        ),
        (
            "/cbo/v1/referrals",
            "cursor",
            json!({"type": "string", "pattern": crate::cbo::LIST_CURSOR_PATTERN}),
        ),
        ("/cbo/v1/referrals", "limit", limit.clone()),
        (
            "/cbo/v1/events",
            "cursor",
            json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        ),
        ("/cbo/v1/events", "limit", limit),
    ];
    for (path, name, schema) in rules {
        let pointer = format!("/paths/{}/get/parameters", path.replace('/', "~1"));
        let Some(params) = doc.pointer_mut(&pointer).and_then(Value::as_array_mut) else {
            continue;
        };
        for p in params.iter_mut().filter(|p| p["name"] == name) {
            p["schema"] = schema.clone();
        }
    }
    // `cbo::services::fhir_id`: a service id is 1-40 letters, digits or '-'.
    let service_id = json!({"type": "string", "pattern": "^[A-Za-z0-9-]{1,40}$"});
    for (path, item) in doc["paths"].as_object_mut().into_iter().flatten() {
        if !path.starts_with("/cbo/v1/services/{id}") {
            continue;
        }
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            for p in op["parameters"].as_array_mut().into_iter().flatten() {
                if p["name"] == "id" && p["in"] == "path" {
                    p["schema"] = service_id.clone();
                }
            }
        }
    }
}

/// OpenAPI links: where an operation's path parameter comes from, for clients and for
/// stateful testing.
fn links(doc: &mut Value) {
    let referral_ops = [
        "get_referral",
        "referral_events",
        "accept",
        "decline",
        "start",
        "hold",
        "resume",
        "close",
        "add_note",
    ];
    let endpoint_ops = ["read", "remove", "rotate", "test", "deliveries"];
    let link = |ops: &[&str], from: &str| -> Value {
        ops.iter()
            .map(|op| {
                (
                    (*op).to_string(),
                    json!({"operationId": op, "parameters": {"id": from}}),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    let set = |doc: &mut Value, pointer: &str, links: Value| {
        if let Some(response) = doc.pointer_mut(pointer) {
            response["links"] = links;
        }
    };
    set(
        doc,
        "/paths/~1cbo~1v1~1referrals/get/responses/200",
        link(&referral_ops, "$response.body#/data/0/id"),
    );
    for action in ["accept", "start", "hold", "resume"] {
        set(
            doc,
            &format!("/paths/~1cbo~1v1~1referrals~1{{id}}~1{action}/post/responses/200"),
            link(&referral_ops, "$response.body#/id"),
        );
    }
    set(
        doc,
        "/paths/~1cbo~1v1~1webhooks/post/responses/201",
        link(&endpoint_ops, "$response.body#/id"),
    );
    set(
        doc,
        "/paths/~1cbo~1v1~1webhooks/get/responses/200",
        link(&endpoint_ops, "$response.body#/data/0/id"),
    );
    set(
        doc,
        "/paths/~1cbo~1v1~1services/get/responses/200",
        link(
            &["get_service", "put_capacity"],
            "$response.body#/data/0/id",
        ),
    );
}

/// The `webhooks` section (OpenAPI 3.1): one entry per event type, each a `FeedEvent`
/// of that type, with the Standard Webhooks headers.
fn webhooks(doc: &mut Value) {
    let header = |name: &str, description: &str| json!({"name": name, "in": "header", "required": true, "description": description, "schema": {"type": "string"}});
    let mut all = serde_json::Map::new();
    for event_type in EVENT_TYPES.iter().chain([&TEST_EVENT_TYPE]) {
        let summary = match *event_type {
            "referral.created" => "A referral was addressed to the organisation",
            "referral.updated" => "The referrer changed the referral's details",
            "referral.status_changed" => "The referral's status changed",
            "referral.note_added" => "A note was added",
            "referral.cancelled" => "The referrer cancelled the referral",
            "referral.expired" => "Nobody answered by respond_by",
            "client.admitted" => "The client was admitted (HIE feed)",
            "client.discharged" => "The client was discharged (HIE feed)",
            "client.admission_cancelled" => "An admission was cancelled (HIE feed)",
            "client.discharge_cancelled" => "A discharge was cancelled (HIE feed)",
            "webhook.endpoint_disabled" => {
                "An endpoint of the organisation was disabled after failing too long"
            }
            _ => "A test event (POST /cbo/v1/webhooks/{id}/test); data.status is `test`",
        };
        all.insert(
            (*event_type).to_string(),
            json!({"post": {
                "summary": summary,
                "parameters": [
                    header("webhook-id", "The event id: stable across retries, to deduplicate"),
                    header("webhook-timestamp", "Unix seconds; reject if more than 5 minutes old"),
                    header("webhook-signature", "`v1,` + base64(HMAC-SHA256(secret, id.timestamp.body)), space-separated during a secret rotation"),
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"allOf": [
                    {"$ref": "#/components/schemas/FeedEvent"},
                    {"type": "object", "properties": {"type": {"const": event_type}}},
                ]}}}},
                "responses": {"2XX": {"description": "Received; anything else is retried with backoff for 72 hours"}},
            }}),
        );
    }
    doc["webhooks"] = all.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(crate::http::cbo::openapi_document()).unwrap()
    }

    #[test]
    fn every_secured_operation_documents_the_common_answers() {
        let doc = doc();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if op.get("security").is_none() {
                    continue;
                }
                seen += 1;
                for code in ["401", "403", "429", "503"] {
                    assert!(
                        op["responses"].get(code).is_some(),
                        "{method} {path} {code}"
                    );
                }
                assert!(
                    op["responses"]["429"]["headers"]
                        .get("Retry-After")
                        .is_some()
                );
                if op.get("requestBody").is_some() {
                    assert!(op["responses"].get("413").is_some(), "{method} {path}");
                    assert!(op["responses"].get("422").is_some(), "{method} {path}");
                }
            }
        }
        assert!(seen > 20, "{seen}");
    }

    #[test]
    fn schema_names_are_distinct_and_omittable_members_optional() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            doc.pointer("/components/schemas/Projection/properties/service/$ref")
                .and_then(Value::as_str),
            Some("#/components/schemas/RequestedService")
        );
        assert!(schemas.get("Service").is_some());
        let required = |name: &str| -> Vec<String> {
            schemas[name]["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        for path in crate::referral::projection::OMITTABLE {
            let (parent, member) = match path.rsplit_once('.') {
                Some(("need", m)) => ("Need", m),
                Some(("client", m)) => ("Client", m),
                Some(("referrer", m)) => ("Referrer", m),
                Some((p, _)) => panic!("unexpected parent {p}"),
                None => ("Projection", *path),
            };
            assert!(
                !required(parent).iter().any(|r| r == member),
                "{path} is required"
            );
        }
    }

    #[test]
    fn every_event_type_has_a_webhook_and_closed_sets_are_enums() {
        let doc = doc();
        for t in EVENT_TYPES.iter().chain([&TEST_EVENT_TYPE]) {
            assert!(doc["webhooks"].get(*t).is_some(), "{t}");
        }
        let enums = |pointer: &str| -> usize {
            doc.pointer(pointer)
                .and_then(|v| v.get("enum"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        };
        assert_eq!(
            enums("/components/schemas/DeclineRequest/properties/reason"),
            8
        );
        assert_eq!(
            enums("/components/schemas/CloseRequest/properties/outcome"),
            7
        );
        assert_eq!(enums("/components/schemas/Summary/properties/urgency"), 4);
        assert_eq!(
            doc.pointer("/components/securitySchemes/oauth2/flows/clientCredentials/tokenUrl"),
            Some(&json!("/auth/token"))
        );
        assert!(
            !doc["info"]["description"]
                .as_str()
                .unwrap()
                .contains("cbo-api.md")
        );
    }
}

/// The referral projection, rendered under every visibility rule of the shipped
/// `mappings/cbo/visibility.toml` (each rule alone, and each configured organisation's
/// rules together), with and without consent, validated against the `Projection`
/// schema of the published document. The validator is small and strict: it refuses a
/// schema keyword it does not implement, and a member the schema does not list, so
/// it cannot pass by ignoring something. A Rust test (rather than a Python one) runs
/// on every `cargo test` without the contract tools installed.
#[cfg(test)]
mod projection_contract {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use crate::referral::CboStatus;
    use crate::referral::projection::{OMITTABLE, Related, Summary, project};

    /// Every problem of `value` against `schema`, with JSON pointers.
    fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else {
            errors.push(format!("{at}: schema is not an object"));
            return;
        };
        for key in schema.keys() {
            let known = [
                "$ref",
                "type",
                "properties",
                "required",
                "items",
                "enum",
                "const",
                "oneOf",
                "anyOf",
                "allOf",
                "format",
                "minimum",
                "maximum",
                "description",
                "title",
                "examples",
                "example",
                "default",
                "additionalProperties",
            ];
            assert!(
                known.contains(&key.as_str()),
                "{at}: keyword {key} is not implemented"
            );
        }
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{at}: dangling {r}"));
            validate(doc, target, value, at, errors);
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let fits = types.iter().any(|t| match *t {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                "null" => value.is_null(),
                _ => false,
            });
            if !fits {
                errors.push(format!("{at}: {value} is not {types:?}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {options:?}"));
        }
        if let Some(c) = schema.get("const")
            && c != value
        {
            errors.push(format!("{at}: {value} is not {c}"));
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => {
                let ok = value.as_str().is_some_and(|s| {
                    s.contains('T') && crate::resource::datetime::parse_range(s).is_some()
                });
                if !ok {
                    errors.push(format!("{at}: {value} is not a date-time"));
                }
            }
            Some("int64" | "int32") | None => {}
            Some(f) => assert!(!value.is_string(), "{at}: format {f} is not implemented"),
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && value.as_f64().is_some_and(|v| v < min)
        {
            errors.push(format!("{at}: {value} < {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && value.as_f64().is_some_and(|v| v > max)
        {
            errors.push(format!("{at}: {value} > {max}"));
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                validate(doc, s, value, at, errors);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let fitting = options
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        validate(doc, s, value, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                if fitting == 0 || (key == "oneOf" && fitting > 1) {
                    errors.push(format!("{at}: {value} fits {fitting} of the {key} options"));
                }
            }
        }
        if let (Some(obj), Some(props)) = (
            value.as_object(),
            schema.get("properties").and_then(Value::as_object),
        ) {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !obj.contains_key(name) {
                    errors.push(format!("{at}/{name}: required but absent"));
                }
            }
            for (name, member) in obj {
                match props.get(name) {
                    Some(s) => validate(doc, s, member, &format!("{at}/{name}"), errors),
                    None => errors.push(format!("{at}/{name}: not in the schema")),
                }
            }
        }
        if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                validate(doc, schema, item, &format!("{at}/{i}"), errors);
            }
        }
    }

    /// A referral with every member the projection can show.
    fn full_referral(consent_status: &str) -> (Summary, Value, Related) {
        let summary = Summary {
            id: "r1".into(),
            version: 3,
            status: CboStatus::OnHold,
            urgency: "urgent".into(),
            created_at: "2025-03-14T16:02:11.000000Z".into(),
            updated_at: "2025-03-15T09:00:00.000000Z".into(),
            respond_by: Some("2025-03-18".into()),
            domain: Some("food-insecurity".into()),
            client_ref: Some("cli_7H2K9Q".into()),
        };
        let task = json!({"resourceType": "Task", "id": "t1",
            "focus": {"reference": "ServiceRequest/sr1"}, "for": {"reference": "Patient/p1"},
            "requester": {"reference": "PractitionerRole/pr1"},
            "owner": {"reference": "Organization/cbo-riverside-food-bank"},
            "statusReason": {"coding": [{"system": crate::referral::action::STATUS_REASON_SYSTEM, "code": "no_capacity"}], "text": "Waiting list"},
            "extension": [{"url": "https://crossway.dev/fhir/StructureDefinition/cbo-assignee", "valueString": "Dana"}],
            "note": [{"authorReference": {"reference": "Organization/cbo-riverside-food-bank"}, "time": "2025-03-15T09:00:00Z", "text": "Called"}]});
        let resources: HashMap<String, Value> = [
            ("ServiceRequest/sr1", json!({"resourceType": "ServiceRequest", "id": "sr1",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109", "display": "Food pantry"}]},
                "reasonReference": [{"reference": "Condition/c1"}],
                "supportingInfo": [{"reference": "Consent/k1"}],
                "note": [{"text": "Prefers calls after 3pm", "time": "2025-03-14T16:02:11Z"}]})),
            ("Condition/c1", json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "733423003", "display": "Food insecurity"}]}})),
            ("Consent/k1", json!({"resourceType": "Consent", "status": consent_status, "dateTime": "2025-03-14T15:55:00Z",
                "scope": {"coding": [{"code": "patient-privacy"}]}})),
            ("Patient/p1", json!({"resourceType": "Patient", "name": [{"use": "official", "given": ["Maria"], "family": "Rivera"}],
                "birthDate": "1968-04-12", "gender": "female",
                "communication": [{"language": {"coding": [{"code": "es"}]}, "preferred": true}],
                "telecom": [{"system": "phone", "value": "+12175550142", "rank": 1}, {"system": "email", "value": "m@example.org"}],
                "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "IL", "postalCode": "62701"}]})),
            ("PractitionerRole/pr1", json!({"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/pp1"},
                "organization": {"reference": "Organization/o1"}, "code": [{"text": "Care coordinator"}],
                "telecom": [{"system": "phone", "value": "+12175550100"}]})),
            ("Practitioner/pp1", json!({"resourceType": "Practitioner", "name": [{"given": ["Thao"], "family": "Nguyen"}]})),
            ("Organization/o1", json!({"resourceType": "Organization", "name": "Riverside Hospital"})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let related = Related {
            resources,
            versions: Vec::new(),
        };
        (summary, task, related)
    }

    /// (label, omitted paths): no rule, each rule of the shipped file alone, each
    /// configured organisation's rules, and every omittable path at once.
    fn rule_sets() -> Vec<(String, Vec<String>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("mappings/cbo/visibility.toml")).unwrap();
        let file: toml::Value = toml::from_str(&text).unwrap();
        let mut sets = vec![("no rule".to_string(), Vec::new())];
        let rules = file["rule"].as_array().unwrap();
        assert!(!rules.is_empty());
        for rule in rules {
            let omit = rule["omit"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            sets.push((format!("rule {}", rule["id"].as_str().unwrap()), omit));
        }
        let config: toml::Value =
            toml::from_str(&std::fs::read_to_string(root.join("config/default.toml")).unwrap())
                .unwrap();
        let orgs: Vec<String> = config["organization"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect();
        let mappings = crate::mapping::Mappings::load(&root.join("mappings"), &orgs).unwrap();
        for org in &orgs {
            sets.push((format!("organisation {org}"), mappings.omitted_for(org)));
        }
        sets.push((
            "everything omittable".into(),
            OMITTABLE.iter().map(|p| p.to_string()).collect(),
        ));
        sets
    }

    fn doc() -> Value {
        serde_json::from_str(crate::http::cbo::openapi_document()).unwrap()
    }

    #[test]
    fn every_visibility_rule_renders_a_view_the_published_schema_allows() {
        let doc = doc();
        let schema = json!({"$ref": "#/components/schemas/Projection"});
        let mut checked = 0;
        for (label, omit) in rule_sets() {
            for consent in ["active", "inactive"] {
                let (summary, task, related) = full_referral(consent);
                let view = project(&summary, &task, &related, &omit);
                let mut errors = Vec::new();
                validate(&doc, &schema, &view, "", &mut errors);
                assert!(errors.is_empty(), "{label}, consent {consent}: {errors:#?}");
                checked += 1;
            }
        }
        assert!(checked >= 12, "{checked}");
    }

    #[test]
    fn the_validator_refuses_what_the_schema_does_not_allow() {
        let doc = doc();
        let schema = json!({"$ref": "#/components/schemas/Projection"});
        let (summary, task, related) = full_referral("active");
        let full = project(&summary, &task, &related, &[]);
        // Everything present: that too must validate (the fixture is complete).
        let mut errors = Vec::new();
        validate(&doc, &schema, &full, "", &mut errors);
        assert!(errors.is_empty(), "{errors:#?}");
        for (what, broken) in [
            ("a required member removed", {
                let mut v = full.clone();
                v.as_object_mut().unwrap().remove("client");
                v
            }),
            ("an undocumented member", {
                let mut v = full.clone();
                v["client"]["mrn"] = json!("MRN-1");
                v
            }),
            ("a status outside the enum", {
                let mut v = full.clone();
                v["status"] = json!("on-hold");
                v
            }),
            ("a timestamp that is not a date-time", {
                let mut v = full.clone();
                v["updated_at"] = json!("yesterday");
                v
            }),
            ("a wrong type deep down", {
                let mut v = full.clone();
                v["need"]["conditions"][0]["code"] = json!(733423003);
                v
            }),
        ] {
            let mut errors = Vec::new();
            validate(&doc, &schema, &broken, "", &mut errors);
            assert!(!errors.is_empty(), "{what} passed");
        }
    }
}
