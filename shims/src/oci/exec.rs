//! `skiff container-exec`: runs one more process in a running container (what `kubectl
//! exec` and exec probes ask for), as a fresh single-threaded process, because
//! libcontainer's tenant builder forks the caller.
//!
//! The process joins the container's namespaces and cgroup and runs as the container's
//! own process does: its user and groups, capabilities, environment, working directory,
//! rlimits and `no_new_privs` come from the container's `config.json`, with only the
//! argv (and the terminal flag) replaced. libcontainer 0.7 leaves the container's seccomp
//! profile off exec'd processes; the [`Confined`] workload executor loads it just before
//! `execve`, which (with capabilities already dropped) takes `no_new_privs`, so an
//! exec'd process of a container with a profile always has it.
//!
//! Without a terminal the process inherits this process's stdin, stdout and stderr (the
//! agent's pipes). With one, libcontainer opens a pseudo-terminal inside the container
//! and sends its master to the console socket the agent listens on.
//!
//! How it ended goes to the report file as JSON ([`Report`]); SIGTERM, SIGINT or SIGHUP
//! to this process kills the exec'd one (the agent sends it when the client goes away).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde::{Deserialize, Serialize};

use crate::oci::shim::{files, libcontainer_id};

/// What `skiff container-exec` is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container's bundle directory.
    pub dir: PathBuf,
    /// The command, argv\[0\] first (looked up in the container's `PATH`).
    pub argv: Vec<String>,
    /// The console socket to send a terminal's master to; `None` runs without a terminal.
    pub console_socket: Option<PathBuf>,
    /// Where to write the [`Report`].
    pub report: PathBuf,
}

/// How an exec ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Report {
    /// The process ran and exited with this code (128 + N for signal N).
    Exited(i32),
    /// It could not be started (no such executable, the container is not running, ...).
    Failed(String),
}

/// The process of an exec: the container's own, with `argv` and the terminal flag.
pub fn exec_process(config: &Spec, argv: &[String], tty: bool) -> Result<Spec, String> {
    let mut spec = config.clone();
    let mut process = spec
        .process()
        .clone()
        .ok_or("the container's configuration has no process")?;
    if argv.is_empty() {
        return Err("no command given".into());
    }
    process.set_args(Some(argv.to_vec()));
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    spec.set_process(Some(process));
    Ok(spec)
}

/// Loads the container's seccomp profile in the exec'd process before `execve`.
#[derive(Clone)]
struct Confined {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for Confined {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // The helper blocks its stop signals from its start; the process must not keep
        // them blocked.
        stop_signals()
            .thread_unblock()
            .map_err(|e| ExecutorError::Other(format!("unblocking signals: {e}")))?;
        if let Some(profile) = &self.seccomp {
            // Capabilities are already dropped here, so the filter needs no_new_privs.
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| ExecutorError::Other(format!("no_new_privs: {e}")))?;
            libcontainer::seccomp::initialize_seccomp(profile)
                .map_err(|e| ExecutorError::Other(format!("seccomp: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Runs `skiff container-exec`; returns the process's exit code (0 once a report is
/// written). Must be called before the process starts any thread.
pub fn main(req: &ExecRequest) -> i32 {
    let report = match run(req) {
        Ok(code) => Report::Exited(code),
        Err(e) => Report::Failed(e),
    };
    let tmp = req.report.with_extension("tmp");
    let written = serde_json::to_vec(&report)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &req.report));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e}", req.report.display());
            1
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP: what stops an exec.
fn stop_signals() -> SigSet {
    let mut stops = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stops.add(sig);
    }
    stops
}

fn run(req: &ExecRequest) -> Result<i32, String> {
    // Blocked before the process starts, so a stop that comes while it is being made
    // waits for it (the process unblocks them in `Confined`) instead of ending this
    // helper and leaving the process behind.
    let stops = stop_signals();
    let signals = stops
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&stops, SfdFlags::SFD_CLOEXEC))
        .map_err(|e| format!("signalfd: {e}"))?;
    let config = Spec::load(req.dir.join("config.json"))
        .map_err(|e| format!("the container is not running (no configuration: {e})"))?;
    let tty = req.console_socket.is_some();
    let process = exec_process(&config, &req.argv, tty)?;
    let process_file = exec_file(&req.dir, "process.json");
    let process_json = serde_json::to_vec(
        process
            .process()
            .as_ref()
            .ok_or("the container's configuration has no process")?,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(&process_file, process_json).map_err(|e| e.to_string())?;
    let built = build(req, &config, &process_file, tty);
    let _ = std::fs::remove_file(&process_file);
    let pid = built?;
    wait_or_stop(pid, &signals)
}

/// Waits for the exec'd process; a stop signal (read from `signals`) kills it first.
fn wait_or_stop(pid: nix::unistd::Pid, signals: &SignalFd) -> Result<i32, String> {
    let child = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid.as_raw()).ok_or("no pid")?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| format!("pidfd: {e}"))?;
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(child.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let stop = fds[0].revents().is_some_and(|r| !r.is_empty());
        if stop {
            let _ = signals.read_signal();
            // Still our unreaped child, so the pid cannot have been reused.
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
    }
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the process: {e}")),
        }
    }
}

fn build(
    req: &ExecRequest,
    config: &Spec,
    process_file: &Path,
    tty: bool,
) -> Result<nix::unistd::Pid, String> {
    let seccomp = config.linux().as_ref().and_then(|l| l.seccomp().clone());
    ContainerBuilder::new(libcontainer_id(&req.dir), SyscallType::default())
        .with_root_path(req.dir.join(files::STATE))
        .map_err(|e| e.to_string())?
        .with_console_socket(req.console_socket.as_ref())
        .with_executor(Confined { seccomp })
        .as_tenant()
        .with_process(Some(process_file))
        // libcontainer asks a terminal to be "detached"; the process is our child either way.
        .with_detach(tty)
        .build()
        // libcontainer's nix is another version than ours.
        .map(|p| nix::unistd::Pid::from_raw(p.as_raw()))
        .map_err(|e| e.to_string())
}

/// A fresh file name in the bundle directory for one exec.
fn exec_file(dir: &Path, suffix: &str) -> PathBuf {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    dir.join(format!("exec-{}-{n:x}.{suffix}", std::process::id()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder, UserBuilder};

    #[test]
    fn an_exec_runs_as_the_container_process_with_its_own_argv() {
        let process = ProcessBuilder::default()
            .args(vec!["/bin/server".to_string()])
            .env(vec!["PATH=/bin".to_string(), "A=1".to_string()])
            .cwd("/srv")
            .user(
                UserBuilder::default()
                    .uid(65534u32)
                    .gid(65534u32)
                    .build()
                    .unwrap(),
            )
            .no_new_privileges(true)
            .build()
            .unwrap();
        let config = SpecBuilder::default().process(process).build().unwrap();
        let argv = vec!["cat".to_string(), "/etc/hostname".to_string()];
        let spec = exec_process(&config, &argv, true).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref(), Some(argv.as_slice()));
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.user().uid(), 65534);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(
            p.env().as_deref(),
            Some(["PATH=/bin".to_string(), "A=1".to_string()].as_slice())
        );
        assert!(exec_process(&config, &[], false).is_err());
    }

    #[test]
    fn reports_round_trip() {
        for r in [Report::Exited(3), Report::Failed("no such file".into())] {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Report>(&s).unwrap(), r);
        }
    }
}
