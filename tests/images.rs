//! The node's images: `status.images` with sizes, garbage collection of unused images
//! past the disk threshold (blobs and unpacked layers with them), and `skiff image
//! import` of a container image archive for an air-gapped node.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pods::{apply, cpod, running, wait_for, wait_gone};

/// A container that runs until it is stopped.
const SERVE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
use k8s_openapi::api::core::v1::Pod;

fn node_images(s: &common::Server, node: &str) -> Vec<(Vec<String>, i64)> {
    let raw = s.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.status.images}"]);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let names = i["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(String::from))
                .collect();
            (names, i["sizeBytes"].as_i64().unwrap_or(0))
        })
        .collect()
}

fn listed(images: &[(Vec<String>, i64)], name: &str) -> bool {
    images.iter().any(|(n, _)| n.iter().any(|x| x == name))
}

/// Waits until the node's `status.images` satisfies `f`.
async fn until_images(
    s: &common::Server,
    node: &str,
    what: &str,
    f: impl Fn(&[(Vec<String>, i64)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let images = node_images(s, node);
        if f(&images) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {images:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unpacked_layers(agent_dir: &Path) -> usize {
    std::fs::read_dir(agent_dir.join("artifacts/layers"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_are_collected_past_the_disk_threshold_and_used_ones_kept() {
    let reg = common::Registry::start();
    let busybox = reg.push_example_image("busybox:1");
    let wasm = reg.push(&common::guest("hello-http-c.wasm"), "hello:c");
    // Any disk is fuller than 1 %: every unused image goes at each look.
    let s = common::Server::start_node(
        "edge-gc",
        &[
            "--image-gc-high-percent",
            "1",
            "--image-gc-low-percent",
            "0",
            "--image-gc-period",
            "1s",
            "--image-minimum-gc-age",
            "3s",
        ],
    );
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    apply(
        &s,
        &[
            cpod("keeper", &busybox, "Always", SERVE, "", ""),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: guest\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {wasm}\n"
            ),
        ]
        .join("---\n"),
    );
    for name in ["keeper", "guest"] {
        wait_for(&pods, name, "running", running).await;
    }
    // status.images lists both, with their sizes.
    until_images(&s, "edge-gc", "both images listed", |i| {
        listed(i, &busybox) && listed(i, &wasm)
    })
    .await;
    let images = node_images(&s, "edge-gc");
    assert!(images.iter().all(|(_, size)| *size > 0), "{images:?}");
    let agent_dir = s.dir.join("agent");
    assert!(unpacked_layers(&agent_dir) >= 1);

    // The Wasm pod goes: its image is unused and collected; the busybox one stays.
    s.kubectl_ok(&["delete", "pod", "guest"]);
    wait_gone(&pods, "guest").await;
    until_images(&s, "edge-gc", "the unused Wasm image collected", |i| {
        !listed(i, &wasm) && listed(i, &busybox)
    })
    .await;
    assert!(
        unpacked_layers(&agent_dir) >= 1,
        "the used image's layers stay"
    );
    // The container still runs on its layers.
    let out = s.kubectl_ok(&["exec", "keeper", "--", "cat", "/var/www/index.html"]);
    assert!(out.contains("hello from a Skiff container"), "{out}");

    // Then the container pod: its image and unpacked layers go too.
    s.kubectl_ok(&["delete", "pod", "keeper"]);
    wait_gone(&pods, "keeper").await;
    until_images(&s, "edge-gc", "every image collected", |i| i.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while unpacked_layers(&agent_dir) > 0 {
        assert!(Instant::now() < deadline, "unpacked layers left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_image_archive_imported_on_an_air_gapped_node_runs() {
    let reg = common::Registry::start();
    let busybox = reg.push_example_image("busybox:1");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{busybox}"))
        .arg(format!("oci-archive:{}:1", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(reg); // No registry from here on.

    // Not a test of garbage collection: an image no pod uses yet must stay, however full
    // this machine's disk is.
    let mut s = common::Server::start_node("edge-air", &["--image-gc-high-percent", "100"]);
    assert!(s.terminate(), "the server did not stop cleanly");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "import"])
        .arg(&archive)
        .args(["--name", "airgap.local/busybox:1", "--data-dir"])
        .arg(s.dir.join("agent"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported"),
        "{out:?}"
    );
    s.restart();
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    apply(
        &s,
        &cpod(
            "air",
            "airgap.local/busybox:1",
            "Always",
            SERVE,
            "    imagePullPolicy: Never\n",
            "",
        ),
    );
    wait_for(&pods, "air", "running", running).await;
    let out = s.kubectl_ok(&["exec", "air", "--", "cat", "/var/www/index.html"]);
    assert!(out.contains("hello from a Skiff container"), "{out}");
    until_images(&s, "edge-air", "the import listed", |i| {
        listed(i, "airgap.local/busybox:1")
    })
    .await;
}
