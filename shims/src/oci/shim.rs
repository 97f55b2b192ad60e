//! The container shim: one small process per container, the parent of its init process.
//! It mounts the root filesystem, has libcontainer create and start the container, writes
//! the container's output to its CRI log, serves its hostPorts, waits for it, records how
//! it ended, and cleans up. Containers so outlive the agent (the shim starts a session of
//! its own), and libcontainer's forks happen while the shim has no other thread, as
//! libcontainer needs (the log and port threads start once the container is created).
//!
//! The bundle directory it is given holds `request.json` (the [`ContainerSpec`]); the shim
//! adds `config.json`, `rootfs/` (overlay of the layers, writable layer in `upper/`),
//! `state/` (libcontainer's), `started.json` and, at the end, `exit.json`. Its first line
//! on stdout tells the agent whether the container started.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

use crate::executor::{ContainerSpec, EXIT_KILLED, ErrorKind, ExitReason, ExitStatus};
use crate::logs::{LogWriter, Stream};
use crate::oci::spec::{BindSource, HostFacts, runtime_spec};

/// What the shim says on its first stdout line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Started {
    /// The container runs.
    Ok(StartedInfo),
    /// It could not be started; nothing of it is left but the bundle's request.
    Failed {
        /// How the agent should report it.
        kind: ErrorKind,
        /// Why.
        message: String,
    },
}

/// A started container, as `started.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartedInfo {
    /// The shim's pid (the parent of the container's init).
    pub shim_pid: i32,
    /// When the shim started, in clock ticks since boot (`/proc/PID/stat`'s field 22):
    /// with the pid, it tells the shim from a later process given the same pid.
    #[serde(default)]
    pub shim_start_ticks: Option<u64>,
    /// The container's init process, as the host sees it.
    pub init_pid: i32,
    /// When it started.
    pub started_at: jiff::Timestamp,
}

/// How a container ended, as `exit.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    /// When it ended.
    pub finished_at: jiff::Timestamp,
    /// How.
    pub status: ExitStatus,
}

/// The files of a bundle directory.
pub(crate) mod files {
    pub const REQUEST: &str = "request.json";
    pub const STARTED: &str = "started.json";
    pub const EXIT: &str = "exit.json";
    pub const ROOTFS: &str = "rootfs";
    pub const UPPER: &str = "upper";
    pub const WORK: &str = "work";
    pub const STATE: &str = "state";
    /// The FIFO a container with `stdin: true` reads as its stdin.
    pub const STDIN: &str = "stdin";
}

/// When process `pid` started, in clock ticks since boot.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses itself.
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 22 of the whole line; `after` starts at field 3.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The libcontainer id of the container in `dir` (the bundle directory's name).
pub(crate) fn libcontainer_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs the shim for the bundle `dir` (`skiff container-shim DIR`); returns the process's
/// exit code. Must be called before the process starts any thread.
pub fn main(dir: &Path) -> i32 {
    // Out of the agent's session: a signal to its terminal or process group must not
    // reach the containers.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("setsid: {e}");
    }
    match start(dir) {
        Ok((started, container, logs)) => {
            say(&Started::Ok(started.clone()));
            let exited = supervise(dir, &started, logs);
            finish(dir, container, &exited);
            0
        }
        Err((kind, message)) => {
            cleanup(dir);
            say(&Started::Failed { kind, message });
            1
        }
    }
}

/// Removes what a container left (libcontainer state, cgroups, the root filesystem mount
/// and its writable layer), killing what still runs in it; `skiff container-shim --delete
/// DIR`, for a shim that died before doing it.
pub fn cleanup(dir: &Path) {
    let state = dir.join(files::STATE).join(libcontainer_id(dir));
    if state.exists() {
        match Container::load(state.clone()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    eprintln!("deleting container {}: {e}", state.display());
                }
            }
            Err(e) => eprintln!("loading container {}: {e}", state.display()),
        }
    }
    let rootfs = dir.join(files::ROOTFS);
    let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
    for d in [files::ROOTFS, files::UPPER, files::WORK, files::STATE] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
}

fn say(s: &Started) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, s);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

