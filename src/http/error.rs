//! Every failure a request can meet, and how the canonical API renders it:
//! `{"error":{"code":"…","message":"…"}}`. Compatibility surfaces render the same failures in
//! their own envelopes. Unexpected causes go to the log; the client only ever sees the envelope.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::admission::redeem::RedeemError;
use crate::input::InvalidParam;
use crate::store::StoreUnavailable;
use crate::tenancy::api_keys::Scope;
use crate::token::claims::RejectReason;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    /// A request value outside its rule; surfaces may name the parameter (`.field`).
    #[error(transparent)]
    InvalidParam(#[from] InvalidParam),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// No key where the route looks for one; names the headers it reads.
    #[error("no API key: send {0}")]
    MissingApiKey(&'static str),
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("this API key lacks the {} scope", .0.as_str())]
    Forbidden(Scope),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("no token: send ?token=, Authorization: [Bearer |Token ]<token>, or the subprotocols bearer, <token>")]
    MissingToken,
    #[error("{}", .0.describe())]
    TokenRejected(RejectReason),
    #[error("the replay store is unavailable; try again")]
    ReplayStoreUnavailable,
    #[error("rate limit exceeded; retry in {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("no credits remaining for this organisation")]
    InsufficientCredits,
    #[error("too many sessions are open; try again later (the token was not used)")]
    TooManySessions,
    /// A proxy route's upstream refused or did not answer; the use was given back.
    #[error("upstream unavailable; try again (the token was not used)")]
    UpstreamUnavailable,
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidParam(_) => "invalid_request",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MissingApiKey(_) => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::MissingToken => "missing_token",
            ApiError::TokenRejected(RejectReason::Expired) => "token_expired",
            ApiError::TokenRejected(RejectReason::AlreadyUsed) => "token_already_used",
            ApiError::TokenRejected(RejectReason::WrongOrg) => "wrong_org",
            ApiError::TokenRejected(RejectReason::WrongTokenType) => "wrong_token_type",
            ApiError::TokenRejected(RejectReason::Revoked) => "token_revoked",
            ApiError::TokenRejected(RejectReason::SessionAlreadyOpen) => "session_already_open",
            ApiError::TokenRejected(_) => "invalid_token",
            ApiError::ReplayStoreUnavailable => "replay_store_unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::InsufficientCredits => "insufficient_credits",
            ApiError::TooManySessions => "too_many_sessions",
            ApiError::UpstreamUnavailable => "upstream_unavailable",
            ApiError::Unexpected(_) => "internal_error",
        }
    }

    /// The message a client sees; for a refused token it names the reason.
    pub fn message(&self) -> String {
        match self {
            ApiError::TokenRejected(reason) => {
                format!("{} ({})", reason.describe(), reason.as_str())
            }
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The cause of an unexpected error goes to the log, never to the client.
    pub fn log_if_unexpected(&self) {
        if let ApiError::Unexpected(cause) = self {
            log::error!("unexpected error: {cause:#}");
        }
    }

    /// `{"error":{"code","message"}}` with the error's status; does not log.
    pub fn canonical_response(&self) -> HttpResponse {
        let message = self.message();
        HttpResponse::build(self.status_code()).json(Envelope {
            error: Body {
                code: self.code(),
                message: &message,
            },
        })
    }
}

/// The cause goes to the log; the client gets 503 `replay_store_unavailable`.
impl From<StoreUnavailable> for ApiError {
    fn from(cause: StoreUnavailable) -> Self {
        log::warn!("{cause}");
        ApiError::ReplayStoreUnavailable
    }
}

impl From<RedeemError> for ApiError {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Rejected(reason) => ApiError::TokenRejected(reason),
            RedeemError::InsufficientCredits => ApiError::InsufficientCredits,
            RedeemError::StoreUnavailable(cause) => cause.into(),
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidParam(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingApiKey(_) | ApiError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MissingToken => StatusCode::UNAUTHORIZED,
            ApiError::TokenRejected(
                RejectReason::AlreadyUsed | RejectReason::SessionAlreadyOpen,
            ) => StatusCode::CONFLICT,
            ApiError::TokenRejected(RejectReason::WrongOrg | RejectReason::WrongTokenType) => {
                StatusCode::FORBIDDEN
            }
            ApiError::TokenRejected(_) => StatusCode::UNAUTHORIZED,
            ApiError::ReplayStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
            ApiError::TooManySessions | ApiError::UpstreamUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.log_if_unexpected();
        self.canonical_response()
    }
}
