//! Kubernetes clients for Skiff's own components (scheduler, controllers, node agent).
//!
//! They are ordinary API clients: [`in_process`] talks to the apiserver of the same
//! process through its [`Router`] (the same authentication, validation and store path as
//! any HTTPS request, without TLS and sockets), [`from_kubeconfig`] to any apiserver,
//! Skiff's or Kubernetes', over HTTPS.

use axum::Router;
use http::{HeaderValue, Request, header};
use std::path::Path;
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
