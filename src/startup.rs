//! Wiring: open the store, start the writer, bind the listener, build the HTTP server.

use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt;

use std::sync::Arc;

use crate::cache::Cache;
use crate::cbo::Cbo;
use crate::config::Settings;
use crate::fhir::engine::{Context, Fhir};
use crate::hie::Feed;
use crate::http::{self, AppState};
use crate::identity::cache::IdentityCache;
use crate::mapping::Mappings;
use crate::mllp;
use crate::store::{Backend, Store};

pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    mllp: Option<tokio::task::JoinHandle<()>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Application {
    /// Everything up to (not including) serving: a failure here exits before the
    /// listening line is logged.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let url = settings.effective_database_url();
        let store = Store::open(&url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
        let cache = if settings.redis_url.is_empty() {
            Cache::in_process()
        } else {
            Cache::redis(&settings.redis_url)
                .map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?
        };
        let identities = Arc::new(match (cache.redis_manager(), store.backend()) {
            (Some(manager), _) => IdentityCache::redis(manager, &url),
            (None, Backend::Sqlite) => IdentityCache::in_process(),
            // Another process could merge what a local cache holds.
            (None, Backend::Postgres) => IdentityCache::none(),
        });
        let (mappings, fhir) = engine(&settings, store)?;
        fhir.seed_organizations()
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the configured organisations: {e}"))?;
        tokio::spawn(
            identities
                .clone()
                .watch(fhir.store().clone(), std::time::Duration::from_millis(500)),
        );
        let feed = Feed::new(
            fhir.clone(),
            Arc::new(mappings.feeds.clone()),
            Arc::new(mappings.identity.clone()),
            identities.clone(),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (mllp_addr, mllp) = if settings.mllp_addr.is_empty() {
            (None, None)
        } else {
            let (addr, task) = start_mllp(&settings, feed.clone(), shutdown.clone()).await?;
            (Some(addr), Some(task))
        };
        let cbo = Cbo::new(
            fhir.clone(),
            mappings,
            settings.organizations.clone(),
            settings.event_retention_days,
        );
        tokio::spawn(sweep(cbo.clone(), settings.sweep_interval_ms));

        let listener = TcpListener::bind(&settings.http_addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.http_addr))?;
        let addr = listener.local_addr()?;
        let state = web::Data::new(AppState {
            fhir,
            cbo,
            cache,
            identities,
            feed,
            dev_auth: settings.dev_auth,
            public_base_url: settings.public_base_url.clone(),
            max_body_bytes: settings.max_body_bytes,
        });
        let server = HttpServer::new(move || {
            // The CBO scope is registered through utoipa-actix-web, which also collects
            // its OpenAPI document from these registrations (`http::cbo::openapi_document`).
            let (app, _) = App::new()
                .into_utoipa_app()
                .service(utoipa_actix_web::scope("/cbo/v1").configure(http::cbo::routes))
                .split_for_parts();
            app.app_data(state.clone()).configure(http::routes)
        })
        .listen(listener)?
        .shutdown_timeout(20)
        .run();
        tracing::info!(
            message = "Crossway listening.",
            http_addr = %addr,
            mllp_addr = %mllp_addr.map_or("off".to_string(), |a| a.to_string()),
            store = if url.starts_with("postgres") { "postgres" } else { "sqlite" },
        );
        Ok(Application {
            server,
            addr,
            mllp,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT/SIGTERM, then finishes in-flight requests and MLLP messages.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.shutdown.cancel();
        if let Some(task) = self.mllp {
            let _ = task.await;
        }
        result
    }
}

/// The mappings and the FHIR engine (with its writer) over `store`.
fn engine(settings: &Settings, store: Store) -> anyhow::Result<(Mappings, Fhir)> {
    let org_ids: Vec<String> = settings
        .organizations
        .iter()
        .map(|o| o.id.clone())
        .collect();
    let mappings = Mappings::load(&settings.mappings_dir, &org_ids)
        .map_err(|e| anyhow::anyhow!("invalid mappings: {e}"))?;
    let own_base = (!settings.public_base_url.is_empty()).then(|| settings.public_base_url.clone());
    let fhir = Fhir::new(
        store,
        Context {
            own_base,
            organizations: settings.organizations.clone(),
            identity: mappings.identity.clone(),
        },
    );
    Ok((mappings, fhir))
}

/// What operator commands (`crossway dlq …`, `crossway identity …`) work with: the
/// store, and the feed with the current mappings, without any listener.
pub async fn operator_tools(settings: &Settings) -> anyhow::Result<(Store, Feed)> {
    let store = Store::open(&settings.effective_database_url())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    let (mappings, fhir) = engine(settings, store.clone())?;
    let cache = if settings.redis_url.is_empty() {
        IdentityCache::none()
    } else {
        let manager = Cache::redis(&settings.redis_url)?
            .redis_manager()
            .expect("a Redis cache has a manager");
        IdentityCache::redis(manager, &settings.effective_database_url())
    };
    let feed = Feed::new(
        fhir,
        Arc::new(mappings.feeds),
        Arc::new(mappings.identity),
        Arc::new(cache),
    );
    Ok((store, feed))
}

/// The MLLP face: frames in, the feed's ACK out.
struct FeedHandler {
    feed: Feed,
    limit: usize,
}

impl mllp::Handler for FeedHandler {
    fn handle(&self, frame: mllp::Frame, _peer: SocketAddr) -> mllp::HandlerFuture<'_> {
        Box::pin(async move {
            let ack = match frame {
                mllp::Frame::Message(bytes) => self.feed.hl7v2(&bytes).await?,
                mllp::Frame::TooLarge { head, len } => self.feed.too_large(&head, len, self.limit),
            };
            Some(ack.into_bytes().into())
        })
    }
}

async fn start_mllp(
    settings: &Settings,
    feed: Feed,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tls = if settings.mllp_tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(mllp::tls_acceptor(
            &settings.mllp_tls_cert,
            &settings.mllp_tls_key,
        )?)
    };
    let listener = tokio::net::TcpListener::bind(&settings.mllp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for MLLP on {}: {e}", settings.mllp_addr))?;
    let addr = listener.local_addr()?;
    let limits = mllp::Limits {
        max_message_bytes: settings.mllp_max_message_bytes,
        ..mllp::Limits::default()
    };
    let handler = Arc::new(FeedHandler {
        feed,
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
