//! Scheduler throughput through the real API and store, like Kubernetes' scheduler_perf
//! SchedulingBasic: 5,000 nodes and 10,000 pods created up front (no node agents), then
//! timed from the scheduler's start until every pod is bound. Then create-to-bind latency
//! for pods created at a steady rate while the scheduler runs.
//!
//! `cargo bench --bench scheduler`; `SKIFF_BENCH_QUICK=1` for a smaller run.
//! Two placements of the scheduler are measured: inside `skiff server` (in-process API
//! client) and alone as `skiff scheduler --kubeconfig` (HTTPS).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Server;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const GI: u64 = 1 << 30;

fn client(s: &Server) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&s.ca_pem()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn node(i: usize) -> Value {
    let mut labels = json!({"runtime.skiff.dev/wasm": "true", "kubernetes.io/hostname": format!("node-{i}"),
        "topology.kubernetes.io/zone": format!("zone-{}", i % 4)});
    if !i.is_multiple_of(3) {
        labels["runtime.skiff.dev/oci"] = json!("true");
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}"), "labels": labels},
        "status": {"capacity": {"cpu": "32", "memory": format!("{}", 128 * GI), "pods": "110"},
                   "allocatable": {"cpu": "32", "memory": format!("{}", 128 * GI), "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(name: &str, i: usize) -> Value {
    let class = match i % 4 {
        0 | 1 => "wasm",
        2 => "oci",
        _ => "mixed",
    };
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "sched-bench"}},
        "spec": {"runtimeClassName": class, "containers": [{"name": "app", "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}})
}

/// POST every body to `path` from 64 concurrent connections.
async fn create_all(s: &Server, token: &str, path: &str, bodies: Vec<Value>) -> f64 {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, token, url) = (client(s), token.to_string(), s.url(path));
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = bodies.get(i) else { break };
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(b)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

/// Watch pods from `rv`; report each first binding (name, when) on the channel.
fn watch_bindings(
    s: &Server,
    token: &str,
    rv: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (http, token) = (client(s), token.to_string());
    let url = s.url(&format!(
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=600"
    ));
    tokio::spawn(async move {
        let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let o = &ev["object"];
                if o["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                {
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if seen.insert(name.clone()) && tx.send((name, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn revision(s: &Server, token: &str) -> String {
    let v: Value = client(s)
        .get(s.url("/api/v1/namespaces/default/pods?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

async fn populate(s: &Server, token: &str, nodes: usize, pods: usize) {
    let rate = create_all(s, token, "/api/v1/nodes", (0..nodes).map(node).collect()).await;
    println!("  created {nodes} nodes ({rate:.0}/s)");
    let bodies = (0..pods).map(|i| pod(&format!("pod-{i}"), i)).collect();
    let rate = create_all(s, token, "/api/v1/namespaces/default/pods", bodies).await;
    println!("  created {pods} pods ({rate:.0}/s)");
}

async fn all_bound(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    n: usize,
) -> Instant {
    let mut last = Instant::now();
    for _ in 0..n {
        let Some((_, t)) = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .ok()
            .flatten()
        else {
            panic!("not every pod was bound");
        };
        last = t;
    }
    last
}

/// Pods created at `rate`/s while the scheduler runs: create-acknowledged to bound.
async fn paced(s: &Server, token: &str, rate: u64, total: usize) {
    let rv = revision(s, token).await;
    let mut rx = watch_bindings(s, token, &rv);
    let http = client(s);
    let url = s.url("/api/v1/namespaces/default/pods");
    let acked: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let (http, url, token, acked) =
            (http.clone(), url.clone(), token.to_string(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("paced-{i}");
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .json(&pod(&name, i))
                .send()
                .await
                .unwrap();
            let t = Instant::now();
            assert_eq!(r.status(), 201);
            acked.lock().unwrap().insert(name, t);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut bound = HashMap::new();
    while bound.len() < total {
        let (name, t) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap()
            .unwrap();
        bound.insert(name, t);
    }
    let acked = acked.lock().unwrap();
    let mut lat: Vec<Duration> = bound
        .iter()
        .filter_map(|(n, t)| acked.get(n).map(|a| t.saturating_duration_since(*a)))
        .collect();
    lat.sort();
    println!(
        "  create-to-bind at {rate} pods/s ({total} pods): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let (nodes, pods) = if quick {
        (1_000, 2_000)
    } else {
        (5_000, 10_000)
    };

    println!("scheduler inside skiff server (in-process API client):");
    let mut s = Server::start_with(&["--no-scheduler"]);
    let token = s.token();
    populate(&s, &token, nodes, pods).await;
    let rv = revision(&s, &token).await;
    s.kill9();
    let restarted = Instant::now();
    s.restart_with(&["--no-agent", "--no-controllers"]);
    // SKIFF_BENCH_PERF=FILE records a CPU profile of the server while it binds.
    let perf = std::env::var("SKIFF_BENCH_PERF").ok().map(|out| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-g",
                "-o",
                &out,
                "-p",
                &s.pid().unwrap().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    // The watch opens after the restart; bindings made before it are replayed from rv.
    let mut rx = watch_bindings(&s, &token, &rv);
    let last = all_bound(&mut rx, pods).await;
    if let Some(p) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait_with_output();
    }
    let secs = last.duration_since(restarted).as_secs_f64();
    println!(
        "  {pods} pods on {nodes} nodes bound in {secs:.2} s from server start = {:.0} pods/s; server peak RSS {:.0} MiB",
        pods as f64 / secs,
        s.pid().map_or(0.0, peak_rss_mib)
    );
    paced(&s, &token, 1_000, if quick { 1_000 } else { 5_000 }).await;
    drop(s);

    println!("scheduler alone (skiff scheduler --kubeconfig, HTTPS):");
    let s = Server::start_with(&["--no-scheduler"]);
    let token = s.token();
    populate(&s, &token, nodes, pods).await;
    let rv = revision(&s, &token).await;
    let mut rx = watch_bindings(&s, &token, &rv);
    let started = Instant::now();
    let mut sched = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["scheduler", "--kubeconfig"])
        .arg(s.kubeconfig())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let last = all_bound(&mut rx, pods).await;
    let secs = last.duration_since(started).as_secs_f64();
    println!(
        "  {pods} pods on {nodes} nodes bound in {secs:.2} s from scheduler start = {:.0} pods/s; scheduler peak RSS {:.0} MiB",
        pods as f64 / secs,
        peak_rss_mib(sched.id())
    );
    paced(&s, &token, 1_000, if quick { 1_000 } else { 5_000 }).await;
    let _ = sched.kill();
    let _ = sched.wait();
}
