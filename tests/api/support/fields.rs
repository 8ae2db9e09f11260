//! Small helpers for "exactly these fields" assertions, shared by the test modules.
#![allow(dead_code)]

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The claims every token carries (`ctx` and `uses` only when set).
pub const BASE_CLAIMS: [&str; 8] = [
    "iss",
    "aud",
    "org",
    "token_type",
    "jti",
    "iat",
    "exp",
    "max_session_duration_seconds",
];

/// The fields of a `POST /v1/tokens` success.
pub const MINT_RESPONSE_FIELDS: [&str; 8] = [
    "token",
    "token_type",
    "jti",
    "expires_in_seconds",
    "expires_at",
    "max_session_duration_seconds",
    "uses",
    "reconnect_grace_seconds",
];

/// The fields of a `POST /v1/tokens/redeem` success.
pub const REDEEM_RESPONSE_FIELDS: [&str; 8] = [
    "org",
    "token_type",
    "jti",
    "ctx",
    "max_session_duration_seconds",
    "session_expires_at",
    "uses_remaining",
    "resumed",
];

pub fn now() -> i64 {
    Utc::now().timestamp()
}

/// The key set of a JSON object.
pub fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .keys()
        .cloned()
        .collect()
}

pub fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

pub fn parse_rfc3339(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}
