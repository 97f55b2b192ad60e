#![allow(clippy::unwrap_used)]
use super::*;
use crate::proxy::model::Protocol;
use std::net::SocketAddrV4;

fn cfg() -> Config {
    Config {
        table: "skiff-t".into(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        masquerade_egress: true,
    }
}

fn port(name: &str, ip: &str, port: u16, eps: &[&str]) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        service: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: ip.parse().unwrap(),
        port,
        endpoints: eps
            .iter()
            .map(|e| e.parse::<SocketAddrV4>().unwrap())
            .collect(),
        affinity: None,
    }
}

#[test]
fn a_service_port_is_a_map_element_and_a_chain_that_dnats_through_a_map() {
    let web = port(
        "web",
        "10.96.0.10",
        80,
        &["10.42.0.5:8080", "10.42.1.7:8080"],
    );
    let none = port("idle", "10.96.0.11", 80, &[]);
    let text = ruleset(&cfg(), &[web.clone(), none]);
    let svc = service_chain(&web);
    assert!(
        svc.starts_with("svc-") && svc.ends_with("-default/web/tcp/http"),
        "{svc}"
    );
    let services: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(&svc) || l.contains("10.96.0.1") || l.contains("element ip skiff-t hairpin")
        })
        .collect();
    // Chains (with their rules) first, then the elements that point at them.
    let want = [
        format!("add chain ip skiff-t {svc}"),
        format!("add rule ip skiff-t {svc} ip saddr != 10.42.0.0/16 jump mark-for-masquerade"),
        format!(
            "add rule ip skiff-t {svc} meta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : 10.42.0.5 . 8080 , 1 : 10.42.1.7 . 8080 }}"
        ),
        "add element ip skiff-t cluster-ips { 10.96.0.10 }".to_string(),
        "add element ip skiff-t cluster-ips { 10.96.0.11 }".to_string(),
        "add element ip skiff-t hairpin { 10.42.0.5 . 10.42.0.5 }".to_string(),
        "add element ip skiff-t hairpin { 10.42.1.7 . 10.42.1.7 }".to_string(),
        "add element ip skiff-t no-endpoint-services { 10.96.0.11 . tcp . 80 : goto reject-chain }"
            .to_string(),
        format!("add element ip skiff-t service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}"),
    ];
    assert_eq!(
        services,
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        text.contains(
            "add rule ip skiff-t nat-postrouting ip saddr . ip daddr @hairpin masquerade\n"
        ),
        "a pod reaching itself through a Service is masqueraded"
    );
}

#[test]
fn a_sync_writes_only_what_changed() {
    let c = cfg();
    let web = port(
        "web",
        "10.96.0.10",
        80,
        &["10.42.0.5:8080", "10.42.1.7:8080"],
    );
    let idle = port("idle", "10.96.0.11", 80, &[]);
    let applied = Rules::of(&c, &[web.clone(), idle.clone()]);
    assert_eq!(update(&c, &applied, &applied), "");
    let web2 = port("web", "10.96.0.10", 80, &["10.42.0.5:8080"]);
    let idle2 = port("idle", "10.96.0.11", 80, &["10.42.2.9:9090"]);
    let want = Rules::of(&c, &[web2.clone(), idle2.clone()]);
    let text = update(&c, &applied, &want);
    let (web_svc, idle_svc) = (service_chain(&web), service_chain(&idle));
    let lines: Vec<&str> = text.lines().collect();
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("missing {l}\n{text}"))
    };
    // The new chain, and the changed one rewritten.
    let idle_made = at(&format!("add chain ip skiff-t {idle_svc}"));
    let flushed = at(&format!("flush chain ip skiff-t {web_svc}"));
    at(&format!(
        "add rule ip skiff-t {web_svc} meta l4proto tcp dnat ip to numgen random mod 1 map {{ 0 : 10.42.0.5 . 8080 }}"
    ));
    // Elements moved from the no-endpoint map to the forwarding one, after the chains.
    let moved = at("delete element ip skiff-t no-endpoint-services { 10.96.0.11 . tcp . 80 }");
    let added = at(&format!(
        "add element ip skiff-t service-ips {{ 10.96.0.11 . tcp . 80 : goto {idle_svc} }}"
    ));
    assert!(idle_made < added && flushed < moved);
    // The endpoint that left is no longer a hairpin; the new one is.
    at("delete element ip skiff-t hairpin { 10.42.1.7 . 10.42.1.7 }");
    at("add element ip skiff-t hairpin { 10.42.2.9 . 10.42.2.9 }");
    // Nothing else: the ClusterIPs stay as they are.
    assert!(!text.contains("cluster-ips"));
    assert_eq!(lines.len(), 10, "{text}");

    // A Service gone: its elements first, its chain flushed and deleted last.
    let text = update(&c, &want, &Rules::of(&c, &[web2]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[lines.len() - 1],
        format!("delete chain ip skiff-t {idle_svc}")
    );
    assert_eq!(
        lines[lines.len() - 2],
        format!("flush chain ip skiff-t {idle_svc}")
    );
    assert!(text.contains("delete element ip skiff-t service-ips { 10.96.0.11 . tcp . 80 }"));
}

