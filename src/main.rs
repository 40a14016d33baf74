//! `crossway`: the gateway and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crossway::config::Settings;
use crossway::startup::Application;
use crossway::store::Store;
use crossway::telemetry;

/// Request handling allocates many short-lived JSON values across threads; mimalloc's
/// per-thread heaps do that with far less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "crossway",
    version,
    about = "Social-care referral gateway: FHIR R4, HL7 v2 and a CBO API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (default: config/default.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply schema migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Feed messages that were not applied (dead letters, rejected, identity conflicts).
    Dlq {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The person index: conflicts to review, merges and unlinks.
    Identity {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Registered clients: EHR systems (SMART Backend Services) and CBOs.
    Clients {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// The gateway's signing key.
    Keys {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Captured HIE traffic: what the gateway would make of it, and the rules it needs.
    Feeds {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: FeedsCommand,
    },
    /// The declarative rules in mappings/: check them, test them against their
    /// samples, try a changed set against stored traffic.
    Mappings {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The mappings directory.
        #[arg(long, global = true, default_value = "mappings")]
        dir: PathBuf,
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// The community resource directory (Open Referral HSDS 3.0), served at /hsds/.
    Directory {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Coordination-platform mode: the EHR servers' Tasks and their write-backs.
    Ehr {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: EhrCommand,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Take in HSDS 3.0: API JSON (one entity, a page of a list, an array, or a
    /// directory of such files), the tabular package (a directory of CSV files named
    /// after their tables, e.g. services.csv), or the https URL of an HSDS API list
    /// (`…/services`; its pages are followed). Every entity is checked against the HSDS
    /// schemas; the report says what was taken, updated, left unchanged and refused,
    /// and why. Exits 1 when something was refused (the rest is stored).
    Import {
        /// A file, a directory or a URL.
        source: String,
        /// The directory to fill (`/hsds/` serves `default`).
        #[arg(long, default_value = crossway::directory::DEFAULT_TENANT)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum EhrCommand {
    /// Write-backs whose last attempt failed: server, the EHR's Task id, the local Task,
    /// failures in a row, last and next attempt, and the error with the server's
    /// diagnostics. Tab-separated, longest failing first.
    Stuck,
}

#[derive(Subcommand)]
enum FeedsCommand {
    /// Per sender: message types, versions, processing ids, the ACK each message would
    /// get and why, identifier authorities and types and how they resolve, codes per
    /// table, fields no rule reads. Files of one or many messages (CR, LF, CRLF, BOM,
    /// batches, MLLP frames) or Da Vinci Bundles; directories are walked. No store, no
    /// network.
    Profile {
        /// Captured files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The mappings the traffic is profiled against.
        #[arg(long, default_value = "mappings")]
        dir: PathBuf,
        /// Write a copy of the mappings with the drafted rules (choices marked CHOOSE)
        /// and the messages as hie/samples with their expected outputs.
        #[arg(long)]
        draft: Option<PathBuf>,
        /// The profile as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MappingsCommand {
    /// Load every file; report unknown keys, conflicting rules and unmapped codes with
    /// file:line.
    Check,
    /// Run every sample under <dir>/**/samples/ and compare with its expected output.
    Test {
        /// Write the expected outputs from what the mappings produce now (review the
        /// diff in git before committing).
        #[arg(long)]
        update: bool,
    },
    /// Re-map stored inbound messages with <dir> as a candidate and report what would
    /// change against the gateway's current mappings. Writes nothing.
    Replay {
        /// Messages received from this time on (FHIR date or dateTime).
        #[arg(long)]
        since: String,
        /// At most this many messages, oldest first.
        #[arg(long, default_value_t = 10000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client; prints its credential (a CBO's secret only this once).
    Add {
        #[command(subcommand)]
        kind: AddClient,
    },
    /// Every client and API key, revoked ones marked.
    List,
    /// Revoke a client (and its API keys) or one API key (`k…` id).
    Revoke { id: String },
    /// A new API key for a CBO client (at most two active, for rotation).
    ApiKey {
        client_id: String,
        /// A `live_` key (accepted by production gateways); default `test_`.
        #[arg(long)]
        live: bool,
        /// Narrower scopes than the client's.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// An access token for a registered client, signed with this gateway's key
    /// (for scripts and local testing; clients normally use POST /auth/token).
    Token {
        client_id: String,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Subcommand)]
enum AddClient {
    /// An EHR system: its public keys verify its client assertions.
    Ehr {
        /// A JSON Web Key Set file (public keys, each with a kid).
        #[arg(long, required_unless_present = "jwks_url")]
        jwks: Option<PathBuf>,
        /// Or an https:// URL serving the set (fetched and cached).
        #[arg(long)]
        jwks_url: Option<String>,
        /// The organisation it acts for (`Organization/ID` or `system|value`): decides
        /// whether it is a Task's requester or owner. None: unrestricted.
        #[arg(long)]
        org: Option<String>,
        /// Default: system/*.cruds.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, default_value = "EHR client")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A community organisation; the organisation becomes a CBO tenant.
    Cbo {
        /// `Organization/ID` or an identifier `system|value`.
        #[arg(long)]
        org: String,
        /// Default: all four CBO scopes.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new signing key; the previous one still verifies tokens it signed.
    /// Restart the gateway to use it.
    Rotate,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per message waiting for a human, oldest first.
    List,
    /// One message in full, with its raw text.
    Show { id: String },
    /// Re-run messages through the current mappings.
    Replay {
        /// Message id (from `dlq list`).
        id: Option<String>,
        /// Every message in the list.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Messages whose identifiers named several persons.
    Conflicts,
    /// Who an identifier (`system|value`) names, with all of that person's identifiers.
    Show { identifier: String },
    /// Retire the person named by `--retired` into the one named by `--survivor`.
    Merge {
        #[arg(long)]
        survivor: String,
        #[arg(long)]
        retired: String,
    },
    /// Undo the merge that made `identifier` an alias.
    Unmerge { identifier: String },
}

mod operator {
    //! Operator commands: print for people, exit non-zero when something failed.

    use super::{
        AddClient, ClientsCommand, DirectoryCommand, DlqCommand, EhrCommand, FeedsCommand,
        IdentityCommand, KeysCommand, MappingsCommand,
    };
    use crossway::auth::registry::{self, NewClient, PublicKeys};
    use crossway::auth::{Authority, ClientKind, RateLimiter, SigningKeys};
    use crossway::config::OrganizationKind;
    use crossway::config::Settings;
    use crossway::fhir::datetime::format_instant;
    use crossway::fhir::engine::Fhir;
    use crossway::identity::Identifier;
    use crossway::startup::{OperatorTools, operator_tools};
    use crossway::store::Store;
    use crossway::store::TenantRow;
    use serde_json::{Value, json};

    fn identifier(token: &str) -> anyhow::Result<Identifier> {
        match token.split_once('|') {
            Some((system, value)) if !system.is_empty() && !value.is_empty() => {
                Ok(Identifier::new(system, value, None))
            }
            _ => anyhow::bail!("identifier {token:?} must be system|value"),
        }
    }

    pub async fn ehr(settings: &Settings, command: EhrCommand) -> anyhow::Result<()> {
        let store = Store::open(&settings.effective_database_url()).await?;
        match command {
            EhrCommand::Stuck => {
                for s in store.ehr_stuck().await? {
                    println!(
                        "{}\t{}\tTask/{}\t{}\t{}\t{}\t{}",
                        s.ehr,
                        s.remote_task,
                        s.local_task,
                        s.failures,
                        s.last_attempt_at.map(format_instant).unwrap_or_default(),
                        format_instant(s.next_attempt_at),
                        s.error
                    );
                }
            }
        }
        store.close().await;
        Ok(())
    }

    pub async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
        let OperatorTools { store, feed, .. } = operator_tools(settings).await?;
        match command {
            DlqCommand::List => {
                for m in store.dead_letters().await? {
                    println!(
                        "{}  {}  {}  {}  {}  {}  {}",
                        m.id,
                        format_instant(m.received_at),
                        m.status,
                        m.source,
                        m.control_id,
                        m.event,
                        m.error.unwrap_or_default()
                    );
                }
            }
            DlqCommand::Show { id } => {
                let m = store
                    .inbound_message(&id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no message {id}"))?;
                println!(
                    "id: {}\nreceived: {}\nstatus: {}\nsource: {}\ncontrol id: {}\nformat: {}\nevent: {}\nerror: {}\n",
                    m.id,
                    format_instant(m.received_at),
                    m.status,
                    m.source,
                    m.control_id,
                    m.format,
                    m.event,
                    m.error.as_deref().unwrap_or("")
                );
                println!("{}", m.body.replace('\r', "\n"));
            }
            DlqCommand::Replay { id, all } => {
                let messages = match (id, all) {
                    (Some(id), _) => vec![
                        store
                            .inbound_message(&id)
                            .await?
                            .ok_or_else(|| anyhow::anyhow!("no message {id}"))?,
                    ],
                    (None, true) => store.dead_letters().await?,
                    (None, false) => anyhow::bail!("name a message id or pass --all"),
                };
                let mut failed = 0;
                for m in &messages {
                    match feed.replay(m).await {
                        Ok(taken) => println!("{}  replayed: {taken:?}", m.id),
                        Err(e) => {
                            failed += 1;
                            println!("{}  still failing: {e}", m.id);
                        }
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} messages still fail", messages.len());
                }
            }
        }
        Ok(())
    }

    /// `Organization/ID` or `system|value` → (id, name, identifiers), creating the
    /// Organization resource when the gateway has none for it.
    async fn organization(fhir: &Fhir, token: &str) -> anyhow::Result<(String, String, Value)> {
        let found = if let Some(id) = token.strip_prefix("Organization/") {
            if !crossway::fhir::is_valid_id(id) {
                anyhow::bail!("{id:?} is not a valid FHIR id");
            }
            fhir.read("Organization", id).await.ok().map(|s| s.body)
        } else if let Some((system, value)) = token.split_once('|') {
            let bundle = fhir
                .search(
                    "Organization",
                    &[("identifier".into(), format!("{system}|{value}"))],
                    false,
                    "",
                )
                .await?;
            let bundle: Value = serde_json::from_str(&bundle)?;
            bundle.pointer("/entry/0/resource").map(|r| r.to_string())
        } else {
            anyhow::bail!("--org must be Organization/ID or system|value");
        };
        let org: Value = match found {
            Some(body) => serde_json::from_str(&body)?,
            None => {
                let (id, identifier) = match token.split_once('|') {
                    Some((system, value)) if !token.starts_with("Organization/") => {
                        let digest = crossway::auth::registry::short_hash(token);
                        (
                            format!("org-{digest}"),
                            json!([{"system": system, "value": value}]),
                        )
                    }
                    _ => (
                        token.trim_start_matches("Organization/").to_string(),
                        json!([]),
                    ),
                };
                let mut org =
                    json!({"resourceType": "Organization", "id": id, "active": true, "name": id});
                if identifier.as_array().is_some_and(|a| !a.is_empty()) {
                    org["identifier"] = identifier;
                }
                fhir.update("Organization", &id, org.clone(), None, None)
                    .await?;
                org
            }
        };
        let id = org["id"].as_str().unwrap_or_default().to_string();
        let name = org["name"].as_str().unwrap_or(&id).to_string();
        let identifiers = org.get("identifier").cloned().unwrap_or(json!([]));
        Ok((id, name, identifiers))
    }

    pub async fn clients(settings: &Settings, command: ClientsCommand) -> anyhow::Result<()> {
        let OperatorTools { store, fhir, .. } = operator_tools(settings).await?;
        let now = crossway::fhir::datetime::now_micros();
        match command {
            ClientsCommand::Add { kind } => {
                let (new, json_out) = match kind {
                    AddClient::Ehr {
                        jwks,
                        jwks_url,
                        org,
                        scope,
                        name,
                        json,
                    } => {
                        let keys = match (jwks, jwks_url) {
                            (Some(path), _) => PublicKeys::Inline(
                                std::fs::read_to_string(&path)
                                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                            ),
                            (None, Some(url)) => PublicKeys::Url(url),
                            (None, None) => anyhow::bail!("give --jwks FILE or --jwks-url URL"),
                        };
                        let organization = match org {
                            Some(o) => Some(organization(&fhir, &o).await?.0),
                            None => None,
                        };
                        (
                            NewClient {
                                kind: ClientKind::Ehr,
                                name,
                                organization,
                                scopes: scope,
                                keys: Some(keys),
                            },
                            json,
                        )
                    }
                    AddClient::Cbo {
                        org,
                        scope,
                        name,
                        json,
                    } => {
                        let (id, org_name, identifiers) = organization(&fhir, &org).await?;
                        if settings
                            .organizations
                            .iter()
                            .any(|o| o.id == id && o.kind == OrganizationKind::Referrer)
                        {
                            anyhow::bail!(
                                "Organization/{id} is configured as a referrer, not a community organisation"
                            );
                        }
                        store
                            .upsert_tenant(
                                &TenantRow {
                                    organization_id: id.clone(),
                                    name: org_name.clone(),
                                    identifiers: identifiers.to_string(),
                                },
                                now,
                            )
                            .await?;
                        (
                            NewClient {
                                kind: ClientKind::Cbo,
                                name: name.unwrap_or(org_name),
                                organization: Some(id),
                                scopes: scope,
                                keys: None,
                            },
                            json,
                        )
                    }
                };
                let registered = registry::register(&store, new, now).await?;
                let c = &registered.client;
                let mut out = json!({"client_id": c.client_id, "kind": c.kind, "scope": c.scopes});
                if let Some(org) = &c.organization_id {
                    out["organization"] = json!(format!("Organization/{org}"));
                }
                if let Some(secret) = &registered.secret {
                    out["client_secret"] = json!(secret);
                }
                if json_out {
                    println!("{out}");
                } else {
                    println!(
                        "client_id: {}\nkind: {}\nscope: {}",
                        c.client_id, c.kind, c.scopes
                    );
                    if let Some(org) = &c.organization_id {
                        println!("organization: Organization/{org}");
                    }
                    if let Some(secret) = &registered.secret {
                        println!("client_secret: {secret}\n(shown once: store it now)");
                    }
                }
            }
            ClientsCommand::List => {
                for c in store.clients().await? {
                    let state = if c.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}  {}  {}  {}  {}",
                        c.client_id,
                        c.kind,
                        state,
                        c.organization_id
                            .as_deref()
                            .map_or("-".to_string(), |o| format!("Organization/{o}")),
                        c.scopes,
                        c.name
                    );
                    for k in store.api_keys_of(&c.client_id).await? {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!("  key {}  {}_…  {}  {}", k.key_id, k.mode, state, k.scopes);
                    }
                }
            }
            ClientsCommand::Revoke { id } => {
                let done = if id.starts_with('k') && store.api_key(&id).await?.is_some() {
                    store.revoke_api_key(&id, now).await?
                } else {
                    store.revoke_client(&id, now).await?
                };
                if !done {
                    anyhow::bail!("no active client or API key {id}");
                }
                println!("revoked {id}");
            }
            ClientsCommand::ApiKey {
                client_id,
                live,
                scope,
                json,
            } => {
                let (row, key) =
                    registry::add_api_key(&store, &client_id, live, scope.as_deref(), now).await?;
                if json {
                    println!(
                        "{}",
                        json!({"key_id": row.key_id, "api_key": key, "scope": row.scopes})
                    );
                } else {
                    println!(
                        "key_id: {}\napi_key: {key}\n(shown once: store it now)",
                        row.key_id
                    );
                }
            }
            ClientsCommand::Token { client_id, scope } => {
                let keys =
                    SigningKeys::load_or_create(&settings.data_dir, &settings.signing_key_file)?;
                let authority = Authority::new(
                    store.clone(),
                    keys,
                    RateLimiter::new(0, None),
                    settings.production(),
                );
                let token = authority.mint(&client_id, scope.as_deref()).await?;
                println!("{}", token.access_token);
            }
        }
        Ok(())
    }

    pub fn feeds(settings: &Settings, command: FeedsCommand) -> anyhow::Result<()> {
        use crossway::mapping::Mappings;
        use crossway::workbench::profile;
        let FeedsCommand::Profile {
            paths,
            dir,
            draft,
            json,
        } = command;
        let organizations = settings.organization_ids();
        let mappings = Mappings::load(&dir, &organizations).map_err(|e| anyhow::anyhow!("{e}"))?;
        let report = profile::profile(&paths, &mappings, progress_bar("profiling"))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", profile::render(&report));
        }
        if let Some(to) = draft {
            if to.exists() {
                anyhow::bail!(
                    "--draft {}: already exists; name a new directory",
                    to.display()
                );
            }
            profile::draft(&report, &dir, &to, &organizations)?;
            eprintln!(
                "drafted {}: review the CHOOSE: lines, then `crossway mappings test --dir {}`",
                to.display(),
                to.display()
            );
        }
        Ok(())
    }

    pub async fn directory(settings: &Settings, command: DirectoryCommand) -> anyhow::Result<()> {
        use crossway::directory::import;
        let DirectoryCommand::Import { source, tenant } = command;
        let read = if source.starts_with("https://") || source.starts_with("http://") {
            fetch_hsds(&source, settings.allow_insecure_webhooks).await?
        } else {
            import::read_path(std::path::Path::new(&source))?
        };
        let store = Store::open(&settings.effective_database_url()).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut progress = progress_count("importing");
        let report = import::import(&store, &tenant, read, now, &mut progress).await;
        store.close().await;
        let report = report?;
        print!("{source} into directory {tenant}: {}", report.render());
        if !report.refused.is_empty() {
            anyhow::bail!("{} entries were refused", report.refused.len());
        }
        Ok(())
    }

    /// The pages of an HSDS API list at `url` (following `page=` until `last_page`),
    /// through the client for tenant-chosen addresses: public hosts only, https
    /// (http to loopback with `CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1`), no redirects.
    async fn fetch_hsds(
        url: &str,
        allow_insecure: bool,
    ) -> anyhow::Result<crossway::directory::import::Read> {
        use crossway::directory::import::{self, Read};
        if let Some(problem) = crossway::outbox::destination::url_problem(url, allow_insecure) {
            anyhow::bail!("{url}: the URL {problem}");
        }
        let client =
            crossway::outbox::tenant_client(std::time::Duration::from_secs(60), allow_insecure);
        let mut parsed = url::Url::parse(url)?;
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.rfind(|p| !p.is_empty()))
            .unwrap_or("")
            .to_string();
        let mut all = Read::default();
        let mut progress = progress_count("fetching pages");
        for page in 1.. {
            let resp = client.get(parsed.as_str()).send().await?;
            if !resp.status().is_success() {
                anyhow::bail!("GET {parsed}: {}", resp.status());
            }
            let bytes = resp.bytes().await?;
            let read = import::read_json(parsed.as_str(), &name, &bytes)?;
            all.candidates.extend(read.candidates);
            all.refused.extend(read.refused);
            all.skipped.extend(read.skipped);
            let doc: Value = serde_json::from_slice(&bytes)?;
            let total = doc.get("total_pages").and_then(Value::as_u64).unwrap_or(1);
            progress(page, total.max(page));
            let last = doc
                .get("last_page")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if last || doc.get("contents").is_none() || page >= total.min(100_000) {
                break;
            }
            let rest: Vec<(String, String)> = parsed
                .query_pairs()
                .filter(|(k, _)| k != "page")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            parsed
                .query_pairs_mut()
                .clear()
                .extend_pairs(rest)
                .append_pair("page", &(page + 1).to_string());
        }
        progress(1, 1);
        Ok(all)
    }

    /// A progress line on stderr when it is a terminal (nothing in a pipe or a log):
    /// `text(done, total)` redrawn at most ten times a second, cleared at the end.
    fn progress_line(mut text: impl FnMut(u64, u64) -> String) -> impl FnMut(u64, u64) {
        use std::io::{IsTerminal, Write};
        let on = std::io::stderr().is_terminal();
        let mut drawn = std::time::Instant::now();
        move |done, total| {
            if !on || (done < total && drawn.elapsed().as_millis() < 100) {
                return;
            }
            drawn = std::time::Instant::now();
            let mut err = std::io::stderr().lock();
            if done >= total {
                let _ = write!(err, "\r\x1b[2K");
            } else {
                let _ = write!(err, "\r\x1b[2K{}", text(done, total));
            }
            let _ = err.flush();
        }
    }

    /// Things counted (entities, pages) of all.
    fn progress_count(label: &'static str) -> impl FnMut(u64, u64) {
        progress_line(move |done, total| format!("{label} {done}/{total}"))
    }

    /// Bytes read of all, as a bar with the rate.
    fn progress_bar(label: &'static str) -> impl FnMut(u64, u64) {
        let started = std::time::Instant::now();
        progress_line(move |done, total| {
            let width = 30;
            let filled = (done * width / total.max(1)) as usize;
            let mb = |b: u64| b as f64 / 1e6;
            let rate = mb(done) / started.elapsed().as_secs_f64().max(1e-3);
            format!(
                "{label} [{}{}] {:.1}/{:.1} MB ({rate:.0} MB/s)",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                mb(done),
                mb(total)
            )
        })
    }

    pub async fn mappings(
        settings: &Settings,
        dir: &std::path::Path,
        command: MappingsCommand,
    ) -> anyhow::Result<()> {
        use crossway::mapping::{self, Mappings};
        use crossway::workbench::{replay, samples};
        let organizations = settings.organization_ids();
        let load = |dir: &std::path::Path| {
            Mappings::load(dir, &organizations).map_err(|e| anyhow::anyhow!("{e}"))
        };
        match command {
            MappingsCommand::Check => {
                let (errors, notes) = mapping::check(dir, &organizations);
                for e in &errors {
                    println!("error: {e}");
                }
                for n in &notes {
                    println!("note:  {n}");
                }
                if !errors.is_empty() {
                    anyhow::bail!("{} error(s) in {}", errors.len(), dir.display());
                }
                println!("{}: ok", dir.display());
            }
            MappingsCommand::Test { update } => {
                let mappings = load(dir)?;
                let results = samples::run(dir, &mappings, update);
                let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
                let (report, ok) = samples::render(&results, color);
                print!("{report}");
                if !ok {
                    anyhow::bail!("mapping samples failed");
                }
            }
            MappingsCommand::Replay { since, limit } => {
                let from = crossway::fhir::datetime::parse_range(&since).ok_or_else(|| {
                    anyhow::anyhow!("--since {since:?} is not a FHIR date or dateTime")
                })?;
                let current = load(&settings.mappings_dir)?;
                let candidate = load(dir)?;
                let store =
                    crossway::store::Store::open(&settings.effective_database_url()).await?;
                let messages = store.inbound_since(from.lo, limit).await?;
                let total = messages.len();
                let changes = replay::changes(messages, &current, &candidate);
                for c in &changes {
                    let m = &c.message;
                    println!(
                        "{} {} {} {} {} (received {}):",
                        m.id,
                        m.format,
                        m.source,
                        m.control_id,
                        m.event,
                        format_instant(m.received_at)
                    );
                    for line in c.diff.lines() {
                        println!("    {line}");
                    }
                }
                println!(
                    "{total} messages since {since} re-mapped with {}: {} would change (- current {}, + candidate)",
                    dir.display(),
                    changes.len(),
                    settings.mappings_dir.display()
                );
                store.close().await;
            }
        }
        Ok(())
    }

    pub fn keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<()> {
        match command {
            KeysCommand::Rotate => {
                if !settings.signing_key_file.as_os_str().is_empty() {
                    anyhow::bail!(
                        "the signing key is configured (signing_key_file); rotate it where it is kept"
                    );
                }
                let kid = SigningKeys::rotate(&settings.data_dir)?;
                println!("new signing key {kid}; restart the gateway to sign with it");
            }
        }
        Ok(())
    }

    pub async fn identity(settings: &Settings, command: IdentityCommand) -> anyhow::Result<()> {
        let OperatorTools { store, feed, .. } = operator_tools(settings).await?;
        match command {
            IdentityCommand::Conflicts => {
                for c in store.open_conflicts().await? {
                    println!(
                        "{}  {}  {}  {}  {}  persons: {}",
                        c.id,
                        format_instant(c.created_at),
                        c.source,
                        c.message_id,
                        c.reason,
                        c.persons.join(", ")
                    );
                }
            }
            IdentityCommand::Show { identifier: token } => {
                let id = identifier(&token)?;
                let person = store
                    .identifier_owner(&id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("nobody is named {token}"))?;
                println!("person {}  client_ref {}", person.id, person.client_ref);
                for (i, retired) in store.person_identifiers(&person.id).await? {
                    let alias = if retired { "  (retired alias)" } else { "" };
                    println!("  {}{alias}", i.token());
                }
            }
            IdentityCommand::Merge { survivor, retired } => {
                let (survivor, retired) = (identifier(&survivor)?, identifier(&retired)?);
                for id in [&survivor, &retired] {
                    if store.identifier_owner(id).await?.is_none() {
                        anyhow::bail!("nobody is named {}", id.token());
                    }
                }
                let taken = feed.operator(Some(survivor), retired).await?;
                println!("merged: {taken:?}");
            }
            IdentityCommand::Unmerge { identifier: token } => {
                let taken = feed.operator(None, identifier(&token)?).await?;
                println!("unmerged: {taken:?}");
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve { config }
        | Command::Migrate { config }
        | Command::Dlq { config, .. }
        | Command::Identity { config, .. }
        | Command::Clients { config, .. }
        | Command::Keys { config, .. }
        | Command::Feeds { config, .. }
        | Command::Mappings { config, .. }
        | Command::Directory { config, .. }
        | Command::Ehr { config, .. } => config.clone(),
    };
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crossway: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log, !matches!(cli.command, Command::Serve { .. }));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                Ok(())
            }
            Command::Migrate { .. } => {
                let store = Store::open(&settings.effective_database_url()).await?;
                store.close().await;
                tracing::info!(message = "Migrations applied.");
                Ok(())
            }
            Command::Dlq { command, .. } => operator::dlq(&settings, command).await,
            Command::Identity { command, .. } => operator::identity(&settings, command).await,
            Command::Clients { command, .. } => operator::clients(&settings, command).await,
            Command::Keys { command, .. } => operator::keys(&settings, command),
            Command::Feeds { command, .. } => operator::feeds(&settings, command),
            Command::Mappings { command, dir, .. } => {
                operator::mappings(&settings, &dir, command).await
            }
            Command::Ehr { command, .. } => operator::ehr(&settings, command).await,
            Command::Directory { command, .. } => operator::directory(&settings, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: anyhow::Error = e;
            tracing::error!(message = "Crossway stopped.", error = %e);
            ExitCode::FAILURE
        }
    }
}
