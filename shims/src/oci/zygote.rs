//! The container host: one long-lived `skiff container-host` process that forks the
//! containers' shims. The agent starts it (an exec of the `skiff` binary, once) and asks
//! it for each container; a shim forked from it starts at once (no exec, no dynamic
//! loading, no relocation of the binary) and shares the host's pages copy-on-write, so it
//! costs memory only for what it writes. The host has no thread but its main one, so a
//! fork of it is as single-threaded as libcontainer needs its caller to be.
//!
//! Protocol, on a `SOCK_SEQPACKET` socket that is the host's stdin: the agent sends a
//! bundle directory's path with two descriptors, the shim's stdout and stderr; the host
//! answers with the shim's pid (4 bytes, little-endian) and a pidfd of it, or with an
//! error text and no descriptor. End of file on the socket ends the host; the shims are
//! in sessions of their own and outlive it, as they outlive the agent.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

/// The subcommand of the `skiff` binary that runs the host.
pub const SUBCOMMAND: &str = "container-host";

/// How long the agent waits for the host to answer (it answers right after a fork).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the container host on its stdin; returns the exit code. Must be called before
/// the process starts any thread.
pub fn main() -> i32 {
    match threads() {
        Some(1) => {}
        n => {
            eprintln!("container host: must start single-threaded, has {n:?} threads");
            return 1;
        }
    }
    let exited = match sigchld_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("container host: signalfd: {e}");
            return 1;
        }
    };
    let stdin = io::stdin();
    let socket = stdin.as_fd();
    loop {
        let mut fds = [
            PollFd::new(socket, PollFlags::POLLIN),
            PollFd::new(exited.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("container host: poll: {e}");
                return 1;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            while let Ok(Some(_)) = exited.read_signal() {}
            reap();
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        let (dir, stdout, stderr) = match receive(socket) {
            Ok(Some(request)) => request,
            // The agent went away.
            Ok(None) => return 0,
            Err(e) => {
                let _ = reply_err(socket, &format!("bad request: {e}"));
                continue;
            }
        };
        // SAFETY: this process has a single thread (checked above; nothing here starts
        // one), so the child is a complete copy that may run any code.
        #[allow(unsafe_code)]
        let forked = unsafe { nix::unistd::fork() };
        match forked {
            Ok(nix::unistd::ForkResult::Child) => {
                // Nothing of the host stays open in the shim: its socket (stdin) is
                // replaced, the signalfd and received descriptors closed.
                drop(exited);
                let code = shim_child(&dir, stdout, stderr);
                std::process::exit(code);
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop((stdout, stderr));
                // Our unreaped child: its pid cannot have been reused yet.
                let _ = match super::pidfd(child.as_raw()) {
                    Some(fd) => send_with_fds(socket, &child.as_raw().to_le_bytes(), &[fd.as_fd()]),
                    None => reply_err(socket, "no pidfd for the shim"),
                };
            }
            Err(e) => {
                let _ = reply_err(socket, &format!("fork: {e}"));
            }
        }
    }
}

/// SIGCHLD, blocked and read from a descriptor, so the loop can reap shims between
/// requests.
fn sigchld_fd() -> nix::Result<SignalFd> {
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    sigchld.thread_block()?;
    SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// In the forked child: standard streams from the request, signals as a fresh process
/// has them, then the shim.
fn shim_child(dir: &Path, stdout: OwnedFd, stderr: OwnedFd) -> i32 {
    let mut all = SigSet::empty();
    all.add(Signal::SIGCHLD);
    let streams = std::fs::File::open("/dev/null")
        .and_then(|null| Ok(rustix::stdio::dup2_stdin(&null)?))
        .and_then(|()| Ok(rustix::stdio::dup2_stdout(&stdout)?))
        .and_then(|()| Ok(rustix::stdio::dup2_stderr(&stderr)?))
        .and_then(|()| Ok(all.thread_unblock()?));
    drop((stdout, stderr));
    if let Err(e) = streams {
        eprintln!("container shim: setting up: {e}");
        return 1;
    }
    crate::oci::shim::main(dir)
}

/// Reaps every shim that has ended.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The number of threads of this process.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

type Request = (PathBuf, OwnedFd, OwnedFd);

/// Receives one message with up to two descriptors into `buf`; returns its length.
fn receive_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok((got.bytes, fds))
}

/// One request: `None` at end of file.
fn receive(socket: BorrowedFd<'_>) -> io::Result<Option<Request>> {
    let mut buf = vec![0u8; 8192];
    let (bytes, fds) = receive_with_fds(socket, &mut buf)?;
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(bytes);
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next(), buf.is_empty()) {
        (Some(out), Some(err), false) => Ok(Some((
            PathBuf::from(std::ffi::OsString::from_vec(buf)),
            out,
            err,
        ))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected a directory and two descriptors",
        )),
    }
}

