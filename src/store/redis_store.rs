//! Redis replay store, shared by a fleet of issuers and gateways.
//!
//! A single-use token is consumed with `SET <prefix>:<jti> <org> NX EXAT <expires_at>`: one
//! atomic command on one key. A multi-use token counts its uses with a small Lua script (INCR +
//! EXPIREAT on one key). Usage counters live at `<prefix>:usage:<org>:{minted,redeemed}`; a credit
//! charge is a conditional INCR of the redeemed counter (refunded if the token was already used),
//! again one key. Every step touches a
//! single key, so the store works on a standalone Redis and on Redis Cluster alike.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use uuid::Uuid;

use super::{Consumed, ReplayStore, SharedStore, StoreUnavailable, Usage, UsageStore, UseOf};
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
    /// Every Redis call runs here (see `IoRuntime`).
    io: IoRuntime,
    conn: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    require_persistence: bool,
    charge_credit: redis::Script,
}

impl RedisStore {
    /// Prepares a connection without opening it, so the service starts (and keeps minting) while
    /// Redis is down; the connection opens on first use and reopens by itself after a failure.
    pub fn connect_lazily(settings: &RedisSettings) -> anyhow::Result<Self> {
        let io = IoRuntime::start()?;
        // The manager spawns its helpers on the runtime it is created in.
        let _inside = io.handle().enter();
        let client = redis::Client::open(settings.url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(settings.timeout);
        Ok(RedisStore {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            io,
            key_prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            require_persistence: settings.require_persistence,
            charge_credit: redis::Script::new(CHARGE_CREDIT),
        })
    }

    /// What Redis says about its persistence (`CONFIG GET appendonly` / `appendfsync`).
    pub async fn persistence(&self) -> Result<Persistence, StoreUnavailable> {
        let mut config_get = redis::cmd("CONFIG");
        config_get.arg("GET").arg("append*");
        let reply = self
            .run(self.command::<Vec<String>>(config_get))
            .await
            .map_err(|_| StoreUnavailable("no answer from Redis to CONFIG GET".into()))?;
        match reply {
            Ok(pairs) => Ok(persistence_from_pairs(&pairs)),
            // Managed Redis often refuses CONFIG; that is an answer, not an outage.
            Err(e) if e.kind() == redis::ErrorKind::Io => Err(StoreUnavailable(e.to_string())),
            Err(e) => Ok(Persistence::Unknown(e.to_string())),
        }
    }

    /// Strict mode's condition: Redis says it persists every write before answering.
    async fn require_every_write(&self) -> Result<(), StoreUnavailable> {
        match self.persistence().await? {
            Persistence::EveryWrite => Ok(()),
            other => Err(StoreUnavailable(format!(
                "strict mode (STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE) needs Redis with appendonly \
                 yes and appendfsync always; it reports {other:?}"
            ))),
        }
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

    /// Takes back a use this attempt recorded, and its count.
    async fn release(
        &self,
        key: &str,
        marker: &str,
        redeemed: &str,
        allowed_uses: u32,
    ) -> Result<(), StoreUnavailable> {
        let released: i64 = if allowed_uses <= 1 {
            self.query(release_marked(key, marker)).await?
        } else {
            self.query::<i64>(decr(key)).await.map(|_| 1)?
        };
        if released > 0 {
            self.query::<i64>(decr(redeemed)).await?;
        }
        Ok(())
    }

    /// After a timeout the write may still be queued (a paused Redis runs it later). Queue a
    /// compare-and-delete behind it on the same ordered connection, so a single-use token
    /// refused with 503 is not consumed after all and the documented retry works. Best effort:
    /// if the connection itself is lost, the write either ran before the loss or never will.
    fn release_after_timeout(&self, key: &str, marker: &str, redeemed: &str, use_of: &UseOf<'_>) {
        if use_of.allowed_uses > 1 || use_of.credit_limit.is_some() {
            return; // counted uses and charged credits cannot be told apart per attempt
        }
        let mut conn = self.conn.clone();
        let release = release_marked(key, marker);
        let decr = decr(redeemed);
        // The timed-out write was sent before its wait was abandoned, so this compare-and-delete
        // is queued behind it.
        self.io.handle().spawn(async move {
            let released =
                tokio::time::timeout(RELEASE_DEADLINE, release.query_async::<i64>(&mut conn)).await;
            if let Ok(Ok(1)) = released {
                let _ = tokio::time::timeout(RELEASE_DEADLINE, decr.query_async::<i64>(&mut conn))
                    .await;
            }
        });
    }

    fn key(&self, jti: Uuid) -> String {
        format!("{}:{}", self.key_prefix, jti.as_hyphenated())
    }

    fn usage_key(&self, org: &str, counter: &str) -> String {
        format!("{}:usage:{org}:{counter}", self.key_prefix)
    }

    /// The one command that records a use: `SET NX EXAT` for single use, the script otherwise.
    fn record_use(&self, key: &str, marker: &str, use_of: &UseOf<'_>) -> redis::Cmd {
        if use_of.allowed_uses <= 1 {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(marker)
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

    /// One command on the shared connection, as a future the I/O runtime can own.
    fn command<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send + 'static {
        let mut conn = self.conn.clone();
        async move { cmd.query_async(&mut conn).await }
    }

    /// `cmd`, bounded by the store timeout.
    async fn query<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        self.bounded(self.command(cmd)).await
    }

    /// Runs `call` on the I/O runtime, bounded by the configured timeout whatever the connection
    /// is doing: a paused or unreachable Redis turns into a quick 503, never a pile of waiting
    /// requests. A call that times out is abandoned (what it sent stays sent).
    async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreUnavailable> {
        let mut task = self.io.handle().spawn(call);
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ended)) => Err(StoreUnavailable(format!("Redis call ended: {ended}"))),
            Err(_) => {
                task.abort();
                Err(StoreUnavailable(format!(
                    "no answer from Redis within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// Like `run`, for a call that answers with a Redis result.
    async fn bounded<T: Send + 'static>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, StoreUnavailable> {
        self.run(call)
            .await?
            .map_err(|e| StoreUnavailable(e.to_string()))
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn consume_once(&self, use_of: UseOf<'_>) -> Result<Consumed, StoreUnavailable> {
        let key = self.key(use_of.jti);
        let redeemed = self.usage_key(use_of.org, "redeemed");
        // A single-use entry holds this attempt's marker, so a timed-out attempt can take back
        // exactly its own write (see `release_after_timeout`).
        let marker = format!("{} {}", use_of.org, Uuid::new_v4().simple());
        if self.require_persistence {
            // Refuse before spending anything (a use, a credit) when Redis cannot confirm it
            // persists every write, CONFIG refused included. The check rides in the write's
            // pipeline again below, for a Redis restarted in between.
            self.require_every_write().await?;
        }
        if let Some(limit) = use_of.credit_limit {
            // Charge first, then record the use, refunding a replay: a concurrent redemption is
            // never told "already used" about a use that would be taken back. The price is that
            // a replay in flight may briefly hold the org's last credit (a transient 402).
            let (mut conn, script, counter) = (
                self.conn.clone(),
                self.charge_credit.clone(),
                redeemed.clone(),
            );
            let charged: i64 = self
                .bounded(
                    async move { script.key(counter).arg(limit).invoke_async(&mut conn).await },
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
        }
        // One round trip: [the persistence check in strict mode,] the use, [its count]. Sent as
        // one pipeline on one connection, the check and the write are answered by the same
        // Redis instance: a Redis restarted without persistence cannot slip in between.
        let mut pipe = redis::pipe();
        if self.require_persistence {
            pipe.cmd("CONFIG").arg("GET").arg("append*");
        }
        pipe.add_command(self.record_use(&key, &marker, &use_of));
        if use_of.credit_limit.is_none() {
            pipe.cmd("INCR").arg(&redeemed).ignore();
        }
        let mut conn = self.conn.clone();
        let sent = async move { pipe.query_async(&mut conn).await };
        let replies: Vec<redis::Value> = match self.bounded(sent).await {
            Ok(replies) => replies,
            Err(unavailable) => {
                self.release_after_timeout(&key, &marker, &redeemed, &use_of);
                return Err(unavailable);
            }
        };
        let (persistence, reply) = match (self.require_persistence, replies.as_slice()) {
            (true, [config, reply]) => (Some(persistence_from(config)), reply),
            (false, [reply]) => (None, reply),
            _ => {
                return Err(StoreUnavailable(
                    "unexpected pipeline reply from Redis".into(),
                ))
            }
        };
        let outcome = consumed(reply);
        if outcome == Consumed::AlreadyUsed {
            // Give back the count (or the credit) this replay took.
            self.query::<i64>(decr(&redeemed)).await?;
            return Ok(outcome);
        }
        if let Some(persistence) = persistence.filter(|p| *p != Persistence::EveryWrite) {
            // Strict mode and Redis would not keep this use across a restart: take it back and
            // refuse, so the token can be redeemed once persistence is on.
            self.release(&key, &marker, &redeemed, use_of.allowed_uses)
                .await?;
            return Err(StoreUnavailable(format!(
                "strict mode (STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE) needs Redis with appendonly \
                 yes and appendfsync always; it reports {persistence:?}"
            )));
        }
        Ok(outcome)
    }

    async fn uses_recorded(&self, jti: Uuid, allowed_uses: u32) -> Result<u32, StoreUnavailable> {
        let mut get = redis::cmd("GET");
        get.arg(self.key(jti));
        let value: Option<String> = self.query(get).await?;
        Ok(match value {
            None => 0,
            // A single-use entry holds "<org> <attempt>", a counted one its number of uses.
            Some(_) if allowed_uses <= 1 => 1,
            Some(n) => n.parse::<u32>().unwrap_or(allowed_uses).min(allowed_uses),
        })
    }
}

#[async_trait]
impl UsageStore for RedisStore {
    fn record_minted(&self, org: &str) {
        let mut incr = redis::cmd("INCR");
        incr.arg(self.usage_key(org, "minted"));
        let incr = self.command::<i64>(incr);
        let timeout = self.timeout;
        self.io.handle().spawn(async move {
            if !matches!(tokio::time::timeout(timeout, incr).await, Ok(Ok(_))) {
                log::debug!("could not count a minted token; /v1/usage will read low");
            }
        });
    }

    async fn usage(&self, org: &str) -> Result<Usage, StoreUnavailable> {
        let mut mget = redis::cmd("MGET");
        mget.arg(self.usage_key(org, "minted"))
            .arg(self.usage_key(org, "redeemed"));
        let (minted, redeemed): (Option<u64>, Option<u64>) = self.query(mget).await?;
        Ok(Usage {
            minted: minted.unwrap_or(0),
            redeemed: redeemed.unwrap_or(0),
        })
    }
}

#[async_trait]
impl SharedStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreUnavailable> {
        self.query::<String>(redis::cmd("PING")).await.map(drop)?;
        if self.require_persistence {
            self.require_every_write().await?;
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

fn decr(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("DECR");
    cmd.arg(key);
    cmd
}

/// A runtime of the store's own for all Redis I/O. The connection's driver task lives on
/// whichever runtime first opens (or reopens) it; on an HTTP worker it would die when that worker
/// stops during a graceful shutdown, failing the redemptions other workers are still draining.
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("streamtoken-redis")
            .enable_all()
            .build()?;
        Ok(IoRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for IoRuntime {
    /// A store may be dropped inside another runtime, where a blocking shutdown is not allowed.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long a background release after a timeout may wait for Redis.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// Deletes a single-use entry only if it still holds this attempt's marker.
const RELEASE_MARKED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Plain EVAL (not EVALSHA): it may run long after it was sent, on a Redis that never loaded
/// the script.
fn release_marked(key: &str, marker: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE_MARKED).arg(1).arg(key).arg(marker);
    cmd
}

/// Reads `CONFIG GET append*` (name, value, name, value, …).
fn persistence_from_pairs(pairs: &[String]) -> Persistence {
    let value = |name: &str| {
        pairs
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1))
            .map(String::as_str)
    };
    match (value("appendonly"), value("appendfsync")) {
        (Some("yes"), Some("always")) => Persistence::EveryWrite,
        (Some("yes"), Some(fsync)) => Persistence::Periodic(fsync.to_owned()),
        (Some(_), _) => Persistence::Off,
        _ => Persistence::Unknown("CONFIG GET returned no appendonly setting".into()),
    }
}

fn persistence_from(reply: &redis::Value) -> Persistence {
    match redis::from_redis_value::<Vec<String>>(reply.clone()) {
        Ok(pairs) => persistence_from_pairs(&pairs),
        Err(e) => Persistence::Unknown(e.to_string()),
    }
}

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
