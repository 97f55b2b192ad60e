//! What the node forwards, as pure functions of Services and EndpointSlices
//! (table-tested): one [`ServicePort`] per port of each Service with a ClusterIP, and the
//! endpoints it balances over.
//!
//! As kube-proxy picks them: endpoints whose `ready` condition is true (unset counts as
//! true); when none is, the serving ones that are terminating, so connections drain to
//! pods on their way out rather than fail; for `internalTrafficPolicy: Local`, only
//! those on this node. A slice's port matches a Service port by name and protocol.
//! `sessionAffinity: ClientIP` keeps a client on the endpoint it was given for the
//! Service's `timeoutSeconds` (10800 when unset, as Kubernetes defaults it).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A transport protocol, as nftables names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// From a Kubernetes protocol name (TCP when unset).
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Its nftables name.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of a Service, as the node forwards it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port's name ("" for the only, unnamed port).
    pub port_name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The port on the ClusterIP.
    pub port: u16,
    /// Where connections go, sorted; empty: refused.
    pub endpoints: Vec<SocketAddrV4>,
    /// `sessionAffinity: ClientIP`: for how many seconds a client keeps its endpoint.
    pub affinity: Option<u32>,
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

impl ServicePort {
    /// `ns/name/proto/port-name`, which names its chains.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.service,
            self.protocol.nft(),
            self.port_name
        )
    }
}

/// The Service's ports with the endpoints `slices` (those of any Service; only its own
/// count) give them, as node `node` forwards them. Nothing for a Service without a
/// ClusterIP (headless, ExternalName) or with an IPv6 one.
pub fn service_ports(svc: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<ServicePort> {
    let (Some(ns), Some(name), Some(spec)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(cluster_ip) = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return Vec::new();
    };
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let own: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.address_type == "IPv4"
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(name)
        })
        .collect();
    let mut out = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let (Some(protocol), Ok(port)) = (
            Protocol::parse(sp.protocol.as_deref()),
            u16::try_from(sp.port),
        ) else {
            continue;
        };
        let port_name = sp.name.clone().unwrap_or_default();
        let endpoints = endpoints_for(&own, &port_name, protocol, local_only.then_some(node));
        out.push(ServicePort {
            namespace: ns.to_string(),
            service: name.to_string(),
            port_name,
            protocol,
            cluster_ip,
            port,
            endpoints,
            affinity,
        });
    }
    out
}

