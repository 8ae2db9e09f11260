//! Builds the application from settings and wires the HTTP server: middleware, routes,
//! workers, graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::http::state::{AppState, WorkerState};
use crate::http::tls::ServedCertificate;
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

/// Connections the kernel queues before they are accepted. std's `bind` asks for 128, which a
/// reconnect storm (thousands of clients after a deploy) overflows: each dropped SYN costs that
/// client a one-second retransmit.
const ACCEPT_BACKLOG: i32 = 4096;

fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket.into())
}

pub struct Application {
    address: SocketAddr,
    server: Server,
    state: web::Data<AppState>,
    /// Set when the main listener serves HTTPS.
    tls: Option<Arc<ServedCertificate>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Read first: a broken certificate stops start-up before anything else is opened.
        let tls = settings
            .tls
            .as_ref()
            .map(ServedCertificate::load)
            .transpose()?;
        let admin = match settings.admin_bind {
            Some(bind) => Some(
                TcpListener::bind(bind)
                    .with_context(|| format!("binding STREAMTOKEN_ADMIN_BIND={bind}"))?,
            ),
            None => None,
        };
        let listener = listen(settings.bind)
            .with_context(|| format!("binding STREAMTOKEN_BIND={}", settings.bind))?;
        let address = listener.local_addr()?;
        // The port served on, not 0, names this instance in the session listing.
        let settings = Settings {
            bind: address,
            ..settings
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
        let tls_config = match &tls {
            Some(served) => Some(
                served
                    .server_config()
                    .context("configuring TLS for STREAMTOKEN_BIND")?,
            ),
            None => None,
        };
        let server = run(
            Listeners {
                main: listener,
                tls: tls_config,
                admin,
            },
            state.clone(),
            settings.workers,
            settings.compat,
        )?;
        Ok(Application {
            address,
            server,
            state,
            tls,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `https://host:port` with TLS, else `http://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// The certificate the main listener serves, for reloads; `None` on plain HTTP.
    pub fn tls(&self) -> Option<Arc<ServedCertificate>> {
        self.tls.clone()
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

/// Where the server listens: the main listener, with TLS when configured, and the optional
/// admin listener, always plain HTTP.
pub struct Listeners {
    pub main: TcpListener,
    pub tls: Option<rustls::ServerConfig>,
    pub admin: Option<TcpListener>,
}

pub fn run(
    listeners: Listeners,
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
            .app_data(WorkerState::new(state.clone()))
            .app_data(state.redeemer.clone())
            .configure(|cfg| routes::configure(cfg, compat_families, &state.proxy))
            .default_service(web::to(routes::not_found))
    })
    .on_connect(connection::remember)
    .workers(workers)
    // Signals are handled by `serve`, which closes stream sessions before stopping the server.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_DEADLINE_SECONDS);
    let server = match listeners.tls {
        Some(config) => server.listen_rustls_0_23(listeners.main, config)?,
        None => server.listen(listeners.main)?,
    };
    let server = match listeners.admin {
        Some(admin) => server.listen(admin)?,
        None => server,
    };
    let server = server.run();
    Ok(server)
}
