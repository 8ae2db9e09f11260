//! A throwaway CA and a server certificate it signed, for Redis reached over `rediss://`.
// Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::Path;

/// PEM files as absolute paths: redis-server resolves relative ones against its `--dir`.
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir` (which must
/// outlive every server using them: a restarted node reads them again).
pub fn certificates(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // rcgen gives every certificate the same subject by default; OpenSSL (redis-cli, and the
    // nodes verifying each other on a TLS cluster bus) then takes the server's certificate for
    // a self-signed one and refuses it. rustls does not mind, so only the cluster shows it.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "streamtoken test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let path = std::path::absolute(dir.join(name)).unwrap();
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    TlsFiles {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
    }
}
