//! The shapes of Skiff's node tokens, shared by the server and the node side.
//!
//! - The join token, `skiff1.<sha256 hex of the CA PEM>.<secret>`, is what an operator
//!   copies to a new machine (like k3s' `K10…` token): the hash lets the node check that
//!   the server it reached holds the expected CA before trusting it, and the secret lets
//!   the node ask for its own credential.
//! - A node credential, `skiff-node.<node name>.<hex HMAC-SHA256(server key, node name)>`,
//!   is what a node agent calls the API with afterwards. The server keeps no per-node
//!   state: it recomputes the MAC to verify one.

use ring::hmac;

/// First field of a join token; names the format's version.
pub const JOIN_TOKEN_PREFIX: &str = "skiff1";

/// First field of a node credential.
pub const NODE_CREDENTIAL_PREFIX: &str = "skiff-node";

/// A token that does not have the expected shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not `skiff1.<64 hex>.<secret>`.
    #[error(
        "a join token looks like skiff1.<64 hex digits: sha256 of the CA certificate>.<secret>; \
         this one does not ({0})"
    )]
    Malformed(&'static str),
}

/// A join token, split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate file (PEM bytes) the node should trust.
    pub ca_sha256: String,
    /// The shared join secret.
    pub secret: String,
}

impl JoinToken {
    /// The join token for a server whose CA file holds `ca_pem`.
    pub fn new(ca_pem: &[u8], secret: &str) -> JoinToken {
        JoinToken {
            ca_sha256: sha256_hex(ca_pem),
            secret: secret.to_string(),
        }
    }

    /// Split `skiff1.<hash>.<secret>`.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(TokenError::Malformed("it does not start with \"skiff1.\""))?;
        let (hash, secret) = rest
            .split_once('.')
            .ok_or(TokenError::Malformed("it has no secret after the CA hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed(
                "the CA hash is not 64 hexadecimal digits",
            ));
        }
        if secret.is_empty() || secret.bytes().any(|b| b.is_ascii_whitespace() || b == b'.') {
            return Err(TokenError::Malformed(
                "the secret is empty or holds dots or spaces",
            ));
        }
        Ok(JoinToken {
            ca_sha256: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{JOIN_TOKEN_PREFIX}.{}.{}", self.ca_sha256, self.secret)
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A fresh random secret: 32 bytes as 64 hex digits.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

/// The credential of node `node` under the server's `key`.
pub fn node_credential(key: &[u8], node: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, node.as_bytes());
    format!("{NODE_CREDENTIAL_PREFIX}.{node}.{}", hex(tag.as_ref()))
}

/// The node a credential was issued to, if `token` is a node credential that `key`
/// signed. The MAC is compared in constant time.
pub fn verify_node_credential(key: &[u8], token: &str) -> Option<String> {
    let rest = token
        .strip_prefix(NODE_CREDENTIAL_PREFIX)?
        .strip_prefix('.')?;
    // Node names may hold dots; the MAC never does, so it is after the last one.
    let (node, mac) = rest.rsplit_once('.')?;
    if node.is_empty() {
        return None;
    }
    let mac = unhex(mac)?;
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, node.as_bytes(), &mac).ok()?;
    Some(node.to_string())
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn join_token_round_trips_and_hashes_the_ca_file_bytes() {
        let t = JoinToken::new(b"-----BEGIN CERTIFICATE-----\n", "s3cret");
        let text = t.to_string();
        assert!(text.starts_with("skiff1."));
        assert_eq!(text.split('.').nth(1).unwrap().len(), 64);
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        // sha256("abc"), the FIPS 180-2 example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_join_tokens_are_refused() {
        let h = "a".repeat(64);
        for bad in [
            "",
            "plainsecret",
            "skiff1",
            "skiff1.abc.secret",
            &format!("skiff1.{h}"),
            &format!("skiff1.{h}."),
            &format!("skiff2.{h}.secret"),
            &format!("skiff1.{}.secret", "g".repeat(64)),
            &format!("skiff1.{h}.sec.ret"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn node_credentials_verify_only_under_their_key_and_name() {
        let key = b"server key";
        let c = node_credential(key, "edge-1.example.com");
        assert!(c.starts_with("skiff-node.edge-1.example.com."));
        assert_eq!(
            verify_node_credential(key, &c).as_deref(),
            Some("edge-1.example.com")
        );
        assert_eq!(verify_node_credential(b"other key", &c), None);
        // Another node's name with this node's MAC.
        let mac = c.rsplit('.').next().unwrap();
        assert_eq!(
            verify_node_credential(key, &format!("skiff-node.edge-2.{mac}")),
            None
        );
        // Truncated, odd-length, not hex, no name.
        assert_eq!(verify_node_credential(key, &c[..c.len() - 2]), None);
        assert_eq!(verify_node_credential(key, &c[..c.len() - 1]), None);
        assert_eq!(
            verify_node_credential(key, &format!("skiff-node.n.{}", "z".repeat(64))),
            None
        );
        assert_eq!(verify_node_credential(key, "skiff-node..00"), None);
        assert_eq!(verify_node_credential(key, "skiff-node"), None);
        // The MAC is HMAC-SHA256 (RFC 4231 test case 2).
        let c = node_credential(b"Jefe", "what do ya want for nothing?");
        assert!(c.ends_with(".5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
