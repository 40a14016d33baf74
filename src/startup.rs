//! Wiring: open the store, start the writer, bind the listener, build the HTTP server.

use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt;

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::{Authority, RateLimiter, SigningKeys};
use crate::cache::Cache;
use crate::cbo::Cbo;
use crate::config::Settings;
use crate::connector::Connectors;
use crate::ehr::Coordinator;
use crate::feeds::Feed;
use crate::fhir::engine::{Context, Fhir};
use crate::http::{self, AppState};
use crate::identity::cache::IdentityCache;
use crate::mapping::{Live, Mappings};
use crate::mllp;
use crate::referral::tenants::Tenants;
use crate::store::{Backend, Store};
use crate::subscription::Subscriptions;

pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    mllp: Option<tokio::task::JoinHandle<()>>,
    /// Webhook dispatchers: they finish the deliveries they claimed.
    workers: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio_util::sync::CancellationToken,
    /// Flushed last: the requests and messages finished during shutdown are audited.
    audit: AuditLog,
}

/// The store and what every face shares: the caches, the engine, the tenants.
struct Core {
    url: String,
    cache: Cache,
    identities: Arc<IdentityCache>,
    mappings: Live,
    fhir: Fhir,
    tenants: Tenants,
    registry: crate::subscription::Registry,
}

/// The faces that take work in: the feed (MLLP), the CBO API, the token authority.
struct Faces {
    feed: Feed,
    audit: AuditLog,
    auth: Arc<Authority>,
    cbo: Cbo,
    connectors: Arc<Connectors>,
    mllp_addr: Option<SocketAddr>,
    mllp: Option<tokio::task::JoinHandle<()>>,
}

/// What carries work out: FHIR Subscriptions, the outbox's workers, the EHR coordinator.
struct Delivery {
    subscriptions: Arc<Subscriptions>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Everything up to (not including) serving: a failure here exits before the
    /// listening line is logged.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let core = open_core(&settings).await?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut faces = start_faces(&settings, &core, &shutdown).await?;
        let listener = TcpListener::bind(&settings.http_addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.http_addr))?;
        let addr = listener.local_addr()?;
        let delivery = start_delivery(
            &settings,
            &core,
            &faces,
            our_base(&settings, addr),
            &shutdown,
        )?;
        let store = if core.url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let (mllp_addr, mllp, audit) = (faces.mllp_addr, faces.mllp.take(), faces.audit.clone());
        let state = app_state(&settings, core, faces, delivery.subscriptions)?;
        let (server, https) = serve_http(&settings, listener, state)?;
        tracing::info!(
            message = "Crossway listening.",
            http_addr = %addr,
            https,
            mllp_addr = %mllp_addr.map_or("off".to_string(), |a| a.to_string()),
            store,
        );
        Ok(Application {
            server,
            addr,
            workers: delivery.workers,
            mllp,
            shutdown,
            audit,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT/SIGTERM. Then, at once, no new HTTP or MLLP connection is
    /// accepted and no webhook delivery claimed; in-flight requests, MLLP messages and
    /// claimed deliveries finish; the audit trail is flushed; and it returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        // actix-web stops its own listener on the same signals.
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            stop_signal().await;
            tracing::info!(message = "Shutting down: finishing in-flight work.");
            shutdown.cancel();
        });
        let result = self.server.await;
        self.shutdown.cancel();
        if let Some(task) = self.mllp {
            let _ = task.await;
        }
        for worker in self.workers {
            let _ = worker.await;
        }
        if !self.audit.drain(std::time::Duration::from_secs(10)).await {
            tracing::error!(
                message = "Audit records left unwritten at shutdown.",
                count = self.audit.pending()
            );
        }
        tracing::info!(message = "Stopped.");
        result
    }
}

