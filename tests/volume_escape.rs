//! A guest cannot reach the node's files through a volume: the symlink escape through a
//! `subPath`, reproduced end to end with the real server, agent, registry and kubectl.
//!
//! An init container (WAT) plants `esc -> ../../../../../../../../../../..` in an
//! emptyDir. The next container mounts `subPath: esc`. Had the agent joined the path and
//! followed the link, that container would see the node's `/` and print a marker file
//! the test put outside the volume; instead it must not start, with a clear reason.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Registry, Server, kube_client};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::wait::await_condition;
use std::io::Write;
use std::time::Duration;

/// Makes `esc` in preopen 3 point far above it, then exits 0 (exit 1 if refused).
const PLANTER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_symlink"
    (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "../../../../../../../../../../..")
  (data (i32.const 200) "esc")
  (func (export "_start")
    (if (call $symlink (i32.const 100) (i32.const 32) (i32.const 3) (i32.const 200) (i32.const 3))
      (then (call $exit (i32.const 1))))
    (call $exit (i32.const 0))))
"#;

/// Opens `tmp/skiff-escape-marker` in preopen 3 and copies it to stdout; exit 7 when
/// it cannot be opened.
const READER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "tmp/skiff-escape-marker")
  (func (export "_start")
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 23)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $exit (i32.const 7))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 256))
    (drop (call $read (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 0))))
"#;

fn apply(s: &Server, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl_ok(&["apply", "-f", f.path().to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_an_empty_dir_does_not_open_the_node_through_a_sub_path() {
    let marker = std::path::Path::new("/tmp/skiff-escape-marker");
    let secret = format!("node-only-{}", std::process::id());
    std::fs::write(marker, &secret).unwrap();
    let reg = Registry::start();
    let planter = reg.push_wat(PLANTER, "escape/planter:1");
    let reader = reg.push_wat(READER, "escape/reader:1");
    let s = Server::start_node("escape-node", &[]);
    apply(
        &s,
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: escape}}
spec:
  runtimeClassName: wasm
  restartPolicy: Never
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - {{name: plant, image: {planter}, volumeMounts: [{{name: shared, mountPath: /shared}}]}}
  containers:
  - {{name: read, image: {reader}, volumeMounts: [{{name: shared, mountPath: /host, subPath: esc}}]}}
"
        ),
    );
    let pods: Api<Pod> = Api::namespaced(kube_client(&s).await, "default");
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), "escape", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.container_statuses.as_ref())
                .and_then(|c| c.first()?.state.as_ref()?.terminated.clone())
                .is_some()
        }),
    )
    .await;
    let pod = pods.get("escape").await.unwrap();
    assert!(done.is_ok(), "the reader never ended: {:#?}", pod.status);
    let status = pod.status.unwrap();
    // The init container did plant the link (so the test exercised the escape).
    let init = &status.init_container_statuses.unwrap()[0];
    let planted = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        planted.exit_code, 0,
        "planting the symlink failed: {planted:?}"
    );
    let t = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.reason.as_deref(), Some("ContainerCannotRun"), "{t:?}");
    let message = t.message.unwrap_or_default();
    assert!(
        message.contains("subPath \"esc\" resolves outside of its volume"),
        "{message}"
    );
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let logs = s.kubectl(&["logs", "escape", "-c", "read"]);
    let out = String::from_utf8_lossy(&logs.stdout);
    assert!(
        !out.contains(&secret),
        "the guest read the node's file: {out}"
    );
    let events = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=escape",
    ]);
    assert!(
        events.contains("resolves outside of its volume"),
        "{events}"
    );
    let _ = std::fs::remove_file(marker);
}

#[tokio::test]
async fn sub_paths_that_leave_the_volume_are_refused_at_admission() {
    let s = Server::start();
    for (sub, want) in [
        (
            "/etc",
            "subPath: Invalid value: \"/etc\": must be a relative path",
        ),
        (
            "../..",
            "subPath: Invalid value: \"../..\": must not contain '..'",
        ),
        ("a/../../b", "must not contain '..'"),
    ] {
        let yaml = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: bad}}
spec:
  volumes: [{{name: v, emptyDir: {{}}}}]
  containers:
  - {{name: c, image: x, volumeMounts: [{{name: v, mountPath: /v, subPath: \"{sub}\"}}]}}
"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        let out = s.kubectl(&["apply", "-f", f.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("The Pod \"bad\" is invalid"), "{err}");
        assert!(
            err.contains(&format!("spec.containers[0].volumeMounts[0].{want}"))
                || err.contains(want),
            "{sub}: {err}"
        );
    }
}
