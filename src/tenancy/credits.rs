//! The credit policy. An org whose keys carry a credit allowance spends one credit per
//! redemption, charged by the store in the same atomic step as the use (see `store`), so the
//! allowance holds across a fleet. Minting is refused once the allowance is spent; that check
//! is a courtesy only, since an unredeemed token costs nothing.

use crate::store::{StoreUnavailable, Usage, UsageStore};

/// Whether `org` may still mint. With no allowance (`None`) the store is not asked.
pub async fn may_mint(
    store: &dyn UsageStore,
    allowance: Option<u64>,
    org: &str,
) -> Result<bool, StoreUnavailable> {
    let Some(allowance) = allowance else {
        return Ok(true);
    };
    Ok(store.usage(org).await?.redeemed < allowance)
}

/// Credits left: `None` when the org has no allowance (unlimited).
pub fn remaining(allowance: Option<u64>, usage: &Usage) -> Option<u64> {
    allowance.map(|allowance| allowance.saturating_sub(usage.redeemed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, ReplayStore, UseOf};

    #[tokio::test]
    async fn minting_stops_when_the_allowance_is_spent_and_never_without_one() {
        let store = MemoryStore::new();
        assert!(may_mint(&store, Some(1), "acme").await.unwrap());
        store
            .consume_once(UseOf {
                attempt: uuid::Uuid::new_v4(),
                jti: uuid::Uuid::new_v4(),
                org: "acme",
                allowed_uses: 1,
                expires_at: chrono::Utc::now().timestamp() + 60,
                credit_limit: Some(1),
                outlive_seconds: 0,
                issued_at: 0,
                session: None,
            })
            .await
            .unwrap();
        assert!(!may_mint(&store, Some(1), "acme").await.unwrap());
        assert!(may_mint(&store, None, "acme").await.unwrap());
        let usage = store.usage("acme").await.unwrap();
        assert_eq!(remaining(Some(1), &usage), Some(0));
        assert_eq!(remaining(Some(5), &usage), Some(4));
        assert_eq!(remaining(None, &usage), None);
    }
}
