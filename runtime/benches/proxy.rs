//! Network programming of the Service proxy: the nftables ruleset for many Services,
//! rendered and applied by the kernel's `nft` in a network namespace made for the run
//! (nothing of the machine's own rules is touched).
//!
//! `cargo bench -p skiff-runtime --bench proxy` (root; Debian's `nftables`).
//! `SKIFF_BENCH_SERVICES=N` changes the 5,000 Services (10 endpoints each).
//! Figures:
//! (a) cold: 5,000 Services × 10 endpoints rendered and applied into an empty table;
//! (b) one endpoint changed, 20 times: the time from the change to the rules in place,
//!     the difference rendered and applied, as the proxy syncs;
//! (c) for comparison, the whole table rewritten after such a change.

#![allow(clippy::unwrap_used)]

use skiff_runtime::proxy::model::{Protocol, ServicePort};
use skiff_runtime::proxy::nft::{Config, Rules, full, update};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINTS: u32 = 10;

fn ports(services: u32) -> Vec<ServicePort> {
    (0..services)
        .map(|i| ServicePort {
            namespace: format!("ns{}", i % 50),
            service: format!("svc{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            // 10.96.0.0/12 holds 2^20 addresses.
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i),
            port: 80,
            endpoints: (0..ENDPOINTS)
                .map(|e| {
                    let n = i * ENDPOINTS + e;
                    SocketAddrV4::new(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 2)) + n),
                        8080,
                    )
                })
                .collect(),
            affinity: None,
        })
        .collect()
}

fn nft(ns: &str, text: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let services: u32 = std::env::var("SKIFF_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let ns = format!("skbench{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let cfg = Config {
        table: "skiff-bench".into(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        masquerade_egress: true,
    };
    let mut ps = ports(services);

    let start = Instant::now();
    let mut applied = Rules::of(&cfg, &ps);
    let text = full(&cfg, &applied);
    let render = start.elapsed();
    let apply = nft(&ns, &text);
    println!(
        "(a) cold, {services} Services x {ENDPOINTS} endpoints ({} chains): render {:.1} ms ({} KiB), nft apply {:.1} ms, total {:.1} ms",
        applied.chains(),
        ms(render),
        text.len() / 1024,
        ms(apply),
        ms(render + apply)
    );

    // One endpoint of one Service replaced per round, as a rolling update does.
    let mut incremental = Vec::new();
    let mut whole = Vec::new();
    for round in 0..20u32 {
        let i = (round * 997) as usize % ps.len();
        let changed = SocketAddrV4::new(Ipv4Addr::new(10, 43, 0, round as u8 + 2), 8080);
        ps[i].endpoints[0] = changed;
        let start = Instant::now();
        let want = Rules::of(&cfg, &ps);
        let text = update(&cfg, &applied, &want);
        nft(&ns, &text);
        incremental.push(start.elapsed());
        applied = want;
        if round < 5 {
            let start = Instant::now();
            nft(&ns, &full(&cfg, &applied));
            whole.push(start.elapsed());
        }
    }
    let show = |what: &str, mut v: Vec<Duration>| {
        v.sort();
        let at = |p: f64| ms(v[((v.len() - 1) as f64 * p) as usize]);
        println!(
            "{what}, n={}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    };
    show(
        "(b) one endpoint changed -> rules in place (what changed)",
        incremental,
    );
    show("(c) the same, the table rewritten whole", whole);
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}
