//! The README's embedding example: an actix-web service that accepts streamtoken tokens.
//! Run with `STREAMTOKEN_KEYS_DIR=keys cargo run --example embed_gateway`.

use actix_web::{web, App, HttpResponse, HttpServer};
use streamtoken::admission::redeem::Redeemer;
use streamtoken::gateway::Redeemed;
use streamtoken::settings::Settings;

/// Runs only after the token verified and one use was consumed; otherwise the client got
/// 401/409/503 in the `{"error":{"code","message"}}` envelope.
async fn transcribe(grant: Redeemed) -> HttpResponse {
    let claims = &grant.redemption.claims;
    // Stop the session at grant.redemption.session_expires_at; bill claims.org.
    HttpResponse::Ok().body(format!(
        "streaming for {} until {}",
        claims.org, grant.redemption.session_expires_at
    ))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let redeemer = web::Data::new(Redeemer::from_settings(&Settings::from_env()?)?);
    HttpServer::new(move || {
        App::new()
            .app_data(redeemer.clone())
            .route("/transcribe", web::get().to(transcribe))
    })
    .bind("127.0.0.1:9000")?
    .run()
    .await?;
    Ok(())
}
