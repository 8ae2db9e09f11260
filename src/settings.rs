//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable is optional and has a working default; an invalid value stops start-up with
//! an error that names the variable.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::input::integer_from_text;
use crate::token::params::{ReconnectGrace, TokenType};

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// This process's name in the session listing (`STREAMTOKEN_INSTANCE`); unset, the host
    /// name and the port served on (`instance_name`).
    pub instance: Option<String>,
    /// HTTPS (and WSS) on `bind`; `None` serves plain HTTP. The admin listener is always plain.
    pub tls: Option<TlsSettings>,
    /// A second listener for operations; when set, `/metrics` answers there only.
    pub admin_bind: Option<SocketAddr>,
    pub keys_dir: PathBuf,
    /// Refuse signing key files others may read, instead of warning.
    pub strict_key_files: bool,
    /// How often the keys folder is checked for changes, which reload the keyring as SIGHUP
    /// does; `None` (`STREAMTOKEN_KEYS_POLL_MS=0`) leaves reloads to SIGHUP.
    pub keys_poll: Option<Duration>,
    pub redis: Option<RedisSettings>,
    pub token: TokenSettings,
    /// actix worker threads; defaults to the number of cores.
    pub workers: usize,
    /// Each org's minting quota, unless one of its keys sets its own.
    pub rate_limit: RateQuota,
    /// Whether that quota holds across the fleet (in the shared store) or in each process.
    pub rate_limit_scope: RateLimitScope,
    pub compat: CompatFamilies,
    pub stream: StreamSettings,
    pub demo: DemoMode,
    /// WebSocket paths whose sessions are admitted here and relayed to an upstream.
    pub proxy: Vec<ProxyRoute>,
}

/// `path=upstream`: a WebSocket opened on `path` with a good token is relayed to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    pub path: String,
    /// `ws://` or `wss://` URL; the client's query string (minus `token`) is appended.
    pub upstream: String,
}

/// Paths the service serves itself; a proxy route may not take one.
pub const BUILT_IN_PATHS: [&str; 18] = [
    "/v1/tokens",
    "/v1/tokens/redeem",
    "/v1/tokens/introspect",
    "/v1/tokens/revoke",
    "/v1/usage",
    "/v1/sessions",
    "/v1/stream",
    "/v1/forward-auth",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.yaml",
    "/demo",
    "/demo/token",
    "/v3/token",
    "/api/v1/token",
    "/api/v1/chat/token",
    "/v1/single-use-token",
];

/// The PEM files `bind` serves HTTPS with. Only the paths: the files are read when the server
/// starts and again on every reload (`http::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `STREAMTOKEN_TLS_CERT`: the certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// `STREAMTOKEN_TLS_KEY`: the private key of that certificate.
    pub key_file: PathBuf,
}

/// The reference streaming endpoint's timers and what it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// A session with no frame from the client for this long is closed (4009).
    pub idle_timeout: Duration,
    /// How often the server pings an open session.
    pub heartbeat: Duration,
    /// Token types that may open a session; another type is refused (4001, `wrong_token_type`)
    /// without consuming a use.
    pub token_types: BTreeSet<String>,
    /// A frame the client does not take within this long closes the session (1008).
    pub send_timeout: Duration,
    /// Open sessions allowed in this process, and per org; over either the client gets 1013
    /// and keeps its token.
    pub max_sessions: usize,
    pub max_sessions_per_org: usize,
}

impl StreamSettings {
    pub fn with_idle_timeout(idle_timeout: Duration) -> Self {
        StreamSettings {
            idle_timeout,
            // Several pings per idle period, so a live client always answers in time.
            heartbeat: (idle_timeout / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(15)),
            token_types: BTreeSet::from([DEFAULT_STREAM_TOKEN_TYPE.to_owned()]),
            send_timeout: Duration::from_secs(DEFAULT_STREAM_SEND_TIMEOUT_SECONDS),
            max_sessions: DEFAULT_STREAM_MAX_SESSIONS,
            max_sessions_per_org: DEFAULT_STREAM_MAX_SESSIONS_PER_ORG,
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self::with_idle_timeout(Duration::from_secs(DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS))
    }
}

/// Whether `/demo` and its minting route, which mints for the dev org without an API key, are
/// served. An explicit opt-in, allowed only on a loopback bind address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    /// Served while the keyring also holds the dev key `keys init` creates (org "dev").
    On,
    Off,
}
/// A token-bucket quota: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    pub per_minute: u32,
    pub burst: u32,
}

