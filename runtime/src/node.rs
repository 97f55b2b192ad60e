//! This machine as a Kubernetes Node: capacity read from the kernel, the runtimes it
//! offers as labels, addresses, conditions true to the machine, cached artifacts.

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::BTreeMap;
use std::path::Path;

/// Pods a node takes unless told otherwise (the kubelet's default `maxPods`).
pub const MAX_PODS: u32 = 110;

/// The label a node carries for each runtime it offers.
pub fn runtime_label(runtime: &str) -> String {
    format!("runtime.skiff.dev/{runtime}")
}

/// Annotation holding the SHA-256 of the agent's serving certificate (DER, lowercase
/// hex), which the apiserver pins when it connects for logs.
pub const CERT_PIN_ANNOTATION: &str = "skiff.dev/serving-cert-sha256";

/// What the machine has, read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory: u64,
    /// Available memory in bytes (MemAvailable).
    pub memory_available: u64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system name (PRETTY_NAME of os-release).
    pub os_image: String,
    /// Machine id, if any.
    pub machine_id: String,
}

fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Machine {
    /// Read this machine.
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo_field(&meminfo, "MemTotal:").unwrap_or(0);
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory,
            memory_available: meminfo_field(&meminfo, "MemAvailable:").unwrap_or(memory),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os_image,
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// Free bytes and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    Some((
        s.blocks_available() as u64 * frsize,
        s.blocks() as u64 * frsize,
    ))
}

/// Settings of the Node this agent registers.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Address the apiserver reaches the agent at.
    pub address: String,
    /// Port of the agent's logs endpoint.
    pub port: u16,
    /// Pin of the serving certificate.
    pub cert_pin: String,
    /// Runtimes offered (`wasm`, later `oci`).
    pub runtimes: Vec<String>,
    /// CPU kept back for the system, in millicores.
    pub reserved_milli_cpu: u64,
    /// Memory kept back for the system, in bytes.
    pub reserved_memory: u64,
    /// Extra labels from the command line.
    pub labels: BTreeMap<String, String>,
    /// Pods this node takes.
    pub max_pods: u32,
}

/// Memory pressure below this share of memory available.
const MEMORY_PRESSURE: f64 = 0.05;
/// Disk pressure below this share of the disk free.
const DISK_PRESSURE: f64 = 0.10;

