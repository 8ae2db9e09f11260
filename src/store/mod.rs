//! The shared-state layer: everything processes must agree on, behind traits with two backends —
//! memory (one process, the embedded default) and Redis (a fleet).
//!
//! - `ReplayStore`: consumed uses, the set of `jti` values that makes a token single use (and
//!   the credit charged with each use, in the same atomic step);
//! - `UsageStore`: each org's minted and redeemed counters;
//! - `FleetQuota`: minting quotas one bucket per org for the whole fleet (Redis only);
//! - `SharedStore`: all of them, plus health.
//!
//! A consumed entry expires when its token could no longer verify on any gateway whose clock is
//! within the leeway of ours (`exp` + 2 × leeway), so the store holds no more than the tokens
//! still alive. Both backends record a use in one atomic step
//! (never read-then-write), so concurrent redemptions of one token cannot both succeed.

mod health;
mod memory;
mod redis_connection;
mod redis_store;

pub use health::{Health, NodeCheck};
pub use memory::MemoryStore;
pub use redis_store::{Persistence, RedisStore};

/// Opens the store the settings ask for: Redis when a URL is set, else the memory store with
/// its sweeper. Needs a Tokio runtime.
pub fn open(
    settings: &crate::settings::Settings,
) -> anyhow::Result<std::sync::Arc<dyn SharedStore>> {
    Ok(match &settings.redis {
        Some(redis) => {
            let store = std::sync::Arc::new(RedisStore::connect_lazily(redis)?);
            let checking = store.clone();
            let leeway = settings.token.leeway_seconds;
            tokio::spawn(async move { checking.warn_at_start_up(leeway).await });
            store
        }
        None => {
            let memory = std::sync::Arc::new(MemoryStore::new());
            memory.spawn_sweeper(memory::SWEEP_INTERVAL);
            memory
        }
    })
}

use async_trait::async_trait;
use uuid::Uuid;

/// One redemption to record: a use of `jti`, charged to `org`.
#[derive(Debug, Clone, Copy)]
pub struct UseOf<'a> {
    /// Names this attempt, so exactly its use (and credit) can be taken back (`release`).
    pub attempt: Uuid,
    pub jti: Uuid,
    pub org: &'a str,
    pub allowed_uses: u32,
    /// Unix seconds after which the token cannot verify, so the entry may go.
    pub expires_at: i64,
    /// The org's credit allowance (total redemptions it may make); `None` = unlimited.
    pub credit_limit: Option<u64>,
    /// The entry outlives the store's own clock by at least this much, whatever `expires_at`
    /// says on ours (a store whose clock runs ahead must not drop it early).
    pub outlive_seconds: i64,
    /// The token's `iat`, checked against an org-wide revocation in the same atomic step.
    pub issued_at: i64,
    /// The session this use opens, recorded in the same atomic step; `None` for a grant that
    /// opens nothing re-openable (no grace, no connection held here).
    pub session: Option<SessionOf<'a>>,
}

/// A session record: what re-opening a dropped session, one live connection per session and
/// the listing need. Sessions are per org, like every other entry.
#[derive(Debug, Clone, Copy)]
pub struct SessionOf<'a> {
    pub token_type: &'a str,
    /// A new session's deadline (unix ms); a re-opened one keeps its own.
    pub expires_at_ms: i64,
    /// How long after its connection drops the session may be re-opened; 0 = never.
    pub grace_seconds: u32,
    /// Whether a gateway here holds the connection (the reference gateway, a proxy route, an
    /// embedded `open_session`): the session is listed, and refuses a second connection until
    /// `session_ended`. A grant over HTTP (redeem, forward-auth) holds nothing: its grace
    /// counts from the grant.
    pub held: bool,
    /// The process holding it, for the listing.
    pub instance: &'a str,
    /// The token's redemption window has passed: only re-open, never record a use.
    pub resume_only: bool,
}

