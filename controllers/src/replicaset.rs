//! The ReplicaSet controller: keep `spec.replicas` active pods that match the selector.
//!
//! A reconcile claims pods (adopts matching orphans, releases owned pods that stopped
//! matching), then, once the pod cache reflects its previous writes (see
//! [`crate::expectations`]), creates pods from the template or deletes the surplus in
//! [`pods::deletion_order`], and writes the status. Finished pods (`Succeeded`,
//! `Failed`) and pods being deleted do not count, so they are replaced.

use crate::children;
use crate::pods::{self, Matcher};
use crate::run::Context;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Failures of a reconcile.
pub use crate::ReconcileError as Error;

/// How errors name this kind.
const KIND: &str = "replica set";

/// Pods created at once at most, per reconcile (the rest wait for the next one).
const BURST: usize = 500;

/// Counts of a set of pods, for a status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Active pods.
    pub replicas: i32,
    /// Active pods carrying every label of the template.
    pub fully_labeled: i32,
    /// Ready ones.
    pub ready: i32,
    /// Ready for `minReadySeconds`.
    pub available: i32,
    /// Seconds until the next ready pod becomes available, if one is waiting.
    pub next_available_in: Option<i64>,
}

/// Count `active` pods against the template labels and `min_ready_seconds`.
pub fn count(
    active: &[Arc<Pod>],
    template_labels: Option<&BTreeMap<String, String>>,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Counts {
    let mut c = Counts::default();
    for p in active {
        c.replicas += 1;
        let labels = p.metadata.labels.as_ref();
        let full = template_labels
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if full {
            c.fully_labeled += 1;
        }
        if pods::ready(p) {
            c.ready += 1;
        }
        match pods::available(p, min_ready_seconds, now) {
            pods::Availability::Yes => c.available += 1,
            pods::Availability::InSeconds(s) => {
                c.next_available_in = Some(c.next_available_in.map_or(s, |n| n.min(s)));
            }
            pods::Availability::No => {}
        }
    }
    c
}

/// Reconcile one ReplicaSet.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = rs.name_any();
    let (ns, uid) = crate::identity(rs.as_ref(), KIND)?;
    let spec = rs.spec.as_ref().ok_or(Error::missing(KIND, "spec"))?;
    let matcher = Matcher::new(Some(&spec.selector))?;
    let owner = pods::controller_ref("apps/v1", "ReplicaSet", &name, &uid);
    let deleting = pods::terminating(&rs.metadata);
    let claimed = children::claim(&ctx.client, &ctx.pods, &owner, deleting, &matcher, &ns).await?;
    if !ctx
        .expectations
        .satisfied(&uid, ctx.pods.revision(), |u| ctx.pods.holds_live(u))
    {
        tracing::debug!(replicaset = %name, namespace = %ns, "waiting for the pod cache");
        return Ok(Action::requeue(crate::expectations::TIMEOUT));
    }
    let mut active: Vec<Arc<Pod>> = claimed.into_iter().filter(|p| pods::active(p)).collect();
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let template = spec.template.as_ref();
    if !deleting {
        if active.len() < want {
            let Some(template) = template else {
                return Err(Error::missing(KIND, "spec.template"));
            };
            let n = (want - active.len()).min(BURST);
            let pod = children::pod_from_template(template, &format!("{name}-"), &ns, owner);
            let (created, error) = children::create_pods(&ctx, rs.as_ref(), &pod, n).await;
            tracing::info!(replicaset = %name, namespace = %ns, created = created.len(), "created pods");
            if let Some(e) = error {
                return Err(e.into());
            }
        } else if active.len() > want {
            active.sort_by(|a, b| pods::deletion_order(a, b));
            let victims: Vec<Arc<Pod>> = active.drain(..active.len() - want).collect();
            children::delete_pods(&ctx, rs.as_ref(), &victims).await?;
            tracing::info!(replicaset = %name, namespace = %ns, deleted = victims.len(), "deleted surplus pods");
        }
    }
    // The status counts what the cache shows; pods just created or deleted show up with
    // their events, which trigger the next reconcile.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let labels = template.and_then(|t| t.metadata.as_ref()?.labels.as_ref());
    let c = count(&active, labels, min_ready, pods::now());
    let old = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: c.replicas,
        fully_labeled_replicas: Some(c.fully_labeled),
        ready_replicas: Some(c.ready),
        available_replicas: Some(c.available),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    crate::write_status::<ReplicaSet, _>(&ctx.client, &ns, &name, &old, &status).await?;
    Ok(match c.next_available_in {
        Some(s) => Action::requeue(Duration::from_secs(s.unsigned_abs())),
        None => Action::await_change(),
    })
}
