//! Tracking tokens: every recommendation response carries one, and `POST /events` credits an
//! impression or click to the arm named inside it — not to the user's arm at click time, which
//! may have changed since. The token is the HMAC-SHA256-signed claim, so a client cannot
//! credit an arm it was not served.
//!
//! The token also binds the page it came with: a 32-bit tag of each item served, so an event
//! can credit only an item the response showed, and its position in the page is what
//! deduplication keys on (see [`crate::feedback::events`]).
//!
//! Format 2, what [`Signer::sign`] writes: `base64url(claims ‖ HMAC-SHA256(secret, claims))`
//! without padding, the claims in a fixed binary layout (integers big-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | format version, `2` |
//! | 4 | the key id of the secret that signed it: the first 4 bytes of HMAC-SHA256(secret, `recgw-tracking-key-id`) |
//! | 8 | `issued_at`, Unix seconds |
//! | 8 | `nonce` |
//! | 1 | flags: bit 0 `uncounted`, bit 1 an experiment follows, bit 2 teams follow, bit 3 an offset follows; the others 0 |
//! | 2 | `n`, the number of items |
//! | 4 × n | the [`item_tag`] of each item (top 32 bits of its xxh3), in page order |
//! | 2 + len | `placement`: its length in bytes, then its UTF-8 |
//! | 2 + len | `experiment`, the same way, present only with flag bit 1 |
//! | 2 + len each | `arm`, `model_version`, `user`, the same way |
//! | 2 + len each | with flag bit 2 (an interleaved page): the two teams' arm names |
//! | ⌈n / 8⌉ | with flag bit 2: the team of item `i` in bit `i % 8` of byte `i / 8`, 0 the first |
//! | 4 | with flag bit 3: `offset`, the page's offset in the list (absent means 0) |
//! | 32 | HMAC-SHA256 of every byte before it |
//!
//! `tracking.secret` may list several secrets, so that it can be rotated without refusing the
//! tokens of pages already served: the first signs, every one verifies, and the key id picks the
//! one a token needs, so a token costs one HMAC however many secrets are listed. The id tells
//! nothing a token's own HMAC does not: both are HMACs under the secret.
//!
//! Format 2 replaced format 1, the same layout without the key id (version byte `1`), and
//! format 1 had replaced format 0, `base64url(JSON claims) "." base64url(HMAC-SHA256(secret,
//! JSON))`: JSON and two base64 parts per response were a measurable part of the request path.
//! Both are still verified, with each listed secret in turn (they name none), until the tokens
//! issued before the switch expire. A token has one accepted spelling in any format (base64url
//! without padding or stray trailing bits, no byte left over, lengths that match, UTF-8
//! strings, no unknown flag), so one event cannot be counted twice under two spellings.

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
    /// On an interleaved page, which arm picked each item: events credit the item's team.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Teams>,
    /// Items the page skipped (`offset`), so an item's position in the list is this plus its
    /// place in the page: what CTR by position is kept by.
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    pub offset: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The teams of an interleaved page (see [`crate::experiment::team_draft`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Teams {
    /// The experiment's two arms, in its order: team 0, then team 1. Carried rather than looked
    /// up, so an event is credited as served even after the experiment changed.
    #[serde(rename = "a")]
    pub names: [String; 2],
    /// The team (0 or 1) of each item, in page order.
    #[serde(rename = "m")]
    pub of_items: Vec<u8>,
}

impl Teams {
    /// The arm credited for the item at `position`.
    pub(crate) fn arm_of(&self, position: usize) -> Option<&str> {
        let team = *self.of_items.get(position)?;
        self.names.get(usize::from(team)).map(String::as_str)
    }

    /// The teams as [`ClaimsRef::teams`] takes them.
    pub fn view(&self) -> TeamsRef<'_> {
        TeamsRef {
            names: [&self.names[0], &self.names[1]],
            of_items: &self.of_items,
        }
    }
}

/// [`Teams`] borrowed from what was served.
#[derive(Debug, Clone, Copy)]
pub struct TeamsRef<'a> {
    /// As [`Teams::names`].
    pub names: [&'a str; 2],
    /// As [`Teams::of_items`]: one per item of the page.
    pub of_items: &'a [u8],
}

impl Claims {
    /// The claims as [`Signer::sign`] takes them.
    pub fn view(&self) -> ClaimsRef<'_> {
        ClaimsRef {
            placement: &self.placement,
            experiment: self.experiment.as_deref(),
            arm: &self.arm,
            model_version: &self.model_version,
            user: &self.user,
            issued_at: self.issued_at,
            nonce: self.nonce,
            uncounted: self.uncounted,
            items: self.items.iter().copied(),
            teams: self.teams.as_ref().map(Teams::view),
            offset: self.offset,
        }
    }
}

