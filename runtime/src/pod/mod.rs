//! One worker per pod bound to this node: sandbox, artifacts, init containers in order,
//! then the containers, restarts with Kubernetes' back-off, status, and graceful
//! deletion. Workers own their pod's state; the agent feeds them the pod's latest object
//! and the exits of its containers.

pub mod container;
pub mod env;
mod grpc_health;
pub mod hooks;
pub mod logs;
pub mod objects;
pub mod probes;
mod probing;
pub mod service_env;
mod specs;
pub mod status;
pub mod volumes;

use crate::artifacts::{
    ArtifactContent, ArtifactStore, DockerConfig, PullPolicy, RegistryCredentials,
};
use crate::executors::Runtime;
use crate::sandbox::{PodLimits, Sandbox, SandboxSpec, Sandboxes};
use env::{ConfigError, NodeFacts, Objects};
use k8s_openapi::api::core::v1::{Container as K8sContainer, Pod, PodStatus};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use logs::LogRegistry;
pub use objects::ApiObjects;
use objects::token_seconds;
use skiff_api::events::{ObjectRef, Recorder};
use skiff_shims::{
    Artifact, ContainerInfo, ContainerSpec, ContainerState, ErrorKind, Executor, ExitEvent, Limits,
    LogSpec, Mount,
};
use status::{Container, Ended, Phase, Snapshot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// First delay before restarting a crashed container again (Kubernetes: 10 s).
pub const CRASH_BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest restart delay (Kubernetes: 5 min).
pub const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long has its back-off reset.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Image pull back-off bounds.
const PULL_BACKOFF: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(300));
/// Per-request deadline of an HTTP service when the pod does not set one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pod annotation overriding the request deadline (`500ms`, `30s`, `2m`).
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "skiff.dev/request-timeout";
/// Pod annotation listing the hosts (comma-separated) its Wasm containers' outgoing HTTP
/// requests may go to besides the pod's own localhost.
pub const ALLOWED_HOSTS_ANNOTATION: &str = "skiff.dev/allowed-outgoing-hosts";
/// Port a `wasi:http` component listens on inside its pod when it declares none.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// What every worker shares.
pub struct Ctx {
    /// The API.
    pub client: kube::Client,
    /// The Wasm host (replaced by a new one if it dies).
    pub host: Arc<crate::wasmhost::WasmHost>,
    /// Linux containers, if this node can run them (else why not).
    pub oci: Result<skiff_shims::oci::OciExecutor, String>,
    /// Whether `privileged` containers may run here.
    pub allow_privileged: bool,
    /// Where `Localhost` seccomp profiles are (the agent's `seccomp/` directory).
    pub seccomp_dir: std::path::PathBuf,
    /// Processes and threads a pod may have at once.
    pub pod_max_pids: i64,
    /// The artifact store.
    pub artifacts: ArtifactStore,
    /// Pod sandboxes.
    pub sandboxes: Arc<dyn Sandboxes>,
    /// Node facts for the downward API.
    pub node: NodeFacts,
    /// Pod state directories (`<dir>/<uid>/...`).
    pub pods_dir: PathBuf,
    /// Event recorder.
    pub recorder: Recorder,
    /// Where logs are, for the logs endpoint.
    pub logs: LogRegistry,
    /// Containers the Wasm host was running when the agent started, by id.
    pub adopted: Mutex<HashMap<String, ContainerInfo>>,
    /// Header-read timeout and connection cap of served ports.
    pub http_limits: skiff_api::listen::Limits,
    /// Set when the agent stops: workers then end and leave their containers running
    /// (a restarted agent re-adopts them), rather than take the end of their pod's
    /// updates for the pod leaving the node.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Wakes the Node's status writer when what it reports changed.
    pub node_changed: Arc<tokio::sync::Notify>,
}

/// What the agent tells a worker besides pod updates.
#[derive(Debug)]
pub enum Msg {
    /// A container of the pod ended.
    Exited(ExitEvent),
    /// The connection to the Wasm host broke and the agent reached a host again (a new
    /// one, if the old one died): the pod's running containers not in `alive` died with
    /// the old host.
    HostReplaced {
        /// Ids of the containers the host that now runs still has running.
        alive: Arc<HashSet<String>>,
    },
    /// A probe check finished.
    Probe {
        /// The slot.
        slot: usize,
        /// The probe of that slot.
        probe: usize,
        /// The instance it checked.
        instance: i32,
        /// Its result.
        result: Result<(), String>,
    },
}

/// The worker's handle, kept by the agent.
pub struct Handle {
    /// Latest pod object.
    pub pod: watch::Sender<Arc<Pod>>,
    /// Exits.
    pub msgs: mpsc::UnboundedSender<Msg>,
}

/// The container id the Wasm host knows a pod's container by.
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}/{name}")
}

