//! The ServiceAccount and root-CA publisher controllers in one reconciler per namespace:
//! every namespace that is not terminating has the ServiceAccount `default` and the
//! ConfigMap `kube-root-ca.crt` holding the cluster CA (what a pod's projected API
//! access volume reads), put back if deleted or changed.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The ConfigMap every namespace gets.
pub const ROOT_CA: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    client: Client,
    ca_pem: Option<String>,
}

/// What a namespace lacks: `(default ServiceAccount missing, CA ConfigMap data to
/// write)`. Pure, for the table test.
pub fn missing(
    terminating: bool,
    has_default_sa: bool,
    ca_data: Option<&str>,
    want_ca: Option<&str>,
) -> (bool, Option<String>) {
    if terminating {
        return (false, None);
    }
    let ca = want_ca
        .filter(|want| ca_data != Some(*want))
        .map(String::from);
    (!has_default_sa, ca)
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let has_sa = sas.get_opt("default").await?.is_some();
    let current = cms.get_opt(ROOT_CA).await?;
    let ca_data = current
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("ca.crt"))
        .cloned();
    let (need_sa, write_ca) = missing(
        terminating,
        has_sa,
        ca_data.as_deref(),
        ctx.ca_pem.as_deref(),
    );
    let pp = PostParams::default();
    // The CA first: once `default` exists, pods are admitted with a volume that reads
    // this ConfigMap, and it must be there when their node looks.
    if let Some(ca) = write_ca {
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CA, "annotations": {"kubernetes.io/description": DESCRIPTION}},
            "data": {"ca.crt": ca},
        });
        let result = if current.is_some() {
            cms.patch(ROOT_CA, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(|_| ())
        } else {
            let cm: ConfigMap = serde_json::from_value(body).unwrap_or_default();
            cms.create(&pp, &cm).await.map(|_| ())
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if need_sa {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"},
        }))
        .unwrap_or_default();
        match sas.create(&pp, &sa).await {
            Ok(_) => tracing::info!(namespace = %name, "created ServiceAccount default"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // A namespace going away refuses new content.
            Err(kube::Error::Api(s)) if s.code == 403 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

fn on_error(_ns: Arc<Namespace>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "serviceaccount reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Run until `stop` resolves. `ca_pem` is the cluster CA published in every namespace
/// (`None`: only the ServiceAccounts).
pub async fn run(
    client: Client,
    ca_pem: Option<String>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let sas: Api<ServiceAccount> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, ca_pem });
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            sas,
            watcher::Config::default().fields("metadata.name=default"),
            |sa: ServiceAccount| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .watches(
            cms,
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")),
            |cm: ConfigMap| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, on_error, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_gets_what_it_lacks_unless_it_is_going_away() {
        let ca = "-----BEGIN CERTIFICATE-----";
        assert_eq!(
            missing(false, false, None, Some(ca)),
            (true, Some(ca.into()))
        );
        assert_eq!(missing(false, true, Some(ca), Some(ca)), (false, None));
        assert_eq!(
            missing(false, true, Some("old"), Some(ca)),
            (false, Some(ca.into())),
            "a changed CA is put back"
        );
        assert_eq!(
            missing(false, false, None, None),
            (true, None),
            "no CA to publish"
        );
        assert_eq!(missing(true, false, None, Some(ca)), (false, None));
    }
}
