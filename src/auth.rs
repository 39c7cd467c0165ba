//! API keys (ARCHITECTURE.md §5): settings hold only SHA-256 digests of keys, each with a role and
//! a name. A presented key is hashed and compared with every digest in constant time, so neither
//! the keys nor, through timing, their digests leak.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Client apps: recommendations, events, experiments, stats.
    Client,
    /// Operators: everything a client may do, and the admin routes.
    Admin,
}

/// One `auth.keys` entry as written in settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// Hex SHA-256 of the key (`recgw hash-key` prints it).
    pub sha256: String,
    /// What the key may do.
    pub role: Role,
    /// Shown in logs instead of the key.
    pub name: String,
}

/// Who is calling: the name and role of the key presented, borrowed from the configured keys so
/// a request copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller<'k> {
    /// The key's name, for logs.
    pub(crate) name: &'k str,
    /// The key's role.
    pub(crate) role: Role,
}

#[derive(Debug, Clone)]
struct Key {
    digest: [u8; 32],
    role: Role,
    name: String,
}

/// The configured keys, and who may call admin routes while there are none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keys {
    /// The keys; none turns auth off.
    keys: Vec<Key>,
    /// `auth.loopback_admin`: with auth off, whether admin routes answer loopback callers.
    loopback_admin: bool,
}

/// The hex SHA-256 of a key, as settings hold it.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Keys {
    /// Parses `auth.keys`, naming the first entry whose digest is not 64 hex digits;
    /// `loopback_admin` is `auth.loopback_admin`.
    pub(crate) fn new(keys: &[KeySettings], loopback_admin: bool) -> Result<Self, String> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                let digest = parse_digest(&key.sha256)
                    .ok_or_else(|| format!("auth.keys[{i}].sha256 ({:?}) must be 64 hex digits", key.name))?;
                Ok(Key {
                    digest,
                    role: key.role,
                    name: key.name.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map(|keys| Keys { keys, loopback_admin })
    }

    /// Whether no key is configured (auth off).
    pub(crate) fn is_off(&self) -> bool {
        self.keys.is_empty()
    }

    /// With auth off, whether admin routes answer loopback callers (`auth.loopback_admin`).
    pub(crate) fn loopback_admin(&self) -> bool {
        self.loopback_admin
    }

    /// The caller a presented key identifies. Every digest is compared, each in constant time,
    /// so the answer takes the same time whichever key (if any) matches.
    pub(crate) fn check(&self, presented: &str) -> Option<Caller<'_>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest[..].ct_eq(&digest[..])) {
                found = Some(Caller {
                    name: &key.name,
                    role: key.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_keys_by_digest_only() {
        let keys = Keys::new(
            &[
                KeySettings {
                    sha256: hash_key("client-secret"),
                    role: Role::Client,
                    name: "web".into(),
                },
                KeySettings {
                    sha256: hash_key("admin-secret").to_uppercase(),
                    role: Role::Admin,
                    name: "ops".into(),
                },
            ],
            true,
        )
        .expect("valid");
        assert_eq!(
            keys.check("client-secret"),
            Some(Caller {
                name: "web",
                role: Role::Client
            })
        );
        assert_eq!(
            keys.check("admin-secret"),
            Some(Caller {
                name: "ops",
                role: Role::Admin
            })
        );
        assert_eq!(keys.check("client-secret "), None);
        assert_eq!(keys.check(""), None);
        assert!(!keys.is_off());
        assert!(Keys::default().is_off());
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "the SHA-256 test vector"
        );
        let err = Keys::new(
            &[KeySettings {
                sha256: "zz".into(),
                role: Role::Client,
                name: "bad".into(),
            }],
            true,
        );
        assert!(err.expect_err("rejected").contains("auth.keys[0]"));
    }
}
