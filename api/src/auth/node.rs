//! Kubernetes' Node authorizer and NodeRestriction admission for node agents.
//!
//! A node reads every Node (it routes to their pods), its own Lease, the pods bound to
//! it (listing and watching only with `fieldSelector=spec.nodeName=<itself>`),
//! RuntimeClasses, Services and EndpointSlices (what its Service proxy serves), and the
//! Secrets,
//! ConfigMaps, PersistentVolumeClaims and ServiceAccounts that those pods reference;
//! nothing else. What a pod references is kept in a [`NodeGraph`]: the apiserver updates
//! it as it writes pods (so a pod bound a moment ago is never refused for the graph being
//! behind), and a watch of the store's pods keeps it right for writes made elsewhere.
//! Until that watch has listed every pod once, a miss looks through the namespace's pods.
//!
//! It writes what a kubelet writes: its own Node (with only the labels a kubelet may set)
//! and Lease, events, the status and deletion of its own pods, and tokens for the
//! ServiceAccounts of its own pods.

use super::{Attributes, NODE_LEASE_NAMESPACE, Restriction};
use crate::error::ApiError;
use crate::store::Store;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a pod can point a node at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    /// A Secret (volumes, projected sources, env, envFrom, imagePullSecrets).
    Secret,
    /// A ConfigMap (volumes, projected sources, env, envFrom).
    ConfigMap,
    /// A PersistentVolumeClaim (volumes).
    PersistentVolumeClaim,
    /// The pod's ServiceAccount.
    ServiceAccount,
}

impl RefKind {
    /// The kind a served resource's objects are, if pods can reference them.
    pub fn of_kind(kind: &str) -> Option<RefKind> {
        match kind {
            "Secret" => Some(RefKind::Secret),
            "ConfigMap" => Some(RefKind::ConfigMap),
            "PersistentVolumeClaim" => Some(RefKind::PersistentVolumeClaim),
            "ServiceAccount" => Some(RefKind::ServiceAccount),
            _ => None,
        }
    }
}

fn names_in(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().into_iter().flatten()
}

