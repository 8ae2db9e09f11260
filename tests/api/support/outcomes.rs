//! Many concurrent answers as short strings and counts, to assert a race's whole distribution.
#![allow(dead_code)]

use std::collections::BTreeMap;

use reqwest::{Response, StatusCode};
use serde_json::Value;

pub const ACCEPTED: &str = "200";

/// "200", or the status followed by the error code of the JSON envelope.
pub async fn outcome(response: Result<Response, reqwest::Error>) -> String {
    let response = match response {
        Ok(response) => response,
        Err(e) => return format!("request error: {e}"),
    };
    let status = response.status();
    if status == StatusCode::OK {
        return ACCEPTED.into();
    }
    let text = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("non-envelope body {text:?}"));
    format!("{} {code}", status.as_u16())
}

/// How many times each outcome occurs.
pub fn tally<T: Into<String>>(outcomes: impl IntoIterator<Item = T>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.into()).or_insert(0) += 1;
    }
    counts
}
