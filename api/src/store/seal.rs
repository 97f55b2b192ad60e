//! Encryption at rest for the values the store must not keep in the clear (Secrets), as
//! Kubernetes' EncryptionConfiguration does for etcd: AES-256-GCM from `ring` (the crypto
//! provider the workspace already uses for TLS), a random 96-bit nonce per write, and the
//! store key as associated data, so a sealed value cannot be moved under another key.
//!
//! On disk a sealed value is `skiff:enc:aesgcm:v1:<key name>:` + nonce + ciphertext +
//! tag. Values without that prefix are plaintext from before encryption was on; they are
//! read as they are and sealed the next time the store opens. The keys live in a file of
//! lines `<name> <base64 key>`, the first one encrypting, every one decrypting, which is
//! how a rotation goes: a new first key, everything resealed, the old keys dropped.
//!
//! Only the bytes on disk are sealed: the in-memory mirror, lists and watches see
//! plaintext, as the apiserver's watch cache does in Kubernetes.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

const PREFIX: &[u8] = b"skiff:enc:aesgcm:v1:";

/// The store keys whose values are sealed.
pub fn is_sealed_key(key: &str) -> bool {
    key.starts_with("core/secrets/")
}

/// Failures of sealing and of the key file.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("encryption key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds something else than `<name> <base64 of 32 bytes>` lines.
    #[error("encryption key file {path}, line {line}: {reason}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A sealed value names a key that the key file does not hold.
    #[error("{key}: sealed with key {name:?}, which the encryption key file does not hold")]
    UnknownKey {
        /// The store key.
        key: String,
        /// The key name in the value.
        name: String,
    },
    /// Decryption failed: the value was altered, or moved from another key.
    #[error("{0}: the sealed value does not authenticate (altered or moved)")]
    Corrupt(String),
}

/// One named AES-256-GCM key.
struct NamedKey {
    name: String,
    key: LessSafeKey,
}

/// The keys values are sealed and opened with.
pub struct Sealer {
    keys: Vec<NamedKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("Sealer").field("keys", &names).finish()
    }
}

/// A new key's name: when it was made, to the second.
fn key_name() -> String {
    format!("key-{}", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"))
}

fn new_key_line(rng: &SystemRandom, taken: &[String]) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)?;
    let mut name = key_name();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{}-{n}", key_name());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("{name} {b64}"))
}

