//! The one minting pipeline every minting route runs, whatever its wire format:
//! authenticate → require the `mint` scope → the adapter's parsed request → rate limit →
//! credit check → mint → count. Adapters parse and render; this applies the shared rules once,
//! including the headers every minting response carries.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

use crate::http::auth::{self, Caller};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::tenancy::api_keys::Scope;
use crate::tenancy::credits;
use crate::tenancy::rate_limit::{QuotaState, RateDecision};
use crate::token::mint::{MintRequest, MintedToken};

/// What the pipeline produced, with the quota state to report either way.
pub struct Issued {
    pub result: Result<MintedToken, ApiError>,
    quota: Option<QuotaState>,
}

pub async fn issue(
    req: &HttpRequest,
    state: &AppState,
    parsed: Result<MintRequest, ApiError>,
) -> Issued {
    let caller = auth::authenticate(req, state);
    issue_as(req, state, caller, parsed).await
}

/// The pipeline for a caller found some other way than by the request's API key (the demo
/// mints as the dev key): scope, rate limit, credits and counting all still apply.
pub async fn issue_as(
    req: &HttpRequest,
    state: &AppState,
    caller: Result<Caller, ApiError>,
    parsed: Result<MintRequest, ApiError>,
) -> Issued {
    let mut quota = None;
    let result = run(req, state, caller, parsed, &mut quota).await;
    Issued { result, quota }
}

async fn run(
    req: &HttpRequest,
    state: &AppState,
    caller: Result<Caller, ApiError>,
    parsed: Result<MintRequest, ApiError>,
    quota: &mut Option<QuotaState>,
) -> Result<MintedToken, ApiError> {
    let caller = caller?;
    let key = caller.require(Scope::Mint)?;
    let request = parsed?;
    match state.rate_limiter.check(key).await {
        RateDecision::Allowed(state) => *quota = Some(state),
        RateDecision::Limited {
            limit,
            retry_after_seconds,
        } => {
            state.metrics.rate_limited(&route_of(req));
            *quota = Some(QuotaState {
                limit,
                remaining: 0,
            });
            return Err(ApiError::RateLimited {
                retry_after_seconds,
            });
        }
    }
    check_credits(state, key.org.as_str()).await?;
    let minted = state.minter.mint(&key.org, request)?;
    state.store.record_minted(key.org.as_str());
    state
        .metrics
        .minted(&route_of(req), &minted.claims.token_type);
    Ok(minted)
}

/// The matched route pattern: a bounded label, whatever the path held.
fn route_of(req: &HttpRequest) -> String {
    req.match_pattern().unwrap_or_else(|| req.path().to_owned())
}

/// Refuses to mint for an org that has spent its credits. Credits are charged at redemption,
/// so if the store cannot answer this courtesy check, minting goes ahead: the token still
/// cannot be redeemed without a credit.
async fn check_credits(state: &AppState, org: &str) -> Result<(), ApiError> {
    let allowance = state.keyring.snapshot().api_keys().credit_limit(org);
    match credits::may_mint(state.store.as_ref(), allowance, org).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::InsufficientCredits),
        Err(cause) => {
            state.metrics.store_error();
            log::warn!("credit check skipped for org {org:?}: {cause}");
            Ok(())
        }
    }
}

impl Issued {
    /// Renders with the surface's own success and error bodies, then adds what every minting
    /// response carries: `x-ratelimit-*`, and `retry-after` on 429 (`no-store` comes from the
    /// middleware every response passes).
    pub fn respond(
        self,
        ok: impl FnOnce(&MintedToken) -> HttpResponse,
        err: impl FnOnce(&ApiError) -> HttpResponse,
    ) -> HttpResponse {
        let mut response = match &self.result {
            Ok(minted) => ok(minted),
            Err(e) => {
                e.log_if_unexpected();
                err(e)
            }
        };
        let headers = response.headers_mut();
        if let Some(quota) = self.quota {
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(quota.limit),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(quota.remaining),
            );
        }
        if let Err(ApiError::RateLimited {
            retry_after_seconds,
        }) = self.result
        {
            headers.insert(
                HeaderName::from_static("retry-after"),
                HeaderValue::from(retry_after_seconds),
            );
        }
        response
    }
}
