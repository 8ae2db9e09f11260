//! Reading `/v1/stream`'s verdict on a token the way a client sees it.
#![allow(dead_code)]

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::app::TestApp;

/// The first text frame and, unless it is `session_begins`, the close code that follows it.
pub async fn stream_verdict(app: &TestApp, token: &str) -> (Value, Option<u16>) {
    let url = app.ws_url(&format!("/v1/stream?token={token}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut first = Value::Null;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match frame.unwrap() {
            Message::Text(text) if first.is_null() => {
                first = serde_json::from_str(&text).unwrap();
                if first["type"] == "session_begins" {
                    return (first, None);
                }
            }
            Message::Close(close) => return (first, close.map(|c| u16::from(c.code))),
            _ => {}
        }
    }
    panic!("no verdict within 10 s; first frame {first}");
}
