//! The OCI executor: Linux containers on youki's libcontainer, behind the same
//! [`Executor`] trait as the Wasm host.
//!
//! Each container has a shim ([`shim`]): a process in a session of its own, forked by the
//! node's container host ([`zygote`]), that creates the container, is its parent and
//! writes how it ended. The executor (in the agent) has shims started, watches them
//! through pidfds (they are not its children: a restarted agent re-adopts running
//! containers from their bundle directories), signals containers to stop, and turns a
//! shim's death into an exit.
//!
//! ```text
//! <root>/<id>/request.json   the ContainerSpec (written here)
//!            /started.json   shim and init pids, start time (written by the shim)
//!            /exit.json      how it ended (written by the shim)
//! ```

pub mod exec;
pub mod pause;
pub mod ports;
pub mod session;
pub mod shim;
pub mod spec;
pub mod zygote;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};

use crate::Error;
use crate::executor::{
    ContainerInfo, ContainerSpec, ContainerState, EXIT_KILLED, ErrorKind, Executor, ExitEvent,
    ExitReason, ExitStatus, WorkloadKind,
};
use shim::{Exited, Started, StartedInfo, files};

/// How long a shim may take to report that its container started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Failures of the OCI executor.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The container could not be started or handled; `kind` says whose fault it is.
    #[error("{message}")]
    Failed {
        /// How to report it.
        kind: ErrorKind,
        /// Why.
        message: String,
    },
}

impl OciError {
    /// How the agent should report it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OciError::Failed { kind, .. } => *kind,
        }
    }

    fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::Oci(OciError::Failed {
            kind,
            message: message.into(),
        })
    }
}

/// The `skiff` executable, whose hidden subcommands run the container host
/// (`container-host`), clean up after a dead shim (`container-shim --delete DIR`) and
/// exec into containers (`container-exec`).
#[derive(Clone, Debug)]
pub struct ShimCommand {
    /// The executable.
    pub exe: PathBuf,
}

/// `None` while the container runs, then how it ended.
type ExitWatch = watch::Receiver<Option<Exited>>;

struct Entry {
    dir: PathBuf,
    digest: String,
    started_at: jiff::Timestamp,
    /// The container's init, while it may still run.
    init: Option<Arc<OwnedFd>>,
    /// `None` while running.
    exit: watch::Receiver<Option<Exited>>,
}

struct Inner {
    root: PathBuf,
    shim: ShimCommand,
    host: zygote::Client,
    exits: broadcast::Sender<ExitEvent>,
    containers: Mutex<HashMap<String, Entry>>,
}

/// The node's Linux containers. Cheap to clone.
#[derive(Clone)]
pub struct OciExecutor {
    inner: Arc<Inner>,
}

/// The bundle directory name of container `id` (`/` is not allowed in libcontainer ids).
fn dir_name(id: &str) -> String {
    id.replace('/', "_")
}

