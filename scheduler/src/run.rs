//! The scheduler as an ordinary API client: watch Pods, Nodes and RuntimeClasses, place
//! pending pods, bind them through `pods/binding`, report the ones that fit nowhere.
//!
//! One task owns the cache, the queue and the placer (one writer, no locks on the hot
//! path); watchers feed it through a channel; bindings run concurrently in their own
//! tasks and report back. A pod is counted on its node from the moment it is placed
//! ("assumed"), so the next decision, a microsecond later, already sees the room taken.

use crate::cache::Cluster;
use crate::framework::Framework;
use crate::model::PodInfo;
use crate::placement::{FitError, Placer};
use crate::queue::{Queue, WaitingFor};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::runtime::watcher;
use kube::{Api, Client};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::json;
use skiff_api::events::{ObjectRef, Recorder};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};

/// The scheduler's name as pods ask for it in `spec.schedulerName`.
pub const SCHEDULER_NAME: &str = "skiff";

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// `spec.schedulerName` values this scheduler serves (besides unset).
    pub scheduler_names: Vec<String>,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// See [`Placer::percentage_of_nodes_to_score`].
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Name reported in events.
    pub host: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            // Kubernetes defaults `schedulerName` to `default-scheduler`; Skiff's scheduler
            // is the default one of a Skiff cluster.
            scheduler_names: vec![SCHEDULER_NAME.into(), "default-scheduler".into()],
            bind_concurrency: 256,
            percentage_of_nodes_to_score: None,
            host: String::new(),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Every watch ended (the API went away for good).
    #[error("the watches of pods, nodes and runtime classes ended")]
    WatchesEnded,
}

enum Input {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Class(Box<watcher::Event<RuntimeClass>>),
    Bound { uid: String, outcome: BindOutcome },
}

enum BindOutcome {
    Bound,
    /// The pod is gone or already bound elsewhere: nothing to retry.
    Moot(String),
    /// Try again later.
    Failed(String),
}

/// Objects seen during a re-list, to find those that disappeared meanwhile.
#[derive(Default)]
struct Relist {
    pods: Option<FxHashSet<String>>,
    nodes: Option<FxHashSet<String>>,
    classes: Option<FxHashSet<String>>,
}

struct Scheduler {
    config: Config,
    client: Client,
    cluster: Cluster,
    queue: Queue,
    placer: Placer,
    /// Pending pods this scheduler is responsible for, by uid.
    pending: FxHashMap<String, Arc<Pod>>,
    /// The last unschedulable message written to each pending pod.
    reported: FxHashMap<String, String>,
    classes: FxHashMap<String, RuntimeClass>,
    synced: [bool; 3],
    relist: Relist,
    recorder: Recorder,
    binds: Arc<Semaphore>,
    tx: mpsc::Sender<Input>,
}

fn forward<K, S>(
    stream: S,
    tx: mpsc::Sender<Input>,
    wrap: fn(watcher::Event<K>) -> Input,
) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).await.is_err() {
                        return;
                    }
                }
                // The watcher re-lists by itself after its back-off.
                Err(e) => tracing::warn!(error = %e, "scheduler watch failed; retrying"),
            }
        }
    })
}

/// Run the scheduler against the API behind `client` until `stop` resolves.
pub async fn run(
    client: Client,
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    use kube::runtime::WatchStreamExt;
    let (tx, mut rx) = mpsc::channel(8192);
    // Terminal pods hold no resources; leave them out of the watch.
    let pods = watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let watchers = [
        forward(
            watcher(Api::<Pod>::all(client.clone()), pods).default_backoff(),
            tx.clone(),
            |e| Input::Pod(Box::new(e)),
        ),
        forward(
            watcher(Api::<Node>::all(client.clone()), Default::default()).default_backoff(),
            tx.clone(),
            |e| Input::Node(Box::new(e)),
        ),
        forward(
            watcher(Api::<RuntimeClass>::all(client.clone()), Default::default()).default_backoff(),
            tx.clone(),
            |e| Input::Class(Box::new(e)),
        ),
    ];
    let mut placer = Placer::new(Framework::default_profile());
    placer.percentage_of_nodes_to_score = config.percentage_of_nodes_to_score;
    let mut s = Scheduler {
        recorder: Recorder::new(client.clone(), "skiff-scheduler", &config.host),
        binds: Arc::new(Semaphore::new(config.bind_concurrency.max(1))),
        config,
        client,
        cluster: Cluster::new(),
        queue: Queue::new(),
        placer,
        pending: FxHashMap::default(),
        reported: FxHashMap::default(),
        classes: FxHashMap::default(),
        synced: [false; 3],
        relist: Relist::default(),
        tx,
    };
    tokio::pin!(stop);
    let result = loop {
        // Take in everything that happened before deciding anything.
        // (Never disconnected: the scheduler holds a sender itself.)
        while let Ok(i) = rx.try_recv() {
            s.handle(i);
        }
        if s.synced.iter().all(|&x| x) {
            s.queue.tick(Instant::now());
            let mut n = 0;
            while n < 128 {
                let Some(uid) = s.queue.pop() else { break };
                s.schedule_one(uid).await;
                n += 1;
            }
            if n > 0 {
                continue;
            }
        }
        let due = s.queue.next_due();
        let sleep = async {
            match due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            i = rx.recv() => match i {
                Some(i) => s.handle(i),
                None => break Err(RunError::WatchesEnded),
            },
            _ = sleep => {}
            _ = &mut stop => break Ok(()),
        }
    };
    for w in watchers {
        w.abort();
    }
    result
}

