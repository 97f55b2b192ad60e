//! Routes to the other nodes' pods, as flannel's `host-gw` backend makes them: each other
//! Node's `spec.podCIDR` via that Node's `InternalIP`, when the two nodes share a link.
//! Packets between pods of different nodes then go straight from node to node, without
//! encapsulation and without address translation. The rest of the cluster CIDR is
//! `unreachable`: a packet to an address no node holds is refused on the node, never
//! sent to the default gateway.
//!
//! What is wanted is a pure function of the Nodes ([`wanted`], table-tested); [`apply`]
//! makes the main table hold exactly that with rtnetlink requests. The routes are told
//! apart from everyone else's by their protocol number ([`PROTOCOL`]) and by lying in
//! the cluster CIDR, so a restarted agent finds, replaces and removes its own and nothing
//! else (not even those of another cluster's agent in the same namespace). A Node whose address is
//! not on one of this node's networks gets no route (it would need an overlay, VXLAN,
//! which is not built): [`apply`] says which.
//!
//! Several agents in one network namespace (tests, or a server's embedded agent beside a
//! standalone one) reach each other's bridges directly: a Node whose address is this
//! machine's own gets no route.

use crate::netns::Route;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The protocol number of Skiff's routes (`ip route show proto 151`); unassigned in
/// iproute2's `rt_protos`.
pub const PROTOCOL: u8 = 151;

/// The routes of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The cluster CIDR, `unreachable` but for the routes below (and the node's own
    /// bridge, whose connected route is more specific).
    pub cluster_cidr: Ipv4Net,
    /// Other nodes' podCIDRs → their addresses.
    pub via: BTreeMap<Ipv4Net, Ipv4Addr>,
}

/// The routes node `me` of the cluster on `cluster_cidr` wants: every other Node's
/// podCIDR in it → the Node's IPv4 `InternalIP` (or, lacking one, its first IPv4
/// address). Nodes without either, and those at a loopback address, are left out.
pub fn wanted<'a>(
    me: &str,
    cluster_cidr: Ipv4Net,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Wanted {
    let mut via = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(cidr) = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Ipv4Net>().ok())
            .map(|c| c.trunc())
            .filter(|c| cluster_cidr.contains(c) && *c != cluster_cidr.trunc())
        else {
            continue;
        };
        let addresses = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        let v4 = |internal: bool| {
            addresses
                .iter()
                .filter(|a| !internal || a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
        };
        if let Some(gw) = v4(true).or_else(|| v4(false)).filter(|a| !a.is_loopback()) {
            via.insert(cidr, gw);
        }
    }
    Wanted {
        cluster_cidr: cluster_cidr.trunc(),
        via,
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes in place, each with the interface it leaves by.
    pub routed: BTreeMap<Ipv4Net, (Ipv4Addr, String)>,
    /// Wanted routes whose gateway is on none of this node's networks (or is its own).
    pub unreachable: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// This namespace's IPv4 networks: (address, its network, the interface index).
fn local_networks(route: &mut Route) -> io::Result<Vec<(Ipv4Addr, Ipv4Net, u32)>> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let answers = route.exchange(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        for attr in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = attr
                && let Ok(net) = Ipv4Net::new(*ip, a.header.prefix_len)
            {
                out.push((*ip, net.trunc(), a.header.index));
            }
        }
    }
    Ok(out)
}

/// The routes of [`PROTOCOL`] in the main table: destination → gateway.
fn ours(route: &mut Route) -> io::Result<BTreeMap<Ipv4Net, Option<Ipv4Addr>>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    let answers = route.exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
    let mut out = BTreeMap::new();
    for m in answers {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if u8::from(r.header.protocol) != PROTOCOL || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                _ => {}
            }
        }
        if let Some(net) =
            dst.and_then(|d| Ipv4Net::new(d, r.header.destination_prefix_length).ok())
        {
            out.insert(net, via);
        }
    }
    Ok(out)
}

fn message(dst: Ipv4Net, via: Option<(Ipv4Addr, u32)>, kind: RouteType) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: dst.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Other(PROTOCOL),
        scope: RouteScope::Universe,
        kind,
        ..RouteHeader::default()
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            dst.network(),
        )));
    if let Some((gateway, oif)) = via {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

/// The name of link `index` (asked of the kernel: /sys shows the links of the namespace
/// that mounted it, not necessarily this one's).
fn link_name(route: &mut Route, index: u32) -> io::Result<String> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let answers = route.exchange(RouteNetlinkMessage::GetLink(msg), 0)?;
    answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        })
        .ok_or_else(|| io::Error::other(format!("no interface has index {index}")))
}

