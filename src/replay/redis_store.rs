//! Redis replay store, shared by a fleet of issuers and gateways.
//!
//! A single-use token is consumed with `SET <prefix>:<jti> <org> NX EXAT <expires_at>`: one
//! atomic command on one key. A multi-use token counts its uses with a small Lua script (INCR +
//! EXPIREAT on one key). Usage counters live at `<prefix>:usage:<org>:{minted,redeemed}`; a credit
//! charge is a conditional INCR of the redeemed counter (refunded if the token was already used),
//! again one key. Every step touches a
//! single key, so the store works on a standalone Redis and on Redis Cluster alike.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use super::{Consumed, ReplayStore, StoreUnavailable, Usage, UseOf};
use crate::settings::RedisSettings;

/// Records one use of a multi-use token; returns the uses left, or -1 when none were left.
const CONSUME_COUNTED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
local allowed = tonumber(ARGV[1])
if n > allowed then return -1 end
return allowed - n
";

/// Spends one credit if the org has one left: returns the new count, or -1 when spent out.
const CHARGE_CREDIT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -1 end
return redis.call('INCR', KEYS[1])
";

pub struct RedisStore {
    conn: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    require_persistence: bool,
    /// The last persistence check and when it ran (strict mode re-checks every few seconds).
    persistence: Mutex<Option<(Instant, Persistence)>>,
    charge_credit: redis::Script,
}

impl RedisStore {
    /// Prepares a connection without opening it, so the service starts (and keeps minting) while
    /// Redis is down; the connection opens on first use and reopens by itself after a failure.
    /// Must be called inside a Tokio runtime.
    pub fn connect_lazily(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(settings.timeout);
        Ok(RedisStore {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            key_prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            require_persistence: settings.require_persistence,
            persistence: Mutex::new(None),
            charge_credit: redis::Script::new(CHARGE_CREDIT),
        })
    }

