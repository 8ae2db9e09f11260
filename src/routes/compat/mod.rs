//! Vendor-compatible minting routes. Each module is one wire format: it parses the vendor's
//! request into a `MintRequest`, runs the shared issuance pipeline, and renders the vendor's
//! response and error bodies. Each family can be switched off (`STREAMTOKEN_COMPAT`).

mod assemblyai;
mod chat_token;
mod elevenlabs;
mod stream_token;

use actix_web::web;

use super::resource_rendering as resource;
use crate::settings::CompatFamilies;

pub fn configure(cfg: &mut web::ServiceConfig, families: CompatFamilies) {
    if families.assemblyai {
        cfg.service(
            resource("/v3/token", assemblyai::render_error).route(web::get().to(assemblyai::token)),
        );
    }
    if families.elevenlabs {
        cfg.service(
            resource(
                "/v1/single-use-token/{token_type}",
                elevenlabs::render_error,
            )
            .route(web::post().to(elevenlabs::token)),
        );
    }
    if families.stream {
        cfg.service(
            resource("/api/v1/token", stream_token::render_error)
                .route(web::get().to(stream_token::token)),
        );
    }
    if families.chat {
        // The page's Node example calls `/api/api/v1/chat/token`; serve it so that code works too.
        for path in ["/api/v1/chat/token", "/api/api/v1/chat/token"] {
            cfg.service(
                resource(path, chat_token::render_error)
                    .route(web::get().to(chat_token::token))
                    .route(web::post().to(chat_token::token)),
            );
        }
    }
}