type StartError = (ErrorKind, String);

fn cannot_run(m: impl std::fmt::Display) -> StartError {
    (ErrorKind::ContainerCannotRun, m.to_string())
}

fn internal(m: impl std::fmt::Display) -> StartError {
    (ErrorKind::Internal, m.to_string())
}

fn start(
    dir: &Path,
) -> Result<(StartedInfo, Container, Vec<std::thread::JoinHandle<()>>), StartError> {
    let request = std::fs::read(dir.join(files::REQUEST)).map_err(internal)?;
    let spec: ContainerSpec = serde_json::from_slice(&request).map_err(internal)?;
    let oci = spec
        .oci
        .as_ref()
        .ok_or_else(|| internal("not a Linux container"))?;
    let rootfs = dir.join(files::ROOTFS);
    mount_rootfs(dir, &oci.layers)?;
    // Volumes are opened beneath their roots here and mounted by descriptor, so what was
    // checked is what the container gets.
    let mut opened = Vec::new();
    let mut binds = Vec::new();
    for m in &spec.mounts {
        let d = crate::mounts::open_beneath(&m.host_path, &m.sub_path, true)
            .map_err(|e| cannot_run(format!("volume for {}: {e}", m.guest_path)))?;
        binds.push(BindSource {
            source: d.proc_path(),
            destination: m.guest_path.clone(),
            read_only: m.read_only,
        });
        opened.push(d);
    }
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    let config = runtime_spec(
        &spec,
        &HostFacts {
            rootfs: rootfs.clone(),
            binds,
            nofile_hard: nofile,
        },
    )
    .map_err(internal)?;
    config.save(dir.join("config.json")).map_err(internal)?;

    let log = LogWriter::open(&spec.log).map_err(|e| cannot_run(format!("log file: {e}")))?;
    let ports = crate::oci::ports::bind(&oci.host_ports).map_err(cannot_run)?;
    let (out_r, out_w) = std::io::pipe().map_err(internal)?;
    let (err_r, err_w) = std::io::pipe().map_err(internal)?;
    let stdin = if oci.stdin {
        open_stdin_fifo(&dir.join(files::STDIN)).map_err(internal)?
    } else {
        File::open("/dev/null").map_err(internal)?
    };
    let state = dir.join(files::STATE);
    std::fs::create_dir_all(&state).map_err(internal)?;
    let mut container = ContainerBuilder::new(libcontainer_id(dir), SyscallType::default())
        .with_root_path(&state)
        .map_err(internal)?
        .with_stdin(stdin)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| cannot_run(format!("creating the container: {e}")))?;
    drop(opened);
    let pumps = vec![
        pump(out_r, log.clone(), Stream::Stdout),
        pump(err_r, log, Stream::Stderr),
    ];
    container
        .start()
        .map_err(|e| cannot_run(format!("starting the container: {e}")))?;
    // Threads only from here on: the container is created.
    if let Err(e) = crate::oci::ports::serve(ports, &oci.netns) {
        if let Ok(kill) = libcontainer::signal::Signal::try_from("SIGKILL") {
            let _ = container.kill(kill, true);
        }
        return Err(cannot_run(e));
    }
    let init_pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| internal("libcontainer reported no init pid"))?;
    let started = StartedInfo {
        shim_pid: std::process::id() as i32,
        shim_start_ticks: start_ticks(std::process::id() as i32),
        init_pid,
        started_at: jiff::Timestamp::now(),
    };
    write_atomic(&dir.join(files::STARTED), &started).map_err(internal)?;
    Ok((started, container, pumps))
}

/// The container's stdin: a FIFO (0600) it holds open for reading and writing, so it
/// never reads end-of-file between attaches (kubelet's `stdin: true` without
/// `stdinOnce`). An attaching client opens the FIFO for writing.
fn open_stdin_fifo(path: &Path) -> std::io::Result<File> {
    match rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    ) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

