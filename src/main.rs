//! The `skiff` binary: command-line wiring only.

mod admin;
mod cli;
mod join;

use anyhow::Context;
use clap::Parser;
use cli::{
    Cli, Command, ImageCommand, KubeconfigCommand, NodeArgs, NodeCommand, SecretsCommand,
    TokenCommand,
};
use std::net::IpAddr;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cluster's address ranges, as a node needs them: pod addresses and ClusterIPs.
#[derive(Clone, Copy)]
struct ClusterRanges {
    cluster_cidr: ipnet::Ipv4Net,
    service_cidr: ipnet::Ipv4Net,
}

fn agent_config(
    args: &NodeArgs,
    node_name: String,
    data_dir: PathBuf,
    address: IpAddr,
    logs_token: String,
    ranges: ClusterRanges,
) -> anyhow::Result<skiff_runtime::agent::AgentConfig> {
    use skiff_runtime::sandbox::{LinuxSandboxes, NoSandboxes, Sandboxes};
    let sandboxes: std::sync::Arc<dyn Sandboxes> = if is_root() {
        std::sync::Arc::new(match args.pod_network {
            cli::PodNetworkMode::Bridge => LinuxSandboxes::networked(),
            cli::PodNetworkMode::None => LinuxSandboxes::default(),
        })
    } else {
        tracing::warn!(
            "not running as root: pods cannot get network namespaces and will not start"
        );
        std::sync::Arc::new(NoSandboxes)
    };
    // The Service proxy comes with the pod network: without one, nothing of a pod is
    // reachable at a ClusterIP's endpoints.
    let proxy = (args.pod_network == cli::PodNetworkMode::Bridge && is_root()).then(|| {
        skiff_runtime::proxy::nft::Config {
            table: skiff_runtime::proxy::nft::table_name(&node_name),
            cluster_cidr: ranges.cluster_cidr,
            service_cidr: ranges.service_cidr,
            masquerade_egress: !args.no_masquerade,
        }
    });
    Ok(skiff_runtime::agent::AgentConfig {
        proxy,
        node_name,
        data_dir,
        address: address.to_string(),
        bind: if address.is_loopback() {
            address
        } else {
            IpAddr::from([0, 0, 0, 0])
        },
        port: args.node_port,
        logs_token,
        runtimes: vec!["wasm".into()],
        reserved_milli_cpu: args.reserved_cpu,
        reserved_memory: args.reserved_memory_mib << 20,
        insecure_registries: args.insecure_registries.clone(),
        labels: args.node_labels.iter().cloned().collect(),
        max_pods: args.max_pods,
        pod_max_pids: args.pod_max_pids,
        image_gc: skiff_runtime::imagegc::Policy {
            high_percent: args.image_gc_high_percent,
            low_percent: args.image_gc_low_percent,
            period: args.image_gc_period,
            min_age: args.image_minimum_gc_age,
        },
        wasm_keep_resident_mib: args.wasm_keep_resident_mib,
        exe: std::env::current_exe().context("finding the skiff executable")?,
        sandboxes,
        allow_privileged: args.allow_privileged,
        http_limits: skiff_api::listen::Limits {
            header_read_timeout: args.http_header_timeout,
            max_connections: args.http_max_connections,
            max_connections_per_ip: args.http_max_connections,
        },
    })
}

fn spawn_agent(
    client: kube::Client,
    config: skiff_runtime::agent::AgentConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let node = config.node_name.clone();
        match skiff_runtime::agent::start(client, config, stopped(stop)).await {
            Ok((started, run)) => {
                tracing::info!(%node, logs = %started.logs_addr, "node agent started");
                run.await;
            }
            Err(e) => tracing::error!(%node, error = %e, "node agent failed to start"),
        }
    });
}

