//! The node IPAM controller (kube-controller-manager's `nodeipam` with the range
//! allocator): every Node gets `spec.podCIDR` (and `podCIDRs`), a block of the cluster
//! CIDR of its own, from which its agent gives its pods their addresses.
//!
//! The blocks in use are read off the Nodes themselves, so nothing else needs keeping:
//! a deleted Node's block is free again, and a restarted controller sees what is taken.
//! Blocks handed out but not yet seen back in the cache are held in memory meanwhile, so
//! two Nodes registering together never get the same one.

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use skiff_api::events::{ObjectRef, Recorder};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where pod addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCidrs {
    /// The cluster CIDR (`--cluster-cidr`, k3s' `10.42.0.0/16` by default).
    pub cluster: Ipv4Net,
    /// The prefix length of each node's block (`--node-cidr-mask-size`, 24).
    pub node_prefix: u8,
}

impl Default for PodCidrs {
    fn default() -> Self {
        PodCidrs {
            cluster: Ipv4Net::new(std::net::Ipv4Addr::new(10, 42, 0, 0), 16).unwrap_or_default(),
            node_prefix: 24,
        }
    }
}

impl PodCidrs {
    /// Checks that node blocks fit in the cluster CIDR and leave room for pods.
    pub fn new(cluster: Ipv4Net, node_prefix: u8) -> Result<PodCidrs, String> {
        if node_prefix < cluster.prefix_len() || node_prefix > 30 {
            return Err(format!(
                "the node CIDR mask size /{node_prefix} must be between the cluster CIDR's \
                 /{} and /30",
                cluster.prefix_len()
            ));
        }
        Ok(PodCidrs {
            cluster: cluster.trunc(),
            node_prefix,
        })
    }
}

/// The lowest block of `cidrs` that overlaps nothing in `used`. Pure, for the table test.
pub fn next_free(cidrs: PodCidrs, used: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    let mut blocks = cidrs.cluster.subnets(cidrs.node_prefix).ok()?;
    blocks.find(|b| !used.iter().any(|u| u.contains(b) || b.contains(u)))
}

/// A Node's block as it stands in its spec, if it has a valid one.
pub fn pod_cidr_of(node: &Node) -> Option<Ipv4Net> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()?
        .parse::<Ipv4Net>()
        .ok()
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    cidrs: PodCidrs,
    nodes: Store<Node>,
    /// Blocks this controller handed out, by node name, until the Node is gone.
    given: Mutex<BTreeMap<String, Ipv4Net>>,
}

impl Ctx {
    /// Picks and holds a block for `name`.
    fn reserve(&self, name: &str) -> Option<Ipv4Net> {
        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        let live: BTreeSet<String> = self.nodes.state().iter().map(|n| n.name_any()).collect();
        given.retain(|n, _| n == name || live.contains(n));
        if let Some(b) = given.get(name) {
            return Some(*b);
        }
        let mut used: BTreeSet<Ipv4Net> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| pod_cidr_of(n))
            .collect();
        used.extend(given.values().copied());
        let block = next_free(self.cidrs, &used)?;
        given.insert(name.to_string(), block);
        Some(block)
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the cluster CIDR {0} has no free /{1} block left for another node")]
    Full(Ipv4Net, u8),
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if node.metadata.deletion_timestamp.is_some() || pod_cidr_of(&node).is_some() {
        return Ok(Action::await_change());
    }
    let name = node.name_any();
    let Some(block) = ctx.reserve(&name) else {
        let full = Error::Full(ctx.cidrs.cluster, ctx.cidrs.node_prefix);
        // As kube-controller-manager reports it; the node gets a block once one is freed.
        ctx.recorder.warning(
            &ObjectRef::node(&name),
            "CIDRNotAvailable",
            full.to_string(),
        );
        return Err(full);
    };
    let patch = json!({"spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}});
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, pod_cidr = %block, "allocated the node's pod CIDR");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

fn on_error(node: Arc<Node>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %e, "pod CIDR not allocated; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Run until `stop` resolves; events are reported by `recorder`.
pub async fn run(
    client: Client,
    cidrs: PodCidrs,
    recorder: Recorder,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Ctx {
        client,
        recorder,
        cidrs,
        nodes: controller.store(),
        given: Mutex::new(BTreeMap::new()),
    });
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, on_error, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn the_lowest_block_that_overlaps_nothing_is_next() {
        let c = PodCidrs::default();
        let used = |v: &[&str]| v.iter().map(|s| net(s)).collect::<BTreeSet<_>>();
        let table: &[(&[&str], Option<&str>)] = &[
            (&[], Some("10.42.0.0/24")),
            (&["10.42.0.0/24"], Some("10.42.1.0/24")),
            (&["10.42.0.0/24", "10.42.2.0/24"], Some("10.42.1.0/24")),
            // A wider block set by hand covers several.
            (&["10.42.0.0/23"], Some("10.42.2.0/24")),
            // Addresses outside the cluster CIDR do not matter.
            (&["192.168.0.0/24"], Some("10.42.0.0/24")),
            // The whole range taken.
            (&["10.42.0.0/16"], None),
        ];
        for (taken, want) in table {
            assert_eq!(next_free(c, &used(taken)), want.map(net), "{taken:?}");
        }
        let small = PodCidrs::new(net("10.0.0.0/29"), 30).unwrap();
        assert_eq!(
            next_free(small, &used(&["10.0.0.0/30"])),
            Some(net("10.0.0.4/30"))
        );
    }

    #[test]
    fn node_blocks_must_fit_the_cluster_cidr() {
        assert!(PodCidrs::new(net("10.42.0.0/16"), 8).is_err());
        assert!(PodCidrs::new(net("10.42.0.0/16"), 31).is_err());
        let c = PodCidrs::new(net("10.42.7.9/16"), 24).unwrap();
        assert_eq!(c.cluster, net("10.42.0.0/16"), "host bits are cleared");
    }
}
