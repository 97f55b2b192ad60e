//! Skiff's workload controllers: the ReplicaSet, Deployment, Job and DaemonSet reconcilers
//! that turn those objects into Pods, as ordinary API clients (in `skiff server`, or alone as
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
pub mod daemonset;
pub mod deployment;
pub mod expectations;
pub mod job;
pub mod pods;
pub mod replicaset;
pub mod run;

pub use run::{Config, run};

/// Any failure of the controllers, folded from each module's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ReplicaSet reconcile failed.
    #[error(transparent)]
    ReplicaSet(#[from] replicaset::Error),
    /// A Deployment reconcile failed.
    #[error(transparent)]
    Deployment(#[from] deployment::Error),
    /// A Job reconcile failed.
    #[error(transparent)]
    Job(#[from] job::Error),
    /// A DaemonSet reconcile failed.
    #[error(transparent)]
    DaemonSet(#[from] daemonset::Error),
    /// The controllers could not run.
    #[error(transparent)]
    Run(#[from] run::RunError),
}
