//! HTTPS (and WSS) on the main listener, from `STREAMTOKEN_TLS_CERT` and `STREAMTOKEN_TLS_KEY`.
//!
//! rustls asks a resolver for the certificate at every handshake; ours hands out the one behind
//! an `ArcSwap`. A reload (SIGHUP, or the files changing under the keys-folder watch's interval)
//! swaps it, so new handshakes get the new certificate at once while open connections keep the
//! one they began with. A reload that finds a broken pair keeps serving the previous one and
//! logs why, once per change.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use sha2::{Digest, Sha256};

use crate::keys::watch::Stamp;
use crate::periodic;
use crate::settings::{ConfigError, TlsSettings};

const CERT_VARIABLE: &str = "STREAMTOKEN_TLS_CERT";
const KEY_VARIABLE: &str = "STREAMTOKEN_TLS_KEY";

/// What `stat` says of the certificate file and the key file (symlinks followed, so a
/// Kubernetes Secret volume's `..data` swap counts), or why it could not say.
type FilesStamp = [Result<Stamp, io::ErrorKind>; 2];

/// The certificate the main listener serves, and where it is read from.
#[derive(Debug)]
pub struct ServedCertificate {
    files: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files' stamp from before the last read, good or bad: the watch reads again only when
    /// it changes, so a broken pair is logged once per change, not once per poll.
    seen: Mutex<FilesStamp>,
}

impl ServedCertificate {
    /// Reads both files; any problem is a start-up error naming the variable and the file.
    pub fn load(files: &TlsSettings) -> Result<Arc<Self>, ConfigError> {
        let provider = crate::crypto_provider::installed();
        // Taken before the read, so a change made while the server starts is seen.
        let seen = stamp(files);
        let key = read_pair(files, &provider)?;
        log::info!(
            "serving HTTPS with {CERT_VARIABLE}={} (sha256 {})",
            files.cert_file.display(),
            fingerprint(&key)
        );
        Ok(Arc::new(ServedCertificate {
            files: files.clone(),
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(seen),
        }))
    }

    /// A rustls configuration that asks `self` for the certificate at every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, rustls::Error> {
        Ok(ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }

    /// What new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// For SIGHUP: reads both files again. Returns whether the new pair is served; a broken one
    /// is logged and the current certificate stays.
    pub fn reload_or_keep(&self) -> bool {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamp(&self.files);
        self.read_and_swap()
    }

    /// For the watch: reloads when either file's stamp differs from the last one read; returns
    /// whether it tried.
    fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return false;
            }
            // Taken before the read: a change made during it shows up in the next stamp.
            *seen = now;
        }
        log::info!(
            "{} or {} changed; reloading the TLS certificate",
            self.files.cert_file.display(),
            self.files.key_file.display()
        );
        self.read_and_swap();
        true
    }

    fn read_and_swap(&self) -> bool {
        match read_pair(&self.files, &self.provider) {
            Ok(key) => {
                log::info!("TLS certificate reloaded (sha256 {})", fingerprint(&key));
                self.current.store(Arc::new(key));
                true
            }
            Err(e) => {
                log::error!(
                    "TLS certificate reload failed, still serving sha256 {}: {}={}: {}",
                    fingerprint(&self.current()),
                    e.variable,
                    e.value,
                    e.reason
                );
                false
            }
        }
    }

    /// Checks both files every `every` (the keys folder's interval) for as long as the server
    /// holds the certificate.
    pub fn follow_files(self: &Arc<Self>, every: Duration) {
        periodic::while_alive(self, every, |served| {
            served.reload_if_changed();
        });
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamp(files: &TlsSettings) -> FilesStamp {
    [&files.cert_file, &files.key_file].map(|path| {
        std::fs::metadata(path)
            .map(|meta| Stamp::of(&meta))
            .map_err(|e| e.kind())
    })
}

/// The chain from the certificate file and the key from the key file, checked to belong
/// together. Errors name the variable and the file at fault.
fn read_pair(files: &TlsSettings, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let (cert_file, key_file) = (files.cert_file.as_path(), files.key_file.as_path());
    let cert_pem = read(CERT_VARIABLE, cert_file)?;
    let key_pem = read(KEY_VARIABLE, key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(CERT_VARIABLE, cert_file, pem_problem(e)))?;
    if chain.is_empty() {
        return Err(refuse(
            CERT_VARIABLE,
            cert_file,
            "no certificate in the file (PEM \"BEGIN CERTIFICATE\" blocks, the server's own first)"
                .into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => "no private key in the file (a PEM \"BEGIN PRIVATE \
                                         KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
                .into(),
            other => pem_problem(other),
        };
        refuse(KEY_VARIABLE, key_file, reason)
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| refuse(KEY_VARIABLE, key_file, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive is not proof of a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(refuse(
            KEY_VARIABLE,
            key_file,
            format!(
                "not the private key of the certificate in {CERT_VARIABLE}={}",
                cert_file.display()
            ),
        )),
        Err(e) => Err(refuse(
            CERT_VARIABLE,
            cert_file,
            format!("the first certificate does not parse: {e}"),
        )),
    }
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| refuse(variable, path, format!("cannot read the file: {e}")))
}

fn refuse(variable: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError {
        variable,
        value: path.display().to_string(),
        reason,
    }
}

/// pki-types prints the offending bytes as a list of numbers; say it with text.
fn pem_problem(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "not valid PEM: no \"-----END {}-----\" line",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "not valid PEM: malformed line {:?}",
            String::from_utf8_lossy(&line)
        ),
        other => format!("not valid PEM: {other}"),
    }
}

