//! One scheduling decision: filter nodes, score the feasible ones, pick the best.
//!
//! Like kube-scheduler, a large cluster is not searched exhaustively: once enough
//! feasible nodes are found (an adaptive share of the cluster, at least 100), the search
//! stops, and the next pod's search starts where this one stopped so every node gets its
//! turn. A pod that fits nowhere is checked against every node, so its
//! `FailedScheduling` message counts every node's reason.

use crate::cache::Cluster;
use crate::framework::{Cycle, Filter, Framework, Verdict};
use crate::model::PodInfo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;

/// Kubernetes' lower bound on feasible nodes to find before stopping the search.
const MIN_FEASIBLE: usize = 100;
/// Nodes judged per batch (a search may look at up to this many nodes past the ones it
/// needed).
const BATCH: usize = 64;

/// Why a pod fits on no node, counted per reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FitError {
    /// Nodes in the cluster.
    pub total_nodes: usize,
    /// Reason → number of nodes refusing for it.
    pub reasons: BTreeMap<String, usize>,
    /// Some node refused for a reason that can pass (resources, ports): a pod leaving
    /// may make room.
    pub resolvable_by_pods: bool,
    /// A plugin failed.
    pub error: Option<String>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        // Kubernetes sorts the "<count> <reason>" strings themselves.
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.total_nodes,
            parts.join(", ")
        )?;
        if let Some(e) = &self.error {
            write!(f, " error: {e}")?;
        }
        Ok(())
    }
}

/// Makes placement decisions with a framework's plugins.
pub struct Placer {
    framework: Framework,
    rng: SmallRng,
    next_start: usize,
    /// Share of nodes to search for feasible ones (1–100); `None` is Kubernetes'
    /// adaptive default (50% minus 1% per 125 nodes, at least 5%).
    pub percentage_of_nodes_to_score: Option<u32>,
    feasible: Vec<usize>,
    active_filters: Vec<usize>,
    /// Node-static filter verdicts per pod shape: signature → (cluster generation,
    /// passes per node index).
    static_verdicts: rustc_hash::FxHashMap<u64, (u64, Vec<bool>)>,
    totals: Vec<i64>,
    scratch: Vec<i64>,
}

impl Placer {
    /// A placer with the given plugins.
    pub fn new(framework: Framework) -> Placer {
        Placer {
            framework,
            rng: SmallRng::seed_from_u64(0x5c1f_f5c1),
            next_start: 0,
            percentage_of_nodes_to_score: None,
            feasible: Vec::new(),
            active_filters: Vec::new(),
            static_verdicts: Default::default(),
            totals: Vec::new(),
            scratch: Vec::new(),
        }
    }

    fn feasible_to_find(&self, total: usize) -> usize {
        if total < MIN_FEASIBLE {
            return total;
        }
        let pct = match self.percentage_of_nodes_to_score {
            Some(p) => p.clamp(1, 100) as usize,
            None => 50usize.saturating_sub(total / 125).max(5),
        };
        (total * pct / 100).max(MIN_FEASIBLE)
    }

