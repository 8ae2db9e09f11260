//! `GET /v1/stream`, the reference streaming gateway, as a WebSocket client sees it: the
//! `session_begins` frame and the echo, one error frame and a close code per refusal, the
//! session's own deadline, idle timeout and heartbeat, the five ways to present a token,
//! graceful shutdown (in-process and the real binary on SIGTERM), a token-free access log, and
//! the `Redeemed` extractor embedded in another actix-web service.
//!
//! The client is tokio-tungstenite. It answers a server Ping with a Pong only while the stream
//! is polled, so a test that means "a client that sends nothing" must not read the socket while
//! it waits (see `wait_for_close_frame_unread`).

use std::ops::RangeInclusive;
use std::time::Duration;

use actix_web::{test as actix_test, web, App, HttpResponse};
use chrono::Utc;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::admission::redeem::Redeemer;
use streamtoken::gateway::Redeemed;
use streamtoken::settings::StreamSettings;
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::token::mint::MintRequest;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::support::app::{
    new_api_key, spawn_app, spawn_app_with, spawn_app_with_redis, Options, TestApp,
};
use crate::support::fields::{keys_of, now, parse_rfc3339, set};
use crate::support::forge::{sign, valid_claims};
use crate::support::keys::init_keys;
use crate::support::process::ServerProcess;
use crate::support::redis_server::RedisServer;
use crate::support::routes::STREAM;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for a frame the server should send promptly.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks at a condition (never for correctness).
const POLL: Duration = Duration::from_millis(10);
/// How long Redis may take to be usable again after it comes back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);

/// Mints with `body` and returns `(token, jti)`.
async fn mint(app: &TestApp, body: Value) -> (String, String) {
    let response = app.mint(body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["jti"].as_str().unwrap().to_owned(),
    )
}

fn ws_url(http_address: &str, path_and_query: &str) -> String {
    format!(
        "{}{path_and_query}",
        http_address.replacen("http://", "ws://", 1)
    )
}

fn query_url(app: &TestApp, token: &str) -> String {
    app.ws_url(&format!("{STREAM}?token={token}"))
}

/// Mints a token and a handshake that presents it in header `name`, written by `value`, instead
/// of the query; returns the handshake and the token's jti.
async fn handshake_presenting(
    app: &TestApp,
    name: header::HeaderName,
    value: impl FnOnce(&str) -> String,
) -> (Request, String) {
    let (token, jti) = mint(app, json!({})).await;
    let mut request = app.ws_url(STREAM).into_client_request().unwrap();
    request
        .headers_mut()
        .insert(name, HeaderValue::from_str(&value(&token)).unwrap());
    (request, jti)
}

async fn connect(request: impl IntoClientRequest + Unpin) -> (Ws, Response) {
    timeout(FRAME_TIMEOUT, connect_async(request))
        .await
        .expect("the WebSocket handshake timed out")
        .expect("the WebSocket handshake failed")
}

async fn open(url: &str) -> Ws {
    connect(url).await.0
}

/// The next frame of any kind (heartbeats included).
async fn next_frame(ws: &mut Ws, within: Duration) -> Message {
    match timeout(within, ws.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(Some(Err(e))) => panic!("WebSocket error while waiting for a frame: {e}"),
        Ok(None) => panic!("the connection ended while waiting for a frame"),
        Err(_) => panic!("no frame within {within:?}"),
    }
}

/// The next text, binary or close frame; Ping and Pong (the heartbeat) are skipped.
async fn next_data(ws: &mut Ws, within: Duration) -> Message {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Message::Ping(_) | Message::Pong(_) => continue,
            message => return message,
        }
    }
}

