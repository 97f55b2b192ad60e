//! The executor boundary: what the node agent asks of any runtime (Wasm now, OCI later),
//! in plain Rust types that know nothing of Kubernetes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Everything an executor needs to run one container; the agent builds it from a Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique id on this node (the agent picks it, e.g. `<pod uid>/<container name>`).
    pub id: String,
    /// The verified artifact to run.
    pub artifact: Artifact,
    /// The guest's argv, argv\[0\] included; empty means `[id]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables, in order; nothing of the host's environment is inherited.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Host directories the guest may see; nothing else of the host filesystem is visible.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Where stdout and stderr go, in CRI log format.
    pub log: LogSpec,
    /// Resource limits; `None` fields are unlimited.
    #[serde(default)]
    pub limits: Limits,
    /// Set for HTTP services (`wasi:http/proxy`): where to listen and the request deadline.
    #[serde(default)]
    pub http: Option<HttpSpec>,
    /// Set for Linux containers: what the OCI executor needs beyond the above.
    #[serde(default)]
    pub oci: Option<OciOptions>,
    /// Outgoing `wasi:http` requests a Wasm guest may make; `None` denies them all.
    #[serde(default)]
    pub outgoing: Option<OutgoingHttp>,
}

/// The network a Wasm guest's outgoing HTTP requests use: its pod's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingHttp {
    /// The pod's network namespace; connections are made from inside it.
    pub netns: PathBuf,
    /// Hosts besides the pod's loopback that requests may go to.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// What a Linux container needs besides argv, env, mounts, logs and limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciOptions {
    /// The unpacked image layers, bottom first; the root filesystem is their overlay with a
    /// private writable layer on top.
    pub layers: Vec<PathBuf>,
    /// Working directory (absolute; `/` when empty).
    #[serde(default)]
    pub cwd: String,
    /// Who the process runs as.
    #[serde(default)]
    pub user: OciUser,
    /// The container's hostname (the pod's).
    #[serde(default)]
    pub hostname: String,
    /// The pod's network namespace, shared with its other containers.
    pub netns: PathBuf,
    /// The pod's PID namespace to join (`shareProcessNamespace`); otherwise the container
    /// has one of its own.
    #[serde(default)]
    pub pid_ns: Option<PathBuf>,
    /// Cgroup of the container, relative to each hierarchy's root (e.g.
    /// `skiff/pod-UID/NAME`), under the pod's cgroup.
    pub cgroup: String,
    /// Single files bind-mounted read-only (e.g. `/etc/hosts`), host path → guest path.
    #[serde(default)]
    pub files: Vec<(PathBuf, String)>,
    /// CPU weight from the request, in millicores (Kubernetes' `cpu.shares` rule).
    #[serde(default)]
    pub cpu_request_millis: Option<u64>,
    /// Bound on the container's processes and threads.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// Privileges and confinement.
    #[serde(default)]
    pub security: OciSecurity,
    /// Ports of the node forwarded to the container's ports on the pod's loopback.
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
    /// Keep a stdin open for the process (the container's `stdin: true`): `kubectl attach
    /// -i` writes to it. Otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

/// A port of the node forwarded into the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// Where the node listens.
    pub host: SocketAddr,
    /// The container's port, on the pod's loopback.
    pub container_port: u16,
}

/// The identity of a container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// A container's privileges (from its `securityContext`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciSecurity {
    /// Every capability, no masked paths, no seccomp, all devices (the node allowed it).
    #[serde(default)]
    pub privileged: bool,
    /// The capabilities to hold, `CAP_` names (the default set with adds and drops
    /// applied by the agent).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `no_new_privs`: setuid binaries and file capabilities grant nothing.
    #[serde(default)]
    pub no_new_privs: bool,
    /// The root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Apply the default seccomp profile (`RuntimeDefault`); otherwise unconfined.
    #[serde(default)]
    pub seccomp_default: bool,
    /// A `Localhost` profile from the node (the OCI runtime spec's `LinuxSeccomp`),
    /// applied instead of the default one.
    #[serde(default)]
    pub seccomp_profile: Option<serde_json::Value>,
}

/// A verified artifact on local disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Path of the artifact file (for Wasm: the `.wasm` bytes).
    pub path: PathBuf,
    /// Content digest, `sha256:<hex>`; keys the compiled-code cache, so it must be true.
    pub digest: String,
}

/// A host directory made visible to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Directory on the host: the volume's root.
    pub host_path: PathBuf,
    /// A directory inside `host_path` to mount instead of all of it (a `subPath`),
    /// resolved by the executor without leaving `host_path` ([`crate::mounts`]) and
    /// created if missing; empty mounts the whole volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    /// Path the guest sees it under (e.g. `/data`).
    pub guest_path: String,
    /// The guest may read but not create, write or delete.
    #[serde(default)]
    pub read_only: bool,
}

/// The container's log file (CRI format: `RFC3339NANO stdout|stderr F|P text`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Log file path; rotated to `PATH.1` when it grows past `max_bytes`.
    pub path: PathBuf,
    /// Rotation threshold in bytes; 0 means never rotate.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
}

fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}

/// Resource limits of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bound on the bytes of the linear memories and tables of one instance; growth past
    /// it is `OOMKilled`. For an HTTP service it bounds each request's instance (a request
    /// past it is answered 500; the service goes on).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU share in millicores (1000 = one core), enforced per 100 ms period on the guest's
    /// thread CPU time; an HTTP service's concurrent requests share one budget.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
}

