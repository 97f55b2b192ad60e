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

/// Pod Security admission (the `PodSecurity` plugin): pods are checked against their
/// namespace's `pod-security.kubernetes.io/` levels, enforce refusing, warn answering with
/// a `Warning` header, audit noting it in the audit log; workload templates are warned and
/// audited, never refused; namespaces' labels are validated, and tightening a namespace's
/// enforce level warns about the pods already there.
pub mod pod_security {
    use super::super::Api;
    use crate::error::{ApiError, ApiResult};
    use crate::podsecurity::{self as pss, Defaults, Level, LevelVersion, Policy};
    use crate::resources::{Resource, by_kind};
    use serde_json::{Value, json};

    fn privileged() -> LevelVersion {
        LevelVersion {
            level: Level::Privileged,
            version: "latest".into(),
        }
    }

    /// Unlabelled namespaces are privileged, as Kubernetes' default configuration; new
    /// namespaces get the server's default level as a label when they are created.
    fn defaults() -> Defaults {
        Defaults {
            enforce: privileged(),
            audit: privileged(),
            warn: privileged(),
        }
    }

    fn namespace_policy(api: &Api, ns: &str) -> Policy {
        let labels = by_kind("Namespace")
            .and_then(|r| api.store.get(&r.key(None, ns)))
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .map(|o| o["metadata"]["labels"].clone())
            .unwrap_or(Value::Null);
        pss::policy(&labels, &defaults())
    }

    fn would(lv: &LevelVersion, v: &[(String, String)]) -> String {
        format!("would violate PodSecurity \"{lv}\": {}", pss::details(v))
    }

    impl Api {
        /// Check a pod about to be written in `ns` (`old`: the stored pod of an update).
        /// `Err` is the 403 of the enforce level; `Ok` holds the warnings.
        pub(in crate::apiserver) fn admit_pod_security(
            &self,
            ns: &str,
            pod: &Value,
            old: Option<&Value>,
        ) -> ApiResult<Vec<String>> {
            if let Some(old) = old
                && !pss::significant_update(&old["spec"], &pod["spec"])
            {
                return Ok(Vec::new());
            }
            let p = namespace_policy(self, ns);
            let (md, spec) = (&pod["metadata"], &pod["spec"]);
            let enforce = pss::check(&p.enforce, md, spec);
            let audit = pss::check(&p.audit, md, spec);
            if !audit.is_empty() {
                crate::audit::note(
                    "pod-security.kubernetes.io/audit-violations",
                    &would(&p.audit, &audit),
                );
            }
            crate::audit::note(
                "pod-security.kubernetes.io/enforce-policy",
                &p.enforce.to_string(),
            );
            if !enforce.is_empty() {
                let name = md["name"].as_str().unwrap_or_default();
                let subject = if name.is_empty() {
                    "pods".to_string()
                } else {
                    format!("pods \"{name}\"")
                };
                let mut e = ApiError::forbidden(format!(
                    "{subject} is forbidden: violates PodSecurity \"{}\": {}",
                    p.enforce,
                    pss::details(&enforce)
                ));
                e.details = Some(json!({"name": name, "kind": "pods"}));
                return Err(e);
            }
            let warn = pss::check(&p.warn, md, spec);
            Ok(if warn.is_empty() {
                Vec::new()
            } else {
                vec![would(&p.warn, &warn)]
            })
        }

        /// Pod Security for an object of `res` being written in `ns`: pods checked, workload
        /// templates warned; other kinds pass. Returns the warnings.
        pub(in crate::apiserver) fn admit_security(
            &self,
            res: &Resource,
            ns: Option<&str>,
            obj: &Value,
            old: Option<&Value>,
        ) -> ApiResult<Vec<String>> {
            let ns = ns.unwrap_or("default");
            match res.kind {
                "Pod" => self.admit_pod_security(ns, obj, old),
                _ if res.namespaced => Ok(self.admit_template_security(res, ns, obj)),
                _ => Ok(Vec::new()),
            }
        }

