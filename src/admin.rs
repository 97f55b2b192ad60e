//! The admin's commands over the API: join tokens (`skiff token`), node credentials
//! (`skiff node`), and kubeconfigs for new users (`skiff kubeconfig create`). Each is an
//! ordinary API client of the admin kubeconfig: the credentials are Secrets in
//! `kube-system` holding hashes ([`skiff_api::auth::credentials`]).

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use skiff_api::auth::credentials::{self, NAMESPACE};
use skiff_api::token::{self, JoinToken};
use std::path::Path;

/// The cluster CA and server URL of a kubeconfig's current context.
fn cluster_of(kubeconfig: &Path) -> anyhow::Result<(String, String)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .context("the kubeconfig has no current context")?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig's context names no cluster")?;
    let ca_b64 = cluster
        .certificate_authority_data
        .context("the kubeconfig's cluster has no certificate-authority-data")?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .context("certificate-authority-data is not base64")?;
    let server = cluster
        .server
        .context("the kubeconfig's cluster has no server")?;
    Ok((String::from_utf8(ca).context("the CA is not text")?, server))
}

/// The cluster CA (PEM) of a kubeconfig's current context.
pub fn cluster_ca(kubeconfig: &Path) -> anyhow::Result<String> {
    Ok(cluster_of(kubeconfig)?.0)
}

fn secrets(client: &kube::Client) -> Api<Secret> {
    Api::namespaced(client.clone(), NAMESPACE)
}

