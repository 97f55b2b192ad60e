//! NodeAffinity: the pod's `nodeSelector` (with its RuntimeClass's selector merged in)
//! and required node affinity must match the node; preferred affinity adds to the score.
//!
//! This is where a Wasm pod is kept off nodes without `runtime.skiff.dev/wasm: "true"`:
//! the built-in RuntimeClasses carry that selector.

use crate::framework::{Cycle, Filter, MAX_SCORE, Score, Verdict};
use crate::model::NodeInfo;

/// Kubernetes' wording, counted in `FailedScheduling` messages.
pub const MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

/// The filter.
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn node_static(&self) -> bool {
        true
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        let selector_ok = match &cycle.selector {
            None => false,
            Some(pairs) => pairs.iter().all(|&(k, v)| node.label(k) == Some(v)),
        };
        let affinity_ok = cycle.required.is_empty()
            || cycle
                .required
                .iter()
                .any(|t| t.matches(node, cycle.interner));
        if selector_ok && affinity_ok {
            Verdict::Fit
        } else {
            Verdict::unresolvable(MISMATCH)
        }
    }

    fn applies(&self, cycle: &Cycle<'_>) -> bool {
        cycle.selector.as_ref().is_none_or(|s| !s.is_empty()) || !cycle.required.is_empty()
    }
}

/// The score: sum of the weights of the preferred terms the node matches, scaled so the
/// best node gets 100.
pub struct PreferredNodeAffinity;

impl Score for PreferredNodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64 {
        cycle
            .preferred
            .iter()
            .filter(|(_, t)| t.matches(node, cycle.interner))
            .map(|(w, _)| *w)
            .sum()
    }

    fn applies(&self, cycle: &Cycle<'_>) -> bool {
        !cycle.preferred.is_empty()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores {
                *s = *s * MAX_SCORE / max;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Interner, Requirement, Term};
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    fn req(key: &str, op: &str, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            op: op.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn selectors_and_required_affinity() {
        let mut interner = Interner::default();
        let mut n = node("edge-1");
        n.set_label(&mut interner, "runtime.skiff.dev/wasm", "true");
        n.set_label(&mut interner, "zone", "a");
        n.set_label(&mut interner, "cores", "8");
        interner.intern("b");
        let term = |labels: Vec<Requirement>| Term {
            labels,
            fields: vec![],
        };
        let sel = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        type Case = (&'static str, Vec<(String, String)>, Vec<Term>, bool);
        let cases: Vec<Case> = vec![
            ("no constraints", vec![], vec![], true),
            (
                "runtime label present",
                sel(&[("runtime.skiff.dev/wasm", "true")]),
                vec![],
                true,
            ),
            (
                "runtime label absent",
                sel(&[("runtime.skiff.dev/oci", "true")]),
                vec![],
                false,
            ),
            ("wrong value", sel(&[("zone", "b")]), vec![], false),
            (
                "In",
                vec![],
                vec![term(vec![req("zone", "In", &["a", "b"])])],
                true,
            ),
            (
                "NotIn",
                vec![],
                vec![term(vec![req("zone", "NotIn", &["a"])])],
                false,
            ),
            (
                "NotIn absent key",
                vec![],
                vec![term(vec![req("rack", "NotIn", &["x"])])],
                true,
            ),
            (
                "Exists",
                vec![],
                vec![term(vec![req("zone", "Exists", &[])])],
                true,
            ),
            (
                "DoesNotExist",
                vec![],
                vec![term(vec![req("zone", "DoesNotExist", &[])])],
                false,
            ),
            (
                "Gt",
                vec![],
                vec![term(vec![req("cores", "Gt", &["4"])])],
                true,
            ),
            (
                "Lt",
                vec![],
                vec![term(vec![req("cores", "Lt", &["4"])])],
                false,
            ),
            (
                "terms are ORed",
                vec![],
                vec![
                    term(vec![req("zone", "In", &["b"])]),
                    term(vec![req("zone", "In", &["a"])]),
                ],
                true,
            ),
            (
                "empty term matches nothing",
                vec![],
                vec![Term::default()],
                false,
            ),
            (
                "match fields by name",
                vec![],
                vec![Term {
                    labels: vec![],
                    fields: vec![req("metadata.name", "In", &["edge-1"])],
                }],
                true,
            ),
        ];
        for (what, node_selector, terms, fits) in cases {
            let mut p = pod();
            p.node_selector = node_selector;
            p.required_terms = terms;
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodeAffinity.filter(c, &n)
            });
            let want = if fits {
                Verdict::Fit
            } else {
                Verdict::unresolvable(MISMATCH)
            };
            assert_eq!(v, want, "{what}");
        }
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let mut interner = Interner::default();
        let mut a = node("a");
        a.set_label(&mut interner, "zone", "a");
        let mut b = node("b");
        b.set_label(&mut interner, "zone", "b");
        let mut p = pod();
        let t = |z: &str| Term {
            labels: vec![req("zone", "In", &[z])],
            fields: vec![],
        };
        p.preferred_terms = vec![(10, t("a")), (30, t("b"))];
        let mut scores = with_cycle(&interner, &p, 2, &FxHashMap::default(), |c| {
            vec![
                PreferredNodeAffinity.score(c, &a),
                PreferredNodeAffinity.score(c, &b),
            ]
        });
        assert_eq!(scores, vec![10, 30]);
        PreferredNodeAffinity.normalize(&mut scores);
        assert_eq!(scores, vec![33, 100]);
    }
}
