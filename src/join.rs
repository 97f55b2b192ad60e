//! How `skiff agent` gets its credential: the one it keeps in its state directory, or,
//! on the first start (or after a revocation the admin approved), by joining with a join
//! token. The join token is used once and not kept.

use anyhow::{Context, bail};
use skiff_api::client::{self, NodeCredentials};
use std::path::{Path, PathBuf};

/// Where the agent keeps its credential (mode 0600).
pub fn credential_file(data_dir: &Path) -> PathBuf {
    data_dir.join("pki").join("node-credential.json")
}

fn load(path: &Path) -> Option<NodeCredentials> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(c) => Some(c),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "unreadable node credential; joining again");
            None
        }
    }
}

fn save(path: &Path, c: &NodeCredentials) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        skiff_api::pki::private_dir(dir)?;
    }
    let text = serde_json::to_vec_pretty(c)?;
    skiff_api::pki::write_private(path, &text)?;
    Ok(())
}

/// Whether the server still takes `c` (`false` on a 401: revoked or replaced). Waits for
/// an unreachable server like a join does.
async fn accepted(c: &NodeCredentials) -> anyhow::Result<Option<bool>> {
    use k8s_openapi::api::core::v1::Node;
    let kube = client::with_token(&c.server_url, &c.ca_pem, &c.token)?;
    let nodes: kube::Api<Node> = kube::Api::all(kube);
    let mut delay = std::time::Duration::from_secs(1);
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    loop {
        match nodes.get_opt(&c.node_name).await {
            Ok(_) => return Ok(Some(true)),
            Err(kube::Error::Api(s)) if s.code == 401 => return Ok(Some(false)),
            Err(kube::Error::Api(s)) if s.code < 500 => {
                bail!("the server refused this node's credential: {}", s.message)
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot reach the server yet; waiting for it");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(None),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// This node's credential and an API client using it; `None` when asked to stop while
/// waiting for the server.
pub async fn credentials(
    server: &str,
    token_file: Option<&Path>,
    node_name: &str,
    data_dir: &Path,
) -> anyhow::Result<Option<(NodeCredentials, kube::Client)>> {
    let path = credential_file(data_dir);
    let server = server.trim_end_matches('/');
    if let Some(c) = load(&path).filter(|c| c.server_url == server && c.node_name == node_name) {
        match accepted(&c).await? {
            None => return Ok(None),
            Some(true) => {
                let kube = client::with_token(&c.server_url, &c.ca_pem, &c.token)?;
                return Ok(Some((c, kube)));
            }
            Some(false) => {
                tracing::warn!(
                    node = node_name,
                    "the server no longer accepts this node's credential (revoked or replaced)"
                );
                if token_file.is_none() {
                    bail!(
                        "the server refuses node {node_name}'s credential (revoked?): ask the admin to \
                         approve a rejoin (`skiff node approve {node_name}`), then start with --token-file"
                    );
                }
            }
        }
    }
    let Some(token_file) = token_file else {
        bail!(
            "node {node_name} has no credential for {server} in {} yet: start with --token-file \
             (a join token from `skiff token create`, or the server's DATA_DIR/node-token)",
            path.display()
        );
    };
    let join_token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the join token {}", token_file.display()))?;
    let Some(c) = join_until_reached(server, join_token.trim(), node_name)
        .await
        .with_context(|| format!("joining {server} as node {node_name}"))?
    else {
        return Ok(None);
    };
    save(&path, &c).with_context(|| format!("saving the node credential to {}", path.display()))?;
    tracing::info!(
        node = node_name,
        credential = %path.display(),
        "joined; the join token is no longer needed on this machine"
    );
    let kube = client::with_token(&c.server_url, &c.ca_pem, &c.token)?;
    Ok(Some((c, kube)))
}

/// Joins the cluster, waiting for an unreachable server (an edge node may boot before
/// its uplink) with back-off up to 30 s; a refusal ends it at once. `None` when asked to
/// stop while waiting.
async fn join_until_reached(
    server: &str,
    join_token: &str,
    node_name: &str,
) -> Result<Option<NodeCredentials>, client::ClientError> {
    let mut delay = std::time::Duration::from_secs(1);
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    loop {
        match client::join(server, join_token, node_name).await {
            Ok(creds) => return Ok(Some(creds)),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, retry_in = ?delay, "cannot join the server yet; waiting for it");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(None),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}
