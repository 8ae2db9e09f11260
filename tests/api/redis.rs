//! The Redis replay store end to end: single use and counted use, the race for one token inside
//! one server and across two real server processes, and failing closed while Redis is down.
//!
//! Every test starts its own `redis-server` and uses a random key prefix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use streamtoken::keys::admin::NewApiKey;
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::tenancy::org::Org;
use tokio::sync::Barrier;

use crate::support::app::{
    error_code, redis_settings, spawn_app_with, spawn_app_with_redis, Options, TestApp,
};
use crate::support::keys::init_keys;
use crate::support::outcomes::{outcome, tally};
use crate::support::process::ServerProcess;
use crate::support::redis_server::{RedisReply, RedisServer};

/// Longest a request may take while Redis is down: the store timeout is 500 ms.
const FAIL_FAST: Duration = Duration::from_secs(2);
/// How long Redis may take to be usable again after it comes back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);
/// Redis timeout for the races, which test atomicity, not latency. With the default 500 ms, a
/// debug build answering 1,000 requests at once on a busy 2-core machine can take longer than
/// that to get round to a Redis reply, and (rightly) answers 503 instead.
const RACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts while waiting for a condition (never for correctness).
const POLL: Duration = Duration::from_millis(20);

/// One redemption to fire: the redeem URL, the API key, the token.
struct Redemption {
    url: String,
    api_key: String,
    token: String,
}

impl Redemption {
    fn on_app(app: &TestApp, token: &str) -> Self {
        Redemption {
            url: app.url("/v1/tokens/redeem"),
            api_key: app.api_key.clone(),
            token: token.to_owned(),
        }
    }
}

/// Fires every redemption at the same moment (one task each, released together by a barrier)
/// and returns the outcomes in the order given.
async fn redeem_all_at_once(redemptions: Vec<Redemption>) -> Vec<String> {
    let client = reqwest::Client::new();
    let barrier = Arc::new(Barrier::new(redemptions.len()));
    let tasks: Vec<_> = redemptions
        .into_iter()
        .map(|r| {
            let (client, barrier) = (client.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = client
                    .post(&r.url)
                    .bearer_auth(&r.api_key)
                    .json(&json!({ "token": r.token }));
                barrier.wait().await;
                outcome(request.send().await).await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("redemption task panicked"));
    }
    outcomes
}

fn exactly_one_success(total: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([
        ("200".to_owned(), 1),
        ("409 token_already_used".to_owned(), total - 1),
    ])
}

/// An in-process app on `url` with the race timeout and its own random key prefix.
async fn spawn_app_for_races(url: &str) -> TestApp {
    let mut redis = redis_settings(url);
    redis.timeout = RACE_TIMEOUT;
    spawn_app_with(Options {
        redis: Some(redis),
        ..Options::default()
    })
    .await
}

/// A Redis of its own and an app on it; `None` (the test is skipped) without redis-server.
async fn app_on_fresh_redis() -> Option<(RedisServer, TestApp)> {
    let redis = RedisServer::start()?;
    let app = spawn_app_with_redis(&redis.url()).await;
    Some((redis, app))
}

/// Redeeming `token` once more is refused with 409 `token_already_used`.
async fn assert_already_used(app: &TestApp, token: &str) {
    let response = app.redeem(token).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "token_already_used");
}

