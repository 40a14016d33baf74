//! Spawns the real `crossway serve` binary on a random port, against the store chosen by
//! `CROSSWAY_TEST_STORE` (`sqlite`, the default, or `postgres`, which needs
//! `CROSSWAY_TEST_POSTGRES_URL`; `scripts/test` sets both up). Each app gets its own
//! data directory and, on PostgreSQL, its own database.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use sqlx::Connection;

pub const FHIR_JSON: &str = "application/fhir+json";

pub struct TestApp {
    pub addr: String,
    /// `http://addr/fhir`
    pub base: String,
    pub client: reqwest::Client,
    pub database_url: String,
    data_dir: PathBuf,
    child: Child,
    keep_data: bool,
    pub logs: Arc<Mutex<String>>,
}

pub fn store_kind() -> String {
    std::env::var("CROSSWAY_TEST_STORE").unwrap_or_else(|_| "sqlite".into())
}

async fn fresh_database_url(data_dir: &std::path::Path) -> String {
    match store_kind().as_str() {
        "sqlite" => format!("sqlite://{}/crossway.db?mode=rwc", data_dir.display()),
        "postgres" => {
            let admin = std::env::var("CROSSWAY_TEST_POSTGRES_URL")
                .expect("CROSSWAY_TEST_STORE=postgres needs CROSSWAY_TEST_POSTGRES_URL (scripts/test sets it)");
            let name = format!("cw_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to test PostgreSQL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let (server, _) = admin.rsplit_once('/').expect("URL with a database name");
            format!("{server}/{name}")
        }
        other => panic!("CROSSWAY_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like [`spawn_app`], with extra environment variables for the gateway.
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let data_dir = std::env::temp_dir().join(format!("crossway-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let database_url = fresh_database_url(&data_dir).await;
    start(data_dir, database_url, "127.0.0.1:0".into(), env).await
}

async fn start(
    data_dir: PathBuf,
    database_url: String,
    http_addr: String,
    env: &[(&str, &str)],
) -> TestApp {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crossway"));
    cmd.args(["serve", "--config", config])
        .env("CROSSWAY_HTTP_ADDR", &http_addr)
        .env("CROSSWAY_DATA_DIR", &data_dir)
        .env("CROSSWAY_DATABASE_URL", &database_url)
        .env("CROSSWAY_LOG", "info")
        .env("CROSSWAY_DEV_AUTH", "1")
        .env(
            "CROSSWAY_MAPPINGS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"),
        )
        .env("CROSSWAY_SWEEP_INTERVAL_MS", "200")
        .env_remove("CROSSWAY_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match std::env::var("CROSSWAY_TEST_REDIS_URL") {
        Ok(url) => cmd.env("CROSSWAY_REDIS_URL", url),
        Err(_) => cmd.env_remove("CROSSWAY_REDIS_URL"),
    };
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn crossway");
    let stdout = child.stdout.take().unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("http_addr=").nth(1)
                && let Some(t) = tx.take()
            {
                let _ = t.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "crossway did not log its address; logs:\n{}",
                logs.lock().unwrap()
            )
        });
    TestApp {
        base: format!("http://{addr}/fhir"),
        addr,
        client: reqwest::Client::new(),
        database_url,
        data_dir,
        child,
        keep_data: false,
        logs,
    }
}

impl TestApp {
    /// `kill -9`: no shutdown hooks, no flushing.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a new process on the same store (after [`TestApp::kill`]).
    pub async fn restart(mut self) -> TestApp {
        let (data_dir, database_url) = (self.data_dir.clone(), self.database_url.clone());
        self.keep_data = true;
        drop(self);
        start(data_dir, database_url, "127.0.0.1:0".into(), &[]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Creates a resource and returns the stored JSON (asserting 201).
    pub async fn create(&self, body: &Value) -> Value {
        let ty = body["resourceType"].as_str().unwrap();
        let resp = self.post(ty, body).await;
        let status = resp.status();
        let json: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "create {ty}: {json}");
        json
    }

    /// Posts the Gravity referral transaction; returns the response Bundle.
    pub async fn post_referral(&self) -> Value {
        let resp = self.post("", &referral_bundle()).await;
        let status = resp.status();
        let json: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "transaction: {json}");
        json
    }

    /// A client of the CBO API acting for organisation `org` (development header).
    pub fn cbo(&self, org: &str) -> CboClient<'_> {
        CboClient {
            app: self,
            org: org.to_string(),
        }
    }

    /// Ids of a searchset's matches.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let bundle = self.get_json(query).await;
        match_ids(&bundle)
    }
}

/// `/cbo/v1` as one organisation sees it.
pub struct CboClient<'a> {
    app: &'a TestApp,
    org: String,
}

/// An answer from the CBO API.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl CboClient<'_> {
    fn url(&self, path: &str) -> String {
        format!(
            "http://{}/cbo/v1/{}",
            self.app.addr,
            path.trim_start_matches('/')
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req
            .header("X-Crossway-Organization", &self.org)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.app.client.get(self.url(path))).await
    }

    /// POSTs a raw body with extra headers.
    pub async fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .app
            .client
            .post(self.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, &body.to_string(), &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        let req = self
            .app
            .client
            .put(self.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    /// The organisation's referral ids, in list order (all pages).
    pub async fn referral_ids(&self) -> Vec<String> {
        let r = self.get("referrals?limit=200").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Event types of the organisation's feed after `after`.
    pub async fn event_types(&self, after: i64) -> Vec<String> {
        let r = self.get(&format!("events?cursor={after}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn referral_bundle() -> Value {
    serde_json::from_str(include_str!("../fixtures/referral-transaction.json")).unwrap()
}

/// The id of the transaction-response entry at `i` (from its `location`).
pub fn entry_id(response: &Value, i: usize) -> String {
    let location = response["entry"][i]["response"]["location"]
        .as_str()
        .unwrap();
    location.split('/').nth(1).unwrap().to_string()
}

pub fn outcome_expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}
