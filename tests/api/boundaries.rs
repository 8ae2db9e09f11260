//! Exact boundaries that deliberate bugs once slipped past every other test: the verifier's own
//! 8 KiB cap (which `/v1/stream` and the embeddable extractor rely on), the exact lifetime of a
//! replay entry against the last second its token verifies, and the demo's absence.

use std::sync::Arc;

use actix_web::{test as actix_test, web, App, HttpResponse};
use jsonwebtoken::{Algorithm, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::gateway::{Redeemed, Redeemer};
use streamtoken::settings::{DemoMode, RateQuota, TokenSettings};
use streamtoken::store::{MemoryStore, SharedStore};
use streamtoken::token::mint::MintRequest;
use streamtoken::token::verify::MAX_TOKEN_BYTES;
use uuid::Uuid;

use crate::support::app::{spawn_app, spawn_app_with, spawn_app_with_redis, Options, TestApp};
use crate::support::fields::now;
use crate::support::redis_server::{RedisReply, RedisServer};
use crate::support::ws::stream_verdict;

/// A token signed with the app's active key whose length is exactly `len` bytes: valid claims
/// plus an unknown `pad` claim (and header field), which verification ignores. Only the size can
/// refuse it.
fn signed_token_of_length(app: &TestApp, len: usize) -> String {
    let keyring = app.keyring().snapshot();
    let key = keyring.active();
    let issued = now();
    let sign = |claim_pad: usize, header_pad: usize| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid().to_owned());
        header.cty = (header_pad > 0).then(|| "x".repeat(header_pad));
        let claims = json!({
            "iss": "streamtoken", "aud": "streamtoken-gateway", "org": "dev",
            "token_type": "realtime", "jti": Uuid::new_v4(), "iat": issued, "exp": issued + 60,
            "max_session_duration_seconds": 60, "pad": "x".repeat(claim_pad),
        });
        jsonwebtoken::encode(&header, &claims, key.encoding()).unwrap()
    };
    // Unpadded base64 never has a length of 4k + 1, so one segment alone cannot reach every
    // total; padding the header too can.
    for header_pad in 0..4 {
        let estimate = len.saturating_sub(sign(0, header_pad).len()) * 3 / 4;
        for claim_pad in estimate.saturating_sub(4)..estimate + 4 {
            let token = sign(claim_pad, header_pad);
            if token.len() == len {
                return token;
            }
        }
    }
    panic!("no signed token of exactly {len} bytes");
}

#[tokio::test]
async fn the_stream_opens_with_a_signed_token_of_8_kib_and_refuses_one_byte_more() {
    // Arrange
    let app = spawn_app().await;
    let at_cap = signed_token_of_length(&app, MAX_TOKEN_BYTES);
    let over_cap = signed_token_of_length(&app, MAX_TOKEN_BYTES + 1);
    assert_eq!((at_cap.len(), over_cap.len()), (8192, 8193));

    // Act
    let (opened, _) = stream_verdict(&app, &at_cap).await;
    let (refused, close) = stream_verdict(&app, &over_cap).await;

    // Assert
    assert_eq!(opened["type"], "session_begins", "{opened}");
    assert_eq!(refused["code"], "invalid_token", "{refused}");
    assert_eq!(close, Some(4001));
}

async fn greet(grant: Redeemed) -> HttpResponse {
    HttpResponse::Ok().body(grant.redemption.claims.org)
}

#[actix_web::test]
async fn the_embeddable_extractor_accepts_a_signed_token_of_8_kib_and_refuses_one_byte_more() {
    // Arrange: a gateway of our own with the app's keyring and a memory store.
    let app = spawn_app().await;
    let store: Arc<dyn SharedStore> = Arc::new(MemoryStore::new());
    let redeemer = Redeemer::new(app.keyring(), &TokenSettings::default(), store);
    let gateway = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(redeemer))
            .route("/stream", web::get().to(greet)),
    )
    .await;
    let request = |token: &str| {
        actix_test::TestRequest::get()
            .uri("/stream")
            .insert_header(("authorization", format!("Bearer {token}")))
            .to_request()
    };

    // Act
    let at_cap = signed_token_of_length(&app, MAX_TOKEN_BYTES);
    let accepted = actix_test::call_service(&gateway, request(&at_cap)).await;
    let over_cap = signed_token_of_length(&app, MAX_TOKEN_BYTES + 1);
    let refused = actix_test::call_service(&gateway, request(&over_cap)).await;

    // Assert
    assert_eq!(accepted.status().as_u16(), 200);
    assert_eq!(refused.status().as_u16(), 401);
    let body: Value = actix_test::read_body_json(refused).await;
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
}

