//! In-process replay store: exactly once within one process, no dependencies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::{Ref, RefMut};
use dashmap::DashMap;
use uuid::Uuid;

use crate::periodic;

use super::{
    session_record_id, Consumed, Covers, Health, ReplayStore, RevokeEntry, SessionOf,
    SessionRecord, SessionRef, SharedStore, StoreUnavailable, Usage, UsageStore, UseOf,
    MAX_LISTED_SESSIONS,
};

/// How often expired entries are dropped. Memory is bounded by tokens alive in the last interval.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// 8 bytes, so an entry with its `jti` is 24 (a million live tokens take about 53 MiB with
/// the table's growth): `uses` is at most 100 and the expiry is unix seconds until 2106.
#[derive(Debug, Clone, Copy)]
struct Uses {
    recorded: u16,
    expires_at: u32,
}

impl Uses {
    fn first(expires_at: i64) -> Self {
        Uses {
            recorded: 1,
            expires_at: expires_at.clamp(0, i64::from(u32::MAX)) as u32,
        }
    }

    fn recorded(&self) -> u32 {
        u32::from(self.recorded)
    }

    fn alive_at(&self, now: i64) -> bool {
        i64::from(self.expires_at) >= now
    }
}

/// A session record (see `SessionOf`).
#[derive(Debug, Clone)]
struct Session {
    jti: Uuid,
    token_type: String,
    opened_at_ms: i64,
    expires_at_ms: i64,
    /// The attempt whose connection holds it, if one does.
    connection: Option<Uuid>,
    held: bool,
    instance: String,
    /// While no connection holds it: re-openable until then (unix ms).
    resumable_until_ms: i64,
}

impl Session {
    /// Whether the record can still matter at `now_ms`.
    fn alive(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
            && (self.connection.is_some() || now_ms <= self.resumable_until_ms)
    }
}

/// An org's counters. Atomics, so redemptions without a credit limit can share the org's entry
/// (see `OrgGuard`).
#[derive(Debug, Default)]
struct Counters {
    minted: AtomicU64,
    redeemed: AtomicU64,
}

/// An org's entry, held across a redemption. A credit-limited one holds it alone, so the
/// credit check and the charge are one step; any other shares it with the org's other
/// redemptions. A revocation holds it alone too, so every redemption either saw the revocation
/// or was recorded before it.
enum OrgGuard<'a> {
    Shared(Ref<'a, String, Counters>),
    Exclusive(RefMut<'a, String, Counters>),
}

impl OrgGuard<'_> {
    fn counters(&self) -> &Counters {
        match self {
            OrgGuard::Shared(shared) => shared.value(),
            OrgGuard::Exclusive(exclusive) => exclusive.value(),
        }
    }
}

