//! The Service proxy's nftables ruleset in the real kernel: two network namespaces of
//! the test's own making joined by a veth pair, the ruleset applied in the client's, a
//! busybox `httpd` per endpoint in the server's. A ClusterIP reaches its endpoints
//! (balanced over both, or always the same one with ClientIP affinity), a Service
//! without endpoints and a port a Service lacks are refused, an unallocated ClusterIP is
//! dropped. No packet leaves the two namespaces.

#![allow(clippy::unwrap_used)]

use skiff_runtime::proxy::model::{Protocol, ServicePort};
use skiff_runtime::proxy::nft::{Config, Rules, full, teardown, update};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::process::{Child, Command, Output, Stdio};

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// A command run in network namespace `ns`.
fn within(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

fn nft(ns: &str, transaction: &str) -> Output {
    let mut child = within(ns, &["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (Debian's nftables) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(transaction.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The two namespaces, removed (with their links) when dropped.
struct Pair {
    client: String,
    server: String,
    servers: Vec<Child>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn pair() -> Pair {
    let id = std::process::id();
    let (client, server) = (format!("skpc{id}"), format!("skps{id}"));
    let p = Pair {
        client: client.clone(),
        server: server.clone(),
        servers: Vec::new(),
    };
    ip(&["netns", "add", &client]);
    ip(&["netns", "add", &server]);
    let (a, b) = (format!("skpa{id}"), format!("skpb{id}"));
    ip(&[
        "-n", &client, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &server,
    ]);
    ip(&["-n", &client, "addr", "add", "10.250.0.1/30", "dev", &a]);
    ip(&["-n", &server, "addr", "add", "10.250.0.2/30", "dev", &b]);
    for (ns, dev) in [(&client, &a), (&server, &b)] {
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    // ClusterIPs are routed towards the server's side, the only way out there is.
    ip(&[
        "-n",
        &client,
        "route",
        "add",
        "default",
        "via",
        "10.250.0.2",
    ]);
    p
}

/// The body of `GET /` from `addr` (`ip:port`), through busybox `nc` in `ns` (its
/// `wget` crashes inside a network namespace here); the error `nc` prints otherwise.
fn get(ns: &str, addr: &str) -> Result<String, String> {
    let (host, port) = addr.split_once(':').unwrap_or((addr, "80"));
    let mut child = within(ns, &["busybox", "nc", "-w", "2", host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.trim().to_string()),
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn service(name: &str, cluster_ip: &str, eps: &[&str]) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        service: name.into(),
        port_name: String::new(),
        protocol: Protocol::Tcp,
        cluster_ip: cluster_ip.parse().unwrap(),
        port: 80,
        endpoints: eps
            .iter()
            .map(|e| e.parse::<SocketAddrV4>().unwrap())
            .collect(),
        affinity: None,
    }
}

#[test]
fn cluster_ips_reach_their_endpoints_and_nothing_else() {
    let mut p = pair();
    let www = tempfile::tempdir().unwrap();
    for (port, body) in [(8080, "one"), (8081, "two")] {
        let dir = www.path().join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), body).unwrap();
        let listen = format!("10.250.0.2:{port}");
        let child = within(
            &p.server,
            &[
                "busybox",
                "httpd",
                "-f",
                "-p",
                &listen,
                "-h",
                dir.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap();
        p.servers.push(child);
    }
    let cfg = Config {
        table: "skiff-test".into(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        masquerade_egress: true,
    };
    let sticky = ServicePort {
        affinity: Some(60),
        ..service(
            "sticky",
            "10.96.0.12",
            &["10.250.0.2:8080", "10.250.0.2:8081"],
        )
    };
    let ports = [
        service("web", "10.96.0.10", &["10.250.0.2:8080", "10.250.0.2:8081"]),
        service("idle", "10.96.0.11", &[]),
        sticky.clone(),
    ];
    let applied = Rules::of(&cfg, &ports);
    let out = nft(&p.client, &full(&cfg, &applied));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both endpoints answer, through the ClusterIP (the servers may take a moment to
    // listen: wait until one answers).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&p.client, "10.250.0.2:8081").is_err() || get(&p.client, "10.250.0.2:8080").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoints never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seen: BTreeSet<String> = (0..40)
        .map(|_| get(&p.client, "10.96.0.10").unwrap())
        .collect();
    assert_eq!(seen, BTreeSet::from(["one".to_string(), "two".to_string()]));
    // ClientIP affinity: the client stays on the endpoint it was first given.
    let stuck: BTreeSet<String> = (0..20)
        .map(|_| get(&p.client, "10.96.0.12").unwrap())
        .collect();
    assert_eq!(stuck.len(), 1, "{stuck:?}");

    // Refused at once: no endpoints, or a port the Service does not have.
    let e = get(&p.client, "10.96.0.11").unwrap_err();
    assert!(e.contains("refused"), "{e}");
    let e = get(&p.client, "10.96.0.10:81").unwrap_err();
    assert!(e.contains("refused"), "{e}");
    // An address of the service CIDR no Service has: dropped, not sent on.
    let e = get(&p.client, "10.96.0.99").unwrap_err();
    assert!(e.contains("timed out"), "{e}");

    // A sync writes what changed: the Service without endpoints gets one, the other
    // loses one.
    let ports = [
        service("web", "10.96.0.10", &["10.250.0.2:8080"]),
        service("idle", "10.96.0.11", &["10.250.0.2:8081"]),
        sticky,
    ];
    let want = Rules::of(&cfg, &ports);
    let out = nft(&p.client, &update(&cfg, &applied, &want));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&p.client, "10.96.0.11").unwrap(), "two");
    assert!((0..10).all(|_| get(&p.client, "10.96.0.10").unwrap() == "one"));

    // Torn down, nothing of it is left.
    let out = nft(&p.client, &teardown("skiff-test"));
    assert!(out.status.success());
    let tables = within(&p.client, &["nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("skiff-test"));
}
