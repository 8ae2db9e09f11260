//! `GET /v1/stream` — the reference streaming gateway (WebSocket).
//!
//! The upgrade is always accepted when the request is a WebSocket handshake, because a browser
//! cannot read the HTTP status of a failed upgrade. A refused token then gets one JSON error frame
//! and a close code that says why:
//!
//! | close | meaning |
//! | --- | --- |
//! | 4001 | invalid token (missing, malformed, bad signature, unknown kid, wrong iss/aud, …), or a token type `STREAMTOKEN_STREAM_TOKEN_TYPES` does not admit (`wrong_token_type`; nothing consumed) |
//! | 4002 | token expired (redemption window passed) |
//! | 4003 | token already used |
//! | 4402 | the org has no credits left |
//! | 1011 | replay store unavailable (nothing was accepted; retry) |
//! | 1013 | too many sessions open, in all or for the org (the token was not used; retry) |
//! | 1008 | the client did not take a frame within `STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS` |
//! | 4008 | session ended: `max_session_duration_seconds` reached |
//! | 4009 | session ended: idle timeout (no frame from the client) |
//! | 1001 | server shutting down |
//!
//! A good token gets `{"type":"session_begins","session_id":"<jti>","expires_at":"<RFC 3339>"}`,
//! then text and binary frames are echoed (the demo workload) until the session's deadline.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;

use actix_ws::{CloseCode, CloseReason, Closed, Message, MessageStream, Session};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use crate::admission::redeem::Redemption;
use crate::admission::slots::Slot;
use crate::gateway::{presented_token, BEARER_SUBPROTOCOL};
use crate::http::connection::ConnectionSocket;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::StreamSettings;
use crate::token::claims::RejectReason;

/// Largest frame echoed; bigger ones end the session with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How long a session's last frames (an error, the close) get to reach the client, and the
/// connection to end by itself, before the server ends it.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

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
    let outcome = admit(&req, &state).await;
    let settings = state.stream.clone();
    let shutdown = state.shutdown.subscribe();
    let metrics = state.metrics.clone();
    let socket = ConnectionSocket::of(&req);
    let memory = state.memory.clone();
    actix_web::rt::spawn(async move {
        match outcome {
            Ok((redemption, _slot)) => {
                let _open = metrics.session_opened();
                run_session(session, messages, redemption, settings, shutdown).await;
            }
            Err(error) => {
                let frame = ErrorFrame {
                    kind: "error",
                    code: error.code(),
                    message: error.message(),
                };
                let _ = tokio::time::timeout(CLOSE_WAIT, session.text(to_json(&frame))).await;
                let closing = session.close(Some(close_reason_for(&error)));
                let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
            }
        }
        // Whatever the client does, the connection ends: a client that stopped reading would
        // otherwise hold it, and every frame queued for it, indefinitely.
        if let Some(socket) = socket {
            socket.end_within(CLOSE_WAIT).await;
        }
        memory.session_ended();
    });
    Ok(response)
}

/// A place under the session caps, then the redemption. The caps are checked on the verified
/// token's org before a use is consumed, so a client turned away keeps a usable token.
async fn admit(req: &HttpRequest, state: &AppState) -> Result<(Redemption, Slot), ApiError> {
    let (token, _) = presented_token(req).ok_or(ApiError::MissingToken)?;
    let slot = match state.redeemer.verify(&token) {
        Ok(claims) => match state.session_slots.try_take(&claims.org) {
            Some(slot) => Some(slot),
            None => {
                state.metrics.rejected("too_many_sessions");
                return Err(ApiError::TooManySessions);
            }
        },
        // Refused below, with the reason counted where every refusal is.
        Err(_) => None,
    };
    let redemption = state
        .redeemer
        .redeem_under(&token, &state.stream_policy)
        .await?;
    // Only a keyring reload between the two verifications gets here without a slot.
    let slot = match slot {
        Some(slot) => slot,
        None => state
            .session_slots
            .try_take(&redemption.claims.org)
            .ok_or(ApiError::TooManySessions)?,
    };
    Ok((redemption, slot))
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
        ApiError::TooManySessions => 1013,
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

/// A frame on its way to the client. Sends are never awaited inside the session loop, so the
/// deadline, idle timeout and shutdown fire whatever the client does; while one is pending the
/// loop stops reading (backpressure) and a send that outlasts the send timeout ends the session.
type Sending = Pin<Box<dyn Future<Output = Result<(), Closed>>>>;

fn echo(session: &Session, message: Message) -> Sending {
    let mut out = session.clone();
    Box::pin(async move {
        match message {
            Message::Text(text) => out.text(text).await,
            Message::Binary(bytes) => out.binary(bytes).await,
            Message::Ping(bytes) => out.pong(&bytes).await,
            // Fragments are echoed frame by frame, so the per-frame limit still holds.
            Message::Continuation(item) => out.continuation(item).await,
            Message::Pong(_) | Message::Nop | Message::Close(_) => Ok(()),
        }
    })
}

fn ping(session: &Session) -> Sending {
    let mut out = session.clone();
    Box::pin(async move { out.ping(b"").await })
}

async fn run_session(
    session: Session,
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
    let mut out = session.clone();
    let first: Sending = Box::pin(async move { out.text(to_json(&begins)).await });
    // The session may outlive the token's redemption window: only this deadline ends it.
    let left = (redemption.session_expires_at - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + left;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    let mut last_heard = Instant::now();
    let mut sending: Option<(Sending, Instant)> =
        Some((first, Instant::now() + settings.send_timeout));

    let reason = loop {
        let send_by = sending.as_ref().map(|(_, by)| *by);
        tokio::select! {
            _ = sleep_until(deadline) => break Some(close(4008, "max session duration reached")),
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break Some(close(1001, "server shutting down"));
            }
            _ = sleep_until(send_by.unwrap_or(deadline)), if send_by.is_some() => {
                break Some(close(1008, "client not reading"));
            }
            sent = async {
                match sending.as_mut() {
                    Some((send, _)) => send.await,
                    None => std::future::pending().await,
                }
            }, if sending.is_some() => {
                sending = None;
                if sent.is_err() {
                    break None;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break Some(close(4009, "idle timeout"));
                }
                // A client still taking the last frame needs no ping to prove it is there.
                if sending.is_none() {
                    sending = Some((ping(&session), Instant::now() + settings.send_timeout));
                }
            }
            message = messages.recv(), if sending.is_none() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Close(reason))) => break reason,
                    Some(Ok(message)) => {
                        sending = Some((echo(&session, message), Instant::now() + settings.send_timeout));
                    }
                    Some(Err(error)) => {
                        log::debug!("stream session {}: {error}", redemption.claims.jti);
                        break Some(close(1009, "frame too large or malformed"));
                    }
                    None => break None,
                }
            }
        }
    };
    // A client that stopped reading may never take the close frame either.
    drop(sending);
    let _ = tokio::time::timeout(CLOSE_WAIT, session.close(reason)).await;
}
