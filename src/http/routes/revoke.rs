//! `POST /v1/tokens/revoke` — refuse a token (or every token an org was issued until now) from
//! here on, and end the live sessions it opened on every process sharing the store.
//!
//! The body names exactly one of `token`, `jti` or `org`. A `jti` is looked for in the key's
//! own org; an `--any-org` key names the org beside it (`{"jti","org"}`), since the store keeps
//! an org's entries together. A key acts on its own org only unless created `--any-org`.
//!
//! Entries expire once no token they cover can verify, nor re-open a session within a reconnect
//! grace: for a token, 2 × leeway past its `exp`, or, with a grace, past the end of the longest
//! session it could have opened (`exp` + leeway + its `max_session_duration_seconds`); for a
//! `jti` or an org, whose tokens are unknown, past the longest window from now
//! (`ExpiresIn::MAX` + leeway + `SessionDuration::MAX`). Sessions open at the time are closed
//! through the store's revocation feed, which keeps a day (the longest session).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json_body::read_json;
use crate::http::state::AppState;
use crate::store::{Covers, Revocation, RevokeEntry};
use crate::tenancy::api_keys::Scope;
use crate::tenancy::org::Org;
use crate::token::claims::RejectReason;
use crate::token::params::{ExpiresIn, SessionDuration};
use crate::token::verify::MAX_TOKEN_BYTES;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: Option<String>,
    jti: Option<String>,
    org: Option<String>,
}

const EXACTLY_ONE: &str = "send exactly one of token, jti (with org for an --any-org key) or org";

#[derive(Serialize)]
struct RevokeResponse {
    revoked: Revoked,
    /// Sessions this process was holding open and has told to close.
    sessions_closed: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Revoked {
    Token {
        jti: String,
        org: String,
    },
    Org {
        org: String,
        issued_at_or_before: i64,
    },
}

pub async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Revoke)?;
    let body = read_json::<RevokeBody>(&req, payload).await?;
    let now = chrono::Utc::now().timestamp();
    // No token of a jti or an org revoked now can verify, or re-open a session, past this.
    let leeway = state.leeway_seconds as i64;
    let longest = now + i64::from(ExpiresIn::MAX) + leeway + i64::from(SessionDuration::MAX);
    let (revocation, expires_at, kind) = match (body.token, body.jti, body.org) {
        (Some(token), None, None) => {
            if token.chars().count() > MAX_TOKEN_BYTES {
                return Err(ApiError::InvalidRequest(format!(
                    "token is longer than {MAX_TOKEN_BYTES} bytes"
                )));
            }
            // Past its window a token may still hold a session open: it can be revoked.
            let claims = state
                .redeemer
                .verify_any_age(&token)
                .map_err(ApiError::TokenRejected)?;
            let revocation = Revocation {
                org: acting_for(&caller, &claims.org)?,
                covers: Covers::Token(claims.jti),
            };
            // With a grace, the token may re-open its session (past `exp`) until that ends.
            let covered_until = match claims.reconnect_grace_seconds {
                0 => claims.exp,
                _ => claims.exp + leeway + i64::from(claims.max_session_duration_seconds),
            };
            (revocation, covered_until.max(now), "token")
        }
        (None, Some(jti), org) => {
            let jti = Uuid::parse_str(&jti)
                .map_err(|_| ApiError::InvalidRequest("jti must be a UUID".into()))?;
            let org = match org {
                Some(org) => acting_for(&caller, Org::parse(&org)?.as_str())?,
                None if caller.0.any_org => {
                    return Err(ApiError::InvalidRequest(
                        "an --any-org key must send the token's org with its jti".into(),
                    ))
                }
                None => caller.0.org.as_str().to_owned(),
            };
            let revocation = Revocation {
                org,
                covers: Covers::Token(jti),
            };
            (revocation, longest, "jti")
        }
        (None, None, Some(org)) => {
            let revocation = Revocation {
                org: acting_for(&caller, Org::parse(&org)?.as_str())?,
                covers: Covers::IssuedAtOrBefore(now),
            };
            (revocation, longest, "org")
        }
        _ => return Err(ApiError::InvalidRequest(EXACTLY_ONE.into())),
    };
    let margin = state.redeemer.skew_margin();
    state
        .redeemer
        .store()
        .revoke(RevokeEntry {
            revocation: &revocation,
            expires_at: expires_at + margin,
            outlive_seconds: margin,
        })
        .await
        .inspect_err(|_| state.metrics.store_error())?;
    state.metrics.revoked(kind);
    let sessions_closed = state.live_sessions.revoke(&revocation);
    let revoked = match revocation.covers {
        Covers::Token(jti) => Revoked::Token {
            jti: jti.to_string(),
            org: revocation.org,
        },
        Covers::IssuedAtOrBefore(iat) => Revoked::Org {
            org: revocation.org,
            issued_at_or_before: iat,
        },
    };
    Ok(HttpResponse::Ok().json(RevokeResponse {
        revoked,
        sessions_closed,
    }))
}

/// `org`, when the caller's key may act on it; 403 `wrong_org` otherwise.
fn acting_for(caller: &Caller, org: &str) -> Result<String, ApiError> {
    if caller.0.acts_for(org) {
        Ok(org.to_owned())
    } else {
        Err(ApiError::TokenRejected(RejectReason::WrongOrg))
    }
}