/// The addresses of the slices' endpoints for the port named `port_name`: the ready
/// ones, or else the serving terminating ones; only those on `node` when given.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node: Option<&str>,
) -> Vec<SocketAddrV4> {
    let mut ready = Vec::new();
    let mut draining = Vec::new();
    for s in slices {
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            if node.is_some_and(|n| e.node_name.as_deref() != Some(n)) {
                continue;
            }
            let c = e.conditions.clone().unwrap_or_default();
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let addr = SocketAddrV4::new(ip, port);
            if c.ready.unwrap_or(true) {
                ready.push(addr);
            } else if c.serving.unwrap_or(true) && c.terminating.unwrap_or(false) {
                draining.push(addr);
            }
        }
    }
    let mut chosen = if ready.is_empty() { draining } else { ready };
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(
        ns: &str,
        service: &str,
        ports: serde_json::Value,
        eps: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": ports, "endpoints": eps,
        }))
        .unwrap()
    }

    fn ep(
        ip: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
        node: &str,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn addrs(p: &ServicePort) -> Vec<String> {
        p.endpoints.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn which_endpoints_a_service_port_forwards_to() {
        let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        let spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]});
        let cases = [
            (
                "ready endpoints only, sorted",
                spec.clone(),
                vec![slice(
                    "default",
                    "web",
                    http.clone(),
                    json!([
                        ep("10.42.0.6", true, true, false, "a"),
                        ep("10.42.0.5", true, true, false, "b"),
                        ep("10.42.0.7", false, false, false, "a"),
                        ep("10.42.0.8", false, true, true, "a"),
                    ]),
                )],
                vec!["10.42.0.5:8080", "10.42.0.6:8080"],
            ),
            (
                "none ready: the serving ones that are terminating",
                spec.clone(),
                vec![slice(
                    "default",
                    "web",
                    http.clone(),
                    json!([
                        ep("10.42.0.7", false, false, false, "a"),
                        ep("10.42.0.8", false, true, true, "a"),
                        ep("10.42.0.9", false, false, true, "a"),
                    ]),
                )],
                vec!["10.42.0.8:8080"],
            ),
            (
                "internalTrafficPolicy Local: this node's only",
                json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
                vec![slice(
                    "default",
                    "web",
                    http.clone(),
                    json!([
                        ep("10.42.0.5", true, true, false, "a"),
                        ep("10.42.0.6", true, true, false, "b"),
                    ]),
                )],
                vec!["10.42.0.5:8080"],
            ),
            (
                "other Services' slices, other namespaces and other ports do not count",
                spec.clone(),
                vec![
                    slice(
                        "default",
                        "db",
                        http.clone(),
                        json!([ep("10.42.0.5", true, true, false, "a")]),
                    ),
                    slice(
                        "other",
                        "web",
                        http.clone(),
                        json!([ep("10.42.0.6", true, true, false, "a")]),
                    ),
                    slice(
                        "default",
                        "web",
                        json!([{"name": "metrics", "port": 9100}]),
                        json!([ep("10.42.0.7", true, true, false, "a")]),
                    ),
                    slice(
                        "default",
                        "web",
                        json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
                        json!([ep("10.42.0.8", true, true, false, "a")]),
                    ),
                ],
                vec![],
            ),
            (
                "endpoints of several slices, once each",
                spec.clone(),
                vec![
                    slice(
                        "default",
                        "web",
                        http.clone(),
                        json!([ep("10.42.0.5", true, true, false, "a")]),
                    ),
                    slice(
                        "default",
                        "web",
                        http.clone(),
                        json!([
                            ep("10.42.1.5", true, true, false, "b"),
                            ep("10.42.0.5", true, true, false, "a")
                        ]),
                    ),
                ],
                vec!["10.42.0.5:8080", "10.42.1.5:8080"],
            ),
        ];
        for (what, spec, slices, want) in cases {
            let refs: Vec<&EndpointSlice> = slices.iter().collect();
            let ports = service_ports(&svc(spec), &refs, "a");
            assert_eq!(ports.len(), 1, "{what}");
            assert_eq!(addrs(&ports[0]), want, "{what}");
        }
    }

    #[test]
    fn client_ip_affinity_comes_with_its_timeout() {
        let ports = json!([{"port": 80}]);
        for (spec, want) in [
            (json!({"clusterIP": "10.96.0.10", "ports": ports}), None),
            (
                json!({"clusterIP": "10.96.0.10", "sessionAffinity": "None", "ports": ports}),
                None,
            ),
            (
                json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP", "ports": ports}),
                Some(10800),
            ),
            (
                json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": ports}),
                Some(60),
            ),
        ] {
            let p = &service_ports(&svc(spec.clone()), &[], "a")[0];
            assert_eq!(p.affinity, want, "{spec}");
        }
    }

    #[test]
    fn services_without_a_cluster_ip_are_not_forwarded() {
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}),
            json!({"clusterIP": "fd00::10", "ports": [{"port": 80}]}),
            json!({"ports": [{"port": 80}]}),
        ] {
            assert_eq!(
                service_ports(&svc(spec.clone()), &[], "a"),
                vec![],
                "{spec}"
            );
        }
        let p = &service_ports(
            &svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]})),
            &[],
            "a",
        )[0];
        assert_eq!(
            (p.protocol, p.port, p.key()),
            (Protocol::Udp, 53, "default/web/udp/".to_string())
        );
    }
}