/// The local address this machine uses to reach `server_url` (no packet is sent: a
/// UDP socket is only connected, which picks the route).
fn local_address_towards(server_url: &str) -> Option<IpAddr> {
    let rest = server_url.split("://").nth(1).unwrap_or(server_url);
    let hostport = rest.split('/').next()?;
    let with_port = if hostport.rsplit(':').next()?.parse::<u16>().is_ok() {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    };
    use std::net::ToSocketAddrs;
    let target = with_port.to_socket_addrs().ok()?.next()?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn default_data_dir() -> PathBuf {
    // Root or not, read from /proc (no libc call needed): the effective uid is the
    // second field of the `Uid:` line.
    if is_root() {
        return PathBuf::from("/var/lib/skiff");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("skiff");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/skiff")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // libcgroups warns about every controller the machine lacks at each stats read.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libcgroups=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A future that resolves once `rx` turns true.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn spawn_scheduler(
    client: kube::Client,
    config: skiff_scheduler::run::Config,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        tracing::info!("scheduler started");
        if let Err(e) = skiff_scheduler::run::run(client, config, stopped(stop)).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });
}

fn spawn_controllers(
    client: kube::Client,
    root_ca: String,
    pod_cidrs: skiff_controllers::nodeipam::PodCidrs,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = skiff_controllers::Config {
        host: hostname(),
        root_ca: Some(root_ca),
        pod_cidrs: Some(pod_cidrs),
    };
    tokio::spawn(async move {
        tracing::info!("controllers started");
        if let Err(e) = skiff_controllers::run(client, config, stopped(stop)).await {
            tracing::error!(error = %e, "controllers stopped");
        }
    });
}