/// Everything a pod's spec references, by kind and name (in the pod's namespace).
pub fn pod_refs(pod: &Value) -> Vec<(RefKind, String)> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    let mut add = |k: RefKind, v: &Value| {
        if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
            out.push((k, n.to_string()));
        }
    };
    add(
        RefKind::ServiceAccount,
        spec.get("serviceAccountName")
            .filter(|v| v.is_string())
            .unwrap_or(&Value::String("default".into())),
    );
    for s in names_in(&spec["imagePullSecrets"]) {
        add(RefKind::Secret, &s["name"]);
    }
    for v in names_in(&spec["volumes"]) {
        add(RefKind::Secret, &v["secret"]["secretName"]);
        add(RefKind::ConfigMap, &v["configMap"]["name"]);
        add(
            RefKind::PersistentVolumeClaim,
            &v["persistentVolumeClaim"]["claimName"],
        );
        for src in names_in(&v["projected"]["sources"]) {
            add(RefKind::Secret, &src["secret"]["name"]);
            add(RefKind::ConfigMap, &src["configMap"]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in names_in(&spec[list]) {
            for e in names_in(&c["env"]) {
                add(RefKind::Secret, &e["valueFrom"]["secretKeyRef"]["name"]);
                add(
                    RefKind::ConfigMap,
                    &e["valueFrom"]["configMapKeyRef"]["name"],
                );
            }
            for e in names_in(&c["envFrom"]) {
                add(RefKind::Secret, &e["secretRef"]["name"]);
                add(RefKind::ConfigMap, &e["configMapRef"]["name"]);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether node `node`'s pods reference an object.
pub trait Graph: Send + Sync {
    /// Whether a pod bound to `node` in `ns` references `kind` `name`.
    fn reaches(&self, node: &str, kind: RefKind, ns: &str, name: &str) -> bool;
}

/// No pod references anything (tests of rules that do not involve the graph).
pub struct NoGraph;

impl Graph for NoGraph {
    fn reaches(&self, _: &str, _: RefKind, _: &str, _: &str) -> bool {
        false
    }
}

type Edge = (RefKind, String, String, String);

/// A bound pod as the graph keeps it: node, namespace, references.
type PodEntry = (String, String, Vec<(RefKind, String)>);

#[derive(Default)]
struct GraphInner {
    /// Pod store key → what it contributes.
    pods: HashMap<Arc<str>, PodEntry>,
    /// (kind, namespace, name, node) → how many pods make that edge.
    edges: HashMap<Edge, u32>,
    /// Pod store key → the store revision last applied, so an older event arriving late
    /// (the watch, after the write path) changes nothing.
    revisions: HashMap<Arc<str>, u64>,
}

impl GraphInner {
    fn remove(&mut self, key: &str) {
        if let Some((node, ns, refs)) = self.pods.remove(key) {
            for (k, n) in refs {
                let e = (k, ns.clone(), n, node.clone());
                if let Some(c) = self.edges.get_mut(&e) {
                    *c -= 1;
                    if *c == 0 {
                        self.edges.remove(&e);
                    }
                }
            }
        }
    }
}

/// The references of the pods bound to each node, kept from the store's pods.
#[derive(Default)]
pub struct NodeGraph {
    inner: RwLock<GraphInner>,
    store: RwLock<Option<Arc<dyn Store>>>,
    /// Whether every stored pod has been applied once (a miss is then an answer).
    synced: std::sync::atomic::AtomicBool,
}

impl NodeGraph {
    /// A graph that falls back to reading `store` when it has no edge.
    pub fn new(store: Arc<dyn Store>) -> NodeGraph {
        NodeGraph {
            inner: RwLock::default(),
            store: RwLock::new(Some(store)),
            synced: Default::default(),
        }
    }

    /// Record the pod stored at `key` as of store revision `revision` (`None`: deleted).
    /// Older than what was applied for that key: ignored.
    pub fn update(&self, key: &Arc<str>, pod: Option<&Value>, revision: u64) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.revisions.get(key).is_some_and(|r| *r > revision) {
            return;
        }
        g.revisions.insert(key.clone(), revision);
        g.remove(key);
        let Some(pod) = pod else { return };
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return;
        };
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let refs = pod_refs(pod);
        for (k, n) in &refs {
            *g.edges
                .entry((*k, ns.to_string(), n.clone(), node.to_string()))
                .or_default() += 1;
        }
        g.pods
            .insert(key.clone(), (node.to_string(), ns.to_string(), refs));
    }

    /// Keep the graph current from `store`'s pods until `stop` turns true.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        const PODS: &str = "core/pods/";
        loop {
            let Ok(list) = store.list(PODS, &Default::default()) else {
                return;
            };
            self.synced
                .store(false, std::sync::atomic::Ordering::SeqCst);
            {
                let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
                *g = GraphInner::default();
            }
            for kv in &list.items {
                let pod = serde_json::from_slice(&kv.value).ok();
                self.update(&kv.key, pod.as_ref(), kv.mod_revision);
            }
            self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
            let Ok(mut w) = store.watch(PODS, list.revision) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    ev = w.next() => match ev {
                        Ok(e) => {
                            let pod = match e.kind {
                                crate::store::EventKind::Put => serde_json::from_slice(&e.kv.value).ok(),
                                crate::store::EventKind::Delete => None,
                            };
                            self.update(&e.kv.key, pod.as_ref(), e.revision);
                            self.forget_if_gone(&e.kv.key, e.revision);
                        }
                        // Fell behind or the history is gone: list again.
                        Err(_) => break,
                    },
                }
            }
        }
    }

    /// A deleted pod's revision is needed only until the watch has passed its delete:
    /// nothing older can arrive after that.
    fn forget_if_gone(&self, key: &Arc<str>, revision: u64) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if !g.pods.contains_key(key) && g.revisions.get(key).is_some_and(|r| *r <= revision) {
            g.revisions.remove(key);
        }
    }

    fn scan(&self, node: &str, kind: RefKind, ns: &str, name: &str) -> bool {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(store) = store else { return false };
        let Ok(list) = store.list(&format!("core/pods/{ns}/"), &Default::default()) else {
            return false;
        };
        let needle = format!("\"nodeName\":\"{node}\"");
        list.items.iter().any(|kv| {
            kv.value
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
                && serde_json::from_slice::<Value>(&kv.value).is_ok_and(|p| {
                    p["spec"]["nodeName"] == node
                        && pod_refs(&p).iter().any(|(k, n)| *k == kind && n == name)
                })
        })
    }
}

