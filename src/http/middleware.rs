//! What wraps every request: timing into the request-duration histogram, and the
//! `Cache-Control: no-store` every response carries (tokens, verdicts, usage and errors must
//! never sit in a shared cache; a handler may set its own value, none does today).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::web;

use crate::http::state::AppState;

pub fn no_store() -> DefaultHeaders {
    DefaultHeaders::new().add((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

/// Times every request. The route label is the matched pattern (`/v1/single-use-token/{token_type}`),
/// or `unmatched`, so label cardinality stays bounded whatever clients send.
pub async fn time_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // Static names, so nothing is copied to outlive the request.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.call(req).await?;
    // State and route are read from the request the response carries, not taken before the
    // call: cloning the shared `Arc<Metrics>` for every request made both workers write its
    // reference count, a cache line they then passed back and forth.
    let request = response.request();
    if let Some(state) = request.app_data::<web::Data<AppState>>() {
        let route = request.match_pattern();
        state.metrics.observe_request(
            route.as_deref().unwrap_or("unmatched"),
            method,
            response.status().as_str(),
            started.elapsed(),
        );
    }
    Ok(response)
}
