//! Fault injection against the Redis replay store: `kill -9` of Redis under concurrent redemption
//! load (with and without an append-only file), strict persistence mode, the start-up persistence
//! warning, a Redis that stops answering (`CLIENT PAUSE`), and a graceful shutdown of the real
//! binary while a redemption waits on Redis.
//!
//! The invariant every test guards: no token is ever accepted twice, and every refusal caused by
//! the store is a 503 `replay_store_unavailable` that comes back within the store timeout.
//!
//! Every test starts its own `redis-server` and uses a random key prefix.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use streamtoken::keys::admin::NewApiKey;
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::tenancy::org::Org;
use streamtoken::token::mint::MintRequest;
use tempfile::TempDir;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{redis_settings, spawn_app_with, Options, TestApp};
use crate::support::keys::init_keys;
use crate::support::outcomes::{outcome, tally, ACCEPTED};
use crate::support::process::{cli, rss_kib, ServerProcess};
use crate::support::redis_server::{RedisReply, RedisServer};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The strict configuration: every write is fsynced before Redis answers.
const AOF_ALWAYS: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];
const ALREADY_USED: &str = "409 token_already_used";
const UNAVAILABLE: &str = "503 replay_store_unavailable";
/// The default store timeout (`STREAMTOKEN_REDIS_TIMEOUT_MS`).
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long these tests watch strict mode after Redis's persistence changes. Strict mode checks
/// persistence with every redemption, so nothing should change within it; it is the longest a
/// cached check was ever trusted, kept as a window wide enough to catch a cache coming back.
const PERSISTENCE_RECHECK: Duration = Duration::from_secs(5);
/// Pause between two looks at a condition (never for correctness).
const POLL: Duration = Duration::from_millis(20);

/// Everything a task needs to redeem on one server, cheap to clone into tasks.
#[derive(Clone)]
struct Redeemer {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

impl Redeemer {
    fn of_app(app: &TestApp) -> Self {
        Redeemer {
            client: app.client.clone(),
            url: app.url("/v1/tokens/redeem"),
            api_key: app.api_key.clone(),
        }
    }

    fn of_process(server: &ServerProcess, api_key: &str) -> Self {
        Redeemer {
            client: reqwest::Client::new(),
            url: server.url("/v1/tokens/redeem"),
            api_key: api_key.to_owned(),
        }
    }

    async fn redeem(&self, token: &str) -> String {
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .json(&json!({ "token": token }));
        outcome(request.send().await).await
    }

