//! `GET /api/v1/token?ttl=` as in the Stream Token API page: `ttl` 1–300, default 60; responds
//! `{success, token, ttl}` with `x-ratelimit-*` headers; the 401, 402, 429 and 500 bodies are the
//! page's, word for word (and in its field order).

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::issuance::issue;
use crate::http::query;
use crate::http::state::AppState;
use crate::input::Within;
use crate::token::mint::{MintRequest, MintedToken};
use crate::token::params::{ExpiresIn, TokenType};

pub const TOKEN_TYPE: &str = "stream";
pub const INVALID_TTL: &str = "Invalid TTL value. Must be between 1 and 300 seconds";
const UNAUTHORIZED: &str = "Unauthorized. Please provide a valid secret key.";
const NO_CREDITS: &str = "No credits remaining. Please add credits to continue using the service.";
const RATE_LIMITED: &str = "Rate limit exceeded";
const FAILED: &str = "Failed to create token, please try again or contact support.";

pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    issue(&req, &state, parse(&req))
        .await
        .respond(render_token, render_error)
}

/// `ttl` is shared with the chat route: 1–300, default 60.
pub const TTL: Within<ExpiresIn> = ExpiresIn::within("ttl", 1, 300);
const DEFAULT_TTL: ExpiresIn = ExpiresIn::fixed(60);

pub fn parse_ttl(req: &HttpRequest) -> Result<ExpiresIn, ApiError> {
    Ok(query::integer(req, &TTL)?.unwrap_or(DEFAULT_TTL))
}

fn parse(req: &HttpRequest) -> Result<MintRequest, ApiError> {
    Ok(MintRequest {
        token_type: TokenType::fixed(TOKEN_TYPE),
        expires_in: parse_ttl(req)?,
        ..MintRequest::default()
    })
}

fn render_token(minted: &MintedToken) -> HttpResponse {
    super::render_success(minted, super::Lifetime::Ttl)
}

/// `{"error", "success": false, "code"?}`, fields in the page's order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// A bad `ttl` is the one error the page shows with `success` first.
#[derive(Serialize)]
struct InvalidTtlBody {
    success: bool,
    error: &'static str,
    code: &'static str,
}

pub(super) fn render_error(e: &ApiError) -> HttpResponse {
    let status = e.status_code();
    let message = e.message();
    let (error, code) = match e {
        ApiError::InvalidParam(_) | ApiError::InvalidRequest(_) => {
            return HttpResponse::build(status).json(InvalidTtlBody {
                success: false,
                error: INVALID_TTL,
                code: "invalid_ttl",
            })
        }
        ApiError::MissingApiKey(_) | ApiError::InvalidApiKey => (UNAUTHORIZED, None),
        ApiError::InsufficientCredits => (NO_CREDITS, Some("invalid_billing")),
        ApiError::RateLimited { .. } => (RATE_LIMITED, None),
        ApiError::Unexpected(_) => (FAILED, Some("internal_server_error")),
        other => (message.as_str(), Some(other.code())),
    };
    HttpResponse::build(status).json(ErrorBody {
        error,
        success: false,
        code,
    })
}
