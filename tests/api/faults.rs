//! The fault suite: the gateway under load while its parts fail, all on loopback and
//! bounded in time. (1) one of two gateways on one PostgreSQL + Redis is killed with
//! `kill -9`; (2) PostgreSQL restarts; (3) Redis stops and comes back; (4) the SQLite
//! data directory's filesystem fills up. What was acknowledged is never lost, failures
//! are clean (503 with an OperationOutcome, or no MLLP ACK; never a 500, AE or AR) and
//! service comes back without restarting the gateway.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::webhooks::{Behaviour, insecure_app_env, receiver};

const ORG: &str = "cbo-riverside-food-bank";
const MRN_SYSTEM: &str = "http://hospital.example.org/mrn";

/// What the load generators saw.
#[derive(Default, Debug)]
struct Tally {
    /// Acknowledged: Patient ids answered 201, HL7 control ids answered AA, referral
    /// ids whose accept was answered 200.
    created: Vec<String>,
    acked: Vec<String>,
    accepted: Vec<String>,
    /// Task ids of referral transactions answered 200.
    tasks: Vec<String>,
    /// Clean failures by kind: "503", "no ack", "no connection".
    failures: BTreeMap<&'static str, usize>,
    /// Answers that are neither success nor a clean failure.
    unexpected: Vec<String>,
}

#[derive(Clone, Default)]
struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
}

/// What a generator does when it cannot connect.
#[derive(Clone, Copy, PartialEq)]
enum OnRefused {
    /// The process is gone for good (`kill -9`): stop.
    GiveUp,
    /// Something it depends on is restarting: keep trying, as clients do.
    Retry,
}

