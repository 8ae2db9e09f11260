//! Vendor-compatible minting routes. Each module is one wire format: it parses the vendor's
//! request into a `MintRequest`, runs the shared issuance pipeline, and renders the vendor's
//! response and error bodies. Each family can be switched off (`STREAMTOKEN_COMPAT`).

mod assemblyai;
mod chat_token;
mod elevenlabs;
mod stream_token;

use actix_web::http::Method;
use actix_web::web;

use super::endpoint;
use crate::settings::CompatFamilies;

pub fn configure(cfg: &mut web::ServiceConfig, families: CompatFamilies) {
    if families.assemblyai {
        cfg.service(endpoint(
            "/v3/token",
            assemblyai::render_error,
            vec![(Method::GET, web::to(assemblyai::token))],
        ));
    }
    if families.elevenlabs {
        cfg.service(endpoint(
            "/v1/single-use-token/{token_type}",
            elevenlabs::render_error,
            vec![(Method::POST, web::to(elevenlabs::token))],
        ));
    }
    if families.stream {
        cfg.service(endpoint(
            "/api/v1/token",
            stream_token::render_error,
            vec![(Method::GET, web::to(stream_token::token))],
        ));
    }
    if families.chat {
        // The page's Node example calls `/api/api/v1/chat/token`; serve it so that code works too.
        for path in ["/api/v1/chat/token", "/api/api/v1/chat/token"] {
            cfg.service(endpoint(
                path,
                chat_token::render_error,
                vec![
                    (Method::GET, web::to(chat_token::token)),
                    (Method::POST, web::to(chat_token::token)),
                ],
            ));
        }
    }
}