/// SIGTERM (orchestrators, systemd) or SIGINT (Ctrl-C).
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(message = "Cannot listen for SIGTERM; Ctrl-C only.", error = %e);
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The mappings, the FHIR engine (with its writer) over `store`, and the tenants it
/// routes to (configured and registered).
/// Opens the store and the caches, starts the engine's writer, creates the configured
/// organisations and watches the identity generation (merges by other processes).
async fn open_core(settings: &Settings) -> anyhow::Result<Core> {
    let url = settings.effective_database_url();
    let store = Store::open(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    let cache = if settings.redis_url.is_empty() {
        Cache::in_process()
    } else {
        Cache::redis(&settings.redis_url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?
    };
    let identities = Arc::new(match (cache.redis_manager(), store.backend()) {
        (Some(manager), _) => IdentityCache::redis(manager, &url),
        (None, Backend::Sqlite) => IdentityCache::in_process(),
        // Another process could merge what a local cache holds.
        (None, Backend::Postgres) => IdentityCache::none(),
    });
    store.set_cache_budget(settings.memory_budget_mb << 19);
    let (mappings, fhir, tenants, registry) = engine(settings, store, identities.clone()).await?;
    fhir.seed_organizations()
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the configured organisations: {e}"))?;
    tokio::spawn(identities.clone().watch(
        fhir.store().clone(),
        std::time::Duration::from_millis(settings.identity_watch_ms),
    ));
    Ok(Core {
        url,
        cache,
        identities,
        mappings,
        fhir,
        tenants,
        registry,
    })
}

/// The faces that take work in, and their housekeeping: the MLLP listener, the CBO
/// face and its connectors (recorded as outbox endpoints), the referral sweep, the
/// tenant and mappings reloads.
async fn start_faces(
    settings: &Settings,
    core: &Core,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Faces> {
    let fhir = &core.fhir;
    let feed = Feed::new(fhir.clone(), core.mappings.clone());
    let audit = AuditLog::start(fhir.store().clone());
    let keys = SigningKeys::load_or_create(&settings.data_dir, &settings.signing_key_file)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let auth = Arc::new(Authority::new(
        fhir.store().clone(),
        keys,
        RateLimiter::new(settings.rate_limit_per_second, core.cache.redis_manager()),
        settings.production(),
    ));
    let (mllp_addr, mllp) = if settings.mllp_addr.is_empty() {
        (None, None)
    } else {
        let (addr, task) =
            start_mllp(settings, feed.clone(), audit.clone(), shutdown.clone()).await?;
        (Some(addr), Some(task))
    };
    let cbo = Cbo::new(
        fhir.clone(),
        core.mappings.clone(),
        core.tenants.clone(),
        settings.event_retention_days,
    );
    cbo.set_view_budget((settings.memory_budget_mb << 20) / 8 * 3);
    let connectors = Arc::new(Connectors::new(
        cbo.clone(),
        fhir.store().clone(),
        core.mappings.clone(),
        std::time::Duration::from_millis(settings.webhook_timeout_ms),
        settings.allow_insecure_webhooks,
    ));
    connectors
        .sync()
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the connectors: {e}"))?;
    tokio::spawn(reload_mappings_on_sighup(
        core.mappings.clone(),
        connectors.clone(),
        settings.clone(),
    ));
    tokio::spawn(sweep(cbo.clone(), settings.sweep_interval_ms));
    tokio::spawn(watch_tenants(core.tenants.clone(), fhir.clone()));
    Ok(Faces {
        feed,
        audit,
        auth,
        cbo,
        connectors,
        mllp_addr,
        mllp,
    })
}

/// Our `/fhir` base as others follow it (notifications, write-backs to EHRs).
fn our_base(settings: &Settings, addr: SocketAddr) -> String {
    if !settings.public_base_url.is_empty() {
        return settings.public_base_url.clone();
    }
    let scheme = if settings.tls_cert.as_os_str().is_empty() {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{addr}/fhir")
}

/// What carries work out: FHIR Subscriptions, the outbox's dispatchers with the
/// subscription and connector sinks, the connectors' status polls and the EHR
/// coordinator. Each worker stops at `shutdown`.
fn start_delivery(
    settings: &Settings,
    core: &Core,
    faces: &Faces,
    our_base: String,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Delivery> {
    let fhir = &core.fhir;
    let mailer = if settings.smtp_url.is_empty() {
        None
    } else {
        Some(
            crate::subscription::Mailer::new(&settings.smtp_url, &settings.smtp_from)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    };
    let subscriptions = Arc::new(Subscriptions::new(
        fhir.clone(),
        core.registry.clone(),
        mailer,
        our_base.clone(),
        std::time::Duration::from_millis(settings.webhook_timeout_ms),
        settings.webhook_retry_scale,
        settings.allow_insecure_webhooks,
    ));
    tokio::spawn(watch_subscriptions(
        core.registry.clone(),
        fhir.store().clone(),
    ));
    let dispatcher = Arc::new(crate::outbox::Dispatcher::new(
        fhir.store().clone(),
        crate::outbox::RetryPolicy::standard(settings.webhook_retry_scale),
        std::time::Duration::from_millis(settings.webhook_timeout_ms),
        vec![subscriptions.clone(), faces.connectors.clone()],
        |e| serde_json::to_value(crate::cbo::feed_event(e)).expect("feed items serialise"),
        settings.allow_insecure_webhooks,
    ));
    let mut workers = Vec::new();
    for _ in 0..settings.webhook_workers {
        workers.push(tokio::spawn(dispatcher.clone().run(shutdown.clone())));
    }
    workers.push(tokio::spawn(
        faces.connectors.clone().poll(shutdown.clone()),
    ));
    workers.push(tokio::spawn(
        subscriptions.clone().heartbeats(shutdown.clone()),
    ));
    if !settings.ehr_servers.is_empty() {
        let coordinator = Arc::new(Coordinator::new(
            fhir.clone(),
            settings.ehr_servers.clone(),
            faces.auth.clone(),
            our_base,
            crate::ehr::Timing {
                interval: std::time::Duration::from_millis(settings.ehr_poll_interval_ms),
                timeout: std::time::Duration::from_millis(settings.webhook_timeout_ms),
                overlap: std::time::Duration::from_millis(settings.ehr_poll_overlap_ms),
                reconcile: std::time::Duration::from_millis(settings.ehr_reconcile_interval_ms),
            },
            settings.allow_insecure_webhooks,
        ));
        workers.push(tokio::spawn(coordinator.run(shutdown.clone())));
    }
    Ok(Delivery {
        subscriptions,
        workers,
    })
}

/// What every HTTP handler reads.
fn app_state(
    settings: &Settings,
    core: Core,
    faces: Faces,
    subscriptions: Arc<Subscriptions>,
) -> anyhow::Result<web::Data<AppState>> {
    Ok(web::Data::new(AppState {
        fhir: core.fhir,
        cbo: faces.cbo,
        connectors: faces.connectors,
        subscriptions,
        cache: core.cache,
        identities: core.identities,
        feed: faces.feed,
        auth: faces.auth,
        audit: faces.audit,
        production: settings.production(),
        allow_insecure_webhooks: settings.allow_insecure_webhooks,
        dev_auth: settings.dev_auth,
        public_base_url: settings.public_base_url.clone(),
        trusted_proxies: settings
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::config::IpRange::parse(p))
            .collect(),
        max_body_bytes: settings.max_body_bytes,
        metrics: crate::telemetry::metrics::install()?,
        metrics_token: settings.metrics_token.clone(),
    }))
}

/// The HTTP server on `listener` (TLS when configured), with the routes, the security
/// headers, the audit and the wire-error middleware; whether it speaks HTTPS.
fn serve_http(
    settings: &Settings,
    listener: TcpListener,
    state: web::Data<AppState>,
) -> anyhow::Result<(actix_web::dev::Server, bool)> {
    let tls = if settings.tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(mllp::server_config(
            &settings.tls_cert,
            &settings.tls_key,
            std::path::Path::new(""),
        )?)
    };
    let https = tls.is_some();
    let max_body_bytes = settings.max_body_bytes;
    let server = HttpServer::new(move || {
        // The CBO scope is registered through utoipa-actix-web, which also collects
        // its OpenAPI document from these registrations (`http::cbo::openapi_document`).
        let (app, _) = App::new()
            .into_utoipa_app()
            .service(utoipa_actix_web::scope("/cbo/v1").configure(http::cbo::routes))
            .split_for_parts();
        let mut headers = actix_web::middleware::DefaultHeaders::new()
            .add(("X-Content-Type-Options", "nosniff"))
            .add(("X-Frame-Options", "DENY"))
            .add(("Referrer-Policy", "no-referrer"))
            .add((
                "Content-Security-Policy",
                "default-src 'none'; frame-ancestors 'none'",
            ))
            .add(("Cache-Control", "no-store"));
        if https {
            headers = headers.add(("Strict-Transport-Security", "max-age=31536000"));
        }
        app.app_data(state.clone())
            .app_data(actix_web::web::PayloadConfig::new(max_body_bytes))
            .configure(http::routes)
            .wrap(actix_web::middleware::from_fn(http::wire_errors))
            .wrap(actix_web::middleware::from_fn(http::audit))
            .wrap(headers)
    });
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .shutdown_timeout(20)
    .run();
    Ok((server, https))
}

async fn engine(
    settings: &Settings,
    store: Store,
    identities: Arc<IdentityCache>,
) -> anyhow::Result<(Live, Fhir, Tenants, crate::subscription::Registry)> {
    let mappings = Live::new(
        Mappings::load(&settings.mappings_dir, &settings.organization_ids())
            .map_err(|e| anyhow::anyhow!("invalid mappings: {e}"))?,
    );
    let own_base = (!settings.public_base_url.is_empty()).then(|| settings.public_base_url.clone());
    let tenants = Tenants::new(settings.organizations.clone());
    tenants
        .refresh(&store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read registered tenants: {e}"))?;
    let subscriptions = crate::subscription::Registry::default();
    subscriptions
        .refresh(&store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the subscriptions: {e}"))?;
    let fhir = Fhir::new(
        store,
        Context {
            own_base,
            organizations: tenants.clone(),
            mappings: mappings.clone(),
            subscriptions: Arc::new(subscriptions.clone()),
        },
        identities,
    );
    Ok((mappings, fhir, tenants, subscriptions))
}

/// Keeps the live subscriptions current: one created through another process starts
/// taking events here within half a second.
async fn watch_subscriptions(registry: crate::subscription::Registry, store: Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = registry.refresh(&store).await {
            tracing::warn!(message = "Cannot read the subscriptions; retrying.", error = %e);
        }
    }
}

/// Picks up tenants registered by `crossway clients add cbo` in any process, and
/// makes referrals of the Tasks already addressed to them, once.
async fn watch_tenants(tenants: Tenants, fhir: Fhir) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = fhir.store();
        if let Err(e) = tenants.refresh(store).await {
            tracing::warn!(message = "Cannot read registered tenants.", error = %e);
            continue;
        }
        let pending = match store.unadopted_tenants().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(message = "Cannot read registered tenants.", error = %e);
                continue;
            }
        };
        for org in pending {
            match fhir.adopt(&org).await {
                Ok(n) => {
                    tracing::info!(message = "New tenant: existing referrals adopted.", organization = %org, referrals = n);
                    let now = crate::resource::datetime::now_micros();
                    if let Err(e) = store.mark_adopted(&org, now).await {
                        tracing::warn!(message = "Cannot mark a tenant adopted.", organization = %org, error = %e);
                    }
                }
                Err(e) => {
                    tracing::warn!(message = "Cannot adopt a new tenant's referrals; retrying.", organization = %org, error = %e)
                }
            }
        }
    }
}

/// What operator commands (`crossway dlq …`, `crossway identity …`, `crossway
/// clients …`) work with, without any listener.
pub struct OperatorTools {
    pub store: Store,
    /// The feed with the current mappings.
    pub feed: Feed,
    pub fhir: Fhir,
}

pub async fn operator_tools(settings: &Settings) -> anyhow::Result<OperatorTools> {
    let store = Store::open(&settings.effective_database_url())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    let cache = if settings.redis_url.is_empty() {
        IdentityCache::none()
    } else {
        let manager = Cache::redis(&settings.redis_url)?
            .redis_manager()
            .expect("a Redis cache has a manager");
        IdentityCache::redis(manager, &settings.effective_database_url())
    };
    let (mappings, fhir, _, _) = engine(settings, store.clone(), Arc::new(cache)).await?;
    let feed = Feed::new(fhir.clone(), mappings);
    Ok(OperatorTools { store, feed, fhir })
}

/// On SIGHUP, reloads `mappings/` and puts it in force when every file is valid; a
/// broken set is refused (logged with file:line and rule) and the old one stays. The
/// connectors' outbox endpoints follow the set in force.
async fn reload_mappings_on_sighup(
    mappings: Live,
    connectors: Arc<Connectors>,
    settings: Settings,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(message = "Cannot listen for SIGHUP; mappings reload at restart only.", error = %e);
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match mappings.reload(&settings.mappings_dir, &settings.organization_ids()) {
            Ok(()) => {
                tracing::info!(message = "Mappings reloaded.", dir = %settings.mappings_dir.display());
                if let Err(e) = connectors.sync().await {
                    tracing::error!(message = "Connectors not updated after the reload; retry with another SIGHUP.", error = %e);
                }
            }
            Err(e) => {
                tracing::error!(message = "Mappings not reloaded; the previous set stays in force.", error = %e)
            }
        }
    }
}

