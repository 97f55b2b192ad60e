//! The pod network of one node (what CNI's `bridge` plugin with `host-local` IPAM does,
//! in the way podman's netavark does it): a bridge of the node's own holding the pods'
//! gateway, the first address of the node's `spec.podCIDR`; each pod sandbox joined to
//! it by a veth pair whose pod end is born inside the pod's network namespace as
//! `eth0`, with an address from [`Ipam`] and a default route via the gateway.
//!
//! Names are per node (`skb…` bridge, `skv…` host ends, hashed from the node name and
//! pod UID), so several agents on one machine never touch each other's links. All of it
//! is made with rtnetlink requests from Rust ([`netns::Route`]); each step accepts what
//! an earlier, interrupted attempt left, so set-up can simply be run again.

pub mod routes;

use crate::ipam::{Ipam, IpamError};
use crate::netns::{self, Route};
use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use sha2::{Digest, Sha256};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The pod end's name inside its namespace.
pub const POD_IFACE: &str = "eth0";

/// Why a pod could not be put on the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No address.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A netlink request was refused.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// `prefix` followed by hex of `key`'s hash, as long as a link name may be (15).
fn link_name(prefix: &str, key: &str) -> String {
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}{}", &hex[..15 - prefix.len()])
}

/// The bridge of node `node`.
pub fn bridge_name(node: &str) -> String {
    link_name("skb", node)
}

/// The host end of pod `uid`'s veth.
pub fn host_end_name(uid: &str) -> String {
    link_name("skv", uid)
}

/// One node's pod network.
pub struct PodNetwork {
    bridge: String,
    ipam: Ipam,
}

fn exists_ok<T>(r: io::Result<T>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The index of link `name`, if it exists.
fn index_of(route: &mut Route, name: &str) -> io::Result<Option<u32>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match route.exchange(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn add_address(route: &mut Route, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    exists_ok(route.exchange(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ))
}

fn add_default_route(route: &mut Route, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: AddressFamily::Inet,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    msg.attributes.push(RouteAttribute::Oif(index));
    exists_ok(route.exchange(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ))
}

/// `bridge link set dev INDEX hairpin on`: the bridge port's `IFLA_BRPORT_MODE`, nested
/// in `IFLA_PROTINFO` of an `AF_BRIDGE` link message (the crate's bridge protinfo is not
/// emitted nested, which the kernel needs, so the attribute is built here).
fn set_hairpin(route: &mut Route, index: u32) -> io::Result<()> {
    use netlink_packet_core::{DefaultNla, Emitable as _, NLA_F_NESTED};
    const IFLA_PROTINFO: u16 = 12;
    const IFLA_BRPORT_MODE: u16 = 4;
    let mode = DefaultNla::new(IFLA_BRPORT_MODE, vec![1]);
    let mut nested = vec![0; mode.buffer_len()];
    mode.emit(&mut nested);
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
        IFLA_PROTINFO | NLA_F_NESTED,
        nested,
    )));
    route.request(RouteNetlinkMessage::SetLink(msg))
}

