//! NodeReady: a node whose Ready condition is not True is treated as carrying the
//! `node.kubernetes.io/not-ready:NoSchedule` taint, as Kubernetes' node lifecycle
//! controller would put there, so only pods tolerating it (DaemonSet-like agents) land.

use crate::framework::{Cycle, Filter, Verdict};
use crate::model::{Effect, NOT_READY_TAINT, NodeInfo, tolerated};

/// The filter.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn node_static(&self) -> bool {
        true
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        if !node.ready
            && !tolerated(
                &cycle.pod.tolerations,
                NOT_READY_TAINT,
                "",
                Effect::NoSchedule,
            )
        {
            return Verdict::unresolvable(format!(
                "node(s) had untolerated taint {{{NOT_READY_TAINT}: }}"
            ));
        }
        Verdict::Fit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Interner, Toleration};
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn not_ready_nodes_refuse_unless_tolerated() {
        let tol = Toleration {
            key: NOT_READY_TAINT.into(),
            exists: true,
            value: String::new(),
            effect: None,
        };
        let cases = [
            (true, vec![], Verdict::Fit),
            (
                false,
                vec![],
                Verdict::unresolvable(
                    "node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
                ),
            ),
            (false, vec![tol], Verdict::Fit),
        ];
        let interner = Interner::default();
        for (ready, tolerations, want) in cases {
            let mut n = node("n");
            n.ready = ready;
            let mut p = pod();
            p.tolerations = tolerations;
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodeReady.filter(c, &n)
            });
            assert_eq!(v, want, "ready={ready}");
        }
    }
}
