//! Redis store, shared by a fleet of issuers and gateways, on one Redis or a Redis Cluster.
//!
//! Key layout: everything of one org shares the hash tag `{<org>}`, so every operation that
//! touches several keys (a use and its credit charge) stays in one cluster slot:
//! - `<prefix>:{<org>}:use:<jti>` — a hash of the attempts that used the token (one field per
//!   accepted use), so an attempt can take back exactly its own use;
//! - `<prefix>:{<org>}:redeemed`, `<prefix>:{<org>}:minted` — the org's counters;
//! - `<prefix>:{<org>}:rate:<bucket>` — a fleet-wide quota bucket (`quota.rs`);
//! - `<prefix>:{<org>}:revoked:<jti>` — a revoked token; `<prefix>:{<org>}:revoked-before` — the
//!   org's revocation threshold (tokens with `iat` at or before it are revoked). Both in the use
//!   entry's slot, so the consume script checks them in the same atomic step;
//! - `<prefix>:{<org>}:session:<id>` — a session record (deadline, the connection holding it,
//!   the end of its reconnect grace, …), `<id>` being the `jti` of a single-use token; and
//!   `<prefix>:{<org>}:sessions` — the org's held sessions by when they stop mattering, for the
//!   listing. In the use entry's slot, so a use and its session are recorded in one step;
//! - `<prefix>:revocations` — a stream of every revocation, which each process follows to close
//!   the live sessions they cover (the one key outside any org's slot).
//!
//! The price of the tag: one org's traffic lands on one cluster master. Orgs spread over the
//! cluster; a single org is as fast as one master.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::{ErrorKind, FromRedisValue, ServerErrorKind, Value};
use uuid::Uuid;

use super::health::Health;
use super::redis_connection::{RedisConnection, RedisConnector};
use super::{
    Consumed, Covers, FleetQuota, QuotaTaken, ReplayStore, Revocation, RevocationFeed, RevokeEntry,
    SessionRecord, SessionRef, SharedStore, StoreUnavailable, Usage, UsageStore, UseOf,
    MAX_LISTED_SESSIONS, SESSION_LEASE,
};
use crate::settings::{RateQuota, RedisSettings};

/// Records one use of a token, charging a credit in the same step when the org has a limit,
/// and with a session (KEYS 5-6, ARGV 7-13) records it too, or re-opens it within its grace.
/// KEYS: use entry, redeemed counter, the token's revocation entry, the org's revocation
/// threshold[, session record, the org's session index, this instance's lease]. ARGV: allowed
/// uses, expiry (unix s), attempt marker, credit limit (-1 = none), seconds the entry must
/// outlive Redis's own clock at least, the token's `iat`[, mode (1 open or re-open, 2 re-open
/// only), token type, the new session's deadline (unix ms), grace (s), held (1/0), instance,
/// the record's id in the index, the org's lease key prefix (up to the instance), lease (ms),
/// how long a lease key is kept (ms)].
/// A held session is refused to a second connection only while the lease of the process
/// holding it (`RENEW_LEASE`) runs: a process killed outright leaves its sessions re-openable
/// from when its lease ran out.
/// Returns the uses left, -1 when none were left, -2 when the org has no credit left, -3 when
/// the token is revoked, -4 when its session is open on another connection, or
/// {-5, opened at, deadline} when its session was re-opened.
/// A held session's index score is when the entry stops mattering: its deadline while a
/// connection holds it, the end of its grace once dropped (`SESSION_ENDED`).
const CONSUME: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return -3 end
local before = redis.call('GET', KEYS[4])
if before and tonumber(ARGV[6]) <= tonumber(before) then return -3 end
local mode = tonumber(ARGV[7] or '0')
local allowed = tonumber(ARGV[1])
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function index(score)
  redis.call('ZADD', KEYS[6], score, ARGV[13])
  local keep = score + tonumber(ARGV[5]) * 1000
  if redis.call('PEXPIRETIME', KEYS[6]) < keep then redis.call('PEXPIREAT', KEYS[6], keep) end
end
local function hold(now)
  redis.call('SET', KEYS[7], now + tonumber(ARGV[15]), 'PX', tonumber(ARGV[16]))
end
local function resume()
  local grace = tonumber(ARGV[10])
  if allowed ~= 1 or grace <= 0 then return -1 end
  local s = redis.call('HMGET', KEYS[5], 'o', 'e', 'c', 'u', 'i')
  if not s[1] then return -1 end
  local now, deadline = now_ms(), tonumber(s[2])
  local resumable = tonumber(s[4])
  if s[3] ~= '' then
    -- Held: refused while its process lives; a process that died dropped it when its lease ran out.
    local alive = tonumber(redis.call('GET', ARGV[14] .. s[5]) or s[1])
    if alive >= now then return -4 end
    resumable = math.min(alive + grace * 1000, deadline)
  end
  if now > resumable or now >= deadline then return -1 end
  if ARGV[11] == '1' then
    redis.call('HSET', KEYS[5], 'c', ARGV[3], 'h', '1', 'i', ARGV[12])
    hold(now)
    index(deadline)
  else
    local resumable = math.min(now + grace * 1000, deadline)
    redis.call('HSET', KEYS[5], 'u', resumable)
    redis.call('ZADD', KEYS[6], 'XX', resumable, ARGV[13])
  end
  return {-5, tonumber(s[1]), deadline}
end
if mode == 2 then return resume() end
local used = redis.call('HLEN', KEYS[1])
if used >= allowed then
  if mode == 1 then return resume() end
  return -1
