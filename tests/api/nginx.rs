//! A real nginx in front of a WebSocket backend, asking `/v1/forward-auth` of the real binary on
//! every connection, with the configuration README.md shows: the block is read from the README
//! and only its addresses, port, log path and key are replaced, so the documented config is the
//! tested one. The backend is a small tokio-tungstenite server written here that records the
//! headers of each handshake it accepts and echoes frames.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request as ClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{accept_hdr_async, connect_async};

use crate::support::fields::parse_rfc3339;
use crate::support::keys::{add_api_key, init_keys};
use crate::support::log_capture::looks_secret;
use crate::support::nginx::Nginx;
use crate::support::process::ServerProcess;

const README: &str = include_str!("../../README.md");
const SECTION: &str = "## Putting streamtoken in front of your gateway";
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The README's config
// ---------------------------------------------------------------------------------------------

/// The first `nginx` block of the README's section on proxies.
fn readme_nginx_block() -> &'static str {
    let section = &README[README.find(SECTION).expect("the README's proxy section")..];
    let start = section
        .find("```nginx\n")
        .expect("an nginx block in the section")
        + 9;
    let end = section[start..].find("\n```").expect("the block's end");
    &section[start..start + end]
}

/// The README's block with its placeholders replaced; each must be found exactly once, so an
/// edit of the README that this test would no longer follow fails here.
fn readme_config(
    streamtoken: &str,
    backend: SocketAddr,
    port: u16,
    dir: &Path,
    key: &str,
) -> String {
    let mut config = readme_nginx_block().to_owned();
    for (placeholder, value) in [
        ("server 127.0.0.1:8080;", format!("server {streamtoken};")),
        ("server 127.0.0.1:9000;", format!("server {backend};")),
        ("listen 8443;", format!("listen 127.0.0.1:{port};")),
        (
            "/var/log/nginx/asr.log",
            dir.join("asr.log").display().to_string(),
        ),
        ("<a redeem-scope API key>", key.to_owned()),
    ] {
        assert_eq!(
            config.matches(placeholder).count(),
            1,
            "the README's nginx block should hold {placeholder:?} once"
        );
        config = config.replace(placeholder, &value);
    }
    config
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

/// Headers of one accepted handshake, names in lower case.
type Seen = BTreeMap<String, String>;

struct Backend {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, whose `Callback` this closure is.
                    #[allow(clippy::result_large_err)]
                    let callback = move |request: &Request, mut response: Response| {
                        let headers: Seen = request
                            .headers()
                            .iter()
                            .map(|(name, value)| {
                                let value = String::from_utf8_lossy(value.as_bytes());
                                (name.as_str().to_owned(), value.into_owned())
                            })
                            .collect();
                        // A client that offered `bearer, <token>` needs `bearer` back.
                        let offered = headers.get("sec-websocket-protocol");
                        if offered.is_some_and(|p| p.starts_with("bearer,")) {
                            response.headers_mut().insert(
                                header::SEC_WEBSOCKET_PROTOCOL,
                                HeaderValue::from_static("bearer"),
                            );
                        }
                        record.lock().unwrap().push(headers);
                        Ok(response)
                    };
                    let Ok(mut ws) = accept_hdr_async(stream, callback).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() {
                            break;
                        }
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Backend {
            address,
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// nginx, streamtoken and the backend together
// ---------------------------------------------------------------------------------------------

struct Front {
    nginx: Nginx,
    backend: Backend,
    /// `None` once stopped.
    streamtoken: Option<ServerProcess>,
    streamtoken_url: String,
    /// The dev key (mint + redeem); nginx has a redeem-only key of its own.
    dev_key: String,
    client: reqwest::Client,
    _keys: TempDir,
}

/// `None` (a recorded skip, or a panic under `CI=true`) when nginx is not installed.
async fn front() -> Option<Front> {
    let backend = Backend::start().await;
    let (keys, dev_key) = init_keys();
    let gateway_key = add_api_key(keys.path(), "dev", &["redeem"], &["--name", "nginx"]);
    let streamtoken = ServerProcess::spawn(keys.path(), &[]);
    let streamtoken_url = streamtoken.address.clone();
    let address = streamtoken_url.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(|port, dir| {
        readme_config(&address, backend.address, port, dir, &gateway_key)
    })?;
    Some(Front {
        nginx,
        backend,
        streamtoken: Some(streamtoken),
        streamtoken_url,
        dev_key,
        client: reqwest::Client::new(),
        _keys: keys,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a client got from nginx: a WebSocket, or the status and `X-Streamtoken-Error` of a
/// refused handshake.
enum Answer {
    Open(Box<Ws>),
    Refused(u16, Option<String>),
}

impl Answer {
    fn refusal(&self) -> (u16, Option<&str>) {
        match self {
            Answer::Open(_) => (101, None),
            Answer::Refused(status, code) => (*status, code.as_deref()),
        }
    }
}

impl Front {
    /// Mints with `body` as the dev key; `(token, jti)`.
    async fn mint(&self, body: Value) -> (String, String) {
        let response = self
            .client
            .post(format!("{}/v1/tokens", self.streamtoken_url))
            .bearer_auth(&self.dev_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let field = |name: &str| body[name].as_str().unwrap().to_owned();
        (field("token"), field("jti"))
    }

    async fn redeem(&self, token: &str) -> StatusCode {
        self.client
            .post(format!("{}/v1/tokens/redeem", self.streamtoken_url))
            .bearer_auth(&self.dev_key)
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap()
            .status()
    }

    fn request(&self, path: &str) -> ClientRequest {
        self.nginx.ws_url(path).into_client_request().unwrap()
    }

    async fn open(&self, request: ClientRequest) -> Answer {
        match timeout(STEP, connect_async(request)).await {
            Err(_) => panic!("nginx did not answer the handshake within {STEP:?}"),
            Ok(Ok((ws, response))) => {
                assert_eq!(response.status().as_u16(), 101);
                Answer::Open(Box::new(ws))
            }
            Ok(Err(WsError::Http(response))) => {
                let code = response
                    .headers()
                    .get("x-streamtoken-error")
                    .map(|v| v.to_str().unwrap().to_owned());
                Answer::Refused(response.status().as_u16(), code)
            }
            Ok(Err(other)) => panic!("the handshake failed: {other}"),
        }
    }

    async fn open_with_query_token(&self, token: &str) -> Answer {
        self.open(self.request(&format!("/ws/asr?lang=en&token={token}")))
            .await
    }

    /// Neither streamtoken's log nor nginx's access log holds a token or a key.
    async fn assert_logs_hold_no_secret(&self, tokens: &[&str], requests: usize) {
        let signatures: Vec<&str> = tokens
            .iter()
            .map(|t| t.rsplit('.').next().unwrap())
            .collect();
        let clean = |line: &str| {
            !looks_secret(line) && signatures.iter().all(|signature| !line.contains(signature))
        };
        if let Some(streamtoken) = &self.streamtoken {
            let log = streamtoken.log_text();
            assert!(
                log.contains("/v1/forward-auth"),
                "forward-auth is logged:\n{log}"
            );
            let leaks: Vec<&str> = log.lines().filter(|line| !clean(line)).collect();
            assert!(
                leaks.is_empty(),
                "streamtoken logged a secret:\n{}",
                leaks.join("\n")
            );
        }
        // nginx writes a WebSocket's line when it closes.
        let deadline = Instant::now() + STEP;
        let mut access = self.nginx.file("asr.log");
        while access.lines().count() < requests && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            access = self.nginx.file("asr.log");
        }
        assert!(
            access.lines().count() >= requests,
            "nginx's access log:\n{access}"
        );
        assert!(
            access.lines().all(clean),
            "nginx logged a secret:\n{access}"
        );
    }
}

async fn assert_echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let echoed = timeout(STEP, ws.next())
        .await
        .expect("an echo in time")
        .expect("a frame")
        .unwrap();
    assert_eq!(echoed, Message::text(text));
}

fn opened(answer: Answer) -> Ws {
    match answer {
        Answer::Open(ws) => *ws,
        Answer::Refused(status, code) => panic!("refused with {status} ({code:?})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_first_connection_reaches_the_backend_with_the_identity_and_a_reuse_gets_401() {
    // Arrange
    let Some(front) = front().await else {
        return;
    };
    let ctx = json!({"sessionId": "s-1", "name": "Zoë"});
    let (token, jti) = front
        .mint(json!({"ctx": ctx, "max_session_duration_seconds": 600}))
        .await;

    // Act
    let asked_at = Utc::now();
    let mut ws = opened(front.open_with_query_token(&token).await);
    assert_echoes(&mut ws, "hello through nginx").await;
    ws.close(None).await.unwrap();
    let reuse = front.open_with_query_token(&token).await;

    // Assert
    let seen = front.backend.seen();
    assert_eq!(seen.len(), 1, "one handshake reached the backend: {seen:?}");
    let headers = &seen[0];
    assert_eq!(headers["x-streamtoken-org"], "dev");
    assert_eq!(headers["x-streamtoken-token-type"], "realtime");
    assert_eq!(headers["x-streamtoken-jti"], jti);
    let ends = parse_rfc3339(&headers["x-streamtoken-session-expires-at"]);
    assert!(
        (595..=601).contains(&(ends - asked_at).num_seconds()),
        "{ends}"
    );
    let ctx_seen: Value = serde_json::from_str(&headers["x-streamtoken-ctx"]).unwrap();
    assert_eq!(ctx_seen, ctx);
    assert!(
        !headers.contains_key("x-streamtoken-api-key"),
        "nginx's key stays between nginx and streamtoken"
    );
    assert_eq!(reuse.refusal(), (401, Some("token_already_used")));
    assert_eq!(
        front.backend.seen().len(),
        1,
        "the reuse never reached the backend"
    );
    front.assert_logs_hold_no_secret(&[&token], 2).await;
}

#[tokio::test]
async fn every_presentation_form_passes_through_nginx() {
    // Arrange
    let Some(front) = front().await else {
        return;
    };
    let mut tokens = Vec::new();

    // Act + Assert
    for (form, name, value) in [
        ("Bearer", header::AUTHORIZATION, "Bearer {}"),
        ("Token", header::AUTHORIZATION, "Token {}"),
        ("bare (the AssemblyAI SDK)", header::AUTHORIZATION, "{}"),
        ("subprotocol", header::SEC_WEBSOCKET_PROTOCOL, "bearer, {}"),
    ] {
        let (token, jti) = front.mint(json!({})).await;
        let mut request = front.request("/ws/asr");
        let value = HeaderValue::from_str(&value.replace("{}", &token)).unwrap();
        request.headers_mut().insert(name, value);
        let mut ws = opened(front.open(request).await);
        assert_echoes(&mut ws, form).await;
        ws.close(None).await.unwrap();
        let seen = front.backend.seen();
        assert_eq!(seen.last().unwrap()["x-streamtoken-jti"], jti, "{form}");
        tokens.push(token);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    front.assert_logs_hold_no_secret(&tokens, 4).await;
}

#[tokio::test]
async fn a_token_of_a_type_the_stream_does_not_admit_gets_403_and_is_kept() {
    // Arrange: the stream admits `realtime` (the default).
    let Some(front) = front().await else {
        return;
    };
    let (chat, _) = front.mint(json!({"token_type": "chat"})).await;

    // Act
    let answer = front.open_with_query_token(&chat).await;

    // Assert
    assert_eq!(answer.refusal(), (403, Some("wrong_token_type")));
    assert!(front.backend.seen().is_empty());
    assert_eq!(
        front.redeem(&chat).await,
        StatusCode::OK,
        "the refusal consumed nothing"
    );
}

#[tokio::test]
async fn identity_headers_a_client_sends_itself_never_reach_the_backend() {
    // Arrange
    let Some(front) = front().await else {
        return;
    };
    let (token, jti) = front.mint(json!({})).await;
    let mut request = front.request(&format!("/ws/asr?token={token}"));
    for (name, value) in [
        ("x-streamtoken-org", "someone-else"),
        ("x-streamtoken-token-type", "admin"),
        ("x-streamtoken-jti", "00000000-0000-0000-0000-000000000000"),
        ("x-streamtoken-session-expires-at", "2999-01-01T00:00:00Z"),
        ("x-streamtoken-ctx", r#"{"role":"admin"}"#),
    ] {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }

    // Act
    let mut ws = opened(front.open(request).await);
    assert_echoes(&mut ws, "mine").await;

    // Assert
    let seen = front.backend.seen();
    assert_eq!(seen[0]["x-streamtoken-org"], "dev");
    assert_eq!(seen[0]["x-streamtoken-token-type"], "realtime");
    assert_eq!(seen[0]["x-streamtoken-jti"], jti);
    assert_eq!(seen[0]["x-streamtoken-ctx"], "{}");
    assert!(parse_rfc3339(&seen[0]["x-streamtoken-session-expires-at"]).timestamp() < 4102444800);
}

#[tokio::test]
async fn the_largest_ctx_of_non_ascii_characters_reaches_the_backend_intact() {
    // Arrange: 16 entries, ~3.9 KiB of JSON, ~11 KiB once escaped to ASCII.
    let Some(front) = front().await else {
        return;
    };
    let mut ctx: BTreeMap<String, String> = (0..15)
        .map(|i| (format!("k{i:02}"), "é".repeat(125)))
        .collect();
    ctx.insert("lines".into(), "a\r\nX-Injected: 1\u{0}🎙️".into());
    let (token, _) = front.mint(json!({ "ctx": ctx })).await;

    // Act
    let mut ws = opened(front.open_with_query_token(&token).await);
    assert_echoes(&mut ws, "big").await;

    // Assert
    let seen = front.backend.seen();
    let raw = &seen[0]["x-streamtoken-ctx"];
    assert!(raw.len() > 10_000, "{} bytes", raw.len());
    let back: BTreeMap<String, String> = serde_json::from_str(raw).unwrap();
    assert_eq!(back, ctx);
    assert!(!seen[0].contains_key("x-injected"));
}

#[tokio::test]
async fn with_streamtoken_stopped_nginx_answers_500_and_never_upgrades() {
    // Arrange
    let Some(mut front) = front().await else {
        return;
    };
    let (in_query, _) = front.mint(json!({})).await;
    let (in_header, _) = front.mint(json!({})).await;

    // Act
    drop(front.streamtoken.take());
    let by_query = front.open_with_query_token(&in_query).await;
    let mut request = front.request("/ws/asr");
    let bearer = HeaderValue::from_str(&format!("Bearer {in_header}")).unwrap();
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let by_header = front.open(request).await;

    // Assert
    for answer in [by_query, by_header] {
        let (status, _) = answer.refusal();
        assert!((500..600).contains(&status), "{status}");
    }
    assert!(front.backend.seen().is_empty());
    // nginx's error log records the failed request's line, query and (unconsumed) token
    // included, as README.md warns; a token in a header stays out of it.
    let signature = in_header.rsplit('.').next().unwrap();
    let errors = front.nginx.error_log();
    assert!(
        errors.contains("auth request unexpected status"),
        "{errors}"
    );
    assert!(!errors.contains(signature), "{errors}");
}
