//! `Signer::verify` on any bytes taken as a token: `base64url(binary claims ‖ tag)`, or the
//! JSON format still accepted, `base64url(JSON claims) "." base64url(tag)`.
//!
//! Oracles: never a panic; and an accepted token is exactly the one its format's signer gives
//! for its claims (`sign`, or `sign_json` for a JSON token), so a token has one accepted
//! spelling (no base64, layout or JSON malleability that would let one event be counted twice
//! under two spellings). A JSON token's claims also survive re-signing in the binary format,
//! so nothing a token of the old format could say is lost in the new. The valid seeds in
//! `corpus/token` are signed with this secret (the JSON ones in serde_json's compact form),
//! so they are accepted.
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
        Ok((claims, _)) if token.contains('.') => {
            assert_eq!(
                signer().sign_json(&claims),
                token,
                "accepted a non-canonical JSON token"
            );
            let binary = signer().sign(claims.view());
            assert_eq!(
                signer().verify(&binary, now).map(|(c, _)| c),
                Ok(claims),
                "lost in re-signing"
            );
        }
        Ok((claims, _)) => assert_eq!(signer().sign(claims.view()), token, "accepted a non-canonical token"),
        Err(TokenError::Malformed | TokenError::BadSignature | TokenError::Expired) => {}
    }
});
