//! Settings: built-in defaults, then a TOML file, then `CROSSWAY_*` environment variables.
//!
//! Invariant: nothing here is global; `main` loads one `Settings` and hands sub-parts to
//! the components that need them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file `crossway serve` reads when no `--config` is given (relative to the working dir).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// An address or a CIDR range (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Option<IpRange> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse().ok()?, None),
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpRange {
            network: addr,
            prefix,
        })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (V4(n), V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (V6(n), V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// HTTP listen address; port 0 picks a free port.
    pub http_addr: String,
    /// `sqlite://…` or `postgres://…`; empty means SQLite under `data_dir`.
    pub database_url: String,
    /// Redis for the identity cache and shared counters; empty means in-process only.
    pub redis_url: String,
    pub data_dir: PathBuf,
    /// `tracing` filter directive, e.g. `info` or `crossway=debug`.
    pub log: String,
    /// Base URL that clients use to reach `/fhir`, for `fullUrl` and `Location`.
    /// Empty: derived from each request's Host header.
    pub public_base_url: String,
    /// Proxies whose `Forwarded` / `X-Forwarded-*` headers are believed (addresses or
    /// CIDR ranges, `CROSSWAY_TRUSTED_PROXIES` comma-separated). From anyone else those
    /// headers are ignored: they would decide the audience a client assertion must name
    /// and the links we hand out. Empty: trust none.
    pub trusted_proxies: Vec<String>,
    /// Largest accepted request body, in bytes (larger gets 413).
    pub max_body_bytes: usize,
    /// Development only: honour `X-Crossway-Organization` on `/cbo/v1` as the caller's
    /// organisation (`CROSSWAY_DEV_AUTH=1`). Never enable in production.
    pub dev_auth: bool,
    /// Where the declarative rules live (`mappings/`).
    pub mappings_dir: PathBuf,
    /// How long the CBO event feed keeps events; older cursors get 410.
    pub event_retention_days: u32,
    /// How often the background sweep expires overdue referrals and prunes old rows.
    pub sweep_interval_ms: u64,
    /// MLLP listen address for HL7 v2 feeds; empty disables the listener.
    pub mllp_addr: String,
    /// PEM certificate chain and key for MLLP over TLS; both empty means plain TCP.
    pub mllp_tls_cert: PathBuf,
    pub mllp_tls_key: PathBuf,
    /// Largest accepted HL7 v2 message, in bytes (larger gets AR).
    pub mllp_max_message_bytes: usize,
    /// Connections one peer address may hold on the MLLP listener.
    pub mllp_max_connections_per_peer: usize,
    /// An MLLP connection on which no frame starts (or a started frame makes no
    /// progress) for this long is closed.
    pub mllp_idle_timeout_ms: u64,
    /// PEM bundle of CAs whose client certificates MLLP senders must present; empty
    /// means no client certificate is asked for.
    pub mllp_tls_client_ca: PathBuf,
    /// PEM certificate chain and key for HTTPS; both empty means plain HTTP (behind a
    /// TLS-terminating proxy).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The gateway's signing key (P-384, PKCS#8 PEM), shared by replicas; empty means
    /// `<data_dir>/keys/signing.pem`, generated on first start.
    pub signing_key_file: PathBuf,
    /// Bearer token Prometheus sends to `/metrics`. Empty: `/metrics` answers loopback
    /// peers only (development) or nobody (production).
    pub metrics_token: String,
    /// Requests per second per client; 0 turns the limit off. With Redis the limit
    /// holds across replicas.
    pub rate_limit_per_second: u32,
    /// `development` or `production`: which API keys are accepted (`test_` or `live_`).
    pub environment: String,
    /// Allow `http://` webhook URLs to loopback addresses (local testing only).
    pub allow_insecure_webhooks: bool,
    /// Multiplies every webhook retry delay and the 72-hour retry window (tests run
    /// the schedule in seconds); 1 in production.
    pub webhook_retry_scale: f64,
    /// Webhook dispatcher workers in this process (0: this process does not deliver).
    pub webhook_workers: usize,
    /// How long a receiver has to answer 2xx (cbo-api.md: 10 s).
    pub webhook_timeout_ms: u64,
    /// Organisations the gateway knows: CBO tenants and referral sources.
    #[serde(rename = "organization")]
    pub organizations: Vec<OrganizationConfig>,
    /// EHRs that keep referral Tasks on their own FHIR server (coordination-platform
    /// mode, the SDOH Clinical Care IG's indirect pattern).
    #[serde(rename = "ehr_server")]
    pub ehr_servers: Vec<EhrServerConfig>,
    /// How often each EHR server is polled for Tasks and sent our changes.
    pub ehr_poll_interval_ms: u64,
    /// Memory the in-memory caches may hold together, in MiB: half for current
    /// versions (`store::recent`), three eighths for built CBO views (`cbo::views`).
    /// Each forgets its older half when full, never everything at once.
    pub memory_budget_mb: usize,
    /// How often the store's identity generation is read, so that a merge committed by
    /// another gateway process empties this one's identity cache (this process's own
    /// merges empty it at once).
    pub identity_watch_ms: u64,
    /// How far before the newest `meta.lastUpdated` seen each poll asks again: a Task
    /// committed after a poll with an earlier timestamp is still found.
    pub ehr_poll_overlap_ms: u64,
    /// How often every open referral's EHR Task is read again in full (deletions, and
    /// anything a poll could have missed).
    pub ehr_reconcile_interval_ms: u64,
    /// SMTP relay for the Subscription email channel (`smtp://host:25`,
    /// `smtps://user:pass@host`); empty: the email channel is not offered.
    pub smtp_url: String,
    /// The sender of those mails.
    pub smtp_from: String,
}

/// An EHR FHIR server the gateway works as a coordination platform for. URLs and the
/// client id may be written `${NAME}` (read from the environment when used; until
/// every one is set the server is skipped).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EhrServerConfig {
    pub id: String,
    /// The server's FHIR base (`https://ehr.example.org/fhir`).
    pub base_url: String,
    /// SMART Backend Services token endpoint; the gateway signs its client assertion
    /// with its own key (JWKS at `/.well-known/jwks.json`).
    pub token_url: String,
    pub client_id: String,
    /// The SMART scopes asked for (`DEFAULT_EHR_SCOPE` unless set): what this server
    /// needs for our reads and write-backs.
    #[serde(default = "default_ehr_scope")]
    pub scope: String,
    /// How the EHR's Tasks name the gateway as owner: the `owner` search value
    /// (`Organization/crossway`).
    pub owner: String,
    /// The CBO the EHR's referrals go to.
    pub route_to: String,
}