async fn start_mllp(
    settings: &Settings,
    feed: Feed,
    audit: AuditLog,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tls = if settings.mllp_tls_cert.as_os_str().is_empty() {
        None
    } else {
        let config = mllp::server_config(
            &settings.mllp_tls_cert,
            &settings.mllp_tls_key,
            &settings.mllp_tls_client_ca,
        )?;
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    };
    let listener = tokio::net::TcpListener::bind(&settings.mllp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for MLLP on {}: {e}", settings.mllp_addr))?;
    let addr = listener.local_addr()?;
    let limits = mllp::Limits {
        max_message_bytes: settings.mllp_max_message_bytes,
        max_connections_per_peer: settings.mllp_max_connections_per_peer,
        idle_timeout: std::time::Duration::from_millis(settings.mllp_idle_timeout_ms),
        ..mllp::Limits::default()
    };
    let handler = Arc::new(crate::feeds::mllp::FeedHandler {
        feed,
        audit,
        limit: settings.mllp_max_message_bytes,
    });
    let task = tokio::spawn(mllp::serve(listener, tls, limits, handler, shutdown));
    Ok((addr, task))
}

/// Expires unanswered referrals and prunes old events and keys, forever.
async fn sweep(cbo: Cbo, interval_ms: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = cbo.sweep().await {
            tracing::warn!(message = "Referral sweep failed; retrying at the next tick.", error = %e);
        }
    }
}
