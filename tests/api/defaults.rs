//! Safe defaults on the wire: every response that carries a token (or a redemption verdict) is
//! `Cache-Control: no-store`; no response names the server or its version; and no route grants
//! cross-origin access, to a preflight or to a request that carries an `Origin`.

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::support::app::{spawn_app, TestApp};
use crate::support::raw_http::{exchange, BuildRaw, Frames, RawRequest};

const EVIL_ORIGIN: &str = "https://evil.example";

/// Every minting route, compatibility ones and the demo included: (description, method, path,
/// body). Each answers 200 with a token to the dev key.
fn minting_routes() -> Vec<(&'static str, Method, &'static str, Option<Value>)> {
    let chat_body = json!({"chatbotId": "bot-1", "sessionId": "s-1"});
    vec![
        (
            "canonical mint",
            Method::POST,
            "/v1/tokens",
            Some(json!({})),
        ),
        (
            "AssemblyAI",
            Method::GET,
            "/v3/token?expires_in_seconds=60",
            None,
        ),
        (
            "ElevenLabs realtime_scribe",
            Method::POST,
            "/v1/single-use-token/realtime_scribe",
            None,
        ),
        (
            "ElevenLabs tts_websocket",
            Method::POST,
            "/v1/single-use-token/tts_websocket",
            None,
        ),
        ("stream token", Method::GET, "/api/v1/token", None),
        ("chat token GET", Method::GET, "/api/v1/chat/token", None),
        (
            "chat token POST",
            Method::POST,
            "/api/v1/chat/token",
            Some(chat_body.clone()),
        ),
        (
            "chat token alias GET",
            Method::GET,
            "/api/api/v1/chat/token",
            None,
        ),
        (
            "chat token alias POST",
            Method::POST,
            "/api/api/v1/chat/token",
            Some(chat_body),
        ),
        ("demo token", Method::POST, "/demo/token", None),
    ]
}

fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
    key: bool,
) -> RequestBuilder {
    let mut request = app.client.request(method, app.url(path));
    if key {
        request = request.bearer_auth(&app.api_key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request
}

/// A request with the dev key to each minting route: `(description, request)`.
fn minting_requests(app: &TestApp) -> Vec<(&'static str, RequestBuilder)> {
    minting_routes()
        .into_iter()
        .map(|(description, method, path, body)| {
            (description, request(app, method, path, body.as_ref(), true))
        })
        .collect()
}

fn cache_control(headers: &HeaderMap) -> Option<&str> {
    headers.get("cache-control").map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn every_response_that_carries_a_token_is_cache_control_no_store() {
    // Arrange
    let app = spawn_app().await;
    let mut failures = Vec::new();

    for (description, request) in minting_requests(&app) {
        // Act
        let response = request.send().await.unwrap();

        // Assert
        let status = response.status();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::OK || !body["token"].is_string() {
            failures.push(format!("{description}: {status} {body}"));
        } else if cache_control(&headers) != Some("no-store") {
            failures.push(format!(
                "{description}: cache-control {:?}",
                cache_control(&headers)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn every_redemption_and_introspection_answer_is_cache_control_no_store() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;
    let other = app.mint_token(json!({})).await;
    let redeem = "/v1/tokens/redeem";
    let introspect = "/v1/tokens/introspect";
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Value, bool, StatusCode)> = vec![
        ("introspect a live token", introspect, json!({"token": token}), true, StatusCode::OK),
        ("redeem a live token", redeem, json!({"token": token}), true, StatusCode::OK),
        ("introspect a used token", introspect, json!({"token": token}), true, StatusCode::OK),
        ("redeem a used token", redeem, json!({"token": token}), true, StatusCode::CONFLICT),
        ("redeem garbage", redeem, json!({"token": "a.b.c"}), true, StatusCode::UNAUTHORIZED),
        ("introspect garbage", introspect, json!({"token": "a.b.c"}), true, StatusCode::OK),
        ("redeem without a key", redeem, json!({"token": other}), false, StatusCode::UNAUTHORIZED),
        ("introspect without a key", introspect, json!({"token": other}), false, StatusCode::UNAUTHORIZED),
        ("redeem an invalid body", redeem, json!({"nope": 1}), true, StatusCode::BAD_REQUEST),
        ("introspect an invalid body", introspect, json!([]), true, StatusCode::BAD_REQUEST),
    ];
    let mut failures = Vec::new();

    for (description, path, body, key, expected) in cases {
        // Act
        let response = request(&app, Method::POST, path, Some(&body), key)
            .send()
            .await
            .unwrap();

        // Assert
        if response.status() != expected {
            failures.push(format!("{description}: status {}", response.status()));
        }
        if cache_control(response.headers()) != Some("no-store") {
            failures.push(format!(
                "{description}: cache-control {:?}",
                cache_control(response.headers())
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Headers that would tell a scanner what runs here.
fn identifying(headers: &[(String, String)]) -> Vec<String> {
    let version = env!("CARGO_PKG_VERSION");
    headers
        .iter()
        .filter(|(name, value)| {
            matches!(
                name.as_str(),
                "server" | "x-powered-by" | "via" | "x-runtime" | "x-aspnet-version"
            ) || name.contains("version")
                || value.to_ascii_lowercase().contains("actix")
                || value.to_ascii_lowercase().contains("streamtoken")
                || value.contains(version)
        })
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn no_response_names_the_server_or_its_version() {
    // Arrange: successes, refusals, 404/405, the spec, metrics, the demo, a WebSocket upgrade and
    // the HTTP layer's own 400 and 431.
    let app = spawn_app().await;
    let mut requests: Vec<(String, Method, String, Option<Value>, bool)> = minting_routes()
        .into_iter()
        .map(|(d, m, p, b)| (d.to_owned(), m, p.to_owned(), b, true))
        .collect();
    for (method, path, key) in [
        (Method::POST, "/v1/tokens", false),
        (Method::GET, "/v3/token", true),
        (Method::POST, "/v1/single-use-token/nope", false),
        (Method::GET, "/api/v1/token?ttl=0", true),
        (Method::GET, "/api/v1/chat/token", false),
        (Method::GET, "/v1/usage", true),
        (Method::GET, "/v1/stream", false),
        (Method::GET, "/healthz", false),
        (Method::GET, "/readyz", false),
        (Method::GET, "/metrics", false),
        (Method::GET, "/openapi.yaml", false),
        (Method::GET, "/demo", false),
        (Method::GET, "/nope", false),
        (Method::DELETE, "/v1/tokens", true),
        (Method::OPTIONS, "/v1/tokens", false),
    ] {
        requests.push((
            format!("{method} {path}"),
            method,
            path.to_owned(),
            None,
            key,
        ));
    }
    let mut failures = Vec::new();

    // Act + Assert
    for (description, method, path, body, key) in requests {
        let response = request(&app, method, &path, body.as_ref(), key)
            .send()
            .await
            .unwrap();
        let found = identifying(&pairs(response.headers()));
        if !found.is_empty() {
            failures.push(format!("{description} ({}): {found:?}", response.status()));
        }
    }
    let token = app.mint_token(json!({})).await;
    let upgrade = RawRequest::new("GET", format!("/v1/stream?token={token}")).websocket();
    let invalid_target = RawRequest::new("GET", b"/healthz?\xff");
    let oversized = RawRequest::new("GET", "/healthz").header("X-Big", "a".repeat(140 * 1024));
    let address = app.address.clone();
    let raw = tokio::task::spawn_blocking(move || {
        [
            ("WebSocket upgrade", upgrade, 101),
            ("invalid request target", invalid_target, 400),
            ("oversized head", oversized, 431),
        ]
        .into_iter()
        .map(|(description, request, expected)| {
            let answer = exchange(&address, &request, Frames::First)
                .unwrap_or_else(|e| panic!("{description}: {e}"));
            (description, answer.status, expected, answer.headers)
        })
        .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (description, status, expected, headers) in raw {
        assert_eq!(status, expected, "{description}");
        let found = identifying(&headers);
        if !found.is_empty() {
            failures.push(format!("{description} ({status}): {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-"))
        .map(|(name, value)| format!("{name}: {value:?}"))
        .collect()
}

#[tokio::test]
async fn a_cross_origin_preflight_is_granted_nothing_on_any_minting_or_token_route() {
    // Arrange
    let app = spawn_app().await;
    let paths = [
        "/v1/tokens",
        "/v1/tokens/redeem",
        "/v1/tokens/introspect",
        "/v3/token",
        "/v1/single-use-token/realtime_scribe",
        "/v1/single-use-token/tts_websocket",
        "/api/v1/token",
        "/api/v1/chat/token",
        "/api/api/v1/chat/token",
        "/demo/token",
    ];
    let mut failures = Vec::new();

    for path in paths {
        for requested in ["POST", "GET"] {
            // Act
            let response = app
                .client
                .request(Method::OPTIONS, app.url(path))
                .header("Origin", EVIL_ORIGIN)
                .header("Access-Control-Request-Method", requested)
                .header(
                    "Access-Control-Request-Headers",
                    "authorization, content-type, xi-api-key",
                )
                .send()
                .await
                .unwrap();

            // Assert
            let granted = cors_headers(response.headers());
            if !granted.is_empty() {
                failures.push(format!("OPTIONS {path} ({requested}): {granted:?}"));
            }
            if response.status().is_success() {
                failures.push(format!(
                    "OPTIONS {path} ({requested}): a {} to a preflight",
                    response.status()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_request_with_an_origin_gets_no_access_control_allow_origin() {
    // Arrange
    let app = spawn_app().await;
    let mut failures = Vec::new();

    for (description, request) in minting_requests(&app) {
        // Act
        let response = request.header("Origin", EVIL_ORIGIN).send().await.unwrap();

        // Assert: the request is served (CORS is the browser's business), but nothing allows
        // a script on another origin to read the answer.
        if response.status() != StatusCode::OK {
            failures.push(format!("{description}: status {}", response.status()));
        }
        let granted = cors_headers(response.headers());
        if !granted.is_empty() {
            failures.push(format!("{description}: {granted:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
