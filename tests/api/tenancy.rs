//! Tenants kept apart: a key acts only on its own org's tokens and usage, unless it is an
//! operator key (`--any-org`); a gateway surface admits only the token types it is configured
//! for. Every refusal consumes nothing and reveals no claim.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::{test as actix_test, web, App, HttpResponse};
use futures::StreamExt;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use streamtoken::gateway::{Policy, Redeemed, Redeemer};
use streamtoken::keys::admin::NewApiKey;
use streamtoken::settings::{StreamSettings, TokenSettings};
use streamtoken::store::{MemoryStore, SharedStore};
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::tenancy::org::Org;

use crate::support::app::{spawn_app, spawn_app_with, Options, TestApp};
use crate::support::process::cli;
use crate::support::ws::stream_verdict;

/// Two tenants, each with a backend (mint) key and a gateway (redeem) key, and an operator key.
struct Tenants {
    app: TestApp,
    acme_mint: String,
    acme_gateway: String,
    globex_gateway: String,
    operator: String,
}

async fn tenants() -> Tenants {
    let app = spawn_app().await;
    let acme_mint = app.add_api_key("acme", &[Scope::Mint]);
    let acme_gateway = app.add_api_key("acme", &[Scope::Redeem]);
    let globex_gateway = app.add_api_key("globex", &[Scope::Redeem]);
    let operator = app.add_api_key_with(NewApiKey {
        org: Org::parse("ops").unwrap(),
        name: "operator".into(),
        scopes: vec![Scope::Redeem],
        rate_per_minute: None,
        credits: None,
        any_org: true,
    });
    Tenants {
        app,
        acme_mint,
        acme_gateway,
        globex_gateway,
        operator,
    }
}

impl Tenants {
    /// A token of acme's carrying a secret in its ctx.
    async fn acme_token(&self) -> String {
        let body = json!({"ctx": {"secret": "acme-only"}});
        let response = self
            .app
            .post_json("/v1/tokens", Some(&self.acme_mint), &body)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn call(&self, path: &str, key: &str, token: &str) -> Response {
        self.app
            .post_json(path, Some(key), &json!({ "token": token }))
            .await
    }
}

/// The status and the whole body, which must not mention the token's claims.
async fn refusal(response: Response) -> (StatusCode, String) {
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn another_orgs_gateway_key_can_neither_redeem_nor_introspect_and_learns_nothing() {
    // Arrange
    let t = tenants().await;
    let token = t.acme_token().await;

    // Act
    let introspected = refusal(
        t.call("/v1/tokens/introspect", &t.globex_gateway, &token)
            .await,
    )
    .await;
    let redeemed = refusal(t.call("/v1/tokens/redeem", &t.globex_gateway, &token).await).await;
    let by_owner = t.call("/v1/tokens/redeem", &t.acme_gateway, &token).await;

    // Assert
    for (status, body) in [&introspected, &redeemed] {
        assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "wrong_org", "{body}");
        let text = body.to_string();
        for claim in ["acme", "secret", "realtime", "jti"] {
            assert!(!text.contains(claim), "{claim} revealed in {text}");
        }
    }
    assert_eq!(
        by_owner.status(),
        StatusCode::OK,
        "the refusals consumed nothing"
    );
}

#[tokio::test]
async fn an_operator_key_redeems_and_introspects_every_orgs_tokens() {
    // Arrange
    let t = tenants().await;
    let token = t.acme_token().await;

    // Act
    let introspected = t.call("/v1/tokens/introspect", &t.operator, &token).await;
    let introspected: Value = introspected.json().await.unwrap();
    let redeemed = t.call("/v1/tokens/redeem", &t.operator, &token).await;

    // Assert
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["claims"]["org"], "acme");
    assert_eq!(redeemed.status(), StatusCode::OK);
    let redeemed: Value = redeemed.json().await.unwrap();
    assert_eq!(redeemed["org"], "acme");
    assert_eq!(redeemed["ctx"]["secret"], "acme-only");
}

