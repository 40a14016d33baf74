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

/// The key of the auditor's token among the cached tokens.
const AUDITOR: &str = "(auditor)";

pub struct TestApp {
    pub addr: String,
    /// The MLLP listener's address.
    pub mllp_addr: String,
    /// `http://addr/fhir`
    pub base: String,
    pub client: reqwest::Client,
    pub database_url: String,
    data_dir: PathBuf,
    child: Child,
    keep_data: bool,
    pub logs: Arc<Mutex<String>>,
    /// The EHR client whose token `client` sends (scope `system/*.cruds`).
    pub ehr: EhrClient,
    /// CBO access tokens by organisation id, registered on first use.
    cbo_tokens: Mutex<std::collections::HashMap<String, String>>,
    /// The gateway's mappings directory, which operator commands use too.
    mappings_dir: String,
}

/// A registered EHR client and its private key, to sign client assertions.
#[derive(Clone)]
pub struct EhrClient {
    pub client_id: String,
    pub key_pem: String,
    pub kid: String,
}

/// A fresh P-384 key and its JWKS file contents.
pub fn new_ehr_key() -> (String, String, Value) {
    let pem = crossway::auth::keys::generate_pem().unwrap();
    let jwk = crossway::auth::keys::public_jwk(&pem).unwrap();
    let kid = jwk["kid"].as_str().unwrap().to_string();
    (pem, kid, serde_json::json!({"keys": [jwk]}))
}

/// A SMART client assertion: `claims` over the defaults (iss = sub = client id, aud,
/// exp in 4 minutes, a fresh jti), signed ES384 with `key_pem`.
pub fn sign_assertion(client: &EhrClient, aud: &str, claims: Value) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut body = serde_json::json!({
        "iss": client.client_id, "sub": client.client_id, "aud": aud,
        "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string(),
    });
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(client.kid.clone());
    let der = crossway::auth::keys::pem_to_der(&client.key_pem).unwrap();
    jsonwebtoken::encode(
        &header,
        &body,
        &jsonwebtoken::EncodingKey::from_ec_der(&der),
    )
    .unwrap()
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

/// A gateway on a given data directory and database (for tests that bring their own
/// PostgreSQL, or a data directory on a small filesystem).
pub async fn spawn_app_at(
    data_dir: PathBuf,
    database_url: String,
    env: &[(&str, &str)],
) -> TestApp {
    std::fs::create_dir_all(&data_dir).unwrap();
    start(data_dir, database_url, "127.0.0.1:0".into(), env).await
}

/// A second gateway process on the same store as `app` (its own data dir and port).
pub async fn spawn_sibling(app: &TestApp, env: &[(&str, &str)]) -> TestApp {
    let data_dir = std::env::temp_dir().join(format!("crossway-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&data_dir).unwrap();
    start(
        data_dir,
        app.database_url.clone(),
        "127.0.0.1:0".into(),
        env,
    )
    .await
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
        .env_remove("CROSSWAY_DEV_AUTH")
        .env("CROSSWAY_RATE_LIMIT", "0")
        .env(
            "CROSSWAY_MAPPINGS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"),
        )
        .env("CROSSWAY_SWEEP_INTERVAL_MS", "200")
        .env("CROSSWAY_MLLP_ADDR", "127.0.0.1:0")
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
                let mllp = line
                    .split("mllp_addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .unwrap_or("");
                let http = addr.split_whitespace().next().unwrap_or("");
                let _ = t.send((http.to_string(), mllp.to_string()));
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (addr, mllp_addr) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "crossway did not log its address; logs:\n{}",
                logs.lock().unwrap()
            )
        });
    let mut app = TestApp {
        base: format!("http://{addr}/fhir"),
        addr,
        mllp_addr,
        client: reqwest::Client::new(),
        database_url,
        data_dir,
        child,
        keep_data: false,
        logs,
        ehr: EhrClient {
            client_id: String::new(),
            key_pem: String::new(),
            kid: String::new(),
        },
        cbo_tokens: Mutex::default(),
        mappings_dir: env
            .iter()
            .find(|(k, _)| *k == "CROSSWAY_MAPPINGS_DIR")
            .map_or(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"), |(_, v)| v)
            .to_string(),
    };
    if env.iter().any(|(k, _)| *k == "CROSSWAY_TLS_CERT") {
        // An HTTPS app: the test brings its own client, trusting its certificate.
        return app;
    }
    // Every app gets an EHR client of its own, through the real registration command
    // and the real SMART token exchange; `client` then sends its token.
    app.ehr = app.add_ehr(&[]);
    let token = app.ehr_token(&app.ehr, None).await;
    app.client = bearer(&token);
    app
}