/// [`Claims`] borrowed from what was served, so signing a response's token copies no string
/// and collects no list: the item tags come from any iterator that knows its length.
#[derive(Debug, Clone)]
pub struct ClaimsRef<'a, I = std::iter::Copied<std::slice::Iter<'a, u32>>> {
    /// As [`Claims::placement`].
    pub placement: &'a str,
    /// As [`Claims::experiment`].
    pub experiment: Option<&'a str>,
    /// As [`Claims::arm`].
    pub arm: &'a str,
    /// As [`Claims::model_version`].
    pub model_version: &'a str,
    /// As [`Claims::user`].
    pub user: &'a str,
    /// As [`Claims::issued_at`].
    pub issued_at: u64,
    /// As [`Claims::nonce`].
    pub nonce: u64,
    /// As [`Claims::uncounted`].
    pub uncounted: bool,
    /// As [`Claims::items`], in page order.
    pub items: I,
    /// As [`Claims::teams`].
    pub teams: Option<TeamsRef<'a>>,
    /// As [`Claims::offset`].
    pub offset: u32,
}

/// The tag of an item in a format-1 token: the top 32 bits of its xxh3, 4 bytes a served item.
/// Two items of one page sharing a tag (about one page in 10^8 of 10 items) share one position,
/// so the second cannot be credited; a forger who finds an id colliding with a served item can
/// only stand in for that item, whose position counts once anyway. So the tag needs no
/// cryptographic hash, and a page of 10 costs ten xxh3 calls instead of ten SHA-256 digests.
pub(crate) fn item_tag(item: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(item.as_bytes()) >> 32) as u32
}

/// The tag of an item in a format-0 (JSON) token: 32 bits of SHA-256 of its id, what releases
/// before format 1 computed. It goes with the format-0 path (see [`Signer::verify`]).
pub(crate) fn json_item_tag(item: &str) -> u32 {
    let digest = Sha256::digest(item.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The tag `item` has in `token`, by the token's format: format 0 is the one with a `.`, as
/// [`Signer::verify`] tells them apart.
pub(crate) fn item_tag_in(token: &str, item: &str) -> u32 {
    if token.contains('.') {
        json_item_tag(item)
    } else {
        item_tag(item)
    }
}

/// Format 0's `i` claim: the tags as one base64url string of big-endian u32s.
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

/// What identifies one token among all others: the first 12 bytes of its HMAC tag, in either
/// format. The tag covers every signed byte, so a token cannot be altered into a new id
/// without the secret; distinct claims give independent tags, so a collision needs 2^48
/// tokens alive at once.
pub(crate) type TokenId = [u8; 12];

/// Why a token was refused; the name is the reason `POST /events` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url of a known layout, or claims that do not parse.
    #[error("malformed_token")]
    Malformed,
    /// The signature does not match (forged, tampered, or signed with another secret).
    #[error("bad_signature")]
    BadSignature,
    /// Older than `tracking.token_max_age`.
    #[error("expired_token")]
    Expired,
}

/// The first byte of a format-2 token. A new layout takes the next number and `verify` keeps
/// reading this one for `tracking.token_max_age` after the switch, as it does formats 0 and 1
/// now.
const VERSION: u8 = 2;

/// The first byte of a format-1 token: format 2 without the key id.
const UNKEYED_VERSION: u8 = 1;

/// Bytes of a key id: enough to tell a handful of listed secrets apart (two share an id once
/// in 2^32 pairs, and then both are tried).
const KEY_ID_LEN: usize = 4;

/// What a key id is the HMAC of, under its secret.
const KEY_ID_INPUT: &[u8] = b"recgw-tracking-key-id";

/// Bytes of the HMAC-SHA256 tag: whole, as in format 0. Half would still make forgery hopeless
/// (2^-128 a try) and hold the 12-byte id, but its 22 characters fewer save no measurable time.
const TAG_LEN: usize = 32;

/// Bytes before the item tags: version, key id, issued_at, nonce, flags, item count.
const HEADER_LEN: usize = 1 + KEY_ID_LEN + 8 + 8 + 1 + 2;

/// Flag bit: the token's events are not counted in the results.
const UNCOUNTED: u8 = 1;

/// Flag bit: an experiment string follows the placement.
const HAS_EXPERIMENT: u8 = 2;

/// Flag bit: the page is interleaved, and its teams follow the user.
const HAS_TEAMS: u8 = 4;

/// Flag bit: the page's offset follows last (a first page, offset 0, leaves it out).
const HAS_OFFSET: u8 = 8;

/// Tokens of up to this many bytes (before base64) are laid out and read on the stack, so
/// signing allocates only the token string: a page of 100 items with names of 64 bytes and a
/// user of 128 takes about 800.
const STACK_LEN: usize = 1024;

/// Runs `f` on a zeroed buffer of `len` bytes, on the stack when it fits.
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut stack = [0u8; STACK_LEN];
    match stack.get_mut(..len) {
        Some(buffer) => f(buffer),
        None => f(&mut vec![0; len]),
    }
}

