//! `GET /demo`: a self-contained page that walks the flow as a real frontend would, and
//! `POST /demo/token`, its "backend", which mints as the dev key without asking for one.
//!
//! Both exist only with `STREAMTOKEN_DEMO=on` (allowed on a loopback bind address only) while
//! the keyring holds the dev key `keys init` creates; the token route runs the same minting
//! pipeline as every other, so the dev org's rate limit and credits apply.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::issuance::issue_as;
use crate::http::state::AppState;
use crate::settings::DemoMode;
use crate::token::mint::MintRequest;

const PAGE: &str = include_str!("demo.html");

/// The dev key the demo mints as, while the demo is on.
fn dev_caller(state: &AppState) -> Option<Caller> {
    if state.demo != DemoMode::On {
        return None;
    }
    let keyring = state.keyring.snapshot();
    keyring.api_keys().dev_key().cloned().map(Caller)
}

pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    dev_caller(&state).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE))
}

pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(dev) = dev_caller(&state) else {
        return ApiError::NotFound.canonical_response();
    };
    issue_as(&req, &state, Ok(dev), Ok(MintRequest::default()))
        .await
        .respond(super::render_token_only, ApiError::canonical_response)
}
