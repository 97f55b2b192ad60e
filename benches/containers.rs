//! Linux containers through the whole product, side by side with the bare runtime and
//! podman in the same run, on the same image (examples/containers/build-image.sh).
//!
//! `cargo bench --bench containers` (root; Debian's `runc` and `podman`, and
//! `scripts/build-guests.sh` for the mixed pods). `SKIFF_BENCH_QUICK=1` makes 30 of each.
//! Figures:
//! (a) create → Running of 100 container pods of a cached image, one after another, each
//!     timed from the API create to the watch seeing it Running; `runc run -d` of the same
//!     root filesystem; `podman run -d --network=none` of the same image;
//! (b) idle cost of those 100 running containers: Skiff's shims, forked by its container
//!     host (and the host's own and the agent's growth),
//!     runc's (no process besides the container), podman's conmon per container;
//! (c) mixed pods (a Wasm `wasi:http` front + a busybox sidecar) create → both Ready.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Agent, Registry, Server, kube_client};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

fn show(name: &str, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    println!(
        "{name}: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    pct(&lat, 0.5)
}

/// (RSS, PSS, private) in KiB of a process.
fn mem_kib(pid: u32) -> (u64, u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// Pids whose command line contains `needle`.
fn pids_of(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// The container host `agent` started, and the shims it forked (its children).
fn host_and_shims(agent: u32) -> (Option<u32>, Vec<u32>) {
    let hosts = pids_of("container-host");
    let host = hosts
        .iter()
        .copied()
        .find(|h| common::ppid(*h) == Some(agent));
    let shims = hosts
        .into_iter()
        .filter(|p| host.is_some() && common::ppid(*p) == host)
        .collect();
    (host, shims)
}

fn sum_mem(pids: &[u32]) -> (u64, u64, u64) {
    pids.iter()
        .map(|p| mem_kib(*p))
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

fn per(what: &str, pids: &[u32]) -> String {
    let (rss, pss, private) = sum_mem(pids);
    let n = pids.len().max(1) as f64;
    format!(
        "{} {what}, per container RSS {:.0} KiB, PSS {:.0} KiB, private {:.0} KiB",
        pids.len(),
        rss as f64 / n,
        pss as f64 / n,
        private as f64 / n
    )
}

fn pod_yaml(name: &str, image: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{bench: {label}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sleep\", \"3600\"]\n    resources:\n      requests: {{cpu: 1m, memory: 1Mi}}\n"
    )
}

fn mixed_yaml(name: &str, front: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{bench: c}}\nspec:\n  runtimeClassName: mixed\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: front\n    image: {front}\n    resources: {{requests: {{cpu: 1m, memory: 1Mi}}}}\n  - name: sidecar\n    image: {image}\n    command: [\"/bin/sleep\", \"3600\"]\n    resources: {{requests: {{cpu: 1m, memory: 1Mi}}}}\n"
    )
}

fn all_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.container_statuses
                .as_ref()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.ready))
    })
}

/// Creates the pods one after another, each timed from its create to the watch seeing
/// it Running and ready.
async fn create_each(pods: &Api<Pod>, yamls: Vec<(String, String)>) -> Vec<Duration> {
    let mut lat = Vec::new();
    for (name, yaml) in yamls {
        let p: Pod = serde_yaml::from_str(&yaml).unwrap();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = std::pin::pin!(watcher(pods.clone(), cfg));
        // The watch is established before the create.
        let _ = stream.next().await;
        let t = Instant::now();
        pods.create(&Default::default(), &p).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                    && all_ready(&p)
                {
                    return;
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "{name} not Running within 60 s");
        lat.push(t.elapsed());
    }
    lat
}