impl Graph for NodeGraph {
    fn reaches(&self, node: &str, kind: RefKind, ns: &str, name: &str) -> bool {
        let hit = {
            let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
            g.edges
                .contains_key(&(kind, ns.to_string(), name.to_string(), node.to_string()))
        };
        hit || (!self.synced.load(std::sync::atomic::Ordering::SeqCst)
            && self.scan(node, kind, ns, name))
    }
}

/// The Node authorizer's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with what the handler must check on the object.
    Allow(Restriction),
    /// Not for the Node authorizer to allow; RBAC decides. The reason goes into the 403.
    NoOpinion(String),
}

fn no(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

fn allow() -> Decision {
    Decision::Allow(Restriction::None)
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// What node `node` may do, Kubernetes' Node authorizer and NodeRestriction together.
pub fn authorize(node: &str, a: &Attributes<'_>, graph: &dyn Graph) -> Decision {
    if a.path.is_some() {
        return no("");
    }
    let own = a.name == Some(node);
    let kind = a.kind();
    if let Some(k) = RefKind::of_kind(kind) {
        return referenced(node, a, k, graph);
    }
    match (kind, a.sub, a.verb) {
        // Every Node, as Kubernetes' `system:node` role reads them: a node routes to the
        // others' podCIDRs (and its Service proxy needs their addresses).
        ("Node", None, "get" | "list" | "watch") => allow(),
        ("Node", None, "create") => Decision::Allow(Restriction::CreateNamed(node.to_string())),
        ("Node", None | Some("status"), "update" | "patch") if own => {
            Decision::Allow(Restriction::NodeLabels(node.to_string()))
        }
        ("Node", None, "delete") if own => allow(),
        ("Node", ..) => no(format!(
            "node \"{node}\" may only modify its own Node object"
        )),
        ("Lease", None, verb) if a.group == "coordination.k8s.io" => {
            if a.ns != Some(NODE_LEASE_NAMESPACE) {
                return no(format!(
                    "can only access leases in the \"{NODE_LEASE_NAMESPACE}\" system namespace"
                ));
            }
            match verb {
                "create" => Decision::Allow(Restriction::CreateNamed(node.to_string())),
                "get" | "update" | "patch" | "delete" if own => allow(),
                "get" | "update" | "patch" | "delete" => {
                    no("can only access node lease with the same name as the requesting node")
                }
                _ => no(""),
            }
        }
        ("Event", None, "create" | "update" | "patch") => allow(),
        ("Pod", Some("log"), _) => no("a node does not read pod logs through the apiserver"),
        ("Pod", None, "get") => Decision::Allow(Restriction::PodBoundTo(node.to_string())),
        ("Pod", None, "list" | "watch") => {
            Decision::Allow(Restriction::NodeSelector(node.to_string()))
        }
        ("Pod", Some("status"), "update" | "patch") | ("Pod", None, "delete") => {
            Decision::Allow(Restriction::PodBoundTo(node.to_string()))
        }
        ("RuntimeClass", None, v) if is_read(v) => allow(),
        // What the node's Service proxy and DNS serve (kube-proxy's `system:node-proxier`).
        ("Service", None, v) if is_read(v) => allow(),
        ("EndpointSlice", None, v) if is_read(v) && a.group == "discovery.k8s.io" => allow(),
        _ => no(""),
    }
}

fn referenced(node: &str, a: &Attributes<'_>, k: RefKind, graph: &dyn Graph) -> Decision {
    let ns = a.ns.unwrap_or_default();
    if k == RefKind::ServiceAccount {
        return match (a.sub, a.verb, a.name) {
            (Some("token"), "create", Some(name)) if graph.reaches(node, k, ns, name) => {
                Decision::Allow(Restriction::TokenForPodOn(node.to_string()))
            }
            (Some("token"), "create", Some(_)) => no(format!(
                "no relationship found between node '{node}' and this object"
            )),
            (Some("token"), ..) => no("can only create tokens for individual service accounts"),
            _ => no("can only create token subresource of serviceaccount"),
        };
    }
    let reads = if k == RefKind::PersistentVolumeClaim {
        a.verb == "get"
    } else {
        is_read(a.verb)
    };
    if !reads {
        return no(if k == RefKind::PersistentVolumeClaim {
            "can only get individual resources of this type"
        } else {
            "can only read resources of this type"
        });
    }
    if a.sub.is_some() {
        return no("cannot read subresource");
    }
    let Some(name) = a.name else {
        return no("No Object name found");
    };
    if graph.reaches(node, k, ns, name) {
        allow()
    } else {
        no(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }
}

/// Whether a kubelet may set label `key` on its own Node (NodeRestriction).
pub fn kubelet_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if under("node-restriction.kubernetes.io") {
        return false;
    }
    if !(under("kubernetes.io") || under("k8s.io")) {
        return true;
    }
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
    ];
    KUBELET_LABELS.contains(&key) || under("kubelet.kubernetes.io") || under("node.kubernetes.io")
}

/// NodeRestriction on a node's write of its own Node: on create (`old` none) every label
/// must be one a kubelet may set; on update, every added, removed or changed one.
pub fn check_node_labels(node: &str, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let labels = |v: Option<&Value>| -> Vec<(String, Value)> {
        v.and_then(|o| o["metadata"]["labels"].as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let after = labels(Some(new));
    let mut touched: Vec<String> = match old {
        None => after.iter().map(|(k, _)| k.clone()).collect(),
        Some(_) => {
            let before = labels(old);
            let mut keys: Vec<String> = Vec::new();
            for (k, v) in &after {
                if !before.iter().any(|(bk, bv)| bk == k && bv == v) {
                    keys.push(k.clone());
                }
            }
            for (k, _) in &before {
                if !after.iter().any(|(ak, _)| ak == k) {
                    keys.push(k.clone());
                }
            }
            keys
        }
    };
    touched.retain(|k| !kubelet_may_set(k));
    touched.sort();
    touched.dedup();
    if touched.is_empty() {
        return Ok(());
    }
    let what = match old {
        None => format!(
            "node \"{node}\" is not allowed to set the following labels: {}",
            touched.join(", ")
        ),
        Some(_) => format!("is not allowed to modify labels: {}", touched.join(", ")),
    };
    Err(ApiError::forbidden(format!(
        "nodes \"{node}\" is forbidden: {what}"
    )))
}

/// NodeRestriction: a node may not change its own taints (the admin's way of keeping
/// pods off it), nor set a new `configSource`.
pub fn check_node_taints(node: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let taints = |v: &Value| {
        v["spec"]["taints"]
            .as_array()
            .filter(|a| !a.is_empty())
            .cloned()
    };
    if taints(old) != taints(new) {
        return Err(ApiError::forbidden(format!(
            "nodes \"{node}\" is forbidden: node \"{node}\" is not allowed to modify taints"
        )));
    }
    let source = &new["spec"]["configSource"];
    if old["spec"]["configSource"] != *source && !source.is_null() {
        return Err(ApiError::forbidden(format!(
            "nodes \"{node}\" is forbidden: node \"{node}\" is not allowed to update configSource to a new non-nil configSource"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_references_what_its_spec_names() {
        let pod = json!({"spec": {
            "serviceAccountName": "runner",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "p-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}, {"serviceAccountToken": {"path": "token"}}]}},
                {"name": "e", "emptyDir": {}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                {"name": "C", "value": "plain"},
            ], "envFrom": [{"secretRef": {"name": "from-secret"}}]}],
        }});
        let got = pod_refs(&pod);
        let want: Vec<(RefKind, String)> = [
            (RefKind::Secret, "env-secret"),
            (RefKind::Secret, "from-secret"),
            (RefKind::Secret, "p-secret"),
            (RefKind::Secret, "pull"),
            (RefKind::Secret, "vol-secret"),
            (RefKind::ConfigMap, "env-cm"),
            (RefKind::ConfigMap, "init-cm"),
            (RefKind::ConfigMap, "kube-root-ca.crt"),
            (RefKind::ConfigMap, "vol-cm"),
            (RefKind::PersistentVolumeClaim, "data"),
            (RefKind::ServiceAccount, "runner"),
        ]
        .into_iter()
        .map(|(k, n)| (k, n.to_string()))
        .collect();
        assert_eq!(got, want);
        // No serviceAccountName means "default".
        assert_eq!(
            pod_refs(&json!({"spec": {}})),
            vec![(RefKind::ServiceAccount, "default".to_string())]
        );
    }

    #[test]
    fn the_graph_follows_binding_moves_and_deletes() {
        let g = NodeGraph::default();
        let key: Arc<str> = Arc::from("core/pods/ns/p");
        let pod = |node: &str| {
            json!({"metadata": {"namespace": "ns", "name": "p"}, "spec": {"nodeName": node,
                "volumes": [{"name": "s", "secret": {"secretName": "db"}}]}})
        };
        assert!(!g.reaches("a", RefKind::Secret, "ns", "db"));
        g.update(&key, Some(&json!({"metadata": {"namespace": "ns"}, "spec": {"volumes": [{"name": "s", "secret": {"secretName": "db"}}]}})), 1);
        assert!(
            !g.reaches("a", RefKind::Secret, "ns", "db"),
            "unbound pods reach no node"
        );
        g.update(&key, Some(&pod("a")), 2);
        assert!(g.reaches("a", RefKind::Secret, "ns", "db"));
        assert!(!g.reaches("b", RefKind::Secret, "ns", "db"));
        assert!(!g.reaches("a", RefKind::Secret, "other", "db"));
        assert!(!g.reaches("a", RefKind::ConfigMap, "ns", "db"));
        let twin: Arc<str> = Arc::from("core/pods/ns/q");
        g.update(&twin, Some(&pod("a")), 3);
        // The watch delivering the unbound pod late changes nothing.
        g.update(
            &key,
            Some(&json!({"metadata": {"namespace": "ns"}, "spec": {}})),
            1,
        );
        assert!(g.reaches("a", RefKind::Secret, "ns", "db"));
        g.update(&key, None, 4);
        assert!(
            g.reaches("a", RefKind::Secret, "ns", "db"),
            "the twin still holds the edge"
        );
        g.update(&twin, None, 5);
        assert!(!g.reaches("a", RefKind::Secret, "ns", "db"));
    }

    #[test]
    fn kubelet_labels_follow_node_restriction() {
        for (key, ok) in [
            ("zone", true),
            ("example.com/rack", true),
            ("runtime.skiff.dev/wasm", true),
            ("kubernetes.io/hostname", true),
            ("topology.kubernetes.io/zone", true),
            ("node.kubernetes.io/instance-type", true),
            ("node.kubernetes.io/anything", true),
            ("x.kubelet.kubernetes.io/y", true),
            ("node-role.kubernetes.io/worker", false),
            ("node-restriction.kubernetes.io/pool", false),
            ("a.node-restriction.kubernetes.io/pool", false),
            ("beta.kubernetes.io/fluentd", false),
            ("example.k8s.io/x", false),
        ] {
            assert_eq!(kubelet_may_set(key), ok, "{key}");
        }
        let node = |labels: Value| json!({"metadata": {"name": "n1", "labels": labels}});
        let e = check_node_labels(
            "n1",
            None,
            &node(json!({"node-role.kubernetes.io/worker": "", "zone": "a"})),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-role.kubernetes.io/worker"
        );
        let old = node(json!({"node-restriction.kubernetes.io/pool": "a", "zone": "a"}));
        // Keeping a restricted label an admin set is fine; changing or removing it is not.
        assert!(
            check_node_labels(
                "n1",
                Some(&old),
                &node(json!({"node-restriction.kubernetes.io/pool": "a", "zone": "b"}))
            )
            .is_ok()
        );
        let e = check_node_labels("n1", Some(&old), &node(json!({"zone": "a"}))).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/pool"
        );
        let tainted = json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}});
        let e = check_node_taints("n1", &tainted, &json!({"spec": {"taints": []}})).unwrap_err();
        assert!(
            e.message.ends_with("is not allowed to modify taints"),
            "{}",
            e.message
        );
        assert!(check_node_taints("n1", &tainted, &tainted).is_ok());
        assert!(
            check_node_taints("n1", &json!({"spec": {}}), &json!({"spec": {"taints": []}})).is_ok()
        );
    }
}
