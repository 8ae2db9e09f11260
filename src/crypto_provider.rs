//! The process's one rustls crypto provider (ring), shared by `rediss://` and HTTPS.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Installs ring as the process default on first use and returns the default. rustls refuses
/// a second install harmlessly, so every TLS user may call this.
pub(crate) fn installed() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}