async fn json_of(response: Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_token_redeems_once_then_conflicts_with_token_already_used() {
    let Some((_redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let token = app.mint_token(json!({})).await;

    let first = app.redeem(&token).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(json_of(first).await["uses_remaining"], 0);

    assert_already_used(&app, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_use_token_redeems_exactly_three_times_then_conflicts() {
    let Some((_redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let token = app.mint_token(json!({ "uses": 3 })).await;

    for remaining in [2, 1, 0] {
        let response = app.redeem(&token).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "use with {remaining} left"
        );
        assert_eq!(json_of(response).await["uses_remaining"], remaining);
    }
    for _ in 0..2 {
        assert_already_used(&app, &token).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_ready_and_names_redis_as_the_replay_store() {
    let Some((_redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["replay_store"], "redis", "{body}");
    assert_eq!(body["nodes"][0]["ok"], true, "{body}");
    // Same host, same clock: the measured skew is the round trip's noise.
    let skew = body["clock_skew_seconds"]
        .as_f64()
        .expect("a measured skew");
    assert!(skew.abs() < 1.0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redeemed_jti_is_kept_under_its_orgs_tag_until_the_token_expiry_plus_twice_the_leeway() {
    let Some((redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let prefix = app.settings.redis.as_ref().unwrap().key_prefix.clone();
    let leeway = app.settings.token.leeway_seconds as i64;

    for body in [
        json!({ "expires_in_seconds": 300 }),
        json!({ "expires_in_seconds": 120, "uses": 3 }),
    ] {
        let minted = json_of(app.mint(body.clone()).await).await;
        let jti = minted["jti"].as_str().unwrap();
        let exp = chrono::DateTime::parse_from_rfc3339(minted["expires_at"].as_str().unwrap())
            .unwrap()
            .timestamp();
        // Hash-tagged by org: a use and the org's counters share one cluster slot.
        let key = format!("{prefix}:{{dev}}:use:{jti}");
        assert_eq!(redis.command(&["EXISTS", &key]), RedisReply::Int(0));

        let token = minted["token"].as_str().unwrap();
        assert_eq!(app.redeem(token).await.status(), StatusCode::OK);

        // One field per accepted use, named by the attempt that made it.
        assert_eq!(redis.command(&["HLEN", &key]), RedisReply::Int(1), "{body}");
        // The entry lives until exp + 2 × leeway + 1 s; allow 2 s for the time the test took.
        let expected = exp + 2 * leeway + 1 - chrono::Utc::now().timestamp();
        let RedisReply::Int(ttl) = redis.command(&["TTL", &key]) else {
            panic!("TTL of {key} is not an integer");
        };
        assert!(
            (expected - 2..=expected).contains(&ttl),
            "TTL {ttl}, expected about {expected} for {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_redemptions_of_one_token_give_exactly_one_success() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_for_races(&redis.url()).await;
    let token = app.mint_token(json!({})).await;

    let outcomes = redeem_all_at_once(
        (0..1000)
            .map(|_| Redemption::on_app(&app, &token))
            .collect(),
    )
    .await;

    assert_eq!(tally(&outcomes), exactly_one_success(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_redemptions_of_a_three_use_token_give_exactly_three_successes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = spawn_app_for_races(&redis.url()).await;
    let token = app.mint_token(json!({ "uses": 3 })).await;

    let outcomes =
        redeem_all_at_once((0..100).map(|_| Redemption::on_app(&app, &token)).collect()).await;

    assert_eq!(
        tally(&outcomes),
        BTreeMap::from([
            ("200".to_owned(), 3),
            ("409 token_already_used".to_owned(), 97)
        ])
    );
}

/// A `streamtoken serve` process seen through HTTP.
struct Remote<'a> {
    server: &'a ServerProcess,
    api_key: &'a str,
    client: reqwest::Client,
}

impl Remote<'_> {
    async fn mint_token(&self) -> String {
        let response = self
            .client
            .post(self.server.url("/v1/tokens"))
            .bearer_auth(self.api_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn redemption(&self, token: &str) -> Redemption {
        Redemption {
            url: self.server.url("/v1/tokens/redeem"),
            api_key: self.api_key.to_owned(),
            token: token.to_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sharing_one_redis_let_each_token_through_exactly_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (keys, api_key) = init_keys();
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let env = [
        ("STREAMTOKEN_REDIS_URL", redis.url()),
        ("STREAMTOKEN_REDIS_PREFIX", prefix),
        (
            "STREAMTOKEN_REDIS_TIMEOUT_MS",
            RACE_TIMEOUT.as_millis().to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (server_a, server_b) = (
        ServerProcess::spawn(keys.path(), &env),
        ServerProcess::spawn(keys.path(), &env),
    );
    let client = reqwest::Client::new();
    let a = Remote {
        server: &server_a,
        api_key: &api_key,
        client: client.clone(),
    };
    let b = Remote {
        server: &server_b,
        api_key: &api_key,
        client,
    };

    // One token raced 1,000 times, alternating between the two servers.
    let token = a.mint_token().await;
    let started = Instant::now();
    let outcomes = redeem_all_at_once(
        (0..1000)
            .map(|i| [&a, &b][i % 2].redemption(&token))
            .collect(),
    )
    .await;
    let first_race = started.elapsed();
    assert_eq!(tally(&outcomes), exactly_one_success(1000));
    let winners_on_a = outcomes.iter().step_by(2).filter(|o| *o == "200").count();
    eprintln!("1,000 redemptions over two servers took {first_race:?}; winner on server A: {winners_on_a}");

    // Four more tokens, 200 redemptions each, all interleaved; two of them minted on B.
    let tokens = [
        a.mint_token().await,
        b.mint_token().await,
        a.mint_token().await,
        b.mint_token().await,
    ];
    let outcomes = redeem_all_at_once(
        (0..800)
            .map(|i| [&a, &b][i % 2].redemption(&tokens[(i / 2) % 4]))
            .collect(),
    )
    .await;
    for (n, token) in tokens.iter().enumerate() {
        let of_token: Vec<&String> = outcomes
            .iter()
            .enumerate()
            .filter(|(i, _)| (i / 2) % 4 == n)
            .map(|(_, o)| o)
            .collect();
        assert_eq!(of_token.len(), 200);
        assert_eq!(
            tally(of_token),
            exactly_one_success(200),
            "token {n} ({} chars)",
            token.len()
        );
    }

    for server in [&server_a, &server_b] {
        let log = server.log_text();
        assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
        assert!(!log.contains(&api_key), "the API key reached the log");
    }
}

/// Sends `request` and returns its response, failing the test if it took `FAIL_FAST` or more.
async fn answered_quickly(
    what: &str,
    request: impl std::future::Future<Output = Response>,
) -> Response {
    let started = Instant::now();
    let response = request.await;
    let took = started.elapsed();
    assert!(
        took < FAIL_FAST,
        "{what} took {took:?} while Redis was down"
    );
    response
}

/// Restarts Redis, then waits until redemption works and `/readyz` is ready again.
async fn restart_and_recover(redis: &mut RedisServer, app: &TestApp, when: &str) {
    redis.restart();
    let recovered = wait_until_a_fresh_token_redeems(app).await;
    let ready = wait_until_ready(app).await;
    eprintln!("{when}: redemption worked after {recovered:?}, /readyz {ready:?} later");
}

/// A quick 503 `replay_store_unavailable` to `request` while Redis is down.
async fn assert_refused_quickly(what: &str, request: impl std::future::Future<Output = Response>) {
    assert_unavailable(answered_quickly(what, request).await, what).await;
}

async fn assert_unavailable(response: Response, what: &str) {
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{what} while Redis is down"
    );
    assert_eq!(
        error_code(response).await,
        "replay_store_unavailable",
        "{what}"
    );
}

/// Mints a fresh token and redeems it until that succeeds; any answer other than 200 or 503
/// fails the test. Returns how long it took.
async fn wait_until_a_fresh_token_redeems(app: &TestApp) -> Duration {
    let started = Instant::now();
    let mut attempts = Vec::new();
    loop {
        let token = app.mint_token(json!({})).await;
        let answer = outcome(Ok(app.redeem(&token).await)).await;
        if answer == "200" {
            return started.elapsed();
        }
        assert_eq!(
            answer, "503 replay_store_unavailable",
            "while Redis comes back"
        );
        attempts.push(answer);
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "no successful redemption within {RECOVERY_DEADLINE:?} of Redis coming back ({} attempts)",
            attempts.len()
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_until_ready(app: &TestApp) -> Duration {
    let started = Instant::now();
    loop {
        let response = app.get("/readyz").await;
        if response.status() == StatusCode::OK {
            return started.elapsed();
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "/readyz not ready within {RECOVERY_DEADLINE:?} of Redis coming back"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn uses_left(app: &TestApp, token: &str) -> Value {
    json_of(app.introspect(token).await).await["uses_remaining"].clone()
}

#[tokio::test]
async fn introspection_on_redis_counts_down_the_uses_left_of_single_and_multi_use_tokens() {
    // Arrange
    let Some((_redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let single = app.mint_token(json!({})).await;
    let triple = app.mint_token(json!({ "uses": 3 })).await;

    // Act
    let before = (
        uses_left(&app, &single).await,
        uses_left(&app, &triple).await,
    );
    assert_eq!(app.redeem(&single).await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.redeem(&triple).await.status(), StatusCode::OK);
    }
    let after = (
        uses_left(&app, &single).await,
        uses_left(&app, &triple).await,
    );

    // Assert: a single-use entry holds a marker, a counted one its number of uses.
    assert_eq!(before, (json!(1), json!(3)));
    assert_eq!(after, (json!(0), json!(1)));
}

#[tokio::test]
async fn an_introspection_redis_cannot_answer_is_a_503_counted_as_a_store_error() {
    // Arrange
    let Some((mut redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let token = app.mint_token(json!({})).await;
    redis.kill();

    // Act
    let response = app.introspect(&token).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        metrics.contains("streamtoken_replay_store_errors_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_down_redemption_fails_closed_quickly_and_works_again_once_it_is_back() {
    let Some((mut redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let used = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&used).await.status(), StatusCode::OK);
    let fresh = app.mint_token(json!({})).await;

    redis.kill();

    assert_refused_quickly("redeeming a fresh token", app.redeem(&fresh)).await;
    assert_refused_quickly("redeeming a used token", app.redeem(&used)).await;
    assert_refused_quickly("redeeming a fresh token again", app.redeem(&fresh)).await;
    let response = answered_quickly("minting", app.mint(json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK, "minting needs no Redis");
    assert_refused_quickly("/readyz", app.get("/readyz")).await;

    restart_and_recover(&mut redis, &app, "after the Redis restart").await;

    // A 503 never burned the token: the store was never reached, so it redeems now, once.
    assert_eq!(app.redeem(&fresh).await.status(), StatusCode::OK);
    assert_already_used(&app, &fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_while_redis_is_down_mints_refuses_redemption_and_recovers_when_redis_comes_up(
) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    let app = spawn_app_with_redis(&redis.url()).await;

    let response = answered_quickly("minting", app.mint(json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let token = json_of(response).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_refused_quickly("redeeming", app.redeem(&token)).await;
    assert_refused_quickly("/readyz", app.get("/readyz")).await;

    restart_and_recover(&mut redis, &app, "Redis came up after start").await;
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
}

/// Strict mode must refuse before it writes: a Redis that refuses `CONFIG` (renamed away, as
/// managed services and ACLs do) cannot confirm persistence, so nothing may be spent.
#[tokio::test]
async fn strict_mode_on_a_redis_that_refuses_config_spends_neither_a_use_nor_a_credit() {
    // Arrange
    let Some(redis) = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--rename-command",
        "CONFIG",
        "",
    ]) else {
        return;
    };
    let mut strict = redis_settings(&redis.url());
    strict.require_persistence = true;
    let prefix = strict.key_prefix.clone();
    let app = spawn_app_with(Options {
        redis: Some(strict),
        ..Options::default()
    })
    .await;
    let minter = app.add_api_key_with(NewApiKey {
        credits: Some(5),
        ..NewApiKey::new(Org::parse("acme").unwrap(), vec![Scope::Mint])
    });
    let gateway = app.add_api_key("acme", &[Scope::Redeem]);
    let body: Value = app
        .post_json("/v1/tokens", Some(&minter), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let (token, jti) = (
        body["token"].as_str().unwrap(),
        body["jti"].as_str().unwrap(),
    );

    // Act
    let answer = app
        .post_json(
            "/v1/tokens/redeem",
            Some(&gateway),
            &json!({ "token": token }),
        )
        .await;

    // Assert
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        redis.command(&["EXISTS", &format!("{prefix}:{jti}")]),
        RedisReply::Int(0),
        "a use was recorded"
    );
    assert_eq!(
        redis.command(&["GET", &format!("{prefix}:usage:acme:redeemed")]),
        RedisReply::Nil,
        "a credit was charged"
    );
}

/// How many times Redis ran `INCRBY` (the minted-count flush) so far.
fn incrby_calls(redis: &RedisServer) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]).to_string();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_incrby:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minting_never_waits_for_redis_counts_are_added_once_a_second_and_usage_sees_them_at_once()
{
    // Arrange
    let Some((redis, app)) = app_on_fresh_redis().await else {
        return;
    };
    let prefix = app.settings.redis.as_ref().unwrap().key_prefix.clone();
    let minted_key = format!("{prefix}:{{dev}}:minted");

    // Act: 200 tokens at once.
    let started = Instant::now();
    futures::future::join_all((0..200).map(|_| app.mint_token(json!({})))).await;
    let usage = app.usage().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed_seconds = started.elapsed().as_secs();

    // Assert: /v1/usage counts what this process has not flushed yet; Redis got the 200 in at
    // most one INCRBY per second.
    assert_eq!(usage["minted"], 200, "{usage}");
    assert_eq!(redis.command(&["GET", &minted_key]).to_string(), "200");
    let flushes = incrby_calls(&redis);
    assert!(
        (1..=elapsed_seconds + 1).contains(&flushes),
        "{flushes} INCRBY in {elapsed_seconds} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_server_adds_its_last_minted_counts_to_redis() {
    // Arrange: a server process; it is stopped right after minting, well within the
    // one-second flush interval.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (keys, api_key) = init_keys();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let url = redis.url();
    let mut server = ServerProcess::spawn(
        keys.path(),
        &[
            ("STREAMTOKEN_REDIS_URL", url.as_str()),
            ("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()),
            ("STREAMTOKEN_RATE_LIMIT_SCOPE", "process"),
        ],
    );
    let client = reqwest::Client::new();
    for _ in 0..7 {
        let minted = client
            .post(server.url("/v1/tokens"))
            .bearer_auth(&api_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(minted.status(), StatusCode::OK);
    }

    // Act
    server.signal("TERM");
    let status = server.wait_for_exit(Duration::from_secs(10));

    // Assert
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(
        redis
            .command(&["GET", &format!("{prefix}:{{dev}}:minted")])
            .to_string(),
        "7"
    );
}