    /// Choose a node for `pod`. Returns the node's index in `cluster.nodes()`.
    pub fn place(&mut self, cluster: &Cluster, pod: &PodInfo) -> Result<usize, FitError> {
        let nodes = cluster.nodes();
        let total = nodes.len();
        if total == 0 {
            return Err(FitError::default());
        }
        let cycle = Cycle::new(pod, &cluster.interner, total, cluster.image_nodes());
        let sig = pod.static_signature();
        self.prepare_static(&cycle, cluster, sig);
        // The other (dynamic) filters run per node on every cycle.
        self.active_filters.clear();
        self.active_filters
            .extend((0..self.framework.filters.len()).filter(|&i| {
                let f = &self.framework.filters[i];
                !f.node_static() && f.applies(&cycle)
            }));
        let want = self.feasible_to_find(total);
        self.feasible.clear();
        let start = self.next_start % total;
        let mut idx = start;
        let mut examined = 0;
        {
            let statics = self
                .static_verdicts
                .get(&sig)
                .map(|(_, v)| v.as_slice())
                .unwrap_or_default();
            let dynamic: Vec<&dyn Filter> = self
                .active_filters
                .iter()
                .map(|&i| &*self.framework.filters[i])
                .collect();
            // Nodes are judged in batches: the node-static verdicts first, then each
            // dynamic filter over what is left of the batch.
            let mut batch = Vec::with_capacity(BATCH);
            while examined < total && self.feasible.len() < want {
                batch.clear();
                while batch.len() < BATCH && examined < total {
                    if statics.get(idx).copied().unwrap_or(true) {
                        batch.push(idx);
                    }
                    examined += 1;
                    idx += 1;
                    if idx == total {
                        idx = 0;
                    }
                }
                for f in &dynamic {
                    if batch.is_empty() {
                        break;
                    }
                    f.filter_many(&cycle, nodes, &mut batch);
                }
                let room = want - self.feasible.len();
                self.feasible.extend(batch.iter().take(room));
            }
        }
        self.next_start = idx % total;
        match self.feasible.len() {
            0 => Err(self.diagnose(&cycle, cluster)),
            1 => Ok(self.feasible[0]),
            _ => Ok(self.best(&cycle, cluster)),
        }
    }

    /// Make sure the node-static verdicts for this pod shape are current.
    fn prepare_static(&mut self, cycle: &Cycle<'_>, cluster: &Cluster, sig: u64) {
        let generation = cluster.generation();
        if self
            .static_verdicts
            .get(&sig)
            .is_some_and(|(g, v)| *g == generation && v.len() == cluster.nodes().len())
        {
            return;
        }
        if self.static_verdicts.len() >= 256 {
            self.static_verdicts.clear();
        }
        let statics: Vec<&dyn Filter> = self
            .framework
            .filters
            .iter()
            .filter(|f| f.node_static() && f.applies(cycle))
            .map(|f| &**f)
            .collect();
        let passes = cluster
            .nodes()
            .iter()
            .map(|n| statics.iter().all(|f| f.filter(cycle, n).fits()))
            .collect();
        self.static_verdicts.insert(sig, (generation, passes));
    }

    /// Why no node fits: every node's reasons, counted. Only a failed search gets here,
    /// so the search itself never spends time on bookkeeping.
    fn diagnose(&self, cycle: &Cycle<'_>, cluster: &Cluster) -> FitError {
        let mut err = FitError {
            total_nodes: cluster.nodes().len(),
            ..Default::default()
        };
        let all: Vec<&dyn Filter> = self
            .framework
            .filters
            .iter()
            .filter(|f| f.applies(cycle))
            .map(|f| &**f)
            .collect();
        for node in cluster.nodes() {
            let verdict = all
                .iter()
                .map(|f| f.filter(cycle, node))
                .find(|v| !v.fits())
                .unwrap_or(Verdict::Fit);
            let rs = match verdict {
                Verdict::Fit => continue,
                Verdict::Unschedulable(rs) => {
                    err.resolvable_by_pods = true;
                    rs
                }
                Verdict::Unresolvable(rs) => rs,
                Verdict::Error(e) => {
                    err.error = Some(e);
                    continue;
                }
            };
            for r in rs.iter() {
                *err.reasons.entry(r.to_string()).or_default() += 1;
            }
        }
        err
    }

