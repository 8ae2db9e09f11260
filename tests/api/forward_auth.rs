//! `/v1/forward-auth`, as a reverse proxy's auth subrequest sees it: a grant is 200 with the
//! token's identity in `X-Streamtoken-*` headers and consumes the one use `POST
//! /v1/tokens/redeem` would; refusals are 401 (the token, the proxy's key) or 403 (the key's
//! org, the stream's token types, the scope, the org's credits) with `X-Streamtoken-Error`, and
//! consume nothing; a store that cannot answer is 503 and the retry is granted. No token or key
//! reaches the log, wherever the proxy put it. Every form of bad input has its row in
//! `catalogue.rs`; a real nginx in front is `nginx.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use streamtoken::keys::admin::NewApiKey;
use streamtoken::settings::StreamSettings;
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::tenancy::org::Org;
use tokio::time::Instant;

use crate::support::app::{
    new_api_key, redis_settings, spawn_app, spawn_app_with, Options, TestApp,
};
use crate::support::fields::parse_rfc3339;
use crate::support::log_capture::{self, looks_secret};
use crate::support::outcomes::{outcome, ACCEPTED};
use crate::support::redis_server::{RedisReply, RedisServer};
use crate::support::routes::FORWARD_AUTH;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const API_KEY: &str = "x-streamtoken-api-key";
const ORIGINAL_URI: &str = "x-original-uri";

/// The auth request a proxy sends for a client whose URI is `original_uri`, with `key`.
fn asking(app: &TestApp, key: &str, original_uri: &str) -> RequestBuilder {
    app.client
        .get(app.url(FORWARD_AUTH))
        .header(API_KEY, key)
        .header(ORIGINAL_URI, original_uri)
}

/// "200", or the status and the code, which `X-Streamtoken-Error` must repeat; with the headers.
async fn verdict(request: RequestBuilder) -> (String, HeaderMap) {
    let response = request.send().await.expect("request failed");
    let headers = response.headers().clone();
    let said = outcome(Ok(response)).await;
    if said != ACCEPTED {
        let code = said.split_once(' ').map(|(_, code)| code);
        let header = headers
            .get("x-streamtoken-error")
            .map(|v| v.to_str().unwrap());
        assert_eq!(header, code, "X-Streamtoken-Error of {said}");
    }
    (said, headers)
}

/// The outcome of asking about a token presented as `?token=` in the original URI.
async fn ask(app: &TestApp, key: &str, token: &str) -> String {
    verdict(asking(app, key, &format!("/ws/asr?lang=en&token={token}")))
        .await
        .0
}

