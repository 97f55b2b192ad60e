//! The Wasm executor: runs WASI preview 1 modules, `wasi:cli/command` components and
//! `wasi:http/proxy` services on one shared `wasmtime::Engine`.
//!
//! Start with [`WasmExecutor::new`] and the [`Executor`] trait. A spec's artifact decides
//! what runs: a core module's `_start`, a component's `wasi:cli/run`, or a component's
//! `wasi:http/incoming-handler` served on the spec's listeners (a fresh instance per
//! request). Every way a guest can end becomes an [`ExitStatus`]; see [`ExitReason`].
//!
//! Must be used from inside a multi-threaded tokio runtime: containers run as tokio tasks
//! (guests yield to tokio every epoch tick, so a busy guest never blocks a worker).

mod engine;
mod guest;
mod http;
pub mod netns;
mod outgoing;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use engine::{CacheStats, WasmBinary, sniff, sniff_file};

use crate::executor::{
    ContainerInfo, ContainerSpec, ContainerState, ErrorKind, Executor, ExitEvent, ExitReason,
    ExitStatus, WorkloadKind,
};
use crate::logs::{LogWriter, Stream};
use engine::{CompileCache, Compiled};
use guest::{Accounting, CpuBudget, Guard, P1State, P2State};
use outgoing::Outgoing;

/// Errors of the Wasm executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The artifact is not runnable Wasm (not Wasm, invalid, no known entry point).
    #[error("invalid artifact: {0}")]
    InvalidArtifact(String),
    /// The node cannot run it as specified (imports, mounts, listeners, log file).
    #[error("container cannot run: {0}")]
    CannotRun(String),
    /// No container of that id.
    #[error("no container {0:?}")]
    NotFound(String),
    /// A container of that id is running or starting.
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The container's log file.
    #[error(transparent)]
    Log(#[from] crate::logs::Error),
}

impl Error {
    /// How the agent should report this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArtifact(_) => ErrorKind::InvalidArtifact,
            Error::CannotRun(_) | Error::Log(_) => ErrorKind::ContainerCannotRun,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Engine(_) => ErrorKind::Internal,
        }
    }
}

/// How many instance slots the pooling allocator reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSize {
    /// Sized from the machine's memory (falls back to on-demand if it cannot be reserved).
    Auto,
    /// On-demand allocation only.
    Off,
    /// A fixed number of slots (tests, small hosts).
    Slots(u32),
}

/// Settings of a [`WasmExecutor`].
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Directory of the compiled-code cache (private to the host).
    pub cache_dir: PathBuf,
    /// Pooling allocator size.
    pub pool: PoolSize,
    /// Epoch tick: how often guests yield, and the granularity of CPU accounting.
    pub epoch_tick: Duration,
    /// CPU accounting period; a guest gets `cpu_millis / 1000` of each period.
    pub cpu_period: Duration,
    /// Maximum wasm call stack, in bytes; deeper recursion traps "call stack exhausted".
    pub max_wasm_stack: usize,
    /// Bytes of linear memory a pool slot keeps resident between instances; `None` picks
    /// it from the machine's memory (1/1024 of it, at most 16 MiB). More is faster for
    /// guests with large heaps, and keeps a burst's memory resident after it.
    pub keep_resident: Option<usize>,
}

impl WasmConfig {
    /// Defaults: pool sized from memory, 5 ms ticks, 100 ms CPU periods, 1 MiB stack.
    pub fn new(cache_dir: impl Into<PathBuf>) -> WasmConfig {
        WasmConfig {
            cache_dir: cache_dir.into(),
            pool: PoolSize::Auto,
            epoch_tick: Duration::from_millis(5),
            cpu_period: Duration::from_millis(100),
            max_wasm_stack: 1024 * 1024,
            keep_resident: None,
        }
    }
}

/// Runs Wasm containers on one engine; cheap to clone (all clones share the containers).
#[derive(Clone)]
pub struct WasmExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pooled: bool,
    p1_linker: Linker<P1State>,
    p2_linker: ComponentLinker<P2State>,
    cache: CompileCache,
    cpu_period: Duration,
    containers: Mutex<Table>,
    events: broadcast::Sender<ExitEvent>,
}

#[derive(Default)]
struct Table {
    running: HashMap<String, Arc<Entry>>,
    starting: HashSet<String>,
}

struct Entry {
    id: String,
    kind: WorkloadKind,
    digest: String,
    listening: Vec<std::net::SocketAddr>,
    state: watch::Sender<ContainerState>,
    stop: watch::Sender<Option<Duration>>,
    account: Arc<Accounting>,
}

impl Entry {
    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            id: self.id.clone(),
            kind: self.kind,
            state: self.state.borrow().clone(),
            listening: self.listening.clone(),
            digest: self.digest.clone(),
            usage: Some(self.account.usage()),
        }
    }
}

