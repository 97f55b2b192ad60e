//! Running the apiserver: open the store, prepare credentials, serve HTTPS until told to
//! stop, then shut down cleanly (watches closed, in-flight requests answered, the store
//! writer drained).

use crate::apiserver::{self, Api};
use crate::auth::Auth;
use crate::pki::{self, Credentials};
use crate::store::{RedbStore, StoreConfig, StoreError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// State directory (store, credentials, kubeconfig).
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port.
    pub port: u16,
}

/// Failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Credentials could not be prepared.
    #[error("credentials: {0}")]
    Pki(#[from] pki::PkiError),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Listening failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Bootstrapping built-in objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The names the serving certificate covers.
fn sans(bind: IpAddr) -> Vec<String> {
    let mut v = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bind.is_unspecified() {
        v.push(bind.to_string());
    }
    if let Some(h) = hostname() {
        v.push(h);
    }
    v.sort();
    v.dedup();
    v
}

fn tls_config(creds: &Credentials) -> Result<rustls::ServerConfig, ServerError> {
    let certs = rustls_pemfile::certs(&mut creds.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut creds.key_pem.as_bytes())
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .ok_or_else(|| ServerError::Tls("no private key in server.key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its credentials.
    pub credentials: Credentials,
    /// The API state.
    pub api: Arc<Api>,
    /// The API itself, for in-process clients ([`crate::client::in_process`]).
    pub router: axum::Router,
}

/// Run the server until `stop` resolves. `ready` is called once it accepts requests.
pub async fn run(
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(&Running),
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::Pki(pki::PkiError::Io {
            path: config.data_dir.clone(),
            source: e,
        })
    })?;
    let store = Arc::new(RedbStore::open(StoreConfig::new(
        config.data_dir.join("store.redb"),
    ))?);
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    let url_host = if config.bind.is_unspecified() {
        "127.0.0.1".to_string()
    } else if config.bind.is_ipv6() {
        format!("[{}]", config.bind)
    } else {
        config.bind.to_string()
    };
    let creds = pki::ensure(
        &config.data_dir,
        &sans(config.bind),
        &format!("https://{url_host}:{}", addr.port()),
    )?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&creds)?));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let metrics_store = store.clone();
    let api = Api::with_metrics(
        store.clone(),
        Auth::from_credentials(&creds),
        shutdown_rx,
        Box::new(move || metrics_store.metrics_text()),
    );
    api.bootstrap()
        .await
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    api.resume_namespace_deletions().await;
    let router = apiserver::router(api.clone());
    ready(&Running {
        addr,
        credentials: creds.clone(),
        api: api.clone(),
        router: router.clone(),
    });

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http2().max_concurrent_streams(1000);
        b
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                let service = TowerToHyperService::new(router.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    tracing::info!("shutting down: closing watches and finishing requests");
    let _ = shutdown_tx.send(true);
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10s");
    }
    drop(router);
    drop(api);
    // The store's writer thread commits what is queued and exits when the last handle
    // goes; do that off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    tracing::info!("stopped");
    Ok(())
}
