//! Tenancy: who may do what, for which org. API keys and their scopes, org names, per-org rate
//! limits and the credit policy. Nothing here signs or verifies a token.

pub mod api_keys;
pub mod credits;
pub mod org;
pub mod rate_limit;
