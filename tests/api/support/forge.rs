//! JWTs built and taken apart by hand, without the service's code, for hostile token cases.
#![allow(dead_code)]

use std::path::Path;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::fields::now;
use super::keys::{active_kid, signing_secret};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes one base64url (no padding) JWT segment as JSON.
pub fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap_or_else(|e| panic!("segment {segment:?} is not base64url without padding: {e}"));
    serde_json::from_slice(&bytes).expect("segment is JSON")
}

pub fn encode_segment(value: &Value) -> String {
    b64(serde_json::to_vec(value).unwrap())
}

/// `(header, claims)` of a compact JWS, decoded without verifying it.
pub fn decode_token(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three segments: {token}");
    (decode_segment(parts[0]), decode_segment(parts[1]))
}

/// The claims of a compact JWS, decoded without verifying it.
pub fn claims_of(token: &str) -> Value {
    decode_token(token).1
}

/// The `kid` in a token's JWT header.
pub fn kid_of(token: &str) -> String {
    decode_token(token).0["kid"]
        .as_str()
        .expect("a kid")
        .to_owned()
}

/// Claims as the service mints them for the dev org, valid for another minute.
pub fn valid_claims() -> Value {
    let now = now();
    json!({
        "iss": "streamtoken",
        "aud": "streamtoken-gateway",
        "org": "dev",
        "token_type": "realtime",
        "jti": Uuid::new_v4(),
        "iat": now,
        "exp": now + 60,
        "max_session_duration_seconds": 3600,
    })
}

/// Signs through jsonwebtoken, as another implementation holding the secret would.
pub fn sign(claims: &Value, alg: Algorithm, kid: &str, secret: &[u8]) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, so any header and payload bytes can be signed.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `signing_input` (already encoded segments) with its HMAC-SHA256 signature appended.
fn signed(signing_input: String, secret: &[u8]) -> String {
    let signature = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(signature))
}

/// Header and payload taken as raw bytes, signed with HMAC-SHA256 and `secret`.
pub fn forge_raw(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    signed(format!("{}.{}", b64(header), b64(payload)), secret)
}

/// Flips the lowest bit of the first byte of segment `index`, then re-encodes it.
pub fn flip_bit(token: &str, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).unwrap();
    bytes[0] ^= 0x01;
    parts[index] = b64(bytes);
    parts.join(".")
}

/// The real signing key of a keys directory, to forge tokens the service will verify.
pub struct Forge {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl Forge {
    /// The active key of `keys_dir`.
    pub fn read(keys_dir: &Path) -> Forge {
        let kid = active_kid(keys_dir);
        let secret = signing_secret(keys_dir, &kid);
        Forge { kid, secret }
    }

    pub fn header(&self) -> Value {
        json!({"alg": "HS256", "typ": "JWT", "kid": self.kid})
    }

    /// Claims as the service mints them, valid for another minute.
    pub fn claims(&self) -> Value {
        valid_claims()
    }

    /// Valid claims with one change (`Value::Null` removes the claim).
    pub fn claims_with(&self, name: &str, value: Value) -> Value {
        let mut claims = self.claims();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value;
        }
        claims
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        forge_raw(
            &serde_json::to_vec(header).unwrap(),
            &serde_json::to_vec(claims).unwrap(),
            &self.secret,
        )
    }

    pub fn sign_claims(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    pub fn with_header(&self, header: Value) -> String {
        self.sign(&header, &self.claims())
    }

    /// `claims` under the real key through jsonwebtoken, for the HMAC algorithms it knows.
    pub fn jsonwebtoken(&self, claims: &Value, alg: Algorithm) -> String {
        sign(claims, alg, &self.kid, &self.secret)
    }

    /// A validly signed token whose header segment is written with `=` padding.
    pub fn padded_header_token(&self) -> String {
        let header = (0..3)
            .map(|n| {
                serde_json::to_vec(&json!({"alg": "HS256", "kid": self.kid, "x": "x".repeat(n)}))
                    .unwrap()
            })
            .find(|h| h.len() % 3 != 0)
            .unwrap();
        let head = URL_SAFE.encode(&header);
        assert!(head.ends_with('='), "{head}");
        signed(
            format!("{head}.{}", encode_segment(&self.claims())),
            &self.secret,
        )
    }
}
