//! An organisation: the tenant a key belongs to, that a token is minted for, and that pays for
//! its redemptions. The same rule holds wherever an org name enters: the CLI, the keys file and
//! a token's `org` claim.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::input::{is_name, InvalidParam};

/// The org `keys init` creates its dev key for.
pub const DEV_ORG: &str = "dev";

/// 1–64 characters of `A-Z a-z 0-9 . - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Org(String);

impl Org {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, InvalidParam> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if is_name(value, Self::MAX_LEN, allowed) {
            Ok(Org(value.to_owned()))
        } else {
            Err(InvalidParam::new(
                "org",
                format!("org {value:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '-' and '_'"),
            ))
        }
    }

    /// The org of the dev key `keys init` creates.
    pub fn dev() -> Self {
        Org(DEV_ORG.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Org {
    type Error = InvalidParam;

    fn try_from(value: String) -> Result<Self, InvalidParam> {
        Org::parse(&value)
    }
}

impl From<Org> for String {
    fn from(org: Org) -> Self {
        org.0
    }
}

/// Lets maps keyed by `Org` be searched with a claim's `&str`.
impl std::borrow::Borrow<str> for Org {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Org {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_outside_its_alphabet_or_length_is_refused() {
        for bad in ["", "bad org", "a/b", "ü", "a:b", &"a".repeat(65)] {
            assert!(Org::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Org::parse(DEV_ORG).unwrap(), Org::dev());
        for good in ["acme", "A.b-c_9", &"a".repeat(64)] {
            assert_eq!(Org::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn a_keys_file_with_an_invalid_org_does_not_deserialize() {
        assert!(serde_json::from_str::<Org>(r#""bad org""#).is_err());
        assert_eq!(
            serde_json::from_str::<Org>(r#""acme""#).unwrap(),
            Org::parse("acme").unwrap()
        );
    }
}
