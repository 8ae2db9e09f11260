//! The vendor-compatible minting routes as a client written for each vendor sees them:
//! `GET /v3/token` (AssemblyAI), `POST /v1/single-use-token/{token_type}` (ElevenLabs),
//! `GET /api/v1/token` (stream token) and `GET|POST /api/v1/chat/token` (chat token). Each page's
//! own request examples are replayed with only the host changed; every documented field, header
//! and error body is asserted, every numeric parameter is pushed over its edges, and every token
//! is redeemed through the canonical `/v1/tokens/redeem`.

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use streamtoken::settings::CompatFamilies;
use streamtoken::tenancy::api_keys::Scope;

use crate::support::app::{spawn_app, spawn_app_with, Options, TestApp};
use crate::support::fields::{keys_of, now, set, BASE_CLAIMS, REDEEM_RESPONSE_FIELDS};
use crate::support::forge::claims_of;
use crate::support::reply::Reply;
use crate::support::routes::{
    ASSEMBLYAI, CHAT, CHAT_ALIAS, ELEVENLABS_SCRIBE, ELEVENLABS_TTS, MINT, STREAM_TOKEN,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const UNAUTHORIZED: &str = "Unauthorized. Please provide a valid secret key.";
const INVALID_TTL: &str = "Invalid TTL value. Must be between 1 and 300 seconds";
/// The stream-token 401 body exactly as the page prints it (field order included).
const STREAM_401: &str =
    r#"{"error":"Unauthorized. Please provide a valid secret key.","success":false}"#;
const STREAM_400: &str = r#"{"success":false,"error":"Invalid TTL value. Must be between 1 and 300 seconds","code":"invalid_ttl"}"#;
const ELEVENLABS_EXPECTED: &str = "'realtime_scribe' or 'tts_websocket'";
/// The ElevenLabs token lifetime: "expires after 15 minutes".
const FIFTEEN_MINUTES: i64 = 15 * 60;

/// Whether a body is in the envelope of the route that produced it.
type EnvelopeCheck = dyn Fn(&Value) -> bool;

/// `exp - iat` of a token's claims: its redemption window.
fn lifetime(claims: &Value) -> i64 {
    claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
}

/// The page's chat body.
fn chat_body() -> Value {
    json!({"chatbotId": "CHATBOT-ID", "sessionId": "RANDOM-STRING"})
}

/// Reads a reply (see `Reply::read`) that must carry a JSON body: every route here answers in one.
async fn reply(response: Response, description: &str) -> Reply {
    let reply = Reply::read(response, description).await;
    assert!(
        !reply.text.is_empty(),
        "{description}: an empty body, not JSON"
    );
    reply
}

async fn send(request: RequestBuilder, description: &str) -> Reply {
    reply(request.send().await.expect("request failed"), description).await
}

/// A successful mint on `route` (see `minted_token`) that reports a lifetime of `seconds` and
/// whose token is valid for exactly that long; returns the token's claims.
fn minted_for(reply: &Reply, route: Route, seconds: i64, description: &str) -> Value {
    let (token, reported) = minted_token(reply, route, description);
    assert_eq!(reported, Some(seconds), "{description}");
    let claims = claims_of(&token);
    assert_eq!(lifetime(&claims), seconds, "{description}");
    claims
}

/// `GET {path}?{query}`, without a key.
fn get_with_query(app: &TestApp, path: &str, query: &str) -> RequestBuilder {
    app.client.get(app.url(&format!("{path}?{query}")))
}

/// `GET /v3/token?{query}` with the key the way AssemblyAI's examples send it:
/// `Authorization: <key>`.
fn assemblyai_get(app: &TestApp, query: &str) -> RequestBuilder {
    get_with_query(app, ASSEMBLYAI, query).header("authorization", &app.api_key)
}

/// Asserts a refusal with `status` in `route`'s own envelope, carrying `code`.
fn assert_refused(reply: &Reply, route: Route, status: StatusCode, code: &str, description: &str) {
    assert_eq!(reply.status, status, "{description}: {}", reply.text);
    assert_eq!(
        route.error_code(&reply.body, description).as_deref(),
        Some(code),
        "{description}"
    );
}

/// A successful mint (see `Reply::assert_minted`) in `route`'s documented body (see
/// `Route::success`): the token and the lifetime the body reports.
fn minted_token(reply: &Reply, route: Route, description: &str) -> (String, Option<i64>) {
    reply.assert_minted(description);
    route.success(&reply.body, description)
}

/// One minimal valid request per compatibility route (and the chat alias), so that tables can
/// run the same check against every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    AssemblyAi,
    ElevenLabs,
    Stream,
    ChatGet,
    ChatPost,
    ChatAlias,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::AssemblyAi,
        Route::ElevenLabs,
        Route::Stream,
        Route::ChatGet,
        Route::ChatPost,
        Route::ChatAlias,
    ];

    /// The `STREAMTOKEN_COMPAT` family the route belongs to.
    fn family(self) -> &'static str {
        match self {
            Route::AssemblyAi => "assemblyai",
            Route::ElevenLabs => "elevenlabs",
            Route::Stream => "stream",
            Route::ChatGet | Route::ChatPost | Route::ChatAlias => "chat",
        }
    }

    /// A valid request without any key header.
    fn request(self, app: &TestApp) -> RequestBuilder {
        match self {
            Route::AssemblyAi => app
                .client
                .get(app.url(&format!("{ASSEMBLYAI}?expires_in_seconds=60"))),
            Route::ElevenLabs => app.client.post(app.url(ELEVENLABS_SCRIBE)),
            Route::Stream => app.client.get(app.url(STREAM_TOKEN)),
            Route::ChatGet => app.client.get(app.url(CHAT)),
            Route::ChatPost => app.client.post(app.url(CHAT)).json(&chat_body()),
            Route::ChatAlias => app.client.get(app.url(CHAT_ALIAS)),
        }
    }

    /// Asserts the body is exactly the route's documented success body and returns the token
    /// and the lifetime the body reports, if it reports one.
    fn success(self, body: &Value, description: &str) -> (String, Option<i64>) {
        let (fields, lifetime_field): (&[&str], Option<&str>) = match self {
            Route::AssemblyAi => (&["token", "expires_in_seconds"], Some("expires_in_seconds")),
            Route::ElevenLabs => (&["token"], None),
            Route::Stream => (&["success", "token", "ttl"], Some("ttl")),
            Route::ChatGet | Route::ChatPost | Route::ChatAlias => {
                (&["success", "token", "expires_in"], Some("expires_in"))
            }
        };
        assert_eq!(keys_of(body), set(fields), "{description}: {body}");
        if fields.contains(&"success") {
            assert_eq!(body["success"], json!(true), "{description}: {body}");
        }
        let token = body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{description}: token is not a string: {body}"));
        assert!(token.starts_with("eyJ"), "{description}: {token}");
        let reported = lifetime_field.map(|field| {
            body[field]
                .as_i64()
                .unwrap_or_else(|| panic!("{description}: {field} is not an integer: {body}"))
        });
        (token.to_owned(), reported)
    }

    /// Asserts the body is in the route's error envelope and returns its machine-readable code
    /// (`None` where the envelope has none, as in the stream-token 401).
    fn error_code(self, body: &Value, description: &str) -> Option<String> {
        let string = |value: &Value, what: &str| -> String {
            value
                .as_str()
                .unwrap_or_else(|| panic!("{description}: {what} is not a string: {body}"))
                .to_owned()
        };
        match self {
            Route::AssemblyAi => {
                // `{error, code?, details?}`
                let keys = keys_of(body);
                assert!(keys.contains("error"), "{description}: {body}");
                assert!(
                    keys.is_subset(&set(&["error", "code", "details"])),
                    "{description}: {body}"
                );
                string(&body["error"], "error");
                if let Some(details) = body.get("details") {
                    assert!(details.is_object(), "{description}: {body}");
                }
                body.get("code").map(|code| string(code, "code"))
            }
            Route::ElevenLabs => {
                // `{"detail": {status, message}}`, or `{"detail": [..]}` for validation errors.
                assert_eq!(keys_of(body), set(&["detail"]), "{description}: {body}");
                let detail = &body["detail"];
                if detail.is_array() {
                    return Some("validation_error".into());
                }
                assert_eq!(
                    keys_of(detail),
                    set(&["status", "message"]),
                    "{description}: {body}"
                );
                string(&detail["message"], "detail.message");
                Some(string(&detail["status"], "detail.status"))
            }
            Route::Stream => {
                // `{error, success:false, code?}`
                let keys = keys_of(body);
                assert!(
                    keys.contains("error") && keys.contains("success"),
                    "{description}: {body}"
                );
                assert!(
                    keys.is_subset(&set(&["error", "success", "code"])),
                    "{description}: {body}"
                );
                assert_eq!(body["success"], json!(false), "{description}: {body}");
                string(&body["error"], "error");
                body.get("code").map(|code| string(code, "code"))
            }
            Route::ChatGet | Route::ChatPost | Route::ChatAlias => {
                // `{success:false, error:{message, code}}`
                assert_eq!(
                    keys_of(body),
                    set(&["success", "error"]),
                    "{description}: {body}"
                );
                assert_eq!(body["success"], json!(false), "{description}: {body}");
                assert_eq!(
                    keys_of(&body["error"]),
                    set(&["message", "code"]),
                    "{description}: {body}"
                );
                string(&body["error"]["message"], "error.message");
                Some(string(&body["error"]["code"], "error.code"))
            }
        }
    }
}