/// Sharded map from `jti` to its recorded uses. Each shard's lock makes check-and-record atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: DashMap<Uuid, Uses>,
    usage: DashMap<String, Counters>,
    /// Revoked tokens by jti: each org that revoked it, with when the entry may go. Keyed by
    /// the jti alone so a redemption looks it up without building a key.
    revoked: DashMap<Uuid, Vec<(String, i64)>>,
    /// Each org's revocation threshold: tokens issued at or before it are revoked (`iat`,
    /// when the entry may go).
    revoked_before: DashMap<String, (i64, i64)>,
    /// Each org's session records, by record id (`session_record_id`).
    sessions: DashMap<String, HashMap<String, Session>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries currently held (live consumed tokens plus those not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry whose token expired before `now` (unix seconds).
    pub fn sweep_expired(&self, now: i64) {
        self.entries.retain(|_, uses| uses.alive_at(now));
        self.revoked.retain(|_, orgs| {
            orgs.retain(|(_, expires_at)| *expires_at >= now);
            !orgs.is_empty()
        });
        self.revoked_before
            .retain(|_, (_, expires_at)| *expires_at >= now);
        let now_ms = now.saturating_mul(1000);
        self.sessions.retain(|_, sessions| {
            sessions.retain(|_, session| session.alive(now_ms));
            !sessions.is_empty()
        });
    }

    /// Records the session a use just opened.
    fn open_session(&self, use_of: &UseOf<'_>, session: &SessionOf<'_>) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let record = Session {
            jti: use_of.jti,
            token_type: session.token_type.to_owned(),
            opened_at_ms: now_ms,
            expires_at_ms: session.expires_at_ms,
            connection: session.held.then_some(use_of.attempt),
            held: session.held,
            instance: session.instance.to_owned(),
            resumable_until_ms: grace_end(now_ms, session.grace_seconds, session.expires_at_ms),
        };
        let id = session_record_id(use_of.jti, use_of.attempt, use_of.allowed_uses == 1);
        self.sessions
            .entry(use_of.org.to_owned())
            .or_default()
            .insert(id, record);
    }

    /// Re-opens a single-use token's dropped session within its grace.
    fn resume_session(&self, use_of: &UseOf<'_>, session: &SessionOf<'_>) -> Consumed {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let Some(mut sessions) = self.sessions.get_mut(use_of.org) else {
            return Consumed::AlreadyUsed;
        };
        let id = session_record_id(use_of.jti, use_of.attempt, true);
        let Some(record) = sessions.get_mut(&id) else {
            return Consumed::AlreadyUsed;
        };
        // Without a grace there is nothing to re-open: the token is used, as it always was.
        if session.grace_seconds == 0 {
            return Consumed::AlreadyUsed;
        }
        if record.connection.is_some() {
            return Consumed::SessionAlreadyOpen;
        }
        if !record.alive(now_ms) {
            return Consumed::AlreadyUsed;
        }
        if session.held {
            record.connection = Some(use_of.attempt);
            record.held = true;
            record.instance = session.instance.to_owned();
        } else {
            record.resumable_until_ms =
                grace_end(now_ms, session.grace_seconds, record.expires_at_ms);
        }
        Consumed::Resumed {
            opened_at_ms: record.opened_at_ms,
            expires_at_ms: record.expires_at_ms,
        }
    }

    /// The org's entry, shared; created on first use.
    fn org_counters(&self, org: &str) -> Ref<'_, String, Counters> {
        match self.usage.get(org) {
            Some(found) => found,
            None => self.usage.entry(org.to_owned()).or_default().downgrade(),
        }
    }

    fn revoked_now(&self, org: &str, jti: Uuid, iat: i64) -> bool {
        let now = chrono::Utc::now().timestamp();
        self.revoked.get(&jti).is_some_and(|orgs| {
            orgs.iter()
                .any(|(revoked_in, expires_at)| revoked_in == org && *expires_at >= now)
        }) || self
            .revoked_before
            .get(org)
            .is_some_and(|entry| iat <= entry.0 && entry.1 >= now)
    }

    fn record_use(&self, jti: Uuid, allowed_uses: u32, expires_at: i64) -> Consumed {
        match self.entries.entry(jti) {
            Entry::Vacant(slot) => {
                slot.insert(Uses::first(expires_at));
                Consumed::Accepted {
                    uses_remaining: allowed_uses.saturating_sub(1),
                }
            }
            Entry::Occupied(mut slot) => {
                let uses = slot.get_mut();
                if uses.recorded() >= allowed_uses {
                    Consumed::AlreadyUsed
                } else {
                    uses.recorded += 1;
                    Consumed::Accepted {
                        uses_remaining: allowed_uses - uses.recorded(),
                    }
                }
            }
        }
    }

    /// Sweeps on an interval for as long as the store is referenced elsewhere.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        periodic::while_alive(self, every, |store| {
            store.sweep_expired(chrono::Utc::now().timestamp())
        });
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn consume_once(&self, use_of: UseOf<'_>) -> Result<Consumed, StoreUnavailable> {
        // Held across the checks and the use (see `OrgGuard`): concurrent redemptions can
        // neither overspend nor slip past a revocation.
        let org = match use_of.credit_limit {
            Some(_) => OrgGuard::Exclusive(self.usage.entry(use_of.org.to_owned()).or_default()),
            None => OrgGuard::Shared(self.org_counters(use_of.org)),
        };
        let counters = org.counters();
        if self.revoked_now(use_of.org, use_of.jti, use_of.issued_at) {
            return Ok(Consumed::Revoked);
        }
        // A session's re-opening records no use and spends no credit.
        let resumable = use_of.session.filter(|_| use_of.allowed_uses == 1);
        if let Some(session) = resumable.filter(|session| session.resume_only) {
            return Ok(self.resume_session(&use_of, &session));
        }
        let used_up = || {
            self.entries
                .get(&use_of.jti)
                .is_some_and(|uses| uses.recorded() >= use_of.allowed_uses)
        };
        let consumed = if use_of
            .credit_limit
            .is_some_and(|limit| counters.redeemed.load(Ordering::SeqCst) >= limit)
        {
            if used_up() {
                Consumed::AlreadyUsed
            } else {
                Consumed::NoCredits
            }
        } else {
            self.record_use(use_of.jti, use_of.allowed_uses, use_of.expires_at)
        };
        Ok(match (consumed, use_of.session) {
            (accepted @ Consumed::Accepted { .. }, session) => {
                counters.redeemed.fetch_add(1, Ordering::SeqCst);
                if let Some(session) = session {
                    self.open_session(&use_of, &session);
                }
                accepted
            }
            (Consumed::AlreadyUsed, Some(session)) if resumable.is_some() => {
                self.resume_session(&use_of, &session)
            }
            (other, _) => other,
        })
    }

    /// Takes back one use. Exact for the callers there are: a redeemer releases only an attempt
    /// it saw accepted, once (one process, no timeouts to leave a release in doubt).
    async fn release(&self, use_of: UseOf<'_>) -> Result<(), StoreUnavailable> {
        let org = self.usage.entry(use_of.org.to_owned()).or_default();
        if let Some(mut uses) = self.entries.get_mut(&use_of.jti) {
            if uses.recorded > 0 {
                uses.recorded -= 1;
                // Under the org's entry held alone: no redemption is charging meanwhile.
                let redeemed = org.redeemed.load(Ordering::SeqCst);
                org.redeemed
                    .store(redeemed.saturating_sub(1), Ordering::SeqCst);
            }
        }
        Ok(())
    }

    async fn uses_recorded(
        &self,
        _org: &str,
        jti: Uuid,
        allowed_uses: u32,
    ) -> Result<u32, StoreUnavailable> {
        Ok(self
            .entries
            .get(&jti)
            .map_or(0, |uses| uses.recorded().min(allowed_uses)))
    }

    async fn revoke(&self, entry: RevokeEntry<'_>) -> Result<(), StoreUnavailable> {
        let revocation = entry.revocation;
        // Held under the org's usage lock, as `consume_once` is: a redemption either saw the
        // revocation or was recorded before it.
        let _org = self.usage.entry(revocation.org.clone()).or_default();
        match revocation.covers {
            Covers::Token(jti) => {
                let mut orgs = self.revoked.entry(jti).or_default();
                match orgs.iter_mut().find(|(org, _)| *org == revocation.org) {
                    Some((_, expires_at)) => *expires_at = (*expires_at).max(entry.expires_at),
                    None => orgs.push((revocation.org.clone(), entry.expires_at)),
                }
            }
            Covers::IssuedAtOrBefore(iat) => {
                let mut threshold = self
                    .revoked_before
                    .entry(revocation.org.clone())
                    .or_insert((iat, entry.expires_at));
                *threshold = (threshold.0.max(iat), threshold.1.max(entry.expires_at));
            }
        }
        Ok(())
    }

    async fn is_revoked(&self, org: &str, jti: Uuid, iat: i64) -> Result<bool, StoreUnavailable> {
        Ok(self.revoked_now(org, jti, iat))
    }

    async fn session_ended(&self, session: &SessionRef) -> Result<(), StoreUnavailable> {
        let Some(mut sessions) = self.sessions.get_mut(&session.org) else {
            return Ok(());
        };
        let id = session.record_id();
        let Some(record) = sessions
            .get_mut(&id)
            .filter(|record| record.connection == Some(session.connection))
        else {
            return Ok(());
        };
        if session.grace_seconds == 0 {
            sessions.remove(&id);
        } else {
            let now_ms = chrono::Utc::now().timestamp_millis();
            record.connection = None;
            record.resumable_until_ms =
                grace_end(now_ms, session.grace_seconds, record.expires_at_ms);
        }
        Ok(())
    }

    async fn sessions(&self, org: &str) -> Result<Vec<SessionRecord>, StoreUnavailable> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let Some(sessions) = self.sessions.get(org) else {
            return Ok(Vec::new());
        };
        let mut listed: Vec<SessionRecord> = sessions
            .values()
            .filter(|record| record.held && record.alive(now_ms))
            .map(|record| SessionRecord {
                session_id: record.jti,
                token_type: record.token_type.clone(),
                opened_at_ms: record.opened_at_ms,
                expires_at_ms: record.expires_at_ms,
                connected: record.connection.is_some(),
                instance: record.instance.clone(),
            })
            .collect();
        listed.sort_by_key(|record| record.opened_at_ms);
        listed.truncate(MAX_LISTED_SESSIONS + 1);
        Ok(listed)
    }
}

