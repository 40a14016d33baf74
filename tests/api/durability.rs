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
