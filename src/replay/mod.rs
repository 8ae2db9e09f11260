//! The replay store: the set of consumed `jti` values that makes a token single use.
//!
//! Each entry expires when its token could no longer verify anyway (`exp` + leeway), so the store
//! holds no more than the tokens still alive. Both implementations record a use in one atomic step
//! (never read-then-write), so concurrent redemptions of one token cannot both succeed.

mod memory;
mod redis_store;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// How often the memory store drops expired entries.
pub fn memory_sweep_interval() -> std::time::Duration {
    memory::SWEEP_INTERVAL
}

use async_trait::async_trait;
use uuid::Uuid;

/// Result of trying to record one use of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// The use was recorded; this many remain.
    Accepted { uses_remaining: u32 },
    /// Every allowed use was already taken.
    AlreadyUsed,
}

/// The store could not answer. Callers must fail closed: no answer is never a "yes".
#[derive(Debug, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Atomically records one use of `jti` out of `allowed_uses`. The entry lives until
    /// `expires_at` (unix seconds), after which the token cannot verify anyway.
    async fn consume_once(
        &self,
        jti: Uuid,
        org: &str,
        allowed_uses: u32,
        expires_at: i64,
    ) -> Result<Consumed, StoreUnavailable>;

    /// How many uses of `jti` have been recorded (at most `allowed_uses`), without recording one.
    async fn uses_recorded(&self, jti: Uuid, allowed_uses: u32) -> Result<u32, StoreUnavailable>;

    /// Whether the store answers; drives `/readyz`.
    async fn ping(&self) -> Result<(), StoreUnavailable>;

    /// Short name for logs and health output.
    fn backend(&self) -> &'static str;
}
