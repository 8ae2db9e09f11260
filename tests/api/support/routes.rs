//! The service's route paths, named once for every test module.
#![allow(dead_code)]

pub const MINT: &str = "/v1/tokens";
pub const REDEEM: &str = "/v1/tokens/redeem";
pub const INTROSPECT: &str = "/v1/tokens/introspect";
pub const REVOKE: &str = "/v1/tokens/revoke";
/// The reference streaming gateway (a WebSocket).
pub const STREAM: &str = "/v1/stream";
/// A reverse proxy's auth subrequest (any method).
pub const FORWARD_AUTH: &str = "/v1/forward-auth";
pub const ASSEMBLYAI: &str = "/v3/token";
pub const ELEVENLABS_SCRIBE: &str = "/v1/single-use-token/realtime_scribe";
pub const ELEVENLABS_TTS: &str = "/v1/single-use-token/tts_websocket";
/// The stream-token vendor's minting route (not the gateway).
pub const STREAM_TOKEN: &str = "/api/v1/token";
pub const CHAT: &str = "/api/v1/chat/token";
/// The chat page's Node example calls this (a typo on the page, served as an alias).
pub const CHAT_ALIAS: &str = "/api/api/v1/chat/token";
