//! OwnerSpread: pods of one controller (a ReplicaSet, a Job, ...) spread across nodes,
//! so losing a node loses as few replicas as possible.

use crate::framework::{Cycle, MAX_SCORE, Score};
use crate::model::NodeInfo;

/// The score: fewer pods of the same owner on a node is better.
pub struct OwnerSpread;

impl Score for OwnerSpread {
    fn name(&self) -> &'static str {
        "OwnerSpread"
    }

    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64 {
        if node.owners.is_empty() {
            return 0;
        }
        cycle
            .owner
            .and_then(|o| node.owners.get(&o))
            .map_or(0, |&c| i64::from(c))
    }

    fn applies(&self, cycle: &Cycle<'_>) -> bool {
        // An owner no node runs a pod of yet has no symbol: every node scores the same.
        cycle.owner.is_some()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores {
            *s = if max == 0 {
                MAX_SCORE
            } else {
                (max - *s) * MAX_SCORE / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Interner;
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn fewer_siblings_score_higher() {
        let mut interner = Interner::default();
        let rs = interner.intern("rs-uid");
        let other = interner.intern("other-uid");
        let mut p = pod();
        p.owner = Some("rs-uid".into());
        // siblings per node → normalized score
        let cases = [
            (vec![0, 0], vec![100, 100]),
            (vec![2, 0], vec![0, 100]),
            (vec![4, 1, 2], vec![0, 75, 50]),
        ];
        for (counts, want) in cases {
            let nodes: Vec<_> = counts
                .iter()
                .map(|&c| {
                    let mut n = node("n");
                    if c > 0 {
                        n.owners.insert(rs, c);
                    }
                    n.owners.insert(other, 9);
                    n
                })
                .collect();
            let mut scores = with_cycle(&interner, &p, nodes.len(), &FxHashMap::default(), |c| {
                nodes
                    .iter()
                    .map(|n| OwnerSpread.score(c, n))
                    .collect::<Vec<_>>()
            });
            OwnerSpread.normalize(&mut scores);
            assert_eq!(scores, want, "{counts:?}");
        }
    }
}