/// Holds an id in `starting` until the start ends, however it ends (also when the
/// caller drops the start future).
struct Reservation<'a> {
    executor: &'a WasmExecutor,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.executor.table().starting.remove(&self.id);
    }
}

/// What a start prepared, ready to run.
enum Program {
    Module(InstancePre<P1State>),
    Command(CommandPre<P2State>),
    Proxy(ProxyPre<P2State>),
}

impl WasmExecutor {
    /// Creates the engine (and its epoch thread) and the compiled-code cache.
    pub fn new(config: WasmConfig) -> Result<WasmExecutor, Error> {
        let (engine, pooled) = engine::build(&config)?;
        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut p2_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2_linker)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let cache = CompileCache::new(config.cache_dir.clone(), &engine)?;
        engine::start_ticker(&engine, config.epoch_tick)?;
        let (events, _) = broadcast::channel(1024);
        Ok(WasmExecutor {
            inner: Arc::new(Inner {
                engine,
                pooled,
                p1_linker,
                p2_linker,
                cache,
                cpu_period: config.cpu_period,
                containers: Mutex::new(Table::default()),
                events,
            }),
        })
    }

    /// Whether the pooling allocator could be reserved.
    pub fn pooling(&self) -> bool {
        self.inner.pooled
    }

    /// Counters of the compiled-code cache (a second start of an artifact only loads).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Exit events of every container from now on. Events are dropped for a receiver
    /// that lags by more than 1024; [`Executor::list`] tells the truth after that.
    pub fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.inner.events.subscribe()
    }

    /// The current view of one container.
    pub fn get(&self, id: &str) -> Option<ContainerInfo> {
        self.entry(id).map(|e| e.info())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.table().running.get(id).cloned()
    }

    /// Starts a container (see [`Executor::run`]).
    pub async fn start(&self, spec: ContainerSpec) -> Result<ContainerInfo, Error> {
        {
            let mut table = self.table();
            let running = table
                .running
                .get(&spec.id)
                .is_some_and(|e| e.state.borrow().exit_status().is_none());
            if running || !table.starting.insert(spec.id.clone()) {
                return Err(Error::AlreadyExists(spec.id));
            }
        }
        let reservation = Reservation {
            executor: self,
            id: spec.id.clone(),
        };
        let entry = self.start_reserved(spec).await?;
        let info = entry.info();
        self.table().running.insert(reservation.id.clone(), entry);
        Ok(info)
    }

    async fn start_reserved(&self, spec: ContainerSpec) -> Result<Arc<Entry>, Error> {
        let inner = self.inner.clone();
        let (path, digest) = (spec.artifact.path.clone(), spec.artifact.digest.clone());
        let compiled = tokio::task::spawn_blocking(move || {
            inner.cache.load_or_compile(&inner.engine, &path, &digest)
        })
        .await
        .map_err(|e| Error::Engine(format!("compile task failed: {e}")))??;
        let program = self.link(compiled, &spec)?;
        let log = LogWriter::open(&spec.log)?;
        // Mounts and env are checked now, so that a bad mount is a start error.
        let _ = guest::wasi_builder(&spec, &log)?;
        let cpu = CpuBudget::new(spec.limits.cpu_millis, self.inner.cpu_period);
        let account = Arc::new(Accounting::default());

        let (listeners, listening) = match (&program, &spec.http) {
            (Program::Proxy(_), Some(http)) => bind_all(&http.listeners)?,
            (Program::Proxy(_), None) => {
                return Err(Error::CannotRun(
                    "a wasi:http/proxy component needs listeners (spec.http)".into(),
                ));
            }
            (_, Some(http)) if !http.listeners.is_empty() => {
                tracing::warn!(
                    container = spec.id.as_str(),
                    "listeners given for a command; ignored (it may not serve HTTP)"
                );
                (Vec::new(), Vec::new())
            }
            _ => (Vec::new(), Vec::new()),
        };

        let kind = match program {
            Program::Module(_) => WorkloadKind::Module,
            Program::Command(_) => WorkloadKind::Command,
            Program::Proxy(_) => WorkloadKind::HttpProxy,
        };
        let started_at = jiff::Timestamp::now();
        let (state, _) = watch::channel(ContainerState::Running { started_at });
        let (stop, stop_rx) = watch::channel(None);
        let entry = Arc::new(Entry {
            id: spec.id.clone(),
            kind,
            digest: spec.artifact.digest.clone(),
            listening,
            state,
            stop,
            account: account.clone(),
        });

        // Said in the container's log, so `kubectl logs` of a quiet service shows where
        // it listens (a pod's own namespace, or the node's for a hostPort).
        if let Some(http) = spec.http.as_ref().filter(|_| !entry.listening.is_empty()) {
            let places: Vec<String> = http
                .listeners
                .iter()
                .zip(&entry.listening)
                .map(|(l, addr)| {
                    let ns = if l.netns.is_some() { "pod" } else { "node" };
                    format!("{addr} ({ns})")
                })
                .collect();
            log.line(
                Stream::Stderr,
                &format!("skiff: serving wasi:http on {}", places.join(", ")),
            );
        }
        let spec = Arc::new(spec);
        let run = {
            let spec = spec.clone();
            let log = log.clone();
            async move {
                match program {
                    Program::Module(pre) => {
                        run_module(pre, &spec, &log, (cpu, account), stop_rx).await
                    }
                    Program::Command(pre) => {
                        run_command(pre, &spec, &log, (cpu, account), stop_rx).await
                    }
                    Program::Proxy(pre) => {
                        let timeout = spec
                            .http
                            .as_ref()
                            .map_or(Duration::from_secs(30), |h| h.request_timeout);
                        let service = Arc::new(http::Service {
                            pre,
                            spec: spec.clone(),
                            log: log.clone(),
                            cpu,
                            account,
                            timeout,
                        });
                        http::serve(service, listeners, stop_rx).await
                    }
                }
            }
        };
        let task_entry = entry.clone();
        let events = self.inner.events.clone();
        tokio::spawn(async move {
            let status = run.await;
            finish(&task_entry, &log, &events, started_at, status);
        });
        tracing::info!(container = spec.id.as_str(), ?kind, "started");
        Ok(entry)
    }

    fn link(&self, compiled: Compiled, spec: &ContainerSpec) -> Result<Program, Error> {
        let cannot_link =
            |e: wasmtime::Error| Error::CannotRun(format!("cannot satisfy imports: {e:#}"));
        match compiled {
            Compiled::Module(module) => {
                check_start_export(&module)?;
                let pre = self
                    .inner
                    .p1_linker
                    .instantiate_pre(&module)
                    .map_err(cannot_link)?;
                Ok(Program::Module(pre))
            }
            Compiled::Component(component) => {
                let Some(world) = component_world(&self.inner.engine, &component) else {
                    return Err(Error::InvalidArtifact(format!(
                        "component {} exports neither wasi:cli/run nor \
                         wasi:http/incoming-handler",
                        spec.artifact.digest
                    )));
                };
                let pre = self
                    .inner
                    .p2_linker
                    .instantiate_pre(&component)
                    .map_err(cannot_link)?;
                let wrong_export = |e: wasmtime::Error| {
                    Error::InvalidArtifact(format!("unexpected export type: {e:#}"))
                };
                Ok(match world {
                    WorkloadKind::HttpProxy => {
                        Program::Proxy(ProxyPre::new(pre).map_err(wrong_export)?)
                    }
                    _ => Program::Command(CommandPre::new(pre).map_err(wrong_export)?),
                })
            }
        }
    }
}

