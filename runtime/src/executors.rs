//! The node's executors as one type: each container runs on the Wasm host or the OCI
//! executor, chosen from its artifact, and the pod worker drives either through the one
//! [`Executor`] trait.

use std::path::Path;
use std::time::Duration;

use skiff_shims::oci::OciExecutor;
use skiff_shims::{ContainerInfo, ContainerSpec, Error, Executor, ExitStatus};

use crate::wasmhost::WasmHost;

/// Which executor a container runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The node's Wasm host.
    Wasm,
    /// Linux containers (libcontainer).
    Oci,
}

impl Runtime {
    /// The scheme of `containerID` in the pod's status.
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Oci => "oci",
        }
    }
}

/// One of the node's executors.
pub enum Runner<'a> {
    /// Wasm containers.
    Wasm(&'a WasmHost),
    /// Linux containers.
    Oci(&'a OciExecutor),
}

impl Executor for Runner<'_> {
    fn handles(&self, path: &Path) -> bool {
        match self {
            Runner::Wasm(w) => w.handles(path),
            Runner::Oci(o) => o.handles(path),
        }
    }

    async fn run(&self, spec: ContainerSpec) -> Result<ContainerInfo, Error> {
        match self {
            Runner::Wasm(w) => w.run(spec).await,
            Runner::Oci(o) => o.run(spec).await,
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), Error> {
        match self {
            Runner::Wasm(w) => w.stop(id, grace).await,
            Runner::Oci(o) => o.stop(id, grace).await,
        }
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, Error> {
        match self {
            Runner::Wasm(w) => w.wait(id).await,
            Runner::Oci(o) => o.wait(id).await,
        }
    }

    async fn remove(&self, id: &str) -> Result<(), Error> {
        match self {
            Runner::Wasm(w) => w.remove(id).await,
            Runner::Oci(o) => o.remove(id).await,
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, Error> {
        match self {
            Runner::Wasm(w) => w.list().await,
            Runner::Oci(o) => o.list().await,
        }
    }
}

/// Whether this machine can run Linux containers, or why not.
pub fn oci_support() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the agent does not run as root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Err("the kernel has no overlayfs (modprobe overlay)".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Err("no cgroup filesystem at /sys/fs/cgroup".into());
    }
    Ok(())
}
