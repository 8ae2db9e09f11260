//! The redemption core: verify locally, then consume one use in the shared store, and count the
//! outcome. Every gateway surface is a thin layer over it.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::admission::policy::Policy;
use crate::admission::revocation::{LiveSession, LiveSessions};
use crate::admission::session::{HeldSession, Leases};
use crate::keys::keyring::{KeyFileModes, KeyringHandle};
use crate::metrics::Metrics;
use crate::settings::{default_instance_name, TokenSettings};
use crate::store::{Consumed, SessionOf, SessionRef, SharedStore, StoreUnavailable, UseOf};
use crate::token::claims::{Claims, RejectReason};
use crate::token::verify::TokenVerifier;

#[derive(Debug, Clone)]
pub struct Redemption {
    pub claims: Claims,
    /// Names the use this redemption recorded, so `Redeemer::release` can take it back.
    pub attempt: uuid::Uuid,
    pub uses_remaining: u32,
    /// When the session opened with this redemption must end.
    pub session_expires_at: DateTime<Utc>,
    /// The token re-opened the session a dropped connection left, within its reconnect grace:
    /// the same session (`jti`) and deadline, and no use was consumed.
    pub resumed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("token rejected: {}", .0.as_str())]
    Rejected(RejectReason),
    /// The org has spent its credits; the token was not consumed and can be redeemed later.
    #[error("the organisation has no credits left")]
    InsufficientCredits,
    #[error(transparent)]
    StoreUnavailable(#[from] StoreUnavailable),
}

/// What introspection learned; never consumes a use.
#[derive(Debug, Clone)]
pub struct Introspection {
    pub active: bool,
    pub reason: Option<RejectReason>,
    pub claims: Option<Claims>,
    pub uses_remaining: Option<u32>,
}

impl Introspection {
    /// A token that does not verify: inactive, with the reason and nothing else.
    fn refused(reason: RejectReason) -> Self {
        Introspection {
            active: false,
            reason: Some(reason),
            claims: None,
            uses_remaining: None,
        }
    }
}

/// Whether the surface redeeming holds the session's connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// A grant (HTTP redeem, forward-auth, the `Redeemed` extractor): the connection is held
    /// elsewhere, so a re-opening within the grace counts from the grant.
    Nothing,
    Connection,
}

pub struct Redeemer {
    keyring: Arc<KeyringHandle>,
    verifier: TokenVerifier,
    store: Arc<dyn SharedStore>,
    leeway_seconds: i64,
    metrics: Option<Arc<Metrics>>,
    policy: Policy,
    /// The sessions open on this process, told when their token is revoked.
    live_sessions: Arc<LiveSessions>,
    /// This process's name in the session listing.
    instance: String,
    /// The orgs of the sessions held here, whose leases in the store are renewed.
    leases: Arc<Leases>,
}

impl Redeemer {
    pub fn new(
        keyring: Arc<KeyringHandle>,
        settings: &TokenSettings,
        store: Arc<dyn SharedStore>,
    ) -> Self {
        Redeemer {
            keyring,
            verifier: TokenVerifier::new(settings),
            leeway_seconds: settings.leeway_seconds as i64,
            metrics: None,
            policy: Policy::any(),
            live_sessions: LiveSessions::new(),
            leases: Leases::new(store.clone(), default_instance_name(None)),
            instance: default_instance_name(None),
            store,
        }
    }

    /// The name the session listing shows for sessions held by this process. Processes sharing
    /// a store need distinct names: a process's lease covers the sessions held under its name.
    pub fn with_instance(mut self, instance: String) -> Self {
        self.leases = Leases::new(self.store.clone(), instance.clone());
        self.instance = instance;
        self
    }

    /// Counts redemptions, refusals by reason, and replay-store errors.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Everything a gateway needs, from the same settings the service uses: the keyring from
    /// `STREAMTOKEN_KEYS_DIR` and the shared store (Redis or memory). Needs a Tokio runtime.
    pub fn from_settings(settings: &crate::settings::Settings) -> anyhow::Result<Self> {
        let modes = if settings.strict_key_files {
            KeyFileModes::Refuse
        } else {
            KeyFileModes::Warn
        };
        let keyring = Arc::new(
            KeyringHandle::load_with(&settings.keys_dir, modes)
                .with_context(|| format!("loading keys from {}", settings.keys_dir.display()))?,
        );
        let store = crate::store::open(settings)?;
        log::info!("shared store: {}", store.backend());
        let redeemer =
            Redeemer::new(keyring, &settings.token, store).with_instance(settings.instance_name());
        if let Some(feed) = redeemer.store.clone().revocation_feed() {
            redeemer.live_sessions.follow(feed);
        }
        Ok(redeemer)
    }

    /// The keyring this redeemer verifies with (the server signs with the same one).
    pub fn keyring(&self) -> &Arc<KeyringHandle> {
        &self.keyring
    }

