//! NodeResourcesFit (filter), LeastAllocated and BalancedAllocation (scores): CPU,
//! memory and pod count.
//!
//! The filter compares the pod's requests with what the node has left; the scores use
//! Kubernetes' non-zero requests (a container asking for nothing counts as 0.1 CPU and
//! 200 MB) so that many request-less pods still spread out.

use crate::framework::{Cycle, Filter, MAX_SCORE, Reasons, Score, Verdict};
use crate::model::{NodeInfo, Resources};

/// The filter.
pub struct NodeResourcesFit;

impl NodeResourcesFit {
    /// Whether the pod fits, without building a verdict (the hot path of a search).
    fn fits(want: Resources, node: &NodeInfo) -> bool {
        let (have, used) = (node.allocatable, node.requested);
        used.pods < have.pods
            && (want.milli_cpu <= 0 || used.milli_cpu + want.milli_cpu <= have.milli_cpu)
            && (want.memory <= 0 || used.memory + want.memory <= have.memory)
    }
}

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter_many(&self, cycle: &Cycle<'_>, nodes: &[NodeInfo], candidates: &mut Vec<usize>) {
        let want = cycle.pod.requests;
        candidates.retain(|&i| Self::fits(want, &nodes[i]));
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        let want = cycle.pod.requests;
        let (have, used) = (node.allocatable, node.requested);
        let mut reasons: Option<Reasons> = None;
        let mut add = |r: &'static str| {
            reasons = Some(match reasons.take() {
                None => Reasons::one(r),
                Some(rs) => rs.and(r),
            })
        };
        if used.pods + 1 > have.pods {
            add("Too many pods");
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
            add("Insufficient cpu");
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            add("Insufficient memory");
        }
        match reasons {
            None => Verdict::Fit,
            Some(rs) => Verdict::Unschedulable(rs),
        }
    }
}

fn fractions(cycle: &Cycle<'_>, node: &NodeInfo) -> [(i64, i64); 2] {
    let after = node.non_zero_requested.plus(cycle.pod.non_zero);
    [
        (after.milli_cpu, node.allocatable.milli_cpu),
        (after.memory, node.allocatable.memory),
    ]
}

/// Prefers the node with the most room left (spreads load).
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64 {
        let per: i64 = fractions(cycle, node)
            .iter()
            .map(|&(used, cap)| {
                if cap <= 0 || used > cap {
                    0
                } else {
                    (cap - used) * MAX_SCORE / cap
                }
            })
            .sum();
        per / 2
    }
}

/// Prefers the node where CPU and memory stay equally used (no stranded capacity).
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64 {
        let [cpu, mem] = fractions(cycle, node).map(|(used, cap)| {
            if cap <= 0 {
                1.0
            } else {
                (used as f64 / cap as f64).min(1.0)
            }
        });
        // The standard deviation of two values is half their distance.
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Interner, PodInfo};
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    const GI: i64 = 1 << 30;

    #[test]
    fn fit_counts_cpu_memory_and_pods() {
        let used = |cpu, mem, pods| Resources {
            milli_cpu: cpu,
            memory: mem,
            pods,
        };
        let cases: Vec<(Resources, (i64, i64), Vec<&str>)> = vec![
            (used(0, 0, 0), (1000, GI), vec![]),
            (used(3500, 0, 0), (1000, GI), vec!["Insufficient cpu"]),
            (used(0, 7 * GI + 1, 0), (0, GI), vec!["Insufficient memory"]),
            (used(3000, 7 * GI, 0), (1000, GI), vec![]),
            (
                used(4000, 8 * GI, 0),
                (1, 1),
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (used(0, 0, 110), (0, 0), vec!["Too many pods"]),
            (used(0, 0, 0), (5000, 0), vec!["Insufficient cpu"]),
        ];
        let interner = Interner::default();
        for (requested, (cpu, mem), want) in cases {
            let mut n = node("n");
            n.requested = requested;
            let p = PodInfo::with_requests("p", cpu, mem);
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodeResourcesFit.filter(c, &n)
            });
            let expect = match want.split_first() {
                None => Verdict::Fit,
                Some((first, rest)) => Verdict::Unschedulable(
                    rest.iter().fold(Reasons::one(*first), |rs, r| rs.and(*r)),
                ),
            };
            assert_eq!(v, expect, "{requested:?} + ({cpu}, {mem})");
            let mut batch = vec![0];
            with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodeResourcesFit.filter_many(c, std::slice::from_ref(&n), &mut batch)
            });
            assert_eq!(batch.is_empty(), !want.is_empty(), "the batch path agrees");
        }
    }

    #[test]
    fn least_allocated_and_balanced_scores() {
        let interner = Interner::default();
        let half = Resources {
            milli_cpu: 2000,
            memory: 4 * GI,
            pods: 0,
        };
        let lopsided = Resources {
            milli_cpu: 3600,
            memory: 0,
            pods: 0,
        };
        let p = PodInfo::with_requests("p", 400, 0);
        // (node usage, least-allocated, balanced)
        let cases = [
            (Resources::default(), 93, 96),
            (half, 43, 96),
            (lopsided, 48, 51),
        ];
        for (usage, least, balanced) in cases {
            let mut n = node("n");
            n.non_zero_requested = usage;
            let got = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                (LeastAllocated.score(c, &n), BalancedAllocation.score(c, &n))
            });
            assert_eq!(got, (least, balanced), "{usage:?}");
        }
    }
}
