//! rustls needs one process-wide crypto provider (ring here) before any TLS connection: to a
//! `rediss://` store or a `wss://` upstream.

/// Installs ring as the provider; a second install is refused harmlessly.
pub fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
