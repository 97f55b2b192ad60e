//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints keep away every pod
//! that does not tolerate them.

use crate::framework::{Cycle, Filter, Verdict};
use crate::model::{Effect, NodeInfo, tolerated};

/// The filter.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn node_static(&self) -> bool {
        true
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        for t in &node.taints {
            if t.effect == Effect::PreferNoSchedule {
                continue;
            }
            if !tolerated(&cycle.pod.tolerations, &t.key, &t.value, t.effect) {
                return Verdict::unresolvable(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                ));
            }
        }
        Verdict::Fit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Interner, Taint, Toleration};
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn taints_and_tolerations() {
        let taint = |key: &str, value: &str, effect| Taint {
            key: key.into(),
            value: value.into(),
            effect,
        };
        let tol = |key: &str, value: &str, effect| Toleration {
            key: key.into(),
            exists: value.is_empty(),
            value: value.into(),
            effect,
        };
        let cases = [
            (vec![], vec![], Verdict::Fit),
            (
                vec![taint("gpu", "yes", Effect::NoSchedule)],
                vec![],
                Verdict::unresolvable("node(s) had untolerated taint {gpu: yes}"),
            ),
            (
                vec![taint("gpu", "yes", Effect::NoSchedule)],
                vec![tol("gpu", "yes", Some(Effect::NoSchedule))],
                Verdict::Fit,
            ),
            (
                vec![taint("gpu", "yes", Effect::NoExecute)],
                vec![tol("gpu", "yes", Some(Effect::NoSchedule))],
                Verdict::unresolvable("node(s) had untolerated taint {gpu: yes}"),
            ),
            (
                vec![taint("soft", "", Effect::PreferNoSchedule)],
                vec![],
                Verdict::Fit,
            ),
            (
                vec![
                    taint("a", "1", Effect::NoSchedule),
                    taint("b", "2", Effect::NoSchedule),
                ],
                vec![tol("", "", None)],
                Verdict::Fit,
            ),
        ];
        let interner = Interner::default();
        for (taints, tolerations, want) in cases {
            let mut n = node("n");
            n.taints = taints.clone();
            let mut p = pod();
            p.tolerations = tolerations;
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                TaintToleration.filter(c, &n)
            });
            assert_eq!(v, want, "{taints:?}");
        }
    }
}
