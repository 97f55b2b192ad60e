//! Skiff's controllers: the ReplicaSet, Deployment, Job and DaemonSet reconcilers that
//! turn those objects into Pods, the ServiceAccount controller that gives every namespace
//! its `default` ServiceAccount and the cluster CA ([`serviceaccounts`]), and the
//! ClusterRole aggregation controller ([`clusterroles`]) the node IPAM controller that
//! gives each Node a block of the cluster CIDR ([`nodeipam`]), and the EndpointSlice and
//! Endpoints controllers that list each Service's pods ([`endpoints`]), as ordinary API clients (in `skiff server`, or alone as
//! `skiff controllers --kubeconfig FILE`, against any Kubernetes-compatible apiserver).
//!
//! Start reading at [`run::run`]: it fills one shared cache per kind ([`cache`]: one
//! writer, many readers), routes each change to the controllers that care, and drives
//! one kube-runtime reconcile loop per kind. Each reconcile — [`replicaset::reconcile`],
//! [`deployment::reconcile`], [`job::reconcile`], [`daemonset::reconcile`] — has the kube-runtime shape
//! `reconcile(object, ctx) -> Action`: it compares what is with what should be and makes
//! one step, and running it twice is harmless because it waits until the caches show its
//! own earlier writes ([`expectations`]). The decisions themselves are pure functions with
//! table tests: [`pods::deletion_order`], [`deployment::rollout`],
//! [`deployment::hash::template_hash`], [`job::verdict`], [`daemonset::plan`].
//!
//! ```
//! use skiff_controllers::deployment::rollout::{fenceposts, new_replicas};
//! use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
//!
//! // 4 replicas, the default 25% / 25%: one extra pod, one missing pod at most.
//! let pct = IntOrString::String("25%".into());
//! let (surge, unavailable) = fenceposts(Some(&pct), Some(&pct), 4).expect("valid");
//! assert_eq!((surge, unavailable), (1, 1));
//! // With the 4 old pods still there, the new ReplicaSet may start 1 pod.
//! assert_eq!(new_replicas(4, surge, 4, 0), 1);
//! ```

#![warn(missing_docs)]
pub mod cache;
pub mod children;
pub mod clusterroles;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod job;
pub mod nodeipam;
pub mod pods;
pub mod replicaset;
pub mod run;
pub mod serviceaccounts;

pub use run::{Config, run};

/// Why a reconcile of any of the controllers failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object lacks a field every stored object of its kind has.
    #[error("{kind} without {field}")]
    Missing {
        /// The kind, as a message names it ("replica set").
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// Its selector cannot be used.
    #[error(transparent)]
    Selector(#[from] pods::SelectorError),
    /// Its rollout numbers (`maxSurge`, `maxUnavailable`) cannot be used.
    #[error(transparent)]
    Rollout(#[from] deployment::rollout::RolloutError),
    /// A write to a child (a pod, a ReplicaSet) failed.
    #[error(transparent)]
    Child(#[from] children::ChildError),
    /// Writing the status failed.
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    /// Another API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// A field every stored object of `kind` has is missing.
    pub fn missing(kind: &'static str, field: &'static str) -> ReconcileError {
        ReconcileError::Missing { kind, field }
    }
}

/// The namespace and uid of a stored namespaced object (`kind` names it in the error).
pub(crate) fn identity<K: kube::Resource>(
    obj: &K,
    kind: &'static str,
) -> Result<(String, String), ReconcileError> {
    let meta = obj.meta();
    let ns = meta.namespace.clone();
    let uid = meta.uid.clone();
    Ok((
        ns.ok_or(ReconcileError::missing(kind, "namespace"))?,
        uid.ok_or(ReconcileError::missing(kind, "uid"))?,
    ))
}

/// Writes a reconcile's `status` when it differs from the `old` one, as a merge patch of
/// the object's status subresource.
pub(crate) async fn write_status<K, S>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    old: &S,
    status: &S,
) -> Result<(), ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: PartialEq + serde::Serialize,
{
    if status == old {
        return Ok(());
    }
    kube::Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await
        .map_err(ReconcileError::Status)?;
    Ok(())
}

/// Any failure of the controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reconcile failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The controllers could not run.
    #[error(transparent)]
    Run(#[from] run::RunError),
}
