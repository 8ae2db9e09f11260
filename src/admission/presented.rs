//! Finds the token a request presents. Browsers cannot set headers on a WebSocket, but they can
//! offer subprotocols, and SDKs differ in how they send a token, so it may arrive in any of these
//! places, checked in this order:
//!
//! 1. `?token=`;
//! 2. `Authorization: Bearer <token>`, `Authorization: Token <token>`, or `Authorization: <token>`
//!    with no scheme (the AssemblyAI SDK's form), the last only when the value is shaped like a
//!    compact JWS, so Basic credentials or an API key are never taken for a token;
//! 3. `Sec-WebSocket-Protocol: bearer, <token>` (answer with `bearer`).

use actix_web::http::header::{self, HeaderMap};
use actix_web::HttpRequest;

/// The subprotocol a client offers before its token, and that the server answers with.
pub const BEARER_SUBPROTOCOL: &str = "bearer";

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    /// `Authorization: Bearer <token>`.
    BearerHeader,
    /// `Authorization: Token <token>`.
    TokenHeader,
    /// `Authorization: <token>`, no scheme.
    RawHeader,
    Subprotocol,
}

/// The token a request presents, if any (see the module's order).
pub fn presented_token(req: &HttpRequest) -> Option<(String, TokenSource)> {
    presented_in(req.query_string().as_bytes(), req.headers())
}

/// The token presented by a request with this query string and these headers. Forward-auth
/// passes the query of the request the proxy asks about, which is not its own.
pub fn presented_in(query: &[u8], headers: &HeaderMap) -> Option<(String, TokenSource)> {
    in_query(query)
        .or_else(|| in_authorization(headers))
        .or_else(|| in_subprotocols(headers))
}

fn in_query(query: &[u8]) -> Option<(String, TokenSource)> {
    // A repeated `token` is no token: which one was meant cannot be known.
    let token = crate::http::query::single_in(query, "token").ok()??;
    (!token.is_empty()).then_some((token, TokenSource::Query))
}

fn in_authorization(headers: &HeaderMap) -> Option<(String, TokenSource)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let schemed = |token: &str, source| {
        let token = token.trim();
        (!token.is_empty()).then(|| (token.to_owned(), source))
    };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            schemed(token, TokenSource::BearerHeader)
        }
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("token") => {
            schemed(token, TokenSource::TokenHeader)
        }
        _ if looks_like_jws(value) => Some((value.to_owned(), TokenSource::RawHeader)),
        _ => None,
    }
}

fn in_subprotocols(headers: &HeaderMap) -> Option<(String, TokenSource)> {
    // Repeated header lines form one comma-separated list (RFC 6455 §11.3.4).
    let mut offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    while let Some(protocol) = offered.next() {
        if protocol.eq_ignore_ascii_case(BEARER_SUBPROTOCOL) {
            if let Some(token) = offered.next().filter(|t| !t.is_empty()) {
                return Some((token.to_owned(), TokenSource::Subprotocol));
            }
        }
    }
    None
}