/// A token verifies through the whole second `exp + leeway`; its entry must outlive it.
#[tokio::test]
async fn a_memory_replay_entry_lives_through_the_last_second_its_token_verifies_and_no_longer() {
    // Arrange: a redeemer on a memory store we can sweep by hand.
    let app = spawn_app().await;
    let leeway = TokenSettings::default().leeway_seconds as i64;
    let store = Arc::new(MemoryStore::new());
    let redeemer = Redeemer::new(app.keyring(), &TokenSettings::default(), store.clone());
    let issued = now();
    let token = app.mint_at(MintRequest::default(), issued);
    let exp = issued + i64::from(MintRequest::default().expires_in.get());
    redeemer.redeem(&token).await.expect("first redemption");

    // Act + Assert: swept as of the last second a gateway whose clock lags ours by the
    // leeway could still verify (exp + 2 × leeway on our clock), the entry stays.
    store.sweep_expired(exp + 2 * leeway + 1);
    assert_eq!(
        store.len(),
        1,
        "the entry must cover second exp + 2 × leeway"
    );
    let replay = redeemer.redeem(&token).await;
    assert!(
        matches!(
            replay,
            Err(streamtoken::admission::redeem::RedeemError::Rejected(
                streamtoken::token::claims::RejectReason::AlreadyUsed
            ))
        ),
        "{replay:?}"
    );
    // One second later it may go: the store holds no more than tokens that can still verify.
    store.sweep_expired(exp + 2 * leeway + 2);
    assert_eq!(store.len(), 0);
}

#[tokio::test]
async fn a_redis_replay_entry_expires_one_second_after_the_last_second_any_gateway_within_the_leeway_verifies(
) {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_with_redis(&redis.url()).await;
    let leeway = app.settings.token.leeway_seconds as i64;
    let issued = now();
    let token = app.mint_at(MintRequest::default(), issued);
    let exp = issued + i64::from(MintRequest::default().expires_in.get());

    // Act
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);

    // Assert: EXPIRETIME is the absolute unix second Redis deletes the key at.
    let jti = app
        .state
        .redeemer
        .verify(&token)
        .expect("still verifies")
        .jti;
    let prefix = &app.settings.redis.as_ref().unwrap().key_prefix;
    let key = format!("{prefix}:{{dev}}:use:{jti}");
    assert_eq!(
        redis.command(&["EXPIRETIME", &key]),
        RedisReply::Int(exp + 2 * leeway + 1)
    );
}

/// What `GET /demo` and `POST /demo/token` answer.
async fn demo_statuses(app: &TestApp) -> [StatusCode; 2] {
    let page = app.get("/demo").await.status();
    [page, post_demo_token(app).await.status()]
}

async fn post_demo_token(app: &TestApp) -> reqwest::Response {
    let request = app.client.post(app.url("/demo/token"));
    request.send().await.expect("request failed")
}

#[tokio::test]
async fn the_demo_answers_404_when_switched_off_even_with_the_dev_key() {
    // Arrange
    let app = spawn_app_with(Options {
        demo: DemoMode::Off,
        ..Options::default()
    })
    .await;

    // Act
    let answers = demo_statuses(&app).await;

    // Assert
    assert_eq!(answers, [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND]);
}

#[tokio::test]
async fn the_demo_answers_404_once_the_dev_key_is_gone_from_the_keyring() {
    // Arrange: the dev key removed from the keys file, then a reload (as SIGHUP does).
    let app = spawn_app().await;
    assert_eq!(app.get("/demo").await.status(), StatusCode::OK);
    let path = app.keys_path().join("api_keys.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["api_keys"]
        .as_array_mut()
        .unwrap()
        .retain(|record| record["org"] != "dev");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    app.reload_keys();

    // Act
    let answers = demo_statuses(&app).await;

    // Assert
    assert_eq!(answers, [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND]);
}

#[tokio::test]
async fn the_demo_mints_under_the_dev_orgs_rate_limit_like_every_minting_route() {
    // Arrange: the dev org may mint once a minute; its API key spends that first.
    let app = spawn_app_with(Options {
        rate_limit: RateQuota::per_minute(1),
        ..Options::default()
    })
    .await;
    assert_eq!(app.mint(json!({})).await.status(), StatusCode::OK);

    // Act
    let demo = post_demo_token(&app).await;

    // Assert
    assert_eq!(demo.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(demo.headers().contains_key("retry-after"));
    let body: Value = demo.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
}
