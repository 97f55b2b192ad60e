//! What the scheduler knows of Nodes and Pods, in the form the plugins check quickly.
//!
//! Kubernetes objects are translated once, when they arrive: quantities become integers
//! (millicores, bytes), labels become pairs of interned symbols, a Pod's RuntimeClass is
//! folded into its node selector, tolerations and overhead. The placement loop then only
//! compares integers.

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint as K8sTaint,
    Toleration as K8sToleration,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An interned string (a label key or value, an image name, an owner uid).
pub type Sym = u32;

/// Interns the strings the hot path compares, so a comparison is one integer test.
#[derive(Default, Debug)]
pub struct Interner {
    map: FxHashMap<Arc<str>, Sym>,
    names: Vec<Arc<str>>,
}

impl Interner {
    /// The symbol of `s`, adding it if new.
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&id) = self.map.get(s) {
            return id;
        }
        let id = self.names.len() as Sym;
        let a: Arc<str> = Arc::from(s);
        self.names.push(a.clone());
        self.map.insert(a, id);
        id
    }

    /// The symbol of `s`, if any node or pod ever used it.
    pub fn get(&self, s: &str) -> Option<Sym> {
        self.map.get(s).copied()
    }

    /// The string behind a symbol.
    pub fn name(&self, id: Sym) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }
}

/// CPU, memory and pod count: what a node offers and what pods ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Pods (a pod asks for one).
    pub pods: i64,
}

impl Resources {
    /// Component-wise sum.
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu + o.milli_cpu,
            memory: self.memory + o.memory,
            pods: self.pods + o.pods,
        }
    }

    /// Component-wise difference.
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu - o.milli_cpu,
            memory: self.memory - o.memory,
            pods: self.pods - o.pods,
        }
    }

    /// Component-wise maximum.
    pub fn max(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(o.milli_cpu),
            memory: self.memory.max(o.memory),
            pods: self.pods.max(o.pods),
        }
    }

    /// Read `cpu`, `memory` and `pods` from a Kubernetes resource list.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        let Some(list) = list else { return r };
        if let Some(q) = list.get("cpu") {
            r.milli_cpu = milli(q);
        }
        if let Some(q) = list.get("memory") {
            r.memory = units(q);
        }
        if let Some(q) = list.get("pods") {
            r.pods = units(q);
        }
        r
    }
}

/// A quantity in thousandths, rounded up as Kubernetes does for `MilliValue`.
pub fn milli(q: &Quantity) -> i64 {
    skiff_api::validation::parse_quantity(&q.0)
        .map(|v| (v.value() * 1000.0).ceil() as i64)
        .unwrap_or(0)
}

/// A quantity in whole units, rounded up as Kubernetes does for `Value`.
pub fn units(q: &Quantity) -> i64 {
    skiff_api::validation::parse_quantity(&q.0)
        .map(|v| v.value().ceil() as i64)
        .unwrap_or(0)
}

/// What Kubernetes assumes for scoring when a container asks for nothing: 0.1 CPU, 200 MB.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// See [`DEFAULT_MILLI_CPU`].
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Pods a node takes when it does not report `pods` in its allocatable.
pub const DEFAULT_MAX_PODS: i64 = 110;

/// A taint's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// New pods that do not tolerate it are not placed.
    NoSchedule,
    /// Placement avoids the node if it can.
    PreferNoSchedule,
    /// Like NoSchedule, and running pods are evicted.
    NoExecute,
}

impl Effect {
    fn parse(s: &str) -> Option<Effect> {
        match s {
            "NoSchedule" => Some(Effect::NoSchedule),
            "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
            "NoExecute" => Some(Effect::NoExecute),
            _ => None,
        }
    }
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// Effect.
    pub effect: Effect,
}

impl Taint {
    fn from_k8s(t: &K8sTaint) -> Option<Taint> {
        Some(Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: Effect::parse(&t.effect)?,
        })
    }
}

/// The taint a node that is not Ready is treated as carrying.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The taint a cordoned (`spec.unschedulable`) node is treated as carrying.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// A pod toleration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// Key; empty with `exists` tolerates every taint.
    pub key: String,
    /// `Exists` (any value) rather than `Equal`.
    pub exists: bool,
    /// Value for `Equal`.
    pub value: String,
    /// Effect; `None` tolerates every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    fn from_k8s(t: &K8sToleration) -> Toleration {
        Toleration {
            key: t.key.clone().unwrap_or_default(),
            exists: t.operator.as_deref() == Some("Exists"),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.as_deref().and_then(Effect::parse),
        }
    }

    /// Kubernetes' `ToleratesTaint`.
    pub fn tolerates(&self, key: &str, value: &str, effect: Effect) -> bool {
        if self.effect.is_some_and(|e| e != effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != key {
            return false;
        }
        if self.exists {
            return true;
        }
        // An empty key is only meaningful with Exists.
        !self.key.is_empty() && self.value == value
    }
}

