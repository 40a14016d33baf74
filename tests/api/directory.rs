//! The community resource directory (issue 35): Open Referral's own HSDS 3.0 examples
//! (tests/fixtures/hsds, see its SOURCES.md) go in through `crossway directory import`
//! and come back through `/hsds/` equal, as JSON, to the examples.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

const HSDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hsds/examples");
const SERVICE: &str = "ac148810-d857-441c-9679-408f346de14b";
const ORGANIZATION: &str = "d9d5e0f5-d3ce-4f73-9a2f-4dd0ecc6c610";
const SERVICE_AT_LOCATION: &str = "e94c9f38-1e8f-4564-91d4-d53501ab1765";
const TAXONOMY: &str = "5c4d79d7-cc55-470e-9f1f-8cad074e4892";
const TAXONOMY_TERM: &str = "3f7b145d-84af-42d7-8fae-eaca714b02b2";

/// (example, pointers only it has, (parent pointer, field) only the CSV import has).
type Disagreement = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// Where the CSV package and the JSON examples disagree upstream (SOURCES.md, "What
/// the examples disagree on"): per example, the JSON Pointers of what only the example
/// has, and the fields only the CSV package has.
const CSV_VS_JSON: &[Disagreement] = &[
    (
        "service_full.json",
        &[
            "/attributes",
            "/metadata",
            "/organization/contacts",
            "/organization/locations",
            "/service_at_locations/0/contacts",
        ],
        &[("/organization", "tax_id")],
    ),
    (
        "organization_full.json",
        &[
            "/additional_websites",
            "/contacts",
            "/locations",
            "/services/0/additional_urls",
            "/services/0/attributes",
            "/services/0/metadata",
            "/services/0/service_at_locations/0/contacts",
        ],
        &[("", "tax_id")],
    ),
    (
        "service_at_location_full.json",
        &[
            "/contacts",
            "/service/attributes",
            "/service/metadata",
            "/service/organization/contacts",
            "/service/organization/locations",
        ],
        &[("/service/organization", "tax_id")],
    ),
    (
        "taxonomy_term.json",
        &["/taxonomy_detail"],
        &[("", "taxonomy_id")],
    ),
    ("taxonomy.json", &[], &[]),
];

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{HSDS}/{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The path of an example's entity on `/hsds/`.
fn path_of(name: &str) -> String {
    match name {
        "service_full.json" => format!("/hsds/services/{SERVICE}"),
        "organization_full.json" => format!("/hsds/organizations/{ORGANIZATION}"),
        "service_at_location_full.json" => {
            format!("/hsds/service_at_locations/{SERVICE_AT_LOCATION}")
        }
        "taxonomy.json" => format!("/hsds/taxonomies/{TAXONOMY}"),
        "taxonomy_term.json" => format!("/hsds/taxonomy_terms/{TAXONOMY_TERM}"),
        other => panic!("no path for {other}"),
    }
}

async fn hsds(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(format!("http://{}{path}", app.addr))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The import report's totals line: (taken, updated, unchanged, refused).
fn totals(report: &str) -> (usize, usize, usize, usize) {
    let line = report.lines().next().unwrap_or_default();
    let n = |word: &str| -> usize {
        line.split(&format!("{word} "))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no {word} count in {line:?}"))
    };
    (n("taken"), n("updated"), n("unchanged"), n("refused"))
}

#[tokio::test]
async fn the_official_hsds_examples_come_back_equal_through_hsds() {
    let app = spawn_app().await;
    let import = |path: String| app.operator(&["directory", "import", &path]);

    // The tabular package: six entities, nested by their links.
    let report = import(format!("{HSDS}/csv"));
    assert_eq!(totals(&report), (6, 0, 0, 0), "{report}");
    assert_eq!(
        totals(&import(format!("{HSDS}/csv"))),
        (0, 0, 6, 0),
        "a re-import changes nothing"
    );
    for (name, only_example, only_csv) in CSV_VS_JSON {
        let (status, got) = hsds(&app, &path_of(name)).await;
        assert_eq!(status, 200, "{name}: {got}");
        let mut expected = example(name);
        for pointer in *only_example {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let removed = expected
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|o| o.remove(key));
            assert!(
                removed.is_some(),
                "{name}{pointer} is no longer a difference"
            );
        }
        let mut got = got;
        for (parent, key) in *only_csv {
            let removed = got
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|o| o.remove(*key));
            assert!(
                removed.is_some(),
                "{name}{parent}/{key} is no longer a difference"
            );
        }
        assert_eq!(got, expected, "CSV package vs {name}, modulo CSV_VS_JSON");
    }

    // The API's JSON: each example is taken as the entity it is, key for key.
    let report = import(HSDS.to_string());
    let (taken, updated, unchanged, refused) = totals(&report);
    assert_eq!((taken, refused), (0, 0), "{report}");
    assert_eq!(
        updated, 4,
        "service, organization, service_at_location, term: {report}"
    );
    assert!(unchanged >= 1, "{report}");
    assert!(report.contains("skipped base.json"), "{report}");
    for (name, _, _) in CSV_VS_JSON {
        let (status, got) = hsds(&app, &path_of(name)).await;
        assert_eq!(status, 200);
        assert_eq!(got, example(name), "GET {} vs {name}", path_of(name));
    }
    let (t, u, unchanged, r) = totals(&import(HSDS.to_string()));
    assert_eq!((t, u, r), (0, 0, 0), "a re-import changes nothing");
    assert!(unchanged >= 5);

    // The list pages: the examples' items, our paging numbers.
    for (path, name) in [
        ("/hsds/services", "service_list.json"),
        ("/hsds/organizations", "organization_list.json"),
        ("/hsds/taxonomies", "taxonomy_list.json"),
        ("/hsds/taxonomy_terms", "taxonomy_term_list.json"),
    ] {
        let (status, page) = hsds(&app, path).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert_eq!(page["contents"], example(name)["contents"], "{path}");
        assert_eq!(
            (
                &page["total_items"],
                &page["total_pages"],
                &page["page_number"],
                &page["size"]
            ),
            (&json!(1), &json!(1), &json!(1), &json!(1)),
            "{path}"
        );
        assert_eq!(
            (&page["first_page"], &page["last_page"], &page["empty"]),
            (&json!(true), &json!(true), &json!(false))
        );
    }
    let (_, page) = hsds(&app, "/hsds/service_at_locations?per_page=1").await;
    assert_eq!(page["contents"][0]["service"]["id"], SERVICE);
    assert!(page["contents"][0]["location"].get("addresses").is_none());

    // Filters the document lists.
    for (query, found) in [
        ("search=counselling", 1),
        ("search=COUNSELLING", 1),
        ("search=bakery", 0),
        (&*format!("organization_id={ORGANIZATION}"), 1),
        ("organization_id=nobody", 0),
        (&*format!("taxonomy_term_id={TAXONOMY_TERM}"), 1),
        (&*format!("taxonomy_id={TAXONOMY}"), 1),
        ("taxonomy_term_id=other", 0),
        ("page=2", 0),
    ] {
        let (status, page) = hsds(&app, &format!("/hsds/services?{query}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            page["contents"].as_array().unwrap().len(),
            found,
            "{query}: {page}"
        );
    }
    let (_, full) = hsds(&app, "/hsds/services?full=true").await;
    assert_eq!(full["contents"][0], example("service_full.json"));

    // The root is open; everything else needs a token; unknown ids are 404.
    let anonymous = reqwest::Client::new();
    let root: Value = anonymous
        .get(format!("http://{}/hsds/", app.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["version"], "3.0");
    let resp = anonymous
        .get(format!("http://{}/hsds/services/{SERVICE}", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = hsds(&app, "/hsds/services/no-such-service").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no-such-service"));

    // The API is read-only: another method on one of its paths is a 405 saying so.
    for path in [
        "/hsds/",
        "/hsds/services",
        &format!("/hsds/services/{SERVICE}"),
    ] {
        let resp = anonymous
            .post(format!("http://{}{path}", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], "GET", "{path}");
    }
}

#[tokio::test]
async fn a_broken_entity_is_refused_naming_the_field_and_the_rest_is_taken() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("hsds-broken-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut broken = example("service_full.json");
    broken["status"] = json!("open all hours");
    broken["phones"][0]
        .as_object_mut()
        .unwrap()
        .remove("number");
    std::fs::write(
        dir.join("services.json"),
        json!([
            broken,
            {"id": "2b5f3b74-0000-4000-8000-000000000001", "name": "Pantry", "status": "active",
             "minimum_age": "twelve"},
            {"id": "2b5f3b74-0000-4000-8000-000000000002", "name": "Shelter", "status": "active"},
        ])
        .to_string(),
    )
    .unwrap();
    let (ok, out, err) = app.try_operator(&["directory", "import", dir.to_str().unwrap()]);
    assert!(!ok, "refusals make the command fail: {out}");
    assert!(format!("{out}{err}").contains("were refused"), "{err}");
    assert_eq!(totals(&out), (1, 0, 0, 2), "{out}");
    assert!(
        out.contains(&format!("refused service {SERVICE}"))
            && out
                .contains("/status: must be one of active, inactive, defunct, temporarily closed"),
        "{out}"
    );
    assert!(out.contains("/minimum_age: must be a number"), "{out}");
    let (status, _) = hsds(&app, &format!("/hsds/services/{SERVICE}")).await;
    assert_eq!(status, 404);
    let (status, _) = hsds(&app, "/hsds/services/2b5f3b74-0000-4000-8000-000000000002").await;
    assert_eq!(status, 200);

    // The first rule broken is named, deepest path first found: a phone without number.
    broken["status"] = json!("active");
    std::fs::write(dir.join("services.json"), broken.to_string()).unwrap();
    let (ok, out, _) = app.try_operator(&["directory", "import", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("/phones/0/number: is required in phone"),
        "{out}"
    );

    // Not HSDS at all: a clear error, no panic.
    let (ok, out, err) = app.try_operator(&["directory", "import", "/nonexistent/hsds"]);
    assert!(!ok);
    assert!(format!("{out}{err}").contains("/nonexistent/hsds"), "{err}");
}

/// Services written for search by need (tests/fixtures/hsds/needs): Open Eligibility
/// terms inline, a county's own terms stored and named by id, one under a parent.
const NEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hsds/needs");
const PANTRY: &str = "4f0d0000-0000-4000-8000-000000000001";
const MEALS: &str = "4f0d0000-0000-4000-8000-000000000002";
const BUS: &str = "4f0d0000-0000-4000-8000-000000000003";
const KITCHEN: &str = "4f0d0000-0000-4000-8000-000000000004";

fn ids(page: &Value) -> Vec<&str> {
    page["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn services_are_found_by_sdoh_need_through_the_domain_rules() {
    let app = spawn_app().await;
    app.operator(&["directory", "import", HSDS]);
    app.operator(&["directory", "import", NEEDS]);

    // Food: an Open Eligibility code (1130 Food Pantry), a county term by name (Home-
    // delivered meals), a county term under its "Food" parent. Not: code 1102 of
    // another taxonomy (the dental clinic), the official example's placeholder term.
    let (status, page) = hsds(&app, "/hsds/services?sdoh_domain=food-insecurity").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [PANTRY, MEALS, KITCHEN]);
    assert_eq!(
        (&page["total_items"], &page["size"]),
        (&json!(3), &json!(3))
    );
    assert!(
        page["contents"][0].get("attributes").is_none(),
        "a list view"
    );

    let (_, page) = hsds(&app, "/hsds/services?sdoh_domain=transportation-insecurity").await;
    assert_eq!(ids(&page), [BUS]);
    let (_, page) = hsds(&app, "/hsds/services?sdoh_domain=housing-instability").await;
    assert_eq!(ids(&page), Vec::<&str>::new());
    assert_eq!(page["empty"], true);

    // With the document's own filters and paging.
    let (_, page) = hsds(
        &app,
        "/hsds/services?sdoh_domain=food-insecurity&search=meals",
    )
    .await;
    assert_eq!(ids(&page), [MEALS]);
    let (_, page) = hsds(
        &app,
        "/hsds/services?sdoh_domain=food-insecurity&per_page=2&page=2&full=true",
    )
    .await;
    assert_eq!(ids(&page), [KITCHEN]);
    assert_eq!(
        (
            &page["total_items"],
            &page["total_pages"],
            &page["last_page"]
        ),
        (&json!(3), &json!(2), &json!(true))
    );
    assert!(page["contents"][0]["attributes"].is_array(), "full=true");
    let (_, page) = hsds(&app, &format!("/hsds/services?sdoh_domain=food-insecurity&organization_id={ORGANIZATION}&taxonomy_term_id=4f0d0000-0000-4000-8000-000000000102")).await;
    assert_eq!(ids(&page), [MEALS]);

    // Services-at-locations by their service's terms (here: named by service_id only).
    let (_, page) = hsds(
        &app,
        "/hsds/service_at_locations?sdoh_domain=food-insecurity",
    )
    .await;
    assert_eq!(ids(&page), ["4f0d0000-0000-4000-8000-000000000401"]);
    assert_eq!(
        page["contents"][0]["location"]["name"],
        "Riverside Church Hall"
    );

    // A domain without a rule is an error naming it, not an empty page.
    let (status, body) = hsds(&app, "/hsds/services?sdoh_domain=hunger").await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"hunger\"") && error.contains("food-insecurity"),
        "{error}"
    );
    // Other lists ignore it, as they ignore any parameter they do not take.
    let (status, page) = hsds(&app, "/hsds/organizations?sdoh_domain=hunger").await;
    assert_eq!((status, page["total_items"].clone()), (200, json!(1)));
}
