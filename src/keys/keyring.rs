//! The keyring: signing keys and API keys loaded from the keys directory, swappable at run time.
//!
//! Layout (see `keys/README.md`):
//! - `signing/<kid>.key` — one HMAC secret per file (≥ 32 bytes, surrounding whitespace ignored);
//!   the key id is the file stem. Every listed key verifies.
//! - `signing/active` — the kid that signs new tokens.
//! - `api_keys.json` — API key records (hashes only).

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use jsonwebtoken::EncodingKey;
use sha2::Sha256;

use crate::input::is_name;
use crate::tenancy::api_keys::{ApiKeys, ApiKeysFile};

pub const SIGNING_DIR: &str = "signing";
pub const ACTIVE_FILE: &str = "active";
pub const API_KEYS_FILE: &str = "api_keys.json";
pub const KEY_EXTENSION: &str = "key";
pub const MIN_SECRET_BYTES: usize = 32;
/// A secret with fewer distinct byte values is a placeholder (`aaaa…`), not a key.
pub const MIN_DISTINCT_SECRET_BYTES: usize = 16;
pub const MAX_KID_LEN: usize = 64;

/// One HMAC key, ready to sign and verify. `Debug` shows only the kid.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// HMAC-SHA256 already keyed with the secret: keying hashes the secret's padded blocks, so
    /// doing it once here leaves each sign or verify to clone this state and hash the message.
    mac: Hmac<Sha256>,
    /// `base64url(header).`: the header of every token this key signs is the same bytes.
    header_prefix: String,
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
        let distinct = secret
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct < MIN_DISTINCT_SECRET_BYTES {
            bail!(
                "signing key {kid:?} has only {distinct} distinct byte values; at least \
                 {MIN_DISTINCT_SECRET_BYTES} are required (create keys with `streamtoken keys \
                 new-signing-key`)"
            );
        }
        Ok(SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            mac: Hmac::new_from_slice(secret).context("keying HMAC-SHA256")?,
            header_prefix: encoded_header(kid)?,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
    /// HMAC-SHA256 keyed with this secret; clone it for each message.
    pub fn mac(&self) -> &Hmac<Sha256> {
        &self.mac
    }
    /// The first part of every token this key signs, with its `.`.
    pub fn header_prefix(&self) -> &str {
        &self.header_prefix
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
    /// The same keys by their encoded header (without the `.`): a token whose header is
    /// byte for byte one we write needs no decoding to find its key.
    by_header: HashMap<String, Arc<SigningKey>>,
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
        let by_header = verifying
            .values()
            .map(|k| (k.header_prefix.trim_end_matches('.').to_owned(), k.clone()))
            .collect();
        Ok(Keyring {
            active,
            verifying,
            by_header,
            api_keys,
        })
    }

    /// Reads the whole keys directory; any problem is an error naming the file. A signing key
    /// file others may read is a warning.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, KeyFileModes::Warn)
    }

    /// Like `load`, with the rule for signing key files others may read. What it reads is what
    /// `reads` names: the folder watch looks at nothing else.
    pub fn load_with(dir: &Path, modes: KeyFileModes) -> anyhow::Result<Self> {
        let signing_dir = dir.join(SIGNING_DIR);
        let keys = read_signing_keys(&signing_dir, modes)?;
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

    /// The key whose tokens carry exactly this encoded header (`{"typ":"JWT","alg":"HS256",
    /// "kid":…}` as we write it), if any.
    pub fn key_for_header(&self, encoded_header: &str) -> Option<&SigningKey> {
        self.by_header.get(encoded_header).map(|k| k.as_ref())
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verifying.keys().map(String::as_str)
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }
}

/// What loading does with a signing key file its group or others may read (mode `0o077` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileModes {
    /// Log a warning naming the file, and load it.
    Warn,
    /// Refuse to load (`STREAMTOKEN_STRICT_KEY_FILES=true`).
    Refuse,
}

fn check_mode(path: &Path, modes: KeyFileModes) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let problem = format!(
        "{} is readable by others (mode {:o}); run chmod 600 on it",
        path.display(),
        mode & 0o777
    );
    match modes {
        KeyFileModes::Warn => {
            log::warn!("{problem}");
            Ok(())
        }
        KeyFileModes::Refuse => bail!("{problem} (STREAMTOKEN_STRICT_KEY_FILES=true)"),
    }
}

fn is_key_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(KEY_EXTENSION)
}

/// Whether loading reads `relative`, a path inside the keys folder. The folder watch
/// fingerprints exactly these, so temporary files and Kubernetes' `..data` folders beside them
/// trigger no reload.
pub fn reads(relative: &Path) -> bool {
    let mut parts = relative.components().map(|c| c.as_os_str());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(top), None, None) => top == SIGNING_DIR || top == API_KEYS_FILE,
        (Some(top), Some(name), None) => {
            top == SIGNING_DIR && (name == ACTIVE_FILE || is_key_file(Path::new(name)))
        }
        _ => false,
    }
}

