//! Credentials the server stores: join tokens, node credentials and user tokens, each a
//! Secret in `kube-system` holding the SHA-256 of the token's secret, never the secret.
//! (Kubernetes keeps its bootstrap tokens as Secrets the same way.) So they are listed
//! and revoked with the API itself: deleting the Secret refuses the token at once.
//!
//! | what            | Secret name                | type                        |
//! |-----------------|----------------------------|-----------------------------|
//! | join token      | `skiff-join-token-<id>`    | `skiff.dev/join-token`      |
//! | node credential | `skiff-node-<node>`        | `skiff.dev/node-credential` |
//! | user token      | `skiff-user-token-<id>`    | `skiff.dev/user-token`      |
//!
//! A node credential's Secret also holds a node's claim on its name: a join for a name
//! that has one (or has a Node) needs the admin's approval (`skiff node approve`, the
//! annotation [`APPROVED_ANNOTATION`]) or the node's own credential.

use super::UserInfo;
use crate::store::Store;
use crate::token::{self, NODE_CREDENTIAL_PREFIX, USER_TOKEN_PREFIX};
use base64::Engine;
use serde_json::{Value, json};

/// Where the credentials live.
pub const NAMESPACE: &str = "kube-system";
/// The type of join token Secrets.
pub const JOIN_TOKEN_TYPE: &str = "skiff.dev/join-token";
/// The type of node credential Secrets.
pub const NODE_CREDENTIAL_TYPE: &str = "skiff.dev/node-credential";
/// The type of user token Secrets.
pub const USER_TOKEN_TYPE: &str = "skiff.dev/user-token";
/// On a node credential's Secret: the next join for this name may take it over.
pub const APPROVED_ANNOTATION: &str = "skiff.dev/approved-rejoin";
/// On a node credential's Secret: revoked; it authenticates nobody and keeps the name
/// held.
pub const REVOKED_ANNOTATION: &str = "skiff.dev/revoked";

/// The Secret of join token `id`.
pub fn join_token_name(id: &str) -> String {
    format!("skiff-join-token-{id}")
}

/// The Secret of node `node`'s credential.
pub fn node_credential_name(node: &str) -> String {
    format!("skiff-node-{node}")
}

/// The Secret of user token `id`.
pub fn user_token_name(id: &str) -> String {
    format!("skiff-user-token-{id}")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A field of a stored Secret's `data`, decoded.
pub fn field(secret: &Value, key: &str) -> Option<String> {
    let raw = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// The stored Secret `kube-system/<name>` and its revision.
pub fn read(store: &dyn Store, name: &str) -> Option<(u64, Value)> {
    let kv = store.get(&format!("core/secrets/{NAMESPACE}/{name}"))?;
    let v = serde_json::from_slice(&kv.value).ok()?;
    Some((kv.mod_revision, v))
}

fn secret_object(name: &str, ty: &str, labels: Value, data: &[(&str, &str)]) -> Value {
    let mut d = serde_json::Map::new();
    for (k, v) in data {
        d.insert(k.to_string(), json!(b64(v)));
    }
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": ty,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "data": d,
    })
}

/// A join token's Secret. `expiration` is RFC 3339, or none for a token that does not
/// expire.
pub fn join_token_object(
    id: &str,
    secret: &str,
    expiration: Option<&str>,
    description: &str,
) -> Value {
    let hash = token::sha256_hex(secret.as_bytes());
    let mut data = vec![
        ("token-id", id),
        ("token-secret-sha256", hash.as_str()),
        ("usage-skiff-join", "true"),
        ("description", description),
    ];
    if let Some(e) = expiration {
        data.push(("expiration", e));
    }
    secret_object(
        &join_token_name(id),
        JOIN_TOKEN_TYPE,
        json!({"skiff.dev/token-id": id}),
        &data,
    )
}

/// A node credential's Secret, holding the SHA-256 `hash` of its secret.
pub fn node_credential_object(node: &str, hash: &str) -> Value {
    secret_object(
        &node_credential_name(node),
        NODE_CREDENTIAL_TYPE,
        json!({}),
        &[("node", node), ("token-secret-sha256", hash)],
    )
}

