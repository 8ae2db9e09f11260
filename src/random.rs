//! Key material comes straight from the operating system's generator.

use rand::TryRngCore;

pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut out)
        .expect("the operating system's random generator is unavailable");
    out
}
