//! Pod sandboxes: a network namespace (loopback up) that every container of the pod
//! shares, and a pod cgroup carrying the pod's limits.
//!
//! Wasm containers run as tasks of the node's Wasm host; their sockets are created inside
//! the pod's namespace, so `containerPort`s are private to the pod and its containers
//! share `localhost`. Linux containers' cgroups go under the pod cgroup, so its limits
//! bound them all; Wasm guests are bounded by the Wasm host's own limits.
//!
//! Host effects sit behind [`Sandboxes`]; [`LinuxSandboxes`] is the real one (root
//! needed), tested for real in the agent's end-to-end tests.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager as _, ControllerOpt};
use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources};
use skiff_shims::oci::pause::{self, Holder};

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
    /// The pod's shared PID namespace (`/proc/PID/ns/pid` of its holder), when the pod
    /// asks for one (`shareProcessNamespace`).
    pub pid_ns: Option<PathBuf>,
    /// The pod cgroup directories (one per controller hierarchy), if cgroups are usable.
    pub cgroups: Vec<PathBuf>,
    /// The pod cgroup relative to each hierarchy's root (`skiff/pod-UID`); its containers'
    /// cgroups go under it.
    pub cgroup: String,
    /// The pod's address on the node's pod network (`status.podIP`), when the node has one.
    pub ip: Option<std::net::Ipv4Addr>,
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

/// What a pod asks of its sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Limits of the pod cgroup.
    pub limits: PodLimits,
    /// One PID namespace for all its containers (`shareProcessNamespace`).
    pub share_process_namespace: bool,
}

/// Creates and destroys pod sandboxes.
pub trait Sandboxes: Send + Sync + 'static {
    /// Create (or find, after an agent restart) the sandbox of pod `uid`.
    fn ensure(&self, uid: &str, spec: SandboxSpec) -> Result<Sandbox, SandboxError>;
    /// Remove the sandbox of pod `uid`; removing a missing sandbox is not an error.
    fn destroy(&self, uid: &str) -> Result<(), SandboxError>;
    /// Pod uids whose sandboxes exist on this machine, made by any agent.
    fn list(&self) -> Vec<String>;
    /// Whether sandboxes wait for the node's `podCIDR` (a pod network).
    fn wants_pod_cidr(&self) -> bool {
        false
    }
    /// The node's `podCIDR` is known: make the node's pod network, keeping its addresses
    /// in `state_dir`.
    fn set_pod_cidr(
        &self,
        _node: &str,
        _cidr: ipnet::Ipv4Net,
        _state_dir: &Path,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// Network namespace name prefix.
const NETNS_PREFIX: &str = "skiff-";

/// Sandboxes made of real namespaces and cgroups.
pub struct LinuxSandboxes {
    /// Where `ip netns` keeps namespaces.
    netns_dir: PathBuf,
    /// Cgroup parent of the pods, relative to each hierarchy (e.g. `skiff`).
    cgroup_parent: String,
    /// Records of the shared PID namespaces' holders, one file per pod (on `/run`, which
    /// a reboot empties as it ends the holders).
    holders_dir: PathBuf,
    /// The `skiff` binary, whose `pod-init` starts a holder.
    exe: PathBuf,
    /// Whether pods join a pod network (`--pod-network bridge`).
    networked: bool,
    /// The node's pod network, once the node has its `podCIDR`.
    network: std::sync::OnceLock<crate::podnet::PodNetwork>,
}

impl Default for LinuxSandboxes {
    fn default() -> Self {
        LinuxSandboxes {
            netns_dir: PathBuf::from("/run/netns"),
            cgroup_parent: "skiff".into(),
            holders_dir: PathBuf::from("/run/skiff/pid-ns"),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
            networked: false,
            network: std::sync::OnceLock::new(),
        }
    }
}

impl LinuxSandboxes {
    /// Sandboxes whose pods join the node's pod network once
    /// [`Sandboxes::set_pod_cidr`] made it; until then sandboxes cannot be made.
    pub fn networked() -> LinuxSandboxes {
        LinuxSandboxes {
            networked: true,
            ..LinuxSandboxes::default()
        }
    }

    fn attach(&self, uid: &str, netns: &Path) -> Result<Option<std::net::Ipv4Addr>, SandboxError> {
        if !self.networked {
            return Ok(None);
        }
        let net = self.network.get().ok_or_else(|| SandboxError::Command {
            what: "join the pod network".into(),
            message: "the node has no pod CIDR yet".into(),
        })?;
        net.attach(uid, netns)
            .map(Some)
            .map_err(|e| SandboxError::Command {
                what: "join the pod network".into(),
                message: e.to_string(),
            })
    }
}

/// The cgroup v1 hierarchies, or the v2 root alone when it has the memory controller
/// (hybrid hosts mount v2 at `unified` with no controllers; it is listed with the v1 ones,
/// since libcontainer makes container cgroups in every hierarchy it finds).
fn hierarchies() -> (Vec<PathBuf>, bool) {
    let root = Path::new("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if v2.split_whitespace().any(|c| c == "memory") {
        return (vec![root.to_path_buf()], true);
    }
    let v1 = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    (v1, false)
}

/// The pod cgroup's limits as the OCI resources libcgroups applies (pure).
pub fn pod_resources(limits: PodLimits) -> LinuxResources {
    let mut r = LinuxResources::default();
    if let Some(m) = limits.memory {
        r.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(i64::try_from(m).unwrap_or(i64::MAX))
                .build()
                .expect("memory limit"),
        ));
    }
    if let Some(p) = limits.pids {
        r.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .expect("pids limit"),
        ));
    }
    if let Some(c) = limits.milli_cpu {
        let period = 100_000u64;
        let quota = (c * period / 1000).max(1000);
        r.set_cpu(Some(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(i64::try_from(quota).unwrap_or(i64::MAX))
                .build()
                .expect("cpu quota"),
        ));
    }
    r
}

