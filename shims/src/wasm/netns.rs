//! Listening sockets and outgoing connections inside a network namespace.
//!
//! A socket belongs to the namespace of the thread that created it, for life. So a
//! pod's containerPort is bound on a short-lived helper thread that first joins the pod's
//! namespace (`setns(CLONE_NEWNET)`); the socket is then served from tokio like any other.
//! The helper is a dedicated thread, never a pooled one: a thread that has switched
//! namespace must not go on to do anything else.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Binds a non-blocking listener at `addr`, inside `netns` if given.
pub(crate) fn bind(addr: SocketAddr, netns: Option<&Path>) -> io::Result<TcpListener> {
    let Some(netns) = netns else {
        return bind_here(addr);
    };
    let netns: PathBuf = netns.to_owned();
    std::thread::Builder::new()
        .name("netns-bind".into())
        .spawn(move || {
            let ns = File::open(&netns).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("network namespace {}: {e}", netns.display()),
                )
            })?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns into {}: {e}", netns.display())))?;
            bind_here(addr)
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace helper thread panicked"))?
}

fn bind_here(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A TCP connection to `addr` as seen from inside `netns`: the socket is made on a
/// short-lived thread that joined the namespace (a socket stays in its creator's
/// namespace for life), then connected from tokio.
pub async fn connect_in(netns: &Path, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let netns: PathBuf = netns.to_path_buf();
    let v6 = addr.is_ipv6();
    let socket = std::thread::Builder::new()
        .name("netns-socket".into())
        .spawn(move || -> io::Result<tokio::net::TcpSocket> {
            let ns = File::open(&netns)?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns into {}: {e}", netns.display())))?;
            if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            }
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace helper thread panicked"))??;
    socket.connect(addr).await
}
