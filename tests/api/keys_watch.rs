//! The keyring follows its folder with the real binary: a change made with no SIGHUP (the CLI,
//! a Kubernetes Secret volume's symlink swap) reloads it; a broken change keeps the old keys and
//! says why once; `STREAMTOKEN_KEYS_POLL_MS=0` leaves reloads to SIGHUP.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::forge::kid_of;
use crate::support::keys::{active_kid, add_api_key, init_keys};
use crate::support::process::{cli, ServerProcess};

/// Far beyond the default 1 s poll, so a slow machine does not fail the test; the delay each
/// test observed is printed, to compare with the 2 s promised.
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);
const WATCH_OFF: (&str, &str) = ("STREAMTOKEN_KEYS_POLL_MS", "0");

/// POST /v1/tokens with `api_key`: the status and, on 200, the token.
async fn mint(server: &ServerProcess, api_key: &str) -> (StatusCode, Option<String>) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/tokens"))
        .bearer_auth(api_key)
        .json(&json!({}))
        .send()
        .await
        .expect("request failed");
    let status = response.status();
    let token = if status == StatusCode::OK {
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().map(str::to_owned)
    } else {
        None
    };
    (status, token)
}

async fn redeem_status(server: &ServerProcess, api_key: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(server.url("/v1/tokens/redeem"))
        .bearer_auth(api_key)
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("request failed")
        .status()
}

