//! Kubernetes clients for Skiff's own components (scheduler, controllers, node agent).
//!
//! They are ordinary API clients: [`in_process`] talks to the apiserver of the same
//! process through its [`Router`] (the same authentication, validation and store path as
//! any HTTPS request, without TLS and sockets), [`from_kubeconfig`] to any apiserver,
//! Skiff's or Kubernetes', over HTTPS, and [`with_token`] to a Skiff apiserver with a
//! node credential that [`join`] obtained:
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_api::client::ClientError> {
//! let token = std::fs::read_to_string("/var/lib/skiff/node-token").unwrap_or_default();
//! let creds = skiff_api::client::join("https://10.0.0.1:6443", &token, "edge-1").await?;
//! let client = skiff_api::client::with_token(&creds.server_url, &creds.ca_pem, &creds.token)?;
//! # let _ = client; Ok(()) }
//! ```

use crate::https::{self, HttpsError};
use crate::token::{self, JoinToken, TokenError};
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::Full;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Failures building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The token cannot go in a header.
    #[error("the bearer token contains characters a header cannot hold")]
    BadToken,
    /// The server URL is not `https://host[:port]`.
    #[error("server URL {url:?}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The join token is malformed.
    #[error(transparent)]
    JoinToken(#[from] TokenError),
    /// The server's CA is not the one the join token names: a wrong server, or someone
    /// in between.
    #[error(
        "refusing to join {url}: its CA certificate has SHA-256 {served}, but the join token \
         expects {expected} (wrong server, a server with a new CA, or someone in between)"
    )]
    CaMismatch {
        /// The server URL.
        url: String,
        /// The hash in the join token.
        expected: String,
        /// The hash of what the server served.
        served: String,
    },
    /// The CA certificate served is unusable.
    #[error("the CA certificate from {url}: {message}")]
    BadCa {
        /// The server URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTPS exchange failed.
    #[error(transparent)]
    Https(#[from] HttpsError),
    /// The server refused (its `Status` message).
    #[error("{url} answered {code}: {message}")]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The server's answer is not what the protocol says.
    #[error("unexpected answer from {url}: {message}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The kube client could not be built.
    #[error("kube client: {0}")]
    Kube(String),
}

/// What a node needs to call the apiserver: its address, the CA to trust and the node's
/// own credential; and what the apiserver presents when it calls the node. An agent
/// keeps this (not the join token) in its state directory.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    /// The CA certificate (PEM), checked against the join token's hash.
    pub ca_pem: String,
    /// The node credential (`skiff-node.<name>.<secret>`).
    pub token: String,
    /// The apiserver URL, as given to [`join`].
    pub server_url: String,
    /// The token the apiserver presents to this node's logs endpoint.
    pub logs_token: String,
    /// The node's name.
    #[serde(default)]
    pub node_name: String,
}

/// How long each step of joining may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

impl ClientError {
    /// Whether trying again later may succeed: the server could not be reached, did not
    /// answer in time, or answered with a server-side error (5xx). A refusal (a bad
    /// token, a CA mismatch) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Https(
                HttpsError::Connect { .. } | HttpsError::Timeout { .. } | HttpsError::Http { .. },
            ) => true,
            ClientError::Refused { code, .. } => *code >= 500,
            _ => false,
        }
    }
}

/// Largest `/cacerts` or join answer read.
const JOIN_ANSWER_LIMIT: usize = 1024 * 1024;

fn host_port(server_url: &str) -> Result<(String, u16), ClientError> {
    let bad = |message: &str| ClientError::BadUrl {
        url: server_url.to_string(),
        message: message.to_string(),
    };
    let uri: http::Uri = server_url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https://"));
    }
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(443)))
}

fn refusal(url: &str, code: http::StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Refused {
        url: url.to_string(),
        code: code.as_u16(),
        message,
    }
}

