//! The canonical HTTP API (`/v1/tokens`, `/v1/tokens/redeem`, `/v1/tokens/introspect`, health
//! and the OpenAPI document) as a client sees it, against the in-process server with the memory
//! replay store.

use std::collections::BTreeSet;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use streamtoken::tenancy::api_keys::Scope;
use streamtoken::token::mint::MintRequest;
use uuid::Uuid;

use crate::support::app::{error_code, spawn_app, TestApp};
use crate::support::fields::{
    keys_of, now, parse_rfc3339, set, BASE_CLAIMS, MINT_RESPONSE_FIELDS, REDEEM_RESPONSE_FIELDS,
};
use crate::support::forge::{
    decode_segment, decode_token, encode_segment, sign, valid_claims, Forge,
};
use crate::support::keys::active_kid;
use crate::support::routes::{INTROSPECT, MINT, REDEEM};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The claims of a token the app minted, asserting its header: HS256 under the active kid.
fn minted_claims(app: &TestApp, token: &str) -> Value {
    let (header, claims) = decode_token(token);
    assert_eq!(
        header,
        json!({"alg": "HS256", "typ": "JWT", "kid": active_kid(app.keys_path())})
    );
    claims
}

/// `TestApp::raw_post`, sent.
async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let request = app.raw_post(path, content_type, body);
    request.send().await.expect("request failed")
}

/// Asserts a refusal with `status` and `code` in the canonical envelope (never a 5xx); returns
/// its message.
async fn assert_refused(
    response: Response,
    status: StatusCode,
    code: &str,
    description: &str,
) -> String {
    assert!(
        !response.status().is_server_error(),
        "{description}: got {}",
        response.status()
    );
    let (got_status, got_code, message) = envelope(response).await;
    assert_eq!(got_status, status, "{description}: {message}");
    assert_eq!(got_code, code, "{description}: {message}");
    message
}

/// `assert_refused`, with a message that contains `fragment`.
async fn assert_refused_saying(
    response: Response,
    (status, code): (StatusCode, &str),
    fragment: &str,
    description: &str,
) {
    let message = assert_refused(response, status, code, description).await;
    assert!(
        message.contains(fragment),
        "{description}: {message:?} should contain {fragment:?}"
    );
}

/// The defaults a mint fills in: `(token_type, expires_in_seconds, max_session_duration_seconds,
/// uses)`.
const MINT_DEFAULTS: (&str, u64, u64, u64) = ("realtime", 60, 3600, 1);

/// Asserts a mint response has exactly the documented fields, with `(token_type,
/// expires_in_seconds, max_session_duration_seconds, uses)` as `expected`.
fn assert_mint_body(body: &Value, expected: (&str, u64, u64, u64), description: &str) {
    let (token_type, expires_in_seconds, session_seconds, uses) = expected;
    assert_eq!(
        keys_of(body),
        set(&MINT_RESPONSE_FIELDS),
        "{description}: {body}"
    );
    assert_eq!(body["token_type"], token_type, "{description}");
    assert_eq!(
        body["expires_in_seconds"], expires_in_seconds,
        "{description}"
    );
    assert_eq!(
        body["max_session_duration_seconds"], session_seconds,
        "{description}"
    );
    assert_eq!(body["uses"], uses, "{description}");
}

/// Asserts a 200 and reads the JSON body.
async fn ok_json(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a JSON body")
}

/// Reads the canonical error envelope, asserting it has exactly `code` and `message`.
async fn envelope(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(keys_of(&body), set(&["error"]), "envelope: {body}");
    assert_eq!(
        keys_of(&body["error"]),
        set(&["code", "message"]),
        "envelope: {body}"
    );
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Mint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn minting_with_an_empty_object_returns_200_and_a_token_with_every_default() {
    // Arrange
    let app = spawn_app().await;
    let before = now();

    // Act
    let response = app.mint(json!({})).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let body: Value = response.json().await.unwrap();
    assert_mint_body(&body, MINT_DEFAULTS, "an empty object");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("eyJ"), "{token}");

    let claims = minted_claims(&app, token);
    assert_eq!(keys_of(&claims), set(&BASE_CLAIMS), "{claims}");
    assert_eq!(claims["iss"], "streamtoken");
    assert_eq!(claims["aud"], "streamtoken-gateway");
    assert_eq!(claims["org"], "dev");
    assert_eq!(claims["token_type"], "realtime");
    assert_eq!(claims["max_session_duration_seconds"], 3600);

    let jti = Uuid::parse_str(claims["jti"].as_str().unwrap()).expect("jti is a UUID");
    assert_eq!(jti.get_version_num(), 4, "jti is a v4 UUID");
    assert_eq!(body["jti"], jti.to_string());

    let iat = claims["iat"].as_i64().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    assert_eq!(exp - iat, 60);
    assert!(iat >= before && iat <= now(), "iat {iat} is now");
    let expires_at = parse_rfc3339(body["expires_at"].as_str().unwrap());
    assert_eq!(expires_at.timestamp(), exp);
}

