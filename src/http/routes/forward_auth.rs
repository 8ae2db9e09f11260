//! `/v1/forward-auth` (any method) — the redeem core behind a reverse proxy's auth subrequest:
//! nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`. The proxy asks before it
//! lets a client's request through to a streaming upstream:
//!
//! - the proxy's own API key (scope `redeem`) comes in `X-Streamtoken-Api-Key`, never in
//!   `Authorization`, which carries the client's token;
//! - the token is the client's, found as `/v1/stream` finds it, except that the query is the one
//!   of the original URI (`X-Original-URI` from nginx, else `X-Forwarded-Uri` from Caddy and
//!   Traefik);
//! - it is redeemed under the key's org rules and the stream's token types
//!   (`STREAMTOKEN_STREAM_TOKEN_TYPES`), consuming one use, exactly as `POST /v1/tokens/redeem`.
//!
//! A grant is 200 with the identity in `X-Streamtoken-*` headers, for the proxy to copy onto the
//! upstream request, and the body `{"resumed": <bool>}` (also `X-Streamtoken-Resumed`): `true`
//! when the token re-opened its session within its reconnect grace, consuming nothing. The proxy
//! holds the connection, not this service, so a re-opening's grace counts from the last grant. nginx passes only 401 and 403 on to the client (any other
//! status becomes its 500), so every refusal is one of those two, in the canonical envelope and
//! with `X-Streamtoken-Error: <code>`; only a store that cannot answer stays 503 (nothing was
//! consumed, and nginx answers 500, never letting the request through).

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::admission::presented::presented_in;
use crate::admission::redeem::Redemption;
use crate::http::auth::authenticate_key;
use crate::http::error::ApiError;
use crate::http::identity::identity_headers;
use crate::http::state::AppState;
use crate::token::claims::RejectReason;

/// Where the proxy sends its API key.
pub const API_KEY_HEADER: &str = "x-streamtoken-api-key";
/// The original request's URI, as nginx (`proxy_set_header X-Original-URI $request_uri`) and
/// as Caddy and Traefik send it, in that order of preference.
const ORIGINAL_URI_HEADERS: [&str; 2] = ["x-original-uri", "x-forwarded-uri"];

pub const ERROR_HEADER: &str = "x-streamtoken-error";

pub async fn forward_auth(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match admit(&req, &state).await {
        Ok(redemption) => granted(&redemption),
        Err(error) => denied(&error),
    }
}

/// Key, scope, token, then the redeem core: the order `POST /v1/tokens/redeem` checks in.
async fn admit(req: &HttpRequest, state: &AppState) -> Result<Redemption, ApiError> {
    let key = req
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty());
    let caller = authenticate_key(key, "X-Streamtoken-Api-Key: <key>", state)?;
    // It guards streaming endpoints: the stream's token types, on top of the key's org rules.
    let policy = caller.redeem_policy()?.and(&state.stream_policy);
    let (token, _) =
        presented_in(original_query(req), req.headers()).ok_or(ApiError::MissingToken)?;
    Ok(state.redeemer.redeem_under(&token, &policy).await?)
}

/// The query of the URI the proxy is asking about, as raw bytes (nginx passes `$request_uri`
/// undecoded); empty when the proxy sent none.
fn original_query(req: &HttpRequest) -> &[u8] {
    let Some(uri) = ORIGINAL_URI_HEADERS
        .iter()
        .find_map(|name| req.headers().get(*name))
    else {
        return b"";
    };
    let uri = uri.as_bytes();
    let uri = uri.split(|b| *b == b'#').next().unwrap_or_default();
    match uri.iter().position(|b| *b == b'?') {
        Some(at) => &uri[at + 1..],
        None => b"",
    }
}

/// The grant's body, for a proxy that reads it; the identity is in the headers.
#[derive(serde::Serialize)]
struct Granted {
    resumed: bool,
}

