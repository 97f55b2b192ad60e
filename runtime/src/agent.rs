//! The node agent: registers this machine as a Node, keeps its Lease and conditions
//! fresh, runs a worker for every pod bound to it, and serves their logs.
//!
//! Workloads outlive the agent: Wasm containers run in the Wasm host process, which a
//! restarted agent finds again and re-adopts from (running containers keep running,
//! with their restart counts). Without the apiserver, running pods keep running and
//! restarting per their policy; status catches up when it comes back.

use crate::artifacts::{ArtifactStore, StoreOptions};
use crate::logserver;
use crate::node::{self, Machine, NodeSpec};
use crate::pod::env::NodeFacts;
use crate::pod::logs::LogRegistry;
use crate::pod::{Ctx, Handle, Msg, Worker};
use crate::sandbox::Sandboxes;
use crate::wasmhost::{self, HostPaths};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerImage, Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use skiff_api::events::Recorder;
use skiff_shims::Executor;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration the node claims.
pub const LEASE_SECONDS: i32 = 40;
/// Node status is rewritten at least this often even if nothing changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// How the agent runs.
pub struct AgentConfig {
    /// Node name.
    pub node_name: String,
    /// State directory (pods, artifacts, Wasm host, certificates).
    pub data_dir: PathBuf,
    /// Address the apiserver reaches this node at.
    pub address: String,
    /// Address the logs endpoint listens on.
    pub bind: IpAddr,
    /// Port of the logs endpoint (0 picks one).
    pub port: u16,
    /// The token the apiserver presents to this node's logs endpoint (from joining).
    pub logs_token: String,
    /// Runtimes offered.
    pub runtimes: Vec<String>,
    /// CPU kept back, millicores.
    pub reserved_milli_cpu: u64,
    /// Memory kept back, bytes.
    pub reserved_memory: u64,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Pods this node takes (`pods` in its capacity).
    pub max_pods: u32,
    /// Processes and threads a pod may have at once.
    pub pod_max_pids: i64,
    /// When unused images are removed.
    pub image_gc: crate::imagegc::Policy,
    /// The `skiff` executable (to start the Wasm host).
    pub exe: PathBuf,
    /// Linear memory each Wasm pool slot keeps resident between requests, MiB (`None`:
    /// picked from the machine's memory).
    pub wasm_keep_resident_mib: Option<u64>,
    /// Pod sandboxes.
    pub sandboxes: Arc<dyn Sandboxes>,
    /// Linux containers may be `privileged` here.
    pub allow_privileged: bool,
    /// Header-read timeout and connection caps of the logs endpoint; the timeout and
    /// total cap also apply to each Wasm HTTP service's ports.
    pub http_limits: skiff_api::listen::Limits,
    /// The Service proxy's rules (`None`: this node forwards no ClusterIP traffic).
    pub proxy: Option<crate::proxy::nft::Config>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Wasm host could not be reached or started.
    #[error(transparent)]
    Host(#[from] wasmhost::HostError),
    /// The artifact store could not be opened.
    #[error("artifact store: {0}")]
    Artifacts(#[from] crate::artifacts::ArtifactError),
    /// The logs endpoint could not be set up.
    #[error(transparent)]
    Logs(#[from] logserver::LogServerError),
    /// The Node could not be registered.
    #[error("registering node {node}: {message}")]
    Register {
        /// The node.
        node: String,
        /// Why.
        message: String,
    },
    /// A directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the running agent exposes (for the embedding process and tests).
pub struct Started {
    /// Where the logs endpoint listens.
    pub logs_addr: SocketAddr,
    /// The Wasm host's paths.
    pub host: HostPaths,
}

fn image_list(images: Vec<crate::artifacts::CachedImage>) -> Vec<ContainerImage> {
    images
        .into_iter()
        .map(|i| ContainerImage {
            names: Some(i.names),
            size_bytes: Some(i.size_bytes as i64),
        })
        .collect()
}

struct NodeKeeper {
    client: kube::Client,
    spec: NodeSpec,
    data_dir: PathBuf,
    artifacts: ArtifactStore,
    host: Arc<wasmhost::WasmHost>,
    /// Whether Linux containers run here, or why not.
    linux_containers: Result<(), String>,
    last: Option<serde_json::Value>,
    last_write: Option<std::time::Instant>,
}

impl NodeKeeper {
    async fn desired(&self) -> Node {
        let machine = Machine::read();
        let host_ok = self.host.list().await.is_ok();
        let conds = node::conditions(
            &machine,
            node::disk_space(&self.data_dir),
            host_ok,
            &self.linux_containers,
        );
        node::node_object(
            &self.spec,
            &machine,
            conds,
            image_list(self.artifacts.images().await),
        )
    }

    async fn register(&mut self) -> Result<(), AgentError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let want = self.desired().await;
        let node = self.spec.name.clone();
        let err = move |e: kube::Error| AgentError::Register {
            node: node.clone(),
            message: e.to_string(),
        };
        match nodes.create(&PostParams::default(), &want).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Registered before: refresh labels and annotations, keep the spec
                // (taints, cordon) an operator may have set.
                let md = serde_json::json!({"metadata": {
                    "labels": want.metadata.labels, "annotations": want.metadata.annotations,
                }});
                nodes
                    .patch(&self.spec.name, &PatchParams::default(), &Patch::Merge(&md))
                    .await
                    .map_err(&err)?;
            }
            Err(e) => return Err(err(e)),
        }
        self.write_status(want).await.map_err(&err)
    }

    async fn write_status(&mut self, want: Node) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = serde_json::to_value(&want.status).unwrap_or_default();
        nodes
            .patch_status(
                &self.spec.name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": status})),
            )
            .await?;
        self.last = Some(comparable(&status));
        self.last_write = Some(std::time::Instant::now());
        Ok(())
    }