/// What the coordinator does on an EHR server: search, read and update Tasks; read
/// their ServiceRequest and Patient, and the requester (PractitionerRole with its
/// Practitioner and Organization) shown to the CBO. Servers that validate a profiled
/// resource on write (Medplum) read its StructureDefinition with the caller's access,
/// so an update of an SDOHCC Task needs `StructureDefinition.rs` too.
pub const DEFAULT_EHR_SCOPE: &str = "system/Task.rus system/ServiceRequest.rs system/Patient.rs \
     system/PractitionerRole.rs system/Practitioner.rs system/Organization.rs \
     system/StructureDefinition.rs";

fn default_ehr_scope() -> String {
    DEFAULT_EHR_SCOPE.into()
}

/// `text` with each `${NAME}` replaced by that environment variable; the error is the
/// first name that is not set.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&std::env::var(name).map_err(|_| name.to_string())?);
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `${NAME}`s in `text`.
pub fn env_names(text: &str) -> Vec<&str> {
    text.split("${")
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name))
        .collect()
}

/// An organisation known to the gateway. Its FHIR Organization resource is created at
/// start if missing, so that Tasks can name it as owner by reference or by identifier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrganizationConfig {
    /// FHIR logical id of the Organization (`Organization/{id}`).
    pub id: String,
    pub name: String,
    /// `cbo` organisations receive referrals; `referrer` organisations send them.
    pub kind: OrganizationKind,
    #[serde(default, rename = "identifier")]
    pub identifiers: Vec<IdentifierConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OrganizationKind {
    Cbo,
    Referrer,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    pub system: String,
    pub value: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http_addr: "127.0.0.1:8080".into(),
            database_url: String::new(),
            redis_url: String::new(),
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            public_base_url: String::new(),
            trusted_proxies: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            dev_auth: false,
            mappings_dir: PathBuf::from("./mappings"),
            event_retention_days: 30,
            sweep_interval_ms: 30_000,
            mllp_addr: "127.0.0.1:2575".into(),
            mllp_tls_cert: PathBuf::new(),
            mllp_tls_key: PathBuf::new(),
            mllp_max_message_bytes: 16 * 1024 * 1024,
            mllp_max_connections_per_peer: 64,
            mllp_idle_timeout_ms: 300_000,
            mllp_tls_client_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            signing_key_file: PathBuf::new(),
            metrics_token: String::new(),
            rate_limit_per_second: 1000,
            environment: "development".into(),
            allow_insecure_webhooks: false,
            webhook_retry_scale: 1.0,
            webhook_workers: 2,
            webhook_timeout_ms: 10_000,
            organizations: Vec::new(),
            ehr_servers: Vec::new(),
            // The IG: no more often than every 15 minutes.
            ehr_poll_interval_ms: 900_000,
            identity_watch_ms: 500,
            memory_budget_mb: 512,
            ehr_poll_overlap_ms: 300_000,
            ehr_reconcile_interval_ms: 3_600_000,
            smtp_url: String::new(),
            smtp_from: "Crossway <crossway@localhost>".into(),
        }
    }
}

