//! Values a mint request is made of. Each can only be built through its parser, so the minting
//! core trusts them; an adapter for a narrower wire format parses through `within`, once.

use std::collections::BTreeMap;
use std::fmt;

use crate::input::{is_name, Bounds, InvalidParam, Within};

macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr, $default:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(u32);

        impl $name {
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;
            pub const FIELD: &'static str = $field;

            /// Accepts any integer and refuses it with the field's rule when out of range.
            pub fn parse(value: i128) -> Result<Self, InvalidParam> {
                Self::within(Self::FIELD, Self::MIN, Self::MAX).parse(value)
            }

            /// The range a narrower wire format allows, under its own parameter name. It is
            /// clamped to the type's own range, so no wire format can widen it.
            pub const fn within(field: &'static str, min: u32, max: u32) -> Within<Self> {
                let min = if min < Self::MIN { Self::MIN } else { min };
                let max = if max > Self::MAX { Self::MAX } else { max };
                Within::new(Bounds { field, min, max }, Self)
            }

            /// A value fixed by a wire format, checked when the constant is compiled.
            #[allow(dead_code)] // not every type has a value some wire format fixes
            pub(crate) const fn fixed(value: u32) -> Self {
                assert!(value >= Self::MIN && value <= Self::MAX);
                Self(value)
            }

            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }
    };
}

bounded!(
    /// Seconds until the redemption deadline (`exp`).
    ExpiresIn,
    "expires_in_seconds",
    1,
    3600,
    60
);
bounded!(
    /// Longest session a redemption opens, counted from redemption.
    SessionDuration,
    "max_session_duration_seconds",
    1,
    86_400,
    3600
);
bounded!(
    /// Redemptions the token allows.
    Uses,
    "uses",
    1,
    100,
    1
);
bounded!(
    /// How long after its connection drops a session may be re-opened with the same token.
    ReconnectGrace,
    "reconnect_grace_seconds",
    0,
    600,
    0
);

/// What the token opens, e.g. `realtime`: `[a-z0-9_]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenType(String);