/// A user token's Secret.
pub fn user_token_object(
    id: &str,
    user: &str,
    groups: &[String],
    hash: &str,
    expiration: Option<&str>,
) -> Value {
    let groups = groups.join(",");
    let mut data = vec![
        ("user", user),
        ("groups", groups.as_str()),
        ("token-secret-sha256", hash),
    ];
    if let Some(e) = expiration {
        data.push(("expiration", e));
    }
    secret_object(
        &user_token_name(id),
        USER_TOKEN_TYPE,
        json!({"skiff.dev/user": sanitize_label(user)}),
        &data,
    )
}

/// A label value naming a user (label values are at most 63 of `[A-Za-z0-9._-]`).
fn sanitize_label(s: &str) -> String {
    let mut v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    while v.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.remove(0);
    }
    v
}

fn expired(secret: &Value) -> bool {
    field(secret, "expiration")
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t <= jiff::Timestamp::now())
}

fn hash_matches(secret: &Value, presented: &str, ty: &str) -> bool {
    secret["type"] == ty
        && field(secret, "token-secret-sha256").is_some_and(|want| {
            token::same_secret(
                token::sha256_hex(presented.as_bytes()).as_bytes(),
                want.as_bytes(),
            )
        })
        && !expired(secret)
}

/// The joining identity of a join token secret (`<id>-<random>`, or the `default`
/// token's), if a live join token Secret holds its hash.
pub fn authenticate_join(store: &dyn Store, secret: &str) -> Option<UserInfo> {
    let id = token::join_token_id(secret);
    let (_, s) = read(store, &join_token_name(id))?;
    (hash_matches(&s, secret, JOIN_TOKEN_TYPE)
        && field(&s, "usage-skiff-join").as_deref() == Some("true"))
    .then(|| UserInfo::joining(id))
}

/// The node of a node credential, if its Secret holds the credential's hash.
pub fn authenticate_node(store: &dyn Store, tok: &str) -> Option<UserInfo> {
    let (node, secret) = token::split_credential(NODE_CREDENTIAL_PREFIX, tok)?;
    let (_, s) = read(store, &node_credential_name(node))?;
    (hash_matches(&s, secret, NODE_CREDENTIAL_TYPE) && field(&s, "node").as_deref() == Some(node))
        .then(|| UserInfo::node(node))
}

/// The user of a user token, if its Secret holds the token's hash.
pub fn authenticate_user(store: &dyn Store, tok: &str) -> Option<UserInfo> {
    let (id, secret) = token::split_credential(USER_TOKEN_PREFIX, tok)?;
    let (_, s) = read(store, &user_token_name(id))?;
    if !hash_matches(&s, secret, USER_TOKEN_TYPE) {
        return None;
    }
    let user = field(&s, "user")?;
    let groups = field(&s, "groups").unwrap_or_default();
    let mut u = UserInfo::new(
        user,
        groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(String::from),
    );
    u.extra.insert(
        "authentication.kubernetes.io/credential-id".into(),
        vec![format!("skiff-user-token={id}")],
    );
    Some(u)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_credentials_hold_only_hashes_and_expire() {
        let (_, secret) = token::new_join_secret();
        let o = join_token_object("abc123", &secret, None, "for edge boxes");
        let text = o.to_string();
        assert!(!text.contains(&secret), "the secret itself is not stored");
        assert!(hash_matches(&o, &secret, JOIN_TOKEN_TYPE));
        assert!(!hash_matches(&o, "other", JOIN_TOKEN_TYPE));
        assert!(!hash_matches(&o, &secret, NODE_CREDENTIAL_TYPE));
        let old = join_token_object("abc123", &secret, Some("2020-01-01T00:00:00Z"), "");
        assert!(!hash_matches(&old, &secret, JOIN_TOKEN_TYPE), "expired");
        let later = join_token_object("abc123", &secret, Some("2999-01-01T00:00:00Z"), "");
        assert!(hash_matches(&later, &secret, JOIN_TOKEN_TYPE));
        assert_eq!(field(&o, "description").as_deref(), Some("for edge boxes"));
        assert_eq!(
            sanitize_label("system:serviceaccount:a:b"),
            "system_serviceaccount_a_b"
        );
        assert_eq!(sanitize_label("-x-"), "x");
    }
}
