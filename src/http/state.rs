//! What every worker shares: the keyring, the shared store, the minting and redemption cores,
//! the rate limiter and the metrics. Built once from settings.

use std::future::{ready, Ready};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use crate::admission::policy::Policy;
use crate::admission::redeem::Redeemer;
use crate::admission::revocation::LiveSessions;
use crate::admission::slots::SessionSlots;
use crate::http::memory::{MemoryReturn, TRIM_INTERVAL};
use crate::keys::keyring::KeyringHandle;
use crate::metrics::Metrics;
use crate::settings::{DemoMode, RateLimitScope, Settings, StreamSettings};
use crate::store::SharedStore;
use crate::tenancy::rate_limit::RateLimiter;
use crate::token::mint::Minter;

/// Shared by every worker; cheap to clone behind `web::Data`.
pub struct AppState {
    pub keyring: Arc<KeyringHandle>,
    /// Usage counters and health; redemption reaches it through `redeemer`.
    pub store: Arc<dyn SharedStore>,
    pub minter: Minter,
    /// Also registered on its own, so the `Redeemed` extractor finds it.
    pub redeemer: web::Data<Redeemer>,
    pub rate_limiter: RateLimiter,
    pub stream: StreamSettings,
    /// What `/v1/stream` and `/v1/forward-auth` admit: the token types in `stream`.
    pub stream_policy: Policy,
    /// `/v1/stream`'s caps on open sessions.
    pub session_slots: Arc<SessionSlots>,
    /// The WebSocket sessions open on this process, closed when their token is revoked.
    pub live_sessions: Arc<LiveSessions>,
    /// Hands memory back to the system after sessions end.
    pub(crate) memory: Arc<MemoryReturn>,
    pub demo: DemoMode,
    /// WebSocket paths relayed to upstreams (`STREAMTOKEN_PROXY`).
    pub proxy: Vec<crate::settings::ProxyRoute>,
    /// The verification leeway: also how far the store's clock may be from ours.
    pub leeway_seconds: u64,
    pub metrics: Arc<Metrics>,
    /// The operations listener (`STREAMTOKEN_ADMIN_BIND`), the only one `/metrics` answers on
    /// when set.
    pub admin_address: Option<std::net::SocketAddr>,
    /// Flips to `true` when the server begins a graceful shutdown; open sessions close with 1001.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Loads the keyring and opens the store the settings ask for, through the same builder an
    /// embedding gateway uses. Needs a Tokio runtime.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let redeemer = Redeemer::from_settings(settings)?.with_metrics(metrics.clone());
        let keyring = redeemer.keyring().clone();
        let fleet_quota = match settings.rate_limit_scope {
            RateLimitScope::Fleet => redeemer.store().clone().fleet_quota(),
            RateLimitScope::Process => None,
        };
        let rate_limiter = match fleet_quota {
            Some(quota) => RateLimiter::fleet_wide(settings.rate_limit, quota, metrics.clone()),
            None => RateLimiter::new(settings.rate_limit),
        };
        Ok(AppState {
            live_sessions: redeemer.live_sessions().clone(),
            store: redeemer.store().clone(),
            minter: Minter::new(keyring.clone(), settings.token.clone()),
            redeemer: web::Data::new(redeemer),
            metrics,
            rate_limiter,
            stream_policy: Policy::any().only_token_types(settings.stream.token_types.clone()),
            session_slots: SessionSlots::new(
                settings.stream.max_sessions,
                settings.stream.max_sessions_per_org,
            ),
            memory: MemoryReturn::start(TRIM_INTERVAL),
            stream: settings.stream.clone(),
            demo: settings.demo,
            proxy: settings.proxy.clone(),
            leeway_seconds: settings.token.leeway_seconds,
            admin_address: None,
            shutdown: tokio::sync::watch::Sender::new(false),
            keyring,
        })
    }
}

/// The application state as the hot handlers take it: each worker holds the shared
/// `web::Data<AppState>` once, in an `Rc` only that worker counts. Extracting `web::Data` (an
/// `Arc`) per request had every worker write the same reference count, a cache line the
/// workers then passed back and forth. Registered per worker in `server::run`.
#[derive(Clone)]
pub struct WorkerState(Rc<web::Data<AppState>>);

impl WorkerState {
    pub fn new(shared: web::Data<AppState>) -> Self {
        WorkerState(Rc::new(shared))
    }
}

impl Deref for WorkerState {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl FromRequest for WorkerState {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.app_data::<WorkerState>().cloned().ok_or_else(|| {
            actix_web::error::ErrorInternalServerError("WorkerState is not registered")
        }))
    }
}
