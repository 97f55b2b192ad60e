//! Real client libraries against the real server: the Rust `kube` crate and the official
//! Python `kubernetes` package.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, example, kube_client};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use std::process::Command;

#[tokio::test]
async fn rust_kube_client_lists_creates_patches_and_watches() {
    let s = Server::start();
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "rs-pod", "labels": {"from": "rust"}},
        "spec": {"runtimeClassName": "wasm", "containers": [{"name": "c", "image": "registry.local/app:1"}]}
    }))
    .unwrap();
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    let list = pods
        .list(&ListParams::default().labels("from=rust"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.clone().unwrap();

    let mut stream = pods
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .expect("watch")
        .boxed();
    let patch = serde_json::json!({"metadata": {"labels": {"patched": "yes"}}});
    pods.patch("rs-pod", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("strategic patch");
    match stream.try_next().await.expect("watch event") {
        Some(WatchEvent::Modified(p)) => assert_eq!(p.metadata.labels.unwrap()["patched"], "yes"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let merge = serde_json::json!({"metadata": {"annotations": {"a": "b"}}});
    let patched = pods
        .patch("rs-pod", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("merge patch");
    assert_eq!(patched.metadata.annotations.unwrap()["a"], "b");

    // A typed error comes back as a Kubernetes Status.
    let err = pods.create(&PostParams::default(), &pod).await.unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected a Status, got {other}"),
    }
    pods.delete("rs-pod", &Default::default())
        .await
        .expect("delete");
    assert!(pods.get_opt("rs-pod").await.expect("get").is_none());
}

/// Writers racing on one object each land (the server re-reads and re-applies, as
/// Kubernetes' GuaranteedUpdate does); only a write that pins an old resourceVersion is
/// refused. A scheduler's binding racing status patches once lost its pod this way.
#[tokio::test]
async fn concurrent_patches_and_a_binding_all_land_and_only_a_pinned_write_conflicts() {
    let s = Server::start();
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "raced"},
        "spec": {"runtimeClassName": "wasm", "containers": [{"name": "c", "image": "registry.local/app:1"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let old_rv = created.metadata.resource_version.clone().unwrap();

    let mut writes = Vec::new();
    for i in 0..16 {
        let pods = pods.clone();
        writes.push(tokio::spawn(async move {
            let label = serde_json::json!({"metadata": {"labels": {format!("k{i}"): "v"}}});
            pods.patch("raced", &PatchParams::default(), &Patch::Merge(&label))
                .await
                .map(|_| ())?;
            let cond = serde_json::json!({"status": {"conditions": [
                {"type": format!("example.com/c{i}"), "status": "True"}]}});
            pods.patch_status("raced", &PatchParams::default(), &Patch::Merge(&cond))
                .await
                .map(|_| ())
        }));
    }
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "raced"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "somewhere"},
    });
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        "raced",
        &PostParams::default(),
        &binding,
    )
    .await
    .expect("the binding lands");
    for w in writes {
        w.await.unwrap().expect("every concurrent patch lands");
    }
    let got = pods.get("raced").await.unwrap();
    assert_eq!(got.spec.unwrap().node_name.as_deref(), Some("somewhere"));
    assert_eq!(got.metadata.labels.unwrap().len(), 16);

    let pinned =
        serde_json::json!({"metadata": {"resourceVersion": old_rv, "labels": {"late": "v"}}});
    match pods
        .patch("raced", &PatchParams::default(), &Patch::Merge(&pinned))
        .await
    {
        Err(kube::Error::Api(st)) => assert_eq!((st.code, st.reason.as_str()), (409, "Conflict")),
        other => panic!("a stale pinned patch must conflict, got {other:?}"),
    }
}

#[test]
fn python_kubernetes_client_lists_creates_patches_and_watches() {
    let s = Server::start();
    let out = Command::new("python3")
        .arg(example("tests/python/client_check.py"))
        .arg(s.kubeconfig())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("python client: ok"),
        "python client failed (is the `kubernetes` pip package installed? scripts/test.sh installs it):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
