//! Tracking tokens: every recommendation response carries one, and `POST /events` credits an
//! impression or click to the arm named inside it — not to the user's arm at click time, which
//! may have changed since. The token is the HMAC-SHA256-signed claim, so a client cannot
//! credit an arm it was not served.
//!
//! The token also binds the page it came with: a 32-bit tag of each item served, so an event
//! can credit only an item the response showed, and its position in the page is what
//! deduplication keys on (see [`crate::feedback::events`]).
//!
//! Format: `base64url(JSON claims) "." base64url(HMAC-SHA256(secret, JSON claims))`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token asserts: who was served what, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Placement of the request (a metric label).
    #[serde(rename = "p")]
    pub placement: String,
    /// Covering experiment, `None` on the placement default.
    #[serde(rename = "e")]
    pub experiment: Option<String>,
    /// Arm served (`default` when uncovered).
    #[serde(rename = "a")]
    pub arm: String,
    /// Model version that produced the list.
    #[serde(rename = "v")]
    pub model_version: String,
    /// The user.
    #[serde(rename = "u")]
    pub user: String,
    /// Unix seconds at signing.
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// Unique per token (a random per-process prefix and a counter), so two responses to one
    /// user within a second carry different tokens and their events are not taken for
    /// duplicates of each other.
    #[serde(rename = "n", default)]
    pub nonce: u64,
    /// Not counted in the experiment's results (a QA override, or a completed experiment's
    /// winner): its events are accepted and in the metrics, but not in the results.
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub uncounted: bool,
    /// [`item_tag`] of each item of the page, in page order: what events may credit. Tokens
    /// signed before pages were bound have none, so their events credit nothing.
    #[serde(rename = "i", default, with = "tags")]
    pub items: Vec<u32>,
}

/// 32 bits of SHA-256 of an item id: 4 bytes a served item in the token. Two items of one page
/// sharing a tag (about one page in 10^8 of 10 items) share one position, so the second cannot
/// be credited; a forger who finds an id colliding with a served item can only stand in for
/// that item, whose position counts once anyway.
pub(crate) fn item_tag(item: &str) -> u32 {
    let digest = Sha256::digest(item.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The tags as one base64url string of big-endian u32s: a third of the JSON numbers' size.
mod tags {
    use std::borrow::Cow;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(tags: &[u32], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = tags.iter().flat_map(|t| t.to_be_bytes()).collect();
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        let bytes = URL_SAFE_NO_PAD.decode(text.as_bytes()).map_err(D::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom("item tags are 4 bytes each"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// What identifies one token among all others: the first 12 bytes of its signature (distinct
/// claims give independent tags, so a collision needs 2^48 tokens alive at once).
pub(crate) type TokenId = [u8; 12];

/// Why a token was refused; the name is the reason `POST /events` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not two base64url parts, or claims that do not parse.
    #[error("malformed_token")]
    Malformed,
    /// The signature does not match (forged, tampered, or signed with another secret).
    #[error("bad_signature")]
    BadSignature,
    /// Older than `tracking.token_max_age`.
    #[error("expired_token")]
    Expired,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC, cloned per use so the key schedule runs once.
    mac: Hmac<Sha256>,
    /// Tokens older than this are refused.
    max_age: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// A fresh token nonce: a random per-process prefix in the high half, a counter in the low.
pub(crate) fn next_nonce() -> u64 {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let prefix = *PREFIX.get_or_init(|| u64::from(getrandom::u32().unwrap_or_else(|_| std::process::id())) << 32);
    prefix | u64::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Unix seconds of `t` (0 before the epoch, which only a broken clock produces).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Signer {
    /// A signer over `secret`; an empty secret draws a random one, so tokens from this process
    /// verify only here (set `tracking.secret` when replicas share traffic).
    pub fn new(secret: &str, max_age: Duration) -> Self {
        let mut random = [0u8; 32];
        let key: &[u8] = if secret.is_empty() {
            if let Err(e) = getrandom::fill(&mut random) {
                // Without OS randomness the time is the best seed left; tokens still verify
                // within this process, which is all a random key promises.
                tracing::error!(error = %e, "no OS randomness for the tracking secret");
                random[..16].copy_from_slice(
                    &SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                        .to_le_bytes(),
                );
            }
            &random
        } else {
            secret.as_bytes()
        };
        let mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Signer { mac, max_age }
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut mac = self.mac.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut token = String::with_capacity((payload.len() + tag.len()) * 4 / 3 + 4);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// The claims and id of a token this secret signed and that is not older than the maximum
    /// age. The signature is compared in constant time.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(Claims, TokenId), TokenError> {
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(&payload);
        mac.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if unix_seconds(now).saturating_sub(claims.issued_at) > self.max_age.as_secs() {
            return Err(TokenError::Expired);
        }
        let id = tag
            .get(..12)
            .and_then(|id| TokenId::try_from(id).ok())
            .ok_or(TokenError::BadSignature)?;
        Ok((claims, id))
    }

    /// How long tokens are accepted.
    pub(crate) fn max_age(&self) -> Duration {
        self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(issued_at: u64) -> Claims {
        Claims {
            placement: "home".into(),
            experiment: Some("home-als-rank".into()),
            arm: "treatment".into(),
            model_version: "als-v2@1a-2b-3c".into(),
            user: "42".into(),
            issued_at,
            nonce: 7,
            uncounted: false,
            items: vec![item_tag("5"), item_tag("68")],
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(&claims(1_000));
        assert!(!token.contains(['+', '/', '=']), "URL-safe: {token}");
        assert_eq!(signer.verify(&token, at(1_000)).map(|(c, _)| c), Ok(claims(1_000)));

        let (payload, tag) = token.split_once('.').expect("two parts");
        let mut forged = claims(1_000);
        forged.arm = "control".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        assert_eq!(
            signer.verify(&format!("{forged_payload}.{tag}"), at(1_000)),
            Err(TokenError::BadSignature)
        );
        let mut flipped = URL_SAFE_NO_PAD.decode(tag).expect("b64");
        flipped[0] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(flipped);
        assert_eq!(
            signer.verify(&format!("{payload}.{flipped}"), at(1_000)),
            Err(TokenError::BadSignature)
        );

        assert_eq!(
            Signer::new("other", DAY).verify(&token, at(1_000)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            Signer::new("", DAY).verify(&token, at(1_000)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn nonces_differ_so_identical_claims_give_distinct_tokens() {
        let (a, b) = (next_nonce(), next_nonce());
        assert_ne!(a, b);
        assert_eq!(a >> 32, b >> 32, "one process prefix");
        let signer = Signer::new("k", DAY);
        let token = |nonce| signer.sign(&Claims { nonce, ..claims(1_000) });
        assert_ne!(token(a), token(b));
    }

    #[test]
    fn rejects_expired_and_malformed_tokens() {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(&claims(1_000));
        assert_eq!(
            signer.verify(&token, at(1_000 + 86_400)).map(|(c, _)| c),
            Ok(claims(1_000))
        );
        assert_eq!(signer.verify(&token, at(1_000 + 86_401)), Err(TokenError::Expired));
        for bad in ["", "abc", "a.b.c", "!!!.???", &token.replace('.', "")] {
            assert_eq!(signer.verify(bad, at(1_000)), Err(TokenError::Malformed), "{bad:?}");
        }
        // A validly signed payload that is not claims is malformed, not trusted.
        let mut mac = signer.mac.clone();
        mac.update(b"[1,2]");
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            signer.verify(&format!("{}.{tag}", URL_SAFE_NO_PAD.encode(b"[1,2]")), at(0)),
            Err(TokenError::Malformed)
        );
    }
}
