//! The keyring: signing keys and API keys loaded from the keys directory, swappable at run time.
//!
//! Layout (see `keys/README.md`):
//! - `signing/<kid>.key` — one HMAC secret per file (≥ 32 bytes, surrounding whitespace ignored);
//!   the key id is the file stem. Every listed key verifies.
//! - `signing/active` — the kid that signs new tokens.
//! - `api_keys.json` — API key records (hashes only).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::input::is_name;
use crate::tenancy::api_keys::{ApiKeys, ApiKeysFile};

pub const SIGNING_DIR: &str = "signing";
pub const ACTIVE_FILE: &str = "active";
pub const API_KEYS_FILE: &str = "api_keys.json";
pub const KEY_EXTENSION: &str = "key";
pub const MIN_SECRET_BYTES: usize = 32;
pub const MAX_KID_LEN: usize = 64;

/// One HMAC key, ready to sign and verify. `Debug` shows only the kid.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    pub fn new(kid: &str, secret: &[u8]) -> anyhow::Result<Self> {
        if !is_valid_kid(kid) {
            bail!("key id {kid:?} must be 1-{MAX_KID_LEN} characters of A-Z, a-z, 0-9, - and _");
        }
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "signing key {kid:?} is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            );
        }
        Ok(SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

/// 1–64 characters of `A-Z a-z 0-9 - _`: a kid names a file, so it can never walk the filesystem.
pub fn is_valid_kid(kid: &str) -> bool {
    is_name(kid, MAX_KID_LEN, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    })
}

/// Everything the service needs to sign, verify and authenticate, as one immutable snapshot.
#[derive(Debug)]
pub struct Keyring {
    active: Arc<SigningKey>,
    verifying: HashMap<String, Arc<SigningKey>>,
    api_keys: ApiKeys,
}

impl Keyring {
    pub fn new(keys: Vec<SigningKey>, active_kid: &str, api_keys: ApiKeys) -> anyhow::Result<Self> {
        let verifying: HashMap<_, _> = keys
            .into_iter()
            .map(|k| (k.kid.clone(), Arc::new(k)))
            .collect();
        let active = verifying
            .get(active_kid)
            .cloned()
            .with_context(|| format!("the active key {active_kid:?} has no key file"))?;
        Ok(Keyring {
            active,
            verifying,
            api_keys,
        })
    }

    /// Reads the whole keys directory; any problem is an error naming the file.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let signing_dir = dir.join(SIGNING_DIR);
        let keys = read_signing_keys(&signing_dir)?;
        if keys.is_empty() {
            bail!(
                "no signing keys in {}; create one with `streamtoken keys init`",
                signing_dir.display()
            );
        }
        let active_path = signing_dir.join(ACTIVE_FILE);
        let active_kid = std::fs::read_to_string(&active_path)
            .with_context(|| format!("reading the active key id from {}", active_path.display()))?;
        let api_keys = read_api_keys(&dir.join(API_KEYS_FILE))?;
        Keyring::new(keys, active_kid.trim(), api_keys)
    }

    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    pub fn verifying_key(&self, kid: &str) -> Option<&SigningKey> {
        self.verifying.get(kid).map(|k| k.as_ref())
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verifying.keys().map(String::as_str)
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }
}

fn read_signing_keys(signing_dir: &Path) -> anyhow::Result<Vec<SigningKey>> {
    let entries = match std::fs::read_dir(signing_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", signing_dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(KEY_EXTENSION) {
            continue;
        }
        let kid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{} has no usable name", path.display()))?;
        let secret = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let key = SigningKey::new(kid, secret.trim_ascii())
            .with_context(|| format!("loading {}", path.display()))?;
        keys.push(key);
    }
    Ok(keys)
}

pub fn read_api_keys_file(path: &Path) -> anyhow::Result<ApiKeysFile> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApiKeysFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn read_api_keys(path: &Path) -> anyhow::Result<ApiKeys> {
    ApiKeys::from_file(read_api_keys_file(path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The live keyring. Readers take a cheap snapshot; a reload swaps in a new one atomically, so
/// requests already holding the old snapshot finish with it and none fails during the swap.
pub struct KeyringHandle {
    dir: PathBuf,
    current: ArcSwap<Keyring>,
}

impl KeyringHandle {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Ok(KeyringHandle {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(Keyring::load(dir)?),
        })
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Keyring>> {
        self.current.load()
    }

    /// Re-reads the directory. On error the running keyring stays in place.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(Keyring::load(&self.dir)?);
        self.current.store(fresh.clone());
        // Logged after the swap: whoever waits for this line sees the new keys in effect.
        log::info!(
            "keyring reloaded: active key {:?}, {} verifying key(s), {} API key(s)",
            fresh.active().kid(),
            fresh.verifying.len(),
            fresh.api_keys().len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        let err = SigningKey::new("k1", &[7u8; 31]).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        assert!(SigningKey::new("k1", &[7u8; 32]).is_ok());
    }

    #[test]
    fn a_kid_that_could_walk_the_filesystem_is_refused() {
        for kid in ["", "../etc", "a/b", "a.b", &"k".repeat(65)] {
            assert!(SigningKey::new(kid, &[7u8; 32]).is_err(), "{kid:?}");
        }
    }

    #[test]
    fn debug_output_shows_the_kid_and_not_the_secret() {
        let key = SigningKey::new("k1", b"0123456789abcdef0123456789abcdef-secret").unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("k1") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_directory_without_keys_is_an_error_that_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Keyring::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("keys init"), "{err:#}");
    }

    #[test]
    fn an_active_kid_without_a_file_is_an_error() {
        let key = SigningKey::new("k1", &[1u8; 32]).unwrap();
        let err = Keyring::new(vec![key], "k2", ApiKeys::default()).unwrap_err();
        assert!(err.to_string().contains("k2"));
    }
}