end
local limit = tonumber(ARGV[4])
if limit >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= limit then return -2 end
redis.call('HSET', KEYS[1], ARGV[3], 1)
if used == 0 then
  local floor = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[5])
  redis.call('EXPIREAT', KEYS[1], math.max(tonumber(ARGV[2]), floor))
end
redis.call('INCR', KEYS[2])
if mode == 1 then
  local now, deadline = now_ms(), tonumber(ARGV[9])
  local held = ARGV[11] == '1'
  local connection, resumable = '', math.min(now + tonumber(ARGV[10]) * 1000, deadline)
  if held then connection = ARGV[3] end
  redis.call('HSET', KEYS[5], 't', ARGV[8], 'o', now, 'e', deadline, 'c', connection,
    'h', ARGV[11], 'i', ARGV[12], 'u', resumable, 'g', ARGV[10])
  redis.call('PEXPIREAT', KEYS[5], deadline + tonumber(ARGV[5]) * 1000)
  if held then
    redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
    hold(now)
    index(deadline)
  end
end
return allowed - used - 1
";

/// A held session's connection dropped. KEYS: session record, the org's session index. ARGV:
/// the connection's attempt marker, grace (s), the record's id in the index. Without a grace
/// the session is gone; with one it may be re-opened until the grace or its deadline ends.
/// Nothing happens when another connection holds it now. Returns 1 if it was that connection's.
const SESSION_ENDED: &str = r"
if redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then return 0 end
local grace = tonumber(ARGV[2])
if grace <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local resumable = math.min(now + grace * 1000, tonumber(redis.call('HGET', KEYS[1], 'e')))
redis.call('HSET', KEYS[1], 'c', '', 'u', resumable)
redis.call('ZADD', KEYS[2], 'XX', resumable, ARGV[3])
return 1
";

/// An org's held sessions that still matter, oldest deadline first. KEYS: the org's session
/// index. ARGV: the session record key's prefix (up to the id), most to return, the org's lease
/// key prefix. Drops what has run out, including sessions of a dead process past their grace.
/// Returns {id, token type, opened at, deadline, connected (1/0), instance, …}.
const LIST_SESSIONS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local s = redis.call('HMGET', ARGV[1] .. id, 't', 'o', 'e', 'c', 'i', 'g')
  local listed = s[1] ~= false
  local connected = listed and s[4] ~= ''
  if connected then
    local alive = tonumber(redis.call('GET', ARGV[3] .. s[5]) or s[2])
    if alive < now then
      connected = false
      listed = now <= math.min(alive + tonumber(s[6] or '0') * 1000, tonumber(s[3]))
    end
  end
  if listed then
    table.insert(out, id)
    table.insert(out, s[1])
    table.insert(out, s[2])
    table.insert(out, s[3])
    table.insert(out, connected and '1' or '0')
    table.insert(out, s[5])
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Keeps a process's lease on an org's held sessions. KEYS: the lease. ARGV: lease (ms), how long
/// the key is kept (ms). The value is when the lease runs out, on Redis's clock.
const RENEW_LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now + tonumber(ARGV[1]), 'PX', tonumber(ARGV[2]))
return 1
";

/// Takes back one attempt's use and its count (or credit). KEYS: use entry, redeemed counter.
/// ARGV: attempt marker. Returns 1 if the attempt had a use to take back.
const RELEASE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECR', KEYS[2])
  return 1
end
return 0
";

/// Records a revocation entry, never shortening one already there. KEYS: the entry. ARGV: value
/// (the `iat` threshold, or 1 for a token), expiry (unix s), seconds the entry must outlive
/// Redis's own clock at least. A lower threshold than the one held changes nothing.
const REVOKE: &str = r"
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
local value = tonumber(ARGV[1])
if value < held then return 0 end
local now = tonumber(redis.call('TIME')[1])
local expiry = math.max(tonumber(ARGV[2]), now + tonumber(ARGV[3]))
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then expiry = math.max(expiry, now + ttl) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], expiry)
return 1
";

/// How long the revocation stream keeps an entry: as long as a session it covers may run
/// (`max_session_duration_seconds` is at most a day), so a process cut off from Redis for up to
/// that long still closes what it must when it catches up.
const FEED_RETENTION_MS: i64 = 86_400 * 1000;

/// Most revocations one follower poll reads; the rest come on the next poll.
const FEED_BATCH: usize = 1000;

/// GCRA on Redis's clock: one key holds the bucket's theoretical arrival time (µs).
/// ARGV: emission interval (µs), burst. Returns {allowed, remaining, retry after (µs)}.
const TAKE_QUOTA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local next_tat = tat + interval
if next_tat - now > capacity then
  return {0, 0, next_tat - now - capacity}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, math.floor((capacity - (next_tat - now)) / interval), 0}
";

/// How often minted counts summed in the process are added to Redis.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a lease key stays after its last renewal: as long as a session it covers could run
/// (a day), so a dead process's sessions are judged by when its lease ran out.
const LEASE_KEPT: Duration = Duration::from_secs(86_400 + 60);

/// How long a background release after a timeout may wait for Redis.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

pub struct RedisStore {
    /// Background work (minted-count flusher, revocation feed, health) and calls from threads
    /// without a current-thread runtime run here (see `IoRuntime`).
    io: IoRuntime,
    /// The I/O runtime's connection.
    conn: RedisConnection,
    /// Each current-thread runtime calling the store (an HTTP worker) has its own connection,
    /// driven there: a call then runs on the caller's thread with no hop to the I/O runtime and
    /// back. See `here`.
    per_thread: thread_local::ThreadLocal<RefCell<Option<(tokio::runtime::Id, RedisConnection)>>>,
    connector: RedisConnector,
    /// The revocation follower's own connection: its steady polling, and its errors while a
    /// node is down, stay off the connection redemptions use (sharing it, redemptions resumed
    /// too late after a cluster master was killed).
    feed_conn: RedisConnection,
    keys: KeyLayout,
    timeout: Duration,
    require_persistence: bool,
    replica_acks: u32,
    /// Minted tokens not yet added to Redis, per org: minting never waits for Redis.
    minted: Arc<PendingMints>,
    scripts: Scripts,
}

