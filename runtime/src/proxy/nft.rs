//! The node's nftables ruleset for Services, rendered as the plain-text transaction
//! `nft -f -` applies atomically (pure; golden-tested, and applied for real in a test
//! network namespace). The layout is kube-proxy's nftables mode, in one `ip` table of the
//! node's own (several agents on one machine keep apart):
//!
//! - `nat-prerouting` and `nat-output` (dstnat) jump to `services`, one verdict-map
//!   lookup of `daddr . l4proto . dport` in `service-ips`, which goes to the Service
//!   port's chain; it marks traffic from outside the cluster CIDR for masquerade and
//!   DNATs to an endpoint picked with `numgen random` from a map of its endpoints'
//!   `addr . port` (one rule; kube-proxy has a chain per endpoint, and `nft` loads a
//!   table of many chains far slower: BENCHMARKS.md, "Service proxy").
//! - A Service port with `sessionAffinity: ClientIP` keeps kube-proxy's chain per
//!   endpoint: the endpoint's chain records the client in a set of its own (dynamic,
//!   with the Service's timeout) and DNATs; the port's chain sends a client found in one
//!   of those sets to that endpoint, and the others to one picked at random.
//! - `nat-postrouting` (srcnat) masquerades marked traffic, hairpin traffic (a pod
//!   reaching itself through a Service: source and destination an endpoint's address,
//!   from the `hairpin` set), and pod traffic leaving the cluster CIDR when egress
//!   masquerade is on.
//! - Filter chains just before DNAT refuse a Service port without endpoints (`reject`,
//!   through `no-endpoint-services`), and after it anything still addressed to a
//!   ClusterIP (a port the Service does not have: `reject`) or to an unallocated address
//!   of the service CIDR (`drop`).
//!
//! The first sync replaces the whole table in one transaction (`add`, `delete`, then the
//! new table); later ones write only what changed ([`update`]), also as one
//! transaction, so no packet ever sees half a ruleset.

use super::model::ServicePort;
use ipnet::Ipv4Net;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The mark bit of traffic to masquerade (kube-proxy's default, bit 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// What the ruleset is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The table's name.
    pub table: String,
    /// Pod addresses: traffic from elsewhere to a Service is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// ClusterIPs: an unallocated one is dropped.
    pub service_cidr: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster CIDR.
    pub masquerade_egress: bool,
}

/// The table name of node `node`: `skiff-` and a hash of the name.
pub fn table_name(node: &str) -> String {
    format!("skiff-{}", &hash(node)[..10])
}

