//! One table of hostile and malformed requests against every route of the real binary.
//!
//! Each row is a request written byte for byte on a plain `TcpStream` (so nothing normalises
//! what we send: invalid UTF-8 and broken percent-escapes in the query, oversized heads, lying
//! `Content-Length`s, chunked bodies, WebSocket handshakes), the status it must get, and the
//! envelope that route must answer in — with the error code where the route has one. No row may
//! get a 5xx, and at the end the server's stderr must show no panic and no credential.
//!
//! What actix-web itself answers, before any of our code runs (asserted below as `Protocol`):
//! - a request head over 128 KiB (one huge header, or a huge query) or with more than 96 header
//!   lines: `431 Request Header Fields Too Large` with an empty body, and the connection closed;
//! - a request target with a raw byte outside what `http::Uri` accepts (a raw `0xFF`, `"`, `<`,
//!   DEL): `400 Bad Request` with an empty body;
//! - an unparsable or duplicated, conflicting `Content-Length`: `400` with an empty body.
//!
//! These are protocol-level answers without a JSON envelope; everything that reaches a route
//! (including `%ZZ`, `%FF` and other bad escapes) is answered in the route's envelope. One more
//! row records current behaviour rather than a choice: `HEAD` on a `GET` route is not routed and
//! answers 405 (`Allow: GET`), although RFC 9110 §9.1 expects HEAD wherever GET is served.
//!
//! After the catalogue, one test per bug it led to (each names the file and the fix).

use std::collections::BTreeSet;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::fields::{keys_of, now, set, MINT_RESPONSE_FIELDS, REDEEM_RESPONSE_FIELDS};
use crate::support::forge::{b64, claims_of, flip_bit, forge_raw, Forge};
use crate::support::keys::{add_api_key, init_keys};
use crate::support::log_capture::looks_secret;
use crate::support::outcomes::tally;
use crate::support::process::ServerProcess;
use crate::support::raw_http::{self, Answer, BuildRaw, Frames, RawRequest};
use crate::support::routes::{
    ASSEMBLYAI, CHAT, CHAT_ALIAS, ELEVENLABS_SCRIBE, ELEVENLABS_TTS, FORWARD_AUTH, INTROSPECT,
    MINT, REDEEM, REVOKE, STREAM_TOKEN,
};

// ---------------------------------------------------------------------------------------------
// The table's vocabulary
// ---------------------------------------------------------------------------------------------

