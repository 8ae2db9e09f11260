//! The embeddable gateway component: any actix-web service verifies streamtoken tokens locally
//! (keyring + replay store, no call to the issuer) with the `Redeemed` extractor.
//!
//! The token may be presented as `?token=`, as `Authorization: Bearer <token>`, or as the
//! WebSocket subprotocol pair `Sec-WebSocket-Protocol: bearer, <token>` (browsers cannot set
//! headers on a WebSocket, but they can offer subprotocols; answer with `bearer`).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::error::ApiError;
use crate::redeem::{Redeemer, Redemption};

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
    if let Ok(Some(token)) = crate::query::single(req, "token") {
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

/// Verifies and consumes the presented token with the `Redeemer` registered as
/// `web::Data<Redeemer>`.
pub async fn redeem_presented(
    req: &HttpRequest,
    redeemer: &Redeemer,
) -> Result<(Redemption, TokenSource), ApiError> {
    let (token, source) = presented_token(req).ok_or(ApiError::MissingToken)?;
    let redemption = redeemer.redeem(&token).await?;
    Ok((redemption, source))
}

/// A token redeemed for this request: one use is consumed before the handler runs.
///
/// ```no_run
/// use actix_web::{web, App, HttpServer, Responder};
/// use streamtoken::gateway::Redeemed;
/// use streamtoken::redeem::Redeemer;
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
