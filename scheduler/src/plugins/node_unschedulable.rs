//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes no new pods, unless
//! the pod tolerates the `node.kubernetes.io/unschedulable` taint.

use crate::framework::{Cycle, Filter, Verdict};
use crate::model::{Effect, NodeInfo, UNSCHEDULABLE_TAINT, tolerated};

/// The filter.
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn node_static(&self) -> bool {
        true
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        if node.unschedulable
            && !tolerated(
                &cycle.pod.tolerations,
                UNSCHEDULABLE_TAINT,
                "",
                Effect::NoSchedule,
            )
        {
            return Verdict::unresolvable("node(s) were unschedulable");
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
    fn cordoned_nodes_refuse_unless_tolerated() {
        let tol = Toleration {
            key: UNSCHEDULABLE_TAINT.into(),
            exists: true,
            value: String::new(),
            effect: Some(Effect::NoSchedule),
        };
        let cases = [
            (false, vec![], true),
            (true, vec![], false),
            (true, vec![tol.clone()], true),
        ];
        let interner = Interner::default();
        for (cordoned, tolerations, fits) in cases {
            let mut n = node("n");
            n.unschedulable = cordoned;
            let mut p = pod();
            p.tolerations = tolerations;
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodeUnschedulable.filter(c, &n)
            });
            assert_eq!(v == Verdict::Fit, fits, "cordoned={cordoned} {v:?}");
            if !fits {
                assert_eq!(v, Verdict::unresolvable("node(s) were unschedulable"));
            }
        }
    }
}