impl Settings {
    /// Loads `path` (or the default file when it exists), then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut settings = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Settings::default(),
        };
        settings.apply_env(|k| std::env::var(k).ok());
        settings.validate()?;
        Ok(settings)
    }

    fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("CROSSWAY_HTTP_ADDR") {
            self.http_addr = v;
        }
        if let Some(v) = var("CROSSWAY_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = var("CROSSWAY_REDIS_URL") {
            self.redis_url = v;
        }
        if let Some(v) = var("CROSSWAY_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_LOG") {
            self.log = v;
        }
        if let Some(v) = var("CROSSWAY_PUBLIC_BASE_URL") {
            self.public_base_url = v;
        }
        if let Some(v) = var("CROSSWAY_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(v) = var("CROSSWAY_DEV_AUTH") {
            self.dev_auth = v == "1" || v.eq_ignore_ascii_case("true");
        }
        if let Some(v) = var("CROSSWAY_MAPPINGS_DIR") {
            self.mappings_dir = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_EVENT_RETENTION_DAYS").and_then(|v| v.parse().ok()) {
            self.event_retention_days = v;
        }
        if let Some(v) = var("CROSSWAY_SWEEP_INTERVAL_MS").and_then(|v| v.parse().ok()) {
            self.sweep_interval_ms = v;
        }
        if let Some(v) = var("CROSSWAY_MLLP_ADDR") {
            self.mllp_addr = v;
        }
        if let Some(v) = var("CROSSWAY_MLLP_TLS_CERT") {
            self.mllp_tls_cert = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_MLLP_TLS_KEY") {
            self.mllp_tls_key = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_MLLP_MAX_CONNECTIONS_PER_PEER").and_then(|v| v.parse().ok())
        {
            self.mllp_max_connections_per_peer = v;
        }
        if let Some(v) = var("CROSSWAY_MLLP_IDLE_TIMEOUT_MS").and_then(|v| v.parse().ok()) {
            self.mllp_idle_timeout_ms = v;
        }
        if let Some(v) = var("CROSSWAY_MLLP_MAX_MESSAGE_BYTES").and_then(|v| v.parse().ok()) {
            self.mllp_max_message_bytes = v;
        }
        if let Some(v) = var("CROSSWAY_MLLP_TLS_CLIENT_CA") {
            self.mllp_tls_client_ca = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_TLS_CERT") {
            self.tls_cert = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_TLS_KEY") {
            self.tls_key = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_SIGNING_KEY_FILE") {
            self.signing_key_file = PathBuf::from(v);
        }
        if let Some(v) = var("CROSSWAY_METRICS_TOKEN") {
            self.metrics_token = v;
        }
        if let Some(v) = var("CROSSWAY_MAX_BODY_BYTES").and_then(|v| v.parse().ok()) {
            self.max_body_bytes = v;
        }
        if let Some(v) = var("CROSSWAY_RATE_LIMIT").and_then(|v| v.parse().ok()) {
            self.rate_limit_per_second = v;
        }
        if let Some(v) = var("CROSSWAY_ENVIRONMENT") {
            self.environment = v;
        }
        if let Some(v) = var("CROSSWAY_ALLOW_INSECURE_WEBHOOKS") {
            self.allow_insecure_webhooks = v == "1" || v.eq_ignore_ascii_case("true");
        }
        if let Some(v) = var("CROSSWAY_WEBHOOK_RETRY_SCALE").and_then(|v| v.parse().ok()) {
            self.webhook_retry_scale = v;
        }
        if let Some(v) = var("CROSSWAY_WEBHOOK_WORKERS").and_then(|v| v.parse().ok()) {
            self.webhook_workers = v;
        }
        if let Some(v) = var("CROSSWAY_WEBHOOK_TIMEOUT_MS").and_then(|v| v.parse().ok()) {
            self.webhook_timeout_ms = v;
        }
        if let Some(v) = var("CROSSWAY_MEMORY_BUDGET_MB").and_then(|v| v.parse().ok()) {
            self.memory_budget_mb = v;
        }
        if let Some(v) = var("CROSSWAY_IDENTITY_WATCH_MS").and_then(|v| v.parse().ok()) {
            self.identity_watch_ms = v;
        }
        if let Some(v) = var("CROSSWAY_EHR_POLL_INTERVAL_MS").and_then(|v| v.parse().ok()) {
            self.ehr_poll_interval_ms = v;
        }
        if let Some(v) = var("CROSSWAY_EHR_POLL_OVERLAP_MS").and_then(|v| v.parse().ok()) {
            self.ehr_poll_overlap_ms = v;
        }
        if let Some(v) = var("CROSSWAY_EHR_RECONCILE_INTERVAL_MS").and_then(|v| v.parse().ok()) {
            self.ehr_reconcile_interval_ms = v;
        }
        if let Some(v) = var("CROSSWAY_SMTP_URL") {
            self.smtp_url = v;
        }
        if let Some(v) = var("CROSSWAY_SMTP_FROM") {
            self.smtp_from = v;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for proxy in &self.trusted_proxies {
            IpRange::parse(proxy).ok_or_else(|| ConfigError::Invalid {
                key: "trusted_proxies",
                message: format!("{proxy:?} is not an IP address or CIDR range"),
            })?;
        }
        let db = self.database_url.as_str();
        if !(db.is_empty() || db.starts_with("sqlite:") || db.starts_with("postgres")) {
            return Err(ConfigError::Invalid {
                key: "database_url",
                message: "must start with sqlite:// or postgres://".into(),
            });
        }
        if self.mllp_tls_cert.as_os_str().is_empty() != self.mllp_tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "mllp_tls_cert",
                message: "MLLP over TLS needs both mllp_tls_cert and mllp_tls_key".into(),
            });
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                message: "HTTPS needs both tls_cert and tls_key".into(),
            });
        }
        if !matches!(self.environment.as_str(), "development" | "production") {
            return Err(ConfigError::Invalid {
                key: "environment",
                message: "must be development or production".into(),
            });
        }
        if self.dev_auth && self.environment == "production" {
            return Err(ConfigError::Invalid {
                key: "dev_auth",
                message: "the development header cannot be enabled in production".into(),
            });
        }
        for ehr in &self.ehr_servers {
            if !self
                .organizations
                .iter()
                .any(|o| o.id == ehr.route_to && o.kind == OrganizationKind::Cbo)
            {
                return Err(ConfigError::Invalid {
                    key: "ehr_server.route_to",
                    message: format!(
                        "{:?} (EHR server {}) is not a configured community organisation",
                        ehr.route_to, ehr.id
                    ),
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for org in &self.organizations {
            if !crate::resource::is_valid_id(&org.id) {
                return Err(ConfigError::Invalid {
                    key: "organization.id",
                    message: format!("{:?} is not a valid FHIR id", org.id),
                });
            }
            if !seen.insert(org.id.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "organization.id",
                    message: format!("{:?} is configured twice", org.id),
                });
            }
        }
        Ok(())
    }

    pub fn production(&self) -> bool {
        self.environment == "production"
    }

    /// The configured organisation ids, which visibility rules must name.
    pub fn organization_ids(&self) -> Vec<String> {
        self.organizations.iter().map(|o| o.id.clone()).collect()
    }

    /// The database URL actually used: the configured one, or SQLite in the data dir.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("crossway.db").display()
            )
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        let mut s: Settings = toml::from_str(
            "http_addr = \"0.0.0.0:1\"\nlog = \"debug\"\n[[organization]]\nid = \"a\"\nname = \"A\"\nkind = \"cbo\"\n",
        )
        .unwrap();
        s.apply_env(|k| (k == "CROSSWAY_HTTP_ADDR").then(|| "127.0.0.1:0".to_string()));
        assert_eq!(s.http_addr, "127.0.0.1:0");
        assert_eq!(s.log, "debug");
        assert_eq!(s.organizations[0].kind, OrganizationKind::Cbo);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Settings>("htp_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("htp_addr"), "{err}");
    }

    #[test]
    fn duplicate_organization_ids_are_refused() {
        let s: Settings = toml::from_str(
            "[[organization]]\nid = \"a\"\nname = \"A\"\nkind = \"cbo\"\n[[organization]]\nid = \"a\"\nname = \"B\"\nkind = \"cbo\"\n",
        )
        .unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn default_database_is_sqlite_in_the_data_dir() {
        let s = Settings::default();
        assert_eq!(
            s.effective_database_url(),
            "sqlite://./data/crossway.db?mode=rwc"
        );
    }

    #[test]
    fn environment_names_are_expanded_or_reported() {
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand_env("x${PATH}/y").unwrap(), format!("x{path}/y"));
        assert_eq!(
            expand_env("${CROSSWAY_SPEC_TEST_UNSET}").unwrap_err(),
            "CROSSWAY_SPEC_TEST_UNSET"
        );
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert_eq!(env_names("${A}/x/${B_C}"), ["A", "B_C"]);
    }
}