fn read_signing_keys(signing_dir: &Path, modes: KeyFileModes) -> anyhow::Result<Vec<SigningKey>> {
    let entries = match std::fs::read_dir(signing_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", signing_dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if !is_key_file(&path) {
            continue;
        }
        let kid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{} has no usable name", path.display()))?;
        check_mode(&path, modes)?;
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
    modes: KeyFileModes,
    current: ArcSwap<Keyring>,
}

impl KeyringHandle {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, KeyFileModes::Warn)
    }

    pub fn load_with(dir: &Path, modes: KeyFileModes) -> anyhow::Result<Self> {
        Ok(KeyringHandle {
            dir: dir.to_owned(),
            modes,
            current: ArcSwap::from_pointee(Keyring::load_with(dir, modes)?),
        })
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Keyring>> {
        self.current.load()
    }

    /// The keys directory this keyring is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory. On error the running keyring stays in place.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(Keyring::load_with(&self.dir, self.modes)?);
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

    /// `reload` for SIGHUP and the folder watch: a failure is logged, not returned, and the
    /// running keyring stays in place.
    pub fn reload_or_keep(&self) {
        if let Err(e) = self.reload() {
            log::error!("keyring reload failed, keeping the previous keys: {e:#}");
        }
    }
}

/// `base64url(header).` for tokens signed under `kid`, serialised by jsonwebtoken's own `Header`
/// so the bytes are what `jsonwebtoken::encode` would write. Computed once per key.
fn encoded_header(kid: &str) -> Result<String, serde_json::Error> {
    use base64::Engine;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let mut prefix =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
    prefix.push('.');
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        let err = SigningKey::new("k1", &GOOD_SECRET[..31]).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        assert!(SigningKey::new("k1", &GOOD_SECRET).is_ok());
    }

    /// 32 bytes, every one distinct.
    const GOOD_SECRET: [u8; 32] = *b"0123456789abcdefghijklmnopqrstuv";

    #[test]
    fn a_secret_of_too_few_distinct_bytes_is_refused() {
        let err = SigningKey::new("k1", &[7u8; 64]).unwrap_err();
        assert!(err.to_string().contains("distinct"), "{err}");
        let fifteen: Vec<u8> = (0..64).map(|i| b'a' + (i % 15) as u8).collect();
        assert!(SigningKey::new("k1", &fifteen).is_err());
        let sixteen: Vec<u8> = (0..64).map(|i| b'a' + (i % 16) as u8).collect();
        assert!(SigningKey::new("k1", &sixteen).is_ok());
    }

    #[test]
    fn a_key_file_others_can_read_loads_with_a_warning_or_is_refused_when_strict() {
        let dir = tempfile::tempdir().unwrap();
        crate::keys::admin::init_dev(dir.path()).unwrap();
        let active = Keyring::load(dir.path()).unwrap().active().kid().to_owned();
        let file = dir
            .path()
            .join(SIGNING_DIR)
            .join(format!("{active}.{KEY_EXTENSION}"));
        assert!(Keyring::load_with(dir.path(), KeyFileModes::Refuse).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Keyring::load_with(dir.path(), KeyFileModes::Warn).is_ok());
        let err = Keyring::load_with(dir.path(), KeyFileModes::Refuse).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains("644"),
            "{err}"
        );
    }

    #[test]
    fn reads_names_what_loading_reads_and_nothing_beside_it() {
        for read in [
            "signing",
            "api_keys.json",
            "signing/active",
            "signing/k1.key",
        ] {
            assert!(reads(Path::new(read)), "{read}");
        }
        for other in [
            "",
            "README.md",
            "..data",
            "..2026_11_30_01/api_keys.json",
            "api_keys.tmp-0a1b2c3d",
            "signing/active.tmp-0a1b2c3d",
            "signing/k1.tmp-0a1b2c3d",
            "signing/k1.key/x",
            "other/k1.key",
        ] {
            assert!(!reads(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn a_kid_that_could_walk_the_filesystem_is_refused() {
        for kid in ["", "../etc", "a/b", "a.b", &"k".repeat(65)] {
            assert!(SigningKey::new(kid, &GOOD_SECRET).is_err(), "{kid:?}");
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
        let key = SigningKey::new("k1", &GOOD_SECRET).unwrap();
        let err = Keyring::new(vec![key], "k2", ApiKeys::default()).unwrap_err();
        assert!(err.to_string().contains("k2"));
    }
}
