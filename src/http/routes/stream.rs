//! `GET /v1/stream` — the reference streaming gateway (WebSocket).
//!
//! The upgrade is always accepted when the request is a WebSocket handshake, because a browser
//! cannot read the HTTP status of a failed upgrade. A refused token then gets one JSON error frame
//! and a close code that says why:
//!
//! | close | meaning |
//! | --- | --- |
//! | 4001 | invalid token (missing, malformed, bad signature, unknown kid, wrong iss/aud, …) |
//! | 4002 | token expired (redemption window passed) |
//! | 4003 | token already used |
//! | 4402 | the org has no credits left |
//! | 1011 | replay store unavailable (nothing was accepted; retry) |
//! | 4008 | session ended: `max_session_duration_seconds` reached |
//! | 4009 | session ended: idle timeout (no frame from the client) |
//! | 1001 | server shutting down |
//!
//! A good token gets `{"type":"session_begins","session_id":"<jti>","expires_at":"<RFC 3339>"}`,
//! then text and binary frames are echoed (the demo workload) until the session's deadline.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use crate::admission::redeem::Redemption;
use crate::gateway::{redeem_presented, BEARER_SUBPROTOCOL};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::StreamSettings;
use crate::token::claims::RejectReason;

/// Largest frame echoed; bigger ones end the session with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

pub async fn stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The handshake is checked before the token is touched, so a plain GET never burns a use.
    let (response, mut session, messages) =
        actix_ws::handle_with_protocols(&req, body, &[BEARER_SUBPROTOCOL]).map_err(|_| {
            ApiError::InvalidRequest("GET /v1/stream must be a WebSocket upgrade".into())
        })?;
    let outcome = redeem_presented(&req, &state.redeemer).await;
    let settings = state.stream;
    let shutdown = state.shutdown.subscribe();
    let metrics = state.metrics.clone();
    actix_web::rt::spawn(async move {
        match outcome {
            Ok((redemption, _)) => {
                let _open = metrics.session_opened();
                run_session(session, messages, redemption, settings, shutdown).await;
            }
            Err(error) => {
                let frame = ErrorFrame {
                    kind: "error",
                    code: error.code(),
                    message: error.message(),
                };
                let _ = session.text(to_json(&frame)).await;
                let _ = session.close(Some(close_reason_for(&error))).await;
            }
        }
    });
    Ok(response)
}

#[derive(Serialize)]
struct ErrorFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct SessionBegins {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: String,
    expires_at: String,
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The close code and reason for a refused token (see the table above).
fn close_reason_for(error: &ApiError) -> CloseReason {
    let code = match error {
        ApiError::TokenRejected(RejectReason::Expired) => 4002,
        ApiError::TokenRejected(RejectReason::AlreadyUsed) => 4003,
        ApiError::InsufficientCredits => 4402,
        ApiError::ReplayStoreUnavailable => 1011,
        _ => 4001,
    };
    close(code, &error.message())
}

fn close(code: u16, description: &str) -> CloseReason {
    // A close frame's reason is limited to 123 bytes.
    let mut description = description.to_owned();
    while description.len() > 123 {
        description.pop();
    }
    CloseReason {
        code: CloseCode::from(code),
        description: Some(description),
    }
}

async fn run_session(
    mut session: Session,
    messages: MessageStream,
    redemption: Redemption,
    settings: StreamSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut messages = messages.max_frame_size(MAX_FRAME_BYTES);
    let begins = SessionBegins {
        kind: "session_begins",
        session_id: redemption.claims.jti.to_string(),
        expires_at: redemption
            .session_expires_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
    };
    if session.text(to_json(&begins)).await.is_err() {
        return;
    }
    // The session may outlive the token's redemption window: only this deadline ends it.
    let left = (redemption.session_expires_at - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + left;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    let mut last_heard = Instant::now();

    let reason = loop {
        tokio::select! {
            _ = sleep_until(deadline) => break Some(close(4008, "max session duration reached")),
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break Some(close(1001, "server shutting down"));
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break Some(close(4009, "idle timeout"));
                }
                if session.ping(b"").await.is_err() {
                    break None;
                }
            }
            message = messages.recv() => {
                last_heard = Instant::now();
                let sent = match message {
                    Some(Ok(Message::Text(text))) => session.text(text).await,
                    Some(Ok(Message::Binary(bytes))) => session.binary(bytes).await,
                    Some(Ok(Message::Ping(bytes))) => session.pong(&bytes).await,
                    // Fragments are echoed frame by frame, so the per-frame limit still holds.
                    Some(Ok(Message::Continuation(item))) => session.continuation(item).await,
                    Some(Ok(Message::Pong(_) | Message::Nop)) => Ok(()),
                    Some(Ok(Message::Close(reason))) => break reason,
                    Some(Err(error)) => {
                        log::debug!("stream session {}: {error}", redemption.claims.jti);
                        break Some(close(1009, "frame too large or malformed"));
                    }
                    None => break None,
                };
                if sent.is_err() {
                    break None;
                }
            }
        }
    };
    let _ = session.close(reason).await;
}