impl RateQuota {
    pub fn per_minute(n: u32) -> Self {
        RateQuota {
            per_minute: n,
            burst: n,
        }
    }
}

/// Which vendor-compatible route families are served; a disabled family answers 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompatFamilies {
    /// `GET /v3/token`
    pub assemblyai: bool,
    /// `POST /v1/single-use-token/{token_type}`
    pub elevenlabs: bool,
    /// `GET /api/v1/token`
    pub stream: bool,
    /// `GET|POST /api/v1/chat/token`
    pub chat: bool,
}

impl CompatFamilies {
    pub const NAMES: [&'static str; 4] = ["assemblyai", "elevenlabs", "stream", "chat"];

    pub fn all() -> Self {
        CompatFamilies {
            assemblyai: true,
            elevenlabs: true,
            stream: true,
            chat: true,
        }
    }

    /// `all`, `none`, or a comma-separated list of family names.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut families = CompatFamilies {
            assemblyai: false,
            elevenlabs: false,
            stream: false,
            chat: false,
        };
        match value.trim() {
            "all" => return Ok(Self::all()),
            "none" => return Ok(families),
            list => {
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match name {
                        "assemblyai" => families.assemblyai = true,
                        "elevenlabs" => families.elevenlabs = true,
                        "stream" => families.stream = true,
                        "chat" => families.chat = true,
                        other => {
                            return Err(format!(
                                "unknown family {other:?}; use all, none, or a list of {}",
                                Self::NAMES.join(", ")
                            ))
                        }
                    }
                }
            }
        }
        Ok(families)
    }
}

/// What every token carries and how strictly it is checked.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    /// Seconds of clock skew tolerated when checking `exp`.
    pub leeway_seconds: u64,
    /// The reconnect grace of a single-use token whose mint request does not set one.
    pub reconnect_grace_seconds: u32,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// Every key starts with `<prefix>:`, so several deployments can share a Redis.
    pub key_prefix: String,
    /// Longest wait for one Redis answer before redemption fails closed with 503.
    pub timeout: Duration,
    /// Strict single use across Redis restarts: redeem only while Redis confirms
    /// `appendonly yes` and `appendfsync always`.
    pub require_persistence: bool,
    /// Replicas that must hold a recorded use (Redis `WAIT`) before it counts as accepted, so
    /// a failover cannot forget it.
    pub replica_acks: u32,
    /// PEM file of the CA that signed the Redis servers' certificates (`rediss://`); unset
    /// means the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

/// One Redis, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Standalone(Secret),
    Cluster(Vec<Secret>),
}

impl RedisTarget {
    fn urls(&self) -> &[Secret] {
        match self {
            RedisTarget::Standalone(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls) => urls,
        }
    }

    /// Whether the connection is TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.urls()
            .iter()
            .any(|url| url.expose().trim_start().starts_with("rediss://"))
    }
}

/// Where the minting quota is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// One bucket per org (or key) shared by every process on the Redis store.
    Fleet,
    /// A bucket in each process: a fleet of N allows N × the quota.
    Process,
}

