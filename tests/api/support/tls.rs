//! A throwaway CA and server certificates it signed, for Redis reached over `rediss://` and for
//! the service's own HTTPS.
// Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files as absolute paths: redis-server resolves relative ones against its `--dir`.
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir` (which must
/// outlive every server using them: a restarted node reads them again).
pub fn certificates(dir: &Path) -> TlsFiles {
    let ca = TestCa::new();
    let server = ca.server_certificate("127.0.0.1");
    let write = |name: &str, pem: &str| {
        let path = std::path::absolute(dir.join(name)).unwrap();
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    TlsFiles {
        ca: write("ca.pem", &ca.pem),
        cert: write("server.pem", &server.cert_pem),
        key: write("server.key", &server.key_pem),
    }
}

/// A CA that can go on signing, so a test can rotate to a new certificate its clients trust.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, for clients to trust.
    pub pem: String,
}

/// A server certificate for 127.0.0.1 and its key, as PEM, and the certificate's DER (what a
/// TLS client is shown).
pub struct ServerCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // rcgen gives every certificate the same subject by default; OpenSSL (redis-cli, and
        // the nodes verifying each other on a TLS cluster bus) then takes the server's
        // certificate for a self-signed one and refuses it. rustls does not mind, so only the
        // cluster shows it.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "streamtoken test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        TestCa {
            issuer: Issuer::new(ca_params, ca_key),
            pem: ca_cert.pem(),
        }
    }

    /// A new key and a certificate for 127.0.0.1 named `common_name`; each has its own serial
    /// (rcgen derives it from the key).
    pub fn server_certificate(&self, common_name: &str) -> ServerCertificate {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// An app on `redis` without its CA file, so the store's certificate is not trusted: asserts a
/// redemption fails closed (503) and returns the app for more checks. A generous store timeout,
/// so a loaded machine reports the certificate error rather than a timeout.
pub async fn assert_an_untrusting_app_fails_closed(
    mut redis: streamtoken::settings::RedisSettings,
) -> super::app::TestApp {
    redis.tls_ca_file = None;
    redis.timeout = std::time::Duration::from_secs(3);
    let app = super::app::spawn_app_with(super::app::Options {
        redis: Some(redis),
        ..super::app::Options::default()
    })
    .await;
    let token = app.mint_token(serde_json::json!({})).await;
    assert_eq!(
        app.redeem(&token).await.status(),
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    app
}