/// Join the cluster at `server_url` as node `node_name`: fetch the CA from `/cacerts`
/// (without trusting it yet), check it against the hash in `join_token`
/// (`skiff1.<hash>.<secret>`, what the server wrote to `DATA_DIR/node-token`), then,
/// trusting only that CA, trade the token for the node's credential at `/skiff/v1/join`.
pub async fn join(
    server_url: &str,
    join_token: &str,
    node_name: &str,
) -> Result<NodeCredentials, ClientError> {
    let join_token = join_token.trim();
    let parsed = JoinToken::parse(join_token)?;
    let (host, port) = host_port(server_url)?;
    let base = server_url.trim_end_matches('/');

    let url = format!("{base}/cacerts");
    let req = Request::get("/cacerts")
        .body(Full::new(Bytes::new()))
        .map_err(HttpsError::from)?;
    let insecure = Arc::new(https::unverified_client_config()?);
    let (code, body) =
        https::fetch(&host, port, insecure, req, JOIN_TIMEOUT, JOIN_ANSWER_LIMIT).await?;
    if code != http::StatusCode::OK {
        return Err(refusal(&url, code, &body));
    }
    let served = token::sha256_hex(&body);
    if !token::same_secret(served.as_bytes(), parsed.ca_sha256.as_bytes()) {
        return Err(ClientError::CaMismatch {
            url: base.to_string(),
            expected: parsed.ca_sha256,
            served,
        });
    }
    let ca_pem = String::from_utf8(body.to_vec()).map_err(|_| ClientError::BadCa {
        url: base.to_string(),
        message: "not UTF-8 text".into(),
    })?;
    let trusted = https::ca_client_config(&ca_pem).map_err(|e| ClientError::BadCa {
        url: base.to_string(),
        message: e.to_string(),
    })?;

    let url = format!("{base}/skiff/v1/join");
    let payload = serde_json::to_vec(&serde_json::json!({"nodeName": node_name})).map_err(|e| {
        ClientError::BadAnswer {
            url: url.clone(),
            message: e.to_string(),
        }
    })?;
    let auth = HeaderValue::from_str(&format!("Bearer {join_token}"))
        .map_err(|_| ClientError::BadToken)?;
    let req = Request::post("/skiff/v1/join")
        .header(header::AUTHORIZATION, auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(HttpsError::from)?;
    let (code, body) = https::fetch(
        &host,
        port,
        Arc::new(trusted),
        req,
        JOIN_TIMEOUT,
        JOIN_ANSWER_LIMIT,
    )
    .await?;
    if code != http::StatusCode::OK {
        return Err(refusal(&url, code, &body));
    }
    let answer = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    let field = |k: &str| {
        answer[k]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(String::from)
            .ok_or_else(|| ClientError::BadAnswer {
                url: url.clone(),
                message: format!("no {k:?} in the answer"),
            })
    };
    Ok(NodeCredentials {
        ca_pem,
        token: field("token")?,
        logs_token: field("logsToken")?,
        server_url: base.to_string(),
        node_name: node_name.to_string(),
    })
}

/// A client for the apiserver at `server_url`, trusting the CA in `ca_pem` and
/// authenticating with the bearer `token` (a node credential from [`join`]).
pub fn with_token(
    server_url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<kube::Client, ClientError> {
    let uri: http::Uri =
        server_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::BadUrl {
                url: server_url.to_string(),
                message: e.to_string(),
            })?;
    host_port(server_url)?;
    HeaderValue::from_str(token).map_err(|_| ClientError::BadToken)?;
    let roots = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::BadCa {
            url: server_url.to_string(),
            message: e.to_string(),
        })?;
    if roots.is_empty() {
        return Err(ClientError::BadCa {
            url: server_url.to_string(),
            message: "the PEM holds no certificate".into(),
        });
    }
    let mut cfg = kube::Config::new(uri);
    cfg.root_cert = Some(roots);
    cfg.auth_info.token = Some(secrecy::SecretString::from(token.to_string()));
    kube::Client::try_from(cfg).map_err(|e| ClientError::Kube(e.to_string()))
}

/// A client for the apiserver behind `router`, authenticating with `token`.
pub fn in_process(router: Router, token: &str) -> Result<kube::Client, ClientError> {
    let auth =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::BadToken)?;
    let service = router.map_request(move |mut req: Request<kube::client::Body>| {
        req.headers_mut()
            .insert(header::AUTHORIZATION, auth.clone());
        req.map(axum::body::Body::new)
    });
    Ok(kube::Client::new(service, "default"))
}

/// A client from a kubeconfig file (its current context).
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let err = |message: String| ClientError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_servers_and_server_errors_are_worth_retrying() {
        let connect = ClientError::Https(HttpsError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert!(connect.is_transient());
        let refused = |code| ClientError::Refused {
            url: "https://x/skiff/v1/join".into(),
            code,
            message: String::new(),
        };
        assert!(refused(503).is_transient());
        assert!(!refused(401).is_transient());
        assert!(!refused(403).is_transient());
        assert!(!ClientError::BadToken.is_transient());
    }
}
