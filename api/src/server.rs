//! Running the apiserver: open the store, prepare credentials, serve HTTPS until told to
//! stop, then shut down cleanly (watches closed, in-flight requests answered, the store
//! writer drained).

use crate::apiserver::{self, Api};
use crate::auth::Auth;
use crate::listen::{self, Gate, Limits};
use crate::pki::{self, Credentials};
use crate::store::seal::{self, Sealer};
use crate::store::{RedbStore, StoreConfig, StoreError};
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
    /// Header-read timeout and connection caps.
    pub limits: Limits,
    /// The node of an agent embedded in the server process: its name is claimed and its
    /// credential issued before the server accepts a connection.
    pub local_node: Option<String>,
    /// Write an audit log here.
    pub audit: Option<crate::audit::AuditConfig>,
    /// The Pod Security enforce level new namespaces are labelled with.
    pub pod_security_default: crate::podsecurity::Level,
    /// Where Services' ClusterIPs come from.
    pub service_cidr: ipnet::Ipv4Net,
    /// More names and addresses the serving certificate covers (`--tls-san`), besides
    /// localhost, the bind address and the host name.
    pub tls_sans: Vec<String>,
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

/// The store file of a data directory.
pub fn store_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.redb")
}

/// The file holding the keys Secrets are sealed with at rest.
pub fn encryption_key_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("pki").join("encryption-keys")
}

/// What `skiff secrets rotate-key` did.
#[derive(Debug)]
pub struct Rotated {
    /// The new key's name.
    pub key: String,
    /// Secrets now sealed with it.
    pub secrets: usize,
}

/// Seal every stored Secret with a new key and drop the old ones (`skiff secrets
/// rotate-key`). The server must be stopped: the store file is opened exclusively. A
/// crash at any step leaves every Secret readable: the old keys are dropped only once
/// everything is sealed with the new one.
pub fn rotate_encryption_key(data_dir: &std::path::Path) -> Result<Rotated, ServerError> {
    let keys = encryption_key_file(data_dir);
    let store_path = store_file(data_dir);
    let be = |e: seal::SealError| ServerError::Store(StoreError::Backend(e.to_string()));
    if !store_path.exists() {
        return Err(ServerError::Store(StoreError::Backend(format!(
            "no store at {}: is this the server's data directory?",
            store_path.display()
        ))));
    }
    // Refuse before touching the key file if a server holds the store.
    drop(open_exclusive(&store_path, &keys)?);
    let key = seal::add_primary_key(&keys).map_err(be)?;
    let store = open_exclusive(&store_path, &keys)?;
    let secrets = store.count_prefix("core/secrets/");
    drop(store);
    seal::drop_old_keys(&keys).map_err(be)?;
    Ok(Rotated { key, secrets })
}

fn open_exclusive(
    store: &std::path::Path,
    keys: &std::path::Path,
) -> Result<RedbStore, ServerError> {
    let sealer = Sealer::load_or_create(keys)
        .map_err(|e| ServerError::Store(StoreError::Backend(e.to_string())))?;
    RedbStore::open(StoreConfig::new(store).with_sealer(Arc::new(sealer))).map_err(|e| match e {
        StoreError::Backend(m) if m.contains("already open") || m.contains("lock") => {
            ServerError::Store(StoreError::Backend(format!(
                "{}: the store is in use (stop `skiff server` first): {m}",
                store.display()
            )))
        }
        e => ServerError::Store(e),
    })
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The names the serving certificate covers.
fn sans(bind: IpAddr, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    v.extend(extra.iter().cloned());
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
    /// The credentials of [`ServerConfig::local_node`].
    pub local_node: Option<crate::client::NodeCredentials>,
}

/// Run the server until `stop` resolves. `ready` is called once it accepts requests.
pub async fn run(
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(&Running),
) -> Result<(), ServerError> {
    pki::private_dir(&config.data_dir)?;
    pki::private_dir(&config.data_dir.join("pki"))?;
    let sealer = Sealer::load_or_create(&encryption_key_file(&config.data_dir))
        .map_err(|e| ServerError::Store(StoreError::Backend(e.to_string())))?;
    let store = Arc::new(RedbStore::open(
        StoreConfig::new(store_file(&config.data_dir)).with_sealer(Arc::new(sealer)),
    )?);
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
        &sans(config.bind, &config.tls_sans),
        &format!("https://{url_host}:{}", addr.port()),
    )?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&creds)?));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let metrics_store = store.clone();
    let gate = Arc::new(Gate::default());
    let metrics_gate = gate.clone();
    let api = Api::with_metrics(
        store.clone(),
        Auth::from_credentials(&creds),
        shutdown_rx,
        Box::new(move || {
            let mut text = metrics_store.metrics_text();
            text.push_str(&format!(
                "# HELP skiff_apiserver_open_connections Client connections open now.\n\
                 # TYPE skiff_apiserver_open_connections gauge\n\
                 skiff_apiserver_open_connections {}\n\
                 # HELP skiff_apiserver_refused_connections_total Connections closed at once for being past a connection cap.\n\
                 # TYPE skiff_apiserver_refused_connections_total counter\n\
                 skiff_apiserver_refused_connections_total {}\n",
                metrics_gate.open(),
                metrics_gate.refused()
            ));
            text
        }),
    );
    if let Some(a) = &config.audit {
        let log = crate::audit::AuditLog::open(a.clone()).map_err(|source| {
            ServerError::Pki(pki::PkiError::Io {
                path: a.path.clone(),
                source,
            })
        })?;
        api.enable_audit(log);
    }
    api.set_service_cidr(config.service_cidr);
    api.bootstrap()
        .await
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    api.follow_store();
    // After the bootstrap: the system namespaces stay unlabelled (privileged).
    api.set_pod_security_default(config.pod_security_default);
    let local_node = match &config.local_node {
        Some(n) => {
            let (token, logs_token) = api
                .issue_node_credential(n)
                .await
                .map_err(|e| ServerError::Bootstrap(format!("the credential of node {n}: {e}")))?;
            Some(crate::client::NodeCredentials {
                ca_pem: creds.ca_pem.clone(),
                token,
                server_url: format!("https://{url_host}:{}", addr.port()),
                logs_token,
                node_name: n.clone(),
            })
        }
        None => None,
    };
    api.resume_namespace_deletions().await;
    let router = apiserver::router(api.clone());
    ready(&Running {
        addr,
        credentials: creds.clone(),
        api: api.clone(),
        router: router.clone(),
        local_node,
    });

    listen::serve_tls(
        listener,
        tls,
        router.clone(),
        config.limits,
        gate,
        async move {
            stop.await;
            tracing::info!("shutting down: closing watches and finishing requests");
            let _ = shutdown_tx.send(true);
        },
        Duration::from_secs(10),
    )
    .await;
    drop(router);
    drop(api);
    // The store's writer thread commits what is queued and exits when the last handle
    // goes; do that off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    tracing::info!("stopped");
    Ok(())
}
