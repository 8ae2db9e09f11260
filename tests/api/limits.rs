//! Per-org rate limits on every minting route and credits charged at redemption, as a client
//! sees them: the `x-ratelimit-*` and `retry-after` headers, each route's own 429 and 402 body,
//! per-key overrides from the keys file, `/v1/usage`, and one credit balance shared by two real
//! server processes over Redis.
//!
//! No request in this file may be answered with a 5xx: every request goes through `send`, which
//! fails the test on one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use streamtoken::settings::RateQuota;
use streamtoken::tenancy::api_keys::Scope;
use tokio::sync::Barrier;

use crate::support::app::{
    new_api_key, redis_settings, spawn_app, spawn_app_with, Options, TestApp,
};
use crate::support::keys::{add_api_key, init_keys};
use crate::support::log_capture::looks_secret;
use crate::support::outcomes::tally;
use crate::support::process::ServerProcess;
use crate::support::redis_server::RedisServer;
use crate::support::reply::{self, Reply};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The rate the rate-limit tests run at: 5 a minute, so one request comes back every 12 s.
const RATE: u32 = 5;
/// The longest a caller refused at `RATE` can be told to wait: 60 s / 5.
const LONGEST_WAIT_SECONDS: u64 = 12;
/// How long the fire-and-forget `minted` counter in Redis may take to catch up.
const COUNTER_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two reads while waiting for a condition (never for correctness).
const POLL: Duration = Duration::from_millis(20);
/// Redis timeout for the server processes: this file tests the balance, not latency, and a debug
/// build on a busy 2-core machine can be slow to get round to a Redis reply.
const REDIS_TIMEOUT_MS: &str = "5000";

/// The stream-token page's 402 body, word for word and in its field order.
const STREAM_NO_CREDITS: &str = r#"{"error":"No credits remaining. Please add credits to continue using the service.","success":false,"code":"invalid_billing"}"#;
/// The stream-token page's 429 body, word for word and in its field order.
const STREAM_RATE_LIMITED: &str = r#"{"error":"Rate limit exceeded","success":false}"#;
const NO_CREDITS_PAGE_MESSAGE: &str =
    "No credits remaining. Please add credits to continue using the service.";
const NO_CREDITS_MESSAGE: &str = "no credits remaining for this organisation";

/// Every request of this file goes through here, so none may be answered with a 5xx.
async fn send(request: RequestBuilder) -> Reply {
    reply::send(request, "no request may be answered with a 5xx").await
}

/// A minting route, with the request and the bodies its vendor's clients expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Canonical,
    AssemblyAi,
    ElevenLabs,
    StreamToken,
    ChatGet,
    ChatPost,
}

/// Every minting route, with a description for failure messages.
const MINTING_ROUTES: [(Route, &str); 6] = [
    (Route::Canonical, "POST /v1/tokens (canonical)"),
    (Route::AssemblyAi, "GET /v3/token (AssemblyAI)"),
    (
        Route::ElevenLabs,
        "POST /v1/single-use-token/realtime_scribe (ElevenLabs)",
    ),
    (Route::StreamToken, "GET /api/v1/token (stream token)"),
    (Route::ChatGet, "GET /api/v1/chat/token (chat token)"),
    (Route::ChatPost, "POST /api/v1/chat/token (chat token)"),
];

impl Route {
    /// A valid mint request, the key in the header the vendor's clients use.
    fn request(self, client: &reqwest::Client, base: &str, key: &str) -> RequestBuilder {
        match self {
            Route::Canonical => client
                .post(format!("{base}/v1/tokens"))
                .bearer_auth(key)
                .json(&json!({})),
            Route::AssemblyAi => client
                .get(format!("{base}/v3/token?expires_in_seconds=60"))
                .header("authorization", key),
            Route::ElevenLabs => client
                .post(format!("{base}/v1/single-use-token/realtime_scribe"))
                .header("xi-api-key", key),
            Route::StreamToken => client
                .get(format!("{base}/api/v1/token?ttl=60"))
                .bearer_auth(key),
            Route::ChatGet => client
                .get(format!("{base}/api/v1/chat/token"))
                .bearer_auth(key),
            Route::ChatPost => client
                .post(format!("{base}/api/v1/chat/token"))
                .bearer_auth(key)
                .json(&json!({ "chatbotId": "bot-1", "sessionId": "session-1" })),
        }
    }