struct Scripts {
    consume: Lua,
    release: Lua,
    take_quota: Lua,
    revoke: Lua,
    session_ended: Lua,
    list_sessions: Lua,
    renew_lease: Lua,
}

impl RedisStore {
    /// Prepares a connection without opening it, so the service starts (and keeps minting) while
    /// Redis is down; the connection opens on first use and reopens by itself after a failure.
    pub fn connect_lazily(settings: &RedisSettings) -> anyhow::Result<Self> {
        let io = IoRuntime::start()?;
        let connector = RedisConnector::new(settings)?;
        let (conn, feed_conn) = {
            let _inside = io.handle().enter();
            (connector.open_lazily()?, connector.open_lazily()?)
        };
        let store = RedisStore {
            conn,
            feed_conn,
            io,
            per_thread: thread_local::ThreadLocal::new(),
            connector,
            keys: KeyLayout(settings.key_prefix.clone()),
            timeout: settings.timeout,
            require_persistence: settings.require_persistence,
            replica_acks: settings.replica_acks,
            minted: Arc::new(PendingMints::default()),
            scripts: Scripts {
                consume: Lua::new(CONSUME),
                release: Lua::new(RELEASE),
                take_quota: Lua::new(TAKE_QUOTA),
                revoke: Lua::new(REVOKE),
                session_ended: Lua::new(SESSION_ENDED),
                list_sessions: Lua::new(LIST_SESSIONS),
                renew_lease: Lua::new(RENEW_LEASE),
            },
        };
        store.spawn_minted_flusher();
        Ok(store)
    }

    /// What Redis says about its persistence (`CONFIG GET appendonly` / `appendfsync`), asked of
    /// the node that holds `key`.
    async fn persistence(&self, key: &str) -> Result<Persistence, StoreUnavailable> {
        let mut pipe = on_node_of(key);
        pipe.cmd("CONFIG").arg("GET").arg("append*");
        let reply = self
            .call(|mut conn| async move { pipe.query_async::<(Vec<String>,)>(&mut conn).await })
            .await
            .map_err(|_| StoreUnavailable("no answer from Redis to CONFIG GET".into()))?;
        match reply {
            Ok((pairs,)) => Ok(persistence_from_pairs(&pairs)),
            // Managed Redis often refuses CONFIG; that is an answer, not an outage.
            Err(e) if e.kind() == ErrorKind::Io => Err(StoreUnavailable(e.to_string())),
            Err(e) => Ok(Persistence::Unknown(e.to_string())),
        }
    }

    /// Strict mode's condition: the node holding `key` persists every write before answering.
    async fn require_every_write(&self, key: &str) -> Result<(), StoreUnavailable> {
        match self.persistence(key).await? {
            Persistence::EveryWrite => Ok(()),
            other => Err(not_persistent(&other)),
        }
    }

    /// Logs, once at start-up, what a Redis restart would do to single use, and how far Redis's
    /// clock is from ours.
    pub async fn warn_at_start_up(&self, leeway_seconds: u64) {
        let probe = self.keys.use_entry("probe", Uuid::nil());
        match self.persistence(&probe).await {
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
        let health = self.health().await;
        if let Some(skew) = health.clock_skew_seconds {
            super::health::log_clock_skew(skew, leeway_seconds);
        }
    }

    /// Takes back the use `marker` recorded, and its count or credit. If Redis does not answer,
    /// the release is queued behind whatever is in flight (best effort, as after a timeout) and
    /// the failure is returned.
    async fn take_back(
        &self,
        entry: &str,
        redeemed: &str,
        marker: &str,
    ) -> Result<(), StoreUnavailable> {
        let released = self
            .query::<i64>(self.release_command(entry, redeemed, marker))
            .await
            .map(drop);
        if released.is_err() {
            self.release_after_timeout(entry, redeemed, marker);
        }
        released
    }

    /// The release script by text: it may run long after it was sent, on a node that never
    /// loaded it.
    fn release_command(&self, entry: &str, redeemed: &str, marker: &str) -> redis::Cmd {
        let mut release = self.scripts.release.call(false, &[entry, redeemed]);
        release.arg(marker);
        release
    }

    /// After a timeout the write may still be queued (a paused Redis runs it later). Queue a
    /// release behind it on the same ordered connection, so a use refused with 503 is not spent
    /// after all, and neither is its credit. Best effort: if the connection itself is lost, the
    /// write either ran before the loss or never will.
    fn release_after_timeout(&self, entry: &str, redeemed: &str, marker: &str) {
        self.queue_behind(self.release_command(entry, redeemed, marker));
    }

    /// Ends, behind whatever is in flight, the held session a failed attempt may have recorded
    /// or re-opened (best effort, as `release_after_timeout`): a retry must not find it "open".
    /// Without a grace the record goes; with one, the session is left to re-open.
    fn end_session_after_failure(
        &self,
        (record, index, id): (&str, &str, &str),
        marker: &str,
        grace_seconds: u32,
    ) {
        let mut ended = self.scripts.session_ended.call(false, &[record, index]);
        ended.arg(marker).arg(grace_seconds).arg(id);
        self.queue_behind(ended);
    }

    /// Sends `cmd` in the background on the connection this thread's calls use (`here`), so it
    /// queues behind what this thread's timed-out call sent.
    fn queue_behind(&self, cmd: redis::Cmd) {
        let send = |mut conn: RedisConnection| async move {
            let _ = tokio::time::timeout(RELEASE_DEADLINE, cmd.query_async::<i64>(&mut conn)).await;
        };
        match self.here() {
            Some(conn) => drop(tokio::spawn(send(conn))),
            None => drop(self.io.handle().spawn(send(self.conn.clone()))),
        }
    }

    /// This thread's own connection when it runs a current-thread runtime (an HTTP worker,
    /// the main thread), opened lazily on that runtime so its driver runs beside the calls. A
    /// connection is kept per runtime, not only per thread: one opened by a runtime since
    /// dropped (a stopped worker, a thread reused) has no driver left. `None` elsewhere (a
    /// multi-thread runtime, no runtime): such calls go through the I/O runtime.
    fn here(&self) -> Option<RedisConnection> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let id = runtime.id();
        let mut slot = self.per_thread.get_or_default().borrow_mut();
        match &*slot {
            Some((opened_by, conn)) if *opened_by == id => Some(conn.clone()),
            _ => {
                // Cannot fail in practice (the client was built at start-up); if it did, every
                // call on this thread would go through the I/O runtime alike.
                let conn = self.connector.open_lazily().ok()?;
                *slot = Some((id, conn.clone()));
                Some(conn)
            }
        }
    }

