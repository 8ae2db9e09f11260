//! `GET /v3/token` as in AssemblyAI's "Generate streaming token": query `expires_in_seconds`
//! (required, 1–600) and `max_session_duration_seconds` (60–10800, default 10800); responds
//! `{token, expires_in_seconds}`; errors are `{error, code?, details?}`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::error::ApiError;
use crate::issuance::issue;
use crate::mint::{MintRequest, MintedToken};
use crate::params::{ExpiresIn, SessionDuration, TokenType};
use crate::query;
use crate::startup::AppState;

pub const TOKEN_TYPE: &str = "realtime";

pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    issue(&req, &state, parse(&req))
        .await
        .respond(render_token, render_error)
}

fn parse(req: &HttpRequest) -> Result<MintRequest, ApiError> {
    let expires =
        query::integer(req, "expires_in_seconds", 1, 600)?.ok_or(ApiError::InvalidParam {
            param: "expires_in_seconds",
            message: "expires_in_seconds is required: an integer between 1 and 600".into(),
        })?;
    let session =
        query::integer(req, "max_session_duration_seconds", 60, 10_800)?.unwrap_or(10_800);
    Ok(MintRequest {
        token_type: TokenType::fixed(TOKEN_TYPE),
        expires_in: ExpiresIn::parse(expires.into()).map_err(|e| ApiError::InvalidRequest(e.0))?,
        session: SessionDuration::parse(session.into())
            .map_err(|e| ApiError::InvalidRequest(e.0))?,
        ..MintRequest::default()
    })
}

#[derive(Serialize)]
struct TokenBody<'a> {
    token: &'a str,
    expires_in_seconds: i64,
}

fn render_token(minted: &MintedToken) -> HttpResponse {
    HttpResponse::Ok().json(TokenBody {
        token: &minted.token,
        expires_in_seconds: minted.claims.exp - minted.claims.iat,
    })
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
        ApiError::InvalidParam { param, .. } => Some(Details { parameter: param }),
        _ => None,
    };
    HttpResponse::build(e.status_code()).json(ErrorBody {
        error: e.message(),
        code: e.code(),
        details,
    })
}