impl Sealer {
    /// Keys from `lines` of a key file (first one encrypting).
    fn parse(path: &Path, text: &str) -> Result<Sealer, SealError> {
        let bad = |line: usize, reason: &str| SealError::BadKeyFile {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, b64) = line
                .split_once(' ')
                .ok_or_else(|| bad(i + 1, "expected `<name> <base64 key>`"))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| bad(i + 1, "the key is not base64"))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| bad(i + 1, "the key must be 32 bytes"))?;
            if name.contains(':') || keys.iter().any(|k: &NamedKey| k.name == name) {
                return Err(bad(i + 1, "key names must be unique and hold no ':'"));
            }
            keys.push(NamedKey {
                name: name.to_string(),
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(bad(1, "the file holds no key"));
        }
        Ok(Sealer {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The keys in `path`, creating the file with one new key (mode 0600) if it does not
    /// exist.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let io = |source| SealError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Sealer::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let line = new_key_line(&rng, &[])
                    .map_err(|_| io(std::io::Error::other("no randomness")))?;
                write_key_file(path, std::slice::from_ref(&line))?;
                Sealer::parse(path, &line)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The name of the key new values are sealed with.
    pub fn primary(&self) -> &str {
        &self.keys[0].name
    }

    /// Seal `plain`, stored under `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing is not something a store write can recover from; an
        // all-zero nonce would be worse than a panic, so do not fall back to one.
        #[allow(clippy::expect_used)]
        self.rng
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        let mut out =
            Vec::with_capacity(PREFIX.len() + k.name.len() + 1 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        #[allow(clippy::expect_used)]
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        out.extend_from_slice(&body);
        out
    }

    /// The plaintext of a stored value (sealed or, from before encryption, plain).
    pub fn open<'a>(&self, key: &str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(Cow::Borrowed(stored));
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| SealError::Corrupt(key.to_string()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let k = self
            .keys
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| SealError::UnknownKey {
                key: key.to_string(),
                name,
            })?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN + 16 {
            return Err(SealError::Corrupt(key.to_string()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&body[..NONCE_LEN]);
        let mut buf = body[NONCE_LEN..].to_vec();
        let plain = k
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Corrupt(key.to_string()))?;
        let n = plain.len();
        buf.truncate(n);
        Ok(Cow::Owned(buf))
    }

    /// Whether a stored value should be sealed again: plaintext, or under an older key.
    pub fn is_stale(&self, stored: &[u8]) -> bool {
        match stored.strip_prefix(PREFIX) {
            None => true,
            Some(rest) => rest
                .strip_prefix(self.primary().as_bytes())
                .is_none_or(|r| r.first() != Some(&b':')),
        }
    }
}

fn write_key_file(path: &Path, lines: &[String]) -> Result<(), SealError> {
    let text = format!(
        "# Skiff's keys for Secrets at rest: the first encrypts, all decrypt. Back it up\n\
         # apart from the store (not beside it): without it the Secrets cannot be read.\n{}\n",
        lines.join("\n")
    );
    crate::pki::write_private(path, text.as_bytes()).map_err(|e| SealError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn read_key_file(path: &Path) -> Result<String, SealError> {
    std::fs::read_to_string(path).map_err(|source| SealError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Step one of a rotation: put a new key first in `path`, keeping the old ones for
/// decryption. Returns the new key's name.
pub fn add_primary_key(path: &Path) -> Result<String, SealError> {
    let text = read_key_file(path)?;
    let old = Sealer::parse(path, &text)?;
    let names: Vec<String> = old.keys.iter().map(|k| k.name.clone()).collect();
    let line = new_key_line(&old.rng, &names).map_err(|_| SealError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("no randomness"),
    })?;
    let name = line.split(' ').next().unwrap_or_default().to_string();
    let mut lines = vec![line];
    lines.extend(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from),
    );
    write_key_file(path, &lines)?;
    Ok(name)
}

/// The last step of a rotation: keep only the first key of `path`.
pub fn drop_old_keys(path: &Path) -> Result<(), SealError> {
    let text = read_key_file(path)?;
    Sealer::parse(path, &text)?;
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default()
        .to_string();
    write_key_file(path, &[first])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let s = Sealer::load_or_create(&path).unwrap();
        let key = "core/secrets/default/db";
        let sealed = s.seal(key, b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.windows(12).any(|w| w == b"aHVudGVyMg=="));
        assert_eq!(
            s.open(key, &sealed).unwrap().as_ref(),
            b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}"
        );
        assert!(!s.is_stale(&sealed));
        // Moved under another key, or altered: refused.
        assert!(matches!(
            s.open("core/secrets/default/other", &sealed),
            Err(SealError::Corrupt(_))
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(s.open(key, &flipped), Err(SealError::Corrupt(_))));
        // Plaintext from before encryption reads as it is and is stale.
        assert_eq!(s.open(key, b"{}").unwrap().as_ref(), b"{}");
        assert!(s.is_stale(b"{}"));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(s.seal(key, b"x"), s.seal(key, b"x"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_keeps_old_values_readable_until_the_old_key_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let old = Sealer::load_or_create(&path).unwrap();
        let key = "core/secrets/ns/s";
        let sealed = old.seal(key, b"v");
        let name = add_primary_key(&path).unwrap();
        let both = Sealer::load_or_create(&path).unwrap();
        assert_eq!(both.primary(), name);
        assert_ne!(name, old.primary());
        assert!(both.is_stale(&sealed));
        assert_eq!(both.open(key, &sealed).unwrap().as_ref(), b"v");
        let resealed = both.seal(key, b"v");
        drop_old_keys(&path).unwrap();
        let new = Sealer::load_or_create(&path).unwrap();
        assert_eq!(new.open(key, &resealed).unwrap().as_ref(), b"v");
        assert!(matches!(
            new.open(key, &sealed),
            Err(SealError::UnknownKey { .. })
        ));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        for (text, want) in [
            ("", "holds no key"),
            ("k", "line 1: expected"),
            ("k !!!", "not base64"),
            ("k AAAA", "32 bytes"),
            (
                "# c\nk:1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "line 2: key names",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Sealer::load_or_create(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
