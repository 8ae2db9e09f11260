//! Redis replay store, shared by a fleet of issuers and gateways.
//!
//! A single-use token is consumed with `SET <prefix>:<jti> <org> NX EXAT <expires_at>`: one
//! atomic command on one key, so it works on a standalone Redis and on Redis Cluster alike. A
//! multi-use token counts its uses with a small Lua script (INCR + EXPIREAT on one key).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use super::{Consumed, ReplayStore, StoreUnavailable};
use crate::settings::RedisSettings;

/// Records one use of a multi-use token; returns the uses left, or -1 when none were left.
const CONSUME_COUNTED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
local allowed = tonumber(ARGV[1])
if n > allowed then return -1 end
return allowed - n
";

pub struct RedisStore {
    conn: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    consume_counted: redis::Script,
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
            consume_counted: redis::Script::new(CONSUME_COUNTED),
        })
    }

    fn key(&self, jti: Uuid) -> String {
        format!("{}:{}", self.key_prefix, jti.as_hyphenated())
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
    async fn consume_once(
        &self,
        jti: Uuid,
        org: &str,
        allowed_uses: u32,
        expires_at: i64,
    ) -> Result<Consumed, StoreUnavailable> {
        let key = self.key(jti);
        let mut conn = self.conn.clone();
        if allowed_uses <= 1 {
            let set: Option<String> = self
                .bounded(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(org)
                        .arg("NX")
                        .arg("EXAT")
                        .arg(expires_at)
                        .query_async(&mut conn),
                )
                .await?;
            return Ok(match set {
                Some(_) => Consumed::Accepted { uses_remaining: 0 },
                None => Consumed::AlreadyUsed,
            });
        }
        let left: i64 = self
            .bounded(
                self.consume_counted
                    .key(&key)
                    .arg(allowed_uses)
                    .arg(expires_at)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(match u32::try_from(left) {
            Ok(uses_remaining) => Consumed::Accepted { uses_remaining },
            Err(_) => Consumed::AlreadyUsed,
        })
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

    async fn ping(&self) -> Result<(), StoreUnavailable> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(drop)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