/// The SHA-256 of the server's own certificate, as `openssl x509 -fingerprint -sha256` shows it
/// (without the colons): what an operator compares to see which certificate is served.
fn fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|cert| hex::encode(Sha256::digest(cert)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for 127.0.0.1 and its key, renamed over `cert.pem`/`key.pem`
    /// in `dir`; returns the certificate's DER. Waits a little first, so a rewrite never shares
    /// the previous file's timestamps (the kernel's clock for them is coarse).
    fn write_pair(dir: &Path) -> (TlsSettings, Vec<u8>) {
        std::thread::sleep(Duration::from_millis(20));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        for (path, pem) in [
            (&files.cert_file, cert.pem()),
            (&files.key_file, key.serialize_pem()),
        ] {
            let tmp = dir.join("new.tmp");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (files, cert.der().to_vec())
    }

    fn served_der(served: &ServedCertificate) -> Vec<u8> {
        served.current().cert[0].to_vec()
    }

    fn load_error(files: &TlsSettings) -> ConfigError {
        ServedCertificate::load(files).expect_err("a broken pair must not load")
    }

    #[test]
    fn a_good_pair_loads_and_its_certificate_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let (files, der) = write_pair(dir.path());
        let served = ServedCertificate::load(&files).unwrap();
        assert_eq!(served_der(&served), der);
        assert!(served.server_config().is_ok());
    }

    #[test]
    fn each_broken_file_is_named_with_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = write_pair(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (others, _) = write_pair(other.path());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"this is not PEM\n").unwrap();
        let truncated = dir.path().join("truncated.pem");
        std::fs::write(&truncated, b"-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let not_der = dir.path().join("not-der.pem");
        std::fs::write(
            &not_der,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let cases: [(&str, TlsSettings, &str, &Path); 7] = [
            (
                "missing certificate file",
                TlsSettings {
                    cert_file: missing.clone(),
                    ..files.clone()
                },
                CERT_VARIABLE,
                &missing,
            ),
            (
                "missing key file",
                TlsSettings {
                    key_file: missing.clone(),
                    ..files.clone()
                },
                KEY_VARIABLE,
                &missing,
            ),
            (
                "no certificate",
                TlsSettings {
                    cert_file: garbage.clone(),
                    ..files.clone()
                },
                CERT_VARIABLE,
                &garbage,
            ),
            (
                "a truncated PEM block",
                TlsSettings {
                    cert_file: truncated.clone(),
                    ..files.clone()
                },
                CERT_VARIABLE,
                &truncated,
            ),
            (
                "a PEM block that is not a certificate",
                TlsSettings {
                    cert_file: not_der.clone(),
                    ..files.clone()
                },
                CERT_VARIABLE,
                &not_der,
            ),
            (
                "no key (the certificate file given as the key)",
                TlsSettings {
                    key_file: files.cert_file.clone(),
                    ..files.clone()
                },
                KEY_VARIABLE,
                &files.cert_file,
            ),
            (
                "the key of another certificate",
                TlsSettings {
                    key_file: others.key_file.clone(),
                    ..files.clone()
                },
                KEY_VARIABLE,
                &others.key_file,
            ),
        ];
        for (what, broken, variable, file) in cases {
            let err = load_error(&broken);
            let message = err.to_string();
            assert_eq!(err.variable, variable, "{what}: {message}");
            eprintln!("{what}: {message}");
            assert!(
                message.contains(&file.display().to_string()),
                "{what}: {message}"
            );
        }
    }

    #[test]
    fn a_change_reloads_once_and_a_broken_pair_keeps_the_certificate_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (files, first) = write_pair(dir.path());
        let served = ServedCertificate::load(&files).unwrap();
        assert!(!served.reload_if_changed(), "nothing changed");

        let (_, second) = write_pair(dir.path());
        assert!(served.reload_if_changed());
        assert_eq!(served_der(&served), second);
        assert_ne!(first, second);
        assert!(!served.reload_if_changed(), "reloaded once");

        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&files.key_file, b"not a key").unwrap();
        assert!(served.reload_if_changed());
        assert_eq!(served_der(&served), second, "kept");
        assert!(!served.reload_if_changed(), "not retried");
        assert!(
            !served.reload_or_keep(),
            "SIGHUP reads again, and fails again"
        );
        assert_eq!(served_der(&served), second, "still kept");
    }

    #[test]
    fn a_reload_keeps_handing_out_the_old_certificate_to_whoever_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (files, first) = write_pair(dir.path());
        let served = ServedCertificate::load(&files).unwrap();
        let held = served.current();
        let (_, second) = write_pair(dir.path());
        assert!(served.reload_or_keep());
        assert_eq!(
            held.cert[0].to_vec(),
            first,
            "an open connection's certificate"
        );
        assert_eq!(served_der(&served), second);
    }
}
