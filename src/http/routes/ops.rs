//! Operations: liveness, readiness, metrics and the OpenAPI document.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::state::AppState;

pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

/// Liveness: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: the shared store answers, so redemptions can be served.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store
        .ping()
        .await
        .inspect_err(|_| state.metrics.store_error())?;
    Ok(
        HttpResponse::Ok()
            .json(json!({ "status": "ready", "replay_store": state.store.backend() })),
    )
}

/// Per-type volumes are not for the public: with an operations listener, only it serves them.
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state
        .admin_address
        .is_some_and(|admin| req.app_config().local_addr() != admin)
    {
        return Err(ApiError::NotFound);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(OPENAPI_YAML)
}
