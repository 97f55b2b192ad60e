//! Skiff's node agent: registers a Node, runs the Pods bound to it, reports their status
//! and serves their logs.
//!
//! Start at [`agent::start`]. The agent is an ordinary API client: it registers its
//! [`node`], renews its Lease, and runs one [`pod::Worker`] per pod bound to it. A worker
//! makes the pod's [`sandbox`] (network namespace and cgroup), pulls its images through
//! the [`artifacts`] store, resolves environment and volumes, and runs the containers in
//! the node's Wasm host ([`wasmhost`], a separate process from `skiff_shims`, so
//! workloads outlive the agent). [`logserver`] is the endpoint `kubectl logs` reaches
//! through the apiserver.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), skiff_runtime::agent::AgentError> {
//! use skiff_runtime::{agent, sandbox::LinuxSandboxes};
//! let cfg = agent::AgentConfig {
//!     node_name: "edge-1".into(),
//!     data_dir: "/var/lib/skiff/agent".into(),
//!     address: "10.0.0.5".into(),
//!     bind: [0, 0, 0, 0].into(),
//!     port: 10250,
//!     logs_token: "what the apiserver presents to the logs endpoint".into(),
//!     runtimes: vec!["wasm".into()],
//!     reserved_milli_cpu: 100,
//!     reserved_memory: 256 << 20,
//!     insecure_registries: vec![],
//!     labels: Default::default(),
//!     max_pods: 110,
//!     wasm_keep_resident_mib: None,
//!     exe: std::env::current_exe().unwrap_or_default(),
//!     sandboxes: std::sync::Arc::new(LinuxSandboxes::default()),
//!     allow_privileged: false,
//!     pod_max_pids: 4096,
//!     image_gc: skiff_runtime::imagegc::Policy::default(),
//!     http_limits: Default::default(),
//!     proxy: None,
//! };
//! let (started, run) = agent::start(client, cfg, std::future::pending()).await?;
//! println!("logs endpoint on {}", started.logs_addr);
//! run.await;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod artifacts;
pub mod executors;
pub mod imagegc;
pub mod ipam;
pub mod logserver;
pub mod netns;
pub mod node;
pub mod pod;
pub mod podnet;
pub mod proxy;
pub mod sandbox;
pub mod stats;
pub mod streams;
pub mod wasmhost;
