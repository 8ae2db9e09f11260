//! `GET /v3/token` as in AssemblyAI's "Generate streaming token": query `expires_in_seconds`
//! (required, 1–600) and `max_session_duration_seconds` (60–10800, default 10800); responds
//! `{token, expires_in_seconds}`; errors are `{error, code?, details?}`.

use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::issuance::issue;
use crate::http::query;
use crate::http::state::WorkerState;
use crate::input::{InvalidParam, Within};
use crate::json_out::JsonObject;
use crate::token::mint::{MintRequest, MintedToken};
use crate::token::params::{ExpiresIn, SessionDuration, TokenType};

pub const TOKEN_TYPE: &str = "realtime";
const EXPIRES_IN: Within<ExpiresIn> = ExpiresIn::within("expires_in_seconds", 1, 600);
const SESSION: Within<SessionDuration> =
    SessionDuration::within("max_session_duration_seconds", 60, 10_800);
const DEFAULT_SESSION: SessionDuration = SessionDuration::fixed(10_800);

pub async fn token(req: HttpRequest, state: WorkerState) -> HttpResponse {
    issue(&req, &state, parse(&req))
        .await
        .respond(render_token, render_error)
}

fn parse(req: &HttpRequest) -> Result<MintRequest, ApiError> {
    let expires_in = query::integer(req, &EXPIRES_IN)?.ok_or_else(|| {
        InvalidParam::new(
            "expires_in_seconds",
            "expires_in_seconds is required: an integer between 1 and 600",
        )
    })?;
    Ok(MintRequest {
        token_type: TokenType::fixed(TOKEN_TYPE),
        expires_in,
        session: query::integer(req, &SESSION)?.unwrap_or(DEFAULT_SESSION),
        ..MintRequest::default()
    })
}

/// `{token, expires_in_seconds}` (see `json_out` for why not serde).
fn render_token(minted: &MintedToken) -> HttpResponse {
    JsonObject::with_capacity(minted.token.len() + 48)
        .string("token", &minted.token)
        .integer("expires_in_seconds", minted.lifetime_seconds())
        .ok()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Serialize)]
struct Details {
    parameter: &'static str,
}

pub(super) fn render_error(e: &ApiError) -> HttpResponse {
    let details = match e {
        ApiError::InvalidParam(invalid) => Some(Details {
            parameter: invalid.field,
        }),
        _ => None,
    };
    HttpResponse::build(e.status_code()).json(ErrorBody {
        error: e.message(),
        code: e.code(),
        details,
    })
}