fn uid_of(meta: &kube::api::ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl Scheduler {
    fn handle(&mut self, input: Input) {
        match input {
            Input::Pod(ev) => self.on_pod_event(*ev),
            Input::Node(ev) => self.on_node_event(*ev),
            Input::Class(ev) => self.on_class_event(*ev),
            Input::Bound { uid, outcome } => self.on_bound(uid, outcome),
        }
    }

    fn responsible(&self, pod: &Pod) -> bool {
        match pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) {
            None | Some("") => true,
            Some(n) => self.config.scheduler_names.iter().any(|x| x == n),
        }
    }

    fn on_pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.relist.pods = Some(FxHashSet::default()),
            watcher::Event::InitApply(p) => {
                if let Some(seen) = &mut self.relist.pods {
                    seen.insert(uid_of(&p.metadata));
                }
                self.on_pod(p);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.pods.take() {
                    let gone: Vec<String> = self
                        .pending
                        .keys()
                        .chain(self.cluster.pod_uids())
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        self.pod_gone(&uid);
                    }
                }
                self.synced[0] = true;
            }
            watcher::Event::Apply(p) => self.on_pod(p),
            watcher::Event::Delete(p) => self.pod_gone(&uid_of(&p.metadata)),
        }
    }

    fn on_pod(&mut self, pod: Pod) {
        let uid = uid_of(&pod.metadata);
        if let Some(node) = node_of(&pod) {
            self.pending.remove(&uid);
            self.reported.remove(&uid);
            self.queue.remove(&uid);
            if is_terminal(&pod) {
                self.pod_gone(&uid);
                return;
            }
            // A pod already running keeps counting even if its class went away.
            let classes = &self.classes;
            let info = PodInfo::from_pod(&pod, |n| classes.get(n))
                .or_else(|_| PodInfo::from_pod(&pod, |_| None::<&RuntimeClass>))
                .or_else(|_| {
                    let mut p = pod.clone();
                    if let Some(s) = p.spec.as_mut() {
                        s.runtime_class_name = None;
                    }
                    PodInfo::from_pod(&p, |_| None::<&RuntimeClass>)
                });
            if let Ok(info) = info {
                let node = node.to_string();
                self.cluster.add_pod(&info, &node);
            }
            return;
        }
        if self.cluster.placed_on(&uid).is_some() {
            // Placed by us a moment ago; this event predates the binding.
            return;
        }
        if !self.responsible(&pod) || pod.metadata.deletion_timestamp.is_some() || is_terminal(&pod)
        {
            self.pending.remove(&uid);
            self.queue.remove(&uid);
            return;
        }
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        self.pending.insert(uid.clone(), Arc::new(pod));
        self.queue.upsert(&uid, priority);
    }

    fn pod_gone(&mut self, uid: &str) {
        self.pending.remove(uid);
        self.reported.remove(uid);
        self.queue.remove(uid);
        if self.cluster.placed_on(uid).is_some() {
            self.cluster.remove_pod(uid);
            self.queue.room_freed();
        }
    }

    fn on_node_event(&mut self, ev: watcher::Event<Node>) {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => self.relist.nodes = Some(FxHashSet::default()),
            watcher::Event::InitApply(n) => {
                if let Some(seen) = &mut self.relist.nodes {
                    seen.insert(name(&n));
                }
                self.on_node(&n);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.nodes.take() {
                    let gone: Vec<String> = self
                        .cluster
                        .nodes()
                        .iter()
                        .filter(|n| !seen.contains(&*n.name))
                        .map(|n| n.name.to_string())
                        .collect();
                    for n in gone {
                        self.cluster.remove_node(&n);
                    }
                }
                self.synced[1] = true;
            }
            watcher::Event::Apply(n) => self.on_node(&n),
            watcher::Event::Delete(n) => self.cluster.remove_node(&name(&n)),
        }
    }

    fn on_node(&mut self, node: &Node) {
        if self.cluster.upsert_node(node) {
            let woken = self.queue.nodes_changed();
            if woken > 0 {
                tracing::debug!(node = ?node.metadata.name, woken, "node changed; retrying pending pods");
            }
        }
    }

    fn on_class_event(&mut self, ev: watcher::Event<RuntimeClass>) {
        let name = |c: &RuntimeClass| c.metadata.name.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => self.relist.classes = Some(FxHashSet::default()),
            watcher::Event::InitApply(c) => {
                if let Some(seen) = &mut self.relist.classes {
                    seen.insert(name(&c));
                }
                self.classes.insert(name(&c), c);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.classes.take() {
                    self.classes.retain(|k, _| seen.contains(k));
                }
                self.synced[2] = true;
                self.queue.classes_changed();
            }
            watcher::Event::Apply(c) => {
                self.classes.insert(name(&c), c);
                self.queue.classes_changed();
            }
            watcher::Event::Delete(c) => {
                self.classes.remove(&name(&c));
            }
        }
    }

    async fn schedule_one(&mut self, uid: String) {
        let Some(pod) = self.pending.get(&uid).cloned() else {
            self.queue.remove(&uid);
            return;
        };
        let classes = &self.classes;
        let info = match PodInfo::from_pod(&pod, |n| classes.get(n)) {
            Ok(i) => i,
            Err(e) => {
                self.unschedulable(&pod, &uid, e.to_string(), WaitingFor::RuntimeClass);
                return;
            }
        };
        match self.placer.place(&self.cluster, &info) {
            Ok(idx) => {
                let node = self.cluster.nodes()[idx].name.to_string();
                self.cluster.assume(&info, &node);
                self.bind(info, node).await;
            }
            Err(fit) => {
                let waiting = waiting_for(&fit);
                self.unschedulable(&pod, &uid, fit.to_string(), waiting);
            }
        }
    }

    async fn bind(&mut self, pod: PodInfo, node: String) {
        let permit = match self.binds.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let client = self.client.clone();
        let tx = self.tx.clone();
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let body = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let req = http::Request::post(format!(
                "/api/v1/namespaces/{}/pods/{}/binding",
                pod.namespace, pod.name
            ))
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes());
            let outcome = match req {
                Err(e) => BindOutcome::Failed(e.to_string()),
                Ok(req) => match client.request_text(req).await {
                    Ok(_) => {
                        recorder.normal(
                            &ObjectRef::pod(&pod.namespace, &pod.name, &pod.uid),
                            "Scheduled",
                            format!("Successfully assigned {} to {node}", pod.key()),
                        );
                        BindOutcome::Bound
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        BindOutcome::Moot(s.message)
                    }
                    Err(e) => BindOutcome::Failed(e.to_string()),
                },
            };
            drop(permit);
            let _ = tx
                .send(Input::Bound {
                    uid: pod.uid,
                    outcome,
                })
                .await;
        });
    }

    fn on_bound(&mut self, uid: String, outcome: BindOutcome) {
        match outcome {
            BindOutcome::Bound => {
                self.queue.done(&uid);
                self.pending.remove(&uid);
                self.reported.remove(&uid);
            }
            BindOutcome::Moot(why) => {
                tracing::debug!(%uid, %why, "binding refused; the pod moved on");
                self.cluster.forget(&uid);
                // Bound elsewhere or gone: the watch says so soon and removes it. Until
                // then it stays pending and is tried again after a back-off, so a
                // refusal for any other reason cannot lose the pod.
                self.queue.back_off(&uid, Instant::now());
            }
            BindOutcome::Failed(why) => {
                tracing::warn!(%uid, %why, "binding failed; retrying after a back-off");
                self.cluster.forget(&uid);
                self.queue.back_off(&uid, Instant::now());
            }
        }
    }

    fn unschedulable(&mut self, pod: &Pod, uid: &str, message: String, waiting: WaitingFor) {
        self.queue.park(uid, waiting, Instant::now());
        let meta = &pod.metadata;
        let (ns, name) = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        tracing::debug!(pod = %format!("{ns}/{name}"), %message, "unschedulable");
        self.recorder.warning(
            &ObjectRef::pod(&ns, &name, uid),
            "FailedScheduling",
            message.clone(),
        );
        if self.reported.get(uid) == Some(&message) {
            return;
        }
        self.reported.insert(uid.to_string(), message.clone());
        let client = self.client.clone();
        tokio::spawn(async move {
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastProbeTime": null,
                "lastTransitionTime": skiff_api::apiserver::now(),
            }]}});
            let req = http::Request::patch(format!("/api/v1/namespaces/{ns}/pods/{name}/status"))
                .header("content-type", "application/strategic-merge-patch+json")
                .body(patch.to_string().into_bytes());
            if let Ok(req) = req
                && let Err(e) = client.request_text(req).await
            {
                tracing::debug!(pod = %name, error = %e, "could not set PodScheduled=False");
            }
        });
    }
}

fn waiting_for(fit: &FitError) -> WaitingFor {
    if fit.resolvable_by_pods {
        WaitingFor::NodesOrRoom
    } else {
        WaitingFor::Nodes
    }
}
