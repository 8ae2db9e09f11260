//! `GET /v1/usage`: the calling key's org, its counters and credit balance.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Serialize)]
struct UsageBody<'a> {
    org: &'a str,
    minted: u64,
    redeemed: u64,
    /// `null` when the org has no credit allowance (unlimited).
    credits_remaining: Option<u64>,
}

pub async fn usage(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let org = &caller.0.org;
    let usage = state
        .redeemer
        .store()
        .usage(org)
        .await
        .inspect_err(|_| state.redeemer.count_store_error())?;
    let limit = state.keyring.snapshot().api_keys().credit_limit(org);
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(UsageBody {
            org,
            minted: usage.minted,
            redeemed: usage.redeemed,
            credits_remaining: limit.map(|limit| limit.saturating_sub(usage.redeemed)),
        }))
}
