//! Builds the application from settings and wires the HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::keyring::KeyringHandle;
use crate::mint::Minter;
use crate::rate_limit::RateLimiter;
use crate::redeem::Redeemer;
use crate::replay::{MemoryStore, RedisStore, ReplayStore};
use crate::settings::{CompatFamilies, Settings};
use crate::{access_log, routes};

/// Shared by every worker; cheap to clone behind `web::Data`.
pub struct AppState {
    pub keyring: Arc<KeyringHandle>,
    pub minter: Minter,
    pub redeemer: Redeemer,
    pub rate_limiter: RateLimiter,
}

impl AppState {
    /// Loads the keyring and opens the replay store the settings ask for. Needs a Tokio runtime.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let keyring = Arc::new(
            KeyringHandle::load(&settings.keys_dir)
                .with_context(|| format!("loading keys from {}", settings.keys_dir.display()))?,
        );
        let store: Arc<dyn ReplayStore> = match &settings.redis {
            Some(redis) => Arc::new(RedisStore::connect_lazily(redis)?),
            None => {
                let memory = Arc::new(MemoryStore::new());
                memory.spawn_sweeper(crate::replay::memory_sweep_interval());
                memory
            }
        };
        log::info!("replay store: {}", store.backend());
        Ok(AppState {
            minter: Minter::new(keyring.clone(), settings.token.clone()),
            redeemer: Redeemer::new(keyring.clone(), &settings.token, store),
            rate_limiter: RateLimiter::new(settings.rate_limit),
            keyring,
        })
    }
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
    let server = HttpServer::new(move || {
        App::new()
            .wrap(access_log::logger())
            .app_data(state.clone())
            .configure(|cfg| routes::configure(cfg, compat_families))
            .default_service(web::to(routes::not_found))
    })
    .workers(workers)
    .listen(listener)?
    .run();
    Ok(server)
}