        /// The level new namespaces are labelled with.
        pub fn pod_security_default(&self) -> Level {
            self.pod_security
                .get()
                .copied()
                .unwrap_or(Level::Privileged)
        }

        /// Label new namespaces with enforce level `level` (`--pod-security-default`).
        pub fn set_pod_security_default(&self, level: Level) {
            let _ = self.pod_security.set(level);
        }

        /// Warn and audit a workload's pod template (never refused).
        pub(in crate::apiserver) fn admit_template_security(
            &self,
            res: &Resource,
            ns: &str,
            obj: &Value,
        ) -> Vec<String> {
            let Some((md, spec)) = pss::template_of(res.kind, obj) else {
                return Vec::new();
            };
            let p = namespace_policy(self, ns);
            let audit = pss::check(&p.audit, md, spec);
            if !audit.is_empty() {
                crate::audit::note(
                    "pod-security.kubernetes.io/audit-violations",
                    &would(&p.audit, &audit),
                );
            }
            let warn = pss::check(&p.warn, md, spec);
            if warn.is_empty() {
                Vec::new()
            } else {
                vec![would(&p.warn, &warn)]
            }
        }

        /// A namespace about to be written: its Pod Security labels must parse; a new one
        /// without an enforce label gets `default` (the server's `--pod-security-default`);
        /// an update that tightens enforce warns about the pods that would now be refused.
        pub(in crate::apiserver) fn admit_namespace_security(
            &self,
            ns_obj: &mut Value,
            old: Option<&Value>,
            default: Level,
        ) -> ApiResult<Vec<String>> {
            let name = ns_obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let labels = ns_obj["metadata"]["labels"].clone();
            let errs = pss::label_errors(&labels);
            let old_errs = old.map(|o| pss::label_errors(&o["metadata"]["labels"]));
            let res = by_kind("Namespace").ok_or_else(|| ApiError::internal("no namespaces"))?;
            if !errs.is_empty() && old_errs.as_ref() != Some(&errs) {
                return Err(ApiError::invalid(res, &name, &errs));
            }
            let key = format!("{}enforce", pss::LABEL_PREFIX);
            if old.is_none() && labels[&key].is_null() && default != Level::Privileged {
                let lv = LevelVersion {
                    level: default,
                    version: "latest".into(),
                };
                let level = lv.to_string();
                let level = level.split(':').next().unwrap_or_default().to_string();
                if !ns_obj["metadata"]["labels"].is_object() {
                    ns_obj["metadata"]["labels"] = json!({});
                }
                ns_obj["metadata"]["labels"][&key] = json!(level);
                return Ok(Vec::new());
            }
            let Some(old) = old else {
                return Ok(Vec::new());
            };
            let before = pss::policy(&old["metadata"]["labels"], &defaults()).enforce;
            let after = pss::policy(&ns_obj["metadata"]["labels"], &defaults()).enforce;
            if !pss::enforce_tightened(&before, &after) {
                return Ok(Vec::new());
            }
            let pods = by_kind("Pod").ok_or_else(|| ApiError::internal("no pods"))?;
            let list = self
                .store
                .list(&pods.ns_prefix(Some(&name)), &Default::default())
                .map_err(|e| ApiError::from_store(e, pods, ""))?;
            let checked: Vec<(String, Vec<(String, String)>)> = list
                .items
                .iter()
                .take(3000)
                .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .map(|p| {
                    let v = pss::check(&after, &p["metadata"], &p["spec"]);
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        v,
                    )
                })
                .collect();
            let mut out = Vec::new();
            if list.items.len() > 3000 {
                out.push(format!(
                    "new PodSecurity enforce level only checked against the first 3000 of {} existing pods",
                    list.items.len()
                ));
            }
            out.extend(pss::existing_pod_warnings(&name, &after, &checked));
            Ok(out)
        }
    }
}
