//! The in-memory caches under a small budget: they turn over many times, and every read
//! still answers the current version — on one process, and on PostgreSQL through a
//! second process that hears of the first one's writes.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, spawn_sibling, store_kind};

fn patient(i: usize, note: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": format!("mem-{i}"),
        "name": [{"family": format!("Budget{i}"), "given": ["Ana"]}],
        // About 3 KB each: 400 of them are twice the version cache's share of 1 MiB.
        "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{note} {}</div>", "x".repeat(3000))},
    })
}

/// A sample's value on `/metrics` (0 when absent).
async fn metric(app: &TestApp, name: &str, cache: &str) -> f64 {
    let text = app.metrics_text().await;
    let prefix = format!("{name}{{cache=\"{cache}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn under_a_small_memory_budget_reads_stay_correct_and_current() {
    let env = [("CROSSWAY_MEMORY_BUDGET_MB", "1")];
    let one = spawn_app_with(&env).await;
    let mut readers = vec![];
    if store_kind() == "postgres" {
        readers.push(spawn_sibling(&one, &env).await);
    }
    const N: usize = 400;
    for i in 0..N {
        let status = one
            .put(&format!("Patient/mem-{i}"), &patient(i, "first"))
            .await
            .status();
        assert_eq!(status, 201, "Patient/mem-{i}");
    }
    let read = async |app: &TestApp, i: usize| app.get_json(&format!("Patient/mem-{i}")).await;
    // Twice each: the second read of a recent one is served from memory.
    for _ in 0..2 {
        for i in 0..N {
            for app in std::iter::once(&one).chain(&readers) {
                let p = read(app, i).await;
                assert_eq!(p["meta"]["versionId"], "1", "Patient/mem-{i}: {p}");
                assert_eq!(p["name"][0]["family"], format!("Budget{i}"));
            }
        }
    }
    // Every seventh changes; both processes answer the new version.
    for i in (0..N).step_by(7) {
        let status = one
            .put(&format!("Patient/mem-{i}"), &patient(i, "second"))
            .await
            .status();
        assert_eq!(status, 200);
    }
    for app in std::iter::once(&one).chain(&readers) {
        for i in 0..N {
            let want = if i % 7 == 0 { "2" } else { "1" };
            let mut p = read(app, i).await;
            // A sibling hears of a commit through LISTEN/NOTIFY: allow it a moment.
            for _ in 0..50 {
                if p["meta"]["versionId"] == want {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                p = read(app, i).await;
            }
            assert_eq!(p["meta"]["versionId"], want, "Patient/mem-{i}: {p}");
            let note = if want == "2" { "second" } else { "first" };
            assert!(p["text"]["div"].as_str().unwrap().contains(note));
        }
    }
    // The version cache turned over, and kept within its half of the budget.
    let evicted = metric(&one, "cache_evictions_total", "versions").await;
    let bytes = metric(&one, "cache_bytes", "versions").await;
    assert!(evicted > 0.0, "no eviction under a 1 MiB budget");
    assert!(bytes <= (512 * 1024) as f64, "{bytes} bytes held");
    assert!(metric(&one, "cache_hits_total", "versions").await > 0.0);
}

/// A CBO's referral lists and reads answer the same whether its rows are held in
/// memory (the default budget) or always read from the database (a budget of 0, as an
/// organisation larger than the budget is served), on both stores and, on PostgreSQL,
/// through a second process that held the organisation before another's write.
#[tokio::test]
async fn referral_lists_answer_the_same_from_memory_and_from_the_database() {
    const ORG: &str = "cbo-riverside-food-bank";
    let mut seen = Vec::new();
    for budget in ["512", "0"] {
        let env = [("CROSSWAY_MEMORY_BUDGET_MB", budget)];
        let one = spawn_app_with(&env).await;
        let two = if store_kind() == "postgres" {
            Some(spawn_sibling(&one, &env).await)
        } else {
            None
        };
        for _ in 0..4 {
            one.post_referral().await;
        }
        // The sibling reads the organisation before the next write lands.
        if let Some(two) = &two {
            assert_eq!(two.cbo(ORG).referral_ids().await.len(), 4);
        }
        let ids = one.cbo(ORG).referral_ids().await;
        assert_eq!(ids.len(), 4, "budget {budget}");
        let accepted = one
            .cbo(ORG)
            .post(&format!("referrals/{}/accept", ids[1]), &json!({}))
            .await;
        assert_eq!(accepted.status, 200, "{}", accepted.body);
        for app in std::iter::once(&one).chain(&two) {
            let cbo = app.cbo(ORG);
            let mut listed = Vec::new();
            for _ in 0..50 {
                listed = cbo.referral_ids().await;
                // The accepted one moves to the end (lists follow the last change).
                if listed.last() == Some(&ids[1]) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(listed.last(), Some(&ids[1]), "budget {budget}");
            let only = cbo.get("referrals?status=accepted").await;
            let only: Vec<&str> = only.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap())
                .collect();
            assert_eq!(only, [ids[1].as_str()], "budget {budget}");
            let one_referral = cbo.get(&format!("referrals/{}", ids[1])).await;
            assert_eq!(one_referral.status, 200);
            assert_eq!(one_referral.body["status"], "accepted");
            assert_eq!(
                app.cbo("cbo-harbor-housing")
                    .get(&format!("referrals/{}", ids[1]))
                    .await
                    .status,
                404,
                "another organisation's referral stays unseen"
            );
        }
        seen.push((budget, metric(&one, "cache_entries", "referrals").await));
    }
    // Held in memory with the default budget; nothing held with none.
    assert!(seen[0].1 >= 4.0, "{seen:?}");
    assert_eq!(seen[1].1, 0.0, "{seen:?}");
}
