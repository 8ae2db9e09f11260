//! A session whose connection a gateway here holds: revocation reaches it through the live
//! registry, and when the connection closes the store learns it, so the token can re-open the
//! session within its reconnect grace (and the listing stops showing it connected). While any
//! is held, the process renews its lease on its orgs' sessions in the store, so a process that
//! dies without closing them does not hold them past the lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::admission::revocation::LiveSession;
use crate::store::{SessionRef, SharedStore, SESSION_LEASE_RENEWAL};

pub struct HeldSession {
    live: LiveSession,
    store: Arc<dyn SharedStore>,
    /// `None` once ended.
    session: Option<SessionRef>,
    leases: Arc<Leases>,
    org: String,
}

/// The orgs this process holds sessions of (how many each), whose leases it renews.
pub struct Leases {
    held: Mutex<HashMap<String, usize>>,
    renewing: AtomicBool,
    store: Arc<dyn SharedStore>,
    instance: String,
}

impl Leases {
    pub fn new(store: Arc<dyn SharedStore>, instance: String) -> Arc<Self> {
        Arc::new(Leases {
            held: Mutex::default(),
            renewing: AtomicBool::new(false),
            store,
            instance,
        })
    }

    fn hold(self: &Arc<Self>, org: &str) {
        *lock(&self.held).entry(org.to_owned()).or_insert(0) += 1;
        // The store took the first lease with the session; renewals start with it.
        if !self.renewing.swap(true, Ordering::SeqCst) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(renew(Arc::downgrade(self)));
            }
        }
    }

    fn release(&self, org: &str) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(org) {
            *count -= 1;
            if *count == 0 {
                held.remove(org);
            }
        }
    }

    fn orgs(&self) -> Vec<String> {
        lock(&self.held).keys().cloned().collect()
    }
}

/// Renews the leases of the orgs held, every `SESSION_LEASE_RENEWAL`, for as long as the
/// registry lives. A renewal the store does not take is tried again at the next tick.
async fn renew(leases: Weak<Leases>) {
    let mut tick = tokio::time::interval(SESSION_LEASE_RENEWAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            break;
        };
        let orgs = leases.orgs();
        if orgs.is_empty() {
            continue;
        }
        if let Err(e) = leases.store.keep_leases(&leases.instance, &orgs).await {
            log::warn!("session leases not renewed: {e}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HeldSession {
    pub(crate) fn new(live: LiveSession, leases: &Arc<Leases>, session: SessionRef) -> Self {
        leases.hold(&session.org);
        HeldSession {
            live,
            store: leases.store.clone(),
            org: session.org.clone(),
            session: Some(session),
            leases: leases.clone(),
        }
    }

    /// Completes once the session's token is revoked (never otherwise): a `select!` arm. A
    /// revoked session is over: `end` then removes it rather than leaving it to re-open.
    pub async fn revoked(&mut self) {
        self.live.revoked().await;
        if let Some(session) = &mut self.session {
            session.grace_seconds = 0;
        }
    }

    /// The connection closed: tells the store, so the session can be re-opened within its
    /// grace (or is gone without one). A store that does not answer leaves the session marked
    /// open until its deadline; the failure is logged, never the token.
    pub async fn end(mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = self.store.session_ended(&session).await {
                log::warn!(
                    "session {} of {}: not marked closed: {e}",
                    session.jti,
                    session.org
                );
            }
        }
    }
}

impl Drop for HeldSession {
    /// A session dropped without `end` (a panic, an embedding service that just lets go) is
    /// ended in the background, where a runtime is at hand.
    fn drop(&mut self) {
        self.leases.release(&self.org);
        let Some(session) = self.session.take() else {
            return;
        };
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.session_ended(&session).await;
            });
        }
    }
}
