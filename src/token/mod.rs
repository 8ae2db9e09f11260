//! The token format and the two things done with it without any shared state: minting and
//! verifying.
//!
//! - `claims`: what a token carries, how it is signed, the stable refusal reasons;
//! - `params`: the values a mint request is made of, each built only by its parser;
//! - `mint`: the minting core every minting route ends in;
//! - `verify`: signature, deadline, issuer, audience and range checks.

pub mod claims;
pub mod mint;
pub mod params;
pub mod verify;
