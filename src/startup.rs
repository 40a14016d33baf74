//! Wiring: open the store, start the writer, bind the listener, build the HTTP server.

use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt;

use crate::cache::Cache;
use crate::cbo::Cbo;
use crate::config::Settings;
use crate::fhir::engine::{Context, Fhir};
use crate::http::{self, AppState};
use crate::mapping::Mappings;
use crate::store::Store;

pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
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
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {e}"))?
        };
        let own_base =
            (!settings.public_base_url.is_empty()).then(|| settings.public_base_url.clone());
        let fhir = Fhir::new(
            store,
            Context {
                own_base,
                organizations: settings.organizations.clone(),
            },
        );
        fhir.seed_organizations()
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the configured organisations: {e}"))?;
        let org_ids: Vec<String> = settings
            .organizations
            .iter()
            .map(|o| o.id.clone())
            .collect();
        let mappings = Mappings::load(&settings.mappings_dir, &org_ids)
            .map_err(|e| anyhow::anyhow!("invalid mappings: {e}"))?;
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
            store = if url.starts_with("postgres") { "postgres" } else { "sqlite" },
        );
        Ok(Application { server, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT/SIGTERM, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
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
