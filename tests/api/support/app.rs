//! `spawn_app()`: the service in-process on port 0 with its own keys directory, plus one helper
//! per endpoint. Each app has its own state (temp keys, memory store or a random Redis prefix).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use streamtoken::http::{server::Application, state::AppState};
use streamtoken::keys::admin::{self, NewApiKey};
use streamtoken::keys::keyring::KeyringHandle;
use streamtoken::settings::{
    CompatFamilies, DemoMode, RateQuota, RedisSettings, RedisTarget, Secret, Settings,
    StreamSettings, TokenSettings,
};
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::tenancy::org::Org;
use streamtoken::token::mint::{MintRequest, Minter};
use tempfile::TempDir;

use super::log_capture;

pub struct TestApp {
    pub address: String,
    /// Scopes mint + redeem, org "dev".
    pub api_key: String,
    pub keys_dir: TempDir,
    pub settings: Settings,
    pub client: reqwest::Client,
    pub state: actix_web::web::Data<AppState>,
    handle: actix_web::dev::ServerHandle,
    /// This app's id in the log-leak detector.
    log_owner: u64,
}

pub struct Options {
    pub redis: Option<RedisSettings>,
    pub leeway_seconds: u64,
    pub rate_limit: RateQuota,
    pub compat: CompatFamilies,
    pub stream: StreamSettings,
    pub demo: DemoMode,
    /// `STREAMTOKEN_ADMIN_BIND`: a second listener that alone serves `/metrics`.
    pub admin_bind: Option<std::net::SocketAddr>,
    /// `STREAMTOKEN_PROXY`: WebSocket paths relayed to upstreams.
    pub proxy: Vec<streamtoken::settings::ProxyRoute>,
    /// `STREAMTOKEN_RECONNECT_GRACE_SECONDS`: the grace of tokens minted without one.
    pub reconnect_grace_seconds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis: None,
            leeway_seconds: TokenSettings::default().leeway_seconds,
            // Generous, so tests that are not about rate limiting never meet it.
            rate_limit: RateQuota::per_minute(1_000_000),
            compat: CompatFamilies::all(),
            stream: StreamSettings::default(),
            demo: DemoMode::On,
            admin_bind: None,
            proxy: Vec::new(),
            reconnect_grace_seconds: 0,
        }
    }
}

