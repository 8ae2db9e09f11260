//! An HTTP/1.1 client writing requests byte for byte, for what a normalising client cannot send.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, exactly as it will be written on the wire.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// Path and query, raw bytes.
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` instead of a `Content-Length`.
    pub chunked: bool,
    pub websocket: bool,
}

impl RawRequest {
    pub fn new(method: &str, target: impl AsRef<[u8]>) -> RawRequest {
        RawRequest {
            method: method.to_owned(),
            target: target.as_ref().to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            websocket: false,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        // A request that writes its own framing headers gets exactly those.
        let sets_length = self.headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
        });
        if self.websocket {
            out.extend_from_slice(
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            );
            return out;
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !sets_length && (!self.body.is_empty() || self.method != "GET") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        if self.chunked {
            for chunk in self.body.chunks(4096) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The building methods, for a `RawRequest` and for anything that carries one (a table row), so
/// a row reads as one chain of calls.
pub trait BuildRaw: Sized {
    fn raw_mut(&mut self) -> &mut RawRequest;

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.raw_mut()
            .headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn bearer(self, key: &str) -> Self {
        self.header("Authorization", format!("Bearer {key}"))
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.raw_mut().body = body.as_ref().to_vec();
        self
    }

    fn json(self, body: impl AsRef<[u8]>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }

    /// Pads the request to `n` header lines in all.
    fn headers_n(mut self, n: usize) -> Self {
        let headers = &mut self.raw_mut().headers;
        let mut i = 0;
        while headers.len() < n {
            headers.push((format!("X-Pad-{i}"), b"1".to_vec()));
            i += 1;
        }
        self
    }

    fn chunked(mut self) -> Self {
        self.raw_mut().chunked = true;
        self
    }

    fn websocket(mut self) -> Self {
        self.raw_mut().websocket = true;
        self
    }
}

impl BuildRaw for RawRequest {
    fn raw_mut(&mut self) -> &mut RawRequest {
        self
    }
}

/// What came back: the head, the body (de-chunked), and after a 101 the WebSocket frames.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// WebSocket frames after a 101: `(opcode, payload)`.
    pub frames: Vec<(u8, Vec<u8>)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How long to keep reading after a 101, since the server keeps the socket open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// Until the first complete frame (a session that begins).
    First,
    /// Until a close frame (a refusal in-band).
    Close,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends the request from a second thread while this one reads, so an answer the server gives
/// before reading the whole body (413, 431) is read before the server resets the connection.
/// `address` is `host:port`, with or without `http://`.
pub fn exchange(address: &str, request: &RawRequest, frames: Frames) -> Result<Answer, String> {
    let address = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let bytes = request.bytes();
    let sender = std::thread::spawn(move || {
        // The server may answer and close before it has read everything: not our failure.
        let _ = writer.write_all(&bytes);
    });
    let mut raw = Vec::new();
    let mut buffer = [0u8; 65536];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if request.websocket && websocket_done(&raw, frames) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset after the answer arrived (the server closed with our body unread).
            Err(_) if find(&raw, b"\r\n\r\n").is_some() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    drop(stream);
    let _ = sender.join();
    parse_answer(&raw, request.method == "HEAD")
}

fn websocket_done(raw: &[u8], frames: Frames) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    if !raw.starts_with(b"HTTP/1.1 101") {
        return false;
    }
    let read = parse_frames(&raw[end + 4..]);
    match frames {
        Frames::First => !read.is_empty(),
        Frames::Close => read.iter().any(|(opcode, _)| *opcode == 0x8),
    }
}

fn parse_answer(raw: &[u8], head_only: bool) -> Result<Answer, String> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
        frames: Vec::new(),
    };
    if status == 101 {
        answer.frames = parse_frames(rest);
    } else if head_only {
        // A HEAD answer announces a length but carries no body.
    } else if answer.header("transfer-encoding") == Some("chunked") {
        answer.body = dechunk(rest)?;
    } else if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().map_err(|_| "bad content-length")?;
        if rest.len() < length {
            return Err(format!("body cut short: {} of {length} bytes", rest.len()));
        }
        answer.body = rest[..length].to_vec();
    } else {
        answer.body = rest.to_vec();
    }
    Ok(answer)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("chunk size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("chunk cut short")?);
        rest = rest.get(size + 2..).ok_or("chunk cut short")?;
    }
}

/// Complete server frames (unmasked) at the start of `bytes`.
fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (length, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let Some(payload) = bytes.get(header..header + length) else {
            break;
        };
        frames.push((opcode, payload.to_vec()));
        bytes = &bytes[header + length..];
    }
    frames
}