/// Three base64url segments, the first a JSON object's (`eyJ` is `{"`): how a token looks when
/// it comes without a scheme. The signature may be empty, so an unsigned token is still taken
/// as one, and refused by verification with its reason rather than reported missing.
pub fn looks_like_jws(value: &str) -> bool {
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut segments = value.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(head), Some(payload), Some(signature), None) => {
            head.starts_with("eyJ")
                && !payload.is_empty()
                && [head, payload, signature].into_iter().all(base64url)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";

    fn found(req: TestRequest) -> Option<(String, TokenSource)> {
        presented_token(&req.to_http_request())
    }

    fn with_authorization(value: &str) -> TestRequest {
        TestRequest::with_uri("/s").insert_header(("authorization", value))
    }

    #[test]
    fn a_token_is_found_in_each_of_the_five_forms() {
        let cases = [
            (
                TestRequest::with_uri(&format!("/s?sample_rate=16000&token={TOKEN}")),
                TokenSource::Query,
            ),
            (
                with_authorization(&format!("Bearer {TOKEN}")),
                TokenSource::BearerHeader,
            ),
            (
                with_authorization(&format!("bearer  {TOKEN} ")),
                TokenSource::BearerHeader,
            ),
            (
                with_authorization(&format!("Token {TOKEN}")),
                TokenSource::TokenHeader,
            ),
            (
                with_authorization(&format!("token {TOKEN}")),
                TokenSource::TokenHeader,
            ),
            (with_authorization(TOKEN), TokenSource::RawHeader),
            (
                with_authorization(&format!(" {TOKEN} ")),
                TokenSource::RawHeader,
            ),
            (
                TestRequest::with_uri("/s")
                    .insert_header(("sec-websocket-protocol", format!("bearer, {TOKEN}"))),
                TokenSource::Subprotocol,
            ),
        ];
        for (req, source) in cases {
            assert_eq!(found(req), Some((TOKEN.into(), source)), "{source:?}");
        }
    }

    #[test]
    fn a_raw_authorization_value_counts_only_when_shaped_like_a_token() {
        let api_key = format!("st_{}", "A".repeat(43));
        for value in [
            "Basic dXNlcjpwYXNz",
            api_key.as_str(),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
            "eyJhbGciOiJIUzI1NiJ9..c2ln",
            "abc.def.ghi",
            "eyJ+/.eyJ.sig",
            "eyJa.eyJb.c.d",
            "Bearer",
            "Bearer ",
            "Token ",
            "",
        ] {
            assert_eq!(found(with_authorization(value)), None, "{value:?}");
        }
        // An unsigned token is still a token (refused later, for its algorithm).
        assert!(looks_like_jws("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."));
    }

    #[test]
    fn the_query_wins_over_authorization_which_wins_over_the_subprotocol() {
        let query_and_header = TestRequest::with_uri("/s?token=from-query")
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .insert_header(("sec-websocket-protocol", "bearer, from-subprotocol"));
        assert_eq!(
            found(query_and_header),
            Some(("from-query".into(), TokenSource::Query))
        );
        let header_and_subprotocol = with_authorization(TOKEN)
            .insert_header(("sec-websocket-protocol", "bearer, from-subprotocol"));
        assert_eq!(
            found(header_and_subprotocol),
            Some((TOKEN.into(), TokenSource::RawHeader))
        );
    }

    #[test]
    fn an_authorization_that_is_not_a_token_does_not_hide_the_subprotocol() {
        let req = with_authorization("Basic dXNlcjpwYXNz")
            .insert_header(("sec-websocket-protocol", format!("bearer, {TOKEN}")));
        assert_eq!(found(req), Some((TOKEN.into(), TokenSource::Subprotocol)));
    }

    #[test]
    fn no_token_or_a_bare_bearer_subprotocol_is_nothing() {
        for req in [
            TestRequest::with_uri("/s?token="),
            TestRequest::with_uri("/s").insert_header(("sec-websocket-protocol", "bearer")),
            with_authorization("Basic abc"),
        ] {
            assert_eq!(found(req), None);
        }
    }

    #[test]
    fn a_repeated_token_parameter_is_no_token() {
        let req = TestRequest::with_uri(&format!("/s?token={TOKEN}&token={TOKEN}"));
        assert_eq!(found(req), None);
    }

    #[test]
    fn another_requests_query_is_read_with_this_requests_headers() {
        let req = with_authorization("Basic abc").to_http_request();
        let query = format!("a=1&token={TOKEN}");
        assert_eq!(
            presented_in(query.as_bytes(), req.headers()),
            Some((TOKEN.into(), TokenSource::Query))
        );
        // Raw bytes a proxy passes on as they came are read, not refused.
        assert_eq!(
            presented_in(b"x=\xff&token=abc", req.headers()).map(|t| t.0),
            Some("abc".into())
        );
    }
}