impl OciExecutor {
    /// The executor for bundles under `root`; containers whose shims still run are adopted,
    /// those whose shims died while no agent watched are cleaned up and reported exited.
    pub async fn open(root: &Path, shim: ShimCommand) -> Result<OciExecutor, Error> {
        std::fs::create_dir_all(root).map_err(|e| {
            OciError::error(ErrorKind::Internal, format!("{}: {e}", root.display()))
        })?;
        let (exits, _) = broadcast::channel(1024);
        let ex = OciExecutor {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                host: zygote::Client::new(&shim.exe),
                shim,
                exits,
                containers: Mutex::new(HashMap::new()),
            }),
        };
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            ex.adopt(&entry.path()).await;
        }
        Ok(ex)
    }

    /// The bundle directory of running container `id`.
    fn running_dir(&self, id: &str) -> Result<PathBuf, Error> {
        match self.lock().get(id) {
            Some(e) if e.init.is_some() && e.exit.borrow().is_none() => Ok(e.dir.clone()),
            _ => Err(OciError::error(
                ErrorKind::NotFound,
                format!("container {id} is not running"),
            )),
        }
    }

    /// Starts `argv` in the running container `id` (with a terminal if `tty`), as
    /// `skiff container-exec`.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        tty: bool,
    ) -> Result<session::ExecSession, Error> {
        let dir = self.running_dir(id)?;
        session::ExecSession::start(&self.inner.shim.exe, &dir, argv, tty).await
    }

    /// The write end of the stdin of running container `id`, if it was started with
    /// `stdin` (what `kubectl attach -i` writes to); `None` if it reads `/dev/null`.
    pub fn stdin(&self, id: &str) -> Result<Option<tokio::net::unix::pipe::Sender>, Error> {
        let dir = self.running_dir(id)?;
        let fifo = dir.join(files::STDIN);
        if !fifo.exists() {
            return Ok(None);
        }
        tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&fifo)
            .map(Some)
            .map_err(|e| OciError::error(ErrorKind::Internal, format!("{}: {e}", fifo.display())))
    }

    /// Exit events from now on. Subscribe first, then `list()`, so no exit falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.inner.exits.subscribe()
    }

    async fn adopt(&self, dir: &Path) {
        let Ok(request) = std::fs::read(dir.join(files::REQUEST)) else {
            let _ = std::fs::remove_dir_all(dir);
            return;
        };
        let Ok(spec) = serde_json::from_slice::<ContainerSpec>(&request) else {
            let _ = std::fs::remove_dir_all(dir);
            return;
        };
        let exited: Option<Exited> = read_json(&dir.join(files::EXIT));
        let started: Option<StartedInfo> = read_json(&dir.join(files::STARTED));
        let Some(started) = started else {
            // Never started (the agent died while it was being created).
            self.delete_bundle(dir).await;
            let _ = std::fs::remove_dir_all(dir);
            return;
        };
        if let Some(exited) = exited {
            let (_tx, rx) = watch::channel(Some(exited));
            self.insert(&spec.id, dir, &spec, started.started_at, None, rx);
            return;
        }
        match open_shim(&started, dir) {
            Some(shim_fd) => {
                tracing::info!(id = %spec.id, pid = started.shim_pid, "re-adopted a running container");
                let init = pidfd(started.init_pid).map(Arc::new);
                self.watch(&spec, dir, &started, shim_fd, init);
            }
            None => {
                // The shim died while no agent watched; the container may still run.
                let init = pidfd(started.init_pid).map(Arc::new);
                self.watch_dead(&spec, dir, started.started_at, init).await;
            }
        }
    }

    fn insert(
        &self,
        id: &str,
        dir: &Path,
        spec: &ContainerSpec,
        started_at: jiff::Timestamp,
        init: Option<Arc<OwnedFd>>,
        exit: watch::Receiver<Option<Exited>>,
    ) {
        self.lock().insert(
            id.to_string(),
            Entry {
                dir: dir.to_path_buf(),
                digest: spec.artifact.digest.clone(),
                started_at,
                init,
                exit,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches a running shim; on its end reads `exit.json`, or, if the shim died without
    /// writing it, kills and cleans up the container and reports that.
    fn watch(
        &self,
        spec: &ContainerSpec,
        dir: &Path,
        started: &StartedInfo,
        shim_fd: OwnedFd,
        init: Option<Arc<OwnedFd>>,
    ) {
        let (tx, rx) = watch::channel(None);
        self.insert(&spec.id, dir, spec, started.started_at, init.clone(), rx);
        let ex = self.clone();
        let id = spec.id.clone();
        let dir = dir.to_path_buf();
        tokio::spawn(async move {
            wait_readable(shim_fd).await;
            let exited = match read_json::<Exited>(&dir.join(files::EXIT)) {
                Some(e) => e,
                None => ex.shim_died(&dir, init.as_deref()).await,
            };
            ex.exited(&id, &tx, exited);
        });
    }

    async fn watch_dead(
        &self,
        spec: &ContainerSpec,
        dir: &Path,
        started_at: jiff::Timestamp,
        init: Option<Arc<OwnedFd>>,
    ) {
        let (tx, rx) = watch::channel(None);
        self.insert(&spec.id, dir, spec, started_at, None, rx);
        let exited = self.shim_died(dir, init.as_deref()).await;
        self.exited(&spec.id, &tx, exited);
    }

    async fn shim_died(&self, dir: &Path, init: Option<&OwnedFd>) -> Exited {
        tracing::warn!(dir = %dir.display(), "a container's shim stopped unexpectedly; killing the container");
        if let Some(fd) = init {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
        self.delete_bundle(dir).await;
        let exited = Exited {
            finished_at: jiff::Timestamp::now(),
            status: ExitStatus {
                code: EXIT_KILLED,
                reason: ExitReason::Error,
                message: "the container's shim stopped unexpectedly; the container was killed"
                    .into(),
            },
        };
        let _ = write_json(&dir.join(files::EXIT), &exited);
        exited
    }

    fn exited(&self, id: &str, tx: &watch::Sender<Option<Exited>>, exited: Exited) {
        if let Some(e) = self.lock().get_mut(id) {
            e.init = None;
        }
        let _ = tx.send(Some(exited.clone()));
        let _ = self.inner.exits.send(ExitEvent {
            id: id.to_string(),
            finished_at: exited.finished_at,
            status: exited.status,
        });
    }

    /// Runs `skiff container-shim --delete DIR` and waits for it.
    async fn delete_bundle(&self, dir: &Path) {
        let mut cmd = tokio::process::Command::new(&self.inner.shim.exe);
        cmd.args(["container-shim", "--delete"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match cmd.status().await {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!(dir = %dir.display(), status = %s, "container clean-up failed"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "container clean-up not started")
            }
        }
    }

    async fn start_shim(&self, dir: &Path) -> Result<(StartedInfo, OwnedFd), Error> {
        let internal = |what: &str, e: std::io::Error| {
            OciError::error(ErrorKind::Internal, format!("{what}: {e}"))
        };
        let log =
            std::fs::File::create(dir.join("shim.log")).map_err(|e| internal("shim log", e))?;
        let (reader, writer) = std::io::pipe().map_err(|e| internal("shim pipe", e))?;
        let shim_fd = self
            .inner
            .host
            .spawn(dir, writer.into(), log.into())
            .await
            .map_err(|e| internal("starting the container shim", e))?;
        // Our copy of the writing end is closed: the pipe ends when the shim's does.
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
            .map_err(|e| internal("shim pipe", e))?;
        let mut line = String::new();
        let read = tokio::time::timeout(
            START_TIMEOUT,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        if read.is_err() {
            return Err(OciError::error(
                ErrorKind::Internal,
                format!("the container shim did not report within {START_TIMEOUT:?}"),
            ));
        }
        match serde_json::from_str::<Started>(&line) {
            Ok(Started::Ok(info)) => Ok((info, shim_fd)),
            Ok(Started::Failed { kind, message }) => Err(OciError::error(kind, message)),
            Err(_) => {
                let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                Err(OciError::error(
                    ErrorKind::Internal,
                    format!("the container shim failed: {}", log.trim()),
                ))
            }
        }
    }

    fn state(&self, id: &str) -> Option<(Option<Arc<OwnedFd>>, ExitWatch)> {
        self.lock()
            .get(id)
            .map(|e| (e.init.clone(), e.exit.clone()))
    }
}

impl Executor for OciExecutor {
    fn handles(&self, _path: &Path) -> bool {
        true
    }

    async fn run(&self, spec: ContainerSpec) -> Result<ContainerInfo, Error> {
        if spec.oci.is_none() {
            return Err(OciError::error(
                ErrorKind::InvalidArtifact,
                "not a Linux container image",
            ));
        }
        if let Some((_, exit)) = self.state(&spec.id) {
            if exit.borrow().is_none() {
                return Err(OciError::error(ErrorKind::AlreadyExists, "already running"));
            }
            self.remove(&spec.id).await?;
        }
        let dir = self.inner.root.join(dir_name(&spec.id));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .and_then(|()| write_json(&dir.join(files::REQUEST), &spec))
            .map_err(|e| OciError::error(ErrorKind::Internal, format!("{}: {e}", dir.display())))?;
        let (started, shim_fd) = match self.start_shim(&dir).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let init = pidfd(started.init_pid).map(Arc::new);
        self.watch(&spec, &dir, &started, shim_fd, init);
        Ok(ContainerInfo {
            id: spec.id.clone(),
            kind: WorkloadKind::Oci,
            state: ContainerState::Running {
                started_at: started.started_at,
            },
            listening: Vec::new(),
            digest: spec.artifact.digest.clone(),
            usage: None,
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let Some((init, mut exit)) = self.state(id) else {
            return Ok(());
        };
        if exit.borrow().is_some() {
            return Ok(());
        }
        if let Some(fd) = &init {
            let sig = if grace.is_zero() {
                rustix::process::Signal::KILL
            } else {
                rustix::process::Signal::TERM
            };
            let _ = rustix::process::pidfd_send_signal(fd.as_ref(), sig);
        }
        let ended = tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_ok();
        if !ended {
            if let Some(fd) = &init {
                let _ =
                    rustix::process::pidfd_send_signal(fd.as_ref(), rustix::process::Signal::KILL);
            }
            let _ = exit.wait_for(Option::is_some).await;
        }
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, Error> {
        let Some((_, mut exit)) = self.state(id) else {
            return Err(OciError::error(
                ErrorKind::NotFound,
                format!("no container {id}"),
            ));
        };
        let done = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| OciError::error(ErrorKind::Internal, "the container's watcher ended"))?;
        Ok(done
            .as_ref()
            .map(|e| e.status.clone())
            .unwrap_or(ExitStatus {
                code: EXIT_KILLED,
                reason: ExitReason::Error,
                message: String::new(),
            }))
    }

    async fn remove(&self, id: &str) -> Result<(), Error> {
        self.stop(id, Duration::ZERO).await?;
        let dir = self.lock().remove(id).map(|e| e.dir);
        if let Some(dir) = dir {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, Error> {
        let map = self.lock();
        Ok(map
            .iter()
            .map(|(id, e)| ContainerInfo {
                id: id.clone(),
                kind: WorkloadKind::Oci,
                state: match e.exit.borrow().as_ref() {
                    None => ContainerState::Running {
                        started_at: e.started_at,
                    },
                    Some(x) => ContainerState::Exited {
                        started_at: e.started_at,
                        finished_at: x.finished_at,
                        status: x.status.clone(),
                    },
                },
                listening: Vec::new(),
                digest: e.digest.clone(),
                usage: None,
            })
            .collect())
    }
}

/// A pidfd for `pid`, if it still exists.
fn pidfd(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// A pidfd of the shim of `started`, if it still runs and is the shim of `dir` (not a
/// process that got its pid since).
fn open_shim(started: &StartedInfo, dir: &Path) -> Option<OwnedFd> {
    let fd = pidfd(started.shim_pid)?;
    // Opened first, checked second: a pid reused after the check cannot slip in.
    if let Some(ticks) = started.shim_start_ticks {
        return (shim::start_ticks(started.shim_pid) == Some(ticks)).then_some(fd);
    }
    // Recorded by a shim of an older agent, run as `skiff container-shim DIR`.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", started.shim_pid)).ok()?;
    let want = dir.as_os_str().as_encoded_bytes();
    let ours = cmdline.split(|b| *b == 0).any(|a| a == want);
    ours.then_some(fd)
}

/// Resolves when the process behind `pidfd` has ended.
async fn wait_readable(fd: OwnedFd) {
    // Deprecated because a borrowed descriptor could be closed under the reactor; an
    // `OwnedFd` moved into the `AsyncFd` cannot be, which is the safe use (and avoids the
    // `unsafe` of the replacement).
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
    match registered {
        Ok(a) => {
            let _ = a.readable().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot watch a pidfd; treating the process as gone"),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(&tmp, path)
}
