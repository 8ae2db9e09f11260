//! Reloads the keyring when its folder changes, for whoever updates the folder without sending
//! SIGHUP: Kubernetes Secret volumes, Vault agent, `streamtoken keys` on the same host.
//!
//! Polling, not inotify (`notify`): watches on files reached through Kubernetes' `..data` symlink
//! stay on the old targets after a swap, and a stat of each entry once a second costs nothing.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::keys::keyring::{self, KeyringHandle};
use crate::periodic;

/// What the keys folder looks like to `stat`: the relative path of every entry the keyring reads
/// (`keyring::reads`) with the metadata of what it resolves to (symlinks followed), or why that
/// could not be read. Equal fingerprints mean, in practice, an unchanged keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Result<Stamp, io::ErrorKind>)>);

/// The metadata that changes when a file is rewritten, replaced, renamed over or chmod-ed.
/// `ctime` catches a rewrite that restores the old `mtime` (`cp -p`, `rsync -t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: (u64, u64),
    mode: u32,
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        if meta.is_dir() {
            // A folder's size and times change with every file created in it, temporary ones
            // too; its entries are fingerprinted one by one, so only which folder it is counts.
            return Stamp {
                inode: (meta.dev(), meta.ino()),
                mode: meta.mode(),
                ..Stamp::default()
            };
        }
        Stamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
            mode: meta.mode(),
        }
    }
}

impl Fingerprint {
    /// Never fails: an unreadable folder or entry is part of the fingerprint, so it going
    /// missing or coming back counts as a change too.
    pub fn of(dir: &Path) -> Self {
        let mut entries = Vec::new();
        walk(dir, Path::new(""), &mut entries);
        entries.sort_unstable();
        Fingerprint(entries)
    }
}

/// Lists what the keyring reads in `relative`, and below it in the folders it reads
/// (`signing/`). Symlinks are followed, so a Kubernetes swap of `..data` changes the inodes
/// that `signing` and `api_keys.json` resolve to.
fn walk(root: &Path, relative: &Path, out: &mut Vec<(PathBuf, Result<Stamp, io::ErrorKind>)>) {
    let entries = match std::fs::read_dir(root.join(relative)) {
        Ok(entries) => entries,
        Err(e) => {
            out.push((relative.to_owned(), Err(e.kind())));
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => relative.join(entry.file_name()),
            Err(e) => {
                out.push((relative.to_owned(), Err(e.kind())));
                continue;
            }
        };
        if !keyring::reads(&path) {
            continue;
        }
        match std::fs::metadata(root.join(&path)) {
            Ok(meta) => {
                out.push((path.clone(), Ok(Stamp::of(&meta))));
                if meta.is_dir() {
                    walk(root, &path, out);
                }
            }
            Err(e) => out.push((path, Err(e.kind()))),
        }
    }
}

/// Reloads `keyring` (as SIGHUP does) when its folder's fingerprint differs from `seen`;
/// returns whether it tried. A folder that fails to load is tried, and logged, once per change.
fn reload_if_changed(keyring: &KeyringHandle, seen: &mut Fingerprint) -> bool {
    let now = Fingerprint::of(keyring.dir());
    if now == *seen {
        return false;
    }
    // Taken before the reload reads the folder: a change made during the reload shows up in
    // the next fingerprint and reloads again.
    *seen = now;
    log::info!("{} changed; reloading the keyring", keyring.dir().display());
    keyring.reload_or_keep();
    true
}

