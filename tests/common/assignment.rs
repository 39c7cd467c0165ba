//! `B(s, u)` of ARCHITECTURE.md §3.1 computed independently of the crate, so tests derive the
//! arm, hence the model and the items, each user must get without trusting the code under test.

use sha2::{Digest, Sha256};

/// The bucket `[0, 10000)` of `user` under salt `salt`: the first 8 bytes of
/// SHA-256(`salt:user`), big-endian, modulo 10000.
pub fn bucket(salt: &str, user: &str) -> u16 {
    let digest = Sha256::digest(format!("{salt}:{user}").as_bytes());
    let head: [u8; 8] = digest[..8].try_into().expect("8 bytes");
    (u64::from_be_bytes(head) % 10_000) as u16
}