    /// `call` on this thread's connection (`here`), else on the I/O runtime's (`run`), bounded
    /// by the store timeout either way.
    async fn call<T, F>(
        &self,
        call: impl FnOnce(RedisConnection) -> F,
    ) -> Result<T, StoreUnavailable>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        match self.here() {
            Some(conn) => tokio::time::timeout(self.timeout, call(conn))
                .await
                .map_err(|_| self.no_answer()),
            None => self.run(call(self.conn.clone())).await,
        }
    }

    fn no_answer(&self) -> StoreUnavailable {
        StoreUnavailable(format!(
            "no answer from Redis within {} ms",
            self.timeout.as_millis()
        ))
    }

    /// `call` on the I/O runtime, bounded by the configured timeout whatever the connection is
    /// doing: a paused or unreachable Redis turns into a quick 503, never a pile of waiting
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
                Err(self.no_answer())
            }
        }
    }

    /// One command on this thread's connection (`call`), bounded by the store timeout.
    async fn query<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        self.call(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await?
            .map_err(|e| StoreUnavailable(e.to_string()))
    }

    /// One command on `conn`, on the I/O runtime.
    async fn query_on<T: FromRedisValue + Send + 'static>(
        &self,
        conn: &RedisConnection,
        cmd: redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = conn.clone();
        self.run(async move { cmd.query_async(&mut conn).await })
            .await?
            .map_err(|e| StoreUnavailable(e.to_string()))
    }

    /// A pipeline, bounded by the store timeout, retried once with the scripts' text when the
    /// node does not know them yet (a restarted Redis, a new master after a failover).
    async fn pipeline(
        &self,
        build: impl Fn(bool) -> redis::Pipeline,
    ) -> Result<Vec<Value>, StoreUnavailable> {
        for by_hash in [true, false] {
            let pipe = build(by_hash);
            match self
                .call(|mut conn| async move { pipe.query_async::<Vec<Value>>(&mut conn).await })
                .await?
            {
                Ok(replies) => return Ok(replies),
                Err(e) if by_hash && e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {}
                Err(e) => return Err(StoreUnavailable(e.to_string())),
            }
        }
        Err(StoreUnavailable("Redis refused the script".into()))
    }

    /// Adds the minted counts summed in this process to Redis, once a second.
    fn spawn_minted_flusher(&self) {
        let (conn, minted, keys) = (self.conn.clone(), self.minted.clone(), self.keys.clone());
        let timeout = self.timeout;
        self.io.handle().spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                flush_minted(&conn, &minted, &keys, timeout).await;
            }
        });
    }
}

/// Minted tokens not yet added to Redis, per org.
#[derive(Default)]
struct PendingMints {
    counts: DashMap<String, u64>,
    /// Held by a flush while a count moves to Redis, and by a reader of Redis + pending, so a
    /// reader never sees a count in both places or in neither.
    moving: tokio::sync::RwLock<()>,
}

/// Adds each org's pending minted count to Redis, then takes it off the pending count. A count
/// Redis did not take stays for the next round, so nothing is lost while Redis is away.
async fn flush_minted(
    conn: &super::redis_connection::RedisConnection,
    pending_mints: &PendingMints,
    keys: &KeyLayout,
    timeout: Duration,
) {
    let _moving = pending_mints.moving.write().await;
    let minted = &pending_mints.counts;
    let pending: Vec<(String, u64)> = minted
        .iter()
        .filter(|entry| *entry.value() > 0)
        .map(|entry| (entry.key().clone(), *entry.value()))
        .collect();
    for (org, count) in pending {
        let mut incr = redis::cmd("INCRBY");
        incr.arg(keys.counter(&org, "minted")).arg(count);
        let mut conn = conn.clone();
        let added = tokio::time::timeout(timeout, incr.query_async::<i64>(&mut conn)).await;
        if matches!(added, Ok(Ok(_))) {
            // Mints counted meanwhile stay pending; an org with none left leaves no entry.
            minted.remove_if_mut(&org, |_, left| {
                *left -= count;
                *left == 0
            });
        }
    }
}

