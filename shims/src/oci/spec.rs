//! The OCI runtime config (`config.json`) of a container, built from a [`ContainerSpec`]:
//! a pure function, so every rule here is tested without running anything.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::executor::{ContainerSpec, OciOptions};

/// A volume mount, its source already opened by the shim (a `/proc/self/fd/N` path, so
/// what was checked is what gets mounted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSource {
    /// What to bind.
    pub source: PathBuf,
    /// Where the container sees it.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What the host decides while building the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// The container's root filesystem (the overlay's mount point).
    pub rootfs: PathBuf,
    /// Volume mounts, in the spec's order.
    pub binds: Vec<BindSource>,
    /// The node's hard `RLIMIT_NOFILE`; a container may not ask for more.
    pub nofile_hard: u64,
}

/// The capabilities a container holds by default (containerd's and CRI-O's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, for `privileged` containers.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths of /proc and /sys a container must not read (runc's list).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of /proc a container may read but not write (runc's list).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// System calls the default seccomp profile refuses with `EPERM`: those that reach past
/// the container (kernel modules, keyrings, clocks, mounts, namespaces, tracing the
/// kernel). Everything else is allowed.
pub const SECCOMP_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Kubernetes' rule from CPU request to cgroup v1 `cpu.shares`: 1024 per core, at least 2.
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    match request_millis {
        None | Some(0) => 2,
        Some(m) => (m * 1024 / 1000).max(2),
    }
}

/// The config for `spec` (whose `oci` must be set) on this host.
pub fn runtime_spec(spec: &ContainerSpec, host: &HostFacts) -> Result<Spec, String> {
    let oci = spec
        .oci
        .as_ref()
        .ok_or("not a Linux container: the spec has no OCI options")?;
    let value = config_json(spec, oci, host);
    serde_json::from_value(value).map_err(|e| format!("OCI runtime config: {e}"))
}

fn config_json(spec: &ContainerSpec, oci: &OciOptions, host: &HostFacts) -> Value {
    let sec = &oci.security;
    let caps: Vec<&str> = if sec.privileged {
        ALL_CAPABILITIES.to_vec()
    } else {
        oci.security
            .capabilities
            .iter()
            .map(String::as_str)
            .collect()
    };
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = if oci.cwd.is_empty() { "/" } else { &oci.cwd };
    let nofile = host.nofile_hard.min(1 << 20);
    let pid = match &oci.pid_ns {
        Some(path) => json!({"type": "pid", "path": path}),
        None => json!({"type": "pid"}),
    };
    let mut linux = json!({
        "cgroupsPath": format!("/{}", oci.cgroup.trim_start_matches('/')),
        "namespaces": [
            pid, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "cgroup"},
            {"type": "network", "path": oci.netns},
        ],
        "resources": resources(spec, oci),
    });
    if !sec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if let Some(profile) = &sec.seccomp_profile {
            linux["seccomp"] = profile.clone();
        } else if sec.seccomp_default {
            linux["seccomp"] = seccomp_profile();
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": oci.user.uid,
                "gid": oci.user.gid,
                "additionalGids": oci.user.additional_gids,
            },
            "args": spec.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            // Left out rather than `false`: libcontainer takes any value as "set" when it
            // orders seccomp, and then loads the filter after dropping the capability
            // that loading it without no_new_privs needs.
            "noNewPrivileges": (sec.no_new_privs && !sec.privileged).then_some(true),
        },
        "root": {"path": host.rootfs, "readonly": sec.read_only_rootfs},
        "hostname": oci.hostname,
        "mounts": mounts(oci, host),
        "linux": linux,
    })
}

fn resources(spec: &ContainerSpec, oci: &OciOptions) -> Value {
    let mut r = json!({
        "cpu": {"shares": cpu_shares(oci.cpu_request_millis)},
    });
    if let Some(m) = spec.limits.memory_bytes {
        // No swap: the limit is the limit.
        r["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = spec.limits.cpu_millis {
        let period = 100_000u64;
        r["cpu"]["quota"] = json!((u64::from(c) * period / 1000).max(1000));
        r["cpu"]["period"] = json!(period);
    }
    if let Some(p) = oci.pids_limit {
        r["pids"] = json!({"limit": p});
    }
    r
}

fn mounts(oci: &OciOptions, host: &HostFacts) -> Vec<Value> {
    let mut m = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", if oci.security.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for b in &host.binds {
        m.push(bind(&b.source, &b.destination, b.read_only));
    }
    for (source, destination) in &oci.files {
        m.push(bind(source, destination, true));
    }
    m
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "nosuid", "nodev", if read_only { "ro" } else { "rw" }],
    })
}