    /// Redeems every token at the same moment (one task each, released by a barrier) and
    /// returns each outcome with how long its answer took.
    async fn redeem_all_at_once(&self, tokens: &[String]) -> Vec<(String, Duration)> {
        let barrier = Arc::new(Barrier::new(tokens.len()));
        let tasks: Vec<_> = tokens
            .iter()
            .map(|token| {
                let (redeemer, barrier, token) = (self.clone(), barrier.clone(), token.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let started = Instant::now();
                    let answer = redeemer.redeem(&token).await;
                    (answer, started.elapsed())
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            answers.push(task.await.expect("redemption task panicked"));
        }
        answers
    }

    /// Redeems each token once, a few at a time; outcomes in the order given.
    async fn redeem_each(&self, tokens: &[String]) -> Vec<String> {
        futures::stream::iter(tokens.iter().map(|token| self.redeem(token)))
            .buffered(8)
            .collect()
            .await
    }
}

/// An in-process app on `redis` with its own random key prefix.
async fn app_on(redis: &RedisServer, timeout: Duration, require_persistence: bool) -> TestApp {
    let mut settings = redis_settings(&redis.url());
    settings.timeout = timeout;
    settings.require_persistence = require_persistence;
    spawn_app_with(Options {
        redis: Some(settings),
        ..Options::default()
    })
    .await
}

/// `app_on`, and a redeemer for that app.
async fn app_and_redeemer_on(
    redis: &RedisServer,
    timeout: Duration,
    require_persistence: bool,
) -> (TestApp, Redeemer) {
    let app = app_on(redis, timeout, require_persistence).await;
    let redeemer = Redeemer::of_app(&app);
    (app, redeemer)
}

/// Mints `n` default tokens (60 s) straight from the app's keyring: fast, and no HTTP involved.
fn mint_many(app: &TestApp, n: usize) -> Vec<String> {
    let now = chrono::Utc::now().timestamp();
    (0..n)
        .map(|_| app.mint_at(MintRequest::default(), now))
        .collect()
}

/// Mints over HTTP and returns `(token, jti)`.
async fn mint_with_jti(app: &TestApp) -> (String, String) {
    let response = app.mint(json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["jti"].as_str().unwrap().to_owned(),
    )
}

/// Mints fresh tokens and redeems each once until one is accepted; every other answer must be a
/// 503. Returns how long that took, failing the test past `deadline`.
async fn time_until_a_fresh_token_redeems(app: &TestApp, deadline: Duration) -> Duration {
    let redeemer = Redeemer::of_app(app);
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let token = mint_many(app, 1).remove(0);
        let answer = redeemer.redeem(&token).await;
        if answer == ACCEPTED {
            return started.elapsed();
        }
        assert_eq!(answer, UNAVAILABLE, "a fresh token while Redis comes back");
        refused += 1;
        assert!(
            started.elapsed() < deadline,
            "no fresh token redeemed within {deadline:?} ({refused} answered 503)"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Redeems `token` until the answer is something other than 503 (Redis reconnecting) and
/// returns that answer.
async fn first_answer_other_than_503(
    redeemer: &Redeemer,
    token: &str,
    deadline: Duration,
) -> String {
    let started = Instant::now();
    loop {
        let answer = redeemer.redeem(token).await;
        if answer != UNAVAILABLE {
            return answer;
        }
        assert!(
            started.elapsed() < deadline,
            "only 503s for {deadline:?} after Redis came back"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `/readyz` status and, when not ready, the error code.
async fn readiness(app: &TestApp) -> String {
    outcome(Ok(app.get("/readyz").await)).await
}

/// The use entry of one of the dev org's tokens.
fn redis_key(app: &TestApp, jti: &str) -> String {
    let prefix = &app.settings.redis.as_ref().unwrap().key_prefix;
    format!("{prefix}:{{dev}}:use:{jti}")
}

/// `n` tokens minted offline by the CLI with the keys in `dir`.
fn mint_offline(dir: &std::path::Path, n: usize) -> Vec<String> {
    let count = n.to_string();
    cli(dir, &["mint", "--org", "dev", "--count", &count])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A real server on `redis` with the given extra environment.
fn serve_on(dir: &std::path::Path, redis: &RedisServer, env: &[(&str, &str)]) -> ServerProcess {
    let url = redis.url();
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let mut all = vec![
        ("STREAMTOKEN_REDIS_URL", url.as_str()),
        ("STREAMTOKEN_REDIS_PREFIX", prefix.as_str()),
    ];
    all.extend_from_slice(env);
    ServerProcess::spawn(dir, &all)
}

/// How many clients Redis is holding back (a command postponed by `CLIENT PAUSE ... WRITE`).
fn blocked_clients(redis: &RedisServer) -> i64 {
    let info = redis.command(&["INFO", "clients"]).to_string();
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO clients:\n{info}"))
}

fn assert_ok(reply: RedisReply, what: &str) {
    assert_eq!(reply, RedisReply::Status("OK".into()), "{what}");
}

// ---------------------------------------------------------------------------------------------
// kill -9 under concurrent redemption load
// ---------------------------------------------------------------------------------------------

/// Client tasks hammering the service while Redis is killed.
const LOAD_TASKS: usize = 16;
/// Tokens in play; they are released a few at a time over `RELEASE_SPAN`, so fresh tokens are
/// being raced for at the moment of the kill, during the outage, and after the restart.
const LOAD_TOKENS: usize = 200;
const RELEASE_SPAN: Duration = Duration::from_secs(4);
/// When Redis is killed, from the start of the load.
const KILL_AT: Duration = Duration::from_millis(1500);
/// 503s to observe after the kill before Redis comes back.
const OUTAGE_503S: usize = 50;
/// After the last release, the load goes on until every token has been tried this many times.
const MIN_ATTEMPTS: usize = 3;
/// Hard bounds on the load, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(9);
const MAX_ATTEMPTS_PER_TASK: usize = 20_000;
/// From `restart()` returning to a fresh token redeemed: "eventually", so generous and polled
/// (it takes 100-200 ms on an idle machine).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(10);
/// Long enough that every request of a burst meets the pause however busy the machine is;
/// each test ends the pause itself once its answers are in. Pauses are of writes (every
/// redemption writes), so the `CLIENT UNPAUSE` that ends one is not held back by it.
const LONG_PAUSE_MS: &str = "20000";

/// One answer of the load, `at` measured from the start of the run.
struct Answer {
    token: usize,
    at: Duration,
    outcome: String,
}

struct CrashRun {
    answers: Vec<Answer>,
    killed_at: Duration,
    restarted_at: Duration,
    recovered_in: Duration,
    /// Each token redeemed once more after the load, with Redis up.
    afterwards: Vec<String>,
}

impl CrashRun {
    fn accepted_per_token(&self) -> Vec<usize> {
        let mut accepted = vec![0; self.afterwards.len()];
        for answer in self.answers.iter().filter(|a| a.outcome == ACCEPTED) {
            accepted[answer.token] += 1;
        }
        accepted
    }

    fn attempts_per_token(&self) -> Vec<usize> {
        let mut attempts = vec![0; self.afterwards.len()];
        for answer in &self.answers {
            attempts[answer.token] += 1;
        }
        attempts
    }

    fn summary(&self) -> String {
        let mut attempts = self.attempts_per_token();
        attempts.sort_unstable();
        let ghost = self
            .accepted_per_token()
            .iter()
            .zip(&self.afterwards)
            .filter(|(accepted, after)| **accepted == 0 && *after == ALREADY_USED)
            .count();
        format!(
            "{} redemptions {:?}; attempts per token min {} median {} max {}; killed at {:?}, \
             restarted at {:?}, a fresh token redeemed {:?} after the restart; tokens never \
             accepted but consumed (a write that landed while its answer was lost): {ghost}",
            self.answers.len(),
            tally(self.answers.iter().map(|a| a.outcome.as_str())),
            attempts[0],
            attempts[attempts.len() / 2],
            attempts[attempts.len() - 1],
            self.killed_at,
            self.restarted_at,
            self.recovered_in,
        )
    }
}

/// Runs `LOAD_TASKS` tasks redeeming `tokens` (half the time the newest released token, half the
/// time the next one of a round-robin sweep over the released ones, so every token is raced for
/// and replayed many times), kills Redis with
/// SIGKILL at `KILL_AT`, restarts it on the same port and data once the outage has produced 503s,
/// and measures how long a fresh token takes to redeem after that. Then redeems every token once
/// more.
async fn redeem_under_load_across_a_crash(
    app: &TestApp,
    redis: &mut RedisServer,
    tokens: Vec<String>,
) -> CrashRun {
    let seed: u64 = rand::rng().random();
    eprintln!("load seed {seed}");
    let tokens = Arc::new(tokens);
    let redeemer = Redeemer::of_app(app);
    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let sweep = Arc::new(AtomicUsize::new(0));
    let attempts: Arc<Vec<AtomicUsize>> =
        Arc::new(tokens.iter().map(|_| AtomicUsize::new(0)).collect());
    let started = Instant::now();
    let released = move |elapsed: Duration, total: usize| -> usize {
        let share = elapsed.as_secs_f64() / RELEASE_SPAN.as_secs_f64();
        (1 + (share * total as f64) as usize).min(total)
    };
    let tasks: Vec<_> = (0..LOAD_TASKS)
        .map(|n| {
            let (tokens, redeemer) = (tokens.clone(), redeemer.clone());
            let (stop, unavailable) = (stop.clone(), unavailable.clone());
            let (sweep, attempts) = (sweep.clone(), attempts.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64));
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && answers.len() < MAX_ATTEMPTS_PER_TASK
                    && started.elapsed() < LOAD_LIMIT
                {
                    let in_play = released(started.elapsed(), tokens.len());
                    let token = if rng.random_bool(0.5) {
                        in_play - 1
                    } else {
                        sweep.fetch_add(1, Ordering::Relaxed) % in_play
                    };
                    let outcome = redeemer.redeem(&tokens[token]).await;
                    if outcome == UNAVAILABLE {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    attempts[token].fetch_add(1, Ordering::Relaxed);
                    answers.push(Answer {
                        token,
                        at: started.elapsed(),
                        outcome,
                    });
                }
                answers
            })
        })
        .collect();

    // The fault schedule (the load's own timing, not a wait for correctness).
    tokio::time::sleep_until((started + KILL_AT).into()).await;
    let before_kill = unavailable.load(Ordering::Relaxed);
    redis.kill();
    let killed_at = started.elapsed();
    let outage_deadline = Instant::now() + Duration::from_secs(3);
    while unavailable.load(Ordering::Relaxed) < before_kill + OUTAGE_503S {
        assert!(
            Instant::now() < outage_deadline,
            "fewer than {OUTAGE_503S} answers of 503 within 3 s of killing Redis"
        );
        tokio::time::sleep(POLL).await;
    }
    tokio::task::block_in_place(|| redis.restart());
    let restarted_at = started.elapsed();
    let recovered_in = time_until_a_fresh_token_redeems(app, RECOVERY_DEADLINE).await;
    tokio::time::sleep_until((started + RELEASE_SPAN).into()).await;
    while started.elapsed() < LOAD_LIMIT
        && attempts
            .iter()
            .any(|n| n.load(Ordering::Relaxed) < MIN_ATTEMPTS)
    {
        tokio::time::sleep(POLL).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("load task panicked"));
    }
    let afterwards = redeemer.redeem_each(&tokens).await;
    CrashRun {
        answers,
        killed_at,
        restarted_at,
        recovered_in,
        afterwards,
    }
}

/// The invariants of a crash run that hold in every mode with an fsync-always Redis.
fn assert_single_use_survived(run: &CrashRun) {
    let summary = run.summary();
    eprintln!("{summary}");

    let twice: Vec<(usize, usize)> = run
        .accepted_per_token()
        .into_iter()
        .enumerate()
        .filter(|(_, accepted)| *accepted > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "tokens accepted more than once (index, times): {twice:?}\n{summary}"
    );

    let unexpected = tally(
        run.answers
            .iter()
            .map(|a| a.outcome.as_str())
            .filter(|o| ![ACCEPTED, ALREADY_USED, UNAVAILABLE].contains(o)),
    );
    assert!(
        unexpected.is_empty(),
        "answers other than 200, 409 and 503: {unexpected:?}\n{summary}"
    );

    let fewest_attempts = run.attempts_per_token().into_iter().min().unwrap();
    assert!(
        fewest_attempts >= MIN_ATTEMPTS,
        "a token was attempted only {fewest_attempts} times\n{summary}"
    );

    let during_outage = run
        .answers
        .iter()
        .filter(|a| a.outcome == UNAVAILABLE)
        .count();
    assert!(
        during_outage > 0,
        "no 503 at all while Redis was down\n{summary}"
    );
    assert!(
        run.recovered_in < RECOVERY_DEADLINE,
        "recovery took {:?}",
        run.recovered_in
    );

    // Durability: every token the service accepted is still consumed after the crash.
    let forgotten: Vec<usize> = run
        .accepted_per_token()
        .into_iter()
        .zip(&run.afterwards)
        .enumerate()
        .filter(|(_, (accepted, after))| *accepted == 1 && *after != ALREADY_USED)
        .map(|(token, _)| token)
        .collect();
    assert!(
        forgotten.is_empty(),
        "accepted tokens not refused after the crash: {forgotten:?}\n{summary}"
    );
    let stray = tally(
        run.afterwards
            .iter()
            .map(String::as_str)
            .filter(|o| ![ACCEPTED, ALREADY_USED].contains(o)),
    );
    assert!(stray.is_empty(), "after the run, with Redis up: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_an_fsync_always_redis_under_concurrent_redemptions_never_lets_a_token_through_twice(
) {
    // Arrange
    let Some(mut redis) = RedisServer::start_with(&AOF_ALWAYS) else {
        return;
    };
    let app = app_on(&redis, STORE_TIMEOUT, false).await;
    let tokens = mint_many(&app, LOAD_TOKENS);

    // Act
    let run = redeem_under_load_across_a_crash(&app, &mut redis, tokens).await;

    // Assert
    assert_single_use_survived(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_without_persistence_forgets_consumed_tokens_which_is_why_strict_mode_exists(
) {
    // Arrange: the default Redis of the harness: no AOF, no RDB.
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (app, redeemer) = app_and_redeemer_on(&redis, STORE_TIMEOUT, false).await;
    let token = mint_many(&app, 1).remove(0);
    assert_eq!(redeemer.redeem(&token).await, ACCEPTED);
    assert_eq!(redeemer.redeem(&token).await, ALREADY_USED);

    // Act
    redis.kill();
    tokio::task::block_in_place(|| redis.restart());
    let after_restart = first_answer_other_than_503(&redeemer, &token, RECOVERY_DEADLINE).await;

    // Assert: the documented weakness, shown: the same token is accepted a second time.
    assert_eq!(
        after_restart, ACCEPTED,
        "a Redis without persistence forgets consumed jtis when it restarts"
    );
    assert_eq!(redeemer.redeem(&token).await, ALREADY_USED);
}

// ---------------------------------------------------------------------------------------------
// Strict mode (STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_refuses_redemption_until_redis_persists_every_write_without_consuming_the_token(
) {
    // Arrange: strict app, Redis without an append-only file.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (app, redeemer) = app_and_redeemer_on(&redis, STORE_TIMEOUT, true).await;
    let (token, jti) = mint_with_jti(&app).await;

    // Act + Assert: refused, not consumed, not ready.
    assert_eq!(redeemer.redeem(&token).await, UNAVAILABLE);
    assert_eq!(
        redis.command(&["EXISTS", &redis_key(&app, &jti)]),
        RedisReply::Int(0),
        "strict mode wrote the jti to a Redis it refuses to trust"
    );
    assert_eq!(readiness(&app).await, UNAVAILABLE);

    // Act: the operator turns persistence on; strict mode notices at its next re-check.
    assert_ok(
        redis.command(&["CONFIG", "SET", "appendonly", "yes"]),
        "appendonly",
    );
    assert_ok(
        redis.command(&["CONFIG", "SET", "appendfsync", "always"]),
        "appendfsync",
    );
    let changed = Instant::now();
    let deadline = PERSISTENCE_RECHECK + Duration::from_secs(3);
    let mut refused = 0;
    loop {
        let answer = redeemer.redeem(&token).await;
        if answer == ACCEPTED {
            break;
        }
        assert_eq!(answer, UNAVAILABLE, "while strict mode has not re-checked");
        refused += 1;
        assert!(
            changed.elapsed() < deadline,
            "still refused {deadline:?} after persistence was turned on ({refused} refusals)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = changed.elapsed();

    // Assert: the token was never consumed by the refusals, and is single use from now on.
    eprintln!("strict mode accepted {took:?} after persistence was turned on ({refused} 503s)");
    assert_eq!(redeemer.redeem(&token).await, ALREADY_USED);
    assert_eq!(readiness(&app).await, ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_on_an_fsync_always_redis_keeps_every_token_single_use_across_a_kill_9() {
    // Arrange
    let Some(mut redis) = RedisServer::start_with(&AOF_ALWAYS) else {
        return;
    };
    let app = app_on(&redis, STORE_TIMEOUT, true).await;
    assert_eq!(
        readiness(&app).await,
        ACCEPTED,
        "strict mode trusts this Redis"
    );
    let tokens = mint_many(&app, LOAD_TOKENS);

    // Act
    let run = redeem_under_load_across_a_crash(&app, &mut redis, tokens).await;

    // Assert
    assert_single_use_survived(&run);
    let accepted_before_kill: Vec<usize> = run
        .answers
        .iter()
        .filter(|a| a.outcome == ACCEPTED && a.at < run.killed_at)
        .map(|a| a.token)
        .collect();
    assert!(
        !accepted_before_kill.is_empty(),
        "nothing was accepted before the kill"
    );
    let after_restart = tally(
        run.answers
            .iter()
            .filter(|a| a.at > run.restarted_at && accepted_before_kill.contains(&a.token))
            .map(|a| a.outcome.as_str()),
    );
    eprintln!(
        "{} tokens accepted before the kill; their answers after the restart: {after_restart:?}",
        accepted_before_kill.len()
    );
    assert!(
        after_restart
            .keys()
            .all(|o| o == ALREADY_USED || o == UNAVAILABLE),
        "a token accepted before the kill was answered {after_restart:?} after the restart"
    );
    assert!(
        after_restart.get(ALREADY_USED).copied().unwrap_or(0) > 0,
        "tokens accepted before the kill were not replayed after the restart: {after_restart:?}"
    );
}

/// Guards a fixed bug: strict mode once trusted a cached persistence check for 5 s, so after a
/// Redis restart without persistence it wrote to a Redis it had not checked. Now the check rides
/// in every redemption's pipeline (`src/store/redis_store.rs`), answered by the same Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_refuses_redemption_as_soon_as_redis_comes_back_without_persistence() {
    // Arrange: strict app on an fsync-always Redis; one token accepted.
    let Some(mut redis) = RedisServer::start_with(&AOF_ALWAYS) else {
        return;
    };
    let (app, redeemer) = app_and_redeemer_on(&redis, STORE_TIMEOUT, true).await;
    let token = mint_many(&app, 1).remove(0);
    assert_eq!(redeemer.redeem(&token).await, ACCEPTED);

    // Act: Redis crashes and comes back without persistence and without its data (as a Redis
    // restarted with appendonly no would), before the app has made any other request.
    redis.kill();
    tokio::task::block_in_place(|| redis.restart());
    assert_ok(
        redis.command(&["CONFIG", "SET", "appendonly", "no"]),
        "appendonly",
    );
    assert_ok(redis.command(&["FLUSHALL"]), "flushall");
    let back = Instant::now();

    // Assert: strict mode must not trust the new Redis; watch it past one re-check period.
    let mut answers = Vec::new();
    while back.elapsed() < PERSISTENCE_RECHECK + Duration::from_secs(1) {
        let answer = redeemer.redeem(&token).await;
        answers.push(answer.clone());
        assert_eq!(
            answer,
            UNAVAILABLE,
            "strict mode answered {answer:?} {:?} after Redis came back without persistence \
             (answers so far: {:?}); the token had already been accepted once",
            back.elapsed(),
            tally(answers.iter().map(String::as_str))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The start-up persistence warning (the real binary)
// ---------------------------------------------------------------------------------------------

const LOG_DEADLINE: Duration = Duration::from_secs(5);

/// A real server on `redis` (and its keys directory), and its start-up line containing `needle`.
fn start_up_line(redis: &RedisServer, needle: &str) -> (TempDir, ServerProcess, String) {
    let (dir, _) = init_keys();
    let server = serve_on(dir.path(), redis, &[]);
    let line = tokio::task::block_in_place(|| server.wait_for_log(needle, LOG_DEADLINE));
    (dir, server, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_redis_without_persistence_warns_at_start_up_that_a_restart_forgets_tokens() {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };

    // Act
    let (_dir, _server, line) = start_up_line(&redis, "Redis persistence is off");

    // Assert
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE"),
        "the warning names the fix: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_redis_is_down_says_persistence_was_not_checked_rather_than_unknown()
{
    // Arrange: an outage is no answer about persistence (unlike a Redis refusing CONFIG).
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();

    // Act
    let (_dir, _server, line) = start_up_line(&redis, "persistence");

    // Assert
    assert!(line.contains("not checked at start-up"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_redis_that_refuses_config_says_at_start_up_it_cannot_check_persistence() {
    // Arrange: CONFIG renamed away, as managed services and ACLs do. That is an answer from a
    // live Redis, not an outage.
    let Some(redis) = RedisServer::start_with(&["--rename-command", "CONFIG", ""]) else {
        return;
    };

    // Act
    let (_dir, _server, line) = start_up_line(&redis, "persistence");

    // Assert
    assert!(line.contains("cannot check Redis persistence"), "{line}");
    assert!(line.contains("WARN"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_redis_with_a_periodic_fsync_warns_that_a_crash_can_forget_the_last_redemptions(
) {
    // Arrange
    let Some(redis) =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"])
    else {
        return;
    };

    // Act
    let (_dir, _server, line) = start_up_line(&redis, "appendfsync everysec");

    // Assert
    assert!(line.contains("WARN"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_an_fsync_always_redis_logs_at_start_up_that_single_use_survives_restarts() {
    // Arrange
    let Some(redis) = RedisServer::start_with(&AOF_ALWAYS) else {
        return;
    };

    // Act
    let (_dir, server, line) = start_up_line(&redis, "appendfsync always");

    // Assert
    assert!(line.contains("INFO"), "{line}");
    assert!(
        !server.log_text().contains("Redis persistence is off"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_from_the_environment_makes_a_server_on_redis_without_persistence_refuse_and_not_ready(
) {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (dir, api_key) = init_keys();
    let token = mint_offline(dir.path(), 1).remove(0);

    // Act
    let server = serve_on(
        dir.path(),
        &redis,
        &[("STREAMTOKEN_REDIS_REQUIRE_PERSISTENCE", "true")],
    );
    let redeemer = Redeemer::of_process(&server, &api_key);
    let redeemed = redeemer.redeem(&token).await;
    let ready = outcome(reqwest::get(server.url("/readyz")).await).await;

    // Assert
    assert_eq!(redeemed, UNAVAILABLE);
    assert_eq!(ready, UNAVAILABLE);
    // The use was taken back: no replay entry remains (usage counters may exist, at 0).
    let RedisReply::Array(keys) = redis.command(&["KEYS", "*"]) else {
        panic!("KEYS answers an array");
    };
    let jti_keys: Vec<String> = keys
        .iter()
        .map(ToString::to_string)
        .filter(|key| !key.contains(":usage:"))
        .collect();
    assert!(jti_keys.is_empty(), "no consumed jti is left: {jti_keys:?}");
}

// ---------------------------------------------------------------------------------------------
// A Redis that stops answering (CLIENT PAUSE)
// ---------------------------------------------------------------------------------------------

/// While Redis is paused, every redemption gets its 503 within `limit` of being sent, however
/// many arrive at once; returns the slowest answer.
async fn assert_every_paused_redemption_fails_fast(
    redeemer: &Redeemer,
    tokens: &[String],
    limit: Duration,
) -> Duration {
    let answers = redeemer.redeem_all_at_once(tokens).await;
    let outcomes = tally(answers.iter().map(|(o, _)| o.as_str()));
    assert_eq!(
        outcomes,
        BTreeMap::from([(UNAVAILABLE.to_owned(), tokens.len())]),
        "while Redis is paused"
    );
    let mut times: Vec<Duration> = answers.iter().map(|(_, took)| *took).collect();
    times.sort_unstable();
    let slowest = times[times.len() - 1];
    eprintln!(
        "{} redemptions while Redis was paused: all 503, fastest {:?}, median {:?}, slowest {slowest:?}",
        tokens.len(),
        times[0],
        times[times.len() / 2]
    );
    assert!(
        slowest < limit,
        "the slowest 503 took {slowest:?}; they pile up waiting for Redis"
    );
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_paused_two_hundred_concurrent_redemptions_each_fail_fast_with_503_then_recover(
) {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (app, redeemer) = app_and_redeemer_on(&redis, STORE_TIMEOUT, false).await;
    let tokens = mint_many(&app, 200);
    assert_eq!(readiness(&app).await, ACCEPTED, "the connection is open");

    // Act
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let paused = Instant::now();
    // The promise: the 500 ms store timeout, plus 1 s for 200 requests on two busy cores.
    assert_every_paused_redemption_fails_fast(&redeemer, &tokens, Duration::from_millis(1500))
        .await;
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");

    // Assert: once the pause is over, redemption works again.
    let retried_for = time_until_a_fresh_token_redeems(&app, RECOVERY_DEADLINE).await;
    eprintln!(
        "a fresh token redeemed {:?} after the pause began ({retried_for:?} of retrying)",
        paused.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shorter_store_timeout_makes_paused_redemptions_answer_503_sooner() {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (app, redeemer) = app_and_redeemer_on(&redis, Duration::from_millis(200), false).await;
    let tokens = mint_many(&app, 200);
    assert_eq!(readiness(&app).await, ACCEPTED, "the connection is open");

    // Act + Assert
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    // The promise: the 200 ms store timeout, plus 500 ms of margin, still under the default's.
    assert_every_paused_redemption_fails_fast(&redeemer, &tokens, Duration::from_millis(700)).await;
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");
    time_until_a_fresh_token_redeems(&app, RECOVERY_DEADLINE).await;
}

/// Guards a fixed bug: a `SET NX` that timed out is still queued on the connection and runs when
/// Redis resumes; the store now queues a compare-and-delete behind it, so a redemption refused
/// with 503 leaves the token usable and the retry the README invites succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redemption_refused_with_503_while_redis_was_paused_can_be_retried_as_documented() {
    // Arrange: README: "1011 replay store unavailable (nothing was consumed; retry)".
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app_on(&redis, STORE_TIMEOUT, false).await;
    let (token, jti) = mint_with_jti(&app).await;
    assert_eq!(readiness(&app).await, ACCEPTED, "the connection is open");

    // Act: the first attempt meets a paused Redis and times out over the WebSocket gateway.
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let (code, close) = stream_refusal(&app, &token).await;
    assert_eq!((code.as_str(), close), ("replay_store_unavailable", 1011));
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");
    time_until_a_fresh_token_redeems(&app, RECOVERY_DEADLINE).await;

    // Assert: the retry the close code invites is accepted.
    let consumed = redis.command(&["EXISTS", &redis_key(&app, &jti)]);
    let retry = Redeemer::of_app(&app).redeem(&token).await;
    assert_eq!(
        retry, ACCEPTED,
        "the token was answered 1011 (\"nothing was consumed; retry\") yet the retry is refused; \
         the timed-out SET NX ran when Redis resumed (EXISTS {jti} = {consumed})"
    );
}

/// Guards a fixed bug: a credit-charged redemption that timed out was charged when Redis resumed,
/// and its retry charged again. The charge and the use are one script now, and the release
/// queued behind a timed-out attempt takes back both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credit_charged_redemption_refused_with_503_costs_no_credit_and_its_retry_costs_one() {
    // Arrange: org acme with 5 credits, one spent on a warm-up redemption.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app_on(&redis, STORE_TIMEOUT, false).await;
    let key = app.add_api_key_with(NewApiKey {
        credits: Some(5),
        ..NewApiKey::new(
            Org::parse("acme").unwrap(),
            vec![Scope::Mint, Scope::Redeem],
        )
    });
    let mint = || async {
        let minted: Value = app
            .post_json("/v1/tokens", Some(&key), &json!({}))
            .await
            .json()
            .await
            .unwrap();
        json!({ "token": minted["token"] })
    };
    let (warm, token) = (mint().await, mint().await);
    let redeem = |body: &Value| {
        let body = body.clone();
        let app = &app;
        let key = key.clone();
        async move {
            app.post_json("/v1/tokens/redeem", Some(&key), &body)
                .await
                .status()
        }
    };
    assert_eq!(redeem(&warm).await, StatusCode::OK, "warm-up");

    // Act: the first attempt times out behind a pause of writes; the retry comes after it.
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let first = redeem(&token).await;
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");
    time_until_a_fresh_token_redeems(&app, RECOVERY_DEADLINE).await;
    let retry = redeem(&token).await;
    let usage = app.usage_with(&key).await;

    // Assert: two redemptions accepted (warm-up, retry), two credits spent.
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry, StatusCode::OK, "the 503 invited a retry");
    assert_eq!(usage["redeemed"], 2, "{usage}");
    assert_eq!(usage["credits_remaining"], 3, "{usage}");
}

/// Opens `/v1/stream` with `token` and returns the error frame's code and the close code.
async fn stream_refusal(app: &TestApp, token: &str) -> (String, u16) {
    let url = app.ws_url(&format!("/v1/stream?token={token}"));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    let mut code = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let body: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(body["type"], "error", "{body}");
                code = body["code"].as_str().map(str::to_owned);
            }
            Some(Ok(Message::Close(Some(close)))) => {
                let _ = ws.close(None).await;
                return (
                    code.expect("an error frame before the close"),
                    close.code.into(),
                );
            }
            Some(Ok(Message::Ping(data))) => ws.send(Message::Pong(data)).await.unwrap(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_process_keeps_its_memory_flat_through_two_thousand_redemptions_against_a_paused_redis(
) {
    // Arrange: a real server; 400 + 2,000 tokens minted offline.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (dir, api_key) = init_keys();
    let mut tokens = mint_offline(dir.path(), 2_400);
    let server = serve_on(dir.path(), &redis, &[]);
    let redeemer = Redeemer::of_process(&server, &api_key);
    // Warm-up of the same shape (400 concurrent against a paused Redis), so the baseline
    // includes connections, buffers and allocator arenas sized for the load. The pause outlasts
    // the warm-up: on a busy 2-core machine the 400 requests can take seconds to reach the
    // store, and any that arrive after the pause are (rightly) accepted.
    let warm_up: Vec<String> = tokens.drain(..400).collect();
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let answers = redeemer.redeem_all_at_once(&warm_up).await;
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");
    assert!(
        answers.iter().all(|(o, _)| o == UNAVAILABLE),
        "warm-up: {:?}",
        tally(answers.iter().map(|(o, _)| o.as_str()))
    );
    let fresh = mint_offline(dir.path(), 1).remove(0);
    assert_eq!(
        first_answer_other_than_503(&redeemer, &fresh, Duration::from_secs(5)).await,
        ACCEPTED
    );
    let before = rss_kib(server.pid());

    // Act: 5 rounds of 400 concurrent redemptions, all during one pause.
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let paused = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in tokens.chunks(400) {
        slowest = slowest.max(
            assert_every_paused_redemption_fails_fast(
                &redeemer,
                round,
                Duration::from_millis(1500),
            )
            .await,
        );
    }
    let during = paused.elapsed();
    let after = rss_kib(server.pid());
    assert_ok(redis.command(&["CLIENT", "UNPAUSE"]), "unpause");

    // Assert
    let growth_kib = after.saturating_sub(before);
    eprintln!(
        "VmRSS {before} KiB before, {after} KiB after 2,000 paused redemptions in {during:?} \
         (growth {growth_kib} KiB, slowest answer {slowest:?})"
    );
    assert!(
        during < Duration::from_millis(20_000),
        "the rounds outlasted the pause ({during:?}); the measurement is not of a paused Redis"
    );
    assert!(
        growth_kib < 20 * 1024,
        "the server grew by {growth_kib} KiB while Redis was paused"
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown while a redemption waits on Redis (the real binary)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_a_redemption_waiting_on_redis_finish_with_503_then_exits_0() {
    // Arrange
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (dir, api_key) = init_keys();
    let token = mint_offline(dir.path(), 1).remove(0);
    let mut server = serve_on(dir.path(), &redis, &[]);
    let redeemer = Redeemer::of_process(&server, &api_key);
    let address = server.address.trim_start_matches("http://").to_owned();
    assert_eq!(
        outcome(reqwest::get(server.url("/readyz")).await).await,
        ACCEPTED
    );

    // A pause of writes only, so Redis can still tell us the redemption is waiting on it.
    assert_ok(
        redis.command(&["CLIENT", "PAUSE", LONG_PAUSE_MS, "WRITE"]),
        "pause",
    );
    let in_flight = {
        let redeemer = redeemer.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = redeemer.redeem(&token).await;
            (answer, started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_clients(&redis) < 1 {
        assert!(
            Instant::now() < deadline,
            "the redemption never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Act
    let signalled = Instant::now();
    server.signal("TERM");
    let refused_while_draining = {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if TcpStream::connect(&address).is_err() {
                break Some((signalled.elapsed(), !in_flight.is_finished()));
            }
            if Instant::now() >= deadline || in_flight.is_finished() {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (answer, took) = in_flight.await.unwrap();
    let status = tokio::task::block_in_place(|| server.wait_for_exit(Duration::from_secs(12)))
        .unwrap_or_else(|| panic!("still running 12 s after SIGTERM:\n{}", server.log_text()));
    let exited_after = signalled.elapsed();

    // Assert
    eprintln!(
        "in-flight redemption answered {answer:?} after {took:?}; new connections refused \
         (after, still in flight then): {refused_while_draining:?}; \
         exit {status} {exited_after:?} after SIGTERM"
    );
    assert_eq!(
        answer, UNAVAILABLE,
        "the in-flight request got a whole answer"
    );
    assert!(
        matches!(refused_while_draining, Some((_, true))),
        "new connections were still accepted while the in-flight request drained: \
         {refused_while_draining:?}"
    );
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_text()
    );
    assert!(
        exited_after < Duration::from_secs(10),
        "took {exited_after:?}, past the 10 s shutdown deadline"
    );
    assert!(
        TcpStream::connect(&address).is_err(),
        "a connection was accepted after shutdown"
    );
    tokio::task::block_in_place(|| server.wait_for_log("] stopped", LOG_DEADLINE));
}
