//! The normative bucket function of ARCHITECTURE.md §3.1. Every replica, the CLI and the analysts'
//! notebooks must agree on it bit for bit, so it lives alone with its test vectors.

use sha2::{Digest, Sha256};

/// Number of buckets: one per basis point, so slice and weight percentages map to whole buckets.
pub const BUCKETS: u16 = 10_000;

/// `B(s, u) = u64_be(SHA-256(s ++ ":" ++ u)[0..8]) mod 10000`.
///
/// Hashes the three parts incrementally so the hot path never builds the joined string.
pub fn bucket(salt: &str, user: &str) -> u16 {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(b":")
        .chain_update(user.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // The remainder is below 10_000, so the narrowing cannot truncate.
    (u64::from_be_bytes(head) % u64::from(BUCKETS)) as u16
}

/// Converts a percentage written in TOML (`50.0`, `33.33`) to whole basis points, rounding half
/// away from zero as §3.1 specifies; callers validate the range first.
pub(crate) fn percent_to_bp(percent: f64) -> u16 {
    (percent * 100.0).round().clamp(0.0, f64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of ARCHITECTURE.md §3.1, computed by an independent implementation.
    #[test]
    fn matches_reference_vectors() {
        let vectors = [
            ("home-als-v2", "42", 4467),
            ("home-als-v2", "1", 6740),
            ("home-als-v2", "user-7f3a", 3410),
            ("placement:home", "42", 9211),
            ("placement:home", "1", 7006),
            ("exp", "0", 3997),
            ("exp", "éà", 5336),
        ];
        for (salt, user, expected) in vectors {
            assert_eq!(bucket(salt, user), expected, "B({salt:?}, {user:?})");
        }
    }

    #[test]
    fn percent_rounds_to_basis_points() {
        assert_eq!(percent_to_bp(50.0), 5000);
        assert_eq!(percent_to_bp(33.33), 3333);
        assert_eq!(percent_to_bp(0.004), 0);
        assert_eq!(percent_to_bp(100.0), 10_000);
    }
}
