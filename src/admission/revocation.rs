//! Ending live sessions when their token is revoked. Each process keeps a registry of the
//! sessions it holds open; a revocation is matched against it where it is answered, and a
//! follower task brings every other process's revocations (the store's feed) to it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use crate::store::{Revocation, RevocationFeed};
use crate::token::claims::Claims;

/// How often a follower asks the store for revocations recorded by other processes. With the
/// close frame's own time this keeps a revoked session's end well within a second.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// How long a revocation is remembered in the process, for a session admitted just before it
/// that registers just after it was matched.
const RECENT: Duration = Duration::from_secs(10);

struct Entry {
    org: String,
    jti: Uuid,
    iat: i64,
    revoked: watch::Sender<bool>,
}

/// The sessions open on this process, by the token that opened them.
#[derive(Default)]
pub struct LiveSessions {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    recent: Mutex<VecDeque<(Instant, Revocation)>>,
}

/// One registered session; leaving the registry when dropped.
pub struct LiveSession {
    id: u64,
    sessions: Weak<LiveSessions>,
    revoked: watch::Receiver<bool>,
}

impl LiveSession {
    /// Completes once the session's token is revoked (never otherwise): a `select!` arm.
    pub async fn revoked(&mut self) {
        if self.revoked.wait_for(|revoked| *revoked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if let Some(sessions) = self.sessions.upgrade() {
            lock(&sessions.open).remove(&self.id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LiveSessions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers the session `claims`' token opened. A revocation matched moments ago (while
    /// this session was being admitted) applies at once.
    pub fn register(self: &Arc<Self>, claims: &Claims) -> LiveSession {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let already = lock(&self.recent)
            .iter()
            .any(|(_, r)| r.covers(&claims.org, claims.jti, claims.iat));
        let (sender, receiver) = watch::channel(already);
        lock(&self.open).insert(
            id,
            Entry {
                org: claims.org.clone(),
                jti: claims.jti,
                iat: claims.iat,
                revoked: sender,
            },
        );
        LiveSession {
            id,
            sessions: Arc::downgrade(self),
            revoked: receiver,
        }
    }

    /// Tells every open session `revocation` covers to close; returns how many were told.
    pub fn revoke(&self, revocation: &Revocation) -> usize {
        {
            let mut recent = lock(&self.recent);
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RECENT)
            {
                recent.pop_front();
            }
            recent.push_back((now, revocation.clone()));
        }
        let open = lock(&self.open);
        open.values()
            .filter(|entry| revocation.covers(&entry.org, entry.jti, entry.iat))
            // A session already told (by this process's answer) is not counted again.
            .filter(|entry| !entry.revoked.send_replace(true))
            .count()
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows `feed` every `FOLLOW_INTERVAL` for as long as the registry lives, applying each
    /// revocation recorded anywhere (this process's own again, harmlessly). A store that does
    /// not answer is asked again from the same cursor, so nothing recorded meanwhile is missed.
    pub fn follow(self: &Arc<Self>, feed: Arc<dyn RevocationFeed>) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut cursor: Option<String> = None;
            loop {
                tick.tick().await;
                let Some(sessions) = sessions.upgrade() else {
                    break;
                };
                let Some(after) = cursor.as_deref() else {
                    // No session opens without the store, so none can be missed before this.
                    cursor = feed.cursor_now().await.ok();
                    continue;
                };
                match feed.revocations_after(after).await {
                    Ok((revocations, next)) => {
                        for revocation in &revocations {
                            sessions.revoke(revocation);
                        }
                        cursor = Some(next);
                    }
                    Err(e) => log::debug!("revocation feed: {e}"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Covers;

    fn claims(org: &str, iat: i64) -> Claims {
        Claims {
            iss: "i".into(),
            aud: "a".into(),
            org: org.into(),
            token_type: "realtime".into(),
            jti: Uuid::new_v4(),
            iat,
            exp: iat + 60,
            max_session_duration_seconds: 60,
            ctx: Default::default(),
            uses: 1,
            reconnect_grace_seconds: 0,
        }
    }

    #[tokio::test]
    async fn a_revocation_closes_what_it_covers_once_and_nothing_else() {
        let sessions = LiveSessions::new();
        let (a, b, other) = (claims("acme", 100), claims("acme", 200), claims("beta", 50));
        let mut first = sessions.register(&a);
        let second = sessions.register(&b);
        let _third = sessions.register(&other);
        let by_token = Revocation {
            org: "acme".into(),
            covers: Covers::Token(a.jti),
        };
        assert_eq!(sessions.revoke(&by_token), 1);
        assert_eq!(sessions.revoke(&by_token), 0, "already told");
        first.revoked().await;
        let by_org = Revocation {
            org: "acme".into(),
            covers: Covers::IssuedAtOrBefore(200),
        };
        assert_eq!(sessions.revoke(&by_org), 1);
        assert!(*second.revoked.borrow());
        drop(second);
        assert_eq!(sessions.len(), 2);
    }

    /// A feed that fails `outage` times after the cursor is set, then has one revocation.
    struct Flaky {
        outage: std::sync::atomic::AtomicU32,
        revocation: Revocation,
    }

    #[async_trait::async_trait]
    impl RevocationFeed for Flaky {
        async fn cursor_now(&self) -> Result<String, crate::store::StoreUnavailable> {
            Ok("1-0".into())
        }

        async fn revocations_after(
            &self,
            cursor: &str,
        ) -> Result<(Vec<Revocation>, String), crate::store::StoreUnavailable> {
            if self.outage.load(Ordering::SeqCst) > 0 {
                self.outage.fetch_sub(1, Ordering::SeqCst);
                return Err(crate::store::StoreUnavailable("away".into()));
            }
            match cursor {
                "1-0" => Ok((vec![self.revocation.clone()], "2-0".into())),
                _ => Ok((Vec::new(), cursor.to_owned())),
            }
        }
    }

    #[tokio::test]
    async fn a_follower_cut_off_from_the_feed_catches_up_from_its_cursor() {
        let sessions = LiveSessions::new();
        let opened = claims("acme", 100);
        let mut live = sessions.register(&opened);
        sessions.follow(Arc::new(Flaky {
            outage: 3.into(),
            revocation: Revocation {
                org: "acme".into(),
                covers: Covers::Token(opened.jti),
            },
        }));
        tokio::time::timeout(Duration::from_secs(5), live.revoked())
            .await
            .expect("revoked once the feed answers again");
    }

    #[test]
    fn a_session_registered_just_after_its_revocation_is_revoked_at_once() {
        let sessions = LiveSessions::new();
        let late = claims("acme", 100);
        sessions.revoke(&Revocation {
            org: "acme".into(),
            covers: Covers::Token(late.jti),
        });
        assert!(*sessions.register(&late).revoked.borrow());
        assert!(!*sessions.register(&claims("acme", 100)).revoked.borrow());
    }
}