async fn mint_with(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.post_json("/v1/tokens", Some(key), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn mint_as(app: &TestApp, key: &str, body: Value) -> String {
    mint_with(app, key, body).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn redeem(app: &TestApp, key: &str, token: &str) -> String {
    let body = json!({ "token": token });
    outcome(Ok(app
        .post_json("/v1/tokens/redeem", Some(key), &body)
        .await))
    .await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_grant_carries_the_identity_in_headers_and_a_hostile_ctx_cannot_break_them() {
    // Arrange: a ctx with what could split or smuggle a header, and characters outside ASCII.
    let app = spawn_app().await;
    let ctx: BTreeMap<String, String> = BTreeMap::from([
        ("sessionId".into(), "s-1".into()),
        ("note".into(), "one\r\nX-Injected: yes\n".into()),
        ("name".into(), "Zoë 🎙️ 日本".into()),
        ("odd".into(), "\"\\\u{7f}\u{0}\t".into()),
    ]);
    let minted = mint_with(
        &app,
        &app.api_key,
        json!({"ctx": ctx, "max_session_duration_seconds": 600}),
    )
    .await;
    let token = minted["token"].as_str().unwrap();

    // Act
    let asked_at = Utc::now();
    let (said, headers) = verdict(asking(
        &app,
        &app.api_key,
        &format!("/ws/asr?token={token}"),
    ))
    .await;

    // Assert
    assert_eq!(said, ACCEPTED);
    assert_eq!(header(&headers, "x-streamtoken-org"), "dev");
    assert_eq!(header(&headers, "x-streamtoken-token-type"), "realtime");
    assert_eq!(header(&headers, "x-streamtoken-jti"), minted["jti"]);
    let ends = parse_rfc3339(header(&headers, "x-streamtoken-session-expires-at"));
    let session = (ends - asked_at).num_seconds();
    assert!((595..=601).contains(&session), "session of {session} s");
    let raw_ctx = headers["x-streamtoken-ctx"].as_bytes();
    assert!(
        raw_ctx.iter().all(|b| (0x20..0x7f).contains(b)),
        "printable ASCII only: {:?}",
        String::from_utf8_lossy(raw_ctx)
    );
    let read_back: BTreeMap<String, String> = serde_json::from_slice(raw_ctx).unwrap();
    assert_eq!(read_back, ctx, "any JSON parser reads back the exact ctx");
    assert!(headers.get("x-injected").is_none());
}

#[tokio::test]
async fn forward_auth_and_redeem_share_one_use() {
    // Arrange
    let app = spawn_app().await;
    let key = app.api_key.clone();
    let first_here = mint_as(&app, &key, json!({})).await;
    let first_there = mint_as(&app, &key, json!({})).await;
    let twice = mint_as(&app, &key, json!({"uses": 2})).await;

    // Act + Assert
    assert_eq!(ask(&app, &key, &first_here).await, ACCEPTED);
    assert_eq!(
        redeem(&app, &key, &first_here).await,
        "409 token_already_used"
    );
    assert_eq!(redeem(&app, &key, &first_there).await, ACCEPTED);
    assert_eq!(
        ask(&app, &key, &first_there).await,
        "401 token_already_used",
        "401, not redeem's 409: nginx passes only 401 and 403 to the client"
    );
    assert_eq!(ask(&app, &key, &twice).await, ACCEPTED);
    assert_eq!(ask(&app, &key, &twice).await, ACCEPTED);
    assert_eq!(ask(&app, &key, &twice).await, "401 token_already_used");
}

#[tokio::test]
async fn every_presentation_form_is_read_and_the_original_uri_comes_first() {
    // Arrange
    let app = spawn_app().await;
    let key = app.api_key.clone();
    let fresh = || mint_as(&app, &key, json!({}));

    // Act + Assert: each form alone.
    for (form, header, value) in [
        ("X-Original-URI", ORIGINAL_URI, "/ws?token={}"),
        ("X-Forwarded-Uri", "x-forwarded-uri", "/ws?a=1&token={}"),
        ("Bearer", "authorization", "Bearer {}"),
        ("Token", "authorization", "Token {}"),
        ("bare", "authorization", "{}"),
        ("subprotocol", "sec-websocket-protocol", "bearer, {}"),
    ] {
        let token = fresh().await;
        let request = app
            .client
            .get(app.url(FORWARD_AUTH))
            .header(API_KEY, &key)
            .header(header, value.replace("{}", &token));
        assert_eq!(verdict(request).await.0, ACCEPTED, "{form}");
    }

    // The original URI's token is the one used, whatever else the client sent.
    let in_uri = fresh().await;
    let in_header = fresh().await;
    let request = asking(&app, &key, &format!("/ws?token={in_uri}"))
        .header("authorization", format!("Bearer {in_header}"));
    assert_eq!(verdict(request).await.0, ACCEPTED);
    assert_eq!(redeem(&app, &key, &in_uri).await, "409 token_already_used");
    assert_eq!(redeem(&app, &key, &in_header).await, ACCEPTED);
}

// ---------------------------------------------------------------------------------------------
// Policies: 403, nothing consumed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_keys_org_and_the_streams_token_types_both_apply_and_a_refusal_consumes_nothing() {
    // Arrange: acme's backend key, an org-bound dev gateway key, and an operator key.
    let app = spawn_app().await;
    let acme_mint = app.add_api_key("acme", &[Scope::Mint]);
    let operator = app.add_api_key_with(NewApiKey {
        any_org: true,
        ..NewApiKey::new(Org::parse("ops").unwrap(), vec![Scope::Redeem])
    });
    let dev = app.api_key.clone();
    let acme_token = mint_as(&app, &acme_mint, json!({})).await;
    let chat_token = mint_as(&app, &dev, json!({"token_type": "chat"})).await;
    let acme_chat = mint_as(&app, &acme_mint, json!({"token_type": "chat"})).await;

    // Act + Assert
    assert_eq!(ask(&app, &dev, &acme_token).await, "403 wrong_org");
    assert_eq!(ask(&app, &dev, &chat_token).await, "403 wrong_token_type");
    assert_eq!(
        ask(&app, &dev, &acme_chat).await,
        "403 wrong_org",
        "the org is judged first: another org's key learns nothing of the type"
    );
    assert_eq!(
        ask(&app, &operator, &chat_token).await,
        "403 wrong_token_type",
        "an operator key admits every org, but only the stream's token types"
    );
    let (said, headers) =
        verdict(asking(&app, &operator, &format!("/ws?token={acme_token}"))).await;
    assert_eq!(said, ACCEPTED);
    assert_eq!(header(&headers, "x-streamtoken-org"), "acme");
    // Refused twice, the chat token was never consumed: redeem (which admits every type) takes it.
    assert_eq!(redeem(&app, &dev, &chat_token).await, ACCEPTED);
}

#[tokio::test]
async fn the_token_types_forward_auth_admits_are_the_streams() {
    // Arrange
    let app = spawn_app_with(Options {
        stream: StreamSettings {
            token_types: ["realtime".to_owned(), "chat".to_owned()].into(),
            ..StreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let key = app.api_key.clone();
    let chat = mint_as(&app, &key, json!({"token_type": "chat"})).await;
    let tts = mint_as(&app, &key, json!({"token_type": "tts"})).await;

    // Act + Assert
    assert_eq!(ask(&app, &key, &chat).await, ACCEPTED);
    assert_eq!(ask(&app, &key, &tts).await, "403 wrong_token_type");
}

#[tokio::test]
async fn an_org_out_of_credits_is_refused_with_403_and_keeps_its_token() {
    // Arrange: one credit, two tokens minted while it is unspent.
    let app = spawn_app().await;
    let key = app.add_api_key_with(new_api_key(
        "acme",
        &[Scope::Mint, Scope::Redeem],
        None,
        Some(1),
    ));
    let first = mint_as(&app, &key, json!({})).await;
    let second = mint_as(&app, &key, json!({})).await;

    // Act
    let spent = ask(&app, &key, &first).await;
    let refused = ask(&app, &key, &second).await;

    // Assert: 403, not 402, which nginx would turn into a 500.
    assert_eq!(spent, ACCEPTED);
    assert_eq!(refused, "403 insufficient_credits");
    let look = app
        .post_json(
            "/v1/tokens/introspect",
            Some(&key),
            &json!({ "token": second }),
        )
        .await;
    let look: Value = look.json().await.unwrap();
    assert_eq!(
        look["active"], true,
        "the refused token was not consumed: {look}"
    );
}

#[tokio::test]
async fn the_proxys_key_comes_only_from_its_own_header_and_needs_the_redeem_scope() {
    // Arrange
    let app = spawn_app().await;
    let mint_only = app.add_api_key("dev", &[Scope::Mint]);
    let token = mint_as(&app, &app.api_key, json!({})).await;
    let uri = format!("/ws?token={token}");
    let without_key = || {
        app.client
            .get(app.url(FORWARD_AUTH))
            .header(ORIGINAL_URI, &uri)
    };

    // Act + Assert
    let (said, _) = verdict(without_key()).await;
    assert_eq!(said, "401 missing_api_key");
    let (said, _) = verdict(without_key().bearer_auth(&app.api_key)).await;
    assert_eq!(said, "401 missing_api_key", "Authorization is the client's");
    let response = without_key().send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "no API key: send X-Streamtoken-Api-Key: <key>",
        "the message names the header forward-auth reads"
    );
    let (said, _) = verdict(asking(&app, &format!("st_{}", "A".repeat(43)), &uri)).await;
    assert_eq!(said, "401 invalid_api_key");
    let (said, _) = verdict(asking(&app, &mint_only, &uri)).await;
    assert_eq!(said, "403 forbidden");
    // Nothing above consumed the token.
    assert_eq!(ask(&app, &app.api_key, &token).await, ACCEPTED);
}

// ---------------------------------------------------------------------------------------------
// The store, and the log
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_cannot_answer_is_503_and_the_retry_is_granted() {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_with(Options {
        redis: Some(redis_settings(&redis.url())),
        ..Options::default()
    })
    .await;
    let key = app.api_key.clone();
    let token = mint_as(&app, &key, json!({})).await;
    assert_eq!(
        ask(&app, &key, &mint_as(&app, &key, json!({})).await).await,
        ACCEPTED
    );

    // Act: every write waits behind a pause longer than the store timeout.
    let paused = redis.command(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    assert_eq!(paused, RedisReply::Status("OK".into()));
    let during = ask(&app, &key, &token).await;
    let unpaused = redis.command(&["CLIENT", "UNPAUSE"]);
    assert_eq!(unpaused, RedisReply::Status("OK".into()));

    // Assert: refused with 503, then granted once Redis answers again (nothing was consumed).
    assert_eq!(during, "503 replay_store_unavailable");
    let deadline = Instant::now() + Duration::from_secs(10);
    let retried = loop {
        let answer = ask(&app, &key, &token).await;
        if answer != during || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retried, ACCEPTED);
}

#[tokio::test]
async fn no_token_or_key_reaches_the_log_wherever_the_proxy_put_it() {
    // Arrange: the access log is on in tests; keep forward-auth's lines to judge them.
    let watch = log_capture::watch(FORWARD_AUTH);
    let app = spawn_app().await;
    let key = app.api_key.clone();
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(mint_as(&app, &key, json!({})).await);
    }
    let used = tokens[0].clone();
    let uris = [
        format!("/ws/asr?token={}", tokens[0]),
        format!("/ws/asr?token={used}"),
        format!("/ws/{}/asr?t={}", tokens[1], tokens[2]),
        format!("/ws/asr?access_token={}", tokens[3]),
    ];

    // Act: through every header a proxy may put a token or a key in, granted and refused.
    let mut requests: Vec<RequestBuilder> = uris
        .iter()
        .map(|uri| asking(&app, &key, uri).header("x-forwarded-uri", uri.as_str()))
        .collect();
    requests.push(
        app.client
            .post(app.url(FORWARD_AUTH))
            .header(API_KEY, &key)
            .header("authorization", tokens[4].as_str()),
    );
    requests.push(
        app.client
            .get(app.url(FORWARD_AUTH))
            .header(API_KEY, format!("{key}x"))
            .header("sec-websocket-protocol", format!("bearer, {}", tokens[5])),
    );
    let sent = requests.len();
    for request in requests {
        verdict(request).await;
    }

    // Assert: every request was logged (the access log writes once the body is sent), and no
    // line holds a token or a key; the app's drop checks every other line of its threads.
    let deadline = Instant::now() + Duration::from_secs(5);
    while watch.lines().len() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = watch.lines();
    assert!(
        lines.len() >= sent,
        "{} of {sent} logged: {lines:?}",
        lines.len()
    );
    let signatures: Vec<&str> = tokens
        .iter()
        .map(|t| t.rsplit('.').next().unwrap())
        .collect();
    for line in &lines {
        assert!(!looks_secret(line), "{line}");
        assert!(!line.contains(&key), "{line}");
        assert!(
            signatures.iter().all(|signature| !line.contains(signature)),
            "{line}"
        );
    }
}
