//! Wasm workloads through the whole product: a real registry, `skiff server`, a
//! `skiff agent` node and its Wasm host.
//!
//! `cargo bench --bench wasm` (needs `scripts/build-guests.sh` first, `wrk`, and for the
//! side-by-side figure `wasmtime` from `cargo install wasmtime-cli --version =48.0.8`).
//! `SKIFF_BENCH_QUICK=1` shortens every part; `SKIFF_BENCH_PARTS=b` (any of `abc`) runs
//! only the parts named. Parts:
//! (a) create → Running for 200 pods of a cached Wasm artifact;
//! (b) wasi:http requests/s and latency through a pod's hostPort, side by side with
//!     `wasmtime serve` on the same component, same load generator, same run, a fresh
//!     instance per request on both sides — for a light guest (C) and a heavy one (Python);
//! (c) 1,000 idle wasi:http pods on one node: RSS of the agent and the Wasm host, and
//!     every pod answering (run before (b), so no load burst is in the figure).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Agent, Registry, Server, free_port, guest, kube_client};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pod_yaml(name: &str, image: &str, host_port: Option<u16>, label: &str) -> String {
    let hp = host_port
        .map(|p| format!("\n      hostPort: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{bench: {label}}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {image}\n    ports:\n    - containerPort: 8080{hp}\n    resources:\n      requests: {{cpu: 1m, memory: 1Mi}}\n"
    )
}

fn apply(s: &Server, yaml: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), yaml).unwrap();
    s.kubectl_ok(&["apply", "-f", f.path().to_str().unwrap()]);
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.container_statuses
                .as_ref()
                .is_some_and(|c| c.iter().all(|c| c.ready))
    })
}

