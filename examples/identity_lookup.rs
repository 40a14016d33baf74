//! Identity resolution benchmark for `bench/identity`: seeds PERSONS persons with three
//! identifiers each (MRN, HIE enterprise id, Patient resource id), then resolves PIDs
//! of three identifiers for a few seconds each way: in-process cache hits, Redis cache
//! hits (when a Redis URL is given), and cache misses that read the store. Prints one
//! JSON line per mode: resolutions/s and p99 in ms.
//!
//!   identity_lookup DATABASE_URL [REDIS_URL|-] [PERSONS] [SECONDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossway::cache::Cache;
use crossway::identity::Identifier;
use crossway::identity::cache::IdentityCache;
use crossway::store::Store;

const CONCURRENCY: usize = 32;
/// Persons whose identifiers are warmed into a cache and then looked up.
const HOT: u64 = 100_000;

fn pid(i: u64) -> [Identifier; 3] {
    [
        Identifier::new(
            "urn:oid:2.16.840.1.113883.3.9999.1",
            &format!("MRN{i}"),
            None,
        ),
        Identifier::new(
            "urn:oid:2.16.840.1.113883.3.9999.100",
            &format!("E{i}"),
            None,
        ),
        Identifier::patient(&format!("p{i}")),
    ]
}

async fn seed(url: &str, persons: u64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let series = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {persons})"
    );
    let statements = [
        format!(
            "{series} INSERT INTO persons (id, client_ref, created_at, updated_at) SELECT 'per' || i, 'cli_' || i, 0, 0 FROM n"
        ),
        format!(
            "{series} INSERT INTO person_identifiers (system, value, person_id, source, created_at) SELECT 'urn:oid:2.16.840.1.113883.3.9999.1', 'MRN' || i, 'per' || i, 'bench', 0 FROM n"
        ),
        format!(
            "{series} INSERT INTO person_identifiers (system, value, person_id, source, created_at) SELECT 'urn:oid:2.16.840.1.113883.3.9999.100', 'E' || i, 'per' || i, 'bench', 0 FROM n"
        ),
        format!(
            "{series} INSERT INTO person_identifiers (system, value, person_id, source, created_at) SELECT 'urn:crossway:patient', 'p' || i, 'per' || i, 'bench', 0 FROM n"
        ),
    ];
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s))
            .execute(&pool)
            .await
            .expect("seed");
    }
    pool.close().await;
}

/// Runs CONCURRENCY tasks resolving random hot PIDs; prints a JSON line.
async fn measure(mode: &str, cache: Arc<IdentityCache>, store: Store, persons: u64, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY as u64 {
        let (cache, store) = (cache.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 1 + x % HOT.min(persons);
                let ids = pid(i);
                let at = Instant::now();
                let found = cache.lookup(&store, &ids).await.expect("lookup");
                latencies.push(at.elapsed());
                let expected = format!("per{i}");
                assert!(
                    found
                        .iter()
                        .all(|p| p.as_ref().is_some_and(|p| p.id == expected))
                );
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{{\"mode\": \"{mode}\", \"resolutions\": {}, \"per_second\": {:.0}, \"p99_ms\": {:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        p99
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: identity_lookup DATABASE_URL [REDIS_URL|-] [PERSONS] [SECONDS]");
    let redis = args.get(2).filter(|r| *r != "-");
    let persons: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seconds: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(5);
    let store = Store::open(url).await.expect("open store");
    let t = Instant::now();
    seed(url, persons).await;
    eprintln!(
        "seeded {persons} persons in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    measure(
        "store (cache miss)",
        Arc::new(IdentityCache::none()),
        store.clone(),
        persons,
        seconds,
    )
    .await;
    let local = Arc::new(IdentityCache::in_process());
    for i in 1..=HOT.min(persons) {
        local.lookup(&store, &pid(i)).await.expect("warm");
    }
    measure("in-process cache", local, store.clone(), persons, seconds).await;
    if let Some(redis) = redis {
        let manager = Cache::redis(redis)
            .expect("redis")
            .redis_manager()
            .expect("manager");
        let shared = Arc::new(IdentityCache::redis(manager, url));
        for i in 1..=HOT.min(persons) {
            shared.lookup(&store, &pid(i)).await.expect("warm");
        }
        measure("redis cache", shared, store.clone(), persons, seconds).await;
    }
}
