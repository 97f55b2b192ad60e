//! A container's environment, resolved as the kubelet does: literal values with
//! `$(VAR)` references, ConfigMap and Secret keys, the downward API, resource fields,
//! and `envFrom`.

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use std::collections::BTreeMap;

/// Where a container's configuration objects come from (the API, or a test table).
pub trait Objects: Send + Sync {
    /// A ConfigMap, if it exists.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<ConfigMap>, String>> + Send;
    /// A Secret, if it exists.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<Secret>, String>> + Send;
    /// The Services a pod of `namespace` may see as variables: the namespace's and
    /// `default`'s (see [`super::service_env`]).
    fn services(
        &self,
        namespace: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Service>, String>> + Send {
        let _ = namespace;
        async { Ok(Vec::new()) }
    }
    /// A token of ServiceAccount `namespace/name` bound to `pod` (name and uid), for
    /// `audience` (none: the apiserver's) and `seconds`; with when it expires.
    fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        pod: (&str, &str),
        audience: Option<&str>,
        seconds: i64,
    ) -> impl std::future::Future<Output = Result<(String, jiff::Timestamp), String>> + Send {
        let _ = (namespace, name, pod, audience, seconds);
        async { Err("no ServiceAccount tokens here".to_string()) }
    }
}

/// Why the environment (or a volume) could not be built: the container waits with
/// reason `CreateContainerConfigError` and this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in s.data.iter().flatten() {
        out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Expand `$(NAME)` from the variables defined so far; `$$` escapes; unknown references
/// stay as written (Kubernetes' rules).
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The downward API value of `path` (`metadata.name`, `metadata.labels['k']`, ...).
pub fn field_ref(pod: &Pod, path: &str, host_ip: &str) -> Result<String, ConfigError> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels['", &md.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &md.annotations) {
        return Ok(v);
    }
    let status = pod.status.as_ref();
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()
        }
        other => return Err(ConfigError(format!("unsupported fieldRef path {other:?}"))),
    })
}

/// The value of a resourceFieldRef (`limits.cpu`, `requests.memory`, ...) with its divisor.
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpus: u32,
    node_memory: u64,
) -> Result<String, ConfigError> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {resource:?}")))?;
    let res = c.resources.as_ref();
    let list = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(ConfigError(format!(
                "unsupported resourceFieldRef {resource:?}"
            )));
        }
    };
    let parse = |s: &str| skiff_api::validation::parse_quantity(s).map(|q| q.value());
    let value = match list.and_then(|l| l.get(name)) {
        Some(q) => parse(&q.0).ok_or_else(|| ConfigError(format!("bad quantity {:?}", q.0)))?,
        // An unset limit reads as the node's allocatable, as in Kubernetes.
        None if kind == "limits" && name == "cpu" => f64::from(node_cpus),
        None if kind == "limits" && name == "memory" => node_memory as f64,
        None => 0.0,
    };
    let div = match divisor {
        Some(d) if !d.is_empty() => parse(d).filter(|v| *v > 0.0).unwrap_or(1.0),
        _ => 1.0,
    };
    // Kubernetes rounds up to the divisor.
    Ok(((value / div).ceil() as i64).to_string())
}

/// Node facts some environment values need.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// The node's address.
    pub host_ip: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
}

async fn config_map_data(
    objects: &impl Objects,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    match objects.config_map(ns, name).await.map_err(ConfigError)? {
        Some(cm) => Ok(Some(cm.data.unwrap_or_default())),
        None if optional => Ok(None),
        None => Err(ConfigError(format!("configmap \"{name}\" not found"))),
    }
}

async fn secret_map(
    objects: &impl Objects,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    match objects.secret(ns, name).await.map_err(ConfigError)? {
        Some(s) => Ok(Some(secret_data(&s))),
        None if optional => Ok(None),
        None => Err(ConfigError(format!("secret \"{name}\" not found"))),
    }
}

