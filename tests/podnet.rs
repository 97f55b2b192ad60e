//! The pod network with the real binary (`--pod-network bridge`): pods get addresses of
//! their node's `podCIDR`, the node and other pods reach them there, and deleting them
//! leaves no link or address behind. Run with the machine's net guard up: no packet to
//! the cluster ranges may leave through the uplink.

#![allow(clippy::unwrap_used)]

mod common;

use common::net::{net_guard, pod_ip, wget_in};
use common::pods::{apply, running, wait_for, wait_gone};
use common::{Server, guest, kube_client};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use std::net::Ipv4Addr;
use std::path::Path;

/// This file's ClusterIPs, inside the guarded 10.96.0.0/12 and apart from other tests'.
const SERVICE_CIDR: &str = "10.100.160.0/24";

/// `nft ARGS`; its output.
fn nft(args: &[&str]) -> String {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("nft (Debian's nftables) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn get(ip: Ipv4Addr, port: u16, path: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{ip}:{port}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET http://{ip}:{port}{path}: {e}"));
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The pod network alone, on real links in real namespaces: two pods on one node's
/// bridge reach each other and are reached from the node; detaching leaves nothing.
#[test]
fn pods_on_a_bridge_reach_each_other_and_the_node_reaches_them() {
    use skiff_runtime::{netns, podnet::PodNetwork};
    net_guard("up");
    let dir = tempfile::tempdir().unwrap();
    let node = format!("podnet-test-{}", std::process::id());
    let cidr: ipnet::Ipv4Net = "10.42.251.0/24".parse().unwrap();
    let net = PodNetwork::open(&dir.path().join("ipam"), &node, cidr).unwrap();
    let nsdir = dir.path().join("netns");
    let (a, b) = (
        netns::add(&nsdir, "a").unwrap(),
        netns::add(&nsdir, "b").unwrap(),
    );
    let ip_a = net.attach("pod-a", &a).unwrap();
    let ip_b = net.attach("pod-b", &b).unwrap();
    assert_eq!(
        (ip_a, ip_b),
        (
            "10.42.251.2".parse().unwrap(),
            "10.42.251.3".parse().unwrap()
        )
    );
    assert_eq!(
        net.attach("pod-a", &a).unwrap(),
        ip_a,
        "attaching again changes nothing"
    );

    // A listener in pod a on its address; connections from pod b, then from the node.
    let listener = netns::run_in(&a, move |_| std::net::TcpListener::bind((ip_a, 8080)))
        .unwrap()
        .unwrap();
    let accept = std::thread::spawn(move || {
        (0..2)
            .map(|_| listener.accept().map(|(_, peer)| peer.ip()).unwrap())
            .collect::<Vec<_>>()
    });
    netns::run_in(&b, move |_| {
        std::net::TcpStream::connect((ip_a, 8080)).map(|_| ())
    })
    .unwrap()
    .unwrap();
    std::net::TcpStream::connect((ip_a, 8080)).unwrap();
    let peers = accept.join().unwrap();
    assert_eq!(
        peers,
        [
            std::net::IpAddr::V4(ip_b),
            std::net::IpAddr::V4(net.gateway())
        ]
    );

    net.detach("pod-a").unwrap();
    net.detach("pod-b").unwrap();
    net.detach("pod-b").unwrap();
    for uid in ["pod-a", "pod-b"] {
        let link = Path::new("/sys/class/net").join(skiff_runtime::podnet::host_end_name(uid));
        assert!(!link.exists(), "{}", link.display());
        assert_eq!(net.address_of(uid).unwrap(), None);
    }
    for p in [&a, &b] {
        netns::delete(p).unwrap();
    }
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&nsdir)
        .status();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", net.bridge()])
        .status();
    assert_eq!(net_guard("hits"), "0", "no packet left the machine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_of_the_node_cidr_and_are_reached_there() {
    net_guard("up");
    let reg = common::Registry::start();
    let wasm = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let image = reg.push_example_image("busybox:1");
    // A cluster CIDR of this test's own, inside the guarded 10.42.0.0/16.
    let s = Server::start_node(
        "pn-node",
        &[
            "--pod-network",
            "bridge",
            "--cluster-cidr",
            "10.42.160.0/20",
            "--service-cidr",
            SERVICE_CIDR,
        ],
    );
    let client = kube_client(&s).await;
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: front\n  labels: {{app: front}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {wasm}\n    ports:\n    - containerPort: 8080\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: box\n  labels: {{app: box}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: httpd\n    image: {image}\n    command: [\"/bin/httpd\", \"-f\", \"-p\", \"8081\", \"-h\", \"/etc\"]\n"
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let front = wait_for(&pods, "front", "Running", running).await;
    let boxed = wait_for(&pods, "box", "Running", running).await;
    let node = Api::<Node>::all(client).get("pn-node").await.unwrap();
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.42.160.0/24")
    );
    let (a, b) = (pod_ip(&front), pod_ip(&boxed));
    let block: ipnet::Ipv4Net = "10.42.160.0/24".parse().unwrap();
    assert!(
        block.contains(&a) && block.contains(&b) && a != b,
        "{a} {b}"
    );
    assert_eq!(
        front.status.as_ref().unwrap().pod_ips.as_ref().unwrap()[0].ip,
        a.to_string()
    );

    // The node reaches both on their addresses: the Wasm service and the container.
    assert!(get(a, 8080, "/").await.contains("hello"), "Wasm front");
    assert_eq!(get(b, 8081, "/hostname").await.trim(), "box");
    // Pod to pod: the container fetches the Wasm service on its pod address.
    let out = wget_in(&s, "box", &format!("http://{a}:8080/"));
    assert!(out.contains("hello"), "{out}");

    // A Service of the Wasm front lists it at its pod address.
    apply(
        &s,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector: {app: front}\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    let listed = || {
        s.kubectl_ok(&[
            "get",
            "endpoints",
            "front",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}:{.subsets[*].ports[*].port}",
        ])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while listed() != format!("{a}:8080") {
        assert!(
            std::time::Instant::now() < deadline,
            "endpoints: {}",
            listed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The Service's ClusterIP forwards to it from the other pod once
    // the node's proxy has the rule (no packet is sent to the address before, so none
    // can take the default route).
    let vip: Ipv4Addr = s
        .kubectl_ok(&["get", "svc", "front", "-o", "jsonpath={.spec.clusterIP}"])
        .parse()
        .unwrap();
    let services: ipnet::Ipv4Net = SERVICE_CIDR.parse().unwrap();
    assert!(services.contains(&vip), "{vip}");
    let table = skiff_runtime::proxy::nft::table_name("pn-node");
    let forwarded = || {
        nft(&["list", "map", "ip", &table, "service-ips"]).contains(&format!("{vip} . tcp . 80"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !forwarded() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never forwarded {vip}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // (Not from the node itself here: the net guard's output chain sees a connection of
    // the node's DNATed to a pod still on the uplink, as netfilter names the device
    // there, and drops it; the multi-node test checks that path from a node namespace.)
    let out = wget_in(&s, "box", &format!("http://{vip}/"));
    assert!(out.contains("hello"), "pod → ClusterIP: {out}");
    // Hairpin: the container reaches itself through a Service of its own (masqueraded,
    // so the reply comes back through the node and is translated back).
    apply(
        &s,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: box\nspec:\n  selector: {app: box}\n  ports:\n  - {port: 80, targetPort: 8081}\n",
    );
    let own: Ipv4Addr = s
        .kubectl_ok(&["get", "svc", "box", "-o", "jsonpath={.spec.clusterIP}"])
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !nft(&["list", "table", "ip", &table]).contains(&format!("{b} . {b}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "never a hairpin: {}",
            nft(&["list", "table", "ip", &table])
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = wget_in(&s, "box", &format!("http://{own}/hostname"));
    assert_eq!(out.trim(), "box", "pod → its own ClusterIP");
    s.kubectl_ok(&["delete", "svc", "box"]);
    // An address of the service CIDR that no Service has is dropped on the node.
    let unassigned = std::net::SocketAddr::from((Ipv4Addr::new(10, 100, 160, 250), 80));
    let e = std::net::TcpStream::connect_timeout(&unassigned, std::time::Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    // An address of the cluster CIDR that no node holds is refused at once: it never
    // takes the default route.
    let nowhere = std::net::SocketAddr::from((Ipv4Addr::new(10, 42, 175, 5), 80));
    let e = std::net::TcpStream::connect_timeout(&nowhere, std::time::Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::HostUnreachable, "{e}");
    s.kubectl_ok(&["delete", "svc", "front"]);

    // Deleted, they leave no veth and no address behind.
    let uids: Vec<String> = [&front, &boxed]
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    s.kubectl_ok(&["delete", "pod", "front", "box", "--wait=false"]);
    wait_gone(&pods, "front").await;
    wait_gone(&pods, "box").await;
    // A pod deleted at once (grace 0) leaves the API before its node has torn it down:
    // wait for the node to finish.
    let links: Vec<_> = uids
        .iter()
        .map(|u| Path::new("/sys/class/net").join(skiff_runtime::podnet::host_end_name(u)))
        .collect();
    let ipam = s.agent_dir().join("ipam");
    let held = || -> Vec<String> {
        std::fs::read_dir(&ipam)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while links.iter().any(|l| l.exists()) || !held().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: links {:?}, addresses {:?}",
            links.iter().filter(|l| l.exists()).collect::<Vec<_>>(),
            held()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // ... and no rule: the Service's chains went with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while nft(&["list", "table", "ip", &table]).contains(&vip.to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            nft(&["list", "table", "ip", &table])
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(net_guard("hits"), "0", "no packet left the machine");
    // The bridge and the table are the node's and outlive its pods; the test's node is
    // gone with them.
    drop(s);
    nft(&["delete", "table", "ip", &table]);
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "unreachable",
            "10.42.160.0/20",
            "proto",
            "151",
        ])
        .status();
    let bridge = skiff_runtime::podnet::bridge_name("pn-node");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
}