/// A pipeline the cluster client sends to the node holding `key`, for keyless commands that must
/// be answered by that node (`CONFIG GET`, `WAIT`): the client routes a pipeline by its first
/// keyed command, so a single-key `HLEN`, whose reply is dropped, leads.
fn on_node_of(key: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("HLEN").arg(key).ignore();
    pipe
}

/// Where each piece of state lives; see the module comment.
#[derive(Debug, Clone)]
struct KeyLayout(String);

impl KeyLayout {
    fn use_entry(&self, org: &str, jti: Uuid) -> String {
        format!("{}:{{{org}}}:use:{}", self.0, jti.as_hyphenated())
    }

    fn counter(&self, org: &str, name: &str) -> String {
        format!("{}:{{{org}}}:{name}", self.0)
    }

    fn quota(&self, org: &str, bucket: &str) -> String {
        format!("{}:{{{org}}}:rate:{bucket}", self.0)
    }

    fn revoked(&self, org: &str, jti: Uuid) -> String {
        format!("{}:{{{org}}}:revoked:{}", self.0, jti.as_hyphenated())
    }

    fn revoked_before(&self, org: &str) -> String {
        self.counter(org, "revoked-before")
    }

    fn revocations(&self) -> String {
        format!("{}:revocations", self.0)
    }

    /// Where the org's session records start; a record is this followed by its id.
    fn session_prefix(&self, org: &str) -> String {
        format!("{}:{{{org}}}:session:", self.0)
    }

    fn session_record(&self, org: &str, id: &str) -> String {
        format!("{}{id}", self.session_prefix(org))
    }

    fn session_index(&self, org: &str) -> String {
        self.counter(org, "sessions")
    }

    /// Where the org's process leases start; a lease is this followed by the instance name.
    fn lease_prefix(&self, org: &str) -> String {
        format!("{}:{{{org}}}:instance:", self.0)
    }

    fn lease(&self, org: &str, instance: &str) -> String {
        format!("{}{instance}", self.lease_prefix(org))
    }
}

/// The keys (and ids) the consume script needs for a redemption's session.
struct SessionKeys {
    /// The record's id in the org's index (`session_record_id`).
    id: String,
    record: String,
    index: String,
    /// The org's lease keys start here; the script reads other processes' leases by it.
    lease_prefix: String,
    /// This process's lease on the org.
    lease: String,
}

impl SessionKeys {
    fn of(keys: &KeyLayout, use_of: &UseOf<'_>, session: &super::SessionOf<'_>) -> Self {
        let id = super::session_record_id(use_of.jti, use_of.attempt, use_of.allowed_uses == 1);
        SessionKeys {
            record: keys.session_record(use_of.org, &id),
            index: keys.session_index(use_of.org),
            lease_prefix: keys.lease_prefix(use_of.org),
            lease: keys.lease(use_of.org, session.instance),
            id,
        }
    }
}

/// A Lua script, sent by hash and, when a node does not know it yet, by text.
struct Lua {
    text: &'static str,
    hash: String,
}

impl Lua {
    fn new(text: &'static str) -> Self {
        Lua {
            text,
            hash: redis::Script::new(text).get_hash().to_owned(),
        }
    }

