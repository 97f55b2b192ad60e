//! The scheduler's view of the cluster: every node with what its pods take, including
//! pods the scheduler has placed ("assumed") but not yet seen come back bound on the
//! watch — so two pods decided a millisecond apart never both get the last free CPU.

use crate::model::{Interner, NodeInfo, PodInfo, Sym, Usage};
use k8s_openapi::api::core::v1::Node;
use rustc_hash::FxHashMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Placed {
    node: Arc<str>,
    usage: Usage,
    assumed: bool,
}

/// Nodes and the pods placed on them. One writer (the scheduling loop) owns it.
#[derive(Default, Debug)]
pub struct Cluster {
    /// Symbols for labels, images and owners.
    pub interner: Interner,
    nodes: Vec<NodeInfo>,
    index: FxHashMap<Arc<str>, usize>,
    pods: FxHashMap<String, Placed>,
    /// Pods bound to a node the cache does not know (yet), by node name.
    waiting: FxHashMap<Arc<str>, Vec<String>>,
    image_nodes: FxHashMap<Sym, u32>,
    /// Bumped whenever a node is added, removed or changes in a way placement sees.
    generation: u64,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Changes whenever the node list or a node's placement-relevant fields change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// For each image, how many nodes report it.
    pub fn image_nodes(&self) -> &FxHashMap<Sym, u32> {
        &self.image_nodes
    }

