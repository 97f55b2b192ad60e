//! Request bodies into objects: JSON or YAML, checked against the kind's typed schema
//! (`k8s-openapi`), with unknown fields reported per the client's `fieldValidation`.

use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use k8s_openapi::api::{
    apps, authentication, authorization, batch, coordination, core, discovery, node, rbac,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// What to do with fields the schema does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn.
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// From the `fieldValidation` query parameter (Kubernetes' default is Warn).
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// Decode a request body by its content type.
pub fn decode(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let v: Value = match ct {
        ""
        | "application/json"
        | "*/*"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?,
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" => {
            serde_yaml::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request could not be decoded as YAML: {e}"
                ))
            })?
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body)?,
        other => return Err(ApiError::unsupported_media(other)),
    };
    Ok(v)
}

fn roundtrip<T: DeserializeOwned + Serialize>(res: &Resource, obj: &Value) -> ApiResult<Value> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {at}{inner}",
            kind = res.kind,
            v = res.version,
            at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            },
            inner = e.inner()
        ))
    })?;
    serde_json::to_value(typed).map_err(ApiError::internal)
}

/// Check `obj` against the kind's schema; returns the object as the schema keeps it
/// (unknown fields dropped) and the warnings to send.
pub fn typed(res: &Resource, obj: Value, fv: FieldValidation) -> ApiResult<(Value, Vec<String>)> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: expected an object",
            res.kind, res.version, res.kind
        )));
    }
    let out = match res.kind {
        "Namespace" => roundtrip::<core::v1::Namespace>(res, &obj)?,
        "Pod" => roundtrip::<core::v1::Pod>(res, &obj)?,
        "Node" => roundtrip::<core::v1::Node>(res, &obj)?,
        "Service" => roundtrip::<core::v1::Service>(res, &obj)?,
        "Endpoints" => roundtrip::<core::v1::Endpoints>(res, &obj)?,
        "EndpointSlice" => roundtrip::<discovery::v1::EndpointSlice>(res, &obj)?,
        "ConfigMap" => roundtrip::<core::v1::ConfigMap>(res, &obj)?,
        "Secret" => roundtrip::<core::v1::Secret>(res, &obj)?,
        "Event" => roundtrip::<core::v1::Event>(res, &obj)?,
        "Deployment" => roundtrip::<apps::v1::Deployment>(res, &obj)?,
        "ReplicaSet" => roundtrip::<apps::v1::ReplicaSet>(res, &obj)?,
        "DaemonSet" => roundtrip::<apps::v1::DaemonSet>(res, &obj)?,
        "Job" => roundtrip::<batch::v1::Job>(res, &obj)?,
        "RuntimeClass" => roundtrip::<node::v1::RuntimeClass>(res, &obj)?,
        "Lease" => roundtrip::<coordination::v1::Lease>(res, &obj)?,
        "ServiceAccount" => roundtrip::<core::v1::ServiceAccount>(res, &obj)?,
        "Role" => roundtrip::<rbac::v1::Role>(res, &obj)?,
        "ClusterRole" => roundtrip::<rbac::v1::ClusterRole>(res, &obj)?,
        "RoleBinding" => roundtrip::<rbac::v1::RoleBinding>(res, &obj)?,
        "ClusterRoleBinding" => roundtrip::<rbac::v1::ClusterRoleBinding>(res, &obj)?,
        "SelfSubjectAccessReview" => {
            roundtrip::<authorization::v1::SelfSubjectAccessReview>(res, &obj)?
        }
        "SelfSubjectRulesReview" => {
            roundtrip::<authorization::v1::SelfSubjectRulesReview>(res, &obj)?
        }
        "SubjectAccessReview" => roundtrip::<authorization::v1::SubjectAccessReview>(res, &obj)?,
        "LocalSubjectAccessReview" => {
            roundtrip::<authorization::v1::LocalSubjectAccessReview>(res, &obj)?
        }
        "SelfSubjectReview" => roundtrip::<authentication::v1::SelfSubjectReview>(res, &obj)?,
        "TokenReview" => roundtrip::<authentication::v1::TokenReview>(res, &obj)?,
        other => return Err(ApiError::internal(format!("no schema for {other}"))),
    };
    let mut unknown = Vec::new();
    unknown_fields(&obj, &out, "", &mut unknown);
    if unknown.is_empty() || fv == FieldValidation::Ignore {
        return Ok((out, Vec::new()));
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match fv {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        ))),
        _ => Ok((out, msgs)),
    }
}

/// Fields present (and not null) in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(kv) => unknown_fields(v, kv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_by_path() {
        let pod = by_kind("Pod").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "image": "i", "imagee": "typo"}], "bogus": 1}});
        let err = typed(pod, obj.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("unknown field \"spec.bogus\""),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("unknown field \"spec.containers[0].imagee\""),
            "{}",
            err.message
        );
        let (kept, warnings) = typed(pod, obj, FieldValidation::Warn).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(kept["spec"].get("bogus").is_none());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let pod = by_kind("Pod").unwrap();
        let obj = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}});
        let err = typed(pod, obj, FieldValidation::Strict).unwrap_err();
        assert!(
            err.message
                .contains("spec.containers[0].ports[0].containerPort"),
            "{}",
            err.message
        );
    }
}
