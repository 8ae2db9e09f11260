//! Builds the application from settings and wires the HTTP server: middleware, routes,
//! workers, graceful shutdown.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::Server;
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::http::state::AppState;
use crate::http::{access_log, connection, middleware, routes};
use crate::settings::{CompatFamilies, DemoMode, Settings};

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
        let admin = match settings.admin_bind {
            Some(bind) => Some(
                TcpListener::bind(bind)
                    .with_context(|| format!("binding STREAMTOKEN_ADMIN_BIND={bind}"))?,
            ),
            None => None,
        };
        let mut state = AppState::from_settings(&settings)?;
        state.admin_address = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let state = web::Data::new(state);
        if settings.demo == DemoMode::On {
            log::warn!(
                "demo on (STREAMTOKEN_DEMO=on): /demo and POST /demo/token mint for the dev org \
                 without an API key, on {} only",
                settings.bind
            );
        }
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("binding STREAMTOKEN_BIND={}", settings.bind))?;
        let address = listener.local_addr()?;
        let server = run(
            listener,
            admin,
            state.clone(),
            settings.workers,
            settings.compat,
        )?;
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
    admin: Option<TcpListener>,
    state: web::Data<AppState>,
    workers: usize,
    compat_families: CompatFamilies,
) -> std::io::Result<Server> {
    // Formatting an access line costs even when the level discards it: attach the logger
    // only when its target is enabled (RUST_LOG).
    let access_log_enabled = log::log_enabled!(target: "streamtoken::access", log::Level::Info);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(middleware::time_requests))
            .wrap(Condition::new(access_log_enabled, access_log::logger()))
            .wrap(middleware::no_store())
            .app_data(state.clone())
            .app_data(state.redeemer.clone())
            .configure(|cfg| routes::configure(cfg, compat_families, &state.proxy))
            .default_service(web::to(routes::not_found))
    })
    .on_connect(connection::remember)
    .workers(workers)
    // Signals are handled by `serve`, which closes stream sessions before stopping the server.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_DEADLINE_SECONDS)
    .listen(listener)?;
    let server = match admin {
        Some(admin) => server.listen(admin)?,
        None => server,
    };
    let server = server.run();
    Ok(server)
}
