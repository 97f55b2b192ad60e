//! The placement core alone: decisions per second at 5,000 nodes.
//!
//! `cargo bench -p skiff-scheduler --bench placement`. Each decision is a full
//! scheduling cycle (filters, scores, pick) plus the cache update that assumes the pod,
//! for a mix of Wasm, OCI and mixed pods, with owners and cached artifacts.

use skiff_scheduler::cache::Cluster;
use skiff_scheduler::framework::Framework;
use skiff_scheduler::model::{NodeInfo, PodInfo, Resources, runtime_label};
use skiff_scheduler::placement::Placer;
use std::time::{Duration, Instant};

const NODES: usize = 5_000;
const GI: i64 = 1 << 30;

fn cluster() -> Cluster {
    let mut c = Cluster::new();
    for i in 0..NODES {
        let mut n = NodeInfo::new(
            &format!("node-{i}"),
            Resources {
                milli_cpu: 32_000,
                memory: 128 * GI,
                pods: 110,
            },
        );
        // Every node runs Wasm; two in three also run containers.
        n.set_label(&mut c.interner, &runtime_label("wasm"), "true");
        if !i.is_multiple_of(3) {
            n.set_label(&mut c.interner, &runtime_label("oci"), "true");
        }
        n.set_label(
            &mut c.interner,
            "topology.kubernetes.io/zone",
            &format!("zone-{}", i % 4),
        );
        n.set_label(
            &mut c.interner,
            "kubernetes.io/hostname",
            &format!("node-{i}"),
        );
        if i % 10 == 0 {
            let img = c.interner.intern("registry.local/app:1");
            n.images.insert(img, 8 << 20);
        }
        c.insert_node(n);
    }
    c
}

fn pod(i: usize) -> PodInfo {
    let mut p = PodInfo::with_requests(&format!("pod-{i}"), 100, 128 << 20);
    let class: &[&str] = match i % 4 {
        0 | 1 => &["wasm"],
        2 => &["oci"],
        _ => &["wasm", "oci"],
    };
    p.node_selector = class
        .iter()
        .map(|h| (runtime_label(h), "true".to_string()))
        .collect();
    p.owner = Some(format!("rs-{}", i % 500));
    p.images = vec!["registry.local/app:1".into()];
    p
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn run(label: &str, pods: usize, placer: &mut Placer) {
    let mut c = cluster();
    let mut lat = Vec::with_capacity(pods);
    let started = Instant::now();
    let mut failed = 0;
    for i in 0..pods {
        let p = pod(i);
        let t = Instant::now();
        match placer.place(&c, &p) {
            Ok(idx) => {
                let name = c.nodes()[idx].name.clone();
                c.assume(&p, &name);
            }
            Err(_) => failed += 1,
        }
        lat.push(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{label}: {NODES} nodes, {pods} pods: {:.0} decisions/s, p50 {:.1} µs, p99 {:.1} µs, unplaced {failed}",
        pods as f64 / secs,
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let pods = if quick { 20_000 } else { 100_000 };
    // Warm up caches and the allocator.
    run(
        "warm-up",
        2_000,
        &mut Placer::new(Framework::default_profile()),
    );
    run(
        "adaptive search (Kubernetes default)",
        pods,
        &mut Placer::new(Framework::default_profile()),
    );
    let mut all = Placer::new(Framework::default_profile());
    all.percentage_of_nodes_to_score = Some(100);
    run("every node searched", pods / 10, &mut all);
    // A pod that fits nowhere is checked against every node.
    let c = cluster();
    let mut placer = Placer::new(Framework::default_profile());
    let big = PodInfo::with_requests("too-big", 64_000, GI);
    let n = if quick { 200 } else { 1_000 };
    let t = Instant::now();
    for _ in 0..n {
        let _ = placer.place(&c, &big);
    }
    println!(
        "unschedulable pod (all {NODES} nodes checked, reasons counted): {:.0} decisions/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
}
