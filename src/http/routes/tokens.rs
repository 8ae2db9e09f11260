//! The canonical API: `/v1/tokens`, `/v1/tokens/redeem`, `/v1/tokens/introspect`.

use std::collections::BTreeMap;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::SecondsFormat;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Number;
use uuid::Uuid;

use crate::admission::policy::Policy;
use crate::admission::redeem::{Introspection, RedeemError, Redeemer, Redemption};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::issuance::issue;
use crate::http::json_body::read_json;
use crate::http::state::WorkerState;
use crate::input::{integer_from_json, InvalidParam};
use crate::json_out::JsonObject;
use crate::token::claims::Claims;
use crate::token::mint::{MintRequest, MintedToken};
use crate::token::params::{Ctx, ExpiresIn, ReconnectGrace, SessionDuration, TokenType, Uses};
use crate::token::verify::MAX_TOKEN_BYTES;

/// Body of `POST /v1/tokens`; every field is optional. Unknown fields are refused so a typo
/// (`expires_in`) is not silently replaced by a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    token_type: Option<String>,
    expires_in_seconds: Option<Number>,
    max_session_duration_seconds: Option<Number>,
    ctx: Option<BTreeMap<String, String>>,
    uses: Option<Number>,
    reconnect_grace_seconds: Option<Number>,
}

impl TryFrom<MintBody> for MintRequest {
    type Error = InvalidParam;

    fn try_from(body: MintBody) -> Result<Self, InvalidParam> {
        let defaults = MintRequest::default();
        let uses = integer(body.uses, defaults.uses, Uses::parse)?;
        let reconnect_grace = body
            .reconnect_grace_seconds
            .map(|grace| {
                integer(
                    Some(grace),
                    ReconnectGrace::default(),
                    ReconnectGrace::parse,
                )
            })
            .transpose()?;
        // A token of several uses opens several sessions: which one a reconnect re-opens would
        // be a guess, so a grace is for single-use tokens.
        if uses.get() > 1 && reconnect_grace.is_some_and(|grace| grace.get() > 0) {
            return Err(InvalidParam::new(
                ReconnectGrace::FIELD,
                "reconnect_grace_seconds is for single-use tokens; send uses 1 (or leave it out)",
            ));
        }
        Ok(MintRequest {
            token_type: body
                .token_type
                .map_or(Ok(defaults.token_type), |t| TokenType::parse(&t))?,
            expires_in: integer(
                body.expires_in_seconds,
                defaults.expires_in,
                ExpiresIn::parse,
            )?,
            session: integer(
                body.max_session_duration_seconds,
                defaults.session,
                SessionDuration::parse,
            )?,
            ctx: body.ctx.map_or(Ok(defaults.ctx), Ctx::parse)?,
            uses,
            reconnect_grace,
        })
    }
}

/// A JSON number that must be an integer in range: floats, negatives and overflowing values all
/// get the field's own rule as the error.
fn integer<T>(
    value: Option<Number>,
    default: T,
    parse: impl Fn(i128) -> Result<T, InvalidParam>,
) -> Result<T, InvalidParam> {
    match value {
        None => Ok(default),
        // Any number that is not an integer is refused by the range check with the field's rule.
        Some(number) => parse(integer_from_json(&number).unwrap_or(i128::MIN)),
    }
}

pub async fn mint(req: HttpRequest, payload: web::Payload, state: WorkerState) -> HttpResponse {
    let parsed = read_json::<MintBody>(&req, payload)
        .await
        .and_then(|body| Ok(MintRequest::try_from(body)?));
    issue(&req, &state, parsed)
        .await
        .respond(render_minted, ApiError::canonical_response)
}

/// `{token, token_type, jti, expires_in_seconds, expires_at, max_session_duration_seconds,
/// uses, reconnect_grace_seconds}`, written without serde's byte-at-a-time escaping of the token (see `json_out`).
fn render_minted(minted: &MintedToken) -> HttpResponse {
    let claims = &minted.claims;
    let mut jti = Uuid::encode_buffer();
    JsonObject::with_capacity(minted.token.len() + 200)
        .string("token", &minted.token)
        .string("token_type", &claims.token_type)
        .string("jti", claims.jti.hyphenated().encode_lower(&mut jti))
        .integer("expires_in_seconds", minted.lifetime_seconds())
        .string(
            "expires_at",
            &minted
                .expires_at()
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        )
        .integer(
            "max_session_duration_seconds",
            claims.max_session_duration_seconds,
        )
        .integer("uses", claims.uses)
        .integer("reconnect_grace_seconds", claims.reconnect_grace_seconds)
        .ok()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: Option<String>,
}

