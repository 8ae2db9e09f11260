//! streamtoken: mints short-lived, single-use HS256 tokens for streaming sessions and verifies
//! them locally, consuming each `jti` exactly once.
//!
//! # The surface we promise
//!
//! For a gateway embedded in an actix-web service:
//! - [`gateway`]: the `Redeemed` extractor and `redeem_presented`;
//! - [`admission`]: the redemption core behind every gateway surface (`Redeemer`);
//! - [`settings`]: the `STREAMTOKEN_*` configuration, read the same way the service reads it.
//!
//! For tools and tests that work with the parts directly: [`token`] (claims, minting,
//! verification), [`keys`] (the keys directory), [`tenancy`] (API keys, orgs, rate limits,
//! credits), [`store`] (the shared-state layer), and [`http::server`] (the service itself).
//!
//! # Where things live
//!
//! | module | owns |
//! | --- | --- |
//! | `token` | the token format: claims, request values, minting, verification |
//! | `keys` | the keys directory: signing keys and API-key records, reload, the folder watch, the CLI writer |
//! | `tenancy` | API keys and scopes, orgs, per-org rate limits, the credit policy |
//! | `store` | shared state (consumed uses, credits, usage) with memory and Redis backends |
//! | `admission` | finding a presented token, verifying it, consuming one use, reporting |
//! | `gateway` | the actix-web embedding of admission |
//! | `http` | the service: state, server, middleware, error envelope, and each route surface |
//! | `cli` | the `streamtoken` command |
//! | `settings`, `input`, `metrics`, `periodic`, `crypto_provider` | configuration, reading integers, Prometheus counters, interval tasks, the one rustls provider |

pub mod admission;
pub mod cli;
mod crypto_provider;
pub mod gateway;
pub mod http;
pub mod input;
pub(crate) mod json_out;
pub mod keys;
pub mod metrics;
mod periodic;
mod random;
pub mod settings;
pub mod store;
pub mod tenancy;
pub mod token;
