//! streamtoken: mints short-lived, single-use HS256 tokens for streaming sessions and verifies
//! them locally, consuming each `jti` exactly once.

pub mod access_log;
pub mod api_keys;
pub mod auth;
pub mod cli;
pub mod error;
pub mod gateway;
pub mod issuance;
pub mod json_body;
pub mod key_admin;
pub mod keyring;
pub mod metrics;
pub mod mint;
pub mod params;
pub mod query;
mod random;
pub mod rate_limit;
pub mod redeem;
pub mod replay;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod token;