    /// `EVALSHA` (or `EVAL` with the text, which also loads it on the node) over `keys`.
    fn call(&self, by_hash: bool, keys: &[&str]) -> redis::Cmd {
        let mut cmd = if by_hash {
            redis::cmd("EVALSHA")
        } else {
            redis::cmd("EVAL")
        };
        cmd.arg(if by_hash {
            self.hash.as_str()
        } else {
            self.text
        })
        .arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        cmd
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn consume_once(&self, use_of: UseOf<'_>) -> Result<Consumed, StoreUnavailable> {
        let entry = self.keys.use_entry(use_of.org, use_of.jti);
        let redeemed = self.keys.counter(use_of.org, "redeemed");
        let revoked = self.keys.revoked(use_of.org, use_of.jti);
        let revoked_before = self.keys.revoked_before(use_of.org);
        // Each accepted use is a field named by its attempt, so a failed attempt takes back
        // exactly its own use (see `release_after_timeout`).
        let marker = use_of.attempt.simple().to_string();
        if self.require_persistence {
            // Refuse before spending anything (a use, a credit) when Redis cannot confirm it
            // persists every write, CONFIG refused included. The check rides in the write's
            // pipeline again below, for a Redis restarted in between.
            self.require_every_write(&entry).await?;
        }
        let credit_limit = use_of
            .credit_limit
            .map_or(-1, |limit| limit.min(i64::MAX as u64) as i64);
        // One round trip to the node holding the entry: [the persistence check,] the use. The
        // check concerns the very node that records the use: a Redis restarted without
        // persistence cannot slip in between. (`WAIT` for replicas follows only an accepted use.)
        // Only a redemption with a session pays for its keys (a plain one stays as it was).
        let session = use_of
            .session
            .map(|session| (session, SessionKeys::of(&self.keys, &use_of, &session)));
        let build = |by_hash: bool| {
            let mut pipe = redis::pipe();
            if self.require_persistence {
                pipe.cmd("CONFIG").arg("GET").arg("append*");
            }
            let mut keys = vec![
                entry.as_str(),
                redeemed.as_str(),
                revoked.as_str(),
                revoked_before.as_str(),
            ];
            if let Some((_, session_keys)) = &session {
                keys.extend([
                    session_keys.record.as_str(),
                    session_keys.index.as_str(),
                    session_keys.lease.as_str(),
                ]);
            }
            let mut consume = self.scripts.consume.call(by_hash, &keys);
            consume
                .arg(use_of.allowed_uses)
                .arg(use_of.expires_at)
                .arg(&marker)
                .arg(credit_limit)
                .arg(use_of.outlive_seconds)
                .arg(use_of.issued_at);
            if let Some((session, session_keys)) = &session {
                consume
                    .arg(if session.resume_only { 2 } else { 1 })
                    .arg(session.token_type)
                    .arg(session.expires_at_ms)
                    .arg(session.grace_seconds)
                    .arg(u8::from(session.held))
                    .arg(session.instance)
                    .arg(&session_keys.id)
                    .arg(&session_keys.lease_prefix)
                    .arg(SESSION_LEASE.as_millis() as u64)
                    .arg(LEASE_KEPT.as_millis() as u64);
            }
            pipe.add_command(consume);
            pipe
        };
        // A held session this attempt may have recorded must not stay "open" when the attempt
        // fails: its connection never came to be.
        let abandon_session = || {
            if let Some((session, keys)) = session.as_ref().filter(|(session, _)| session.held) {
                let ended = (keys.record.as_str(), keys.index.as_str(), keys.id.as_str());
                self.end_session_after_failure(ended, &marker, session.grace_seconds);
            }
        };
        let replies = match self.pipeline(build).await {
            Ok(replies) => replies,
            Err(unavailable) => {
                self.release_after_timeout(&entry, &redeemed, &marker);
                abandon_session();
                return Err(unavailable);
            }
        };
        let mut replies = replies.iter();
        let persistence = match self.require_persistence {
            true => Some(
                replies
                    .next()
                    .map_or_else(|| Persistence::Unknown("no reply".into()), persistence_from),
            ),
            false => None,
        };
        let outcome = match replies.next() {
            Some(reply) => consumed(reply)?,
            None => {
                return Err(StoreUnavailable(
                    "unexpected pipeline reply from Redis".into(),
                ))
            }
        };
        if !matches!(outcome, Consumed::Accepted { .. }) {
            return Ok(outcome);
        }
        if let Some(persistence) = persistence.filter(|p| *p != Persistence::EveryWrite) {
            // Redis would not keep this use across a restart: take it back and refuse, so the
            // token can be redeemed once persistence is on.
            abandon_session();
            self.take_back(&entry, &redeemed, &marker).await?;
            return Err(not_persistent(&persistence));
        }
        if self.replica_acks > 0 {
            let acknowledged = self.replicas_holding(&entry).await.unwrap_or(0);
            if acknowledged < i64::from(self.replica_acks) {
                // A failover now could forget this use: take it back and let the client retry.
                abandon_session();
                let _ = self.take_back(&entry, &redeemed, &marker).await;
                return Err(StoreUnavailable(format!(
                    "{acknowledged} of the {} Redis replicas required \
                     (STREAMTOKEN_REDIS_REPLICA_ACKS) acknowledged the use in time",
                    self.replica_acks
                )));
            }
        }
        Ok(outcome)
    }

    async fn release(&self, use_of: UseOf<'_>) -> Result<(), StoreUnavailable> {
        let entry = self.keys.use_entry(use_of.org, use_of.jti);
        let redeemed = self.keys.counter(use_of.org, "redeemed");
        let marker = use_of.attempt.simple().to_string();
        self.take_back(&entry, &redeemed, &marker).await
    }

    async fn uses_recorded(
        &self,
        org: &str,
        jti: Uuid,
        allowed_uses: u32,
    ) -> Result<u32, StoreUnavailable> {
        let mut hlen = redis::cmd("HLEN");
        hlen.arg(self.keys.use_entry(org, jti));
        let used: u64 = self.query(hlen).await?;
        Ok(used.min(u64::from(allowed_uses)) as u32)
    }

    async fn revoke(&self, entry: RevokeEntry<'_>) -> Result<(), StoreUnavailable> {
        let revocation = entry.revocation;
        let (key, value, kind, named) = match revocation.covers {
            Covers::Token(jti) => (
                self.keys.revoked(&revocation.org, jti),
                1,
                "jti",
                jti.as_hyphenated().to_string(),
            ),
            Covers::IssuedAtOrBefore(iat) => (
                self.keys.revoked_before(&revocation.org),
                iat,
                "before",
                iat.to_string(),
            ),
        };
        // The entry first: once the answer says revoked, no redemption may succeed. The stream
        // (another slot) only tells the fleet to close what is already open.
        let build = |by_hash: bool| {
            let mut record = self.scripts.revoke.call(by_hash, &[&key]);
            record
                .arg(value)
                .arg(entry.expires_at)
                .arg(entry.outlive_seconds);
            let mut pipe = redis::pipe();
            pipe.add_command(record);
            pipe
        };
        self.pipeline(build).await?;
        let oldest_kept = chrono::Utc::now().timestamp_millis() - FEED_RETENTION_MS;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.revocations())
            .arg("MINID")
            .arg("~")
            .arg(oldest_kept.max(0))
            .arg("*")
            .arg("org")
            .arg(&revocation.org)
            .arg(kind)
            .arg(named);
        self.query::<String>(xadd).await.map(drop)
    }

    async fn is_revoked(&self, org: &str, jti: Uuid, iat: i64) -> Result<bool, StoreUnavailable> {
        let mut mget = redis::cmd("MGET");
        mget.arg(self.keys.revoked(org, jti))
            .arg(self.keys.revoked_before(org));
        let (token, before): (Option<i64>, Option<i64>) = self.query(mget).await?;
        Ok(token.is_some() || before.is_some_and(|threshold| iat <= threshold))
    }