fn hash(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The chain of a Service port.
pub fn service_chain(p: &ServicePort) -> String {
    let key = p.key();
    format!("svc-{}-{key}", &hash(&key)[..8])
}

/// The chain of one endpoint of a Service port with ClientIP affinity (the timeout is
/// part of its name: a new timeout makes a new chain and set, never a changed one).
pub fn endpoint_chain(p: &ServicePort, ep: &std::net::SocketAddrV4) -> String {
    let key = format!("{}__{}/{}", p.key(), ep.ip(), ep.port());
    let salted = format!("{key}__{}", p.affinity.unwrap_or_default());
    format!("ep-{}-{key}", &hash(&salted)[..8])
}

/// The affinity set of an endpoint's chain.
fn affinity_set(chain: &str) -> String {
    format!("affinity-{}", chain.trim_start_matches("ep-"))
}

/// The transaction that removes the table (and everything in it), whether or not it is
/// there.
pub fn teardown(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// The hooked chains: name, type, hook, priority.
const BASE_CHAINS: &[(&str, &str, &str, &str)] = &[
    // dstnat (-100) and srcnat (100), as numbers: nft before 1.0.7 knows `dstnat` only
    // on prerouting.
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
];

/// The maps and the set that Service ports put elements in.
const SERVICE_IPS: &str = "service-ips";
const NO_ENDPOINTS: &str = "no-endpoint-services";
const CLUSTER_IPS: &str = "cluster-ips";
const HAIRPIN: &str = "hairpin";

/// What the Service ports make of the table: their chains (with their rules, in order)
/// and their map and set elements (key → value; a set's values are empty). What a sync
/// applied is kept, so the next one writes only the difference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Sets of ClientIP affinity: name → declaration.
    sets: BTreeMap<String, String>,
    chains: BTreeMap<String, Vec<String>>,
    elements: BTreeMap<&'static str, BTreeMap<String, String>>,
}

impl Rules {
    /// The rules forwarding `ports`.
    pub fn of(cfg: &Config, ports: &[ServicePort]) -> Rules {
        let mut r = Rules::default();
        for p in ports {
            r.add_port(cfg, p);
        }
        r
    }

    /// How many chains of Service ports there are.
    pub fn chains(&self) -> usize {
        self.chains.len()
    }

    fn element(&mut self, map: &'static str, key: String, value: String) {
        self.elements.entry(map).or_default().insert(key, value);
    }

    fn add_port(&mut self, cfg: &Config, p: &ServicePort) {
        let dest = format!("{} . {} . {}", p.cluster_ip, p.protocol.nft(), p.port);
        self.element(CLUSTER_IPS, p.cluster_ip.to_string(), String::new());
        if p.endpoints.is_empty() {
            self.element(NO_ENDPOINTS, dest, "goto reject-chain".into());
            return;
        }
        let svc = service_chain(p);
        for ep in &p.endpoints {
            self.element(HAIRPIN, format!("{0} . {0}", ep.ip()), String::new());
        }
        if let Some(timeout) = p.affinity {
            self.add_sticky_port(cfg, p, &svc, timeout);
            self.element(SERVICE_IPS, dest, format!("goto {svc}"));
            return;
        }
        let mut picks = Vec::new();
        for (i, ep) in p.endpoints.iter().enumerate() {
            picks.push(format!("{i} : {} . {}", ep.ip(), ep.port()));
        }
        let rules = vec![
            format!("ip saddr != {} jump mark-for-masquerade", cfg.cluster_cidr),
            format!(
                "meta l4proto {} dnat ip to numgen random mod {} map {{ {} }}",
                p.protocol.nft(),
                picks.len(),
                picks.join(" , ")
            ),
        ];
        self.element(SERVICE_IPS, dest, format!("goto {svc}"));
        self.chains.insert(svc, rules);
    }

    /// A port with ClientIP affinity, as kube-proxy lays it out: a chain and an
    /// affinity set per endpoint.
    fn add_sticky_port(&mut self, cfg: &Config, p: &ServicePort, svc: &str, timeout: u32) {
        let mut rules = vec![format!(
            "ip saddr != {} jump mark-for-masquerade",
            cfg.cluster_cidr
        )];
        let mut picks = Vec::new();
        for (i, ep) in p.endpoints.iter().enumerate() {
            let chain = endpoint_chain(p, ep);
            let set = affinity_set(&chain);
            self.sets.insert(
                set.clone(),
                format!("type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ;"),
            );
            self.chains.insert(
                chain.clone(),
                vec![
                    format!("update @{set} {{ ip saddr }}"),
                    format!("meta l4proto {} dnat to {ep}", p.protocol.nft()),
                ],
            );
            rules.push(format!("ip saddr @{set} goto {chain}"));
            picks.push(format!("{i} : goto {chain}"));
        }
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            picks.len(),
            picks.join(" , ")
        ));
        self.chains.insert(svc.to_string(), rules);
    }
}

fn element_text(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

fn add_chain(o: &mut String, t: &str, name: &str, rules: &[String]) {
    let _ = writeln!(o, "add chain ip {t} {name}");
    for r in rules {
        let _ = writeln!(o, "add rule ip {t} {name} {r}");
    }
}

/// The ruleset forwarding `ports`, as one transaction that replaces the table.
pub fn ruleset(cfg: &Config, ports: &[ServicePort]) -> String {
    full(cfg, &Rules::of(cfg, ports))
}

/// The transaction that replaces the whole table with its base and `rules`.
pub fn full(cfg: &Config, rules: &Rules) -> String {
    let t = &cfg.table;
    let mut o = base(cfg);
    for (name, decl) in &rules.sets {
        let _ = writeln!(o, "add set ip {t} {name} {{ {decl} }}");
    }
    for (name, chain_rules) in &rules.chains {
        add_chain(&mut o, t, name, chain_rules);
    }
    for (map, elements) in &rules.elements {
        for (k, v) in elements {
            let _ = writeln!(o, "add element ip {t} {map} {{ {} }}", element_text(k, v));
        }
    }
    o
}

/// The transaction that turns the table holding `applied` into one holding `want`:
/// new affinity sets and chains first, changed chains flushed and written again,
/// elements removed and added, and chains no longer used flushed and deleted last, then
/// their sets (nothing refers to them by then). Empty when nothing changed.
pub fn update(cfg: &Config, applied: &Rules, want: &Rules) -> String {
    let t = &cfg.table;
    let mut o = String::new();
    // A set's declaration never changes under its name (the timeout is in it).
    for (name, decl) in &want.sets {
        if !applied.sets.contains_key(name) {
            let _ = writeln!(o, "add set ip {t} {name} {{ {decl} }}");
        }
    }
    for (name, rules) in &want.chains {
        match applied.chains.get(name) {
            None => add_chain(&mut o, t, name, rules),
            Some(old) if old != rules => {
                let _ = writeln!(o, "flush chain ip {t} {name}");
                for r in rules {
                    let _ = writeln!(o, "add rule ip {t} {name} {r}");
                }
            }
            Some(_) => {}
        }
    }
    let none = BTreeMap::new();
    for map in [SERVICE_IPS, NO_ENDPOINTS, CLUSTER_IPS, HAIRPIN] {
        let (old, new) = (
            applied.elements.get(map).unwrap_or(&none),
            want.elements.get(map).unwrap_or(&none),
        );
        for (k, v) in old {
            if new.get(k) != Some(v) {
                let _ = writeln!(o, "delete element ip {t} {map} {{ {k} }}");
            }
        }
        for (k, v) in new {
            if old.get(k) != Some(v) {
                let _ = writeln!(o, "add element ip {t} {map} {{ {} }}", element_text(k, v));
            }
        }
    }
    let gone: Vec<&String> = applied
        .chains
        .keys()
        .filter(|c| !want.chains.contains_key(*c))
        .collect();
    for c in &gone {
        let _ = writeln!(o, "flush chain ip {t} {c}");
    }
    for c in &gone {
        let _ = writeln!(o, "delete chain ip {t} {c}");
    }
    for name in applied.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        let _ = writeln!(o, "delete set ip {t} {name}");
    }
    o
}

