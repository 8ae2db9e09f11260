//! Properties of the token format, checked at the library level (no server): whatever a client
//! presents never panics the verifier and never verifies unless it is a token we signed; any
//! one-character change to a signed token is refused; and every token minted from valid claims
//! verifies to exactly those claims.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use streamtoken::keys::keyring::{Keyring, SigningKey};
use streamtoken::settings::TokenSettings;
use streamtoken::tenancy::api_keys::ApiKeys;
use streamtoken::token::params::{Ctx, ExpiresIn};
use streamtoken::token::{
    claims::{sign, Claims},
    verify::TokenVerifier,
};
use uuid::Uuid;

const KID: &str = "prop-k1";
const SECRET: &[u8] = b"property-test-secret-0123456789-abcdefghij";
/// The base64url alphabet, then the segment separator: every character a token is made of.
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

static KEYRING: LazyLock<Keyring> = LazyLock::new(|| {
    Keyring::new(
        vec![SigningKey::new(KID, SECRET).unwrap()],
        KID,
        ApiKeys::default(),
    )
    .unwrap()
});
static VERIFIER: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new(&TokenSettings::default()));

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims exactly as the minter builds them, from request values in their documented ranges.
fn claims(
    org: String,
    token_type: String,
    ctx: BTreeMap<String, String>,
    expires_in: u32,
    session: u32,
    uses: u32,
) -> Claims {
    let now = now();
    let settings = TokenSettings::default();
    Claims {
        iss: settings.issuer,
        aud: settings.audience,
        org,
        token_type,
        jti: Uuid::new_v4(),
        iat: now,
        exp: now + i64::from(expires_in),
        max_session_duration_seconds: session,
        ctx,
        uses,
        reconnect_grace_seconds: 0,
    }
}

fn valid_claims() -> Claims {
    claims(
        "acme".into(),
        "realtime".into(),
        BTreeMap::from([("sessionId".into(), "s-1".into())]),
        60,
        3600,
        1,
    )
}

fn verify(token: &str) -> Result<Claims, streamtoken::token::claims::RejectReason> {
    VERIFIER.verify(token, &KEYRING)
}

/// The 6-bit value of a base64url character.
fn sextet(c: u8) -> Option<u8> {
    TOKEN_CHARS[..64]
        .iter()
        .position(|&x| x == c)
        .map(|i| i as u8)
}

