//! Finds the token a request presents. Browsers cannot set headers on a WebSocket, but they can
//! offer subprotocols, so a token may arrive in any of three places, checked in this order:
//! `?token=`, `Authorization: Bearer <token>`, `Sec-WebSocket-Protocol: bearer, <token>`
//! (answer with `bearer`).

use actix_web::http::header;
use actix_web::HttpRequest;

/// The subprotocol a client offers before its token, and that the server answers with.
pub const BEARER_SUBPROTOCOL: &str = "bearer";

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    BearerHeader,
    Subprotocol,
}

/// The token a request presents, if any; the first of query, bearer header, subprotocol.
pub fn presented_token(req: &HttpRequest) -> Option<(String, TokenSource)> {
    if let Ok(Some(token)) = crate::http::query::single(req, "token") {
        if !token.is_empty() {
            return Some((token, TokenSource::Query));
        }
    }
    let headers = req.headers();
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some((scheme, token)) = value.trim().split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some((token.trim().to_owned(), TokenSource::BearerHeader));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_token_is_found_in_each_of_the_three_places() {
        let cases = [
            (
                TestRequest::with_uri("/s?sample_rate=16000&token=eyJ.a.b"),
                TokenSource::Query,
            ),
            (
                TestRequest::with_uri("/s").insert_header(("authorization", "Bearer eyJ.a.b")),
                TokenSource::BearerHeader,
            ),
            (
                TestRequest::with_uri("/s")
                    .insert_header(("sec-websocket-protocol", "bearer, eyJ.a.b")),
                TokenSource::Subprotocol,
            ),
        ];
        for (req, source) in cases {
            let req = req.to_http_request();
            assert_eq!(presented_token(&req), Some(("eyJ.a.b".into(), source)));
        }
    }

    #[test]
    fn no_token_or_a_bare_bearer_subprotocol_is_nothing() {
        for req in [
            TestRequest::with_uri("/s?token="),
            TestRequest::with_uri("/s").insert_header(("sec-websocket-protocol", "bearer")),
            TestRequest::with_uri("/s").insert_header(("authorization", "Basic abc")),
        ] {
            assert_eq!(presented_token(&req.to_http_request()), None);
        }
    }
}
