//! Skiff's scheduler: places Pods on Nodes by runtime class, CPU and memory.
//!
//! Start reading at [`placement::Placer::place`], one decision: every [`framework::Filter`]
//! plugin judges the nodes, every [`framework::Score`] plugin ranks the feasible ones.
//! [`model`] turns Kubernetes objects into what the plugins compare (a Pod's
//! RuntimeClass folded into its node selector, tolerations and overhead), and
//! [`cache::Cluster`] tracks what each node has left, counting pods the scheduler has
//! placed but not yet seen bound.
//!
//! ```
//! use skiff_scheduler::{cache::Cluster, framework::Framework, placement::Placer};
//! use skiff_scheduler::model::{NodeInfo, PodInfo, Resources};
//!
//! let mut cluster = Cluster::new();
//! cluster.insert_node(NodeInfo::new("edge-1", Resources { milli_cpu: 2000, memory: 1 << 30, pods: 110 }));
//! let pod = PodInfo::with_requests("web", 250, 64 << 20);
//! let mut placer = Placer::new(Framework::default_profile());
//! let node = placer.place(&cluster, &pod).expect("fits");
//! assert_eq!(&*cluster.nodes()[node].name, "edge-1");
//! ```

pub mod cache;
pub mod framework;
pub mod model;
pub mod placement;
pub mod plugins;
pub mod queue;
pub mod run;