/// `s` cut to what a 2-byte length can say, at a character boundary. No claim comes near it
/// (names are at most 64 bytes, users 128, a model version a name and a folder name), so
/// this only keeps `sign` total.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Fills a buffer front to back. A write past its end is dropped rather than a panic on the
/// request path; `sign` sizes the buffer from the same fields, so it never happens.
struct Writer<'b>(&'b mut [u8]);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some((head, rest)) = std::mem::take(&mut self.0).split_at_mut_checked(bytes.len()) {
            head.copy_from_slice(bytes);
            self.0 = rest;
        }
    }

    /// A count of items or bytes, in the 2 bytes the layout gives it (`sign` clips to fit).
    fn put_length(&mut self, len: usize) {
        self.put(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    }
}

/// Reads format-1 claims front to back; every short read is a malformed token.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, len: usize) -> Result<&'b [u8], TokenError> {
        let (head, rest) = self.0.split_at_checked(len).ok_or(TokenError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        self.take(N)?.try_into().map_err(|_| TokenError::Malformed)
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        self.array().map(u64::from_be_bytes)
    }

    fn length(&mut self) -> Result<usize, TokenError> {
        self.array().map(|b| usize::from(u16::from_be_bytes(b)))
    }

    fn string(&mut self) -> Result<String, TokenError> {
        let len = self.length()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| TokenError::Malformed)
    }
}

/// The claims of a signed binary payload from `issued_at` on (after the version byte and, in
/// format 2, the key id), refused unless `sign` would write exactly these bytes for them.
fn decode(claims: &[u8]) -> Result<Claims, TokenError> {
    let mut r = Reader(claims);
    let issued_at = r.u64()?;
    let nonce = r.u64()?;
    let [flags] = r.array()?;
    if flags & !(UNCOUNTED | HAS_EXPERIMENT | HAS_TEAMS | HAS_OFFSET) != 0 {
        return Err(TokenError::Malformed);
    }
    let count = r.length()?;
    let items = r
        .take(4 * count)?
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let placement = r.string()?;
    let experiment = if flags & HAS_EXPERIMENT != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let arm = r.string()?;
    let model_version = r.string()?;
    let user = r.string()?;
    let teams = if flags & HAS_TEAMS != 0 {
        let names = [r.string()?, r.string()?];
        let bits = r.take(count.div_ceil(8))?;
        // Bits past the last item must be 0: one spelling per token.
        if bits
            .last()
            .is_some_and(|last| count % 8 != 0 && last >> (count % 8) != 0)
        {
            return Err(TokenError::Malformed);
        }
        let of_items = (0..count).map(|i| bits[i / 8] >> (i % 8) & 1).collect();
        Some(Teams { names, of_items })
    } else {
        None
    };
    let offset = if flags & HAS_OFFSET != 0 {
        match u32::from_be_bytes(r.array()?) {
            // One spelling per token: offset 0 is written by leaving it out.
            0 => return Err(TokenError::Malformed),
            offset => offset,
        }
    } else {
        0
    };
    let claims = Claims {
        placement,
        experiment,
        arm,
        model_version,
        user,
        issued_at,
        nonce,
        uncounted: flags & UNCOUNTED != 0,
        items,
        teams,
        offset,
    };
    if r.0.is_empty() {
        Ok(claims)
    } else {
        Err(TokenError::Malformed)
    }
}

/// Which format new tokens are signed in (`tracking.token_format`); [`Signer::verify`] reads
/// every one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// Format 2, the fixed binary layout with the key id.
    #[default]
    Binary,
    /// Format 0, JSON claims, which every release reads: the first step of an upgrade from a
    /// release that reads no later format (before format 2: format 1 or 0), while replicas of
    /// both releases serve (and may get each other's events); switch to `binary` once every
    /// replica runs this release.
    Json,
}

/// One secret, keyed once.
#[derive(Clone)]
struct Key {
    /// The key id format-2 tokens carry: the first bytes of HMAC-SHA256(secret, [`KEY_ID_INPUT`]).
    id: [u8; KEY_ID_LEN],
    /// The keyed MAC, cloned per use so the key schedule runs once.
    mac: Hmac<Sha256>,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        let mac =
            Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let digest = mac.clone().chain_update(KEY_ID_INPUT).finalize().into_bytes();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Key { id, mac }
    }

    /// Whether `tag` is this key's HMAC of `signed`, compared in constant time.
    fn signed(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_slice(tag).is_ok()
    }
}