impl LinuxSandboxes {
    fn netns_name(uid: &str) -> String {
        format!("{NETNS_PREFIX}{uid}")
    }

    /// The pod's PID namespace holder: the recorded one while it lives, else a new one.
    fn pid_holder(&self, uid: &str) -> Result<Holder, SandboxError> {
        let record = self.holders_dir.join(uid);
        if let Some(h) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| Holder::from_record(&t))
            .filter(Holder::alive)
        {
            return Ok(h);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { path, source }
        };
        std::fs::create_dir_all(&self.holders_dir).map_err(io(&self.holders_dir))?;
        let holder = pause::spawn(&self.exe).map_err(|e| SandboxError::Command {
            what: "start the holder of the pod's PID namespace".into(),
            message: e.to_string(),
        })?;
        if let Err(e) = std::fs::write(&record, holder.to_record()) {
            holder.kill();
            return Err(io(&record)(e));
        }
        Ok(holder)
    }

    /// Makes the pod cgroup and applies its limits through libcgroups (the libcontainer
    /// project's cgroup crate, which writes v1 and v2 files alike). libcgroups makes a
    /// cgroup only when it moves a process in, and a pod cgroup holds none of its own
    /// (its containers' cgroups sit under it), so the directories are made here; on cgroup
    /// v2 the parents also hand the controllers down (`cgroup.subtree_control`).
    fn cgroups(&self, uid: &str, limits: PodLimits) -> Vec<PathBuf> {
        let rel = format!("{}/pod-{uid}", self.cgroup_parent);
        let (roots, v2) = hierarchies();
        let mut made = Vec::new();
        for root in roots {
            // Level by level, so that on v2 each parent hands the controllers down before
            // its child is made.
            let mut dir = root.clone();
            let mut ok = true;
            for part in Path::new(&rel).components() {
                if v2 {
                    for c in ["+cpu", "+memory", "+pids"] {
                        // Refused for a controller the parent lacks; the limit that needs
                        // it then fails below, with its own warning.
                        let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
                    }
                }
                dir.push(part);
                if let Err(e) = std::fs::create_dir(&dir)
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    tracing::warn!(path = %dir.display(), error = %e, "no pod cgroup");
                    ok = false;
                    break;
                }
            }
            if ok {
                made.push(dir);
            }
        }
        if made.is_empty() {
            return made;
        }
        let applied = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: rel.into(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| e.to_string())
        .and_then(|m| {
            m.apply(&ControllerOpt {
                resources: &pod_resources(limits),
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| e.to_string())
        });
        if let Err(e) = applied {
            tracing::warn!(uid, error = %e, "pod cgroup limits not set");
        }
        made
    }
}

