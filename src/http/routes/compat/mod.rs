//! Vendor-compatible minting routes. Each module is one wire format: it parses the vendor's
//! request into a `MintRequest`, runs the shared issuance pipeline, and renders the vendor's
//! response and error bodies. Each family can be switched off (`STREAMTOKEN_COMPAT`).

mod assemblyai;
mod chat_token;
mod elevenlabs;
mod stream_token;

use crate::json_out::JsonObject;
use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use super::{endpoint, Methods, Render};
use crate::settings::CompatFamilies;
use crate::token::mint::MintedToken;

pub fn configure(cfg: &mut web::ServiceConfig, families: CompatFamilies) {
    let mut served: Vec<(&str, Render, Methods)> = Vec::new();
    if families.assemblyai {
        let get = (Method::GET, web::to(assemblyai::token));
        served.push(("/v3/token", assemblyai::render_error, vec![get]));
    }
    if families.elevenlabs {
        let post = (Method::POST, web::to(elevenlabs::token));
        served.push((
            "/v1/single-use-token/{token_type}",
            elevenlabs::render_error,
            vec![post],
        ));
    }
    if families.stream {
        let get = (Method::GET, web::to(stream_token::token));
        served.push(("/api/v1/token", stream_token::render_error, vec![get]));
    }
    if families.chat {
        // The page's Node example calls `/api/api/v1/chat/token`; serve it so that code works too.
        for path in ["/api/v1/chat/token", "/api/api/v1/chat/token"] {
            let get = (Method::GET, web::to(chat_token::token));
            let post = (Method::POST, web::to(chat_token::token));
            served.push((path, chat_token::render_error, vec![get, post]));
        }
    }
    for (path, render, routes) in served {
        cfg.service(endpoint(path, render, routes));
    }
}

/// The name of the lifetime field, the one difference between the stream and chat pages' bodies.
#[derive(Clone, Copy)]
enum Lifetime {
    Ttl,
    ExpiresIn,
}

/// The success body the stream and chat pages share, `{success: true, token, <lifetime>}` (see
/// `json_out` for why not serde).
fn render_success(minted: &MintedToken, lifetime: Lifetime) -> HttpResponse {
    let name = match lifetime {
        Lifetime::Ttl => "ttl",
        Lifetime::ExpiresIn => "expires_in",
    };
    JsonObject::with_capacity(minted.token.len() + 48)
        .boolean("success", true)
        .string("token", &minted.token)
        .integer(name, minted.lifetime_seconds())
        .ok()
}
