//! Skiff's executors: the node agent's only way to run workloads, behind one trait.
//!
//! - [`executor`] — the boundary: [`ContainerSpec`] (plain types, no Kubernetes), the
//!   [`Executor`] trait (run, stop, wait, remove, list, "can I handle this artifact?"),
//!   [`ExitStatus`] with Kubernetes-style reasons, [`ErrorKind`] for start failures.
//! - [`wasm`] — [`wasm::WasmExecutor`]: one wasmtime engine running WASI preview 1
//!   modules, `wasi:cli/command` components and `wasi:http/proxy` services, with memory,
//!   CPU and time limits, and an on-disk compiled-code cache.
//! - [`host`] — the same executor out of process, so Wasm workloads outlive the agent:
//!   [`host::serve`] behind a unix socket, and [`host::Client`], which implements
//!   [`Executor`] for the agent.
//! - [`oci`] — [`oci::OciExecutor`]: Linux containers on youki's libcontainer, each
//!   parented by a single-threaded shim process ([`oci::shim`]) so it outlives the agent;
//!   [`oci::spec`] builds their OCI runtime config.
//! - [`logs`] — the CRI-format container log files both write.
//! - [`mounts`] — opening a volume's `subPath` without leaving the volume, which every
//!   executor must use for what a spec mounts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_shims::Error> {
//! use skiff_shims::{Executor, host::Client};
//! let wasm = Client::connect("/run/skiff/wasm-host.sock").await?;
//! for c in wasm.list().await? {
//!     println!("{} {:?}", c.id, c.state);
//! }
//! # Ok(()) }
//! ```

pub mod executor;
pub mod host;
pub mod logs;
pub mod mounts;
pub mod oci;
pub mod wasm;

pub use executor::{
    Artifact, ContainerInfo, ContainerSpec, ContainerState, ErrorKind, Executor, ExitEvent,
    ExitReason, ExitStatus, GuestUsage, HttpSpec, Limits, Listener, LogSpec, Mount, OciOptions,
    OciSecurity, OciUser, OutgoingHttp, WorkloadKind,
};

/// Any failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the in-process Wasm executor.
    #[error(transparent)]
    Wasm(#[from] wasm::Error),
    /// From the Wasm host protocol (including errors the host reported).
    #[error(transparent)]
    Host(#[from] host::Error),
    /// From the OCI executor.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
}

impl Error {
    /// How the agent should report this error (e.g. `InvalidArtifact` on the pod).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Wasm(e) => e.kind(),
            Error::Host(e) => e.kind(),
            Error::Oci(e) => e.kind(),
        }
    }
}
