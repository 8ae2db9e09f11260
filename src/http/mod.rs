//! The HTTP service: the server and its shared state, the rules every route shares (API-key
//! authentication, the error envelope, JSON bodies, query parameters, the minting pipeline,
//! middleware, the access log) and, under `routes`, one module per surface.

pub(crate) mod access_log;
pub(crate) mod auth;
pub(crate) mod connection;
pub mod error;
mod identity;
pub(crate) mod issuance;
pub(crate) mod json_body;
pub(crate) mod memory;
pub(crate) mod middleware;
pub(crate) mod query;
pub(crate) mod routes;
pub mod server;
pub mod state;
pub mod tls;
mod websocket;
