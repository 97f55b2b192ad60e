//! Serving HTTPS to clients that may be hostile: the one accept loop of the apiserver and
//! the node agent's endpoint.
//!
//! A connection costs a task and a socket until it ends, so a client that opens many and
//! sends nothing (or half a request line, slowloris-style) could hold a server forever.
//! Each connection must finish its TLS handshake and each request's headers within a
//! deadline (hyper's header-read timeout), and connections are capped in total and per
//! client address: past a cap a new connection is closed at once, so one abusive
//! address cannot lock out the others.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client's address, in each request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// How much a server lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deadline for the TLS handshake and for each request's headers.
    pub header_read_timeout: Duration,
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 1024,
        }
    }
}

/// Counts open connections against [`Limits`].
#[derive(Debug, Default)]
pub struct Gate {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicU64,
    refused: AtomicU64,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    /// Admit a connection from `ip`, or refuse it (`None`) past either cap.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<Permit> {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = self.total.load(Ordering::Relaxed) as usize;
        let mine = m.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_connections || mine >= limits.max_connections_per_ip {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        m.insert(ip, mine + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            gate: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections refused so far for being past a cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut m = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `router` over TLS on `listener` within `limits` until `stop` resolves; then
/// stop accepting and give open connections up to `drain` to finish.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: Router,
    limits: Limits,
    gate: Arc<Gate>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        // An HTTP/2 client that stops answering pings is gone; free its connection.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(limits.header_read_timeout.max(Duration::from_secs(10)));
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = gate.enter(peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection refused: too many open connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut r: http::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(PeerAddr(peer));
                r
            },
        ));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let conn = watcher.watch(conn.into_owned());
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within {drain:?}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_gate_caps_in_total_and_per_address() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let gate = Arc::new(Gate::default());
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = gate.enter(a, &limits).unwrap();
        let _a2 = gate.enter(a, &limits).unwrap();
        assert!(gate.enter(a, &limits).is_none(), "per address");
        let b1 = gate.enter(b, &limits).unwrap();
        assert!(gate.enter(b, &limits).is_none(), "in total");
        assert_eq!((gate.open(), gate.refused()), (3, 2));
        drop(b1);
        drop(a1);
        let _a3 = gate.enter(a, &limits).unwrap();
        let _b2 = gate.enter(b, &limits).unwrap();
        assert_eq!(gate.open(), 3);
    }
}