/// Mints with `api_key` every 20 ms until the answer is `expected`; returns the time since
/// `since` and the last token. Panics at `RELOAD_DEADLINE` with the server's log.
async fn wait_for_mint(
    server: &ServerProcess,
    api_key: &str,
    expected: StatusCode,
    since: Instant,
    what: &str,
) -> (Duration, Option<String>) {
    loop {
        let (status, token) = mint(server, api_key).await;
        if status == expected {
            let delay = since.elapsed();
            eprintln!("{what}: in effect after {delay:?}");
            return (delay, token);
        }
        assert!(
            since.elapsed() < RELOAD_DEADLINE,
            "{what}: minting still answered {status}, not {expected}, after {RELOAD_DEADLINE:?}; \
             log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ServerProcess::wait_for_log` blocks: off the runtime's worker, so requests still run.
fn wait_for_log(server: &ServerProcess, needle: &str, timeout: Duration) -> String {
    tokio::task::block_in_place(|| server.wait_for_log(needle, timeout))
}

fn reload_lines(server: &ServerProcess, needle: &str) -> usize {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn assert_log_holds_no_secret(server: &ServerProcess, api_keys: &[&str]) {
    let log = server.log_text();
    assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
    for key in api_keys {
        assert!(!log.contains(key), "an API key reached the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_added_or_removed_with_the_cli_takes_effect_without_a_signal() {
    // Arrange: the default poll (1 s).
    let (dir, dev_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[]);
    assert_eq!(mint(&server, &dev_key).await.0, StatusCode::OK);

    // Act: a key added (written to a temporary name and renamed into place).
    let added_at = Instant::now();
    let acme_key = add_api_key(dir.path(), "acme", &["mint"], &[]);

    // Assert
    let (delay, _) = wait_for_mint(&server, &acme_key, StatusCode::OK, added_at, "added").await;
    let line = wait_for_log(&server, "keyring reloaded", Duration::from_secs(1));
    assert!(line.contains("2 API key(s)"), "{line}");
    assert_eq!(reload_lines(&server, "keyring reload failed"), 0);

    // And removed: the key stops authenticating, the other one keeps minting.
    let listed = cli(dir.path(), &["keys", "list"]);
    let acme_id = listed
        .lines()
        .find(|l| l.contains("org=acme"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no acme key listed:\n{listed}"))
        .to_owned();
    let removed_at = Instant::now();
    cli(dir.path(), &["keys", "remove-api-key", &acme_id]);
    let (removal, _) = wait_for_mint(
        &server,
        &acme_key,
        StatusCode::UNAUTHORIZED,
        removed_at,
        "removed",
    )
    .await;
    assert_eq!(mint(&server, &dev_key).await.0, StatusCode::OK);
    let line = wait_for_log(&server, "keyring reloaded", Duration::from_secs(1));
    assert!(line.contains("1 API key(s)"), "{line}");
    assert_eq!(
        reload_lines(&server, "keyring reloaded"),
        2,
        "one reload per change, none for the CLI's temporary files:\n{}",
        server.log_text()
    );
    eprintln!("reload delays: added {delay:?}, removed {removal:?} (poll 1 s, promised ≤ 2 s)");
    assert_log_holds_no_secret(&server, &[&dev_key, &acme_key]);
}

/// Copies what the keyring reads from `source` into `mount/<stamp>`, as the kubelet writes a
/// Secret's new version beside the old one.
fn write_version(mount: &Path, stamp: &str, source: &Path) {
    let version = mount.join(stamp);
    std::fs::create_dir_all(version.join("signing")).unwrap();
    std::fs::copy(source.join("api_keys.json"), version.join("api_keys.json")).unwrap();
    for entry in std::fs::read_dir(source.join("signing")).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(
            &from,
            version.join("signing").join(from.file_name().unwrap()),
        )
        .unwrap();
    }
}

/// Points `..data` at `stamp` as the kubelet does: a new symlink renamed over the old one.
fn point_data_at(mount: &Path, stamp: &str) {
    let tmp = mount.join("..data_tmp");
    symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_volume_update_takes_effect_without_a_signal() {
    // Arrange: `..data -> ..2026_11_30_01`, and `signing`, `api_keys.json` symlinks through it.
    let (source, dev_key) = init_keys();
    let mount = tempfile::tempdir().unwrap();
    write_version(mount.path(), "..2026_11_30_01", source.path());
    point_data_at(mount.path(), "..2026_11_30_01");
    for name in ["signing", "api_keys.json"] {
        symlink(format!("..data/{name}"), mount.path().join(name)).unwrap();
    }
    let server = ServerProcess::spawn(mount.path(), &[]);
    let (status, old_token) = mint(&server, &dev_key).await;
    assert_eq!(status, StatusCode::OK);
    let old_token = old_token.unwrap();
    let kid_a = active_kid(source.path());
    assert_eq!(kid_of(&old_token), kid_a);

    // Act: a new version with a new active signing key and a new API key, swapped in, the old
    // version removed, as the kubelet does it.
    let kid_b = cli(source.path(), &["keys", "new-signing-key", "--activate"])
        .trim()
        .to_owned();
    let acme_key = add_api_key(source.path(), "acme", &["mint"], &[]);
    write_version(mount.path(), "..2026_11_30_02", source.path());
    let swapped_at = Instant::now();
    point_data_at(mount.path(), "..2026_11_30_02");
    std::fs::remove_dir_all(mount.path().join("..2026_11_30_01")).unwrap();

    // Assert: the new key mints, new tokens carry kid B, A's token still verifies.
    let (delay, token) =
        wait_for_mint(&server, &acme_key, StatusCode::OK, swapped_at, "swapped").await;
    assert_eq!(kid_of(&token.unwrap()), kid_b);
    let (_, dev_token) = mint(&server, &dev_key).await;
    assert_eq!(kid_of(&dev_token.unwrap()), kid_b);
    assert_eq!(
        redeem_status(&server, &dev_key, &old_token).await,
        StatusCode::OK,
        "a token signed by the previous active key"
    );
    let line = wait_for_log(&server, "keyring reloaded", Duration::from_secs(1));
    assert!(
        line.contains(&kid_b) && line.contains("2 verifying key(s)"),
        "{line}"
    );
    assert_eq!(reload_lines(&server, "keyring reload failed"), 0);
    eprintln!("symlink swap in effect after {delay:?}");
    assert_log_holds_no_secret(&server, &[&dev_key, &acme_key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_change_keeps_the_previous_keys_says_why_once_and_a_fix_reloads() {
    // Arrange: a short poll, so "once" is checked over many polls.
    let (dir, dev_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[("STREAMTOKEN_KEYS_POLL_MS", "100")]);
    assert_eq!(mint(&server, &dev_key).await.0, StatusCode::OK);
    // The fix, prepared in a copy: the same keys plus one for acme.
    let fixed = tempfile::tempdir().unwrap();
    write_version(fixed.path(), "keys", dir.path());
    let acme_key = add_api_key(&fixed.path().join("keys"), "acme", &["mint"], &[]);

    // Act: the API keys file replaced by one that does not parse (renamed into place, so no
    // poll sees it half written).
    let api_keys = dir.path().join("api_keys.json");
    let broken = fixed.path().join("broken.json");
    std::fs::write(&broken, b"{\"api_keys\": [ not json").unwrap();
    std::fs::rename(&broken, &api_keys).unwrap();

    // Assert: the reason, naming the file, logged once; the old keys keep working.
    let line = wait_for_log(&server, "keyring reload failed", RELOAD_DEADLINE);
    assert!(
        line.contains(&api_keys.display().to_string()) && line.contains("parsing"),
        "the error names the file and the problem: {line}"
    );
    let (status, token) = mint(&server, &dev_key).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the previous keys after a broken change"
    );
    assert_eq!(
        redeem_status(&server, &dev_key, &token.unwrap()).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reload_lines(&server, "keyring reload failed"),
        1,
        "logged once per change, not once per poll:\n{}",
        server.log_text()
    );
    assert_eq!(reload_lines(&server, "keyring reloaded"), 0);

    // And the fix: the folder loads again, with the new key.
    let fixed_at = Instant::now();
    std::fs::copy(fixed.path().join("keys").join("api_keys.json"), &api_keys).unwrap();
    wait_for_mint(&server, &acme_key, StatusCode::OK, fixed_at, "fixed").await;
    assert_eq!(mint(&server, &dev_key).await.0, StatusCode::OK);
    assert_log_holds_no_secret(&server, &[&dev_key, &acme_key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_keys_poll_of_zero_a_change_waits_for_sighup() {
    // Arrange
    let (dir, dev_key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[WATCH_OFF]);
    let acme_key = add_api_key(dir.path(), "acme", &["mint"], &[]);

    // Act: more than twice the default poll, with no signal.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // Assert: not picked up until SIGHUP.
    assert_eq!(
        mint(&server, &acme_key).await.0,
        StatusCode::UNAUTHORIZED,
        "the change was picked up with the watch off:\n{}",
        server.log_text()
    );
    assert_eq!(reload_lines(&server, "keyring reloaded"), 0);
    let hung_up_at = Instant::now();
    server.signal("HUP");
    wait_for_mint(&server, &acme_key, StatusCode::OK, hung_up_at, "SIGHUP").await;
    assert_eq!(mint(&server, &dev_key).await.0, StatusCode::OK);
}
