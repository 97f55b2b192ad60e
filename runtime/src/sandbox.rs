//! Pod sandboxes: a network namespace (loopback up) that every container of the pod
//! shares, and a pod cgroup carrying the pod's limits.
//!
//! Wasm containers run as tasks of the node's Wasm host; their sockets are created inside
//! the pod's namespace, so `containerPort`s are private to the pod and its containers
//! share `localhost`. The cgroup is where container processes go once the OCI executor
//! lands; Wasm guests are bounded by the Wasm host's own limits.
//!
//! Host effects sit behind [`Sandboxes`]; [`LinuxSandboxes`] is the real one (root
//! needed), tested for real in the agent's end-to-end tests.

use std::path::{Path, PathBuf};

/// Sandbox failures; they become the pod's `FailedCreatePodSandBox` event.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step of making or removing it failed.
    #[error("{what}: {message}")]
    Command {
        /// What was attempted.
        what: String,
        /// Its error output.
        message: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a pod's sandbox is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's network namespace (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// The pod cgroup directories (one per controller hierarchy), if cgroups are usable.
    pub cgroups: Vec<PathBuf>,
    /// The pod cgroup relative to each hierarchy's root (`skiff/pod-UID`); its containers'
    /// cgroups go under it.
    pub cgroup: String,
}

/// Processes and threads a pod may have at once (a fork bomb stops there).
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// Limits for the pod cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// Memory bound in bytes (sum of the containers' limits, when all have one).
    pub memory: Option<u64>,
    /// CPU bound in millicores.
    pub milli_cpu: Option<u64>,
    /// Bound on processes and threads.
    pub pids: Option<i64>,
}

/// Creates and destroys pod sandboxes.
pub trait Sandboxes: Send + Sync + 'static {
    /// Create (or find, after an agent restart) the sandbox of pod `uid`.
    fn ensure(&self, uid: &str, limits: PodLimits) -> Result<Sandbox, SandboxError>;
    /// Remove the sandbox of pod `uid`; removing a missing sandbox is not an error.
    fn destroy(&self, uid: &str) -> Result<(), SandboxError>;
    /// Pod uids whose sandboxes exist on this machine, made by any agent.
    fn list(&self) -> Vec<String>;
}

/// Network namespace name prefix.
const NETNS_PREFIX: &str = "skiff-";

/// Sandboxes made of real namespaces and cgroups.
pub struct LinuxSandboxes {
    /// Where `ip netns` keeps namespaces.
    netns_dir: PathBuf,
    /// Cgroup parent of the pods, relative to each hierarchy (e.g. `skiff`).
    cgroup_parent: String,
}

impl Default for LinuxSandboxes {
    fn default() -> Self {
        LinuxSandboxes {
            netns_dir: PathBuf::from("/run/netns"),
            cgroup_parent: "skiff".into(),
        }
    }
}

/// The hierarchies to put a pod cgroup in: cgroup v2 at the root when it has the memory
/// controller, else the v1 `memory`, `cpu` and `pids` hierarchies (hybrid hosts mount v2 at
/// `unified` with no controllers; those are skipped).
fn hierarchies() -> Vec<(PathBuf, bool)> {
    let root = Path::new("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if v2.split_whitespace().any(|c| c == "memory") {
        return vec![(root.to_path_buf(), true)];
    }
    ["memory", "cpu", "pids"]
        .iter()
        .map(|c| root.join(c))
        .filter(|p| p.is_dir())
        .map(|p| (p, false))
        .collect()
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(|source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl LinuxSandboxes {
    fn netns_name(uid: &str) -> String {
        format!("{NETNS_PREFIX}{uid}")
    }

    fn cgroups(&self, uid: &str, limits: PodLimits) -> Vec<PathBuf> {
        let mut made = Vec::new();
        for (h, v2) in hierarchies() {
            let dir = h.join(&self.cgroup_parent).join(format!("pod-{uid}"));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "no pod cgroup");
                continue;
            }
            let set = |file: &str, value: String| {
                let p = dir.join(file);
                if p.exists()
                    && let Err(e) = write(&p, &value)
                {
                    tracing::warn!(error = %e, "pod cgroup limit not set");
                }
            };
            if let Some(m) = limits.memory {
                set(
                    if v2 {
                        "memory.max"
                    } else {
                        "memory.limit_in_bytes"
                    },
                    m.to_string(),
                );
            }
            if let Some(p) = limits.pids
                && (h.ends_with("pids") || v2)
            {
                set("pids.max", p.to_string());
            }
            if let Some(c) = limits.milli_cpu {
                let period = 100_000u64;
                let quota = (c * period / 1000).max(1000);
                if v2 {
                    set("cpu.max", format!("{quota} {period}"));
                } else {
                    set("cpu.cfs_period_us", period.to_string());
                    set("cpu.cfs_quota_us", quota.to_string());
                }
            }
            made.push(dir);
        }
        made
    }
}

impl Sandboxes for LinuxSandboxes {
    fn ensure(&self, uid: &str, limits: PodLimits) -> Result<Sandbox, SandboxError> {
        // Connections to 127.0.0.1 inside the pod fail until loopback is up.
        let path = crate::netns::add(&self.netns_dir, &Self::netns_name(uid)).map_err(|e| {
            SandboxError::Command {
                what: "create the pod network namespace with its loopback up".into(),
                message: e.to_string(),
            }
        })?;
        Ok(Sandbox {
            netns: path,
            cgroups: self.cgroups(uid, limits),
            cgroup: format!("{}/pod-{uid}", self.cgroup_parent),
        })
    }

    fn destroy(&self, uid: &str) -> Result<(), SandboxError> {
        let path = self.netns_dir.join(Self::netns_name(uid));
        crate::netns::delete(&path).map_err(|source| SandboxError::Io { path, source })?;
        // Every hierarchy: libcontainer makes the container cgroups (and so the pod's
        // directory) in each v1 controller it knows, not only those limited here.
        let all = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.path(), false))
            .chain(hierarchies());
        for (h, _) in all {
            let dir = h.join(&self.cgroup_parent).join(format!("pod-{uid}"));
            if dir.exists()
                && let Err(e) = std::fs::remove_dir(&dir)
            {
                tracing::warn!(path = %dir.display(), error = %e, "pod cgroup not removed");
            }
        }
        Ok(())
    }

    fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.netns_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(NETNS_PREFIX))
                    .map(String::from)
            })
            .collect()
    }
}

/// Sandboxes without isolation, for machines where namespaces cannot be made (not root):
/// a pod's ports are then the node's ports. Used only when asked for.
pub struct NoSandboxes;

impl Sandboxes for NoSandboxes {
    fn ensure(&self, _uid: &str, _limits: PodLimits) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::Command {
            what: "create the pod sandbox".into(),
            message: "this node cannot create network namespaces (run the agent as root)".into(),
        })
    }

    fn destroy(&self, _uid: &str) -> Result<(), SandboxError> {
        Ok(())
    }

    fn list(&self) -> Vec<String> {
        Vec::new()
    }
}
