//! `Signer::verify` on any bytes taken as a token: `base64url(binary claims ‖ tag)` (format 2,
//! with the key id, or format 1 without it), or the JSON format still accepted,
//! `base64url(JSON claims) "." base64url(tag)`.
//!
//! Oracles: never a panic; and an accepted token is exactly the one its format's signer gives
//! for its claims (`sign`, or `sign_json` for a JSON token; a format-1 token is `sign`'s bytes
//! without the key id, version 1, in canonical base64), so a token has one accepted spelling
//! (no base64, layout or JSON malleability that would let one event be counted twice under two
//! spellings). A JSON token's claims also survive re-signing in the binary format, so nothing
//! a token of the old format could say is lost in the new. The valid seeds in `corpus/token`
//! are signed with this secret (the JSON ones in serde_json's compact form), so they are
//! accepted.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use recgw::feedback::token::{Signer, TokenError};

/// The bytes of a binary token this target accepted, or signed.
fn decode(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(token).expect("an accepted token is base64url")
}

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
        Ok((claims, _)) => {
            let signed = signer().sign(claims.view());
            let (bytes, canonical) = (decode(token), decode(&signed));
            if bytes[0] == 1 {
                // Format 1: format 2 without the version's key id (4 bytes), tag aside.
                let claims_of = |b: &[u8]| b[..b.len() - 32].to_vec();
                assert_eq!(
                    claims_of(&bytes)[1..],
                    claims_of(&canonical)[5..],
                    "accepted a non-canonical format-1 token"
                );
                assert_eq!(URL_SAFE_NO_PAD.encode(&bytes), token, "accepted non-canonical base64");
            } else {
                assert_eq!(signed, token, "accepted a non-canonical token");
            }
        }
        Err(TokenError::Malformed | TokenError::BadSignature | TokenError::Expired) => {}
    }
});
