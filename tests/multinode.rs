//! Two nodes on one machine, as two hosts would be: each a `skiff agent` in a network
//! namespace of the test's own, joined to the server (in the machine's namespace) by a
//! bridge of the test's own. Pods on either node reach each other over the routes the
//! agents make to each other's podCIDR (host-gw), nodes reach the other node's pods and
//! Services' ClusterIPs. Run with the machine's net guard up; no address outside the
//! machine is used.

#![allow(clippy::unwrap_used)]

mod common;

use common::net::{net_guard, pod_ip, wget_in};
use common::pods::{apply, running, wait_for};
use common::{Agent, Registry, Server, guest, kube_client};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// This file's ranges: inside the guarded ones and apart from other tests'.
const CLUSTER_CIDR: &str = "10.42.176.0/20";
const SERVICE_CIDR: &str = "10.100.161.0/24";
/// The "hosts'" network: the machine's end of the bridge is `.1`, node `i` is `.10+i`.
const HOSTS_NET: &str = "10.213.47";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's hosts: a bridge on the machine and a namespace per node with a veth on
/// it; all removed when dropped.
struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
}

impl Hosts {
    fn make(n: usize) -> Hosts {
        let id = std::process::id() % 100_000;
        let bridge = format!("sktb{id}");
        let mut hosts = Hosts {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{HOSTS_NET}.1/24"), "dev", &bridge],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..n {
            let ns = format!("skt{id}-{i}");
            let host_end = format!("skth{id}-{i}");
            run("ip", &["netns", "add", &ns]);
            hosts.namespaces.push(ns.clone());
            run(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            run("ip", &["link", "set", &host_end, "master", &bridge, "up"]);
            let inside = |args: &[&str]| {
                let mut all = vec!["-n", ns.as_str()];
                all.extend_from_slice(args);
                run("ip", &all);
            };
            inside(&["addr", "add", &format!("{}/24", hosts.ip(i)), "dev", "eth0"]);
            inside(&["link", "set", "lo", "up"]);
            inside(&["link", "set", "eth0", "up"]);
            // What a default route would do for Services: ClusterIPs leave by the hosts'
            // network (the node's proxy rewrites them before they do). No default route:
            // nothing else may leave.
            inside(&[
                "route",
                "add",
                SERVICE_CIDR,
                "via",
                &format!("{HOSTS_NET}.1"),
            ]);
        }
        hosts
    }

    fn ip(&self, i: usize) -> String {
        format!("{HOSTS_NET}.{}", 10 + i)
    }

    /// `cmd args` inside node `i`'s namespace.
    fn exec(&self, i: usize, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.namespaces[i].as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET http://addr/path` from node `i` (curl in its namespace).
fn curl_from(hosts: &Hosts, i: usize, url: &str) -> String {
    hosts.exec(i, "curl", &["-sS", "--max-time", "10", url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_nodes_reach_each_other_and_each_others_services() {
    net_guard("up");
    let hosts = Hosts::make(2);
    let reg = Registry::start_on("0.0.0.0");
    let gateway = format!("{HOSTS_NET}.1");
    // Pushed over loopback, pulled by the nodes at the bridge address.
    let at_bridge = |r: String| r.replacen("127.0.0.1", &gateway, 1);
    let wasm = at_bridge(reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c"));
    let image = at_bridge(reg.push_example_image("busybox:1"));
    let registry = format!("{gateway}:{}", reg.port);
    let s = Server::start_with(&[
        "--bind",
        "0.0.0.0",
        "--tls-san",
        &gateway,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--service-cidr",
        SERVICE_CIDR,
    ]);
    let url = format!("https://{gateway}:{}", s.port);
    let names = ["mn-a", "mn-b"];
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| {
            Agent::start_in_netns(
                &s,
                &url,
                names[i],
                &hosts.namespaces[i],
                &hosts.ip(i),
                &[
                    "--pod-network",
                    "bridge",
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--service-cidr",
                    SERVICE_CIDR,
                    "--insecure-registry",
                    &registry,
                ],
            )
        })
        .collect();
    let client = kube_client(&s).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidrs = Vec::new();
    for n in names {
        let deadline = Instant::now() + Duration::from_secs(60);
        let cidr = loop {
            if let Ok(node) = nodes.get(n).await
                && let Some(c) = node.spec.and_then(|s| s.pod_cidr)
            {
                break c.parse::<ipnet::Ipv4Net>().unwrap();
            }
            assert!(Instant::now() < deadline, "node {n} never got a podCIDR");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1]);

    // A container on node a, a Wasm service on node b, each behind a Service.
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\n  labels: {{app: box}}\nspec:\n  nodeName: mn-a\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: httpd\n    image: {image}\n    command: [\"/bin/httpd\", \"-f\", \"-p\", \"8081\", \"-h\", \"/etc\"]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: front\n  labels: {{app: front}}\nspec:\n  nodeName: mn-b\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {wasm}\n    ports:\n    - containerPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: box\nspec:\n  selector: {{app: box}}\n  ports:\n  - {{port: 80, targetPort: 8081}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector: {{app: front}}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n"
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let boxed = wait_for(&pods, "box", "Running", running).await;
    let front = wait_for(&pods, "front", "Running", running).await;
    let (box_ip, front_ip) = (pod_ip(&boxed), pod_ip(&front));
    assert!(cidrs[0].contains(&box_ip), "{box_ip} in {}", cidrs[0]);
    assert!(cidrs[1].contains(&front_ip), "{front_ip} in {}", cidrs[1]);
    assert_eq!(
        boxed.status.as_ref().unwrap().host_ip.as_deref(),
        Some(hosts.ip(0).as_str())
    );

    // Each node routes to the other's podCIDR via the other's address.
    for (i, other) in [(0, 1), (1, 0)] {
        let want = format!("{} via {} dev eth0", cidrs[other], hosts.ip(other));
        until(&format!("node {i} never routed to {want}"), || {
            hosts
                .exec(i, "ip", &["route", "show", "proto", "151"])
                .contains(&want)
        })
        .await;
    }

    // Pod → pod across nodes: the container on a fetches the Wasm service on b.
    let out = wget_in(&s, "box", &format!("http://{front_ip}:8080/"));
    assert!(out.contains("hello"), "pod on a → pod on b: {out}");
    // A node → a pod on the other node.
    assert_eq!(
        curl_from(&hosts, 1, &format!("http://{box_ip}:8081/hostname")).trim(),
        "box",
        "node b → pod on a"
    );
    assert!(curl_from(&hosts, 0, &format!("http://{front_ip}:8080/")).contains("hello"));

    // Services across nodes, once each node's proxy has them.
    let vip = |name: &str| -> Ipv4Addr {
        s.kubectl_ok(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"])
            .parse()
            .unwrap()
    };
    let (box_vip, front_vip) = (vip("box"), vip("front"));
    for (i, name) in names.iter().enumerate() {
        for (v, ip) in [(box_vip, box_ip), (front_vip, front_ip)] {
            let listed = format!("{v} . tcp . 80");
            let table = skiff_runtime::proxy::nft::table_name(name);
            until(&format!("node {i} never forwarded {v} to {ip}"), || {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &hosts.namespaces[i],
                        "nft",
                        "list",
                        "table",
                        "ip",
                        &table,
                    ])
                    .output()
                    .unwrap();
                let t = String::from_utf8_lossy(&out.stdout);
                t.contains(&listed) && t.contains(&ip.to_string())
            })
            .await;
        }
    }
    // Pod on a → a Service whose endpoint is on b.
    let out = wget_in(&s, "box", &format!("http://{front_vip}/"));
    assert!(
        out.contains("hello"),
        "pod on a → ClusterIP of b's pod: {out}"
    );
    // Node b → a Service whose endpoint is on a (DNAT on the node's own output).
    assert_eq!(
        curl_from(&hosts, 1, &format!("http://{box_vip}/hostname")).trim(),
        "box",
        "node b → ClusterIP of a's pod"
    );

    // A node that leaves takes its route with it.
    agents[1].kill9();
    s.kubectl_ok(&["delete", "node", "mn-b"]);
    let gone = format!("{} via", cidrs[1]);
    until("node b's route outlived its Node", || {
        !hosts
            .exec(0, "ip", &["route", "show", "proto", "151"])
            .contains(&gone)
    })
    .await;
    assert_eq!(net_guard("hits"), "0", "no packet left the machine");
}