fn check_start_export(module: &Module) -> Result<(), Error> {
    let start = module.get_export("_start").and_then(|e| e.func().cloned());
    match start {
        Some(ty) if ty.params().len() == 0 && ty.results().len() == 0 => Ok(()),
        Some(_) => Err(Error::InvalidArtifact(
            "core module's _start export has the wrong type".into(),
        )),
        None => Err(Error::InvalidArtifact(
            "core module has no _start export (not a WASI command)".into(),
        )),
    }
}

/// Which of the worlds we serve a component targets, by its exports.
fn component_world(engine: &Engine, component: &Component) -> Option<WorkloadKind> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let exports = |interface: &str| {
        names.iter().any(|n| {
            n.strip_prefix(interface)
                .is_some_and(|v| v.starts_with("@0.2"))
        })
    };
    if exports("wasi:http/incoming-handler") {
        Some(WorkloadKind::HttpProxy)
    } else if exports("wasi:cli/run") {
        Some(WorkloadKind::Command)
    } else {
        None
    }
}

fn bind_all(
    specs: &[crate::executor::Listener],
) -> Result<(Vec<tokio::net::TcpListener>, Vec<std::net::SocketAddr>), Error> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for l in specs {
        let where_ = l
            .netns
            .as_deref()
            .map_or_else(|| "host namespace".to_string(), |p| p.display().to_string());
        let cannot = |e: std::io::Error| {
            Error::CannotRun(format!("cannot listen on {} ({where_}): {e}", l.addr))
        };
        let std_listener = netns::bind(l.addr, l.netns.as_deref()).map_err(cannot)?;
        addrs.push(std_listener.local_addr().map_err(cannot)?);
        listeners.push(tokio::net::TcpListener::from_std(std_listener).map_err(cannot)?);
    }
    Ok((listeners, addrs))
}

