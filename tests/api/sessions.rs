//! Every resource a streaming client can hold is bounded: a client that sends but never reads
//! cannot keep a session past its deadline or the send timeout, and open sessions are capped in
//! all and per org, checked before a use is consumed.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use streamtoken::settings::StreamSettings;
use streamtoken::tenancy::api_keys::Scope;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{spawn_app_with, Options, TestApp};
use crate::support::process::{cli, rss_kib, ServerProcess};

/// The open-sessions gauge of a server.
async fn open_sessions(client: &reqwest::Client, metrics_url: &str) -> i64 {
    let page = client
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix("streamtoken_stream_sessions_open "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no open-sessions gauge in:\n{page}"))
}

/// Polls the gauge until it reads `want`, or panics with what it last read after `within`.
async fn wait_for_open_sessions(client: &reqwest::Client, url: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = open_sessions(client, url).await;
        if open == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sessions still open, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session and sends frames without ever reading, until the server stops taking them
/// (its echo is stuck behind our unread socket). Returns the still-open connection.
async fn flood_without_reading(url: String) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    flood(ws).await
}

/// Sends frames on an open session without ever reading, until the server stops taking them.
async fn flood(mut ws: Client) -> Client {
    let frame = vec![7u8; 4096];
    // Bounded in count and time: the server stops reading long before this.
    for _ in 0..4096 {
        // A send that waits a whole second is the server no longer reading, not a busy machine.
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::binary(frame.clone())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
    ws
}

/// One ordinary session: a frame echoed, then a close.
async fn echo_once(url: String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::binary(vec![7u8; 4096])).await.unwrap();
    while let Some(message) = ws.next().await {
        if message.unwrap().is_binary() {
            break;
        }
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_that_send_and_never_read_lose_their_sessions_connections_and_memory()
{
    // Arrange: a real server whose sends time out after 1 s, and idle sessions after 10 s.
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), &["keys", "init"]);
    let mut tokens: Vec<String> = cli(dir.path(), &["mint", "--org", "dev", "--count", "501"])
        .lines()
        .map(str::to_owned)
        .collect();
    let server = ServerProcess::spawn(
        dir.path(),
        &[
            ("STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS", "1"),
            // A client whose few frames all fit in the socket buffers never stalls a send; the
            // idle timeout is the bound that ends its session. It outlasts the opening of all
            // 500 sessions on a busy machine.
            ("STREAMTOKEN_STREAM_IDLE_TIMEOUT_SECONDS", "10"),
            ("RUST_LOG", "warn"),
        ],
    );
    let client = reqwest::Client::new();
    let metrics = server.url("/metrics");
    let ws_base = server.address.replacen("http://", "ws://", 1);
    // Measured once the workers have served a request and hold their steady set of descriptors,
    // and once a session has run: the pages of the binary a stream first runs are not memory
    // that sessions hold.
    open_sessions(&client, &metrics).await;
    let started_fds = open_fds(server.pid());
    let warm_up = tokens.pop().unwrap();
    echo_once(format!("{ws_base}/v1/stream?token={warm_up}")).await;
    wait_for_open_sessions(&client, &metrics, 0, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(server.pid()) > started_fds && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started_kib = rss_kib(server.pid());

    // Peaks are sampled while the clients open and flood: on a busy machine the first sessions
    // may be over before the last flood has stalled.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, sampling) = (server.pid(), sampling.clone());
        tokio::spawn(async move {
            let (mut peak_kib, mut peak_fds) = (0, 0);
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                peak_kib = peak_kib.max(rss_kib(pid));
                peak_fds = peak_fds.max(open_fds(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak_kib, peak_fds)
        })
    };

    // Act: 500 clients open their sessions, then flood at once and keep their connections open.
    // Opened first, so that on a busy machine the first sessions are not already over (1 s
    // after their client stalls) by the time the last one stalls.
    let opening: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let url = format!("{ws_base}/v1/stream?token={token}");
            tokio::spawn(async move { tokio_tungstenite::connect_async(url).await.unwrap().0 })
        })
        .collect();
    let mut open = Vec::new();
    for session in opening {
        open.push(session.await.unwrap());
    }
    let flooding: Vec<_> = open.into_iter().map(|ws| tokio::spawn(flood(ws))).collect();
    let mut held = Vec::new();
    for client in flooding {
        held.push(client.await.unwrap());
    }
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let (peak_kib, peak_fds) = sampler.await.unwrap();

    // Assert: every session ends by the send timeout, and the server drops every connection,
    // although no client reads or leaves. (The metrics scrape holds one connection.)
    wait_for_open_sessions(&client, &metrics, 0, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(server.pid()) > started_fds + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Freed memory goes back to the system on the server's next trims (every 5 s, twice after
    // the last session ends): RSS returns to within 20% of where it started.
    let bound_kib = started_kib + started_kib / 5;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rss_kib(server.pid()) > bound_kib && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (settled_kib, settled_fds) = (rss_kib(server.pid()), open_fds(server.pid()));
    eprintln!(
        "server: {started_kib} KiB RSS and {started_fds} fds at start, {peak_kib} KiB and \
         {peak_fds} fds with 500 floods, {settled_kib} KiB and {settled_fds} fds after"
    );
    assert!(
        peak_fds >= started_fds + 500,
        "the floods were not all connected"
    );
    assert!(
        settled_fds <= started_fds + 1,
        "{settled_fds} fds open after the sessions closed, {started_fds} at start"
    );
    assert!(
        settled_kib <= bound_kib,
        "RSS {settled_kib} KiB after the sessions closed: more than 20% over {started_kib} KiB at \
         the start ({peak_kib} KiB with the floods)"
    );
    drop(held);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_ended_by_the_send_timeout() {
    // Arrange: sends time out after 1 s; the idle timeout (60 s) and the deadline (1 h) are far.
    let app = spawn_app_with(Options {
        stream: StreamSettings {
            send_timeout: Duration::from_secs(1),
            ..StreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let token = app.mint_token(json!({})).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/v1/stream?token={token}")))
            .await
            .unwrap();

    // Act: send without ever reading, until the server ends the connection (bounded: 30 s).
    let frame = vec![7u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        if Instant::now() > deadline {
            break false;
        }
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::binary(frame.clone())),
        );
        if let Ok(Err(_)) = sent.await {
            break true;
        }
    };

    // Assert
    assert!(
        ended,
        "the connection of a client that stopped reading was still open after 30 s"
    );
    wait_for_open_sessions(
        &app.client,
        &app.url("/metrics"),
        0,
        Duration::from_secs(10),
    )
    .await;
}

/// An app with an hour-long send timeout, so only the deadline or a shutdown ends a session.
async fn app_whose_sends_never_time_out() -> TestApp {
    spawn_app_with(Options {
        stream: StreamSettings {
            send_timeout: Duration::from_secs(3600),
            ..StreamSettings::default()
        },
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_session_ends_at_its_deadline_even_while_its_client_is_not_reading() {
    // Arrange: a long send timeout, so only the deadline can end the session.
    let app = app_whose_sends_never_time_out().await;
    let token = app
        .mint_token(json!({"max_session_duration_seconds": 2}))
        .await;

    // Act
    let held = flood_without_reading(app.ws_url(&format!("/v1/stream?token={token}"))).await;

    // Assert
    wait_for_open_sessions(
        &app.client,
        &app.url("/metrics"),
        0,
        Duration::from_secs(30),
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn shutdown_ends_a_session_whose_client_is_not_reading() {
    // Arrange
    let app = app_whose_sends_never_time_out().await;
    let token = app.mint_token(json!({})).await;
    let held = flood_without_reading(app.ws_url(&format!("/v1/stream?token={token}"))).await;
    assert_eq!(open_sessions(&app.client, &app.url("/metrics")).await, 1);

    // Act
    let stopped = tokio::time::timeout(Duration::from_secs(20), app.stop_gracefully()).await;

    // Assert
    assert!(stopped.is_ok(), "the server did not stop within 20 s");
    assert_eq!(app.state.session_slots.open("dev"), (0, 0));
    drop(held);
}

/// The verdict of one `/v1/stream` attempt: the first frame's type or code, and the close code.
async fn attempt(app: &TestApp, token: &str) -> (Option<Client>, String, Option<u16>) {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/v1/stream?token={token}")))
            .await
            .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    if first["type"] == "session_begins" {
        return (Some(ws), "session_begins".into(), None);
    }
    let code = first["code"].as_str().unwrap().to_owned();
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Close(close) = frame {
            return (None, code, close.map(|c| u16::from(c.code)));
        }
    }
    (None, code, None)
}

async fn acme_token(app: &TestApp, key: &str) -> String {
    let minted: Value = app
        .post_json("/v1/tokens", Some(key), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn over_either_session_cap_a_client_gets_1013_and_keeps_a_usable_token() {
    // Arrange: at most 3 sessions, 2 per org; dev and acme mint.
    let app = spawn_app_with(Options {
        stream: StreamSettings {
            max_sessions: 3,
            max_sessions_per_org: 2,
            ..StreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let acme = app.add_api_key("acme", &[Scope::Mint]);
    let mut open = Vec::new();
    for _ in 0..2 {
        let token = app.mint_token(json!({})).await;
        let (ws, verdict, _) = attempt(&app, &token).await;
        assert_eq!(verdict, "session_begins");
        open.push(ws);
    }

    // Act: a third dev session (per-org cap), then acme's first (fine), then acme's second
    // (the total cap).
    let dev_third = app.mint_token(json!({})).await;
    let per_org = attempt(&app, &dev_third).await;
    let acme_first = attempt(&app, &acme_token(&app, &acme).await).await;
    let acme_second_token = acme_token(&app, &acme).await;
    let total = attempt(&app, &acme_second_token).await;

    // Assert
    assert_eq!(
        (per_org.1.as_str(), per_org.2),
        ("too_many_sessions", Some(1013))
    );
    assert_eq!(acme_first.1, "session_begins");
    assert_eq!(
        (total.1.as_str(), total.2),
        ("too_many_sessions", Some(1013))
    );
    let dev_left: Value = app.introspect(&dev_third).await.json().await.unwrap();
    assert_eq!(
        dev_left["active"], true,
        "the refused token is still usable: {dev_left}"
    );
    let acme_gateway = app.add_api_key("acme", &[Scope::Redeem]);
    let acme_left: Value = app
        .post_json(
            "/v1/tokens/introspect",
            Some(&acme_gateway),
            &json!({ "token": acme_second_token }),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        acme_left["active"], true,
        "the refused token is still usable: {acme_left}"
    );
    drop(open);
}
