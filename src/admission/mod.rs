//! Admission: how a gateway lets a stream in. Every surface — the `Redeemed` extractor,
//! `POST /v1/tokens/redeem` and `/introspect`, `GET /v1/stream` — runs the same steps and differs
//! only in how it answers:
//!
//! 1. `presented`: find the token the client presented (query, `Authorization`, subprotocol);
//! 2. `redeem`: verify it locally, consume one use in the shared store (fail closed), and report
//!    the outcome to the metrics.

pub mod presented;
pub mod redeem;
