//! Keys directories made by the real `streamtoken keys` commands, and what tests read from one.
#![allow(dead_code)]

use std::path::Path;

use tempfile::TempDir;

use super::process::cli;

/// `st_` followed by exactly 43 base64url characters.
pub fn is_api_key(text: &str) -> bool {
    text.strip_prefix("st_").is_some_and(|body| {
        body.len() == 43
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub fn last_line(output: &str) -> &str {
    output
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output: {output:?}"))
}

/// The API key a `keys` command printed: its last line, which must be exactly a key.
fn printed_key(output: &str) -> String {
    let key = last_line(output);
    assert!(
        is_api_key(key),
        "the last line should be the key:\n{output}"
    );
    key.to_owned()
}

/// `keys init` in a fresh directory; returns it with the dev API key (the last line printed).
pub fn init_keys() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = printed_key(&cli(dir.path(), &["keys", "init"]));
    (dir, key)
}

/// `keys add-api-key --org <org> --scope <scope>…` followed by `extra` flags (`--name`,
/// `--credits`, …); returns the new key.
pub fn add_api_key(dir: &Path, org: &str, scopes: &[&str], extra: &[&str]) -> String {
    printed_key(&add_api_key_stdout(dir, org, scopes, extra))
}

/// What `add_api_key` runs, and all it printed.
pub fn add_api_key_stdout(dir: &Path, org: &str, scopes: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["keys", "add-api-key", "--org", org];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    args.extend_from_slice(extra);
    cli(dir, &args)
}

pub fn active_kid(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("signing").join("active"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The signing secret of `kid`: the key file's content, trimmed.
pub fn signing_secret(dir: &Path, kid: &str) -> Vec<u8> {
    std::fs::read(dir.join("signing").join(format!("{kid}.key")))
        .unwrap()
        .trim_ascii()
        .to_vec()
}