    /// The whole 429 body, given the wait the `retry-after` header announced.
    fn rate_limited_body(self, retry_after: u64) -> Value {
        let message = format!("rate limit exceeded; retry in {retry_after} s");
        match self {
            Route::Canonical => json!({ "error": { "code": "rate_limited", "message": message } }),
            Route::AssemblyAi => json!({ "error": message, "code": "rate_limited" }),
            Route::ElevenLabs => {
                json!({ "detail": { "status": "rate_limited", "message": message } })
            }
            Route::StreamToken => json!({ "error": "Rate limit exceeded", "success": false }),
            Route::ChatGet | Route::ChatPost => json!({
                "success": false,
                "error": { "message": "Rate limit exceeded", "code": "rate_limited" },
            }),
        }
    }

    /// The whole 402 body.
    fn no_credits_body(self) -> Value {
        match self {
            Route::Canonical => json!({
                "error": { "code": "insufficient_credits", "message": NO_CREDITS_MESSAGE },
            }),
            Route::AssemblyAi => {
                json!({ "error": NO_CREDITS_MESSAGE, "code": "insufficient_credits" })
            }
            Route::ElevenLabs => json!({
                "detail": { "status": "insufficient_credits", "message": NO_CREDITS_MESSAGE },
            }),
            Route::StreamToken => json!({
                "error": NO_CREDITS_PAGE_MESSAGE,
                "success": false,
                "code": "invalid_billing",
            }),
            Route::ChatGet | Route::ChatPost => json!({
                "success": false,
                "error": { "message": NO_CREDITS_PAGE_MESSAGE, "code": "insufficient_credits" },
            }),
        }
    }

    /// Where the page fixes the body word for word, the exact text (field order included).
    fn exact_text(self, status: StatusCode) -> Option<&'static str> {
        match (self, status) {
            (Route::StreamToken, StatusCode::TOO_MANY_REQUESTS) => Some(STREAM_RATE_LIMITED),
            (Route::StreamToken, StatusCode::PAYMENT_REQUIRED) => Some(STREAM_NO_CREDITS),
            _ => None,
        }
    }
}

/// Mints on `route` and asserts a 200 carrying a token.
async fn mint_ok(app: &TestApp, route: Route, key: &str) -> Reply {
    let reply = send(route.request(&app.client, &app.address, key)).await;
    assert_eq!(reply.status, StatusCode::OK, "{route:?}: {}", reply.text);
    assert!(
        reply.body["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{route:?}: no token in {}",
        reply.text
    );
    reply
}

/// Asserts a 429 in `route`'s own body with `x-ratelimit-limit: limit`, `remaining: 0` and a
/// `retry-after` of 1..=`longest_wait` whole seconds; returns the wait.
fn assert_rate_limited(reply: &Reply, route: Route, limit: u64, longest_wait: u64) -> u64 {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{route:?}: {}",
        reply.text
    );
    assert_eq!(reply.quota(), (Some(limit), Some(0)), "{route:?}");
    let wait = reply
        .number("retry-after")
        .unwrap_or_else(|| panic!("{route:?}: a 429 without retry-after"));
    assert!(
        (1..=longest_wait).contains(&wait),
        "{route:?}: retry-after {wait} is not within 1..={longest_wait}"
    );
    assert_eq!(reply.body, route.rate_limited_body(wait), "{route:?}");
    if let Some(text) = route.exact_text(reply.status) {
        assert_eq!(reply.text, text, "{route:?}: the page's body word for word");
    }
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{route:?}");
    wait
}

/// Asserts a 402 in `route`'s own body.
fn assert_no_credits(reply: &Reply, route: Route) {
    assert_eq!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{route:?}: {}",
        reply.text
    );
    assert_eq!(reply.body, route.no_credits_body(), "{route:?}");
    if let Some(text) = route.exact_text(reply.status) {
        assert_eq!(reply.text, text, "{route:?}: the page's body word for word");
    }
}

