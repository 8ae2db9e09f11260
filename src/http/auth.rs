//! API-key authentication. A key may arrive in any of the three forms the reference APIs use:
//! `Authorization: Bearer <key>`, `Authorization: <key>`, or `xi-api-key: <key>`.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::http::header::{self, HeaderName};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::admission::policy::Policy;
use crate::http::error::ApiError;
use crate::http::query;
use crate::http::state::AppState;
use crate::input::InvalidParam;
use crate::tenancy::api_keys::{ApiKeyRecord, Scope};
use crate::token::claims::RejectReason;

/// The key's record, once the presented key matched one.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKeyRecord>);

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<&ApiKeyRecord, ApiError> {
        if self.0.allows(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    /// Which tokens this key's gateway may redeem and introspect: its own org's, or every
    /// org's for an operator key.
    pub fn gateway_policy(&self) -> Policy {
        if self.0.any_org {
            Policy::any()
        } else {
            Policy::any().only_org(self.0.org.as_str())
        }
    }

    /// The tokens this key may redeem or introspect as a gateway: it needs the `redeem` scope,
    /// and acts on the tokens its `gateway_policy` admits.
    pub fn redeem_policy(&self) -> Result<Policy, ApiError> {
        self.require(Scope::Redeem)?;
        Ok(self.gateway_policy())
    }

    /// The org a read (usage, sessions) is for: the request's `?org=`, if this key acts for
    /// it (an operator key, `--any-org`), else the key's own; 400 when `org` is repeated.
    pub fn readable_org(&self, req: &HttpRequest) -> Result<String, ApiError> {
        let requested = query::single(req, "org").map_err(|query::Repeated| {
            InvalidParam::new("org", "org must be given at most once")
        })?;
        match requested {
            None => Ok(self.0.org.as_str().to_owned()),
            Some(org) if self.0.acts_for(&org) => Ok(org),
            Some(_) => Err(ApiError::TokenRejected(RejectReason::WrongOrg)),
        }
    }
}

/// ElevenLabs' key header. A `HeaderName` constant: looking up by `&str` parses the name on
/// every request.
const XI_API_KEY: HeaderName = HeaderName::from_static("xi-api-key");

/// The key as presented, whichever header carried it; `None` when absent or blank.
pub fn presented_key(req: &HttpRequest) -> Option<&str> {
    let headers = req.headers();
    let xi_api_key = headers
        .get(XI_API_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let raw = match xi_api_key {
        Some(value) => value,
        None => {
            let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
            match value.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest,
                // "Bearer" with nothing after it is a scheme without a key.
                _ if value.eq_ignore_ascii_case("bearer") => return None,
                _ => value,
            }
        }
    };
    Some(raw.trim()).filter(|key| !key.is_empty())
}

/// Where the API routes read a key, as a missing key's message names them.
pub const KEY_HEADERS: &str =
    "Authorization: Bearer <key>, Authorization: <key> or xi-api-key: <key>";

pub fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    authenticate_key(presented_key(req), KEY_HEADERS, state)
}

/// The caller whose key is `presented`, wherever the route found it (`headers` says where, for
/// the message when there is none).
pub fn authenticate_key(
    presented: Option<&str>,
    headers: &'static str,
    state: &AppState,
) -> Result<Caller, ApiError> {
    let presented = presented.ok_or(ApiError::MissingApiKey(headers))?;
    let keyring = state.keyring.snapshot();
    keyring
        .api_keys()
        .find(presented)
        .map(|record| Caller(record.clone()))
        .ok_or(ApiError::InvalidApiKey)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<AppState>>() {
            Some(state) => authenticate(req, state),
            None => Err(ApiError::Unexpected(anyhow::anyhow!(
                "AppState is not registered"
            ))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn each_of_the_three_header_forms_yields_the_key() {
        for (name, value) in [
            ("authorization", "Bearer st_abc"),
            ("authorization", "bearer st_abc"),
            ("authorization", "st_abc"),
            ("xi-api-key", "st_abc"),
        ] {
            let req = TestRequest::default()
                .insert_header((name, value))
                .to_http_request();
            assert_eq!(presented_key(&req), Some("st_abc"), "{name}: {value}");
        }
    }

    #[test]
    fn a_blank_xi_api_key_header_does_not_hide_an_authorization_header() {
        let req = TestRequest::default()
            .insert_header(("xi-api-key", " "))
            .insert_header(("authorization", "Bearer st_abc"))
            .to_http_request();
        assert_eq!(presented_key(&req), Some("st_abc"));
    }

    #[test]
    fn blank_or_absent_keys_are_missing() {
        assert_eq!(
            presented_key(&TestRequest::default().to_http_request()),
            None
        );
        for value in ["", "Bearer ", "   "] {
            let req = TestRequest::default()
                .insert_header(("authorization", value))
                .to_http_request();
            assert_eq!(presented_key(&req), None, "{value:?}");
        }
    }
}