fn granted(redemption: &Redemption) -> HttpResponse {
    let mut response = HttpResponse::Ok().json(Granted {
        resumed: redemption.resumed,
    });
    for (name, value) in identity_headers(redemption) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), header_value(&value));
    }
    response
}

fn denied(error: &ApiError) -> HttpResponse {
    error.log_if_unexpected();
    let mut response = error.canonical_response();
    *response.status_mut() = status_for(error);
    response.headers_mut().insert(
        HeaderName::from_static(ERROR_HEADER),
        HeaderValue::from_static(error.code()),
    );
    response
}

/// 401 for the token (or the proxy's key), 403 for what a policy refuses — the org, the token
/// type, the key's scope, the org's credits (the token is kept) — and the error's own status
/// for the rest (503 for the store).
fn status_for(error: &ApiError) -> StatusCode {
    match error {
        ApiError::TokenRejected(RejectReason::WrongOrg | RejectReason::WrongTokenType)
        | ApiError::Forbidden(_)
        | ApiError::InsufficientCredits => StatusCode::FORBIDDEN,
        ApiError::MissingApiKey(_)
        | ApiError::InvalidApiKey
        | ApiError::MissingToken
        | ApiError::TokenRejected(_) => StatusCode::UNAUTHORIZED,
        other => other.status_code(),
    }
}

/// Printable ASCII is always a legal header value; the fallback is never taken.
fn header_value(ascii: &str) -> HeaderValue {
    HeaderValue::from_str(ascii).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    use actix_web::test::TestRequest;

    #[test]
    fn the_original_query_comes_from_nginx_then_caddy_and_traefik_headers() {
        let query = |headers: &[(&str, &[u8])]| {
            let mut req = TestRequest::with_uri("/v1/forward-auth?token=not-this-one");
            for (name, value) in headers {
                req = req.insert_header((*name, *value));
            }
            original_query(&req.to_http_request()).to_vec()
        };
        assert_eq!(
            query(&[("x-original-uri", b"/ws/a?token=t1&x=1")]),
            b"token=t1&x=1"
        );
        assert_eq!(
            query(&[("x-forwarded-uri", b"/ws/a?token=t2")]),
            b"token=t2"
        );
        assert_eq!(
            query(&[
                ("x-forwarded-uri", b"/b?token=t2"),
                ("x-original-uri", b"/a?token=t1")
            ]),
            b"token=t1"
        );
        assert_eq!(
            query(&[("x-original-uri", b"/ws/a?token=t1#frag")]),
            b"token=t1"
        );
        assert_eq!(query(&[("x-original-uri", b"/ws/a#?token=t1")]), b"");
        assert_eq!(query(&[("x-original-uri", b"/ws/a")]), b"");
        assert_eq!(query(&[("x-original-uri", b"/\xff?\xfe")]), b"\xfe");
        assert_eq!(
            query(&[]),
            b"",
            "the auth request's own query is not the client's"
        );
    }

    #[test]
    fn refusals_are_401_for_the_token_403_for_a_policy_and_503_for_the_store() {
        use crate::tenancy::api_keys::Scope;
        for (error, status) in [
            (ApiError::MissingApiKey("x"), 401),
            (ApiError::InvalidApiKey, 401),
            (ApiError::MissingToken, 401),
            (ApiError::TokenRejected(RejectReason::AlreadyUsed), 401),
            (ApiError::TokenRejected(RejectReason::Expired), 401),
            (ApiError::TokenRejected(RejectReason::BadSignature), 401),
            (ApiError::TokenRejected(RejectReason::WrongOrg), 403),
            (ApiError::TokenRejected(RejectReason::WrongTokenType), 403),
            (ApiError::Forbidden(Scope::Redeem), 403),
            (ApiError::InsufficientCredits, 403),
            (ApiError::ReplayStoreUnavailable, 503),
        ] {
            let response = denied(&error);
            assert_eq!(response.status().as_u16(), status, "{error:?}");
            assert_eq!(response.headers().get(ERROR_HEADER).unwrap(), error.code());
        }
    }
}