#[tokio::test]
async fn minting_with_explicit_values_puts_them_in_the_response_and_the_claims() {
    // Arrange
    let app = spawn_app().await;
    let ctx = json!({"chatbotId": "bot-1", "sessionId": "s-123"});

    // Act
    let response = app
        .mint(json!({
            "token_type": "tts_websocket",
            "expires_in_seconds": 120,
            "max_session_duration_seconds": 600,
            "ctx": ctx,
            "uses": 3,
        }))
        .await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_mint_body(&body, ("tts_websocket", 120, 600, 3), "explicit values");

    let claims = minted_claims(&app, body["token"].as_str().unwrap());
    let mut expected_keys = set(&BASE_CLAIMS);
    expected_keys.extend(set(&["ctx", "uses"]));
    assert_eq!(keys_of(&claims), expected_keys, "{claims}");
    assert_eq!(claims["ctx"], ctx);
    assert_eq!(claims["uses"], 3);
    assert_eq!(claims["token_type"], "tts_websocket");
    assert_eq!(claims["max_session_duration_seconds"], 600);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );
    assert_eq!(
        parse_rfc3339(body["expires_at"].as_str().unwrap()).timestamp(),
        claims["exp"].as_i64().unwrap()
    );
    assert_eq!(body["jti"], claims["jti"]);
}

#[tokio::test]
async fn a_single_use_token_carries_no_uses_claim_even_when_uses_1_is_explicit() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let token = app.mint_token(json!({"uses": 1})).await;

    // Assert
    let (_, claims) = decode_token(&token);
    assert_eq!(keys_of(&claims), set(&BASE_CLAIMS), "{claims}");
}

#[tokio::test]
async fn each_mint_returns_a_distinct_jti() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let mut jtis = BTreeSet::new();
    for _ in 0..5 {
        let token = app.mint_token(json!({})).await;
        jtis.insert(decode_token(&token).1["jti"].as_str().unwrap().to_owned());
    }

    // Assert
    assert_eq!(jtis.len(), 5);
}

#[tokio::test]
async fn minting_with_an_empty_body_returns_200_with_defaults() {
    // Arrange
    let app = spawn_app().await;

    for (content_type, body, description) in [
        (None, "", "no body, no content type"),
        (Some("application/json"), "", "empty JSON body"),
        (Some("application/json"), "  \n", "whitespace-only body"),
    ] {
        // Act
        let response = post_raw(&app, MINT, content_type, body).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{description}");
        let body: Value = response.json().await.unwrap();
        assert_mint_body(&body, MINT_DEFAULTS, description);
    }
}