pub fn redis_settings(url: &str) -> RedisSettings {
    RedisSettings {
        target: RedisTarget::Standalone(Secret::new(url)),
        key_prefix: format!("test-{}", uuid::Uuid::new_v4()),
        timeout: std::time::Duration::from_millis(500),
        require_persistence: false,
        replica_acks: 0,
        tls_ca_file: None,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with_redis(url: &str) -> TestApp {
    spawn_app_with(Options {
        redis: Some(redis_settings(url)),
        ..Options::default()
    })
    .await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    log_capture::install();
    let keys_dir = tempfile::tempdir().unwrap();
    let api_key = admin::init_dev(keys_dir.path())
        .unwrap()
        .created_api_key
        .unwrap();
    // The real defaults, so a new setting reaches the tests without editing this helper.
    let mut settings = Settings::from_lookup(|_| None).expect("the defaults are valid");
    settings.bind = "127.0.0.1:0".parse().unwrap();
    settings.keys_dir = keys_dir.path().to_owned();
    settings.workers = 2;
    settings.redis = options.redis;
    settings.token.leeway_seconds = options.leeway_seconds;
    settings.token.reconnect_grace_seconds = options.reconnect_grace_seconds;
    settings.rate_limit = options.rate_limit;
    settings.compat = options.compat;
    settings.stream = options.stream;
    settings.demo = options.demo;
    settings.admin_bind = options.admin_bind;
    settings.proxy = options.proxy;
    let client = reqwest::Client::new();
    // The server's threads (HTTP workers, the Redis I/O runtime) are this app's: a secret one of
    // them logs fails this test, not whichever test ends next.
    let (log_owner, (address, handle, state)) = log_capture::owning_threads_of(async {
        let app = Application::build(settings.clone()).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let (handle, state) = (app.server_handle(), app.state());
        tokio::spawn(app.run_until_stopped());
        // Every worker thread exists once the server answers.
        let health = client.get(format!("{address}/healthz")).send().await;
        assert!(
            health.is_ok_and(|r| r.status().is_success()),
            "the app did not start"
        );
        (address, handle, state)
    })
    .await;
    TestApp {
        log_owner,
        address,
        api_key,
        keys_dir,
        settings,
        client,
        state,
        handle,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("request failed")
    }

    /// A POST of `body` verbatim with this app's key, so JSON the `json!` macro would normalise
    /// (`1e3`, `{bad`) reaches the server as written.
    pub fn raw_post(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> RequestBuilder {
        let request = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .body(body);
        match content_type {
            Some(content_type) => request.header("content-type", content_type),
            None => request,
        }
    }

    pub async fn mint(&self, body: Value) -> Response {
        self.post_json("/v1/tokens", Some(&self.api_key), &body)
            .await
    }

    /// Mints and returns the whole answer (token, jti, …), asserting success.
    pub async fn mint_json(&self, body: Value) -> Value {
        let response = self.mint(body).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Mints and returns the token, asserting success.
    pub async fn mint_token(&self, body: Value) -> String {
        self.mint_json(body).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `GET /v1/usage` with the app's key, as JSON.
    pub async fn usage(&self) -> Value {
        self.usage_with(&self.api_key).await
    }

    /// `GET /v1/usage` with `key`, as JSON.
    pub async fn usage_with(&self, key: &str) -> Value {
        self.client
            .get(self.url("/v1/usage"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn redeem(&self, token: &str) -> Response {
        self.post_token("/v1/tokens/redeem", token).await
    }

    pub async fn introspect(&self, token: &str) -> Response {
        self.post_token("/v1/tokens/introspect", token).await
    }

    /// `{"token": token}` to `path` with this app's key.
    async fn post_token(&self, path: &str, token: &str) -> Response {
        self.post_json(path, Some(&self.api_key), &json!({ "token": token }))
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed")
    }

    /// Creates another API key in this app's keys dir and reloads the keyring.
    pub fn add_api_key(&self, org: &str, scopes: &[Scope]) -> String {
        self.add_api_key_with(new_api_key(org, scopes, None, None))
    }

    /// What SIGTERM does in the real binary: sessions close with 1001, requests drain.
    pub async fn stop_gracefully(&self) {
        streamtoken::http::server::stop_gracefully(&self.state, &self.handle).await;
    }

    /// The WebSocket URL of the reference stream endpoint.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!(
            "{}{path_and_query}",
            self.address.replacen("http://", "ws://", 1)
        )
    }

    /// Creates an API key with every field chosen by the caller (rate override, credits) in this
    /// app's keys dir and reloads the keyring.
    pub fn add_api_key_with(&self, new: NewApiKey) -> String {
        let key = admin::add_api_key(self.keys_dir.path(), &new).unwrap();
        self.reload_keys();
        key
    }

    /// What SIGHUP does in the real binary.
    pub fn reload_keys(&self) {
        self.state.keyring.reload().unwrap();
    }

    pub fn keyring(&self) -> Arc<KeyringHandle> {
        self.state.keyring.clone()
    }

    /// Mints directly with the app's keyring as if the clock read `now` (e.g. in the past).
    pub fn mint_at(&self, request: MintRequest, now: i64) -> String {
        Minter::new(self.keyring(), self.settings.token.clone())
            .mint_at(&Org::dev(), request, now)
            .unwrap()
            .token
    }

    pub fn keys_path(&self) -> &Path {
        self.keys_dir.path()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        let leaks = log_capture::take_leaks_of(self.log_owner);
        if !std::thread::panicking() {
            assert!(
                leaks.is_empty(),
                "secrets reached the log:\n{}",
                leaks.join("\n")
            );
        }
    }
}

/// A key of `org` with `scopes`, and optionally its own rate and a credit balance.
pub fn new_api_key(
    org: &str,
    scopes: &[Scope],
    rate_per_minute: Option<u32>,
    credits: Option<u64>,
) -> NewApiKey {
    NewApiKey {
        name: "test".into(),
        rate_per_minute,
        credits,
        ..NewApiKey::new(Org::parse(org).unwrap(), scopes.to_vec())
    }
}

/// Reads a JSON error envelope `{"error":{"code","message"}}` and returns the code.
pub async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.expect("a JSON body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the canonical envelope: {body}"))
        .to_owned()
}

/// `GET /v1/sessions` on the server at `base` with `key`: the listing, which must answer 200.
pub async fn listed_sessions(client: &reqwest::Client, base: &str, key: &str) -> Value {
    let response = client
        .get(format!("{base}/v1/sessions"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request failed");
    assert_eq!(response.status(), 200, "GET /v1/sessions");
    response.json().await.expect("a JSON body")
}
