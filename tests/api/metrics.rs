//! `GET /metrics`: a known flow moves each counter by exactly what it did.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::json;
use streamtoken::settings::RateQuota;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{spawn_app_with, spawn_app_with_redis, Options, TestApp};
use crate::support::redis_server::RedisServer;

/// Every sample of the exposition, keyed by `name{labels}` exactly as printed.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("`sample value` lines");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_flow_moves_each_counter_by_exactly_what_it_did() {
    // Arrange: a quota of 3 so the 4th mint is rate limited.
    let app = spawn_app_with(Options {
        rate_limit: RateQuota::per_minute(3),
        ..Options::default()
    })
    .await;
    let before = scrape(&app).await;

    // Act: 2 canonical mints + 1 AssemblyAI mint, then one refused by the rate limit.
    let first = app.mint_token(json!({})).await;
    let second = app.mint_token(json!({"token_type": "tts"})).await;
    let assemblyai = app
        .client
        .get(app.url("/v3/token?expires_in_seconds=60"))
        .header("authorization", &app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(assemblyai.status(), StatusCode::OK);
    let limited = app.mint(json!({})).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    // Redemptions: 2 successes, 1 replay, 1 garbage.
    assert_eq!(app.redeem(&first).await.status(), StatusCode::OK);
    assert_eq!(app.redeem(&second).await.status(), StatusCode::OK);
    assert_eq!(app.redeem(&first).await.status(), StatusCode::CONFLICT);
    assert_eq!(
        app.redeem("not.a.token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let after = scrape(&app).await;

    // Assert
    let moved = |key: &str| sample(&after, key) - sample(&before, key);
    #[rustfmt::skip]
    let expected = [
        (r#"streamtoken_tokens_minted_total{route="/v1/tokens",token_type="realtime"}"#, 1.0),
        (r#"streamtoken_tokens_minted_total{route="/v1/tokens",token_type="tts"}"#, 1.0),
        (r#"streamtoken_tokens_minted_total{route="/v3/token",token_type="realtime"}"#, 1.0),
        (r#"streamtoken_rate_limited_total{route="/v1/tokens"}"#, 1.0),
        (r#"streamtoken_tokens_redeemed_total{token_type="realtime"}"#, 1.0),
        (r#"streamtoken_tokens_redeemed_total{token_type="tts"}"#, 1.0),
        (r#"streamtoken_redemptions_rejected_total{reason="already_used"}"#, 1.0),
        (r#"streamtoken_redemptions_rejected_total{reason="malformed"}"#, 1.0),
        ("streamtoken_replay_store_errors_total", 0.0),
        (r#"streamtoken_http_request_duration_seconds_count{method="POST",route="/v1/tokens",status="200"}"#, 2.0),
        (r#"streamtoken_http_request_duration_seconds_count{method="POST",route="/v1/tokens",status="429"}"#, 1.0),
        (r#"streamtoken_http_request_duration_seconds_count{method="POST",route="/v1/tokens/redeem",status="409"}"#, 1.0),
        (r#"streamtoken_http_request_duration_seconds_count{method="GET",route="/v3/token",status="200"}"#, 1.0),
    ];
    for (key, delta) in expected {
        assert_eq!(moved(key), delta, "{key}");
    }
}

#[tokio::test]
async fn open_stream_sessions_are_counted_while_open() {
    // Arrange
    let app = spawn_app_with(Options::default()).await;
    let token = app.mint_token(json!({})).await;
    let gauge = "streamtoken_stream_sessions_open";
    assert_eq!(sample(&scrape(&app).await, gauge), 0.0);

    // Act: open a session and wait for session_begins.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/v1/stream?token={token}")))
            .await
            .unwrap();
    let begins = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(begins.to_text().unwrap().contains("session_begins"));

    // Assert: one open; back to zero once the client leaves.
    assert_eq!(sample(&scrape(&app).await, gauge), 1.0);
    socket.send(Message::Close(None)).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {}
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sample(&scrape(&app).await, gauge) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never fell back to 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_failed_replay_store_call_is_counted() {
    // Arrange
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_with_redis(&redis.url()).await;
    let token = app.mint_token(json!({})).await;
    let before = sample(&scrape(&app).await, "streamtoken_replay_store_errors_total");

    // Act: Redis goes away; one redemption and one readiness probe fail.
    redis.kill();
    assert_eq!(
        app.redeem(&token).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Assert
    let after = sample(&scrape(&app).await, "streamtoken_replay_store_errors_total");
    assert_eq!(after - before, 2.0);
}

#[tokio::test]
async fn with_an_operations_listener_metrics_answer_there_and_404_on_the_public_port() {
    // Arrange
    let app = spawn_app_with(Options {
        admin_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..Options::default()
    })
    .await;
    let admin = app
        .state
        .admin_address
        .expect("the operations listener is bound");
    app.mint_token(json!({})).await;

    // Act
    let public = app.get("/metrics").await;
    let private = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    assert_eq!(private.status(), StatusCode::OK);
    let page = private.text().await.unwrap();
    assert!(page.contains("streamtoken_tokens_minted_total"), "{page}");
}
