//! A WebSocket upstream for the proxy tests: it records each handshake (path, query, headers)
//! and each close it receives, and echoes, closes on request, or never reads.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// What the upstream does once a session is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Echoes text and binary frames; on the text `close me` closes with 4567 `upstream says bye`.
    Echo,
    /// Never reads after the handshake (a stalled upstream).
    NeverRead,
}

/// One handshake as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub path_and_query: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Seen {
    handshakes: Vec<Handshake>,
    closes: Vec<(u16, String)>,
}

pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(behaviour: Behaviour) -> Upstream {
        Self::start_on(0, behaviour).await
    }

    /// On `port` (0 = any free one).
    pub async fn start_on(port: u16, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recording = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, behaviour, recording.clone()));
            }
        });
        Upstream { port, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.seen.lock().unwrap().handshakes.clone()
    }

    pub fn closes(&self) -> Vec<(u16, String)> {
        self.seen.lock().unwrap().closes.clone()
    }

    /// Waits up to 5 s for `n` closes to have arrived.
    pub async fn wait_for_closes(&self, n: usize) -> Vec<(u16, String)> {
        for _ in 0..250 {
            if self.closes().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.closes()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// tungstenite's handshake callback type returns its (large) error response by value.
#[allow(clippy::result_large_err)]
async fn serve(stream: tokio::net::TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Seen>>) {
    let recording = seen.clone();
    let record = move |request: &Request, response: Response| {
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or(String::new(), |p| p.to_string());
        recording.lock().unwrap().handshakes.push(Handshake {
            path_and_query,
            headers,
        });
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    if behaviour == Behaviour::NeverRead {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) if text.as_str() == "close me" => {
                let frame = CloseFrame {
                    code: CloseCode::from(4567),
                    reason: "upstream says bye".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let echoed = ws.send(message).await;
                if echoed.is_err() {
                    return;
                }
            }
            Message::Close(frame) => {
                let close = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                seen.lock().unwrap().closes.push(close);
                let _ = ws.flush().await;
                return;
            }
            _ => {}
        }
    }
}