impl Load {
    /// `creators` FHIR create streams and `feeds` MLLP feeds against `app`.
    fn start(
        app: &TestApp,
        tag: &str,
        creators: usize,
        feeds: usize,
        on_refused: OnRefused,
    ) -> (Load, Vec<tokio::task::JoinHandle<()>>) {
        let load = Load::default();
        let mut tasks = Vec::new();
        for w in 0..creators {
            tasks.push(load.fhir_creates(app, &format!("{tag}C{w}"), on_refused));
        }
        for w in 0..feeds {
            tasks.push(load.hl7_feed(app, &format!("{tag}-F{w}"), on_refused));
        }
        (load, tasks)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn failed(&self, kind: &'static str) {
        *self.tally.lock().unwrap().failures.entry(kind).or_default() += 1;
    }

    fn counts(&self) -> (usize, usize, usize) {
        let t = self.tally.lock().unwrap();
        (t.created.len(), t.acked.len(), t.accepted.len())
    }

    /// Waits (at most `secs`) until at least this much more has been acknowledged.
    async fn progress(&self, what: &str, created: usize, acked: usize, secs: u64) {
        let (c0, a0, _) = self.counts();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (c, a, _) = self.counts();
            if c >= c0 + created && a >= a0 + acked {
                return;
            }
            if Instant::now() >= deadline {
                let t = self.tally.lock().unwrap();
                panic!(
                    "{what}: only {} creates and {} ACKs more in {secs} s; failures {:?}, unexpected {:?}",
                    c - c0,
                    a - a0,
                    t.failures,
                    &t.unexpected[..t.unexpected.len().min(3)]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// FHIR Patient creates until stopped. A 503 must be a transient OperationOutcome
    /// with Retry-After; it is retried after a pause.
    fn fhir_creates(
        &self,
        app: &TestApp,
        tag: &str,
        on_refused: OnRefused,
    ) -> tokio::task::JoinHandle<()> {
        let (load, client, url, tag) = (
            self.clone(),
            app.client.clone(),
            app.url("Patient"),
            tag.to_string(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !load.stopped() {
                i += 1;
                let body = json!({"resourceType": "Patient", "identifier": [{"system": "http://faults", "value": format!("{tag}-{i}")}]});
                let sent = client
                    .post(&url)
                    .header("content-type", FHIR_JSON)
                    .body(body.to_string())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let r = match sent {
                    Ok(r) => r,
                    Err(_) if on_refused == OnRefused::GiveUp => return,
                    Err(_) => {
                        load.failed("no connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let location = r
                    .headers()
                    .get("location")
                    .map(|l| l.to_str().unwrap().to_string());
                let text = r.text().await.unwrap_or_default();
                match status {
                    201 => {
                        let id = location
                            .unwrap()
                            .split("/Patient/")
                            .nth(1)
                            .unwrap()
                            .split('/')
                            .next()
                            .unwrap()
                            .to_string();
                        load.tally.lock().unwrap().created.push(id);
                    }
                    503 if retry_after && is_transient_outcome(&text) => {
                        load.failed("503");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => load
                        .tally
                        .lock()
                        .unwrap()
                        .unexpected
                        .push(format!("POST Patient: {status} {text}")),
                }
            }
        })
    }

    /// An interface engine: HL7 v2 ADT messages in order, each resent until it gets an
    /// ACK (reconnecting when the connection drops).
    fn hl7_feed(
        &self,
        app: &TestApp,
        tag: &str,
        on_refused: OnRefused,
    ) -> tokio::task::JoinHandle<()> {
        let (load, addr, tag) = (self.clone(), app.mllp_addr.clone(), tag.to_string());
        tokio::spawn(async move {
            let mut client: Option<crossway::mllp::Client> = None;
            let mut i = 0;
            'messages: while !load.stopped() {
                i += 1;
                let control = format!("{tag}-{i}");
                let message = adt("A08", &control, &mrn(&control), "V1");
                loop {
                    if load.stopped() {
                        break 'messages;
                    }
                    if client.is_none() {
                        match crossway::mllp::Client::connect(&addr).await {
                            Ok(c) => client = Some(c.with_timeout(Duration::from_secs(30))),
                            Err(_) if on_refused == OnRefused::GiveUp => return,
                            Err(_) => {
                                load.failed("no connection");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    let sent = client.as_mut().unwrap().send(message.as_bytes()).await;
                    match sent {
                        Ok(ack) => {
                            let ack = String::from_utf8_lossy(&ack).replace('\r', "\n");
                            if ack_code(&ack) == "AA" {
                                load.tally.lock().unwrap().acked.push(control);
                            } else {
                                load.tally
                                    .lock()
                                    .unwrap()
                                    .unexpected
                                    .push(format!("{control}: {ack}"));
                            }
                            continue 'messages;
                        }
                        Err(_) => {
                            // No ACK: the engine keeps the message and sends it again.
                            load.failed("no ack");
                            client = None;
                            if on_refused == OnRefused::GiveUp {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        })
    }

    /// An EHR posting referral transactions (Patient … Task): each one a new referral
    /// and a `referral.created` event for the CBO's webhook.
    fn referral_intake(&self, app: &TestApp, tag: &str) -> tokio::task::JoinHandle<()> {
        let (load, client, url, tag) = (
            self.clone(),
            app.client.clone(),
            app.url(""),
            tag.to_string(),
        );
        tokio::spawn(async move {
            // Few enough that every delivery stays in one page of the delivery log.
            for i in 0..25 {
                if load.stopped() {
                    return;
                }
                let mut bundle = referral_bundle();
                bundle["entry"][0]["resource"]["identifier"] =
                    json!([{"system": MRN_SYSTEM, "value": format!("{tag}-{i}")}]);
                let sent = client
                    .post(&url)
                    .header("content-type", FHIR_JSON)
                    .body(bundle.to_string())
                    .send()
                    .await;
                let Ok(r) = sent else { return };
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                match status {
                    200 => {
                        let response: Value = serde_json::from_str(&text).unwrap();
                        load.tally
                            .lock()
                            .unwrap()
                            .tasks
                            .push(entry_id(&response, 4));
                    }
                    // A batch that lost a lock race with the other process: retried.
                    503 if is_transient_outcome(&text) => load.failed("503"),
                    _ => load
                        .tally
                        .lock()
                        .unwrap()
                        .unexpected
                        .push(format!("POST referral: {status} {text}")),
                }
                // Paced, so that events are still flowing when the kill comes.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    }

    /// A CBO accepting `ids` through `app` (409: the other process was first).
    fn cbo_accepts(
        &self,
        app: &TestApp,
        token: String,
        ids: Vec<String>,
    ) -> tokio::task::JoinHandle<()> {
        let (load, client, addr) = (self.clone(), reqwest::Client::new(), app.addr.clone());
        tokio::spawn(async move {
            for id in ids {
                if load.stopped() {
                    return;
                }
                let sent = client
                    .post(format!("http://{addr}/cbo/v1/referrals/{id}/accept"))
                    .bearer_auth(&token)
                    .json(&json!({}))
                    .send()
                    .await;
                let Ok(r) = sent else { return };
                match r.status().as_u16() {
                    200 => load.tally.lock().unwrap().accepted.push(id),
                    409 => {}
                    s => {
                        let text = r.text().await.unwrap_or_default();
                        load.tally
                            .lock()
                            .unwrap()
                            .unexpected
                            .push(format!("accept {id}: {s} {text}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    async fn finish(&self, tasks: Vec<tokio::task::JoinHandle<()>>) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

fn is_transient_outcome(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|o| {
        o["resourceType"] == "OperationOutcome" && o["issue"][0]["code"] == "transient"
    })
}

/// Everything acknowledged is in the store, once.
async fn assert_all_there(app: &TestApp, tally: &Tally) {
    for id in &tally.created {
        let r = app.get(&format!("Patient/{id}")).await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "Patient/{id} was answered 201 but is gone: {body}"
        );
    }
    for control in &tally.acked {
        let found = app
            .search_ids(&format!("Patient?identifier={MRN_SYSTEM}|{control}"))
            .await;
        assert_eq!(found.len(), 1, "{control} was acknowledged AA: {found:?}");
    }
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// (1) Two gateways share one PostgreSQL and Redis under FHIR intake, MLLP and CBO
/// actions; one is killed with `kill -9` mid-stream. Every acknowledged write is there;
/// every event reaches the webhook receiver; a delivery arrives twice only when the
/// killed process sent it and died before recording it (its claim expired and the
/// survivor made a second attempt), never twice in one attempt.
#[tokio::test]
async fn kill_9_of_one_of_two_gateways_under_mixed_load() {
    if store_kind() != "postgres" {
        eprintln!("kill_9_of_one_of_two_gateways_under_mixed_load: runs in the PostgreSQL pass");
        return;
    }
    let rx = receiver(Arc::new(|_| Behaviour::SlowOk(Duration::from_millis(50)))).await;
    let env = insecure_app_env("0.001");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut one = spawn_app_with(&env).await;
    let two = spawn_sibling(&one, &env).await;
    let created = one.cbo(ORG).post("webhooks", &json!({"url": rx.url})).await;
    assert_eq!(created.status, 201, "{}", created.body);

    // Referrals for the CBO to act on during the load.
    for i in 0..40 {
        let app = if i % 2 == 0 { &one } else { &two };
        let mut bundle = referral_bundle();
        bundle["entry"][0]["resource"]["identifier"] =
            json!([{"system": MRN_SYSTEM, "value": format!("KILL-REF-{i}")}]);
        let r = app.post("", &bundle).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let ids = two.cbo(ORG).referral_ids().await;
    assert_eq!(ids.len(), 40);
    let (odd, even): (Vec<_>, Vec<_>) = ids
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 1);
    let (odd, even) = (
        odd.into_iter().map(|(_, id)| id).collect(),
        even.into_iter().map(|(_, id)| id).collect(),
    );

    let load = Load::default();
    let mut tasks = Vec::new();
    for (n, app) in [&one, &two].into_iter().enumerate() {
        for w in 0..3 {
            tasks.push(load.fhir_creates(app, &format!("K{n}{w}"), OnRefused::GiveUp));
        }
        for w in 0..2 {
            tasks.push(load.hl7_feed(app, &format!("KILL-{n}{w}"), OnRefused::GiveUp));
        }
        tasks.push(load.referral_intake(app, &format!("KILL-REF-{n}")));
    }
    tasks.push(load.cbo_accepts(&one, one.cbo_token(ORG).await, even));
    tasks.push(load.cbo_accepts(&two, two.cbo_token(ORG).await, odd));
    load.progress("before the kill", 200, 100, 60).await;

    let killed_at = Instant::now();
    one.kill();
    load.progress("the survivor after the kill", 100, 50, 60)
        .await;
    let tally = load.finish(tasks).await;
    assert!(tally.unexpected.is_empty(), "{:#?}", tally.unexpected);
    assert!(!tally.accepted.is_empty());
    assert_all_there(&two, &tally).await;
    for id in &tally.tasks {
        let status = two.get(&format!("Task/{id}")).await.status();
        assert_eq!(status, 200, "Task/{id} was in a transaction answered 200");
    }
    for id in &tally.accepted {
        let r = two.cbo(ORG).get(&format!("referrals/{id}")).await;
        assert_eq!(
            r.body["status"], "accepted",
            "{id} was accepted: {}",
            r.body
        );
    }

    // The survivor delivers what the killed process had claimed once its claims expire.
    let metrics = format!("http://{}/metrics", two.addr);
    let mut pending = f64::MAX;
    for _ in 0..600 {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        pending = text
            .lines()
            .find_map(|l| l.strip_prefix("webhook_deliveries_pending "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX);
        if pending == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0.0, "webhook deliveries still pending after 60 s");
    let received = rx.got.lock().unwrap().clone();
    let mut by_id: HashMap<&str, Vec<Instant>> = HashMap::new();
    for r in &received {
        by_id.entry(&r.id).or_default().push(r.at);
    }
    // A receipt the delivery log does not count can only be the killed process's last
    // attempt (sent, never recorded): at most one per delivery, arriving by the kill.
    let endpoint = created.body["id"].as_str().unwrap();
    let attempts: HashMap<i64, i64> = two
        .cbo(ORG)
        .delivery_log(endpoint)
        .await
        .iter()
        .map(|d| (d["id"].as_i64().unwrap(), d["attempts"].as_i64().unwrap()))
        .collect();
    let grace = killed_at + Duration::from_millis(200);
    for r in &received {
        let times = &by_id[r.id.as_str()];
        let seq = r.sequence();
        let recorded = *attempts
            .get(&seq)
            .unwrap_or_else(|| panic!("no delivery record for event {seq}"));
        let unrecorded = i64::from(times.iter().any(|t| *t <= grace));
        assert!(
            times.len() as i64 <= recorded + unrecorded,
            "event {seq} ({}) arrived {} times; the delivery log counts {recorded} attempts",
            r.id,
            times.len()
        );
    }
    let sequences: std::collections::BTreeSet<i64> =
        received.iter().map(|r| r.sequence()).collect();
    let last = *sequences.last().unwrap();
    assert_eq!(
        sequences.len() as i64,
        last,
        "a gap in the delivered sequences"
    );
    eprintln!(
        "kill -9 under load: {} creates, {} referrals, {} ACKs, {} accepts acknowledged; {} events delivered, {} of them again after the kill",
        tally.created.len(),
        tally.tasks.len(),
        tally.acked.len(),
        tally.accepted.len(),
        by_id.len(),
        by_id.values().filter(|t| t.len() > 1).count()
    );
    let after = two.cbo(ORG).get(&format!("events?cursor={last}")).await;
    assert_eq!(after.body["data"], json!([]), "events never delivered");
    rx.server.stop(false).await;
}

/// A PostgreSQL of the test's own, so the test can restart it.
struct PgServer {
    dir: PathBuf,
    port: u16,
    /// Server settings (`-c name=value …`).
    settings: &'static str,
}

impl PgServer {
    fn start() -> PgServer {
        PgServer::start_with("")
    }

    fn start_with(settings: &'static str) -> PgServer {
        let dir = std::env::temp_dir().join(format!("crossway-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PgServer {
            dir,
            port,
            settings,
        };
        if is_root() {
            // initdb refuses to run as root.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        server.pg(&format!(
            "{}/initdb -D {} -U postgres -A trust --no-sync >/dev/null",
            pg_bin(),
            server.data().display()
        ));
        server.up();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a shell command as the `postgres` user when we are root; true on success.
    fn pg_try(&self, command: &str) -> bool {
        let mut cmd = if is_root() {
            let mut c = Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        };
        cmd.arg(command)
            .status()
            .expect("PostgreSQL must be installed (scripts/test installs it)")
            .success()
    }

    fn pg(&self, command: &str) {
        assert!(self.pg_try(command), "{command}");
    }

    fn up(&self) {
        self.pg(&format!(
            "{}/pg_ctl -D {} -l {}/pg.log -o '-p {} -k {} -c listen_addresses=127.0.0.1 {}' -w start >/dev/null",
            pg_bin(),
            self.data().display(),
            self.dir.display(),
            self.port,
            self.dir.display(),
            self.settings
        ));
    }

    /// Stops the server the way a crash does: what its log buffers held is lost.
    fn crash(&self) {
        self.pg(&format!(
            "{}/pg_ctl -D {} -m immediate stop >/dev/null",
            pg_bin(),
            self.data().display()
        ));
    }

    fn down(&self) {
        self.pg(&format!(
            "{}/pg_ctl -D {} -m fast -w stop >/dev/null",
            pg_bin(),
            self.data().display()
        ));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.pg_try(&format!(
            "{}/pg_ctl -D {} -m immediate stop >/dev/null 2>&1",
            pg_bin(),
            self.data().display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bin() -> String {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (scripts/test installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.last()
        .expect("no PostgreSQL under /usr/lib/postgresql")
        .display()
        .to_string()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// (2) PostgreSQL stops for a few seconds under FHIR and MLLP load, then starts again.
/// Meanwhile writes get 503 and messages no ACK (never a 500, AE or AR) and `/readyz`
/// says unavailable; afterwards the same gateway process serves again, and everything
/// acknowledged before, during and after is there.
#[tokio::test]
async fn postgres_restart_under_load_fails_cleanly_and_recovers() {
    if store_kind() != "postgres" {
        eprintln!(
            "postgres_restart_under_load_fails_cleanly_and_recovers: runs in the PostgreSQL pass"
        );
        return;
    }
    let pg = PgServer::start();
    let data_dir = std::env::temp_dir().join(format!("crossway-test-{}", uuid::Uuid::new_v4()));
    let app = spawn_app_at(data_dir, pg.url(), &[]).await;
    let (load, tasks) = Load::start(&app, "PGR", 4, 2, OnRefused::Retry);
    load.progress("before the restart", 100, 50, 60).await;

    pg.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["store"], "unavailable");
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.up();

    load.progress("after the restart", 100, 50, 60).await;
    let tally = load.finish(tasks).await;
    assert!(tally.unexpected.is_empty(), "{:#?}", tally.unexpected);
    assert!(
        tally.failures.get("503").is_some_and(|n| *n > 0),
        "no write hit the outage: {:?}",
        tally.failures
    );
    assert!(
        tally.failures.get("no ack").is_some_and(|n| *n > 0),
        "no message hit the outage: {:?}",
        tally.failures
    );
    assert_eq!(readyz(&app).await.0, 200);
    eprintln!(
        "PostgreSQL restart: {} creates and {} ACKs acknowledged; clean failures {:?}",
        tally.created.len(),
        tally.acked.len(),
        tally.failures
    );
    assert_all_there(&app, &tally).await;
    assert!(
        app.logs.lock().unwrap().contains("storage") || app.logs.lock().unwrap().contains("Store"),
        "the outage was not logged"
    );
}

/// PostgreSQL crashes under load. The writers commit without waiting for the log, and
/// the gateway answers only after a flush that follows the commit; so every create and
/// ACK answered before the crash is there after recovery. The server's log writer
/// waits 10 s between passes, so a commit that was not flushed is still only in its
/// buffers when the crash comes.
#[tokio::test]
async fn a_postgres_crash_under_load_loses_nothing_acknowledged() {
    if store_kind() != "postgres" {
        eprintln!(
            "a_postgres_crash_under_load_loses_nothing_acknowledged: runs in the PostgreSQL pass"
        );
        return;
    }
    let pg = PgServer::start_with("-c wal_writer_delay=10000 -c wal_writer_flush_after=0");
    let data_dir = std::env::temp_dir().join(format!("crossway-test-{}", uuid::Uuid::new_v4()));
    let app = spawn_app_at(data_dir, pg.url(), &[]).await;
    let (load, tasks) = Load::start(&app, "PGC", 8, 4, OnRefused::Retry);
    // Each crash comes at a random point of the flushes other writes cause (the audit
    // trail commits synchronously): three make a lost answer all but certain to show.
    for crash in 1..=3 {
        load.progress(&format!("before crash {crash}"), 200, 100, 60)
            .await;
        pg.crash();
        tokio::time::sleep(Duration::from_millis(500)).await;
        pg.up();
    }
    load.progress("after the crashes", 50, 20, 60).await;
    let tally = load.finish(tasks).await;
    assert!(tally.unexpected.is_empty(), "{:#?}", tally.unexpected);
    eprintln!(
        "PostgreSQL crashes: {} creates and {} ACKs acknowledged; clean failures {:?}",
        tally.created.len(),
        tally.acked.len(),
        tally.failures
    );
    assert_all_there(&app, &tally).await;
}

/// (3) Redis (identity cache, rate-limit counters) stops under load and comes back:
/// nothing fails meanwhile, `/readyz` reports it, and the cache is used again after.
#[tokio::test]
async fn redis_outage_under_load_is_not_felt_by_clients() {
    let redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(&[
        ("CROSSWAY_REDIS_URL", &url),
        ("CROSSWAY_RATE_LIMIT", "100000"),
    ])
    .await;
    let (load, tasks) = Load::start(&app, "RDS", 3, 2, OnRefused::GiveUp);
    load.progress("with Redis", 100, 50, 60).await;
    redis.kill();
    load.progress("without Redis", 100, 50, 60).await;
    assert_eq!(readyz(&app).await.1["cache"], "unavailable");
    redis.restart();
    load.progress("with Redis back", 100, 50, 60).await;
    let tally = load.finish(tasks).await;
    assert!(tally.unexpected.is_empty(), "{:#?}", tally.unexpected);
    assert!(
        tally.failures.is_empty(),
        "clients felt the outage: {:?}",
        tally.failures
    );
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["cache"], "redis", "{body}");
    assert_all_there(&app, &tally).await;
}

/// A small tmpfs of the test's own, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let path = std::env::temp_dir().join(format!("crossway-disk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        let out = as_root("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs (root or sudo needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Fills every free byte; returns the filler's path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = as_root("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `program`, through sudo unless we are root (mounting needs it).
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// (4) The filesystem under the SQLite data directory fills up under load: writes get
/// 503 and messages no ACK (never a 500, AE or AR), reads still work; when space
/// returns the same process writes again; the database passes SQLite's integrity check
/// and holds everything acknowledged.
#[tokio::test]
async fn a_full_disk_under_sqlite_fails_cleanly_and_recovers() {
    if store_kind() != "sqlite" {
        eprintln!("a_full_disk_under_sqlite_fails_cleanly_and_recovers: runs in the SQLite pass");
        return;
    }
    let disk = SmallDisk::mount("32m");
    let data_dir = disk.path.join("data");
    let db = data_dir.join("crossway.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut app = spawn_app_at(data_dir.clone(), url.clone(), &[]).await;
    let (load, tasks) = Load::start(&app, "DISK", 2, 1, OnRefused::Retry);
    load.progress("before the disk fills", 50, 20, 60).await;
    let some_patient = load.tally.lock().unwrap().created[0].clone();

    let filler = disk.fill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = load.tally.lock().unwrap().failures.clone();
        if f.get("503").is_some_and(|n| *n >= 3) && f.contains_key("no ack") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes kept succeeding on a full disk: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reads do not need space.
    assert_eq!(
        app.get(&format!("Patient/{some_patient}")).await.status(),
        200
    );
    assert!(
        app.logs.lock().unwrap().contains("disk is full"),
        "the cause is not in the log"
    );

    std::fs::remove_file(&filler).unwrap();
    load.progress("after space returned", 50, 20, 60).await;
    let tally = load.finish(tasks).await;
    assert!(tally.unexpected.is_empty(), "{:#?}", tally.unexpected);
    eprintln!(
        "full disk: {} creates and {} ACKs acknowledged; clean failures {:?}",
        tally.created.len(),
        tally.acked.len(),
        tally.failures
    );

    app.kill();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let check: (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check.0, "ok");
    drop(conn);
    let app = app.restart().await;
    assert_all_there(&app, &tally).await;
}