/// The canonical 404 a switched-off family answers with.
fn assert_not_found(reply: &Reply, description: &str) {
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{description}");
    assert_eq!(
        reply.body,
        json!({"error": {"code": "not_found", "message": "no such route"}}),
        "{description}"
    );
}

/// The edge values every numeric query parameter is pushed over:
/// `(query as sent, the value it must be accepted as, description)`.
fn numeric_edge_cases(name: &str, min: u32, max: u32) -> Vec<(String, Option<u32>, String)> {
    let q = |value: &str| format!("{name}={value}");
    let percent_encoded_min: String = min
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    #[rustfmt::skip]
    let mut cases: Vec<(String, Option<u32>, String)> = vec![
        (q(&(min - 1).to_string()), None, format!("{}: just below the minimum", min - 1)),
        (q(&min.to_string()), Some(min), format!("{min}: the minimum")),
        (q(&max.to_string()), Some(max), format!("{max}: the maximum")),
        (q(&(max + 1).to_string()), None, format!("{}: just above the maximum", max + 1)),
        (q("-1"), None, "-1".into()),
        (q("-0"), None, "-0".into()),
        (q("1.5"), None, "1.5".into()),
        (q(&format!("{min}.0")), None, format!("{min}.0: an integer written as a decimal")),
        (q("abc"), None, "abc".into()),
        (q(""), None, "empty (`name=`)".into()),
        (name.to_owned(), None, "the name without `=`".into()),
        (q("1e3"), None, "1e3".into()),
        (q("99999999999999999999"), None, "99999999999999999999: beyond u64".into()),
        (q(&(u64::from(u32::MAX) + 1 + u64::from(min)).to_string()), None, format!("2^32 + {min}: would wrap to {min} as a u32")),
        (q(&format!("0x{min:x}")), None, "hexadecimal".into()),
        (q(&format!("%2B{min}")), None, "an explicit plus sign (%2B)".into()),
        (q(&format!("+{min}")), None, "a leading space (`+` in a query)".into()),
        (format!("{name}={min}&{name}={max}"), None, "repeated, both values in range".into()),
        (format!("{name}={min}&{name}={min}"), None, "repeated with the same value".into()),
        (q("%ZZ"), None, "an invalid percent-encoding (%ZZ)".into()),
        (q("%"), None, "a lone percent sign".into()),
        (q(&percent_encoded_min), Some(min), format!("{min}, percent-encoded digit by digit")),
    ];
    if min > 1 {
        cases.push((q("0"), None, "0".into()));
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// The pages' own request examples
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_assemblyai_pages_examples_return_200_with_token_and_expires_in_seconds() {
    // Arrange
    let app = spawn_app().await;
    #[rustfmt::skip]
    let cases = [
        // (query, max_session_duration_seconds in the token, description)
        ("expires_in_seconds=60", 10_800, "Python requests: urlencode({'expires_in_seconds': 60}), Authorization: <key>"),
        ("expires_in_seconds=60", 10_800, "JavaScript fetch: URLSearchParams({expires_in_seconds: 60}), Authorization: <key>"),
        ("expires_in_seconds=60", 10_800, "Python SDK: create_temporary_token(expires_in_seconds=60)"),
        ("expires_in_seconds=60", 10_800, "JavaScript SDK: createTemporaryToken({expires_in_seconds: 60})"),
        ("expires_in_seconds=60&max_session_duration_seconds=600", 600, "the OpenAPI example values (60 and 600)"),
    ];

    for (query, session, description) in cases {
        // Act
        let before = now();
        let reply = send(assemblyai_get(&app, query), description).await;

        // Assert
        let claims = minted_for(&reply, Route::AssemblyAi, 60, description);
        assert_eq!(claims["token_type"], "realtime", "{description}");
        assert_eq!(
            claims["max_session_duration_seconds"],
            json!(session),
            "{description}"
        );
        assert_eq!(claims["org"], "dev", "{description}");
        let iat = claims["iat"].as_i64().unwrap();
        assert!((before..=now()).contains(&iat), "{description}: iat {iat}");
    }
}

#[tokio::test]
async fn the_elevenlabs_pages_examples_return_200_with_only_a_token() {
    // Arrange: every snippet (Go, Ruby, Java, PHP, C#, Swift, and the TS / Python SDKs' create
    // ("realtime_scribe")) is a bodiless POST with the key in `xi-api-key`; Go's nil body goes
    // out with `Content-Length: 0`.
    let app = spawn_app().await;
    #[rustfmt::skip]
    let cases = [
        // (path, explicit empty body, token_type in the token, description)
        (ELEVENLABS_SCRIBE, false, "realtime_scribe", "the snippets: POST realtime_scribe with xi-api-key"),
        (ELEVENLABS_SCRIBE, true, "realtime_scribe", "Go's http.NewRequest(\"POST\", url, nil): Content-Length: 0"),
        (ELEVENLABS_TTS, false, "tts_websocket", "the enum's other value, tts_websocket"),
    ];

    for (path, empty_body, token_type, description) in cases {
        // Act
        let mut request = app
            .client
            .post(app.url(path))
            .header("xi-api-key", &app.api_key);
        if empty_body {
            request = request.body("");
        }
        let reply = send(request, description).await;

        // Assert
        let (token, _) = minted_token(&reply, Route::ElevenLabs, description);
        let claims = claims_of(&token);
        assert_eq!(claims["token_type"], token_type, "{description}");
        assert_eq!(lifetime(&claims), FIFTEEN_MINUTES, "{description}");
        assert_eq!(claims["org"], "dev", "{description}");
    }
}

#[tokio::test]
async fn the_stream_token_pages_examples_return_200_with_success_token_and_ttl() {
    // Arrange
    let app = spawn_app().await;
    #[rustfmt::skip]
    let cases = [
        // (query, ttl, description)
        ("ttl=60", 60, "Example Request: curl ?ttl=60 with Authorization: Bearer"),
        ("ttl=300", 300, "Example Request with a custom TTL of 5 minutes: curl ?ttl=300"),
        ("ttl=60", 60, "Code Examples, Python: requests.get(url, headers=headers)"),
        ("ttl=60", 60, "Code Examples, Node.js: fetch(url, {headers})"),
        ("ttl=60", 60, "Code Examples, cURL"),
    ];

    for (query, ttl, description) in cases {
        // Act
        let reply = send(
            get_with_query(&app, STREAM_TOKEN, query).bearer_auth(&app.api_key),
            description,
        )
        .await;

        // Assert
        let claims = minted_for(&reply, Route::Stream, ttl, description);
        assert_eq!(claims["token_type"], "stream", "{description}");
    }
}

#[tokio::test]
async fn the_chat_pages_examples_with_an_api_key_return_200_with_success_token_and_expires_in() {
    // Arrange: the POST example sends a Bearer key; the GET examples send none, so the key is
    // added (every minting route requires a key, whatever the page's example sends).
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", app.api_key);
    let page_body = chat_body().to_string();
    #[rustfmt::skip]
    let cases = [
        // (method, path and query, body, expires_in, ctx, description)
        (reqwest::Method::POST, CHAT.to_owned(), Some(page_body.as_str()), 60, Some(chat_body()), "Example Request: curl POST with chatbotId and sessionId"),
        (reqwest::Method::GET, format!("{CHAT}?ttl=300"), None, 300, None, "Example Request with Custom TTL: curl GET ?ttl=300, key added"),
        (reqwest::Method::GET, CHAT.to_owned(), None, 60, None, "Code Examples, Python: requests.get(url, headers=headers), key added"),
        (reqwest::Method::GET, CHAT_ALIAS.to_owned(), None, 60, None, "Code Examples, Node.js: axios.get('/api/api/v1/chat/token'), key added"),
    ];

    for (method, path, body, expires_in, ctx, description) in cases {
        let route = if method == reqwest::Method::POST {
            Route::ChatPost
        } else {
            Route::ChatGet
        };

        // Act
        let mut request = app
            .client
            .request(method, app.url(&path))
            .header("authorization", &bearer)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let reply = send(request, description).await;

        // Assert
        let claims = minted_for(&reply, route, expires_in, description);
        assert_eq!(claims["token_type"], "chat", "{description}");
        assert_eq!(claims.get("ctx"), ctx.as_ref(), "{description}");
    }
}

#[tokio::test]
async fn the_chat_pages_keyless_examples_get_401_in_the_chat_envelope() {
    // Arrange
    let app = spawn_app().await;
    let expected = json!({
        "success": false,
        "error": {"message": UNAUTHORIZED, "code": "unauthorized"},
    });
    #[rustfmt::skip]
    let cases = [
        // (method, path and query, description)
        (reqwest::Method::GET, format!("{CHAT}?ttl=300"), "Example Request with Custom TTL, exactly as printed"),
        (reqwest::Method::GET, CHAT.to_owned(), "Code Examples, Python, exactly as printed"),
        (reqwest::Method::GET, CHAT_ALIAS.to_owned(), "Code Examples, Node.js (/api/api/...), exactly as printed"),
        (reqwest::Method::POST, CHAT.to_owned(), "Example Request (POST) without its Bearer key"),
    ];

    for (method, path, description) in cases {
        // Act
        let mut request = app
            .client
            .request(method.clone(), app.url(&path))
            .header("accept", "application/json");
        if method == reqwest::Method::POST {
            request = request.json(&chat_body());
        }
        let reply = send(request, description).await;

        // Assert
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{description}");
        assert_eq!(reply.body, expected, "{description}");
        reply.assert_no_store(description);
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication and error bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_stream_token_route_answers_401_with_the_pages_body_word_for_word() {
    // Arrange
    let app = spawn_app().await;
    let unknown = format!("st_{}", "A".repeat(43));
    #[rustfmt::skip]
    let cases = [
        // (key header, query, description)
        (None, "ttl=60", "no Authorization header"),
        (Some(("authorization", "Bearer".to_owned())), "ttl=60", "a Bearer scheme without a key"),
        (Some(("authorization", format!("Bearer {unknown}"))), "ttl=60", "an unknown Bearer key"),
        (Some(("authorization", unknown.clone())), "ttl=60", "an unknown raw key"),
        (Some(("xi-api-key", unknown.clone())), "ttl=60", "an unknown xi-api-key"),
        (None, "ttl=abc", "no key and a bad ttl: the key is checked first"),
    ];

    for (header, query, description) in cases {
        // Act
        let mut request = get_with_query(&app, STREAM_TOKEN, query);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let reply = send(request, description).await;

        // Assert
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{description}");
        assert_eq!(reply.text, STREAM_401, "{description}");
        reply.assert_no_store(description);
    }
}

#[tokio::test]
async fn every_compat_route_refuses_a_missing_or_unknown_key_in_its_own_envelope() {
    // Arrange
    let app = spawn_app().await;
    let unknown = format!("st_{}", "A".repeat(43));
    let missing_message =
        "no API key: send Authorization: Bearer <key>, Authorization: <key> or xi-api-key: <key>";
    let chat_401 =
        json!({"success": false, "error": {"message": UNAUTHORIZED, "code": "unauthorized"}});
    let stream_401 = json!({"error": UNAUTHORIZED, "success": false});
    let elevenlabs_missing = json!({"detail": [
        {"type": "missing", "loc": ["header", "xi-api-key"], "msg": "Field required", "input": null},
    ]});
    #[rustfmt::skip]
    let cases = [
        // (route, key header, status, body, description)
        (Route::AssemblyAi, None, StatusCode::UNAUTHORIZED, json!({"error": missing_message, "code": "missing_api_key"}), "AssemblyAI without Authorization"),
        (Route::AssemblyAi, Some(("authorization", unknown.clone())), StatusCode::UNAUTHORIZED, json!({"error": "the API key is not valid", "code": "invalid_api_key"}), "AssemblyAI with a wrong Authorization: <key>"),
        (Route::AssemblyAi, Some(("authorization", "Bearer".to_owned())), StatusCode::UNAUTHORIZED, json!({"error": missing_message, "code": "missing_api_key"}), "AssemblyAI with a bare Bearer scheme"),
        (Route::ElevenLabs, None, StatusCode::UNPROCESSABLE_ENTITY, elevenlabs_missing.clone(), "ElevenLabs without xi-api-key"),
        (Route::ElevenLabs, Some(("xi-api-key", unknown.clone())), StatusCode::UNAUTHORIZED, json!({"detail": {"status": "invalid_api_key", "message": "the API key is not valid"}}), "ElevenLabs with a wrong xi-api-key"),
        (Route::Stream, None, StatusCode::UNAUTHORIZED, stream_401.clone(), "stream without Authorization"),
        (Route::Stream, Some(("authorization", format!("Bearer {unknown}"))), StatusCode::UNAUTHORIZED, stream_401.clone(), "stream with a wrong Bearer key"),
        (Route::ChatGet, None, StatusCode::UNAUTHORIZED, chat_401.clone(), "chat GET without a key"),
        (Route::ChatGet, Some(("authorization", format!("Bearer {unknown}"))), StatusCode::UNAUTHORIZED, chat_401.clone(), "chat GET with a wrong Bearer key"),
        (Route::ChatPost, None, StatusCode::UNAUTHORIZED, chat_401.clone(), "chat POST without a key"),
        (Route::ChatPost, Some(("xi-api-key", unknown.clone())), StatusCode::UNAUTHORIZED, chat_401.clone(), "chat POST with a wrong xi-api-key"),
        (Route::ChatAlias, None, StatusCode::UNAUTHORIZED, chat_401.clone(), "chat alias without a key"),
    ];

    for (route, header, expected_status, expected_body, description) in cases {
        // Act
        let mut request = route.request(&app);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let reply = send(request, description).await;

        // Assert
        assert_eq!(
            reply.status, expected_status,
            "{description}: {}",
            reply.text
        );
        route.error_code(&reply.body, description);
        assert_eq!(reply.body, expected_body, "{description}");
    }
}

#[tokio::test]
async fn every_compat_route_accepts_each_of_the_three_api_key_header_forms() {
    // Arrange
    let app = spawn_app().await;
    let key = app.api_key.clone();
    let forms = [
        ("authorization", format!("Bearer {key}")),
        ("authorization", key.clone()),
        ("xi-api-key", key.clone()),
    ];

    for route in Route::ALL {
        for (name, value) in &forms {
            let description = format!("{route:?} with {name}: {}", value.replace(&key, "<key>"));

            // Act
            let reply = send(route.request(&app).header(*name, value), &description).await;

            // Assert
            let (token, _) = minted_token(&reply, route, &description);
            assert_eq!(claims_of(&token)["org"], "dev", "{description}");
        }
    }
}

#[tokio::test]
async fn a_key_without_the_mint_scope_gets_403_in_each_routes_envelope() {
    // Arrange
    let app = spawn_app().await;
    let redeem_only = app.add_api_key("acme", &[Scope::Redeem]);

    for route in Route::ALL {
        let description = format!("{route:?} with a redeem-only key");

        // Act
        let reply = send(
            route
                .request(&app)
                .header("authorization", format!("Bearer {redeem_only}")),
            &description,
        )
        .await;

        // Assert
        assert_refused(
            &reply,
            route,
            StatusCode::FORBIDDEN,
            "forbidden",
            &description,
        );
        assert!(
            reply.text.contains("mint"),
            "{description}: the message names the missing scope: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn elevenlabs_validation_errors_answer_422_in_fastapis_shape_before_the_key_is_checked() {
    // Arrange
    let app = spawn_app().await;
    let unknown = format!("st_{}", "A".repeat(43));
    let enum_problem = |input: &str| {
        json!({
            "type": "enum",
            "loc": ["path", "token_type"],
            "msg": format!("Input should be {ELEVENLABS_EXPECTED}"),
            "input": input,
            "ctx": {"expected": ELEVENLABS_EXPECTED},
        })
    };
    let missing_problem = json!({"type": "missing", "loc": ["header", "xi-api-key"], "msg": "Field required", "input": null});
    #[rustfmt::skip]
    let cases = [
        // (token_type, xi-api-key, problems, description)
        ("nope", Some(app.api_key.clone()), vec![enum_problem("nope")], "an unknown token_type with a valid key"),
        ("Realtime_Scribe", Some(app.api_key.clone()), vec![enum_problem("Realtime_Scribe")], "the enum is case-sensitive"),
        ("realtime", Some(app.api_key.clone()), vec![enum_problem("realtime")], "AssemblyAI's token type is not ElevenLabs'"),
        ("nope", Some(unknown.clone()), vec![enum_problem("nope")], "an unknown token_type with a wrong key: validation comes first"),
        ("realtime_scribe", None, vec![missing_problem.clone()], "a missing xi-api-key"),
        ("tts_websocket", None, vec![missing_problem.clone()], "a missing xi-api-key on tts_websocket"),
        ("nope", None, vec![enum_problem("nope"), missing_problem.clone()], "both: the path problem, then the header problem"),
    ];

    for (token_type, key, problems, description) in cases {
        // Act
        let mut request = app
            .client
            .post(app.url(&format!("/v1/single-use-token/{token_type}")));
        if let Some(key) = key {
            request = request.header("xi-api-key", key);
        }
        let reply = send(request, description).await;

        // Assert
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{description}"
        );
        assert_eq!(reply.body, json!({ "detail": problems }), "{description}");
    }
}

#[tokio::test]
async fn assemblyai_without_expires_in_seconds_answers_400_naming_the_required_parameter() {
    // Arrange
    let app = spawn_app().await;
    #[rustfmt::skip]
    let cases = [
        // (query, description)
        ("", "no query at all"),
        ("max_session_duration_seconds=600", "only max_session_duration_seconds"),
        ("expires_in=60", "a near-miss parameter name"),
    ];

    for (query, description) in cases {
        // Act
        let reply = send(assemblyai_get(&app, query), description).await;

        // Assert
        let (route, code) = (Route::AssemblyAi, "invalid_request");
        assert_refused(&reply, route, StatusCode::BAD_REQUEST, code, description);
        assert_eq!(
            reply.body,
            json!({
                "error": "expires_in_seconds is required: an integer between 1 and 600",
                "code": "invalid_request",
                "details": {"parameter": "expires_in_seconds"},
            }),
            "{description}"
        );
        reply.assert_no_store(description);
    }
}

// ---------------------------------------------------------------------------------------------
// Edge values of every numeric parameter
// ---------------------------------------------------------------------------------------------

/// Sends `request(query)` for every edge value of the numeric parameter `name` (see
/// `numeric_edge_cases`) and checks each reply: `accepted(reply, value, description)` where the
/// value is in `min..=max`, `refused(reply, description)` everywhere else.
async fn check_edge_values(
    label: &str,
    (name, min, max): (&str, u32, u32),
    request: impl Fn(&str) -> RequestBuilder,
    accepted: impl Fn(&Reply, u32, &str),
    refused: impl Fn(&Reply, &str),
) {
    for (query, value, what) in numeric_edge_cases(name, min, max) {
        let description = format!("{label} {what} ({query})");
        let reply = send(request(&query), &description).await;
        match value {
            Some(value) => accepted(&reply, value, &description),
            None => refused(&reply, &description),
        }
    }
}

#[tokio::test]
async fn assemblyai_expires_in_seconds_accepts_1_to_600_and_refuses_every_other_value_with_400() {
    // Arrange
    let app = spawn_app().await;

    // Act + Assert
    check_edge_values(
        "expires_in_seconds",
        ("expires_in_seconds", 1, 600),
        |query| assemblyai_get(&app, query),
        |reply, value, description| {
            let claims = minted_for(reply, Route::AssemblyAi, value.into(), description);
            let session = &claims["max_session_duration_seconds"];
            assert_eq!(session, &json!(10_800), "{description}");
        },
        |reply, description| assert_assemblyai_400(reply, "expires_in_seconds", description),
    )
    .await;
}

#[tokio::test]
async fn assemblyai_max_session_duration_seconds_accepts_60_to_10800_and_refuses_every_other_value()
{
    // Arrange
    let app = spawn_app().await;

    // Act + Assert
    check_edge_values(
        "max_session_duration_seconds",
        ("max_session_duration_seconds", 60, 10_800),
        |query| assemblyai_get(&app, &format!("expires_in_seconds=30&{query}")),
        |reply, value, description| {
            let claims = minted_for(reply, Route::AssemblyAi, 30, description);
            let session = &claims["max_session_duration_seconds"];
            assert_eq!(session, &json!(value), "{description}");
        },
        |reply, description| {
            assert_assemblyai_400(reply, "max_session_duration_seconds", description)
        },
    )
    .await;
}

/// A refused AssemblyAI parameter: 400 `{error, code, details}` naming the parameter.
fn assert_assemblyai_400(reply: &Reply, parameter: &str, description: &str) {
    let (route, code) = (Route::AssemblyAi, "invalid_request");
    assert_refused(reply, route, StatusCode::BAD_REQUEST, code, description);
    assert_eq!(
        keys_of(&reply.body),
        set(&["error", "code", "details"]),
        "{description}: {}",
        reply.text
    );
    assert_eq!(
        reply.body["details"],
        json!({ "parameter": parameter }),
        "{description}"
    );
    let message = reply.body["error"].as_str().unwrap();
    assert!(message.contains(parameter), "{description}: {message}");
    reply.assert_no_store(description);
}

#[tokio::test]
async fn stream_ttl_accepts_1_to_300_and_refuses_every_other_value_with_400_invalid_ttl() {
    // Arrange
    let app = spawn_app().await;

    // Act + Assert
    check_edge_values(
        "ttl",
        ("ttl", 1, 300),
        |query| get_with_query(&app, STREAM_TOKEN, query).bearer_auth(&app.api_key),
        |reply, value, description| {
            minted_for(reply, Route::Stream, value.into(), description);
        },
        |reply, description| {
            let (route, code) = (Route::Stream, "invalid_ttl");
            assert_refused(reply, route, StatusCode::BAD_REQUEST, code, description);
            assert_eq!(reply.text, STREAM_400, "{description}");
        },
    )
    .await;
}

#[tokio::test]
async fn chat_ttl_accepts_1_to_300_and_refuses_every_other_value_with_400_invalid_ttl_on_get_and_post(
) {
    // Arrange
    let app = spawn_app().await;
    let invalid_ttl = json!({
        "success": false,
        "error": {"message": INVALID_TTL, "code": "invalid_ttl"},
    });

    for route in [Route::ChatGet, Route::ChatPost] {
        // Act + Assert
        check_edge_values(
            &format!("{route:?} ttl"),
            ("ttl", 1, 300),
            |query| {
                let url = app.url(&format!("{CHAT}?{query}"));
                let request = match route {
                    Route::ChatGet => app.client.get(url),
                    _ => app.client.post(url).json(&chat_body()),
                };
                request.bearer_auth(&app.api_key)
            },
            |reply, value, description| {
                minted_for(reply, route, value.into(), description);
            },
            |reply, description| {
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{description}");
                route.error_code(&reply.body, description);
                assert_eq!(reply.body, invalid_ttl, "{description}");
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Redemption and claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_from_every_compat_route_redeem_once_and_carry_the_routes_claims() {
    // Arrange
    let app = spawn_app().await;
    let key = app.api_key.clone();
    let get = |path: &str| app.client.get(app.url(path)).bearer_auth(&key);
    let post = |path: &str| app.client.post(app.url(path)).bearer_auth(&key);
    #[rustfmt::skip]
    let cases = [
        // (route, request, token_type, exp - iat, max_session_duration_seconds, ctx, description)
        (Route::AssemblyAi, get("/v3/token?expires_in_seconds=45"), "realtime", 45, 10_800, None, "AssemblyAI with the default session duration"),
        (Route::AssemblyAi, get("/v3/token?expires_in_seconds=600&max_session_duration_seconds=60"), "realtime", 600, 60, None, "AssemblyAI with both parameters"),
        (Route::ElevenLabs, post(ELEVENLABS_SCRIBE), "realtime_scribe", FIFTEEN_MINUTES, 3600, None, "ElevenLabs realtime_scribe"),
        (Route::ElevenLabs, post(ELEVENLABS_TTS), "tts_websocket", FIFTEEN_MINUTES, 3600, None, "ElevenLabs tts_websocket"),
        (Route::Stream, get(STREAM_TOKEN), "stream", 60, 3600, None, "stream with the default ttl"),
        (Route::Stream, get("/api/v1/token?ttl=7"), "stream", 7, 3600, None, "stream with ttl=7"),
        (Route::ChatGet, get(CHAT), "chat", 60, 3600, None, "chat GET with the default ttl"),
        (Route::ChatAlias, get("/api/api/v1/chat/token?ttl=17"), "chat", 17, 3600, None, "chat GET on the alias with ttl=17"),
        (Route::ChatPost, post("/api/v1/chat/token?ttl=120").json(&chat_body()), "chat", 120, 3600, Some(chat_body()), "chat POST with the page's body"),
        (Route::ChatPost, post(CHAT).json(&json!({"chatbotId": "bot-1"})), "chat", 60, 3600, Some(json!({"chatbotId": "bot-1"})), "chat POST with only chatbotId"),
        (Route::ChatPost, post(CHAT), "chat", 60, 3600, None, "chat POST without a body"),
    ];

    for (route, request, token_type, window, session, ctx, description) in cases {
        // Act
        let before = now();
        let minted = send(request, description).await;
        let after = now();

        // Assert: the token
        let (token, reported) = minted_token(&minted, route, description);
        if let Some(reported) = reported {
            assert_eq!(reported, window, "{description}");
        }
        let claims = claims_of(&token);
        let mut expected_claims = set(&BASE_CLAIMS);
        if ctx.is_some() {
            expected_claims.insert("ctx".into());
        }
        assert_eq!(keys_of(&claims), expected_claims, "{description}: {claims}");
        assert_eq!(claims["org"], "dev", "{description}");
        assert_eq!(claims["token_type"], token_type, "{description}");
        assert_eq!(lifetime(&claims), window, "{description}");
        assert_eq!(
            claims["max_session_duration_seconds"],
            json!(session),
            "{description}"
        );
        assert_eq!(claims.get("ctx"), ctx.as_ref(), "{description}");
        let iat = claims["iat"].as_i64().unwrap();
        assert!((before..=after).contains(&iat), "{description}: iat {iat}");

        // Assert: it redeems once, with the same claims
        let redeemed = reply(app.redeem(&token).await, description).await;
        assert_eq!(redeemed.status, StatusCode::OK, "{description}");
        assert_eq!(
            keys_of(&redeemed.body),
            set(&REDEEM_RESPONSE_FIELDS),
            "{description}"
        );
        assert_eq!(redeemed.body["org"], "dev", "{description}");
        assert_eq!(redeemed.body["token_type"], token_type, "{description}");
        assert_eq!(redeemed.body["jti"], claims["jti"], "{description}");
        assert_eq!(
            redeemed.body["ctx"],
            ctx.clone().unwrap_or_else(|| json!({})),
            "{description}"
        );
        assert_eq!(
            redeemed.body["max_session_duration_seconds"],
            json!(session),
            "{description}"
        );
        assert_eq!(redeemed.body["uses_remaining"], json!(0), "{description}");

        // Assert: and never again
        let again = reply(app.redeem(&token).await, description).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{description}");
        assert_eq!(
            again.body["error"]["code"], "token_already_used",
            "{description}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The chat body
// ---------------------------------------------------------------------------------------------

/// What a chat POST body must lead to: `Ok(the ctx bound into the token)` or `Err(error code)`.
type ChatOutcome = Result<Option<Value>, &'static str>;

#[tokio::test]
async fn chat_post_bodies_are_bound_into_ctx_or_refused_in_the_chat_envelope() {
    // Arrange
    let app = spawn_app().await;
    let json_type = Some("application/json");
    let at_limit = "b".repeat(256);
    let over_limit = "b".repeat(257);
    let long_id = json!({ "chatbotId": over_limit }).to_string();
    let long_session = json!({ "sessionId": over_limit }).to_string();
    let exact_id = json!({ "chatbotId": at_limit }).to_string();
    // Limits count characters: 256 two-byte characters fit, 257 do not.
    let multibyte_at_limit = "é".repeat(256);
    let multibyte_id = json!({ "chatbotId": multibyte_at_limit }).to_string();
    let multibyte_over = json!({ "chatbotId": "é".repeat(257) }).to_string();
    let page_body = chat_body().to_string();
    let extra_fields =
        json!({"chatbotId": "CHATBOT-ID", "sessionId": "RANDOM-STRING", "userId": "u-1", "stream": true, "n": 3})
            .to_string();
    let mut oversized = page_body.clone();
    oversized.push_str(&" ".repeat(16 * 1024));
    #[rustfmt::skip]
    let cases: Vec<(Option<&str>, String, StatusCode, ChatOutcome, &str)> = vec![
        // (content type, body, status, Ok(ctx) or Err(error code), description)
        (json_type, page_body.clone(), StatusCode::OK, Ok(Some(chat_body())), "the page's body"),
        (json_type, exact_id, StatusCode::OK, Ok(Some(json!({ "chatbotId": at_limit }))), "a chatbotId of exactly 256 characters"),
        (json_type, long_id, StatusCode::BAD_REQUEST, Err("invalid_request"), "a chatbotId of 257 characters"),
        (json_type, long_session, StatusCode::BAD_REQUEST, Err("invalid_request"), "a sessionId of 257 characters"),
        (json_type, multibyte_id, StatusCode::OK, Ok(Some(json!({ "chatbotId": multibyte_at_limit }))), "a chatbotId of 256 two-byte characters"),
        (json_type, multibyte_over, StatusCode::BAD_REQUEST, Err("invalid_request"), "a chatbotId of 257 two-byte characters"),
        (Some("text/plain"), page_body.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE, Err("unsupported_media_type"), "text/plain"),
        (Some("application/xml"), page_body.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE, Err("unsupported_media_type"), "application/xml"),
        (Some("multipart/form-data"), page_body.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE, Err("unsupported_media_type"), "multipart/form-data"),
        (json_type, "{bad".into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "malformed JSON"),
        (json_type, r#"{"chatbotId": "a""#.into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "truncated JSON"),
        (json_type, "[]".into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "a JSON array"),
        (json_type, "null".into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "JSON null"),
        (json_type, "\"CHATBOT-ID\"".into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "a JSON string"),
        (json_type, r#"{"chatbotId": 42}"#.into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "a chatbotId that is a number"),
        (json_type, r#"{"sessionId": {"a": "b"}}"#.into(), StatusCode::BAD_REQUEST, Err("invalid_request"), "a sessionId that is an object"),
        (json_type, oversized, StatusCode::PAYLOAD_TOO_LARGE, Err("payload_too_large"), "a body over 16 KiB"),
        (json_type, extra_fields, StatusCode::OK, Ok(Some(chat_body())), "unknown extra fields are ignored"),
        (json_type, r#"{"chatbotId": null, "sessionId": null}"#.into(), StatusCode::OK, Ok(None), "null fields are absent"),
        (json_type, "{}".into(), StatusCode::OK, Ok(None), "an empty object"),
        (json_type, "".into(), StatusCode::OK, Ok(None), "an empty body labelled JSON"),
        (None, "".into(), StatusCode::OK, Ok(None), "an empty body without a content type"),
        (None, page_body.clone(), StatusCode::OK, Ok(Some(chat_body())), "the page's body without a content type"),
        (Some("application/json; charset=utf-8"), page_body.clone(), StatusCode::OK, Ok(Some(chat_body())), "JSON with a charset"),
        (Some("application/x-www-form-urlencoded"), page_body.clone(), StatusCode::OK, Ok(Some(chat_body())), "curl -d's default content type"),
    ];

    for (content_type, body, expected_status, expected, description) in cases {
        let request = app.raw_post(CHAT, content_type, body);

        // Act
        let reply = send(request, description).await;

        // Assert
        assert_eq!(
            reply.status, expected_status,
            "{description}: {}",
            reply.text
        );
        match expected {
            Ok(ctx) => {
                let (token, _) = minted_token(&reply, Route::ChatPost, description);
                assert_eq!(claims_of(&token).get("ctx"), ctx.as_ref(), "{description}");
            }
            Err(code) => {
                assert_refused(&reply, Route::ChatPost, expected_status, code, description);
                reply.assert_no_store(description);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Switching families off
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_compat_family_can_be_served_alone_while_the_others_answer_404() {
    for family in CompatFamilies::NAMES {
        // Arrange
        let app = spawn_app_with(Options {
            compat: CompatFamilies::parse(family).unwrap(),
            ..Options::default()
        })
        .await;

        for route in Route::ALL {
            let description = format!("only {family} served: {route:?}");

            // Act
            let reply = send(route.request(&app).bearer_auth(&app.api_key), &description).await;

            // Assert
            if route.family() == family {
                minted_token(&reply, route, &description);
            } else {
                assert_not_found(&reply, &description);
            }
        }
    }
}

#[tokio::test]
async fn with_no_compat_family_every_compat_route_answers_404_and_the_canonical_api_still_works() {
    // Arrange
    let app = spawn_app_with(Options {
        compat: CompatFamilies::parse("none").unwrap(),
        ..Options::default()
    })
    .await;

    for route in Route::ALL {
        let description = format!("no family served: {route:?}");

        // Act
        let reply = send(route.request(&app).bearer_auth(&app.api_key), &description).await;

        // Assert
        assert_not_found(&reply, &description);
    }

    // Act
    let minted = send(
        app.client
            .post(app.url(MINT))
            .bearer_auth(&app.api_key)
            .json(&json!({})),
        "canonical mint",
    )
    .await;

    // Assert
    assert_eq!(minted.status, StatusCode::OK);
    let token = minted.body["token"].as_str().unwrap();
    assert_eq!(app.redeem(token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_method_on_a_compat_route_answers_405_in_that_routes_envelope() {
    // Arrange
    let app = spawn_app().await;
    let assemblyai = |b: &Value| b["error"].is_string() && b["code"] == "method_not_allowed";
    let elevenlabs = |b: &Value| b["detail"]["status"] == "method_not_allowed";
    let stream = |b: &Value| {
        b["success"] == false && b["error"].is_string() && b["code"] == "method_not_allowed"
    };
    let chat = |b: &Value| b["success"] == false && b["error"]["code"] == "method_not_allowed";
    #[rustfmt::skip]
    let cases: [(reqwest::Method, &str, &EnvelopeCheck, &str); 5] = [
        // (method, path, envelope check, description)
        (reqwest::Method::POST, "/v3/token?expires_in_seconds=60", &assemblyai, "POST /v3/token, as the AssemblyAI guide's prose says"),
        (reqwest::Method::GET, ELEVENLABS_SCRIBE, &elevenlabs, "GET on the ElevenLabs route"),
        (reqwest::Method::PUT, STREAM_TOKEN, &stream, "PUT on the stream-token route"),
        (reqwest::Method::DELETE, CHAT, &chat, "DELETE on the chat route"),
        (reqwest::Method::PATCH, CHAT_ALIAS, &chat, "PATCH on the chat alias"),
    ];

    for (method, path, in_route_envelope, description) in cases {
        // Act
        let reply = send(
            app.client
                .request(method, app.url(path))
                .bearer_auth(&app.api_key),
            description,
        )
        .await;

        // Assert
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{description}: {}",
            reply.text
        );
        assert!(
            in_route_envelope(&reply.body),
            "{description}: {}",
            reply.text
        );
    }
}