fn runc_bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    common::busybox_tree(&rootfs);
    let ok = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(ok.success(), "runc spec");
    let cfg = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sleep", "3600"]);
    // This machine's hard nofile limit is below runc's default.
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// How long `cmd` takes. Its output goes to /dev/null: a detached container inherits it,
/// and a pipe would stay open for the container's life.
fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let d = t.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    d
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let n = if quick { 30 } else { 100 };
    let run = std::process::id();
    let reg = Registry::start();
    let image = reg.push_example_image("bench/busybox:1");
    let s = Server::start_with(&[]);
    let agent = Agent::start_with(&s, "bench-oci", &["--max-pods", "500"]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // (a) Skiff: warm the cache (pull and unpack), then n pods one after another.
    create_each(&pods, vec![("warm".into(), pod_yaml("warm", &image, "w"))]).await;
    let agent_before = agent.pid().map(mem_kib).unwrap_or_default();
    let yamls = (0..n)
        .map(|i| (format!("a-{i}"), pod_yaml(&format!("a-{i}"), &image, "a")))
        .collect();
    let skiff = show(
        "(a) skiff: container pod create -> Running (cached image)",
        create_each(&pods, yamls).await,
    );

    // (b) Skiff's idle cost: the shims of the n pods (plus the warm one), the agent's growth.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (host, shims) = host_and_shims(agent.pid().unwrap_or_default());
    let host = host.map(mem_kib).unwrap_or_default();
    let agent_after = agent.pid().map(mem_kib).unwrap_or_default();
    println!(
        "(b) skiff: {}; the container host (one per node) RSS {} KiB, PSS {} KiB, private {} KiB; agent RSS {} -> {} KiB",
        per("shims", &shims),
        host.0,
        host.1,
        host.2,
        agent_before.0,
        agent_after.0
    );
    s.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=300s"]);

    // (a) runc on the same root filesystem: `runc run -d` (create + start).
    let tmp = tempfile::tempdir().unwrap();
    runc_bundle(tmp.path());
    let mut lat = Vec::new();
    for i in 0..n {
        lat.push(timed(
            Command::new("runc")
                .args(["run", "-d", "--bundle"])
                .arg(tmp.path())
                .arg(format!("skiff-bench-{run}-{i}")),
        ));
    }
    let runc = show("(a) runc run -d (same rootfs)", lat);
    println!("(b) runc: no process per container besides the container's own");
    for i in 0..n {
        let _ = Command::new("runc")
            .args(["delete", "--force", &format!("skiff-bench-{run}-{i}")])
            .output();
    }

    // (a) podman, the same image from the same registry.
    let podman = if Command::new("podman").arg("--version").output().is_ok() {
        let pulled = Command::new("podman")
            .args(["pull", "--tls-verify=false", &image])
            .output()
            .unwrap();
        assert!(
            pulled.status.success(),
            "{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        let mut lat = Vec::new();
        for i in 0..n {
            lat.push(timed(Command::new("podman").args([
                "run",
                "-d",
                "--network=none",
                "--ulimit",
                "nofile=1024:20000",
                "--ulimit",
                "nproc=1024:1024",
                "--name",
                &format!("skiff-bench-{run}-{i}"),
                // The image's entrypoint is a shell; the pods replace it too.
                "--entrypoint",
                "/bin/sleep",
                &image,
                "3600",
            ])));
        }
        let p50 = show("(a) podman run -d --network=none (same image)", lat);
        let conmons = pids_of("/usr/bin/conmon");
        let running = Command::new("podman").args(["ps", "-q"]).output().unwrap();
        let running = String::from_utf8_lossy(&running.stdout).lines().count();
        assert_eq!(running, n, "every podman container runs");
        println!("(b) podman: {}", per("conmon processes", &conmons));
        let _ = Command::new("podman")
            .args(["rm", "-f", "-a", "-t", "0"])
            .output();
        Some(p50)
    } else {
        println!("(a) podman: not installed (apt-get install podman)");
        None
    };
    println!(
        "(a) ratios of p50: skiff/runc {:.2} (target <= 1.3), skiff/podman {}",
        skiff / runc,
        podman.map_or("-".into(), |p| format!("{:.2} (target <= 0.5)", skiff / p))
    );

    // (c) mixed pods: a Wasm front and a container sidecar.
    let guest = common::guest("hello-http-c.wasm");
    if guest.exists() {
        let front = reg.push(&guest, "bench/front:c");
        create_each(
            &pods,
            vec![("mwarm".into(), mixed_yaml("mwarm", &front, &image))],
        )
        .await;
        let m = if quick { 20 } else { 50 };
        let yamls = (0..m)
            .map(|i| {
                (
                    format!("c-{i}"),
                    mixed_yaml(&format!("c-{i}"), &front, &image),
                )
            })
            .collect();
        show(
            "(c) skiff: mixed pod (Wasm front + container sidecar) create -> both Ready",
            create_each(&pods, yamls).await,
        );
        s.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=300s"]);
    }
}