impl TokenType {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, InvalidParam> {
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if is_name(value, Self::MAX_LEN, allowed) {
            Ok(TokenType(value.to_owned()))
        } else {
            Err(InvalidParam::new(
                "token_type",
                "token_type must be 1-64 characters of a-z, 0-9 and _",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fixed type a compatibility route mints; checked by this module's tests.
    pub(crate) fn fixed(value: &'static str) -> Self {
        debug_assert!(TokenType::parse(value).is_ok(), "{value}");
        TokenType(value.to_owned())
    }
}

impl Default for TokenType {
    fn default() -> Self {
        TokenType("realtime".into())
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// String constraints bound into the token (`chatbotId`, `sessionId`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ctx(BTreeMap<String, String>);

impl Ctx {
    pub const MAX_ENTRIES: usize = 16;
    /// Characters (not bytes), so the limits can be stated exactly in the OpenAPI schema.
    pub const MAX_KEY_CHARS: usize = 64;
    pub const MAX_VALUE_CHARS: usize = 256;
    /// The whole ctx as JSON; keeps every mintable token under `token::MAX_TOKEN_BYTES`.
    pub const MAX_JSON_BYTES: usize = 4096;

    pub fn parse(entries: BTreeMap<String, String>) -> Result<Self, InvalidParam> {
        Self::check(&entries)?;
        Ok(Ctx(entries))
    }

    /// The rules `parse` applies, without taking the map.
    pub fn check(entries: &BTreeMap<String, String>) -> Result<(), InvalidParam> {
        if entries.len() > Self::MAX_ENTRIES {
            return Err(InvalidParam::new(
                "ctx",
                format!("ctx may hold at most {} entries", Self::MAX_ENTRIES),
            ));
        }
        for (key, value) in entries {
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > Self::MAX_KEY_CHARS {
                return Err(InvalidParam::new(
                    "ctx",
                    format!("ctx keys must be 1-{} characters", Self::MAX_KEY_CHARS),
                ));
            }
            if value.chars().count() > Self::MAX_VALUE_CHARS {
                return Err(InvalidParam::new(
                    "ctx",
                    format!(
                        "ctx value for {key:?} is longer than {} characters",
                        Self::MAX_VALUE_CHARS
                    ),
                ));
            }
        }
        let json_bytes = serde_json::to_vec(entries).map_or(usize::MAX, |json| json.len());
        if json_bytes > Self::MAX_JSON_BYTES {
            return Err(InvalidParam::new(
                "ctx",
                format!(
                    "ctx is {json_bytes} bytes as JSON; at most {} are allowed",
                    Self::MAX_JSON_BYTES
                ),
            ));
        }
        Ok(())
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_its_bounds_and_refuses_beyond_them() {
        assert_eq!(ExpiresIn::parse(1).unwrap().get(), 1);
        assert_eq!(ExpiresIn::parse(3600).unwrap().get(), 3600);
        for bad in [0, -1, 3601, i128::from(u64::MAX) + 1] {
            let err = ExpiresIn::parse(bad).unwrap_err();
            assert_eq!(
                err.message,
                "expires_in_seconds must be an integer between 1 and 3600"
            );
        }
    }

    #[test]
    fn a_narrower_range_is_checked_under_the_wire_formats_name() {
        let ttl = ExpiresIn::within("ttl", 1, 300);
        assert_eq!(ttl.parse(300).unwrap().get(), 300);
        let err = ttl.parse(301).unwrap_err();
        assert_eq!(err.field, "ttl");
        assert_eq!(err.message, "ttl must be an integer between 1 and 300");
        let widened = ExpiresIn::within("ttl", 0, 100_000);
        assert_eq!(widened.bounds().min, ExpiresIn::MIN);
        assert_eq!(widened.bounds().max, ExpiresIn::MAX);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(ExpiresIn::default().get(), 60);
        assert_eq!(SessionDuration::default().get(), 3600);
        assert_eq!(Uses::default().get(), 1);
        assert_eq!(ReconnectGrace::default().get(), 0);
        assert_eq!(TokenType::default().as_str(), "realtime");
    }

    #[test]
    fn uses_above_one_hundred_is_refused() {
        assert!(Uses::parse(100).is_ok());
        assert!(Uses::parse(101).is_err());
        assert!(SessionDuration::parse(86_401).is_err());
        assert!(ReconnectGrace::parse(600).is_ok());
        assert!(ReconnectGrace::parse(601).is_err());
    }

    #[test]
    fn a_token_type_outside_its_alphabet_is_refused() {
        for bad in ["", "Realtime", "real-time", "a b", "ü", &"a".repeat(65)] {
            assert!(TokenType::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TokenType::parse(&"a".repeat(64)).is_ok());
        assert!(TokenType::parse("tts_websocket2").is_ok());
    }

    #[test]
    fn ctx_limits_are_enforced() {
        let many: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Ctx::parse(many).is_err());
        let long_key = BTreeMap::from([("k".repeat(65), "v".to_string())]);
        assert!(Ctx::parse(long_key).is_err());
        let long_value = BTreeMap::from([("k".to_string(), "v".repeat(257))]);
        assert!(Ctx::parse(long_value).is_err());
        let multibyte = BTreeMap::from([("é".repeat(64), "é".repeat(256))]);
        assert!(Ctx::parse(multibyte).is_ok(), "limits count characters");
        let empty_key = BTreeMap::from([(String::new(), "v".to_string())]);
        assert!(Ctx::parse(empty_key).is_err());
        let fine = BTreeMap::from([("chatbotId".to_string(), "v".repeat(256))]);
        assert!(Ctx::parse(fine).is_ok());
    }

    #[test]
    fn a_ctx_too_large_for_a_verifiable_token_is_refused() {
        let huge: BTreeMap<_, _> = (0..16)
            .map(|i| (format!("{i:0>64}"), "\u{1}".repeat(256)))
            .collect();
        let err = Ctx::parse(huge).unwrap_err();
        assert!(err.message.contains("as JSON"), "{}", err.message);
    }
}
