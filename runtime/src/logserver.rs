//! The agent's HTTPS endpoint the apiserver proxies `pods/log` to:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with kubectl's parameters.
//!
//! TLS with a self-signed certificate whose SHA-256 the agent publishes on its Node
//! (the apiserver pins it); requests must carry the node's logs token, which only this
//! node and the apiserver know (the node learns it when it joins).

use crate::pod::logs::{ContainerLogs, Follower, LogRegistry, Options, read_all, render};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use sha2::Digest;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Failures setting up the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum LogServerError {
    /// Certificate creation or loading failed.
    #[error("serving certificate: {0}")]
    Cert(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Listening failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The serving certificate and key (PEM), and the certificate's pin.
pub struct ServingCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
    /// Lowercase hex SHA-256 of the certificate's DER.
    pub pin: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LogServerError + '_ {
    move |source| LogServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Load the agent's serving certificate from `dir`, creating it on first start.
pub fn serving_cert(dir: &Path, names: &[String]) -> Result<ServingCert, LogServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (cert_path, key_path) = (dir.join("serving.crt"), dir.join("serving.key"));
    let (cert_pem, key_pem) = match (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        _ => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let ck = rcgen::generate_simple_self_signed(names.to_vec())
                .map_err(|e| LogServerError::Cert(e.to_string()))?;
            let (c, k) = (ck.cert.pem(), ck.signing_key.serialize_pem());
            for (p, text) in [(&key_path, &k), (&cert_path, &c)] {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(io(p))?;
                std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(p))?;
            }
            (c, k)
        }
    };
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| LogServerError::Cert("no certificate in serving.crt".into()))?;
    let pin = hex::encode(sha2::Sha256::digest(der.as_ref()));
    Ok(ServingCert {
        cert_pem,
        key_pem,
        pin,
    })
}

#[derive(Clone)]
struct LogState {
    registry: LogRegistry,
    token: Arc<String>,
}

pub(crate) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| skiff_api::token::same_secret(t.trim().as_bytes(), token.as_bytes()))
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

async fn container_logs(
    State(st): State<LogState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &st.token) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    }
    let Some(containers) = st.registry.get(&ns, &pod) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node"),
        );
    };
    let Some(c) = containers.containers.get(&container).cloned() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container {container} is not valid for pod {pod}"),
        );
    };
    let previous = flag(&q, "previous");
    let path = if previous {
        match &c.previous {
            Some(p) => p.clone(),
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
        }
    } else {
        match &c.current {
            Some(p) => p.clone(),
            None => {
                let why = c
                    .waiting
                    .clone()
                    .unwrap_or_else(|| "ContainerCreating".into());
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "container \"{container}\" in pod \"{pod}\" is waiting to start: {why}"
                    ),
                );
            }
        }
    };
    let since = match (q.get("sinceSeconds"), q.get("sinceTime")) {
        (Some(s), _) => s.parse::<i64>().ok().and_then(|s| {
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .ok()
        }),
        (None, Some(t)) => t.parse().ok(),
        _ => None,
    };
    let opts = Options {
        timestamps: flag(&q, "timestamps"),
        tail_lines: q.get("tailLines").and_then(|v| v.parse().ok()),
        since,
        limit_bytes: q.get("limitBytes").and_then(|v| v.parse().ok()),
    };
    let offset = Follower::size(&path);
    let first = render(&read_all(&path), &opts);
    let follow = flag(&q, "follow") && !previous;
    if !follow {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            first,
        )
            .into_response();
    }
    let ongoing = Options {
        timestamps: opts.timestamps,
        ..Default::default()
    };
    let mut budget = opts.limit_bytes.map(|l| l.saturating_sub(first.len()));
    let registry = st.registry.clone();
    let state = (Some(first), Follower::new(&path, offset), false);
    let stream = futures::stream::unfold(state, move |(first, mut follower, ended)| {
        let (registry, ns, pod, container, ongoing) = (
            registry.clone(),
            ns.clone(),
            pod.clone(),
            container.clone(),
            ongoing.clone(),
        );
        async move {
            if let Some(f) = first {
                return Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(f)),
                    (None, follower, ended),
                ));
            }
            if ended || budget == Some(0) {
                return None;
            }
            loop {
                let running = registry
                    .get(&ns, &pod)
                    .and_then(|m| {
                        m.containers
                            .get(&container)
                            .map(|c: &ContainerLogs| c.running)
                    })
                    .unwrap_or(false);
                let text = follower.poll();
                if !text.is_empty() {
                    let mut chunk = render(&text, &ongoing);
                    if let Some(b) = budget.as_mut() {
                        chunk.truncate(*b);
                        *b -= chunk.len();
                    }
                    return Some((Ok(bytes::Bytes::from(chunk)), (None, follower, !running)));
                }
                if !running {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The endpoint's router.
pub fn router(registry: LogRegistry, token: String) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .with_state(LogState {
            registry,
            token: Arc::new(token),
        })
}

/// Serve the endpoint on `listener` with `cert`, within `limits`, until the task is
/// dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: &ServingCert,
    router: Router,
    limits: skiff_api::listen::Limits,
) -> Result<(), LogServerError> {
    let certs = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LogServerError::Cert(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .map_err(|e| LogServerError::Cert(e.to_string()))?
        .ok_or_else(|| LogServerError::Cert("no private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LogServerError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| LogServerError::Cert(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let gate = Arc::new(skiff_api::listen::Gate::default());
    skiff_api::listen::serve_tls(
        listener,
        acceptor,
        router,
        limits,
        gate,
        std::future::pending(),
        Duration::ZERO,
    )
    .await;
    Ok(())
}