/// Names one connection of one session, to end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub org: String,
    pub jti: Uuid,
    /// The attempt that opened (or re-opened) this connection.
    pub connection: Uuid,
    /// A token of several uses opens several sessions, told apart by their first attempt.
    pub single_use: bool,
    pub grace_seconds: u32,
}

impl SessionRef {
    /// The record's name within its org.
    pub fn record_id(&self) -> String {
        session_record_id(self.jti, self.connection, self.single_use)
    }
}

/// A single-use token's one session is named by its `jti`; a token of several uses names each
/// session by the `jti` and the attempt that opened it.
pub fn session_record_id(jti: Uuid, opening_attempt: Uuid, single_use: bool) -> String {
    if single_use {
        jti.as_hyphenated().to_string()
    } else {
        format!("{}.{}", jti.as_hyphenated(), opening_attempt.simple())
    }
}

/// One session as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub token_type: String,
    pub opened_at_ms: i64,
    pub expires_at_ms: i64,
    /// A connection holds it now; otherwise it is within its reconnect grace.
    pub connected: bool,
    pub instance: String,
}

/// Most sessions one listing returns.
pub const MAX_LISTED_SESSIONS: usize = 1000;

/// How long a process's lease on the sessions it holds lasts past its last renewal. A shared
/// store refuses a second connection to a held session only while the holder's lease runs, so
/// the sessions of a process killed outright become re-openable (within their grace) once it
/// runs out.
pub const SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(6);

/// How often a process renews its leases: a third of the lease, so two renewals may fail.
pub const SESSION_LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What one revocation covers, always within one org (the store locates entries by org).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub org: String,
    pub covers: Covers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covers {
    /// The token `jti`.
    Token(Uuid),
    /// Every token of the org whose `iat` is at or before this (unix seconds).
    IssuedAtOrBefore(i64),
}

impl Revocation {
    /// Whether a token of `org` with `jti` and `iat` is covered.
    pub fn covers(&self, org: &str, jti: Uuid, iat: i64) -> bool {
        self.org == org
            && match self.covers {
                Covers::Token(revoked) => revoked == jti,
                Covers::IssuedAtOrBefore(threshold) => iat <= threshold,
            }
    }
}

/// A revocation to record, and how long its entry must refuse redemptions.
#[derive(Debug, Clone, Copy)]
pub struct RevokeEntry<'a> {
    pub revocation: &'a Revocation,
    /// Unix seconds after which no token it covers can verify, so the entry may go.
    pub expires_at: i64,
    /// As `UseOf::outlive_seconds`.
    pub outlive_seconds: i64,
}

/// Result of trying to record one use of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// The use was recorded (and charged); this many remain.
    Accepted { uses_remaining: u32 },
    /// Every allowed use was already taken.
    AlreadyUsed,
    /// The token is revoked; nothing was recorded or charged.
    Revoked,
    /// The org has no credit left; the token was not consumed and nothing was charged.
    NoCredits,
    /// The token's session was re-opened within its grace; no use was recorded.
    Resumed {
        opened_at_ms: i64,
        expires_at_ms: i64,
    },
    /// The token's session is open on another connection; nothing changed.
    SessionAlreadyOpen,
}

/// An org's counters, shared by every process on the same store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub minted: u64,
    /// Successful redemptions; with a credit allowance, each one spent a credit.
    pub redeemed: u64,
}

/// The store could not answer. Callers must fail closed: no answer is never a "yes".
#[derive(Debug, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

