//! The `skiff` binary: command-line wiring only.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A WebAssembly-native orchestrator that speaks the Kubernetes API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (apiserver on the embedded store).
    Server {
        /// State directory: store, certificates, tokens, kubeconfig.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
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
    /// Print the version.
    Version,
}

fn default_data_dir() -> PathBuf {
    // Root or not, read from /proc (no libc call needed): the effective uid is the
    // second field of the `Uid:` line.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server {
            data_dir,
            bind,
            port,
            no_agent,
            node_name,
            no_scheduler,
        } => {
            init_logs();
            if !no_agent {
                tracing::warn!(
                    "the node agent is not built yet: running the control plane only (as with --no-agent)"
                );
            }
            let _ = node_name;
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            runtime()?.block_on(async move {
                let cfg = skiff_api::server::ServerConfig {
                    data_dir: data_dir.clone(),
                    bind,
                    port,
                };
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let stop = async move {
                    shutdown_signal().await;
                    let _ = stop_tx.send(true);
                };
                skiff_api::server::run(cfg, stop, |r| {
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
    }
}
