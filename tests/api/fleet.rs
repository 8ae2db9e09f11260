//! A fleet on a real Redis Cluster: several streamtoken processes sharing one private cluster
//! (3 masters, with or without a replica each), single use across them, a master killed under
//! load, fleet-wide quotas, a store that stops answering, `/readyz`, and the clock-skew rule.
//!
//! Figures the README's fleet section quotes are printed with `eprintln!` (run with
//! `--nocapture` to see them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::settings::{RedisSettings, RedisTarget, Secret};
use streamtoken::token::mint::MintRequest;
use tokio::sync::Barrier;

use crate::support::app::{redis_settings, spawn_app_with, Options, TestApp};
use crate::support::keys::init_keys;
use crate::support::outcomes::{outcome, tally, ACCEPTED};
use crate::support::process::{cli, ServerProcess};
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::RedisReply;
use crate::support::tls::{assert_an_untrusting_app_fails_closed, certificates};

const ALREADY_USED: &str = "409 token_already_used";
const UNAVAILABLE: &str = "503 replay_store_unavailable";
/// Store timeout for the races, which test atomicity, not latency (a debug build answering
/// thousands of requests at once on 2 cores can be slower than the default 500 ms).
const RACE_TIMEOUT_MS: &str = "5000";
/// How long a failover may take before the test gives up (node timeout 1 s).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