/// The body a route must answer with, in its own envelope.
#[derive(Debug, Clone)]
enum Expect {
    /// `{"error":{"code","message"}}`, exactly; the message names `reason` when given.
    Canonical {
        code: &'static str,
        reason: Option<&'static str>,
    },
    /// AssemblyAI: `{error, code, details?}`; `details.parameter` names the refused parameter.
    AssemblyAi {
        code: &'static str,
        parameter: Option<&'static str>,
    },
    /// ElevenLabs: `{"detail":{"status","message"}}`.
    ElevenLabs { status: &'static str },
    /// ElevenLabs (FastAPI) validation: `{"detail":[{type, loc, msg, input, ctx?}]}`, one entry
    /// per refused location, in this order.
    ElevenLabs422 { locs: &'static [&'static str] },
    /// Stream token: `{error, success:false, code?}`.
    StreamToken { code: Option<&'static str> },
    /// Chat token: `{success:false, error:{message, code}}`.
    Chat { code: &'static str },
    /// Introspection of a refused token: `{"active":false,"reason"}` (plus the claims and
    /// `uses_remaining` when the reason is `already_used`).
    Inactive { reason: &'static str },
    /// Introspection of a live token: `{active:true, claims, uses_remaining}`.
    Active,
    /// A JSON object with exactly these fields; `success` (if present) is true and `token` (if
    /// present) is a compact JWS.
    Fields(&'static [&'static str]),
    /// A non-JSON document of this content type containing this text.
    Text {
        content_type: &'static str,
        contains: &'static str,
    },
    /// Answered by the HTTP layer before any route: no body at all.
    Protocol,
    /// Forward-auth's grant: no body, the identity of a dev-org `realtime` token in headers.
    Granted,
    /// Forward-auth's refusal: the canonical envelope, and its code in `X-Streamtoken-Error`.
    Denied {
        code: &'static str,
        reason: Option<&'static str>,
    },
    /// A WebSocket upgrade (101) refused in-band: one error frame with `code`, then `close`.
    WsRefused { code: &'static str, close: u16 },
    /// A WebSocket upgrade (101) whose first frame is `session_begins`.
    WsBegins,
}

struct Case {
    what: String,
    request: RawRequest,
    status: u16,
    expect: Expect,
    /// A response header that must be present with this value.
    want_header: Option<(&'static str, &'static str)>,
}

fn case(what: impl Into<String>, method: &str, target: impl AsRef<[u8]>) -> Case {
    Case {
        what: what.into(),
        request: RawRequest::new(method, target),
        status: 0,
        expect: Expect::Protocol,
        want_header: None,
    }
}

impl BuildRaw for Case {
    fn raw_mut(&mut self) -> &mut RawRequest {
        &mut self.request
    }
}

impl Case {
    fn expect(mut self, status: u16, expect: Expect) -> Self {
        self.status = status;
        self.expect = expect;
        self
    }

    fn with_response_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.want_header = Some((name, value));
        self
    }

    /// A session that begins is read up to its first frame; a refusal up to its close frame.
    fn frames(&self) -> Frames {
        match self.expect {
            Expect::WsBegins => Frames::First,
            _ => Frames::Close,
        }
    }
}

fn exchange(address: &str, case: &Case) -> Result<Answer, String> {
    raw_http::exchange(address, &case.request, case.frames())
}

// ---------------------------------------------------------------------------------------------
// Checking an answer against its row
// ---------------------------------------------------------------------------------------------

fn is_compact_jws(token: &Value) -> bool {
    token
        .as_str()
        .is_some_and(|t| t.starts_with("eyJ") && t.split('.').count() == 3)
}

fn check(case: &Case, answer: &Answer) -> Result<(), String> {
    if answer.status >= 500 {
        return Err(format!("a 5xx: {}", answer.status));
    }
    if answer.status != case.status {
        return Err(format!(
            "status {} instead of {}; body {:?}",
            answer.status,
            case.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    if let Some((name, value)) = case.want_header {
        if answer.header(name) != Some(value) {
            return Err(format!(
                "header {name}: {:?} instead of {value:?}",
                answer.header(name)
            ));
        }
    }
    match &case.expect {
        Expect::Text {
            content_type,
            contains,
        } => {
            let got = answer.header("content-type").unwrap_or_default();
            if !got.starts_with(content_type) {
                return Err(format!("content-type {got:?}, not {content_type}"));
            }
            if !String::from_utf8_lossy(&answer.body).contains(contains) {
                return Err(format!("body lacks {contains:?}"));
            }
        }
        Expect::Protocol => {
            if !answer.body.is_empty() {
                return Err(format!(
                    "expected no body, got {:?}",
                    String::from_utf8_lossy(&answer.body)
                ));
            }
        }
        Expect::WsRefused { code, close } => {
            let (first, second) = (answer.frames.first(), answer.frames.get(1));
            let Some((0x1, text)) = first else {
                return Err(format!("first frame is not text: {:?}", answer.frames));
            };
            let frame: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
            ensure(
                keys_of(&frame) == set(&["type", "code", "message"]),
                &frame,
                "frame keys",
            )?;
            ensure(
                frame["type"] == "error" && frame["code"] == *code,
                &frame,
                "error frame",
            )?;
            let Some((0x8, payload)) = second else {
                return Err(format!("second frame is not close: {:?}", answer.frames));
            };
            let got = payload
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or_default();
            if got != *close {
                return Err(format!("close code {got} instead of {close}"));
            }
        }
        Expect::Granted => {
            // A HEAD answer has its headers and no body.
            let body: &[u8] = match case.request.method.as_str() {
                "HEAD" => b"",
                _ => br#"{"resumed":false}"#,
            };
            if answer.body != body {
                return Err(format!(
                    "a first grant answers {:?}, not {:?}",
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(&answer.body)
                ));
            }
            for (name, want) in [
                ("x-streamtoken-org", Some("dev")),
                ("x-streamtoken-token-type", Some("realtime")),
                ("x-streamtoken-jti", None),
                ("x-streamtoken-session-expires-at", None),
                ("x-streamtoken-ctx", None),
            ] {
                match (answer.header(name), want) {
                    (None, _) => return Err(format!("no {name} header")),
                    (Some(got), Some(want)) if got != want => {
                        return Err(format!("{name}: {got:?} instead of {want:?}"))
                    }
                    _ => {}
                }
            }
        }
        Expect::Denied { code, reason } => {
            if answer.header("x-streamtoken-error") != Some(code) {
                return Err(format!(
                    "x-streamtoken-error: {:?} instead of {code:?}",
                    answer.header("x-streamtoken-error")
                ));
            }
            let canonical = Expect::Canonical {
                code,
                reason: *reason,
            };
            check_json(&canonical, &json_body(answer)?)?;
        }
        Expect::WsBegins => {
            let Some((0x1, text)) = answer.frames.first() else {
                return Err(format!("first frame is not text: {:?}", answer.frames));
            };
            let frame: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
            ensure(frame["type"] == "session_begins", &frame, "session_begins")?;
        }
        in_json => check_json(in_json, &json_body(answer)?)?,
    }
    Ok(())
}

fn json_body(answer: &Answer) -> Result<Value, String> {
    if answer.header("content-type") != Some("application/json") {
        return Err(format!(
            "content-type {:?} instead of application/json",
            answer.header("content-type")
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&answer.body)
        )
    })
}

fn ensure(ok: bool, body: &Value, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {body}"))
    }
}

/// `body[outer]` is an object of exactly `fields` whose `field` is `value`: the error object
/// nested in the canonical, ElevenLabs and chat envelopes.
fn ensure_nested(
    body: &Value,
    outer: &str,
    fields: &[&str],
    (field, value): (&str, &str),
) -> Result<(), String> {
    ensure(
        keys_of(&body[outer]) == set(fields),
        body,
        &format!("{outer} keys"),
    )?;
    ensure(body[outer][field] == value, body, field)
}

/// The JSON body of a row whose route answers in JSON.
fn check_json(expect: &Expect, body: &Value) -> Result<(), String> {
    match expect {
        Expect::Canonical { code, reason } => {
            ensure(keys_of(body) == set(&["error"]), body, "envelope keys")?;
            ensure_nested(body, "error", &["code", "message"], ("code", code))?;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            ensure(!message.is_empty(), body, "empty message")?;
            if let Some(reason) = reason {
                ensure(
                    message.ends_with(&format!("({reason})")),
                    body,
                    &format!("message should name ({reason})"),
                )?;
            }
        }
        Expect::AssemblyAi { code, parameter } => {
            let keys = keys_of(body);
            ensure(
                keys.is_subset(&set(&["error", "code", "details"])),
                body,
                "keys",
            )?;
            ensure(body["error"].is_string(), body, "error is a string")?;
            ensure(body["code"] == *code, body, "code")?;
            match parameter {
                Some(p) => ensure(
                    body["details"] == json!({ "parameter": p }),
                    body,
                    "details",
                )?,
                None => ensure(!keys.contains("details"), body, "no details")?,
            }
        }
        Expect::ElevenLabs { status } => {
            ensure(keys_of(body) == set(&["detail"]), body, "keys")?;
            ensure_nested(body, "detail", &["status", "message"], ("status", status))?;
        }
        Expect::ElevenLabs422 { locs } => {
            ensure(keys_of(body) == set(&["detail"]), body, "keys")?;
            let problems = body["detail"].as_array().cloned().unwrap_or_default();
            let seen: Vec<&str> = problems
                .iter()
                .filter_map(|p| p["loc"][1].as_str())
                .collect();
            ensure(seen == *locs, body, "locations")?;
            for problem in &problems {
                let keys = keys_of(problem);
                ensure(
                    set(&["type", "loc", "msg", "input"]).is_subset(&keys)
                        && keys.is_subset(&set(&["type", "loc", "msg", "input", "ctx"])),
                    body,
                    "problem keys",
                )?;
                if let Some(input) = problem["input"].as_str() {
                    ensure(input.chars().count() <= 256, body, "input is capped")?;
                }
            }
        }
        Expect::StreamToken { code } => {
            let mut keys = vec!["error", "success"];
            if code.is_some() {
                keys.push("code");
            }
            ensure(keys_of(body) == set(&keys), body, "keys")?;
            ensure(body["success"] == false, body, "success false")?;
            ensure(body["error"].is_string(), body, "error is a string")?;
            if let Some(code) = code {
                ensure(body["code"] == *code, body, "code")?;
            }
        }
        Expect::Chat { code } => {
            ensure(keys_of(body) == set(&["success", "error"]), body, "keys")?;
            ensure(body["success"] == false, body, "success false")?;
            ensure_nested(body, "error", &["message", "code"], ("code", code))?;
        }
        Expect::Inactive { reason } => {
            ensure(body["active"] == false, body, "active false")?;
            ensure(body["reason"] == *reason, body, "reason")?;
            if *reason != "already_used" {
                ensure(keys_of(body) == set(&["active", "reason"]), body, "keys")?;
            }
        }
        Expect::Active => {
            ensure(
                keys_of(body) == set(&["active", "claims", "uses_remaining"]),
                body,
                "keys",
            )?;
            ensure(body["active"] == true, body, "active")?;
        }
        Expect::Fields(fields) => {
            ensure(keys_of(body) == set(fields), body, "fields")?;
            if fields.contains(&"success") {
                ensure(body["success"] == true, body, "success true")?;
            }
            if fields.contains(&"token") {
                ensure(is_compact_jws(&body["token"]), body, "token")?;
            }
        }
        other => unreachable!("{other:?} is not answered in JSON"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokens: minted by the server, or forged with the real secret
// ---------------------------------------------------------------------------------------------

fn token_body(token: &str) -> String {
    json!({ "token": token }).to_string()
}

/// A setup request that must succeed; returns the body.
fn setup_ok(address: &str, case: &Case) -> Vec<u8> {
    let answer = exchange(address, case).unwrap();
    let body = String::from_utf8_lossy(&answer.body);
    assert_eq!(answer.status, 200, "{}: {body}", case.what);
    answer.body
}

fn mint(address: &str, key: &str) -> String {
    let body = setup_ok(address, &case("setup: mint", "POST", MINT).bearer(key));
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["token"].as_str().unwrap().to_owned()
}

fn redeem(address: &str, key: &str, token: &str) {
    let redemption = case("setup: redeem", "POST", REDEEM).bearer(key);
    setup_ok(address, &redemption.json(token_body(token)));
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

const MINTED: &[&str] = &MINT_RESPONSE_FIELDS;
const REDEEMED: &[&str] = &REDEEM_RESPONSE_FIELDS;
const ASSEMBLYAI_OK: &[&str] = &["token", "expires_in_seconds"];
const TOKEN_ONLY: &[&str] = &["token"];
const STREAM_OK: &[&str] = &["success", "token", "ttl"];
const CHAT_OK: &[&str] = &["success", "token", "expires_in"];
const USAGE: &[&str] = &["org", "minted", "redeemed", "credits_remaining"];
const REVOKED: &[&str] = &["revoked", "sessions_closed"];
const SESSIONS: &[&str] = &["org", "sessions", "truncated"];

fn canonical(code: &'static str) -> Expect {
    Expect::Canonical { code, reason: None }
}

fn invalid_token(reason: &'static str) -> Expect {
    Expect::Canonical {
        code: "invalid_token",
        reason: Some(reason),
    }
}

fn assemblyai(code: &'static str, parameter: Option<&'static str>) -> Expect {
    Expect::AssemblyAi { code, parameter }
}

fn stream_token(code: Option<&'static str>) -> Expect {
    Expect::StreamToken { code }
}

fn chat(code: &'static str) -> Expect {
    Expect::Chat { code }
}

fn denied(code: &'static str) -> Expect {
    Expect::Denied { code, reason: None }
}

fn denied_token(reason: &'static str) -> Expect {
    Expect::Denied {
        code: "invalid_token",
        reason: Some(reason),
    }
}

fn ws_refused(code: &'static str, close: u16) -> Expect {
    Expect::WsRefused { code, close }
}

/// Keys the table uses: the dev key (mint + redeem), and org acme's mint-only and redeem-only.
struct Keys {
    dev: String,
    mint_only: String,
    redeem_only: String,
    /// The dev org's, with the `revoke` scope only.
    revoke_only: String,
}

/// What the token rows are built from.
struct Tokens {
    /// Fresh, never redeemed; each row that redeems one gets its own.
    fresh: Vec<String>,
    /// Already redeemed once.
    used: String,
}

/// `key` with its last character changed. That character carries only 4 bits, so it is always
/// replaced by a different one of the two well-formed values `A` and `E`, never by itself.
fn near_miss(key: &str) -> String {
    let (body, last) = key.split_at(key.len() - 1);
    let other = if last == "A" { "E" } else { "A" };
    format!("{body}{other}")
}

#[rustfmt::skip]
#[allow(clippy::vec_init_then_push)]
fn table(keys: &Keys, forge: &Forge, tokens: &mut Tokens) -> Vec<Case> {
    let Keys {
        dev,
        mint_only,
        redeem_only,
        revoke_only,
    } = keys;
    let dev = dev.as_str();
    let used = tokens.used.clone();
    let mut fresh = || tokens.fresh.pop().expect("enough fresh tokens");
    let long_key = format!("st_{}", "A".repeat(10 * 1024));
    let wrong_prefix = format!("sk_{}", &dev[3..]);
    let near_miss = near_miss(dev);
    assert_ne!(near_miss, dev, "the near miss must not be the key itself");
    let over_limit = " ".repeat(16 * 1024 + 1);

    // Tokens for the token rows.
    let good = forge.sign_claims(&forge.claims());
    let segments: Vec<&str> = good.split('.').collect();
    let (head_b64, payload_b64, signature_b64) = (segments[0], segments[1], segments[2]);
    let header_bytes = serde_json::to_vec(&forge.header()).unwrap();
    let claims_bytes = serde_json::to_vec(&forge.claims()).unwrap();
    let kid_10k = forge.with_header(json!({"alg": "HS256", "kid": "k".repeat(10 * 1024)}));
    let kid_4k = forge.with_header(json!({"alg": "HS256", "kid": "k".repeat(4 * 1024)}));
    let mega_token = "A".repeat(1024 * 1024);
    let other_secret = b"another-secret-that-is-certainly-long-enough";
    let other_key = forge_raw(&header_bytes, &claims_bytes, other_secret);
    let expired = forge.sign_claims(&forge.claims_with("exp", json!(now() - 3600)));
    let far_future = forge.sign_claims(&forge.claims_with("exp", json!(now() + 10 * 365 * 86400)));
    let none = format!(
        "{}.{payload_b64}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": forge.kid}).to_string())
    );
    let used_claims = claims_of(&used);
    let used_jti = used_claims["jti"].as_str().unwrap().to_owned();
    let respelled = |jti: String| {
        let mut claims = used_claims.clone();
        claims["jti"] = json!(jti);
        forge.sign_claims(&claims)
    };

    let mut t = Vec::new();

    // ---- POST /v1/tokens ---------------------------------------------------------------------
    t.push(case("mint: no body (control)", "POST", MINT).bearer(dev).expect(200, Expect::Fields(MINTED)));
    t.push(case("mint: no API key", "POST", MINT).expect(401, canonical("missing_api_key")));
    t.push(case("mint: empty Authorization", "POST", MINT).header("Authorization", "").expect(401, canonical("missing_api_key")));
    t.push(case("mint: Authorization 'Bearer' without a key", "POST", MINT).header("Authorization", "Bearer").expect(401, canonical("missing_api_key")));
    t.push(case("mint: Authorization that is not UTF-8", "POST", MINT).header("Authorization", b"Bearer \xff\xfe").expect(401, canonical("missing_api_key")));
    t.push(case("mint: 10 KB API key", "POST", MINT).bearer(&long_key).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: API key with the wrong prefix (sk_)", "POST", MINT).bearer(&wrong_prefix).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: API key with its last character changed", "POST", MINT).bearer(&near_miss).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: key under the Basic scheme", "POST", MINT).header("Authorization", format!("Basic {dev}")).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: key separated from Bearer by a tab", "POST", MINT).header("Authorization", format!("Bearer\t{dev}")).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: key followed by a second word", "POST", MINT).header("Authorization", format!("Bearer {dev} extra")).expect(401, canonical("invalid_api_key")));
    t.push(case("mint: xi-api-key not UTF-8 does not hide Authorization", "POST", MINT).header("xi-api-key", b"\xff").bearer(dev).expect(200, Expect::Fields(MINTED)));
    t.push(case("mint: redeem-only key", "POST", MINT).bearer(redeem_only).expect(403, canonical("forbidden")));
    t.push(case("mint: truncated JSON", "POST", MINT).bearer(dev).json(r#"{"uses":"#).expect(400, canonical("invalid_request")));
    t.push(case("mint: JSON followed by garbage", "POST", MINT).bearer(dev).json("{} x").expect(400, canonical("invalid_request")));
    t.push(case("mint: two JSON objects", "POST", MINT).bearer(dev).json("{}{}").expect(400, canonical("invalid_request")));
    t.push(case("mint: UTF-8 BOM before the object", "POST", MINT).bearer(dev).json(b"\xef\xbb\xbf{}").expect(400, canonical("invalid_request")));
    t.push(case("mint: invalid UTF-8 inside a JSON string", "POST", MINT).bearer(dev).json(b"{\"token_type\":\"\xff\"}").expect(400, canonical("invalid_request")));
    t.push(case("mint: raw NUL byte in the body", "POST", MINT).bearer(dev).json(b"{\x00}").expect(400, canonical("invalid_request")));
    t.push(case("mint: escaped NUL in token_type", "POST", MINT).bearer(dev).json(r#"{"token_type":"a\u0000"}"#).expect(400, canonical("invalid_request")));
    t.push(case("mint: 10 000 nested arrays (recursion limit)", "POST", MINT).bearer(dev).json(format!(r#"{{"ctx":{}}}"#, "[".repeat(10_000))).expect(400, canonical("invalid_request")));
    t.push(case("mint: a field given twice", "POST", MINT).bearer(dev).json(r#"{"uses":2,"uses":3}"#).expect(400, canonical("invalid_request")));
    t.push(case("mint: unknown field ttl is refused", "POST", MINT).bearer(dev).json(r#"{"ttl":60}"#).expect(400, canonical("invalid_request")));
    t.push(case("mint: unknown field next to valid ones is refused", "POST", MINT).bearer(dev).json(r#"{"ctx":{"a":"b"},"extra":null}"#).expect(400, canonical("invalid_request")));
    t.push(case("mint: text/plain", "POST", MINT).bearer(dev).header("Content-Type", "text/plain").body("{}").expect(415, canonical("unsupported_media_type")));
    t.push(case("mint: multipart/form-data", "POST", MINT).bearer(dev).header("Content-Type", "multipart/form-data; boundary=x").body("--x--").expect(415, canonical("unsupported_media_type")));
    t.push(case("mint: application/jsonp", "POST", MINT).bearer(dev).header("Content-Type", "application/jsonp").body("{}").expect(415, canonical("unsupported_media_type")));
    t.push(case("mint: content type that is not UTF-8", "POST", MINT).bearer(dev).header("Content-Type", b"application/json\xff").body("{}").expect(415, canonical("unsupported_media_type")));
    t.push(case("mint: form type with a form body is read as JSON and refused", "POST", MINT).bearer(dev).header("Content-Type", "application/x-www-form-urlencoded").body("uses=2").expect(400, canonical("invalid_request")));
    t.push(case("mint: application/vnd.api+json", "POST", MINT).bearer(dev).header("Content-Type", "application/vnd.api+json").body("{}").expect(200, Expect::Fields(MINTED)));
    t.push(case("mint: a gzip Content-Encoding is not inflated", "POST", MINT).bearer(dev).json(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xabV*-N-V\xb22\xaa\x05\x00\x8b\xb3\\~\n\x00\x00\x00").header("Content-Encoding", "gzip").expect(400, canonical("invalid_request")));
    t.push(case("mint: body of 16 KiB + 1 with Content-Length", "POST", MINT).bearer(dev).json(&over_limit).expect(413, canonical("payload_too_large")));
    t.push(case("mint: body of 20 KB, chunked (no Content-Length)", "POST", MINT).bearer(dev).json(" ".repeat(20_000)).chunked().expect(413, canonical("payload_too_large")));
    t.push(case("mint: small chunked body", "POST", MINT).bearer(dev).json("{}").chunked().expect(200, Expect::Fields(MINTED)));
    t.push(case("mint: Content-Length 16385 declared, 2 bytes sent", "POST", MINT).bearer(dev).header("Content-Type", "application/json").header("Content-Length", "16385").body("{}").expect(413, canonical("payload_too_large")));
    // Numbers and types only a strict JSON reader tells apart: each is a 400 invalid_request,
    // except the two that are valid (200).
    for (what, body, status) in [
        ("expires_in_seconds -0", r#"{"expires_in_seconds":-0}"#, 400),
        ("expires_in_seconds 1e400 (overflows f64)", r#"{"expires_in_seconds":1e400}"#, 400),
        ("expires_in_seconds 3600.0000001", r#"{"expires_in_seconds":3600.0000001}"#, 400),
        ("expires_in_seconds 3.6e3 is the integer 3600", r#"{"expires_in_seconds":3.6e3}"#, 200),
        ("expires_in_seconds below i64::MIN", r#"{"expires_in_seconds":-9223372036854775809}"#, 400),
        ("uses u64::MAX + 1", r#"{"uses":18446744073709551616}"#, 400),
        ("uses u64::MAX", r#"{"uses":18446744073709551615}"#, 400),
        ("uses as a string", r#"{"uses":"2"}"#, 400),
        ("uses as a boolean", r#"{"uses":true}"#, 400),
        ("uses as an array", r#"{"uses":[2]}"#, 400),
        ("uses null is the default (nullable in the spec)", r#"{"uses":null}"#, 200),
        ("max_session_duration_seconds 86400.5", r#"{"max_session_duration_seconds":86400.5}"#, 400),
        ("NaN is not JSON", r#"{"uses":NaN}"#, 400),
        ("Infinity is not JSON", r#"{"expires_in_seconds":Infinity}"#, 400),
        ("ctx as an array", r#"{"ctx":["a"]}"#, 400),
        ("token_type with a non-ASCII letter", r#"{"token_type":"réaltime"}"#, 400),
    ] {
        let expect = if status == 200 { Expect::Fields(MINTED) } else { canonical("invalid_request") };
        t.push(case(format!("mint: {what}"), "POST", MINT).bearer(dev).json(body).expect(status, expect));
    }
    t.push(case("mint: a query string is ignored, even a broken one", "POST", b"/v1/tokens?expires_in_seconds=%ZZ&%FF").bearer(dev).expect(200, Expect::Fields(MINTED)));
    t.push(case("mint: PATCH", "PATCH", MINT).bearer(dev).expect(405, canonical("method_not_allowed")).with_response_header("allow", "POST"));
    t.push(case("mint: trailing slash is another route", "POST", "/v1/tokens/").bearer(dev).expect(404, canonical("not_found")));

    // ---- POST /v1/tokens/redeem ---------------------------------------------------------------
    t.push(case("redeem: a minted token (control)", "POST", REDEEM).bearer(dev).json(token_body(&fresh())).expect(200, Expect::Fields(REDEEMED)));
    t.push(case("redeem: a token forged with the real key (control)", "POST", REDEEM).bearer(dev).json(token_body(&good)).expect(200, Expect::Fields(REDEEMED)));
    t.push(case("redeem: exp exactly 3600 s ahead is within the bound", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(now() + 3600))))).expect(200, Expect::Fields(REDEEMED)));
    t.push(case("redeem: an unknown extra claim is ignored", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("admin", json!(true))))).expect(200, Expect::Fields(REDEEMED)));
    t.push(case("redeem: a used token", "POST", REDEEM).bearer(dev).json(token_body(&used)).expect(409, canonical("token_already_used")));
    t.push(case("redeem: a used token's jti in upper case", "POST", REDEEM).bearer(dev).json(token_body(&respelled(used_jti.to_uppercase()))).expect(409, canonical("token_already_used")));
    t.push(case("redeem: a used token's jti in braces", "POST", REDEEM).bearer(dev).json(token_body(&respelled(format!("{{{used_jti}}}")))).expect(409, canonical("token_already_used")));
    t.push(case("redeem: a used token's jti as a URN", "POST", REDEEM).bearer(dev).json(token_body(&respelled(format!("urn:uuid:{used_jti}")))).expect(409, canonical("token_already_used")));
    t.push(case("redeem: a used token's jti without hyphens", "POST", REDEEM).bearer(dev).json(token_body(&respelled(used_jti.replace('-', "")))).expect(409, canonical("token_already_used")));
    t.push(case("redeem: no API key", "POST", REDEEM).json(token_body(&good)).expect(401, canonical("missing_api_key")));
    t.push(case("redeem: 10 KB API key", "POST", REDEEM).bearer(&long_key).json(token_body(&good)).expect(401, canonical("invalid_api_key")));
    t.push(case("redeem: mint-only key", "POST", REDEEM).bearer(mint_only).json(token_body(&good)).expect(403, canonical("forbidden")));
    t.push(case("redeem: no body", "POST", REDEEM).bearer(dev).expect(400, canonical("invalid_request")));
    t.push(case("redeem: empty object", "POST", REDEEM).bearer(dev).json("{}").expect(400, canonical("invalid_request")));
    t.push(case("redeem: token null", "POST", REDEEM).bearer(dev).json(r#"{"token":null}"#).expect(400, canonical("invalid_request")));
    t.push(case("redeem: token as a number", "POST", REDEEM).bearer(dev).json(r#"{"token":123}"#).expect(400, canonical("invalid_request")));
    t.push(case("redeem: unknown field next to token", "POST", REDEEM).bearer(dev).json(r#"{"token":"a.b.c","extra":1}"#).expect(400, canonical("invalid_request")));
    t.push(case("redeem: malformed JSON", "POST", REDEEM).bearer(dev).json(r#"{"token":"#).expect(400, canonical("invalid_request")));
    t.push(case("redeem: text/plain", "POST", REDEEM).bearer(dev).header("Content-Type", "text/plain").body(token_body(&good)).expect(415, canonical("unsupported_media_type")));
    t.push(case("redeem: token empty", "POST", REDEEM).bearer(dev).json(token_body("")).expect(401, invalid_token("malformed")));
    t.push(case("redeem: 1 MB token (body limit)", "POST", REDEEM).bearer(dev).json(token_body(&mega_token)).expect(413, canonical("payload_too_large")));
    t.push(case("redeem: 9000-character token", "POST", REDEEM).bearer(dev).json(token_body(&"A".repeat(9000))).expect(400, canonical("invalid_request")));
    t.push(case("redeem: two segments", "POST", REDEEM).bearer(dev).json(token_body(&format!("{head_b64}.{payload_b64}"))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: four segments", "POST", REDEEM).bearer(dev).json(token_body(&format!("{good}.{signature_b64}"))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: three empty segments", "POST", REDEEM).bearer(dev).json(token_body("..")).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header not base64url", "POST", REDEEM).bearer(dev).json(token_body(&format!("%%%.{payload_b64}.{signature_b64}"))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header in padded base64", "POST", REDEEM).bearer(dev).json(token_body(&forge.padded_header_token())).expect(401, invalid_token("malformed")));
    t.push(case("redeem: signature in standard (+/) base64", "POST", REDEEM).bearer(dev).json(token_body(&format!("{head_b64}.{payload_b64}.+/{}", &signature_b64[2..]))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header not JSON (validly signed)", "POST", REDEEM).bearer(dev).json(token_body(&forge_raw(b"{\"alg\":\"HS256\",", &claims_bytes, &forge.secret))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header a JSON array (validly signed)", "POST", REDEEM).bearer(dev).json(token_body(&forge_raw(b"[\"HS256\"]", &claims_bytes, &forge.secret))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header without alg", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"typ": "JWT", "kid": forge.kid})))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: header with alg twice (none, then HS256)", "POST", REDEEM).bearer(dev).json(token_body(&forge_raw(format!(r#"{{"alg":"none","alg":"HS256","kid":"{}"}}"#, forge.kid).as_bytes(), &claims_bytes, &forge.secret))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: claims not JSON (validly signed)", "POST", REDEEM).bearer(dev).json(token_body(&forge_raw(&header_bytes, b"{\"iss\":", &forge.secret))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: claims a JSON array (validly signed)", "POST", REDEEM).bearer(dev).json(token_body(&forge_raw(&header_bytes, b"[1,2,3]", &forge.secret))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: alg none, empty signature", "POST", REDEEM).bearer(dev).json(token_body(&none)).expect(401, invalid_token("algorithm_not_allowed")));
    t.push(case("redeem: alg HS384 signed with the real key", "POST", REDEEM).bearer(dev).json(token_body(&forge.jsonwebtoken(&forge.claims(), Algorithm::HS384))).expect(401, invalid_token("algorithm_not_allowed")));
    t.push(case("redeem: alg RS256 header", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "RS256", "typ": "JWT", "kid": forge.kid})))).expect(401, invalid_token("algorithm_not_allowed")));
    t.push(case("redeem: alg ES256 header", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "ES256", "typ": "JWT", "kid": forge.kid})))).expect(401, invalid_token("algorithm_not_allowed")));
    t.push(case("redeem: alg hs256 in lower case", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "hs256", "kid": forge.kid})))).expect(401, invalid_token("algorithm_not_allowed")));
    t.push(case("redeem: kid missing", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "typ": "JWT"})))).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid null", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": null})))).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid a number", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": 7})))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: kid unknown", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": "nope"})))).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid ../../etc/passwd", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": "../../etc/passwd"})))).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid of the active key with a path prefix", "POST", REDEEM).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": format!("signing/{}", forge.kid)})))).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid of 4 KB (token under 8 KiB)", "POST", REDEEM).bearer(dev).json(token_body(&kid_4k)).expect(401, invalid_token("unknown_kid")));
    t.push(case("redeem: kid of 10 KB (token over 8 KiB)", "POST", REDEEM).bearer(dev).json(token_body(&kid_10k)).expect(400, canonical("invalid_request")));
    t.push(case("redeem: exp missing", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", Value::Null)))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp a string", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!((now() + 60).to_string()))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp a float", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(now() as f64 + 60.5))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp negative", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(-1))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp i64::MIN", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(i64::MIN))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp u64::MAX", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(u64::MAX))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: exp 0", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(0))))).expect(401, Expect::Canonical { code: "token_expired", reason: Some("expired") }));
    t.push(case("redeem: exp an hour past", "POST", REDEEM).bearer(dev).json(token_body(&expired)).expect(401, Expect::Canonical { code: "token_expired", reason: Some("expired") }));
    t.push(case("redeem: exp ten years ahead", "POST", REDEEM).bearer(dev).json(token_body(&far_future)).expect(401, invalid_token("excessive_lifetime")));
    t.push(case("redeem: exp 3700 s ahead (beyond 3600 + leeway)", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(now() + 3700))))).expect(401, invalid_token("excessive_lifetime")));
    t.push(case("redeem: exp i64::MAX", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("exp", json!(i64::MAX))))).expect(401, invalid_token("excessive_lifetime")));
    t.push(case("redeem: wrong iss", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("iss", json!("someone-else"))))).expect(401, invalid_token("wrong_issuer")));
    t.push(case("redeem: iss missing", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("iss", Value::Null)))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: wrong aud", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("aud", json!("another-gateway"))))).expect(401, invalid_token("wrong_audience")));
    t.push(case("redeem: aud as a list holding the right audience", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("aud", json!(["streamtoken-gateway"]))))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: one bit flipped in the payload", "POST", REDEEM).bearer(dev).json(token_body(&flip_bit(&good, 1))).expect(401, invalid_token("bad_signature")));
    t.push(case("redeem: one bit flipped in the signature", "POST", REDEEM).bearer(dev).json(token_body(&flip_bit(&good, 2))).expect(401, invalid_token("bad_signature")));
    t.push(case("redeem: one bit flipped in the header", "POST", REDEEM).bearer(dev).json(token_body(&flip_bit(&good, 0))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: signed by another key under the active kid", "POST", REDEEM).bearer(dev).json(token_body(&other_key)).expect(401, invalid_token("bad_signature")));
    t.push(case("redeem: jti missing", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("jti", Value::Null)))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: org missing", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("org", Value::Null)))).expect(401, invalid_token("malformed")));
    t.push(case("redeem: ctx with a number value", "POST", REDEEM).bearer(dev).json(token_body(&forge.sign_claims(&forge.claims_with("ctx", json!({"n": 1}))))).expect(401, invalid_token("malformed")));
    let acme_token = || forge.sign_claims(&forge.claims_with("org", json!("acme")));
    t.push(case("redeem: another org's token, by an org-bound key", "POST", REDEEM).bearer(dev).json(token_body(&acme_token())).expect(403, canonical("wrong_org")));

    // ---- POST /v1/tokens/introspect -----------------------------------------------------------
    t.push(case("introspect: a fresh token (control)", "POST", INTROSPECT).bearer(dev).json(token_body(&fresh())).expect(200, Expect::Active));
    t.push(case("introspect: a used token", "POST", INTROSPECT).bearer(dev).json(token_body(&used)).expect(200, Expect::Inactive { reason: "already_used" }));
    t.push(case("introspect: another org's token, by an org-bound key", "POST", INTROSPECT).bearer(dev).json(token_body(&acme_token())).expect(403, canonical("wrong_org")));
    t.push(case("introspect: token empty", "POST", INTROSPECT).bearer(dev).json(token_body("")).expect(200, Expect::Inactive { reason: "malformed" }));
    t.push(case("introspect: 1 MB token (body limit)", "POST", INTROSPECT).bearer(dev).json(token_body(&mega_token)).expect(413, canonical("payload_too_large")));
    t.push(case("introspect: four segments", "POST", INTROSPECT).bearer(dev).json(token_body(&format!("{good}.x"))).expect(200, Expect::Inactive { reason: "malformed" }));
    t.push(case("introspect: alg none", "POST", INTROSPECT).bearer(dev).json(token_body(&none)).expect(200, Expect::Inactive { reason: "algorithm_not_allowed" }));
    t.push(case("introspect: alg ES256", "POST", INTROSPECT).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "ES256", "kid": forge.kid})))).expect(200, Expect::Inactive { reason: "algorithm_not_allowed" }));
    t.push(case("introspect: kid ../../etc/passwd", "POST", INTROSPECT).bearer(dev).json(token_body(&forge.with_header(json!({"alg": "HS256", "kid": "../../etc/passwd"})))).expect(200, Expect::Inactive { reason: "unknown_kid" }));
    t.push(case("introspect: kid of 10 KB", "POST", INTROSPECT).bearer(dev).json(token_body(&kid_10k)).expect(400, canonical("invalid_request")));
    t.push(case("introspect: exp ten years ahead", "POST", INTROSPECT).bearer(dev).json(token_body(&far_future)).expect(200, Expect::Inactive { reason: "excessive_lifetime" }));
    t.push(case("introspect: expired", "POST", INTROSPECT).bearer(dev).json(token_body(&expired)).expect(200, Expect::Inactive { reason: "expired" }));
    t.push(case("introspect: one bit flipped in the signature", "POST", INTROSPECT).bearer(dev).json(token_body(&flip_bit(&good, 2))).expect(200, Expect::Inactive { reason: "bad_signature" }));
    t.push(case("introspect: invalid JSON in the claims", "POST", INTROSPECT).bearer(dev).json(token_body(&forge_raw(&header_bytes, b"{", &forge.secret))).expect(200, Expect::Inactive { reason: "malformed" }));
    t.push(case("introspect: no API key", "POST", INTROSPECT).json(token_body(&good)).expect(401, canonical("missing_api_key")));
    t.push(case("introspect: mint-only key", "POST", INTROSPECT).bearer(mint_only).json(token_body(&good)).expect(403, canonical("forbidden")));
    t.push(case("introspect: unknown field", "POST", INTROSPECT).bearer(dev).json(r#"{"token":"x","consume":true}"#).expect(400, canonical("invalid_request")));

    // ---- POST /v1/tokens/revoke ---------------------------------------------------------------
    // Never the dev org as a whole: the other rows' tokens must stay good.
    let jti_of = |token: &str| claims_of(token)["jti"].as_str().unwrap().to_owned();
    t.push(case("revoke: a fresh token (control)", "POST", REVOKE).bearer(revoke_only).json(token_body(&fresh())).expect(200, Expect::Fields(REVOKED)));
    t.push(case("revoke: a jti of the key's org (control)", "POST", REVOKE).bearer(revoke_only).json(json!({ "jti": jti_of(&fresh()) }).to_string()).expect(200, Expect::Fields(REVOKED)));
    t.push(case("revoke: an expired token still names its sessions", "POST", REVOKE).bearer(revoke_only).json(token_body(&expired)).expect(200, Expect::Fields(REVOKED)));
    t.push(case("revoke: none of token, jti, org", "POST", REVOKE).bearer(revoke_only).json("{}").expect(400, canonical("invalid_request")));
    t.push(case("revoke: no body", "POST", REVOKE).bearer(revoke_only).expect(400, canonical("invalid_request")));
    t.push(case("revoke: token and jti", "POST", REVOKE).bearer(revoke_only).json(json!({ "token": good, "jti": Uuid::new_v4() }).to_string()).expect(400, canonical("invalid_request")));
    t.push(case("revoke: token and org", "POST", REVOKE).bearer(revoke_only).json(json!({ "token": good, "org": "dev" }).to_string()).expect(400, canonical("invalid_request")));
    t.push(case("revoke: jti that is not a UUID", "POST", REVOKE).bearer(revoke_only).json(r#"{"jti":"not-a-uuid"}"#).expect(400, canonical("invalid_request")));
    t.push(case("revoke: jti that is a number", "POST", REVOKE).bearer(revoke_only).json(r#"{"jti":7}"#).expect(400, canonical("invalid_request")));
    t.push(case("revoke: jti null", "POST", REVOKE).bearer(revoke_only).json(r#"{"jti":null}"#).expect(400, canonical("invalid_request")));
    t.push(case("revoke: org outside its rule", "POST", REVOKE).bearer(revoke_only).json(r#"{"org":"a b"}"#).expect(400, canonical("invalid_request")));
    t.push(case("revoke: org of 65 characters", "POST", REVOKE).bearer(revoke_only).json(json!({ "org": "o".repeat(65) }).to_string()).expect(400, canonical("invalid_request")));
    t.push(case("revoke: unknown field", "POST", REVOKE).bearer(revoke_only).json(r#"{"org":"dev","all":true}"#).expect(400, canonical("invalid_request")));
    t.push(case("revoke: another org, by an org-bound key", "POST", REVOKE).bearer(revoke_only).json(r#"{"org":"acme"}"#).expect(403, canonical("wrong_org")));
    t.push(case("revoke: an unknown org, by an org-bound key", "POST", REVOKE).bearer(revoke_only).json(r#"{"org":"nobody-here"}"#).expect(403, canonical("wrong_org")));
    t.push(case("revoke: a jti of another org, by an org-bound key", "POST", REVOKE).bearer(revoke_only).json(json!({ "jti": Uuid::new_v4(), "org": "acme" }).to_string()).expect(403, canonical("wrong_org")));
    t.push(case("revoke: another org's token, by an org-bound key", "POST", REVOKE).bearer(revoke_only).json(token_body(&acme_token())).expect(403, canonical("wrong_org")));
    t.push(case("revoke: a token whose signature does not verify", "POST", REVOKE).bearer(revoke_only).json(token_body(&flip_bit(&good, 2))).expect(401, canonical("invalid_token")));
    t.push(case("revoke: an empty token", "POST", REVOKE).bearer(revoke_only).json(token_body("")).expect(401, canonical("invalid_token")));
    t.push(case("revoke: 1 MB token (body limit)", "POST", REVOKE).bearer(revoke_only).json(token_body(&mega_token)).expect(413, canonical("payload_too_large")));
    t.push(case("revoke: no API key", "POST", REVOKE).json(token_body(&good)).expect(401, canonical("missing_api_key")));
    t.push(case("revoke: a key without the revoke scope", "POST", REVOKE).bearer(dev).json(token_body(&good)).expect(403, canonical("forbidden")));
    t.push(case("revoke: text/plain", "POST", REVOKE).bearer(revoke_only).header("Content-Type", "text/plain").body("{}").expect(415, canonical("unsupported_media_type")));
    t.push(case("revoke: GET", "GET", REVOKE).bearer(revoke_only).expect(405, canonical("method_not_allowed")).with_response_header("allow", "POST"));

    // ---- GET /v1/stream -----------------------------------------------------------------------
    t.push(case("stream: plain GET is not a handshake", "GET", "/v1/stream").expect(400, canonical("invalid_request")));
    t.push(case("stream: plain GET with a token burns nothing", "GET", format!("/v1/stream?token={}", fresh())).expect(400, canonical("invalid_request")));
    t.push(case("stream: handshake without Sec-WebSocket-Key", "GET", format!("/v1/stream?token={good}")).header("Upgrade", "websocket").header("Connection", "Upgrade").header("Sec-WebSocket-Version", "13").expect(400, canonical("invalid_request")));
    t.push(case("stream: POST", "POST", "/v1/stream").expect(405, canonical("method_not_allowed")));
    t.push(case("stream: handshake with a fresh token (control)", "GET", format!("/v1/stream?token={}", fresh())).websocket().expect(101, Expect::WsBegins));
    t.push(case("stream: a fresh token in Authorization: Token", "GET", "/v1/stream").header("Authorization", format!("Token {}", fresh())).websocket().expect(101, Expect::WsBegins));
    t.push(case("stream: a fresh token bare in Authorization (the AssemblyAI SDK's form)", "GET", "/v1/stream").header("Authorization", fresh()).websocket().expect(101, Expect::WsBegins));
    t.push(case("stream: Basic credentials in Authorization are not a token", "GET", "/v1/stream").header("Authorization", "Basic dXNlcjpwYXNz").websocket().expect(101, ws_refused("missing_token", 4001)));
    t.push(case("stream: an API key bare in Authorization is not a token", "GET", "/v1/stream").header("Authorization", dev).websocket().expect(101, ws_refused("missing_token", 4001)));
    t.push(case("stream: two JWS-shaped words in Authorization are not a token", "GET", "/v1/stream").header("Authorization", format!("{good} {good}")).websocket().expect(101, ws_refused("missing_token", 4001)));
    t.push(case("stream: handshake with an empty token", "GET", "/v1/stream?token=").websocket().expect(101, ws_refused("missing_token", 4001)));
    t.push(case("stream: handshake with a used token", "GET", format!("/v1/stream?token={used}")).websocket().expect(101, ws_refused("token_already_used", 4003)));
    t.push(case("stream: handshake with an expired token", "GET", format!("/v1/stream?token={expired}")).websocket().expect(101, ws_refused("token_expired", 4002)));
    t.push(case("stream: handshake with alg none", "GET", format!("/v1/stream?token={none}")).websocket().expect(101, ws_refused("invalid_token", 4001)));
    t.push(case("stream: handshake with a 10 KB kid", "GET", format!("/v1/stream?token={kid_10k}")).websocket().expect(101, ws_refused("invalid_token", 4001)));
    t.push(case("stream: handshake with exp ten years ahead", "GET", format!("/v1/stream?token={far_future}")).websocket().expect(101, ws_refused("invalid_token", 4001)));
    t.push(case("stream: handshake with token=%FF", "GET", "/v1/stream?token=%FF").websocket().expect(101, ws_refused("invalid_token", 4001)));
    let chat_token = forge.sign_claims(&forge.claims_with("token_type", json!("chat")));
    t.push(case("stream: handshake with a token type the stream does not admit", "GET", format!("/v1/stream?token={chat_token}")).websocket().expect(101, ws_refused("wrong_token_type", 4001)));
    t.push(case("stream: handshake with token given twice", "GET", format!("/v1/stream?token={good}&token={good}")).websocket().expect(101, ws_refused("missing_token", 4001)));
    t.push(case("stream: handshake with max_session_duration_seconds u32::MAX (forged, outside what we mint)", "GET", format!("/v1/stream?token={}", forge.sign_claims(&forge.claims_with("max_session_duration_seconds", json!(u32::MAX))))).websocket().expect(101, Expect::WsRefused { code: "invalid_token", close: 4001 }));

    // ---- /v1/forward-auth (any method) ---------------------------------------------------------
    let fwd = |what: &str, method: &str| case(format!("forward-auth: {what}"), method, FORWARD_AUTH).header("X-Streamtoken-Api-Key", dev);
    let original = |token: &str| format!("/ws/echo?lang=en&token={token}");
    t.push(fwd("a fresh token in X-Original-URI (control)", "GET").header("X-Original-URI", original(&fresh())).expect(200, Expect::Granted));
    t.push(fwd("a fresh token in X-Forwarded-Uri (Caddy, Traefik)", "GET").header("X-Forwarded-Uri", original(&fresh())).expect(200, Expect::Granted));
    t.push(fwd("a fresh token in Authorization: Bearer", "GET").bearer(&fresh()).expect(200, Expect::Granted));
    t.push(fwd("a fresh token in Authorization: Token", "GET").header("Authorization", format!("Token {}", fresh())).expect(200, Expect::Granted));
    t.push(fwd("a fresh token bare in Authorization", "GET").header("Authorization", fresh()).expect(200, Expect::Granted));
    t.push(fwd("a fresh token in the bearer subprotocol", "GET").header("Sec-WebSocket-Protocol", format!("bearer, {}", fresh())).expect(200, Expect::Granted));
    t.push(fwd("POST with a body, which is not read", "POST").header("X-Original-URI", original(&fresh())).json(r#"{"token":"not this"}"#).expect(200, Expect::Granted));
    t.push(fwd("HEAD", "HEAD").header("X-Original-URI", original(&fresh())).expect(200, Expect::Granted));
    t.push(fwd("an extension method", "BREW").header("X-Original-URI", original(&fresh())).expect(200, Expect::Granted));
    t.push(case("forward-auth: no API key", "GET", FORWARD_AUTH).header("X-Original-URI", original(&good)).expect(401, denied("missing_api_key")));
    t.push(case("forward-auth: the key in Authorization is the client's token, not a key", "GET", FORWARD_AUTH).bearer(dev).header("X-Original-URI", original(&good)).expect(401, denied("missing_api_key")));
    t.push(case("forward-auth: an empty X-Streamtoken-Api-Key", "GET", FORWARD_AUTH).header("X-Streamtoken-Api-Key", " ").expect(401, denied("missing_api_key")));
    t.push(case("forward-auth: an unknown key", "GET", FORWARD_AUTH).header("X-Streamtoken-Api-Key", &near_miss).expect(401, denied("invalid_api_key")));
    t.push(case("forward-auth: a 10 KB key", "GET", FORWARD_AUTH).header("X-Streamtoken-Api-Key", &long_key).expect(401, denied("invalid_api_key")));
    t.push(case("forward-auth: a key that is not UTF-8", "GET", FORWARD_AUTH).header("X-Streamtoken-Api-Key", b"st_\xff\xfe").expect(401, denied("missing_api_key")));
    t.push(case("forward-auth: a mint-only key", "GET", FORWARD_AUTH).header("X-Streamtoken-Api-Key", mint_only).header("X-Original-URI", original(&good)).expect(403, denied("forbidden")));
    t.push(fwd("no token anywhere", "GET").expect(401, denied("missing_token")));
    t.push(fwd("an original URI without a query", "GET").header("X-Original-URI", "/ws/echo").expect(401, denied("missing_token")));
    t.push(fwd("the token given twice in the original URI", "GET").header("X-Original-URI", format!("/ws/echo?token={good}&token={good}")).expect(401, denied("missing_token")));
    t.push(case("forward-auth: a token in forward-auth's own query is not the client's", "GET", format!("{FORWARD_AUTH}?token={good}")).header("X-Streamtoken-Api-Key", dev).expect(401, denied("missing_token")));
    t.push(fwd("token=%FF in the original URI", "GET").header("X-Original-URI", "/ws/echo?token=%FF").expect(401, denied_token("malformed")));
    t.push(fwd("raw non-UTF-8 bytes in the original URI", "GET").header("X-Original-URI", b"/ws/\xff?\xfe=\xfd").expect(401, denied("missing_token")));
    t.push(fwd("Basic credentials in Authorization are not a token", "GET").header("Authorization", "Basic dXNlcjpwYXNz").expect(401, denied("missing_token")));
    t.push(fwd("a used token (401, not redeem's 409: nginx passes only 401 and 403)", "GET").header("X-Original-URI", original(&used)).expect(401, Expect::Denied { code: "token_already_used", reason: Some("already_used") }));
    t.push(fwd("an expired token", "GET").header("X-Original-URI", original(&expired)).expect(401, Expect::Denied { code: "token_expired", reason: Some("expired") }));
    t.push(fwd("alg none", "GET").header("X-Original-URI", original(&none)).expect(401, denied_token("algorithm_not_allowed")));
    t.push(fwd("a token over 8 KiB (10 KB kid)", "GET").header("X-Original-URI", original(&kid_10k)).expect(401, denied_token("malformed")));
    t.push(fwd("exp ten years ahead", "GET").header("X-Original-URI", original(&far_future)).expect(401, denied_token("excessive_lifetime")));
    t.push(fwd("one bit flipped in the signature", "GET").header("X-Original-URI", original(&flip_bit(&good, 2))).expect(401, denied_token("bad_signature")));
    t.push(fwd("a token type the stream does not admit", "GET").header("X-Original-URI", original(&chat_token)).expect(403, denied("wrong_token_type")));
    t.push(fwd("another org's token, by an org-bound key", "GET").header("X-Original-URI", original(&acme_token())).expect(403, denied("wrong_org")));
    let mut acme_chat = forge.claims_with("org", json!("acme"));
    acme_chat["token_type"] = json!("chat");
    let acme_chat = forge.sign_claims(&acme_chat);
    t.push(fwd("another org's token of another type: the org is judged first", "GET").header("X-Original-URI", original(&acme_chat)).expect(403, denied("wrong_org")));

    // ---- GET /v1/usage ------------------------------------------------------------------------
    t.push(case("usage: dev key (control)", "GET", "/v1/usage").bearer(dev).expect(200, Expect::Fields(USAGE)));
    t.push(case("usage: mint-only key is enough", "GET", "/v1/usage").bearer(mint_only).expect(200, Expect::Fields(USAGE)));
    t.push(case("usage: no API key", "GET", "/v1/usage").expect(401, canonical("missing_api_key")));
    t.push(case("usage: 10 KB API key in xi-api-key", "GET", "/v1/usage").header("xi-api-key", &long_key).expect(401, canonical("invalid_api_key")));
    t.push(case("usage: broken escapes in the query are ignored", "GET", "/v1/usage?x=%ZZ&%FF=1").bearer(dev).expect(200, Expect::Fields(USAGE)));
    t.push(case("usage: another org's, by an org-bound key", "GET", "/v1/usage?org=acme").bearer(dev).expect(403, canonical("wrong_org")));
    t.push(case("usage: an org named with a broken escape is another org", "GET", "/v1/usage?org=%ZZ").bearer(dev).expect(403, canonical("wrong_org")));
    t.push(case("usage: org given twice", "GET", "/v1/usage?org=dev&org=dev").bearer(dev).expect(400, canonical("invalid_request")));
    t.push(case("usage: POST", "POST", "/v1/usage").bearer(dev).expect(405, canonical("method_not_allowed")).with_response_header("allow", "GET"));

    // ---- GET /v1/sessions ----------------------------------------------------------------------
    t.push(case("sessions: dev key (control)", "GET", "/v1/sessions").bearer(dev).expect(200, Expect::Fields(SESSIONS)));
    t.push(case("sessions: mint-only key is enough", "GET", "/v1/sessions").bearer(mint_only).expect(200, Expect::Fields(SESSIONS)));
    t.push(case("sessions: no API key", "GET", "/v1/sessions").expect(401, canonical("missing_api_key")));
    t.push(case("sessions: another org's, by an org-bound key", "GET", "/v1/sessions?org=acme").bearer(dev).expect(403, canonical("wrong_org")));
    t.push(case("sessions: org given twice", "GET", "/v1/sessions?org=dev&org=dev").bearer(dev).expect(400, canonical("invalid_request")));
    t.push(case("sessions: broken escapes in the query are ignored", "GET", "/v1/sessions?x=%ZZ").bearer(dev).expect(200, Expect::Fields(SESSIONS)));
    t.push(case("sessions: DELETE", "DELETE", "/v1/sessions").bearer(dev).expect(405, canonical("method_not_allowed")).with_response_header("allow", "GET"));

    // ---- GET /v3/token (AssemblyAI) -----------------------------------------------------------
    let aai = |query: &str| format!("{ASSEMBLYAI}?{query}");
    let bad_expires = assemblyai("invalid_request", Some("expires_in_seconds"));
    t.push(case("assemblyai: expires_in_seconds=60 (control)", "GET", aai("expires_in_seconds=60")).bearer(dev).expect(200, Expect::Fields(ASSEMBLYAI_OK)));
    t.push(case("assemblyai: percent-encoded digits %36%30", "GET", aai("expires_in_seconds=%36%30")).bearer(dev).expect(200, Expect::Fields(ASSEMBLYAI_OK)));
    t.push(case("assemblyai: expires_in_seconds missing", "GET", ASSEMBLYAI).bearer(dev).expect(400, bad_expires.clone()));
    for (value, what) in [
        ("0", "0"),
        ("601", "601"),
        ("-5", "negative"),
        ("1.5", "fractional"),
        ("1e2", "exponent"),
        ("99999999999999999999", "overflowing u64"),
        ("abc", "non-numeric"),
        ("", "empty"),
        ("%ZZ", "a broken escape"),
        ("%FF", "an escape that is not UTF-8"),
        ("6%000", "an escaped NUL"),
        ("+60", "a plus (a space once decoded)"),
        ("%D9%A6%D9%A0", "Arabic-Indic digits"),
        ("60&expires_in_seconds=60", "repeated"),
    ] {
        t.push(case(format!("assemblyai: expires_in_seconds {what}"), "GET", aai(&format!("expires_in_seconds={value}"))).bearer(dev).expect(400, bad_expires.clone()));
    }
    t.push(case("assemblyai: max_session_duration_seconds 59", "GET", aai("expires_in_seconds=60&max_session_duration_seconds=59")).bearer(dev).expect(400, assemblyai("invalid_request", Some("max_session_duration_seconds"))));
    t.push(case("assemblyai: max_session_duration_seconds 10801", "GET", aai("expires_in_seconds=60&max_session_duration_seconds=10801")).bearer(dev).expect(400, assemblyai("invalid_request", Some("max_session_duration_seconds"))));
    t.push(case("assemblyai: an unknown parameter is ignored", "GET", aai("expires_in_seconds=60&sample_rate=16000")).bearer(dev).expect(200, Expect::Fields(ASSEMBLYAI_OK)));
    t.push(case("assemblyai: no API key", "GET", aai("expires_in_seconds=60")).expect(401, assemblyai("missing_api_key", None)));
    t.push(case("assemblyai: wrong-prefix key", "GET", aai("expires_in_seconds=60")).header("Authorization", &wrong_prefix).expect(401, assemblyai("invalid_api_key", None)));
    t.push(case("assemblyai: redeem-only key", "GET", aai("expires_in_seconds=60")).bearer(redeem_only).expect(403, assemblyai("forbidden", None)));
    t.push(case("assemblyai: POST", "POST", aai("expires_in_seconds=60")).bearer(dev).expect(405, assemblyai("method_not_allowed", None)).with_response_header("allow", "GET"));

    // ---- POST /v1/single-use-token/{token_type} (ElevenLabs) ----------------------------------
    t.push(case("elevenlabs: realtime_scribe with xi-api-key (control)", "POST", ELEVENLABS_SCRIBE).header("xi-api-key", dev).expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("elevenlabs: tts_websocket with Bearer", "POST", ELEVENLABS_TTS).bearer(dev).expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("elevenlabs: a body is ignored, even a broken one", "POST", ELEVENLABS_SCRIBE).header("xi-api-key", dev).json("{bad").expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("elevenlabs: percent-encoded _ in the type is decoded", "POST", "/v1/single-use-token/realtime%5Fscribe").header("xi-api-key", dev).expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("elevenlabs: unknown type", "POST", "/v1/single-use-token/realtime").header("xi-api-key", dev).expect(422, Expect::ElevenLabs422 { locs: &["token_type"] }));
    t.push(case("elevenlabs: unknown type and no key", "POST", "/v1/single-use-token/nope").expect(422, Expect::ElevenLabs422 { locs: &["token_type", "xi-api-key"] }));
    t.push(case("elevenlabs: no key", "POST", ELEVENLABS_SCRIBE).expect(422, Expect::ElevenLabs422 { locs: &["xi-api-key"] }));
    t.push(case("elevenlabs: blank xi-api-key", "POST", ELEVENLABS_SCRIBE).header("xi-api-key", "  ").expect(422, Expect::ElevenLabs422 { locs: &["xi-api-key"] }));
    t.push(case("elevenlabs: a 10 KB type is echoed capped at 256 characters", "POST", format!("/v1/single-use-token/{}", "x".repeat(10 * 1024))).header("xi-api-key", dev).expect(422, Expect::ElevenLabs422 { locs: &["token_type"] }));
    t.push(case("elevenlabs: type %FF", "POST", "/v1/single-use-token/%FF").header("xi-api-key", dev).expect(422, Expect::ElevenLabs422 { locs: &["token_type"] }));
    t.push(case("elevenlabs: type with an escaped slash", "POST", "/v1/single-use-token/realtime_scribe%2F..").header("xi-api-key", dev).expect(422, Expect::ElevenLabs422 { locs: &["token_type"] }));
    t.push(case("elevenlabs: 10 KB key", "POST", ELEVENLABS_SCRIBE).header("xi-api-key", &long_key).expect(401, Expect::ElevenLabs { status: "invalid_api_key" }));
    t.push(case("elevenlabs: redeem-only key", "POST", ELEVENLABS_TTS).header("xi-api-key", redeem_only).expect(403, Expect::ElevenLabs { status: "forbidden" }));
    t.push(case("elevenlabs: GET", "GET", ELEVENLABS_SCRIBE).header("xi-api-key", dev).expect(405, Expect::ElevenLabs { status: "method_not_allowed" }).with_response_header("allow", "POST"));
    t.push(case("elevenlabs: no type at all", "POST", "/v1/single-use-token/").header("xi-api-key", dev).expect(404, canonical("not_found")));

    // ---- GET /api/v1/token (stream token) -----------------------------------------------------
    let st = |query: &str| format!("{STREAM_TOKEN}?{query}");
    t.push(case("stream token: default ttl (control)", "GET", STREAM_TOKEN).bearer(dev).expect(200, Expect::Fields(STREAM_OK)));
    t.push(case("stream token: ttl=%31%32", "GET", st("ttl=%31%32")).bearer(dev).expect(200, Expect::Fields(STREAM_OK)));
    t.push(case("stream token: TTL in capitals is another parameter", "GET", st("TTL=0")).bearer(dev).expect(200, Expect::Fields(STREAM_OK)));
    for (value, what) in [
        ("0", "0"),
        ("301", "301"),
        ("-1", "negative"),
        ("2.5", "fractional"),
        ("18446744073709551617", "overflowing u64"),
        ("ten", "non-numeric"),
        ("", "empty"),
        ("%ZZ", "a broken escape"),
        ("%C3%28", "an escape that is not UTF-8"),
        ("0x10", "hexadecimal"),
        ("5&ttl=5", "repeated"),
    ] {
        t.push(case(format!("stream token: ttl {what}"), "GET", st(&format!("ttl={value}"))).bearer(dev).expect(400, stream_token(Some("invalid_ttl"))));
    }
    t.push(case("stream token: ttl without =", "GET", st("ttl")).bearer(dev).expect(400, stream_token(Some("invalid_ttl"))));
    t.push(case("stream token: no API key", "GET", STREAM_TOKEN).expect(401, stream_token(None)));
    t.push(case("stream token: empty Bearer", "GET", STREAM_TOKEN).header("Authorization", "Bearer ").expect(401, stream_token(None)));
    t.push(case("stream token: 10 KB key", "GET", STREAM_TOKEN).bearer(&long_key).expect(401, stream_token(None)));
    t.push(case("stream token: bad ttl without a key is a 401", "GET", st("ttl=0")).expect(401, stream_token(None)));
    t.push(case("stream token: redeem-only key", "GET", STREAM_TOKEN).bearer(redeem_only).expect(403, stream_token(Some("forbidden"))));
    t.push(case("stream token: DELETE", "DELETE", STREAM_TOKEN).bearer(dev).expect(405, stream_token(Some("method_not_allowed"))).with_response_header("allow", "GET"));

    // ---- GET|POST /api/v1/chat/token ----------------------------------------------------------
    let page_body = r#"{"chatbotId":"CHATBOT-ID","sessionId":"RANDOM-STRING"}"#;
    t.push(case("chat: GET (control)", "GET", CHAT).bearer(dev).expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: POST with the page's body", "POST", CHAT).bearer(dev).json(page_body).expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: POST with an unknown field is accepted (ignored)", "POST", CHAT).bearer(dev).json(r#"{"chatbotId":"a","userId":"u","extra":{"x":[1]}}"#).expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: POST with an empty body", "POST", CHAT).bearer(dev).expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: GET ignores its body, even a broken one", "GET", CHAT).bearer(dev).json("{bad").expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: alias path GET", "GET", CHAT_ALIAS).bearer(dev).expect(200, Expect::Fields(CHAT_OK)));
    t.push(case("chat: POST malformed JSON", "POST", CHAT).bearer(dev).json(r#"{"chatbotId":"#).expect(400, chat("invalid_request")));
    t.push(case("chat: POST a JSON array", "POST", CHAT).bearer(dev).json("[]").expect(400, chat("invalid_request")));
    t.push(case("chat: POST chatbotId a number", "POST", CHAT).bearer(dev).json(r#"{"chatbotId":1}"#).expect(400, chat("invalid_request")));
    t.push(case("chat: POST chatbotId of 257 characters", "POST", CHAT).bearer(dev).json(json!({"chatbotId": "c".repeat(257)}).to_string()).expect(400, chat("invalid_request")));
    t.push(case("chat: POST text/plain", "POST", CHAT).bearer(dev).header("Content-Type", "text/plain").body(page_body).expect(415, chat("unsupported_media_type")));
    t.push(case("chat: POST body over 16 KiB", "POST", CHAT).bearer(dev).json(&over_limit).expect(413, chat("payload_too_large")));
    t.push(case("chat: POST body over 16 KiB, chunked", "POST", CHAT).bearer(dev).json(" ".repeat(20_000)).chunked().expect(413, chat("payload_too_large")));
    t.push(case("chat: GET ttl 0", "GET", format!("{CHAT}?ttl=0")).bearer(dev).expect(400, chat("invalid_ttl")));
    t.push(case("chat: POST ttl 1.0", "POST", format!("{CHAT}?ttl=1.0")).bearer(dev).json(page_body).expect(400, chat("invalid_ttl")));
    t.push(case("chat: GET ttl repeated", "GET", format!("{CHAT}?ttl=5&ttl=6")).bearer(dev).expect(400, chat("invalid_ttl")));
    t.push(case("chat: GET ttl %FF", "GET", format!("{CHAT}?ttl=%FF")).bearer(dev).expect(400, chat("invalid_ttl")));
    t.push(case("chat: GET no API key", "GET", CHAT).expect(401, chat("unauthorized")));
    t.push(case("chat: POST no API key", "POST", CHAT).json(page_body).expect(401, chat("unauthorized")));
    t.push(case("chat: POST 10 KB key", "POST", CHAT).bearer(&long_key).json(page_body).expect(401, chat("unauthorized")));
    t.push(case("chat: redeem-only key", "GET", CHAT).bearer(redeem_only).expect(403, chat("forbidden")));
    t.push(case("chat: PUT", "PUT", CHAT).bearer(dev).expect(405, chat("method_not_allowed")).with_response_header("allow", "GET, POST"));

    // ---- The demo -----------------------------------------------------------------------------
    t.push(case("demo: POST /demo/token", "POST", "/demo/token").expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("demo: POST /demo/token ignores its body and content type", "POST", "/demo/token").header("Content-Type", "text/plain").body("{bad").expect(200, Expect::Fields(TOKEN_ONLY)));
    t.push(case("demo: GET /demo/token", "GET", "/demo/token").expect(405, canonical("method_not_allowed")));
    t.push(case("demo: GET /demo", "GET", "/demo").expect(200, Expect::Text { content_type: "text/html", contains: "<html" }));

    // ---- Health, metrics, spec, unknown routes ------------------------------------------------
    t.push(case("healthz", "GET", "/healthz").expect(200, Expect::Fields(&["status"])));
    t.push(case("healthz: junk query", "GET", "/healthz?%ZZ=%FF&a[]=1&{}").expect(200, Expect::Fields(&["status"])));
    t.push(case("healthz: POST", "POST", "/healthz").expect(405, canonical("method_not_allowed")));
    t.push(case("healthz: HEAD is not routed (405, no body)", "HEAD", "/healthz").expect(405, Expect::Protocol).with_response_header("allow", "GET"));
    t.push(case("readyz", "GET", "/readyz").expect(200, Expect::Fields(&["status", "replay_store"])));
    t.push(case("readyz: PUT", "PUT", "/readyz").expect(405, canonical("method_not_allowed")));
    t.push(case("metrics", "GET", "/metrics").expect(200, Expect::Text { content_type: "text/plain", contains: "streamtoken_tokens_minted_total" }));
    t.push(case("metrics: POST", "POST", "/metrics").expect(405, canonical("method_not_allowed")));
    t.push(case("openapi.yaml", "GET", "/openapi.yaml").expect(200, Expect::Text { content_type: "application/yaml", contains: "openapi:" }));
    t.push(case("openapi.yaml: DELETE", "DELETE", "/openapi.yaml").expect(405, canonical("method_not_allowed")));
    t.push(case("healthz: an extension method", "BREW", "/healthz").expect(405, canonical("method_not_allowed")));
    t.push(case("healthz: absolute-form target", "GET", "http://evil.example/healthz").expect(200, Expect::Fields(&["status"])));
    t.push(case("unknown: route", "GET", "/v2/tokens").expect(404, canonical("not_found")));
    t.push(case("unknown: OPTIONS *", "OPTIONS", "*").expect(404, canonical("not_found")));
    t.push(case("unknown: route with a JWT-shaped segment", "GET", format!("/v1/tokens/{good}")).expect(404, canonical("not_found")));
    t.push(case("unknown: route with an API-key-shaped query", "GET", format!("/nope?k2={dev}")).expect(404, canonical("not_found")));

    // ---- Protocol level: answered by actix-web before any route -------------------------------
    t.push(case("protocol: one 140 KB header", "GET", "/healthz").header("X-Big", "a".repeat(140 * 1024)).expect(431, Expect::Protocol));
    t.push(case("protocol: 100 header lines", "GET", "/healthz").bearer(dev).header("X-Pad", "1").headers_n(100).expect(431, Expect::Protocol));
    t.push(case("protocol: a 140 KB query", "GET", format!("/api/v1/token?ttl={}", "1".repeat(140 * 1024))).bearer(dev).expect(431, Expect::Protocol));
    t.push(case("protocol: a 140 KB API key", "POST", MINT).bearer(&format!("st_{}", "A".repeat(140 * 1024))).expect(431, Expect::Protocol));
    t.push(case("protocol: raw 0xFF in the query", "GET", b"/api/v1/token?ttl=\xff").bearer(dev).expect(400, Expect::Protocol));
    t.push(case("protocol: raw UTF-8 in the query", "GET", "/v3/token?expires_in_seconds=６０").bearer(dev).expect(400, Expect::Protocol));
    t.push(case("protocol: raw double quote in the query", "GET", "/v1/usage?x=\"").bearer(dev).expect(400, Expect::Protocol));
    t.push(case("protocol: raw DEL in the path", "GET", b"/healthz\x7f").expect(400, Expect::Protocol));
    t.push(case("protocol: Content-Length and Transfer-Encoding together (smuggling shape)", "POST", MINT).bearer(dev).header("Content-Length", "2").json("{}").chunked().expect(400, Expect::Protocol));
    t.push(case("protocol: Transfer-Encoding gzip, chunked", "POST", MINT).bearer(dev).header("Transfer-Encoding", "gzip, chunked").body("2\r\n{}\r\n0\r\n\r\n").expect(400, Expect::Protocol));
    t.push(case("protocol: a header name with a space", "GET", "/healthz").header("X-Bad Name", "v").expect(400, Expect::Protocol));
    t.push(case("protocol: a control byte in a header value", "GET", "/healthz").header("X-Ctl", b"a\x01b").expect(400, Expect::Protocol));
    t.push(case("protocol: a NUL in a header value", "GET", "/healthz").header("X-Nul", b"a\x00b").expect(400, Expect::Protocol));
    t.push(case("protocol: Content-Length not a number", "POST", MINT).bearer(dev).header("Content-Length", "abc").expect(400, Expect::Protocol));
    t.push(case("protocol: two different Content-Lengths", "POST", MINT).bearer(dev).header("Content-Length", "2").header("Content-Length", "3").body("{}").expect(400, Expect::Protocol));
    t
}

/// The real binary on a fresh keys dir holding the dev key and org acme's single-scope keys.
struct Server {
    process: ServerProcess,
    address: String,
    keys: Keys,
    forge: Forge,
    _dir: tempfile::TempDir,
}

fn start_server(env: &[(&str, &str)]) -> Server {
    let (dir, dev) = init_keys();
    let keys = Keys {
        dev,
        mint_only: add_api_key(dir.path(), "acme", &["mint"], &["--name", "m"]),
        redeem_only: add_api_key(dir.path(), "acme", &["redeem"], &["--name", "r"]),
        revoke_only: add_api_key(dir.path(), "dev", &["revoke"], &["--name", "x"]),
    };
    let mut env = env.to_vec();
    env.push(("STREAMTOKEN_RATE_PER_MINUTE", "1000000"));
    // The demo's routes are in the table too.
    env.push(("STREAMTOKEN_DEMO", "on"));
    let process = ServerProcess::spawn(dir.path(), &env);
    let address = process.address.trim_start_matches("http://").to_owned();
    Server {
        forge: Forge::read(dir.path()),
        process,
        address,
        keys,
        _dir: dir,
    }
}

impl Server {
    fn send(&self, case: &Case) -> Answer {
        exchange(&self.address, case).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nserver log:\n{}",
                case.what,
                self.process.log_text()
            )
        })
    }

    fn metrics(&self) -> String {
        let answer = self.send(&case("scrape", "GET", "/metrics"));
        assert_eq!(answer.status, 200);
        String::from_utf8(answer.body).unwrap()
    }

    fn assert_no_panic(&self) {
        let log = self.process.log_text();
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    }
}

/// The distinct values of label `name` across every series of the exposition `text`.
fn label_values(text: &str, name: &str) -> BTreeSet<String> {
    let needle = format!("{name}=\"");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.match_indices(&needle).map(move |(at, _)| &line[at..]))
        .filter_map(|rest| {
            let value = &rest[needle.len()..];
            value.find('"').map(|end| value[..end].to_owned())
        })
        .collect()
}

#[test]
fn every_route_answers_every_hostile_request_in_its_own_envelope_and_never_with_a_5xx() {
    // Arrange: the real binary, with the dev key and two single-scope keys of org acme.
    let server = start_server(&[]);
    let (address, keys, forge) = (&server.address, &server.keys, &server.forge);
    let mut tokens = Tokens {
        fresh: (0..20).map(|_| mint(address, &keys.dev)).collect(),
        used: mint(address, &keys.dev),
    };
    redeem(address, &keys.dev, &tokens.used);
    let cases = table(keys, forge, &mut tokens);

    // Act
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = exchange(address, case).and_then(|answer| check(case, &answer)) {
            failures.push(format!("{}: {why}", case.what));
        }
    }

    // Assert
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let log = server.process.log_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\n\nserver log tail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    server.assert_no_panic();
    let leaks: Vec<&str> = log.lines().filter(|line| looks_secret(line)).collect();
    assert!(
        leaks.is_empty(),
        "credentials in the log:\n{}",
        leaks.join("\n")
    );
    let by_route = tally(
        cases
            .iter()
            .map(|case| case.what.split(':').next().unwrap()),
    );
    eprintln!("{} catalogue cases by route: {by_route:?}", cases.len());
}

/// BUG (src/metrics.rs, `time_requests`): the `method` label of
/// `streamtoken_http_request_duration_seconds` is the request's method verbatim. HTTP allows any
/// token as a method and actix routes it to the resource's 405, so an unauthenticated client
/// creates a new histogram (17 series) per method name it invents — up to 128 KiB each — and the
/// registry and every `/metrics` scrape grow without bound. The README promises labels "never
/// from client input, so their cardinality is bounded".
#[test]
fn metric_labels_stay_bounded_whatever_http_methods_unauthenticated_clients_invent() {
    // Arrange
    let server = start_server(&[]);

    // Act
    for i in 0..50 {
        let answer = server.send(&case("extension method", &format!("BREW{i}"), "/healthz"));
        assert_eq!(answer.status, 405);
    }

    // Assert
    let methods = label_values(&server.metrics(), "method");
    let known: BTreeSet<String> = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let invented: Vec<&String> = methods.difference(&known).collect();
    assert!(
        invented.len() <= 1,
        "each invented method got its own label value (expected at most one catch-all such as \
         \"other\"): {} values, e.g. {:?}",
        invented.len(),
        invented.iter().take(5).collect::<Vec<_>>()
    );
    server.assert_no_panic();
}

/// `token_type` is a label of `streamtoken_tokens_minted_total` and
/// `streamtoken_tokens_redeemed_total`, and `POST /v1/tokens` lets the caller choose any
/// `[a-z0-9_]{1,64}` value: the label keeps at most `MAX_TOKEN_TYPE_LABELS` distinct values and
/// counts the rest as `other`, so no client can grow the series without bound.
#[test]
fn metric_labels_stay_bounded_whatever_token_types_clients_mint() {
    // Arrange
    let server = start_server(&[]);
    let dev = &server.keys.dev;

    // Act
    for i in 0..(streamtoken::metrics::MAX_TOKEN_TYPE_LABELS + 8) {
        let answer = server.send(
            &case("mint a custom type", "POST", MINT)
                .bearer(dev)
                .json(json!({ "token_type": format!("custom_type_{i}") }).to_string()),
        );
        assert_eq!(answer.status, 200);
        let token: Value = serde_json::from_slice(&answer.body).unwrap();
        redeem(&server.address, dev, token["token"].as_str().unwrap());
    }

    // Assert
    let exposition = server.metrics();
    for metric in [
        "streamtoken_tokens_minted_total",
        "streamtoken_tokens_redeemed_total",
    ] {
        let series: String = exposition
            .lines()
            .filter(|line| line.starts_with(metric))
            .collect::<Vec<_>>()
            .join("\n");
        let custom: Vec<String> = label_values(&series, "token_type")
            .into_iter()
            .filter(|value| value.starts_with("custom_type_"))
            .collect();
        assert!(
            custom.len() <= streamtoken::metrics::MAX_TOKEN_TYPE_LABELS,
            "{metric}: {} client-chosen token_type label values, e.g. {:?}",
            custom.len(),
            custom.iter().take(5).collect::<Vec<_>>()
        );
    }
    server.assert_no_panic();
}

/// Guards a fixed bug: a token signed with the real key (e.g. by another implementation) that
/// carries `"uses": 0` was reported `already_used` by introspection before it was ever redeemed,
/// then redeemed once anyway (and with Redis, introspection after that computed `0 - 1`). The
/// verifier (`src/token/verify.rs`) now refuses claims outside what this service mints.
/// Introspection must predict redemption, and must never fail.
#[test]
fn introspection_and_redemption_agree_on_a_signed_token_with_uses_zero() {
    let redis = crate::support::redis_server::RedisServer::start();
    let prefix = format!("catalogue-{}", Uuid::new_v4());
    let mut stores = vec![("memory", Vec::new())];
    if let Some(redis) = &redis {
        stores.push((
            "redis",
            vec![
                ("STREAMTOKEN_REDIS_URL", redis.url()),
                ("STREAMTOKEN_REDIS_PREFIX", prefix.clone()),
            ],
        ));
    }
    let mut failures = Vec::new();
    for (store, env) in &stores {
        // Arrange
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = start_server(&env);
        let token = server
            .forge
            .sign_claims(&server.forge.claims_with("uses", json!(0)));
        let look = |what: &str| {
            case(format!("{store}: introspect {what}"), "POST", INTROSPECT)
                .bearer(&server.keys.dev)
                .json(token_body(&token))
        };

        // Act
        let before = exchange(&server.address, &look("before"));
        let redeemed = server.send(
            &case("redeem", "POST", REDEEM)
                .bearer(&server.keys.dev)
                .json(token_body(&token)),
        );
        let after = exchange(&server.address, &look("after"));

        // Assert
        let active = |answer: &Result<Answer, String>| -> Result<bool, String> {
            let answer = answer.as_ref().map_err(|e| format!("no answer: {e}"))?;
            if answer.status != 200 {
                return Err(format!("status {}", answer.status));
            }
            let body: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
            body["active"].as_bool().ok_or(format!("{body}"))
        };
        match active(&before) {
            Ok(predicted) if predicted == (redeemed.status == 200) => {}
            other => failures.push(format!(
                "{store}: introspection before said active={other:?}, redemption then answered {}",
                redeemed.status
            )),
        }
        match active(&after) {
            Ok(false) => {}
            other => failures.push(format!(
                "{store}: introspection after the redemption: {other:?}"
            )),
        }
        let log = server.process.log_text();
        if let Some(line) = log.lines().find(|line| line.contains("panicked")) {
            failures.push(format!("{store}: the server panicked: {line}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Guards a fixed bug: the gateway reads query parameters percent-decoded
/// (`src/http/query.rs`), so `?%74oken=` is `?token=` to it, and an escaped token (`%65yJ…`)
/// still opens a session. The access log (`src/http/access_log.rs`) judges names and values
/// decoded too. Here the server accepts such a token, and the log must still not contain it.
#[test]
fn a_token_under_a_percent_encoded_name_is_used_by_the_gateway_and_kept_out_of_the_log() {
    // Arrange
    let server = start_server(&[]);
    let token = mint(&server.address, &server.keys.dev);
    let escaped: Vec<String> = token
        .split('.')
        .map(|segment| match segment.strip_prefix('e') {
            Some(rest) => format!("%65{rest}"),
            None => segment.to_owned(),
        })
        .collect();
    let target = format!("/v1/stream?%74oken={}", escaped.join("."));

    // Act
    let answer = server.send(
        &case("escaped token parameter", "GET", &target)
            .websocket()
            .expect(101, Expect::WsBegins),
    );
    server
        .process
        .wait_for_log("GET /v1/stream", Duration::from_secs(10));

    // Assert
    assert_eq!(answer.status, 101);
    let begins: Value = serde_json::from_slice(&answer.frames[0].1).unwrap();
    assert_eq!(
        begins["type"], "session_begins",
        "the gateway used the token"
    );
    let signature = token.rsplit('.').next().unwrap();
    let log = server.process.log_text();
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(signature)).collect();
    assert!(
        leaks.is_empty(),
        "the token reached the log:\n{}",
        leaks.join("\n")
    );
}