fn seccomp_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [{
            "names": SECCOMP_DENIED,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{Artifact, Limits, LogSpec, OciSecurity, OciUser};

    fn spec(f: impl FnOnce(&mut ContainerSpec, &mut OciOptions)) -> ContainerSpec {
        let mut oci = OciOptions {
            layers: vec!["/l/1".into()],
            cwd: "/srv".into(),
            user: OciUser {
                uid: 65534,
                gid: 65534,
                additional_gids: vec![5],
            },
            hostname: "web-1".into(),
            netns: "/run/netns/skiff-u".into(),
            pid_ns: None,
            cgroup: "skiff/pod-u/web".into(),
            files: vec![("/pods/u/etc-hosts".into(), "/etc/hosts".into())],
            cpu_request_millis: Some(250),
            pids_limit: Some(4096),
            security: OciSecurity {
                capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            host_ports: vec![],
            stdin: false,
        };
        let mut s = ContainerSpec {
            id: "u/web".into(),
            artifact: Artifact {
                path: "/img".into(),
                digest: "sha256:00".into(),
            },
            args: vec!["/bin/httpd".into(), "-f".into()],
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())],
            mounts: vec![],
            log: LogSpec {
                path: "/l".into(),
                max_bytes: 0,
            },
            limits: Limits::default(),
            http: None,
            oci: None,
            outgoing: None,
        };
        f(&mut s, &mut oci);
        s.oci = Some(oci);
        s
    }

    fn host() -> HostFacts {
        HostFacts {
            rootfs: "/c/rootfs".into(),
            binds: vec![BindSource {
                source: "/proc/self/fd/7".into(),
                destination: "/data".into(),
                read_only: false,
            }],
            nofile_hard: 20000,
        }
    }

    fn json_of(s: &ContainerSpec) -> Value {
        serde_json::to_value(runtime_spec(s, &host()).expect("valid")).expect("json")
    }

    #[test]
    fn cpu_shares_follow_kubernetes() {
        for (req, shares) in [
            (None, 2),
            (Some(0), 2),
            (Some(1), 2),
            (Some(250), 256),
            (Some(2000), 2048),
        ] {
            assert_eq!(cpu_shares(req), shares, "{req:?}");
        }
    }

    #[test]
    fn a_plain_container() {
        let v = json_of(&spec(|_, _| {}));
        let p = &v["process"];
        assert_eq!(p["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=b=c"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(
            p["user"],
            json!({"uid": 65534, "gid": 65534, "additionalGids": [5]})
        );
        assert_eq!(p["rlimits"][0]["hard"], 20000);
        assert_eq!(p["noNewPrivileges"], Value::Null, "left out");
        assert_eq!(
            p["capabilities"]["bounding"].as_array().map(Vec::len),
            Some(14)
        );
        assert_eq!(v["root"], json!({"path": "/c/rootfs", "readonly": false}));
        assert_eq!(v["hostname"], "web-1");
        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/skiff/pod-u/web");
        assert!(
            l["namespaces"]
                .as_array()
                .expect("namespaces")
                .contains(&json!({"type": "network", "path": "/run/netns/skiff-u"}))
        );
        assert!(
            l["namespaces"]
                .as_array()
                .expect("namespaces")
                .contains(&json!({"type": "pid"})),
            "a PID namespace of its own"
        );
        assert_eq!(l["resources"]["cpu"]["shares"], 256);
        assert_eq!(l["resources"]["pids"]["limit"], 4096);
        assert!(l["resources"].get("memory").is_none());
        assert!(
            l["maskedPaths"]
                .as_array()
                .is_some_and(|m| m.contains(&json!("/proc/kcore")))
        );
        assert!(l.get("seccomp").is_none());
        let mounts = v["mounts"].as_array().expect("mounts");
        let data = mounts
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("volume");
        assert_eq!(data["source"], "/proc/self/fd/7");
        assert!(
            data["options"]
                .as_array()
                .is_some_and(|o| o.contains(&json!("rw")))
        );
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .expect("hosts");
        assert!(
            hosts["options"]
                .as_array()
                .is_some_and(|o| o.contains(&json!("ro")))
        );
    }

    #[test]
    fn limits_and_confinement() {
        let v = json_of(&spec(|s, o| {
            s.limits.memory_bytes = Some(32 << 20);
            s.limits.cpu_millis = Some(500);
            o.security.no_new_privs = true;
            o.security.read_only_rootfs = true;
            o.security.seccomp_default = true;
            o.security.capabilities.retain(|c| c != "CAP_NET_RAW");
            o.cwd = String::new();
        }));
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"], json!({"limit": 32 << 20, "swap": 32 << 20}));
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["root"]["readonly"], true);
        assert!(
            !v["process"]["capabilities"]["effective"]
                .as_array()
                .expect("caps")
                .contains(&json!("CAP_NET_RAW"))
        );
        let seccomp = &v["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(
            seccomp["syscalls"][0]["names"]
                .as_array()
                .is_some_and(|n| n.contains(&json!("mount")))
        );
    }

    #[test]
    fn privileged_gets_everything_and_no_masks() {
        let v = json_of(&spec(|_, o| {
            o.security.privileged = true;
            o.security.no_new_privs = true;
            o.security.seccomp_default = true;
        }));
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(ALL_CAPABILITIES.len())
        );
        assert_eq!(v["process"]["noNewPrivileges"], Value::Null);
        assert!(v["linux"].get("maskedPaths").is_none());
        assert!(v["linux"].get("seccomp").is_none());
    }

    #[test]
    fn a_spec_without_oci_options_is_refused() {
        let mut s = spec(|_, _| {});
        s.oci = None;
        assert!(runtime_spec(&s, &host()).is_err());
    }

    #[test]
    fn a_shared_process_namespace_is_joined() {
        let v = json_of(&spec(|_, o| o.pid_ns = Some("/proc/42/ns/pid".into())));
        let ns = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(ns.contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"})));
        assert_eq!(ns.iter().filter(|n| n["type"] == "pid").count(), 1);
    }

    #[test]
    fn a_localhost_seccomp_profile_replaces_the_default() {
        let profile = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
        let v = json_of(&spec(|_, o| {
            o.security.seccomp_default = true;
            o.security.seccomp_profile = Some(profile.clone());
        }));
        assert_eq!(v["linux"]["seccomp"], profile);
        let s = spec(|_, o| o.security.seccomp_profile = Some(profile.clone()));
        assert!(
            runtime_spec(&s, &host()).is_ok(),
            "libcontainer's types accept it"
        );
    }
}
