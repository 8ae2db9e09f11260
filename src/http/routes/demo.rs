//! `GET /demo`: a self-contained page that walks the flow as a real frontend would, and
//! `POST /demo/token`, its "backend", which mints with the dev org and no API key.
//!
//! Both exist only while the keyring holds the dev key `keys init` creates (and
//! `STREAMTOKEN_DEMO` is not `off`), so a production keyring never serves an unauthenticated
//! minting route.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::DemoMode;
use crate::tenancy::org::Org;
use crate::token::mint::MintRequest;

const PAGE: &str = include_str!("demo.html");

fn enabled(state: &AppState) -> bool {
    state.demo == DemoMode::Auto && state.keyring.snapshot().api_keys().has_dev_key()
}

pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !enabled(&state) {
        return Err(ApiError::NotFound);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE))
}

#[derive(Serialize)]
struct DemoToken {
    token: String,
}

pub async fn token(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !enabled(&state) {
        return Err(ApiError::NotFound);
    }
    let minted = state.minter.mint(&Org::dev(), MintRequest::default())?;
    state
        .metrics
        .minted("/demo/token", &minted.claims.token_type);
    Ok(HttpResponse::Ok().json(DemoToken {
        token: minted.token,
    }))
}
