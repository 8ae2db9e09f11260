//! A private, throwaway `nginx` per test.
//!
//! Each one runs from its own temp dir (`-p <dir> -c <dir>/nginx.conf`): config, pid file, error
//! log and every temp path live there, and it listens on a free port on 127.0.0.1. It runs in the
//! foreground as a single process (`daemon off`, `master_process off`), so killing the child on
//! drop leaves no worker behind holding the port. Under `CI=true` a missing nginx panics;
//! elsewhere the test records a skip, as `redis_server.rs` does.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{free_port, on_path};
use super::skips;

const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Debian's path; `/usr/sbin` is not on every user's PATH.
const DEBIAN_BINARY: &str = "/usr/sbin/nginx";

pub struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

fn binary() -> Option<PathBuf> {
    if Path::new(DEBIAN_BINARY).is_file() {
        Some(DEBIAN_BINARY.into())
    } else if on_path("nginx") {
        Some("nginx".into())
    } else {
        None
    }
}

impl Nginx {
    /// Starts nginx with the directives `http` renders for inside `http { }`, given the port to
    /// listen on and the dir for any file it names; `None` (after saying so) when nginx is not
    /// installed.
    pub fn start(http: impl Fn(u16, &Path) -> String) -> Option<Nginx> {
        let Some(binary) = binary() else {
            if skips::on_ci() {
                panic!("nginx is required when CI=true; install it with apt-get install -y nginx");
            }
            skips::record("nginx not found (apt-get install -y nginx)");
            return None;
        };
        // The port is free when asked for, not necessarily when nginx binds it: retry a few times.
        for attempt in 1.. {
            let port = free_port();
            let dir = tempfile::TempDir::new().expect("temp dir for nginx");
            // As root, nginx writes temp files as its unprivileged user: let it into the dir.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(
                dir.path().join("nginx.conf"),
                main_config(dir.path(), &http(port, dir.path())),
            )
            .unwrap();
            match Self::spawn(&binary, port, dir) {
                Ok(nginx) => return Some(nginx),
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("nginx on port {port} did not start; error log:\n{log}"),
            }
        }
        unreachable!()
    }

    fn spawn(binary: &Path, port: u16, dir: tempfile::TempDir) -> Result<Nginx, String> {
        let prefix = format!("{}/", dir.path().display());
        let config = dir.path().join("nginx.conf");
        let child = Command::new(binary)
            .args(["-p", &prefix, "-c"])
            .arg(&config)
            .args(["-e", "error.log", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { port, dir, child };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("exited with {status}\n{}", nginx.error_log()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening within {READY_TIMEOUT:?}\n{}",
                    nginx.error_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file nginx wrote in its dir (a log), or a note that it could not be read.
    pub fn file(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
    }

    pub fn error_log(&self) -> String {
        self.file("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything outside `http { }`, and the temp paths nginx would otherwise put under
/// `/var/lib/nginx`.
fn main_config(dir: &Path, http: &str) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;\n\
         master_process off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         client_body_temp_path {dir}/client_body;\n\
         proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n\
         scgi_temp_path {dir}/scgi;\n\
         access_log off;\n\
         {http}\n\
         }}\n"
    )
}
