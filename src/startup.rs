//! Wiring: open the store, start the writer, bind the listener, build the HTTP server.

use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpServer, web};

use crate::cache::Cache;
use crate::config::Settings;
use crate::fhir::engine::{Context, Fhir};
use crate::http::{self, AppState};
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

        let listener = TcpListener::bind(&settings.http_addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.http_addr))?;
        let addr = listener.local_addr()?;
        let state = web::Data::new(AppState {
            fhir,
            cache,
            public_base_url: settings.public_base_url.clone(),
            max_body_bytes: settings.max_body_bytes,
        });
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
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