    /// Rewrite the status when something changed, or when it is due.
    async fn refresh(&mut self) {
        let want = self.desired().await;
        let status = serde_json::to_value(&want.status).unwrap_or_default();
        let due = self
            .last_write
            .is_none_or(|t| t.elapsed() >= STATUS_REFRESH);
        if !due && self.last.as_ref() == Some(&comparable(&status)) {
            return;
        }
        if let Err(e) = self.write_status(want).await {
            tracing::warn!(error = %e, "node status not written");
        }
    }

    async fn renew_lease(&self) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        let spec = serde_json::json!({"spec": {
            "holderIdentity": self.spec.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now,
        }});
        match leases
            .patch(
                &self.spec.name,
                &PatchParams::default(),
                &Patch::Merge(&spec),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease: Lease = match serde_json::from_value(serde_json::json!({
                    "metadata": {"name": self.spec.name, "namespace": "kube-node-lease"},
                    "spec": spec["spec"],
                })) {
                    Ok(l) => l,
                    Err(_) => return,
                };
                if let Err(e) = leases.create(&PostParams::default(), &lease).await {
                    tracing::warn!(error = %e, "node lease not created");
                }
            }
            Err(e) => tracing::warn!(error = %e, "node lease not renewed"),
        }
    }
}

/// Status without the heartbeat timestamps, to tell real changes from heartbeats.
fn comparable(status: &serde_json::Value) -> serde_json::Value {
    let mut s = status.clone();
    if let Some(conds) = s["conditions"].as_array_mut() {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// Create a directory of the agent's state, accessible to its owner only (0700): it
/// holds pods' secret volumes, logs and the node's credentials.
fn mkdir(p: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AgentError::Io {
        path: p.display().to_string(),
        source,
    };
    std::fs::create_dir_all(p).map_err(err)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Start the agent; returns once the Node is registered and pods are being watched,
/// with a future that runs it until `stop` resolves.
pub async fn start(
    client: kube::Client,
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Started, impl std::future::Future<Output = ()> + Send), AgentError> {
    let dir = cfg.data_dir.clone();
    mkdir(&dir)?;
    for d in ["pods", "artifacts", "pki"] {
        mkdir(&dir.join(d))?;
    }
    let paths = HostPaths {
        socket: dir.join("wasm-host.sock"),
        state_dir: dir.join("wasm-host"),
        exe: cfg.exe.clone(),
        keep_resident_mib: cfg.wasm_keep_resident_mib,
    };
    let host = Arc::new(wasmhost::WasmHost::start(paths.clone()).await?);
    let oci = open_oci(&cfg, &dir).await;
    let mut runtimes = cfg.runtimes.clone();
    if oci.is_ok() && !runtimes.iter().any(|r| r == "oci") {
        runtimes.push("oci".into());
    }
    let artifacts = ArtifactStore::open_with(
        dir.join("artifacts"),
        StoreOptions {
            insecure_registries: cfg.insecure_registries.clone(),
        },
    )
    .await?;
    let names = vec![
        cfg.address.clone(),
        cfg.node_name.clone(),
        "localhost".to_string(),
    ];
    let cert = logserver::serving_cert(&dir.join("pki"), &names)?;
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| logserver::LogServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let logs_addr = listener.local_addr().unwrap_or(addr);
    let registry = LogRegistry::default();
    let log_router = logserver::router(registry.clone(), cfg.logs_token.clone())
        .merge(crate::streams::router(crate::streams::StreamState {
            registry: registry.clone(),
            token: Arc::new(cfg.logs_token.clone()),
            oci: oci.as_ref().ok().cloned(),
        }))
        .merge(crate::stats::router(crate::stats::StatsState {
            node_name: cfg.node_name.clone(),
            registry: registry.clone(),
            token: Arc::new(cfg.logs_token.clone()),
            rates: crate::stats::Rates::default(),
            wasm: host.clone(),
        }));
    let http_limits = cfg.http_limits;
    let log_task = tokio::spawn(async move {
        if let Err(e) = logserver::serve(listener, &cert, log_router, http_limits).await {
            tracing::error!(error = %e, "logs endpoint stopped");
        }
    });
    let pin = logserver::serving_cert(&dir.join("pki"), &names)?.pin;
    let machine = Machine::read();
    let spec = NodeSpec {
        name: cfg.node_name.clone(),
        address: cfg.address.clone(),
        port: logs_addr.port(),
        cert_pin: pin,
        runtimes,
        reserved_milli_cpu: cfg.reserved_milli_cpu,
        reserved_memory: cfg.reserved_memory,
        labels: cfg.labels.clone(),
        max_pods: cfg.max_pods,
    };
    let mut keeper = NodeKeeper {
        client: client.clone(),
        spec,
        data_dir: dir.clone(),
        artifacts: artifacts.clone(),
        host: host.clone(),
        linux_containers: oci.as_ref().map(|_| ()).map_err(Clone::clone),
        last: None,
        last_write: None,
    };
    keeper.register().await?;
    keeper.renew_lease().await;
    tracing::info!(node = %cfg.node_name, logs = %logs_addr, "node registered");

    // Subscribe before listing, so no exit falls between the two.
    let exits = host.client().subscribe();
    let oci_exits = oci
        .as_ref()
        .ok()
        .map(skiff_shims::oci::OciExecutor::subscribe);
    let mut running = host.list().await.unwrap_or_default();
    if let Ok(o) = &oci {
        running.extend(o.list().await.unwrap_or_default());
    }
    let adopted: HashMap<String, skiff_shims::ContainerInfo> =
        running.into_iter().map(|c| (c.id.clone(), c)).collect();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        host: host.clone(),
        oci,
        allow_privileged: cfg.allow_privileged,
        seccomp_dir: dir.join("seccomp"),
        pod_max_pids: cfg.pod_max_pids,
        artifacts,
        sandboxes: cfg.sandboxes.clone(),
        node: NodeFacts {
            host_ip: cfg.address.clone(),
            cpus: machine.cpus,
            memory: machine.memory,
        },
        pods_dir: dir.join("pods"),
        recorder: Recorder::new(client.clone(), "kubelet", &cfg.node_name),
        logs: registry,
        adopted: Mutex::new(adopted),
        http_limits: cfg.http_limits,
        stopping: std::sync::atomic::AtomicBool::new(false),
        node_changed: Arc::new(tokio::sync::Notify::new()),
    });
    let node_name = cfg.node_name.clone();
    let image_gc = cfg.image_gc;
    let ipam_dir = cfg.data_dir.join("ipam");
    let proxy = cfg.proxy.clone();
    let proxy_cluster_cidr = proxy.as_ref().map(|p| p.cluster_cidr);
    let run = async move {
        let network_task = tokio::spawn(pod_network(ctx.clone(), node_name.clone(), ipam_dir));
        let proxy_task = proxy
            .map(|p| tokio::spawn(crate::proxy::run(ctx.client.clone(), node_name.clone(), p)));
        // Routes to the other nodes' pods come with the pod network (and its proxy).
        let routes_task = proxy_cluster_cidr.map(|cidr| {
            tokio::spawn(crate::podnet::routes::run(
                ctx.client.clone(),
                node_name.clone(),
                cidr,
            ))
        });
        let changed = ctx.node_changed.clone();
        let keeper_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEW);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => keeper.renew_lease().await,
                    // Something the Node reports changed (images removed): say so now.
                    () = changed.notified() => {}
                }
                keeper.refresh().await;
            }
        });
        let stopping = ctx.clone();
        let stop = async move {
            stop.await;
            // Before the pod workers lose their updates (when the loop below is dropped).
            stopping
                .stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
        };
        tokio::select! {
            _ = stop => {}
            _ = pods_loop(ctx.clone(), node_name.clone(), exits, oci_exits, image_gc) => {}
        }
        keeper_task.abort();
        network_task.abort();
        for t in [proxy_task, routes_task].into_iter().flatten() {
            t.abort();
        }
        log_task.abort();
        tracing::info!(node = %node_name, "agent stopped; its containers keep running (the next agent re-adopts them)");
    };
    Ok((
        Started {
            logs_addr,
            host: paths,
        },
        run,
    ))
}

