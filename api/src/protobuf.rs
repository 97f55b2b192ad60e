//! Kubernetes' protobuf wire format for request bodies (`application/vnd.kubernetes.protobuf`):
//! the magic `k8s\0`, then a `runtime.Unknown` holding the type and the object's bytes,
//! decoded with the `k8s-pb` crate's generated (prost) types.
//!
//! kubectl sends protobuf for built-in types from its typed commands; decoded here so far:
//! what `kubectl auth can-i` and `auth whoami` send (access reviews, SelfSubjectReview),
//! `kubectl create token` (TokenRequest), and the generators `kubectl create namespace`,
//! `configmap`, `secret generic`, `serviceaccount`, `role`, `clusterrole`, `rolebinding`
//! and `clusterrolebinding`. Other kinds answer 415 with a message naming the formats that
//! work (`kubectl create -f` and `apply` send JSON).

use crate::error::{ApiError, ApiResult};
use base64::Engine;
use k8s_pb::api::{authentication, authorization, core, rbac};
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const MAGIC: &[u8] = b"k8s\0";

fn unsupported(what: &str) -> ApiError {
    ApiError::unsupported_media(&format!(
        "application/vnd.kubernetes.protobuf ({what} is not decoded yet: send JSON or YAML, e.g. `kubectl create -f` or `kubectl apply`)"
    ))
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
}

/// Insert `v` under `k` unless it is empty.
fn put(o: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if !empty {
        o.insert(k.to_string(), v);
    }
}

fn map(m: &BTreeMap<String, String>) -> Value {
    json!(m)
}

fn meta(m: Option<&ObjectMeta>) -> Value {
    let Some(m) = m else { return json!({}) };
    let mut o = Map::new();
    put(&mut o, "name", json!(m.name));
    put(&mut o, "generateName", json!(m.generate_name));
    put(&mut o, "namespace", json!(m.namespace));
    put(&mut o, "labels", map(&m.labels));
    put(&mut o, "annotations", map(&m.annotations));
    put(&mut o, "finalizers", json!(m.finalizers));
    Value::Object(o)
}

fn obj(api_version: &str, kind: &str, md: Option<&ObjectMeta>, rest: Vec<(&str, Value)>) -> Value {
    let mut o = Map::new();
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!(kind));
    o.insert("metadata".into(), meta(md));
    for (k, v) in rest {
        put(&mut o, k, v);
    }
    Value::Object(o)
}

fn resource_attributes(a: &authorization::v1::ResourceAttributes) -> Value {
    let mut o = Map::new();
    for (k, v) in [
        ("namespace", &a.namespace),
        ("verb", &a.verb),
        ("group", &a.group),
        ("version", &a.version),
        ("resource", &a.resource),
        ("subresource", &a.subresource),
        ("name", &a.name),
    ] {
        put(&mut o, k, json!(v));
    }
    Value::Object(o)
}

fn access_spec(
    ra: Option<&authorization::v1::ResourceAttributes>,
    na: Option<&authorization::v1::NonResourceAttributes>,
) -> Value {
    let mut o = Map::new();
    if let Some(a) = ra {
        o.insert("resourceAttributes".into(), resource_attributes(a));
    }
    if let Some(n) = na {
        let mut m = Map::new();
        put(&mut m, "path", json!(n.path));
        put(&mut m, "verb", json!(n.verb));
        o.insert("nonResourceAttributes".into(), Value::Object(m));
    }
    Value::Object(o)
}

fn rules(rs: &[rbac::v1::PolicyRule]) -> Value {
    rs.iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("verbs".into(), json!(r.verbs));
            put(&mut o, "apiGroups", json!(r.api_groups));
            put(&mut o, "resources", json!(r.resources));
            put(&mut o, "resourceNames", json!(r.resource_names));
            put(&mut o, "nonResourceURLs", json!(r.non_resource_ur_ls));
            Value::Object(o)
        })
        .collect()
}

fn binding(
    role_ref: Option<&rbac::v1::RoleRef>,
    subjects: &[rbac::v1::Subject],
) -> Vec<(&'static str, Value)> {
    let role_ref =
        role_ref.map(|r| json!({"apiGroup": r.api_group, "kind": r.kind, "name": r.name}));
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|s| {
            let mut o = Map::new();
            put(&mut o, "kind", json!(s.kind));
            put(&mut o, "apiGroup", json!(s.api_group));
            put(&mut o, "name", json!(s.name));
            put(&mut o, "namespace", json!(s.namespace));
            Value::Object(o)
        })
        .collect();
    vec![
        ("roleRef", role_ref.unwrap_or(Value::Null)),
        ("subjects", json!(subjects)),
    ]
}

fn b64_map(m: &BTreeMap<String, Vec<u8>>) -> Value {
    let e = base64::engine::general_purpose::STANDARD;
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), json!(e.encode(v))))
            .collect(),
    )
}

