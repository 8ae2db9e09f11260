//! `GET /v1/usage`: the calling key's org, its counters and credit balance.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::tenancy::credits;

#[derive(Serialize)]
struct UsageBody<'a> {
    org: &'a str,
    minted: u64,
    redeemed: u64,
    /// `null` when the org has no credit allowance (unlimited).
    credits_remaining: Option<u64>,
}

/// The caller's org, or with `?org=` another org an operator key (`--any-org`) acts for.
pub async fn usage(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.readable_org(&req)?;
    let org = org.as_str();
    let usage = state
        .store
        .usage(org)
        .await
        .inspect_err(|_| state.metrics.store_error())?;
    let allowance = state.keyring.snapshot().api_keys().credit_limit(org);
    Ok(HttpResponse::Ok().json(UsageBody {
        org,
        minted: usage.minted,
        redeemed: usage.redeemed,
        credits_remaining: credits::remaining(allowance, &usage),
    }))
}
