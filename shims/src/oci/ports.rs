//! `hostPort`s of a Linux container, served by its shim until pod networking brings
//! DNAT: the shim listens on the node and connects each client to the container's port on
//! the pod's loopback. Living in the shim, the ports outlive the agent like the container.
//!
//! Blocking threads (a listener each, two per connection, at most [`MAX_CONNECTIONS`]
//! connections), so the shim needs no async runtime; connections into the pod are made by
//! one thread that joined the pod's network namespace, since a socket belongs to its
//! creator's namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use nix::sched::{CloneFlags, setns};

use crate::executor::HostPort;

/// Connections forwarded at once over all of a container's hostPorts.
pub const MAX_CONNECTIONS: usize = 256;

type ConnectRequest = (u16, mpsc::Sender<io::Result<TcpStream>>);

/// The bound hostPorts of a container, not served yet.
pub struct Bound(Vec<(TcpListener, u16)>);

/// Binds every hostPort, before the container starts (so a taken port fails the start
/// cleanly) and without starting a thread (libcontainer forks the shim next).
pub fn bind(ports: &[HostPort]) -> io::Result<Bound> {
    let mut listeners = Vec::new();
    for p in ports {
        let l = TcpListener::bind(p.host)
            .map_err(|e| io::Error::new(e.kind(), format!("hostPort {}: {e}", p.host)))?;
        listeners.push((l, p.container_port));
    }
    Ok(Bound(listeners))
}

/// Serves the ports on background threads for the shim's life.
pub fn serve(bound: Bound, netns: &Path) -> io::Result<()> {
    let Bound(listeners) = bound;
    if listeners.is_empty() {
        return Ok(());
    }
    let connector = connector(netns.to_path_buf())?;
    let active = Arc::new(AtomicUsize::new(0));
    for (listener, port) in listeners {
        let connector = connector.clone();
        let active = active.clone();
        std::thread::Builder::new()
            .name("hostport".into())
            .spawn(move || accept_loop(listener, port, connector, active))?;
    }
    Ok(())
}

/// A thread inside the pod's network namespace that makes connections on request.
fn connector(netns: PathBuf) -> io::Result<mpsc::Sender<ConnectRequest>> {
    let (tx, rx) = mpsc::channel::<ConnectRequest>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let joined = std::fs::File::open(&netns).and_then(|ns| {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("setns into {}: {e}", netns.display())))
            });
            let ok = joined.is_ok();
            let _ = ready_tx.send(joined);
            if !ok {
                return;
            }
            for (port, reply) in rx {
                let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                let _ = reply.send(TcpStream::connect(target));
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the namespace thread ended"))??;
    Ok(tx)
}

fn accept_loop(
    listener: TcpListener,
    port: u16,
    connector: mpsc::Sender<ConnectRequest>,
    active: Arc<AtomicUsize>,
) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue; // dropped: the client sees the connection close
        }
        let (tx, rx) = mpsc::channel();
        if connector.send((port, tx)).is_err() {
            return;
        }
        let upstream = match rx.recv() {
            Ok(Ok(s)) => s,
            _ => {
                active.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
        };
        let active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("hostport-conn".into())
            .spawn(move || {
                splice(client, upstream);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            // Out of threads: that connection is dropped, the others go on.
            continue;
        }
    }
}

/// Copies both ways until each side has closed its half.
fn splice(client: TcpStream, upstream: TcpStream) {
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, upstream);
    let _ = io::copy(&mut c, &mut u);
    let _ = u.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}
