//! Writes to the keys directory, for the `keys` CLI: create signing keys and API keys.
//!
//! Files are written to a temporary name and renamed into place, so a reload triggered in the
//! middle of a write never reads half a file. Secrets are created with mode 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;

use crate::keys::keyring::{self, Keyring, ACTIVE_FILE, API_KEYS_FILE, KEY_EXTENSION, SIGNING_DIR};
use crate::tenancy::api_keys::{self, Scope, DEV_KEY_NAME};
use crate::tenancy::org::Org;

/// Random bytes in a generated signing secret (HS256 wants at least 32).
pub const SIGNING_SECRET_BYTES: usize = 64;

/// What `keys init` did.
#[derive(Debug)]
pub struct InitOutcome {
    pub created_signing_key: Option<String>,
    /// The new dev API key, in plaintext; the only time it exists outside the caller's hands.
    pub created_api_key: Option<String>,
}

/// Creates a dev signing key and a dev API key (mint + redeem) where none exist.
pub fn init_dev(dir: &Path) -> anyhow::Result<InitOutcome> {
    let signing_dir = dir.join(SIGNING_DIR);
    let has_signing_key = std::fs::read_dir(&signing_dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().and_then(|x| x.to_str()) == Some(KEY_EXTENSION))
        })
        .unwrap_or(false);
    let created_signing_key = if has_signing_key {
        None
    } else {
        Some(new_signing_key(dir, true)?)
    };
    let has_api_key = !keyring::read_api_keys_file(&dir.join(API_KEYS_FILE))?
        .api_keys
        .is_empty();
    let created_api_key = if has_api_key {
        None
    } else {
        Some(add_api_key(
            dir,
            &NewApiKey {
                name: DEV_KEY_NAME.into(),
                ..NewApiKey::new(Org::dev(), vec![Scope::Mint, Scope::Redeem])
            },
        )?)
    };
    // Prove the result loads, so `make run` fails here rather than in `serve`.
    Keyring::load(dir)?;
    Ok(InitOutcome {
        created_signing_key,
        created_api_key,
    })
}

/// Writes a new random signing key and returns its kid; `activate` makes it the signing key.
pub fn new_signing_key(dir: &Path, activate: bool) -> anyhow::Result<String> {
    let signing_dir = dir.join(SIGNING_DIR);
    create_private_dir(&signing_dir)?;
    let suffix: [u8; 4] = crate::random::bytes();
    let kid = format!(
        "k{}-{}",
        chrono::Utc::now().format("%Y%m%d"),
        hex::encode(suffix)
    );
    let secret: [u8; SIGNING_SECRET_BYTES] = crate::random::bytes();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    write_atomically(
        &signing_dir.join(format!("{kid}.{KEY_EXTENSION}")),
        format!("{encoded}\n").as_bytes(),
    )?;
    let active = signing_dir.join(ACTIVE_FILE);
    if activate || !active.exists() {
        write_atomically(&active, format!("{kid}\n").as_bytes())?;
    }
    Ok(kid)
}

/// Makes an existing key the signing key.
pub fn activate_signing_key(dir: &Path, kid: &str) -> anyhow::Result<()> {
    let signing_dir = dir.join(SIGNING_DIR);
    if !keyring::is_valid_kid(kid) || !signing_dir.join(format!("{kid}.{KEY_EXTENSION}")).exists() {
        bail!("no signing key {kid:?} in {}", signing_dir.display());
    }
    write_atomically(
        &signing_dir.join(ACTIVE_FILE),
        format!("{kid}\n").as_bytes(),
    )
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub org: Org,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub rate_per_minute: Option<u32>,
    pub credits: Option<u64>,
    /// An operator key that acts on every org's tokens (see `ApiKeyRecord::any_org`).
    pub any_org: bool,
}

impl NewApiKey {
    /// A key of `org` with `scopes` and every other field at its default: no name, the org's
    /// rate, unlimited credits, its own org only.
    pub fn new(org: Org, scopes: Vec<Scope>) -> Self {
        NewApiKey {
            org,
            name: String::new(),
            scopes,
            rate_per_minute: None,
            credits: None,
            any_org: false,
        }
    }
}

/// Stores the hash of a new API key and returns the key itself (shown once, never stored).
pub fn add_api_key(dir: &Path, new: &NewApiKey) -> anyhow::Result<String> {
    if new.scopes.is_empty() {
        bail!("an API key needs at least one scope (mint, redeem)");
    }
    create_private_dir(dir)?;
    let path = dir.join(API_KEYS_FILE);
    let mut file = keyring::read_api_keys_file(&path)?;
    let key = api_keys::generate_key();
    let mut scopes = new.scopes.clone();
    scopes.dedup();
    let mut record = api_keys::record_for(&key, &new.org, &new.name, scopes);
    record.rate_per_minute = new.rate_per_minute;
    record.credits = new.credits;
    record.any_org = new.any_org;
    file.api_keys.push(record);
    let json = serde_json::to_vec_pretty(&file)?;
    write_atomically(&path, &json)?;
    Ok(key)
}

