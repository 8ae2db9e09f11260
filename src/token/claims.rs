//! The claims a token carries, how a token is signed, and the stable names of every reason a
//! token can be refused.
//!
//! Header `{"alg":"HS256","typ":"JWT","kid":…}`; the claims are below. Verification lives in
//! `verify`; single use is decided by admission, not here.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::json_out::JsonObject;
use crate::keys::keyring::SigningKey;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// Organisation of the minting API key; usage is attributed to it.
    pub org: String,
    pub token_type: String,
    /// The unit of single use.
    pub jti: Uuid,
    pub iat: i64,
    /// Redemption deadline: the session must be opened before it.
    pub exp: i64,
    /// How long the session may last, counted from redemption.
    pub max_session_duration_seconds: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ctx: BTreeMap<String, String>,
    /// Redemptions allowed; omitted on the wire when 1 (the default, single use).
    #[serde(default = "single_use", skip_serializing_if = "is_single_use")]
    pub uses: u32,
    /// Seconds after a dropped connection during which the same token re-opens the same
    /// session (single-use tokens only); omitted on the wire when 0 (no reconnect).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reconnect_grace_seconds: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn single_use() -> u32 {
    1
}

fn is_single_use(uses: &u32) -> bool {
    *uses == 1
}

/// Why a token was refused. The names are stable: they appear in API responses and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKid,
    BadSignature,
    Expired,
    WrongIssuer,
    WrongAudience,
    /// `exp` lies further ahead than any token this service mints could.
    ExcessiveLifetime,
    AlreadyUsed,
    /// Valid, but minted for an org the caller may not act on.
    WrongOrg,
    /// Valid, but of a token type this gateway surface does not admit.
    WrongTokenType,
    /// Valid, but revoked (`POST /v1/tokens/revoke`), by itself or with its org's tokens.
    Revoked,
    /// Used, and the session it opened is open on another connection (one at a time).
    SessionAlreadyOpen,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::AlgorithmNotAllowed => "algorithm_not_allowed",
            RejectReason::UnknownKid => "unknown_kid",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Expired => "expired",
            RejectReason::WrongIssuer => "wrong_issuer",
            RejectReason::WrongAudience => "wrong_audience",
            RejectReason::ExcessiveLifetime => "excessive_lifetime",
            RejectReason::AlreadyUsed => "already_used",
            RejectReason::WrongOrg => "wrong_org",
            RejectReason::WrongTokenType => "wrong_token_type",
            RejectReason::Revoked => "revoked",
            RejectReason::SessionAlreadyOpen => "session_already_open",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::Malformed => "the token is not a well-formed streamtoken JWT",
            RejectReason::AlgorithmNotAllowed => "the token is not signed with HS256",
            RejectReason::UnknownKid => "the token's signing key (kid) is not in the keyring",
            RejectReason::BadSignature => "the token's signature does not verify",
            RejectReason::Expired => "the token's redemption window has passed",
            RejectReason::WrongIssuer => "the token was issued by another issuer",
            RejectReason::WrongAudience => "the token is meant for another audience",
            RejectReason::ExcessiveLifetime => {
                "the token's redemption window is longer than any this service issues"
            }
            RejectReason::AlreadyUsed => "the token has already been used",
            RejectReason::WrongOrg => "the token belongs to another organisation",
            RejectReason::WrongTokenType => "this endpoint does not accept tokens of this type",
            RejectReason::Revoked => "the token has been revoked",
            RejectReason::SessionAlreadyOpen => "the token's session is open on another connection",
        }
    }
}

