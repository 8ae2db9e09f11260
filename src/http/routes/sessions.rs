//! `GET /v1/sessions`: the sessions open for the caller's org (or, with `?org=`, an org an
//! `--any-org` key acts for), as the shared store knows them: with Redis, on every process of
//! the fleet. A session is listed from admission until its connection closes, and then for as
//! long as its reconnect grace lets the token re-open it (`"connected": false`). Sessions whose
//! connection a gateway here holds are listed (`/v1/stream`, proxy routes, an embedded
//! `open_session`); a grant over `/v1/tokens/redeem` or `/v1/forward-auth` is not, since the
//! connection is held elsewhere.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::store::{SessionRecord, MAX_LISTED_SESSIONS};

#[derive(Serialize)]
struct SessionsBody<'a> {
    org: &'a str,
    sessions: Vec<ListedSession>,
    /// More sessions are open than one answer lists (`MAX_LISTED_SESSIONS`).
    truncated: bool,
}

#[derive(Serialize)]
struct ListedSession {
    session_id: String,
    token_type: String,
    opened_at: String,
    expires_at: String,
    connected: bool,
    instance: String,
}

impl From<SessionRecord> for ListedSession {
    fn from(record: SessionRecord) -> Self {
        let rfc3339 = |ms: i64| {
            DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        ListedSession {
            session_id: record.session_id.to_string(),
            token_type: record.token_type,
            opened_at: rfc3339(record.opened_at_ms),
            expires_at: rfc3339(record.expires_at_ms),
            connected: record.connected,
            instance: record.instance,
        }
    }
}

pub async fn sessions(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.readable_org(&req)?;
    let org = org.as_str();
    let mut records = state
        .store
        .sessions(org)
        .await
        .inspect_err(|_| state.metrics.store_error())?;
    let truncated = records.len() > MAX_LISTED_SESSIONS;
    records.truncate(MAX_LISTED_SESSIONS);
    Ok(HttpResponse::Ok().json(SessionsBody {
        org,
        sessions: records.into_iter().map(ListedSession::from).collect(),
        truncated,
    }))
}