impl PodNetwork {
    /// The network of node `node` on block `pod_cidr`, its addresses kept in
    /// `state_dir`: makes the bridge with the gateway address if it is missing.
    pub fn open(state_dir: &Path, node: &str, pod_cidr: Ipv4Net) -> Result<PodNetwork, NetError> {
        let ipam = Ipam::open(state_dir, pod_cidr)?;
        let net = PodNetwork {
            bridge: bridge_name(node),
            ipam,
        };
        net.ensure_bridge()?;
        Ok(net)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pods' gateway (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    fn ensure_bridge(&self) -> Result<u32, NetError> {
        let what = || format!("bridge {}", self.bridge);
        let mut route = Route::open().map_err(nl(what()))?;
        if index_of(&mut route, &self.bridge)
            .map_err(nl(what()))?
            .is_none()
        {
            let mut msg = LinkMessage::default();
            msg.attributes
                .push(LinkAttribute::IfName(self.bridge.clone()));
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            exists_ok(route.exchange(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL))
                .map_err(nl(what()))?;
        }
        let index = index_of(&mut route, &self.bridge)
            .map_err(nl(what()))?
            .ok_or_else(|| nl(what())(io::Error::other("made but not found")))?;
        let range = self.ipam.range();
        add_address(&mut route, index, self.gateway(), range.prefix_len()).map_err(nl(what()))?;
        route.set_up(index).map_err(nl(what()))?;
        // Pods' traffic is routed (to Services, other nodes, out): forwarding on for what
        // comes in on the bridge only, not for the machine's other interfaces.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.bridge),
            "1",
        )
        .map_err(nl(format!("{}: turning forwarding on", what())))?;
        Ok(index)
    }

    /// Puts pod `uid`, whose network namespace is `netns`, on the network; returns its
    /// address. Running it again for the same pod gives the same address.
    pub fn attach(&self, uid: &str, netns_path: &Path) -> Result<Ipv4Addr, NetError> {
        let ip = self.ipam.allocate(uid)?;
        let done = self.wire(uid, netns_path, ip);
        if done.is_err() {
            // Nothing half-made stays: the next attempt starts clean.
            let _ = self.detach(uid);
        }
        done.map(|()| ip)
    }

    fn wire(&self, uid: &str, netns_path: &Path, ip: Ipv4Addr) -> Result<(), NetError> {
        let host_end = host_end_name(uid);
        let what = |s: &str| format!("pod {uid}: {s}");
        let mut route = Route::open().map_err(nl(what("rtnetlink")))?;
        // Made when the network opened; made again only if someone removed it.
        let bridge = match index_of(&mut route, &self.bridge).map_err(nl(what("bridge")))? {
            Some(i) => i,
            None => self.ensure_bridge()?,
        };
        if index_of(&mut route, &host_end)
            .map_err(nl(what("veth")))?
            .is_none()
        {
            let ns = std::fs::File::open(netns_path).map_err(nl(what("network namespace")))?;
            let mut peer = LinkMessage::default();
            peer.attributes
                .push(LinkAttribute::IfName(POD_IFACE.to_string()));
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(host_end.clone()));
            msg.attributes.push(LinkAttribute::Controller(bridge));
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            route
                .exchange(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(nl(what("veth")))?;
        }
        let host_index = index_of(&mut route, &host_end)
            .map_err(nl(what("veth")))?
            .ok_or_else(|| nl(what("veth"))(io::Error::other("made but not found")))?;
        route.set_up(host_index).map_err(nl(what("veth up")))?;
        // Hairpin: a pod that reaches a Service of its own is sent back down its own
        // port. Over rtnetlink rather than sysfs: /sys shows the links of the namespace
        // that mounted it, not necessarily the agent's.
        set_hairpin(&mut route, host_index).map_err(nl(what("hairpin mode")))?;
        let prefix = self.ipam.range().prefix_len();
        let gateway = self.gateway();
        netns::run_in(netns_path, move |r| -> io::Result<()> {
            let index = index_of(r, POD_IFACE)?
                .ok_or_else(|| io::Error::other("the pod end of the veth is missing"))?;
            add_address(r, index, ip, prefix)?;
            r.set_up(index)?;
            add_default_route(r, index, gateway)
        })
        .and_then(|r| r)
        .map_err(nl(what("pod interface")))
    }

    /// Takes pod `uid` off the network: its veth goes (both ends) and its address is
    /// freed. Nothing left to remove is fine.
    pub fn detach(&self, uid: &str) -> Result<(), NetError> {
        let host_end = host_end_name(uid);
        let what = format!("pod {uid}: removing veth {host_end}");
        let mut route = Route::open().map_err(nl(what.clone()))?;
        if let Some(index) = index_of(&mut route, &host_end).map_err(nl(what.clone()))? {
            let mut msg = LinkMessage::default();
            msg.header.index = index;
            match route.request(RouteNetlinkMessage::DelLink(msg)) {
                Err(e) if e.raw_os_error() != Some(rustix::io::Errno::NODEV.raw_os_error()) => {
                    return Err(nl(what)(e));
                }
                _ => {}
            }
        }
        self.ipam.release(uid)?;
        Ok(())
    }

    /// The address pod `uid` holds, if any.
    pub fn address_of(&self, uid: &str) -> Result<Option<Ipv4Addr>, NetError> {
        Ok(self
            .ipam
            .held()?
            .into_iter()
            .find(|(_, u)| u == uid)
            .map(|(ip, _)| ip))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn link_names_fit_and_differ_per_node_and_pod() {
        let (a, b) = (bridge_name("node-a"), bridge_name("node-b"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("skb"));
        let v = host_end_name("0b6c1a6e-0f6b-4b7e-9a55-2f7c3f1d9e11");
        assert_eq!(v.len(), 15);
        assert!(v.starts_with("skv"));
        assert_eq!(v, host_end_name("0b6c1a6e-0f6b-4b7e-9a55-2f7c3f1d9e11"));
    }
}