impl TokenBody {
    fn into_token(self) -> Result<String, ApiError> {
        let token = self
            .token
            .ok_or_else(|| ApiError::InvalidRequest("token is required".into()))?;
        // Characters, as the schema's maxLength counts; our tokens are ASCII either way.
        if token.chars().count() > MAX_TOKEN_BYTES {
            return Err(ApiError::InvalidRequest(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        Ok(token)
    }
}

/// What redeem and introspect both take: the body's token, from a caller whose key holds the
/// `redeem` scope (checked in that order: key, scope, body), and the tokens that key may act on.
pub(super) struct TokenToCheck {
    token: String,
    policy: Policy,
}

impl FromRequest for TokenToCheck {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let caller = Caller::from_request(&req, payload).into_inner();
        let payload = web::Payload::from_request(&req, payload).into_inner();
        Box::pin(async move {
            let policy = caller?.redeem_policy()?;
            let payload = payload.map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            let body = read_json::<TokenBody>(&req, payload).await?;
            Ok(TokenToCheck {
                token: body.into_token()?,
                policy,
            })
        })
    }
}

impl TokenToCheck {
    async fn redeem(&self, redeemer: &Redeemer) -> Result<Redemption, RedeemError> {
        redeemer.redeem_under(&self.token, &self.policy).await
    }

    async fn introspect(&self, redeemer: &Redeemer) -> Result<Introspection, RedeemError> {
        redeemer.introspect(&self.token, &self.policy).await
    }
}

pub async fn redeem(checked: TokenToCheck, state: WorkerState) -> Result<HttpResponse, ApiError> {
    let redemption = checked.redeem(&state.redeemer).await?;
    let claims = &redemption.claims;
    let mut jti = Uuid::encode_buffer();
    // `{org, token_type, jti, ctx, max_session_duration_seconds, session_expires_at,
    // uses_remaining, resumed}` (see `json_out` for why not serde).
    Ok(JsonObject::with_capacity(256)
        .string("org", &claims.org)
        .string("token_type", &claims.token_type)
        .string("jti", claims.jti.hyphenated().encode_lower(&mut jti))
        .string_map("ctx", &claims.ctx)
        .integer(
            "max_session_duration_seconds",
            claims.max_session_duration_seconds,
        )
        .string(
            "session_expires_at",
            &redemption
                .session_expires_at
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        )
        .integer("uses_remaining", redemption.uses_remaining)
        .boolean("resumed", redemption.resumed)
        .ok())
}

#[derive(Serialize)]
struct IntrospectResponse {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<Claims>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uses_remaining: Option<u32>,
}

pub async fn introspect(
    checked: TokenToCheck,
    state: WorkerState,
) -> Result<HttpResponse, ApiError> {
    let found = checked.introspect(&state.redeemer).await?;
    Ok(HttpResponse::Ok().json(IntrospectResponse {
        active: found.active,
        reason: found.reason.map(|r| r.as_str()),
        claims: found.claims,
        uses_remaining: found.uses_remaining,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MintRequest, String> {
        let body: MintBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        MintRequest::try_from(body).map_err(|e| e.message)
    }

    #[test]
    fn an_empty_object_mints_with_every_default() {
        let request = parse("{}").unwrap();
        assert_eq!(request.expires_in.get(), 60);
        assert_eq!(request.session.get(), 3600);
        assert_eq!(request.uses.get(), 1);
        assert_eq!(request.token_type.as_str(), "realtime");
    }

    #[test]
    fn integral_json_numbers_are_integers_as_in_json_schema() {
        for (value, expected) in [("60.0", 60), ("1e3", 1000), ("6E1", 60)] {
            let request = parse(&format!(r#"{{"expires_in_seconds":{value}}}"#)).unwrap();
            assert_eq!(request.expires_in.get(), expected, "{value}");
        }
    }

    #[test]
    fn non_integer_seconds_are_refused_with_the_fields_rule() {
        for value in [
            "0",
            "-1",
            "1.5",
            "1e4",
            "3601",
            "99999999999999999999",
            "1e300",
        ] {
            let err = parse(&format!(r#"{{"expires_in_seconds":{value}}}"#)).unwrap_err();
            assert_eq!(
                err, "expires_in_seconds must be an integer between 1 and 3600",
                "{value}"
            );
        }
    }

    #[test]
    fn an_unknown_field_is_refused() {
        assert!(parse(r#"{"expires_in":60}"#)
            .unwrap_err()
            .contains("unknown field"));
    }
}