/// A client that sends `Authorization: Bearer {token}` with every request.
pub fn bearer(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl TestApp {
    /// Registers an EHR client with a fresh key (`crossway clients add ehr`, plus
    /// `extra` options); returns it with its private key.
    pub fn add_ehr(&self, extra: &[&str]) -> EhrClient {
        let (key_pem, kid, jwks) = new_ehr_key();
        let file = self
            .data_dir
            .join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&file, jwks.to_string()).unwrap();
        let mut args = vec![
            "clients",
            "add",
            "ehr",
            "--jwks",
            file.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(&self.operator(&args)).unwrap();
        EhrClient {
            client_id: out["client_id"].as_str().unwrap().to_string(),
            key_pem,
            kid,
        }
    }

    /// A client with the operator's audit scope (`system/AuditEvent.rs`, which no
    /// wildcard covers), and its GET of `path` below `/fhir` as JSON.
    /// `path` may also be a whole URL (a Bundle's next link).
    pub async fn audit_json(&self, path: &str) -> Value {
        let cached = self.cbo_tokens.lock().unwrap().get(AUDITOR).cloned();
        let token = match cached {
            Some(t) => t,
            None => {
                let auditor = self.add_ehr(&["--scope", "system/AuditEvent.rs"]);
                let t = self.ehr_token(&auditor, None).await;
                self.cbo_tokens
                    .lock()
                    .unwrap()
                    .insert(AUDITOR.into(), t.clone());
                t
            }
        };
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            self.url(path)
        };
        let r = bearer(&token).get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/auth/token", self.addr)
    }

    /// POSTs a token request form; returns (status, body).
    pub async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.token_url())
            .form(form)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// An access token for an EHR client, through a signed client assertion.
    pub async fn ehr_token(&self, client: &EhrClient, scope: Option<&str>) -> String {
        let (status, body) = self.ehr_token_request(client, scope).await;
        assert_eq!(status, 200, "token: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// The token endpoint's answer to `client`'s signed assertion (asking for `scope`).
    pub async fn ehr_token_request(&self, client: &EhrClient, scope: Option<&str>) -> (u16, Value) {
        let assertion = sign_assertion(client, &self.token_url(), serde_json::json!({}));
        let mut form = vec![
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.token_request(&form).await
    }

    /// Registers a CBO client for `org` (`crossway clients add cbo`); returns
    /// (client_id, client_secret).
    pub fn add_cbo_client(&self, org: &str, scope: Option<&str>) -> (String, String) {
        let target = format!("Organization/{org}");
        let mut args = vec!["clients", "add", "cbo", "--org", target.as_str(), "--json"];
        if let Some(s) = scope {
            args.extend(["--scope", s]);
        }
        let out: Value = serde_json::from_str(&self.operator(&args)).unwrap();
        (
            out["client_id"].as_str().unwrap().to_string(),
            out["client_secret"].as_str().unwrap().to_string(),
        )
    }

    /// An access token for a CBO client, with its secret (HTTP Basic).
    pub async fn cbo_secret_token(&self, client_id: &str, secret: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.token_url())
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// The access token `cbo(org)` sends, registering a client for `org` first time.
    pub async fn cbo_token(&self, org: &str) -> String {
        if let Some(t) = self.cbo_tokens.lock().unwrap().get(org) {
            return t.clone();
        }
        let (id, secret) = self.add_cbo_client(org, None);
        let (status, body) = self.cbo_secret_token(&id, &secret).await;
        assert_eq!(status, 200, "CBO token: {body}");
        let token = body["access_token"].as_str().unwrap().to_string();
        self.cbo_tokens
            .lock()
            .unwrap()
            .insert(org.to_string(), token.clone());
        token
    }

    /// `kill -9`: no shutdown hooks, no flushing.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGHUP: reload the mappings.
    pub fn hangup(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success(), "kill -HUP {pid}");
    }

    /// SIGTERM, then waits (at most 30 s) for the process to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running 30 s after SIGTERM; logs:\n{}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new process on the same store (after [`TestApp::kill`]).
    pub async fn restart(self) -> TestApp {
        self.restart_with(&[]).await
    }

    /// Stops the gateway and starts it again on the same data, with `env`.
    pub async fn restart_with(mut self, env: &[(&str, &str)]) -> TestApp {
        let (data_dir, database_url) = (self.data_dir.clone(), self.database_url.clone());
        self.keep_data = true;
        drop(self);
        start(data_dir, database_url, "127.0.0.1:0".into(), env).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A JSON document from a path outside `/fhir` (`/readyz`).
    pub async fn get_json_abs(&self, path: &str) -> Value {
        self.get_json_url(&format!("http://{}{path}", self.addr))
            .await
    }

    /// A JSON document from an absolute URL (a `next` link), with this app's token.
    pub async fn get_json_url(&self, url: &str) -> Value {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text (the test gateway is not in production: loopback may read it).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
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

    /// A client of the CBO API acting for organisation `org` (a registered CBO client).
    pub fn cbo(&self, org: &str) -> CboClient<'_> {
        CboClient {
            app: self,
            org: org.to_string(),
        }
    }

    /// Sends one HL7 v2 message over MLLP on a new connection; returns the ACK with
    /// segments on separate lines.
    pub async fn send_hl7(&self, message: &str) -> String {
        let mut client = crossway::mllp::Client::connect(&self.mllp_addr)
            .await
            .expect("connect to the MLLP listener");
        hl7_reply(&mut client, message).await
    }

    /// Runs a `crossway` operator command against this app's store; returns stdout.
    pub fn operator(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_operator(args);
        assert!(ok, "crossway {args:?} failed: {err}");
        out
    }

    /// Runs an operator command; returns (success, stdout, stderr).
    pub fn try_operator(&self, args: &[&str]) -> (bool, String, String) {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_crossway"))
            .args(args)
            .args(["--config", config])
            .env("CROSSWAY_DATA_DIR", &self.data_dir)
            .env("CROSSWAY_DATABASE_URL", &self.database_url)
            .env("CROSSWAY_MAPPINGS_DIR", &self.mappings_dir)
            .env("CROSSWAY_LOG", "warn")
            .env_remove("CROSSWAY_REDIS_URL")
            // The same cache as the gateways this suite starts, which it must keep right.
            .envs(std::env::var("CROSSWAY_TEST_REDIS_URL").map(|u| ("CROSSWAY_REDIS_URL", u)))
            .output()
            .expect("run crossway");
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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
        let token = self.app.cbo_token(&self.org).await;
        let resp = req.bearer_auth(token).send().await.unwrap();
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
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.app.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
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

    /// DELETE; returns the status.
    pub async fn delete_path(&self, path: &str) -> u16 {
        self.send(self.app.client.delete(self.url(path)))
            .await
            .status
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

    /// An endpoint's delivery log, newest first.
    pub async fn delivery_log(&self, endpoint: &str) -> Vec<Value> {
        let r = self.get(&format!("webhooks/{endpoint}/deliveries")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["data"].as_array().unwrap().clone()
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
        // scripts/test greps every gateway's log for secrets and patient names.
        if let Ok(dir) = std::env::var("CROSSWAY_TEST_LOG_DIR") {
            let file = std::path::Path::new(&dir).join(format!("{}.log", uuid::Uuid::new_v4()));
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(file, self.logs.lock().unwrap().as_bytes());
        }
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

/// Sends a message on an open MLLP connection; returns the ACK, one segment per line.
pub async fn hl7_reply(client: &mut crossway::mllp::Client, message: &str) -> String {
    let ack = client
        .send(message.replace('\n', "\r").as_bytes())
        .await
        .expect("an ACK");
    String::from_utf8_lossy(&ack).replace('\r', "\n")
}

/// MSA-1 of an ACK.
pub fn ack_code(ack: &str) -> &str {
    ack.lines()
        .find(|l| l.starts_with("MSA|"))
        .and_then(|l| l.split('|').nth(1))
        .unwrap_or("")
}

/// A Redis of the test's own, so the test can kill and restart it.
pub struct RedisServer {
    port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = RedisServer {
            port,
            child: Mutex::new(None),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        *self.child.lock().unwrap() = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// `kill -9`.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
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

/// An ADT message from St. Mary (`SMH`) for PID-3 `pid3`, visit `visit`.
pub fn adt(trigger: &str, control: &str, pid3: &str, visit: &str) -> String {
    let structure = match trigger {
        "A01" | "A04" | "A08" | "A11" | "A13" => "ADT_A01",
        "A40" => "ADT_A39",
        other => &format!("ADT_{other}"),
    };
    format!(
        "MSH|^~\\&|EPIC|SMH|CROSSWAY|GW|20250314153012-0500||ADT^{trigger}^{structure}|{control}|P|2.5.1\n\
         EVN|{trigger}|20250314152900-0500\n\
         PID|1||{pid3}||DOE^JANE||19800101|F\n\
         PV1|1|I|4W^412^B^SMH||||||||||||||||{visit}|||||||||||||||||01|||SMH|||||20250310081500-0500|20250314152500-0500\n"
    )
}

/// A PID-3 repeat: an SMH medical record number.
pub fn mrn(value: &str) -> String {
    format!("{value}^^^SMH^MR")
}

/// A stand-in for a system we cannot run (a case system, an EHR's FHIR server, a
/// subscriber) on loopback: every request goes to `answer`. Returns `http://addr` and
/// the handle that stops it.
pub fn stub_server<F>(answer: F) -> (String, actix_web::dev::ServerHandle)
where
    F: Fn(&actix_web::HttpRequest, &[u8]) -> actix_web::HttpResponse + Clone + Send + 'static,
{
    use actix_web::{App, HttpRequest, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let answer = answer.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let answer = answer.clone();
            async move { answer(&req, &body) }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}

/// A copy of the shipped mappings, to change without touching the repository's.
pub fn copy_of_mappings() -> PathBuf {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("crossway-mappings-{}", uuid::Uuid::new_v4()));
    copy(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")),
        &dir,
    );
    dir
}
