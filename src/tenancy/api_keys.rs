//! API keys: how they look, how they are stored (SHA-256 only) and how a presented key is found.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tenancy::org::{Org, DEV_ORG};

/// Fixed prefix so secret scanners (and people) recognise a leaked key.
pub const API_KEY_PREFIX: &str = "st_";
/// Random bytes behind the prefix; base64url-encoded this gives 43 characters.
pub const API_KEY_RANDOM_BYTES: usize = 32;
/// Anything longer cannot be one of our keys; refuse before hashing.
pub const MAX_PRESENTED_KEY_BYTES: usize = 256;
/// The name of the key `keys init` creates (in the dev org); its presence enables the demo.
pub const DEV_KEY_NAME: &str = "dev";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// May call the minting routes.
    Mint,
    /// May redeem and introspect tokens (what a gateway needs).
    Redeem,
    /// May revoke tokens, one or an org's, and so end the sessions they opened.
    Revoke,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Mint => "mint",
            Scope::Redeem => "redeem",
            Scope::Revoke => "revoke",
        }
    }
}

/// One entry of `api_keys.json`. Holds the key's hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Public identifier for logs and `keys list` (derived from the hash, reveals nothing).
    pub id: String,
    /// Lower-case hex SHA-256 of the full key string.
    pub sha256: String,
    pub org: Org,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Per-key override of the org's default rate limit (requests per minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Credit balance granted to the org when the key was created; absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<u64>,
    /// An operator key: redeems, introspects and reads usage of every org's tokens, not only
    /// its own org's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_org: bool,
    pub created_at: String,
}

impl ApiKeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether this key may act on `org`'s tokens and usage.
    pub fn acts_for(&self, org: &str) -> bool {
        self.any_org || self.org.as_str() == org
    }
}

/// The on-disk shape of `api_keys.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub api_keys: Vec<ApiKeyRecord>,
}

/// Loaded API keys, indexed by hash for one map lookup per request.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<ApiKeyRecord>>,
    /// Each org's credit allowance: the largest `credits` among its keys.
    credits_by_org: HashMap<Org, u64>,
}

impl ApiKeys {
    pub fn from_file(file: ApiKeysFile) -> Result<Self, String> {
        let mut by_hash = HashMap::with_capacity(file.api_keys.len());
        let mut credits_by_org: HashMap<Org, u64> = HashMap::new();
        for record in file.api_keys {
            let digest = parse_digest(&record.sha256)
                .ok_or_else(|| format!("api key {:?}: sha256 is not 64 hex digits", record.id))?;
            if record.rate_per_minute == Some(0) {
                return Err(format!(
                    "api key {:?}: rate_per_minute must be at least 1",
                    record.id
                ));
            }
            if let Some(credits) = record.credits {
                let allowance = credits_by_org.entry(record.org.clone()).or_default();
                *allowance = (*allowance).max(credits);
            }
            if by_hash.insert(digest, Arc::new(record)).is_some() {
                return Err("two api keys share one hash".into());
            }
        }
        Ok(ApiKeys {
            by_hash,
            credits_by_org,
        })
    }

    /// Finds the record of a presented key. Comparing hashes, not keys, means lookup time
    /// reveals nothing about a stored key.
    pub fn find(&self, presented: &str) -> Option<&Arc<ApiKeyRecord>> {
        if presented.len() > MAX_PRESENTED_KEY_BYTES {
            return None;
        }
        self.by_hash.get(&hash_key(presented))
    }

    /// Total redemptions the org may make; `None` = unlimited.
    pub fn credit_limit(&self, org: &str) -> Option<u64> {
        self.credits_by_org.get(org).copied()
    }

