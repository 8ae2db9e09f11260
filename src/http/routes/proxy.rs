//! WebSocket proxy routes (`STREAMTOKEN_PROXY`): streamtoken admits the token, then relays the
//! session to an upstream that knows nothing of tokens.
//!
//! Admission is the reference gateway's (caps, policy, close codes), in two phases: the use is
//! recorded on admission and taken back if the upstream handshake fails, so the client gets 1013
//! `upstream unavailable` and the same token works on retry. The upstream is opened with the
//! client's query string minus `token` and the identity headers (`X-Streamtoken-Org`, …). Frames
//! flow both ways one at a time per direction: a side that does not take a frame stops the other
//! side being read (backpressure), and one that does not take it within the send timeout ends
//! the session. Close codes and reasons pass through; the session's deadline closes the client
//! with 4008 and the upstream with 1000.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, MessageStream, Session};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as UpstreamCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::admission::redeem::Redemption;
use crate::admission::session::HeldSession;
use crate::gateway::BEARER_SUBPROTOCOL;
use crate::http::connection::ConnectionSocket;
use crate::http::error::ApiError;
use crate::http::identity::identity_headers;
use crate::http::state::AppState;
use crate::http::websocket::{
    admit, close, in_flight, refuse, revoked, Admitted, Dialect, Sending, CLOSE_WAIT,
    MAX_FRAME_BYTES,
};
use crate::settings::{ProxyRoute, StreamSettings};

/// Longest wait for the upstream's handshake before the client gets 1013.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message taken from the upstream; bigger ones end the session with 1009.
pub const MAX_UPSTREAM_MESSAGE_BYTES: usize = 1024 * 1024;
/// Heartbeat pings carry this payload, so their pongs are not relayed to the upstream.
const HEARTBEAT: &[u8] = b"streamtoken";

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type UpstreamSink = SplitSink<Upstream, Frame>;
/// A frame on its way to the upstream; the sink comes back with the outcome.
type Relaying = Pin<
    Box<
        dyn Future<
            Output = (
                UpstreamSink,
                Result<(), tokio_tungstenite::tungstenite::Error>,
            ),
        >,
    >,
>;

/// The handler for one proxy route.
pub async fn relay(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    route: Arc<ProxyRoute>,
) -> Result<HttpResponse, ApiError> {
    let (response, session, messages) =
        actix_ws::handle_with_protocols(&req, body, &[BEARER_SUBPROTOCOL]).map_err(|_| {
            ApiError::InvalidRequest(format!("GET {} must be a WebSocket upgrade", route.path))
        })?;
    let admitted = admit(&req, &state).await;
    let dialect = refusal_dialect(&route.path);
    let query = query_without_token(req.query_string());
    let socket = ConnectionSocket::of(&req);
    actix_web::rt::spawn(async move {
        match admitted {
            Ok(Admitted {
                redemption,
                slot: _slot,
                live,
            }) => match open_upstream(&route, &query, &redemption).await {
                Ok(upstream) => {
                    let _open = state.metrics.session_opened();
                    let shutdown = state.shutdown.subscribe();
                    run_relay(
                        session,
                        messages,
                        upstream,
                        &redemption,
                        live,
                        &state.stream,
                        shutdown,
                    )
                    .await;
                }
                Err(why) => {
                    log::warn!("proxy {}: upstream unavailable: {why}", route.path);
                    // Phase two failed: give the use back (or the re-opened session) so the
                    // client can retry.
                    let _ = state.redeemer.release(&redemption).await;
                    live.end().await;
                    refuse(session, &ApiError::UpstreamUnavailable, dialect).await;
                }
            },
            Err(error) => refuse(session, &error, dialect).await,
        }
        if let Some(socket) = socket {
            socket.end_within(CLOSE_WAIT).await;
        }
        state.memory.session_ended();
    });
    Ok(response)
}

/// AssemblyAI's streaming path gets AssemblyAI's error frame, so its SDK shows our reason.
fn refusal_dialect(path: &str) -> Dialect {
    if path == ASSEMBLYAI_STREAMING_PATH {
        Dialect::AssemblyAi
    } else {
        Dialect::Canonical
    }
}

