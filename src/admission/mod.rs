//! Admission: how a gateway lets a stream in. Every surface — the `Redeemed` extractor,
//! `POST /v1/tokens/redeem` and `/introspect`, `GET /v1/stream`, `/v1/forward-auth` — runs the
//! same steps and differs only in how it answers:
//!
//! 1. `presented`: find the token the client presented (query, `Authorization` with `Bearer`,
//!    `Token` or no scheme, subprotocol);
//! 2. `redeem`: verify it locally, apply the surface's `policy` (orgs, token types), consume one
//!    use in the shared store (fail closed), and report the outcome to the metrics;
//! 3. `slots`: a session-holding surface takes a place under its caps first, so a client turned
//!    away for capacity keeps its token;
//! 4. `revocation`: an admitted session registers with its token, so revoking the token ends it;
//! 5. `session`: a surface that holds the connection (`Redeemer::open_session`) records its
//!    session, so the listing shows it, a second connection is refused while it is open, and
//!    within the token's reconnect grace the same token re-opens it (step 2 re-opens instead of
//!    consuming).

pub mod policy;
pub mod presented;
pub mod redeem;
pub mod revocation;
pub mod session;
pub mod slots;