/// The header segment our own tokens carry, so random payloads reach the signature check.
fn real_header_segment() -> String {
    let token = sign(&valid_claims(), KEYRING.active()).unwrap();
    token.split('.').next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// (a) Whatever a client presents: no panic, no acceptance
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_bytes_read_as_text_never_verify(bytes in vec(any::<u8>(), 0..1024)) {
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(verify(&text).is_err());
    }

    #[test]
    fn any_string_of_base64url_characters_and_dots_never_verifies(text in "[A-Za-z0-9_.-]{0,600}") {
        prop_assert!(verify(&text).is_err());
    }

    #[test]
    fn any_three_base64url_segments_never_verify(
        header in "[A-Za-z0-9_-]{0,80}",
        payload in "[A-Za-z0-9_-]{0,400}",
        signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{header}.{payload}.{signature}");
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn our_header_with_any_payload_and_signature_never_verifies(
        payload in "[A-Za-z0-9_-]{0,400}",
        signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{}.{payload}.{signature}", real_header_segment());
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn any_json_header_and_payload_never_verify_unsigned(
        header in any_json(),
        payload in any_json(),
        signature in "[A-Za-z0-9_-]{43}",
    ) {
        let segment = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let token = format!("{}.{}.{signature}", segment(&header), segment(&payload));
        prop_assert!(verify(&token).is_err());
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Around the 8 KiB bound, where the length check and the parser meet.
    #[test]
    fn strings_around_the_length_bound_never_verify(text in "[A-Za-z0-9_.-]{8150,8250}") {
        prop_assert!(verify(&text).is_err());
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::from),
        Just(json!("HS256")),
        Just(json!(KID)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::from),
            btree_map(
                prop_oneof![
                    Just("alg".to_owned()),
                    Just("kid".to_owned()),
                    Just("exp".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims signed with the real key but holding whatever values for the numeric claims: the
/// verifier must neither panic (overflow, casts) nor accept an `exp` outside the window any
/// token we mint could have.
fn any_numeric_claim() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        (-100_000i64..100_000).prop_map(move |d| json!(now() + d)),
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(Value::Null),
        "[0-9]{1,12}".prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn validly_signed_claims_with_any_numbers_never_panic_and_respect_the_window(
        exp in any_numeric_claim(),
        iat in any_numeric_claim(),
        session in any_numeric_claim(),
        uses in any_numeric_claim(),
    ) {
        let mut claims = serde_json::to_value(valid_claims()).unwrap();
        for (name, value) in [("exp", exp), ("iat", iat), ("max_session_duration_seconds", session), ("uses", uses)] {
            claims[name] = value;
        }
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.into());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        let before = now();
        let outcome = verify(&token);
        let after = now();
        if let Ok(accepted) = outcome {
            let leeway = TokenSettings::default().leeway_seconds as i64;
            prop_assert!(accepted.exp >= before - leeway, "accepted an expired exp {}", accepted.exp);
            prop_assert!(
                accepted.exp <= after + i64::from(ExpiresIn::MAX) + leeway,
                "accepted exp {} beyond the longest window", accepted.exp
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) One character changed: refused (or, in the signature's unused bits, the same claims)
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn changing_any_one_character_of_a_signed_token_is_refused(
        at in any::<Index>(),
        replacement in any::<Index>(),
    ) {
        let original = valid_claims();
        let token = sign(&original, KEYRING.active()).unwrap();
        let bytes = token.as_bytes();
        let position = at.index(bytes.len());
        let old = bytes[position];
        // Any other token character: base64url or '.'.
        let mut new = *replacement.get(TOKEN_CHARS);
        if new == old {
            new = TOKEN_CHARS[(TOKEN_CHARS.iter().position(|&c| c == old).unwrap() + 1) % TOKEN_CHARS.len()];
        }
        let mut changed = bytes.to_vec();
        changed[position] = new;
        let changed = String::from_utf8(changed).unwrap();

        match verify(&changed) {
            Err(_) => {}
            Ok(claims) => {
                // The one change that may survive: the last signature character of a 32-byte
                // HMAC carries 4 bits; its 2 low bits are padding that a lenient decoder ignores.
                let last = position == bytes.len() - 1;
                let same_data = matches!(
                    (sextet(old), sextet(new)),
                    (Some(a), Some(b)) if a >> 2 == b >> 2
                );
                prop_assert!(
                    last && same_data,
                    "{changed} verified after changing {:?} to {:?} at {position}",
                    old as char, new as char
                );
                prop_assert_eq!(claims, original);
            }
        }
    }
}

/// The same property, exhaustively: every position of one token, every other token character.
#[test]
fn every_one_character_change_of_a_signed_token_is_refused() {
    let token = sign(&valid_claims(), KEYRING.active()).unwrap();
    let bytes = token.as_bytes();
    let mut accepted = Vec::new();
    for position in 0..bytes.len() {
        for &new in TOKEN_CHARS.iter().filter(|&&c| c != bytes[position]) {
            let mut changed = bytes.to_vec();
            changed[position] = new;
            if verify(std::str::from_utf8(&changed).unwrap()).is_ok() {
                accepted.push((position, new as char));
            }
        }
    }
    // Only the 2 padding bits of the last signature character could be lenient; ours are not.
    assert!(
        accepted.is_empty(),
        "accepted after one change: {accepted:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Every valid mint round-trips
// ---------------------------------------------------------------------------------------------

/// Either a few entries at their full length in any script, or up to the maximum count of short
/// ones: both stay mostly within `Ctx`'s 4 KiB, and the rest is filtered out below.
fn ctx_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        btree_map("\\PC{1,64}", "\\PC{0,256}", 0..=3),
        btree_map("[A-Za-z0-9_]{1,16}", "[ -~]{0,32}", 0..=Ctx::MAX_ENTRIES),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_token_minted_from_any_valid_claims_verifies_to_the_same_claims(
        org in "[A-Za-z0-9._-]{1,64}",
        token_type in "[a-z0-9_]{1,64}",
        ctx in ctx_strategy(),
        expires_in in 1u32..=ExpiresIn::MAX,
        session in 1u32..=86_400,
        uses in 1u32..=100,
    ) {
        // Only what the minting routes accept: ctx within its documented limits.
        prop_assume!(Ctx::parse(ctx.clone()).is_ok());
        let minted = claims(org, token_type, ctx, expires_in, session, uses);
        let token = sign(&minted, KEYRING.active()).unwrap();
        prop_assert_eq!(verify(&token), Ok(minted));
    }
}
