//! `GET|POST /api/v1/chat/token?ttl=` as in the chat token page: `ttl` 1–300, default 60; an
//! optional JSON body `{chatbotId, sessionId}` is bound into the token's `ctx`; responds
//! `{success, token, expires_in}`; errors are `{success:false, error:{message, code}}`.
//! The page says no authentication is needed, yet an API key is required: otherwise anyone
//! could mint tokens charged to the org: nothing unauthenticated mints.

use std::collections::BTreeMap;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

use super::stream_token::{parse_ttl, INVALID_TTL, TTL};
use crate::http::error::ApiError;
use crate::http::issuance::issue;
use crate::http::json_body::read_json;
use crate::http::state::AppState;
use crate::token::mint::{MintRequest, MintedToken};
use crate::token::params::{Ctx, TokenType};

pub const TOKEN_TYPE: &str = "chat";

/// The page's body; other fields are ignored, as a client written for the vendor may send them.
#[derive(Debug, Default, Deserialize)]
struct ChatBody {
    #[serde(rename = "chatbotId")]
    chatbot_id: Option<String>,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let parsed = parse(&req, payload).await;
    issue(&req, &state, parsed)
        .await
        .respond(render_token, render_error)
}

async fn parse(req: &HttpRequest, payload: web::Payload) -> Result<MintRequest, ApiError> {
    let expires_in = parse_ttl(req)?;
    let body: ChatBody = if req.method() == Method::POST {
        read_json(req, payload).await?
    } else {
        ChatBody::default()
    };
    let ctx: BTreeMap<String, String> = [
        ("chatbotId", body.chatbot_id),
        ("sessionId", body.session_id),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_owned(), value?)))
    .collect();
    Ok(MintRequest {
        token_type: TokenType::fixed(TOKEN_TYPE),
        expires_in,
        ctx: Ctx::parse(ctx)?,
        ..MintRequest::default()
    })
}

fn render_token(minted: &MintedToken) -> HttpResponse {
    super::render_success(minted, super::Lifetime::ExpiresIn)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: Failure<'a>,
}

#[derive(Serialize)]
struct Failure<'a> {
    message: &'a str,
    code: &'a str,
}

pub(super) fn render_error(e: &ApiError) -> HttpResponse {
    let message = e.message();
    let (message, code) = match e {
        ApiError::InvalidParam(invalid) if invalid.field == TTL.bounds().field => {
            (INVALID_TTL, "invalid_ttl")
        }
        ApiError::MissingApiKey(_) | ApiError::InvalidApiKey => (
            "Unauthorized. Please provide a valid secret key.",
            "unauthorized",
        ),
        ApiError::RateLimited { .. } => ("Rate limit exceeded", "rate_limited"),
        ApiError::InsufficientCredits => (
            "No credits remaining. Please add credits to continue using the service.",
            "insufficient_credits",
        ),
        ApiError::Unexpected(_) => ("Token generation failed", "token_generation_failed"),
        other => (message.as_str(), other.code()),
    };
    HttpResponse::build(e.status_code()).json(ErrorBody {
        success: false,
        error: Failure { message, code },
    })
}