    /// The dev key `keys init` creates, if the keyring holds it; the demo mints as it.
    pub fn dev_key(&self) -> Option<&Arc<ApiKeyRecord>> {
        self.by_hash
            .values()
            .find(|r| r.org.as_str() == DEV_ORG && r.name == DEV_KEY_NAME)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

/// A fresh key: `st_` + 32 random bytes in base64url. Returns the key and its record id.
pub fn generate_key() -> String {
    let random: [u8; API_KEY_RANDOM_BYTES] = crate::random::bytes();
    format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// A record for `key`; its id is a prefix of the hash so it can be shown and logged.
pub fn record_for(key: &str, org: &Org, name: &str, scopes: Vec<Scope>) -> ApiKeyRecord {
    let digest = hex::encode(hash_key(key));
    ApiKeyRecord {
        id: format!("ak_{}", &digest[..12]),
        sha256: digest,
        org: org.clone(),
        name: name.into(),
        scopes,
        rate_per_minute: None,
        credits: None,
        any_org: false,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(name: &str) -> Org {
        Org::parse(name).unwrap()
    }

    #[test]
    fn a_generated_key_has_the_prefix_and_43_base64url_characters() {
        let key = generate_key();
        let body = key.strip_prefix("st_").unwrap();
        assert_eq!(body.len(), 43);
        assert!(body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(key, generate_key());
    }

    #[test]
    fn a_key_is_found_by_its_hash_and_the_record_holds_no_plaintext() {
        let key = generate_key();
        let record = record_for(&key, &org("acme"), "ci", vec![Scope::Mint]);
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains(&key[3..]));
        let keys = ApiKeys::from_file(ApiKeysFile {
            api_keys: vec![record],
        })
        .unwrap();
        assert_eq!(keys.find(&key).unwrap().org.as_str(), "acme");
        assert!(keys.find("st_wrong").is_none());
        assert!(keys.find(&"x".repeat(10_000)).is_none());
    }

    #[test]
    fn an_orgs_credit_allowance_is_the_largest_among_its_keys() {
        let mut records = Vec::new();
        for (org, credits) in [
            ("acme", Some(5)),
            ("acme", Some(9)),
            ("acme", None),
            ("free", None),
        ] {
            let mut record = record_for(&generate_key(), &self::org(org), "k", vec![Scope::Mint]);
            record.credits = credits;
            records.push(record);
        }
        let keys = ApiKeys::from_file(ApiKeysFile { api_keys: records }).unwrap();
        assert_eq!(keys.credit_limit("acme"), Some(9));
        assert_eq!(keys.credit_limit("free"), None);
    }

    #[test]
    fn the_count_of_loaded_keys_is_what_the_file_held() {
        assert!(ApiKeys::default().is_empty());
        let records = ["st_a", "st_b"]
            .map(|key| record_for(key, &org("acme"), "k", vec![Scope::Mint]))
            .to_vec();
        let keys = ApiKeys::from_file(ApiKeysFile { api_keys: records }).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(!keys.is_empty());
    }

    #[test]
    fn the_dev_key_is_the_one_named_dev_in_the_dev_org_and_no_other() {
        let named_dev_elsewhere = record_for("st_a", &org("acme"), DEV_KEY_NAME, vec![Scope::Mint]);
        let other_in_dev = record_for("st_b", &org(DEV_ORG), "ci", vec![Scope::Mint]);
        let keys = ApiKeys::from_file(ApiKeysFile {
            api_keys: vec![named_dev_elsewhere, other_in_dev],
        })
        .unwrap();
        assert!(keys.dev_key().is_none());
        let dev = record_for("st_c", &org(DEV_ORG), DEV_KEY_NAME, vec![Scope::Mint]);
        let keys = ApiKeys::from_file(ApiKeysFile {
            api_keys: vec![dev],
        })
        .unwrap();
        assert_eq!(keys.dev_key().unwrap().name, DEV_KEY_NAME);
    }

    #[test]
    fn a_rate_of_zero_is_refused() {
        let mut record = record_for("st_x", &org("acme"), "ci", vec![Scope::Mint]);
        record.rate_per_minute = Some(0);
        assert!(ApiKeys::from_file(ApiKeysFile {
            api_keys: vec![record]
        })
        .is_err());
    }

    #[test]
    fn a_record_with_a_malformed_hash_is_refused() {
        let mut record = record_for("st_x", &org("acme"), "ci", vec![]);
        record.sha256 = "nothex".into();
        assert!(ApiKeys::from_file(ApiKeysFile {
            api_keys: vec![record]
        })
        .is_err());
    }
}