#[tokio::test]
async fn usage_is_an_orgs_own_unless_an_operator_asks_for_another() {
    // Arrange
    let t = tenants().await;
    t.acme_token().await;
    let usage = |key: &str, query: &str| {
        t.app
            .client
            .get(t.app.url(&format!("/v1/usage{query}")))
            .bearer_auth(key.to_owned())
            .send()
    };

    // Act
    let own = usage(&t.acme_gateway, "").await.unwrap();
    let other = usage(&t.globex_gateway, "?org=acme").await.unwrap();
    let operator = usage(&t.operator, "?org=acme").await.unwrap();
    let repeated = usage(&t.operator, "?org=acme&org=globex").await.unwrap();

    // Assert
    let own: Value = own.json().await.unwrap();
    assert_eq!(
        (own["org"].clone(), own["minted"].clone()),
        (json!("acme"), json!(1))
    );
    let (status, body) = refusal(other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("wrong_org") && !body.contains("minted"),
        "{body}"
    );
    let operator: Value = operator.json().await.unwrap();
    assert_eq!(
        (operator["org"].clone(), operator["minted"].clone()),
        (json!("acme"), json!(1))
    );
    assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn refusals_for_another_org_are_counted_under_their_own_reason() {
    // Arrange
    let t = tenants().await;
    let token = t.acme_token().await;

    // Act
    t.call("/v1/tokens/redeem", &t.globex_gateway, &token).await;
    t.call("/v1/tokens/introspect", &t.globex_gateway, &token)
        .await;
    let metrics = t.app.get("/metrics").await.text().await.unwrap();

    // Assert
    assert!(
        metrics.contains(r#"streamtoken_redemptions_rejected_total{reason="wrong_org"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_stream_refuses_a_token_type_it_does_not_admit_and_consumes_nothing() {
    // Arrange: the default admits `realtime` only.
    let app = spawn_app().await;
    let chat = app.mint_token(json!({"token_type": "chat"})).await;

    // Act
    let (frame, close) = stream_verdict(&app, &chat).await;
    let afterwards = app.redeem(&chat).await;

    // Assert
    assert_eq!(frame["code"], "wrong_token_type", "{frame}");
    assert_eq!(close, Some(4001));
    assert_eq!(
        afterwards.status(),
        StatusCode::OK,
        "the refusal consumed nothing"
    );
}

#[tokio::test]
async fn the_stream_admits_the_token_types_it_is_configured_for() {
    // Arrange
    let app = spawn_app_with(Options {
        stream: StreamSettings {
            token_types: BTreeSet::from(["chat".to_owned()]),
            ..StreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let chat = app.mint_token(json!({"token_type": "chat"})).await;
    let realtime = app.mint_token(json!({})).await;

    // Act
    let url = app.ws_url(&format!("/v1/stream?token={chat}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let begins = ws.next().await.unwrap().unwrap();
    let (refused, close) = stream_verdict(&app, &realtime).await;

    // Assert
    let begins: Value = serde_json::from_str(begins.to_text().unwrap()).unwrap();
    assert_eq!(begins["type"], "session_begins", "{begins}");
    assert_eq!(
        (refused["code"].clone(), close),
        (json!("wrong_token_type"), Some(4001))
    );
}

async fn greet(grant: Redeemed) -> HttpResponse {
    HttpResponse::Ok().body(grant.redemption.claims.org)
}

#[actix_web::test]
async fn an_embedded_gateway_admits_only_the_orgs_its_policy_names() {
    // Arrange: a gateway of acme's own, on the app's keyring.
    let t = tenants().await;
    let store: Arc<dyn SharedStore> = Arc::new(MemoryStore::new());
    let redeemer = Redeemer::new(t.app.keyring(), &TokenSettings::default(), store)
        .with_policy(Policy::any().only_orgs(["acme"]));
    let gateway = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(redeemer))
            .route("/stream", web::get().to(greet)),
    )
    .await;
    let dev_token = t.app.mint_token(json!({})).await;
    let acme_token = t.acme_token().await;
    let request = |token: &str| {
        actix_test::TestRequest::get()
            .uri(&format!("/stream?token={token}"))
            .to_request()
    };

    // Act
    let refused = actix_test::call_service(&gateway, request(&dev_token)).await;
    let admitted = actix_test::call_service(&gateway, request(&acme_token)).await;

    // Assert
    assert_eq!(refused.status().as_u16(), 403);
    let body: Value = actix_test::read_body_json(refused).await;
    assert_eq!(body["error"]["code"], "wrong_org");
    assert_eq!(admitted.status().as_u16(), 200);
}

#[test]
fn the_cli_creates_an_operator_key_and_lists_it_as_any_org() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), &["keys", "init"]);

    // Act
    cli(
        dir.path(),
        &[
            "keys",
            "add-api-key",
            "--org",
            "ops",
            "--scope",
            "redeem",
            "--any-org",
        ],
    );
    let listing = cli(dir.path(), &["keys", "list"]);

    // Assert
    let ops = listing
        .lines()
        .find(|line| line.contains("org=ops"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(ops.contains("any-org"), "{ops}");
    let dev = listing
        .lines()
        .find(|line| line.contains("org=dev"))
        .unwrap();
    assert!(!dev.contains("any-org"), "{dev}");
}
