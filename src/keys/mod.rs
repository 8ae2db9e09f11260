//! The keys directory (`STREAMTOKEN_KEYS_DIR`): signing keys and API-key records.
//!
//! - `keyring`: reads the directory into one immutable snapshot and swaps it atomically on reload;
//! - `admin`: what the `keys` CLI writes there (atomic renames, mode 0600);
//! - `watch`: reloads the keyring when the folder changes, without waiting for SIGHUP.

pub mod admin;
pub mod keyring;
pub mod watch;
