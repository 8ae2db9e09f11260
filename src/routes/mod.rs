//! HTTP surfaces. Each module is one surface; shared behaviour lives in the cores they call.

mod compat;
mod demo;
mod health;
pub mod stream;
mod tokens;
mod usage;

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::settings::CompatFamilies;

pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub fn configure(cfg: &mut web::ServiceConfig, compat_families: CompatFamilies) {
    cfg.service(resource("/v1/tokens").route(web::post().to(tokens::mint)))
        .service(resource("/v1/tokens/redeem").route(web::post().to(tokens::redeem)))
        .service(resource("/v1/tokens/introspect").route(web::post().to(tokens::introspect)))
        .service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/metrics").route(web::get().to(crate::metrics::metrics)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(resource("/v1/usage").route(web::get().to(usage::usage)))
        .service(resource("/v1/stream").route(web::get().to(stream::stream)))
        .service(resource("/demo").route(web::get().to(demo::page)))
        .service(resource("/demo/token").route(web::post().to(demo::token)))
        .service(resource("/openapi.yaml").route(web::get().to(openapi)));
    compat::configure(cfg, compat_families);
}

/// A resource whose wrong-method answer is a JSON error, not actix's empty 405.
fn resource(path: &str) -> actix_web::Resource {
    resource_rendering(path, ApiError::canonical_response)
}

/// A resource whose wrong-method answer is rendered in its surface's own envelope.
fn resource_rendering(path: &str, render: fn(&ApiError) -> HttpResponse) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        render(&ApiError::MethodNotAllowed)
    }))
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(OPENAPI_YAML)
}
