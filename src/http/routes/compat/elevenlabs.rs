//! `POST /v1/single-use-token/{token_type}` as in ElevenLabs' "Create Single Use Token":
//! `token_type` ∈ `realtime_scribe`, `tts_websocket`; key in `xi-api-key`; responds `{token}`,
//! redeemable for 15 minutes. Request validation happens before authentication, as in the
//! page's framework (FastAPI), and answers 422 `{"detail":[{type, loc, msg, input, ctx?}]}`;
//! other errors are `{"detail":{"status","message"}}`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::http::auth;
use crate::http::error::ApiError;
use crate::http::issuance::issue;
use crate::http::state::AppState;
use crate::token::mint::MintRequest;
use crate::token::params::{ExpiresIn, TokenType};

pub const TOKEN_TYPES: [&str; 2] = ["realtime_scribe", "tts_websocket"];
/// Redeemable for 15 minutes, as the page says.
const LIFETIME: ExpiresIn = ExpiresIn::fixed(15 * 60);
const EXPECTED: &str = "'realtime_scribe' or 'tts_websocket'";

pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let token_type = req.match_info().query("token_type").to_owned();
    let problems = validate(&req, &token_type);
    if !problems.is_empty() {
        return HttpResponse::UnprocessableEntity().json(ValidationError { detail: problems });
    }
    issue(&req, &state, mint_request(&token_type))
        .await
        .respond(super::super::render_token_only, render_error)
}

fn mint_request(token_type: &str) -> Result<MintRequest, ApiError> {
    Ok(MintRequest {
        token_type: TokenType::parse(token_type)?,
        expires_in: LIFETIME,
        ..MintRequest::default()
    })
}

#[derive(Serialize)]
struct ValidationError {
    detail: Vec<Problem>,
}

/// One entry of a FastAPI (pydantic v2) validation error.
#[derive(Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    loc: [&'static str; 2],
    msg: String,
    input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ctx: Option<Expected>,
}

#[derive(Serialize)]
struct Expected {
    expected: &'static str,
}

fn validate(req: &HttpRequest, token_type: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !TOKEN_TYPES.contains(&token_type) {
        problems.push(Problem {
            kind: "enum",
            loc: ["path", "token_type"],
            msg: format!("Input should be {EXPECTED}"),
            input: Some(token_type.chars().take(256).collect()),
            ctx: Some(Expected { expected: EXPECTED }),
        });
    }
    if auth::presented_key(req).is_none() {
        problems.push(Problem {
            kind: "missing",
            loc: ["header", "xi-api-key"],
            msg: "Field required".into(),
            input: None,
            ctx: None,
        });
    }
    problems
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    detail: Status<'a>,
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    message: String,
}

pub(super) fn render_error(e: &ApiError) -> HttpResponse {
    HttpResponse::build(e.status_code()).json(ErrorBody {
        detail: Status {
            status: e.code(),
            message: e.message(),
        },
    })
}