/// Decode a protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s magic"))?;
    let u = Unknown::decode(rest).map_err(bad)?;
    let tm = u.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
    );
    let raw = u.raw.unwrap_or_default();
    if u.content_encoding.as_deref().is_some_and(|e| !e.is_empty()) {
        return Err(unsupported("an encoded body"));
    }
    let av = api_version.as_str();
    Ok(match (av, kind.as_str()) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let m = authorization::v1::SelfSubjectAccessReview::decode(&raw[..]).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            let spec = access_spec(
                s.resource_attributes.as_ref(),
                s.non_resource_attributes.as_ref(),
            );
            obj(av, &kind, m.metadata.as_ref(), vec![("spec", spec)])
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            let m = authorization::v1::SubjectAccessReview::decode(&raw[..]).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            let mut spec = access_spec(
                s.resource_attributes.as_ref(),
                s.non_resource_attributes.as_ref(),
            );
            spec["user"] = json!(s.user);
            spec["groups"] = json!(s.groups);
            spec["uid"] = json!(s.uid);
            obj(av, &kind, m.metadata.as_ref(), vec![("spec", spec)])
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            let m = authorization::v1::SelfSubjectRulesReview::decode(&raw[..]).map_err(bad)?;
            let ns = m.spec.and_then(|s| s.namespace).unwrap_or_default();
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![("spec", json!({"namespace": ns}))],
            )
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            let m = authentication::v1::SelfSubjectReview::decode(&raw[..]).map_err(bad)?;
            obj(av, &kind, m.metadata.as_ref(), vec![])
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let m = authentication::v1::TokenRequest::decode(&raw[..]).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            let bound = s.bound_object_ref.map(|b| {
                json!({"kind": b.kind, "apiVersion": b.api_version, "name": b.name, "uid": b.u_id})
            });
            let spec = json!({
                "audiences": s.audiences,
                "expirationSeconds": s.expiration_seconds,
                "boundObjectRef": bound,
            });
            obj(av, &kind, m.metadata.as_ref(), vec![("spec", spec)])
        }
        ("v1", "Namespace") => {
            let m = core::v1::Namespace::decode(&raw[..]).map_err(bad)?;
            obj(av, &kind, m.metadata.as_ref(), vec![])
        }
        ("v1", "ServiceAccount") => {
            let m = core::v1::ServiceAccount::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![(
                    "automountServiceAccountToken",
                    json!(m.automount_service_account_token),
                )],
            )
        }
        ("v1", "ConfigMap") => {
            let m = core::v1::ConfigMap::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![
                    ("data", map(&m.data)),
                    ("binaryData", b64_map(&m.binary_data)),
                    ("immutable", json!(m.immutable)),
                ],
            )
        }
        ("v1", "Secret") => {
            let m = core::v1::Secret::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![
                    ("type", json!(m.r#type)),
                    ("data", b64_map(&m.data)),
                    ("stringData", map(&m.string_data)),
                    ("immutable", json!(m.immutable)),
                ],
            )
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let m = rbac::v1::Role::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![("rules", rules(&m.rules))],
            )
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let m = rbac::v1::ClusterRole::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                vec![("rules", rules(&m.rules))],
            )
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let m = rbac::v1::RoleBinding::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                binding(m.role_ref.as_ref(), &m.subjects),
            )
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let m = rbac::v1::ClusterRoleBinding::decode(&raw[..]).map_err(bad)?;
            obj(
                av,
                &kind,
                m.metadata.as_ref(),
                binding(m.role_ref.as_ref(), &m.subjects),
            )
        }
        _ => return Err(unsupported(&format!("{kind} ({api_version})"))),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn what_kubectl_auth_and_create_send_decodes_to_its_json_form() {
        let ssar = authorization::v1::SelfSubjectAccessReview {
            spec: Some(authorization::v1::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authorization::v1::ResourceAttributes {
                    namespace: Some("dev".into()),
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            ssar.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "dev", "verb": "list", "resource": "pods"}}})
        );
        let rb = rbac::v1::RoleBinding {
            metadata: Some(ObjectMeta {
                name: Some("alice-view".into()),
                ..Default::default()
            }),
            role_ref: Some(rbac::v1::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("view".into()),
            }),
            subjects: vec![rbac::v1::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("alice".into()),
                namespace: None,
            }],
        };
        let v = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            rb.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(v["roleRef"]["name"], "view");
        assert_eq!(
            v["subjects"][0],
            json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"})
        );
        let secret = core::v1::Secret {
            data: [("k".to_string(), b"v".to_vec())].into_iter().collect(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "dg==");
        // What is not decoded yet is refused with 415; garbage with 400.
        let e = decode(&envelope("apps/v1", "Deployment", vec![])).unwrap_err();
        assert_eq!(e.code, 415, "{}", e.message);
        assert!(
            e.message
                .contains("Deployment (apps/v1) is not decoded yet"),
            "{}",
            e.message
        );
        assert_eq!(decode(b"k8s\0\xff\xff").unwrap_err().code, 400);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
    }
}
