//! The three patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes' strategic merge patch for the built-in kinds.
//!
//! Strategic merge differs from a merge patch in lists: lists of objects with a merge key
//! (containers by `name`, container ports by `containerPort`, ...) are merged element by
//! element instead of replaced, and the patch may carry directives: `$patch`
//! (`replace`/`delete`/`merge`), `$setElementOrder/<list>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>`.

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value};

/// Patch formats, by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchKind {
    /// From a request's content type.
    pub fn from_content_type(ct: &str) -> ApiResult<PatchKind> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media(
                "application/apply-patch+yaml (server-side apply is not implemented yet; use client-side apply)",
            )),
            other => Err(ApiError::unsupported_media(other)),
        }
    }
}

/// Apply `patch` to `target`.
pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> ApiResult<Value> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut out = target.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                ApiError::bad_request(format!("the JSON patch could not be decoded: {e}"))
            })?;
            let mut out = target.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::new_unprocessable(format!("the JSON patch could not be applied: {e}"))
            })?;
            Ok(out)
        }
        PatchKind::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            let mut out = target.clone();
            merge_object(&mut out, p)?;
            Ok(out)
        }
    }
}

impl ApiError {
    fn new_unprocessable(message: String) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: None,
        }
    }
}

/// The merge key of a list field, by its name (the built-in types' `patchMergeKey`).
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => {
            if sample.get("containerPort").is_some() {
                "containerPort"
            } else {
                "port"
            }
        }
        "hostAliases" => "ip",
        "conditions" | "addresses" => "type",
        "taints" => "key",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is merge (union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn merge_object(target: &mut Value, patch: &Map<String, Value>) -> ApiResult<()> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(strip_directives(p));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other:?}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), pv.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        match pv {
            Value::Object(po) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                merge_object(entry, po)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pa) => {
                let merged = merge_list(k, t.get(k), pa)?;
                t.insert(k.clone(), merged);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(&field), order.as_array()) {
            reorder(&field, list, order);
        }
    }
    Ok(())
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn merge_list(field: &str, current: Option<&Value>, patch: &[Value]) -> ApiResult<Value> {
    let current: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let rest: Vec<Value> = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(rest));
    }
    let sample = patch
        .first()
        .or(current.first())
        .cloned()
        .unwrap_or(Value::Null);
    let Some(key) = sample
        .is_object()
        .then(|| merge_key(field, &sample))
        .flatten()
    else {
        if merges_primitives(field) {
            let mut out = current;
            for p in patch {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
            return Ok(Value::Array(out));
        }
        return Ok(Value::Array(patch.to_vec()));
    };
    let mut out = current;
    for pe in patch {
        let Some(po) = pe.as_object() else {
            return Err(ApiError::bad_request(format!(
                "list {field} expects objects with merge key {key:?}"
            )));
        };
        let Some(kv) = po.get(key) else {
            return Err(ApiError::bad_request(format!(
                "map: {pe} does not contain declared merge key: {key}"
            )));
        };
        let pos = out.iter().position(|e| e.get(key) == Some(kv));
        if po.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                out.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => merge_object(&mut out[i], po)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                merge_object(&mut fresh, po)?;
                out.push(fresh);
            }
        }
    }
    Ok(Value::Array(out))
}

fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = order.first().and_then(|s| merge_key(field, s));
    let pos = |e: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == e.get(k),
            None => o == e,
        })
    };
    // Stable: listed elements in the given order, unlisted ones after, as they were.
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, e)| (pos(&e).unwrap_or(usize::MAX), i, e))
        .collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, e)| e));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        apply(PatchKind::Strategic, &target, &patch).unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let got = smp(
            t,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
        );
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}])
        );
    }

    #[test]
    fn directives_delete_order_and_null() {
        let t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]}, {"name": "b", "image": "y"}]}});
        let p = json!({"metadata": {"labels": {"a": null}},
            "spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "env": [{"name": "E", "$patch": "delete"}]}]}});
        let got = smp(t, p);
        assert_eq!(got["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(got["spec"]["containers"][0]["name"], "b");
        assert_eq!(got["spec"]["containers"][1]["env"], json!([]));
    }

    #[test]
    fn ports_merge_by_container_port_and_primitive_lists_replace() {
        let t = json!({"ports": [{"containerPort": 80, "name": "http"}], "args": ["a", "b"]});
        let got = smp(t, json!({"ports": [{"containerPort": 443}], "args": ["c"]}));
        assert_eq!(got["ports"].as_array().unwrap().len(), 2);
        assert_eq!(got["args"], json!(["c"]));
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let t = json!({"spec": {"replicas": 1}});
        let got = apply(
            PatchKind::Json,
            &t,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .unwrap();
        assert_eq!(got["spec"]["replicas"], 3);
        let bad = apply(
            PatchKind::Json,
            &t,
            &json!([{"op": "remove", "path": "/nope"}]),
        );
        assert_eq!(bad.unwrap_err().code, 422);
        let got = apply(PatchKind::Merge, &t, &json!({"spec": {"replicas": null}})).unwrap();
        assert_eq!(got["spec"], json!({}));
    }
}