/// Until when a session whose connection dropped at `now_ms` may be re-opened.
fn grace_end(now_ms: i64, grace_seconds: u32, expires_at_ms: i64) -> i64 {
    (now_ms + i64::from(grace_seconds) * 1000).min(expires_at_ms)
}

#[async_trait]
impl UsageStore for MemoryStore {
    fn record_minted(&self, org: &str) {
        self.org_counters(org)
            .minted
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn usage(&self, org: &str) -> Result<Usage, StoreUnavailable> {
        Ok(self
            .usage
            .get(org)
            .map_or_else(Usage::default, |counters| Usage {
                minted: counters.minted.load(Ordering::Relaxed),
                redeemed: counters.redeemed.load(Ordering::SeqCst),
            }))
    }
}

#[async_trait]
impl SharedStore for MemoryStore {
    async fn health(&self) -> Health {
        Health::healthy("memory")
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revocation;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn use_of(jti: Uuid, allowed_uses: u32, expires_at: i64) -> UseOf<'static> {
        UseOf {
            attempt: Uuid::new_v4(),
            jti,
            org: "acme",
            allowed_uses,
            expires_at,
            credit_limit: None,
            outlive_seconds: 0,
            issued_at: 0,
            session: None,
        }
    }

    #[tokio::test]
    async fn a_single_use_token_is_accepted_once() {
        let store = MemoryStore::new();
        let jti = Uuid::new_v4();
        let first = store
            .consume_once(use_of(jti, 1, now() + 60))
            .await
            .unwrap();
        assert_eq!(first, Consumed::Accepted { uses_remaining: 0 });
        let second = store
            .consume_once(use_of(jti, 1, now() + 60))
            .await
            .unwrap();
        assert_eq!(second, Consumed::AlreadyUsed);
        assert_eq!(store.uses_recorded("acme", jti, 1).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_three_use_token_counts_down_then_refuses() {
        let store = MemoryStore::new();
        let jti = Uuid::new_v4();
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(
                store
                    .consume_once(use_of(jti, 3, now() + 60))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            outcomes,
            [
                Consumed::Accepted { uses_remaining: 2 },
                Consumed::Accepted { uses_remaining: 1 },
                Consumed::Accepted { uses_remaining: 0 },
                Consumed::AlreadyUsed
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_consumers_of_one_token_get_exactly_one_acceptance() {
        let store = Arc::new(MemoryStore::new());
        let jti = Uuid::new_v4();
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.consume_once(use_of(jti, 1, now() + 60)).await })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            if let Consumed::Accepted { .. } = task.await.unwrap().unwrap() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 1);
    }

    #[tokio::test]
    async fn after_100_000_redeemed_tokens_expire_the_store_is_empty_again() {
        let store = MemoryStore::new();
        let expires_at = now() + 30;
        for _ in 0..100_000 {
            store
                .consume_once(use_of(Uuid::new_v4(), 1, expires_at))
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 100_000);
        store.sweep_expired(expires_at);
        assert_eq!(
            store.len(),
            100_000,
            "entries still inside their window stay"
        );
        assert!(!store.is_empty());
        store.sweep_expired(expires_at + 1);
        assert_eq!(store.len(), 0);
        assert!(store.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn credits_are_spent_by_redemptions_and_never_overspent_under_concurrency() {
        let store = Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut use_of = use_of(Uuid::new_v4(), 1, now() + 60);
                    use_of.credit_limit = Some(50);
                    store.consume_once(use_of).await.unwrap()
                })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Consumed::Accepted { .. } => accepted += 1,
                other => assert_eq!(other, Consumed::NoCredits),
            }
        }
        assert_eq!(accepted, 50);
        assert_eq!(store.usage("acme").await.unwrap().redeemed, 50);
        assert_eq!(
            store.len(),
            50,
            "refused redemptions leave no consumed jti behind"
        );
    }

