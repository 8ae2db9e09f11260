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

/// Readiness: the shared store answers on every node that holds keys and its clock agrees with
/// ours within the leeway, so redemptions can be served. The body says which part failed.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let health = state.store.health().await;
    if let Some(skew) = health.clock_skew_seconds {
        state.metrics.store_clock_skew(skew);
    }
    let leeway = state.leeway_seconds;
    let mut body = json!({ "replay_store": health.backend });
    if !health.nodes.is_empty() {
        body["nodes"] = json!(health.nodes);
    }
    if let Some(skew) = health.clock_skew_seconds {
        body["clock_skew_seconds"] = json!(skew);
    }
    if health.ready(leeway) {
        body["status"] = json!("ready");
        HttpResponse::Ok().json(body)
    } else {
        state.metrics.store_error();
        let reasons = health.reasons(leeway);
        log::warn!("not ready: {}", reasons.join("; "));
        body["status"] = json!("unavailable");
        body["error"] = json!({
            "code": "replay_store_unavailable",
            "message": format!("the replay store cannot serve redemptions: {}", reasons.join("; ")),
        });
        body["reasons"] = json!(reasons);
        HttpResponse::ServiceUnavailable().json(body)
    }
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
