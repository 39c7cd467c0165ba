//! `Signer::verify` on any bytes taken as a token (`base64url(claims) "." base64url(tag)`).
//!
//! Oracles: never a panic; and an accepted token is exactly the one `sign` gives for its
//! claims, so a token has one accepted spelling (no base64 or JSON malleability that would
//! let one event be counted twice under two spellings). The seeds in `corpus/token` are signed
//! with this secret in serde_json's compact form, so they are accepted.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use recgw::feedback::token::{Signer, TokenError};

/// The secret the committed seed tokens are signed with.
const SECRET: &str = "fuzz-secret";

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::new(SECRET, Duration::from_secs(86_400)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    // 2026-01-01: the valid seeds are issued in 2100, and a token from the future never expires.
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    match signer().verify(token, now) {
        Ok((claims, _)) => assert_eq!(signer().sign(&claims), token, "accepted a non-canonical token"),
        Err(TokenError::Malformed | TokenError::BadSignature | TokenError::Expired) => {}
    }
});