/// A configuration value that may hold a password (a Redis URL): `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_ISSUER: &str = "streamtoken";
pub const DEFAULT_AUDIENCE: &str = "streamtoken-gateway";
pub const DEFAULT_LEEWAY_SECONDS: u64 = 5;
pub const MAX_LEEWAY_SECONDS: u64 = 300;
pub const DEFAULT_KEYS_POLL_MS: u64 = 1_000;
pub const MAX_KEYS_POLL_MS: u64 = 3_600_000;
pub const DEFAULT_REDIS_PREFIX: &str = "streamtoken";
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 500;
pub const MAX_REDIS_REPLICA_ACKS: u64 = 16;
pub const DEFAULT_RATE_PER_MINUTE: u64 = 600;
pub const DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS: u64 = 60;
pub const DEFAULT_STREAM_TOKEN_TYPE: &str = "realtime";
pub const DEFAULT_STREAM_SEND_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_STREAM_MAX_SESSIONS: usize = 10_000;
pub const DEFAULT_STREAM_MAX_SESSIONS_PER_ORG: usize = 1_000;
pub const MAX_RATE_PER_MINUTE: u64 = 100_000_000;

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not mutate the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let redis = env.redis()?;
        let bind: SocketAddr = env.parsed("STREAMTOKEN_BIND", DEFAULT_BIND)?;
        Ok(Settings {
            bind,
            instance: match env.text("STREAMTOKEN_INSTANCE") {
                None => None,
                Some(_) => Some(env.name("STREAMTOKEN_INSTANCE", "")?),
            },
            tls: env.tls()?,
            admin_bind: match env.text("STREAMTOKEN_ADMIN_BIND") {
                None => None,
                Some(_) => Some(env.parsed("STREAMTOKEN_ADMIN_BIND", "")?),
            },
            keys_dir: env
                .text("STREAMTOKEN_KEYS_DIR")
                .unwrap_or_else(|| "keys".into())
                .into(),
            strict_key_files: env.flag("STREAMTOKEN_STRICT_KEY_FILES")?,
            keys_poll: match env.number(
                "STREAMTOKEN_KEYS_POLL_MS",
                DEFAULT_KEYS_POLL_MS,
                0..=MAX_KEYS_POLL_MS,
            )? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            token: TokenSettings {
                issuer: env.name("STREAMTOKEN_ISSUER", DEFAULT_ISSUER)?,
                audience: env.name("STREAMTOKEN_AUDIENCE", DEFAULT_AUDIENCE)?,
                leeway_seconds: env.number(
                    "STREAMTOKEN_LEEWAY_SECONDS",
                    DEFAULT_LEEWAY_SECONDS,
                    0..=MAX_LEEWAY_SECONDS,
                )?,
                reconnect_grace_seconds: env.number(
                    "STREAMTOKEN_RECONNECT_GRACE_SECONDS",
                    u64::from(ReconnectGrace::default().get()),
                    u64::from(ReconnectGrace::MIN)..=u64::from(ReconnectGrace::MAX),
                )? as u32,
            },
            workers: env.number("STREAMTOKEN_WORKERS", default_workers() as u64, 1..=1024)?
                as usize,
            rate_limit_scope: env.rate_limit_scope(redis.is_some())?,
            rate_limit: {
                let per_minute = env.number(
                    "STREAMTOKEN_RATE_PER_MINUTE",
                    DEFAULT_RATE_PER_MINUTE,
                    1..=MAX_RATE_PER_MINUTE,
                )?;
                let burst = env.number(
                    "STREAMTOKEN_RATE_BURST",
                    per_minute,
                    1..=MAX_RATE_PER_MINUTE,
                )?;
                RateQuota {
                    per_minute: per_minute as u32,
                    burst: burst as u32,
                }
            },
            compat: {
                let value = env
                    .text("STREAMTOKEN_COMPAT")
                    .unwrap_or_else(|| "all".into());
                CompatFamilies::parse(&value).map_err(|reason| ConfigError {
                    variable: "STREAMTOKEN_COMPAT",
                    value,
                    reason,
                })?
            },
            stream: StreamSettings {
                token_types: env.token_types("STREAMTOKEN_STREAM_TOKEN_TYPES")?,
                send_timeout: Duration::from_secs(env.number(
                    "STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS",
                    DEFAULT_STREAM_SEND_TIMEOUT_SECONDS,
                    1..=3_600,
                )?),
                max_sessions: env.number(
                    "STREAMTOKEN_STREAM_MAX_SESSIONS",
                    DEFAULT_STREAM_MAX_SESSIONS as u64,
                    1..=1_000_000,
                )? as usize,
                max_sessions_per_org: env.number(
                    "STREAMTOKEN_STREAM_MAX_SESSIONS_PER_ORG",
                    DEFAULT_STREAM_MAX_SESSIONS_PER_ORG as u64,
                    1..=1_000_000,
                )? as usize,
                ..StreamSettings::with_idle_timeout(Duration::from_secs(env.number(
                    "STREAMTOKEN_STREAM_IDLE_TIMEOUT_SECONDS",
                    DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS,
                    1..=86_400,
                )?))
            },
            redis,
            proxy: env.proxy_routes("STREAMTOKEN_PROXY")?,
            demo: match env.text("STREAMTOKEN_DEMO").as_deref().map(str::trim) {
                None | Some("off") => DemoMode::Off,
                Some("on") if bind.ip().is_loopback() => DemoMode::On,
                Some("on") => {
                    return Err(ConfigError {
                        variable: "STREAMTOKEN_DEMO",
                        value: "on".into(),
                        reason: format!(
                            "the demo mints tokens without an API key, so it is served only on a \
                             loopback address; STREAMTOKEN_BIND is {bind}"
                        ),
                    })
                }
                Some(other) => {
                    return Err(ConfigError {
                        variable: "STREAMTOKEN_DEMO",
                        value: other.into(),
                        reason: "must be on or off".into(),
                    })
                }
            },
        })
    }
}

