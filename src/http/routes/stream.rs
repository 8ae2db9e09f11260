//! `GET /v1/stream` — the reference streaming gateway (WebSocket).
//!
//! The upgrade is always accepted when the request is a WebSocket handshake, because a browser
//! cannot read the HTTP status of a failed upgrade. A refused token then gets one JSON error frame
//! and a close code that says why (the table is in `http::websocket`).
//!
//! A good token gets `{"type":"session_begins","session_id":"<jti>","expires_at":"<RFC 3339>"}`,
//! then text and binary frames are echoed (the demo workload) until the session's deadline. A
//! token re-opening its dropped session within its reconnect grace gets the same frame with
//! `"type":"session_resumed"`: the same session id and deadline.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{Message, MessageStream, Session};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use crate::admission::redeem::Redemption;
use crate::admission::session::HeldSession;
use crate::gateway::BEARER_SUBPROTOCOL;
use crate::http::connection::ConnectionSocket;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::http::websocket::{
    admit, close, in_flight, refuse, revoked, to_json, Admitted, Dialect, Sending, CLOSE_WAIT,
    MAX_FRAME_BYTES,
};
use crate::settings::StreamSettings;

pub async fn stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The handshake is checked before the token is touched, so a plain GET never burns a use.
    let (response, session, messages) =
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
            Ok(admitted) => {
                let _open = metrics.session_opened();
                let Admitted {
                    redemption,
                    slot: _slot,
                    live,
                } = admitted;
                run_session(session, messages, redemption, live, settings, shutdown).await;
            }
            Err(error) => {
                refuse(session, &error, Dialect::Canonical).await;
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

#[derive(Serialize)]
struct SessionBegins {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: String,
    expires_at: String,
}

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
    mut live: HeldSession,
    settings: StreamSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut messages = messages.max_frame_size(MAX_FRAME_BYTES);
    let begins = SessionBegins {
        kind: if redemption.resumed {
            "session_resumed"
        } else {
            "session_begins"
        },
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
            _ = live.revoked() => break Some(revoked()),
            _ = sleep_until(send_by.unwrap_or(deadline)), if send_by.is_some() => {
                break Some(close(1008, "client not reading"));
            }
            sent = in_flight(&mut sending), if sending.is_some() => {
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
    live.end().await;
}
