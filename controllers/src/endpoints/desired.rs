//! What a Service's endpoints should be, as pure functions of the Service and its pods
//! (table-tested): which pods are its endpoints and in what condition ([`members`]), the
//! EndpointSlices that list them ([`slices`]) and the legacy Endpoints ([`endpoints`]).
//!
//! As Kubernetes' EndpointSlice controller decides it: a pod is an endpoint once it has
//! an IP and while it has not finished; `serving` is its readiness, `ready` is readiness
//! and not terminating (`publishNotReadyAddresses` makes every endpoint ready), and a
//! terminating pod stays listed with `terminating: true` so proxies can drain it. A named
//! `targetPort` resolves per pod against its containers' ports (with the same protocol);
//! pods that resolve the ports alike share slices, at most [`MAX_PER_SLICE`] endpoints each.
//! A Service without endpoints has one empty slice, so that clients see it is known.
//!
//! The legacy Endpoints list ready pods in `addresses` and unready ones in
//! `notReadyAddresses`, without terminating pods (unless `publishNotReadyAddresses`).
//!
//! Slice names are `<service>-<hash>`, the hash of the Service's uid, the slice's port
//! set and its place: the same pods give the same slices, so a reconcile can create or
//! replace them without remembering what it wrote. Both kinds carry a controller
//! reference to their Service, which the apiserver's garbage collector follows when the
//! Service is deleted (Kubernetes' Endpoints controller deletes them itself instead).

use crate::deployment::hash::short_hash;
use crate::pods;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the slices this controller writes (Kubernetes' own, which clients know).
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label on the endpoints of a headless Service.
pub const HEADLESS: &str = "service.kubernetes.io/headless";
/// Endpoints per slice at most (the controller's default `--max-endpoints-per-slice`).
pub const MAX_PER_SLICE: usize = 100;

/// One pod as an endpoint of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The pod's name.
    pub pod: String,
    /// Its uid.
    pub uid: String,
    /// Its IP.
    pub ip: IpAddr,
    /// The node it runs on.
    pub node: Option<String>,
    /// The node's zone (`topology.kubernetes.io/zone`).
    pub zone: Option<String>,
    /// Its hostname, when its `subdomain` is the Service.
    pub hostname: Option<String>,
    /// Ready to take new connections (and not terminating).
    pub ready: bool,
    /// Passing readiness, terminating or not.
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The Service's ports as this pod serves them; a named `targetPort` the pod does
    /// not have leaves its port out.
    pub ports: Vec<EndpointPort>,
}

/// The Service's selector, if this controller keeps its endpoints (a Service without
/// one, or an ExternalName Service, has endpoints of someone else's making, or none).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Whether `labels` carry every pair of `selector`.
pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pod's port for the Service port's `targetPort`.
fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