fn text_json(message: &Message) -> Value {
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .unwrap_or_else(|e| panic!("text frame {text:?} is not JSON: {e}")),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

fn close_of(message: &Message) -> (u16, String) {
    match message {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// After the client sent its close: reads up to the server's answering close (or the end).
///
/// Not to the end of the connection: after a close, actix-http lingers up to its client
/// disconnect timeout (1 s) for the client to drop TCP, while a client waits for the server.
async fn drain(ws: &mut Ws) {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while let Ok(Some(Ok(message))) = timeout_at(deadline, ws.next()).await {
        if let Message::Close(_) = message {
            return;
        }
    }
}

/// Opens `url` and reads the session's `session_begins`; returns both.
async fn begin(url: &str) -> (Ws, Value) {
    let mut ws = open(url).await;
    let begins = expect_session_begins(&mut ws).await;
    (ws, begins)
}

/// A session on a freshly minted token with the default claims, past its `session_begins`.
async fn fresh_session(app: &TestApp) -> Ws {
    let (token, _) = mint(app, json!({})).await;
    begin(&query_url(app, &token)).await.0
}

/// Reads the next data frame, asserting it is a JSON frame of `kind` with exactly `fields`.
async fn expect_frame(ws: &mut Ws, kind: &str, fields: &[&str]) -> Value {
    let frame = text_json(&next_data(ws, FRAME_TIMEOUT).await);
    assert_eq!(keys_of(&frame), set(fields), "{frame}");
    assert_eq!(frame["type"], kind, "{frame}");
    frame
}

/// Reads `session_begins`, asserting its exact shape, and returns it.
async fn expect_session_begins(ws: &mut Ws) -> Value {
    expect_frame(ws, "session_begins", &["type", "session_id", "expires_at"]).await
}

/// Reads `session_begins` and asserts it opens the session of the token `jti`.
async fn expect_session_of(ws: &mut Ws, jti: &str) {
    let begins = expect_session_begins(ws).await;
    assert_eq!(begins["session_id"], jti, "{begins}");
}

/// Asserts a session closed `elapsed` after its `session_begins`, within `window`.
fn assert_closed_after(elapsed: Duration, window: RangeInclusive<Duration>, expected: &str) {
    assert!(
        window.contains(&elapsed),
        "closed {elapsed:?} after session_begins; expected {expected}"
    );
}

/// The next close frame's `(code, reason)`; the client's answering close is sent before this
/// returns (dropping the stream then ends the connection).
async fn expect_close(ws: &mut Ws, within: Duration) -> (u16, String) {
    let close = close_of(&next_data(ws, within).await);
    // tungstenite queued the answering close when it read the server's; this writes it.
    let _ = ws.flush().await;
    close
}

/// A refused token: exactly one JSON error frame, then a close frame. Returns
/// `(error frame, close code, close reason)`.
async fn expect_refusal(ws: &mut Ws) -> (Value, u16, String) {
    let frame = expect_frame(ws, "error", &["type", "code", "message"]).await;
    assert!(
        !frame["message"].as_str().unwrap().is_empty(),
        "an error frame carries a message: {frame}"
    );
    let (code, reason) = expect_close(ws, FRAME_TIMEOUT).await;
    (frame, code, reason)
}

/// Sends `message` and asserts the next data frame is the same message.
async fn assert_echoed(ws: &mut Ws, message: Message) {
    ws.send(message.clone()).await.expect("send");
    let echo = next_data(ws, FRAME_TIMEOUT).await;
    assert_eq!(echo, message, "the frame comes back unchanged");
}

/// Listens (so pings are answered) until `until`; nothing but heartbeats may arrive meanwhile.
async fn assert_open_until(ws: &mut Ws, until: Instant) {
    loop {
        match timeout_at(until, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("the session should still be open, got {other:?}"),
        }
    }
}

/// Waits, without reading through tungstenite (so no automatic Pong goes out), until the
/// server's close frame is in the socket's receive buffer. Server frames are unmasked and the
/// heartbeat pings are `0x89 0x00`, so a byte `0x88` (FIN + opcode close) marks the close frame.
async fn wait_for_close_frame_unread(ws: &Ws, within: Duration) {
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        panic!("a plain ws:// connection was expected");
    };
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        let peeked = timeout_at(deadline, tcp.peek(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no close frame within {within:?}"))
            .expect("peek");
        if buffer[..peeked].contains(&0x88) {
            return;
        }
        assert!(peeked > 0, "the server closed TCP without a close frame");
        assert!(
            Instant::now() < deadline,
            "no close frame within {within:?}"
        );
        sleep(POLL).await;
    }
}

/// A token for this app's `iss`/`aud`, signed with a key the keyring does not hold.
fn token_with_unknown_kid() -> String {
    let secret = b"an-unknown-secret-of-at-least-32-bytes!!";
    sign(&valid_claims(), Algorithm::HS256, "nope", secret)
}

// ---------------------------------------------------------------------------------------------
// A good token: session_begins, then the echo
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_in_the_query_opens_a_session_that_begins_with_session_begins_and_echoes_frames(
) {
    // Arrange
    let app = spawn_app().await;
    let (token, jti) = mint(&app, json!({"max_session_duration_seconds": 600})).await;

    // Act
    let (mut ws, begins) = begin(&query_url(&app, &token)).await;

    // Assert
    assert_eq!(begins["session_id"], jti.as_str(), "{begins}");
    let expires_at = parse_rfc3339(begins["expires_at"].as_str().unwrap());
    let expected = Utc::now() + chrono::Duration::seconds(600);
    let off = (expires_at - expected).num_milliseconds().abs();
    assert!(
        off <= 2_000,
        "expires_at {expires_at} is now + 600 s ({expected}); off by {off} ms"
    );
    assert_echoed(&mut ws, Message::text("hello, stream ✓ {\"json\": true}")).await;
    assert_echoed(
        &mut ws,
        Message::binary(vec![0u8, 1, 2, 127, 128, 254, 255]),
    )
    .await;
    assert_echoed(&mut ws, Message::text("and again")).await;
    ws.close(None).await.unwrap();
    drain(&mut ws).await;
}

#[tokio::test]
async fn a_frame_of_64_kib_is_echoed_and_one_byte_more_ends_the_session_with_1009() {
    // Arrange
    let app = spawn_app().await;
    let mut ws = fresh_session(&app).await;

    // Act + Assert
    assert_echoed(&mut ws, Message::binary(vec![7u8; 64 * 1024])).await;
    ws.send(Message::binary(vec![7u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws, FRAME_TIMEOUT).await;
    assert_eq!(code, 1009, "{reason}");
}

#[tokio::test]
async fn a_text_message_sent_in_fragments_is_echoed_whole() {
    // Arrange: RFC 6455 lets any client split a message into a first frame and continuations.
    let app = spawn_app().await;
    let mut ws = fresh_session(&app).await;
    let fragments = [
        Frame::message("hello, ", OpCode::Data(Data::Text), false),
        Frame::message("fragmented ", OpCode::Data(Data::Continue), false),
        Frame::message("world", OpCode::Data(Data::Continue), true),
    ];

    // Act
    for fragment in fragments {
        ws.send(Message::Frame(fragment)).await.unwrap();
    }
    let echo = timeout(Duration::from_secs(2), next_data(&mut ws, FRAME_TIMEOUT)).await;

    // Assert: `None` means nothing came back within 2 s. tungstenite reassembles fragments, so
    // an echo sent whole or in fragments reads as one message.
    assert_eq!(
        echo.ok(),
        Some(Message::text("hello, fragmented world")),
        "the fragmented message is echoed"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals: one error frame, then a close code that says why
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_refused_token_gets_one_error_frame_and_the_close_code_of_its_reason() {
    // Arrange
    let app = spawn_app().await;
    let (used, _) = mint(&app, json!({})).await;
    // The first session stays open while the same token is presented again.
    let (mut first, _) = begin(&query_url(&app, &used)).await;
    // Issued an hour ago with the default 60 s window: long past exp + the 5 s leeway.
    let expired = app.mint_at(MintRequest::default(), now() - 3600);
    let unknown_kid = token_with_unknown_kid();
    #[rustfmt::skip]
    let cases = [
        // (description, path and query, error code, close code, message mentions)
        ("the same token again", format!("{STREAM}?token={used}"), "token_already_used", 4003, "(already_used)"),
        ("an expired token", format!("{STREAM}?token={expired}"), "token_expired", 4002, "(expired)"),
        ("a garbage token", format!("{STREAM}?token=garbage"), "invalid_token", 4001, "(malformed)"),
        ("no token at all", STREAM.to_owned(), "missing_token", 4001, "no token"),
        ("an empty token", format!("{STREAM}?token="), "missing_token", 4001, "no token"),
        ("a token signed with an unknown kid", format!("{STREAM}?token={unknown_kid}"), "invalid_token", 4001, "(unknown_kid)"),
    ];

    for (description, path, error_code, close_code, mentions) in cases {
        // Act
        let mut ws = open(&app.ws_url(&path)).await;
        let (frame, code, reason) = expect_refusal(&mut ws).await;

        // Assert
        assert_eq!(frame["code"], error_code, "{description}: {frame}");
        let message = frame["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{description}: {message:?} mentions {mentions:?}"
        );
        assert_eq!(code, close_code, "{description}: reason {reason:?}");
        assert!(!reason.is_empty(), "{description}: the close has a reason");
    }

    // The refusals did not disturb the session the token opened.
    assert_echoed(&mut first, Message::text("still here")).await;
}

#[tokio::test]
async fn the_same_token_twice_gets_token_already_used_and_close_4003() {
    // Arrange
    let app = spawn_app().await;
    let (token, _) = mint(&app, json!({})).await;
    let (mut first, _) = begin(&query_url(&app, &token)).await;
    first.close(None).await.unwrap();
    drain(&mut first).await;

    // Act
    let mut again = open(&query_url(&app, &token)).await;
    let (frame, code, reason) = expect_refusal(&mut again).await;

    // Assert
    assert_eq!(frame["code"], "token_already_used", "{frame}");
    assert_eq!(code, 4003);
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn a_token_of_an_org_without_credits_left_gets_insufficient_credits_and_close_4402() {
    // Arrange: org "acme" may redeem once.
    let app = spawn_app().await;
    let key = app.add_api_key_with(new_api_key("acme", &[Scope::Mint], None, Some(1)));
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let response = app.post_json("/v1/tokens", Some(&key), &json!({})).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let (_first, _) = begin(&query_url(&app, &tokens[0])).await;

    // Act
    let mut second = open(&query_url(&app, &tokens[1])).await;
    let (frame, code, reason) = expect_refusal(&mut second).await;

    // Assert
    assert_eq!(frame["code"], "insufficient_credits", "{frame}");
    assert_eq!(code, 4402, "{reason}");
    assert!(!reason.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The session's deadline
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_session_closes_with_4008_when_max_session_duration_is_reached() {
    // Arrange
    let app = spawn_app().await;
    let (token, _) = mint(&app, json!({"max_session_duration_seconds": 2})).await;
    let (mut ws, _) = begin(&query_url(&app, &token)).await;
    let began = Instant::now();

    // Act
    let (code, reason) = expect_close(&mut ws, Duration::from_secs(5)).await;

    // Assert
    let elapsed = began.elapsed();
    assert_eq!(
        (code, reason.as_str()),
        (4008, "max session duration reached")
    );
    assert_closed_after(
        elapsed,
        Duration::from_secs(1)..=Duration::from_secs(3),
        "about 2 s",
    );
}

#[tokio::test]
async fn a_session_outlives_the_redemption_window_of_its_token_and_ends_at_its_own_deadline() {
    // Arrange: no leeway, so a 1 s redemption window really is over after 2 s.
    let app = spawn_app_with(Options {
        leeway_seconds: 0,
        ..Default::default()
    })
    .await;
    let (token, _) = mint(
        &app,
        json!({"expires_in_seconds": 1, "max_session_duration_seconds": 3}),
    )
    .await;
    let (mut ws, _) = begin(&query_url(&app, &token)).await;
    let began = Instant::now();

    // Act: listen for 2 s, check the token can no longer be redeemed, then use the session.
    assert_open_until(&mut ws, began + Duration::from_secs(2)).await;
    let introspection: Value = app.introspect(&token).await.json().await.unwrap();

    // Assert
    assert_eq!(introspection["active"], false, "{introspection}");
    assert_eq!(introspection["reason"], "expired", "{introspection}");
    assert_echoed(&mut ws, Message::text("still streaming after the window")).await;
    let (code, reason) = expect_close(&mut ws, Duration::from_secs(4)).await;
    let elapsed = began.elapsed();
    assert_eq!(code, 4008, "{reason}");
    let window = Duration::from_millis(2_500)..=Duration::from_millis(4_000);
    assert_closed_after(elapsed, window, "about 3 s");
}

// ---------------------------------------------------------------------------------------------
// The replay store
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_a_token_gets_1011_and_is_not_consumed() {
    // Arrange
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_with_redis(&redis.url()).await;
    let (token, jti) = mint(&app, json!({})).await;
    redis.kill();

    // Act
    let mut ws = open(&query_url(&app, &token)).await;
    let (frame, code, reason) = expect_refusal(&mut ws).await;

    // Assert
    assert_eq!(frame["code"], "replay_store_unavailable", "{frame}");
    assert_eq!(code, 1011, "{reason}");
    assert!(!reason.is_empty());

    // Once Redis is back (proved with fresh tokens), the same token opens a session.
    tokio::task::block_in_place(|| redis.restart());
    let started = Instant::now();
    loop {
        let (fresh, _) = mint(&app, json!({})).await;
        if app.redeem(&fresh).await.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "Redis did not become usable within {RECOVERY_DEADLINE:?}"
        );
        sleep(POLL).await;
    }
    let mut ws = open(&query_url(&app, &token)).await;
    expect_session_of(&mut ws, &jti).await;
    assert_echoed(&mut ws, Message::text("after the outage")).await;
}

// ---------------------------------------------------------------------------------------------
// Presenting the token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_in_an_authorization_bearer_header_opens_a_session() {
    // Arrange
    let app = spawn_app().await;
    let (request, jti) = handshake_presenting(&app, header::AUTHORIZATION, |token| {
        format!("Bearer {token}")
    })
    .await;

    // Act
    let (mut ws, response) = connect(request).await;

    // Assert
    assert!(
        response.headers().get("sec-websocket-protocol").is_none(),
        "no subprotocol was offered, so none is answered"
    );
    expect_session_of(&mut ws, &jti).await;
    assert_echoed(&mut ws, Message::text("via the header")).await;
}

#[tokio::test]
async fn a_token_in_authorization_as_token_scheme_or_bare_as_the_assemblyai_sdk_sends_it_opens_a_session(
) {
    for (form, value) in [
        ("Token scheme", "Token {}"),
        ("bare", "{}"),
        ("Token scheme in lower case", "token {}"),
    ] {
        // Arrange
        let app = spawn_app().await;
        let (request, jti) = handshake_presenting(&app, header::AUTHORIZATION, |token| {
            value.replace("{}", token)
        })
        .await;

        // Act
        let (mut ws, _) = connect(request).await;

        // Assert
        expect_session_of(&mut ws, &jti).await;
        assert_echoed(&mut ws, Message::text(form)).await;
    }
}

#[tokio::test]
async fn an_authorization_that_is_not_shaped_like_a_token_is_not_taken_for_one() {
    // Arrange: an API key or Basic credentials in Authorization, the token in the subprotocol.
    let app = spawn_app().await;
    for authorization in [app.api_key.clone(), "Basic dXNlcjpwYXNz".to_owned()] {
        let (token, jti) = mint(&app, json!({})).await;
        let mut request = app.ws_url(STREAM).into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&authorization).unwrap(),
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&format!("bearer, {token}")).unwrap(),
        );

        // Act
        let (mut ws, _) = connect(request).await;

        // Assert
        expect_session_of(&mut ws, &jti).await;
    }
}

#[tokio::test]
async fn a_token_offered_as_the_bearer_subprotocol_opens_a_session_and_the_server_answers_bearer() {
    // Arrange
    let app = spawn_app().await;
    let subprotocol = header::SEC_WEBSOCKET_PROTOCOL;
    let (request, jti) =
        handshake_presenting(&app, subprotocol, |token| format!("bearer, {token}")).await;

    // Act
    let (mut ws, response) = connect(request).await;

    // Assert
    let answered: Vec<&str> = response
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(answered, ["bearer"]);
    expect_session_of(&mut ws, &jti).await;
    assert_echoed(&mut ws, Message::text("via the subprotocol")).await;
}

#[tokio::test]
async fn the_bearer_subprotocol_pair_may_be_split_over_two_header_lines() {
    // Arrange: RFC 6455 §11.3.4: the header may appear several times, which is the same as one
    // comma-separated list.
    let app = spawn_app().await;
    let (token, jti) = mint(&app, json!({})).await;
    let mut request = app.ws_url(STREAM).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.append(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("bearer"),
    );
    headers.append(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&token).unwrap(),
    );

    // Act
    let (mut ws, response) = connect(request).await;

    // Assert
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    let begins = text_json(&next_data(&mut ws, FRAME_TIMEOUT).await);
    assert_eq!(begins["type"], "session_begins", "{begins}");
    assert_eq!(begins["session_id"], jti.as_str());
}

#[tokio::test]
async fn a_plain_http_get_is_refused_with_400_and_does_not_consume_the_token() {
    // Arrange
    let app = spawn_app().await;
    let (token, jti) = mint(&app, json!({})).await;

    // Act
    let response = app.get(&format!("{STREAM}?token={token}")).await;

    // Assert
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(keys_of(&body), set(&["error"]), "{body}");
    assert_eq!(keys_of(&body["error"]), set(&["code", "message"]), "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    let mut ws = open(&query_url(&app, &token)).await;
    expect_session_of(&mut ws, &jti).await;
}

// ---------------------------------------------------------------------------------------------
// Idle timeout and heartbeat
// ---------------------------------------------------------------------------------------------

fn one_second_idle_timeout() -> Options {
    Options {
        stream: StreamSettings::with_idle_timeout(Duration::from_secs(1)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_client_that_sends_nothing_not_even_a_pong_is_closed_with_4009_after_the_idle_timeout() {
    // Arrange
    let app = spawn_app_with(one_second_idle_timeout()).await;
    let mut ws = fresh_session(&app).await;
    let began = Instant::now();

    // Act: the socket is not read, so the pings the server sends go unanswered.
    wait_for_close_frame_unread(&ws, Duration::from_secs(5)).await;
    let elapsed = began.elapsed();

    // Assert
    let (code, reason) = expect_close(&mut ws, FRAME_TIMEOUT).await;
    assert_eq!((code, reason.as_str()), (4009, "idle timeout"));
    // Never before the idle timeout (less the time the handshake took); the upper bound is
    // 1 s + a heartbeat (333 ms) plus 1.5 s for timers firing late on two busy cores.
    let window = Duration::from_millis(900)..=Duration::from_millis(2_900);
    assert_closed_after(
        elapsed,
        window,
        "1 s to 1 s + a heartbeat, with a margin for load",
    );
}

#[tokio::test]
async fn a_client_that_sends_a_frame_every_300_ms_stays_open_past_the_idle_timeout() {
    // Arrange
    let app = spawn_app_with(one_second_idle_timeout()).await;
    let mut ws = fresh_session(&app).await;
    let began = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(300));

    // Act + Assert: each frame comes back; no close arrives.
    let mut sent = 0;
    while began.elapsed() < Duration::from_millis(2_500) {
        every.tick().await;
        assert_echoed(&mut ws, Message::text(format!("frame {sent}"))).await;
        sent += 1;
    }
    assert!(sent >= 6, "only {sent} frames in 2.5 s");
    ws.close(None).await.unwrap();
    drain(&mut ws).await;
}

#[tokio::test]
async fn a_client_that_only_answers_pings_stays_open_past_the_idle_timeout() {
    // Arrange: tungstenite answers each Ping with a Pong while the stream is read, as browsers do.
    let app = spawn_app_with(one_second_idle_timeout()).await;
    let mut ws = fresh_session(&app).await;
    let began = Instant::now();

    // Act
    assert_open_until(&mut ws, began + Duration::from_millis(2_500)).await;

    // Assert
    assert_echoed(&mut ws, Message::text("still open")).await;
}

#[tokio::test]
async fn the_server_sends_heartbeat_pings_several_times_per_idle_period() {
    // Arrange: idle timeout 1 s, so a heartbeat every 333 ms.
    let app = spawn_app_with(one_second_idle_timeout()).await;
    let mut ws = fresh_session(&app).await;
    // Two idle periods, in which six pings are due; half of them is the bound, so timers firing
    // late on a busy machine cannot fail it while one ping per period would.
    let until = Instant::now() + Duration::from_secs(2);

    // Act
    let mut pings = 0;
    loop {
        match timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("only pings expected, got {other:?}"),
        }
    }

    // Assert
    assert!(
        pings >= 3,
        "{pings} pings within 2 s; expected one per ~333 ms"
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_graceful_stop_closes_open_sessions_with_1001() {
    // Arrange
    let app = spawn_app().await;
    let mut ws = fresh_session(&app).await;
    let started = Instant::now();

    // Act: the client must keep reading, so it answers the close and the server can finish.
    let (close, stopped) = tokio::join!(
        async move {
            let close = expect_close(&mut ws, FRAME_TIMEOUT).await;
            drop(ws);
            close
        },
        timeout(Duration::from_secs(8), app.stop_gracefully()),
    );

    // Assert
    let (code, reason) = close;
    assert_eq!(code, 1001, "{reason}");
    assert_eq!(reason, "server shutting down");
    assert!(
        stopped.is_ok(),
        "stop_gracefully did not return within 8 s of the session closing"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop_gracefully took {took:?}; an open session should not hold it up"
    );
}

async fn mint_on(server: &ServerProcess, api_key: &str) -> String {
    let response = reqwest::Client::new()
        .post(server.url("/v1/tokens"))
        .bearer_auth(api_key)
        .json(&json!({}))
        .send()
        .await
        .expect("mint request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_sessions_with_1001_and_the_process_exits_0() {
    // Arrange
    let (dir, api_key) = init_keys();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let token = mint_on(&server, &api_key).await;
    let url = ws_url(&server.address, &format!("{STREAM}?token={token}"));
    let (mut ws, _) = begin(&url).await;

    // Act
    server.signal("TERM");
    let (code, reason) = expect_close(&mut ws, FRAME_TIMEOUT).await;
    drop(ws);

    // Assert
    assert_eq!(code, 1001, "{reason}");
    let status = tokio::task::block_in_place(|| server.wait_for_exit(Duration::from_secs(8)))
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM:\n{}", server.log_text()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log_text()
    );
    tokio::task::block_in_place(|| server.wait_for_log("] stopped", Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------------------
// The access log
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_of_the_real_binary_redacts_the_stream_token() {
    // Arrange: RUST_LOG=debug, so every log line the service can write is written.
    let (dir, api_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[("RUST_LOG", "debug")]);
    let token = mint_on(&server, &api_key).await;
    let url = ws_url(&server.address, &format!("{STREAM}?token={token}"));

    // Act: one session, then the same token refused; both connections run to their end.
    let (mut ws, _) = begin(&url).await;
    ws.close(None).await.unwrap();
    drain(&mut ws).await;
    let mut again = open(&url).await;
    let (_, code, _) = expect_refusal(&mut again).await;
    assert_eq!(code, 4003);

    // Assert
    let first = tokio::task::block_in_place(|| {
        server.wait_for_log("/v1/stream?token=[redacted]", Duration::from_secs(5))
    });
    let second = tokio::task::block_in_place(|| {
        server.wait_for_log("/v1/stream?token=[redacted]", Duration::from_secs(5))
    });
    eprintln!("access log:\n{first}\n{second}");
    let log = server.log_text();
    assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
    assert!(!log.contains(&token), "the token reached the log:\n{log}");
    assert!(!log.contains(&api_key), "the API key reached the log");
}

// ---------------------------------------------------------------------------------------------
// Embedding: the Redeemed extractor in another actix-web service
// ---------------------------------------------------------------------------------------------

async fn org_of(grant: Redeemed) -> HttpResponse {
    HttpResponse::Ok().body(grant.redemption.claims.org)
}

async fn source_of(grant: Redeemed) -> HttpResponse {
    HttpResponse::Ok().body(format!("{:?}", grant.source))
}

/// `(status, code)` of a canonical error envelope, asserting its exact shape.
fn envelope_code(status: actix_web::http::StatusCode, body: &[u8]) -> (u16, String) {
    let body: Value = serde_json::from_slice(body).expect("a JSON body");
    assert_eq!(keys_of(&body), set(&["error"]), "{body}");
    assert_eq!(keys_of(&body["error"]), set(&["code", "message"]), "{body}");
    (
        status.as_u16(),
        body["error"]["code"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn an_embedding_service_redeems_a_bearer_token_once_with_the_redeemed_extractor() {
    // Arrange: the gateway shares the issuer's keys dir but has its own (memory) replay store.
    let app = spawn_app().await;
    let redeemer = web::Data::new(Redeemer::from_settings(&app.settings.clone()).unwrap());
    let gateway = actix_test::init_service(
        App::new()
            .app_data(redeemer)
            .route("/stream", web::get().to(org_of))
            .route("/source", web::get().to(source_of)),
    )
    .await;
    let (token, _) = mint(&app, json!({})).await;
    let bearer = || {
        actix_test::TestRequest::get()
            .uri("/stream")
            .insert_header(("authorization", format!("Bearer {token}")))
            .to_request()
    };

    // Act + Assert: the first use is granted.
    let response = actix_test::call_service(&gateway, bearer()).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(actix_test::read_body(response).await, "dev");

    // The second is refused with the canonical envelope.
    let response = actix_test::call_service(&gateway, bearer()).await;
    let status = response.status();
    let body = actix_test::read_body(response).await;
    assert_eq!(
        envelope_code(status, &body),
        (409, "token_already_used".into())
    );

    // No token at all.
    let request = actix_test::TestRequest::get().uri("/stream").to_request();
    let response = actix_test::call_service(&gateway, request).await;
    let status = response.status();
    let body = actix_test::read_body(response).await;
    assert_eq!(envelope_code(status, &body), (401, "missing_token".into()));

    // Each presentation is recognised, each with a fresh token.
    for source in [
        "Query",
        "BearerHeader",
        "TokenHeader",
        "RawHeader",
        "Subprotocol",
    ] {
        let (token, _) = mint(&app, json!({})).await;
        let authorization = |value: String| {
            actix_test::TestRequest::get()
                .uri("/source")
                .insert_header(("authorization", value))
        };
        let request = match source {
            "Query" => actix_test::TestRequest::get().uri(&format!("/source?token={token}")),
            "BearerHeader" => authorization(format!("Bearer {token}")),
            "TokenHeader" => authorization(format!("Token {token}")),
            "RawHeader" => authorization(token.clone()),
            _ => actix_test::TestRequest::get()
                .uri("/source")
                .insert_header(("sec-websocket-protocol", format!("bearer, {token}"))),
        }
        .to_request();
        let response = actix_test::call_service(&gateway, request).await;
        assert_eq!(response.status().as_u16(), 200, "{source}");
        assert_eq!(actix_test::read_body(response).await, source);
    }
}
