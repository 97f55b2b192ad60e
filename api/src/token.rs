//! The shapes of Skiff's tokens, shared by the server and the node side.
//!
//! - A join token, `skiff1.<sha256 hex of the CA PEM>.<secret>`, is what an operator
//!   copies to a new machine (like k3s' `K10…` token): the hash lets the node check that
//!   the server it reached holds the expected CA before trusting it, and the secret lets
//!   a node claim a name nobody holds and get that node's credential (one token can join
//!   many machines until it expires or is deleted). The secret is `<id>-<random>` for tokens
//!   made by `skiff token create` (the id names the token), and a bare random string for
//!   the `default` token the server writes to `DATA_DIR/node-token`.
//! - A node credential, `skiff-node.<node name>.<random>`, and a user token,
//!   `skiff-user.<id>.<random>`: what a node agent or a user calls the API with. The
//!   server keeps only their SHA-256 (in Secrets, [`crate::auth::credentials`]), so a
//!   deleted Secret revokes them at once.
//! - A node's logs token, `skiff-logs.<node>.<HMAC-SHA256(server key, node)>`: what the
//!   apiserver presents to that node's agent when it proxies `kubectl logs`.

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
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A fresh random secret: 32 bytes as 64 hex digits.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// First field of a user token.
pub const USER_TOKEN_PREFIX: &str = "skiff-user";

/// First field of a node's logs token.
pub const LOGS_TOKEN_PREFIX: &str = "skiff-logs";

/// The id of the join token whose secret is `secret`: `<id>-...` for tokens made by
/// `skiff token create`, `default` for the token in `DATA_DIR/node-token`.
pub fn join_token_id(secret: &str) -> &str {
    match secret.split_once('-') {
        Some((id, rest))
            if id.len() == 6
                && !rest.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            id
        }
        _ => "default",
    }
}

/// A new join token secret, `<6-character id>-<32 hex digits>`, and its id.
pub fn new_join_secret() -> (String, String) {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    let id: String = (0..6)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect();
    let secret = format!("{id}-{}", &random_secret()[..32]);
    (id, secret)
}

/// A new credential `<prefix>.<name>.<64 hex digits>`, and the SHA-256 the server keeps.
pub fn new_credential(prefix: &str, name: &str) -> (String, String) {
    let secret = random_secret();
    let hash = sha256_hex(secret.as_bytes());
    (format!("{prefix}.{name}.{secret}"), hash)
}

/// The name and the secret of a `<prefix>.<name>.<secret>` credential.
pub fn split_credential<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('.')?;
    // Names may hold dots; the secret never does, so it is after the last one.
    let (name, secret) = rest.rsplit_once('.')?;
    (!name.is_empty() && !secret.is_empty()).then_some((name, secret))
}

/// The token the apiserver presents to node `node`'s agent, under the server's `key`, for
/// the node's credential `generation` (its Secret's uid: a rejoin or a revocation makes a
/// new one, so a machine that lost the name also loses the token).
pub fn node_logs_token(key: &[u8], node: &str, generation: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, format!("logs:{node}:{generation}").as_bytes());
    format!("{LOGS_TOKEN_PREFIX}.{node}.{}", hex::encode(tag.as_ref()))
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
    fn credentials_split_into_name_and_secret() {
        let (tok, hash) = new_credential(NODE_CREDENTIAL_PREFIX, "edge-1.example.com");
        let (name, secret) = split_credential(NODE_CREDENTIAL_PREFIX, &tok).unwrap();
        assert_eq!(name, "edge-1.example.com");
        assert_eq!(sha256_hex(secret.as_bytes()), hash);
        assert_eq!(secret.len(), 64);
        for bad in [
            "skiff-node",
            "skiff-node.",
            "skiff-node..x",
            "skiff-node.n.",
            "skiff-user.n.x",
        ] {
            assert_eq!(split_credential(NODE_CREDENTIAL_PREFIX, bad), None, "{bad}");
        }
        assert_ne!(new_credential(NODE_CREDENTIAL_PREFIX, "n").0, tok);
    }

    #[test]
    fn join_secrets_name_their_token() {
        let (id, secret) = new_join_secret();
        assert_eq!(join_token_id(&secret), id);
        assert!(JoinToken::parse(&JoinToken::new(b"ca", &secret).to_string()).is_ok());
        assert_eq!(join_token_id(&"a".repeat(64)), "default");
        assert_eq!(join_token_id("ABCDEF-x"), "default");
        assert_eq!(join_token_id("abcdef-"), "default");
    }

    #[test]
    fn logs_tokens_are_hmac_sha256_of_the_node() {
        let t = node_logs_token(b"Jefe", "n1", "g1");
        assert!(t.starts_with("skiff-logs.n1."));
        assert_ne!(t, node_logs_token(b"Jefe", "n2", "g1"));
        assert_ne!(t, node_logs_token(b"other", "n1", "g1"));
        assert_ne!(t, node_logs_token(b"Jefe", "n1", "g2"));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
