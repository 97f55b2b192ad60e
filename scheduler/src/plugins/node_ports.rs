//! NodePorts: a pod's `hostPort`s must be free on the node.

use crate::framework::{Cycle, Filter, Verdict};
use crate::model::NodeInfo;

/// The filter.
pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict {
        let clash = cycle
            .pod
            .host_ports
            .iter()
            .any(|p| node.ports.iter().any(|u| u.conflicts(p)));
        if clash {
            Verdict::unschedulable("node(s) didn't have free ports for the requested pod ports")
        } else {
            Verdict::Fit
        }
    }

    fn applies(&self, cycle: &Cycle<'_>) -> bool {
        !cycle.pod.host_ports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostPort, Interner};
    use crate::plugins::testing::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn host_ports_must_be_free() {
        let hp = |ip: &str, port| HostPort {
            protocol: "TCP".into(),
            ip: ip.into(),
            port,
        };
        let cases = [
            (vec![], vec![hp("", 8080)], true),
            (vec![hp("", 8080)], vec![hp("", 8080)], false),
            (vec![hp("10.0.0.1", 8080)], vec![hp("", 8080)], false),
            (vec![hp("10.0.0.1", 8080)], vec![hp("10.0.0.2", 8080)], true),
            (vec![hp("", 8080)], vec![hp("", 8081)], true),
        ];
        let interner = Interner::default();
        for (used, wanted, fits) in cases {
            let mut n = node("n");
            n.ports = used.clone();
            let mut p = pod();
            p.host_ports = wanted.clone();
            let v = with_cycle(&interner, &p, 1, &FxHashMap::default(), |c| {
                NodePorts.filter(c, &n)
            });
            assert_eq!(v == Verdict::Fit, fits, "{used:?} vs {wanted:?}");
        }
    }
}
