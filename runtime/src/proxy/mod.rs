//! The node's Service proxy (kube-proxy's job, in nftables mode): ClusterIP traffic
//! forwarded by the kernel to the ready endpoints of each Service.
//!
//! [`model`] turns Services and EndpointSlices into the ports to forward, [`nft`]
//! renders them as nftables transactions (the whole table, or what changed since the
//! last sync); both are pure. [`run`] watches the API and applies them with `nft -f -`.

pub mod model;
pub mod nft;

use std::process::Stdio;
use tokio::io::AsyncWriteExt as _;

/// Why a ruleset could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nft` could not be run.
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the transaction (nothing of it was applied).
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

/// Runs one `nft -f -` transaction.
pub async fn apply(transaction: &str) -> Result<(), ProxyError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ProxyError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(transaction.as_bytes())
            .await
            .map_err(ProxyError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(ProxyError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Watches Services and EndpointSlices and keeps the node's table in step, one
/// transaction per change (changes that come while one is applied are taken together).
/// A refused or failed transaction is retried a second later; the rules already in the
/// kernel stay meanwhile (and while the apiserver is out of reach).
pub async fn run(client: kube::Client, node: String, cfg: nft::Config) {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::{WatchStreamExt as _, reflector, watcher};
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    // The watches run as long as this sync does (a JoinSet aborts its tasks when dropped).
    let mut watches = tokio::task::JoinSet::new();
    let mut follow = |mut stream: futures::stream::BoxStream<'static, ()>| {
        let changed = changed.clone();
        watches.spawn(async move {
            while stream.next().await.is_some() {
                changed.notify_one();
            }
        });
    };
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(
            kube::Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|_| ())
    .boxed();
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(
            kube::Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|_| ())
    .boxed();
    follow(svc_events);
    follow(slice_events);
    if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        return;
    }
    // What the kernel holds as far as this proxy knows; `None`: unknown, write it whole.
    let mut applied: Option<nft::Rules> = None;
    loop {
        let ports = forwarded(&services.state(), &slices.state(), &node);
        let want = nft::Rules::of(&cfg, &ports);
        let text = match &applied {
            None => nft::full(&cfg, &want),
            Some(old) => nft::update(&cfg, old, &want),
        };
        if text.is_empty() {
            applied = Some(want);
        } else {
            let started = std::time::Instant::now();
            match apply(&text).await {
                Ok(()) => {
                    tracing::debug!(
                        table = %cfg.table,
                        ports = ports.len(),
                        full = applied.is_none(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "service rules applied"
                    );
                    applied = Some(want);
                }
                Err(e) => {
                    tracing::error!(table = %cfg.table, error = %e, "service rules not applied; retrying");
                    // The next attempt writes the table whole.
                    applied = None;
                    let again = changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        again.notify_one();
                    });
                }
            }
        }
        changed.notified().await;
    }
}

/// The ports of every Service, in a stable order, each with its own slices.
fn forwarded(
    services: &[std::sync::Arc<k8s_openapi::api::core::v1::Service>],
    slices: &[std::sync::Arc<k8s_openapi::api::discovery::v1::EndpointSlice>],
    node: &str,
) -> Vec<model::ServicePort> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let mut by_service: std::collections::HashMap<(&str, &str), Vec<&EndpointSlice>> =
        std::collections::HashMap::new();
    for s in slices {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut ports: Vec<model::ServicePort> = services
        .iter()
        .flat_map(|svc| {
            let key = (
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.as_deref().unwrap_or_default(),
            );
            let own = by_service.get(&key).map_or(&[][..], |v| v.as_slice());
            model::service_ports(svc, own, node)
        })
        .collect();
    ports.sort();
    ports
}