/// Each pod's first moment Running, from a watch of pods labelled `bench=label`.
fn watch_running(
    client: kube::Client,
    label: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let cfg = watcher::Config::default().labels(&format!("bench={label}"));
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        use kube::runtime::WatchStreamExt;
        // With back-off, a failing watch (the server gone at the end) waits between
        // retries instead of spinning, so the runtime can shut down.
        let mut stream = std::pin::pin!(watcher(pods, cfg).default_backoff());
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
                && is_running(&p)
            {
                let name = p.metadata.name.unwrap_or_default();
                if seen.insert(name.clone()) && tx.send((name, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn wait_answering(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing answers on port {port}");
}

/// `wrk` against a port: (requests/s, p50 ms, p99 ms, non-2xx or socket errors).
///
/// The load is `-t2 -c16` (two threads, sixteen connections) unless `SKIFF_BENCH_WRK`
/// names other `wrk` flags.
fn wrk(port: u16, secs: u64) -> (f64, f64, f64, String) {
    let wrk_load = std::env::var("SKIFF_BENCH_WRK").unwrap_or_else(|_| "-t2 -c16".into());
    let out = Command::new("wrk")
        .args(wrk_load.split_whitespace())
        .args([&format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (Debian package wrk) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| {
                let (n, mult) = if let Some(x) = v.strip_suffix("ms") {
                    (x, 1.0)
                } else if let Some(x) = v.strip_suffix("us") {
                    (x, 0.001)
                } else if let Some(x) = v.strip_suffix('s') {
                    (x, 1000.0)
                } else {
                    (v, 1.0)
                };
                n.parse::<f64>().unwrap_or(0.0) * mult
            })
            .unwrap_or(0.0)
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    (num("Requests/sec:"), num("50%"), num("99%"), errors)
}

fn wasmtime() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from)?;
    let p = home.join(".cargo/bin/wasmtime");
    p.exists().then_some(p)
}

/// One `wrk` result, printed.
fn show(r: &(f64, f64, f64, String)) -> String {
    let errors = if r.3.is_empty() {
        String::new()
    } else {
        format!(" [{}]", r.3)
    };
    format!(
        "{:.0} req/s (p50 {:.2} ms, p99 {:.2} ms){errors}",
        r.0, r.1, r.2
    )
}

/// `wasmtime serve` on a guest with extra flags, loaded by the same `wrk` run.
async fn serve_with_wasmtime(
    wasmtime: &std::path::Path,
    flags: &[&str],
    file: &str,
    secs: u64,
) -> (f64, f64, f64, String) {
    let port = free_port();
    let mut child = Command::new(wasmtime)
        .args(["serve", "-S", "cli", "--addr", &format!("127.0.0.1:{port}")])
        .args(flags)
        .arg(guest(file))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_answering(port).await;
    let r = tokio::task::spawn_blocking(move || wrk(port, secs))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    r
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let parts = std::env::var("SKIFF_BENCH_PARTS").unwrap_or_else(|_| "abc".into());
    let reg = Registry::start();
    let light = reg.push(&guest("hello-http-c.wasm"), "bench/hello:c");
    let heavy = reg.push(&guest("hello-http-py.wasm"), "bench/hello:py");
    let s = Server::start_with(&[]);
    let agent = Agent::start_with(&s, "bench-node", &["--max-pods", "1500"]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // (a) create → Running, artifact cached (the warm-up pod pulls and compiles it).
    if parts.contains('a') {
        let n = if quick { 50 } else { 200 };
        let mut rx = watch_running(client.clone(), "a");
        apply(&s, &pod_yaml("warm", &light, None, "a"));
        rx.recv().await.unwrap();
        let mut created = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for i in 0..n {
            tick.tick().await;
            let p: Pod =
                serde_yaml::from_str(&pod_yaml(&format!("a-{i}"), &light, None, "a")).unwrap();
            pods.create(&Default::default(), &p).await.unwrap();
            created.insert(format!("a-{i}"), Instant::now());
        }
        let mut lat = Vec::new();
        while lat.len() < n {
            let Ok(Some((name, t))) =
                tokio::time::timeout(Duration::from_secs(120), rx.recv()).await
            else {
                let out = s.kubectl(&["get", "pods", "-l", "bench=a", "--no-headers"]);
                let stuck: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.contains("Running"))
                    .map(String::from)
                    .collect();
                let node = s.kubectl(&[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={.items[*].status.allocatable}",
                ]);
                let first = stuck
                    .first()
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or("");
                let why = s.kubectl(&["describe", "pod", first]);
                panic!(
                    "only {} of {n} pods seen Running; not Running: {}; node allocatable {}; {}",
                    lat.len(),
                    stuck.len(),
                    String::from_utf8_lossy(&node.stdout),
                    String::from_utf8_lossy(&why.stdout)
                );
            };
            if let Some(c) = created.get(&name) {
                lat.push(t.saturating_duration_since(*c));
            }
        }
        lat.sort();
        println!(
            "(a) create -> Running, {n} pods of a cached Wasm artifact at 20 pods/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
        s.kubectl_ok(&[
            "delete",
            "pods",
            "-l",
            "bench=a",
            "--wait=true",
            "--timeout=300s",
        ]);
    }

    // (c) before (b): the figure is for idle pods, not for memory a load burst left
    // resident in the pool.
    if parts.contains('c') {
        idle_pods(&s, &agent, &client, &light, quick).await;
    }

    // (b) requests/s through the hostPort, side by side with `wasmtime serve`: as it comes
    // (the comparison the issue asks for), and given the same pool tuning as Skiff's host,
    // to show how much of the difference is that tuning.
    let secs = if quick { 5 } else { 15 };
    let b_cases = [
        ("light (C)", light.clone(), "hello-http-c.wasm"),
        ("heavy (Python)", heavy.clone(), "hello-http-py.wasm"),
    ];
    let tuned: &[&str] = &[
        "-O",
        "pooling-allocator=y",
        "-O",
        "pooling-memory-keep-resident=16777216",
        "-O",
        "pooling-table-keep-resident=65536",
    ];
    for (label, image, file) in b_cases.iter().filter(|_| parts.contains('b')) {
        let port = free_port();
        let name = format!("b-{}", if file.contains("py") { "py" } else { "c" });
        apply(&s, &pod_yaml(&name, image, Some(port), "b"));
        wait_answering(port).await;
        let skiff = tokio::task::spawn_blocking(move || wrk(port, secs))
            .await
            .unwrap();
        println!("(b) {label}: skiff hostPort {}", show(&skiff));
        match wasmtime() {
            None => println!(
                "    wasmtime serve: not installed (cargo install wasmtime-cli --version =48.0.8)"
            ),
            Some(wt) => {
                for (what, flags) in [
                    ("wasmtime serve", &[][..]),
                    ("wasmtime serve, tuned", tuned),
                ] {
                    let peer = serve_with_wasmtime(&wt, flags, file, secs).await;
                    println!(
                        "    {what} {}; skiff/peer = {:.2}x",
                        show(&peer),
                        skiff.0 / peer.0.max(1.0)
                    );
                }
            }
        }
        s.kubectl_ok(&["delete", "pod", &name, "--wait=true"]);
    }
    if parts.contains('b') {
        println!(
            "    Wasm host RSS after (b): {:.0} MiB (pool slots keep up to 16 MiB of linear memory resident)",
            agent.wasm_host_pid().map_or(0.0, rss_mib)
        );
    }
}

/// (c) many idle wasi:http pods on one node, each answering once; then removed.
async fn idle_pods(s: &Server, agent: &Agent, client: &kube::Client, light: &str, quick: bool) {
    let n = if quick { 100 } else { 1000 };
    let base = 21000u16;
    let mut rx = watch_running(client.clone(), "c");
    let yaml: Vec<String> = (0..n)
        .map(|i| pod_yaml(&format!("c-{i}"), light, Some(base + i as u16), "c"))
        .collect();
    let started = Instant::now();
    for chunk in yaml.chunks(100) {
        apply(s, &chunk.join("---\n"));
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let up = started.elapsed().as_secs_f64();
    let answering = futures::stream::iter(0..n)
        .map(|i| async move {
            reqwest::get(format!("http://127.0.0.1:{}/", base + i as u16))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let agent_rss = agent.pid().map_or(0.0, rss_mib);
    let host_rss = agent.wasm_host_pid().map_or(0.0, rss_mib);
    println!(
        "(c) {n} idle wasi:http pods Running in {up:.1} s; {answering}/{n} answering; RSS agent {agent_rss:.0} MiB + Wasm host {host_rss:.0} MiB = {:.0} MiB",
        agent_rss + host_rss
    );
    s.kubectl_ok(&[
        "delete",
        "pods",
        "-l",
        "bench=c",
        "--wait=true",
        "--timeout=600s",
    ]);
}