/// The Service's endpoints among `pods` (any namespace; only the Service's own count),
/// sorted by pod name. `zone_of` names a node's zone.
pub fn members(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> Vec<Member> {
    let Some(sel) = selector(svc) else {
        return Vec::new();
    };
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let publish = spec.publish_not_ready_addresses == Some(true);
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut out: Vec<Member> = pods
        .iter()
        .filter(|p| p.metadata.namespace == svc.metadata.namespace)
        .filter(|p| selects(sel, p.metadata.labels.as_ref()) && !pods::finished(p))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .as_deref()?
                .parse::<IpAddr>()
                .ok()?;
            let pod_spec = p.spec.as_ref();
            let terminating = pods::terminating(&p.metadata);
            let serving = publish || pods::ready(p);
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|sp| {
                    let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let port = target_port(p, sp.target_port.as_ref(), sp.port, &protocol)?;
                    Some(EndpointPort {
                        name: Some(sp.name.clone().unwrap_or_default()),
                        port: Some(port),
                        protocol: Some(protocol),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect();
            let node = pod_spec.and_then(|s| s.node_name.clone());
            Some(Member {
                pod: p.metadata.name.clone()?,
                uid: p.metadata.uid.clone().unwrap_or_default(),
                ip,
                zone: node.as_deref().and_then(zone_of),
                node,
                hostname: pod_spec
                    .filter(|s| s.subdomain.as_deref() == Some(name))
                    .and_then(|s| s.hostname.clone()),
                ready: publish || (serving && !terminating),
                serving,
                terminating,
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's labels, and the headless label when it is headless.
fn labels_of(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    l.remove(MANAGED_BY);
    l.remove(SERVICE_NAME);
    if headless(svc) {
        l.insert(HEADLESS.into(), String::new());
    } else {
        l.remove(HEADLESS);
    }
    l
}

fn owned_meta(
    svc: &Service,
    uid: &str,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        name: Some(name),
        namespace: svc.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![pods::controller_ref("v1", "Service", &svc_name, uid)]),
        ..ObjectMeta::default()
    }
}

/// Members serving the same ports over the same address family.
struct Group<'a> {
    ports: Vec<EndpointPort>,
    members: Vec<&'a Member>,
}

/// The members grouped by address family and port set, in a stable order.
fn groups(members: &[Member]) -> Vec<(&'static str, Group<'_>)> {
    let mut g: BTreeMap<(&'static str, String), Group<'_>> = BTreeMap::new();
    for m in members {
        let key = serde_json::to_string(&m.ports).unwrap_or_default();
        g.entry((family(&m.ip), key))
            .or_insert_with(|| Group {
                ports: m.ports.clone(),
                members: Vec::new(),
            })
            .members
            .push(m);
    }
    g.into_iter().map(|((f, _), g)| (f, g)).collect()
}

/// The EndpointSlices of the Service with uid `uid`, listing `members`.
pub fn slices(svc: &Service, uid: &str, members: &[Member]) -> Vec<EndpointSlice> {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let mut labels = labels_of(svc);
    labels.insert(SERVICE_NAME.into(), svc_name.clone());
    labels.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
    let slice = |key: &str, family: &str, ports: Option<Vec<EndpointPort>>, eps: Vec<Endpoint>| {
        let name = format!(
            "{svc_name}-{}",
            short_hash(format!("{uid}/{key}").as_bytes())
        );
        EndpointSlice {
            metadata: owned_meta(svc, uid, name, labels.clone()),
            address_type: family.into(),
            endpoints: eps,
            ports,
        }
    };
    let mut out = Vec::new();
    for (family, g) in groups(members) {
        let key = serde_json::to_string(&g.ports).unwrap_or_default();
        for (i, chunk) in g.members.chunks(MAX_PER_SLICE).enumerate() {
            let eps = chunk.iter().map(|m| endpoint(svc, m)).collect();
            out.push(slice(
                &format!("{family}/{key}/{i}"),
                family,
                Some(g.ports.clone()),
                eps,
            ));
        }
    }
    if out.is_empty() {
        out.push(slice("placeholder", "IPv4", None, Vec::new()));
    }
    out
}

fn pod_ref(svc: &Service, m: &Member) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: svc.metadata.namespace.clone(),
        name: Some(m.pod.clone()),
        uid: Some(m.uid.clone()),
        ..ObjectReference::default()
    }
}

fn endpoint(svc: &Service, m: &Member) -> Endpoint {
    Endpoint {
        addresses: vec![m.ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(m.ready),
            serving: Some(m.serving),
            terminating: Some(m.terminating),
        }),
        hostname: m.hostname.clone(),
        node_name: m.node.clone(),
        target_ref: Some(pod_ref(svc, m)),
        zone: m.zone.clone(),
        ..Endpoint::default()
    }
}

/// The legacy Endpoints of the Service with uid `uid`, listing `members`.
pub fn endpoints(svc: &Service, uid: &str, members: &[Member]) -> Endpoints {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let has_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let mut subsets = Vec::new();
    for (_, Group { ports, members: ms }) in groups(members) {
        if has_ports && ports.is_empty() {
            continue;
        }
        let address = |m: &Member| EndpointAddress {
            ip: m.ip.to_string(),
            hostname: m.hostname.clone(),
            node_name: m.node.clone(),
            target_ref: Some(pod_ref(svc, m)),
        };
        let listed = ms.iter().filter(|m| publish || !m.terminating);
        let mut ready: Vec<EndpointAddress> = listed
            .clone()
            .filter(|m| m.ready)
            .map(|m| address(m))
            .collect();
        let mut not_ready: Vec<EndpointAddress> =
            listed.filter(|m| !m.ready).map(|m| address(m)).collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        let ports: Vec<LegacyPort> = ports
            .iter()
            .map(|p| LegacyPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p.port.unwrap_or_default(),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        subsets.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }
    Endpoints {
        metadata: owned_meta(svc, uid, svc_name, labels_of(svc)),
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

#[cfg(test)]
mod tests;
