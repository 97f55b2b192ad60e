//! Server-side defaults, as Kubernetes applies them, so clients (and `kubectl describe`)
//! see the same objects they would see from a Kubernetes apiserver.

use crate::resources::Resource;
use serde_json::{Map, Value, json};

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

/// Apply the defaults of `res` to `o`.
pub fn apply(res: &Resource, o: &mut Value) {
    match res.kind {
        "Pod" => pod_spec(&mut o["spec"], "Always"),
        "Deployment" => {
            let s = obj(&mut o["spec"]);
            default(s, "replicas", json!(1));
            default(s, "revisionHistoryLimit", json!(10));
            default(s, "progressDeadlineSeconds", json!(600));
            default(
                s,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            template(&mut o["spec"], "Always");
        }
        "ReplicaSet" => {
            default(obj(&mut o["spec"]), "replicas", json!(1));
            template(&mut o["spec"], "Always");
        }
        "DaemonSet" => {
            let s = obj(&mut o["spec"]);
            default(s, "revisionHistoryLimit", json!(10));
            default(
                s,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            template(&mut o["spec"], "Always");
        }
        "Job" => {
            let s = obj(&mut o["spec"]);
            default(s, "parallelism", json!(1));
            default(s, "completions", json!(1));
            default(s, "backoffLimit", json!(6));
            default(s, "completionMode", json!("NonIndexed"));
            default(s, "suspend", json!(false));
            template(&mut o["spec"], "Never");
        }
        "Service" => {
            let s = obj(&mut o["spec"]);
            default(s, "type", json!("ClusterIP"));
            default(s, "sessionAffinity", json!("None"));
            if s.get("sessionAffinity") == Some(&json!("ClientIP")) {
                let cfg = obj(s.entry("sessionAffinityConfig").or_insert(Value::Null));
                let ip = obj(cfg.entry("clientIP").or_insert(Value::Null));
                default(ip, "timeoutSeconds", json!(10800));
            }
            if s.get("type") != Some(&json!("ExternalName")) {
                default(s, "ipFamilies", json!(["IPv4"]));
                default(s, "ipFamilyPolicy", json!("SingleStack"));
                default(s, "internalTrafficPolicy", json!("Cluster"));
            }
            if let Some(Value::Array(ports)) = s.get_mut("ports") {
                for p in ports {
                    let pm = obj(p);
                    default(pm, "protocol", json!("TCP"));
                    if let Some(port) = pm.get("port").cloned() {
                        default(pm, "targetPort", port);
                    }
                }
            }
        }
        "Secret" => {
            let m = obj(o);
            default(m, "type", json!("Opaque"));
            // stringData is write-only: it lands in data, base64-encoded.
            if let Some(Value::Object(sd)) = m.remove("stringData") {
                use base64::Engine;
                let data = obj(m.entry("data").or_insert(Value::Null));
                for (k, v) in sd {
                    let raw = v.as_str().unwrap_or_default();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(raw)),
                    );
                }
            }
        }
        "Namespace" => {
            let name = o["metadata"]["name"].clone();
            obj(&mut o["metadata"]["labels"]).insert("kubernetes.io/metadata.name".into(), name);
            default(obj(&mut o["spec"]), "finalizers", json!(["kubernetes"]));
            default(obj(&mut o["status"]), "phase", json!("Active"));
        }
        _ => {}
    }
}

fn template(spec: &mut Value, restart: &str) {
    pod_spec(&mut spec["template"]["spec"], restart);
}

fn pod_spec(spec: &mut Value, restart: &str) {
    let s = obj(spec);
    default(s, "restartPolicy", json!(restart));
    default(s, "terminationGracePeriodSeconds", json!(30));
    default(s, "dnsPolicy", json!("ClusterFirst"));
    default(s, "securityContext", json!({}));
    default(s, "schedulerName", json!("default-scheduler"));
    default(s, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = s.get_mut(list) {
            for c in cs {
                container(c);
            }
        }
    }
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let m = obj(c);
    default(m, "terminationMessagePath", json!("/dev/termination-log"));
    default(m, "terminationMessagePolicy", json!("File"));
    // `:latest` or no tag means Always, as in Kubernetes.
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, t)| t.to_string());
    let always = !image.contains('@') && tag.as_deref().is_none_or(|t| t == "latest");
    default(
        m,
        "imagePullPolicy",
        json!(if always { "Always" } else { "IfNotPresent" }),
    );
    default(m, "resources", json!({}));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports {
            default(obj(p), "protocol", json!("TCP"));
        }
    }
    // Limits stand in for missing requests.
    let r = obj(m.entry("resources").or_insert(Value::Null));
    if let Some(Value::Object(limits)) = r.get("limits").cloned() {
        let req = obj(r.entry("requests").or_insert(Value::Null));
        for (k, v) in limits {
            req.entry(k).or_insert(v);
        }
    }
}

/// The QoS class of a pod spec (Kubernetes' rules, CPU and memory only).
pub fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let any_set = cs.iter().any(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
            || c["resources"]["limits"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
    });
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let l = &c["resources"]["limits"][*r];
            !l.is_null() && c["resources"]["requests"][*r] == *l
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;

    #[test]
    fn pod_defaults_and_qos() {
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}],
            "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}});
        apply(by_kind("Pod").unwrap(), &mut p);
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(qos_class(&p["spec"]), "Guaranteed");
        let mut q = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        apply(by_kind("Pod").unwrap(), &mut q);
        assert_eq!(q["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(qos_class(&q["spec"]), "BestEffort");
    }
}