/// The OCI executor, if this machine can run Linux containers; otherwise why not (logged,
/// and the node does not offer the `oci` runtime).
async fn open_oci(
    cfg: &AgentConfig,
    dir: &std::path::Path,
) -> Result<skiff_shims::oci::OciExecutor, String> {
    let opened = match crate::executors::oci_support() {
        Ok(()) => skiff_shims::oci::OciExecutor::open(
            &dir.join("containers"),
            skiff_shims::oci::ShimCommand {
                exe: cfg.exe.clone(),
            },
        )
        .await
        .map_err(|e| e.to_string()),
        Err(why) => Err(why),
    };
    if let Err(why) = &opened {
        tracing::warn!(reason = %why, "this node cannot run Linux containers; it offers Wasm only");
    }
    opened
}

async fn pods_loop(
    ctx: Arc<Ctx>,
    node_name: String,
    mut exits: tokio::sync::broadcast::Receiver<skiff_shims::ExitEvent>,
    mut oci_exits: Option<tokio::sync::broadcast::Receiver<skiff_shims::ExitEvent>>,
    image_gc: crate::imagegc::Policy,
) {
    use kube::runtime::WatchStreamExt;
    let mut gc_tick = tokio::time::interval(image_gc.period);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gc_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut host = ctx.host.client();
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = std::pin::pin!(watcher(pods, cfg).default_backoff());
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut seen: Option<HashSet<String>> = None;
    let mut cleaned = false;
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; retrying (pods keep running)");
                        continue;
                    }
                };
                match ev {
                    watcher::Event::Init => seen = Some(HashSet::new()),
                    watcher::Event::InitApply(p) => {
                        if let Some(s) = seen.as_mut() {
                            s.insert(p.metadata.uid.clone().unwrap_or_default());
                        }
                        apply(&ctx, &mut workers, p);
                    }
                    watcher::Event::Apply(p) => apply(&ctx, &mut workers, p),
                    watcher::Event::Delete(p) => {
                        workers.remove(&p.metadata.uid.clone().unwrap_or_default());
                    }
                    watcher::Event::InitDone => {
                        if let Some(s) = seen.take() {
                            // Pods deleted while we were away: their workers end.
                            workers.retain(|uid, _| s.contains(uid));
                        }
                        if !cleaned {
                            cleaned = true;
                            cleanup_orphans(&ctx, &workers).await;
                        }
                    }
                }
            }
            ev = exits.recv() => match ev {
                Ok(ev) => route_exit(&workers, ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed container exits; re-reading the Wasm host");
                    for c in ctx.host.list().await.unwrap_or_default() {
                        if let skiff_shims::ContainerState::Exited { finished_at, status, .. } = c.state {
                            route_exit(&workers, skiff_shims::ExitEvent { id: c.id, finished_at, status });
                        }
                    }
                }
                // The connection is gone; the arm below reconnects.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => host.closed().await,
            },
            ev = async { match oci_exits.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => match ev {
                Ok(ev) => route_exit(&workers, ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed container exits; re-reading the OCI executor");
                    if let Ok(oci) = &ctx.oci {
                        for c in oci.list().await.unwrap_or_default() {
                            if let skiff_shims::ContainerState::Exited { finished_at, status, .. } = c.state {
                                route_exit(&workers, skiff_shims::ExitEvent { id: c.id, finished_at, status });
                            }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => oci_exits = None,
            },
            _ = gc_tick.tick() => {
                use std::sync::atomic::Ordering;
                if !gc_running.swap(true, Ordering::SeqCst) {
                    let in_use: HashSet<String> = workers
                        .values()
                        .flat_map(|h| crate::imagegc::images_of(&h.pod.borrow()))
                        .collect();
                    let (ctx, running) = (ctx.clone(), gc_running.clone());
                    tokio::spawn(async move {
                        let dir = ctx.artifacts.dir().to_path_buf();
                        let (removed, _) =
                            crate::imagegc::collect(&ctx.artifacts, &dir, &image_gc, &in_use).await;
                        if removed > 0 {
                            ctx.node_changed.notify_one();
                        }
                        running.store(false, Ordering::SeqCst);
                    });
                }
            }
            () = host.closed() => {
                (host, exits) = reattach(&ctx).await;
                let alive = Arc::new(running_ids(&host).await);
                for h in workers.values() {
                    let _ = h.msgs.send(Msg::HostReplaced { alive: alive.clone() });
                }
            }
        }
    }
}

/// The connection to the Wasm host broke (the host died, or was killed): reach the host
/// again, starting a new one if none runs, until that works. Returns the new connection
/// and its exits, subscribed before anything is asked of it.
async fn reattach(
    ctx: &Ctx,
) -> (
    skiff_shims::host::Client,
    tokio::sync::broadcast::Receiver<skiff_shims::ExitEvent>,
) {
    tracing::error!(
        "lost the Wasm host; starting a new one (its containers restart by their pods' restart policy)"
    );
    let mut delay = Duration::from_millis(100);
    loop {
        match ctx.host.replace().await {
            Ok(client) => {
                tracing::info!("Wasm host is back");
                let exits = client.subscribe();
                return (client, exits);
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "could not start the Wasm host");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The ids of the containers `host` has running.
async fn running_ids(host: &skiff_shims::host::Client) -> HashSet<String> {
    host.list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(c.state, skiff_shims::ContainerState::Running { .. }))
        .map(|c| c.id)
        .collect()
}

fn route_exit(workers: &HashMap<String, Handle>, ev: skiff_shims::ExitEvent) {
    let uid = ev.id.split('/').next().unwrap_or_default().to_string();
    if let Some(h) = workers.get(&uid) {
        let _ = h.msgs.send(Msg::Exited(ev));
    }
}

fn apply(ctx: &Arc<Ctx>, workers: &mut HashMap<String, Handle>, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(h) = workers.get(&uid) {
        if h.pod.send(Arc::new(pod.clone())).is_ok() {
            return;
        }
        // Its worker ended (the pod was terminated); nothing more to run.
        workers.remove(&uid);
        return;
    }
    let (worker, handle) = Worker::new(ctx.clone(), pod);
    workers.insert(uid, handle);
    tokio::spawn(worker.run());
}

/// Containers and sandboxes of pods that are no longer bound here.
async fn cleanup_orphans(ctx: &Arc<Ctx>, workers: &HashMap<String, Handle>) {
    let mut runners = vec![crate::executors::Runner::Wasm(&ctx.host)];
    if let Ok(oci) = &ctx.oci {
        runners.push(crate::executors::Runner::Oci(oci));
    }
    for runner in &runners {
        for c in runner.list().await.unwrap_or_default() {
            let uid = c.id.split('/').next().unwrap_or_default();
            if !workers.contains_key(uid) {
                tracing::info!(container = %c.id, "stopping a container whose pod is gone");
                let _ = runner.stop(&c.id, Duration::ZERO).await;
                let _ = runner.remove(&c.id).await;
            }
        }
    }
    // Only pods with a directory of this agent's: other agents on the machine (tests,
    // or a server's embedded agent beside a standalone one) have sandboxes too. The
    // directory goes last, so a clean-up cut short is finished by the next one.
    let sandboxes = ctx.sandboxes.clone();
    let keep: HashSet<String> = workers.keys().cloned().collect();
    let pods_dir = ctx.pods_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for e in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&uid) {
                continue;
            }
            match sandboxes.destroy(&uid) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(e.path());
                }
                Err(error) => {
                    tracing::warn!(pod_uid = %uid, %error, "orphaned sandbox not removed");
                }
            }
        }
    })
    .await;
    // Every worker has taken what it needed at its creation.
    ctx.adopted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

/// Waits for the Node's `spec.podCIDR` (the node IPAM controller gives it) and makes the
/// pod network on it, when the sandboxes want one.
async fn pod_network(ctx: Arc<Ctx>, node: String, ipam_dir: PathBuf) {
    use kube::runtime::WatchStreamExt;
    if !ctx.sandboxes.wants_pod_cidr() {
        return;
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = std::pin::pin!(watcher(nodes, cfg).default_backoff());
    while let Some(ev) = stream.next().await {
        let n = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                continue;
            }
        };
        let Some(cidr) = n
            .spec
            .and_then(|s| s.pod_cidr)
            .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
        else {
            continue;
        };
        let sandboxes = ctx.sandboxes.clone();
        let (node, dir) = (node.clone(), ipam_dir.clone());
        let made =
            tokio::task::spawn_blocking(move || sandboxes.set_pod_cidr(&node, cidr, &dir)).await;
        match made {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(pod_cidr = %cidr, error = %e, "the pod network could not be made; pods cannot start")
            }
            Err(e) => tracing::error!(error = %e, "the pod network task failed"),
        }
        return;
    }
}
