//! Key material comes straight from the operating system's generator; identifiers (a token's
//! `jti`, a redemption attempt) from the thread's CSPRNG, seeded by it: a `getrandom` system call
//! per token showed up at about 2% of a minting server's time.

use rand::{RngCore, TryRngCore};

pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut out)
        .expect("the operating system's random generator is unavailable");
    out
}

/// A random (version 4) UUID from the thread's CSPRNG (ChaCha, reseeded from the OS).
pub fn uuid_v4() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_version_4_and_distinct() {
        let (a, b) = (super::uuid_v4(), super::uuid_v4());
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }
}
