//! `hostPort`s of Linux containers: until pod networking brings DNAT, a port on the node
//! is served by the agent, which connects each client to the container's port on the
//! pod's loopback, from a socket made inside the pod's network namespace. (Wasm
//! containers need none of this: the Wasm host listens on their hostPorts itself.)

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpStream};

/// Listens on `host` and forwards each connection to `127.0.0.1:port` inside `netns`.
/// Runs until the returned task is aborted (the pod ends) — the listener closes with it.
pub async fn forward(
    host: SocketAddr,
    netns: PathBuf,
    port: u16,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(host).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let netns = netns.clone();
            tokio::spawn(async move {
                let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                match connect_in(&netns, target).await {
                    Ok(mut upstream) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => {
                        tracing::debug!(%host, error = %e, "hostPort: container port not reachable")
                    }
                }
            });
        }
    }))
}

/// A TCP connection to `target` as seen from inside `netns`: the socket is created on a
/// short-lived thread that joined the namespace (a socket belongs to its creator's
/// namespace for life), then connected from tokio.
async fn connect_in(netns: &Path, target: SocketAddrV4) -> io::Result<TcpStream> {
    let netns = netns.to_path_buf();
    let socket = std::thread::Builder::new()
        .name("netns-socket".into())
        .spawn(move || -> io::Result<tokio::net::TcpSocket> {
            let ns = std::fs::File::open(&netns)?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns into {}: {e}", netns.display())))?;
            tokio::net::TcpSocket::new_v4()
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace helper thread panicked"))??;
    socket.connect(SocketAddr::V4(target)).await
}
