//! MLLP load generator for `bench/mllp`: N connections, each sending an ADT message and
//! waiting for its ACK before the next, for S seconds. Prints one line of JSON:
//! messages/s, p50/p99 ACK latency in ms, and how many ACKs were not AA.
//!
//!   cargo run --release --example mllp_load -- ADDR [CONNECTIONS] [SECONDS] [EVENT] [PERSONS]
//!
//! EVENT is `A08` (update: identity, person, Patient; the default) or `A01` (admit: the
//! same and an Encounter per visit). PERSONS is `new` (every message a patient never
//! seen: the default) or `known` (each connection first introduces 50 patients, untimed,
//! then cycles through them; an A01 is then a new visit of a known patient, an A08 a
//! demographic update of one).

use std::time::{Duration, Instant};

use crossway::mllp::Client;

/// Patients each connection introduces before a `known` run.
const KNOWN_PER_CONNECTION: u64 = 50;

fn adt(event: &str, control: &str, mrn: &str, visit: &str, phone: u64) -> String {
    format!(
        "MSH|^~\\&|EPIC|SMH|CROSSWAY|GW|20250314153012-0500||ADT^{event}^ADT_A01|{control}|P|2.5.1\r\
         EVN|{event}|20250314152900-0500\r\
         PID|1||{mrn}^^^SMH^MR~E{mrn}^^^STATEHIE&2.16.840.1.113883.3.9999.100&ISO^PI||DOE^JANE^Q||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62704||^PRN^PH^^1^217^{phone:07}\r\
         PV1|1|O|CLINIC^1^1^SMH||||||||||||||||{visit}|||||||||||||||||||||||||20250314152900-0500\r"
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .expect("usage: mllp_load ADDR [CONNECTIONS] [SECONDS] [A01|A08] [new|known]")
        .clone();
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let event = args.get(4).cloned().unwrap_or_else(|| "A08".into());
    let known = args.get(5).is_some_and(|p| p == "known");
    assert!(event == "A01" || event == "A08", "EVENT is A01 or A08");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut clients = Vec::new();
    for c in 0..connections {
        let mut client = Client::connect(&addr).await.expect("connect");
        if known {
            for k in 0..KNOWN_PER_CONNECTION {
                let mrn = format!("K{}-{c}-{k}", &run[..8]);
                let msg = adt("A08", &format!("{mrn}-intro"), &mrn, &format!("V{mrn}"), 0);
                let ack = client.send(msg.as_bytes()).await.expect("ACK");
                assert!(
                    ack.windows(7).any(|w| w == b"MSA|AA|"),
                    "introducing {mrn}: {}",
                    String::from_utf8_lossy(&ack)
                );
            }
        }
        clients.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let (run, event) = (run.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut not_aa = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let control = format!("M{}-{c}-{i}", &run[..8]);
                let mrn = if known {
                    format!("K{}-{c}-{}", &run[..8], i % KNOWN_PER_CONNECTION)
                } else {
                    format!("N{}-{c}-{i}", &run[..8])
                };
                // A new visit per admit; an update changes the phone number.
                let msg = adt(&event, &control, &mrn, &format!("V{control}"), i);
                let sent = Instant::now();
                let ack = client.send(msg.as_bytes()).await.expect("ACK");
                latencies.push(sent.elapsed());
                if !ack.windows(7).any(|w| w == b"MSA|AA|") {
                    not_aa += 1;
                }
            }
            (latencies, not_aa)
        }));
    }
    let mut all = Vec::new();
    let mut not_aa = 0;
    for t in tasks {
        let (l, n) = t.await.expect("sender");
        all.extend(l);
        not_aa += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"messages\": {}, \"per_second\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"not_aa\": {}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        not_aa
    );
}