    #[tokio::test]
    async fn a_token_refused_for_credit_can_be_redeemed_once_credit_exists() {
        let store = MemoryStore::new();
        let jti = Uuid::new_v4();
        let mut first = use_of(jti, 1, now() + 60);
        first.credit_limit = Some(0);
        assert_eq!(
            store.consume_once(first).await.unwrap(),
            Consumed::NoCredits
        );
        first.credit_limit = Some(1);
        assert_eq!(
            store.consume_once(first).await.unwrap(),
            Consumed::Accepted { uses_remaining: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_runs_by_itself() {
        let store = Arc::new(MemoryStore::new());
        store
            .consume_once(use_of(Uuid::new_v4(), 1, now() - 1))
            .await
            .unwrap();
        store.spawn_sweeper(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(store.len(), 0);
    }

    fn held(grace_seconds: u32, resume_only: bool) -> SessionOf<'static> {
        SessionOf {
            token_type: "realtime",
            expires_at_ms: chrono::Utc::now().timestamp_millis() + 60_000,
            grace_seconds,
            held: true,
            instance: "here",
            resume_only,
        }
    }

    fn session_of(use_of: &UseOf<'_>, grace_seconds: u32) -> SessionRef {
        SessionRef {
            org: use_of.org.to_owned(),
            jti: use_of.jti,
            connection: use_of.attempt,
            single_use: use_of.allowed_uses == 1,
            grace_seconds,
        }
    }

    #[tokio::test]
    async fn a_held_session_refuses_a_second_connection_then_reopens_once_dropped() {
        let store = MemoryStore::new();
        let jti = Uuid::new_v4();
        let mut first = use_of(jti, 1, now() + 60);
        first.session = Some(held(30, false));
        let opened = store.consume_once(first).await.unwrap();
        assert_eq!(opened, Consumed::Accepted { uses_remaining: 0 });
        let mut second = use_of(jti, 1, now() + 60);
        second.session = Some(held(30, false));
        assert_eq!(
            store.consume_once(second).await.unwrap(),
            Consumed::SessionAlreadyOpen
        );
        assert!(store.sessions("acme").await.unwrap()[0].connected);

        // Another attempt's end changes nothing; the holder's drops it.
        store.session_ended(&session_of(&second, 30)).await.unwrap();
        assert!(store.sessions("acme").await.unwrap()[0].connected);
        store.session_ended(&session_of(&first, 30)).await.unwrap();
        assert!(!store.sessions("acme").await.unwrap()[0].connected);

        // Past its window (resume only), within the grace: re-opened, nothing recorded.
        let mut late = use_of(jti, 1, now() + 60);
        late.session = Some(held(30, true));
        assert!(matches!(
            store.consume_once(late).await.unwrap(),
            Consumed::Resumed { .. }
        ));
        assert_eq!(store.usage("acme").await.unwrap().redeemed, 1);

        // Ended without a grace, it is gone: the token is simply used.
        store.session_ended(&session_of(&late, 0)).await.unwrap();
        assert!(store.sessions("acme").await.unwrap().is_empty());
        let mut after = use_of(jti, 1, now() + 60);
        after.session = Some(held(30, false));
        assert_eq!(
            store.consume_once(after).await.unwrap(),
            Consumed::AlreadyUsed
        );
    }

    #[tokio::test]
    async fn dropped_sessions_are_swept_once_their_grace_ends() {
        let store = MemoryStore::new();
        let mut opening = use_of(Uuid::new_v4(), 1, now() + 60);
        opening.session = Some(held(2, false));
        store.consume_once(opening).await.unwrap();
        store.session_ended(&session_of(&opening, 2)).await.unwrap();
        store.sweep_expired(now());
        assert_eq!(store.sessions("acme").await.unwrap().len(), 1);
        store.sweep_expired(now() + 3);
        assert!(store.sessions.is_empty());
    }

    #[tokio::test]
    async fn a_revoked_token_or_org_is_refused_without_spending_and_the_entries_expire() {
        let store = MemoryStore::new();
        let (revoked, other) = (Uuid::new_v4(), Uuid::new_v4());
        let by_token = Revocation {
            org: "acme".into(),
            covers: Covers::Token(revoked),
        };
        let entry = |revocation| RevokeEntry {
            revocation,
            expires_at: now() + 60,
            outlive_seconds: 0,
        };
        store.revoke(entry(&by_token)).await.unwrap();
        let mut attempt = use_of(revoked, 1, now() + 60);
        attempt.issued_at = now();
        assert_eq!(
            store.consume_once(attempt).await.unwrap(),
            Consumed::Revoked
        );
        assert_eq!(store.usage("acme").await.unwrap().redeemed, 0);
        // The same jti in another org is another token.
        attempt.org = "beta";
        assert!(matches!(
            store.consume_once(attempt).await.unwrap(),
            Consumed::Accepted { .. }
        ));

        let by_org = Revocation {
            org: "acme".into(),
            covers: Covers::IssuedAtOrBefore(100),
        };
        store.revoke(entry(&by_org)).await.unwrap();
        let mut old = use_of(other, 1, now() + 60);
        old.issued_at = 100;
        assert_eq!(store.consume_once(old).await.unwrap(), Consumed::Revoked);
        assert!(store.is_revoked("acme", other, 100).await.unwrap());
        assert!(!store.is_revoked("acme", other, 101).await.unwrap());

        store.sweep_expired(now() + 61);
        assert!(!store.is_revoked("acme", revoked, 0).await.unwrap());
        assert!(!store.is_revoked("acme", other, 100).await.unwrap());
    }
}
