use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;

/// Liveness: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: the replay store answers, so redemptions can be served.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.redeemer.store();
    store
        .ping()
        .await
        .inspect_err(|_| state.redeemer.count_store_error())?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "replay_store": store.backend() })))
}
