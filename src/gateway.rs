//! The embeddable gateway component: any actix-web service verifies streamtoken tokens locally
//! (keyring + shared store, no call to the issuer) with the `Redeemed` extractor.
//!
//! The token may be presented as `?token=`, as `Authorization: Bearer <token>`,
//! `Authorization: Token <token>` or `Authorization: <token>` (no scheme, as the AssemblyAI SDK
//! sends it; only a value shaped like a token counts), or as the WebSocket subprotocol pair
//! `Sec-WebSocket-Protocol: bearer, <token>` (browsers cannot set headers on a WebSocket, but
//! they can offer subprotocols; answer with `bearer`). A refusal is an `ApiError` in the
//! `{"error":{"code","message"}}` envelope.
//!
//! A session that runs on after the redemption learns that its token was revoked through
//! `Redeemer::watch`, whose `LiveSession::revoked` completes then (within a second with Redis,
//! wherever the revocation was recorded). A gateway that holds the session's connection itself
//! opens it with `open_presented` (or `Redeemer::open_session`) instead: the session is listed
//! (`GET /v1/sessions`), a second connection with the same token is refused while it is open,
//! `HeldSession::revoked` completes on revocation, and after `HeldSession::end` the token
//! re-opens it within its reconnect grace (`Redemption::resumed`).

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

pub use crate::admission::policy::Policy;
pub use crate::admission::presented::{
    presented_in, presented_token, TokenSource, BEARER_SUBPROTOCOL,
};
pub use crate::admission::redeem::{Redeemer, Redemption};
pub use crate::admission::revocation::LiveSession;
pub use crate::admission::session::HeldSession;
pub use crate::http::error::ApiError;

/// Verifies and consumes the presented token under the redeemer's own policy
/// (`Redeemer::with_policy`; every org and token type by default).
pub async fn redeem_presented(
    req: &HttpRequest,
    redeemer: &Redeemer,
) -> Result<(Redemption, TokenSource), ApiError> {
    let (token, source) = presented_token(req).ok_or(ApiError::MissingToken)?;
    let redemption = redeemer.redeem(&token).await?;
    Ok((redemption, source))
}

/// Like `redeem_presented`, for a gateway that holds the session's connection: call
/// `HeldSession::end` when it closes.
pub async fn open_presented(
    req: &HttpRequest,
    redeemer: &Redeemer,
) -> Result<(Redemption, HeldSession), ApiError> {
    let (token, _) = presented_token(req).ok_or(ApiError::MissingToken)?;
    Ok(redeemer.open_session(&token).await?)
}

/// A token redeemed for this request: one use is consumed before the handler runs.
///
/// ```no_run
/// use actix_web::{web, App, HttpServer, Responder};
/// use streamtoken::gateway::{Redeemed, Redeemer};
/// use streamtoken::settings::Settings;
///
/// async fn stream(grant: Redeemed) -> impl Responder {
///     format!("hello {}, session ends at {}", grant.redemption.claims.org,
///             grant.redemption.session_expires_at)
/// }
///
/// # async fn run() -> anyhow::Result<()> {
/// let redeemer = web::Data::new(Redeemer::from_settings(&Settings::from_env()?)?);
/// HttpServer::new(move || App::new().app_data(redeemer.clone()).route("/stream", web::get().to(stream)))
///     .bind("127.0.0.1:9000")?.run().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub redemption: Redemption,
    pub source: TokenSource,
}

impl FromRequest for Redeemed {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let redeemer = req
                .app_data::<web::Data<Redeemer>>()
                .cloned()
                .ok_or_else(|| {
                    ApiError::Unexpected(anyhow::anyhow!(
                        "register web::Data<Redeemer> to use Redeemed"
                    ))
                })?;
            let (redemption, source) = redeem_presented(&req, &redeemer).await?;
            Ok(Redeemed { redemption, source })
        })
    }
}