#[tokio::test]
async fn minting_with_an_invalid_body_returns_400_invalid_request() {
    // Arrange
    let app = spawn_app().await;
    let ctx_17: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let ctx_17 = json!({ "ctx": ctx_17 }).to_string();
    let long_key = json!({"ctx": {"k".repeat(65): "v"}}).to_string();
    let long_value = json!({"ctx": {"k": "v".repeat(257)}}).to_string();
    let long_type = json!({"token_type": "a".repeat(65)}).to_string();
    let expires_rule = "expires_in_seconds must be an integer between 1 and 3600";
    let session_rule = "max_session_duration_seconds must be an integer between 1 and 86400";
    let uses_rule = "uses must be an integer between 1 and 100";
    let type_rule = "token_type must be 1-64 characters";
    #[rustfmt::skip]
    let cases: Vec<(String, StatusCode, &str, &str, &str)> = vec![
        // (body, status, code, message fragment, description)
        (r#"{"expires_in_seconds":0}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds 0"),
        (r#"{"expires_in_seconds":-1}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds -1"),
        (r#"{"expires_in_seconds":1.5}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds 1.5"),
        (r#"{"expires_in_seconds":3601}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds 3601"),
        (r#"{"expires_in_seconds":"60"}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", "invalid JSON body", "expires_in_seconds as a string"),
        (r#"{"expires_in_seconds":1e4}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds 1e4 (an integer, out of range)"),
        (r#"{"expires_in_seconds":60.5}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds 60.5"),
        (r#"{"expires_in_seconds":99999999999999999999}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", expires_rule, "expires_in_seconds beyond u64"),
        (r#"{"max_session_duration_seconds":0}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", session_rule, "max_session_duration_seconds 0"),
        (r#"{"max_session_duration_seconds":86401}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", session_rule, "max_session_duration_seconds 86401"),
        (r#"{"uses":0}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", uses_rule, "uses 0"),
        (r#"{"uses":101}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", uses_rule, "uses 101"),
        (r#"{"token_type":"Bad-Type"}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", type_rule, "token_type with capitals and a dash"),
        (r#"{"token_type":""}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", type_rule, "empty token_type"),
        (long_type, StatusCode::BAD_REQUEST, "invalid_request", type_rule, "65-character token_type"),
        (ctx_17, StatusCode::BAD_REQUEST, "invalid_request", "at most 16 entries", "ctx with 17 entries"),
        (long_key, StatusCode::BAD_REQUEST, "invalid_request", "ctx keys must be 1-64 characters", "ctx key of 65 characters"),
        (long_value, StatusCode::BAD_REQUEST, "invalid_request", "longer than 256 characters", "ctx value of 257 characters"),
        (r#"{"ctx":{"n":1}}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", "invalid JSON body", "ctx value that is not a string"),
        (r#"{"expires_in":60}"#.into(), StatusCode::BAD_REQUEST, "invalid_request", "unknown field", "unknown field expires_in"),
        ("{bad".into(), StatusCode::BAD_REQUEST, "invalid_request", "invalid JSON body", "malformed JSON"),
        ("[]".into(), StatusCode::BAD_REQUEST, "invalid_request", "must be a JSON object", "a JSON array"),
        ("[null,null,null,null,null]".into(), StatusCode::BAD_REQUEST, "invalid_request", "must be a JSON object", "a JSON array shaped like the body"),
        ("null".into(), StatusCode::BAD_REQUEST, "invalid_request", "must be a JSON object", "JSON null"),
    ];

    for (body, expected_status, expected_code, fragment, description) in cases {
        // Act
        let response = post_raw(&app, MINT, Some("application/json"), body).await;

        // Assert
        let refusal = (expected_status, expected_code);
        assert_refused_saying(response, refusal, fragment, description).await;
    }
}

#[tokio::test]
async fn a_token_pasted_into_the_wrong_field_is_not_echoed_back() {
    // Arrange: serde quotes offending values in its messages; a token must not come back
    // (nor reach the debug log, which the harness checks when the app is dropped).
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;

    // Act
    let response = app.mint(json!({ "ctx": token })).await;

    // Assert
    let (status, code, message) = envelope(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(!message.contains("eyJ"), "{message}");
    assert!(message.contains("[redacted]"), "{message}");
}

#[tokio::test]
async fn redeeming_with_a_json_array_body_is_refused_and_does_not_consume() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;

    // Act
    let response = post_raw(
        &app,
        "/v1/tokens/redeem",
        Some("application/json"),
        json!([token]).to_string(),
    )
    .await;

    // Assert
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_blank_xi_api_key_header_does_not_hide_a_valid_authorization_header() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .client
        .post(app.url(MINT))
        .header("xi-api-key", "")
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn minting_at_each_boundary_value_succeeds() {
    // Arrange
    let app = spawn_app().await;
    let ctx_16: serde_json::Map<String, Value> =
        (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
    #[rustfmt::skip]
    let cases = vec![
        (json!({"expires_in_seconds": 1}), "expires_in_seconds 1"),
        (json!({"expires_in_seconds": 1e3}), "expires_in_seconds 1e3, an integral JSON number"),
        (json!({"expires_in_seconds": 60.0}), "expires_in_seconds 60.0, an integral JSON number"),
        (json!({"expires_in_seconds": 3600}), "expires_in_seconds 3600"),
        (json!({"max_session_duration_seconds": 1}), "max_session_duration_seconds 1"),
        (json!({"max_session_duration_seconds": 86400}), "max_session_duration_seconds 86400"),
        (json!({"uses": 100}), "uses 100"),
        (json!({"token_type": "a".repeat(64)}), "64-character token_type"),
        (json!({"token_type": "tts_websocket2"}), "token_type with digit and underscore"),
        (json!({"ctx": ctx_16}), "ctx with 16 entries"),
        (json!({"ctx": {"k".repeat(64): "v".repeat(256)}}), "ctx with a 64-byte key and a 256-byte value"),
        (json!({"ctx": {}}), "empty ctx"),
    ];

    for (body, description) in cases {
        // Act
        let response = app.mint(body.clone()).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{description}");
        let minted: Value = response.json().await.unwrap();
        let (_, claims) = decode_token(minted["token"].as_str().unwrap());
        for (field, value) in body.as_object().unwrap() {
            match field.as_str() {
                "expires_in_seconds" => {
                    // Compared as numbers: `1e3` in the request is `1000` in the response.
                    assert_eq!(minted[field].as_f64(), value.as_f64(), "{description}");
                    let window = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
                    assert_eq!(Some(window as f64), value.as_f64(), "{description}");
                }
                "ctx" if value.as_object().unwrap().is_empty() => {
                    assert!(claims.get("ctx").is_none(), "{description}: {claims}");
                }
                "ctx" => assert_eq!(&claims["ctx"], value, "{description}"),
                _ => {
                    assert_eq!(&minted[field], value, "{description}");
                    assert_eq!(&claims[field], value, "{description}");
                }
            }
        }
    }
}

#[tokio::test]
async fn minting_with_a_body_over_16_kib_returns_413_payload_too_large() {
    // Arrange
    let app = spawn_app().await;
    let body = json!({"token_type": "a".repeat(16 * 1024)}).to_string();

    // Act
    let response = post_raw(&app, MINT, Some("application/json"), body).await;

    // Assert
    let refusal = (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_refused_saying(response, refusal, "16384", "a 16 KiB + 1 body").await;
}

#[tokio::test]
async fn minting_with_a_body_of_exactly_16_kib_is_read() {
    // Arrange: valid JSON padded with whitespace to the limit, so it is parsed rather than refused.
    let app = spawn_app().await;
    let mut body = r#"{"uses":2}"#.to_owned();
    body.push_str(&" ".repeat(16 * 1024 - body.len()));

    // Act
    let response = post_raw(&app, MINT, Some("application/json"), body).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let minted: Value = response.json().await.unwrap();
    assert_eq!(minted["uses"], 2);
}

#[tokio::test]
async fn minting_with_a_non_json_content_type_returns_415_unsupported_media_type() {
    // Arrange
    let app = spawn_app().await;

    for content_type in ["text/plain", "application/xml", "multipart/form-data"] {
        // Act
        let response = post_raw(&app, MINT, Some(content_type), "{}").await;

        // Assert
        let refused = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        assert_refused(response, refused, "unsupported_media_type", content_type).await;
    }
}

#[tokio::test]
async fn minting_accepts_json_with_a_charset_and_plus_json_types() {
    // Arrange
    let app = spawn_app().await;

    for content_type in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "application/x-www-form-urlencoded",
    ] {
        // Act
        let response = post_raw(&app, MINT, Some(content_type), r#"{"uses":4}"#).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{content_type}");
        let minted: Value = response.json().await.unwrap();
        assert_eq!(minted["uses"], 4, "{content_type}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redeem
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redeeming_a_fresh_token_returns_200_with_its_claims_and_session_deadline() {
    // Arrange
    let app = spawn_app().await;
    let ctx = json!({"sessionId": "s-1"});
    let minted: Value = app
        .mint(json!({"max_session_duration_seconds": 600, "ctx": ctx, "token_type": "stt"}))
        .await
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();

    // Act
    let before = now();
    let response = app.redeem(token).await;
    let after = now();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys_of(&body), set(&REDEEM_RESPONSE_FIELDS), "{body}");
    assert_eq!(body["org"], "dev");
    assert_eq!(body["token_type"], "stt");
    assert_eq!(body["jti"], minted["jti"]);
    assert_eq!(body["ctx"], ctx);
    assert_eq!(body["max_session_duration_seconds"], 600);
    assert_eq!(body["uses_remaining"], 0);
    let session_end = parse_rfc3339(body["session_expires_at"].as_str().unwrap()).timestamp();
    assert!(
        (before + 600..=after + 600).contains(&session_end),
        "session_expires_at {session_end} should be redemption time + 600 ({before}..{after})"
    );
}

#[tokio::test]
async fn redeeming_a_token_without_ctx_returns_an_empty_ctx_object() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;

    // Act
    let body: Value = app.redeem(&token).await.json().await.unwrap();

    // Assert
    assert_eq!(keys_of(&body), set(&REDEEM_RESPONSE_FIELDS), "{body}");
    assert_eq!(body["ctx"], json!({}));
    assert_eq!(body["max_session_duration_seconds"], 3600);
}

#[tokio::test]
async fn redeeming_twice_returns_409_token_already_used() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);

    // Act
    let response = app.redeem(&token).await;

    // Assert
    let refusal = (StatusCode::CONFLICT, "token_already_used");
    assert_refused_saying(response, refusal, "(already_used)", "a second redemption").await;
}

#[tokio::test]
async fn redeeming_an_expired_token_returns_401_token_expired() {
    // Arrange: issued an hour ago with the default 60 s window, long past exp + 5 s leeway.
    let app = spawn_app().await;
    let token = app.mint_at(MintRequest::default(), now() - 3600);

    // Act
    let response = app.redeem(&token).await;

    // Assert
    let refusal = (StatusCode::UNAUTHORIZED, "token_expired");
    assert_refused_saying(response, refusal, "(expired)", "an hour past exp").await;
}

#[tokio::test]
async fn a_token_just_past_exp_but_within_the_5_second_leeway_still_redeems() {
    // Arrange: exp is 2 s ago; the default leeway is 5 s.
    let app = spawn_app().await;
    let token = app.mint_at(MintRequest::default(), now() - 62);

    // Act
    let response = app.redeem(&token).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_with_three_uses_redeems_exactly_three_times() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({"uses": 3})).await;

    // Act + Assert
    for expected_remaining in [2, 1, 0] {
        let response = app.redeem(&token).await;
        assert_eq!(response.status(), StatusCode::OK, "{expected_remaining}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["uses_remaining"], expected_remaining);
    }
    let response = app.redeem(&token).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "token_already_used");
}

#[tokio::test]
async fn redeeming_with_an_invalid_body_returns_400_invalid_request() {
    // Arrange
    let app = spawn_app().await;
    let cases = [
        ("{}", "token is required", "no token field"),
        ("", "token is required", "empty body"),
        (r#"{"token":null}"#, "token is required", "null token"),
        (r#"{"token":42}"#, "invalid JSON body", "a number as token"),
        (
            r#"{"token":"x","extra":1}"#,
            "unknown field",
            "an unknown field",
        ),
        ("{bad", "invalid JSON body", "malformed JSON"),
    ];

    for path in [REDEEM, INTROSPECT] {
        for (body, fragment, description) in cases {
            // Act
            let response = post_raw(&app, path, Some("application/json"), body).await;

            // Assert
            let description = format!("{path} {description}");
            let refusal = (StatusCode::BAD_REQUEST, "invalid_request");
            assert_refused_saying(response, refusal, fragment, &description).await;
        }
    }
}

#[tokio::test]
async fn a_token_signed_by_another_implementation_with_the_real_key_redeems() {
    // Arrange: the control for the self-signed cases below — our signing helper is correct, so
    // when those fail it is because of the one claim or header they change.
    let app = spawn_app().await;
    let forge = Forge::read(app.keys_path());
    let token = forge.jsonwebtoken(&valid_claims(), Algorithm::HS256);

    // Act
    let response = app.redeem(&token).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason_and_never_a_5xx() {
    // Arrange
    let app = spawn_app().await;
    let forge = Forge::read(app.keys_path());
    let kid = forge.kid.clone();
    let good = app.mint_token(json!({})).await;
    let parts: Vec<&str> = good.split('.').collect();
    let (header_b64, payload_b64, signature_b64) = (parts[0], parts[1], parts[2]);
    let with_header = |header: Value, signature: &str| {
        format!("{}.{payload_b64}.{signature}", encode_segment(&header))
    };
    // Signed with the real key through jsonwebtoken, one claim changed.
    let resigned = |name: &str, value: Value| {
        forge.jsonwebtoken(&forge.claims_with(name, value), Algorithm::HS256)
    };

    let mut tampered_claims = decode_segment(payload_b64);
    tampered_claims["org"] = json!("someone-else");
    let tampered_payload = format!(
        "{header_b64}.{}.{signature_b64}",
        encode_segment(&tampered_claims)
    );
    // Change the first signature character: every bit of it is significant.
    let first = if signature_b64.starts_with('A') {
        "B"
    } else {
        "A"
    };
    let tampered_signature = format!("{header_b64}.{payload_b64}.{first}{}", &signature_b64[1..]);
    let other_secret = b"another-secret-that-is-long-enough-0123456789";

    #[rustfmt::skip]
    let cases: Vec<(String, &str, &str)> = vec![
        // (token, reason, description): each a 401 invalid_token naming the reason
        (tampered_payload, "bad_signature", "payload changed, signature kept"),
        (tampered_signature, "bad_signature", "signature changed"),
        (with_header(json!({"alg": "none", "typ": "JWT", "kid": kid}), ""), "algorithm_not_allowed", "alg none with an empty signature"),
        (with_header(json!({"alg": "HS512", "typ": "JWT", "kid": kid}), signature_b64), "algorithm_not_allowed", "HS512 header swapped in"),
        (forge.jsonwebtoken(&forge.claims(), Algorithm::HS512), "algorithm_not_allowed", "HS512 signed with the real key"),
        (with_header(json!({"alg": "RS256", "typ": "JWT", "kid": kid}), signature_b64), "algorithm_not_allowed", "RS256 header swapped in"),
        (with_header(json!({"alg": "HS256", "typ": "JWT"}), signature_b64), "unknown_kid", "HS256 header without kid"),
        (sign(&valid_claims(), Algorithm::HS256, "nope", other_secret), "unknown_kid", "signed with another key, kid nope"),
        (resigned("aud", json!("another-gateway")), "wrong_audience", "aud of another gateway"),
        (resigned("iss", json!("someone-else")), "wrong_issuer", "iss of another issuer"),
        (resigned("exp", Value::Null), "malformed", "no exp claim"),
        (resigned("jti", json!("not-a-uuid")), "malformed", "jti that is not a UUID"),
        ("not.a.token".into(), "malformed", "garbage with three segments"),
        ("garbage".into(), "malformed", "garbage without dots"),
        (good.replace('.', ""), "malformed", "a token without its dots"),
        (format!("{good}.extra"), "malformed", "four segments"),
        (String::new(), "malformed", "empty string"),
    ];

    for (token, reason, description) in cases {
        // Act
        let response = app.redeem(&token).await;

        // Assert
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{description}"
        );
        let unauthorized = StatusCode::UNAUTHORIZED;
        let message = assert_refused(response, unauthorized, "invalid_token", description).await;
        assert!(
            message.ends_with(&format!("({reason})")),
            "{description}: message {message:?} should name {reason}"
        );

        // Introspection gives the same verdict, as a reason rather than an error.
        let response = app.introspect(&token).await;
        assert_eq!(response.status(), StatusCode::OK, "{description}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"active": false, "reason": reason}),
            "{description}"
        );
    }

    // None of the refusals consumed the genuine token.
    assert_eq!(app.redeem(&good).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_over_8192_bytes_is_an_invalid_request_for_redeem_and_introspect() {
    // Arrange
    let app = spawn_app().await;
    let good = app.mint_token(json!({})).await;
    let over_limit = format!("{good}{}", "A".repeat(8193 - good.len()));

    for path in ["/v1/tokens/redeem", "/v1/tokens/introspect"] {
        // Act
        let response = app
            .post_json(path, Some(&app.api_key), &json!({ "token": over_limit }))
            .await;

        // Assert
        let (status, code, message) = envelope(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{path}"
        );
        assert_eq!(message, "token is longer than 8192 bytes", "{path}");
    }
    assert_eq!(app.redeem(&good).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_with_the_largest_ctx_allowed_still_redeems() {
    // Arrange: 12 entries of a 64-character key and a 256-character value is just under the
    // 4 KiB ctx bound; the token is far longer than a typical one.
    let app = spawn_app().await;
    let ctx: serde_json::Map<String, Value> = (0..12)
        .map(|i| (format!("{i:0>64}"), json!("v".repeat(256))))
        .collect();
    let token = app.mint_token(json!({ "ctx": ctx })).await;
    assert!(token.len() > 4096, "{}", token.len());

    // Act
    let response = app.redeem(&token).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["ctx"], Value::Object(ctx));
}

#[tokio::test]
async fn a_100_kb_token_is_refused_by_the_body_limit_before_verification() {
    // Arrange
    let app = spawn_app().await;
    let token = "A".repeat(100 * 1024);

    for path in [REDEEM, INTROSPECT] {
        // Act
        let response = app
            .post_json(path, Some(&app.api_key), &json!({ "token": token }))
            .await;

        // Assert
        let refused = StatusCode::PAYLOAD_TOO_LARGE;
        assert_refused(response, refused, "payload_too_large", path).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Introspect
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn introspecting_an_unused_token_shows_it_active_without_consuming_it() {
    // Arrange
    let app = spawn_app().await;
    let token = app
        .mint_token(json!({"ctx": {"chatbotId": "bot-1"}, "expires_in_seconds": 90}))
        .await;
    let (_, claims) = decode_token(&token);

    // Act
    let first = app.introspect(&token).await;
    let second = app.introspect(&token).await;

    // Assert
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["cache-control"], "no-store");
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        body,
        json!({"active": true, "claims": claims, "uses_remaining": 1})
    );
    assert_eq!(second.json::<Value>().await.unwrap(), body);
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn introspecting_a_redeemed_token_shows_it_inactive_as_already_used() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({})).await;
    let (_, claims) = decode_token(&token);
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);

    // Act
    let response = app.introspect(&token).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"active": false, "reason": "already_used", "claims": claims, "uses_remaining": 0})
    );
}

#[tokio::test]
async fn introspecting_a_multi_use_token_counts_down_its_remaining_uses() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({"uses": 2})).await;

    // Act + Assert
    for expected in [2, 1] {
        let body: Value = app.introspect(&token).await.json().await.unwrap();
        assert_eq!(body["active"], true);
        assert_eq!(body["uses_remaining"], expected);
        assert_eq!(body["claims"]["uses"], 2);
        assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
    }
    let body: Value = app.introspect(&token).await.json().await.unwrap();
    assert_eq!(body["active"], false);
    assert_eq!(body["reason"], "already_used");
    assert_eq!(body["uses_remaining"], 0);
}

#[tokio::test]
async fn introspecting_garbage_or_an_expired_token_shows_it_inactive_with_the_reason() {
    // Arrange
    let app = spawn_app().await;
    let expired = app.mint_at(MintRequest::default(), now() - 3600);

    for (token, reason) in [("garbage", "malformed"), (expired.as_str(), "expired")] {
        // Act
        let response = app.introspect(token).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{reason}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"active": false, "reason": reason}));
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication and scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_token_route_refuses_callers_without_a_valid_key_or_scope() {
    // Arrange
    let app = spawn_app().await;
    let mint_only = app.add_api_key("acme", &[Scope::Mint]);
    let redeem_only = app.add_api_key("acme", &[Scope::Redeem]);
    let unknown = format!("st_{}", "A".repeat(43));
    let token = app.mint_token(json!({})).await;
    let token_body = json!({ "token": token });

    #[rustfmt::skip]
    let cases = [
        // (route, header, status, code, description)
        (MINT, None, StatusCode::UNAUTHORIZED, "missing_api_key", "mint without a key"),
        (REDEEM, None, StatusCode::UNAUTHORIZED, "missing_api_key", "redeem without a key"),
        (INTROSPECT, None, StatusCode::UNAUTHORIZED, "missing_api_key", "introspect without a key"),
        (MINT, Some(("authorization", "Bearer".into())), StatusCode::UNAUTHORIZED, "missing_api_key", "mint with a bare Bearer scheme"),
        (MINT, Some(("authorization", format!("Bearer {unknown}"))), StatusCode::UNAUTHORIZED, "invalid_api_key", "mint with an unknown key"),
        (REDEEM, Some(("authorization", format!("Bearer {unknown}"))), StatusCode::UNAUTHORIZED, "invalid_api_key", "redeem with an unknown key"),
        (INTROSPECT, Some(("xi-api-key", unknown.clone())), StatusCode::UNAUTHORIZED, "invalid_api_key", "introspect with an unknown key"),
        (MINT, Some(("authorization", format!("Basic {unknown}"))), StatusCode::UNAUTHORIZED, "invalid_api_key", "mint with another auth scheme"),
        (REDEEM, Some(("authorization", format!("Bearer {mint_only}"))), StatusCode::FORBIDDEN, "forbidden", "redeem with a mint-only key"),
        (INTROSPECT, Some(("authorization", format!("Bearer {mint_only}"))), StatusCode::FORBIDDEN, "forbidden", "introspect with a mint-only key"),
        (MINT, Some(("authorization", format!("Bearer {redeem_only}"))), StatusCode::FORBIDDEN, "forbidden", "mint with a redeem-only key"),
    ];

    for (route, header, expected_status, expected_code, description) in cases {
        // Act
        let mut request = app.client.post(app.url(route)).json(&token_body);
        if let Some((name, value)) = &header {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();

        // Assert
        let message = assert_refused(response, expected_status, expected_code, description).await;
        if expected_code == "forbidden" {
            let scope = if route == MINT { "mint" } else { "redeem" };
            assert!(message.contains(scope), "{description}: {message}");
        }
    }

    // No refused redemption consumed the token.
    assert_eq!(app.redeem(&token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_of_the_three_api_key_header_forms_can_mint() {
    // Arrange
    let app = spawn_app().await;
    let key = app.api_key.clone();

    for (name, value) in [
        ("authorization", format!("Bearer {key}")),
        ("authorization", format!("bearer {key}")),
        ("authorization", key.clone()),
        ("xi-api-key", key.clone()),
    ] {
        // Act
        let response = app
            .client
            .post(app.url(MINT))
            .header(name, &value)
            .json(&json!({}))
            .send()
            .await
            .unwrap();

        // Assert
        let form = value.replace(&key, "<key>");
        assert_eq!(response.status(), StatusCode::OK, "{name}: {form}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["token"].as_str().unwrap().starts_with("eyJ"),
            "{name}: {form}"
        );
    }
}

#[tokio::test]
async fn a_redeem_scoped_key_can_redeem_and_a_token_carries_the_minting_keys_org() {
    // Arrange
    let app = spawn_app().await;
    let minter = app.add_api_key("acme", &[Scope::Mint]);
    // The org's own gateway key: another org's key is refused (see tenancy.rs).
    let gateway = app.add_api_key("acme", &[Scope::Redeem]);
    let minted: Value = app
        .post_json(MINT, Some(&minter), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();

    // Act
    let introspected = app
        .post_json(INTROSPECT, Some(&gateway), &json!({ "token": token }))
        .await;
    let redeemed = app
        .post_json(REDEEM, Some(&gateway), &json!({ "token": token }))
        .await;

    // Assert
    assert_eq!(introspected.status(), StatusCode::OK);
    assert_eq!(
        introspected.json::<Value>().await.unwrap()["claims"]["org"],
        "acme"
    );
    assert_eq!(redeemed.status(), StatusCode::OK);
    assert_eq!(redeemed.json::<Value>().await.unwrap()["org"], "acme");
}

// ---------------------------------------------------------------------------------------------
// Routing, health and the OpenAPI document
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_error_envelope() {
    // Arrange
    let app = spawn_app().await;
    #[rustfmt::skip]
    let cases = [
        (reqwest::Method::GET, "/nope", StatusCode::NOT_FOUND, "not_found", "unknown path"),
        (reqwest::Method::POST, "/v1/tokens/nope", StatusCode::NOT_FOUND, "not_found", "unknown sub-path"),
        (reqwest::Method::GET, "/v1/token", StatusCode::NOT_FOUND, "not_found", "near-miss path"),
        (reqwest::Method::GET, MINT, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET mint"),
        (reqwest::Method::PUT, MINT, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "PUT mint"),
        (reqwest::Method::GET, REDEEM, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET redeem"),
        (reqwest::Method::DELETE, INTROSPECT, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "DELETE introspect"),
        (reqwest::Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST healthz"),
    ];

    for (method, path, expected_status, expected_code, description) in cases {
        // Act
        let response = app
            .client
            .request(method, app.url(path))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();

        // Assert
        assert_refused(response, expected_status, expected_code, description).await;
    }
}

#[tokio::test]
async fn healthz_returns_200_ok() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/healthz").await;

    // Assert
    assert_eq!(ok_json(response).await, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_returns_200_and_names_the_memory_replay_store() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/readyz").await;

    // Assert
    assert_eq!(
        ok_json(response).await,
        json!({"status": "ready", "replay_store": "memory"})
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_byte_identical_to_the_repository_copy() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/openapi.yaml").await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let served = response.bytes().await.unwrap();
    assert_eq!(&served[..], include_str!("../../openapi.yaml").as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_redemptions_of_one_token_succeed_exactly_once() {
    // Arrange
    let app = spawn_app().await;
    let token = app.mint_token(json!({"expires_in_seconds": 3600})).await;
    let client = app.client.clone();
    let url = app.url(REDEEM);
    let body = Arc::new(json!({ "token": token }));
    let start = Arc::new(tokio::sync::Barrier::new(1000));

    // Act
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url, key, body, start) = (
                client.clone(),
                url.clone(),
                app.api_key.clone(),
                body.clone(),
                start.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&*body)
                    .send()
                    .await
                    .expect("request failed");
                let status = response.status();
                let code = if status == StatusCode::OK {
                    None
                } else {
                    Some(error_code(response).await)
                };
                (status, code)
            })
        })
        .collect();
    let mut ok = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::CONFLICT, Some(code)) if code == "token_already_used" => conflicts += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    // Assert
    assert_eq!(ok, 1, "exactly one redemption succeeds");
    assert_eq!(conflicts, 999);
}
