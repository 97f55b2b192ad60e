//! The holder of a pod's shared PID namespace (`shareProcessNamespace: true`), as
//! Kubernetes' pause container is: PID 1 of the namespace, which every Linux container
//! of the pod joins, so they see each other's processes. It reaps the orphans the kernel
//! hands it and does nothing else; the namespace, and every process in it, ends with it.
//!
//! `skiff pod-init` (hidden) makes it: the process unshares a PID namespace, forks its
//! first member, prints that child's pid as the node sees it, and exits. The child,
//! reparented to the node's init like a daemon, lives until it is killed.

use std::io::{self, BufRead as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::ForkResult;

/// A holder's identity: its pid and its start time (clock ticks after boot), so a reused
/// pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Pid on the node.
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`.
    pub start_ticks: u64,
}

impl Holder {
    /// The namespace to join: `/proc/PID/ns/pid`.
    pub fn namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    /// Whether this holder still runs.
    pub fn alive(&self) -> bool {
        super::shim::start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Ends the holder, and with it every process of the namespace.
    pub fn kill(&self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }

    /// As written in a record file: `PID START_TICKS`.
    pub fn to_record(&self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks)
    }

    /// Parses [`Holder::to_record`]'s text.
    pub fn from_record(text: &str) -> Option<Holder> {
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        let start_ticks = parts.next()?.parse().ok()?;
        Some(Holder { pid, start_ticks })
    }
}

/// Starts a holder by running `exe pod-init`.
pub fn spawn(exe: &Path) -> io::Result<Holder> {
    let mut child = Command::new(exe)
        .arg("pod-init")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        io::BufReader::new(out).read_line(&mut line)?;
    }
    let status = child.wait()?;
    let pid: i32 = match line.trim().parse() {
        Ok(pid) if status.success() => pid,
        _ => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(io::Error::other(format!(
                "pod-init failed ({status}): {}",
                err.trim()
            )));
        }
    };
    let start_ticks = super::shim::start_ticks(pid)
        .ok_or_else(|| io::Error::other(format!("the PID namespace holder {pid} is gone")))?;
    Ok(Holder { pid, start_ticks })
}

/// `skiff pod-init`; see the module's documentation.
pub fn main() -> i32 {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("pod-init: unshare(CLONE_NEWPID): {e}");
        return 1;
    }
    // The new namespace's first process is this one's next child.
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            0
        }
        Ok(ForkResult::Child) => hold(),
        Err(e) => {
            eprintln!("pod-init: fork: {e}");
            1
        }
    }
}

/// PID 1 of the pod's namespace: out of the caller's session and directories, its
/// output closed, children reaped by the kernel (SIGCHLD ignored), sleeping for good.
fn hold() -> ! {
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    #[allow(unsafe_code)]
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    loop {
        nix::unistd::pause();
    }
}