/// Where AssemblyAI's SDKs open their streaming WebSocket.
pub const ASSEMBLYAI_STREAMING_PATH: &str = "/v3/ws";

/// The client's query string without its `token` parameter(s).
fn query_without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next() != Some("token"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Opens the upstream WebSocket with the client's query and the identity headers.
async fn open_upstream(
    route: &ProxyRoute,
    query: &str,
    redemption: &Redemption,
) -> Result<Upstream, String> {
    let url = match (query.is_empty(), route.upstream.contains('?')) {
        (true, _) => route.upstream.clone(),
        (false, true) => format!("{}&{query}", route.upstream),
        (false, false) => format!("{}?{query}", route.upstream),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("upstream URL: {e}"))?;
    for (name, value) in identity_headers(redemption) {
        let value = HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?;
        request.headers_mut().insert(name, value);
    }
    if url.starts_with("wss://") {
        crate::crypto_provider::installed();
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_UPSTREAM_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_UPSTREAM_MESSAGE_BYTES))
        // A bounded outgoing buffer: a full one makes sends wait, which is the backpressure.
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(4 * MAX_FRAME_BYTES);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((upstream, _response))) => Ok(upstream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no handshake within {} s",
            UPSTREAM_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// How a relayed session ended: what the client and the upstream are told.
struct Ending {
    client: Option<actix_ws::CloseReason>,
    upstream: Option<CloseFrame>,
}

impl Ending {
    /// The same code and reason to both sides (a close passed through, a shutdown).
    fn both(code: u16, reason: &str) -> Self {
        Ending {
            client: Some(close(code, reason)),
            upstream: Some(upstream_close(code, reason)),
        }
    }
}

fn upstream_close(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: UpstreamCode::from(code),
        reason: reason.to_owned().into(),
    }
}

