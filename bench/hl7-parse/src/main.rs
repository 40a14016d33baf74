//! Parses the same ADT^A01 messages with Crossway's parser and crates.io parsers and
//! prints a Markdown table. Usage: `hl7-parse-bench [--python-ns NS] [--ours-only]`
//! (NS = python-hl7 nanoseconds per message, measured by python_hl7.py).

#[path = "../../../src/hl7v2/mod.rs"]
#[allow(dead_code, unused_imports)]
mod crossway_hl7;

use std::hint::black_box;
use std::time::{Duration, Instant};

const ROUNDS: usize = 11;
const ROUND_TIME: Duration = Duration::from_millis(250);
const WARM_UP: Duration = Duration::from_millis(500);

struct Row {
    name: &'static str,
    /// Median nanoseconds per message, or why it could not run.
    result: Result<f64, String>,
}

fn load_messages() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("messages");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("message file is UTF-8"))
        .collect()
}

/// Runs `f` over the messages round-robin; returns the median ns/message of the rounds.
fn time(messages: &[String], mut f: impl FnMut(&str) -> usize) -> f64 {
    let mut run = |iterations: u64| {
        let start = Instant::now();
        let mut sink = 0usize;
        for i in 0..iterations {
            let m = &messages[i as usize % messages.len()];
            sink = sink.wrapping_add(f(black_box(m.as_str())));
        }
        black_box(sink);
        start.elapsed()
    };
    let mut iterations = 64u64;
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        let took = run(iterations);
        if took < WARM_UP / 8 {
            iterations *= 2;
        }
    }
    let per_iter = run(iterations).as_secs_f64() / iterations as f64;
    let iterations = ((ROUND_TIME.as_secs_f64() / per_iter) as u64).max(1);
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|_| run(iterations).as_secs_f64() * 1e9 / iterations as f64)
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}

/// Checks a parser accepts every message before timing it, so a failing crate is
/// reported instead of timed on its error path.
fn check<E: std::fmt::Debug>(
    messages: &[String],
    f: impl Fn(&str) -> Result<usize, E>,
) -> Result<(), String> {
    for m in messages {
        let segments = f(m).map_err(|e| format!("parse error: {e:?}"))?;
        let expected = m.split('\r').filter(|s| !s.is_empty()).count();
        if segments < expected {
            return Err(format!("saw {segments} of {expected} segments"));
        }
    }
    Ok(())
}

fn bench<E: std::fmt::Debug>(
    name: &'static str,
    messages: &[String],
    f: impl Fn(&str) -> Result<usize, E>,
) -> Row {
    let result = check(messages, &f).map(|()| time(messages, |m| f(m).map_or(0, |n| n)));
    Row { name, result }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let python_ns = args
        .iter()
        .position(|a| a == "--python-ns")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<f64>().expect("--python-ns takes a number"));
    let messages = load_messages();
    assert!(!messages.is_empty(), "no messages/*.hl7");
    let avg_bytes = messages.iter().map(String::len).sum::<usize>() as f64 / messages.len() as f64;

    let ours_only = args.iter().any(|a| a == "--ours-only");
    // `parse` reuses, per thread, the buffers of the message dropped before: what the
    // feed does from its second message on.
    let mut rows = vec![bench("crossway hl7v2 parse()", &messages, |m| {
        crossway_hl7::parse(m)
            .map(|msg| msg.segments().map(|s| s.raw().len()).sum::<usize>() + msg.segment_count())
    })];
    if !ours_only {
        rows.push(bench("hl7-parser 0.3", &messages, |m| {
            hl7_parser::parse_message(m).map(|msg| {
                msg.segments.iter().map(|s| s.name.len()).sum::<usize>() + msg.segments.len()
            })
        }));
        rows.push(bench("rust-hl7 0.5", &messages, |m| {
            rusthl7::message::Message::try_from(m).map(|msg| {
                msg.segments.iter().map(|s| s.source.len()).sum::<usize>() + msg.segments.len()
            })
        }));
        rows.push(bench("hl7v2 1.5", &messages, |m| {
            hl7v2::parse(m.as_bytes()).map(|msg| {
                msg.segments.iter().map(|s| s.id.len()).sum::<usize>() + msg.segments.len()
            })
        }));
    }
    if let Some(ns) = python_ns {
        rows.push(Row {
            name: "python-hl7 (hl7.parse)",
            result: Ok(ns),
        });
    }

    let ours = rows[0].result.clone().unwrap_or(f64::NAN);
    println!(
        "{} messages, {:.0} bytes and {:.1} segments on average; median of {ROUNDS} rounds\n",
        messages.len(),
        avg_bytes,
        messages
            .iter()
            .map(|m| m.split('\r').filter(|s| !s.is_empty()).count())
            .sum::<usize>() as f64
            / messages.len() as f64
    );
    println!("| parser | µs/msg | msgs/s | MB/s | ours is × faster |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        match &row.result {
            Ok(ns) => println!(
                "| {} | {:.3} | {:.0} | {:.0} | {:.1} |",
                row.name,
                ns / 1e3,
                1e9 / ns,
                avg_bytes * 1e3 / ns,
                ns / ours
            ),
            Err(e) => println!("| {} | failed: {e} | | | |", row.name),
        }
    }
    let best_crate = rows
        .iter()
        .skip(1)
        .take(3)
        .filter_map(|r| r.result.as_ref().ok().map(|ns| (r.name, *ns)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    println!();
    if let Some((name, ns)) = best_crate {
        println!(
            "ours vs best crate ({name}): {:.1}× (target ≥ 20×)",
            ns / ours
        );
    }
    if let Some(ns) = python_ns {
        println!("ours vs python-hl7: {:.0}× (target ≥ 500×)", ns / ours);
    }
    println!(
        "ours: {:.0} msgs/s on one core (target ≥ 1,000,000)",
        1e9 / ours
    );
}
