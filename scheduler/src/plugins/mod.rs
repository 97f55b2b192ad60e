//! The filter and score plugins, one per module, each with its table-driven test.

mod image_locality;
mod node_affinity;
mod node_ports;
mod node_ready;
mod node_unschedulable;
mod owner_spread;
mod resources;
mod taint_toleration;

pub use image_locality::ImageLocality;
pub use node_affinity::{NodeAffinity, PreferredNodeAffinity};
pub use node_ports::NodePorts;
pub use node_ready::NodeReady;
pub use node_unschedulable::NodeUnschedulable;
pub use owner_spread::OwnerSpread;
pub use resources::{BalancedAllocation, LeastAllocated, NodeResourcesFit};
pub use taint_toleration::TaintToleration;

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders shared by the plugin tests.

    use crate::framework::Cycle;
    use crate::model::{Interner, NodeInfo, PodInfo, Resources, Sym};
    use rustc_hash::FxHashMap;

    /// A node with 4 CPUs, 8 GiB and 110 pods.
    pub fn node(name: &str) -> NodeInfo {
        NodeInfo::new(
            name,
            Resources {
                milli_cpu: 4000,
                memory: 8 << 30,
                pods: 110,
            },
        )
    }

    /// A pod asking for nothing in particular.
    pub fn pod() -> PodInfo {
        PodInfo::with_requests("p", 100, 64 << 20)
    }

    /// Run `f` with a cycle for `pod` over `nodes`' symbols.
    pub fn with_cycle<T>(
        interner: &Interner,
        pod: &PodInfo,
        total: usize,
        image_nodes: &FxHashMap<Sym, u32>,
        f: impl FnOnce(&Cycle<'_>) -> T,
    ) -> T {
        let c = Cycle::new(pod, interner, total, image_nodes);
        f(&c)
    }
}