    /// The registry of this process's open sessions. Register a session with `watch`; with a
    /// shared store (Redis), revocations recorded by any process reach it (`from_settings`
    /// follows the store's feed).
    pub fn live_sessions(&self) -> &Arc<LiveSessions> {
        &self.live_sessions
    }

    /// Registers the session `redemption` opens: `LiveSession::revoked` completes when its token
    /// is revoked, and the session should then end (the reference gateway closes with 4010).
    /// Keep the returned value for as long as the session runs.
    pub fn watch(&self, redemption: &Redemption) -> LiveSession {
        self.live_sessions.register(&redemption.claims)
    }

    /// The store this redeemer consumes uses in (the server counts usage in the same one).
    pub fn store(&self) -> &Arc<dyn SharedStore> {
        &self.store
    }

    pub fn verify(&self, token: &str) -> Result<Claims, RejectReason> {
        self.verifier.verify(token, &self.keyring.snapshot())
    }

    /// `verify`, except that a token past its redemption window is still accepted.
    pub fn verify_any_age(&self, token: &str) -> Result<Claims, RejectReason> {
        self.verifier
            .verify_any_age(token, &self.keyring.snapshot())
    }

    /// The policy `redeem` and `introspect` apply (every org and type unless set).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Verifies `token` under this redeemer's policy and records one use. Fails closed: a store
    /// that cannot answer is an error, never an acceptance.
    pub async fn redeem(&self, token: &str) -> Result<Redemption, RedeemError> {
        self.redeem_under(token, &self.policy).await
    }

    /// Like `redeem`, under the policy of the surface (or caller) at hand.
    pub async fn redeem_under(
        &self,
        token: &str,
        policy: &Policy,
    ) -> Result<Redemption, RedeemError> {
        self.admit(token, policy, Holding::Nothing).await
    }

    /// Redeems `token` for a connection the caller holds for the whole session (a WebSocket it
    /// serves): the session is listed, a second connection with the same token is refused while
    /// this one is open, and revoking the token completes `HeldSession::revoked`. Call
    /// `HeldSession::end` when the connection closes (dropping it does the same, later): with
    /// a reconnect grace the token can then re-open the session.
    pub async fn open_session(
        &self,
        token: &str,
    ) -> Result<(Redemption, HeldSession), RedeemError> {
        self.open_session_under(token, &self.policy).await
    }

    /// Like `open_session`, under the policy of the surface at hand.
    pub async fn open_session_under(
        &self,
        token: &str,
        policy: &Policy,
    ) -> Result<(Redemption, HeldSession), RedeemError> {
        let redemption = self.admit(token, policy, Holding::Connection).await?;
        let held = HeldSession::new(
            self.live_sessions.register(&redemption.claims),
            &self.leases,
            SessionRef {
                org: redemption.claims.org.clone(),
                jti: redemption.claims.jti,
                connection: redemption.attempt,
                single_use: redemption.claims.uses == 1,
                grace_seconds: redemption.claims.reconnect_grace_seconds,
            },
        );
        Ok((redemption, held))
    }

    async fn admit(
        &self,
        token: &str,
        policy: &Policy,
        holding: Holding,
    ) -> Result<Redemption, RedeemError> {
        let outcome = self.consume(token, policy, holding).await;
        if let Some(metrics) = &self.metrics {
            match &outcome {
                Ok(redemption) if redemption.resumed => {
                    metrics.resumed(&redemption.claims.token_type)
                }
                Ok(redemption) => metrics.redeemed(&redemption.claims.token_type),
                Err(RedeemError::Rejected(reason)) => metrics.rejected_token(*reason),
                Err(RedeemError::InsufficientCredits) => metrics.rejected("insufficient_credits"),
                Err(RedeemError::StoreUnavailable(_)) => metrics.store_error(),
            }
        }
        outcome
    }