struct Slot {
    spec: K8sContainer,
    st: Container,
    init: bool,
    retry_at: Option<Instant>,
    crash_backoff: Duration,
    pull_backoff: Duration,
    started: Option<Instant>,
    /// Instances started so far (the next start is a restart when > 0).
    instances: i32,
    /// No restart will come (policy, or the pod is done).
    final_: bool,
    /// The executor its current (or last) instance runs on.
    runtime: Option<Runtime>,
    /// Its probes, armed while an instance runs.
    probes: Vec<ProbeRun>,
    /// An init container with `restartPolicy: Always`: started in init order, the next
    /// one starts once it has started, and it runs (restarted whatever the pod's policy)
    /// until the main containers are done; stopped after them.
    sidecar: bool,
    /// The startup probe passed (or there is none): the others may run.
    startup_done: bool,
}

/// A container to stop when the pod ends.
struct Stopping {
    id: String,
    running: bool,
    runtime: Runtime,
    pre_stop: Option<hooks::Hook>,
    sidecar: bool,
}

/// One probe of a running instance.
struct ProbeRun {
    spec: probes::ProbeSpec,
    tracker: probes::Tracker,
    next_at: Instant,
    in_flight: bool,
}

impl Slot {
    fn new(spec: &K8sContainer, init: bool) -> Slot {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        let mut st = Container::new(&spec.name, spec.image.as_deref().unwrap_or_default());
        st.sidecar = sidecar;
        Slot {
            st,
            sidecar,
            spec: spec.clone(),
            init,
            retry_at: None,
            crash_backoff: Duration::ZERO,
            pull_backoff: Duration::ZERO,
            started: None,
            instances: 0,
            final_: false,
            runtime: None,
            probes: Vec::new(),
            startup_done: true,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }

    fn waiting(&mut self, reason: &str, message: impl Into<String>) {
        self.st.phase = Phase::Waiting {
            reason: reason.into(),
            message: message.into(),
        };
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn quantity_u64(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    milli: bool,
) -> Option<u64> {
    let v = skiff_api::validation::parse_quantity(&q?.0)?.value();
    Some(if milli { (v * 1000.0).ceil() } else { v.ceil() } as u64)
}

/// The pod worker.
pub struct Worker {
    ctx: Arc<Ctx>,
    /// To send itself probe results.
    self_tx: mpsc::UnboundedSender<Msg>,
    pod_rx: watch::Receiver<Arc<Pod>>,
    msgs: mpsc::UnboundedReceiver<Msg>,
    pod: Arc<Pod>,
    uid: String,
    ns: String,
    name: String,
    slots: Vec<Slot>,
    init_done: bool,
    sandbox: Option<Sandbox>,
    sandbox_retry: Option<Instant>,
    /// When the projected ServiceAccount tokens are fetched again.
    token_refresh: Option<Instant>,
    sandbox_backoff: Duration,
    volumes: Option<BTreeMap<String, (PathBuf, bool)>>,
    handler: Option<Result<String, String>>,
    start_time: jiff::Timestamp,
    published: Option<serde_json::Value>,
    publish_retry: Option<Instant>,
    done: bool,
}

impl Worker {
    /// A worker for `pod`; the returned handle feeds it.
    pub fn new(ctx: Arc<Ctx>, pod: Pod) -> (Worker, Handle) {
        let pod = Arc::new(pod);
        let (pod_tx, pod_rx) = watch::channel(pod.clone());
        let (msg_tx, msgs) = mpsc::unbounded_channel();
        let md = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec.containers.iter().map(|c| Slot::new(c, false)));
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        let mut w = Worker {
            ctx,
            self_tx: msg_tx.clone(),
            pod_rx,
            msgs,
            uid: md.uid.clone().unwrap_or_default(),
            ns: md.namespace.clone().unwrap_or_else(|| "default".into()),
            name: md.name.clone().unwrap_or_default(),
            pod,
            slots,
            init_done: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            sandbox: None,
            sandbox_retry: None,
            token_refresh: None,
            sandbox_backoff: Duration::ZERO,
            volumes: None,
            handler: None,
            start_time,
            published: None,
            publish_retry: None,
            done: false,
        };
        // Adopt now, not when the task first runs: the agent clears what the Wasm host
        // reported once every pod it knows has a worker.
        w.adopt();
        (
            w,
            Handle {
                pod: pod_tx,
                msgs: msg_tx,
            },
        )
    }

    fn object(&self) -> ObjectRef {
        ObjectRef::pod(&self.ns, &self.name, &self.uid)
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// Run until the pod is gone from this node.
    pub async fn run(mut self) {
        loop {
            if self.deleting() {
                self.terminate(true).await;
                return;
            }
            if self.token_refresh.is_some_and(|t| t <= Instant::now()) {
                self.refresh_tokens().await;
            }
            self.step().await;
            self.publish().await;
            let next = self.next_wakeup();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.pod_rx.changed() => {
                    if changed.is_err() {
                        if self.ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                        // The pod left the API (force-deleted) or this node.
                        self.terminate(false).await;
                        return;
                    }
                    self.pod = self.pod_rx.borrow_and_update().clone();
                }
                Some(m) = self.msgs.recv() => self.on_msg(m).await,
                _ = sleep => {}
            }
        }
    }

    /// Take over what a previous agent left: running containers, restart counts, and
    /// whether the pod already finished.
    fn adopt(&mut self) {
        let prev: HashMap<String, k8s_openapi::api::core::v1::ContainerStatus> = self
            .pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            // A finished pod never runs again.
            self.done = true;
        }
        let initialized = self
            .pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Initialized" && c.status == "True");
        if initialized {
            self.init_done = true;
        }
        let ctx = self.ctx.clone();
        let adopted = ctx.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rearm = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let id = container_id(&self.uid, &slot.spec.name);
            if let Some(p) = prev.get(&slot.spec.name) {
                slot.st.restart_count = p.restart_count;
                slot.st.image_id = p.image_id.clone();
                let ran = p
                    .state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || p.last_state
                        .as_ref()
                        .is_some_and(|s| s.terminated.is_some());
                if ran {
                    slot.instances = p.restart_count + 1;
                }
                if let Some(t) = p.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    slot.st.last = Some(Ended {
                        code: t.exit_code,
                        reason: t.reason.clone().unwrap_or_default(),
                        message: t.message.clone().unwrap_or_default(),
                        started_at: t
                            .started_at
                            .as_ref()
                            .map_or_else(jiff::Timestamp::now, |x| x.0),
                        finished_at: t
                            .finished_at
                            .as_ref()
                            .map_or_else(jiff::Timestamp::now, |x| x.0),
                        container_id: t.container_id.clone().unwrap_or_default(),
                    });
                }
                if slot.init
                    && p.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
                {
                    slot.st.phase = Phase::Terminated(Ended {
                        code: 0,
                        reason: "Completed".into(),
                        message: String::new(),
                        started_at: jiff::Timestamp::now(),
                        finished_at: jiff::Timestamp::now(),
                        container_id: String::new(),
                    });
                    slot.final_ = true;
                }
            }
            if let Some(info) = adopted.get(&id) {
                let runtime = match info.kind {
                    skiff_shims::WorkloadKind::Oci => Runtime::Oci,
                    _ => Runtime::Wasm,
                };
                slot.runtime = Some(runtime);
                slot.st.container_id = format!("{}://{id}", runtime.scheme());
                match &info.state {
                    ContainerState::Running { started_at } => {
                        slot.st.phase = Phase::Running {
                            started_at: *started_at,
                        };
                        slot.started = Some(Instant::now());
                        // Readiness stays what it was until a probe says otherwise.
                        rearm.push((i, prev.get(&slot.spec.name).map(|p| p.ready)));
                        tracing::info!(pod = %self.name, container = %slot.spec.name, "re-adopted a running container");
                        self.ctx.recorder.normal(
                            &ObjectRef::pod(&self.ns, &self.name, &self.uid),
                            "Adopted",
                            format!(
                                "Container {} kept running across an agent restart",
                                slot.spec.name
                            ),
                        );
                    }
                    ContainerState::Exited { .. } => {}
                }
            }
        }
        drop(adopted);
        for (i, ready) in rearm {
            self.arm_probes(i, ready);
        }
        if self.done {
            for slot in &mut self.slots {
                slot.final_ = true;
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter(|s| !s.final_ && !s.st.running())
            .filter_map(|s| s.retry_at)
            .chain(
                self.slots
                    .iter()
                    .filter(|s| s.st.running())
                    .flat_map(|s| s.probes.iter().filter(|p| !p.in_flight).map(|p| p.next_at)),
            )
            .chain(self.sandbox_retry)
            .chain(self.token_refresh)
            .chain(self.publish_retry)
            .map(|t| t.max(now))
            .min()
    }

    async fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Probe {
                slot,
                probe,
                instance,
                result,
            } => self.probed(slot, probe, instance, result),
            Msg::Exited(ev) => {
                let Some(i) = self
                    .slots
                    .iter()
                    .position(|s| container_id(&self.uid, &s.spec.name) == ev.id)
                else {
                    return;
                };
                if !self.slots[i].st.running() {
                    return;
                }
                self.exited(i, ev);
            }
            Msg::HostReplaced { alive } => {
                let now = jiff::Timestamp::now();
                for i in 0..self.slots.len() {
                    let id = container_id(&self.uid, &self.slots[i].spec.name);
                    if !self.slots[i].st.running() || alive.contains(&id) {
                        continue;
                    }
                    self.exited(
                        i,
                        ExitEvent {
                            id,
                            finished_at: now,
                            status: skiff_shims::ExitStatus {
                                code: skiff_shims::executor::EXIT_KILLED,
                                reason: skiff_shims::ExitReason::Error,
                                message: "the node's Wasm host stopped unexpectedly; a new one was started".into(),
                            },
                        },
                    );
                }
            }
        }
    }

    fn exited(&mut self, i: usize, ev: ExitEvent) {
        let slot = &self.slots[i];
        let started_at = match &slot.st.phase {
            Phase::Running { started_at } => *started_at,
            _ => ev.finished_at,
        };
        let ended = Ended {
            code: ev.status.code,
            reason: ev.status.reason.as_str().to_string(),
            message: ev.status.message.clone(),
            started_at,
            finished_at: ev.finished_at,
            container_id: slot.st.container_id.clone(),
        };
        self.ended(i, ended);
    }

    /// A container instance ended: record it and restart it per policy and back-off.
    fn ended(&mut self, i: usize, ended: Ended) {
        let policy = self.restart_policy();
        let pod_name = format!("{}_{}({})", self.name, self.ns, self.uid);
        let object = self.object();
        let slot = &mut self.slots[i];
        if ended.code != 0 {
            let what = if ended.message.is_empty() {
                format!("exit code {}", ended.code)
            } else {
                ended.message.clone()
            };
            self.ctx.recorder.warning(
                &object,
                &ended.reason,
                format!(
                    "Container {} ended ({}): {what}",
                    slot.spec.name, ended.reason
                ),
            );
        }
        let restart = match (slot.init, policy.as_str()) {
            // Until the pod is done.
            _ if slot.sidecar => !self.done,
            (true, "Never") => false,
            (true, _) => ended.code != 0,
            (false, "Always") => true,
            (false, "OnFailure") => ended.code != 0,
            _ => false,
        };
        if slot.started.is_some_and(|t| t.elapsed() >= BACKOFF_RESET) {
            slot.crash_backoff = Duration::ZERO;
        }
        slot.started = None;
        if !restart {
            slot.st.phase = Phase::Terminated(ended);
            slot.final_ = true;
            return;
        }
        let delay = slot.crash_backoff;
        slot.crash_backoff = if delay.is_zero() {
            CRASH_BACKOFF_START
        } else {
            (delay * 2).min(CRASH_BACKOFF_MAX)
        };
        slot.st.last = Some(ended.clone());
        if delay.is_zero() {
            slot.st.phase = Phase::Terminated(ended);
            slot.retry_at = None;
        } else {
            slot.retry_at = Some(Instant::now() + delay);
            let msg = format!(
                "back-off {}s restarting failed container={} pod={pod_name}",
                delay.as_secs(),
                slot.spec.name
            );
            slot.waiting("CrashLoopBackOff", msg.clone());
            self.ctx.recorder.warning(
                &object,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    slot.spec.name, self.name
                ),
            );
        }
    }

    async fn step(&mut self) {
        if self.done {
            return;
        }
        if self.sandbox.is_none() && !self.ensure_sandbox().await {
            return;
        }
        let now = Instant::now();
        // Init containers, one after the other.
        if !self.init_done {
            if !self.step_init(now).await {
                // Sidecars may have probes to run meanwhile (a startup probe gates the
                // next init container).
                self.run_due_probes();
                return;
            }
            self.init_done = true;
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if (s.init && !s.sidecar) || s.final_ || s.st.running() || !s.due(now) {
                continue;
            }
            self.start(i).await;
        }
        self.run_due_probes();
        let all_final = self.slots.iter().filter(|s| !s.init).all(|s| s.final_);
        if all_final {
            self.finish().await;
        }
    }

    /// Starts the next init container that is due; true once they all completed (sidecars:
    /// started).
    async fn step_init(&mut self, now: Instant) -> bool {
        for i in 0..self.slots.len() {
            if !self.slots[i].init {
                continue;
            }
            let slot = &self.slots[i];
            if slot.sidecar {
                // The next one waits until this one has started (its startup probe,
                // if any, passed).
                if slot.st.running() && slot.startup_done {
                    continue;
                }
                if !slot.st.running() && slot.due(now) {
                    self.start(i).await;
                }
                return false;
            }
            if slot.st.succeeded() && slot.final_ {
                continue;
            }
            if slot.st.running() || slot.final_ || !slot.due(now) {
                return false;
            }
            self.start(i).await;
            return false;
        }
        true
    }

    async fn ensure_sandbox(&mut self) -> bool {
        if self.sandbox_retry.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        let mut limits = PodLimits {
            pids: Some(self.ctx.pod_max_pids),
            ..PodLimits::default()
        };
        let lim = |c: &K8sContainer, k: &str, milli: bool| {
            quantity_u64(
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(k)),
                milli,
            )
        };
        let regular: Vec<&K8sContainer> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(|s| &s.spec)
            .collect();
        if regular.iter().all(|c| lim(c, "memory", false).is_some()) {
            limits.memory = Some(regular.iter().filter_map(|c| lim(c, "memory", false)).sum());
        }
        if regular.iter().all(|c| lim(c, "cpu", true).is_some()) {
            limits.milli_cpu = Some(regular.iter().filter_map(|c| lim(c, "cpu", true)).sum());
        }
        let spec = SandboxSpec {
            limits,
            share_process_namespace: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.share_process_namespace)
                .unwrap_or(false),
        };
        let sandboxes = self.ctx.sandboxes.clone();
        let uid = self.uid.clone();
        // The pod's directory is this agent's record that the sandbox is its own: orphan
        // clean-up removes only sandboxes with a directory here, never those of another
        // agent on the same machine. So it is made first.
        let record = self.ctx.pods_dir.join(&self.uid);
        let made = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&record).map_err(|e| crate::sandbox::SandboxError::Io {
                path: record.clone(),
                source: e,
            })?;
            sandboxes.ensure(&uid, spec)
        })
        .await;
        match made {
            Ok(Ok(sb)) => {
                self.sandbox = Some(sb);
                self.sandbox_retry = None;
                true
            }
            Ok(Err(e)) => {
                self.sandbox_failed(e.to_string());
                false
            }
            Err(e) => {
                self.sandbox_failed(e.to_string());
                false
            }
        }
    }

    fn sandbox_failed(&mut self, message: String) {
        self.sandbox_backoff =
            (self.sandbox_backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        self.sandbox_retry = Some(Instant::now() + self.sandbox_backoff);
        self.ctx.recorder.warning(
            &self.object(),
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {message}"),
        );
        for s in &mut self.slots {
            if !s.st.running() {
                s.waiting("ContainerCreating", format!("pod sandbox: {message}"));
            }
        }
    }

    async fn runtime_handler(&mut self) -> Result<String, String> {
        if let Some(h) = &self.handler {
            return h.clone();
        }
        let name = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .filter(|n| !n.is_empty());
        let h = match name {
            None => Ok("oci".to_string()),
            Some(n) => match Api::<RuntimeClass>::all(self.ctx.client.clone())
                .get_opt(&n)
                .await
            {
                Ok(Some(rc)) => Ok(rc.handler),
                Ok(None) => Err(format!("RuntimeClass \"{n}\" not found")),
                Err(e) => return Err(format!("reading RuntimeClass \"{n}\": {e}")),
            },
        };
        self.handler = Some(h.clone());
        h
    }

    async fn credentials(&self, image: &str) -> RegistryCredentials {
        let secrets = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default();
        for r in secrets {
            let Ok(Some(s)) = ApiObjects(self.ctx.client.clone())
                .secret(&self.ns, &r.name)
                .await
            else {
                continue;
            };
            let data = s.data.unwrap_or_default();
            let Some(bytes) = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))
            else {
                continue;
            };
            if let Ok(cfg) = DockerConfig::parse(&bytes.0)
                && let Some(c) = cfg.credentials_for(image)
            {
                return c;
            }
        }
        RegistryCredentials::Anonymous
    }

    fn pull_failed(&mut self, i: usize, reason: &str, message: String) {
        let object = self.object();
        let slot = &mut self.slots[i];
        slot.pull_backoff = if slot.pull_backoff.is_zero() {
            PULL_BACKOFF.0
        } else {
            (slot.pull_backoff * 2).min(PULL_BACKOFF.1)
        };
        slot.retry_at = Some(Instant::now() + slot.pull_backoff);
        slot.waiting(reason, message.clone());
        self.ctx.recorder.warning(&object, "Failed", message);
    }

    fn config_failed(&mut self, i: usize, reason: &str, message: String) {
        let object = self.object();
        let slot = &mut self.slots[i];
        slot.pull_backoff =
            (slot.pull_backoff * 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
        slot.retry_at = Some(Instant::now() + slot.pull_backoff);
        slot.waiting(reason, message.clone());
        self.ctx
            .recorder
            .warning(&object, "Failed", format!("Error: {message}"));
    }

    async fn ensure_volumes(&mut self) -> Result<BTreeMap<String, (PathBuf, bool)>, ConfigError> {
        if let Some(v) = &self.volumes {
            return Ok(v.clone());
        }
        let root = self.ctx.pods_dir.join(&self.uid).join("volumes");
        let objects = ApiObjects(self.ctx.client.clone());
        let mut out = BTreeMap::new();
        let vols = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for v in &vols {
            let dir =
                volumes::materialize(&self.pod, v, &root, &objects, &self.ctx.node.host_ip).await?;
            let always_ro = v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some();
            if let Some(seconds) = token_seconds(v) {
                let now = jiff::Timestamp::now();
                let until = now + jiff::SignedDuration::from_secs(seconds);
                let after = volumes::token_refresh_after(now, until);
                self.token_refresh = Some(Instant::now() + after);
            }
            out.insert(v.name.clone(), (dir, always_ro));
        }
        self.volumes = Some(out.clone());
        Ok(out)
    }

    /// Fetch the projected ServiceAccount tokens again, in place.
    async fn refresh_tokens(&mut self) {
        let Some(dirs) = self.volumes.clone() else {
            self.token_refresh = None;
            return;
        };
        let objects = ApiObjects(self.ctx.client.clone());
        let vols = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut next = None;
        for v in vols.iter().filter(|v| token_seconds(v).is_some()) {
            let Some((dir, _)) = dirs.get(&v.name) else {
                continue;
            };
            match volumes::refresh_projected_token(
                &self.pod,
                v,
                dir,
                &objects,
                &self.ctx.node.host_ip,
            )
            .await
            {
                Ok(Some((issued, expires))) => {
                    let at = Instant::now() + volumes::token_refresh_after(issued, expires);
                    next = Some(next.map_or(at, |n: Instant| n.min(at)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pod = %self.name, volume = %v.name, error = %e, "ServiceAccount token not refreshed; retrying");
                    next = Some(Instant::now() + Duration::from_secs(10));
                }
            }
        }
        self.token_refresh = next;
    }

    /// The log file of a container instance.
    fn log_path(&self, name: &str, instance: i32) -> PathBuf {
        self.ctx
            .pods_dir
            .join(&self.uid)
            .join("logs")
            .join(name)
            .join(format!("{instance}.log"))
    }

    async fn start(&mut self, i: usize) {
        let object = self.object();
        let handler = match self.runtime_handler().await {
            Ok(h) => h,
            Err(e) => return self.config_failed(i, "CreateContainerConfigError", e),
        };
        let spec = self.slots[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let policy = match spec.image_pull_policy.as_deref() {
            Some(p) => p
                .parse()
                .unwrap_or_else(|_| PullPolicy::default_for(&image)),
            None => PullPolicy::default_for(&image),
        };
        let creds = self.credentials(&image).await;
        let pulled = {
            let mut pod_rx = self.pod_rx.clone();
            let store: ArtifactStore = self.ctx.artifacts.clone();
            let pull = store.pull(&image, policy, &creds);
            tokio::select! {
                r = pull => Some(r),
                // A deletion must not wait for a slow registry.
                _ = async { loop { if pod_rx.changed().await.is_err() || pod_rx.borrow().metadata.deletion_timestamp.is_some() { return; } } } => None,
            }
        };
        let Some(pulled) = pulled else { return };
        let artifact = match pulled {
            Ok(a) => a,
            Err(e) => {
                let reason = e.reason().as_str().to_string();
                let message = format!("Failed to pull image \"{image}\": {e}");
                return self.pull_failed(i, &reason, message);
            }
        };
        self.slots[i].pull_backoff = Duration::ZERO;
        self.slots[i].st.image_id = artifact.image_id();
        let runtime = match self.runtime_for(&image, &handler, &artifact.content) {
            Ok(r) => r,
            Err(msg) => return self.pull_failed(i, "InvalidArtifact", msg),
        };
        let volumes = match self.ensure_volumes().await {
            Ok(v) => v,
            Err(e) => return self.config_failed(i, "CreateContainerConfigError", e.0),
        };
        let mounts: Vec<Mount> = match volumes::preopens(&spec, &volumes) {
            Ok(p) => p
                .into_iter()
                .map(|p| Mount {
                    host_path: p.host,
                    sub_path: p.sub_path,
                    guest_path: p.guest,
                    read_only: p.read_only,
                })
                .collect(),
            Err(e) => return self.config_failed(i, "CreateContainerConfigError", e.0),
        };
        let env = match env::resolve(
            &self.pod,
            &spec,
            &ApiObjects(self.ctx.client.clone()),
            &self.ctx.node,
        )
        .await
        {
            Ok(e) => e,
            Err(e) => return self.config_failed(i, "CreateContainerConfigError", e.0),
        };
        let instance = self.slots[i].instances;
        let log_path = self.log_path(&spec.name, instance);
        if let Some(d) = log_path.parent()
            && let Err(e) = std::fs::create_dir_all(d)
        {
            return self.config_failed(
                i,
                "CreateContainerError",
                format!("log directory {}: {e}", d.display()),
            );
        }
        // Keep the current and the previous instance's logs only.
        if instance >= 2 {
            let _ = std::fs::remove_file(self.log_path(&spec.name, instance - 2));
            let _ = std::fs::remove_file(
                self.log_path(&spec.name, instance - 2)
                    .with_extension("log.1"),
            );
        }
        let limits_of = |k: &str, milli: bool| {
            quantity_u64(
                spec.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(k)),
                milli,
            )
        };
        let id = container_id(&self.uid, &spec.name);
        let mut cspec = ContainerSpec {
            id: id.clone(),
            artifact: Artifact {
                path: PathBuf::new(),
                digest: artifact.digest.clone(),
            },
            args: Vec::new(),
            env,
            mounts,
            log: LogSpec {
                path: log_path,
                max_bytes: 10 * 1024 * 1024,
            },
            limits: Limits {
                memory_bytes: limits_of("memory", false),
                cpu_millis: limits_of("cpu", true).map(|m| m.min(u64::from(u32::MAX)) as u32),
            },
            http: None,
            oci: None,
            outgoing: None,
        };
        let prepared = match &artifact.content {
            ArtifactContent::Wasm(w) => {
                self.wasm_spec(&mut cspec, &spec, w);
                Ok(())
            }
            ArtifactContent::Container(img) => self.oci_spec(&mut cspec, &spec, &image, img).await,
        };
        if let Err((reason, message)) = prepared {
            return if reason == "ErrImagePull" || reason == "InvalidArtifact" {
                self.pull_failed(i, reason, message)
            } else {
                self.config_failed(i, reason, message)
            };
        }
        self.slots[i].runtime = Some(runtime);
        let result = self.runner(runtime).run(cspec).await;
        let slot = &mut self.slots[i];
        match result {
            Ok(info) => {
                let started_at = match info.state {
                    ContainerState::Running { started_at } => started_at,
                    ContainerState::Exited { started_at, .. } => started_at,
                };
                if slot.instances > 0 {
                    slot.st.restart_count += 1;
                }
                slot.instances += 1;
                slot.st.container_id = format!("{}://{id}", runtime.scheme());
                slot.st.phase = Phase::Running { started_at };
                slot.started = Some(Instant::now());
                slot.retry_at = None;
                self.ctx.recorder.normal(
                    &object,
                    "Started",
                    format!("Started container {}", spec.name),
                );
                self.arm_probes(i, None);
                self.post_start(i).await;
                if let ContainerState::Exited {
                    status,
                    finished_at,
                    ..
                } = info.state
                {
                    // Ended before we looked (a quick job): its exit event may be gone.
                    self.exited(
                        i,
                        ExitEvent {
                            id,
                            finished_at,
                            status,
                        },
                    );
                }
            }
            Err(e) => match e.kind() {
                ErrorKind::InvalidArtifact => {
                    self.pull_failed(i, "InvalidArtifact", format!("image \"{image}\": {e}"));
                }
                ErrorKind::Unavailable => {
                    slot.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    slot.waiting(
                        "ContainerCreating",
                        format!("the {} executor is unavailable: {e}", runtime.scheme()),
                    );
                }
                ErrorKind::AlreadyExists => {
                    // Still running from before: it is ours.
                    slot.st.phase = Phase::Running {
                        started_at: jiff::Timestamp::now(),
                    };
                    slot.started = Some(Instant::now());
                }
                _ => {
                    // The runtime could not start it: a failed instance, restarted per
                    // policy like a crash.
                    let now = jiff::Timestamp::now();
                    slot.instances += 1;
                    slot.st.phase = Phase::Running { started_at: now };
                    let ended = Ended {
                        code: 128,
                        reason: "ContainerCannotRun".into(),
                        message: e.to_string(),
                        started_at: now,
                        finished_at: now,
                        container_id: String::new(),
                    };
                    self.ended(i, ended);
                }
            },
        }
    }

    /// Every main container has finished for good: stop the sidecars (with the pod's
    /// grace period), free the sandbox (and its ports).
    async fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        // What was still running (sidecars) ends here; record how, before the status
        // says the pod is done.
        let grace = self.grace();
        for ev in self.release(grace).await {
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.st.running() && container_id(&self.uid, &s.spec.name) == ev.id)
            {
                self.exited(i, ev);
            }
        }
    }

    /// Stop every container (with `grace`), remove them and the sandbox; returns how the
    /// running ones ended.
    async fn release(&mut self, grace: Duration) -> Vec<ExitEvent> {
        let deadline = Instant::now() + grace;
        let all: Vec<Stopping> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.runtime.map(|runtime| Stopping {
                    id: container_id(&self.uid, &s.spec.name),
                    running: s.st.running(),
                    runtime,
                    pre_stop: hooks::hook(&s.spec, hooks::Which::PreStop).ok().flatten(),
                    sidecar: s.sidecar,
                })
            })
            .collect();
        // The main containers together, then the sidecars, last started first.
        let mut ended: Vec<ExitEvent> = futures::future::join_all(
            all.iter()
                .filter(|c| !c.sidecar)
                .map(|c| self.stop_one(c, deadline)),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        for c in all.iter().filter(|c| c.sidecar).rev() {
            ended.extend(self.stop_one(c, deadline).await);
        }

        let sandboxes = self.ctx.sandboxes.clone();
        let uid = self.uid.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || sandboxes.destroy(&uid)).await {
            tracing::warn!(pod = %self.name, error = %e, "sandbox not removed");
        }
        self.sandbox = None;
        ended
    }

    /// Stops one container by `deadline` (its preStop hook first), and removes it; says
    /// how it ended if it was running.
    async fn stop_one(&self, c: &Stopping, deadline: Instant) -> Option<ExitEvent> {
        let runner = self.runner(c.runtime);
        let mut ended = None;
        if c.running {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some(h) = c.pre_stop.as_ref().filter(|_| !left.is_zero()) {
                left = self.pre_stop(&c.id, c.runtime, h, left).await;
            }
            let _ = runner.stop(&c.id, left).await;
            ended = runner.wait(&c.id).await.ok().map(|status| ExitEvent {
                id: c.id.clone(),
                finished_at: jiff::Timestamp::now(),
                status,
            });
        }
        let _ = runner.remove(&c.id).await;
        ended
    }

    /// The pod is being deleted (`api`: finish the deletion through the API) or is gone.
    async fn terminate(&mut self, api: bool) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let grace = if api {
            Duration::from_secs(grace)
        } else {
            Duration::ZERO
        };
        for s in &self.slots {
            if s.st.running() {
                self.ctx.recorder.normal(
                    &self.object(),
                    "Killing",
                    format!("Stopping container {}", s.spec.name),
                );
            }
        }
        let _ = self.release(grace).await;
        self.ctx.logs.remove(&self.ns, &self.name);
        let dir = self.ctx.pods_dir.join(&self.uid);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        if !api {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match pods.delete(&self.name, &dp).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.name, error = %e, "could not finish the pod's deletion; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = self.pod_rx.changed() => if changed.is_err() { return },
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn snapshot_status(&self) -> PodStatus {
        let init: Vec<Container> = self
            .slots
            .iter()
            .filter(|s| s.init)
            .map(|s| s.st.clone())
            .collect();
        let containers: Vec<Container> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(|s| s.st.clone())
            .collect();
        let policy = self.restart_policy();
        status::pod_status(&Snapshot {
            init: &init,
            init_done: self.init_done,
            containers: &containers,
            restart_policy: &policy,
            sandbox_ready: self.sandbox.is_some(),
            host_ip: &self.ctx.node.host_ip,
            pod_ip: self.sandbox.as_ref().and_then(|s| s.ip),
            start_time: self.start_time,
            previous: self.pod.status.as_ref(),
        })
    }

    async fn publish(&mut self) {
        // Waiting containers show the back-off they are in.
        let now = Instant::now();
        for s in &mut self.slots {
            if let Phase::Waiting { reason, .. } = &s.st.phase
                && reason == "ErrImagePull"
                && s.retry_at.is_some_and(|t| t > now)
            {
                let image = s.spec.image.clone().unwrap_or_default();
                s.waiting(
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\""),
                );
            }
        }
        self.update_logs();
        let status = self.snapshot_status();
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        // Compare without the timestamps that change on every build.
        if self.published.as_ref() == Some(&value) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({"status": value});
        match pods
            .patch_status(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(p) => {
                self.publish_retry = None;
                self.published = Some(value);
                self.pod = Arc::new(p);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::debug!(pod = %self.name, error = %e, "status not written; retrying");
                self.publish_retry = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    fn update_logs(&self) {
        let containers = self
            .slots
            .iter()
            .map(|s| {
                let current = (s.instances - 1).max(0);
                let info = logs::ContainerLogs {
                    current: (s.instances > 0).then(|| self.log_path(&s.spec.name, current)),
                    previous: (s.instances > 1).then(|| self.log_path(&s.spec.name, current - 1)),
                    running: s.st.running(),
                    waiting: match &s.st.phase {
                        Phase::Waiting { reason, .. } => Some(reason.clone()),
                        _ => None,
                    },
                    running_on: s
                        .runtime
                        .filter(|_| s.st.running())
                        .map(|r| (r, container_id(&self.uid, &s.spec.name))),
                };
                (s.spec.name.clone(), info)
            })
            .collect();
        let view = logs::PodLogs {
            containers,
            netns: self.sandbox.as_ref().map(|s| s.netns.clone()),
            uid: self.uid.clone(),
            cgroup: self
                .sandbox
                .as_ref()
                .filter(|s| !s.cgroups.is_empty())
                .map(|s| s.cgroup.clone()),
        };
        self.ctx.logs.update(&self.ns, &self.name, view);
    }
}
