//! What every WebSocket surface shares (`/v1/stream` and the proxy routes): admission under the
//! session caps, the refusal frame and close codes, and bounded sends.
//!
//! | close | meaning |
//! | --- | --- |
//! | 4001 | invalid token (missing, malformed, bad signature, unknown kid, wrong iss/aud, …), or a token type `STREAMTOKEN_STREAM_TOKEN_TYPES` does not admit (`wrong_token_type`; nothing consumed) |
//! | 4002 | token expired (redemption window passed) |
//! | 4003 | token already used (no reconnect grace, or it ran out), or (reason `session already open`) its session is open on another connection, which is left alone |
//! | 4402 | the org has no credits left |
//! | 1011 | replay store unavailable (nothing was accepted; retry) |
//! | 1013 | too many sessions open, in all or for the org, or (proxy) the upstream is unavailable (the token was not used; retry) |
//! | 1008 | the client did not take a frame within `STREAMTOKEN_STREAM_SEND_TIMEOUT_SECONDS` |
//! | 4008 | session ended: `max_session_duration_seconds` reached |
//! | 4009 | session ended: idle timeout (no frame from the client) |
//! | 4010 | token revoked: refused at admission, or a live session ended (reason `revoked`) |
//! | 1001 | server shutting down |

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_ws::{CloseCode, CloseReason, Closed, Session};
use serde::Serialize;

use crate::admission::redeem::Redemption;
use crate::admission::session::HeldSession;
use crate::admission::slots::Slot;
use crate::gateway::presented_token;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::token::claims::RejectReason;

/// Largest frame a client may send; bigger ones end the session with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How long a session's last frames (an error, the close) get to reach the client, and the
/// connection to end by itself, before the server ends it.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An admitted session: its redemption, its place under the caps, and its record as a held
/// session (revocation ends it through it; `HeldSession::end` when the connection closes).
pub struct Admitted {
    pub redemption: Redemption,
    pub slot: Slot,
    pub live: HeldSession,
}

/// A place under the session caps, then the redemption (or the re-opening of the session, within
/// its reconnect grace). The caps are checked on the verified token's org before a use is
/// consumed, so a client turned away keeps a usable token.
pub async fn admit(req: &HttpRequest, state: &AppState) -> Result<Admitted, ApiError> {
    let (token, _) = presented_token(req).ok_or(ApiError::MissingToken)?;
    // Any age: a token past its window may still re-open its session.
    let slot = match state.redeemer.verify_any_age(&token) {
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
    let (redemption, live) = state
        .redeemer
        .open_session_under(&token, &state.stream_policy)
        .await?;
    // Only a keyring reload between the two verifications gets here without a slot.
    let slot = match slot {
        Some(slot) => slot,
        None => match state.session_slots.try_take(&redemption.claims.org) {
            Some(slot) => slot,
            None => {
                live.end().await;
                return Err(ApiError::TooManySessions);
            }
        },
    };
    Ok(Admitted {
        redemption,
        slot,
        live,
    })
}

#[derive(Serialize)]
struct ErrorFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: String,
}

/// The wire format of a refusal's error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"type":"error","code":"token_already_used","message":"…"}`
    Canonical,
    /// AssemblyAI's `{"type":"Error","error":"…","error_code":4003}`: its SDK hands this to
    /// `on_error` with our message, where for a bare close it would show its own text for the
    /// code (4003 reads "This feature is paid-only…").
    AssemblyAi,
}

#[derive(Serialize)]
struct AssemblyAiErrorFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    error: String,
    error_code: u16,
}

/// Tells a refused client why, in one JSON frame and the close code, each bounded by
/// `CLOSE_WAIT` (a client that does not read cannot hold the task).
pub async fn refuse(mut session: Session, error: &ApiError, dialect: Dialect) {
    let reason = close_reason_for(error);
    let frame = match dialect {
        Dialect::Canonical => to_json(&ErrorFrame {
            kind: "error",
            code: error.code(),
            message: error.message(),
        }),
        Dialect::AssemblyAi => to_json(&AssemblyAiErrorFrame {
            kind: "Error",
            error: error.message(),
            error_code: u16::from(reason.code),
        }),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, session.text(frame)).await;
    let closing = session.close(Some(reason));
    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
}

pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The close code and reason for a refused token (see the table above).
pub fn close_reason_for(error: &ApiError) -> CloseReason {
    if let ApiError::TokenRejected(RejectReason::SessionAlreadyOpen) = error {
        return close(4003, "session already open");
    }
    let code = match error {
        ApiError::TokenRejected(RejectReason::Expired) => 4002,
        ApiError::TokenRejected(RejectReason::AlreadyUsed) => 4003,
        ApiError::TokenRejected(RejectReason::Revoked) => 4010,
        ApiError::InsufficientCredits => 4402,
        ApiError::ReplayStoreUnavailable => 1011,
        ApiError::TooManySessions | ApiError::UpstreamUnavailable => 1013,
        _ => 4001,
    };
    close(code, &error.message())
}

/// How a live session whose token was revoked ends.
pub fn revoked() -> CloseReason {
    close(4010, "revoked")
}

pub fn close(code: u16, description: &str) -> CloseReason {
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
pub type Sending = Pin<Box<dyn Future<Output = Result<(), Closed>>>>;

/// The frame in flight, if any, to completion: a `select!` arm guarded by `slot.is_some()`
/// (never ready when the slot is empty). The deadline beside it is the caller's.
pub async fn in_flight<F: Future + Unpin, D>(slot: &mut Option<(F, D)>) -> F::Output {
    match slot.as_mut() {
        Some((frame, _)) => frame.await,
        None => std::future::pending().await,
    }
}
