//! Token verification with a distinct reason for each failure.
//!
//! Pins HS256, finds the key by `kid`, then checks signature, `exp` (with leeway), `iss`, `aud`,
//! the lifetime bound and that every claim lies in the range this service mints. Single use is
//! not decided here: see `admission`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use serde::Deserialize;

use crate::keys::keyring::Keyring;
use crate::settings::TokenSettings;
use crate::tenancy::org::Org;
use crate::token::claims::{Claims, RejectReason};
use crate::token::params::{Ctx, ExpiresIn, ReconnectGrace, SessionDuration, TokenType, Uses};

/// Longest token accepted for verification. A token with the largest ctx allowed
/// (`Ctx::MAX_JSON_BYTES`) stays well below it; typical tokens are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Checks tokens against one configuration; built once at start-up, not per request.
///
/// The signature is checked with HMAC-SHA256 under the key's pre-keyed state (the algorithm is
/// pinned here, never taken from the token), then the claims are parsed once and checked in the order
/// jsonwebtoken's own validation uses: signature before any claim is trusted, then `exp` (with
/// leeway), `iss`, `aud`. Doing the JOSE framing here rather than through `jsonwebtoken::decode`
/// avoids parsing the header and the claims twice on the hot path.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    issuer: String,
    audience: String,
    leeway_seconds: i64,
    /// Furthest `exp` may lie ahead of now: the longest window we mint plus leeway. A token
    /// beyond it was not minted by this configuration, and its replay entry would never expire.
    max_ahead_seconds: i64,
}

impl TokenVerifier {
    pub fn new(settings: &TokenSettings) -> Self {
        TokenVerifier {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_seconds: settings.leeway_seconds as i64,
            max_ahead_seconds: i64::from(ExpiresIn::MAX) + settings.leeway_seconds as i64,
        }
    }

    pub fn verify(&self, token: &str, keyring: &Keyring) -> Result<Claims, RejectReason> {
        self.verify_at(token, keyring, chrono::Utc::now().timestamp())
    }

    /// Verifies as if the clock read `now` (unix seconds).
    pub fn verify_at(
        &self,
        token: &str,
        keyring: &Keyring,
        now: i64,
    ) -> Result<Claims, RejectReason> {
        self.check(token, keyring, now, true)
    }

    /// Verifies everything but the redemption window: a token past `exp` still names the
    /// sessions it opened (revocation ends them).
    pub fn verify_any_age(&self, token: &str, keyring: &Keyring) -> Result<Claims, RejectReason> {
        self.check(token, keyring, chrono::Utc::now().timestamp(), false)
    }

    fn check(
        &self,
        token: &str,
        keyring: &Keyring,
        now: i64,
        window: bool,
    ) -> Result<Claims, RejectReason> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(RejectReason::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RejectReason::Malformed);
        };
        // Our own header bytes name HS256 and a known kid: no need to decode them. Any other
        // header (another encoder's, a foreign alg, an unknown kid) is read and judged.
        let key = match keyring.key_for_header(header) {
            Some(key) => key,
            None => {
                let header = peek_header(header)?;
                if header.alg != "HS256" {
                    return Err(RejectReason::AlgorithmNotAllowed);
                }
                header
                    .kid
                    .as_deref()
                    .and_then(|kid| keyring.verifying_key(kid))
                    .ok_or(RejectReason::UnknownKid)?
            }
        };
        let signed = &token[..token.len() - signature.len() - 1];
        // As `jsonwebtoken::crypto::verify` judges: a signature that is not base64url is
        // malformed, one that does not match (any length) is bad. `verify_slice` compares in
        // constant time.
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| RejectReason::Malformed)?;
        let mut mac = key.mac().clone();
        mac.update(signed.as_bytes());
        if mac.verify_slice(&signature).is_err() {
            return Err(RejectReason::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| RejectReason::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| RejectReason::Malformed)?;
        // A negative `exp` is nonsense, not an expired token (as jsonwebtoken judges it too).
        if claims.exp < 0 {
            return Err(RejectReason::Malformed);
        }
        if window && claims.exp < now - self.leeway_seconds {
            return Err(RejectReason::Expired);
        }
        if claims.iss != self.issuer {
            return Err(RejectReason::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(RejectReason::WrongAudience);
        }
        if claims.exp - now > self.max_ahead_seconds {
            return Err(RejectReason::ExcessiveLifetime);
        }
        // Even correctly signed, claims outside what this service mints are not trusted
        // (e.g. `uses: 0` would make the replay arithmetic meaningless).
        if !claims_are_in_range(&claims) {
            return Err(RejectReason::Malformed);
        }
        Ok(claims)
    }
}

