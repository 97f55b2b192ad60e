//! The workload controllers end to end: the real `skiff server --no-agent --no-scheduler`
//! (so pods stay unbound and nothing runs them), driven by the real kubectl (`apply`,
//! `scale`, `rollout status`, `rollout restart`, `wait`, `get`, `delete`) and the `kube`
//! crate. The test itself plays the kubelet: it watches pods and writes their status
//! (Running and Ready, or Succeeded/Failed when the pod template asks for it through the
//! `skiff.test/outcome` annotation). Every wait is on a watch, never a sleep.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, kube_client};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn apply(s: &Server, yaml: &str) -> String {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl_ok(&["apply", "-f", f.path().to_str().unwrap()])
}

/// A background task, stopped when this is dropped (before the server it talks to).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plays the kubelet for every pod (`bound_only`: for pods bound to a node): the first
/// time it sees a pending pod it reports the outcome its `skiff.test/outcome` annotation
/// names (default: Running and Ready); a pod being deleted it deletes for good.
fn spawn_kubelet(client: Client) -> Task {
    kubelet(client, false)
}

fn kubelet(client: Client, bound_only: bool) -> Task {
    Task(tokio::spawn(async move {
        let all: Api<Pod> = Api::all(client.clone());
        let mut pods = std::pin::pin!(
            watcher(all, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(ev) = pods.next().await {
            let Ok(p) = ev else { continue };
            let pending = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|ph| ph == "Pending");
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap());
            let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            if p.metadata.deletion_timestamp.is_some() {
                let now = kube::api::DeleteParams::default().grace_period(0);
                let _ = api.delete(&p.name_any(), &now).await;
                continue;
            }
            if !pending || (bound_only && !bound) {
                continue;
            }
            let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap();
            let status = match p
                .annotations()
                .get("skiff.test/outcome")
                .map(String::as_str)
            {
                Some("Succeeded") => json!({"phase": "Succeeded"}),
                Some("Failed") => json!({"phase": "Failed"}),
                _ => json!({"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ]}),
            };
            let _ = api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await;
        }
    }))
}

/// Watches the pods labelled `selector` and records the fewest ready ones and the most
/// live ones seen at any revision.
#[derive(Debug, Default)]
struct Extremes {
    min_ready: Option<usize>,
    max_live: usize,
}

fn spawn_monitor(client: Client, selector: &str) -> (Arc<Mutex<Extremes>>, Task) {
    let seen = Arc::new(Mutex::new(Extremes::default()));
    let out = seen.clone();
    let api: Api<Pod> = Api::namespaced(client, "default");
    let cfg = watcher::Config::default().labels(selector);
    let task = tokio::spawn(async move {
        let mut pods: HashMap<String, Pod> = HashMap::new();
        let mut synced = false;
        let mut events = std::pin::pin!(watcher(api, cfg).default_backoff());
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    pods.insert(p.name_any(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    pods.remove(&p.name_any());
                }
                Ok(watcher::Event::InitDone) => synced = true,
                _ => continue,
            }
            if !synced {
                continue;
            }
            let live: Vec<&Pod> = pods
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = live
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            let mut s = seen.lock().unwrap();
            s.min_ready = Some(s.min_ready.map_or(ready, |m| m.min(ready)));
            s.max_live = s.max_live.max(live.len());
        }
    });
    (out, Task(task))
}

async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let found = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&cond)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: {what} not reached within {WAIT:?}"))
    .unwrap();
    found.unwrap()
}

async fn wait_deleted<K>(api: &Api<K>, o: &K)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let uid = o.meta().uid.clone().unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), &o.name_any(), conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("{} was not deleted", o.name_any()))
    .unwrap();
}