#[test]
fn client_ip_affinity_keeps_a_chain_and_a_set_per_endpoint() {
    let c = cfg();
    let mut sticky = port(
        "sticky",
        "10.96.0.12",
        80,
        &["10.42.0.5:8080", "10.42.1.7:8080"],
    );
    sticky.affinity = Some(60);
    let text = ruleset(&c, std::slice::from_ref(&sticky));
    let svc = service_chain(&sticky);
    let (a, b) = (
        endpoint_chain(&sticky, &sticky.endpoints[0]),
        endpoint_chain(&sticky, &sticky.endpoints[1]),
    );
    let (set_a, set_b) = (
        format!("affinity-{}", a.trim_start_matches("ep-")),
        format!("affinity-{}", b.trim_start_matches("ep-")),
    );
    for want in [
        format!(
            "add set ip skiff-t {set_a} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }}"
        ),
        format!("add rule ip skiff-t {a} update @{set_a} {{ ip saddr }}"),
        format!("add rule ip skiff-t {a} meta l4proto tcp dnat to 10.42.0.5:8080"),
        format!("add rule ip skiff-t {svc} ip saddr @{set_a} goto {a}"),
        format!("add rule ip skiff-t {svc} ip saddr @{set_b} goto {b}"),
        format!(
            "add rule ip skiff-t {svc} numgen random mod 2 vmap {{ 0 : goto {a} , 1 : goto {b} }}"
        ),
        "add element ip skiff-t hairpin { 10.42.0.5 . 10.42.0.5 }".to_string(),
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want}\n{text}");
    }
    // Sets before the chains that use them.
    let at = |l: &str| text.find(l).unwrap();
    assert!(at(&format!("add set ip skiff-t {set_a}")) < at(&format!("add chain ip skiff-t {a}")));

    // Another timeout: new chains and sets; the old ones deleted after their chains.
    let mut longer = sticky.clone();
    longer.affinity = Some(120);
    let (applied, want) = (
        Rules::of(&c, &[sticky.clone()]),
        Rules::of(&c, &[longer.clone()]),
    );
    let text = update(&c, &applied, &want);
    let new_a = endpoint_chain(&longer, &longer.endpoints[0]);
    assert_ne!(new_a, a);
    let lines: Vec<&str> = text.lines().collect();
    let pos = |l: String| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("missing {l}\n{text}"))
    };
    let made = pos(format!(
        "add set ip skiff-t affinity-{} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 120s ; }}",
        new_a.trim_start_matches("ep-")
    ));
    let chain_gone = pos(format!("delete chain ip skiff-t {a}"));
    let set_gone = pos(format!("delete set ip skiff-t {set_a}"));
    assert!(made < chain_gone && chain_gone < set_gone, "{text}");
    // Without affinity again: no endpoint chain or set is left.
    let text = update(
        &c,
        &want,
        &Rules::of(
            &c,
            &[port(
                "sticky",
                "10.96.0.12",
                80,
                &["10.42.0.5:8080", "10.42.1.7:8080"],
            )],
        ),
    );
    assert_eq!(text.matches("delete set").count(), 2, "{text}");
    assert_eq!(text.matches("delete chain").count(), 2, "{text}");
}

#[test]
fn the_table_is_replaced_whole_with_kube_proxys_hooks() {
    let text = ruleset(&cfg(), &[]);
    let lines: Vec<&str> = text.lines().collect();
    // Made sure to exist, deleted, made again: one transaction replaces it.
    assert_eq!(
        &lines[..3],
        [
            "add table ip skiff-t",
            "delete table ip skiff-t",
            "add table ip skiff-t"
        ]
    );
    for want in [
        "add chain ip skiff-t nat-prerouting { type nat hook prerouting priority -100 ; policy accept ; }",
        "add chain ip skiff-t nat-output { type nat hook output priority -100 ; policy accept ; }",
        "add chain ip skiff-t nat-postrouting { type nat hook postrouting priority 100 ; policy accept ; }",
        "add chain ip skiff-t filter-output-post-dnat { type filter hook output priority -90 ; policy accept ; }",
        "add rule ip skiff-t services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip skiff-t cluster-ips-check ip daddr @cluster-ips reject",
        "add rule ip skiff-t cluster-ips-check ip daddr 10.96.0.0/12 drop",
        "add rule ip skiff-t masquerading meta mark & 0x4000 == 0 return",
        "add rule ip skiff-t nat-postrouting ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade",
    ] {
        assert!(lines.contains(&want), "missing {want}\n{text}");
    }
    let off = ruleset(
        &Config {
            masquerade_egress: false,
            ..cfg()
        },
        &[],
    );
    assert!(!off.contains("ip daddr != 10.42.0.0/16 masquerade"));
    assert_eq!(
        teardown("skiff-t"),
        "add table ip skiff-t\ndelete table ip skiff-t\n"
    );
    assert_eq!(table_name("edge-1"), table_name("edge-1"));
    assert_ne!(table_name("edge-1"), table_name("edge-2"));
}
