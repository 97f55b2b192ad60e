//! The scheduler end to end: the real `skiff server --no-agent`, Nodes registered through
//! the API, Pods created with the real kubectl, placements read back with the `kube`
//! crate. Wasm pods land only on Wasm nodes, mixed pods only on nodes with both
//! runtimes; a pod that fits nowhere stays Pending with Kubernetes' counted message; room
//! freed by a deleted pod or a new node gets it placed (woken by the event, not by a
//! timer: parked pods are otherwise retried only after 5 minutes).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, kube_client};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::wait::await_condition;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn apply(s: &Server, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl_ok(&["create", "-f", f.path().to_str().unwrap()]);
}

fn node(name: &str, runtimes: &[&str], cpu: &str, memory: &str) -> String {
    let labels: Vec<String> = runtimes
        .iter()
        .map(|r| format!("runtime.skiff.dev/{r}: \"true\""))
        .collect();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{}}}\nstatus:\n  capacity: {{cpu: \"{cpu}\", memory: {memory}, pods: \"20\"}}\n  allocatable: {{cpu: \"{cpu}\", memory: {memory}, pods: \"20\"}}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n",
        labels.join(", ")
    )
}

fn pod(name: &str, class: Option<&str>, cpu: &str, memory: &str) -> String {
    let class = class
        .map(|c| format!("  runtimeClassName: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{test: sched}}\nspec:\n{class}  containers:\n  - name: app\n    image: registry.local/app:1\n    resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}\n---\n"
    )
}

fn bound(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.spec.as_ref())
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

async fn wait_bound(pods: &Api<Pod>, name: &str) -> String {
    let p = tokio::time::timeout(WAIT, await_condition(pods.clone(), name, bound))
        .await
        .unwrap_or_else(|_| panic!("pod {name} was not bound within {WAIT:?}"))
        .unwrap()
        .unwrap();
    p.spec.unwrap().node_name.unwrap()
}

fn unschedulable_message(p: Option<&Pod>) -> Option<String> {
    p?.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

async fn wait_unschedulable(pods: &Api<Pod>, name: &str) -> String {
    let p = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), name, |p: Option<&Pod>| {
            unschedulable_message(p).is_some()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {name} got no PodScheduled=False condition"))
    .unwrap();
    assert!(!bound(p.as_ref()), "{name} must stay unbound");
    unschedulable_message(p.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_go_where_their_runtime_is_and_wait_for_room() {
    let s = Server::start_with(&[]);
    let pods: Api<Pod> = Api::namespaced(kube_client(&s).await, "default");
    apply(
        &s,
        &[
            node("wasm-a", &["wasm"], "2", "1Gi"),
            node("wasm-b", &["wasm"], "2", "1Gi"),
            node("oci-a", &["oci"], "4", "8Gi"),
            node("mixed-a", &["wasm", "oci"], "2", "1Gi"),
            node("mixed-b", &["wasm", "oci"], "2", "1Gi"),
        ]
        .concat(),
    );

    // Small pods of each kind.
    let mut yaml = String::new();
    let kinds = [
        ("w", Some("wasm"), 4),
        ("m", Some("mixed"), 2),
        ("o", None, 2),
    ];
    for (prefix, class, n) in kinds {
        for i in 0..n {
            yaml += &pod(&format!("{prefix}{i}"), class, "100m", "64Mi");
        }
    }
    apply(&s, &yaml);
    let mut placed = HashMap::new();
    for (prefix, _, n) in kinds {
        for i in 0..n {
            let name = format!("{prefix}{i}");
            let node = wait_bound(&pods, &name).await;
            placed.insert(name, node);
        }
    }
    for (name, node) in &placed {
        let allowed: &[&str] = match &name[..1] {
            "w" => &["wasm-a", "wasm-b", "mixed-a", "mixed-b"],
            "m" => &["mixed-a", "mixed-b"],
            _ => &["oci-a", "mixed-a", "mixed-b"],
        };
        assert!(
            allowed.contains(&node.as_str()),
            "{name} landed on {node}, which lacks its runtime"
        );
    }
    let described = s.kubectl_ok(&["describe", "pod", "w0"]);
    assert!(
        described.contains("Successfully assigned default/w0 to"),
        "{described}"
    );

    // A Wasm pod too big for every Wasm node stays Pending, with the reasons counted.
    apply(&s, &pod("big", Some("wasm"), "100m", "3Gi"));
    let msg = wait_unschedulable(&pods, "big").await;
    assert_eq!(
        msg,
        "0/5 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 4 Insufficient memory."
    );
    let events = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=big,reason=FailedScheduling",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("4 Insufficient memory"), "{events}");
    let out = s.kubectl_ok(&["get", "pod", "big"]);
    assert!(out.contains("Pending"), "{out}");

    // A pod naming a RuntimeClass that does not exist waits for it.
    apply(&s, &pod("lost", Some("gpu"), "100m", "64Mi"));
    let msg = wait_unschedulable(&pods, "lost").await;
    assert_eq!(msg, "pod's RuntimeClass \"gpu\" was not found");
    apply(
        &s,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: gpu}\nhandler: oci\nscheduling: {nodeSelector: {runtime.skiff.dev/oci: \"true\"}}\n",
    );
    let lost_on = wait_bound(&pods, "lost").await;
    assert!(["oci-a", "mixed-a", "mixed-b"].contains(&lost_on.as_str()));

    // Room: clear the small pods, fill both mixed nodes, then free one.
    let mut delete = vec!["delete", "pod", "lost", "--grace-period=0", "--force"];
    let small: Vec<String> = placed.keys().cloned().collect();
    delete.extend(small.iter().map(String::as_str));
    s.kubectl_ok(&delete);
    apply(
        &s,
        &[
            pod("hog-1", Some("mixed"), "1500m", "64Mi"),
            pod("hog-2", Some("mixed"), "1500m", "64Mi"),
        ]
        .concat(),
    );
    let hog1 = wait_bound(&pods, "hog-1").await;
    let hog2 = wait_bound(&pods, "hog-2").await;
    assert_ne!(hog1, hog2, "two 1500m pods cannot share a 2-CPU node");
    apply(&s, &pod("waiter", Some("mixed"), "1500m", "64Mi"));
    let msg = wait_unschedulable(&pods, "waiter").await;
    assert_eq!(
        msg,
        "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) didn't match Pod's node affinity/selector."
    );
    s.kubectl_ok(&["delete", "pod", "hog-1", "--grace-period=0", "--force"]);
    assert_eq!(wait_bound(&pods, "waiter").await, hog1);

    // A new node with room for the big pod.
    apply(&s, &node("wasm-big", &["wasm"], "2", "4Gi"));
    assert_eq!(wait_bound(&pods, "big").await, "wasm-big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_alone_against_a_kubeconfig() {
    let s = Server::start_with(&["--no-scheduler"]);
    let pods: Api<Pod> = Api::namespaced(kube_client(&s).await, "default");
    apply(
        &s,
        &[
            node("n1", &["wasm"], "2", "1Gi"),
            pod("p", Some("wasm"), "100m", "64Mi"),
        ]
        .concat(),
    );
    let mut scheduler = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["scheduler", "--kubeconfig"])
        .arg(s.kubeconfig())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let node = wait_bound(&pods, "p").await;
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    assert_eq!(node, "n1");
}