fn parse_ttl(ttl: &str) -> anyhow::Result<Option<String>> {
    if ttl == "0" || ttl.is_empty() {
        return Ok(None);
    }
    let d: jiff::SignedDuration = ttl
        .parse()
        .with_context(|| format!("--ttl {ttl:?} is not a duration like 24h or 30m"))?;
    if d.is_negative() || d.is_zero() {
        bail!("--ttl must be positive (0 for a token that does not expire)");
    }
    let at = jiff::Timestamp::now()
        .checked_add(d)
        .context("--ttl is too long")?;
    Ok(Some(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

/// `skiff token create`: a new join token; prints it (the only time it can be read).
pub async fn token_create(kubeconfig: &Path, ttl: &str, description: &str) -> anyhow::Result<()> {
    let (ca, _) = cluster_of(kubeconfig)?;
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let expiration = parse_ttl(ttl)?;
    let (id, secret) = token::new_join_secret();
    let obj: Secret = serde_json::from_value(credentials::join_token_object(
        &id,
        &secret,
        expiration.as_deref(),
        description,
    ))?;
    secrets(&client)
        .create(&PostParams::default(), &obj)
        .await
        .context("storing the join token")?;
    println!("{}", JoinToken::new(ca.as_bytes(), &secret));
    Ok(())
}

/// `skiff token list`: the join tokens, without their secrets.
pub async fn token_list(kubeconfig: &Path) -> anyhow::Result<()> {
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let list = secrets(&client)
        .list(&ListParams::default().fields(&format!("type={}", credentials::JOIN_TOKEN_TYPE)))
        .await
        .context("listing join tokens")?;
    println!("{:<10} {:<10} {:<22} DESCRIPTION", "ID", "TTL", "EXPIRES");
    let now = jiff::Timestamp::now();
    for s in list.items {
        let v = serde_json::to_value(&s)?;
        let id = credentials::field(&v, "token-id").unwrap_or_default();
        let exp = credentials::field(&v, "expiration");
        let (ttl, expires) = match exp
            .as_deref()
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        {
            None => ("<forever>".to_string(), "<never>".to_string()),
            Some(t) if t <= now => ("<expired>".to_string(), t.to_string()),
            Some(t) => {
                let left = t.duration_since(now).as_secs();
                let ttl = if left >= 3600 {
                    format!("{}h", left / 3600)
                } else {
                    format!("{}m", left.max(60) / 60)
                };
                (ttl, t.to_string())
            }
        };
        let desc = credentials::field(&v, "description").unwrap_or_default();
        println!("{id:<10} {ttl:<10} {expires:<22} {desc}");
    }
    Ok(())
}

/// `skiff token delete ID`: joins with that token are refused from now on.
pub async fn token_delete(kubeconfig: &Path, id: &str) -> anyhow::Result<()> {
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let id = match JoinToken::parse(id) {
        Ok(t) => token::join_token_id(&t.secret).to_string(),
        Err(_) => id.to_string(),
    };
    secrets(&client)
        .delete(&credentials::join_token_name(&id), &DeleteParams::default())
        .await
        .with_context(|| format!("deleting join token {id}"))?;
    println!("join token \"{id}\" deleted");
    Ok(())
}

/// `skiff node revoke NAME`: the node's credential stops working at once. What is left is
/// a tombstone that keeps the name held (even if the Node is deleted) until the admin
/// approves a machine taking it (`skiff node approve`).
pub async fn node_revoke(kubeconfig: &Path, node: &str) -> anyhow::Result<()> {
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let api = secrets(&client);
    let name = credentials::node_credential_name(node);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).with_context(|| format!("revoking the credential of node {node}")),
    }
    let mut obj = credentials::node_credential_object(node, "");
    obj["metadata"]["annotations"] = serde_json::json!({credentials::REVOKED_ANNOTATION: "true"});
    api.create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await
        .with_context(|| format!("keeping node {node}'s name held"))?;
    println!(
        "node \"{node}\": credential revoked. To let a machine join under this name again: skiff node approve {node}"
    );
    Ok(())
}

/// `skiff node approve NAME`: the next join for this name may take it over.
pub async fn node_approve(kubeconfig: &Path, node: &str) -> anyhow::Result<()> {
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let api = secrets(&client);
    let name = credentials::node_credential_name(node);
    let patch = serde_json::json!({"metadata": {"annotations": {credentials::APPROVED_ANNOTATION: "true"}}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            // No credential (revoked, or a Node the admin made): a placeholder that only
            // carries the approval; it authenticates nobody.
            let mut obj = credentials::node_credential_object(node, "");
            obj["metadata"]["annotations"] =
                serde_json::json!({credentials::APPROVED_ANNOTATION: "true"});
            api.create(&PostParams::default(), &serde_json::from_value(obj)?)
                .await
                .with_context(|| format!("approving a join as node {node}"))?;
        }
        Err(e) => return Err(e).with_context(|| format!("approving a join as node {node}")),
    }
    println!("node \"{node}\": the next join under this name is approved");
    Ok(())
}

/// `skiff kubeconfig create USER`: a user token and a kubeconfig that uses it, printed
/// or written to `out`.
pub async fn kubeconfig_create(
    kubeconfig: &Path,
    user: &str,
    groups: &[String],
    ttl: &str,
    namespace: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if user.is_empty() || user.starts_with("system:") {
        bail!("the user name must not be empty or start with \"system:\" (reserved)");
    }
    if let Some(g) = groups.iter().find(|g| g.is_empty() || g.contains(',')) {
        bail!("group {g:?}: group names must not be empty or hold commas");
    }
    let (ca, server) = cluster_of(kubeconfig)?;
    let client = skiff_api::client::from_kubeconfig(kubeconfig).await?;
    let expiration = parse_ttl(ttl)?;
    let (id, _) = token::new_join_secret();
    let (tok, hash) = token::new_credential(token::USER_TOKEN_PREFIX, &id);
    let obj = credentials::user_token_object(&id, user, groups, &hash, expiration.as_deref());
    secrets(&client)
        .create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await
        .context("storing the user token")?;
    let text = skiff_api::pki::kubeconfig_for(&ca, &server, user, &tok, namespace);
    match out {
        Some(p) => {
            skiff_api::pki::write_private(p, text.as_bytes())?;
            eprintln!(
                "wrote {} for user {user:?} (token {id}; revoke: kubectl -n {NAMESPACE} delete secret {})",
                p.display(),
                credentials::user_token_name(&id)
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
