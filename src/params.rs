//! Values a mint request is made of. Each can only be built through its parser, so the minting
//! core trusts them; adapters for narrower wire formats check their own ranges first.

use std::collections::BTreeMap;
use std::fmt;

/// Why a request value was refused; the message names the field and its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidParam(pub String);

macro_rules! bounded_seconds {
    ($name:ident, $field:literal, $min:expr, $max:expr, $default:expr) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(u32);

        impl $name {
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;
            pub const FIELD: &'static str = $field;

            /// Accepts any integer and refuses it with the field's rule when out of range.
            pub fn parse(value: i128) -> Result<Self, InvalidParam> {
                if (i128::from(Self::MIN)..=i128::from(Self::MAX)).contains(&value) {
                    Ok(Self(value as u32))
                } else {
                    Err(out_of_range(Self::FIELD, Self::MIN, Self::MAX))
                }
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

bounded_seconds!(ExpiresIn, "expires_in_seconds", 1, 3600, 60);
bounded_seconds!(
    SessionDuration,
    "max_session_duration_seconds",
    1,
    86_400,
    3600
);
bounded_seconds!(Uses, "uses", 1, 100, 1);

pub fn out_of_range(field: &str, min: u32, max: u32) -> InvalidParam {
    InvalidParam(format!(
        "{field} must be an integer between {min} and {max}"
    ))
}

/// What the token opens, e.g. `realtime`: `[a-z0-9_]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenType(String);

impl TokenType {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, InvalidParam> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(TokenType(value.to_owned()))
        } else {
            Err(InvalidParam(
                "token_type must be 1-64 characters of a-z, 0-9 and _".into(),
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
            return Err(InvalidParam(format!(
                "ctx may hold at most {} entries",
                Self::MAX_ENTRIES
            )));
        }
        for (key, value) in entries {
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > Self::MAX_KEY_CHARS {
                return Err(InvalidParam(format!(
                    "ctx keys must be 1-{} characters",
                    Self::MAX_KEY_CHARS
                )));
            }
            if value.chars().count() > Self::MAX_VALUE_CHARS {
                return Err(InvalidParam(format!(
                    "ctx value for {key:?} is longer than {} characters",
                    Self::MAX_VALUE_CHARS
                )));
            }
        }
        let json_bytes = serde_json::to_vec(entries).map_or(usize::MAX, |json| json.len());
        if json_bytes > Self::MAX_JSON_BYTES {
            return Err(InvalidParam(format!(
                "ctx is {json_bytes} bytes as JSON; at most {} are allowed",
                Self::MAX_JSON_BYTES
            )));
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
                err.0,
                "expires_in_seconds must be an integer between 1 and 3600"
            );
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(ExpiresIn::default().get(), 60);
        assert_eq!(SessionDuration::default().get(), 3600);
        assert_eq!(Uses::default().get(), 1);
        assert_eq!(TokenType::default().as_str(), "realtime");
    }

    #[test]
    fn uses_above_one_hundred_is_refused() {
        assert!(Uses::parse(100).is_ok());
        assert!(Uses::parse(101).is_err());
        assert!(SessionDuration::parse(86_401).is_err());
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
        assert!(err.0.contains("as JSON"), "{}", err.0);
    }
}
