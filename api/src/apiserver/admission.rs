//! Admission of new pods: the ServiceAccount plugin (a pod runs as a ServiceAccount, and
//! gets its token, the cluster CA and its namespace mounted where client libraries look
//! for them), before validation.

use super::Api;
use crate::error::{ApiError, ApiResult};
use crate::resources::by_kind;
use serde_json::{Value, json};

/// Where client libraries look for the in-cluster credentials.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The projected volume Kubernetes' ServiceAccount admission adds (token for 3607 s,
/// the cluster CA from `kube-root-ca.crt`, the namespace).
pub fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

fn volume_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    let s: String = (0..5)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("kube-api-access-{s}")
}

/// Add the API access volume to `spec` and mount it in every container (and init
/// container) that has nothing at [`SA_MOUNT_PATH`]. Pure, for the table test.
pub fn mount_api_access(spec: &mut Value, volume: &str) {
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with("kube-api-access-"))
            .map(String::from)
    });
    let name = existing.clone().unwrap_or_else(|| volume.to_string());
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let has = c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH));
            if has {
                continue;
            }
            let mount = json!({"name": name, "readOnly": true, "mountPath": SA_MOUNT_PATH});
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
            mounted = true;
        }
    }
    if mounted && existing.is_none() {
        let v = api_access_volume(&name);
        match spec["volumes"].as_array_mut() {
            Some(vs) => vs.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
}

impl Api {
    /// The ServiceAccount plugin on a pod being created in `ns`: its ServiceAccount
    /// (default `default`) must exist, and unless it or the pod opts out
    /// (`automountServiceAccountToken: false`) it gets the API access volume. Returns
    /// warnings.
    pub(super) fn admit_service_account(
        &self,
        ns: &str,
        pod: &mut Value,
    ) -> ApiResult<Vec<String>> {
        let spec = &mut pod["spec"];
        if !spec.is_object() {
            return Ok(Vec::new());
        }
        let sa = spec["serviceAccountName"]
            .as_str()
            .or(spec["serviceAccount"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        spec["serviceAccountName"] = json!(sa);
        spec["serviceAccount"] = json!(sa);
        let sas =
            by_kind("ServiceAccount").ok_or_else(|| ApiError::internal("no serviceaccounts"))?;
        let stored: Option<Value> = self
            .store
            .get(&sas.key(Some(ns), &sa))
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let Some(stored) = stored else {
            if sa == "default" {
                // The ServiceAccount controller makes it; until then (or without
                // controllers) the pod runs without API credentials, and says so.
                return Ok(vec![format!(
                    "serviceaccount \"default\" does not exist yet in namespace \"{ns}\": the pod gets no API credentials"
                )]);
            }
            let name = pod["metadata"]["name"]
                .as_str()
                .or(pod["metadata"]["generateName"].as_str())
                .unwrap_or("Unknown");
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
            )));
        };
        let spec = &mut pod["spec"];
        let automount = spec["automountServiceAccountToken"]
            .as_bool()
            .or(stored["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if automount {
            mount_api_access(spec, &volume_name());
        }
        if spec["imagePullSecrets"]
            .as_array()
            .is_none_or(Vec::is_empty)
            && let Some(pull) = stored["imagePullSecrets"]
                .as_array()
                .filter(|p| !p.is_empty())
        {
            spec["imagePullSecrets"] = json!(pull);
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_the_api_access_mount_once() {
        let mut spec = json!({
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SA_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "own", "emptyDir": {}}],
        });
        mount_api_access(&mut spec, "kube-api-access-abcde");
        let mounts = |c: &Value| c["volumeMounts"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            mounts(&spec["initContainers"][0])[0]["name"],
            "kube-api-access-abcde"
        );
        assert_eq!(mounts(&spec["containers"][0]).len(), 2);
        assert_eq!(
            mounts(&spec["containers"][1]).len(),
            1,
            "its own mount stays"
        );
        assert_eq!(spec["volumes"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            spec["volumes"][2],
            api_access_volume("kube-api-access-abcde")
        );
        // Twice changes nothing more.
        let before = spec.clone();
        mount_api_access(&mut spec, "kube-api-access-zzzzz");
        assert_eq!(spec, before);
    }
}