/// How an HTTP service is exposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSpec {
    /// Addresses to listen on (port 0 picks a free port; see [`ContainerInfo::listening`]).
    pub listeners: Vec<Listener>,
    /// Deadline of one request; past it the handler is interrupted and the client gets 504.
    pub request_timeout: Duration,
    /// Deadline for a request's headers; a client slower than that is disconnected.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Connections served at once over all listeners; past it a new one is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    1024
}

/// One listening socket, optionally inside a network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// Address to bind, e.g. `0.0.0.0:8080` (a containerPort) or `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// Network namespace to create the socket in (e.g. `/run/netns/pod-x`); `None` is the
    /// host process's own namespace (a hostPort).
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// Why a container ended, following Kubernetes' reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code chosen by the guest, or a host-side failure while running.
    Error,
    /// A WebAssembly trap (division by zero, unreachable, stack exhaustion, ...).
    Trap,
    /// Memory growth past `limits.memory_bytes`.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// Stopped by request before it ended by itself.
    Stopped,
}

impl ExitReason {
    /// The reason as Kubernetes spells it in `ContainerStateTerminated.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::Trap => "Trap",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit code used for a container stopped by request or killed for memory, as a Linux
/// process killed by SIGKILL would report it.
pub const EXIT_KILLED: i32 = 137;
/// Exit code used for a trap, as a process aborted by SIGABRT would report it.
pub const EXIT_TRAP: i32 = 134;

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code (see [`EXIT_KILLED`], [`EXIT_TRAP`]).
    pub code: i32,
    /// Kubernetes-style reason.
    pub reason: ExitReason,
    /// What a person needs to know, e.g. `wasm trap: integer divide by zero`.
    pub message: String,
}

/// What kind of workload an artifact turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// A core module run through WASI preview 1 `_start`.
    Module,
    /// A `wasi:cli/command` component.
    Command,
    /// A `wasi:http/proxy` component served on the spec's listeners.
    HttpProxy,
    /// A Linux container, run by the OCI executor.
    Oci,
}

/// Where a container is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ContainerState {
    /// Running since `started_at`.
    Running {
        /// When it started.
        started_at: jiff::Timestamp,
    },
    /// Ended.
    Exited {
        /// When it started.
        started_at: jiff::Timestamp,
        /// When it ended.
        finished_at: jiff::Timestamp,
        /// How it ended.
        status: ExitStatus,
    },
}

impl ContainerState {
    /// The exit status, if the container has ended.
    pub fn exit_status(&self) -> Option<&ExitStatus> {
        match self {
            ContainerState::Running { .. } => None,
            ContainerState::Exited { status, .. } => Some(status),
        }
    }
}

/// A container as the executor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The spec's id.
    pub id: String,
    /// What the artifact is.
    pub kind: WorkloadKind,
    /// Running or exited.
    pub state: ContainerState,
    /// Addresses actually bound (port 0 resolved), in the order of the spec's listeners.
    pub listening: Vec<SocketAddr>,
    /// Digest of the artifact it runs.
    pub digest: String,
    /// What it has used, when the executor accounts for it itself (Wasm guests, which
    /// share the Wasm host's process; a Linux container's figures are its cgroup's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<GuestUsage>,
}

/// What a container's guests have used, summed over all of its instances (an HTTP
/// service runs one per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestUsage {
    /// CPU time spent running the guest and the host calls it made, in nanoseconds.
    pub cpu_ns: u64,
    /// Linear memories and tables of its live instances, in bytes (what its memory
    /// limit bounds).
    pub memory_bytes: u64,
}

/// A container ended; sent to every subscriber of an executor's exit events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Container id.
    pub id: String,
    /// When it ended.
    pub finished_at: jiff::Timestamp,
    /// How it ended.
    pub status: ExitStatus,
}

/// The one boundary between the node agent and a runtime: run, stop, wait, and "can I
/// handle this artifact?". Implemented by [`crate::wasm::WasmExecutor`] (in process) and
/// [`crate::host::Client`] (the same executor in the out-of-process Wasm host).
pub trait Executor: Send + Sync {
    /// Whether this executor can run the artifact at `path` (a cheap sniff, no compile).
    fn handles(&self, path: &Path) -> bool;

    /// Starts a container; returns once it runs (compiled, linked, listening), or with a
    /// start error whose [`Error::kind`] says whether the artifact or the node is at fault.
    /// A previous, exited container of the same id is replaced.
    fn run(&self, spec: ContainerSpec)
    -> impl Future<Output = Result<ContainerInfo, Error>> + Send;

    /// Stops a container: services drain for up to `grace`, commands stop at once. Returns
    /// once it has exited. Stopping an exited container does nothing.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<(), Error>> + Send;

    /// Waits until the container has exited and returns how.
    fn wait(&self, id: &str) -> impl Future<Output = Result<ExitStatus, Error>> + Send;

    /// Forgets an exited container (stopping it first, without grace, if it still runs).
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Every container known, running or exited.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, Error>> + Send;
}

/// Classifies a failure so the agent can turn it into the right pod condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The artifact is not something this runtime can run (not Wasm, no known entry
    /// point): Kubernetes `InvalidArtifact`, retrying will not help.
    InvalidArtifact,
    /// The node cannot run it as specified (unsatisfiable imports, a mount or port that
    /// cannot be had): Kubernetes `ContainerCannotRun`.
    ContainerCannotRun,
    /// No container of that id.
    NotFound,
    /// A running container already has that id.
    AlreadyExists,
    /// The executor could not be reached (the Wasm host is down).
    Unavailable,
    /// A bug or an unexpected host failure.
    Internal,
}

impl ErrorKind {
    /// The kind as a reason string (`InvalidArtifact`, `ContainerCannotRun`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArtifact => "InvalidArtifact",
            ErrorKind::ContainerCannotRun => "ContainerCannotRun",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Internal => "Internal",
        }
    }
}
