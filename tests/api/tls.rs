//! HTTPS and WSS on the main listener with the real binary (`STREAMTOKEN_TLS_CERT`,
//! `STREAMTOKEN_TLS_KEY`): minting, redeeming and a stream session over TLS; plain HTTP refused
//! there while the admin listener stays plain; every bad configuration stops start-up naming
//! the variable and the file; a new certificate reaches new handshakes on SIGHUP or by the poll,
//! open connections keep theirs, and a broken one keeps the old and says why once.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::support::keys::init_keys;
use crate::support::process::{ServerProcess, BIN};
use crate::support::tls::{ServerCertificate, TestCa};

const CERT: &str = "STREAMTOKEN_TLS_CERT";
const KEY: &str = "STREAMTOKEN_TLS_KEY";

/// The promised bound for a change picked up by the poll (the default 1 s interval, plus one).
const POLL_DEADLINE: Duration = Duration::from_secs(2);

/// A CA and the certificate and key files a server is started with.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    /// A CA and a first certificate, in `tls.crt` and `tls.key`.
    fn new() -> (Pki, ServerCertificate) {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca,
            dir,
        };
        let first = pki.ca.server_certificate("first.streamtoken.test");
        pki.install(&first);
        (pki, first)
    }

    /// Replaces both files as a careful operator does: each written beside it and renamed over.
    fn install(&self, certificate: &ServerCertificate) {
        replace(&self.key, &certificate.key_pem);
        replace(&self.cert, &certificate.cert_pem);
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            (CERT, self.cert.display().to_string()),
            (KEY, self.key.display().to_string()),
        ]
    }
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spawn(keys: &Path, pki_env: &[(&'static str, String)], extra: &[(&str, &str)]) -> ServerProcess {
    let mut env: Vec<(&str, &str)> = pki_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    ServerProcess::spawn(keys, &env)
}

/// A client that trusts only the test CA, reports the peer's certificate, and keeps no
/// connection: every request is a new handshake.
fn https_client(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The DER of the certificate a new handshake with `server` is shown.
async fn served_certificate(server: &ServerProcess, ca: &TestCa) -> Vec<u8> {
    let response = https_client(ca)
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HTTPS request failed: {e:?}; log:\n{}", server.log_text()));
    assert_eq!(response.status(), StatusCode::OK);
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the TLS info holds the peer certificate")
        .to_vec()
}

/// Asks for the served certificate every 20 ms until it is `expected`; returns how long that
/// took since `since`. Panics after `deadline`.
async fn wait_for_certificate(
    server: &ServerProcess,
    ca: &TestCa,
    expected: &[u8],
    since: Instant,
    deadline: Duration,
) -> Duration {
    loop {
        if served_certificate(server, ca).await == expected {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < deadline,
            "the new certificate was not served within {deadline:?}; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mint(client: &reqwest::Client, server: &ServerProcess, api_key: &str) -> String {
    let response = client
        .post(server.url("/v1/tokens"))
        .bearer_auth(api_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

type Wss = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/stream` over WSS trusting only the test CA, and returns the session with its first
/// frame.
async fn open_wss(server: &ServerProcess, ca: &TestCa, token: &str) -> (Wss, Value) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = server
        .url(&format!("/v1/stream?token={token}"))
        .replacen("https://", "wss://", 1);
    let (mut ws, response) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(Arc::new(config))),
    )
    .await
    .expect("WSS handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let first = next_text(&mut ws).await;
    (ws, first)
}

async fn next_text(ws: &mut Wss) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = frame.unwrap() {
            return serde_json::from_str(&text).unwrap_or(Value::String(text.to_string()));
        }
    }
    panic!("no text frame within 10 s");
}

/// Sends `text` on an open session and expects it echoed.
async fn assert_echoes(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_text(ws).await, Value::String(text.to_owned()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ServerProcess::wait_for_log` blocks: off the runtime's worker, so requests still run.
fn wait_for_log(server: &ServerProcess, needle: &str) -> String {
    tokio::task::block_in_place(|| server.wait_for_log(needle, Duration::from_secs(10)))
}

fn count_lines(server: &ServerProcess, needle: &str) -> usize {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_mints_and_redeems_wss_opens_a_session_and_plain_http_is_refused() {
    // Arrange: HTTPS on the main port, an admin port beside it.
    let (keys, dev_key) = init_keys();
    let (pki, first) = Pki::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let server = spawn(
        keys.path(),
        &pki.env(),
        &[("STREAMTOKEN_ADMIN_BIND", admin.as_str())],
    );
    assert!(
        server.address.starts_with("https://127.0.0.1:"),
        "the start-up line says https: {}",
        server.address
    );
    let client = https_client(&pki.ca);

    // Act + Assert: mint and redeem over HTTPS, with the certificate from the files.
    assert_eq!(served_certificate(&server, &pki.ca).await, first.der);
    let token = mint(&client, &server, &dev_key).await;
    let redeemed = client
        .post(server.url("/v1/tokens/redeem"))
        .bearer_auth(&dev_key)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(redeemed.status(), StatusCode::OK);
    let claims: Value = redeemed.json().await.unwrap();
    assert_eq!(claims["org"], "dev", "{claims}");

    // A stream session over WSS begins and echoes.
    let token = mint(&client, &server, &dev_key).await;
    let (mut ws, begins) = open_wss(&server, &pki.ca, &token).await;
    assert_eq!(begins["type"], "session_begins", "{begins}");
    assert_echoes(&mut ws, "hello over wss").await;

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = server.url("/healthz").replacen("https://", "http://", 1);
    let refused = reqwest::Client::new().get(&plain).send().await;
    assert!(refused.is_err(), "plain HTTP answered: {refused:?}");
    // The admin listener stays plain HTTP.
    let metrics = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    // The session outlived the refused connection.
    assert_echoes(&mut ws, "still here").await;
}

/// Runs `streamtoken serve` with `env` and expects it to stop by itself, within 10 s; returns
/// its exit status and stderr.
fn start_up_failure(keys: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env("STREAMTOKEN_KEYS_DIR", keys)
        .env("STREAMTOKEN_BIND", "127.0.0.1:0")
        .env_remove("STREAMTOKEN_REDIS_URL")
        .env_remove(CERT)
        .env_remove(KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{env:?}: still running after 10 s; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A configuration that must not start, and what its error must name.
struct BadStart<'a> {
    what: &'a str,
    env: Vec<(&'a str, &'a str)>,
    variable: &'a str,
    file: &'a str,
}

#[test]
fn each_bad_tls_configuration_stops_start_up_naming_the_variable_and_the_file() {
    let (keys, _) = init_keys();
    let (pki, _) = Pki::new();
    let dir = pki.dir.path();
    let other = pki.ca.server_certificate("other.streamtoken.test");
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n").unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "no PEM here\n").unwrap();
    let missing = dir.join("missing.pem");
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let (other_key, garbage, text, missing) = (
        other_key.display().to_string(),
        garbage.display().to_string(),
        text.display().to_string(),
        missing.display().to_string(),
    );
    let cases = [
        BadStart {
            what: "a certificate without a key",
            env: vec![(CERT, &cert)],
            variable: CERT,
            file: &cert,
        },
        BadStart {
            what: "a key without a certificate",
            env: vec![(KEY, &key)],
            variable: KEY,
            file: &key,
        },
        BadStart {
            what: "a missing certificate file",
            env: vec![(CERT, &missing), (KEY, &key)],
            variable: CERT,
            file: &missing,
        },
        BadStart {
            what: "a missing key file",
            env: vec![(CERT, &cert), (KEY, &missing)],
            variable: KEY,
            file: &missing,
        },
        BadStart {
            what: "a certificate file of broken PEM",
            env: vec![(CERT, &garbage), (KEY, &key)],
            variable: CERT,
            file: &garbage,
        },
        BadStart {
            what: "a certificate file with no certificate",
            env: vec![(CERT, &text), (KEY, &key)],
            variable: CERT,
            file: &text,
        },
        BadStart {
            what: "a key file with no key",
            env: vec![(CERT, &cert), (KEY, &text)],
            variable: KEY,
            file: &text,
        },
        BadStart {
            what: "the key of another certificate",
            env: vec![(CERT, &cert), (KEY, &other_key)],
            variable: KEY,
            file: &other_key,
        },
    ];
    for BadStart {
        what,
        env,
        variable,
        file,
    } in cases
    {
        let (status, stderr) = start_up_failure(keys.path(), &env);
        assert!(!status.success(), "{what}: exited {status}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{what}: no error line in:\n{stderr}"));
        assert!(
            error.contains(variable) && error.contains(file),
            "{what}: the error should name {variable} and {file}: {error}"
        );
        eprintln!("{what}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_handshakes_and_keeps_open_sessions() {
    // Arrange: the watch off, so only the signal reloads; a session open on the first
    // certificate.
    let (keys, dev_key) = init_keys();
    let (pki, first) = Pki::new();
    let server = spawn(
        keys.path(),
        &pki.env(),
        &[("STREAMTOKEN_KEYS_POLL_MS", "0")],
    );
    assert_eq!(served_certificate(&server, &pki.ca).await, first.der);
    let token = mint(&https_client(&pki.ca), &server, &dev_key).await;
    let (mut ws, begins) = open_wss(&server, &pki.ca, &token).await;
    assert_eq!(begins["type"], "session_begins", "{begins}");

    // Act: a new certificate (another key, serial and name) over the files, then SIGHUP.
    let second = pki.ca.server_certificate("second.streamtoken.test");
    pki.install(&second);
    assert_eq!(
        served_certificate(&server, &pki.ca).await,
        first.der,
        "nothing reloads without the signal while the watch is off"
    );
    let signalled = Instant::now();
    server.signal("HUP");

    // Assert: new handshakes get the second certificate; the open session goes on.
    let line = wait_for_log(&server, "TLS certificate reloaded");
    let delay = wait_for_certificate(
        &server,
        &pki.ca,
        &second.der,
        signalled,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("SIGHUP: new certificate served after {delay:?} ({line})");
    assert_echoes(&mut ws, "opened before the reload").await;

    // And a broken replacement: the key of another certificate. The second stays, and the
    // log says why.
    let stray = pki.ca.server_certificate("stray.streamtoken.test");
    replace(&pki.key, &stray.key_pem);
    server.signal("HUP");
    let failed = wait_for_log(&server, "TLS certificate reload failed");
    assert!(
        failed.contains(KEY) && failed.contains(&pki.key.display().to_string()),
        "{failed}"
    );
    assert_eq!(served_certificate(&server, &pki.ca).await, second.der);
    assert_echoes(&mut ws, "still open").await;
}

/// Kubernetes' layout for a TLS Secret volume: `tls.crt` and `tls.key` are symlinks through
/// `..data`, which the kubelet points at a new folder in one rename.
fn kubernetes_volume(mount: &Path, version: &str, certificate: &ServerCertificate) {
    let folder = mount.join(version);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("tls.crt"), &certificate.cert_pem).unwrap();
    std::fs::write(folder.join("tls.key"), &certificate.key_pem).unwrap();
    let tmp = mount.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signal_the_poll_serves_a_new_certificate_and_a_broken_one_is_logged_once() {
    // Arrange: the default 1 s poll, files in a Kubernetes-style Secret volume.
    let (keys, _) = init_keys();
    let ca = TestCa::new();
    let mount = tempfile::tempdir().unwrap();
    let first = ca.server_certificate("first.streamtoken.test");
    kubernetes_volume(mount.path(), "..2026_11_30_01", &first);
    for name in ["tls.crt", "tls.key"] {
        symlink(format!("..data/{name}"), mount.path().join(name)).unwrap();
    }
    let (cert, key) = (mount.path().join("tls.crt"), mount.path().join("tls.key"));
    let env = [
        (CERT, cert.display().to_string()),
        (KEY, key.display().to_string()),
    ];
    let server = spawn(keys.path(), &env, &[]);
    assert_eq!(served_certificate(&server, &ca).await, first.der);

    // Act: the kubelet swaps in a new version.
    let second = ca.server_certificate("second.streamtoken.test");
    let swapped = Instant::now();
    kubernetes_volume(mount.path(), "..2026_11_30_02", &second);

    // Assert
    let delay = wait_for_certificate(&server, &ca, &second.der, swapped, POLL_DEADLINE).await;
    eprintln!("poll: new certificate served after {delay:?} (poll 1 s, promised ≤ 2 s)");
    assert_eq!(count_lines(&server, "TLS certificate reloaded"), 1);

    // And a broken version: the certificate file holds no certificate. The second stays.
    let broken = ServerCertificate {
        cert_pem: "not a certificate\n".into(),
        ..ca.server_certificate("broken.streamtoken.test")
    };
    kubernetes_volume(mount.path(), "..2026_11_30_03", &broken);
    let failed = wait_for_log(&server, "TLS certificate reload failed");
    assert!(
        failed.contains(CERT) && failed.contains(&cert.display().to_string()),
        "{failed}"
    );
    assert_eq!(served_certificate(&server, &ca).await, second.der);
    // Several polls later it has not been tried again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        count_lines(&server, "TLS certificate reload failed"),
        1,
        "once per change:\n{}",
        server.log_text()
    );
    assert_eq!(served_certificate(&server, &ca).await, second.der);
}

/// The state (`/proc/net/tcp`'s hex code; `01` is ESTABLISHED) of the server's end of the
/// connection from `client_port`, while it exists.
fn server_end_state(server_port: u16, client_port: u16) -> Option<String> {
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ours = port(fields[1])? == server_port && port(fields[2])? == client_port;
            ours.then(|| fields[3].to_owned())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_stops_reading_loses_its_connection() {
    // Arrange: sends time out after 1 s. The server must find the TCP socket under the TLS
    // session to end a connection whose client holds it open without reading.
    let (keys, dev_key) = init_keys();
    let (pki, _) = Pki::new();
    let server = spawn(
        keys.path(),
        &pki.env(),
        &[("STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS", "1")],
    );
    let token = mint(&https_client(&pki.ca), &server, &dev_key).await;
    let (mut ws, begins) = open_wss(&server, &pki.ca, &token).await;
    assert_eq!(begins["type"], "session_begins", "{begins}");
    let server_port: u16 = server.address.rsplit(':').next().unwrap().parse().unwrap();
    let client_port = match ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr().unwrap().port(),
        _ => panic!("not a TLS stream"),
    };
    assert_eq!(
        server_end_state(server_port, client_port).as_deref(),
        Some("01"),
        "established"
    );

    // Act: send until the server stops reading (its echoes fill our unread buffers), and
    // keep the connection.
    let frame = vec![7u8; 4096];
    for _ in 0..4096 {
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::binary(frame.clone())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }

    // Assert: the server has closed its end although the client never did.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server_end_state(server_port, client_port).as_deref() == Some("01") {
        assert!(
            Instant::now() < deadline,
            "the server still holds the connection; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
}