/// Checks the keyring's folder every `every` for as long as the keyring is in use. `seen` is
/// the folder's fingerprint from before the keyring was loaded, so a change made while the
/// server started is not missed.
pub fn follow_folder(keyring: &Arc<KeyringHandle>, every: Duration, seen: Fingerprint) {
    let seen = Mutex::new(seen);
    periodic::while_alive(keyring, every, move |keyring| {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        reload_if_changed(keyring, &mut seen);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::admin::{self, NewApiKey};
    use crate::keys::keyring::{API_KEYS_FILE, SIGNING_DIR};
    use crate::tenancy::api_keys::Scope;
    use crate::tenancy::org::Org;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dev_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        admin::init_dev(dir.path()).unwrap();
        dir
    }

    fn acme_key() -> NewApiKey {
        NewApiKey::new(Org::parse("acme").unwrap(), vec![Scope::Mint])
    }

    /// Asserts that `change` changes the fingerprint of `dir`.
    fn assert_seen(dir: &Path, what: &str, change: impl FnOnce()) {
        let before = Fingerprint::of(dir);
        assert_eq!(before, Fingerprint::of(dir), "unchanged, before {what}");
        change();
        assert_ne!(before, Fingerprint::of(dir), "{what}");
    }

    #[test]
    fn an_unchanged_folder_has_the_same_fingerprint() {
        let dir = dev_folder();
        let first = Fingerprint::of(dir.path());
        assert_eq!(first, Fingerprint::of(dir.path()));
        // Both levels the keyring reads are listed.
        let paths: Vec<&Path> = first.0.iter().map(|(p, _)| p.as_path()).collect();
        assert!(paths.contains(&Path::new(API_KEYS_FILE)), "{paths:?}");
        assert!(paths.contains(&Path::new("signing/active")), "{paths:?}");
        assert_eq!(
            paths.len(),
            4,
            "api_keys.json, signing, its key and active: {paths:?}"
        );
    }

    #[test]
    fn adding_removing_rewriting_renaming_and_chmod_each_change_the_fingerprint() {
        let dir = dev_folder();
        let root = dir.path();
        let signing = root.join(SIGNING_DIR);
        assert_seen(root, "a signing key added", || {
            admin::new_signing_key(root, false).unwrap();
        });
        assert_seen(root, "an API key added (renamed into place)", || {
            admin::add_api_key(root, &acme_key()).unwrap();
        });
        let spare = std::fs::read_dir(&signing)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "key"))
            .unwrap();
        assert_seen(root, "a file rewritten in place", || {
            std::fs::write(&spare, b"0123456789abcdefghijklmnopqrstuvwxyz").unwrap();
        });
        assert_seen(
            root,
            "a file rewritten in place, same length, mtime restored",
            || {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&spare)
                    .unwrap();
                let mtime = file.metadata().unwrap().modified().unwrap();
                std::thread::sleep(Duration::from_millis(20));
                std::io::Write::write_all(&mut &file, b"Z").unwrap();
                file.set_modified(mtime).unwrap();
            },
        );
        assert_seen(root, "a file made readable by others", || {
            std::fs::set_permissions(&spare, std::fs::Permissions::from_mode(0o644)).unwrap();
        });
        assert_seen(root, "a file removed", || {
            std::fs::remove_file(&spare).unwrap();
        });
        assert_seen(root, "the folder removed", || {
            std::fs::remove_dir_all(root).unwrap();
        });
    }

    #[test]
    fn files_the_keyring_does_not_read_leave_the_fingerprint_alone() {
        let dir = dev_folder();
        let root = dir.path();
        let before = Fingerprint::of(root);
        std::fs::write(root.join("api_keys.tmp-0a1b2c3d"), b"{").unwrap();
        std::fs::write(root.join(SIGNING_DIR).join("active.tmp-0a1b2c3d"), b"k").unwrap();
        std::fs::write(root.join("README.md"), b"notes").unwrap();
        std::fs::create_dir(root.join("..2026_11_30_01")).unwrap();
        assert_eq!(before, Fingerprint::of(root));
    }

    /// Kubernetes' layout: `..data -> ..<timestamp>`, and each top-level name a symlink through
    /// `..data`. Returns the timestamped folder it made.
    fn kubernetes_folder(root: &Path, stamp: &str, source: &Path) -> PathBuf {
        let data = root.join(stamp);
        std::fs::create_dir(&data).unwrap();
        for name in [API_KEYS_FILE, SIGNING_DIR] {
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(source.join(name))
                .arg(data.join(name))
                .status()
                .unwrap();
            assert!(status.success());
        }
        data
    }

    /// Points `..data` at `stamp` the way Kubernetes does: a new symlink renamed over the old.
    fn swap_data(root: &Path, stamp: &str) {
        let tmp = root.join("..data_tmp");
        symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    }

    #[test]
    fn a_kubernetes_symlink_swap_changes_the_fingerprint_once_at_the_rename() {
        let source = dev_folder();
        let mount = tempfile::tempdir().unwrap();
        let root = mount.path();
        kubernetes_folder(root, "..2026_11_30_01", source.path());
        swap_data(root, "..2026_11_30_01");
        for name in [API_KEYS_FILE, SIGNING_DIR] {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        crate::keys::keyring::Keyring::load(root).unwrap();
        let before = Fingerprint::of(root);

        // The new version is written beside the old: nothing the keyring reads has changed yet.
        admin::add_api_key(source.path(), &acme_key()).unwrap();
        kubernetes_folder(root, "..2026_11_30_02", source.path());
        assert_eq!(before, Fingerprint::of(root), "before the swap");

        swap_data(root, "..2026_11_30_02");
        let after = Fingerprint::of(root);
        assert_ne!(before, after, "after the swap");
        std::fs::remove_dir_all(root.join("..2026_11_30_01")).unwrap();
        assert_eq!(after, Fingerprint::of(root), "the old version removed");
    }

    #[test]
    fn a_change_reloads_once_and_a_broken_folder_keeps_the_keys_and_is_not_retried() {
        let dir = dev_folder();
        let keyring = KeyringHandle::load(dir.path()).unwrap();
        let mut seen = Fingerprint::of(dir.path());
        assert!(!reload_if_changed(&keyring, &mut seen), "nothing changed");

        let key = admin::add_api_key(dir.path(), &acme_key()).unwrap();
        assert!(reload_if_changed(&keyring, &mut seen));
        assert!(keyring.snapshot().api_keys().find(&key).is_some());
        assert!(!reload_if_changed(&keyring, &mut seen), "reloaded once");

        std::fs::write(dir.path().join(API_KEYS_FILE), b"{ not json").unwrap();
        assert!(reload_if_changed(&keyring, &mut seen));
        assert!(keyring.snapshot().api_keys().find(&key).is_some(), "kept");
        assert!(!reload_if_changed(&keyring, &mut seen), "not retried");
    }

    #[tokio::test]
    async fn following_a_folder_picks_up_a_new_key_without_a_signal() {
        let dir = dev_folder();
        let keyring = Arc::new(KeyringHandle::load(dir.path()).unwrap());
        follow_folder(
            &keyring,
            Duration::from_millis(10),
            Fingerprint::of(dir.path()),
        );
        let key = admin::add_api_key(dir.path(), &acme_key()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while keyring.snapshot().api_keys().find(&key).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not reloaded in 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
