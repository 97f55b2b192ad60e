//! Finding or starting the node's Wasm host, the process that runs every Wasm container
//! and outlives the agent (so an agent restart or upgrade never restarts workloads).

use skiff_shims::host::Client;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The line the host prints on stdout once it accepts connections.
pub const READY_LINE: &str = "skiff wasm host ready";

/// Failures reaching the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// It could not be started.
    #[error("starting the Wasm host ({exe}): {message}")]
    Spawn {
        /// The executable.
        exe: String,
        /// What went wrong.
        message: String,
    },
    /// It started but cannot be reached.
    #[error("connecting to the Wasm host at {socket}: {message}")]
    Connect {
        /// The socket.
        socket: String,
        /// What went wrong.
        message: String,
    },
}

/// Where the host lives.
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// Its unix socket.
    pub socket: PathBuf,
    /// Its state directory (compiled-code cache).
    pub state_dir: PathBuf,
    /// The `skiff` executable that runs `skiff wasm-host`.
    pub exe: PathBuf,
    /// Linear memory a pool slot keeps resident between instances, in MiB (`None`: the
    /// host picks it from the machine). Applies when this agent starts the host.
    pub keep_resident_mib: Option<u64>,
}

impl HostPaths {
    /// The host's pid file (written at spawn; tests and operators use it).
    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("wasm-host.pid")
    }
}

/// The node's Wasm host as the agent holds it: the connection to the host that runs, and
/// a new host (and connection) when that one dies ([`WasmHost::replace`]). Workers see
/// one [`Executor`](skiff_shims::Executor) whatever happened underneath.
pub struct WasmHost {
    paths: HostPaths,
    client: std::sync::RwLock<Client>,
}

impl WasmHost {
    /// Re-attach to the host that runs, or start one.
    pub async fn start(paths: HostPaths) -> Result<WasmHost, HostError> {
        let client = connect_or_spawn(&paths).await?;
        Ok(WasmHost {
            paths,
            client: std::sync::RwLock::new(client),
        })
    }

    /// The current connection.
    pub fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The old host is gone: start a new one and use it from now on.
    pub async fn replace(&self) -> Result<Client, HostError> {
        let client = connect_or_spawn(&self.paths).await?;
        *self
            .client
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client.clone();
        Ok(client)
    }

    /// Where it lives.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }
}

impl skiff_shims::Executor for WasmHost {
    fn handles(&self, path: &Path) -> bool {
        self.client().handles(path)
    }

    async fn run(
        &self,
        spec: skiff_shims::ContainerSpec,
    ) -> Result<skiff_shims::ContainerInfo, skiff_shims::Error> {
        self.client().run(spec).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), skiff_shims::Error> {
        self.client().stop(id, grace).await
    }

    async fn wait(&self, id: &str) -> Result<skiff_shims::ExitStatus, skiff_shims::Error> {
        self.client().wait(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), skiff_shims::Error> {
        self.client().remove(id).await
    }

    async fn list(&self) -> Result<Vec<skiff_shims::ContainerInfo>, skiff_shims::Error> {
        self.client().list().await
    }
}

/// Connect to a running host, or start one (detached: its own process group, so the
/// agent's signals and death do not reach it) and connect.
pub async fn connect_or_spawn(paths: &HostPaths) -> Result<Client, HostError> {
    if let Ok(c) = Client::connect(&paths.socket).await {
        tracing::info!(socket = %paths.socket.display(), "re-attached to the running Wasm host");
        return Ok(c);
    }
    spawn(paths).await?;
    Client::connect(&paths.socket)
        .await
        .map_err(|e| HostError::Connect {
            socket: paths.socket.display().to_string(),
            message: e.to_string(),
        })
}

async fn spawn(paths: &HostPaths) -> Result<(), HostError> {
    let err = |message: String| HostError::Spawn {
        exe: paths.exe.display().to_string(),
        message,
    };
    std::fs::create_dir_all(&paths.state_dir).map_err(|e| err(e.to_string()))?;
    let log_path = paths.state_dir.join("wasm-host.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| err(format!("{}: {e}", log_path.display())))?;
    let mut child = Command::new(&paths.exe)
        .arg("wasm-host")
        .arg("--socket")
        .arg(&paths.socket)
        .arg("--state-dir")
        .arg(&paths.state_dir)
        .args(
            paths
                .keep_resident_mib
                .map(|mib| format!("--keep-resident-mib={mib}")),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let _ = std::fs::write(paths.pid_file(), child.id().to_string());
    let stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
    // Wait for the ready line (or the host's end) off the async threads.
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut r = std::io::BufReader::new(stdout);
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.trim() == READY_LINE {
                return true;
            }
            line.clear();
        }
        false
    });
    match tokio::time::timeout(Duration::from_secs(30), ready).await {
        Ok(Ok(true)) => {
            tracing::info!(pid = child.id(), socket = %paths.socket.display(), "started the Wasm host");
            // The child is not waited for: it outlives this process by design.
            drop(child);
            Ok(())
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(err(format!(
                "it did not become ready; its log says: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )))
        }
    }
}

/// Run the host in this process (the `skiff wasm-host` command): bind, say ready on
/// stdout, serve until killed.
pub async fn serve(
    socket: &Path,
    state_dir: &Path,
    keep_resident_mib: Option<u64>,
) -> Result<(), skiff_shims::host::Error> {
    use skiff_shims::wasm::{WasmConfig, WasmExecutor};
    std::fs::create_dir_all(state_dir).map_err(|e| {
        skiff_shims::host::Error::Unavailable(format!("{}: {e}", state_dir.display()))
    })?;
    let mut config = WasmConfig::new(state_dir.join("cache"));
    config.keep_resident = keep_resident_mib.map(|mib| (mib as usize) << 20);
    let executor = WasmExecutor::new(config)?;
    let listener = skiff_shims::host::bind(socket).await?;
    tracing::info!(socket = %socket.display(), pooling = executor.pooling(), "wasm host listening");
    println!("{READY_LINE}");
    skiff_shims::host::serve_on(listener, executor).await;
    Ok(())
}
