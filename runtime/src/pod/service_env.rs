//! The Service environment variables the kubelet gives every container: for each
//! Service of the pod's namespace with a ClusterIP (all of them unless the pod says
//! `enableServiceLinks: false`) and the `kubernetes` Service of `default`, the
//! `{NAME}_SERVICE_HOST`/`_PORT` pair and Docker's link variables (`{NAME}_PORT`,
//! `{NAME}_PORT_{port}_{PROTO}` with `_PROTO`, `_PORT`, `_ADDR`). Names are upper case
//! with `-` turned into `_`. A container's own variables of the same name win.

use k8s_openapi::api::core::v1::{Pod, Service};

/// The Services whose variables a pod of `namespace` gets, from `services` (of any
/// namespace): its namespace's ones when `links`, and `default/kubernetes` always.
pub fn visible<'a>(services: &'a [Service], namespace: &str, links: bool) -> Vec<&'a Service> {
    let mut out: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let (ns, name) = (
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default(),
            );
            (links && ns == namespace) || (ns == "default" && name == "kubernetes")
        })
        .filter(|s| {
            let ip = s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
            !matches!(ip, None | Some("") | Some("None"))
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // The pod's namespace's own `kubernetes` Service, if it has one, wins over default's.
    out.dedup_by(|b, a| a.metadata.name == b.metadata.name);
    out
}

/// Whether the pod wants its namespace's Services as variables (the default).
pub fn links(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
}

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// The variables of `services`, in order.
pub fn vars(services: &[&Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let Some(ip) = spec.cluster_ip.clone() else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        let n = env_name(name);
        out.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|s| !s.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{n}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in ports {
            let pr = proto(p);
            let prefix = format!("{n}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn services_become_the_kubelets_variables() {
        let all = vec![
            svc(
                "shop",
                "redis-primary",
                json!({"clusterIP": "10.96.0.11", "ports": [
                    {"name": "redis", "port": 6379},
                    {"name": "metrics", "port": 9121, "protocol": "UDP"}]}),
            ),
            svc(
                "shop",
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            svc("shop", "no-ports", json!({"clusterIP": "10.96.0.12"})),
            svc(
                "other",
                "elsewhere",
                json!({"clusterIP": "10.96.0.13", "ports": [{"port": 80}]}),
            ),
            svc(
                "default",
                "kubernetes",
                json!({"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}),
            ),
        ];
        let names = |v: &[&Service]| -> Vec<String> {
            v.iter().map(|s| s.metadata.name.clone().unwrap()).collect()
        };
        assert_eq!(
            names(&visible(&all, "shop", true)),
            ["kubernetes", "no-ports", "redis-primary"]
        );
        assert_eq!(names(&visible(&all, "shop", false)), ["kubernetes"]);
        let got = vars(&visible(&all, "shop", true)[2..]);
        let want: Vec<(String, String)> = [
            ("REDIS_PRIMARY_SERVICE_HOST", "10.96.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_REDIS", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.96.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.96.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.96.0.11"),
            ("REDIS_PRIMARY_PORT_9121_UDP", "udp://10.96.0.11:9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PROTO", "udp"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PORT", "9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_ADDR", "10.96.0.11"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        // A Service without ports gives nothing.
        assert!(vars(&visible(&all, "shop", true)[1..2]).is_empty());
    }
}