impl Settings {
    /// The name the session listing shows for this process.
    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| default_instance_name(Some(self.bind)))
    }
}

/// `<host name>:<port>` (or `<host name>/pid-<pid>` with no port): tells apart processes on
/// several hosts and on one.
pub fn default_instance_name(bind: Option<SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "streamtoken".into());
    match bind {
        Some(bind) => format!("{host}:{}", bind.port()),
        // An embedded gateway: processes on one host are told apart by their pid.
        None => format!("{host}/pid-{}", std::process::id()),
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            reconnect_grace_seconds: ReconnectGrace::default().get(),
        }
    }
}

/// A Redis URL the client accepts; the message never repeats it (it may hold a password).
fn check_redis_url(variable: &'static str, url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url).map(drop).map_err(|e| ConfigError {
        variable,
        value: "[redacted]".into(),
        reason: e.to_string(),
    })
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    /// A set, non-blank value; blank counts as unset so `VAR=` in a shell means "default".
    fn text(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let value = self.text(name).unwrap_or_else(|| default.into());
        value.trim().parse().map_err(|e: T::Err| ConfigError {
            variable: name,
            reason: e.to_string(),
            value,
        })
    }

    /// An integer in `range`, read as query strings and JSON bodies are (`input`).
    fn number(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(default);
        };
        let refuse = |reason: String| ConfigError {
            variable: name,
            value: value.clone(),
            reason,
        };
        let n = integer_from_text(value.trim()).ok_or_else(|| refuse("not an integer".into()))?;
        let within = i128::from(*range.start())..=i128::from(*range.end());
        if within.contains(&n) {
            Ok(n as u64)
        } else {
            Err(refuse(format!(
                "must be between {} and {}",
                range.start(),
                range.end()
            )))
        }
    }

    /// The Redis store, if one is configured: one URL or a cluster's seed nodes, never both.
    fn redis(&self) -> Result<Option<RedisSettings>, ConfigError> {
        // Read even without Redis, so a typo is caught before it matters.
        let require_persistence = self.flag("STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE")?;
        let replica_acks = self.number(
            "STREAMTOKEN_REDIS_REPLICA_ACKS",
            0,
            0..=MAX_REDIS_REPLICA_ACKS,
        )? as u32;
        let target = match (
            self.text("STREAMTOKEN_REDIS_URL"),
            self.text("STREAMTOKEN_REDIS_CLUSTER_URLS"),
        ) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    variable: "STREAMTOKEN_REDIS_CLUSTER_URLS",
                    value: "[redacted]".into(),
                    reason:
                        "set STREAMTOKEN_REDIS_URL (one Redis) or STREAMTOKEN_REDIS_CLUSTER_URLS \
                             (a cluster's seed nodes), not both"
                            .into(),
                })
            }
            (Some(url), None) => {
                check_redis_url("STREAMTOKEN_REDIS_URL", &url)?;
                RedisTarget::Standalone(Secret::new(url))
            }
            (None, Some(list)) => {
                let urls: Vec<Secret> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(|url| {
                        check_redis_url("STREAMTOKEN_REDIS_CLUSTER_URLS", url)?;
                        Ok(Secret::new(url))
                    })
                    .collect::<Result<_, ConfigError>>()?;
                let target = RedisTarget::Cluster(urls);
                let tls = target
                    .urls()
                    .iter()
                    .filter(|u| u.expose().starts_with("rediss://"));
                if tls.count() % target.urls().len() != 0 {
                    return Err(ConfigError {
                        variable: "STREAMTOKEN_REDIS_CLUSTER_URLS",
                        value: "[redacted]".into(),
                        reason: "mixes redis:// and rediss://; a cluster is all TLS or none".into(),
                    });
                }
                target
            }
        };
        Ok(Some(RedisSettings {
            target,
            key_prefix: self
                .text("STREAMTOKEN_REDIS_PREFIX")
                .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.into()),
            timeout: Duration::from_millis(self.number(
                "STREAMTOKEN_REDIS_TIMEOUT_MS",
                DEFAULT_REDIS_TIMEOUT_MS,
                1..=60_000,
            )?),
            require_persistence,
            replica_acks,
            tls_ca_file: self
                .text("STREAMTOKEN_REDIS_TLS_CA_FILE")
                .map(PathBuf::from),
        }))
    }

    /// `path=ws://host:port/path,…`; each path once, absolute, and not one the service serves.
    fn proxy_routes(&self, name: &'static str) -> Result<Vec<ProxyRoute>, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(Vec::new());
        };
        let refuse = |reason: String| ConfigError {
            variable: name,
            value: value.clone(),
            reason,
        };
        let mut routes: Vec<ProxyRoute> = Vec::new();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((path, upstream)) = pair.split_once('=') else {
                return Err(refuse(format!("{pair:?} is not path=ws://host:port/path")));
            };
            let (path, upstream) = (path.trim(), upstream.trim());
            let plain_path = path.starts_with('/')
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
            if !plain_path {
                return Err(refuse(format!(
                    "path {path:?} must start with / and hold only letters, digits and /-_.~"
                )));
            }
            if BUILT_IN_PATHS
                .iter()
                .any(|built_in| path == *built_in || path.starts_with(&format!("{built_in}/")))
            {
                return Err(refuse(format!("{path} is served by streamtoken itself")));
            }
            if routes.iter().any(|route| route.path == path) {
                return Err(refuse(format!("{path} is given twice")));
            }
            let uri: actix_web::http::Uri = upstream
                .parse()
                .map_err(|e| refuse(format!("upstream {upstream:?}: {e}")))?;
            if !matches!(uri.scheme_str(), Some("ws" | "wss")) || uri.host().is_none() {
                return Err(refuse(format!(
                    "upstream {upstream:?} must be a ws:// or wss:// URL with a host"
                )));
            }
            routes.push(ProxyRoute {
                path: path.to_owned(),
                upstream: upstream.to_owned(),
            });
        }
        Ok(routes)
    }

    /// Both files or neither: one alone is a mistake, not a request for plain HTTP.
    fn tls(&self) -> Result<Option<TlsSettings>, ConfigError> {
        const CERT: &str = "STREAMTOKEN_TLS_CERT";
        const KEY: &str = "STREAMTOKEN_TLS_KEY";
        let missing = |variable: &'static str, value: String, other: &str| ConfigError {
            variable,
            value,
            reason: format!("HTTPS needs both files: set {other} too, or neither for plain HTTP"),
        };
        match (self.text(CERT), self.text(KEY)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsSettings {
                cert_file: cert.into(),
                key_file: key.into(),
            })),
            (Some(cert), None) => Err(missing(CERT, cert, KEY)),
            (None, Some(key)) => Err(missing(KEY, key, CERT)),
        }
    }

    /// `fleet` (the default with a Redis store) or `process`; `fleet` needs the Redis store.
    fn rate_limit_scope(&self, shared_store: bool) -> Result<RateLimitScope, ConfigError> {
        let name = "STREAMTOKEN_RATE_LIMIT_SCOPE";
        match self.text(name).as_deref().map(str::trim) {
            None if shared_store => Ok(RateLimitScope::Fleet),
            None | Some("process") => Ok(RateLimitScope::Process),
            Some("fleet") if shared_store => Ok(RateLimitScope::Fleet),
            Some("fleet") => Err(ConfigError {
                variable: name,
                value: "fleet".into(),
                reason: "a fleet-wide quota is kept in Redis; set STREAMTOKEN_REDIS_URL or \
                         STREAMTOKEN_REDIS_CLUSTER_URLS"
                    .into(),
            }),
            Some(other) => Err(ConfigError {
                variable: name,
                value: other.into(),
                reason: "must be fleet or process".into(),
            }),
        }
    }

    /// A comma-separated list of token types; unset means the stream's default.
    fn token_types(&self, name: &'static str) -> Result<BTreeSet<String>, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(BTreeSet::from([DEFAULT_STREAM_TOKEN_TYPE.to_owned()]));
        };
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| TokenType::parse(t).map(|t| t.as_str().to_owned()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| ConfigError {
                variable: name,
                value: value.clone(),
                reason: e.message,
            })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`); unset means false.
    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self
            .text(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some(other) => Err(ConfigError {
                variable: name,
                value: other.into(),
                reason: "must be true or false".into(),
            }),
        }
    }

    /// Issuer and audience end up in every token: printable ASCII, no spaces, at most 128 bytes.
    fn name(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.text(name).unwrap_or_else(|| default.into());
        let ok = value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(value)
        } else {
            Err(ConfigError {
                variable: name,
                value,
                reason: "must be 1-128 printable ASCII characters without spaces".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn no_variables_give_the_documented_defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.keys_dir, PathBuf::from("keys"));
        assert_eq!(s.keys_poll, Some(Duration::from_secs(1)));
        assert!(s.redis.is_none());
        assert!(s.tls.is_none());
        assert_eq!(s.token.issuer, "streamtoken");
        assert_eq!(s.token.audience, "streamtoken-gateway");
        assert_eq!(s.token.leeway_seconds, 5);
        assert_eq!(s.rate_limit, RateQuota::per_minute(600));
        assert_eq!(s.compat, CompatFamilies::all());
        assert_eq!(
            s.stream.token_types,
            BTreeSet::from(["realtime".to_owned()])
        );
    }

    #[test]
    fn stream_token_types_are_a_comma_list() {
        let s = settings(&[("STREAMTOKEN_STREAM_TOKEN_TYPES", " realtime, chat ,")]).unwrap();
        assert_eq!(
            s.stream.token_types,
            BTreeSet::from(["chat".to_owned(), "realtime".to_owned()])
        );
    }

    #[test]
    fn compat_families_can_be_chosen_by_name() {
        let s = settings(&[("STREAMTOKEN_COMPAT", "assemblyai, chat")]).unwrap();
        assert!(s.compat.assemblyai && s.compat.chat);
        assert!(!s.compat.elevenlabs && !s.compat.stream);
        let none = settings(&[("STREAMTOKEN_COMPAT", "none")]).unwrap().compat;
        assert!(!(none.assemblyai || none.elevenlabs || none.stream || none.chat));
    }

    #[test]
    fn the_demo_is_off_unless_switched_on_and_on_only_on_loopback() {
        assert_eq!(settings(&[]).unwrap().demo, DemoMode::Off);
        let on = |bind: &str| settings(&[("STREAMTOKEN_DEMO", "on"), ("STREAMTOKEN_BIND", bind)]);
        assert_eq!(on("127.0.0.1:8080").unwrap().demo, DemoMode::On);
        assert_eq!(on("[::1]:8080").unwrap().demo, DemoMode::On);
        for public in ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080"] {
            let err = on(public).unwrap_err();
            assert_eq!(err.variable, "STREAMTOKEN_DEMO");
            assert!(err.to_string().contains("loopback"), "{err}");
        }
    }

    #[test]
    fn a_keys_poll_of_zero_switches_the_folder_watch_off() {
        let poll = |ms: &str| {
            settings(&[("STREAMTOKEN_KEYS_POLL_MS", ms)])
                .unwrap()
                .keys_poll
        };
        assert_eq!(poll("0"), None);
        assert_eq!(poll("250"), Some(Duration::from_millis(250)));
    }

    #[test]
    fn the_burst_defaults_to_the_per_minute_rate() {
        let s = settings(&[("STREAMTOKEN_RATE_PER_MINUTE", "5")]).unwrap();
        assert_eq!(
            s.rate_limit,
            RateQuota {
                per_minute: 5,
                burst: 5
            }
        );
    }

    #[test]
    fn proxy_routes_pair_a_path_with_an_upstream() {
        let s = settings(&[(
            "STREAMTOKEN_PROXY",
            " /v3/ws=ws://127.0.0.1:9000/v3/ws?x=1 , /v1/speech-to-text/realtime=wss://stt.internal/rt",
        )])
        .unwrap();
        assert_eq!(
            s.proxy,
            [
                ProxyRoute {
                    path: "/v3/ws".into(),
                    upstream: "ws://127.0.0.1:9000/v3/ws?x=1".into()
                },
                ProxyRoute {
                    path: "/v1/speech-to-text/realtime".into(),
                    upstream: "wss://stt.internal/rt".into()
                },
            ]
        );
        assert!(settings(&[]).unwrap().proxy.is_empty());
    }

    #[test]
    fn one_redis_or_a_cluster_never_both() {
        let both = settings(&[
            ("STREAMTOKEN_REDIS_URL", "redis://127.0.0.1:6379/"),
            ("STREAMTOKEN_REDIS_CLUSTER_URLS", "redis://127.0.0.1:7000"),
        ])
        .expect_err("both set");
        assert!(
            both.to_string().contains("STREAMTOKEN_REDIS_URL")
                && both.to_string().contains("STREAMTOKEN_REDIS_CLUSTER_URLS"),
            "{both}"
        );
        let cluster = settings(&[(
            "STREAMTOKEN_REDIS_CLUSTER_URLS",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001,",
        )])
        .unwrap();
        let redis = cluster.redis.expect("a cluster store");
        assert!(matches!(&redis.target, RedisTarget::Cluster(seeds) if seeds.len() == 2));
        assert_eq!(redis.replica_acks, 0);
        assert_eq!(cluster.rate_limit_scope, RateLimitScope::Fleet);
        let mixed = settings(&[(
            "STREAMTOKEN_REDIS_CLUSTER_URLS",
            "redis://127.0.0.1:7000,rediss://127.0.0.1:7001",
        )]);
        assert!(mixed.is_err());
    }

    #[test]
    fn the_quota_is_per_process_without_redis_and_may_be_chosen_with_it() {
        assert_eq!(
            settings(&[]).unwrap().rate_limit_scope,
            RateLimitScope::Process
        );
        let chosen = settings(&[
            ("STREAMTOKEN_REDIS_URL", "redis://127.0.0.1:6379/"),
            ("STREAMTOKEN_RATE_LIMIT_SCOPE", "process"),
            ("STREAMTOKEN_REDIS_REPLICA_ACKS", "2"),
        ])
        .unwrap();
        assert_eq!(chosen.rate_limit_scope, RateLimitScope::Process);
        assert_eq!(chosen.redis.unwrap().replica_acks, 2);
    }

    #[test]
    fn each_invalid_value_names_its_variable() {
        for (var, value) in [
            ("STREAMTOKEN_BIND", "not-an-address"),
            ("STREAMTOKEN_ADMIN_BIND", "localhost"),
            ("STREAMTOKEN_LEEWAY_SECONDS", "abc"),
            ("STREAMTOKEN_LEEWAY_SECONDS", "-1"),
            ("STREAMTOKEN_LEEWAY_SECONDS", "301"),
            ("STREAMTOKEN_ISSUER", "has space"),
            ("STREAMTOKEN_WORKERS", "0"),
            ("STREAMTOKEN_REDIS_URL", "http://not-redis"),
            ("STREAMTOKEN_RATE_PER_MINUTE", "0"),
            ("STREAMTOKEN_RATE_BURST", "1.5"),
            ("STREAMTOKEN_COMPAT", "assemblyai,nope"),
            ("STREAMTOKEN_STREAM_IDLE_TIMEOUT_SECONDS", "0"),
            ("STREAMTOKEN_STREAM_TOKEN_TYPES", "realtime,Chat"),
            ("STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS", "0"),
            ("STREAMTOKEN_STREAM_MAX_SESSIONS", "0"),
            ("STREAMTOKEN_STREAM_MAX_SESSIONS_PER_ORG", "x"),
            ("STREAMTOKEN_DEMO", "auto"),
            ("STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE", "maybe"),
            (
                "STREAMTOKEN_REDIS_CLUSTER_URLS",
                "redis://127.0.0.1:7000,http://x",
            ),
            ("STREAMTOKEN_REDIS_REPLICA_ACKS", "17"),
            ("STREAMTOKEN_RATE_LIMIT_SCOPE", "global"),
            ("STREAMTOKEN_RATE_LIMIT_SCOPE", "fleet"),
            ("STREAMTOKEN_KEYS_POLL_MS", "-1"),
            ("STREAMTOKEN_PROXY", "/v3/ws"),
            ("STREAMTOKEN_PROXY", "v3/ws=ws://127.0.0.1:9000/"),
            ("STREAMTOKEN_PROXY", "/v3/ws=http://127.0.0.1:9000/"),
            ("STREAMTOKEN_PROXY", "/v1/stream=ws://127.0.0.1:9000/"),
            ("STREAMTOKEN_PROXY", "/a=ws://h:1/,/a=ws://h:2/"),
            ("STREAMTOKEN_PROXY", "/{x}=ws://h:1/"),
            ("STREAMTOKEN_KEYS_POLL_MS", "3600001"),
            // One TLS file without the other.
            ("STREAMTOKEN_TLS_CERT", "/etc/streamtoken/tls.crt"),
            ("STREAMTOKEN_TLS_KEY", "/etc/streamtoken/tls.key"),
        ] {
            let err = settings(&[(var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{value}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn https_takes_both_tls_files_and_a_lone_one_names_the_other() {
        let both = settings(&[
            ("STREAMTOKEN_TLS_CERT", "tls.crt"),
            ("STREAMTOKEN_TLS_KEY", "tls.key"),
        ])
        .unwrap();
        assert_eq!(
            both.tls,
            Some(TlsSettings {
                cert_file: "tls.crt".into(),
                key_file: "tls.key".into(),
            })
        );
        let lone = settings(&[("STREAMTOKEN_TLS_KEY", "tls.key")]).unwrap_err();
        let message = lone.to_string();
        assert!(
            message.contains("STREAMTOKEN_TLS_CERT") && message.contains("tls.key"),
            "{message}"
        );
    }

    #[test]
    fn the_redis_url_never_appears_in_debug_output() {
        let s = settings(&[("STREAMTOKEN_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.redis.unwrap().timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_redis_timeout_out_of_range_is_refused() {
        let err = settings(&[
            ("STREAMTOKEN_REDIS_URL", "redis://127.0.0.1/"),
            ("STREAMTOKEN_REDIS_TIMEOUT_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "STREAMTOKEN_REDIS_TIMEOUT_MS");
    }
}