fn mount_rootfs(dir: &Path, layers: &[PathBuf]) -> Result<(), StartError> {
    if layers.is_empty() {
        return Err(cannot_run("the image has no layers"));
    }
    let rootfs = dir.join(files::ROOTFS);
    let upper = dir.join(files::UPPER);
    let work = dir.join(files::WORK);
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).map_err(internal)?;
    }
    // overlayfs lists the lower layers top first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(internal)?;
    rustix::mount::mount(
        "overlay",
        &rootfs,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| cannot_run(format!("mounting the root filesystem (overlay): {e}")))
}

/// Copies one of the container's output pipes into its log, line by line.
fn pump(
    mut from: std::io::PipeReader,
    log: LogWriter,
    stream: Stream,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = log.write(stream, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        log.finish();
    })
}

/// Waits for the container's init and says how it ended.
fn supervise(dir: &Path, started: &StartedInfo, pumps: Vec<std::thread::JoinHandle<()>>) -> Exited {
    let pid = nix::unistd::Pid::from_raw(started.init_pid);
    // The init is cloned with CLONE_PARENT and no exit signal: only __WALL sees it.
    let status = loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("waiting for the container's init: {e}");
                break (EXIT_KILLED, Some(nix::sys::signal::Signal::SIGKILL));
            }
        }
    };
    let finished_at = jiff::Timestamp::now();
    // In a PID namespace of its own, everything else in the container died with its init.
    // In the pod's shared one the rest lives on (the pod's holder inherits it): killed
    // here, as runc does, so the container ends whole. The pipes close once all are gone.
    let oci = requested_oci(dir);
    if let Some(oci) = oci.as_ref().filter(|o| o.pid_ns.is_some()) {
        kill_cgroup(&oci.cgroup);
    }
    for p in pumps {
        let _ = p.join();
    }
    let oom = oci.as_ref().is_some_and(oom_killed);
    let (code, signal) = status;
    let (reason, message) = if oom {
        (
            ExitReason::OomKilled,
            "the container went past its memory limit and was killed".to_string(),
        )
    } else if code == 0 {
        (ExitReason::Completed, String::new())
    } else {
        let m = signal
            .map(|s| format!("killed by signal {s}"))
            .unwrap_or_default();
        (ExitReason::Error, m)
    };
    Exited {
        finished_at,
        status: ExitStatus {
            code: if oom { EXIT_KILLED } else { code },
            reason,
            message,
        },
    }
}

/// The container's OCI options, from the request in its bundle.
fn requested_oci(dir: &Path) -> Option<crate::executor::OciOptions> {
    let request = std::fs::read(dir.join(files::REQUEST)).ok()?;
    serde_json::from_slice::<ContainerSpec>(&request).ok()?.oci
}

/// SIGKILLs every process in the cgroup at `path` until none is left (one may fork
/// while the others are killed).
fn kill_cgroup(path: &str) {
    use libcgroups::common::CgroupManager as _;
    let Ok(manager) = libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: path.trim_start_matches('/').into(),
        systemd_cgroup: false,
        container_name: String::new(),
    }) else {
        return;
    };
    for _ in 0..100 {
        match manager.get_all_pids() {
            Ok(pids) if !pids.is_empty() => {
                for pid in pids {
                    let pid = nix::unistd::Pid::from_raw(pid.as_raw());
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

/// Whether the kernel's OOM killer acted in the container's memory cgroup.
fn oom_killed(oci: &crate::executor::OciOptions) -> bool {
    let rel = oci.cgroup.trim_start_matches('/');
    let candidates = [
        (Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control")),
        (Path::new("/sys/fs/cgroup").join(rel).join("memory.events")),
    ];
    candidates.iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

fn finish(dir: &Path, mut container: Container, exited: &Exited) {
    if let Err(e) = write_atomic(&dir.join(files::EXIT), exited) {
        eprintln!("recording the exit: {e}");
    }
    if let Err(e) = container.delete(true) {
        eprintln!("deleting the container: {e}");
    }
    cleanup(dir);
}

/// Writes `value` whole or not at all, as far as any process can see (the rename). Not
/// synced to disk: what these files describe (a running container) does not outlive the
/// machine, and after a power cut a stale file names a process that is gone, which the
/// agent reads as an exit.
fn write_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    serde_json::to_writer(&mut f, value)?;
    std::fs::rename(&tmp, path)
}