/// Removes the API key with record id `id` (as `keys list` shows it).
pub fn remove_api_key(dir: &Path, id: &str) -> anyhow::Result<()> {
    let path = dir.join(API_KEYS_FILE);
    let mut file = keyring::read_api_keys_file(&path)?;
    let before = file.api_keys.len();
    file.api_keys.retain(|record| record.id != id);
    if file.api_keys.len() == before {
        bail!("no API key {id:?} in {}", path.display());
    }
    write_atomically(&path, &serde_json::to_vec_pretty(&file)?)
}

/// Deletes a signing key's file. The active key cannot go: activate another one first.
pub fn remove_signing_key(dir: &Path, kid: &str) -> anyhow::Result<()> {
    let signing_dir = dir.join(SIGNING_DIR);
    let path = signing_dir.join(format!("{kid}.{KEY_EXTENSION}"));
    if !keyring::is_valid_kid(kid) || !path.exists() {
        bail!("no signing key {kid:?} in {}", signing_dir.display());
    }
    let active = std::fs::read_to_string(signing_dir.join(ACTIVE_FILE)).unwrap_or_default();
    if active.trim() == kid {
        bail!("{kid} is the active signing key; activate another key before removing it");
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Key folders are readable by their owner only (0700), like the 0600 files in them.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(crate::random::bytes::<4>())));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_a_working_keyring_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_dev(dir.path()).unwrap();
        let key = first.created_api_key.expect("a dev key on first run");
        assert!(first.created_signing_key.is_some());

        let keyring = Keyring::load(dir.path()).unwrap();
        let record = keyring.api_keys().find(&key).unwrap();
        assert_eq!(record.org.as_str(), "dev");
        assert!(record.allows(Scope::Mint) && record.allows(Scope::Redeem));

        let second = init_dev(dir.path()).unwrap();
        assert!(second.created_api_key.is_none() && second.created_signing_key.is_none());
    }

    #[test]
    fn the_keys_file_holds_no_plaintext_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = init_dev(dir.path()).unwrap().created_api_key.unwrap();
        let stored = std::fs::read_to_string(dir.path().join(API_KEYS_FILE)).unwrap();
        assert!(!stored.contains(&key[3..]));
        let kid = new_signing_key(dir.path(), false).unwrap();
        let path = dir.path().join(SIGNING_DIR).join(format!("{kid}.key"));
        assert_eq!(
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// A dev keys folder plus a second signing key, not activated: (folder, active kid, spare).
    fn keys_with_a_spare_signing_key() -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        init_dev(dir.path()).unwrap();
        let active = Keyring::load(dir.path()).unwrap().active().kid().to_owned();
        let spare = new_signing_key(dir.path(), false).unwrap();
        (dir, active, spare)
    }

    #[test]
    fn a_new_key_signs_only_once_activated() {
        let (dir, before, kid) = keys_with_a_spare_signing_key();
        assert_eq!(Keyring::load(dir.path()).unwrap().active().kid(), before);
        activate_signing_key(dir.path(), &kid).unwrap();
        let keyring = Keyring::load(dir.path()).unwrap();
        assert_eq!(keyring.active().kid(), kid);
        assert!(keyring.verifying_key(&before).is_some());
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_are_created_0700_and_files_0600() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        init_dev(&keys).unwrap();
        assert_eq!(mode_of(&keys), 0o700);
        assert_eq!(mode_of(&keys.join(SIGNING_DIR)), 0o700);
        assert_eq!(mode_of(&keys.join(API_KEYS_FILE)), 0o600);
        assert_eq!(mode_of(&keys.join(SIGNING_DIR).join(ACTIVE_FILE)), 0o600);
    }

    #[test]
    fn an_api_key_is_removed_by_its_id_and_no_longer_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let key = init_dev(dir.path()).unwrap().created_api_key.unwrap();
        let id = Keyring::load(dir.path())
            .unwrap()
            .api_keys()
            .find(&key)
            .unwrap()
            .id
            .clone();
        remove_api_key(dir.path(), &id).unwrap();
        assert!(Keyring::load(dir.path())
            .unwrap()
            .api_keys()
            .find(&key)
            .is_none());
        let err = remove_api_key(dir.path(), &id).unwrap_err();
        assert!(err.to_string().contains("no API key"), "{err}");
    }

    #[test]
    fn a_signing_key_is_removed_unless_it_is_the_active_one() {
        let (dir, active, spare) = keys_with_a_spare_signing_key();
        let err = remove_signing_key(dir.path(), &active).unwrap_err();
        assert!(err.to_string().contains("active"), "{err}");
        remove_signing_key(dir.path(), &spare).unwrap();
        let keyring = Keyring::load(dir.path()).unwrap();
        assert!(keyring.verifying_key(&spare).is_none());
        assert!(keyring.verifying_key(&active).is_some());
        assert!(remove_signing_key(dir.path(), "../api_keys").is_err());
    }

    #[test]
    fn empty_scopes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let new = NewApiKey::new(Org::parse("acme").unwrap(), vec![]);
        assert!(add_api_key(dir.path(), &new).is_err());
    }
}