/// The table with its hooked chains, helper chains, maps and set, and nothing of any
/// Service: made to exist, deleted and made again, so the transaction replaces it.
fn base(cfg: &Config) -> String {
    let t = &cfg.table;
    let mut o = teardown(t);
    o.push_str(&format!("add table ip {t}\n"));
    for (name, kind, hook, prio) in BASE_CHAINS {
        let _ = writeln!(
            o,
            "add chain ip {t} {name} {{ type {kind} hook {hook} priority {prio} ; policy accept ; }}"
        );
    }
    for name in [
        "services",
        "service-endpoints-check",
        "cluster-ips-check",
        "reject-chain",
        "mark-for-masquerade",
        "masquerading",
    ] {
        let _ = writeln!(o, "add chain ip {t} {name}");
    }
    let vmap = "type ipv4_addr . inet_proto . inet_service : verdict ;";
    let _ = writeln!(o, "add map ip {t} {SERVICE_IPS} {{ {vmap} }}");
    let _ = writeln!(o, "add map ip {t} {NO_ENDPOINTS} {{ {vmap} }}");
    let _ = writeln!(o, "add set ip {t} {CLUSTER_IPS} {{ type ipv4_addr ; }}");
    let _ = writeln!(
        o,
        "add set ip {t} {HAIRPIN} {{ type ipv4_addr . ipv4_addr ; }}"
    );
    let rules: &[(&str, String)] = &[
        ("nat-prerouting", "jump services".into()),
        ("nat-output", "jump services".into()),
        ("nat-postrouting", "jump masquerading".into()),
        (
            "nat-postrouting",
            format!("ip saddr . ip daddr @{HAIRPIN} masquerade"),
        ),
        (
            "filter-input",
            "ct state new jump service-endpoints-check".into(),
        ),
        (
            "filter-forward",
            "ct state new jump service-endpoints-check".into(),
        ),
        (
            "filter-forward",
            "ct state new jump cluster-ips-check".into(),
        ),
        (
            "filter-output",
            "ct state new jump service-endpoints-check".into(),
        ),
        (
            "filter-output-post-dnat",
            "ct state new jump cluster-ips-check".into(),
        ),
        (
            "services",
            format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        ),
        (
            "service-endpoints-check",
            format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINTS}"),
        ),
        (
            "cluster-ips-check",
            format!("ip daddr @{CLUSTER_IPS} reject"),
        ),
        (
            "cluster-ips-check",
            format!("ip daddr {} drop", cfg.service_cidr),
        ),
        ("reject-chain", "reject".into()),
        (
            "mark-for-masquerade",
            format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
        ),
        (
            "masquerading",
            format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
        ),
        (
            "masquerading",
            format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
        ),
        ("masquerading", "masquerade fully-random".into()),
    ];
    for (chain, rule) in rules {
        let _ = writeln!(o, "add rule ip {t} {chain} {rule}");
    }
    if cfg.masquerade_egress {
        let c = cfg.cluster_cidr;
        let _ = writeln!(
            o,
            "add rule ip {t} nat-postrouting ip saddr {c} ip daddr != {c} masquerade"
        );
    }
    o
}

#[cfg(test)]
mod tests;
