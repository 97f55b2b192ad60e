//! The agent's side of an exec: starts `skiff container-exec` ([`super::exec`]) for a
//! running container and hands its streams to the caller (pipes, or a terminal's master
//! received on a console socket), its end as a [`Report`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::exec::Report;
use crate::Error;
use crate::executor::ErrorKind;

/// How long the container's process may take to open its terminal.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a terminal already sent by an exec that ended may take to be accepted (it
/// is queued on the socket by then; this only bounds the look).
const ENDED_GRACE: Duration = Duration::from_millis(200);

/// The subcommand of the `skiff` executable that runs an exec.
pub const EXEC_SUBCOMMAND: &str = "container-exec";

/// The streams of an exec'd process.
pub enum ExecIo {
    /// Without a terminal: stdin, stdout and stderr pipes.
    Pipes {
        /// The process's stdin.
        stdin: ChildStdin,
        /// Its stdout.
        stdout: ChildStdout,
        /// Its stderr.
        stderr: ChildStderr,
    },
    /// With one: its master (read for output, written for input; stderr goes there too).
    Terminal(Terminal),
}

/// A terminal's master side.
pub struct Terminal {
    master: OwnedFd,
}

impl Terminal {
    /// A reader and a writer of the terminal, usable at the same time.
    pub fn split(&self) -> std::io::Result<(tokio::fs::File, tokio::fs::File)> {
        let r = std::fs::File::from(self.master.try_clone()?);
        let w = std::fs::File::from(self.master.try_clone()?);
        Ok((tokio::fs::File::from_std(r), tokio::fs::File::from_std(w)))
    }

    /// Sets the terminal's size, as a client's resize asks.
    pub fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        let ws = rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, ws).map_err(std::io::Error::from)
    }
}

/// Stops an exec (see [`ExecSession::pid`]).
#[derive(Clone, Copy, Debug)]
pub struct ExecPid(Option<u32>);

impl ExecPid {
    /// Asks the helper to kill the exec'd process.
    pub fn kill(self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// A running exec.
pub struct ExecSession {
    child: Child,
    report: PathBuf,
    /// Its streams (taken by the caller).
    pub io: Option<ExecIo>,
}

impl ExecSession {
    /// Starts `argv` in the container of bundle `dir`, with a terminal if `tty`.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        argv: &[String],
        tty: bool,
    ) -> Result<ExecSession, Error> {
        let internal = |m: String| {
            Error::Oci(super::OciError::Failed {
                kind: ErrorKind::Internal,
                message: m,
            })
        };
        if !dir.join("config.json").exists() {
            return Err(Error::Oci(super::OciError::Failed {
                kind: ErrorKind::NotFound,
                message: "the container is not running".into(),
            }));
        }
        let tag = unique();
        let report = dir.join(format!("exec-{tag}.report"));
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(EXEC_SUBCOMMAND).arg("--report").arg(&report);
        let listener = if tty {
            let sock = dir.join(format!("exec-{tag}.sock"));
            let l = tokio::net::UnixListener::bind(&sock)
                .map_err(|e| internal(format!("console socket {}: {e}", sock.display())))?;
            cmd.arg("--console-socket").arg(&sock);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Some((l, sock))
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        };
        cmd.arg(dir).arg("--").args(argv).kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| internal(format!("starting {}: {e}", exe.display())))?;
        let io = match listener {
            None => ExecIo::Pipes {
                stdin: child
                    .stdin
                    .take()
                    .ok_or_else(|| internal("no stdin pipe".into()))?,
                stdout: child
                    .stdout
                    .take()
                    .ok_or_else(|| internal("no stdout pipe".into()))?,
                stderr: child
                    .stderr
                    .take()
                    .ok_or_else(|| internal("no stderr pipe".into()))?,
            },
            Some((l, sock)) => {
                let got = tokio::select! {
                    biased;
                    r = tokio::time::timeout(TERMINAL_TIMEOUT, receive_master(&l)) => r,
                    _ = child.wait() => {
                        // A quick command may have sent its terminal and ended already:
                        // the terminal waits in the socket, its output in the terminal.
                        match tokio::time::timeout(ENDED_GRACE, receive_master(&l)).await {
                            Ok(Ok(master)) => Ok(Ok(master)),
                            // The exec failed before opening a terminal: its report says why.
                            _ => {
                                let _ = std::fs::remove_file(&sock);
                                return Err(Error::Oci(super::OciError::Failed {
                                    kind: ErrorKind::ContainerCannotRun,
                                    message: failure(&read_report(&report)),
                                }));
                            }
                        }
                    }
                };
                let _ = std::fs::remove_file(&sock);
                match got {
                    Ok(Ok(master)) => ExecIo::Terminal(Terminal { master }),
                    Ok(Err(e)) => return Err(internal(format!("receiving the terminal: {e}"))),
                    Err(_) => return Err(internal("the process opened no terminal".into())),
                }
            }
        };
        Ok(ExecSession {
            child,
            report,
            io: Some(io),
        })
    }

    /// Stops the process (when the client went away).
    pub fn kill(&self) {
        self.pid().kill();
    }

    /// A handle that stops the process, usable while [`ExecSession::wait`] runs. Use it
    /// only until `wait` returns (the helper's pid is free for reuse after that).
    pub fn pid(&self) -> ExecPid {
        ExecPid(self.child.id())
    }

    /// Waits for the process to end and says how.
    pub async fn wait(&mut self) -> Report {
        let _ = self.child.wait().await;
        read_report(&self.report)
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.report);
    }
}

fn failure(r: &Report) -> String {
    match r {
        Report::Failed(m) => m.clone(),
        Report::Exited(c) => format!("the process exited with {c} before opening a terminal"),
    }
}

fn read_report(path: &Path) -> Report {
    let r = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| Report::Failed("the exec helper stopped without a report".into()));
    let _ = std::fs::remove_file(path);
    r
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Accepts the container's connection on the console socket and takes the terminal
/// master it sends (SCM_RIGHTS).
async fn receive_master(listener: &tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (stream, _) = listener.accept().await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TERMINAL_TIMEOUT))?;
    tokio::task::spawn_blocking(move || {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut name = [0u8; 64];
        recvmsg(
            &stream,
            &mut [std::io::IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::empty(),
        )?;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg
                && let Some(fd) = fds.next()
            {
                return Ok(fd);
            }
        }
        Err(std::io::Error::other("no terminal was sent"))
    })
    .await
    .map_err(std::io::Error::other)?
}