async fn spawn_app_at_rate(per_minute: u32) -> TestApp {
    spawn_app_with(Options {
        rate_limit: RateQuota::per_minute(per_minute),
        ..Options::default()
    })
    .await
}

/// A mint-and-redeem key of org "acme", which may redeem `credits` times.
fn acme_with_credits(app: &TestApp, credits: u64) -> String {
    let scopes = [Scope::Mint, Scope::Redeem];
    app.add_api_key_with(new_api_key("acme", &scopes, None, Some(credits)))
}

fn redemption(client: &reqwest::Client, base: &str, key: &str, token: &str) -> RequestBuilder {
    client
        .post(format!("{base}/v1/tokens/redeem"))
        .bearer_auth(key)
        .json(&json!({ "token": token }))
}

async fn redeem(client: &reqwest::Client, base: &str, key: &str, token: &str) -> Reply {
    send(redemption(client, base, key, token)).await
}

async fn introspect(client: &reqwest::Client, base: &str, key: &str, token: &str) -> Value {
    let reply = send(
        client
            .post(format!("{base}/v1/tokens/introspect"))
            .bearer_auth(key)
            .json(&json!({ "token": token })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

/// `GET /v1/usage` as `key`, asserting a 200 that is not cached.
async fn usage(client: &reqwest::Client, base: &str, key: &str) -> Value {
    let reply = send(client.get(format!("{base}/v1/usage")).bearer_auth(key)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply.body
}

/// Sends every request at the same moment (one task each, released together by a barrier) and
/// returns the replies in the order given.
async fn send_all_at_once(requests: Vec<RequestBuilder>) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                send(request).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.expect("request task panicked"));
    }
    replies
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_minting_route_counts_down_its_quota_then_answers_429_with_retry_after_in_its_own_body(
) {
    for (route, description) in MINTING_ROUTES {
        // Arrange: a fresh app per route, so each starts with a full bucket.
        let app = spawn_app_at_rate(RATE).await;
        let bystander = app.add_api_key("bystander", &[Scope::Mint]);

        // Act
        let mut remaining = Vec::new();
        for _ in 0..RATE {
            let reply = mint_ok(&app, route, &app.api_key).await;
            assert_eq!(reply.number("x-ratelimit-limit"), Some(5), "{description}");
            remaining.push(reply.number("x-ratelimit-remaining"));
        }
        let sixth = send(route.request(&app.client, &app.address, &app.api_key)).await;
        let other_org = mint_ok(&app, route, &bystander).await;
        let seventh = send(route.request(&app.client, &app.address, &app.api_key)).await;

        // Assert
        assert_eq!(
            remaining,
            [Some(4), Some(3), Some(2), Some(1), Some(0)],
            "{description}"
        );
        assert_rate_limited(&sixth, route, 5, LONGEST_WAIT_SECONDS);
        assert_eq!(
            other_org.quota(),
            (Some(5), Some(4)),
            "{description}: another org has its own full bucket"
        );
        assert_rate_limited(&seventh, route, 5, LONGEST_WAIT_SECONDS);
    }
}

#[tokio::test]
async fn a_request_refused_before_the_rate_limit_spends_none_of_the_quota() {
    // Arrange
    let app = spawn_app_at_rate(RATE).await;
    let redeem_only = app.add_api_key("dev", &[Scope::Redeem]);
    let key = app.api_key.clone();
    let base = app.address.clone();
    let client = &app.client;

    #[rustfmt::skip]
    let refused = [
        // (request, status, description)
        (client.post(format!("{base}/v1/tokens")).bearer_auth(&key).json(&json!({ "expires_in_seconds": 0 })), StatusCode::BAD_REQUEST, "canonical: expires_in_seconds out of range"),
        (client.get(format!("{base}/v3/token")).header("authorization", &key), StatusCode::BAD_REQUEST, "AssemblyAI: expires_in_seconds missing"),
        (client.get(format!("{base}/api/v1/token?ttl=0")).bearer_auth(&key), StatusCode::BAD_REQUEST, "stream token: ttl out of range"),
        (client.get(format!("{base}/api/v1/chat/token?ttl=301")).bearer_auth(&key), StatusCode::BAD_REQUEST, "chat token: ttl out of range"),
        (client.post(format!("{base}/v1/single-use-token/nope")).header("xi-api-key", &key), StatusCode::UNPROCESSABLE_ENTITY, "ElevenLabs: unknown token type"),
        (client.post(format!("{base}/v1/tokens")).json(&json!({})), StatusCode::UNAUTHORIZED, "canonical: no key"),
        (client.post(format!("{base}/v1/tokens")).bearer_auth(&redeem_only).json(&json!({})), StatusCode::FORBIDDEN, "canonical: a redeem-only key of the same org"),
        (client.get(format!("{base}/api/v1/token")).bearer_auth(&redeem_only), StatusCode::FORBIDDEN, "stream token: a redeem-only key of the same org"),
    ];

    for (request, expected, description) in refused {
        // Act
        let reply = send(request).await;

        // Assert
        assert_eq!(reply.status, expected, "{description}: {}", reply.text);
        assert_eq!(
            reply.quota(),
            (None, None),
            "{description}: a request refused before the rate limit reports no quota"
        );
    }
    let mut remaining = Vec::new();
    for _ in 0..RATE {
        remaining.push(mint_ok(&app, Route::Canonical, &key).await.quota());
    }
    assert_eq!(
        remaining,
        [4, 3, 2, 1, 0].map(|n| (Some(5), Some(n))),
        "the whole quota is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_mints_per_org_get_exactly_five_200s_and_forty_five_429s() {
    // Arrange: org "dev" spreads its 50 over every minting route at once; org "other" sends 50
    // to the canonical route at the same moment.
    let app = spawn_app_at_rate(RATE).await;
    let other = app.add_api_key("other", &[Scope::Mint]);
    let mut requests = Vec::new();
    let mut orgs = Vec::new();
    for i in 0..50 {
        let (route, _) = MINTING_ROUTES[i % MINTING_ROUTES.len()];
        requests.push(route.request(&app.client, &app.address, &app.api_key));
        orgs.push("dev");
        requests.push(Route::Canonical.request(&app.client, &app.address, &other));
        orgs.push("other");
    }

    // Act
    let started = Instant::now();
    let replies = send_all_at_once(requests).await;
    eprintln!("100 concurrent mints took {:?}", started.elapsed());

    // Assert
    for org in ["dev", "other"] {
        let of_org: Vec<&Reply> = replies
            .iter()
            .zip(&orgs)
            .filter(|(_, o)| **o == org)
            .map(|(r, _)| r)
            .collect();
        let statuses = tally(of_org.iter().map(|r| r.status.as_u16().to_string()));
        assert_eq!(
            statuses,
            BTreeMap::from([("200".to_owned(), 5), ("429".to_owned(), 45)]),
            "org {org}"
        );
        let mut remaining = Vec::new();
        for reply in &of_org {
            if reply.status == StatusCode::OK {
                assert_eq!(reply.number("x-ratelimit-limit"), Some(5), "org {org}");
                remaining.push(reply.number("x-ratelimit-remaining").unwrap());
            } else {
                assert_eq!(reply.quota(), (Some(5), Some(0)), "org {org}");
                let wait = reply.number("retry-after").expect("retry-after on a 429");
                assert!(
                    (1..=LONGEST_WAIT_SECONDS).contains(&wait),
                    "org {org}: {wait}"
                );
            }
        }
        // Concurrent checks may each read the clock a few nanoseconds apart from the order in
        // which they took their cell, so one count can read one low; the bucket still ends empty.
        remaining.sort_unstable();
        assert!(remaining.iter().all(|n| *n < 5), "org {org}: {remaining:?}");
        assert_eq!(remaining.first(), Some(&0), "org {org}: {remaining:?}");
    }
}

#[tokio::test]
async fn a_key_with_its_own_rate_uses_it_on_every_route_while_the_orgs_other_keys_share_the_org_bucket(
) {
    // Arrange: three keys of org "dev": the default one, a second without an override, and one
    // with `rate_per_minute: 2` in the keys file.
    let app = spawn_app_at_rate(RATE).await;
    let overridden = app.add_api_key_with(new_api_key("dev", &[Scope::Mint], Some(2), None));
    let second = app.add_api_key("dev", &[Scope::Mint]);
    let first = app.api_key.clone();

    // Act + Assert: the overridden key has a bucket of 2, shared by every route it mints on.
    let one = mint_ok(&app, Route::Canonical, &overridden).await;
    let two = mint_ok(&app, Route::StreamToken, &overridden).await;
    let three = send(Route::AssemblyAi.request(&app.client, &app.address, &overridden)).await;
    assert_eq!(one.quota(), (Some(2), Some(1)));
    assert_eq!(two.quota(), (Some(2), Some(0)));
    assert_rate_limited(&three, Route::AssemblyAi, 2, 30);

    // The org's other keys share the org's bucket of 5, untouched by the overridden key.
    let mut seen = Vec::new();
    for key in [&first, &second, &first, &second, &first] {
        seen.push(mint_ok(&app, Route::Canonical, key).await.quota());
    }
    assert_eq!(seen, [4, 3, 2, 1, 0].map(|n| (Some(5), Some(n))));
    let refused = send(Route::Canonical.request(&app.client, &app.address, &second)).await;
    assert_rate_limited(&refused, Route::Canonical, 5, LONGEST_WAIT_SECONDS);
}

#[tokio::test]
async fn keys_add_api_key_writes_rate_per_minute_and_credits_and_a_real_server_applies_them() {
    // Arrange
    let (dir, dev_key) = init_keys();

    // Act
    let rate_and_credits = ["--rate-per-minute", "3", "--credits", "10"];
    let acme_key = add_api_key(dir.path(), "acme", &[], &rate_and_credits);

    // Assert: the record in api_keys.json.
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("api_keys.json")).unwrap())
            .unwrap();
    let records = file["api_keys"].as_array().unwrap();
    let acme: Vec<&Value> = records.iter().filter(|r| r["org"] == "acme").collect();
    assert_eq!(acme.len(), 1, "{file}");
    assert_eq!(acme[0]["rate_per_minute"], 3, "{file}");
    assert_eq!(acme[0]["credits"], 10, "{file}");
    assert_eq!(acme[0]["scopes"], json!(["mint"]), "{file}");
    let dev = records.iter().find(|r| r["org"] == "dev").unwrap();
    assert!(
        dev.get("rate_per_minute").is_none() && dev.get("credits").is_none(),
        "a key without overrides stores neither field: {dev}"
    );

    // And a real server applies both: its default is 7 a minute, acme's key has 3.
    let server = ServerProcess::spawn(dir.path(), &[("STREAMTOKEN_RATE_PER_MINUTE", "7")]);
    let client = reqwest::Client::new();
    let acme_mint = send(Route::Canonical.request(&client, &server.address, &acme_key)).await;
    assert_eq!(acme_mint.status, StatusCode::OK, "{}", acme_mint.text);
    assert_eq!(acme_mint.quota(), (Some(3), Some(2)));
    let dev_mint = send(Route::StreamToken.request(&client, &server.address, &dev_key)).await;
    assert_eq!(dev_mint.status, StatusCode::OK, "{}", dev_mint.text);
    assert_eq!(dev_mint.quota(), (Some(7), Some(6)));
    assert_eq!(
        usage(&client, &server.address, &acme_key).await,
        json!({ "org": "acme", "minted": 1, "redeemed": 0, "credits_remaining": 10 })
    );
    let log = server.log_text();
    assert!(
        !log.lines().any(looks_secret),
        "a secret reached the log:\n{log}"
    );
}

#[tokio::test]
async fn redemptions_are_never_rate_limited() {
    // Arrange: spend the whole minting quota.
    let app = spawn_app_at_rate(RATE).await;
    let mut tokens = Vec::new();
    for _ in 0..RATE {
        let reply = mint_ok(&app, Route::Canonical, &app.api_key).await;
        tokens.push(reply.body["token"].as_str().unwrap().to_owned());
    }
    let refused = send(Route::Canonical.request(&app.client, &app.address, &app.api_key)).await;
    assert_rate_limited(&refused, Route::Canonical, 5, LONGEST_WAIT_SECONDS);

    // Act: 15 requests to redeem and introspect, three times the minting quota.
    let mut outcomes = Vec::new();
    for token in &tokens {
        let first = redeem(&app.client, &app.address, &app.api_key, token).await;
        let again = redeem(&app.client, &app.address, &app.api_key, token).await;
        let seen = introspect(&app.client, &app.address, &app.api_key, token).await;
        for reply in [&first, &again] {
            assert_eq!(
                reply.quota(),
                (None, None),
                "redemption carries no rate-limit headers"
            );
        }
        outcomes.push((first.outcome(), again.outcome(), seen["active"].clone()));
    }

    // Assert
    for outcome in &outcomes {
        assert_eq!(
            outcome,
            &(
                "200".to_owned(),
                "409 token_already_used".to_owned(),
                json!(false)
            )
        );
    }
    let still = send(Route::Canonical.request(&app.client, &app.address, &app.api_key)).await;
    assert_rate_limited(&still, Route::Canonical, 5, LONGEST_WAIT_SECONDS);
}

// ---------------------------------------------------------------------------------------------
// Credits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn credits_are_spent_by_redemptions_and_a_spent_org_can_neither_mint_nor_redeem_until_topped_up(
) {
    // Arrange: org "acme" with 2 credits.
    let app = spawn_app().await;
    let acme = acme_with_credits(&app, 2);
    let (client, base) = (&app.client, app.address.as_str());

    // Act + Assert: minting is free.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let reply = mint_ok(&app, Route::Canonical, &acme).await;
        tokens.push(reply.body["token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        usage(client, base, &acme).await,
        json!({ "org": "acme", "minted": 3, "redeemed": 0, "credits_remaining": 2 })
    );

    // Each redemption spends one credit.
    for token in &tokens[..2] {
        let reply = redeem(client, base, &acme, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(
        usage(client, base, &acme).await,
        json!({ "org": "acme", "minted": 3, "redeemed": 2, "credits_remaining": 0 })
    );

    // With none left, every minting route refuses in its own body, and counts nothing.
    for (route, description) in MINTING_ROUTES {
        let reply = send(route.request(client, base, &acme)).await;
        assert_no_credits(&reply, route);
        assert!(
            !reply.text.contains("eyJ"),
            "{description}: no token in a refusal"
        );
    }
    assert_eq!(usage(client, base, &acme).await["minted"], 3);

    // The third token, minted while credit remained, cannot be redeemed, and is not consumed.
    let refused = redeem(client, base, &acme, &tokens[2]).await;
    assert_no_credits(&refused, Route::Canonical);
    let seen = introspect(client, base, &acme, &tokens[2]).await;
    assert_eq!(
        (&seen["active"], &seen["uses_remaining"]),
        (&json!(true), &json!(1))
    );

    // Topping up (another acme key with 3 credits; the allowance is the largest) lets it through.
    app.add_api_key_with(new_api_key("acme", &[Scope::Mint], None, Some(3)));
    assert_eq!(usage(client, base, &acme).await["credits_remaining"], 1);
    let redeemed = redeem(client, base, &acme, &tokens[2]).await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.text);
    assert_eq!(
        usage(client, base, &acme).await,
        json!({ "org": "acme", "minted": 3, "redeemed": 3, "credits_remaining": 0 })
    );
    // A used token is reported as used, not as unpaid.
    let replay = redeem(client, base, &acme, &tokens[2]).await;
    assert_eq!(replay.outcome(), "409 token_already_used");
}

#[tokio::test]
async fn an_org_without_credits_is_unlimited_and_shows_credits_remaining_null() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let mut tokens = Vec::new();
    for (route, _) in MINTING_ROUTES {
        let reply = mint_ok(&app, route, &app.api_key).await;
        tokens.push(reply.body["token"].as_str().unwrap().to_owned());
    }
    for token in &tokens[..4] {
        let reply = redeem(&app.client, &app.address, &app.api_key, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }

    // Assert
    assert_eq!(
        usage(&app.client, &app.address, &app.api_key).await,
        json!({ "org": "dev", "minted": 6, "redeemed": 4, "credits_remaining": null })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_redemptions_against_ten_credits_get_exactly_ten_200s_and_twenty_402s() {
    // Arrange
    let app = spawn_app().await;
    let acme = acme_with_credits(&app, 10);
    let mut tokens = Vec::new();
    for _ in 0..30 {
        let reply = mint_ok(&app, Route::Canonical, &acme).await;
        tokens.push(reply.body["token"].as_str().unwrap().to_owned());
    }

    // Act
    let requests = tokens
        .iter()
        .map(|token| redemption(&app.client, &app.address, &acme, token))
        .collect();
    let replies = send_all_at_once(requests).await;

    // Assert
    assert_eq!(
        tally(replies.iter().map(Reply::outcome)),
        BTreeMap::from([
            ("200".to_owned(), 10),
            ("402 insufficient_credits".to_owned(), 20)
        ])
    );
    assert_eq!(
        usage(&app.client, &app.address, &acme).await,
        json!({ "org": "acme", "minted": 30, "redeemed": 10, "credits_remaining": 0 })
    );
    for (token, reply) in tokens.iter().zip(&replies) {
        let seen = introspect(&app.client, &app.address, &acme, token).await;
        assert_eq!(
            seen["active"],
            json!(reply.status != StatusCode::OK),
            "a token refused for credit stays unused; a redeemed one is used"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redemptions_of_one_unpaid_token_are_all_refused_for_credit_never_as_used() {
    let redis = RedisServer::start();
    let mut stores = vec![("memory", None)];
    if let Some(redis) = &redis {
        let mut settings = redis_settings(&redis.url());
        settings.timeout = Duration::from_secs(5);
        stores.push(("redis", Some(settings)));
    }
    for (store, settings) in stores {
        // Arrange: acme has spent its one credit and holds a token minted before that.
        let app = spawn_app_with(Options {
            redis: settings,
            ..Options::default()
        })
        .await;
        let acme = acme_with_credits(&app, 1);
        let spent = mint_ok(&app, Route::Canonical, &acme).await;
        let unpaid = mint_ok(&app, Route::Canonical, &acme).await;
        let spent = spent.body["token"].as_str().unwrap();
        let unpaid = unpaid.body["token"].as_str().unwrap();
        let first = redeem(&app.client, &app.address, &acme, spent).await;
        assert_eq!(first.status, StatusCode::OK, "{store}: {}", first.text);

        // Act: the unpaid token, 200 times at once.
        let requests = (0..200)
            .map(|_| redemption(&app.client, &app.address, &acme, unpaid))
            .collect();
        let replies = send_all_at_once(requests).await;

        // Assert: nobody is told the token was used, and it was not.
        assert_eq!(
            tally(replies.iter().map(Reply::outcome)),
            BTreeMap::from([("402 insufficient_credits".to_owned(), 200)]),
            "{store}"
        );
        let seen = introspect(&app.client, &app.address, &acme, unpaid).await;
        assert_eq!(seen["active"], json!(true), "{store}");
    }
}

// ---------------------------------------------------------------------------------------------
// /v1/usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn usage_requires_an_api_key_and_reports_only_the_callers_org() {
    // Arrange
    let app = spawn_app().await;
    let beta = app.add_api_key_with(new_api_key("beta", &[Scope::Mint], None, Some(7)));
    let gateway = app.add_api_key("gamma", &[Scope::Redeem]);
    let token = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
    mint_ok(&app, Route::StreamToken, &beta).await;
    mint_ok(&app, Route::ElevenLabs, &beta).await;
    let unknown = format!("st_{}", "A".repeat(43));

    #[rustfmt::skip]
    let refused = [
        // (request, code, description)
        (app.client.get(app.url("/v1/usage")), "missing_api_key", "no key"),
        (app.client.get(app.url("/v1/usage")).bearer_auth("   "), "missing_api_key", "a blank key"),
        (app.client.get(app.url("/v1/usage")).bearer_auth(&unknown), "invalid_api_key", "an unknown key"),
    ];
    for (request, code, description) in refused {
        // Act
        let reply = send(request).await;

        // Assert
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{description}");
        assert_eq!(reply.body["error"]["code"], code, "{description}");
        assert_eq!(
            reply.body.as_object().unwrap().len(),
            1,
            "{description}: {}",
            reply.text
        );
    }

    #[rustfmt::skip]
    let expected = [
        // (key, usage, description)
        (&app.api_key, json!({ "org": "dev", "minted": 1, "redeemed": 1, "credits_remaining": null }), "org dev"),
        (&beta, json!({ "org": "beta", "minted": 2, "redeemed": 0, "credits_remaining": 7 }), "org beta, with credits"),
        (&gateway, json!({ "org": "gamma", "minted": 0, "redeemed": 0, "credits_remaining": null }), "a redeem-only key's org"),
    ];
    for (key, want, description) in expected {
        assert_eq!(
            usage(&app.client, &app.address, key).await,
            want,
            "{description}"
        );
    }
    // Naming another org in the query is refused: a key reads only its own org's usage.
    let asked = send(
        app.client
            .get(app.url("/v1/usage?org=dev"))
            .bearer_auth(&beta),
    )
    .await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN, "{}", asked.text);
    assert_eq!(asked.body["error"]["code"], "wrong_org", "{}", asked.text);
}

// ---------------------------------------------------------------------------------------------
// Redis: one balance for every process
// ---------------------------------------------------------------------------------------------

/// Reads `/v1/usage` until `minted` reaches `want` or the deadline passes.
async fn wait_for_minted(client: &reqwest::Client, base: &str, key: &str, want: u64) -> Value {
    let deadline = Instant::now() + COUNTER_DEADLINE;
    loop {
        let seen = usage(client, base, key).await;
        if seen["minted"] == want {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "minted did not reach {want} within {COUNTER_DEADLINE:?}: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_redis_spend_one_shared_credit_balance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Arrange: org acme with 4 credits, two servers on the same Redis and prefix.
    let (keys, _) = init_keys();
    let key = add_api_key(
        keys.path(),
        "acme",
        &["mint", "redeem"],
        &["--credits", "4"],
    );
    let url = redis.url();
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let env = [
        ("STREAMTOKEN_REDIS_URL", url.as_str()),
        ("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()),
        ("STREAMTOKEN_REDIS_TIMEOUT_MS", REDIS_TIMEOUT_MS),
    ];
    let servers = [
        ServerProcess::spawn(keys.path(), &env),
        ServerProcess::spawn(keys.path(), &env),
    ];
    let bases = [servers[0].address.clone(), servers[1].address.clone()];
    let client = reqwest::Client::new();

    // Act: 8 tokens minted alternately on both, then all redeemed at once, split across both.
    let mut tokens = Vec::new();
    for i in 0..8 {
        let reply = send(Route::Canonical.request(&client, &bases[i % 2], &key)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        tokens.push(reply.body["token"].as_str().unwrap().to_owned());
    }
    // Each server adds its minted count to Redis within a second: wait until both have.
    for base in &bases {
        wait_for_minted(&client, base, &key, 8).await;
    }
    let requests = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            client
                .post(format!("{}/v1/tokens/redeem", bases[(i + 1) % 2]))
                .bearer_auth(&key)
                .json(&json!({ "token": token }))
        })
        .collect();
    let started = Instant::now();
    let replies = send_all_at_once(requests).await;
    eprintln!(
        "8 redemptions over two servers took {:?}",
        started.elapsed()
    );

    // Assert
    assert_eq!(
        tally(replies.iter().map(Reply::outcome)),
        BTreeMap::from([
            ("200".to_owned(), 4),
            ("402 insufficient_credits".to_owned(), 4)
        ])
    );
    for base in &bases {
        assert_eq!(
            usage(&client, base, &key).await,
            json!({ "org": "acme", "minted": 8, "redeemed": 4, "credits_remaining": 0 }),
            "{base}"
        );
    }
    // The refused tokens were released in Redis, seen as unused from either server.
    for (i, (token, reply)) in tokens.iter().zip(&replies).enumerate() {
        let seen = introspect(&client, &bases[i % 2], &key, token).await;
        assert_eq!(seen["active"], json!(reply.status != StatusCode::OK));
    }
    // Neither server mints for the spent org any more.
    for base in &bases {
        assert_no_credits(
            &send(Route::Canonical.request(&client, base, &key)).await,
            Route::Canonical,
        );
        assert_no_credits(
            &send(Route::StreamToken.request(&client, base, &key)).await,
            Route::StreamToken,
        );
    }
    for server in &servers {
        let log = server.log_text();
        assert!(
            !log.lines().any(looks_secret),
            "a secret reached the log:\n{log}"
        );
    }
}