/// Whether some toleration tolerates the taint.
pub fn tolerated(tols: &[Toleration], key: &str, value: &str, effect: Effect) -> bool {
    tols.iter().any(|t| t.tolerates(key, value, effect))
}

/// A host port a pod uses, as Kubernetes compares them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Host IP; empty or `0.0.0.0` means every address.
    pub ip: String,
    /// Port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot both be bound.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port
            && self.protocol == o.protocol
            && (wild(&self.ip) || wild(&o.ip) || self.ip == o.ip)
    }
}

/// A node as the plugins see it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Name.
    pub name: Arc<str>,
    /// Labels as interned (key, value) pairs, sorted by key; kept inline (no pointer to
    /// chase) for the usual handful of labels, since every filter pass reads them.
    pub labels: SmallVec<[(Sym, Sym); 8]>,
    /// `NoSchedule`/`NoExecute`/`PreferNoSchedule` taints.
    pub taints: Vec<Taint>,
    /// Ready condition is True.
    pub ready: bool,
    /// Cordoned.
    pub unschedulable: bool,
    /// What pods may use.
    pub allocatable: Resources,
    /// Sum of the requests of the pods placed here (bound or assumed).
    pub requested: Resources,
    /// Same with Kubernetes' non-zero defaults, for scoring.
    pub non_zero_requested: Resources,
    /// Host ports in use.
    pub ports: Vec<HostPort>,
    /// Artifacts the node reports in `status.images`: name → size in bytes.
    pub images: FxHashMap<Sym, i64>,
    /// Pods placed here per controlling owner.
    pub owners: FxHashMap<Sym, u32>,
}

impl NodeInfo {
    /// An empty node of this name (for tests and benchmarks).
    pub fn new(name: &str, allocatable: Resources) -> NodeInfo {
        NodeInfo {
            name: Arc::from(name),
            labels: SmallVec::new(),
            taints: Vec::new(),
            ready: true,
            unschedulable: false,
            allocatable,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            ports: Vec::new(),
            images: FxHashMap::default(),
            owners: FxHashMap::default(),
        }
    }

    /// The value of a label, by symbol.
    pub fn label(&self, key: Sym) -> Option<Sym> {
        self.labels
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| self.labels[i].1)
    }

    /// Set a label (used when building nodes by hand).
    pub fn set_label(&mut self, interner: &mut Interner, key: &str, value: &str) {
        let (k, v) = (interner.intern(key), interner.intern(value));
        match self.labels.binary_search_by_key(&k, |&(k, _)| k) {
            Ok(i) => self.labels[i].1 = v,
            Err(i) => self.labels.insert(i, (k, v)),
        }
    }

    /// Refresh everything that comes from the Node object, keeping what pods use.
    pub fn update_from(&mut self, node: &Node, interner: &mut Interner) {
        let meta = &node.metadata;
        let mut labels: SmallVec<[(Sym, Sym); 8]> = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (interner.intern(k), interner.intern(v)))
            .collect();
        labels.sort_unstable();
        self.labels = labels;
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter_map(Taint::from_k8s)
            .collect();
        let status = node.status.as_ref();
        self.ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        self.allocatable = Resources::from_list(alloc);
        if !alloc.is_some_and(|a| a.contains_key("pods")) {
            // The kubelet's default maxPods, for nodes registered without a pod count.
            self.allocatable.pods = DEFAULT_MAX_PODS;
        }
        self.images = FxHashMap::default();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            let size = img.size_bytes.unwrap_or(0);
            for n in img.names.iter().flatten() {
                self.images.insert(interner.intern(n), size);
            }
        }
    }

    /// Build from a Node object.
    pub fn from_node(node: &Node, interner: &mut Interner) -> NodeInfo {
        let mut n = NodeInfo::new(node.metadata.name.as_deref().unwrap_or_default(), {
            Resources::default()
        });
        n.update_from(node, interner);
        n
    }

    /// Account for a pod placed here.
    pub fn add(&mut self, u: &Usage) {
        self.requested = self.requested.plus(u.requests);
        self.non_zero_requested = self.non_zero_requested.plus(u.non_zero);
        self.ports.extend(u.ports.iter().cloned());
        if let Some(o) = u.owner {
            *self.owners.entry(o).or_default() += 1;
        }
    }

    /// Undo [`NodeInfo::add`].
    pub fn remove(&mut self, u: &Usage) {
        self.requested = self.requested.minus(u.requests);
        self.non_zero_requested = self.non_zero_requested.minus(u.non_zero);
        for p in &u.ports {
            if let Some(i) = self.ports.iter().position(|x| x == p) {
                self.ports.swap_remove(i);
            }
        }
        if let Some(o) = u.owner
            && let Some(c) = self.owners.get_mut(&o)
        {
            *c -= 1;
            if *c == 0 {
                self.owners.remove(&o);
            }
        }
    }
}

