//! ServiceAccount tokens: JWTs the server signs (ES256, with `ring`, the crypto provider
//! already used for TLS; a JWT is two base64url JSON documents and a signature, little
//! enough not to need another crate) and checks on every request.
//!
//! A token names its ServiceAccount by namespace, name and uid, and may be bound to a
//! pod: it then stops working when that pod is gone (or replaced by a namesake), which is
//! what the node asks for when it projects a token into a pod. Claims follow Kubernetes'
//! bound tokens (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`, and `kubernetes.io`
//! with `namespace`, `serviceaccount`, `pod`, `node`).

use super::UserInfo;
use crate::store::Store;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use std::path::Path;

/// The issuer and default audience of Skiff's tokens, as Kubernetes' default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The longest lifetime a token may ask for (Kubernetes: 2^32 s).
pub const MAX_EXPIRATION: i64 = 1 << 32;
/// The shortest (Kubernetes: 10 minutes).
pub const MIN_EXPIRATION: i64 = 600;

/// Failures of the signing key.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key file could not be read, made or parsed.
    #[error("ServiceAccount signing key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Signs and verifies ServiceAccount tokens with one P-256 key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// What a token is bound to, besides its ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// `(name, uid)` of the pod it is bound to.
    pub pod: Option<(String, String)>,
    /// `(name, uid)` of the node that pod runs on.
    pub node: Option<(String, String)>,
}

impl Signer {
    /// The key in `path` (PKCS#8, base64 in a PEM `PRIVATE KEY` block), made (mode 0600)
    /// if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Signer, SignerError> {
        let err = |message: String| SignerError::Key {
            path: path.display().to_string(),
            message,
        };
        let rng = SystemRandom::new();
        let der = match std::fs::read_to_string(path) {
            Ok(pem) => {
                let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(body.trim())
                    .map_err(|e| err(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| err("cannot generate a key".into()))?;
                let b = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
                let pem = format!("-----BEGIN PRIVATE KEY-----\n{b}\n-----END PRIVATE KEY-----\n");
                crate::pki::write_private(path, pem.as_bytes()).map_err(|e| err(e.to_string()))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| err(format!("not a P-256 PKCS#8 key: {e}")))?;
        let kid = crate::token::sha256_hex(key.public_key().as_ref())[..16].to_string();
        Ok(Signer { key, kid, rng })
    }

    /// A token for ServiceAccount `ns/name` (uid `uid`), valid for `seconds` from now.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        bound: &Binding,
    ) -> Result<(String, jiff::Timestamp), String> {
        let now = jiff::Timestamp::now().as_second();
        let exp = now + seconds;
        let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": name, "uid": uid}});
        if let Some((n, u)) = &bound.pod {
            k8s["pod"] = json!({"name": n, "uid": u});
        }
        if let Some((n, u)) = &bound.node {
            k8s["node"] = json!({"name": n, "uid": u});
        }
        let aud: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let claims = json!({
            "aud": aud, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        });
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            b64url().encode(header.to_string()),
            b64url().encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        let at = jiff::Timestamp::from_second(exp).map_err(|e| e.to_string())?;
        Ok((
            format!("{signing_input}.{}", b64url().encode(sig.as_ref())),
            at,
        ))
    }

    /// The claims of a token this key signed, if its signature, issuer, audience and
    /// times hold.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&b64url().decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = b64url().decode(s).ok()?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        let claims: Value = serde_json::from_slice(&b64url().decode(c).ok()?).ok()?;
        let now = jiff::Timestamp::now().as_second();
        let aud_ok = claims["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == ISSUER));
        (claims["iss"] == ISSUER
            && aud_ok
            && claims["exp"].as_i64().is_some_and(|e| e > now)
            && claims["nbf"].as_i64().is_none_or(|n| n <= now + 60))
        .then_some(claims)
    }
}

fn uid_of(store: &dyn Store, key: &str) -> Option<(String, Value)> {
    let kv = store.get(key)?;
    let v: Value = serde_json::from_slice(&kv.value).ok()?;
    Some((v["metadata"]["uid"].as_str()?.to_string(), v))
}

/// The ServiceAccount user of a token, if it verifies and what it names still exists:
/// the ServiceAccount with the same uid and, for a pod-bound token, the pod.
pub fn authenticate(signer: &Signer, store: &dyn Store, token: &str) -> Option<UserInfo> {
    let claims = signer.verify(token)?;
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str()?;
    let name = k["serviceaccount"]["name"].as_str()?;
    let uid = k["serviceaccount"]["uid"].as_str()?;
    let (stored_uid, _) = uid_of(store, &format!("core/serviceaccounts/{ns}/{name}"))?;
    if stored_uid != uid {
        return None;
    }
    let mut u = UserInfo::new(
        format!("system:serviceaccount:{ns}:{name}"),
        [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ],
    );
    u.uid = uid.to_string();
    if let Some(pod) = k["pod"]["name"].as_str() {
        let (pod_uid, p) = uid_of(store, &format!("core/pods/{ns}/{pod}"))?;
        if Some(pod_uid.as_str()) != k["pod"]["uid"].as_str() {
            return None;
        }
        // A pod past its deletion (plus a minute for the node to stop it) is done.
        let gone = p["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| t.as_second() + 60 < jiff::Timestamp::now().as_second());
        if gone {
            return None;
        }
        u.extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![pod.into()],
        );
        u.extra
            .insert("authentication.kubernetes.io/pod-uid".into(), vec![pod_uid]);
    }
    if let Some(node) = k["node"]["name"].as_str() {
        u.extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![node.into()],
        );
    }
    if let Some(jti) = claims["jti"].as_str() {
        u.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_verify_under_their_key_only_and_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(&dir.path().join("sa.key")).unwrap();
        let bound = Binding {
            pod: Some(("web".into(), "pod-uid".into())),
            node: None,
        };
        let (tok, exp) = s.issue("ns", "app", "sa-uid", &[], 3600, &bound).unwrap();
        assert!(exp.as_second() > jiff::Timestamp::now().as_second() + 3500);
        let c = s.verify(&tok).unwrap();
        assert_eq!(c["sub"], "system:serviceaccount:ns:app");
        assert_eq!(c["kubernetes.io"]["pod"]["uid"], "pod-uid");
        // The same key after a restart.
        let again = Signer::load_or_create(&dir.path().join("sa.key")).unwrap();
        assert!(again.verify(&tok).is_some());
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.verify(&tok).is_none(), "another key's token");
        let (expired, _) = s
            .issue("ns", "app", "u", &[], -10, &Binding::default())
            .unwrap();
        assert!(s.verify(&expired).is_none(), "expired");
        let (foreign, _) = s
            .issue(
                "ns",
                "app",
                "u",
                &["https://other".into()],
                600,
                &Binding::default(),
            )
            .unwrap();
        assert!(s.verify(&foreign).is_none(), "another audience");
        // Tampered claims break the signature.
        let mut parts: Vec<&str> = tok.split('.').collect();
        let forged = b64url().encode(
            serde_json::to_vec(
                &json!({"iss": ISSUER, "aud": [ISSUER], "exp": 9999999999i64, "sub": "x"}),
            )
            .unwrap(),
        );
        parts[1] = &forged;
        assert!(s.verify(&parts.join(".")).is_none());
        assert!(s.verify("a.b").is_none());
    }
}