    /// Number of pods placed (bound or assumed).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether a pod (by uid) is placed, and where.
    pub fn placed_on(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).map(|p| &*p.node)
    }

    fn count_images(&mut self, node: usize, delta: i64) {
        for &img in self.nodes[node].images.keys() {
            let c = self.image_nodes.entry(img).or_default();
            *c = (i64::from(*c) + delta).max(0) as u32;
            if *c == 0 {
                self.image_nodes.remove(&img);
            }
        }
    }

    /// Add or refresh a node from its object. Returns whether anything placement
    /// looks at changed (a heartbeat that only renews timestamps returns false).
    pub fn upsert_node(&mut self, node: &Node) -> bool {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if let Some(&i) = self.index.get(name) {
            let before = self.nodes[i].clone();
            self.count_images(i, -1);
            self.nodes[i].update_from(node, &mut self.interner);
            self.count_images(i, 1);
            let n = &self.nodes[i];
            let changed = n.labels != before.labels
                || n.taints != before.taints
                || n.ready != before.ready
                || n.unschedulable != before.unschedulable
                || n.allocatable != before.allocatable
                || n.images != before.images;
            if changed {
                self.generation += 1;
            }
            return changed;
        }
        let info = NodeInfo::from_node(node, &mut self.interner);
        self.insert_node(info);
        true
    }

    /// UIDs of every placed pod.
    pub fn pod_uids(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// Add a node built by hand (tests and benchmarks).
    pub fn insert_node(&mut self, info: NodeInfo) {
        self.generation += 1;
        if let Some(&i) = self.index.get(&*info.name) {
            self.count_images(i, -1);
            let mut info = info;
            // Keep what the pods placed there take.
            let old = &self.nodes[i];
            info.requested = old.requested;
            info.non_zero_requested = old.non_zero_requested;
            info.ports = old.ports.clone();
            info.owners = old.owners.clone();
            self.nodes[i] = info;
            self.count_images(i, 1);
            return;
        }
        let i = self.nodes.len();
        self.index.insert(info.name.clone(), i);
        self.nodes.push(info);
        self.count_images(i, 1);
        let name = self.nodes[i].name.clone();
        for uid in self.waiting.remove(&name).unwrap_or_default() {
            if let Some(p) = self.pods.get(&uid) {
                self.nodes[i].add(&p.usage);
            }
        }
    }

    /// Remove a node. Its pods are remembered, so they count again if it comes back.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.generation += 1;
        self.count_images(i, -1);
        let gone = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        let uids: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node == gone.name)
            .map(|(u, _)| u.clone())
            .collect();
        if !uids.is_empty() {
            self.waiting.insert(gone.name, uids);
        }
    }

    fn usage(&mut self, pod: &PodInfo) -> Usage {
        Usage {
            requests: pod.requests,
            non_zero: pod.non_zero,
            ports: pod.host_ports.clone(),
            owner: pod.owner.as_deref().map(|o| self.interner.intern(o)),
        }
    }

    fn place(&mut self, pod: &PodInfo, node: &str, assumed: bool) {
        if let Some(p) = self.pods.get_mut(&pod.uid) {
            if *p.node == *node {
                // The watch confirms what was assumed: nothing to count again.
                p.assumed &= assumed;
                return;
            }
            self.remove_pod(&pod.uid.clone());
        }
        let usage = self.usage(pod);
        let node: Arc<str> = match self.index.get(node) {
            Some(&i) => {
                self.nodes[i].add(&usage);
                self.nodes[i].name.clone()
            }
            None => {
                let name: Arc<str> = Arc::from(node);
                self.waiting
                    .entry(name.clone())
                    .or_default()
                    .push(pod.uid.clone());
                name
            }
        };
        self.pods.insert(
            pod.uid.clone(),
            Placed {
                node,
                usage,
                assumed,
            },
        );
    }

    /// Count a pod the scheduler just placed, before the API confirms the binding.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        self.place(pod, node, true);
    }

    /// Count a pod the API reports bound to `node`.
    pub fn add_pod(&mut self, pod: &PodInfo, node: &str) {
        self.place(pod, node, false);
    }

    /// Undo an assumption whose binding failed. A confirmed pod is left alone.
    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|p| p.assumed) {
            self.remove_pod(uid);
        }
    }

    /// A placed pod is gone (deleted, or finished).
    pub fn remove_pod(&mut self, uid: &str) {
        let Some(p) = self.pods.remove(uid) else {
            return;
        };
        match self.index.get(&*p.node) {
            Some(&i) => self.nodes[i].remove(&p.usage),
            None => {
                if let Some(w) = self.waiting.get_mut(&*p.node) {
                    w.retain(|u| u != uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;

    fn node(name: &str) -> NodeInfo {
        NodeInfo::new(
            name,
            Resources {
                milli_cpu: 1000,
                memory: 1 << 30,
                pods: 10,
            },
        )
    }

    #[test]
    fn assumed_pods_count_once_and_can_be_forgotten() {
        let mut c = Cluster::new();
        c.insert_node(node("a"));
        let p = PodInfo::with_requests("p", 300, 1 << 20);
        c.assume(&p, "a");
        c.add_pod(&p, "a");
        c.add_pod(&p, "a");
        assert_eq!(c.node("a").map(|n| n.requested.milli_cpu), Some(300));
        c.forget("p");
        assert_eq!(
            c.node("a").map(|n| n.requested.milli_cpu),
            Some(300),
            "confirmed pods stay"
        );
        let q = PodInfo::with_requests("q", 200, 0);
        c.assume(&q, "a");
        c.forget("q");
        c.remove_pod("p");
        assert_eq!(c.node("a").map(|n| n.requested), Some(Resources::default()));
    }

    #[test]
    fn pods_seen_before_their_node_count_when_it_arrives() {
        let mut c = Cluster::new();
        let p = PodInfo::with_requests("p", 300, 0);
        c.add_pod(&p, "late");
        c.insert_node(node("late"));
        assert_eq!(c.node("late").map(|n| n.requested.milli_cpu), Some(300));
        c.remove_node("late");
        assert!(c.node("late").is_none());
        c.insert_node(node("late"));
        assert_eq!(c.node("late").map(|n| n.requested.milli_cpu), Some(300));
        c.insert_node(node("b"));
        c.remove_node("late");
        assert_eq!(c.nodes().len(), 1);
        assert!(c.node("b").is_some());
    }
}