async fn push(
    file: PathBuf,
    reference: String,
    insecure: bool,
    username: Option<String>,
) -> anyhow::Result<()> {
    use skiff_runtime::artifacts::{PushOptions, RegistryCredentials, push};
    use std::io::{IsTerminal, Write};
    let credentials = match username {
        Some(u) => RegistryCredentials::basic(
            u,
            std::env::var("SKIFF_REGISTRY_PASSWORD").unwrap_or_default(),
        ),
        None => RegistryCredentials::Anonymous,
    };
    let tty = std::io::stderr().is_terminal();
    let out = push(
        &file,
        &reference,
        &PushOptions {
            insecure,
            credentials,
        },
        move |p| {
            if tty && p.total > 0 {
                let done = (p.sent * 30 / p.total) as usize;
                let mut e = std::io::stderr();
                let _ = write!(
                    e,
                    "\r[{}{}] {:>5.1}% of {} bytes",
                    "#".repeat(done),
                    " ".repeat(30 - done.min(30)),
                    p.sent as f64 * 100.0 / p.total as f64,
                    p.total
                );
                let _ = e.flush();
            }
        },
    )
    .await
    .with_context(|| format!("pushing {} to {reference}", file.display()))?;
    if tty {
        eprintln!();
    }
    println!(
        "pushed {}@{} ({} bytes)",
        out.reference, out.digest, out.size
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // First, before anything starts a thread: it forks the shims, and libcontainer
        // forks those.
        Command::ContainerHost => std::process::exit(skiff_shims::oci::zygote::main()),
        Command::PodInit => std::process::exit(skiff_shims::oci::pause::main()),
        Command::ContainerShim { delete, dir } => {
            if delete {
                skiff_shims::oci::shim::cleanup(&dir);
                Ok(())
            } else {
                std::process::exit(skiff_shims::oci::shim::main(&dir))
            }
        }
        Command::ContainerExec {
            report,
            console_socket,
            dir,
            argv,
        } => std::process::exit(skiff_shims::oci::exec::main(
            &skiff_shims::oci::exec::ExecRequest {
                dir,
                argv,
                console_socket,
                report,
            },
        )),
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server {
            data_dir,
            bind,
            tls_sans,
            port,
            no_agent,
            node_name,
            no_scheduler,
            no_controllers,
            request_header_timeout,
            max_connections,
            max_connections_per_ip,
            audit_log,
            audit_log_max_size_mib,
            audit_log_max_backups,
            pod_security_default,
            service_cidr,
            pod_network,
            node,
        } => {
            let pod_cidrs = pod_network.cidrs()?;
            init_logs();
            let node_name = node_name.unwrap_or_else(hostname);
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            runtime()?.block_on(async move {
                let cfg = skiff_api::server::ServerConfig {
                    data_dir: data_dir.clone(),
                    bind,
                    tls_sans,
                    port,
                    limits: skiff_api::listen::Limits {
                        header_read_timeout: request_header_timeout,
                        max_connections,
                        max_connections_per_ip,
                    },
                    local_node: (!no_agent).then(|| node_name.clone()),
                    audit: audit_log.map(|path| skiff_api::audit::AuditConfig {
                        path,
                        max_bytes: audit_log_max_size_mib << 20,
                        max_backups: audit_log_max_backups,
                    }),
                    pod_security_default,
                    service_cidr,
                };
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let stop = async move {
                    shutdown_signal().await;
                    let _ = stop_tx.send(true);
                };
                let agent_dir = data_dir.join("agent");
                skiff_api::server::run(cfg, stop, |r| {
                    if let Some(creds) = &r.local_node {
                        let address = node.node_ip.unwrap_or(if bind.is_unspecified() {
                            IpAddr::from([127, 0, 0, 1])
                        } else {
                            bind
                        });
                        // The embedded agent is a node like any other: its own credential,
                        // limited to its own Node, Lease and pods.
                        let built = skiff_api::client::in_process(r.router.clone(), &creds.token)
                            .map_err(anyhow::Error::from)
                            .and_then(|client| {
                                agent_config(
                                    &node,
                                    node_name.clone(),
                                    agent_dir.clone(),
                                    address,
                                    creds.logs_token.clone(),
                                    ClusterRanges {
                                        cluster_cidr: pod_network.cluster_cidr,
                                        service_cidr,
                                    },
                                )
                                .map(|cfg| (client, cfg))
                            });
                        match built {
                            Ok((client, cfg)) => spawn_agent(client, cfg, stop_rx.clone()),
                            Err(e) => tracing::error!(error = %e, "cannot start the node agent"),
                        }
                    }
                    if !no_scheduler {
                        match skiff_api::client::in_process(
                            r.router.clone(),
                            &r.credentials.admin_token,
                        ) {
                            Ok(client) => {
                                let config = skiff_scheduler::run::Config {
                                    host: hostname(),
                                    ..Default::default()
                                };
                                spawn_scheduler(client, config, stop_rx.clone());
                            }
                            Err(e) => tracing::error!(error = %e, "cannot start the scheduler"),
                        }
                    }
                    if !no_controllers {
                        match skiff_api::client::in_process(
                            r.router.clone(),
                            &r.credentials.admin_token,
                        ) {
                            Ok(client) => spawn_controllers(
                                client,
                                r.credentials.ca_pem.clone(),
                                pod_cidrs,
                                stop_rx.clone(),
                            ),
                            Err(e) => tracing::error!(error = %e, "cannot start the controllers"),
                        }
                    }
                    tracing::info!(
                        address = %r.addr,
                        kubeconfig = %r.credentials.kubeconfig.display(),
                        "skiff server ready: kubectl --kubeconfig {}",
                        r.credentials.kubeconfig.display()
                    );
                })
                .await
                .with_context(|| format!("skiff server (data dir {})", data_dir.display()))
            })
        }
        Command::Token { command } => runtime()?.block_on(async move {
            match command {
                TokenCommand::Create {
                    ttl,
                    description,
                    admin,
                } => admin::token_create(&admin.path(), &ttl, &description).await,
                TokenCommand::List { admin } => admin::token_list(&admin.path()).await,
                TokenCommand::Delete { id, admin } => admin::token_delete(&admin.path(), &id).await,
            }
        }),
        Command::Node { command } => runtime()?.block_on(async move {
            match command {
                NodeCommand::Revoke { name, admin } => {
                    admin::node_revoke(&admin.path(), &name).await
                }
                NodeCommand::Approve { name, admin } => {
                    admin::node_approve(&admin.path(), &name).await
                }
            }
        }),
        Command::Kubeconfig {
            command:
                KubeconfigCommand::Create {
                    user,
                    groups,
                    ttl,
                    namespace,
                    out,
                    admin,
                },
        } => runtime()?.block_on(admin::kubeconfig_create(
            &admin.path(),
            &user,
            &groups,
            &ttl,
            &namespace,
            out.as_deref(),
        )),
        Command::Secrets {
            command: SecretsCommand::RotateKey { data_dir },
        } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let r = skiff_api::server::rotate_encryption_key(&dir)
                .with_context(|| format!("rotating the encryption key of {}", dir.display()))?;
            println!(
                "{} Secrets sealed with the new key {}; the old key is gone from {}",
                r.secrets,
                r.key,
                skiff_api::server::encryption_key_file(&dir).display()
            );
            Ok(())
        }
        Command::Push {
            file,
            reference,
            insecure,
            username,
        } => runtime()?.block_on(push(file, reference, insecure, username)),
        Command::Image {
            command:
                ImageCommand::Import {
                    file,
                    reference,
                    data_dir,
                },
        } => runtime()?.block_on(async move {
            let dir = data_dir
                .unwrap_or_else(|| default_data_dir().join("agent"))
                .join("artifacts");
            let store = skiff_runtime::artifacts::ArtifactStore::open(&dir)
                .await
                .with_context(|| format!("opening the artifact cache {}", dir.display()))?;
            let a = store
                .import(&file, &reference)
                .await
                .with_context(|| format!("importing {}", file.display()))?;
            println!(
                "imported {} as {} ({} bytes)",
                file.display(),
                a.reference,
                a.size
            );
            Ok(())
        }),
        Command::Agent {
            server,
            token_file,
            data_dir,
            node_name,
            cluster_cidr,
            service_cidr,
            node,
        } => {
            init_logs();
            let node_name = node_name.unwrap_or_else(hostname);
            let data_dir = data_dir.unwrap_or_else(|| default_data_dir().join("agent"));
            let ranges = ClusterRanges {
                cluster_cidr,
                service_cidr,
            };
            runtime()?.block_on(async move {
                let Some((creds, client)) =
                    join::credentials(&server, token_file.as_deref(), &node_name, &data_dir)
                        .await?
                else {
                    return Ok(());
                };
                let address = match node.node_ip {
                    Some(ip) => ip,
                    None => local_address_towards(&server).unwrap_or(IpAddr::from([127, 0, 0, 1])),
                };
                let cfg = agent_config(
                    &node,
                    node_name.clone(),
                    data_dir,
                    address,
                    creds.logs_token,
                    ranges,
                )?;
                let (started, run) =
                    skiff_runtime::agent::start(client, cfg, shutdown_signal()).await?;
                tracing::info!(node = %node_name, %address, logs = %started.logs_addr, "node agent started");
                run.await;
                Ok(())
            })
        }
        Command::WasmHost {
            socket,
            state_dir,
            keep_resident_mib,
        } => {
            init_logs();
            runtime()?.block_on(async move {
                skiff_runtime::wasmhost::serve(&socket, &state_dir, keep_resident_mib)
                    .await
                    .context("wasm host")
            })
        }
        Command::Scheduler {
            kubeconfig,
            percentage_of_nodes_to_score,
        } => {
            init_logs();
            runtime()?.block_on(async move {
                let client = skiff_api::client::from_kubeconfig(&kubeconfig).await?;
                let config = skiff_scheduler::run::Config {
                    host: hostname(),
                    percentage_of_nodes_to_score,
                    ..Default::default()
                };
                tracing::info!(kubeconfig = %kubeconfig.display(), "scheduler started");
                skiff_scheduler::run::run(client, config, shutdown_signal())
                    .await
                    .context("scheduler")
            })
        }
        Command::Controllers {
            kubeconfig,
            pod_network,
        } => {
            init_logs();
            let pod_cidrs = pod_network.cidrs()?;
            runtime()?.block_on(async move {
                let client = skiff_api::client::from_kubeconfig(&kubeconfig).await?;
                let config = skiff_controllers::Config {
                    host: hostname(),
                    root_ca: admin::cluster_ca(&kubeconfig).ok(),
                    pod_cidrs: Some(pod_cidrs),
                };
                tracing::info!(kubeconfig = %kubeconfig.display(), "controllers started");
                skiff_controllers::run(client, config, shutdown_signal())
                    .await
                    .context("controllers")
            })
        }
    }
}