    async fn session_ended(&self, session: &SessionRef) -> Result<(), StoreUnavailable> {
        let id = session.record_id();
        let record = self.keys.session_record(&session.org, &id);
        let index = self.keys.session_index(&session.org);
        let marker = session.connection.simple().to_string();
        let build = |by_hash: bool| {
            let mut ended = self.scripts.session_ended.call(by_hash, &[&record, &index]);
            ended.arg(&marker).arg(session.grace_seconds).arg(&id);
            let mut pipe = redis::pipe();
            pipe.add_command(ended);
            pipe
        };
        self.pipeline(build).await.map(drop)
    }

    async fn keep_leases(&self, instance: &str, orgs: &[String]) -> Result<(), StoreUnavailable> {
        // One script per org (each on its org's slot), all in flight at once.
        let renewals = orgs.iter().map(|org| {
            let lease = self.keys.lease(org, instance);
            let build = move |by_hash: bool| {
                let mut renew = self.scripts.renew_lease.call(by_hash, &[&lease]);
                renew
                    .arg(SESSION_LEASE.as_millis() as u64)
                    .arg(LEASE_KEPT.as_millis() as u64);
                let mut pipe = redis::pipe();
                pipe.add_command(renew);
                pipe
            };
            async move { self.pipeline(build).await }
        });
        for renewed in futures_util::future::join_all(renewals).await {
            renewed?;
        }
        Ok(())
    }

    async fn sessions(&self, org: &str) -> Result<Vec<SessionRecord>, StoreUnavailable> {
        let index = self.keys.session_index(org);
        let prefix = self.keys.session_prefix(org);
        let build = |by_hash: bool| {
            let mut list = self.scripts.list_sessions.call(by_hash, &[&index]);
            list.arg(&prefix)
                .arg(MAX_LISTED_SESSIONS + 1)
                .arg(self.keys.lease_prefix(org));
            let mut pipe = redis::pipe();
            pipe.add_command(list);
            pipe
        };
        let replies = self.pipeline(build).await?;
        let fields: Vec<Option<String>> = match replies.first() {
            Some(reply) => redis::from_redis_value(reply.clone())
                .map_err(|e| StoreUnavailable(format!("unexpected session list: {e}")))?,
            None => return Err(StoreUnavailable("no session list from Redis".into())),
        };
        Ok(fields.chunks_exact(6).filter_map(session_record).collect())
    }
}

/// One listed session: id, token type, opened at, deadline, connected, instance. A record
/// this version cannot read is left out.
fn session_record(fields: &[Option<String>]) -> Option<SessionRecord> {
    let [Some(id), Some(token_type), Some(opened), Some(deadline), connection, instance] = fields
    else {
        return None;
    };
    Some(SessionRecord {
        session_id: Uuid::parse_str(id.get(..36)?).ok()?,
        token_type: token_type.clone(),
        opened_at_ms: opened.parse().ok()?,
        expires_at_ms: deadline.parse().ok()?,
        connected: connection.as_deref() == Some("1"),
        instance: instance.clone().unwrap_or_default(),
    })
}

#[async_trait]
impl RevocationFeed for RedisStore {
    async fn cursor_now(&self) -> Result<String, StoreUnavailable> {
        let mut newest = redis::cmd("XREVRANGE");
        newest
            .arg(self.keys.revocations())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.query_on(&self.feed_conn, newest).await?;
        Ok(entries
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    async fn revocations_after(
        &self,
        cursor: &str,
    ) -> Result<(Vec<Revocation>, String), StoreUnavailable> {
        let mut range = redis::cmd("XRANGE");
        range
            .arg(self.keys.revocations())
            .arg(format!("({cursor}"))
            .arg("+")
            .arg("COUNT")
            .arg(FEED_BATCH);
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.query_on(&self.feed_conn, range).await?;
        let mut cursor = cursor.to_owned();
        let mut revocations = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            cursor = id;
            // An entry this version cannot read (another version's) is skipped, not fatal.
            if let Some(revocation) = revocation_from(&fields) {
                revocations.push(revocation);
            }
        }
        Ok((revocations, cursor))
    }
}

/// Reads one stream entry: `org`, then `jti` or `before`.
fn revocation_from(fields: &[(String, String)]) -> Option<Revocation> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let org = field("org")?.to_owned();
    let covers = match (field("jti"), field("before")) {
        (Some(jti), None) => Covers::Token(Uuid::parse_str(jti).ok()?),
        (None, Some(iat)) => Covers::IssuedAtOrBefore(iat.parse().ok()?),
        _ => return None,
    };
    Some(Revocation { org, covers })
}

impl RedisStore {
    /// How many replicas hold every write so far on the connection to the node of `key` (Redis
    /// `WAIT`). Asked only after a use was recorded: a refusal wrote nothing and need not wait,
    /// and `WAIT` holds up this thread's connection to that node while it waits.
    async fn replicas_holding(&self, key: &str) -> Result<i64, StoreUnavailable> {
        let mut pipe = on_node_of(key);
        pipe.cmd("WAIT")
            .arg(self.replica_acks)
            .arg(self.wait_millis());
        let (acknowledged,): (i64,) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?
            .map_err(|e| StoreUnavailable(e.to_string()))?;
        Ok(acknowledged)
    }

    /// How long `WAIT` may block: within the store timeout, leaving time to take the use back.
    fn wait_millis(&self) -> u64 {
        (self.timeout.as_millis() as u64 * 3 / 4).max(1)
    }
}

#[async_trait]
impl UsageStore for RedisStore {
    fn record_minted(&self, org: &str) {
        *self.minted.counts.entry(org.to_owned()).or_insert(0) += 1;
    }

