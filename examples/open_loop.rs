//! Open-loop HTTP load for `bench/cbo`: sends the requests of a file at a fixed rate,
//! each when it is due whether or not earlier ones were answered, as independent
//! clients do. Latency counts from when a request was due, so a stall is charged to
//! every request it held back. A closed loop (wrk: each connection waits for its answer
//! before sending again) measures latency at saturation instead, where its mean is the
//! connection count divided by the throughput.
//!
//! Each line of the file: `METHOD PATH ORGANIZATION` (the organisation goes in the
//! development header; a POST carries `{}`). Prints one line: requests/s achieved,
//! p50 and p99 latency in ms, and how many answers were not 2xx.
//!
//!   cargo run --release --example open_loop -- BASE_URL FILE RATE SECONDS

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Requests in flight at most; past it a due request waits (and its wait is counted).
const MAX_IN_FLIGHT: usize = 512;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: open_loop BASE_URL FILE RATE SECONDS";
    let base = args.get(1).expect(usage).trim_end_matches('/').to_string();
    let lines = std::fs::read_to_string(args.get(2).expect(usage)).expect("readable file");
    let rate: f64 = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: f64 = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let wanted = (rate * seconds) as usize;
    let requests: Vec<(reqwest::Method, String, String)> = lines
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let method = parts.next()?.parse().ok()?;
            Some((
                method,
                format!("{base}{}", parts.next()?),
                parts.next()?.to_string(),
            ))
        })
        .take(wanted)
        .collect();
    assert!(
        requests.len() == wanted,
        "{} requests in the file, {wanted} needed",
        requests.len()
    );

    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(wanted);
    for (i, (method, url, organization)) in requests.into_iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, slots) = (client.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            let mut request = client
                .request(method.clone(), url)
                .header("X-Crossway-Organization", organization);
            if method == reqwest::Method::POST {
                request = request
                    .header("Content-Type", "application/json")
                    .body("{}");
            }
            let ok = match request.send().await {
                Ok(answer) => {
                    let ok = answer.status().is_success();
                    let _ = answer.bytes().await;
                    ok
                }
                Err(_) => false,
            };
            (due.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(wanted);
    let mut failed = 0usize;
    for task in tasks {
        let (latency, ok) = task.await.expect("request task");
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let ms = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{:.0} {:.2} {:.2} {failed}",
        latencies.len() as f64 / elapsed,
        ms(0.5),
        ms(0.99)
    );
}
