//! The `streamtoken` binary: the `keys`, `mint` and `verify` commands, start-up refusals, and
//! what a real server process writes to its log.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::forge::kid_of;
use crate::support::keys::{
    active_kid, add_api_key, add_api_key_stdout, init_keys, is_api_key, last_line, signing_secret,
};
use crate::support::log_capture::looks_secret;
use crate::support::process::{cli, ServerProcess, BIN};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every file in the keys directory with its contents, to show a command changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in [dir.to_owned(), dir.join("signing")] {
        for entry in std::fs::read_dir(&sub).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                files.push((
                    entry.path().display().to_string(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

/// The binary with a clean streamtoken environment apart from the keys directory.
fn streamtoken(keys_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("STREAMTOKEN_KEYS_DIR", keys_dir);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("STREAMTOKEN_") && text != "STREAMTOKEN_KEYS_DIR" {
            command.env_remove(&name);
        }
    }
    command
}

/// Runs `command` to completion, killing it if it is still running after 30 s (a `serve` that
/// wrongly started would otherwise never return).
async fn run(command: Command) -> Output {
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn streamtoken");
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("streamtoken should have exited on its own")
        .unwrap()
}

/// Asserts the command failed, and returns its stderr.
async fn run_failing(command: Command, description: &str) -> String {
    let output = run(command).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "{description}: should fail, exited {:?}; stdout {stdout:?}",
        output.status
    );
    assert!(
        !stdout.contains("listening"),
        "{description}: the server must not start; stdout {stdout:?}"
    );
    stderr
}

// ---------------------------------------------------------------------------------------------
// keys
// ---------------------------------------------------------------------------------------------

#[test]
fn keys_init_prints_a_new_api_key_once_and_a_second_run_creates_nothing() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();

    // Act
    let first = cli(dir.path(), &["keys", "init"]);
    let after_first = snapshot(dir.path());
    let second = cli(dir.path(), &["keys", "init"]);

    // Assert
    let key = last_line(&first);
    assert!(is_api_key(key), "last line should be the key: {first}");
    assert!(first.contains("created signing key"), "{first}");
    assert!(!second.contains(key), "{second}");
    assert!(
        !looks_secret(&second),
        "the second run prints no key: {second}"
    );
    assert!(!second.contains("created"), "{second}");
    assert_eq!(
        snapshot(dir.path()),
        after_first,
        "the second run changes no file"
    );
}

#[test]
fn keys_add_api_key_prints_the_key_alone_as_the_last_line() {
    // Arrange
    let (dir, _) = init_keys();

    // Act
    let out = add_api_key_stdout(dir.path(), "acme", &["mint", "redeem"], &["--name", "ci"]);

    // Assert
    let key = last_line(&out);
    assert!(is_api_key(key), "the last line is exactly the key: {out:?}");
    let keyring = streamtoken::keys::keyring::Keyring::load(dir.path()).unwrap();
    let record = keyring.api_keys().find(key).expect("the printed key works");
    assert_eq!(record.org.as_str(), "acme");
    assert_eq!(record.name, "ci");
    assert!(record.allows(streamtoken::tenancy::api_keys::Scope::Mint));
    assert!(record.allows(streamtoken::tenancy::api_keys::Scope::Redeem));
}

#[test]
fn keys_list_shows_the_org_and_key_id_but_never_a_secret() {
    // Arrange
    let (dir, dev_key) = init_keys();
    let key = add_api_key(dir.path(), "acme", &["mint", "redeem"], &["--name", "ci"]);
    let id = format!("ak_{}", &hex::encode(Sha256::digest(key.as_bytes()))[..12]);
    let kid = active_kid(dir.path());
    let secret = String::from_utf8(signing_secret(dir.path(), &kid)).unwrap();

    // Act
    let listing = cli(dir.path(), &["keys", "list"]);

    // Assert
    assert!(listing.contains("org=acme"), "{listing}");
    assert!(listing.contains("org=dev"), "{listing}");
    assert!(listing.contains(&id), "{listing} should contain {id}");
    assert!(listing.contains("scopes=mint,redeem"), "{listing}");
    assert!(listing.contains("name=\"ci\""), "{listing}");
    for (secret, what) in [
        (key.as_str(), "the API key"),
        (&key[3..], "the API key's body"),
        (dev_key.as_str(), "the dev API key"),
        (&dev_key[3..], "the dev API key's body"),
        (secret.as_str(), "the signing secret"),
    ] {
        assert!(!listing.contains(secret), "keys list shows {what}");
    }
    assert!(!looks_secret(&listing), "{listing}");
}

#[test]
fn the_api_keys_file_holds_no_plaintext_key() {
    // Arrange
    let (dir, dev_key) = init_keys();
    let key = add_api_key(dir.path(), "acme", &[], &["--name", "ci"]);

    // Act
    let stored = std::fs::read_to_string(dir.path().join("api_keys.json")).unwrap();

    // Assert
    for key in [&key, &dev_key] {
        assert!(!stored.contains(key.as_str()), "{stored}");
        assert!(!stored.contains(&key[3..]), "{stored}");
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        assert!(
            stored.contains(&digest),
            "the file stores the key's SHA-256"
        );
    }
}

#[test]
fn keys_new_signing_key_with_activate_becomes_the_active_key() {
    // Arrange
    let (dir, _) = init_keys();
    let old = active_kid(dir.path());

    // Act
    let out = cli(dir.path(), &["keys", "new-signing-key", "--activate"]);
    let kid = last_line(&out).trim().to_owned();
    let listing = cli(dir.path(), &["keys", "list"]);
    let token = last_line(&cli(dir.path(), &["mint", "--org", "acme"])).to_owned();

    // Assert
    assert_ne!(kid, old);
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    assert!(
        lines.contains(&format!("{kid} (active)").as_str()),
        "{listing}"
    );
    assert!(
        lines.contains(&old.as_str()),
        "the old key still verifies, unmarked: {listing}"
    );
    assert_eq!(listing.matches("(active)").count(), 1, "{listing}");
    assert_eq!(kid_of(&token), kid, "new tokens are signed with it");
}

#[test]
fn keys_new_signing_key_without_activate_leaves_the_active_key_alone() {
    // Arrange
    let (dir, _) = init_keys();
    let old = active_kid(dir.path());

    // Act
    let kid = last_line(&cli(dir.path(), &["keys", "new-signing-key"])).to_owned();
    let listing = cli(dir.path(), &["keys", "list"]);

    // Assert
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    assert!(lines.contains(&kid.as_str()), "{listing}");
    assert!(
        lines.contains(&format!("{old} (active)").as_str()),
        "{listing}"
    );
}

// ---------------------------------------------------------------------------------------------
// mint and verify
// ---------------------------------------------------------------------------------------------

#[test]
fn mint_prints_count_distinct_tokens_that_verify_without_being_consumed() {
    // Arrange
    let (dir, _) = init_keys();

    // Act
    let out = cli(
        dir.path(),
        &["mint", "--org", "acme", "--count", "5", "--ttl", "30"],
    );

    // Assert
    let tokens: Vec<&str> = out.lines().collect();
    assert_eq!(tokens.len(), 5, "{out}");
    assert!(tokens.iter().all(|t| t.starts_with("eyJ")), "{out}");
    assert_eq!(tokens.iter().collect::<BTreeSet<_>>().len(), 5, "distinct");

    let first = cli(dir.path(), &["verify", tokens[0]]);
    let claims: Value = serde_json::from_str(&first).expect("verify prints JSON claims");
    assert_eq!(claims["org"], "acme");
    assert_eq!(claims["iss"], "streamtoken");
    assert_eq!(claims["aud"], "streamtoken-gateway");
    assert_eq!(claims["token_type"], "realtime");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        30
    );
    let again = cli(dir.path(), &["verify", tokens[0]]);
    assert_eq!(again, first, "verifying does not consume the token");
}