    async fn usage(&self, org: &str) -> Result<Usage, StoreUnavailable> {
        let mut mget = redis::cmd("MGET");
        mget.arg(self.keys.counter(org, "minted"))
            .arg(self.keys.counter(org, "redeemed"));
        // A flush stuck on an unresponsive Redis must not hold this past the store timeout.
        let _reading = tokio::time::timeout(self.timeout, self.minted.moving.read())
            .await
            .map_err(|_| {
                StoreUnavailable("minted counts are being flushed to a slow Redis".into())
            })?;
        let (minted, redeemed): (Option<u64>, Option<u64>) = self.query(mget).await?;
        let pending = self.minted.counts.get(org).map_or(0, |count| *count);
        Ok(Usage {
            minted: minted.unwrap_or(0) + pending,
            redeemed: redeemed.unwrap_or(0),
        })
    }

    async fn flush(&self) {
        let (conn, minted, keys, timeout) = (
            self.conn.clone(),
            self.minted.clone(),
            self.keys.clone(),
            self.timeout,
        );
        let flushed = self
            .run(async move { flush_minted(&conn, &minted, &keys, timeout).await })
            .await;
        let left: u64 = self.minted.counts.iter().map(|count| *count).sum();
        if flushed.is_err() || left > 0 {
            log::warn!("{left} minted token(s) not counted in Redis; /v1/usage will read low");
        }
    }
}

#[async_trait]
impl FleetQuota for RedisStore {
    async fn take(
        &self,
        org: &str,
        bucket: &str,
        quota: RateQuota,
    ) -> Result<QuotaTaken, StoreUnavailable> {
        let key = self.keys.quota(org, bucket);
        let interval_micros = (60_000_000 / u64::from(quota.per_minute.max(1))).max(1);
        let build = |by_hash: bool| {
            let mut take = self.scripts.take_quota.call(by_hash, &[&key]);
            take.arg(interval_micros).arg(quota.burst.max(1));
            let mut pipe = redis::pipe();
            pipe.add_command(take);
            pipe
        };
        let replies = self.pipeline(build).await?;
        let (allowed, remaining, retry_micros): (i64, i64, i64) = match replies.first() {
            Some(reply) => redis::from_redis_value(reply.clone())
                .map_err(|e| StoreUnavailable(format!("unexpected quota reply: {e}")))?,
            None => return Err(StoreUnavailable("no quota reply from Redis".into())),
        };
        Ok(QuotaTaken {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            retry_after: Duration::from_micros(retry_micros.max(0) as u64),
        })
    }
}

#[async_trait]
impl SharedStore for RedisStore {
    async fn health(&self) -> Health {
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        let require_persistence = self.require_persistence;
        let checked = self
            .run(async move {
                super::health::check_redis(&mut conn, timeout, require_persistence).await
            })
            .await;
        match checked {
            Ok(health) => health,
            Err(unavailable) => Health::failed(self.backend(), unavailable.0),
        }
    }

    fn backend(&self) -> &'static str {
        if self.conn.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn fleet_quota(self: Arc<Self>) -> Option<Arc<dyn FleetQuota>> {
        Some(self)
    }

    fn revocation_feed(self: Arc<Self>) -> Option<Arc<dyn RevocationFeed>> {
        Some(self)
    }
}

/// A runtime of the store's own for background Redis I/O, and for callers that have no runtime
/// of their own to drive a connection. A connection's driver task lives on whichever runtime
/// first opens (or reopens) it; one connection shared by the HTTP workers would die with the
/// worker that opened it when that worker stops during a graceful shutdown, failing the
/// redemptions other workers are still draining. Hence a worker's calls use its own connection
/// (`RedisStore::here`), which serves no other worker, and shared work runs here.
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

/// Reads `CONFIG GET append*` (name, value, name, value, …).
pub(super) fn persistence_from_pairs(pairs: &[String]) -> Persistence {
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

fn persistence_from(reply: &Value) -> Persistence {
    match redis::from_redis_value::<Vec<String>>(reply.clone()) {
        Ok(pairs) => persistence_from_pairs(&pairs),
        Err(e) => Persistence::Unknown(e.to_string()),
    }
}

pub(super) fn not_persistent(persistence: &Persistence) -> StoreUnavailable {
    StoreUnavailable(format!(
        "strict mode (STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE) needs Redis with appendonly yes and \
         appendfsync always; it reports {persistence:?}"
    ))
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

/// Reads what the consume script answered: uses left, -1 (none left), -2 (no credit) or -3
/// (revoked).
fn consumed(reply: &Value) -> Result<Consumed, StoreUnavailable> {
    match reply {
        Value::Int(-1) => Ok(Consumed::AlreadyUsed),
        Value::Int(-2) => Ok(Consumed::NoCredits),
        Value::Int(-3) => Ok(Consumed::Revoked),
        Value::Int(-4) => Ok(Consumed::SessionAlreadyOpen),
        Value::Array(items) => match items.as_slice() {
            [Value::Int(-5), Value::Int(opened_at_ms), Value::Int(expires_at_ms)] => {
                Ok(Consumed::Resumed {
                    opened_at_ms: *opened_at_ms,
                    expires_at_ms: *expires_at_ms,
                })
            }
            _ => Err(StoreUnavailable(format!(
                "unexpected consume reply {items:?}"
            ))),
        },
        Value::Int(left) => u32::try_from(*left)
            .map(|uses_remaining| Consumed::Accepted { uses_remaining })
            .map_err(|_| StoreUnavailable(format!("unexpected consume reply {left}"))),
        other => Err(StoreUnavailable(format!(
            "unexpected consume reply {other:?}"
        ))),
    }
}