impl Sandboxes for LinuxSandboxes {
    fn ensure(&self, uid: &str, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        let pid_ns = if spec.share_process_namespace {
            Some(self.pid_holder(uid)?.namespace())
        } else {
            None
        };
        // Connections to 127.0.0.1 inside the pod fail until loopback is up.
        let path = crate::netns::add(&self.netns_dir, &Self::netns_name(uid)).map_err(|e| {
            SandboxError::Command {
                what: "create the pod network namespace with its loopback up".into(),
                message: e.to_string(),
            }
        })?;
        let ip = self.attach(uid, &path)?;
        Ok(Sandbox {
            netns: path,
            pid_ns,
            cgroups: self.cgroups(uid, spec.limits),
            cgroup: format!("{}/pod-{uid}", self.cgroup_parent),
            ip,
        })
    }

    fn destroy(&self, uid: &str) -> Result<(), SandboxError> {
        if let Some(net) = self.network.get() {
            net.detach(uid).map_err(|e| SandboxError::Command {
                what: "leave the pod network".into(),
                message: e.to_string(),
            })?;
        }
        let path = self.netns_dir.join(Self::netns_name(uid));
        crate::netns::delete(&path).map_err(|source| SandboxError::Io { path, source })?;
        let record = self.holders_dir.join(uid);
        if let Ok(text) = std::fs::read_to_string(&record) {
            if let Some(h) = Holder::from_record(&text) {
                h.kill();
            }
            let _ = std::fs::remove_file(&record);
        }
        for h in hierarchies().0 {
            let dir = h.join(&self.cgroup_parent).join(format!("pod-{uid}"));
            if dir.exists()
                && let Err(e) = std::fs::remove_dir(&dir)
            {
                tracing::warn!(path = %dir.display(), error = %e, "pod cgroup not removed");
            }
        }
        Ok(())
    }

    fn wants_pod_cidr(&self) -> bool {
        self.networked
    }

    fn set_pod_cidr(
        &self,
        node: &str,
        cidr: ipnet::Ipv4Net,
        state_dir: &Path,
    ) -> Result<(), String> {
        if !self.networked || self.network.get().is_some() {
            return Ok(());
        }
        let net =
            crate::podnet::PodNetwork::open(state_dir, node, cidr).map_err(|e| e.to_string())?;
        tracing::info!(node, pod_cidr = %cidr, bridge = net.bridge(), "pod network ready");
        let _ = self.network.set(net);
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
    fn ensure(&self, _uid: &str, _spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_limits_become_cgroup_resources() {
        let none = pod_resources(PodLimits::default());
        assert_eq!(none, LinuxResources::default(), "no limit, nothing written");

        let r = pod_resources(PodLimits {
            memory: Some(64 << 20),
            milli_cpu: Some(250),
            pids: Some(DEFAULT_PIDS_LIMIT),
        });
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(4096));
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!((cpu.quota(), cpu.period()), (Some(25_000), Some(100_000)));
        assert_eq!(r.devices(), &None, "devices stay the containers' business");

        // A sliver of a core still gets a quota the kernel accepts (at least 1 ms).
        let tiny = pod_resources(PodLimits {
            milli_cpu: Some(1),
            ..PodLimits::default()
        });
        assert_eq!(tiny.cpu().as_ref().and_then(|c| c.quota()), Some(1000));
    }
}
