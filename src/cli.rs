//! The command line: what `skiff` and each subcommand take.

use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A WebAssembly-native orchestrator that speaks the Kubernetes API"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a node's pods are networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PodNetworkMode {
    /// Loopback and hostPorts only.
    None,
    /// A veth to the node's bridge, an address of its podCIDR.
    Bridge,
}

/// The address ranges of the cluster's pods (the node IPAM controller's flags).
#[derive(Args, Clone, Copy)]
pub(crate) struct PodNetworkArgs {
    /// Pods' addresses come from here; each node gets a block of it (`spec.podCIDR`).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub(crate) cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's block of the cluster CIDR.
    #[arg(long, default_value_t = 24)]
    pub(crate) node_cidr_mask_size: u8,
}

impl PodNetworkArgs {
    pub(crate) fn cidrs(self) -> anyhow::Result<skiff_controllers::nodeipam::PodCidrs> {
        skiff_controllers::nodeipam::PodCidrs::new(self.cluster_cidr, self.node_cidr_mask_size)
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the control plane (apiserver on the embedded store).
    Server {
        /// State directory: store, certificates, tokens, kubeconfig.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// Another name or address the serving certificate covers (repeatable), for
        /// nodes and clients that reach the server at an address other than the bind
        /// address. Read when the certificate is first made.
        #[arg(long = "tls-san")]
        tls_sans: Vec<String>,
        /// Port to listen on.
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Run the control plane only, without a node agent for this machine.
        #[arg(long)]
        no_agent: bool,
        /// Name of this machine's node.
        #[arg(long)]
        node_name: Option<String>,
        /// Do not run the scheduler in this process (run `skiff scheduler` elsewhere).
        #[arg(long)]
        no_scheduler: bool,
        /// Do not run the workload controllers in this process (run `skiff controllers`
        /// elsewhere).
        #[arg(long)]
        no_controllers: bool,
        /// Time a client has for the TLS handshake and each request's headers, e.g.
        /// `10s`; slower clients are disconnected.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        request_header_timeout: std::time::Duration,
        /// Client connections the apiserver holds open at once; more are closed at once.
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        /// Client connections one address may hold open at once.
        #[arg(long, default_value_t = 1024)]
        max_connections_per_ip: usize,
        /// Write an audit log (one JSON line per request, Kubernetes' audit events) here.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Rotate the audit log past this size, in MiB.
        #[arg(long, default_value_t = 100)]
        audit_log_max_size_mib: u64,
        /// Rotated audit logs kept.
        #[arg(long, default_value_t = 10)]
        audit_log_max_backups: usize,
        /// The Pod Security level (privileged, baseline, restricted) new namespaces are
        /// labelled to enforce when they do not say (`pod-security.kubernetes.io/enforce`).
        #[arg(long, default_value = "baseline", value_parser = parse_level)]
        pod_security_default: skiff_api::podsecurity::Level,
        /// Services' ClusterIPs come from here.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ipnet::Ipv4Net,
        #[command(flatten)]
        pod_network: PodNetworkArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Publish a `.wasm` file to an OCI registry as a CNCF Wasm artifact.
    Push {
        /// The `.wasm` file.
        file: PathBuf,
        /// Where to push, e.g. `127.0.0.1:5000/hello:1`.
        reference: String,
        /// Speak plain HTTP to this registry (loopback registries always are).
        #[arg(long)]
        insecure: bool,
        /// Registry user name (password from `SKIFF_REGISTRY_PASSWORD`).
        #[arg(long)]
        username: Option<String>,
    },
    /// Manage a node's artifact cache.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Run the Wasm host of a node (started by the agent; it outlives the agent).
    #[command(hide = true)]
    WasmHost {
        /// Unix socket to serve on.
        #[arg(long)]
        socket: PathBuf,
        /// State directory (compiled-code cache).
        #[arg(long)]
        state_dir: PathBuf,
        /// Linear memory each pool slot keeps resident between instances, in MiB
        /// (default: 1/1024 of the machine's memory, at most 16).
        #[arg(long)]
        keep_resident_mib: Option<u64>,
    },
    /// Fork the Linux containers' shims (started by the agent, whose socket is its stdin).
    #[command(hide = true)]
    ContainerHost,
    /// Start the holder of a pod's shared PID namespace and print its pid (run by the
    /// agent for pods with `shareProcessNamespace`).
    #[command(hide = true)]
    PodInit,
    /// Run one Linux container's shim in the foreground (the container host forks them),
    /// or clean up after one that died (`--delete`, run by the agent).
    #[command(hide = true)]
    ContainerShim {
        /// Clean up a container whose shim died, instead of running one.
        #[arg(long)]
        delete: bool,
        /// The container's bundle directory.
        dir: PathBuf,
    },
    /// Run one more process in a running Linux container (started by the agent for
    /// `kubectl exec` and exec probes).
    #[command(hide = true)]
    ContainerExec {
        /// Where to write how it ended (JSON).
        #[arg(long)]
        report: PathBuf,
        /// Run with a terminal, whose master is sent to this unix socket.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// The container's bundle directory.
        dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Run a node agent: join a Skiff server and run the pods it places here.
    Agent {
        /// The server, e.g. `https://10.0.0.1:6443`.
        #[arg(long)]
        server: String,
        /// File holding a join token (`skiff token create`, or `DATA_DIR/node-token` on
        /// the server). Needed for the first start only: the agent then keeps its own
        /// credential in its state directory, and the file can be deleted.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// State directory (pods, artifact cache, Wasm host).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// This node's name (default: the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// The cluster's pod addresses (the server's `--cluster-cidr`).
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: ipnet::Ipv4Net,
        /// The cluster's ClusterIPs (the server's `--service-cidr`).
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ipnet::Ipv4Net,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the scheduler alone, against any Kubernetes-compatible apiserver.
    Scheduler {
        /// Kubeconfig of the apiserver to schedule for.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Share of nodes searched for feasible ones, 1-100 (default: adaptive, as
        /// Kubernetes).
        #[arg(long)]
        percentage_of_nodes_to_score: Option<u32>,
    },
    /// Run the workload controllers (Deployment, ReplicaSet, Job, DaemonSet) alone,
    /// against any Kubernetes-compatible apiserver.
    Controllers {
        /// Kubeconfig of the apiserver to act for.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[command(flatten)]
        pod_network: PodNetworkArgs,
    },
    /// Manage how Secrets are kept at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Manage join tokens (what a new node joins with).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage node credentials.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Make kubeconfigs for other users.
    Kubeconfig {
        #[command(subcommand)]
        command: KubeconfigCommand,
    },
    /// Print the version.
    Version,
}

/// The admin kubeconfig an admin command uses.
#[derive(Args, Clone, Debug)]
pub(crate) struct AdminArgs {
    /// Kubeconfig of a cluster admin (default: `$KUBECONFIG`, else the server's
    /// `DATA_DIR/kubeconfig.yaml`).
    #[arg(long, env = "KUBECONFIG")]
    pub(crate) kubeconfig: Option<PathBuf>,
}

impl AdminArgs {
    pub(crate) fn path(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .unwrap_or_else(|| crate::default_data_dir().join("kubeconfig.yaml"))
    }
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a join token and print it (the only time it is shown).
    Create {
        /// How long it works, e.g. `24h`; `0` for ever.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the join tokens (ids, not secrets).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a join token (by id, or the token itself).
    Delete {
        /// The token's id.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
    /// Revoke a node's credential: the API refuses it at once.
    Revoke {
        /// The node.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let the next join under this node name take it over (a replaced machine).
    Approve {
        /// The node.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum KubeconfigCommand {
    /// Make a user token and a kubeconfig that uses it; bind roles to the user (or its
    /// groups) with RoleBindings.
    Create {
        /// The user name.
        user: String,
        /// A group of the user (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token works, e.g. `720h`; `0` for ever.
        #[arg(long, default_value = "0")]
        ttl: String,
        /// The kubeconfig's default namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Write the kubeconfig here (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum SecretsCommand {
    /// Seal every stored Secret with a new key and drop the old key (stop the server
    /// first; the store is opened exclusively).
    RotateKey {
        /// The server's state directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
    /// Load a `.wasm` file or an OCI image-layout archive into the node's cache (for
    /// air-gapped machines); pods then find it with imagePullPolicy IfNotPresent/Never.
    Import {
        /// The file.
        file: PathBuf,
        /// The image reference pods use for it, e.g. `registry.local/hello:1`.
        #[arg(long = "name")]
        reference: String,
        /// The node's state directory (the agent's `agent/` inside the server's data dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Settings of a node agent (embedded in `skiff server`, or `skiff agent`).
#[derive(Args, Clone, Debug)]
pub(crate) struct NodeArgs {
    /// Port of the node's logs endpoint, which the apiserver reaches (0 picks one).
    #[arg(long, default_value_t = 10250)]
    pub(crate) node_port: u16,
    /// `bridge`: each pod gets an address of the node's `podCIDR` on a bridge of the
    /// node's own; `none`: pods have only their loopback and hostPorts.
    #[arg(long, value_enum, default_value_t = PodNetworkMode::None)]
    pub(crate) pod_network: PodNetworkMode,
    /// With `--pod-network bridge`: do not masquerade pod traffic that leaves the
    /// cluster CIDR (the network routes pod addresses itself).
    #[arg(long)]
    pub(crate) no_masquerade: bool,
    /// Address the apiserver reaches this node at (default: the bind address, or
    /// 127.0.0.1 when binding every address).
    #[arg(long)]
    pub(crate) node_ip: Option<IpAddr>,
    /// Registry (`host` or `host:port`) to speak plain HTTP to; loopback ones always are.
    #[arg(long = "insecure-registry")]
    pub(crate) insecure_registries: Vec<String>,
    /// Let Linux containers with `securityContext.privileged: true` run on this node
    /// (every capability, every device, no seccomp or masked paths). Off by default.
    #[arg(long)]
    pub(crate) allow_privileged: bool,
    /// CPU kept back for the system, in millicores.
    #[arg(long, default_value_t = 100)]
    pub(crate) reserved_cpu: u64,
    /// Memory kept back for the system, in MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) reserved_memory_mib: u64,
    /// Pods this node takes.
    #[arg(long, default_value_t = skiff_runtime::node::MAX_PODS)]
    pub(crate) max_pods: u32,
    /// Processes and threads one pod's containers may have at once (the kubelet's
    /// `--pod-max-pids`); a fork bomb stops there.
    #[arg(long, default_value_t = skiff_runtime::sandbox::DEFAULT_PIDS_LIMIT)]
    pub(crate) pod_max_pids: i64,
    /// Remove images no pod of this node uses when the disk of the data directory is at
    /// least this full (percent; 100 turns image garbage collection off).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(crate) image_gc_high_percent: u8,
    /// ... until it is down to this (percent).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(crate) image_gc_low_percent: u8,
    /// How often the disk is looked at for image garbage collection, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) image_gc_period: std::time::Duration,
    /// Images a container was started from more recently than this are never removed
    /// by image garbage collection, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub(crate) image_minimum_gc_age: std::time::Duration,
    /// Linear memory each Wasm pool slot keeps resident between requests, in MiB
    /// (default: 1/1024 of the machine's memory, at most 16). Larger is faster for guests
    /// with big heaps (Python) and keeps more memory resident after a burst; 0 gives
    /// every page back after each request. Set when the agent starts the Wasm host.
    #[arg(long)]
    pub(crate) wasm_keep_resident_mib: Option<u64>,
    /// Extra node label, `key=value` (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    pub(crate) node_labels: Vec<(String, String)>,
    /// Time a client of the node's logs endpoint or of a pod's HTTP port has for each
    /// request's headers (and the TLS handshake), e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) http_header_timeout: std::time::Duration,
    /// Connections the logs endpoint, and each Wasm HTTP service, holds open at once.
    #[arg(long, default_value_t = 1024)]
    pub(crate) http_max_connections: usize,
}

pub(crate) fn parse_level(s: &str) -> Result<skiff_api::podsecurity::Level, String> {
    use skiff_api::podsecurity::Level;
    match s {
        "privileged" => Ok(Level::Privileged),
        "baseline" => Ok(Level::Baseline),
        "restricted" => Ok(Level::Restricted),
        _ => Err(format!(
            "{s:?} is not one of privileged, baseline, restricted"
        )),
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 10s or 1m30s: {e}"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    if !skiff_api::auth::node::kubelet_may_set(k) {
        return Err(format!(
            "a node may not set {k:?} on itself: labels under kubernetes.io and k8s.io other \
             than the kubelet's own, and any under node-restriction.kubernetes.io, are the \
             admin's to set (kubectl label node)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}