fn claims_are_in_range(claims: &Claims) -> bool {
    (Uses::MIN..=Uses::MAX).contains(&claims.uses)
        && claims.reconnect_grace_seconds <= ReconnectGrace::MAX
        && (claims.uses == 1 || claims.reconnect_grace_seconds == 0)
        && (SessionDuration::MIN..=SessionDuration::MAX)
            .contains(&claims.max_session_duration_seconds)
        && TokenType::parse(&claims.token_type).is_ok()
        && Org::parse(&claims.org).is_ok()
        && (claims.ctx.is_empty() || Ctx::check(&claims.ctx).is_ok())
}

#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
}

/// Reads `alg` and `kid` before any key is chosen, so `alg: none` and foreign algorithms are
/// told apart from garbage.
fn peek_header(segment: &str) -> Result<PeekedHeader, RejectReason> {
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| RejectReason::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| RejectReason::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::keys::keyring::SigningKey;
    use crate::tenancy::api_keys::ApiKeys;
    use crate::token::claims::sign;
    use uuid::Uuid;

    const SECRET: &[u8] = b"fixture-secret-0123456789abcdefghij";

    fn keyring_with(kids: &[&str]) -> Keyring {
        let keys = kids
            .iter()
            .map(|kid| SigningKey::new(kid, SECRET).unwrap())
            .collect();
        Keyring::new(keys, kids[0], ApiKeys::default()).unwrap()
    }

    fn claims(exp_from_now: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "streamtoken".into(),
            aud: "streamtoken-gateway".into(),
            org: "acme".into(),
            token_type: "realtime".into(),
            jti: Uuid::new_v4(),
            iat: now,
            exp: now + exp_from_now,
            max_session_duration_seconds: 600,
            ctx: BTreeMap::from([("sessionId".into(), "s-1".into())]),
            uses: 1,
            reconnect_grace_seconds: 0,
        }
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&TokenSettings::default())
    }

    #[test]
    fn a_minted_token_verifies_to_the_same_claims() {
        let keyring = keyring_with(&["k1"]);
        let claims = claims(60);
        let token = sign(&claims, keyring.active()).unwrap();
        assert_eq!(verifier().verify(&token, &keyring).unwrap(), claims);
    }

    /// Produced by Python's standard library (hmac, hashlib, base64, json) with SECRET and
    /// kid "fixture": guards the wire format against silent changes on our side.
    const PYTHON_FIXTURE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZpeHR1cmUifQ.eyJpc3MiOiJzdHJlYW10b2tlbiIsImF1ZCI6InN0cmVhbXRva2VuLWdhdGV3YXkiLCJvcmciOiJhY21lIiwidG9rZW5fdHlwZSI6InJlYWx0aW1lIiwianRpIjoiOWYzYjJjNGUtOGQ3YS00YjFlLTlmMmEtM2M0ZDVlNmY3YTgxIiwiaWF0IjoxNzY0MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDAsIm1heF9zZXNzaW9uX2R1cmF0aW9uX3NlY29uZHMiOjM2MDAsImN0eCI6eyJjaGF0Ym90SWQiOiJib3QtMSJ9LCJ1c2VzIjozfQ.YszvWLAbHciNgGg6BYJ8Hnb0RT1lYWvVacWfN29APLE";

    #[test]
    fn a_token_minted_by_another_language_verifies() {
        let keyring = keyring_with(&["fixture"]);
        // The fixture's exp (year 2100) is fixed, so lift the lifetime bound for it; this test
        // is about the wire format, and the bound has its own case below.
        let mut far = verifier();
        far.max_ahead_seconds = i64::MAX;
        let claims = far.verify(PYTHON_FIXTURE, &keyring).unwrap();
        // Its header orders the fields otherwise than ours: it was read, not matched.
        let fixture_header = PYTHON_FIXTURE.split('.').next().unwrap();
        assert!(keyring.key_for_header(fixture_header).is_none());
        let ours = sign(&claims, keyring.active()).unwrap();
        assert!(keyring
            .key_for_header(ours.split('.').next().unwrap())
            .is_some());
        assert_eq!(
            verifier().verify(PYTHON_FIXTURE, &keyring),
            Err(RejectReason::ExcessiveLifetime)
        );
        assert_eq!(claims.org, "acme");
        assert_eq!(
            claims.jti.to_string(),
            "9f3b2c4e-8d7a-4b1e-9f2a-3c4d5e6f7a81"
        );
        assert_eq!(claims.exp, 4_102_444_800);
        assert_eq!(claims.uses, 3);
        assert_eq!(claims.ctx["chatbotId"], "bot-1");
    }

    #[test]
    fn each_failure_reports_its_own_reason() {
        let keyring = keyring_with(&["k1"]);
        let other = keyring_with(&["k2"]);
        let good = sign(&claims(60), keyring.active()).unwrap();
        let expired = sign(&claims(-60), keyring.active()).unwrap();
        let mut wrong_iss = claims(60);
        wrong_iss.iss = "someone-else".into();
        let mut wrong_aud = claims(60);
        wrong_aud.aud = "elsewhere".into();
        let (head, rest) = good.split_once('.').unwrap();
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let cases = [
            (good.replace('.', ""), RejectReason::Malformed),
            (String::new(), RejectReason::Malformed),
            ("a".repeat(MAX_TOKEN_BYTES + 1), RejectReason::Malformed),
            (
                format!("{none_header}.{rest}"),
                RejectReason::AlgorithmNotAllowed,
            ),
            (
                sign(&claims(60), other.active()).unwrap(),
                RejectReason::UnknownKid,
            ),
            (
                format!("{head}.{}", rest.replacen('e', "f", 1)),
                RejectReason::BadSignature,
            ),
            (expired, RejectReason::Expired),
            (
                sign(&wrong_iss, keyring.active()).unwrap(),
                RejectReason::WrongIssuer,
            ),
            (
                sign(&wrong_aud, keyring.active()).unwrap(),
                RejectReason::WrongAudience,
            ),
        ];
        for (token, reason) in cases {
            assert_eq!(
                verifier().verify(&token, &keyring),
                Err(reason),
                "{token:.40}"
            );
        }
    }

    #[test]
    fn leeway_accepts_a_token_just_past_its_deadline() {
        let keyring = keyring_with(&["k1"]);
        let token = sign(&claims(-2), keyring.active()).unwrap();
        assert!(verifier().verify(&token, &keyring).is_ok());
        let strict = TokenVerifier::new(&TokenSettings {
            leeway_seconds: 0,
            ..TokenSettings::default()
        });
        assert_eq!(strict.verify(&token, &keyring), Err(RejectReason::Expired));
    }

    #[test]
    fn a_token_verifies_through_the_last_second_of_its_leeway_and_not_one_second_more() {
        let keyring = keyring_with(&["k1"]);
        let claims = claims(60);
        let token = sign(&claims, keyring.active()).unwrap();
        let leeway = TokenSettings::default().leeway_seconds as i64;
        let last = claims.exp + leeway;
        assert!(verifier().verify_at(&token, &keyring, last).is_ok());
        assert_eq!(
            verifier().verify_at(&token, &keyring, last + 1),
            Err(RejectReason::Expired)
        );
    }

    #[test]
    fn exp_may_lie_exactly_as_far_ahead_as_the_longest_window_plus_leeway_and_no_further() {
        let keyring = keyring_with(&["k1"]);
        let claims = claims(60);
        let token = sign(&claims, keyring.active()).unwrap();
        let ahead = i64::from(ExpiresIn::MAX) + TokenSettings::default().leeway_seconds as i64;
        let at_the_bound = claims.exp - ahead;
        assert!(verifier().verify_at(&token, &keyring, at_the_bound).is_ok());
        assert_eq!(
            verifier().verify_at(&token, &keyring, at_the_bound - 1),
            Err(RejectReason::ExcessiveLifetime)
        );
    }

    #[test]
    fn single_use_tokens_carry_no_uses_claim() {
        let keyring = keyring_with(&["k1"]);
        let token = sign(&claims(60), keyring.active()).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value.get("uses").is_none());
    }
}
