//! Signing-key rotation with the real binary: `keys new-signing-key --activate`, SIGHUP, retiring
//! the old key, and a broken keys directory that must not replace the running keyring. Traffic
//! keeps flowing during every reload. The folder watch is off here, so every reload is SIGHUP's
//! (`keys_watch` covers reloads without a signal).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::forge::kid_of;
use crate::support::keys::{active_kid, init_keys};
use crate::support::process::{cli, ServerProcess};

const RELOAD_DEADLINE: Duration = Duration::from_secs(5);
const SIGHUP_ONLY: (&str, &str) = ("STREAMTOKEN_KEYS_POLL_MS", "0");

/// HTTP access to one server process with the dev API key.
#[derive(Clone)]
struct Remote {
    client: reqwest::Client,
    base: String,
    api_key: String,
}

impl Remote {
    fn new(server: &ServerProcess, api_key: &str) -> Self {
        Remote {
            client: reqwest::Client::new(),
            base: server.address.clone(),
            api_key: api_key.to_owned(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .expect("request failed")
    }

    async fn mint(&self) -> Response {
        self.post("/v1/tokens", json!({})).await
    }

    async fn mint_token(&self) -> String {
        let response = self.mint().await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn redeem(&self, token: &str) -> Response {
        self.post("/v1/tokens/redeem", json!({ "token": token }))
            .await
    }
}

/// Reads the `{"error":{"code","message"}}` envelope.
async fn error_of(response: Response) -> (String, String) {
    let body: Value = response.json().await.expect("a JSON body");
    let field = |name: &str| {
        body["error"][name]
            .as_str()
            .unwrap_or_else(|| panic!("not the canonical envelope: {body}"))
            .to_owned()
    };
    (field("code"), field("message"))
}

/// Sends SIGHUP and waits for the log line announcing the outcome; returns that line.
fn hang_up(server: &ServerProcess, outcome: &str) -> String {
    server.signal("HUP");
    tokio::task::block_in_place(|| server.wait_for_log(outcome, RELOAD_DEADLINE))
}

fn assert_log_holds_no_secret(server: &ServerProcess, api_key: &str) {
    let log = server.log_text();
    assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
    assert!(!log.contains(api_key), "the API key reached the log");
}

/// Clients that mint a fresh token and redeem it, over and over, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Round trips completed so far, per client.
    round_trips: watch::Receiver<Vec<usize>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, u16)>>>,
}

impl Traffic {
    fn start(remote: &Remote, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, round_trips) = watch::channel(vec![0usize; clients]);
        let counter = Arc::new(counter);
        let tasks = (0..clients)
            .map(|client| {
                let (remote, stop, counter) = (remote.clone(), stop.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let minted = remote.mint().await;
                        let mint_status = minted.status().as_u16();
                        let redeem_status = if minted.status() == StatusCode::OK {
                            let body: Value = minted.json().await.unwrap();
                            let token = body["token"].as_str().unwrap();
                            remote.redeem(token).await.status().as_u16()
                        } else {
                            0
                        };
                        statuses.push((mint_status, redeem_status));
                        counter.send_modify(|counts| counts[client] += 1);
                    }
                    statuses
                })
            })
            .collect();
        Traffic {
            stop,
            round_trips,
            tasks,
        }
    }

    /// Waits until every client has completed `more` round trips beyond those already done.
    /// With `more >= 2`, each client has finished the round trip it was in the middle of and one
    /// begun after this call.
    async fn wait_for_more(&mut self, more: usize) {
        let targets: Vec<usize> = self.round_trips.borrow().iter().map(|n| n + more).collect();
        tokio::time::timeout(
            Duration::from_secs(5),
            self.round_trips
                .wait_for(|counts| counts.iter().zip(&targets).all(|(n, t)| n >= t)),
        )
        .await
        .unwrap_or_else(|_| panic!("the clients did not each make {more} more round trips in 5 s"))
        .unwrap();
    }

    /// Stops the clients and returns every (mint status, redeem status) they saw.
    async fn stop(self) -> Vec<(u16, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("traffic task panicked"));
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_key_activated_with_sighup_signs_new_tokens_while_old_ones_redeem_until_the_old_key_is_removed(
) {
    let (dir, api_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[SIGHUP_ONLY]);
    let remote = Remote::new(&server, &api_key);
    let mut traffic = Traffic::start(&remote, 4);

    let a1 = remote.mint_token().await;
    let a2 = remote.mint_token().await;
    let kid_a = kid_of(&a1);
    assert_eq!(kid_a, active_kid(dir.path()));
    assert_eq!(kid_of(&a2), kid_a);

    // Rotate: B becomes the signing key; A still verifies.
    let kid_b = cli(dir.path(), &["keys", "new-signing-key", "--activate"])
        .trim()
        .to_owned();
    assert_ne!(kid_b, kid_a);
    traffic.wait_for_more(3).await;
    let line = hang_up(&server, "keyring reloaded");
    assert!(line.contains(&kid_b), "{line}");
    // Every client finishes the round trip begun before the swap and one begun after it.
    traffic.wait_for_more(2).await;

    let b1 = remote.mint_token().await;
    assert_eq!(kid_of(&b1), kid_b, "a token minted after the reload");
    let response = remote.redeem(&a1).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a token signed by the old key A"
    );

    // Retire A: tokens it signed no longer verify, B's still do.
    std::fs::remove_file(dir.path().join("signing").join(format!("{kid_a}.key"))).unwrap();
    let line = hang_up(&server, "keyring reloaded");
    assert!(line.contains("1 verifying key(s)"), "{line}");
    traffic.wait_for_more(2).await;

    let response = remote.redeem(&a2).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_token");
    assert!(message.contains("unknown_kid"), "{message}");

    assert_eq!(remote.redeem(&b1).await.status(), StatusCode::OK);
    let b2 = remote.mint_token().await;
    assert_eq!(kid_of(&b2), kid_b);
    assert_eq!(remote.redeem(&b2).await.status(), StatusCode::OK);

    let seen = traffic.stop().await;
    let failed: Vec<_> = seen.iter().filter(|s| **s != (200, 200)).collect();
    assert!(
        failed.is_empty(),
        "(mint, redeem) statuses other than (200, 200) during the reloads: {failed:?} of {}",
        seen.len()
    );
    assert!(seen.len() >= 20, "only {} round trips", seen.len());
    eprintln!(
        "{} mint+redeem round trips across two reloads, none failed",
        seen.len()
    );

    assert_log_holds_no_secret(&server, &api_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_of_a_broken_keys_directory_keeps_the_previous_keys_and_the_process_alive() {
    let (dir, api_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[SIGHUP_ONLY]);
    let remote = Remote::new(&server, &api_key);
    let kid = active_kid(dir.path());
    let before = remote.mint_token().await;
    let mut traffic = Traffic::start(&remote, 2);
    traffic.wait_for_more(3).await;

    std::fs::write(dir.path().join("signing").join("short.key"), b"0123456789").unwrap();
    let line = hang_up(&server, "keyring reload failed");
    assert!(
        line.contains("short.key"),
        "the error names the file: {line}"
    );
    traffic.wait_for_more(3).await;

    let alive = Command::new("kill")
        .args(["-0", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(alive.success(), "the server exited after a failed reload");
    let after = remote.mint_token().await;
    assert_eq!(kid_of(&after), kid, "still signing with the previous key");
    assert_eq!(remote.redeem(&before).await.status(), StatusCode::OK);
    assert_eq!(remote.redeem(&after).await.status(), StatusCode::OK);

    let seen = traffic.stop().await;
    let failed: Vec<_> = seen.iter().filter(|s| **s != (200, 200)).collect();
    assert!(failed.is_empty(), "failed round trips: {failed:?}");

    assert_log_holds_no_secret(&server, &api_key);
}
