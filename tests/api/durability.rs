//! What was acknowledged survives `kill -9`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio::sync::Mutex;

use crate::helpers::*;

#[tokio::test]
async fn kill_9_during_creates_loses_nothing_that_was_answered_201() {
    let mut app = spawn_app().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, url, acked, stop) = (
            app.client.clone(),
            app.url("Patient"),
            acknowledged.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                i += 1;
                let body = json!({"resourceType": "Patient", "identifier": [{"system": "http://kill", "value": format!("{w}-{i}")}]});
                let sent = client.post(&url).header("content-type", FHIR_JSON).body(body.to_string()).send().await;
                match sent {
                    Ok(r) if r.status() == 201 => {
                        let loc = r.headers()["location"].to_str().unwrap().to_string();
                        acked.lock().await.push(loc.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_string());
                    }
                    _ => break,
                }
            }
        }));
    }
    // Let the stream run, then kill mid-stream.
    while acknowledged.lock().await.len() < 300 {
        // Writers stop at the first answer that is not 201: fail, don't wait forever.
        assert!(
            !writers.iter().all(|w| w.is_finished()),
            "every writer stopped before 300 creates were acknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acknowledged.lock().await.clone();
    assert!(acked.len() >= 300);

    let app = app.restart().await;
    for id in &acked {
        let status = app.get(&format!("Patient/{id}")).await.status();
        assert_eq!(
            status, 200,
            "Patient/{id} was answered 201 before the kill but is gone"
        );
    }
}

/// 10,000 HL7 v2 messages stream in on 8 connections; the gateway is killed mid-stream.
/// Every message that got `AA` is there after the restart, once, and a resend of it
/// is acknowledged again without a second person.
#[tokio::test]
async fn kill_9_during_an_mllp_stream_loses_no_message_that_was_acknowledged() {
    let mut app = spawn_app().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let message = |mrn: &str| {
        format!(
            "MSH|^~\\&|EPIC|SMH|CROSSWAY|GW|20250314153012-0500||ADT^A08^ADT_A01|{mrn}|P|2.5.1\r\
             EVN|A08|20250314152900-0500\rPID|1||{mrn}^^^SMH^MR||DOE^JANE||19800101|F\r"
        )
    };
    let mut senders = Vec::new();
    for w in 0..8 {
        let (addr, acked, stop) = (app.mllp_addr.clone(), acknowledged.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let Ok(mut client) = crossway::mllp::Client::connect(&addr).await else {
                return;
            };
            for i in 0..1250 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mrn = format!("KILL-{w}-{i}");
                match client.send(message(&mrn).as_bytes()).await {
                    Ok(ack) if String::from_utf8_lossy(&ack).contains("MSA|AA|") => {
                        acked.lock().await.push(mrn)
                    }
                    _ => break,
                }
            }
        }));
    }
    while acknowledged.lock().await.len() < 1000 {
        assert!(
            !senders.iter().all(|s| s.is_finished()),
            "every sender stopped before 1,000 messages were acknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.kill();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acknowledged.lock().await.clone();
    let app = app.restart().await;
    for mrn in &acked {
        let found = app
            .search_ids(&format!(
                "Patient?identifier=http://hospital.example.org/mrn|{mrn}"
            ))
            .await;
        assert_eq!(found.len(), 1, "{mrn} was acknowledged AA before the kill");
    }
    let mut client = crossway::mllp::Client::connect(&app.mllp_addr)
        .await
        .unwrap();
    let again = hl7_reply(&mut client, &message(&acked[0])).await;
    assert_eq!(ack_code(&again), "AA", "{again}");
    assert_eq!(
        app.search_ids(&format!(
            "Patient?identifier=http://hospital.example.org/mrn|{}",
            acked[0]
        ))
        .await
        .len(),
        1
    );
}

/// SIGTERM in the middle of FHIR creates and an MLLP stream: the gateway exits 0 on
/// its own, after finishing what it had in hand, and everything it acknowledged is in
/// the store, and in the audit trail, after a restart.
#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_loses_nothing_acknowledged() {
    let mut app = spawn_app().await;
    let client_id = app.ehr.client_id.clone();
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (client, url, created) = (app.client.clone(), app.url("Patient"), created.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..5000 {
                let body = json!({"resourceType": "Patient", "identifier": [{"system": "http://term", "value": format!("{w}-{i}")}]});
                let sent = client.post(&url).header("content-type", FHIR_JSON).body(body.to_string()).send().await;
                match sent {
                    Ok(r) if r.status() == 201 => {
                        let loc = r.headers()["location"].to_str().unwrap().to_string();
                        created.lock().await.push(loc.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_string());
                    }
                    // Refused or closed once the gateway stops: the stream ends.
                    _ => break,
                }
            }
        }));
    }
    for w in 0..4 {
        let (addr, acked) = (app.mllp_addr.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = crossway::mllp::Client::connect(&addr).await else {
                return;
            };
            for i in 0..5000 {
                let control = format!("TERM-{w}-{i}");
                let message = adt("A08", &control, &mrn(&control), "V1");
                match client.send(message.as_bytes()).await {
                    Ok(ack) if String::from_utf8_lossy(&ack).contains("MSA|AA|") => {
                        acked.lock().await.push(control)
                    }
                    _ => break,
                }
            }
        }));
    }
    while created.lock().await.len() < 200 || acked.lock().await.len() < 200 {
        assert!(
            !tasks.iter().all(|t| t.is_finished()),
            "every sender stopped before the stream was under way"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = app.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        app.logs.lock().unwrap().contains("Stopped."),
        "the gateway did not finish its shutdown"
    );
    let created = created.lock().await.clone();
    let acked = acked.lock().await.clone();

    let app = app.restart().await;
    for id in &created {
        let status = app.get(&format!("Patient/{id}")).await.status();
        assert_eq!(status, 200, "Patient/{id} was answered 201 before SIGTERM");
    }
    for control in &acked {
        let found = app
            .search_ids(&format!(
                "Patient?identifier=http://hospital.example.org/mrn|{control}"
            ))
            .await;
        assert_eq!(
            found.len(),
            1,
            "{control} was acknowledged AA before SIGTERM"
        );
    }
    // The audit records of the last requests were flushed before the exit.
    let mut audited = 0;
    let mut page = app
        .audit_json(&format!(
            "AuditEvent?agent={client_id}&entity=/fhir/Patient&_count=1000"
        ))
        .await;
    loop {
        audited += page["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["action"] == "C" && e["resource"]["outcome"] == "0")
            .count();
        let next = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next");
        match next {
            Some(l) => page = app.audit_json(l["url"].as_str().unwrap()).await,
            None => break,
        }
    }
    assert!(
        audited >= created.len(),
        "{} creates were answered 201, {audited} are in the audit trail",
        created.len()
    );
}

/// An operator's `sqlite3`, a script or a backup tool opens the live SQLite file beside
/// the gateway. When such a process closes the database it deletes the write-ahead log
/// if no other process holds a lock on the database: the gateway must keep its locks,
/// and go on acknowledging (and keeping) what it writes.
#[tokio::test]
async fn another_process_reading_the_sqlite_file_leaves_the_gateway_s_store_intact() {
    if store_kind() != "sqlite" {
        eprintln!("another_process_reading_the_sqlite_file…: runs in the SQLite pass");
        return;
    }
    let mut app = spawn_app().await;
    let patient = |n: &str| json!({"resourceType": "Patient", "identifier": [{"system": "http://beside", "value": n}]});
    let mut ids = vec![
        app.create(&patient("before")).await["id"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    // Past the background checkpoint's first rounds (every 100 ms).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let database = app.database_url.trim_start_matches("sqlite://");
    let database = database.split('?').next().unwrap().to_string();
    let count = "import sqlite3, sys\n\
                 db = sqlite3.connect(sys.argv[1])\n\
                 print(db.execute(\"SELECT count(*) FROM resources WHERE res_type = 'Patient'\").fetchone()[0])\n\
                 db.close()";
    let out = std::process::Command::new("python3")
        .args(["-c", count, &database])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(
        std::path::Path::new(&format!("{database}-wal")).exists(),
        "the write-ahead log was deleted under the running gateway"
    );
    for n in 0..20 {
        let created = app.create(&patient(&format!("after-{n}"))).await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    app.kill();
    let app = app.restart().await;
    for id in &ids {
        let status = app.get(&format!("Patient/{id}")).await.status();
        assert_eq!(status, 200, "Patient/{id} was answered 201, then lost");
    }
}

/// `CROSSWAY_DATABASE_URL=sqlite:///path/new.db`, the form the README documents, with
/// neither the file nor its directory there yet: the gateway creates both and starts.
#[tokio::test]
async fn a_sqlite_url_to_a_file_that_does_not_exist_yet_is_created() {
    if crate::helpers::store_kind() != "sqlite" {
        return;
    }
    let dir = std::env::temp_dir().join(format!("crossway-new-db-{}", uuid::Uuid::new_v4()));
    let db = dir.join("not-yet").join("crossway.db");
    let url = format!("sqlite://{}", db.display());
    assert!(url.starts_with("sqlite:///"), "{url}");
    let app = crate::helpers::spawn_app_at(dir.join("data"), url, &[]).await;
    let r = app.get("metadata").await;
    assert_eq!(r.status(), 200);
    assert!(db.exists());
    drop(app);
    std::fs::remove_dir_all(dir).ok();
}
