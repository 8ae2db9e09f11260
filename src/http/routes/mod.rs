//! HTTP surfaces. Each module is one surface; shared behaviour lives in the cores they call.

mod compat;
mod demo;
mod forward_auth;
mod ops;
mod proxy;
mod revoke;
mod sessions;
mod stream;
mod tokens;
mod usage;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse, Resource, Route};

use crate::http::error::ApiError;
use crate::json_out::JsonObject;
use crate::settings::{CompatFamilies, ProxyRoute};
use crate::token::mint::MintedToken;

pub fn configure(
    cfg: &mut web::ServiceConfig,
    compat_families: CompatFamilies,
    proxies: &[ProxyRoute],
) {
    let canonical = ApiError::canonical_response;
    for route in proxies {
        let route = std::sync::Arc::new(route.clone());
        let path = route.path.clone();
        let relay = web::to(move |req, body, state| proxy::relay(req, body, state, route.clone()));
        cfg.service(endpoint(&path, canonical, vec![(Method::GET, relay)]));
    }
    for (path, method, route) in [
        ("/v1/tokens", Method::POST, web::to(tokens::mint)),
        ("/v1/tokens/redeem", Method::POST, web::to(tokens::redeem)),
        (
            "/v1/tokens/introspect",
            Method::POST,
            web::to(tokens::introspect),
        ),
        ("/v1/tokens/revoke", Method::POST, web::to(revoke::revoke)),
        ("/v1/usage", Method::GET, web::to(usage::usage)),
        ("/v1/sessions", Method::GET, web::to(sessions::sessions)),
        ("/v1/stream", Method::GET, web::to(stream::stream)),
        ("/healthz", Method::GET, web::to(ops::healthz)),
        ("/readyz", Method::GET, web::to(ops::readyz)),
        ("/metrics", Method::GET, web::to(ops::metrics)),
        ("/openapi.yaml", Method::GET, web::to(ops::openapi)),
        ("/demo", Method::GET, web::to(demo::page)),
        ("/demo/token", Method::POST, web::to(demo::token)),
    ] {
        cfg.service(endpoint(path, canonical, vec![(method, route)]));
    }
    // Proxies differ in the method of their auth request (some keep the client's): serve all.
    cfg.service(
        web::resource("/v1/forward-auth").route(web::route().to(forward_auth::forward_auth)),
    );
    compat::configure(cfg, compat_families);
}

/// `{"token": "…"}`, the whole success body of the ElevenLabs route and of the demo's.
fn render_token_only(minted: &MintedToken) -> HttpResponse {
    JsonObject::with_capacity(minted.token.len() + 16)
        .string("token", &minted.token)
        .ok()
}

/// How a surface renders an error in its own envelope.
type Render = fn(&ApiError) -> HttpResponse;
/// The methods a resource serves, each with its handler.
type Methods = Vec<(Method, Route)>;

/// A resource serving `routes`, whose wrong-method answer is a 405 in the surface's own
/// envelope with the `Allow` header RFC 9110 asks for (not actix's empty 405).
fn endpoint(path: &str, render: Render, routes: Methods) -> Resource {
    let allow = routes
        .iter()
        .map(|(method, _)| method.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let resource = routes
        .into_iter()
        .fold(web::resource(path), |resource, (method, route)| {
            resource.route(route.method(method))
        });
    resource.default_service(web::to(move || {
        let allow = allow.clone();
        async move {
            let mut response = render(&ApiError::MethodNotAllowed);
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        }
    }))
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