async fn run_relay(
    session: Session,
    messages: MessageStream,
    upstream: Upstream,
    redemption: &Redemption,
    mut live: HeldSession,
    settings: &StreamSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Fragmented messages are reassembled (up to the same limit) and relayed whole.
    let mut from_client = messages
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let (sink, mut from_upstream): (UpstreamSink, SplitStream<Upstream>) = upstream.split();
    let mut idle_sink = Some(sink);
    let left = (redemption.session_expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + left;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    let mut last_heard = Instant::now();
    let mut to_client: Option<(Sending, Instant)> = None;
    let mut to_upstream: Option<(Relaying, Instant)> = None;

    let ending = loop {
        let client_by = to_client.as_ref().map(|(_, by)| *by);
        let upstream_by = to_upstream.as_ref().map(|(_, by)| *by);
        tokio::select! {
            _ = sleep_until(deadline) => break Ending {
                client: Some(close(4008, "max session duration reached")),
                upstream: Some(upstream_close(1000, "session ended")),
            },
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break Ending::both(1001, "server shutting down");
            }
            _ = live.revoked() => break Ending {
                client: Some(revoked()),
                upstream: Some(upstream_close(1000, "session revoked")),
            },
            _ = sleep_until(client_by.unwrap_or(deadline)), if client_by.is_some() => {
                break Ending {
                    client: Some(close(1008, "client not reading")),
                    upstream: Some(upstream_close(1001, "client not reading")),
                };
            }
            _ = sleep_until(upstream_by.unwrap_or(deadline)), if upstream_by.is_some() => {
                break Ending { client: Some(close(1011, "upstream not reading")), upstream: None };
            }
            sent = in_flight(&mut to_client), if to_client.is_some() => {
                to_client = None;
                if sent.is_err() {
                    break Ending { client: None, upstream: Some(upstream_close(1001, "client gone")) };
                }
            }
            (sink, relayed) = in_flight(&mut to_upstream), if to_upstream.is_some() => {
                to_upstream = None;
                idle_sink = Some(sink);
                if relayed.is_err() {
                    break Ending { client: Some(close(1011, "upstream connection lost")), upstream: None };
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break Ending {
                        client: Some(close(4009, "idle timeout")),
                        upstream: Some(upstream_close(1000, "session ended")),
                    };
                }
                if to_client.is_none() {
                    let mut out = session.clone();
                    to_client = Some((
                        Box::pin(async move { out.ping(HEARTBEAT).await }),
                        Instant::now() + settings.send_timeout,
                    ));
                }
            }
            message = from_client.recv(), if to_upstream.is_none() => {
                last_heard = Instant::now();
                let frame = match message {
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        let (code, text) = reason.map_or((1000, String::new()), |r| {
                            (u16::from(r.code), r.description.unwrap_or_default())
                        });
                        break Ending::both(code, &text);
                    }
                    Some(Ok(message)) => match to_upstream_frame(message) {
                        Some(frame) => frame,
                        None => continue,
                    },
                    Some(Err(error)) => {
                        log::debug!("proxied session {}: {error}", redemption.claims.jti);
                        break Ending {
                            client: Some(close(1009, "frame too large or malformed")),
                            upstream: Some(upstream_close(1001, "client sent a bad frame")),
                        };
                    }
                    None => break Ending { client: None, upstream: Some(upstream_close(1001, "client gone")) },
                };
                let Some(mut sink) = idle_sink.take() else { continue };
                to_upstream = Some((
                    Box::pin(async move {
                        let sent = sink.send(frame).await;
                        (sink, sent)
                    }),
                    Instant::now() + settings.send_timeout,
                ));
            }
            frame = from_upstream.next(), if to_client.is_none() => {
                let message = match frame {
                    Some(Ok(Frame::Close(frame))) => {
                        let (code, text) = frame.map_or((1000, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        break Ending { client: Some(close(code, &text)), upstream: None };
                    }
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        log::debug!("proxied session {}: upstream: {error}", redemption.claims.jti);
                        break Ending { client: Some(close(1011, "upstream connection lost")), upstream: None };
                    }
                    None => break Ending { client: Some(close(1011, "upstream connection lost")), upstream: None },
                };
                let mut out = session.clone();
                let send: Sending = Box::pin(async move {
                    match message {
                        Frame::Text(text) => out.text(text.as_str().to_owned()).await,
                        Frame::Binary(bytes) => out.binary(bytes).await,
                        Frame::Ping(bytes) => out.ping(&bytes).await,
                        Frame::Pong(bytes) => out.pong(&bytes).await,
                        Frame::Close(_) | Frame::Frame(_) => Ok(()),
                    }
                });
                to_client = Some((send, Instant::now() + settings.send_timeout));
            }
        }
    };
    // A side that stopped reading may never take its close frame either.
    drop(to_client);
    let pending = to_upstream.take();
    if let Some(frame) = ending.upstream {
        let sink = match pending {
            Some((relay, _)) => tokio::time::timeout(CLOSE_WAIT, relay)
                .await
                .ok()
                .map(|(sink, _)| sink),
            None => idle_sink.take(),
        };
        if let Some(mut sink) = sink {
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Frame::Close(Some(frame)))).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, session.close(ending.client)).await;
    live.end().await;
}

/// The client's message as the upstream gets it; heartbeat pongs stay here.
fn to_upstream_frame(message: AggregatedMessage) -> Option<Frame> {
    Some(match message {
        AggregatedMessage::Text(text) => Frame::text(text.to_string()),
        AggregatedMessage::Binary(bytes) => Frame::binary(bytes),
        AggregatedMessage::Ping(bytes) => Frame::Ping(bytes),
        AggregatedMessage::Pong(bytes) if bytes.as_ref() == HEARTBEAT => return None,
        AggregatedMessage::Pong(bytes) => Frame::Pong(bytes),
        AggregatedMessage::Close(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_reaches_the_upstream_and_the_rest_of_the_query_does() {
        assert_eq!(
            query_without_token("sample_rate=16000&token=eyJ.a.b&encoding=pcm_s16le"),
            "sample_rate=16000&encoding=pcm_s16le"
        );
        assert_eq!(query_without_token("token=a&token=b"), "");
        assert_eq!(query_without_token("tokens=1&x"), "tokens=1&x");
        assert_eq!(query_without_token(""), "");
    }
}
