//! The WebSocket proxy routes (`STREAMTOKEN_PROXY`) against a real upstream written here: who
//! the upstream learns it serves, frames and close codes both ways, the use taken back when the
//! upstream is away, the session deadline, and a stalled upstream that stalls nobody else.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use streamtoken::settings::{ProxyRoute, StreamSettings};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{listed_sessions, redis_settings, spawn_app_with, Options, TestApp};
use crate::support::ws_upstream::{Behaviour, Upstream};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

async fn app_proxying(routes: &[(&str, String)], stream: StreamSettings) -> TestApp {
    spawn_app_with(Options {
        proxy: routes
            .iter()
            .map(|(path, upstream)| ProxyRoute {
                path: (*path).to_owned(),
                upstream: upstream.clone(),
            })
            .collect(),
        stream,
        ..Options::default()
    })
    .await
}

async fn open(app: &TestApp, path_and_query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(app.ws_url(path_and_query))
        .await
        .expect("the handshake is always accepted");
    ws
}

/// The next text, binary or close frame (pings and pongs skipped).
async fn next_data(ws: &mut Ws) -> Message {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return message,
            other => panic!("no frame within {FRAME_TIMEOUT:?}: {other:?}"),
        }
    }
}

fn close_of(message: &Message) -> (u16, String) {
    match message {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A refusal: the JSON error frame's code, then the close code.
async fn refusal(ws: &mut Ws) -> (String, u16) {
    let frame: Value = match next_data(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected an error frame, got {other:?}"),
    };
    let (code, _) = close_of(&next_data(ws).await);
    (frame["code"].as_str().unwrap().to_owned(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_sessions_relay_frames_both_ways_and_the_upstream_sees_who_but_not_the_token() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(
        &[("/v3/ws", upstream.url("/v3/ws"))],
        StreamSettings::default(),
    )
    .await;
    let mut minted = Vec::new();
    for i in 0..200 {
        minted.push(
            app.mint_json(json!({ "ctx": { "n": i.to_string() } }))
                .await,
        );
    }

    // Act: every session at once: a text and a binary frame each way, then a client close.
    let sessions = minted.iter().enumerate().map(|(i, minted)| {
        let token = minted["token"].as_str().unwrap().to_owned();
        let app = &app;
        async move {
            let mut ws = open(app, &format!("/v3/ws?sample_rate=16000&token={token}")).await;
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            ws.send(Message::binary(vec![i as u8; 3])).await.unwrap();
            let echoed = (next_data(&mut ws).await, next_data(&mut ws).await);
            ws.close(Some(CloseFrame {
                code: CloseCode::from(4321),
                reason: "bye".into(),
            }))
            .await
            .unwrap();
            let closed = close_of(&next_data(&mut ws).await);
            (echoed, closed)
        }
    });
    let outcomes = futures::future::join_all(sessions).await;

    // Assert
    for (i, ((text, binary), closed)) in outcomes.into_iter().enumerate() {
        assert_eq!(text, Message::text(format!("hello {i}")));
        assert_eq!(binary, Message::binary(vec![i as u8; 3]));
        assert_eq!(closed, (4321, "bye".to_owned()), "the close comes back");
    }
    let closes = upstream.wait_for_closes(200).await;
    assert_eq!(closes.len(), 200);
    assert!(
        closes.iter().all(|c| *c == (4321, "bye".to_owned())),
        "{closes:?}"
    );
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 200);
    for handshake in &handshakes {
        assert_eq!(handshake.path_and_query, "/v3/ws?sample_rate=16000");
        assert_eq!(handshake.headers["x-streamtoken-org"], "dev");
        assert_eq!(handshake.headers["x-streamtoken-token-type"], "realtime");
        let expires = &handshake.headers["x-streamtoken-session-expires-at"];
        assert!(
            chrono::DateTime::parse_from_rfc3339(expires).is_ok(),
            "{expires}"
        );
        let ctx: Value = serde_json::from_str(&handshake.headers["x-streamtoken-ctx"]).unwrap();
        let jti = &handshake.headers["x-streamtoken-jti"];
        let mine = minted
            .iter()
            .position(|m| m["jti"] == jti.as_str())
            .unwrap();
        assert_eq!(
            ctx,
            json!({ "n": mine.to_string() }),
            "each session carries its own token's ctx"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_close_reaches_the_client_with_its_code_and_reason() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(&[("/rt", upstream.url("/"))], StreamSettings::default()).await;
    let token = app.mint_token(json!({})).await;
    let mut ws = open(&app, &format!("/rt?token={token}")).await;

    ws.send(Message::text("close me")).await.unwrap();

    assert_eq!(
        close_of(&next_data(&mut ws).await),
        (4567, "upstream says bye".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_upstream_gets_1013_and_the_same_token_works_once_it_is_back() {
    upstream_away_then_back(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_redis_an_unreachable_upstream_gives_the_use_and_its_credit_back() {
    let Some(redis) = crate::support::redis_server::RedisServer::start() else {
        return;
    };
    let app = upstream_away_then_back(Some(redis_settings(&redis.url()))).await;
    let usage = app.usage().await;
    assert_eq!(
        usage["redeemed"], 1,
        "one accepted use, the refused one given back: {usage}"
    );
}

/// A token refused with 1013 while the upstream is away, then used once it is back.
async fn upstream_away_then_back(redis: Option<streamtoken::settings::RedisSettings>) -> TestApp {
    // Arrange: a port nothing listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(Options {
        proxy: vec![ProxyRoute {
            path: "/rt".into(),
            upstream: format!("ws://127.0.0.1:{port}/v3/ws"),
        }],
        redis,
        ..Options::default()
    })
    .await;
    let token = app.mint_token(json!({})).await;

    // Act
    let mut first = open(&app, &format!("/rt?token={token}")).await;
    let refused = refusal(&mut first).await;
    let upstream = Upstream::start_on(port, Behaviour::Echo).await;
    let mut retry = open(&app, &format!("/rt?token={token}")).await;
    retry.send(Message::text("again")).await.unwrap();
    let echoed = next_data(&mut retry).await;
    let mut third = open(&app, &format!("/rt?token={token}")).await;
    let reused = refusal(&mut third).await;

    // Assert
    assert_eq!(refused, ("upstream_unavailable".to_owned(), 1013));
    assert_eq!(echoed, Message::text("again"));
    assert_eq!(upstream.handshakes().len(), 1);
    assert_eq!(reused, ("token_already_used".to_owned(), 4003));
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_deadline_the_client_gets_4008_and_the_upstream_a_normal_close() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(&[("/rt", upstream.url("/"))], StreamSettings::default()).await;
    let token = app
        .mint_token(json!({ "max_session_duration_seconds": 1 }))
        .await;
    let mut ws = open(&app, &format!("/rt?token={token}")).await;
    let started = Instant::now();

    let closed = close_of(&next_data(&mut ws).await);

    assert_eq!(closed, (4008, "max session duration reached".to_owned()));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        upstream.wait_for_closes(1).await,
        [(1000, "session ended".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_upstream_ends_its_own_session_and_stalls_no_other() {
    // Arrange: one route to an upstream that never reads, one to an echo; 1 s send timeout.
    let stalled = Upstream::start(Behaviour::NeverRead).await;
    let echo = Upstream::start(Behaviour::Echo).await;
    let stream = StreamSettings {
        send_timeout: Duration::from_secs(1),
        ..StreamSettings::default()
    };
    let app = app_proxying(
        &[("/stalled", stalled.url("/")), ("/echo", echo.url("/"))],
        stream,
    )
    .await;
    let flooding = app.mint_token(json!({})).await;
    let mut flood = open(&app, &format!("/stalled?token={flooding}")).await;
    let chunk = vec![7u8; 60 * 1024];
    // Fill the stalled upstream's socket buffers; the proxy's send to it then waits.
    let flooder = tokio::spawn(async move {
        for _ in 0..200 {
            if flood.send(Message::binary(chunk.clone())).await.is_err() {
                break;
            }
        }
        let mut ending = None;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(10), flood.next()).await
        {
            if let Message::Close(frame) = message {
                ending = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
        }
        ending
    });

    // Act: meanwhile another session echoes promptly.
    let token = app.mint_token(json!({})).await;
    let mut ws = open(&app, &format!("/echo?token={token}")).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let sent = Instant::now();
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(format!("ping {i}")));
        slowest = slowest.max(sent.elapsed());
    }
    let ending = flooder.await.unwrap();

    // Assert
    assert!(
        slowest < Duration::from_millis(500),
        "slowest echo {slowest:?}"
    );
    assert_eq!(ending, Some((1011, "upstream not reading".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_route_refuses_like_the_stream_and_consumes_nothing_it_refuses() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(&[("/rt", upstream.url("/"))], StreamSettings::default()).await;
    let chat = app.mint_token(json!({ "token_type": "chat" })).await;
    let used = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&used).await.status(), 200);

    let mut wrong_type = open(&app, &format!("/rt?token={chat}")).await;
    let mut reused = open(&app, &format!("/rt?token={used}")).await;
    let mut none = open(&app, "/rt").await;
    let plain_get = app.get("/rt").await;

    assert_eq!(
        refusal(&mut wrong_type).await,
        ("wrong_token_type".to_owned(), 4001)
    );
    assert_eq!(
        refusal(&mut reused).await,
        ("token_already_used".to_owned(), 4003)
    );
    assert_eq!(refusal(&mut none).await, ("missing_token".to_owned(), 4001));
    assert_eq!(plain_get.status(), 400);
    assert!(upstream.handshakes().is_empty());
    assert_eq!(
        app.introspect(&chat).await.status(),
        200,
        "the chat token is unused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_assemblyais_streaming_path_a_refusal_speaks_assemblyais_error_frame() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(
        &[("/v3/ws", upstream.url("/v3/ws"))],
        StreamSettings::default(),
    )
    .await;
    let used = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&used).await.status(), 200);

    // Act
    let mut ws = open(&app, &format!("/v3/ws?token={used}")).await;
    let frame: Value = match next_data(&mut ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected an error frame, got {other:?}"),
    };
    let closed = close_of(&next_data(&mut ws).await);

    // Assert: the AssemblyAI SDK reads only this shape; the close code is the usual one.
    assert_eq!(
        frame,
        json!({
            "type": "Error",
            "error": "the token has already been used (already_used)",
            "error_code": 4003
        })
    );
    assert_eq!(closed.0, 4003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_the_token_ends_a_proxied_session_with_4010_and_closes_the_upstream() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(&[("/rt", upstream.url("/"))], StreamSettings::default()).await;
    let revoker = app.add_api_key("dev", &[streamtoken::tenancy::api_keys::Scope::Revoke]);
    let token = app.mint_token(json!({})).await;
    let mut ws = open(&app, &format!("/rt?token={token}")).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));

    let revoked = app
        .post_json(
            "/v1/tokens/revoke",
            Some(&revoker),
            &json!({ "token": token }),
        )
        .await;
    assert_eq!(revoked.status(), 200);
    let answered = Instant::now();
    let closed = close_of(&next_data(&mut ws).await);

    assert_eq!(closed, (4010, "revoked".to_owned()));
    assert!(answered.elapsed() < Duration::from_secs(1));
    assert_eq!(
        upstream.wait_for_closes(1).await,
        [(1000, "session revoked".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxied_session_dropped_within_its_grace_reopens_and_the_upstream_is_told() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let app = app_proxying(&[("/rt", upstream.url("/"))], StreamSettings::default()).await;
    let token = app
        .mint_token(json!({ "reconnect_grace_seconds": 30 }))
        .await;
    let mut first = open(&app, &format!("/rt?token={token}")).await;
    first.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut first).await, Message::text("hello"));

    // One connection at a time, the first undisturbed.
    let mut second = open(&app, &format!("/rt?token={token}")).await;
    assert_eq!(
        refusal(&mut second).await,
        ("session_already_open".to_owned(), 4003)
    );
    first.send(Message::text("still")).await.unwrap();
    assert_eq!(next_data(&mut first).await, Message::text("still"));

    // The network drops; the token re-opens the session through the proxy.
    drop(first);
    upstream.wait_for_closes(1).await;
    let dropped = || async {
        let listed = listed_sessions(&app.client, &app.address, &app.api_key).await;
        listed["sessions"][0]["connected"] == false
    };
    let until = Instant::now() + Duration::from_secs(2);
    while !dropped().await {
        assert!(Instant::now() < until, "the session was never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = open(&app, &format!("/rt?token={token}")).await;
    again.send(Message::text("back")).await.unwrap();
    assert_eq!(next_data(&mut again).await, Message::text("back"));
    let handshakes = upstream.handshakes();
    let told: Vec<_> = handshakes
        .iter()
        .map(|h| h.headers["x-streamtoken-resumed"].as_str())
        .collect();
    assert_eq!(told, ["false", "true"]);
    assert_eq!(
        handshakes[0].headers["x-streamtoken-session-expires-at"],
        handshakes[1].headers["x-streamtoken-session-expires-at"]
    );
    assert_eq!(app.usage().await["redeemed"], 1, "no second use");
}
