//! A session whose connection a gateway here holds: revocation reaches it through the live
//! registry, and when the connection closes the store learns it, so the token can re-open the
//! session within its reconnect grace (and the listing stops showing it connected).

use std::sync::Arc;

use crate::admission::revocation::LiveSession;
use crate::store::{SessionRef, SharedStore};

pub struct HeldSession {
    live: LiveSession,
    store: Arc<dyn SharedStore>,
    /// `None` once ended.
    session: Option<SessionRef>,
}

impl HeldSession {
    pub(crate) fn new(live: LiveSession, store: Arc<dyn SharedStore>, session: SessionRef) -> Self {
        HeldSession {
            live,
            store,
            session: Some(session),
        }
    }

    /// Completes once the session's token is revoked (never otherwise): a `select!` arm.
    pub async fn revoked(&mut self) {
        self.live.revoked().await
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
