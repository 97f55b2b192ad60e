//! The node's resource usage (`/stats/summary`), through the apiserver's node proxy, with
//! real containers whose usage is known: one holding memory, one burning CPU, and a Wasm
//! guest doing both.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::pods::{apply, cpod, running, wait_for};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

fn summary(s: &common::Server, node: &str) -> Value {
    let raw = s.kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
    ]);
    serde_json::from_str(&raw).unwrap()
}

fn pod_of<'a>(sum: &'a Value, name: &str) -> Option<&'a Value> {
    sum["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["name"] == name)
}

fn container_of<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_reports_pod_and_container_usage_from_cgroups_and_the_wasm_host() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    // 32 MiB of linear memory (512 pages), then a busy loop.
    let wasm = reg.push_wat(
        r#"(module (memory (export "memory") 1)
          (func (export "_start") (drop (memory.grow (i32.const 511))) (loop $l (br $l))))"#,
        "spinner:1",
    );
    let s = common::Server::start_node("edge-st", &[]);
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    apply(
        &s,
        &[
            // 32 MiB in a tmpfs file, charged to the container's memory cgroup.
            cpod(
                "holder",
                &image,
                "Always",
                "trap 'exit 0' TERM; head -c 33554432 /dev/zero > /dev/shm/fill; echo held; sleep 3600 & wait",
                "",
                "",
            ),
            cpod("burner", &image, "Always", "trap 'exit 0' TERM; while true; do :; done", "", ""),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: guest\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {wasm}\n"
            ),
        ]
        .join("---\n"),
    );
    for name in ["holder", "burner", "guest"] {
        wait_for(&pods, name, "running", running).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.kubectl_ok(&["logs", "holder"]).contains("held") {
        assert!(
            Instant::now() < deadline,
            "the holder never filled its memory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Two reads: CPU rates are the change between them.
    let _ = summary(&s, "edge-st");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sum = summary(&s, "edge-st");
    assert_eq!(sum["node"]["nodeName"], "edge-st");
    assert!(
        sum["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{sum}"
    );
    assert!(
        sum["node"]["cpu"]["usageNanoCores"].as_u64().is_some(),
        "{sum}"
    );

    let holder = pod_of(&sum, "holder").unwrap();
    let ws = container_of(holder, "app").unwrap()["memory"]["workingSetBytes"]
        .as_u64()
        .unwrap();
    assert!(
        ws >= 32 << 20,
        "the holder's 32 MiB is in its working set: {ws}"
    );
    assert!(
        holder["memory"]["workingSetBytes"].as_u64().unwrap() >= ws,
        "{holder}"
    );
    assert!(!holder["podRef"]["uid"].as_str().unwrap().is_empty());

    let burner = pod_of(&sum, "burner").unwrap();
    let cores = container_of(burner, "app").unwrap()["cpu"]["usageNanoCores"]
        .as_u64()
        .unwrap();
    assert!(
        cores > 300_000_000,
        "a busy loop uses most of a core: {cores} nanocores"
    );

    // A Wasm guest has no cgroup of its own: the Wasm host accounts for it.
    let guest = pod_of(&sum, "guest").unwrap();
    let app = container_of(guest, "app").unwrap();
    let cores = app["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!(
        cores > 300_000_000,
        "a spinning guest uses most of a core: {cores} nanocores"
    );
    let mem = app["memory"]["workingSetBytes"].as_u64().unwrap();
    assert_eq!(mem, 32 << 20, "its linear memory: {app}");
    assert!(
        guest["memory"]["workingSetBytes"].as_u64().unwrap() >= mem
            && guest["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap()
                >= app["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap(),
        "the pod's figures include its Wasm containers': {guest}"
    );

    // The node proxy reaches nothing else of the agent.
    let out = s.kubectl(&[
        "get",
        "--raw",
        "/api/v1/nodes/edge-st/proxy/containerLogs/default/holder/app",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}