/// Sends one message of `bytes` with `fds` attached.
fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// A refusal: its text, no descriptor.
fn reply_err(socket: BorrowedFd<'_>, message: &str) -> io::Result<()> {
    send_with_fds(socket, message.as_bytes(), &[])
}

/// The agent's side: starts the host when first needed (and again if it died) and asks
/// it for shims. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    exe: PathBuf,
    conn: Arc<Mutex<Option<Conn>>>,
}

struct Conn {
    socket: OwnedFd,
    child: Option<Child>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The socket closes after this, which ends the host; reap it off the caller's
        // thread.
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}

impl Client {
    /// A client for hosts run as `exe container-host`.
    pub fn new(exe: &Path) -> Client {
        Client {
            exe: exe.to_path_buf(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Has the host fork a shim for the bundle `dir` with these stdout and stderr;
    /// returns a pidfd of the shim, readable once it has ended.
    pub async fn spawn(&self, dir: &Path, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<OwnedFd> {
        let client = self.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || client.spawn_blocking(&dir, &stdout, &stderr))
            .await
            .map_err(io::Error::other)?
    }

    fn spawn_blocking(
        &self,
        dir: &Path,
        stdout: &OwnedFd,
        stderr: &OwnedFd,
    ) -> io::Result<OwnedFd> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let fds = [stdout.as_fd(), stderr.as_fd()];
        let request = |c: &Conn| send_with_fds(c.socket.as_fd(), dir.as_os_str().as_bytes(), &fds);
        let c = match conn.take() {
            Some(c) => c,
            None => self.start()?,
        };
        let c = match request(&c) {
            Ok(()) => c,
            // A host that died since the last request has not seen this one: start
            // another and ask it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::warn!("the container host had stopped; starting a new one");
                drop(c);
                let c = self.start()?;
                request(&c)?;
                c
            }
            Err(e) => return Err(e),
        };
        // A host that fails to answer is not asked again.
        let answer = read_reply(&c.socket)?;
        *conn = Some(c);
        Ok(answer)
    }

    fn start(&self) -> io::Result<Conn> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_TIMEOUT),
        )?;
        let child = Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting {} {SUBCOMMAND}: {e}", self.exe.display()),
                )
            })?;
        tracing::info!(pid = child.id(), "container host started");
        Ok(Conn {
            socket: ours,
            child: Some(child),
        })
    }
}

/// The host's answer: the shim's pid (4 bytes, for the log) and its pidfd.
fn read_reply(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let (bytes, fds) = receive_with_fds(socket.as_fd(), &mut buf)?;
    let pidfd = fds.into_iter().next();
    match (pidfd, bytes) {
        (Some(pidfd), 4) => {
            let pid = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            tracing::debug!(pid, "container shim forked");
            Ok(pidfd)
        }
        (_, 0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the container host stopped before answering",
        )),
        (_, n) => Err(io::Error::other(format!(
            "the container host: {}",
            String::from_utf8_lossy(&buf[..n])
        ))),
    }
}
