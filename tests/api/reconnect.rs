//! Sessions that survive a reconnect, one connection at a time, and the session listing — with
//! the memory store in one process, and across two real processes on one Redis and on a Redis
//! Cluster (the session opened on one, listed, refused and re-opened on the other).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::keys::admin;
use streamtoken::tenancy::api_keys::Scope;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::app::{
    listed_sessions, new_api_key, redis_settings, spawn_app_with, Options, TestApp,
};
use crate::support::keys::init_keys;
use crate::support::process::ServerProcess;
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::{RedisReply, RedisServer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The grace the scenario's servers give tokens minted without one (the compat routes').
const SERVER_GRACE: u64 = 4;

/// A server under test, in process or not.
struct Server {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Server {
    fn of_app(app: &TestApp) -> Self {
        Self::at(&app.address, &app.api_key)
    }

    fn at(base: &str, key: &str) -> Self {
        Server {
            base: base.to_owned(),
            key: key.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    fn port(&self) -> &str {
        self.base.rsplit(':').next().unwrap()
    }

    async fn mint(&self, body: Value) -> (String, String) {
        let minted = self.post("/v1/tokens", &body).await;
        assert_eq!(minted.0, StatusCode::OK, "{}", minted.1);
        let token = minted.1["token"].as_str().unwrap().to_owned();
        (token, minted.1["jti"].as_str().unwrap().to_owned())
    }

    /// AssemblyAI's route: a wire format with no grace field, so the server's default applies.
    async fn mint_assemblyai(&self, expires_in_seconds: u32) -> String {
        let minted: Value = self
            .client
            .get(format!(
                "{}/v3/token?expires_in_seconds={expires_in_seconds}",
                self.base
            ))
            .header("authorization", &self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        minted["token"].as_str().expect("a token").to_owned()
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn sessions(&self) -> Vec<Value> {
        let body = listed_sessions(&self.client, &self.base, &self.key).await;
        assert_eq!(body["truncated"], false);
        body["sessions"].as_array().unwrap().clone()
    }

    async fn redeemed(&self) -> u64 {
        self.get("/v1/usage").await.1["redeemed"].as_u64().unwrap()
    }

    async fn metric(&self, line_start: &str) -> Option<String> {
        let page = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        page.lines()
            .find(|line| line.starts_with(line_start))
            .map(str::to_owned)
    }

    /// Opens `/v1/stream` with `token`: the socket and its first frame.
    async fn connect(&self, token: &str) -> (Ws, Value) {
        let url = format!(
            "{}/v1/stream?token={token}",
            self.base.replacen("http://", "ws://", 1)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let first = match next_frame(&mut ws).await {
            Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("no first frame: {other:?}"),
        };
        (ws, first)
    }

    /// A session `token` opens; panics unless the first frame is of `kind`.
    async fn open(&self, token: &str, kind: &str) -> (Ws, Value) {
        let (ws, first) = self.connect(token).await;
        assert_eq!(first["type"], kind, "{first}");
        (ws, first)
    }

    /// A refused connection: the error frame's code, the close code and its reason.
    async fn refused(&self, token: &str) -> (String, u16, String) {
        let (mut ws, first) = self.connect(token).await;
        assert_eq!(first["type"], "error", "{first}");
        let (code, reason) = close_of(&mut ws).await;
        (first["code"].as_str().unwrap().to_owned(), code, reason)
    }
}

async fn next_frame(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        _ => None,
    }
}

async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_frame(ws).await {
            Some(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Message::Close(None)) | None => panic!("closed without a code"),
            Some(_) => {}
        }
    }
}

/// The session still echoes: it was not disturbed.
async fn echoes(ws: &mut Ws) {
    ws.send(Message::Text("still here".into())).await.unwrap();
    loop {
        match next_frame(ws).await {
            Some(Message::Text(text)) if text.as_str() == "still here" => return,
            Some(Message::Ping(_)) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// Polls `server`'s listing until `check` holds of it (within 2 s, which a session's end takes
/// well within), and returns it.
async fn listing_until(server: &Server, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let listed = server.sessions().await;
        if check(&listed) {
            return listed;
        }
        assert!(Instant::now() < until, "listing never settled: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole story, with the session opened on `a` and everything else asked of `b` (the same
/// server for the memory store). Both run with leeway 0 and a server grace of `SERVER_GRACE`.
/// Returns the re-opened session's record key suffix (its `jti`) for store-level checks.
async fn survives_a_reconnect(a: &Server, b: &Server) -> String {
    // A compat token (server grace) whose redemption window ends in 1 s.
    let token = a.mint_assemblyai(1).await;
    let minted = Instant::now();
    let (mut first, begins) = a.open(&token, "session_begins").await;
    let session_id = begins["session_id"].as_str().unwrap().to_owned();

    // Listed everywhere the store is shared, connected, held by `a`.
    let listed = b.sessions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["session_id"], session_id);
    assert_eq!(listed[0]["token_type"], "realtime");
    assert_eq!(listed[0]["connected"], true);
    assert_eq!(listed[0]["expires_at"], begins["expires_at"]);
    assert!(
        listed[0]["instance"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", a.port())),
        "{listed:?}"
    );

    // One connection at a time: a second is refused and the first goes on.
    let (code, close, reason) = b.refused(&token).await;
    assert_eq!(
        (code.as_str(), close, reason.as_str()),
        ("session_already_open", 4003, "session already open")
    );
    let (status, body) = b
        .post("/v1/tokens/redeem", &json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "session_already_open");
    echoes(&mut first).await;

    // The network drops (no close frame): the session waits for its token, disconnected.
    drop(first);
    listing_until(b, |listed| {
        listed.len() == 1 && listed[0]["connected"] == false
    })
    .await;

    // Past the redemption window, within the grace: the same session, no use spent.
    tokio::time::sleep_until((minted + Duration::from_millis(2100)).into()).await;
    let redeemed_before = a.redeemed().await;
    let (mut second, resumed) = b.open(&token, "session_resumed").await;
    assert_eq!(resumed["session_id"], session_id);
    assert_eq!(resumed["expires_at"], begins["expires_at"]);
    assert_eq!(a.redeemed().await, redeemed_before, "no use consumed");
    echoes(&mut second).await;
    let listed = b.sessions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["connected"], true);
    assert!(listed[0]["instance"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", b.port())));
    assert_eq!(
        b.metric(r#"streamtoken_sessions_resumed_total{token_type="realtime"}"#)
            .await
            .as_deref(),
        Some(r#"streamtoken_sessions_resumed_total{token_type="realtime"} 1"#)
    );

    // Closed by the client this time; once the grace is over, the token is just too old.
    second.close(None).await.unwrap();
    let dropped = Instant::now();
    listing_until(b, |listed| listed.iter().all(|s| s["connected"] == false)).await;
    tokio::time::sleep_until(
        (dropped + Duration::from_secs(SERVER_GRACE) + Duration::from_millis(300)).into(),
    )
    .await;
    let (code, close, _) = a.refused(&token).await;
    assert_eq!((code.as_str(), close), ("token_expired", 4002));
    assert_eq!(b.sessions().await, Vec::<Value>::new());
    session_id
}

/// Within the window, after the grace: refused as used, exactly as without a grace; and a token
/// without a grace gets no second connection either, while the listing shows only what is open.
async fn after_the_grace_the_token_is_used(a: &Server, b: &Server) {
    let (token, _) = a
        .mint(json!({ "reconnect_grace_seconds": 1, "expires_in_seconds": 60 }))
        .await;
    let (first, _) = a.open(&token, "session_begins").await;
    drop(first);
    listing_until(b, |listed| listed.iter().all(|s| s["connected"] == false)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, close, _) = b.refused(&token).await;
    assert_eq!((code.as_str(), close), ("token_already_used", 4003));

    let (once, jti) = a.mint(json!({ "reconnect_grace_seconds": 0 })).await;
    let (other, _) = a.mint(json!({ "reconnect_grace_seconds": 0 })).await;
    let (mut open, _) = a.open(&once, "session_begins").await;
    let (closing, _) = a.open(&other, "session_begins").await;
    let (code, close, reason) = b.refused(&once).await;
    assert_eq!(
        (code.as_str(), close),
        ("token_already_used", 4003),
        "{reason}"
    );
    echoes(&mut open).await;
    drop(closing);
    let listed = listing_until(b, |listed| listed.len() == 1).await;
    assert_eq!(
        (&listed[0]["session_id"], &listed[0]["connected"]),
        (&json!(jti), &json!(true))
    );
    drop(open);
    listing_until(b, |listed| listed.is_empty()).await;
}

/// 200 connections race to re-open one dropped session, half on each server: exactly one gets
/// it, every other is told it is open.
async fn one_of_many_reopens(a: &Server, b: &Server) {
    let (token, _) = a.mint(json!({ "reconnect_grace_seconds": 30 })).await;
    let (first, _) = a.open(&token, "session_begins").await;
    drop(first);
    listing_until(b, |listed| {
        listed.len() == 1 && listed[0]["connected"] == false
    })
    .await;
    let attempts = (0..200).map(|i| {
        let server = if i % 2 == 0 { a } else { b };
        let token = token.clone();
        async move {
            let (ws, first) = server.connect(&token).await;
            (
                first["type"] == "session_resumed",
                first["code"].clone(),
                ws,
            )
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let resumed = outcomes.iter().filter(|(resumed, _, _)| *resumed).count();
    assert_eq!(resumed, 1);
    for (resumed, code, _) in &outcomes {
        if !resumed {
            assert_eq!(code, "session_already_open");
        }
    }
}

/// A server in this process on `redis`, with leeway 0.
async fn app_on(redis: &RedisServer) -> TestApp {
    spawn_app_with(Options {
        leeway_seconds: 0,
        redis: Some(redis_settings(&redis.url())),
        ..Options::default()
    })
    .await
}

/// The one key matching `pattern` on `redis`, and its TTL in seconds.
fn ttl_of_the_key(redis: &RedisServer, pattern: &str) -> (String, i64) {
    let RedisReply::Array(keys) = redis.command(&["KEYS", pattern]) else {
        panic!("KEYS answers an array");
    };
    let key = keys.first().expect("a key matches").to_string();
    let ttl = redis.command(&["TTL", &key]).to_string().parse().unwrap();
    (key, ttl)
}

fn options_for_reconnects() -> Options {
    Options {
        leeway_seconds: 0,
        reconnect_grace_seconds: SERVER_GRACE as u32,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_memory_store_a_dropped_session_reopens_within_its_grace_and_only_once_at_a_time()
{
    let app = spawn_app_with(options_for_reconnects()).await;
    let server = Server::of_app(&app);
    survives_a_reconnect(&server, &server).await;
    after_the_grace_the_token_is_used(&server, &server).await;
    one_of_many_reopens(&server, &server).await;
}

/// `count` processes on the store `env` names, leeway 0 and the scenario's server grace, with
/// the dev key and the keys dir (kept as long as the processes).
fn processes(
    env: &[(&str, &str)],
    count: usize,
) -> (Vec<ServerProcess>, String, tempfile::TempDir) {
    let (keys, key) = init_keys();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let grace = SERVER_GRACE.to_string();
    let mut env = env.to_vec();
    env.extend([
        ("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()),
        ("STREAMTOKEN_LEEWAY_SECONDS", "0"),
        ("STREAMTOKEN_RECONNECT_GRACE_SECONDS", grace.as_str()),
    ]);
    let spawned = (0..count)
        .map(|_| ServerProcess::spawn(keys.path(), &env))
        .collect();
    (spawned, key, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_redis_a_session_dropped_on_one_process_reopens_on_the_other_and_its_record_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (both, key, _keys) = processes(&[("STREAMTOKEN_REDIS_URL", url.as_str())], 2);
    let (a, b) = (
        Server::at(&both[0].address, &key),
        Server::at(&both[1].address, &key),
    );
    survives_a_reconnect(&a, &b).await;
    after_the_grace_the_token_is_used(&a, &b).await;
    one_of_many_reopens(&a, &b).await;

    // A record lives no longer than its session could: deadline + 2 × leeway + 1 s.
    let (token, jti) = a
        .mint(json!({ "reconnect_grace_seconds": 30, "max_session_duration_seconds": 20 }))
        .await;
    let (ws, _) = a.open(&token, "session_begins").await;
    let (record, ttl) = ttl_of_the_key(&redis, &format!("*:session:{jti}"));
    assert!((19..=21).contains(&ttl), "ttl {ttl} of {record}");
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_a_session_dropped_on_one_process_reopens_on_the_other() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let seeds = cluster.seed_urls();
    let (both, key, _keys) = processes(&[("STREAMTOKEN_REDIS_CLUSTER_URLS", seeds.as_str())], 2);
    let (a, b) = (
        Server::at(&both[0].address, &key),
        Server::at(&both[1].address, &key),
    );
    survives_a_reconnect(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_grants_report_a_reopened_session_and_count_its_grace_from_the_last_grant() {
    let app = spawn_app_with(Options {
        leeway_seconds: 0,
        ..Options::default()
    })
    .await;
    let server = Server::of_app(&app);
    let (token, jti) = server
        .mint(json!({ "reconnect_grace_seconds": 2, "max_session_duration_seconds": 120 }))
        .await;
    let (status, first) = server
        .post("/v1/tokens/redeem", &json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["resumed"], false);
    let (status, again) = server
        .post("/v1/tokens/redeem", &json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["resumed"], &again["uses_remaining"], &again["jti"]),
        (&json!(true), &json!(0), &json!(jti))
    );
    assert_eq!(again["session_expires_at"], first["session_expires_at"]);

    // Forward-auth: the same answer in its body and header.
    let proxy_key = app.add_api_key("dev", &[Scope::Redeem]);
    let asked = server
        .client
        .get(format!("{}/v1/forward-auth", server.base))
        .header("x-streamtoken-api-key", &proxy_key)
        .header("x-original-uri", format!("/ws?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::OK);
    assert_eq!(asked.headers()["x-streamtoken-resumed"], "true");
    assert_eq!(
        asked.json::<Value>().await.unwrap(),
        json!({ "resumed": true })
    );

    // A grant holds no connection: it is not listed, and its grace runs from the last grant.
    assert_eq!(server.sessions().await, Vec::<Value>::new());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, late) = server
        .post("/v1/tokens/redeem", &json!({ "token": token }))
        .await;
    assert_eq!(
        (status, &late["error"]["code"]),
        (StatusCode::CONFLICT, &json!("token_already_used"))
    );
}

#[tokio::test]
async fn a_grace_is_minted_in_range_for_single_use_tokens_only() {
    let app = spawn_app_with(Options::default()).await;
    let server = Server::of_app(&app);
    for (body, field) in [
        (
            json!({ "reconnect_grace_seconds": 601 }),
            "reconnect_grace_seconds must be an integer between 0 and 600",
        ),
        (
            json!({ "reconnect_grace_seconds": -1 }),
            "reconnect_grace_seconds must be an integer between 0 and 600",
        ),
        (
            json!({ "reconnect_grace_seconds": 1.5 }),
            "reconnect_grace_seconds must be an integer between 0 and 600",
        ),
        (
            json!({ "reconnect_grace_seconds": 5, "uses": 2 }),
            "reconnect_grace_seconds is for single-use tokens; send uses 1 (or leave it out)",
        ),
    ] {
        let (status, answer) = server.post("/v1/tokens", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{body}");
        assert_eq!(answer["error"]["message"], field, "{body}");
    }
    let (status, minted) = server
        .post("/v1/tokens", &json!({ "reconnect_grace_seconds": 600 }))
        .await;
    assert_eq!(
        (status, &minted["reconnect_grace_seconds"]),
        (StatusCode::OK, &json!(600))
    );
    let (_, several) = server
        .post(
            "/v1/tokens",
            &json!({ "uses": 2, "reconnect_grace_seconds": 0 }),
        )
        .await;
    assert_eq!(several["reconnect_grace_seconds"], 0);
    let (_, looked) = server
        .post(
            "/v1/tokens/introspect",
            &json!({ "token": minted["token"] }),
        )
        .await;
    assert_eq!(looked["claims"]["reconnect_grace_seconds"], 600);
}

#[tokio::test]
async fn the_listing_is_per_org_and_an_operator_key_names_the_org() {
    let app = spawn_app_with(Options::default()).await;
    let server = Server::of_app(&app);
    let beta = Server::at(&app.address, &app.add_api_key("beta", &[Scope::Mint]));
    let operator = Server::at(
        &app.address,
        &app.add_api_key_with(admin::NewApiKey {
            any_org: true,
            ..new_api_key("ops", &[Scope::Redeem], None, None)
        }),
    );
    let (token, jti) = server.mint(json!({})).await;
    let (_ws, _) = server.open(&token, "session_begins").await;
    assert_eq!(beta.sessions().await, Vec::<Value>::new());
    let (status, refused) = beta.get("/v1/sessions?org=dev").await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (StatusCode::FORBIDDEN, &json!("wrong_org"))
    );
    let (status, listed) = operator.get("/v1/sessions?org=dev").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["org"], "dev");
    assert_eq!(listed["sessions"][0]["session_id"], jti);
    let (status, _) = server.get("/v1/sessions?org=dev&org=dev").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let unauthenticated = reqwest::get(format!("{}/v1/sessions", app.address))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_embedded_gateway_holding_a_session_refuses_a_second_connection_and_reopens_it_after_end(
) {
    use std::sync::Arc;
    use streamtoken::admission::redeem::RedeemError;
    use streamtoken::gateway::Redeemer;
    use streamtoken::settings::TokenSettings;
    use streamtoken::store::{Covers, MemoryStore, Revocation, SharedStore};
    use streamtoken::token::claims::RejectReason;

    let app = spawn_app_with(Options::default()).await;
    let store: Arc<dyn SharedStore> = Arc::new(MemoryStore::new());
    let redeemer = Redeemer::new(app.keyring(), &TokenSettings::default(), store.clone());
    let token = app
        .mint_token(json!({ "reconnect_grace_seconds": 5 }))
        .await;

    let (first, held) = redeemer.open_session(&token).await.unwrap();
    assert!(!first.resumed);
    assert!(matches!(
        redeemer.open_session(&token).await,
        Err(RedeemError::Rejected(RejectReason::SessionAlreadyOpen))
    ));
    let listed = store.sessions("dev").await.unwrap();
    assert_eq!(
        (listed.len(), listed[0].connected, listed[0].session_id),
        (1, true, first.claims.jti)
    );

    held.end().await;
    assert!(!store.sessions("dev").await.unwrap()[0].connected);
    let (again, mut held) = redeemer.open_session(&token).await.unwrap();
    assert!(again.resumed);
    assert_eq!(
        again.session_expires_at.timestamp_millis(),
        first.session_expires_at.timestamp_millis()
    );

    // Revocation reaches a held session as it reaches a watched one.
    redeemer.live_sessions().revoke(&Revocation {
        org: "dev".into(),
        covers: Covers::Token(first.claims.jti),
    });
    tokio::time::timeout(Duration::from_secs(1), held.revoked())
        .await
        .expect("told of the revocation");
}

/// A re-opening that meets a Redis that does not answer is refused with 1011 ("retry"), and the
/// retry re-opens the session: the attempt that timed out does not leave it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopening_refused_while_redis_was_paused_can_be_retried() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app_on(&redis).await;
    let server = Server::of_app(&app);
    let (token, jti) = server.mint(json!({ "reconnect_grace_seconds": 30 })).await;
    let (first, _) = server.open(&token, "session_begins").await;
    drop(first);
    listing_until(&server, |listed| {
        listed.len() == 1 && listed[0]["connected"] == false
    })
    .await;

    redis.command(&["CLIENT", "PAUSE", "2000", "WRITE"]);
    let (code, close, _) = server.refused(&token).await;
    assert_eq!((code.as_str(), close), ("replay_store_unavailable", 1011));
    redis.command(&["CLIENT", "UNPAUSE"]);

    let until = Instant::now() + Duration::from_secs(5);
    let resumed = loop {
        let (ws, first) = server.connect(&token).await;
        if first["type"] == "session_resumed" {
            break (ws, first);
        }
        assert!(Instant::now() < until, "never re-opened: {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed.1["session_id"], jti);
}

/// A deploy stops a process gracefully: its sessions are dropped, and re-open on another process
/// at once. A process killed outright never says so: its sessions stay its own while its lease
/// runs (a second connection is refused), then re-open on another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_of_a_stopped_or_killed_process_reopen_on_another_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (three, key, _keys) = processes(&[("STREAMTOKEN_REDIS_URL", url.as_str())], 3);
    let (stopped, killed, b) = (&three[0], &three[1], &three[2]);
    let on_b = Server::at(&b.address, &key);
    let grace = json!({ "reconnect_grace_seconds": 60 });

    // SIGTERM: the session closes with 1001 and re-opens on B straight away.
    let on_stopped = Server::at(&stopped.address, &key);
    let (token, _) = on_stopped.mint(grace.clone()).await;
    let (mut ws, _) = on_stopped.open(&token, "session_begins").await;
    stopped.signal("TERM");
    assert_eq!(close_of(&mut ws).await.0, 1001);
    // The stopping process marks the session dropped right after its close frame; well within
    // a second, and long before its lease (6 s) would have run out.
    let stopped_at = Instant::now();
    let _resumed = loop {
        let (ws, first) = on_b.connect(&token).await;
        if first["type"] == "session_resumed" {
            break ws;
        }
        assert_eq!(first["code"], "session_already_open", "{first}");
        assert!(
            stopped_at.elapsed() < Duration::from_secs(2),
            "not re-opened within 2 s of the stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("re-opened {:?} after the stop", stopped_at.elapsed());

    // kill -9: refused while the dead process's lease runs, re-opened once it has run out.
    let on_killed = Server::at(&killed.address, &key);
    let (token, jti) = on_killed.mint(grace).await;
    let (ws, _) = on_killed.open(&token, "session_begins").await;
    killed.signal("KILL");
    let died = Instant::now();
    drop(ws);
    let (code, close, _) = on_b.refused(&token).await;
    assert_eq!((code.as_str(), close), ("session_already_open", 4003));
    let connected = || async {
        let listed = on_b.sessions().await;
        let session = listed.iter().find(|s| s["session_id"] == jti.as_str());
        session.expect("still listed")["connected"] == true
    };
    assert!(connected().await);
    // The listing shows it dropped once the lease runs out; then it re-opens on B.
    let until = died + Duration::from_secs(15);
    while connected().await {
        assert!(
            Instant::now() < until,
            "the dead process held it past its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("shown dropped {:?} after the kill", died.elapsed());
    assert!(died.elapsed() >= Duration::from_secs(3), "the lease held");
    let (_ws, resumed) = on_b.open(&token, "session_resumed").await;
    assert_eq!(resumed["session_id"], jti);
}

/// A revocation outlives every re-opening it must refuse: a token with a grace may re-open its
/// session past `exp`, so its revocation is kept until that session's longest end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_never_reopens_its_dropped_session_and_its_revocation_lasts_as_long() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app_on(&redis).await;
    let server = Server::of_app(&app);
    let revoker = Server::at(&app.address, &app.add_api_key("dev", &[Scope::Revoke]));
    let (token, jti) = server
        .mint(json!({
            "reconnect_grace_seconds": 600,
            "expires_in_seconds": 60,
            "max_session_duration_seconds": 900
        }))
        .await;
    let (first, _) = server.open(&token, "session_begins").await;
    drop(first);
    listing_until(&server, |listed| {
        listed.iter().all(|s| s["connected"] == false)
    })
    .await;

    let (status, _) = revoker
        .post("/v1/tokens/revoke", &json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (code, close, _) = server.refused(&token).await;
    assert_eq!((code.as_str(), close), ("token_revoked", 4010));
    // exp (60 s) + leeway (0) + the session (900 s) + 2 × leeway + 1 s.
    let (_, ttl) = ttl_of_the_key(&redis, &format!("*:revoked:{jti}"));
    assert!((958..=961).contains(&ttl), "ttl {ttl}");
}