#[tokio::test]
async fn verify_garbage_exits_non_zero_and_says_malformed() {
    // Arrange
    let (dir, _) = init_keys();

    // Act
    let stderr = run_failing(
        streamtoken(dir.path(), &["verify", "garbage"]),
        "verify garbage",
    )
    .await;

    // Assert
    assert!(stderr.contains("malformed"), "{stderr}");
}

#[tokio::test]
async fn mint_refuses_out_of_range_values_and_an_invalid_org() {
    // Arrange
    let (dir, _) = init_keys();
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["mint", "--org", "acme", "--ttl", "0"],
            "expires_in_seconds",
            "ttl 0",
        ),
        (
            &["mint", "--org", "acme", "--ttl", "3601"],
            "expires_in_seconds",
            "ttl 3601",
        ),
        (
            &["mint", "--org", "acme", "--uses", "101"],
            "uses",
            "uses 101",
        ),
        (&["mint", "--org", "bad org"], "org", "org with a space"),
    ];

    for (args, fragment, description) in cases {
        // Act
        let output = run(streamtoken(dir.path(), args)).await;

        // Assert
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{description}");
        assert!(output.stdout.is_empty(), "{description}: no token printed");
        assert!(stderr.contains(fragment), "{description}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// serve refuses a bad configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_with_an_invalid_variable_exits_non_zero_naming_it() {
    // Arrange
    let (dir, _) = init_keys();
    let cases = [
        (
            "STREAMTOKEN_LEEWAY_SECONDS",
            "abc",
            "leeway that is not a number",
        ),
        ("STREAMTOKEN_LEEWAY_SECONDS", "301", "leeway above 300"),
        (
            "STREAMTOKEN_BIND",
            "nonsense",
            "bind that is not an address",
        ),
        ("STREAMTOKEN_WORKERS", "0", "zero workers"),
        ("STREAMTOKEN_ISSUER", "has space", "issuer with a space"),
    ];

    for (variable, value, description) in cases {
        let mut command = streamtoken(dir.path(), &["serve"]);
        if variable != "STREAMTOKEN_BIND" {
            command.env("STREAMTOKEN_BIND", "127.0.0.1:0");
        }
        command.env(variable, value);

        // Act
        let stderr = run_failing(command, description).await;

        // Assert
        assert!(
            stderr.contains(variable),
            "{description}: stderr should name {variable}: {stderr}"
        );
    }
}

#[tokio::test]
async fn serve_refuses_a_signing_key_shorter_than_32_bytes() {
    // Arrange: 31 bytes plus a newline; surrounding whitespace does not count.
    let dir = tempfile::tempdir().unwrap();
    let signing = dir.path().join("signing");
    std::fs::create_dir_all(&signing).unwrap();
    std::fs::write(signing.join("short.key"), format!("{}\n", "s".repeat(31))).unwrap();
    std::fs::write(signing.join("active"), "short\n").unwrap();
    let mut command = streamtoken(dir.path(), &["serve"]);
    command.env("STREAMTOKEN_BIND", "127.0.0.1:0");

    // Act
    let stderr = run_failing(command, "31-byte signing key").await;

    // Assert
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(
        stderr.contains("short"),
        "the message names the key: {stderr}"
    );
}

#[test]
fn a_signing_key_of_exactly_32_bytes_loads() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let signing = dir.path().join("signing");
    std::fs::create_dir_all(&signing).unwrap();
    // 32 bytes, and at least 16 distinct ones (fewer are refused as a placeholder).
    std::fs::write(
        signing.join("edge.key"),
        "0123456789abcdefghijklmnopqrstuv\n",
    )
    .unwrap();
    std::fs::write(signing.join("active"), "edge\n").unwrap();

    // Act
    let listing = cli(dir.path(), &["keys", "list"]);

    // Assert
    assert!(listing.contains("edge (active)"), "{listing}");
}