/// The claims as `serde_json::to_vec` writes them (the derive above: field order, `ctx` left out
/// when empty, `uses` when 1, `reconnect_grace_seconds` when 0), written field by field: serde_json escapes strings a byte at a
/// time. A field added to `Claims` must be added here; the test against serde_json fails until
/// it is.
fn claims_json(claims: &Claims) -> String {
    let mut jti = Uuid::encode_buffer();
    let mut object = JsonObject::with_capacity(256)
        .string("iss", &claims.iss)
        .string("aud", &claims.aud)
        .string("org", &claims.org)
        .string("token_type", &claims.token_type)
        .string("jti", claims.jti.hyphenated().encode_lower(&mut jti))
        .integer("iat", claims.iat)
        .integer("exp", claims.exp)
        .integer(
            "max_session_duration_seconds",
            claims.max_session_duration_seconds,
        );
    if !claims.ctx.is_empty() {
        object = object.string_map("ctx", &claims.ctx);
    }
    if !is_single_use(&claims.uses) {
        object = object.integer("uses", claims.uses);
    }
    if !is_zero(&claims.reconnect_grace_seconds) {
        object = object.integer("reconnect_grace_seconds", claims.reconnect_grace_seconds);
    }
    object.finish()
}

/// The compact JWS `jsonwebtoken::encode` would produce for HS256, byte for byte, from the key's
/// pre-encoded header and pre-keyed HMAC (see `SigningKey`), in one buffer.
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, serde_json::Error> {
    let json = claims_json(claims);
    let prefix = key.header_prefix();
    // Header, claims, '.', and 43 characters of signature.
    let mut token = String::with_capacity(prefix.len() + json.len().div_ceil(3) * 4 + 44);
    token.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let mut mac = key.mac().clone();
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, Header};

    const ALL: [RejectReason; 13] = [
        RejectReason::Malformed,
        RejectReason::AlgorithmNotAllowed,
        RejectReason::UnknownKid,
        RejectReason::BadSignature,
        RejectReason::Expired,
        RejectReason::WrongIssuer,
        RejectReason::WrongAudience,
        RejectReason::ExcessiveLifetime,
        RejectReason::AlreadyUsed,
        RejectReason::WrongOrg,
        RejectReason::WrongTokenType,
        RejectReason::Revoked,
        RejectReason::SessionAlreadyOpen,
    ];

    #[test]
    fn sign_writes_the_bytes_jsonwebtoken_encode_would() {
        let key = SigningKey::new(
            "k-1",
            b"fixture-secret-0123456789abcdefghij-and-more-bytes-past-64",
        )
        .unwrap();
        let claims = Claims {
            iss: "streamtoken".into(),
            aud: "streamtoken-gateway".into(),
            org: "acme".into(),
            token_type: "realtime".into(),
            jti: Uuid::new_v4(),
            iat: 1_700_000_000,
            exp: 1_700_000_060,
            max_session_duration_seconds: 600,
            ctx: BTreeMap::from([("quote\"d".into(), "ü \\ \n".into())]),
            uses: 3,
            reconnect_grace_seconds: 0,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k-1".into());
        let expected = jsonwebtoken::encode(&header, &claims, key.encoding()).unwrap();
        assert_eq!(sign(&claims, &key).unwrap(), expected);
        // Single use with a grace, and no ctx: uses and ctx left out, as serde leaves them.
        let plain = Claims {
            ctx: BTreeMap::new(),
            uses: 1,
            iat: -5,
            reconnect_grace_seconds: 30,
            ..claims
        };
        let expected = jsonwebtoken::encode(&header, &plain, key.encoding()).unwrap();
        assert_eq!(sign(&plain, &key).unwrap(), expected);
        assert_eq!(
            claims_json(&plain).into_bytes(),
            serde_json::to_vec(&plain).unwrap()
        );
    }

    #[test]
    fn every_reason_has_its_own_name_and_its_own_sentence() {
        let names: std::collections::BTreeSet<_> = ALL.iter().map(|r| r.as_str()).collect();
        let sentences: std::collections::BTreeSet<_> = ALL.iter().map(|r| r.describe()).collect();
        assert_eq!((names.len(), sentences.len()), (ALL.len(), ALL.len()));
        assert_eq!(
            RejectReason::Expired.describe(),
            "the token's redemption window has passed"
        );
        assert!(ALL
            .iter()
            .all(|r| r.describe().starts_with("the ") || r.describe().starts_with("this ")));
    }
}
