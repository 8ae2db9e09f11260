//! Builds the application from settings and wires the HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::keyring::KeyringHandle;
use crate::metrics::{self, Metrics};
use crate::mint::Minter;
use crate::rate_limit::RateLimiter;
use crate::redeem::Redeemer;
use crate::replay;
use crate::settings::{CompatFamilies, DemoMode, Settings, StreamSettings};
use crate::{access_log, routes};

/// Shared by every worker; cheap to clone behind `web::Data`.
pub struct AppState {
    pub keyring: Arc<KeyringHandle>,
    pub minter: Minter,
    /// Also registered on its own, so the `Redeemed` extractor finds it.
    pub redeemer: web::Data<Redeemer>,
    pub rate_limiter: RateLimiter,
    pub stream: StreamSettings,
    pub demo: DemoMode,
    pub metrics: Arc<Metrics>,
    /// Flips to `true` when the server begins a graceful shutdown; open sessions close with 1001.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Loads the keyring and opens the replay store the settings ask for. Needs a Tokio runtime.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let keyring = Arc::new(
            KeyringHandle::load(&settings.keys_dir)
                .with_context(|| format!("loading keys from {}", settings.keys_dir.display()))?,
        );
        let store = replay::open(settings)?;
        let metrics = Arc::new(Metrics::new());
        log::info!("replay store: {}", store.backend());
        Ok(AppState {
            minter: Minter::new(keyring.clone(), settings.token.clone()),
            redeemer: web::Data::new(
                Redeemer::new(keyring.clone(), &settings.token, store)
                    .with_metrics(metrics.clone()),
            ),
            metrics,
            rate_limiter: RateLimiter::new(settings.rate_limit),
            stream: settings.stream,
            demo: settings.demo,
            shutdown: tokio::sync::watch::Sender::new(false),
            keyring,
        })
    }
}

/// How long a graceful shutdown waits for in-flight requests before dropping them.
pub const SHUTDOWN_DEADLINE_SECONDS: u64 = 10;

/// Stops accepting, tells open stream sessions to close with 1001, and waits for in-flight
/// requests (up to the shutdown deadline).
pub async fn stop_gracefully(state: &AppState, server: &actix_web::dev::ServerHandle) {
    state.shutdown.send_replace(true);
    server.stop(true).await;
}

pub struct Application {
    address: SocketAddr,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let state = web::Data::new(AppState::from_settings(&settings)?);
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("binding STREAMTOKEN_BIND={}", settings.bind))?;
        let address = listener.local_addr()?;
        let server = run(listener, state.clone(), settings.workers, settings.compat)?;
        Ok(Application {
            address,
            server,
            state,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

pub fn run(
    listener: TcpListener,
    state: web::Data<AppState>,
    workers: usize,
    compat_families: CompatFamilies,
) -> std::io::Result<Server> {
    // Formatting an access line costs even when the level discards it: attach the logger
    // only when its target is enabled (RUST_LOG).
    let access_log_enabled = log::log_enabled!(target: "streamtoken::access", log::Level::Info);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(metrics::time_requests))
            .wrap(Condition::new(access_log_enabled, access_log::logger()))
            .app_data(state.clone())
            .app_data(state.redeemer.clone())
            .configure(|cfg| routes::configure(cfg, compat_families))
            .default_service(web::to(routes::not_found))
    })
    .workers(workers)
    // Signals are handled by `serve`, which closes stream sessions before stopping the server.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_DEADLINE_SECONDS)
    .listen(listener)?
    .run();
    Ok(server)
}