// ---------------------------------------------------------------------------------------------
// The server's log
// ---------------------------------------------------------------------------------------------

/// Waits until every needle has appeared on stderr, in whatever order the workers wrote them.
fn wait_for_all(server: &ServerProcess, needles: &[&str]) {
    for needle in needles {
        if !server.log_text().contains(needle) {
            server.wait_for_log(needle, Duration::from_secs(10));
        }
    }
}

#[tokio::test]
async fn with_debug_logging_the_server_log_holds_no_token_and_no_api_key() {
    // Arrange
    let (dir, key) = init_keys();
    let server = ServerProcess::spawn(dir.path(), &[("RUST_LOG", "debug")]);
    let client = reqwest::Client::new();

    // Act
    let minted = client
        .post(server.url("/v1/tokens"))
        .bearer_auth(&key)
        .json(&json!({"ctx": {"sessionId": "s-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), StatusCode::OK);
    let token = minted.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let redeem = || {
        client
            .post(server.url("/v1/tokens/redeem"))
            .header("xi-api-key", &key)
            .json(&json!({ "token": token }))
            .send()
    };
    assert_eq!(redeem().await.unwrap().status(), StatusCode::OK);
    assert_eq!(redeem().await.unwrap().status(), StatusCode::CONFLICT);
    let stray = client
        .get(server.url(&format!("/anything?token={token}")))
        .header("authorization", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), StatusCode::NOT_FOUND);
    wait_for_all(
        &server,
        &[
            "POST /v1/tokens 200",
            "POST /v1/tokens/redeem 200",
            "POST /v1/tokens/redeem 409",
            "GET /anything?token=[redacted] 404",
        ],
    );

    // Assert
    let log = server.log_text();
    assert!(log.contains("token=[redacted]"), "{log}");
    assert!(!log.contains(&key), "the API key reached the log:\n{log}");
    assert!(
        !log.contains(&key[3..]),
        "the API key reached the log:\n{log}"
    );
    assert!(!log.contains(&token), "the token reached the log:\n{log}");
    for segment in token.split('.') {
        assert!(
            !log.contains(segment),
            "part of the token reached the log:\n{log}"
        );
    }
    assert!(!log.contains("eyJ"), "a JWT reached the log:\n{log}");
    assert!(!looks_secret(&log), "{log}");
}

/// Makes the active signing key file readable by everyone, as a careless copy would, and
/// returns its path.
fn world_readable_key(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("signing").join(format!("{}.key", active_kid(dir)));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    file
}

#[test]
fn a_server_warns_about_a_signing_key_file_others_can_read_naming_the_file() {
    // Arrange
    let (dir, _) = init_keys();
    let file = world_readable_key(dir.path());

    // Act
    let server = ServerProcess::spawn(dir.path(), &[]);
    let line = server.wait_for_log("readable by others", Duration::from_secs(10));

    // Assert
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&file.display().to_string()), "{line}");
}

#[test]
fn with_strict_key_files_a_server_refuses_to_start_on_a_readable_key_file() {
    // Arrange
    let (dir, _) = init_keys();
    let file = world_readable_key(dir.path());

    // Act
    let output = Command::new(BIN)
        .arg("serve")
        .env("STREAMTOKEN_KEYS_DIR", dir.path())
        .env("STREAMTOKEN_BIND", "127.0.0.1:0")
        .env("STREAMTOKEN_STRICT_KEY_FILES", "true")
        .env_remove("STREAMTOKEN_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}
