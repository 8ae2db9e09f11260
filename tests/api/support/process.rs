//! The real `streamtoken` binary as a child process: for what only a process can show (SIGHUP,
//! two servers sharing one Redis, the CLI). Its stderr is collected line by line so tests can
//! wait for a log line instead of sleeping.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_streamtoken");

/// Where Debian's `faketime` package puts the multi-threaded libfaketime.
const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

/// Runs a CLI command against `keys_dir` and returns its stdout; panics on failure.
pub fn cli(keys_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env("STREAMTOKEN_KEYS_DIR", keys_dir)
        .env_remove("STREAMTOKEN_REDIS_URL")
        .output()
        .expect("run streamtoken");
    assert!(
        output.status.success(),
        "streamtoken {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub struct ServerProcess {
    child: Child,
    pub address: String,
    log_lines: Receiver<String>,
    /// Every stderr line so far, for leak checks and failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn spawn(keys_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        Self::spawn_command(Command::new(BIN), keys_dir, env)
    }

    /// A server whose clock runs `offset_seconds` off the host's (libfaketime, preloaded into the
    /// server itself: the `faketime` wrapper would fork it, and killing the wrapper would orphan
    /// the server), or `None` (recorded as a skip; a failure under `CI=true`) when libfaketime is
    /// not installed.
    pub fn spawn_with_clock_offset(
        keys_dir: &Path,
        env: &[(&str, &str)],
        offset_seconds: i64,
    ) -> Option<ServerProcess> {
        let Some(library) = LIBFAKETIME.iter().find(|path| Path::new(path).exists()) else {
            if super::skips::on_ci() {
                panic!("libfaketime is required when CI=true; install it with apt-get install -y faketime");
            }
            super::skips::record("libfaketime not found (apt-get install -y faketime)");
            return None;
        };
        let mut command = Command::new(BIN);
        command
            .env("LD_PRELOAD", library)
            .env("FAKETIME", format!("{offset_seconds:+}s"));
        Some(Self::spawn_command(command, keys_dir, env))
    }

    fn spawn_command(mut command: Command, keys_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        command
            .arg("serve")
            .env("STREAMTOKEN_KEYS_DIR", keys_dir)
            .env("STREAMTOKEN_BIND", "127.0.0.1:0")
            .env("STREAMTOKEN_WORKERS", "2")
            .env("RUST_LOG", "debug")
            .env_remove("STREAMTOKEN_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn streamtoken serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, log_lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = sender.send(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let address = first
            .trim()
            .strip_prefix("streamtoken listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {first:?}; log: {:?}",
                    log.lock().unwrap()
                )
            })
            .to_owned();
        ServerProcess {
            child,
            address,
            log_lines,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a stderr line containing `needle` (lines seen before this call count too only
    /// if they have not been consumed by an earlier wait).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (blocking, polling every 20 ms) for the process to exit on its own; `None` if it
    /// is still running after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("try_wait on streamtoken serve")
            {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}