fn condition(
    type_: &str,
    ok: bool,
    reason_ok: &str,
    reason_bad: &str,
    message: &str,
) -> NodeCondition {
    // Ready conditions are good when True; the pressure conditions are good when False.
    let good_is_true = type_.ends_with("Ready");
    let status = if ok == good_is_true { "True" } else { "False" };
    let now = Time(jiff::Timestamp::now());
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(if ok { reason_ok } else { reason_bad }.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The node's conditions, true to the machine; `linux_containers` says whether the node
/// runs Linux containers, or why not (`LinuxContainersReady`, Skiff's own condition).
pub fn conditions(
    machine: &Machine,
    disk: Option<(u64, u64)>,
    ready: bool,
    linux_containers: &Result<(), String>,
) -> Vec<NodeCondition> {
    let mem_ok = machine.memory == 0
        || (machine.memory_available as f64 / machine.memory as f64) >= MEMORY_PRESSURE;
    let disk_ok =
        disk.is_none_or(|(free, total)| total == 0 || free as f64 / total as f64 >= DISK_PRESSURE);
    vec![
        condition(
            "MemoryPressure",
            mem_ok,
            "KubeletHasSufficientMemory",
            "KubeletHasInsufficientMemory",
            if mem_ok {
                "skiff agent has sufficient memory available"
            } else {
                "skiff agent has insufficient memory available"
            },
        ),
        condition(
            "DiskPressure",
            disk_ok,
            "KubeletHasNoDiskPressure",
            "KubeletHasDiskPressure",
            if disk_ok {
                "skiff agent has no disk pressure"
            } else {
                "skiff agent has disk pressure"
            },
        ),
        condition(
            "PIDPressure",
            true,
            "KubeletHasSufficientPID",
            "KubeletHasInsufficientPID",
            "skiff agent has sufficient PID available",
        ),
        condition(
            "LinuxContainersReady",
            linux_containers.is_ok(),
            "LinuxContainersReady",
            "LinuxContainersUnavailable",
            match linux_containers {
                Ok(()) => "this node runs Linux containers",
                Err(why) => why,
            },
        ),
        condition(
            "Ready",
            ready,
            "KubeletReady",
            "KubeletNotReady",
            if ready {
                "skiff agent is posting ready status"
            } else {
                "the Wasm host is not reachable"
            },
        ),
    ]
}

fn q(s: String) -> Quantity {
    Quantity(s)
}

/// The Node object this agent keeps up to date.
pub fn node_object(
    spec: &NodeSpec,
    machine: &Machine,
    conditions: Vec<NodeCondition>,
    images: Vec<ContainerImage>,
) -> Node {
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    for r in &spec.runtimes {
        labels.insert(runtime_label(r), "true".into());
    }
    let cpu_milli = u64::from(machine.cpus) * 1000;
    let capacity = BTreeMap::from([
        ("cpu".to_string(), q(machine.cpus.to_string())),
        (
            "memory".to_string(),
            q(format!("{}Ki", machine.memory / 1024)),
        ),
        ("pods".to_string(), q(spec.max_pods.to_string())),
    ]);
    let allocatable = BTreeMap::from([
        (
            "cpu".to_string(),
            q(format!(
                "{}m",
                cpu_milli.saturating_sub(spec.reserved_milli_cpu)
            )),
        ),
        (
            "memory".to_string(),
            q(format!(
                "{}Ki",
                machine.memory.saturating_sub(spec.reserved_memory) / 1024
            )),
        ),
        ("pods".to_string(), q(spec.max_pods.to_string())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                CERT_PIN_ANNOTATION.to_string(),
                spec.cert_pin.clone(),
            )])),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            conditions: Some(conditions),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: spec.address.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: spec.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(spec.port),
                }),
            }),
            images: Some(images),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
                boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                container_runtime_version: "skiff-wasm://wasmtime-48.0.8".into(),
                kernel_version: machine.kernel.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.32.0-skiff.{}", env!("CARGO_PKG_VERSION")),
                machine_id: machine.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: machine.os_image.clone(),
                system_uuid: machine.machine_id.clone(),
                swap: None,
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reports_runtimes_capacity_and_reserve() {
        let machine = Machine {
            cpus: 2,
            memory: 4 << 30,
            memory_available: 3 << 30,
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
        };
        let spec = NodeSpec {
            name: "edge-1".into(),
            address: "10.0.0.5".into(),
            port: 10250,
            cert_pin: "ab".into(),
            runtimes: vec!["wasm".into()],
            reserved_milli_cpu: 100,
            reserved_memory: 256 << 20,
            labels: BTreeMap::new(),
            max_pods: MAX_PODS,
        };
        let conds = conditions(&machine, Some((50, 100)), true, &Ok(()));
        let n = node_object(&spec, &machine, conds, vec![]);
        let labels = n.metadata.labels.unwrap_or_default();
        assert_eq!(labels["runtime.skiff.dev/wasm"], "true");
        assert!(!labels.contains_key("runtime.skiff.dev/oci"));
        let status = n.status.unwrap_or_default();
        let alloc = status.allocatable.unwrap_or_default();
        assert_eq!(alloc["cpu"].0, "1900m");
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", ((4u64 << 30) - (256 << 20)) / 1024)
        );
        let conds = status.conditions.unwrap_or_default();
        let get = |t: &str| {
            conds
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(get("Ready").as_deref(), Some("True"));
        assert_eq!(get("MemoryPressure").as_deref(), Some("False"));
        assert_eq!(get("LinuxContainersReady").as_deref(), Some("True"));
        let low = Machine {
            memory_available: 1 << 20,
            ..machine
        };
        let conds = conditions(
            &low,
            Some((1, 100)),
            false,
            &Err("overlayfs is not available".into()),
        );
        let get = |t: &str| {
            conds
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(get("MemoryPressure").as_deref(), Some("True"));
        assert_eq!(get("DiskPressure").as_deref(), Some("True"));
        assert_eq!(get("Ready").as_deref(), Some("False"));
        let oci = conds
            .iter()
            .find(|c| c.type_ == "LinuxContainersReady")
            .map(|c| (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()));
        assert_eq!(
            oci,
            Some((
                "False",
                Some("LinuxContainersUnavailable"),
                Some("overlayfs is not available")
            ))
        );
    }
}
