//! A standalone Redis with a replica (`STREAMTOKEN_REDIS_REPLICA_ACKS`) and over TLS
//! (`rediss://`). The cluster cases are in `fleet.rs`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::{redis_settings, spawn_app_with, Options, TestApp};
use crate::support::redis_server::{RedisReply, RedisServer};
use crate::support::tls::{assert_an_untrusting_app_fails_closed, certificates};

const REPLICA_DEADLINE: Duration = Duration::from_secs(10);

/// A master and one replica of it, with the replica in sync.
fn master_and_replica() -> Option<(RedisServer, RedisServer)> {
    let master = RedisServer::start()?;
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])?;
    wait_for_replicas(&master, 1);
    Some((master, replica))
}

fn wait_for_replicas(master: &RedisServer, n: usize) {
    let started = Instant::now();
    loop {
        let info = master.command(&["INFO", "replication"]).to_string();
        let online = info.matches("state=online").count();
        if online >= n {
            return;
        }
        assert!(
            started.elapsed() < REPLICA_DEADLINE,
            "{n} replica(s) never came online: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn app_requiring_acks(master: &RedisServer, acks: u32) -> TestApp {
    let mut redis = redis_settings(&master.url());
    redis.replica_acks = acks;
    // Behaviour, not latency: a loaded machine may need more than 500 ms for the first answer.
    redis.timeout = Duration::from_secs(3);
    spawn_app_with(Options {
        redis: Some(redis),
        ..Options::default()
    })
    .await
}

fn use_entry(app: &TestApp, jti: &str) -> String {
    let prefix = &app.settings.redis.as_ref().unwrap().key_prefix;
    format!("{prefix}:{{dev}}:use:{jti}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_replica_acks_a_use_is_accepted_only_once_a_replica_holds_it() {
    // Arrange
    let Some((master, mut replica)) = master_and_replica() else {
        return;
    };
    let app = app_requiring_acks(&master, 1).await;
    let minted = app.mint_json(json!({})).await;
    let token = minted["token"].as_str().unwrap();

    // Act + Assert: with the replica up, the use is accepted and the replica has it.
    assert_eq!(app.redeem(token).await.status(), StatusCode::OK);
    let key = use_entry(&app, minted["jti"].as_str().unwrap());
    assert_eq!(replica.command(&["HLEN", &key]), RedisReply::Int(1));

    // Act: the replica goes away; a second token cannot be acknowledged.
    replica.kill();
    let second = app.mint_json(json!({})).await;
    let second_token = second["token"].as_str().unwrap();
    let refused = app.redeem(second_token).await;

    // Assert: 503, and the use was taken back on the master, so the token still works later.
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let second_key = use_entry(&app, second["jti"].as_str().unwrap());
    assert_eq!(master.command(&["HLEN", &second_key]), RedisReply::Int(0));
    replica.restart();
    wait_for_replicas(&master, 1);
    assert_eq!(app.redeem(second_token).await.status(), StatusCode::OK);
    assert_eq!(
        app.redeem(second_token).await.status(),
        StatusCode::CONFLICT,
        "still single use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_replica_acks_a_missing_replica_changes_nothing() {
    let Some((master, mut replica)) = master_and_replica() else {
        return;
    };
    let app = app_requiring_acks(&master, 0).await;
    replica.kill();
    let token = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_reached_over_tls_keeps_tokens_single_use_and_an_unknown_ca_is_refused() {
    // Arrange: Redis with a TLS port beside its plain one (which the helper uses to see it up).
    let dir = tempfile::tempdir().unwrap();
    let tls = certificates(dir.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let Some(redis) = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &tls.cert,
        "--tls-key-file",
        &tls.key,
        "--tls-ca-cert-file",
        &tls.ca,
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let mut settings = redis_settings(&url);
    settings.tls_ca_file = Some(tls.ca.into());
    let app = spawn_app_with(Options {
        redis: Some(settings.clone()),
        ..Options::default()
    })
    .await;

    // Act + Assert: single use holds over TLS, and the use is in that Redis.
    let minted = app.mint_json(json!({})).await;
    let token = minted["token"].as_str().unwrap();
    assert_eq!(app.redeem(token).await.status(), StatusCode::OK);
    assert_eq!(app.redeem(token).await.status(), StatusCode::CONFLICT);
    let entry = use_entry(&app, minted["jti"].as_str().unwrap());
    assert_eq!(redis.command(&["HLEN", &entry]), RedisReply::Int(1));

    // Without our CA the server's certificate is not trusted: fail closed.
    assert_an_untrusting_app_fails_closed(settings).await;
}
