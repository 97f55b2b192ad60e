//! ImageLocality: prefer nodes that already hold the pod's artifacts (Wasm modules or
//! container images), weighted by size — on a slow edge uplink a cached artifact is
//! the difference between starting now and starting in minutes.
//!
//! As in Kubernetes, a node's credit for an artifact is scaled by the share of nodes
//! that have it, so one popular artifact does not pull every pod onto the first node
//! that cached it.

use crate::framework::{Cycle, MAX_SCORE, Score};
use crate::model::NodeInfo;

/// Below this much cached, the score is 0 (Wasm artifacts are small, hence lower
/// thresholds than Kubernetes' 23 MB for container images).
pub const MIN_BYTES: i64 = 256 * 1024;
/// At this much cached (per container), the score is 100.
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;

/// The score.
pub struct ImageLocality;

impl Score for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }

    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64 {
        if node.images.is_empty() || cycle.total_nodes == 0 {
            return 0;
        }
        let total = cycle.total_nodes as f64;
        let sum: f64 = cycle
            .images
            .iter()
            .filter_map(|i| {
                let size = *node.images.get(i)?;
                let spread = f64::from(cycle.image_nodes.get(i).copied().unwrap_or(1)) / total;
                Some(size as f64 * spread)
            })
            .sum();
        let containers = cycle.pod.images.len().max(1) as f64;
        let (lo, hi) = (MIN_BYTES as f64, MAX_BYTES as f64 * containers);
        let sum = sum.clamp(lo, hi);
        ((sum - lo) * MAX_SCORE as f64 / (hi - lo)) as i64
    }

    fn applies(&self, cycle: &Cycle<'_>) -> bool {
        // Images no node reports have no symbol.
        !cycle.images.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Interner;
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn cached_artifacts_score_by_size_and_spread() {
        let mut interner = Interner::default();
        let img = interner.intern("reg/app:1");
        let mut p = pod();
        p.images = vec!["reg/app:1".into()];
        // (size on this node, nodes having it, total nodes) → score
        let cases = [
            (None, 1, 1, 0),
            (Some(MAX_BYTES), 1, 1, 100),
            (Some(MAX_BYTES), 1, 2, 49),
            (Some(MIN_BYTES / 2), 1, 1, 0),
            (Some(MAX_BYTES * 4), 1, 1, 100),
        ];
        for (size, having, total, want) in cases {
            let mut n = node("n");
            if let Some(s) = size {
                n.images.insert(img, s);
            }
            let spread = FxHashMap::from_iter([(img, having)]);
            let got = with_cycle(&interner, &p, total, &spread, |c| {
                ImageLocality.score(c, &n)
            });
            assert_eq!(got, want, "{size:?} {having}/{total}");
        }
    }
}
