//! A response read in full (status, headers, text, JSON), failing the test on a 5xx.
#![allow(dead_code)]

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON; `Null` when empty.
    pub body: Value,
}

impl Reply {
    /// Reads `response`, asserting it is not a 5xx and that a body, if any, is JSON.
    pub async fn read(response: Response, description: &str) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a readable body");
        assert!(
            !status.is_server_error(),
            "{description}: got {status}: {text}"
        );
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{description}: the body is not JSON ({e}): {text:?}"))
        };
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// A header that must be a whole number when present.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.header(name).map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number"))
        })
    }

    /// `(x-ratelimit-limit, x-ratelimit-remaining)`.
    pub fn quota(&self) -> (Option<u64>, Option<u64>) {
        (
            self.number("x-ratelimit-limit"),
            self.number("x-ratelimit-remaining"),
        )
    }

    /// "200", or the status and the error code whichever vendor's envelope carried it.
    pub fn outcome(&self) -> String {
        if self.status == StatusCode::OK {
            return "200".into();
        }
        let code = self.body["error"]["code"]
            .as_str()
            .or(self.body["code"].as_str())
            .or(self.body["detail"]["status"].as_str())
            .unwrap_or("-");
        format!("{} {code}", self.status.as_u16())
    }

    /// What every answer that carries a token, or refuses to mint one, must say to caches.
    pub fn assert_no_store(&self, description: &str) {
        assert_eq!(
            self.header("cache-control"),
            Some("no-store"),
            "{description}"
        );
    }

    /// What every successful minting response carries, on any route: JSON,
    /// `Cache-Control: no-store`, and both rate-limit headers, with fewer remaining than the limit.
    pub fn assert_minted(&self, description: &str) {
        assert_eq!(self.status, StatusCode::OK, "{description}: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{description}"
        );
        self.assert_no_store(description);
        let (Some(limit), Some(remaining)) = self.quota() else {
            panic!("{description}: no x-ratelimit headers: {:?}", self.headers);
        };
        assert!(
            remaining < limit,
            "{description}: remaining {remaining} < limit {limit}"
        );
    }
}

/// Sends `request` and reads the reply (see [`Reply::read`]).
pub async fn send(request: RequestBuilder, description: &str) -> Reply {
    let response = request.send().await.expect("request failed");
    Reply::read(response, description).await
}