    async fn consume(
        &self,
        token: &str,
        policy: &Policy,
        holding: Holding,
    ) -> Result<Redemption, RedeemError> {
        let keyring = self.keyring.snapshot();
        // A session may be re-opened after the token's redemption window: verify without it,
        // then apply it to everything but a re-opening.
        let (claims, window_passed) = match self.verifier.verify(token, &keyring) {
            Ok(claims) => (claims, false),
            Err(RejectReason::Expired) => match self.verifier.verify_any_age(token, &keyring) {
                Ok(claims) if claims.reconnect_grace_seconds > 0 => (claims, true),
                _ => return Err(RedeemError::Rejected(RejectReason::Expired)),
            },
            Err(reason) => return Err(RedeemError::Rejected(reason)),
        };
        let now = Utc::now();
        let grace = claims.reconnect_grace_seconds;
        policy.check(&claims).map_err(RedeemError::Rejected)?;
        let attempt = crate::random::uuid_v4();
        let session_expires_at =
            now + chrono::Duration::seconds(claims.max_session_duration_seconds.into());
        let held = holding == Holding::Connection;
        let mut use_of = self.use_of(&claims, attempt, &keyring);
        use_of.session = (held || grace > 0).then(|| SessionOf {
            token_type: &claims.token_type,
            expires_at_ms: session_expires_at.timestamp_millis(),
            grace_seconds: grace,
            held,
            instance: &self.instance,
            resume_only: window_passed,
        });
        let consumed = self.store.consume_once(use_of).await?;
        let (uses_remaining, session_expires_at, resumed) = match consumed {
            // Past the window, "nothing to re-open" means the token is simply too old.
            Consumed::AlreadyUsed if window_passed => {
                return Err(RedeemError::Rejected(RejectReason::Expired))
            }
            Consumed::AlreadyUsed => return Err(RedeemError::Rejected(RejectReason::AlreadyUsed)),
            Consumed::SessionAlreadyOpen => {
                return Err(RedeemError::Rejected(RejectReason::SessionAlreadyOpen))
            }
            Consumed::Revoked => return Err(RedeemError::Rejected(RejectReason::Revoked)),
            Consumed::NoCredits => return Err(RedeemError::InsufficientCredits),
            Consumed::Accepted { uses_remaining } => (uses_remaining, session_expires_at, false),
            Consumed::Resumed { expires_at_ms, .. } => (
                0,
                DateTime::from_timestamp_millis(expires_at_ms).unwrap_or(session_expires_at),
                true,
            ),
        };
        Ok(Redemption {
            attempt,
            session_expires_at,
            uses_remaining,
            resumed,
            claims,
        })
    }

    /// Takes back the use `redemption` recorded (and its credit): the second phase of a
    /// two-phase redemption failed, e.g. the upstream a proxied session was for refused it, so
    /// the same token works on retry.
    pub async fn release(&self, redemption: &Redemption) -> Result<(), StoreUnavailable> {
        let keyring = self.keyring.snapshot();
        let released = self
            .store
            .release(self.use_of(&redemption.claims, redemption.attempt, &keyring))
            .await;
        if released.is_err() {
            self.count_store_error();
        }
        released
    }

    fn use_of<'a>(
        &self,
        claims: &'a Claims,
        attempt: uuid::Uuid,
        keyring: &crate::keys::keyring::Keyring,
    ) -> UseOf<'a> {
        UseOf {
            attempt,
            jti: claims.jti,
            org: &claims.org,
            allowed_uses: claims.uses,
            expires_at: self.entry_expiry(claims),
            credit_limit: keyring.api_keys().credit_limit(&claims.org),
            outlive_seconds: self.skew_margin(),
            issued_at: claims.iat,
            session: None,
        }
    }

    /// What a token's state is under `policy`, without consuming a use. A token the policy
    /// refuses is an error, so no claim of another org's token is revealed.
    pub async fn introspect(
        &self,
        token: &str,
        policy: &Policy,
    ) -> Result<Introspection, RedeemError> {
        match self.verify(token) {
            Err(reason) => Ok(Introspection::refused(reason)),
            Ok(claims) => self.look_up(claims, policy).await,
        }
    }

    /// The recorded uses of a verified token the policy admits.
    async fn look_up(&self, claims: Claims, policy: &Policy) -> Result<Introspection, RedeemError> {
        if let Err(reason) = policy.check(&claims) {
            if let Some(metrics) = &self.metrics {
                metrics.rejected_token(reason);
            }
            return Err(RedeemError::Rejected(reason));
        }
        let revoked = self
            .store
            .is_revoked(&claims.org, claims.jti, claims.iat)
            .await
            .inspect_err(|_| self.count_store_error())?;
        if revoked {
            return Ok(Introspection::refused(RejectReason::Revoked));
        }
        let used = self
            .store
            .uses_recorded(&claims.org, claims.jti, claims.uses)
            .await
            .inspect_err(|_| self.count_store_error())?;
        let uses_remaining = claims.uses.saturating_sub(used);
        Ok(Introspection {
            active: uses_remaining > 0,
            reason: (uses_remaining == 0).then_some(RejectReason::AlreadyUsed),
            claims: Some(claims),
            uses_remaining: Some(uses_remaining),
        })
    }

    fn count_store_error(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.store_error();
        }
    }

    /// A consumed `jti` must be remembered for as long as its token could still verify on any
    /// gateway. A gateway accepts until `exp` + leeway on its own clock, and clocks may differ
    /// from ours (and the store's) by up to the leeway: so `exp` + 2 × leeway, plus one second
    /// for the boundary.
    fn entry_expiry(&self, claims: &Claims) -> i64 {
        claims.exp + self.skew_margin()
    }

    /// 2 × leeway + 1 s: how long past `exp` (or past the store's now) an entry is kept.
    pub fn skew_margin(&self) -> i64 {
        2 * self.leeway_seconds + 1
    }
}