/// Consumed uses: what makes a token single use across every process sharing the store.
#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Atomically records one use of the token and counts the redemption for its org. With a
    /// credit limit, a redemption that would exceed it records nothing and returns `NoCredits`.
    async fn consume_once(&self, use_of: UseOf<'_>) -> Result<Consumed, StoreUnavailable>;

    /// Takes back the use (and its credit) that `use_of.attempt` recorded, if it did: a
    /// two-phase redemption whose second phase failed. Nothing happens for another attempt.
    async fn release(&self, use_of: UseOf<'_>) -> Result<(), StoreUnavailable>;

    /// How many uses of `org`'s token `jti` have been recorded (at most `allowed_uses`), without
    /// recording one.
    async fn uses_recorded(
        &self,
        org: &str,
        jti: Uuid,
        allowed_uses: u32,
    ) -> Result<u32, StoreUnavailable>;

    /// Records a revocation: from now on `consume_once` refuses what it covers.
    async fn revoke(&self, entry: RevokeEntry<'_>) -> Result<(), StoreUnavailable>;

    /// Whether `org`'s token `jti` issued at `iat` is revoked (introspection).
    async fn is_revoked(&self, org: &str, jti: Uuid, iat: i64) -> Result<bool, StoreUnavailable>;

    /// The connection `session.connection` of a held session dropped: with a grace the session
    /// may be re-opened until it runs out (or the deadline comes), else it is gone. Nothing
    /// happens if another connection holds it now.
    async fn session_ended(&self, session: &SessionRef) -> Result<(), StoreUnavailable>;

    /// Renews this process's (`instance`) lease on the sessions it holds in each of `orgs` (see
    /// `SESSION_LEASE`). Nothing to do for a store only one process uses.
    async fn keep_leases(&self, _instance: &str, _orgs: &[String]) -> Result<(), StoreUnavailable> {
        Ok(())
    }

    /// `org`'s held sessions, connected or within their grace, oldest first; at most
    /// `MAX_LISTED_SESSIONS` + 1 (the one more tells the listing it was cut short).
    async fn sessions(&self, org: &str) -> Result<Vec<SessionRecord>, StoreUnavailable>;
}

/// Where the processes sharing a store learn of each other's revocations, to close the live
/// sessions they cover. The memory store has none: one process, told directly.
#[async_trait]
pub trait RevocationFeed: Send + Sync + 'static {
    /// Where a follower starting now begins: after the newest revocation recorded.
    async fn cursor_now(&self) -> Result<String, StoreUnavailable>;

    /// Revocations recorded after `cursor`, oldest first, and the cursor after them. A follower
    /// that could not read keeps its cursor and catches up on the next call.
    async fn revocations_after(
        &self,
        cursor: &str,
    ) -> Result<(Vec<Revocation>, String), StoreUnavailable>;
}

/// Each org's counters.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Counts a minted token. Never awaited by minting, which must not depend on the store: the
    /// Redis store sums counts in the process and adds them once a second.
    fn record_minted(&self, org: &str);

    async fn usage(&self, org: &str) -> Result<Usage, StoreUnavailable>;

    /// Writes out counts held in the process (at shutdown).
    async fn flush(&self) {}
}

/// One quota bucket shared by the fleet.
#[async_trait]
pub trait FleetQuota: Send + Sync + 'static {
    /// Takes one request from `org`'s bucket `bucket`, on the store's clock.
    async fn take(
        &self,
        org: &str,
        bucket: &str,
        quota: crate::settings::RateQuota,
    ) -> Result<QuotaTaken, StoreUnavailable>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaTaken {
    pub allowed: bool,
    /// Requests that may be made right now.
    pub remaining: u32,
    /// When refused, how long until one more request is allowed.
    pub retry_after: std::time::Duration,
}

/// One backend holding all shared state.
#[async_trait]
pub trait SharedStore: ReplayStore + UsageStore {
    /// Whether the store can serve redemptions, and its clock; drives `/readyz`.
    async fn health(&self) -> Health;

    /// Short name for logs and health output.
    fn backend(&self) -> &'static str;

    /// The fleet-wide quota buckets, when the store can keep them.
    fn fleet_quota(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn FleetQuota>> {
        None
    }

    /// The feed of revocations other processes record, when processes share the store.
    fn revocation_feed(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationFeed>> {
        None
    }
}
