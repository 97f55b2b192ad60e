//! The `pod-template-hash`: which ReplicaSet belongs to which version of a Deployment's
//! pod template.
//!
//! Like Kubernetes: a 32-bit FNV-1a hash of the template (here its canonical JSON, the
//! typed object serialised with sorted maps) and of `status.collisionCount` when set,
//! printed in decimal and each digit mapped onto an alphabet without vowels, so a hash
//! never spells a word. The value is opaque: only equality matters.

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The label that carries the hash on ReplicaSets and their pods.
pub const LABEL: &str = "pod-template-hash";

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv1a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The hash of `template` (without any `pod-template-hash` label) and `collision_count`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // Serialising a typed object cannot fail (no maps with non-string keys).
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h = fnv1a(0x811c_9dc5, &bytes);
    if let Some(c) = collision_count {
        h = fnv1a(h, &c.to_le_bytes());
    }
    spelled(h)
}

/// A 32-bit FNV-1a hash of `bytes`, spelled as [`template_hash`] spells its hash.
pub fn short_hash(bytes: &[u8]) -> String {
    spelled(fnv1a(0x811c_9dc5, bytes))
}

fn spelled(h: u32) -> String {
    h.to_string()
        .bytes()
        .map(|d| char::from(ALPHABET[usize::from(d) % ALPHABET.len()]))
        .collect()
}

/// `template` without the hash label, for comparing a ReplicaSet's template with its
/// Deployment's.
pub fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(LABEL);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn template(image: &str, labels: &[(&str, &str)]) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hashes_are_stable_safe_and_sensitive() {
        let a = template("app:1", &[("app", "web")]);
        let h = template_hash(&a, None);
        let cases = [
            // (other template, collision count, same hash?)
            (template("app:1", &[("app", "web")]), None, true),
            (template("app:2", &[("app", "web")]), None, false),
            (template("app:1", &[("app", "api")]), None, false),
            (template("app:1", &[("app", "web")]), Some(1), false),
            (
                without_hash(&template("app:1", &[("app", "web"), (LABEL, "x")])),
                None,
                true,
            ),
        ];
        for (t, c, same) in cases {
            assert_eq!(template_hash(&t, c) == h, same, "{t:?} {c:?}");
        }
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(h.bytes().all(|b| ALPHABET.contains(&b)), "{h}");
        assert!(!h.contains(['a', 'e', 'i', 'o', 'u']));
    }
}
