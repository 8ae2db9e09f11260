//! `POST /v1/tokens/revoke`: a revoked token is refused everywhere, and every live session it
//! opened closes with 4010 within a second — in one process on the memory store, and across two
//! real processes on one Redis (revoked on one, the session on the other).

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::keys::admin;
use streamtoken::tenancy::api_keys::Scope;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::app::{error_code, listed_sessions, new_api_key, spawn_app, TestApp};
use crate::support::keys::init_keys;
use crate::support::process::ServerProcess;
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::RedisServer;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The bound the issue sets: a revoked session is closed within one second, on every process.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// A server under test, in process or not: its base URL and the dev key (mint + redeem, "dev").
struct Server {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Server {
    fn of_app(app: &TestApp) -> Self {
        Server {
            base: app.address.clone(),
            key: app.api_key.clone(),
            client: reqwest::Client::new(),
        }
    }

    fn of_process(process: &ServerProcess, key: &str) -> Self {
        Server {
            base: process.address.clone(),
            key: key.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// Mints with `key` (of its org); returns the token and its jti.
    async fn mint_with(&self, key: &str, body: Value) -> (String, String) {
        let minted: Value = self
            .post("/v1/tokens", key, &body)
            .await
            .json()
            .await
            .unwrap();
        (
            minted["token"].as_str().expect("a token").to_owned(),
            minted["jti"].as_str().expect("a jti").to_owned(),
        )
    }

    async fn mint(&self, body: Value) -> (String, String) {
        self.mint_with(&self.key.clone(), body).await
    }

    async fn redeem(&self, token: &str) -> reqwest::Response {
        self.post("/v1/tokens/redeem", &self.key, &json!({ "token": token }))
            .await
    }

    /// How many sessions `GET /v1/sessions` lists, once it no longer lists any within 2 s, or
    /// what it still lists then.
    async fn listed_after_settling(&self) -> usize {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let listed = listed_sessions(&self.client, &self.base, &self.key).await;
            let count = listed["sessions"].as_array().unwrap().len();
            if count == 0 || Instant::now() > until {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn revoke(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self.post("/v1/tokens/revoke", key, &body).await;
        (response.status(), response.json().await.unwrap())
    }

    /// A `/v1/stream` session opened with `token`, past its `session_begins` frame.
    async fn open_session(&self, token: &str) -> Ws {
        let url = format!(
            "{}/v1/stream?token={token}",
            self.base.replacen("http://", "ws://", 1)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        match next_frame(&mut ws, Duration::from_secs(5)).await {
            Some(Message::Text(text)) => {
                let begins: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(begins["type"], "session_begins", "{begins}");
            }
            other => panic!("no session_begins: {other:?}"),
        }
        ws
    }
}

async fn next_frame(ws: &mut Ws, within: Duration) -> Option<Message> {
    match tokio::time::timeout(within, ws.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        _ => None,
    }
}

/// Whether the session is still open after `watching` (pings and echoes do not end it).
async fn stays_open(ws: &mut Ws, watching: Duration) -> bool {
    let until = tokio::time::Instant::now() + watching;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The close code and reason the session ends with, and when it arrived.
async fn closed(ws: &mut Ws) -> (u16, String, Instant) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match next_frame(ws, Duration::from_secs(5)).await {
            Some(Message::Close(Some(frame))) => {
                return (
                    u16::from(frame.code),
                    frame.reason.to_string(),
                    Instant::now(),
                )
            }
            Some(Message::Close(None)) | None => panic!("the session ended without a close code"),
            Some(_) => {}
        }
    }
    panic!("the session was not closed within 5 s");
}

/// Revokes with `body` and asserts the live session `ws` closes with 4010 `revoked` within a
/// second of the answer; returns the answer and the measured latency.
async fn revoke_and_see_closed(
    on: &Server,
    key: &str,
    body: Value,
    ws: &mut Ws,
) -> (Value, Duration) {
    let (status, answer) = on.revoke(key, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answered = Instant::now();
    let (code, reason, at) = closed(ws).await;
    let latency = at.duration_since(answered);
    assert_eq!((code, reason.as_str()), (4010, "revoked"));
    assert!(
        latency <= CLOSE_WITHIN,
        "closed {latency:?} after the answer"
    );
    (answer, latency)
}

async fn assert_revoked(server: &Server, token: &str) {
    let response = server.redeem(token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "token_revoked");
}

/// The next whole second has begun: a token minted now has an `iat` after anything revoked
/// "at or before now" a moment ago.
async fn into_the_next_second() {
    let now = chrono::Utc::now();
    let left = 1000 - i64::from(now.timestamp_subsec_millis()) + 10;
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_closes_its_live_session_with_4010_and_refuses_it_everywhere() {
    let app = spawn_app().await;
    let server = Server::of_app(&app);
    let revoker = app.add_api_key("dev", &[Scope::Revoke]);
    let (token, jti) = server.mint(json!({ "uses": 3 })).await;
    let (graced, _) = server.mint(json!({ "reconnect_grace_seconds": 60 })).await;
    let mut ws = server.open_session(&token).await;
    let mut graced_ws = server.open_session(&graced).await;

    let (answer, latency) =
        revoke_and_see_closed(&server, &revoker, json!({ "token": token }), &mut ws).await;

    eprintln!("memory store, revoke by token: closed {latency:?} after the answer");
    assert_eq!(
        answer,
        json!({ "revoked": { "jti": jti, "org": "dev" }, "sessions_closed": 1 })
    );
    assert_revoked(&server, &token).await;
    // A revoked session with a reconnect grace is over too: not listed, not re-opened.
    revoke_and_see_closed(
        &server,
        &revoker,
        json!({ "token": graced }),
        &mut graced_ws,
    )
    .await;
    assert_eq!(server.listed_after_settling().await, 0);
    let (first, close) = crate::support::ws::stream_verdict(&app, &graced).await;
    assert_eq!(
        (first["code"].as_str(), close),
        (Some("token_revoked"), Some(4010))
    );
    let introspected: Value = app.introspect(&token).await.json().await.unwrap();
    assert_eq!(
        introspected,
        json!({ "active": false, "reason": "revoked" })
    );
    let (first, close) = crate::support::ws::stream_verdict(&app, &token).await;
    assert_eq!(
        (first["code"].as_str(), close),
        (Some("token_revoked"), Some(4010))
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"streamtoken_revocations_total{kind="token"} 2"#));
    assert!(metrics.contains(r#"streamtoken_redemptions_rejected_total{reason="revoked"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_org_bound_key_cannot_revoke_another_orgs_token_and_an_any_org_key_can() {
    let app = spawn_app().await;
    let server = Server::of_app(&app);
    let beta_minter = app.add_api_key("beta", &[Scope::Mint]);
    let beta_revoker = app.add_api_key("beta", &[Scope::Revoke]);
    let operator = app.add_api_key_with(admin::NewApiKey {
        any_org: true,
        ..new_api_key("ops", &[Scope::Revoke], None, None)
    });
    let (token, jti) = server.mint(json!({ "uses": 2 })).await;
    let mut ws = server.open_session(&token).await;

    for body in [
        json!({ "token": token }),
        json!({ "jti": jti, "org": "dev" }),
        json!({ "org": "dev" }),
    ] {
        let (status, answer) = server.revoke(&beta_revoker, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(answer["error"]["code"], "wrong_org");
    }
    // A bound key's bare jti is looked for in its own org: nothing of dev's is touched.
    let (status, answer) = server.revoke(&beta_revoker, json!({ "jti": jti })).await;
    assert_eq!(
        (status, &answer["sessions_closed"]),
        (StatusCode::OK, &json!(0))
    );
    assert!(
        stays_open(&mut ws, Duration::from_millis(300)).await,
        "the session must stay open"
    );
    let (status, answer) = server.revoke(&operator, json!({ "jti": jti })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(server.redeem(&token).await.status(), StatusCode::OK);

    revoke_and_see_closed(
        &server,
        &operator,
        json!({ "jti": jti, "org": "dev" }),
        &mut ws,
    )
    .await;
    assert_revoked(&server, &token).await;
    let (beta_token, _) = server.mint_with(&beta_minter, json!({})).await;
    let (status, _) = server
        .revoke(&operator, json!({ "token": beta_token }))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_an_org_ends_what_it_was_issued_until_now_and_not_what_comes_after() {
    let app = spawn_app().await;
    let server = Server::of_app(&app);
    let revoker = app.add_api_key("dev", &[Scope::Revoke]);
    let beta_minter = app.add_api_key("beta", &[Scope::Mint, Scope::Redeem]);
    let (first, _) = server.mint(json!({})).await;
    let (second, _) = server.mint(json!({})).await;
    let (unused, _) = server.mint(json!({})).await;
    let (beta_token, _) = server.mint_with(&beta_minter, json!({})).await;
    let mut one = server.open_session(&first).await;
    let mut two = server.open_session(&second).await;
    let mut beta = server.open_session(&beta_token).await;

    let (answer, _) =
        revoke_and_see_closed(&server, &revoker, json!({ "org": "dev" }), &mut one).await;

    assert_eq!(answer["sessions_closed"], 2);
    assert_eq!(answer["revoked"]["org"], "dev");
    assert_eq!(closed(&mut two).await.0, 4010);
    assert!(stays_open(&mut beta, Duration::from_millis(300)).await);
    assert_revoked(&server, &unused).await;
    into_the_next_second().await;
    let (later, _) = server.mint(json!({})).await;
    assert_eq!(server.redeem(&later).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_revocations_are_clear_4xx_and_revoke_nothing() {
    let app = spawn_app().await;
    let server = Server::of_app(&app);
    let revoker = app.add_api_key("dev", &[Scope::Revoke]);
    let (token, jti) = server.mint(json!({})).await;
    for (key, body, status, code) in [
        (&revoker, json!({}), 400, "invalid_request"),
        (
            &revoker,
            json!({ "token": token, "jti": jti }),
            400,
            "invalid_request",
        ),
        (
            &revoker,
            json!({ "token": token, "org": "dev" }),
            400,
            "invalid_request",
        ),
        (
            &revoker,
            json!({ "jti": "not-a-uuid" }),
            400,
            "invalid_request",
        ),
        (
            &revoker,
            json!({ "org": "no spaces" }),
            400,
            "invalid_request",
        ),
        (&revoker, json!({ "jti": 7 }), 400, "invalid_request"),
        (
            &revoker,
            json!({ "everything": true }),
            400,
            "invalid_request",
        ),
        (&revoker, json!({ "token": "a.b.c" }), 401, "invalid_token"),
        (&app.api_key, json!({ "token": token }), 403, "forbidden"),
        (
            &"st_nope".to_owned(),
            json!({ "token": token }),
            401,
            "invalid_api_key",
        ),
    ] {
        let (got, answer) = server.revoke(key, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    assert_eq!(server.redeem(&token).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_redis_a_revocation_on_one_process_closes_sessions_on_the_other_within_a_second() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let latencies = across_two_processes(&[("STREAMTOKEN_REDIS_URL", url.as_str())], |key| {
        redis.command(&["TTL", key]).to_string().parse().unwrap()
    })
    .await;
    eprintln!("Redis, two processes: closed {latencies:?} after the answer (token, jti, org)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_a_revocation_on_one_process_closes_sessions_on_the_other() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let seeds = cluster.seed_urls();
    let env = [("STREAMTOKEN_REDIS_CLUSTER_URLS", seeds.as_str())];
    let latencies = across_two_processes(&env, |key| {
        let master = cluster.master_for_key(key);
        cluster
            .command(master, &["TTL", key])
            .to_string()
            .parse()
            .unwrap()
    })
    .await;
    eprintln!("Redis Cluster, two processes: closed {latencies:?} after the answer");
}

/// Two processes on the store `env` names: revoke by token, by jti and by org on one, each
/// closing a session on the other within a second, the token refused on both afterwards, each
/// entry's TTL (`ttl` of a key) bounded. Returns the three latencies.
async fn across_two_processes(env: &[(&str, &str)], ttl: impl Fn(&str) -> i64) -> Vec<Duration> {
    let (keys, key) = init_keys();
    let revoker = admin::add_api_key(
        keys.path(),
        &new_api_key("dev", &[Scope::Revoke], None, None),
    )
    .unwrap();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut env = env.to_vec();
    env.push(("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()));
    let (process_a, process_b) = (
        ServerProcess::spawn(keys.path(), &env),
        ServerProcess::spawn(keys.path(), &env),
    );
    let (a, b) = (
        Server::of_process(&process_a, &key),
        Server::of_process(&process_b, &key),
    );
    // With the default leeway of 5 s: 2 × leeway + 1 past `exp` (a token without a reconnect
    // grace), or past now + 3600 + leeway + 86400 (the longest window and session).
    let (by_token, longest) = (60 + 11, 3600 + 5 + 86_400 + 11);
    let mut latencies = Vec::new();

    // By token: minted on A, the session on B, revoked on A.
    let (token, jti) = a.mint(json!({ "uses": 2 })).await;
    let mut ws = b.open_session(&token).await;
    let (answer, latency) =
        revoke_and_see_closed(&a, &revoker, json!({ "token": token }), &mut ws).await;
    latencies.push(latency);
    assert_eq!(
        answer["sessions_closed"], 0,
        "the session is on the other process"
    );
    assert_eq!(
        a.listed_after_settling().await,
        0,
        "nothing closed is listed"
    );
    assert_revoked(&b, &token).await;
    assert_revoked(&a, &token).await;
    let left = ttl(&format!("{prefix}:{{dev}}:revoked:{jti}"));
    assert!((by_token - 3..=by_token).contains(&left), "ttl {left}");

    // By jti.
    let (token, jti) = a.mint(json!({ "uses": 2 })).await;
    let mut ws = b.open_session(&token).await;
    let (_, latency) = revoke_and_see_closed(&a, &revoker, json!({ "jti": jti }), &mut ws).await;
    latencies.push(latency);
    assert_revoked(&b, &token).await;
    let left = ttl(&format!("{prefix}:{{dev}}:revoked:{jti}"));
    assert!((longest - 3..=longest).contains(&left), "ttl {left}");

    // By org, revoked on B this time, the session on A.
    let (token, _) = b.mint(json!({ "uses": 2 })).await;
    let mut ws = a.open_session(&token).await;
    let (_, latency) = revoke_and_see_closed(&b, &revoker, json!({ "org": "dev" }), &mut ws).await;
    latencies.push(latency);
    assert_revoked(&a, &token).await;
    let left = ttl(&format!("{prefix}:{{dev}}:revoked-before"));
    assert!((longest - 3..=longest).contains(&left), "ttl {left}");
    into_the_next_second().await;
    let (later, _) = a.mint(json!({})).await;
    assert_eq!(b.redeem(&later).await.status(), StatusCode::OK);
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_gateway_learns_that_a_session_it_admitted_was_revoked_elsewhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = crate::support::app::spawn_app_with_redis(&redis.url()).await;
    let revoker = app.add_api_key("dev", &[Scope::Revoke]);
    // The embedding service: its own redeemer on the same keys and store, in this process.
    let gateway = streamtoken::gateway::Redeemer::from_settings(&app.settings).unwrap();
    let token = app.mint_token(json!({})).await;
    let redemption = gateway.redeem(&token).await.unwrap();
    let mut live = gateway.watch(&redemption);
    // The follower has taken its place in the feed before the revocation is recorded.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (status, _) = Server::of_app(&app)
        .revoke(&revoker, json!({ "token": token }))
        .await;

    assert_eq!(status, StatusCode::OK);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), live.revoked())
        .await
        .expect("told of the revocation");
    assert!(
        answered.elapsed() <= CLOSE_WITHIN,
        "{:?}",
        answered.elapsed()
    );
}