/// Makes the main table of the calling thread's namespace hold exactly `want` among the
/// routes of [`PROTOCOL`] in the cluster CIDR: missing ones added, changed ones
/// replaced, others deleted. Forwarding is turned on for each interface a route leaves
/// by: the other nodes' pods' packets come in there.
pub fn apply(want: &Wanted) -> io::Result<Applied> {
    let mut route = Route::open()?;
    let networks = local_networks(&mut route)?;
    let mut done = Applied::default();
    route.exchange(
        RouteNetlinkMessage::NewRoute(message(want.cluster_cidr, None, RouteType::Unreachable)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    for (&dst, &via) in &want.via {
        // Not to an address of this node's own (another agent in this namespace).
        let own = networks.iter().any(|(addr, ..)| *addr == via);
        let link = networks
            .iter()
            .find(|(_, net, _)| !own && net.contains(&via))
            .map(|&(_, _, index)| index);
        let Some(index) = link else {
            done.unreachable.push((dst, via));
            continue;
        };
        route.exchange(
            RouteNetlinkMessage::NewRoute(message(dst, Some((via, index)), RouteType::Unicast)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        let name = link_name(&mut route, index)?;
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
        done.routed.insert(dst, (via, name));
    }
    for (dst, _) in ours(&mut route)? {
        let mine = want.cluster_cidr.contains(&dst) && dst != want.cluster_cidr;
        if mine && !done.routed.contains_key(&dst) {
            let del = message(dst, None, RouteType::Unicast);
            route.request(RouteNetlinkMessage::DelRoute(del))?;
        }
    }
    Ok(done)
}

/// Keeps this node's routes to the other nodes' pods as the Nodes say, from a watch of
/// every Node; again every minute, in case something else changed the table.
pub async fn run(client: kube::Client, me: String, cluster_cidr: Ipv4Net) {
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let api: kube::Api<Node> = kube::Api::all(client);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing = BTreeMap::new();
    let mut synced = false;
    let mut last: Option<Wanted> = None;
    let mut resync = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(n))) => {
                    nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                Some(Ok(watcher::Event::Delete(n))) => {
                    nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
                }
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(n))) => {
                    listing.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    nodes = std::mem::take(&mut listing);
                    synced = true;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch failed; retrying");
                    continue;
                }
            },
            _ = resync.tick() => last = None,
        }
        let want = wanted(&me, cluster_cidr, nodes.values());
        if !synced || last.as_ref() == Some(&want) {
            continue;
        }
        let w = want.clone();
        match tokio::task::spawn_blocking(move || apply(&w)).await {
            Ok(Ok(done)) => {
                for (cidr, via) in &done.unreachable {
                    tracing::warn!(pod_cidr = %cidr, node_ip = %via, "no route to a node's pods: its address is on none of this node's networks (an overlay is not built)");
                }
                tracing::debug!(
                    routes = done.routed.len(),
                    "routes to other nodes' pods in place"
                );
                last = Some(want);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "routes to other nodes' pods not made"),
            Err(e) => tracing::error!(error = %e, "the route task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, addresses: &[(&str, &str)]) -> Node {
        let addresses: Vec<_> = addresses
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    #[test]
    fn every_other_node_with_a_pod_cidr_and_an_address_is_routed_to() {
        let nodes = [
            node("me", Some("10.42.0.0/24"), &[("InternalIP", "192.168.1.2")]),
            node(
                "b",
                Some("10.42.1.0/24"),
                &[("Hostname", "b"), ("InternalIP", "192.168.1.3")],
            ),
            node("c", Some("10.42.2.0/24"), &[("ExternalIP", "192.168.1.4")]),
            node("no-cidr", None, &[("InternalIP", "192.168.1.5")]),
            node("no-address", Some("10.42.4.0/24"), &[]),
            node(
                "same-machine",
                Some("10.42.5.0/24"),
                &[("InternalIP", "127.0.0.1")],
            ),
            node(
                "v6-first",
                Some("10.42.6.0/24"),
                &[("InternalIP", "fd00::7"), ("InternalIP", "192.168.1.7")],
            ),
            node(
                "bad-cidr",
                Some("10.42.7.0/33"),
                &[("InternalIP", "192.168.1.8")],
            ),
            node(
                "other-cluster",
                Some("10.43.8.0/24"),
                &[("InternalIP", "192.168.1.9")],
            ),
            node(
                "whole-cluster",
                Some("10.42.0.0/16"),
                &[("InternalIP", "192.168.1.10")],
            ),
        ];
        let cluster = "10.42.0.0/16".parse().unwrap();
        let got = wanted("me", cluster, &nodes);
        assert_eq!(got.cluster_cidr, cluster);
        let got: Vec<(String, String)> = got
            .via
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let want: Vec<(String, String)> = [
            ("10.42.1.0/24", "192.168.1.3"),
            ("10.42.2.0/24", "192.168.1.4"),
            ("10.42.6.0/24", "192.168.1.7"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    /// Real routes in a namespace of the test's own, with a dummy link for the nodes'
    /// network (no packet is sent).
    #[test]
    fn routes_are_added_replaced_and_removed_in_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let ns = crate::netns::add(dir.path(), "routes").unwrap();
        let run = |via: Vec<(&str, &str)>| {
            let want = Wanted {
                cluster_cidr: "10.42.0.0/16".parse().unwrap(),
                via: via
                    .into_iter()
                    .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
                    .collect(),
            };
            crate::netns::run_in(&ns, move |_| apply(&want))
                .unwrap()
                .unwrap()
        };
        let ip = |args: &str| {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .arg("ip")
                .args(args.split(' '))
                .output()
                .expect("nsenter and ip (util-linux, iproute2)");
            assert!(
                out.status.success(),
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect();
            lines.sort();
            lines.join("\n")
        };
        // (A veth pair: the dummy driver may not be loaded.)
        ip("link add nodes type veth peer name nodes-peer");
        ip("addr add 192.168.77.2/24 dev nodes");
        ip("link set nodes up");
        ip("link set nodes-peer up");

        let done = run(vec![
            ("10.42.1.0/24", "192.168.77.3"),
            ("10.42.2.0/24", "192.168.99.4"),
            ("10.42.3.0/24", "192.168.77.2"),
        ]);
        let unreachable: Vec<(String, String)> = done
            .unreachable
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect();
        assert_eq!(
            unreachable,
            [
                ("10.42.2.0/24".to_string(), "192.168.99.4".to_string()),
                ("10.42.3.0/24".to_string(), "192.168.77.2".to_string()),
            ],
            "off every network, or this node's own address"
        );
        let shown = ip("route show proto 151");
        assert_eq!(
            shown, "10.42.1.0/24 via 192.168.77.3 dev nodes\nunreachable 10.42.0.0/16",
            "{shown}"
        );
        let forwarding = crate::netns::run_in(&ns, |_| {
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/nodes/forwarding")
        });
        assert_eq!(
            forwarding.unwrap().unwrap().trim(),
            "1",
            "packets from other nodes are forwarded"
        );

        // Moved to another address, a new node, one gone; a route of someone else's stays,
        // as does one of this protocol outside the cluster CIDR (another cluster's).
        ip("route add 10.99.0.0/24 via 192.168.77.9");
        ip("route add 10.43.1.0/24 via 192.168.77.9 proto 151");
        run(vec![
            ("10.42.1.0/24", "192.168.77.5"),
            ("10.42.4.0/24", "192.168.77.6"),
        ]);
        let shown = ip("route show proto 151");
        assert_eq!(
            shown.trim(),
            "10.42.1.0/24 via 192.168.77.5 dev nodes\n10.42.4.0/24 via 192.168.77.6 dev nodes\n10.43.1.0/24 via 192.168.77.9 dev nodes\nunreachable 10.42.0.0/16",
            "{shown}"
        );
        run(vec![]);
        assert_eq!(
            ip("route show proto 151"),
            "10.43.1.0/24 via 192.168.77.9 dev nodes\nunreachable 10.42.0.0/16"
        );
        assert!(ip("route show").contains("10.99.0.0/24 via 192.168.77.9"));

        crate::netns::delete(&ns).unwrap();
    }
}