/// Signs tokens with one secret and verifies them with it and any older ones still listed.
#[derive(Clone)]
pub struct Signer {
    /// The secrets of `tracking.secret`, in its order: the first signs, every one verifies.
    /// Never empty.
    keys: Vec<Key>,
    /// Tokens older than this are refused.
    max_age: Duration,
    /// The format [`Signer::sign`] writes.
    format: TokenFormat,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("secrets", &self.keys.len())
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
        Self::rotating(&[secret], max_age)
    }

    /// A signer over `secrets`: the first signs, every one verifies, so a secret can be
    /// replaced without refusing the tokens it signed (list `[new, old]` for
    /// `tracking.token_max_age`, then `[new]`; replicas sharing traffic list `[old, new]`
    /// first, so that every one verifies the new secret before any signs with it). Empty
    /// secrets are left out; none at all draws a random one, as [`Signer::new`] does.
    pub fn rotating<S: AsRef<str>>(secrets: &[S], max_age: Duration) -> Self {
        let mut keys: Vec<Key> = secrets
            .iter()
            .map(AsRef::as_ref)
            .filter(|secret| !secret.is_empty())
            .map(|secret| Key::new(secret.as_bytes()))
            .collect();
        if keys.is_empty() {
            let mut random = [0u8; 32];
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
            keys.push(Key::new(&random));
        }
        Signer {
            keys,
            max_age,
            format: TokenFormat::Binary,
        }
    }

    /// The key new tokens are signed with: the first listed.
    fn signing(&self) -> &Key {
        // `rotating` never leaves the list empty.
        &self.keys[0]
    }

    /// This signer, signing new tokens in `format`.
    pub fn with_format(self, format: TokenFormat) -> Self {
        Signer { format, ..self }
    }

    /// The tag of `item` in the tokens this signer writes.
    pub(crate) fn item_tag(&self, item: &str) -> u32 {
        match self.format {
            TokenFormat::Binary => item_tag(item),
            TokenFormat::Json => json_item_tag(item),
        }
    }

    /// The format-2 token for `claims`, signed with the first secret: laid out in one buffer, on
    /// the stack for any real page, so the returned string is the only allocation. `items` must
    /// report its length truly (every slice and map of one does).
    pub fn sign<I: ExactSizeIterator<Item = u32>>(&self, claims: ClaimsRef<'_, I>) -> String {
        if self.format == TokenFormat::Json {
            return self.sign_json(&Claims {
                placement: claims.placement.to_string(),
                experiment: claims.experiment.map(str::to_string),
                arm: claims.arm.to_string(),
                model_version: claims.model_version.to_string(),
                user: claims.user.to_string(),
                issued_at: claims.issued_at,
                nonce: claims.nonce,
                uncounted: claims.uncounted,
                items: claims.items.collect(),
                teams: claims.teams.map(|t| Teams {
                    names: t.names.map(str::to_string),
                    of_items: t.of_items.to_vec(),
                }),
                offset: claims.offset,
            });
        }
        let strings = [
            Some(claims.placement),
            claims.experiment,
            Some(claims.arm),
            Some(claims.model_version),
            Some(claims.user),
        ]
        .map(|s| s.map(clip));
        let items = claims.items.take(usize::from(u16::MAX));
        let count = items.len();
        let teams = claims.teams.map(|t| (t.names.map(clip), t.of_items));
        let teams_len = teams.as_ref().map_or(0, |(names, _)| {
            names.iter().map(|s| 2 + s.len()).sum::<usize>() + count.div_ceil(8)
        });
        let len = HEADER_LEN
            + 4 * count
            + strings.iter().flatten().map(|s| 2 + s.len()).sum::<usize>()
            + teams_len
            + if claims.offset > 0 { 4 } else { 0 }
            + TAG_LEN;
        with_buffer(len, |raw| {
            let (signed, tag) = raw.split_at_mut(len - TAG_LEN);
            let key = self.signing();
            let mut w = Writer(signed);
            w.put(&[VERSION]);
            w.put(&key.id);
            w.put(&claims.issued_at.to_be_bytes());
            w.put(&claims.nonce.to_be_bytes());
            let experiment = if claims.experiment.is_some() { HAS_EXPERIMENT } else { 0 };
            let has_teams = if teams.is_some() { HAS_TEAMS } else { 0 };
            let has_offset = if claims.offset > 0 { HAS_OFFSET } else { 0 };
            w.put(&[experiment | has_teams | has_offset | if claims.uncounted { UNCOUNTED } else { 0 }]);
            w.put_length(count);
            for item in items {
                w.put(&item.to_be_bytes());
            }
            for s in strings.iter().flatten() {
                w.put_length(s.len());
                w.put(s.as_bytes());
            }
            if let Some((names, of_items)) = teams {
                for name in names {
                    w.put_length(name.len());
                    w.put(name.as_bytes());
                }
                // A page's team list is as long as its items; a shorter one reads as team 0.
                for byte in 0..count.div_ceil(8) {
                    let bits = (0..8).fold(0u8, |bits, bit| {
                        let team = of_items.get(byte * 8 + bit).copied().unwrap_or(0) & 1;
                        bits | team << bit
                    });
                    w.put(&[bits]);
                }
            }
            if claims.offset > 0 {
                w.put(&claims.offset.to_be_bytes());
            }
            debug_assert!(w.0.is_empty(), "the length of a token is that of its fields");
            let mut mac = key.mac.clone();
            mac.update(signed);
            tag.copy_from_slice(&mac.finalize().into_bytes());
            let mut token = String::with_capacity(base64::encoded_len(len, false).unwrap_or_default());
            URL_SAFE_NO_PAD.encode_string(raw, &mut token);
            token
        })
    }

    /// The format-0 token for `claims`, as releases before format 1 wrote it, signed with the
    /// first secret: what `sign` writes under `tracking.token_format = "json"`, and what tests,
    /// the benchmark and the fuzz seeds check `verify` still accepts. It goes with that path
    /// (see [`Signer::verify`]).
    pub fn sign_json(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut mac = self.signing().mac.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut token = String::with_capacity((payload.len() + tag.len()) * 4 / 3 + 4);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// The claims and id of a token one of the secrets signed and that is not older than the
    /// maximum age. The signature is compared in constant time, and checked before any claim
    /// is read.
    ///
    /// Formats 0 (JSON) and 1 (no key id) are accepted too, so events for pages served just
    /// before the switch to format 2 still count; naming no secret, they are checked with each
    /// in turn. The formats never overlap: only format 0 has a `.`, which base64url never
    /// writes (it starts `ey`, base64 of `{"`; formats 1 and 2 start `A`, their version byte's
    /// top bits being 0), and no format's signed bytes parse as another's. Delete the format-0
    /// path (`verify_json`, `sign_json`, [`TokenFormat::Json`], the serde derives on [`Claims`]
    /// and `tags`, with the tests, bench cases and `json-` fuzz seeds that use them) and the
    /// format-1 branch once every replica has signed format 2 for `tracking.token_max_age`
    /// (24 h by default) and no upgrade needs the JSON format: no older token verifies after
    /// that.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(Claims, TokenId), TokenError> {
        let (claims, id) = match token.split_once('.') {
            Some((payload, tag)) => self.verify_json(payload, tag)?,
            None => self.verify_binary(token)?,
        };
        if unix_seconds(now).saturating_sub(claims.issued_at) > self.max_age.as_secs() {
            return Err(TokenError::Expired);
        }
        Ok((claims, id))
    }

    /// The claims and id of a binary token (format 2, or 1), whatever its age.
    fn verify_binary(&self, token: &str) -> Result<(Claims, TokenId), TokenError> {
        with_buffer(base64::decoded_len_estimate(token.len()), |buffer| {
            let len = URL_SAFE_NO_PAD
                .decode_slice(token, buffer)
                .map_err(|_| TokenError::Malformed)?;
            let raw = buffer.get(..len).ok_or(TokenError::Malformed)?;
            let (signed, tag) = raw.split_at(len.checked_sub(TAG_LEN).ok_or(TokenError::Malformed)?);
            let (named, claims_at) = match signed.first() {
                Some(&VERSION) => {
                    let id = signed.get(1..1 + KEY_ID_LEN).ok_or(TokenError::Malformed)?;
                    (Some(id), 1 + KEY_ID_LEN)
                }
                Some(&UNKEYED_VERSION) => (None, 1),
                _ => return Err(TokenError::Malformed),
            };
            // A format-2 token names its secret; a format-1 one is tried with each.
            let verified = self
                .keys
                .iter()
                .filter(|key| named.is_none_or(|id| key.id[..] == *id))
                .any(|key| key.signed(signed, tag));
            if !verified {
                return Err(TokenError::BadSignature);
            }
            let id = *tag.first_chunk().ok_or(TokenError::BadSignature)?;
            Ok((decode(&signed[claims_at..])?, id))
        })
    }

    /// The claims and id of a format-0 token (its two parts), whatever its age.
    fn verify_json(&self, payload: &str, tag: &str) -> Result<(Claims, TokenId), TokenError> {
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        if !self.keys.iter().any(|key| key.signed(&payload, &tag)) {
            return Err(TokenError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let id = *tag.first_chunk().ok_or(TokenError::BadSignature)?;
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
            items: vec![json_item_tag("5"), json_item_tag("68")],
            teams: None,
            offset: 0,
        }
    }

    /// A typical served page: 10 items, a current time, a nonce with a process prefix.
    fn page_of_10() -> Claims {
        Claims {
            issued_at: 1_767_225_600,
            nonce: 0x9E37_79B9_0000_002A,
            items: (1..=10).map(|i| item_tag(&i.to_string())).collect(),
            ..claims(0)
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A binary token over any `signed` bytes, however wrong their layout.
    fn sign_raw(signer: &Signer, signed: &[u8]) -> String {
        let mut mac = signer.signing().mac.clone();
        mac.update(signed);
        URL_SAFE_NO_PAD.encode([signed, &mac.finalize().into_bytes()].concat())
    }

    fn raw(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(token).expect("base64url")
    }

    #[test]
    fn round_trips_in_the_documented_layout() {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(claims(1_000).view());
        // Written from the layout in the module doc by an independent encoder (Python's
        // struct, hmac and base64), not by this code.
        assert_eq!(
            token,
            "AsC8im4AAAAAAAAD6AAAAAAAAAAHAgAC7y0SfaIYVdoABGhvbWUADWhvbWUtYWxzLXJhbmsACXRyZWF0bWVudAAPYWxzLXYyQDFhLTJiLTNj\
             AAI0Mv0FH3ziFzMgSOGPHuPK0cG5yPXiYYKUzTt_KCR8DjN_"
        );
        assert!(token.starts_with('A'), "the version byte: {token}");
        let (verified, id) = signer.verify(&token, at(1_000)).expect("valid");
        assert_eq!(verified, claims(1_000));
        let bytes = raw(&token);
        assert_eq!(
            bytes[1..5],
            [0xc0, 0xbc, 0x8a, 0x6e],
            "HMAC-SHA256(s3cret, recgw-tracking-key-id)"
        );
        assert_eq!(id[..], bytes[bytes.len() - TAG_LEN..][..12], "the id is the tag's head");

        for claims in [
            Claims {
                experiment: None,
                uncounted: true,
                items: vec![],
                ..claims(1_000)
            },
            Claims {
                placement: String::new(),
                experiment: Some(String::new()),
                user: "ü-ß-😀".into(),
                issued_at: u64::MAX,
                nonce: u64::MAX,
                items: vec![0, u32::MAX],
                ..claims(1_000)
            },
            // Interleaved pages of 1, 8 and 9 items: the team bits fill whole and part bytes.
            Claims {
                arm: "interleaved".into(),
                teams: Some(Teams {
                    names: ["control".into(), "treatment".into()],
                    of_items: vec![1],
                }),
                items: vec![7],
                ..claims(1_000)
            },
            Claims {
                arm: "interleaved".into(),
                teams: Some(Teams {
                    names: ["a".into(), "b".into()],
                    of_items: vec![0, 1, 1, 0, 1, 0, 0, 1],
                }),
                items: (1..=8).collect(),
                ..claims(1_000)
            },
            Claims {
                arm: "interleaved".into(),
                teams: Some(Teams {
                    names: ["a".into(), String::new()],
                    of_items: vec![1, 0, 0, 0, 0, 0, 0, 0, 1],
                }),
                items: (1..=9).collect(),
                offset: 90,
                ..claims(1_000)
            },
            Claims {
                offset: u32::MAX,
                ..claims(1_000)
            },
        ] {
            let token = signer.sign(claims.view());
            assert_eq!(signer.verify(&token, at(1_000)).map(|(c, _)| c), Ok(claims));
        }
    }

    /// Each format tags items its own way, and events find an item by its token's way.
    #[test]
    fn each_format_tags_items_its_own_way() {
        let binary = Signer::new("s3cret", DAY);
        let json = Signer::new("s3cret", DAY).with_format(TokenFormat::Json);
        // Values from an independent xxh3 (Python's `xxhash`), so the tag is the documented one.
        assert_eq!(item_tag("5"), 0xdedb_9801);
        assert_eq!(item_tag("item-123"), 0x9abc_7301);
        assert_ne!(item_tag("5"), json_item_tag("5"));
        assert_eq!(binary.item_tag("5"), item_tag("5"));
        assert_eq!(json.item_tag("5"), json_item_tag("5"));
        let claims = page_of_10();
        assert_eq!(item_tag_in(&binary.sign(claims.view()), "5"), item_tag("5"));
        assert_eq!(item_tag_in(&json.sign(claims.view()), "5"), json_item_tag("5"));
    }

    /// Under `token_format = "json"` new tokens are format 0, which releases before format 1
    /// read, and this release still verifies them.
    #[test]
    fn the_json_setting_signs_what_older_releases_read() {
        let signer = Signer::new("s3cret", DAY).with_format(TokenFormat::Json);
        let claims = page_of_10();
        let token = signer.sign(claims.view());
        assert_eq!(token, signer.sign_json(&claims));
        assert!(token.starts_with("ey") && token.contains('.'), "{token}");
        let binary = Signer::new("s3cret", DAY);
        assert_eq!(binary.verify(&token, at(claims.issued_at)).map(|(c, _)| c), Ok(claims));
    }

    #[test]
    fn a_page_of_10_items_is_199_characters_where_json_took_284() {
        let signer = Signer::new("s3cret", DAY);
        let claims = page_of_10();
        // 24 bytes of header, 40 of tags, 53 of strings with their lengths, 32 of tag.
        assert_eq!(raw(&signer.sign(claims.view())).len(), 149);
        assert_eq!(signer.sign(claims.view()).len(), 199);
        assert_eq!(signer.sign_json(&claims).len(), 284);
    }

    #[test]
    fn rejects_every_changed_byte_and_character() {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(page_of_10().view());
        let bytes = raw(&token);
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut changed = bytes.clone();
                changed[i] ^= flip;
                let expected = if i == 0 {
                    TokenError::Malformed
                } else {
                    TokenError::BadSignature
                };
                let changed = URL_SAFE_NO_PAD.encode(changed);
                assert_eq!(signer.verify(&changed, at(0)), Err(expected), "byte {i} ^ {flip:#x}");
            }
        }
        for i in 0..token.len() {
            for c in ['A', 'e', '_', '-', '.', '=', '+', '/'] {
                let mut changed = token.clone().into_bytes();
                changed[i] = c as u8;
                let changed = String::from_utf8(changed).expect("ASCII");
                if changed != token {
                    assert!(signer.verify(&changed, at(0)).is_err(), "{changed}");
                }
            }
        }

        // The claims changed and signed anew without the secret, and other secrets.
        let mut forged = bytes.clone();
        let arm = forged.windows(9).position(|w| w == b"treatment").expect("the arm");
        forged[arm..arm + 9].copy_from_slice(b"treatmenT");
        assert_eq!(
            signer.verify(&URL_SAFE_NO_PAD.encode(forged), at(0)),
            Err(TokenError::BadSignature)
        );
        for other in [Signer::new("other", DAY), Signer::new("", DAY)] {
            assert_eq!(other.verify(&token, at(0)), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn rejects_truncated_and_extended_tokens() {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(page_of_10().view());
        for end in 0..token.len() {
            let short = &token[..end];
            assert!(
                matches!(
                    signer.verify(short, at(0)),
                    Err(TokenError::Malformed | TokenError::BadSignature)
                ),
                "{short}"
            );
        }
        for extra in ["A", "AA", "AAA", "AAAA", "=", "==", ".", " "] {
            let long = format!("{token}{extra}");
            assert!(signer.verify(&long, at(0)).is_err(), "{long}");
        }

        // Signed with the secret but not what `sign` writes: refused as malformed, never
        // trusted. The bytes of `page_of_10` are the base of each.
        let bytes = raw(&token);
        let signed = &bytes[..bytes.len() - TAG_LEN];
        type Edit = fn(&mut Vec<u8>);
        let with = |edit: Edit| {
            let mut b = signed.to_vec();
            edit(&mut b);
            signer.verify(&sign_raw(&signer, &b), at(0))
        };
        assert!(with(|_| {}).is_ok(), "unchanged, the bytes are a token");
        let cases: [(&str, Edit); 9] = [
            ("a trailing byte", |b| b.push(0)),
            ("the last byte missing", |b| {
                b.pop();
            }),
            ("version 3", |b| b[0] = 3),
            ("version 0", |b| b[0] = 0),
            ("the teams flag without teams", |b| b[21] |= HAS_TEAMS),
            ("no experiment flag, so its string is the arm", |b| {
                b[21] &= !HAS_EXPERIMENT
            }),
            ("one item more than there are", |b| b[23] += 1),
            // The claims end with the user "42" after its 2-byte length.
            ("a user length past the end", |b| {
                let low = b.len() - 3;
                b[low] += 1;
            }),
            ("bad UTF-8", |b| {
                let last = b.len() - 1;
                b[last] = 0xff;
            }),
        ];
        for (what, edit) in cases {
            assert_eq!(with(edit), Err(TokenError::Malformed), "{what}");
        }
        assert_eq!(
            signer.verify(&sign_raw(&signer, b""), at(0)),
            Err(TokenError::Malformed),
            "empty"
        );
        // Format-0 JSON signed as one binary part: its first byte `{` is no version.
        let json = serde_json::to_vec(&page_of_10()).expect("json");
        assert_eq!(
            signer.verify(&sign_raw(&signer, &json), at(0)),
            Err(TokenError::Malformed)
        );
        for bad in ["", "abc", "a.b.c", "!!!.???", "AQ==", &format!("{token}=")] {
            assert_eq!(signer.verify(bad, at(0)), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn nonces_differ_so_identical_claims_give_distinct_tokens() {
        let (a, b) = (next_nonce(), next_nonce());
        assert_ne!(a, b);
        assert_eq!(a >> 32, b >> 32, "one process prefix");
        let signer = Signer::new("k", DAY);
        let token = |nonce| signer.sign(Claims { nonce, ..claims(1_000) }.view());
        assert_ne!(token(a), token(b));
    }

    #[test]
    fn expires_after_the_maximum_age_in_either_format() {
        let signer = Signer::new("s3cret", DAY);
        for token in [signer.sign(claims(1_000).view()), signer.sign_json(&claims(1_000))] {
            assert_eq!(
                signer.verify(&token, at(1_000 + 86_400)).map(|(c, _)| c),
                Ok(claims(1_000))
            );
            assert_eq!(signer.verify(&token, at(0)).map(|(c, _)| c), Ok(claims(1_000)));
            assert_eq!(signer.verify(&token, at(1_000 + 86_401)), Err(TokenError::Expired));
        }
    }

    #[test]
    fn accepts_format_0_tokens_issued_before_format_1() {
        // Signed by the format-0 `sign` itself (a fuzz seed), not by `sign_json`.
        let before = "eyJwIjoiaG9tZSIsImUiOiJob21lLWFscy1yYW5rIiwiYSI6InRyZWF0bWVudCIsInYiOiJhbHMtdjJAMSIsInUiOiI0MiIsInQiOjQxMDI0NDQ4MDAsIm4iOjEsImkiOiI3eTBTZmFJWVZkcEtSTndWIn0.sGpMnqIGiUG5H-anJw-PG2Rxfa1jqL6hkCoKID2tjYM";
        let signer = Signer::new("fuzz-secret", DAY);
        let (claims, id) = signer.verify(before, at(0)).expect("a format-0 token");
        assert_eq!(
            claims,
            Claims {
                placement: "home".into(),
                experiment: Some("home-als-rank".into()),
                arm: "treatment".into(),
                model_version: "als-v2@1".into(),
                user: "42".into(),
                issued_at: 4_102_444_800,
                nonce: 1,
                uncounted: false,
                items: vec![json_item_tag("5"), json_item_tag("68"), json_item_tag("10")],
                teams: None,
                offset: 0,
            }
        );
        let (_, tag) = before.split_once('.').expect("two parts");
        assert_eq!(
            id[..],
            raw(tag)[..12],
            "the id it had before, so claims made then still hold"
        );
        assert_eq!(signer.sign_json(&claims), before, "sign_json is format 0 exactly");

        // Its claims in format 1 are the same claims under another id.
        let (again, new_id) = signer.verify(&signer.sign(claims.view()), at(0)).expect("valid");
        assert_eq!((again, new_id == id), (claims, false));

        // A format-0 tag changed, or a payload that is signed but no claims, is refused.
        let mut flipped = raw(tag);
        flipped[0] ^= 1;
        let (payload, _) = before.split_once('.').expect("two parts");
        let flipped = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(flipped));
        assert_eq!(signer.verify(&flipped, at(0)), Err(TokenError::BadSignature));
        let mut mac = signer.signing().mac.clone();
        mac.update(b"[1,2]");
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            signer.verify(&format!("{}.{tag}", URL_SAFE_NO_PAD.encode(b"[1,2]")), at(0)),
            Err(TokenError::Malformed)
        );
        // A format-1 token cut into two parts around a dot: its bytes are no JSON.
        let token = raw(&signer.sign(page_of_10().view()));
        let (signed, tag) = token.split_at(token.len() - TAG_LEN);
        let split = format!("{}.{}", URL_SAFE_NO_PAD.encode(signed), URL_SAFE_NO_PAD.encode(tag));
        assert_eq!(signer.verify(&split, at(0)), Err(TokenError::Malformed));
    }

    /// A secret is rotated by listing `[new, old]`: tokens the old one signed, in every format,
    /// still verify (as the same claims and id), new ones are signed with the new one and name
    /// it; once the old one is removed its tokens are forged as far as the gateway can tell.
    #[test]
    fn a_rotated_secret_verifies_until_it_is_removed() {
        let old = Signer::new("old-secret", DAY);
        let claims = page_of_10();
        let unkeyed = {
            let keyed = raw(&old.sign(claims.view()));
            let signed = [&[UNKEYED_VERSION][..], &keyed[1 + KEY_ID_LEN..keyed.len() - TAG_LEN]].concat();
            sign_raw(&old, &signed)
        };
        let issued = [old.sign(claims.view()), old.sign_json(&claims), unkeyed];
        let rotated = Signer::rotating(&["new-secret", "old-secret"], DAY);
        let retired = Signer::rotating(&["new-secret"], DAY);
        let now = at(claims.issued_at);
        for token in &issued {
            let before = old.verify(token, now).expect("the old secret's token");
            assert_eq!(rotated.verify(token, now), Ok(before), "{token}");
            assert_eq!(retired.verify(token, now), Err(TokenError::BadSignature), "{token}");
        }
        let fresh = rotated.sign(claims.view());
        assert_eq!(
            raw(&fresh)[1..5],
            Key::new(b"new-secret").id,
            "signed with the first secret"
        );
        assert_eq!(retired.verify(&fresh, now).map(|(c, _)| c), Ok(claims.clone()));
        assert_eq!(old.verify(&fresh, now), Err(TokenError::BadSignature));
        // Empty secrets are no secrets; none at all is a random one.
        let blank = Signer::rotating(&["", "old-secret"], DAY);
        assert_eq!(blank.sign(claims.view()), old.sign(claims.view()));
        let random = Signer::rotating::<&str>(&[], DAY);
        assert_eq!(
            old.verify(&random.sign(claims.view()), now),
            Err(TokenError::BadSignature)
        );
    }

    /// Format-1 tokens (no key id), issued before format 2, still verify: with any listed
    /// secret, as the same claims and id.
    #[test]
    fn accepts_format_1_tokens_issued_before_key_ids() {
        // The format-1 vector written by an independent encoder before format 2.
        let before = "AQAAAAAAAAPoAAAAAAAAAAcCAALvLRJ9ohhV2gAEaG9tZQANaG9tZS1hbHMtcmFuawAJdHJlYXRtZW50AA9hbHMtdjJAMWEtMmItM2MAAjQy\
                      cMQOKi3vNimo4W2qkq8rrJLVKvKyYeIl9tY8uTscNcA";
        let bytes = raw(before);
        for signer in [
            Signer::new("s3cret", DAY),
            Signer::rotating(&["another", "s3cret"], DAY),
        ] {
            let (verified, id) = signer.verify(before, at(1_000)).expect("a format-1 token");
            assert_eq!(verified, claims(1_000));
            assert_eq!(id[..], bytes[bytes.len() - TAG_LEN..][..12]);
        }
        assert_eq!(
            Signer::new("another", DAY).verify(before, at(1_000)),
            Err(TokenError::BadSignature)
        );
    }
}