fn finish(
    entry: &Entry,
    log: &LogWriter,
    events: &broadcast::Sender<ExitEvent>,
    started_at: jiff::Timestamp,
    status: ExitStatus,
) {
    log.finish();
    if !matches!(status.reason, ExitReason::Completed) {
        log.line(
            Stream::Stderr,
            &format!(
                "skiff: exited: {} (code {}): {}",
                status.reason, status.code, status.message
            ),
        );
    }
    tracing::info!(container = entry.id.as_str(), code = status.code,
        reason = %status.reason, message = status.message.as_str(), "exited");
    let finished_at = jiff::Timestamp::now();
    entry.state.send_replace(ContainerState::Exited {
        started_at,
        finished_at,
        status: status.clone(),
    });
    let _ = events.send(ExitEvent {
        id: entry.id.clone(),
        finished_at,
        status,
    });
}

async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) {
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_module(
    pre: InstancePre<P1State>,
    spec: &ContainerSpec,
    log: &LogWriter,
    (cpu, account): (Option<Arc<CpuBudget>>, Arc<Accounting>),
    mut stop: watch::Receiver<Option<Duration>>,
) -> ExitStatus {
    let wasi = match guest::wasi_builder(spec, log) {
        Ok(mut b) => b.build_p1(),
        Err(e) => return guest::exit_status(Err(wasmtime::Error::msg(e.to_string())), false),
    };
    let state = P1State {
        wasi,
        guard: Guard::new(spec.limits.memory_bytes, cpu, account.clone()),
    };
    let mut store = Store::new(pre.module().engine(), state);
    guest::arm(&mut store);
    let outcome = {
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        tokio::select! {
            result = account.metered(run) => Some(result),
            () = stop_requested(&mut stop) => None,
        }
    };
    match outcome {
        Some(result) => guest::exit_status(result, store.data().guard.limiter.exceeded),
        None => guest::stopped(),
    }
}

async fn run_command(
    pre: CommandPre<P2State>,
    spec: &ContainerSpec,
    log: &LogWriter,
    (cpu, account): (Option<Arc<CpuBudget>>, Arc<Accounting>),
    mut stop: watch::Receiver<Option<Duration>>,
) -> ExitStatus {
    let wasi = match guest::wasi_builder(spec, log) {
        Ok(mut b) => b.build(),
        Err(e) => return guest::exit_status(Err(wasmtime::Error::msg(e.to_string())), false),
    };
    let state = P2State {
        wasi,
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        table: wasmtime::component::ResourceTable::new(),
        hooks: Outgoing(spec.outgoing.clone().map(Arc::new)),
        guard: Guard::new(spec.limits.memory_bytes, cpu, account.clone()),
    };
    let mut store = Store::new(pre.engine(), state);
    guest::arm(&mut store);
    let outcome = {
        let run = async {
            let command = pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        };
        tokio::select! {
            result = account.metered(run) => Some(result),
            () = stop_requested(&mut stop) => None,
        }
    };
    match outcome {
        Some(Ok(Ok(()))) => guest::completed(),
        Some(Ok(Err(()))) => ExitStatus {
            code: 1,
            reason: ExitReason::Error,
            message: "wasi:cli/run returned an error".to_string(),
        },
        Some(Err(error)) => guest::exit_status(Err(error), store.data().guard.limiter.exceeded),
        None => guest::stopped(),
    }
}

impl Executor for WasmExecutor {
    fn handles(&self, path: &Path) -> bool {
        matches!(sniff_file(path), Ok(Some(_)))
    }

    async fn run(&self, spec: ContainerSpec) -> Result<ContainerInfo, crate::Error> {
        Ok(self.start(spec).await?)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), crate::Error> {
        let entry = self
            .entry(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        entry.stop.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(grace);
            }
            first
        });
        let mut state = entry.state.subscribe();
        let _ = state.wait_for(|s| s.exit_status().is_some()).await;
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, crate::Error> {
        let entry = self
            .entry(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let mut state = entry.state.subscribe();
        let status = state
            .wait_for(|s| s.exit_status().is_some())
            .await
            .ok()
            .and_then(|s| s.exit_status().cloned());
        // The sender lives in the entry we hold, so the wait cannot fail.
        status.ok_or_else(|| Error::NotFound(id.to_string()).into())
    }

    async fn remove(&self, id: &str) -> Result<(), crate::Error> {
        let entry = self
            .entry(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if entry.state.borrow().exit_status().is_none() {
            Executor::stop(self, id, Duration::ZERO).await?;
        }
        let mut table = self.table();
        if table
            .running
            .get(id)
            .is_some_and(|e| Arc::ptr_eq(e, &entry))
        {
            table.running.remove(id);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, crate::Error> {
        let mut all: Vec<ContainerInfo> = self.table().running.values().map(|e| e.info()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}