    /// What Redis says about its persistence (`CONFIG GET appendonly` / `appendfsync`).
    pub async fn persistence(&self) -> Result<Persistence, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<Vec<String>> = tokio::time::timeout(
            self.timeout,
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("append*")
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreUnavailable("no answer from Redis to CONFIG GET".into()))?;
        let pairs = match reply {
            Ok(pairs) => pairs,
            // Managed Redis often refuses CONFIG; that is an answer, not an outage.
            Err(e) if e.kind() == redis::ErrorKind::Io => {
                return Err(StoreUnavailable(e.to_string()))
            }
            Err(e) => return Ok(Persistence::Unknown(e.to_string())),
        };
        let value = |name: &str| {
            pairs
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
                .map(String::as_str)
        };
        Ok(match (value("appendonly"), value("appendfsync")) {
            (Some("yes"), Some("always")) => Persistence::EveryWrite,
            (Some("yes"), Some(fsync)) => Persistence::Periodic(fsync.to_owned()),
            (Some(_), _) => Persistence::Off,
            _ => Persistence::Unknown("CONFIG GET returned no appendonly setting".into()),
        })
    }

    /// Logs, once at start-up, what a Redis restart would do to single use.
    pub async fn warn_about_persistence(&self) {
        match self.persistence().await {
            Ok(Persistence::EveryWrite) => {
                log::info!("Redis persistence: appendonly yes, appendfsync always (strict single use across restarts)")
            }
            Ok(Persistence::Periodic(fsync)) => log::warn!(
                "Redis persistence: appendonly yes but appendfsync {fsync}: a Redis crash can forget \
                 the last redemptions, and those tokens could be redeemed again until they expire; \
                 use appendfsync always for strict single use"
            ),
            Ok(Persistence::Off) => log::warn!(
                "Redis persistence is off (appendonly no): if Redis restarts, tokens redeemed before \
                 the restart can be redeemed again until they expire; use appendonly yes + \
                 appendfsync always and STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE=true for strict single use"
            ),
            Ok(Persistence::Unknown(why)) => {
                log::warn!("cannot check Redis persistence ({why}); single use across Redis restarts depends on it")
            }
            Err(e) => log::info!("Redis persistence not checked at start-up: {e}"),
        }
    }

    /// In strict mode, refuses to record uses unless Redis confirms it writes every one to disk
    /// before answering. Re-checked every few seconds, so a Redis restarted without
    /// persistence is noticed.
    async fn ensure_durable(&self) -> Result<(), StoreUnavailable> {
        if !self.require_persistence {
            return Ok(());
        }
        let cached = self
            .persistence
            .lock()
            .ok()
            .and_then(|guard| guard.clone())
            .filter(|(checked, _)| checked.elapsed() < PERSISTENCE_RECHECK);
        let persistence = match cached {
            Some((_, persistence)) => persistence,
            None => {
                let persistence = self.persistence().await?;
                if let Ok(mut guard) = self.persistence.lock() {
                    *guard = Some((Instant::now(), persistence.clone()));
                }
                persistence
            }
        };
        match persistence {
            Persistence::EveryWrite => Ok(()),
            other => Err(StoreUnavailable(format!(
                "strict mode (STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE) needs Redis with appendonly yes \
                 and appendfsync always; it reports {other:?}"
            ))),
        }
    }

    fn key(&self, jti: Uuid) -> String {
        format!("{}:{}", self.key_prefix, jti.as_hyphenated())
    }

    fn usage_key(&self, org: &str, counter: &str) -> String {
        format!("{}:usage:{org}:{counter}", self.key_prefix)
    }

    /// The one command that records a use: `SET NX EXAT` for single use, the script otherwise.
    fn record_use(&self, key: &str, use_of: &UseOf<'_>) -> redis::Cmd {
        if use_of.allowed_uses <= 1 {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(use_of.org)
                .arg("NX")
                .arg("EXAT")
                .arg(use_of.expires_at);
            cmd
        } else {
            // Plain EVAL: multi-use tokens are rare, and a restarted Redis that forgot the
            // script cannot turn into an error here.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(CONSUME_COUNTED)
                .arg(1)
                .arg(key)
                .arg(use_of.allowed_uses)
                .arg(use_of.expires_at);
            cmd
        }
    }

    /// Bounds every call by the configured timeout, whatever the connection is doing: a paused or
    /// unreachable Redis turns into a quick 503, never a pile of waiting requests.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreUnavailable> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreUnavailable(e.to_string())),
            Err(_) => Err(StoreUnavailable(format!(
                "no answer from Redis within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn consume_once(&self, use_of: UseOf<'_>) -> Result<Consumed, StoreUnavailable> {
        self.ensure_durable().await?;
        let key = self.key(use_of.jti);
        let redeemed = self.usage_key(use_of.org, "redeemed");
        let record = self.record_use(&key, &use_of);
        let mut conn = self.conn.clone();
        let Some(limit) = use_of.credit_limit else {
            // One round trip records the use and counts it; a replay gives its count back.
            let mut both = redis::pipe();
            both.add_command(record).cmd("INCR").arg(&redeemed).ignore();
            let (reply,): (redis::Value,) = self.bounded(both.query_async(&mut conn)).await?;
            let outcome = consumed(&reply);
            if outcome == Consumed::AlreadyUsed {
                self.bounded(
                    redis::cmd("DECR")
                        .arg(&redeemed)
                        .query_async::<i64>(&mut conn),
                )
                .await?;
            }
            return Ok(outcome);
        };
        // Charge first, then record the use, refunding a replay: a concurrent redemption is
        // never told "already used" about a use that would be taken back. The price is that a
        // replay in flight may briefly hold the org's last credit (a transient 402 elsewhere).
        let charged: i64 = self
            .bounded(
                self.charge_credit
                    .key(&redeemed)
                    .arg(limit)
                    .invoke_async(&mut conn),
            )
            .await?;
        if charged < 0 {
            let used = self.uses_recorded(use_of.jti, use_of.allowed_uses).await?;
            return Ok(if used >= use_of.allowed_uses {
                Consumed::AlreadyUsed
            } else {
                Consumed::NoCredits
            });
        }
        let outcome = consumed(&self.bounded(record.query_async(&mut conn)).await?);
        if outcome == Consumed::AlreadyUsed {
            self.bounded(
                redis::cmd("DECR")
                    .arg(&redeemed)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        }
        Ok(outcome)
    }

    async fn uses_recorded(&self, jti: Uuid, allowed_uses: u32) -> Result<u32, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let value: Option<String> = self
            .bounded(redis::cmd("GET").arg(self.key(jti)).query_async(&mut conn))
            .await?;
        Ok(match value {
            None => 0,
            // A single-use entry holds the org name, a counted one its number of uses.
            Some(_) if allowed_uses <= 1 => 1,
            Some(n) => n.parse::<u32>().unwrap_or(allowed_uses).min(allowed_uses),
        })
    }

    fn record_minted(&self, org: &str) {
        let mut conn = self.conn.clone();
        let key = self.usage_key(org, "minted");
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut incr = redis::cmd("INCR");
            incr.arg(key);
            let incr = incr.query_async::<i64>(&mut conn);
            if !matches!(tokio::time::timeout(timeout, incr).await, Ok(Ok(_))) {
                log::debug!("could not count a minted token; /v1/usage will read low");
            }
        });
    }

    async fn usage(&self, org: &str) -> Result<Usage, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let (minted, redeemed): (Option<u64>, Option<u64>) = self
            .bounded(
                redis::cmd("MGET")
                    .arg(self.usage_key(org, "minted"))
                    .arg(self.usage_key(org, "redeemed"))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(Usage {
            minted: minted.unwrap_or(0),
            redeemed: redeemed.unwrap_or(0),
        })
    }

    async fn ping(&self) -> Result<(), StoreUnavailable> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(drop)?;
        self.ensure_durable().await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// How strict mode re-checks Redis's persistence settings.
const PERSISTENCE_RECHECK: Duration = Duration::from_secs(5);

/// What a Redis restart would do to the consumed `jti` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes` + `appendfsync always`: every recorded use is on disk before Redis answers.
    EveryWrite,
    /// `appendonly yes` with a periodic fsync: a crash can lose the last writes.
    Periodic(String),
    /// No append-only file: a restart forgets every consumed `jti`.
    Off,
    /// Redis would not say (CONFIG refused, e.g. on a managed service).
    Unknown(String),
}

/// Reads what `SET NX` (OK / nil) or the counting script (uses left / -1) answered.
fn consumed(reply: &redis::Value) -> Consumed {
    match reply {
        redis::Value::Nil => Consumed::AlreadyUsed,
        redis::Value::Int(left) => match u32::try_from(*left) {
            Ok(uses_remaining) => Consumed::Accepted { uses_remaining },
            Err(_) => Consumed::AlreadyUsed,
        },
        _ => Consumed::Accepted { uses_remaining: 0 },
    }
}