/// `n` streamtoken processes sharing `cluster` and the keys in `keys`.
fn fleet_of(
    n: usize,
    keys: &std::path::Path,
    cluster: &RedisCluster,
    env: &[(&str, &str)],
) -> Vec<ServerProcess> {
    let seeds = cluster.seed_urls();
    let prefix = format!("fleet-{}", uuid::Uuid::new_v4().simple());
    (0..n)
        .map(|_| {
            let mut all = vec![
                ("STREAMTOKEN_REDIS_CLUSTER_URLS", seeds.as_str()),
                ("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()),
                ("RUST_LOG", "info,streamtoken::access=warn"),
            ];
            all.extend_from_slice(env);
            ServerProcess::spawn(keys, &all)
        })
        .collect()
}

/// Offline-minted dev-org tokens, valid for an hour.
fn mint_offline(keys: &std::path::Path, n: usize) -> Vec<String> {
    let count = n.to_string();
    cli(
        keys,
        &["mint", "--org", "dev", "--ttl", "3600", "--count", &count],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Every (url, token) at once, each in its own task released by one barrier; the outcomes in
/// order.
async fn redeem_all_at_once(api_key: &str, attempts: Vec<(String, String)>) -> Vec<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let barrier = Arc::new(Barrier::new(attempts.len()));
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(url, token)| {
            let (client, barrier, key) = (client.clone(), barrier.clone(), api_key.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                outcome(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&json!({ "token": token }))
                        .send()
                        .await,
                )
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// Redeems each token once, `concurrency` at a time, round-robin over `urls`.
async fn redeem_each(
    api_key: &str,
    urls: &[String],
    tokens: &[String],
    offset: usize,
) -> Vec<String> {
    use futures::stream::{self, StreamExt};
    let client = reqwest::Client::new();
    stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| {
            let url = urls[(i + offset) % urls.len()].clone();
            let (client, key) = (client.clone(), api_key.to_owned());
            async move {
                outcome(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&json!({ "token": token }))
                        .send()
                        .await,
                )
                .await
            }
        })
        .buffered(64)
        .collect()
        .await
}

/// Like `redeem_each`, retrying a 503 (nothing was consumed) until there is an answer, so a
/// store still settling after a failover cannot hide a use it forgot.
async fn redeem_each_until_answered(
    api_key: &str,
    urls: &[String],
    tokens: &[String],
) -> Vec<String> {
    let mut outcomes = redeem_each(api_key, urls, tokens, 0).await;
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    while Instant::now() < deadline {
        let retry: Vec<usize> = (0..tokens.len())
            .filter(|&i| outcomes[i] == UNAVAILABLE)
            .collect();
        if retry.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again: Vec<String> = retry.iter().map(|&i| tokens[i].clone()).collect();
        for (i, outcome) in retry
            .into_iter()
            .zip(redeem_each(api_key, urls, &again, 0).await)
        {
            outcomes[i] = outcome;
        }
    }
    outcomes
}

/// A server's `/readyz` status and body.
async fn readiness(client: &reqwest::Client, server: &ServerProcess) -> (StatusCode, Value) {
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    (ready.status(), ready.json().await.unwrap())
}

/// A server's `/metrics` text.
async fn metrics_of(client: &reqwest::Client, server: &ServerProcess) -> String {
    let metrics = client.get(server.url("/metrics")).send().await.unwrap();
    metrics.text().await.unwrap()
}

fn redeem_urls(fleet: &[ServerProcess]) -> Vec<String> {
    fleet.iter().map(|p| p.url("/v1/tokens/redeem")).collect()
}

/// 3 processes on a 3-master cluster, set up for races.
struct RacingFleet {
    _cluster: RedisCluster,
    keys: tempfile::TempDir,
    api_key: String,
    _processes: Vec<ServerProcess>,
    urls: Vec<String>,
}

fn racing_fleet() -> Option<RacingFleet> {
    let cluster = RedisCluster::start(3, 0)?;
    let (keys, api_key) = init_keys();
    let processes = fleet_of(
        3,
        keys.path(),
        &cluster,
        &[("STREAMTOKEN_REDIS_TIMEOUT_MS", RACE_TIMEOUT_MS)],
    );
    Some(RacingFleet {
        urls: redeem_urls(&processes),
        _cluster: cluster,
        keys,
        api_key,
        _processes: processes,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_one_cluster_accept_one_of_two_thousand_concurrent_redemptions_of_a_token(
) {
    // Arrange. Bound whole: the cluster and the processes live until the test ends.
    let Some(fleet) = racing_fleet() else {
        return;
    };
    let (keys, api_key, urls) = (&fleet.keys, &fleet.api_key, &fleet.urls);
    let token = mint_offline(keys.path(), 1).remove(0);

    // Act
    let outcomes = redeem_all_at_once(
        api_key,
        (0..2000)
            .map(|i| (urls[i % 3].clone(), token.clone()))
            .collect(),
    )
    .await;

    // Assert
    let counts = tally(outcomes);
    assert_eq!(counts.get(ACCEPTED), Some(&1), "{counts:?}");
    assert_eq!(counts.get(ALREADY_USED), Some(&1999), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_thousand_tokens_each_redeem_once_on_one_process_and_are_refused_on_another() {
    // Arrange. Bound whole: the cluster and the processes live until the test ends.
    let Some(fleet) = racing_fleet() else {
        return;
    };
    let (keys, api_key, urls) = (&fleet.keys, &fleet.api_key, &fleet.urls);
    let tokens = mint_offline(keys.path(), 3000);

    // Act: token i on process i % 3, then again on process (i + 1) % 3.
    let first = redeem_each(api_key, urls, &tokens, 0).await;
    let second = redeem_each(api_key, urls, &tokens, 1).await;

    // Assert
    assert_eq!(tally(first), BTreeMap::from([(ACCEPTED.to_owned(), 3000)]));
    assert_eq!(
        tally(second),
        BTreeMap::from([(ALREADY_USED.to_owned(), 3000)])
    );
}

/// What a master's `kill -9` under redemption load did.
#[derive(Debug)]
struct FailoverRun {
    /// Uses sent and accepted before the kill.
    accepted_before: usize,
    /// Every use accepted, before, during and after the failover.
    accepted_in_all: usize,
    /// Of those, how many redeemed again once the cluster had failed over (uses forgotten).
    redeemed_again: usize,
    unavailable: usize,
    /// From the kill until a fresh token redeemed again.
    outage: Duration,
}

impl std::fmt::Display for FailoverRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} uses accepted before the kill ({} in all), {} of them redeemed again after the \
             failover, {} answers 503, redemptions succeeded again {:.1} s after the kill",
            self.accepted_before,
            self.accepted_in_all,
            self.redeemed_again,
            self.unavailable,
            self.outage.as_secs_f64()
        )
    }
}

/// 2 processes redeem fresh dev-org tokens as fast as they can, 16 at a time; the master
/// holding the dev org's slot is killed (and, if `restart_after` is set, restarted that much
/// later, as an orchestrator would: it rejoins as the new master's replica); once a fresh token
/// redeems again, every token accepted before the kill is tried again.
async fn kill_the_master_under_load(
    replica_acks: &str,
    restart_after: Option<Duration>,
) -> Option<FailoverRun> {
    let cluster = RedisCluster::start(3, 1)?;
    let (keys, api_key) = init_keys();
    let fleet = fleet_of(
        2,
        keys.path(),
        &cluster,
        &[
            ("STREAMTOKEN_REDIS_REPLICA_ACKS", replica_acks),
            ("STREAMTOKEN_REDIS_TIMEOUT_MS", "1000"),
        ],
    );
    let urls = redeem_urls(&fleet);
    let tokens = Arc::new(Mutex::new(mint_offline(keys.path(), 6000)));
    let accepted = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let unavailable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed = Arc::new(Mutex::new(None::<Instant>));
    let recovered = Arc::new(Mutex::new(None::<Instant>));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (tokens, accepted, unavailable) =
                (tokens.clone(), accepted.clone(), unavailable.clone());
            let (killed, recovered, stop) = (killed.clone(), recovered.clone(), stop.clone());
            let (client, key, url) = (client.clone(), api_key.clone(), urls[w % 2].clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(token) = tokens.lock().unwrap().pop() else {
                        break;
                    };
                    let sent_at = Instant::now();
                    let sent = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({ "token": token }))
                        .send()
                        .await;
                    let answer = outcome(sent).await;
                    if answer == ACCEPTED {
                        accepted.lock().unwrap().push((sent_at, token));
                        // Recovered: a request sent after the kill was accepted.
                        let was_killed = *killed.lock().unwrap();
                        if was_killed.is_some_and(|at| sent_at > at) {
                            recovered.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                    } else if answer == UNAVAILABLE {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    } else {
                        panic!("unexpected answer {answer}");
                    }
                }
            })
        })
        .collect();

    // Kill the dev org's master once the load has had 1,000 uses accepted (by count, not time:
    // a fast machine would otherwise spend most tokens before the kill).
    let settle = Instant::now() + Duration::from_secs(20);
    while accepted.lock().unwrap().len() < 1000 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let master = cluster.master_for_key("{dev}");
    cluster.kill_master(master);
    let kill_time = Instant::now();
    *killed.lock().unwrap() = Some(kill_time);
    let deadline = kill_time + FAILOVER_DEADLINE;
    let mut restart = restart_after.map(|after| kill_time + after);
    while recovered.lock().unwrap().is_none() && Instant::now() < deadline {
        if restart.is_some_and(|at| Instant::now() >= at) {
            restart = None;
            cluster.restart_node(master);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let recovered_at = recovered.lock().unwrap().unwrap_or_else(|| {
        let logs: Vec<String> = fleet
            .iter()
            .map(|server| {
                let text = server.log_text();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
            .collect();
        panic!(
            "no redemption succeeded within {FAILOVER_DEADLINE:?} of the kill:\n{}\nstreamtoken:\n{}",
            cluster.describe(),
            logs.join("\n---\n")
        )
    });

    // Every accepted use, before the kill or during it (a use written just before the kill may
    // be answered after it), tried again on the promoted replica.
    let accepted = accepted.lock().unwrap().clone();
    let accepted_before = accepted.iter().filter(|(at, _)| *at < kill_time).count();
    let before: Vec<String> = accepted.into_iter().map(|(_, token)| token).collect();
    let counts = tally(redeem_each_until_answered(&api_key, &urls, &before).await);
    assert!(
        counts
            .keys()
            .all(|outcome| outcome == ACCEPTED || outcome == ALREADY_USED),
        "{counts:?}"
    );
    Some(FailoverRun {
        accepted_before,
        accepted_in_all: before.len(),
        redeemed_again: counts.get(ACCEPTED).copied().unwrap_or(0),
        unavailable: unavailable.load(Ordering::Relaxed),
        outage: recovered_at - kill_time,
    })
}

/// With one replica per master, the promoted replica has none of its own: redemptions on its
/// slots answer 503 until the killed node is back as its replica (here restarted after 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_replica_ack_a_master_killed_under_load_forgets_no_accepted_use() {
    let Some(run) = kill_the_master_under_load("1", Some(Duration::from_secs(3))).await else {
        return;
    };
    eprintln!("REPLICA_ACKS=1: {run}");
    assert!(run.accepted_before > 100, "too little load: {run:?}");
    assert_eq!(run.redeemed_again, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_replica_acks_a_master_killed_under_load_fails_over_and_redemptions_resume() {
    let Some(run) = kill_the_master_under_load("0", None).await else {
        return;
    };
    // Asynchronous replication: a use the master acknowledged in its last moments may not have
    // reached the replica. How many did is the figure the README quotes; it may be 0 on loopback.
    eprintln!("REPLICA_ACKS=0: {run}");
    assert!(run.accepted_before > 100, "too little load: {run:?}");
    assert!(run.outage < FAILOVER_DEADLINE, "{run:?}");
}

/// Mints with the dev key as fast as `concurrency` clients can, round-robin over `fleet`, for
/// `duration`; returns the answers by status.
async fn mint_for(
    fleet: &[ServerProcess],
    api_key: &str,
    concurrency: usize,
    duration: Duration,
) -> BTreeMap<u16, usize> {
    let client = reqwest::Client::new();
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let url = fleet[i % fleet.len()].url("/v1/tokens");
            let (client, key) = (client.clone(), api_key.to_owned());
            tokio::spawn(async move {
                let mut statuses = BTreeMap::new();
                while Instant::now() < until {
                    let status = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({}))
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    *statuses.entry(status).or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await.unwrap() {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_one_quota_of_six_hundred_a_minute_with_a_burst_of_fifty() {
    // Arrange
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let (keys, api_key) = init_keys();
    let fleet = fleet_of(
        3,
        keys.path(),
        &cluster,
        &[
            ("STREAMTOKEN_RATE_PER_MINUTE", "600"),
            ("STREAMTOKEN_RATE_BURST", "50"),
        ],
    );

    // Act: 10 s of minting, 4 clients per process.
    let statuses = mint_for(&fleet, &api_key, 12, Duration::from_secs(10)).await;

    // Assert: the burst plus 10 per second for 10 s, within 10%, however many processes.
    let accepted = statuses.get(&200).copied().unwrap_or(0);
    eprintln!("fleet quota: {statuses:?}");
    assert!((135..=165).contains(&accepted), "{statuses:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    assert_eq!(statuses.len(), 2, "only 200 and 429: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_store_stopped_minting_goes_on_under_local_quotas_and_readyz_says_503() {
    // Arrange
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let (keys, api_key) = init_keys();
    let fleet = fleet_of(1, keys.path(), &cluster, &[]);
    let server = &fleet[0];
    let client = reqwest::Client::new();
    let mint = || {
        client
            .post(server.url("/v1/tokens"))
            .bearer_auth(&api_key)
            .json(&json!({}))
            .send()
    };
    assert_eq!(mint().await.unwrap().status(), StatusCode::OK);

    // Act
    cluster.pause_all();
    let started = Instant::now();
    let minted: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(mint().await.unwrap().status());
        }
        statuses
    };
    let took = started.elapsed();
    let (ready_status, body) = readiness(&client, server).await;
    let metrics = metrics_of(&client, server).await;
    cluster.resume_all();

    // Assert: every mint answered, each within the store timeout (500 ms) plus slack.
    assert!(minted.iter().all(|s| *s == StatusCode::OK), "{minted:?}");
    assert!(took < Duration::from_secs(5), "5 mints took {took:?}");
    assert_eq!(ready_status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "replay_store_unavailable", "{body}");
    assert!(
        metrics.contains("streamtoken_rate_limit_degraded_total 5"),
        "{metrics}"
    );
    server.wait_for_log("fleet-wide rate limit degraded", Duration::from_secs(1));
}

/// The cluster's settings for an in-process app. A generous store timeout: these tests are about
/// behaviour, and a loaded machine can take longer than 500 ms to open the first connection.
fn cluster_settings(cluster: &RedisCluster) -> RedisSettings {
    RedisSettings {
        timeout: Duration::from_secs(5),
        target: RedisTarget::Cluster(cluster.seed_urls().split(',').map(Secret::new).collect()),
        ..redis_settings("redis://unused/")
    }
}

async fn app_on_cluster(cluster: &RedisCluster) -> TestApp {
    spawn_app_with(Options {
        redis: Some(cluster_settings(cluster)),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_master_fails_only_its_own_slots_and_readyz_names_it() {
    // Arrange: no replicas, so the dev org's slots stay without a master.
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let app = app_on_cluster(&cluster).await;
    let dev_master = cluster.master_for_key("{dev}");
    let other = (0..100)
        .map(|i| format!("org{i}"))
        .find(|org| cluster.master_for_key(&format!("{{{org}}}")) != dev_master)
        .expect("an org on another master");
    let other_key = app.add_api_key_with(streamtoken::keys::admin::NewApiKey::new(
        streamtoken::tenancy::org::Org::parse(&other).unwrap(),
        vec![
            streamtoken::tenancy::api_keys::Scope::Mint,
            streamtoken::tenancy::api_keys::Scope::Redeem,
        ],
    ));
    let dev_token = app.mint_token(json!({})).await;
    let other_token: Value = app
        .post_json("/v1/tokens", Some(&other_key), &json!({}))
        .await
        .json()
        .await
        .unwrap();

    // Act
    cluster.kill_master(dev_master);
    let dev = outcome(Ok(app.redeem(&dev_token).await)).await;
    let elsewhere = app
        .post_json(
            "/v1/tokens/redeem",
            Some(&other_key),
            &json!({ "token": other_token["token"] }),
        )
        .await
        .status();
    let ready: Value = app.get("/readyz").await.json().await.unwrap();

    // Assert
    assert_eq!(dev, UNAVAILABLE);
    assert_eq!(elsewhere, StatusCode::OK, "another org's slot still works");
    let dead = format!("127.0.0.1:{dev_master}");
    let node = ready["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == dead.as_str())
        .unwrap_or_else(|| panic!("{dead} not in {ready}"));
    assert_eq!(node["ok"], false, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_when_the_cluster_state_fails_or_no_master_answers() {
    // Arrange
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let app = app_on_cluster(&cluster).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let masters: Vec<u16> = cluster
        .nodes()
        .into_iter()
        .filter(|n| n.is_master())
        .map(|n| n.port)
        .collect();

    // Act: two of three masters gone; the survivor is in a minority and fails the cluster.
    cluster.kill_master(masters[0]);
    cluster.kill_master(masters[1]);
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    let mut body = Value::Null;
    while Instant::now() < deadline {
        body = app.get("/readyz").await.json().await.unwrap();
        if body.to_string().contains("cluster_state:fail") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then the last one too.
    cluster.kill_master(masters[2]);
    let none = app.get("/readyz").await;
    let none_status = none.status();
    let none_body: Value = none.json().await.unwrap();

    // Assert
    assert!(
        body["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().unwrap().contains("cluster_state:fail"))),
        "{body}"
    );
    assert_eq!(body["status"], "unavailable");
    assert_eq!(none_status, StatusCode::SERVICE_UNAVAILABLE, "{none_body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_entry_on_the_cluster_outlives_every_window_in_which_its_token_still_verifies() {
    // Arrange
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let app = app_on_cluster(&cluster).await;
    let leeway = app.settings.token.leeway_seconds as i64;
    let prefix = app.settings.redis.as_ref().unwrap().key_prefix.clone();
    let master = cluster.master_for_key("{dev}");
    let now = chrono::Utc::now().timestamp();
    // A fresh token, and one whose exp passed a moment ago but still verifies within the leeway
    // (as on a gateway whose clock lags ours, or a Redis whose clock runs ahead).
    let fresh = app.mint_at(MintRequest::default(), now);
    let lifetime = i64::from(MintRequest::default().expires_in.get());
    let late = app.mint_at(MintRequest::default(), now - lifetime - leeway + 2);

    // Act
    for token in [&fresh, &late] {
        assert_eq!(app.redeem(token).await.status(), StatusCode::OK);
    }

    // Assert: kept until exp + 2 × leeway + 1 s, and never less than 2 × leeway + 1 s from the
    // store's own now.
    let expiry = |token: &str| {
        let jti = app.state.redeemer.verify(token).expect("verifies").jti;
        let key = format!("{prefix}:{{dev}}:use:{jti}");
        match cluster.command(master, &["EXPIRETIME", &key]) {
            RedisReply::Int(at) => at,
            other => panic!("EXPIRETIME {key}: {other}"),
        }
    };
    assert_eq!(expiry(&fresh), now + lifetime + 2 * leeway + 1);
    let store_now = match cluster.command(master, &["TIME"]) {
        RedisReply::Array(parts) => parts[0].to_string().parse::<i64>().unwrap(),
        other => panic!("TIME: {other}"),
    };
    assert!(
        expiry(&late) >= store_now + 2 * leeway,
        "entry expires at {}, the store's now is {store_now}",
        expiry(&late)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_reached_over_tls_keeps_tokens_single_use_and_an_unknown_ca_fails_closed() {
    // Arrange: seeds are `rediss://` TLS ports; the client must follow the topology the nodes
    // announce over TLS (their TLS ports) and trust their certificate through our CA alone.
    // A replica each, and one replica ack, so replication over TLS is on the path too.
    let dir = tempfile::tempdir().unwrap();
    let tls = certificates(dir.path());
    let Some(cluster) = RedisCluster::start_tls(3, 1, &tls) else {
        return;
    };
    let mut settings = cluster_settings(&cluster);
    settings.tls_ca_file = Some(tls.ca.clone().into());
    settings.replica_acks = 1;
    let app = spawn_app_with(Options {
        redis: Some(settings.clone()),
        ..Options::default()
    })
    .await;
    let minted = app.mint_json(json!({})).await;
    let token = minted["token"].as_str().unwrap();

    // Act
    let first = app.redeem(token).await.status();
    let second = app.redeem(token).await.status();
    let ready = app.get("/readyz").await;
    let ready_status = ready.status();
    let body: Value = ready.json().await.unwrap();

    // Assert: single use holds, and the use is on the dev org's master and its replica.
    assert_eq!(first, StatusCode::OK);
    assert_eq!(second, StatusCode::CONFLICT);
    let entry = format!(
        "{}:{{dev}}:use:{}",
        settings.key_prefix,
        minted["jti"].as_str().unwrap()
    );
    let master = cluster.master_for_key(&entry);
    assert_eq!(
        cluster.command(master, &["HLEN", &entry]),
        RedisReply::Int(1)
    );
    let replica = cluster.replica_ports_of(master)[0];
    let read = cluster.pipeline(replica, &[&["READONLY"], &["HLEN", &entry]]);
    assert_eq!(read[1], RedisReply::Int(1), "on replica {replica}");
    // Every master is checked, by the TLS address it announced.
    assert_eq!(ready_status, StatusCode::OK, "{body}");
    assert_eq!(body["replay_store"], "redis-cluster", "{body}");
    let mut checked: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {body}"))
        .iter()
        .inspect(|node| assert_eq!(node["ok"], true, "{body}"))
        .map(|node| node["node"].as_str().unwrap())
        .collect();
    checked.sort_unstable();
    let mut masters: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|n| n.is_master())
        .map(|n| format!("127.0.0.1:{}", cluster.tls_port_of(n.port)))
        .collect();
    masters.sort_unstable();
    assert_eq!(checked, masters, "{body}");

    // Without our CA the nodes' certificate is not trusted: fail closed.
    let untrusting = assert_an_untrusting_app_fails_closed(settings).await;
    let not_ready = untrusting.get("/readyz").await;
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = not_ready.text().await.unwrap();
    assert!(
        body.contains("certificate"),
        "refused for its certificate: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_clock_past_the_leeway_makes_readyz_503_and_past_half_of_it_warns() {
    // Arrange: two servers whose clocks run behind the cluster's (libfaketime), leeway 4 s.
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let (keys, _) = init_keys();
    let seeds = cluster.seed_urls();
    let env = [
        ("STREAMTOKEN_REDIS_CLUSTER_URLS", seeds.as_str()),
        ("STREAMTOKEN_LEEWAY_SECONDS", "4"),
        ("RUST_LOG", "info"),
    ];
    let Some(far) = ServerProcess::spawn_with_clock_offset(keys.path(), &env, -10) else {
        return;
    };
    let Some(near) = ServerProcess::spawn_with_clock_offset(keys.path(), &env, -3) else {
        return;
    };
    let client = reqwest::Client::new();

    // Act
    let far_error = far.wait_for_log(
        "more than STREAMTOKEN_LEEWAY_SECONDS",
        Duration::from_secs(5),
    );
    let near_warning = near.wait_for_log("more than half of", Duration::from_secs(5));
    let (far_status, far_body) = readiness(&client, &far).await;
    let (near_status, near_body) = readiness(&client, &near).await;
    let gauge = metrics_of(&client, &far).await;

    // Assert
    assert!(far_error.contains("+10."), "{far_error}");
    assert!(near_warning.contains("+3."), "{near_warning}");
    assert_eq!(far_status, StatusCode::SERVICE_UNAVAILABLE, "{far_body}");
    assert!(
        far_body["reasons"][0].as_str().unwrap().contains("clock"),
        "{far_body}"
    );
    assert_eq!(near_status, StatusCode::OK, "{near_body}");
    let skew = near_body["clock_skew_seconds"].as_f64().unwrap();
    assert!((2.5..3.5).contains(&skew), "{near_body}");
    let reported: f64 = gauge
        .lines()
        .find_map(|line| line.strip_prefix("streamtoken_store_clock_skew_seconds "))
        .unwrap_or_else(|| panic!("no skew gauge in {gauge}"))
        .parse()
        .unwrap();
    assert!((9.5..10.5).contains(&reported), "{reported}");
}

/// Strict mode's check before the write must reach the master that records the use: without a
/// keyed command leading its pipeline the cluster client sends it to any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_on_a_cluster_asks_the_master_that_records_the_use() {
    // Arrange: only the dev org's master persists every write.
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let master = cluster.master_for_key("{dev}");
    for setting in [["appendonly", "yes"], ["appendfsync", "always"]] {
        let set = cluster.command(master, &["CONFIG", "SET", setting[0], setting[1]]);
        assert_eq!(set.to_string(), "OK", "CONFIG SET {setting:?}");
    }
    let mut settings = cluster_settings(&cluster);
    settings.require_persistence = true;
    let app = spawn_app_with(Options {
        redis: Some(settings),
        ..Options::default()
    })
    .await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let token = app.mint_token(json!({})).await;
        statuses.push(app.redeem(&token).await.status());
    }

    // Assert
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}