/// What a pod takes from the node it is placed on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests (with the pod itself counted in `pods`).
    pub requests: Resources,
    /// Requests with non-zero defaults, for scoring.
    pub non_zero: Resources,
    /// Host ports.
    pub ports: Vec<HostPort>,
    /// Controlling owner, interned.
    pub owner: Option<Sym>,
}

/// One requirement of a node selector term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Label key (or `metadata.name` for a field requirement).
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`.
    pub op: String,
    /// Values.
    pub values: Vec<String>,
}

/// A node selector term: every expression must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Term {
    /// Label requirements.
    pub labels: Vec<Requirement>,
    /// Field requirements (`metadata.name`).
    pub fields: Vec<Requirement>,
}

fn requirements(r: Option<&Vec<NodeSelectorRequirement>>) -> Vec<Requirement> {
    r.into_iter()
        .flatten()
        .map(|e| Requirement {
            key: e.key.clone(),
            op: e.operator.clone(),
            values: e.values.clone().unwrap_or_default(),
        })
        .collect()
}

impl Term {
    fn from_k8s(t: &NodeSelectorTerm) -> Term {
        Term {
            labels: requirements(t.match_expressions.as_ref()),
            fields: requirements(t.match_fields.as_ref()),
        }
    }
}

/// A pod as the scheduler sees it: everything placement needs, RuntimeClass included.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// `spec.priority` (higher goes first).
    pub priority: i32,
    /// Requests: containers, init containers the Kubernetes way, overhead; pods = 1.
    pub requests: Resources,
    /// Requests with non-zero defaults, for scoring.
    pub non_zero: Resources,
    /// `nodeSelector` merged with the RuntimeClass's `scheduling.nodeSelector`.
    pub node_selector: Vec<(String, String)>,
    /// Required node affinity: at least one term must match. Empty means none.
    pub required_terms: Vec<Term>,
    /// Preferred node affinity: weight and term.
    pub preferred_terms: Vec<(i32, Term)>,
    /// Tolerations, the RuntimeClass's appended.
    pub tolerations: Vec<Toleration>,
    /// Host ports.
    pub host_ports: Vec<HostPort>,
    /// Container images (normalized with `:latest` when untagged).
    pub images: Vec<String>,
    /// UID of the controlling owner.
    pub owner: Option<String>,
    /// The RuntimeClass name in effect (`oci` when the pod names none).
    pub runtime_class: String,
}

/// The RuntimeClass a pod without `runtimeClassName` runs under.
pub const DEFAULT_RUNTIME_CLASS: &str = "oci";

/// The label a node carries for each runtime it offers.
pub fn runtime_label(handler: &str) -> String {
    format!("runtime.skiff.dev/{handler}")
}

/// The built-in `oci` class, used when a pod names no class and `oci` was deleted.
fn builtin_default_class() -> RuntimeClass {
    RuntimeClass {
        handler: DEFAULT_RUNTIME_CLASS.into(),
        scheduling: Some(k8s_openapi::api::node::v1::Scheduling {
            node_selector: Some(BTreeMap::from([(
                runtime_label(DEFAULT_RUNTIME_CLASS),
                "true".into(),
            )])),
            tolerations: None,
        }),
        ..Default::default()
    }
}

/// Why a pod cannot be considered at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// Its RuntimeClass does not exist.
    #[error("pod's RuntimeClass \"{0}\" was not found")]
    RuntimeClassNotFound(String),
    /// Its spec is unusable.
    #[error("pod has no spec")]
    NoSpec,
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    let req = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let lim = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    // A limit stands in for a missing request, as Kubernetes' defaulting does.
    Resources {
        milli_cpu: if res
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key("cpu"))
        {
            req.milli_cpu
        } else {
            lim.milli_cpu
        },
        memory: if res
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key("memory"))
        {
            req.memory
        } else {
            lim.memory
        },
        pods: 0,
    }
}

fn non_zero(r: Resources) -> Resources {
    Resources {
        milli_cpu: if r.milli_cpu == 0 {
            DEFAULT_MILLI_CPU
        } else {
            r.milli_cpu
        },
        memory: if r.memory == 0 {
            DEFAULT_MEMORY
        } else {
            r.memory
        },
        pods: r.pods,
    }
}

/// The effective requests of a pod spec: containers, init containers and sidecars
/// combined as Kubernetes does, plus overhead. Returns (requests, non-zero requests).
fn pod_requests(
    containers: &[Container],
    init: &[Container],
    overhead: Resources,
) -> (Resources, Resources) {
    let mut sum = Resources::default();
    let mut sum_nz = Resources::default();
    for c in containers {
        let r = container_requests(c);
        sum = sum.plus(r);
        sum_nz = sum_nz.plus(non_zero(r));
    }
    // Sidecars (restartable init containers) keep running next to everything started
    // after them; a plain init container runs alone with the sidecars before it.
    let mut sidecars = Resources::default();
    let mut sidecars_nz = Resources::default();
    let mut init_peak = Resources::default();
    let mut init_peak_nz = Resources::default();
    for c in init {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.plus(r);
            sidecars_nz = sidecars_nz.plus(non_zero(r));
            init_peak = init_peak.max(sidecars);
            init_peak_nz = init_peak_nz.max(sidecars_nz);
        } else {
            init_peak = init_peak.max(r.plus(sidecars));
            init_peak_nz = init_peak_nz.max(non_zero(r).plus(sidecars_nz));
        }
    }
    let one = Resources {
        pods: 1,
        ..Default::default()
    };
    let req = sum.plus(sidecars).max(init_peak).plus(overhead).plus(one);
    let nz = sum_nz
        .plus(sidecars_nz)
        .max(init_peak_nz)
        .plus(overhead)
        .plus(one);
    (req, nz)
}

/// Normalize an image reference the way node status names it: untagged means `:latest`.
pub fn normalize_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

impl PodInfo {
    /// A hash of everything node-static filters look at (selectors, affinity,
    /// tolerations): pods with equal signatures get equal verdicts from them on a node
    /// that has not changed, so those verdicts can be shared.
    pub fn static_signature(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        self.node_selector.hash(&mut h);
        self.required_terms.hash(&mut h);
        self.tolerations.hash(&mut h);
        h.finish()
    }

    /// Translate a Pod; `class` finds a RuntimeClass by name.
    pub fn from_pod<'a>(
        pod: &Pod,
        class: impl Fn(&str) -> Option<&'a RuntimeClass>,
    ) -> Result<PodInfo, PodError> {
        let spec = pod.spec.as_ref().ok_or(PodError::NoSpec)?;
        let meta = &pod.metadata;
        let rc_name = spec
            .runtime_class_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_RUNTIME_CLASS.to_string());
        let fallback;
        let rc = match class(&rc_name) {
            Some(rc) => rc,
            None if spec.runtime_class_name.as_deref().is_none_or(str::is_empty) => {
                fallback = builtin_default_class();
                &fallback
            }
            None => return Err(PodError::RuntimeClassNotFound(rc_name)),
        };
        let overhead = match &spec.overhead {
            Some(o) => Resources::from_list(Some(o)),
            None => Resources::from_list(rc.overhead.as_ref().and_then(|o| o.pod_fixed.as_ref())),
        };
        let (requests, non_zero) = pod_requests(
            &spec.containers,
            spec.init_containers.as_deref().unwrap_or_default(),
            overhead,
        );
        let mut node_selector: Vec<(String, String)> = spec
            .node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sched = rc.scheduling.as_ref();
        for (k, v) in sched
            .and_then(|s| s.node_selector.as_ref())
            .into_iter()
            .flatten()
        {
            // Kubernetes refuses a pod whose selector conflicts with its class; keeping
            // both pairs makes such a pod match no node, which is the same outcome.
            node_selector.push((k.clone(), v.clone()));
        }
        let mut tolerations: Vec<Toleration> = spec
            .tolerations
            .iter()
            .flatten()
            .map(Toleration::from_k8s)
            .collect();
        tolerations.extend(
            sched
                .and_then(|s| s.tolerations.as_ref())
                .into_iter()
                .flatten()
                .map(Toleration::from_k8s),
        );
        let na = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required_terms = na
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.iter().map(Term::from_k8s).collect())
            .unwrap_or_default();
        let preferred_terms = na
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|p| (p.weight, Term::from_k8s(&p.preference)))
            .collect();
        let mut host_ports = Vec::new();
        let mut images = Vec::new();
        let all = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter());
        for c in all {
            if let Some(i) = c.image.as_deref().filter(|i| !i.is_empty()) {
                images.push(normalize_image(i));
            }
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|&p| p > 0) {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        Ok(PodInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            requests,
            non_zero,
            node_selector,
            required_terms,
            preferred_terms,
            tolerations,
            host_ports,
            images,
            owner,
            runtime_class: rc_name,
        })
    }

    /// A pod asking for this much (for tests and benchmarks).
    pub fn with_requests(name: &str, milli_cpu: i64, memory: i64) -> PodInfo {
        let requests = Resources {
            milli_cpu,
            memory,
            pods: 1,
        };
        PodInfo {
            namespace: "default".into(),
            name: name.into(),
            uid: name.into(),
            priority: 0,
            requests,
            non_zero: non_zero(requests),
            node_selector: Vec::new(),
            required_terms: Vec::new(),
            preferred_terms: Vec::new(),
            tolerations: Vec::new(),
            host_ports: Vec::new(),
            images: Vec::new(),
            owner: None,
            runtime_class: DEFAULT_RUNTIME_CLASS.into(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn requests_count_init_containers_sidecars_limits_and_overhead() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}}},
                ],
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "1", "memory": "16Mi"}}},
                    {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                ],
                "overhead": {"cpu": "10m", "memory": "1Mi"},
            }
        }));
        let info = PodInfo::from_pod(&p, |_| None).unwrap();
        // containers 300m + sidecar 50m = 350m < init peak 1000m; memory 96Mi > 16Mi.
        assert_eq!(info.requests.milli_cpu, 1000 + 10);
        assert_eq!(info.requests.memory, (96 + 1) * 1024 * 1024);
        assert_eq!(info.requests.pods, 1);
        // No class named: the built-in oci class's selector applies.
        assert_eq!(
            info.node_selector,
            vec![("runtime.skiff.dev/oci".to_string(), "true".to_string())]
        );
    }

    #[test]
    fn runtime_class_merges_selector_tolerations_and_overhead() {
        let rc: RuntimeClass = serde_json::from_value(json!({
            "metadata": {"name": "wasm"}, "handler": "wasm",
            "overhead": {"podFixed": {"memory": "4Mi"}},
            "scheduling": {"nodeSelector": {"runtime.skiff.dev/wasm": "true"},
                           "tolerations": [{"key": "edge", "operator": "Exists"}]}
        }))
        .unwrap();
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"runtimeClassName": "wasm", "nodeSelector": {"zone": "a"},
                     "containers": [{"name": "a", "image": "reg/app"}]}
        }));
        let info = PodInfo::from_pod(&p, |n| (n == "wasm").then_some(&rc)).unwrap();
        assert_eq!(info.node_selector.len(), 2);
        assert_eq!(info.tolerations.len(), 1);
        assert_eq!(info.requests.memory, 4 * 1024 * 1024);
        assert_eq!(info.images, vec!["reg/app:latest".to_string()]);
        let missing = pod(
            json!({"metadata": {"name": "p"}, "spec": {"runtimeClassName": "nope", "containers": []}}),
        );
        assert_eq!(
            PodInfo::from_pod(&missing, |_| None).unwrap_err(),
            PodError::RuntimeClassNotFound("nope".into())
        );
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = |key: &str, exists: bool, value: &str, effect: Option<Effect>| Toleration {
            key: key.into(),
            exists,
            value: value.into(),
            effect,
        };
        let cases = [
            (t("k", false, "v", None), true),
            (t("k", false, "w", None), false),
            (t("k", true, "", None), true),
            (t("", true, "", None), true),
            (t("", false, "", None), false),
            (t("k", true, "", Some(Effect::NoExecute)), false),
            (t("other", true, "", None), false),
        ];
        for (tol, want) in cases {
            assert_eq!(tol.tolerates("k", "v", Effect::NoSchedule), want, "{tol:?}");
        }
    }

    #[test]
    fn host_ports_conflict_on_wildcards() {
        let hp = |ip: &str, port| HostPort {
            protocol: "TCP".into(),
            ip: ip.into(),
            port,
        };
        assert!(hp("", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(!hp("10.0.0.2", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(!hp("", 80).conflicts(&hp("", 81)));
        let udp = HostPort {
            protocol: "UDP".into(),
            ..hp("", 80)
        };
        assert!(!udp.conflicts(&hp("", 80)));
    }
}