/// Resolve a container's environment, in Kubernetes' order: the Service variables, then
/// `envFrom`, then `env` (later entries override earlier ones of the same name). The
/// Services are read as the container starts; if the API cannot be reached, it starts
/// without their variables rather than not at all.
pub async fn resolve(
    pod: &Pod,
    c: &Container,
    objects: &impl Objects,
    node: &NodeFacts,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: Vec<(String, String)> = match objects.services(ns).await {
        Ok(all) => {
            let links = super::service_env::links(pod);
            super::service_env::vars(&super::service_env::visible(&all, ns, links))
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, error = %e, "no Service variables: the Services could not be read");
            Vec::new()
        }
    };
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(x, _)| *x != k);
        vars.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            config_map_data(objects, ns, &r.name, r.optional.unwrap_or(false)).await?
        } else if let Some(r) = &from.secret_ref {
            secret_map(objects, ns, &r.name, r.optional.unwrap_or(false)).await?
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            set(&mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or_default(), &vars),
            Some(src) => {
                let keyed = if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let data = config_map_data(objects, ns, &r.name, optional).await?;
                    Some((data, &r.key, "ConfigMap", &r.name, optional))
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let data = secret_map(objects, ns, &r.name, optional).await?;
                    Some((data, &r.key, "Secret", &r.name, optional))
                } else {
                    None
                };
                if let Some((data, key, kind, name, optional)) = keyed {
                    // An optional source or key that is missing leaves the variable unset.
                    match data.as_ref().map(|d| d.get(key)) {
                        None | Some(None) if optional => continue,
                        Some(Some(v)) => v.clone(),
                        _ => {
                            return Err(ConfigError(format!(
                                "couldn't find key {key} in {kind} {ns}/{name}"
                            )));
                        }
                    }
                } else if let Some(f) = &src.field_ref {
                    field_ref(pod, &f.field_path, &node.host_ip)?
                } else if let Some(r) = &src.resource_field_ref {
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(n) => pod
                            .spec
                            .iter()
                            .flat_map(|s| s.containers.iter())
                            .find(|x| x.name == n)
                            .ok_or_else(|| ConfigError(format!("container {n:?} not found")))?,
                        None => c,
                    };
                    resource_field(
                        target,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        node.cpus,
                        node.memory,
                    )?
                } else {
                    String::new()
                }
            }
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Table {
        cms: HashMap<String, ConfigMap>,
        secrets: HashMap<String, Secret>,
    }

    impl Objects for Table {
        async fn config_map(&self, _ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
            Ok(self.cms.get(name).cloned())
        }
        async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, String> {
            Ok(self.secrets.get(name).cloned())
        }
    }

    fn table() -> Table {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "cfg"}, "data": {"MODE": "fast", "LEVEL": "3"}}),
        )
        .unwrap_or_default();
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "creds"}, "data": {"PASSWORD": "czNjcjN0"}}),
        )
        .unwrap_or_default();
        Table {
            cms: HashMap::from([("cfg".into(), cm)]),
            secrets: HashMap::from([("creds".into(), secret)]),
        }
    }

    fn pod(container: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "edge-1", "containers": [container]}
        }))
        .unwrap_or_default();
        let c = p
            .spec
            .as_ref()
            .map(|s| s.containers[0].clone())
            .unwrap_or_default();
        (p, c)
    }

    #[tokio::test]
    async fn every_source_resolves_in_order() {
        let (p, c) = pod(json!({"name": "app",
        "resources": {"limits": {"memory": "64Mi"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "GREETING", "value": "hello"},
            {"name": "MSG", "value": "$(GREETING) world $$(GREETING) $(NOPE)"},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "GREETING", "value": "later wins"},
        ]}));
        let node = NodeFacts {
            host_ip: "10.0.0.5".into(),
            cpus: 2,
            memory: 1 << 30,
        };
        let env = resolve(&p, &c, &table(), &node).await.unwrap_or_default();
        let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_MODE"), Some("fast"));
        assert_eq!(get("CFG_LEVEL"), Some("3"));
        assert_eq!(get("MSG"), Some("hello world $(GREETING) $(NOPE)"));
        assert_eq!(get("MODE"), Some("fast"));
        assert_eq!(get("PASSWORD"), Some("s3cr3t"));
        assert_eq!(get("POD"), Some("web"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("NODE"), Some("edge-1"));
        assert_eq!(get("HOST"), Some("10.0.0.5"));
        assert_eq!(get("MEM_MI"), Some("64"));
        assert_eq!(get("GREETING"), Some("later wins"));
        assert_eq!(env.last().map(|(k, _)| k.as_str()), Some("GREETING"));
    }

    #[tokio::test]
    async fn missing_sources_are_config_errors_unless_optional() {
        let node = NodeFacts::default();
        let cases = [
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}),
                Some("configmap \"nope\" not found"),
            ),
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}),
                Some("couldn't find key k in ConfigMap shop/cfg"),
            ),
            (
                json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}),
                Some("secret \"nope\" not found"),
            ),
            (
                json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}}),
                None,
            ),
            (
                json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}),
                Some("unsupported fieldRef path \"spec.bogus\""),
            ),
        ];
        for (env, want) in cases {
            let (p, c) = pod(json!({"name": "app", "env": [env]}));
            let got = resolve(&p, &c, &table(), &node).await;
            match want {
                Some(msg) => assert_eq!(got, Err(ConfigError(msg.into()))),
                None => assert_eq!(got, Ok(vec![])),
            }
        }
    }
}