    fn best(&mut self, cycle: &Cycle<'_>, cluster: &Cluster) -> usize {
        let nodes = cluster.nodes();
        self.totals.clear();
        self.totals.resize(self.feasible.len(), 0);
        for (plugin, weight) in &self.framework.scores {
            if !plugin.applies(cycle) {
                continue;
            }
            self.scratch.clear();
            plugin.score_many(cycle, nodes, &self.feasible, &mut self.scratch);
            plugin.normalize(&mut self.scratch);
            for (t, s) in self.totals.iter_mut().zip(&self.scratch) {
                *t += s * weight;
            }
        }
        // Highest total wins; ties are broken at random (reservoir sampling), so equal
        // nodes share the load.
        let mut best = 0;
        let mut ties = 0u32;
        for (i, &t) in self.totals.iter().enumerate() {
            if i == 0 || t > self.totals[best] {
                best = i;
                ties = 1;
            } else if t == self.totals[best] {
                ties += 1;
                if self.rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        self.feasible[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeInfo, Resources};

    const GI: i64 = 1 << 30;

    /// (name, millicores, memory, labels)
    type Spec<'a> = (&'a str, i64, i64, &'a [(&'a str, &'a str)]);

    fn cluster(specs: &[Spec<'_>]) -> Cluster {
        let mut c = Cluster::new();
        for (name, cpu, mem, labels) in specs {
            let mut n = NodeInfo::new(
                name,
                Resources {
                    milli_cpu: *cpu,
                    memory: *mem,
                    pods: 110,
                },
            );
            for (k, v) in *labels {
                n.set_label(&mut c.interner, k, v);
            }
            c.insert_node(n);
        }
        c
    }

    #[test]
    fn message_counts_reasons_like_kubernetes() {
        let wasm: &[(&str, &str)] = &[("runtime.skiff.dev/wasm", "true")];
        let c = cluster(&[
            ("a", 4000, GI, wasm),
            ("b", 4000, GI, wasm),
            ("c", 4000, 8 * GI, &[]),
            ("d", 4000, 8 * GI, &[]),
            ("e", 4000, 8 * GI, &[]),
        ]);
        let mut p = PodInfo::with_requests("big", 100, 2 * GI);
        p.node_selector = vec![("runtime.skiff.dev/wasm".into(), "true".into())];
        let err = Placer::new(Framework::default_profile())
            .place(&c, &p)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/5 nodes are available: 2 Insufficient memory, 3 node(s) didn't match Pod's node affinity/selector."
        );
        assert!(err.resolvable_by_pods);
        let none = Placer::new(Framework::default_profile())
            .place(&Cluster::new(), &p)
            .unwrap_err();
        assert_eq!(none.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn prefers_the_emptier_node_and_fills_up() {
        let mut c = cluster(&[("small", 1000, GI, &[]), ("large", 4000, 4 * GI, &[])]);
        let mut placer = Placer::new(Framework::default_profile());
        let p = PodInfo::with_requests("p0", 500, GI / 4);
        let i = placer.place(&c, &p).unwrap();
        assert_eq!(&*c.nodes()[i].name, "large");
        // Fill everything: 10 pods of 500m fit (2 on small, 8 on large), the 11th not.
        let mut placed = 0;
        for n in 0..11 {
            let p = PodInfo::with_requests(&format!("p{n}"), 500, 1);
            match placer.place(&c, &p) {
                Ok(i) => {
                    let name = c.nodes()[i].name.clone();
                    c.assume(&p, &name);
                    placed += 1;
                }
                Err(e) => assert_eq!(
                    e.to_string(),
                    "0/2 nodes are available: 2 Insufficient cpu."
                ),
            }
        }
        assert_eq!(placed, 10);
    }

    #[test]
    fn search_stops_early_on_large_clusters_and_rotates() {
        let specs: Vec<(String, i64, i64)> =
            (0..1000).map(|i| (format!("n{i}"), 4000, 8 * GI)).collect();
        let refs: Vec<Spec<'_>> = specs
            .iter()
            .map(|(n, c, m)| (n.as_str(), *c, *m, &[][..]))
            .collect();
        let c = cluster(&refs);
        let mut placer = Placer::new(Framework::default_profile());
        assert_eq!(placer.feasible_to_find(1000), 420);
        assert_eq!(placer.feasible_to_find(5000), 500);
        assert_eq!(placer.feasible_to_find(50), 50);
        assert_eq!(placer.feasible_to_find(150), 100);
        let p = PodInfo::with_requests("p", 100, 0);
        let first = placer.place(&c, &p).unwrap();
        assert!(first < 420, "the first search takes nodes 0..420");
        // It judged whole batches of 64: the next search starts after them.
        assert_eq!(placer.next_start, 448);
        let second = placer.place(&c, &p).unwrap();
        assert!((448..868).contains(&second));
    }
}
