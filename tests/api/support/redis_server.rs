//! A private, throwaway `redis-server` per test.
//!
//! Each server listens on its own free port on 127.0.0.1, uses its own temp dir as
//! working dir (so AOF/RDB files never collide) and logs there instead of to the
//! test output. Dropping the handle SIGKILLs the process, so a panicking test never
//! leaks a server. Only std is used to talk to it, so this helper cannot be broken by
//! the client library under test.
// Not every test binary uses every helper.
#![allow(dead_code)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::skips;

const READY_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A reply as returned by [`RedisServer::command`]; `Display` renders it like redis-cli.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisReply {
    Status(String), // +OK
    Error(String),  // -ERR ...
    Int(i64),       // :5
    Bulk(String),   // $3\r\nabc (lossy UTF-8)
    Nil,            // $-1 or *-1
    Array(Vec<RedisReply>),
}

impl fmt::Display for RedisReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisReply::Status(s) | RedisReply::Bulk(s) => f.write_str(s),
            RedisReply::Error(e) => write!(f, "(error) {e}"),
            RedisReply::Int(i) => write!(f, "{i}"),
            RedisReply::Nil => f.write_str("(nil)"),
            RedisReply::Array(items) => {
                let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence, or returns `None` (after saying so) when
    /// redis-server is not installed. Under `CI=true`/`CI=1` a missing binary panics,
    /// so CI can never silently skip the Redis tests.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start); `extra` is appended to the defaults and wins over
    /// them, e.g. `&["--appendonly", "yes", "--appendfsync", "always"]`.
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        Self::start_picking(free_port, extra)
    }

    /// Like [`start_with`](Self::start_with) on a port from `pick_port`, which must return a
    /// port free at the time (a cluster node also needs port + 10000 free for its bus).
    pub(super) fn start_picking(
        pick_port: impl Fn() -> u16,
        extra: &[&str],
    ) -> Option<RedisServer> {
        if !on_path("redis-server") {
            if skips::on_ci() {
                panic!("redis-server is required when CI=true; install it with apt-get install -y redis-server");
            }
            skips::record("redis-server not found (apt-get install -y redis-server)");
            return None;
        }
        // Ask the OS for a free port. Someone may grab it before redis binds it, so
        // retry a few times on "Address already in use".
        for attempt in 1.. {
            let port = pick_port();
            let dir = tempfile::TempDir::new().expect("temp dir for redis-server");
            let (port_arg, dir_arg) = (port.to_string(), dir.path().display().to_string());
            #[rustfmt::skip]
            let defaults = [
                "--port", &port_arg, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", &dir_arg,
            ];
            let args = defaults
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            let mut server = RedisServer {
                port,
                args,
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("redis-server on port {port} did not answer PING; log:\n{log}"),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// What the server wrote to its log so far (for failure messages).
    pub fn log(&self) -> String {
        let path = self.dir.path().join("redis.log");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    /// SIGSTOP: the server keeps its port and connections but answers nothing, like a
    /// hung or partitioned host. Undo with [`resume`](Self::resume); drop still kills it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let Some(child) = &self.child else {
            panic!("redis-server on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{name} redis-server on port {}: {status}",
            self.port
        );
    }

    /// SIGKILL: simulates a crash; nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful `SHUTDOWN NOSAVE` (an enabled AOF is still fsynced); falls back to
    /// SIGKILL if the process has not exited after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.try_command(&["SHUTDOWN", "NOSAVE"]); // the connection just closes
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts again on the same port, dir and args (killing a running server first),
    /// so clients pointed at [`url`](Self::url) can reconnect.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!(
                "restarted redis-server on port {} did not answer PING; log:\n{log}",
                self.port
            );
        }
    }

    /// Sends one RESP-encoded command on a fresh connection; panics on I/O errors.
    /// Redis errors come back as `RedisReply::Error`.
    pub fn command(&self, args: &[&str]) -> RedisReply {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Like [`command`](Self::command), but I/O errors (a killed server) are returned.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<RedisReply> {
        command_at(self.port, args, IO_TIMEOUT)
    }

    /// Spawns the child and waits for PING; on failure kills it and returns its log.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("redis.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("redis log file");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.ping() {
            let exited = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                self.kill();
                let mut log = String::new();
                let _ = File::open(&log_path).and_then(|mut f| f.read_to_string(&mut log));
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        stream.write_all(b"PING\r\n").is_ok()
            && BufReader::new(stream).read_line(&mut line).is_ok()
            && line.starts_with("+PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one RESP-encoded command to 127.0.0.1:`port` on a fresh connection and reads the
/// reply, waiting at most `timeout` for it (a paused server never answers).
pub fn command_at(port: u16, args: &[&str], timeout: Duration) -> std::io::Result<RedisReply> {
    let mut replies = pipeline_at(port, &[args], timeout)?;
    Ok(replies.remove(0))
}

/// Like [`command_at`], for commands that must share one connection: `WAIT` counts only
/// the writes of its own connection, `READONLY` holds only for the rest of its connection.
pub fn pipeline_at(
    port: u16,
    commands: &[&[&str]],
    timeout: Duration,
) -> std::io::Result<Vec<RedisReply>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut req = String::new();
    for args in commands {
        req.push_str(&format!("*{}\r\n", args.len()));
        for a in *args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

/// A port nothing listens on at the moment (the OS picks it).
pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub(super) fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<RedisReply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = (line.get(..1).unwrap_or(""), line.get(1..).unwrap_or(""));
    let bad = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {line:?}"))
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad("bad length/integer"));
    Ok(match kind {
        "+" => RedisReply::Status(rest.to_string()),
        "-" => RedisReply::Error(rest.to_string()),
        ":" => RedisReply::Int(num(rest)?),
        "$" if num(rest)? < 0 => RedisReply::Nil,
        "$" => {
            let mut buf = vec![0; num(rest)? as usize + 2]; // payload + CRLF
            r.read_exact(&mut buf)?;
            buf.truncate(buf.len() - 2);
            RedisReply::Bulk(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" if num(rest)? < 0 => RedisReply::Nil,
        "*" => RedisReply::Array(
            (0..num(rest)?)
                .map(|_| read_reply(r))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad("unsupported reply type")),
    })
}
