//! The minting core. Every route that issues tokens, whatever its wire format, ends here.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::keys::keyring::KeyringHandle;
use crate::settings::TokenSettings;
use crate::tenancy::org::Org;
use crate::token::claims::{sign, Claims};
use crate::token::params::{Ctx, ExpiresIn, ReconnectGrace, SessionDuration, TokenType, Uses};

/// A validated request for one token; adapters build it from their own wire format.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub token_type: TokenType,
    pub expires_in: ExpiresIn,
    pub session: SessionDuration,
    pub ctx: Ctx,
    pub uses: Uses,
    /// `None`: the server's default (`STREAMTOKEN_RECONNECT_GRACE_SECONDS`), which applies to
    /// single-use tokens only. Wire formats without the field leave it `None`.
    pub reconnect_grace: Option<ReconnectGrace>,
}

#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub claims: Claims,
}

impl MintedToken {
    /// Seconds from issue to the redemption deadline, as the minting routes report it.
    pub fn lifetime_seconds(&self) -> i64 {
        self.claims.exp - self.claims.iat
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.claims.exp, 0).unwrap_or_default()
    }
}

/// Signs tokens with the active key. Stateless: needs only the keyring, never the replay store.
pub struct Minter {
    keyring: Arc<KeyringHandle>,
    settings: TokenSettings,
}

impl Minter {
    pub fn new(keyring: Arc<KeyringHandle>, settings: TokenSettings) -> Self {
        Minter { keyring, settings }
    }

    pub fn mint(&self, org: &Org, request: MintRequest) -> anyhow::Result<MintedToken> {
        self.mint_at(org, request, Utc::now().timestamp())
    }

    /// Mints as if the clock read `now` (unix seconds).
    pub fn mint_at(
        &self,
        org: &Org,
        request: MintRequest,
        now: i64,
    ) -> anyhow::Result<MintedToken> {
        // Adapters refuse this with their own error; the CLI reaches it.
        anyhow::ensure!(
            request.uses.get() == 1 || request.reconnect_grace.is_none_or(|g| g.get() == 0),
            "a reconnect grace is for single-use tokens (uses 1)"
        );
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            org: org.as_str().to_owned(),
            token_type: request.token_type.as_str().to_owned(),
            jti: crate::random::uuid_v4(),
            iat: now,
            exp: now + i64::from(request.expires_in.get()),
            max_session_duration_seconds: request.session.get(),
            ctx: request.ctx.into_inner(),
            uses: request.uses.get(),
            reconnect_grace_seconds: match request.reconnect_grace {
                Some(grace) => grace.get(),
                None if request.uses.get() == 1 => self.settings.reconnect_grace_seconds,
                None => 0,
            },
        };
        let keyring = self.keyring.snapshot();
        let token = sign(&claims, keyring.active())?;
        Ok(MintedToken { token, claims })
    }
}
