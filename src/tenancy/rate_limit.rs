//! Per-org rate limiting of the minting routes (GCRA token buckets).
//!
//! Every org has its own bucket with the default quota, so one org's traffic never slows
//! another's. An API key with its own `rate_per_minute` gets a bucket of its own with that quota.
//!
//! Scope `process` keeps the buckets here (governor). Scope `fleet` keeps them in the shared
//! store, on the store's clock, so N processes allow the quota once, not N times. When the store
//! does not answer within its timeout, minting goes on under this process's buckets: the quota
//! is degraded (a log line and `streamtoken_rate_limit_degraded_total` say so), never a 500.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};

use crate::metrics::Metrics;
use crate::settings::RateQuota;
use crate::store::FleetQuota;
use crate::tenancy::api_keys::ApiKeyRecord;
use crate::tenancy::org::Org;

type Bucket = Gcra<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// What the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Requests allowed per minute.
    pub limit: u32,
    /// Requests that may be made right now.
    pub remaining: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed(QuotaState),
    Limited {
        limit: u32,
        /// Whole seconds until one more request is allowed (at least 1).
        retry_after_seconds: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketId {
    Org(Org),
    Key(String),
}

impl BucketId {
    /// The bucket's name within its org in the shared store.
    fn fleet_name(&self) -> String {
        match self {
            BucketId::Org(_) => "org".to_owned(),
            BucketId::Key(id) => format!("key:{id}"),
        }
    }
}

pub struct RateLimiter {
    default: RateQuota,
    buckets: DashMap<BucketId, (RateQuota, Arc<Bucket>)>,
    clock: DefaultClock,
    fleet: Option<Fleet>,
}

/// The shared buckets, and whether the last attempt to reach them failed.
struct Fleet {
    quota: Arc<dyn FleetQuota>,
    metrics: Arc<Metrics>,
    degraded: AtomicBool,
}

impl RateLimiter {
    /// Buckets in this process only.
    pub fn new(default: RateQuota) -> Self {
        RateLimiter {
            default,
            buckets: DashMap::new(),
            clock: DefaultClock::default(),
            fleet: None,
        }
    }

    /// Buckets shared by the fleet in `quota`, with this process's as the fallback.
    pub fn fleet_wide(
        default: RateQuota,
        quota: Arc<dyn FleetQuota>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RateLimiter {
            fleet: Some(Fleet {
                quota,
                metrics,
                degraded: AtomicBool::new(false),
            }),
            ..Self::new(default)
        }
    }

    /// Takes one request from the caller's bucket.
    pub async fn check(&self, key: &ApiKeyRecord) -> RateDecision {
        let (id, quota) = match key.rate_per_minute {
            Some(per_minute) => (
                BucketId::Key(key.id.clone()),
                RateQuota::per_minute(per_minute),
            ),
            None => (BucketId::Org(key.org.clone()), self.default),
        };
        if let Some(fleet) = &self.fleet {
            match fleet
                .quota
                .take(key.org.as_str(), &id.fleet_name(), quota)
                .await
            {
                Ok(taken) => {
                    if fleet.degraded.swap(false, Ordering::Relaxed) {
                        log::info!("fleet-wide rate limit restored: the store answers again");
                    }
                    return fleet_decision(quota, taken);
                }
                Err(cause) => {
                    fleet.metrics.rate_limit_degraded();
                    if !fleet.degraded.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "fleet-wide rate limit degraded to this process's buckets: {cause}"
                        );
                    }
                }
            }
        }
        self.check_here(id, quota)
    }

    /// Takes one request from this process's bucket.
    fn check_here(&self, id: BucketId, quota: RateQuota) -> RateDecision {
        // Checked under the map's read guard: cloning the bucket's `Arc` had every worker write
        // its reference count on every request.
        if let Some(entry) = self.buckets.get(&id) {
            if entry.0 == quota {
                return self.decide(&entry.1, quota);
            }
        }
        let bucket = self.bucket(id, quota);
        self.decide(&bucket, quota)
    }

    fn decide(&self, bucket: &Bucket, quota: RateQuota) -> RateDecision {
        match bucket.check() {
            Ok(snapshot) => RateDecision::Allowed(QuotaState {
                limit: quota.per_minute,
                remaining: snapshot.remaining_burst_capacity(),
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateDecision::Limited {
                    limit: quota.per_minute,
                    retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        }
    }

    /// The bucket for `id`, rebuilt when its quota changed (a keys reload edited it).
    fn bucket(&self, id: BucketId, quota: RateQuota) -> Arc<Bucket> {
        if let Some(entry) = self.buckets.get(&id) {
            if entry.0 == quota {
                return entry.1.clone();
            }
        }
        let bucket = Arc::new(
            Gcra::direct(gcra_quota(quota)).with_middleware::<StateInformationMiddleware>(),
        );
        let mut entry = self
            .buckets
            .entry(id)
            .or_insert_with(|| (quota, bucket.clone()));
        if entry.0 != quota {
            *entry = (quota, bucket);
        }
        entry.1.clone()
    }
}

fn fleet_decision(quota: RateQuota, taken: crate::store::QuotaTaken) -> RateDecision {
    if taken.allowed {
        RateDecision::Allowed(QuotaState {
            limit: quota.per_minute,
            remaining: taken.remaining,
        })
    } else {
        RateDecision::Limited {
            limit: quota.per_minute,
            retry_after_seconds: taken.retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

fn gcra_quota(quota: RateQuota) -> Quota {
    let nonzero = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(nonzero(quota.per_minute)).allow_burst(nonzero(quota.burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RateLimiter {
        /// The process-scoped check, without a runtime.
        fn check_now(&self, key: &ApiKeyRecord) -> RateDecision {
            assert!(self.fleet.is_none());
            futures_executor(self.check(key))
        }
    }

    fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }
    use crate::tenancy::api_keys::{record_for, Scope};

    fn key(org: &str, rate: Option<u32>) -> ApiKeyRecord {
        let mut record = record_for(
            &format!("st_{org}{rate:?}"),
            &Org::parse(org).unwrap(),
            "k",
            vec![Scope::Mint],
        );
        record.rate_per_minute = rate;
        record
    }

    #[test]
    fn remaining_counts_down_then_the_request_is_refused_with_a_wait() {
        let limiter = RateLimiter::new(RateQuota::per_minute(5));
        let acme = key("acme", None);
        let remaining: Vec<u32> = (0..5)
            .map(|_| match limiter.check_now(&acme) {
                RateDecision::Allowed(state) => state.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        match limiter.check_now(&acme) {
            RateDecision::Limited {
                limit,
                retry_after_seconds,
            } => {
                assert_eq!(limit, 5);
                assert!(
                    (1..=12).contains(&retry_after_seconds),
                    "{retry_after_seconds}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_org_spending_its_quota_leaves_another_untouched() {
        let limiter = RateLimiter::new(RateQuota::per_minute(1));
        assert!(matches!(
            limiter.check_now(&key("a", None)),
            RateDecision::Allowed(_)
        ));
        assert!(matches!(
            limiter.check_now(&key("a", None)),
            RateDecision::Limited { .. }
        ));
        assert!(matches!(
            limiter.check_now(&key("b", None)),
            RateDecision::Allowed(_)
        ));
    }

    #[test]
    fn a_reload_that_changes_a_keys_rate_takes_effect_at_once() {
        let limiter = RateLimiter::new(RateQuota::per_minute(1));
        let mut edited = key("a", Some(1));
        assert!(matches!(
            limiter.check_now(&edited),
            RateDecision::Allowed(_)
        ));
        assert!(matches!(
            limiter.check_now(&edited),
            RateDecision::Limited { .. }
        ));
        edited.rate_per_minute = Some(5);
        assert_eq!(
            limiter.check_now(&edited),
            RateDecision::Allowed(QuotaState {
                limit: 5,
                remaining: 4
            })
        );
    }

    #[test]
    fn a_key_with_its_own_rate_uses_it_instead_of_the_orgs() {
        let limiter = RateLimiter::new(RateQuota::per_minute(1));
        let generous = key("a", Some(3));
        for expected in [2, 1, 0] {
            assert_eq!(
                limiter.check_now(&generous),
                RateDecision::Allowed(QuotaState {
                    limit: 3,
                    remaining: expected
                })
            );
        }
    }
}