/// Wait (on a watch) for an event about `name` with `reason`; events are written in the
/// background, best effort.
async fn wait_event(client: &Client, name: &str, reason: &str) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().fields(&format!("involvedObject.name={name}"));
    let seen = watcher(events, cfg)
        .default_backoff()
        .applied_objects()
        .any(|e| futures::future::ready(e.is_ok_and(|e| e.reason.as_deref() == Some(reason))));
    assert!(
        tokio::time::timeout(WAIT, seen).await.unwrap_or(false),
        "no {reason} event about {name}"
    );
}

fn owned_by<'a, K: kube::Resource>(items: &'a [K], uid: &str) -> Vec<&'a K> {
    items
        .iter()
        .filter(|o| {
            o.meta().owner_references.iter().flatten().any(|r| {
                r.uid == uid && r.controller == Some(true) && r.block_owner_deletion == Some(true)
            })
        })
        .collect()
}

fn rollout_status(s: &Server, name: &str) -> String {
    s.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=30s",
    ])
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata: {labels: {app: web}}
    spec:
      runtimeClassName: wasm
      containers: [{name: web, image: registry.local/web:1}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_scale_restart_and_go_away() {
    let s = Server::start_with(&["--no-scheduler"]);
    let client = kube_client(&s).await;
    let _kubelet = spawn_kubelet(client.clone());
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Roll out: READY 2/2, and `rollout status` returns.
    let out = apply(&s, WEB);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = rollout_status(&s, "web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let row = s.kubectl_ok(&["get", "deploy", "web", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..4], ["web", "2/2", "2", "2"], "{row}");

    let d = deploys.get("web").await.unwrap();
    let uid = d.uid().unwrap();
    let status = d.status.clone().unwrap();
    let reason = |d: &Deployment, t: &str| {
        d.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.reason.clone())
    };
    assert_eq!(
        reason(&d, "Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        reason(&d, "Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );
    assert_eq!(status.observed_generation, d.metadata.generation);
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    wait_event(&client, "web", "ScalingReplicaSet").await;
    let described = s.kubectl_ok(&["describe", "deployment", "web"]);
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set web-"),
        "{described}"
    );

    // One ReplicaSet `web-<hash>`, carrying the hash in its selector and template, and
    // two pods named after it, owned by it.
    let rs_list = sets.list(&ListParams::default()).await.unwrap().items;
    let owned = owned_by(&rs_list, &uid);
    assert_eq!(owned.len(), 1, "{rs_list:#?}");
    let rs1 = owned[0].clone();
    let hash = rs1.labels().get("pod-template-hash").unwrap().clone();
    assert_eq!(rs1.name_any(), format!("web-{hash}"));
    let rs_spec = rs1.spec.as_ref().unwrap();
    assert_eq!(
        rs_spec
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .get("pod-template-hash"),
        Some(&hash)
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let pod_list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(owned_by(&pod_list, &rs1.uid().unwrap()).len(), 2);
    for p in &pod_list {
        assert!(
            p.name_any().starts_with(&format!("web-{hash}-")),
            "{}",
            p.name_any()
        );
        assert_eq!(p.labels().get("pod-template-hash"), Some(&hash));
    }

    // Scale up and down with kubectl.
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    rollout_status(&s, "web");
    wait_for(&deploys, "web", "3 available", |d: &Deployment| {
        d.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == Some(3) && s.replicas == Some(3))
    })
    .await;
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=1"]);
    wait_for(&deploys, "web", "1 replica", |d: &Deployment| {
        d.status.as_ref().is_some_and(|s| {
            s.replicas == Some(1)
                && s.available_replicas == Some(1)
                && s.observed_generation == d.metadata.generation
        })
    })
    .await;
    let left = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1, "{left:#?}");
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    rollout_status(&s, "web");

    // A template change rolls to a new ReplicaSet, never below 3 ready pods
    // (maxUnavailable 0).
    let (extremes, monitor) = spawn_monitor(client.clone(), "app=web");
    s.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    let out = rollout_status(&s, "web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = wait_for(&deploys, "web", "revision 2", |d: &Deployment| {
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str)
            == Some("2")
    })
    .await;
    assert_eq!(d.status.as_ref().unwrap().updated_replicas, Some(3));
    drop(monitor);
    let seen = std::mem::take(&mut *extremes.lock().unwrap());
    assert!(
        seen.min_ready.is_some_and(|m| m >= 3),
        "ready pods dropped below 3: {seen:?}"
    );
    let rs_list = sets.list(&ListParams::default()).await.unwrap().items;
    let owned = owned_by(&rs_list, &uid);
    assert_eq!(owned.len(), 2, "{rs_list:#?}");
    let rs2 = owned.iter().find(|r| r.uid() != rs1.uid()).unwrap();
    assert_ne!(rs2.labels().get("pod-template-hash"), Some(&hash));
    assert_eq!(
        rs2.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(rs2.spec.as_ref().unwrap().replicas, Some(3));
    let old = wait_for(&sets, &rs1.name_any(), "old set at 0", |r: &ReplicaSet| {
        r.spec.as_ref().unwrap().replicas == Some(0)
            && r.status.as_ref().is_some_and(|s| s.replicas == 0)
    })
    .await;
    assert_eq!(
        old.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let history = s.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo brings the first ReplicaSet back, as revision 3.
    s.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    let out = rollout_status(&s, "web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let back = wait_for(
        &sets,
        &rs1.name_any(),
        "first set back at 3",
        |r: &ReplicaSet| {
            r.spec.as_ref().unwrap().replicas == Some(3)
                && r.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .map(String::as_str)
                    == Some("3")
        },
    )
    .await;
    assert_eq!(back.uid(), rs1.uid());

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    let pod_list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(pod_list.len(), 3);
    s.kubectl_ok(&["delete", "deployment", "web"]);
    for rs in &owned {
        wait_deleted(&sets, *rs).await;
    }
    for p in &pod_list {
        wait_deleted(&pods, p).await;
    }
    let left = s.kubectl_ok(&["get", "rs,pods", "-l", "app=web", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_example_deployment_gets_its_pod() {
    let mut s = Server::start_with(&["--no-scheduler"]);
    let client = kube_client(&s).await;
    let kubelet = spawn_kubelet(client.clone());
    let example = common::example("examples/wasm/hello-http.yaml");
    s.kubectl_ok(&["apply", "-f", example.to_str().unwrap()]);
    let out = rollout_status(&s, "hello-http");
    assert!(out.contains("successfully rolled out"), "{out}");
    let row = s.kubectl_ok(&["get", "deploy", "hello-http", "--no-headers"]);
    assert!(row.split_whitespace().nth(1) == Some("1/1"), "{row}");
    let pods = s.kubectl_ok(&["get", "pods", "-l", "app=hello-http", "-o", "name"]);
    assert_eq!(pods.lines().count(), 1, "{pods}");
    // The controllers' watches do not hold up a clean stop.
    drop(kubelet);
    let stopped = std::time::Instant::now();
    assert!(
        s.terminate(),
        "skiff server did not exit cleanly on SIGTERM"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}

fn job(name: &str, completions: i32, parallelism: i32, backoff: i32, outcome: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff}
  template:
    metadata: {{annotations: {{skiff.test/outcome: {outcome}}}}}
    spec:
      runtimeClassName: wasm
      restartPolicy: Never
      containers: [{{name: job, image: registry.local/job:1}}]
"
    )
}

/// `kubectl wait --for=condition=CONDITION OBJECT`, which must say the condition is met.
fn kubectl_wait(s: &Server, condition: &str, object: &str) {
    let out = s.kubectl_ok(&[
        "wait",
        &format!("--for=condition={condition}"),
        object,
        "--timeout=30s",
    ]);
    assert!(out.contains("condition met"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_on_their_pods() {
    let s = Server::start_with(&["--no-scheduler"]);
    let client = kube_client(&s).await;
    let _kubelet = spawn_kubelet(client.clone());
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Two completions, one at a time: complete once both pods succeeded.
    apply(&s, &job("done", 2, 1, 6, "Succeeded"));
    kubectl_wait(&s, "complete", "job/done");
    wait_event(&client, "done", "SuccessfulCreate").await;
    let j = jobs.get("done").await.unwrap();
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(2), Some(0), Some(0))
    );
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    let types: Vec<&str> = st
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status == "True")
        .map(|c| c.type_.as_str())
        .collect();
    assert!(
        types.contains(&"SuccessCriteriaMet") && types.contains(&"Complete"),
        "{types:?}"
    );
    let row = s.kubectl_ok(&["get", "jobs", "done", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..3], ["done", "Complete", "2/2"], "{row}");
    // The finished pods stay, labelled as Kubernetes labels them.
    let finished = pods
        .list(&ListParams::default().labels("job-name=done"))
        .await
        .unwrap()
        .items;
    assert_eq!(finished.len(), 2, "{finished:#?}");
    let uid = j.uid().unwrap();
    assert_eq!(owned_by(&finished, &uid).len(), 2);
    for p in &finished {
        let l = p.labels();
        assert_eq!(
            l.get("batch.kubernetes.io/job-name").map(String::as_str),
            Some("done")
        );
        assert_eq!(l.get("batch.kubernetes.io/controller-uid"), Some(&uid));
        assert_eq!(l.get("controller-uid"), Some(&uid));
        assert!(p.name_any().starts_with("done-"));
    }

    // Every pod fails: after more than backoffLimit (1) failures the Job fails.
    apply(&s, &job("doomed", 1, 1, 1, "Failed"));
    kubectl_wait(&s, "failed", "job/doomed");
    let j = wait_for(&jobs, "doomed", "failed", |j: &Job| {
        j.status.as_ref().is_some_and(|s| s.failed == Some(2))
    })
    .await;
    let failed = j
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    let row = s.kubectl_ok(&["get", "jobs", "doomed", "--no-headers"]);
    assert!(row.contains("Failed") && row.contains("0/1"), "{row}");
    let tried = pods
        .list(&ListParams::default().labels("job-name=doomed"))
        .await
        .unwrap()
        .items;
    assert_eq!(tried.len(), 2, "{tried:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_run_alone_and_adopt_orphans() {
    let s = Server::start_with(&["--no-scheduler", "--no-controllers"]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    apply(
        &s,
        "apiVersion: v1
kind: Pod
metadata: {name: stray, labels: {app: solo}}
spec: {containers: [{name: a, image: registry.local/a:1}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: solo}
spec:
  replicas: 2
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec: {containers: [{name: a, image: registry.local/a:1}]}
",
    );
    let mut controllers = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["controllers", "--kubeconfig"])
        .arg(s.kubeconfig())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let rs = wait_for(&sets, "solo", "2 replicas", |r: &ReplicaSet| {
        r.status
            .as_ref()
            .is_some_and(|s| s.replicas == 2 && s.observed_generation == Some(1))
    })
    .await;
    let _ = controllers.kill();
    let _ = controllers.wait();
    let list = pods
        .list(&ListParams::default().labels("app=solo"))
        .await
        .unwrap()
        .items;
    assert_eq!(
        list.len(),
        2,
        "the orphan counts as one of the two: {list:#?}"
    );
    assert_eq!(owned_by(&list, &rs.uid().unwrap()).len(), 2);
    assert!(list.iter().any(|p| p.name_any() == "stray"));
}

fn node(name: &str, labels: &str, taints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  taints: [{taints}]\nstatus:\n  capacity: {{cpu: \"2\", memory: 1Gi, pods: \"20\"}}\n  allocatable: {{cpu: \"2\", memory: 1Gi, pods: \"20\"}}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n"
    )
}

const WASM: &str = "runtime.skiff.dev/wasm: \"true\"";

const AGENT: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      runtimeClassName: wasm
      containers:
      - name: agent
        image: registry.local/agent:1
        resources: {requests: {cpu: 100m, memory: 32Mi}}
";

fn placement(pods: &[Pod]) -> Vec<String> {
    let mut nodes: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_run_one_pod_per_eligible_node_and_roll() {
    // With the scheduler: daemon pods are pinned by node affinity and bound by it.
    let s = Server::start_with(&[]);
    let client = kube_client(&s).await;
    let _kubelet = kubelet(client.clone(), true);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    apply(
        &s,
        &[
            node("n1", WASM, ""),
            node("n2", WASM, ""),
            node(
                "tainted",
                WASM,
                "{key: dedicated, value: x, effect: NoSchedule}",
            ),
            node("oci", "runtime.skiff.dev/oci: \"true\"", ""),
        ]
        .concat(),
    );
    apply(&s, AGENT);
    let out = s.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    wait_event(&client, "agent", "SuccessfulCreate").await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let row = s.kubectl_ok(&["get", "ds", "agent", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..6], ["agent", "2", "2", "2", "2", "2"], "{row}");
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    assert_eq!(placement(&list), ["n1", "n2"], "{list:#?}");

    // A new Wasm node gets its pod.
    apply(&s, &node("n3", WASM, ""));
    wait_for(&daemonsets, "agent", "3 available", |d: &DaemonSet| {
        d.status
            .as_ref()
            .is_some_and(|s| s.desired_number_scheduled == 3 && s.number_available == Some(3))
    })
    .await;
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    assert_eq!(placement(&list), ["n1", "n2", "n3"], "{list:#?}");
    let old_hash = list[0]
        .labels()
        .get("controller-revision-hash")
        .cloned()
        .unwrap();

    // A restart replaces the pods one node at a time (maxUnavailable 1).
    let (extremes, monitor) = spawn_monitor(client.clone(), "app=agent");
    s.kubectl_ok(&["rollout", "restart", "ds/agent"]);
    let out = s.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    drop(monitor);
    let seen = std::mem::take(&mut *extremes.lock().unwrap());
    assert!(
        seen.min_ready.is_some_and(|m| m >= 2),
        "more than one node went without a ready pod: {seen:?}"
    );
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    let live: Vec<&Pod> = list
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 3, "{list:#?}");
    assert!(
        live.iter()
            .all(|p| p.labels().get("controller-revision-hash") != Some(&old_hash))
    );
    assert_eq!(placement(&list), ["n1", "n2", "n3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let s = Server::start_with(&["--no-scheduler"]);
    let client = kube_client(&s).await;
    let _kubelet = spawn_kubelet(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    apply(
        &s,
        &WEB.replace("name: web}", "name: batchy}")
            .replace("app: web", "app: batchy")
            .replace(
                "    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n",
                "    type: Recreate\n",
            ),
    );
    rollout_status(&s, "batchy");
    let before = pods
        .list(&ListParams::default().labels("app=batchy"))
        .await
        .unwrap()
        .items;
    assert_eq!(before.len(), 2);
    let (extremes, monitor) = spawn_monitor(client.clone(), "app=batchy");
    s.kubectl_ok(&["rollout", "restart", "deployment/batchy"]);
    let out = rollout_status(&s, "batchy");
    assert!(out.contains("successfully rolled out"), "{out}");
    drop(monitor);
    let seen = std::mem::take(&mut *extremes.lock().unwrap());
    assert!(
        seen.max_live <= 2,
        "old and new pods ran side by side: {seen:?}"
    );
    let after = pods
        .list(&ListParams::default().labels("app=batchy"))
        .await
        .unwrap()
        .items;
    assert_eq!(after.len(), 2);
    assert!(
        after
            .iter()
            .all(|p| before.iter().all(|b| b.uid() != p.uid()))
    );
}
