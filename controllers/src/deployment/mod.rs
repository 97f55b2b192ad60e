//! The Deployment controller: one ReplicaSet per version of the pod template, named
//! `<deployment>-<pod-template-hash>`, rolled from old to new by the strategy.
//!
//! A reconcile claims the Deployment's ReplicaSets, finds the one whose template is the
//! Deployment's (ignoring the hash label) or creates it, then takes one step of the
//! strategy: `RollingUpdate` grows the new set within `maxSurge` ([`rollout::new_replicas`])
//! and shrinks old ones within `maxUnavailable` ([`rollout::scale_down_old`]);
//! `Recreate` scales old sets to zero, waits for their pods to go, then scales the new
//! one up. It numbers revisions (`deployment.kubernetes.io/revision`), deletes old
//! empty sets beyond `revisionHistoryLimit` once a rollout is complete, and writes the
//! status `kubectl rollout status` reads: counts, `Available` and `Progressing`
//! (`NewReplicaSetAvailable` when done, `ProgressDeadlineExceeded` when stuck).

pub mod hash;
pub mod rollout;

use crate::children;
use crate::pods::{self, Matcher};
use crate::run::{Context, event_ref};
use hash::{LABEL, template_hash, without_hash};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The annotation numbering a Deployment's versions, on it and on its ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// Failures of a reconcile.
pub use crate::ReconcileError as Error;

/// How errors name this kind.
const KIND: &str = "deployment";

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i32 {
    rs.status.as_ref().and_then(f).unwrap_or(0)
}

/// What one reconcile step did, for the Progressing condition.
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    created_new: bool,
}

struct Rollout<'a> {
    ctx: &'a Context,
    d: &'a Deployment,
    name: String,
    ns: String,
    uid: String,
    api: Api<ReplicaSet>,
}

impl Rollout<'_> {
    /// Set a ReplicaSet's size (and, for the new one, its revision and minReadySeconds).
    async fn scale(
        &self,
        rs: &mut ReplicaSet,
        to: i32,
        revision: Option<i64>,
    ) -> Result<(), Error> {
        let from = spec_replicas(rs);
        let rs_name = rs.name_any();
        let rev_ok = revision.is_none_or(|r| self::revision(rs) == r);
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let min_ready_ok =
            revision.is_none() || rs.spec.as_ref().and_then(|s| s.min_ready_seconds) == min_ready;
        if from == to && rev_ok && min_ready_ok {
            return Ok(());
        }
        // Not pinned to the cached resourceVersion: the ReplicaSet controller rewrites the
        // status all the time, and this controller is the only writer of these fields.
        let mut patch = json!({"spec": {"replicas": to}});
        if let Some(r) = revision {
            patch["metadata"]["annotations"] = json!({REVISION: r.to_string()});
            patch["spec"]["minReadySeconds"] = json!(min_ready.unwrap_or(0));
        }
        let updated = self
            .api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("scaling replica set {rs_name}")))?;
        self.ctx
            .expectations
            .wrote(&self.uid, updated.metadata.resource_version.as_deref());
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            let msg = format!("Scaled {dir} replica set {rs_name} from {from} to {to}");
            tracing::info!(deployment = %self.name, namespace = %self.ns, replicaset = %rs_name, from, to, "scaled replica set");
            self.ctx
                .recorder
                .normal(&event_ref(self.d), "ScalingReplicaSet", msg);
        }
        *rs = updated;
        Ok(())
    }

    /// Create the ReplicaSet of the current template with `replicas`; `None` if its name
    /// is taken by a ReplicaSet that is not ours (a hash collision).
    async fn create(
        &self,
        hash: &str,
        replicas: i32,
        revision: i64,
    ) -> Result<Option<ReplicaSet>, Error> {
        let spec = self.d.spec.as_ref().ok_or(Error::missing(KIND, "spec"))?;
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL.into(), hash.into());
        let labels = meta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(LABEL.into(), hash.into());
        let mut annotations = BTreeMap::from([(REVISION.to_string(), revision.to_string())]);
        if let Some(cause) = self.d.annotations().get(CHANGE_CAUSE) {
            annotations.insert(CHANGE_CAUSE.into(), cause.clone());
        }
        let rs_name = format!("{}-{hash}", self.name);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.ns.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![pods::controller_ref(
                    "apps/v1",
                    "Deployment",
                    &self.name,
                    &self.uid,
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self.api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                self.ctx
                    .expectations
                    .wrote(&self.uid, created.metadata.resource_version.as_deref());
                tracing::info!(deployment = %self.name, namespace = %self.ns, replicaset = %rs_name, replicas, "created replica set");
                self.ctx.recorder.normal(
                    &event_ref(self.d),
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
                );
                Ok(Some(created))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours but not yet in the cache, or someone else's: look.
                let existing = self
                    .api
                    .get(&rs_name)
                    .await
                    .map_err(api_err(format!("reading replica set {rs_name}")))?;
                let ours =
                    pods::controller_of(&existing.metadata).is_some_and(|c| c.uid == self.uid);
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == spec.template);
                Ok((ours && same).then_some(existing))
            }
            Err(e) => Err(api_err(format!("creating replica set {rs_name}"))(e)),
        }
    }
}

/// Reconcile one Deployment.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::terminating(&d.metadata) {
        return Ok(Action::await_change());
    }
    let name = d.name_any();
    let (ns, uid) = crate::identity(d.as_ref(), KIND)?;
    let spec = d.spec.as_ref().ok_or(Error::missing(KIND, "spec"))?;
    let matcher = Matcher::new(Some(&spec.selector))?;
    let owner = pods::controller_ref("apps/v1", "Deployment", &name, &uid);
    let claimed =
        children::claim(&ctx.client, &ctx.replicasets, &owner, false, &matcher, &ns).await?;
    if !ctx
        .expectations
        .satisfied(&uid, ctx.replicasets.revision(), |u| {
            ctx.replicasets.holds_live(u)
        })
    {
        tracing::debug!(deployment = %name, namespace = %ns, "waiting for the replica set cache");
        return Ok(Action::requeue(crate::expectations::TIMEOUT));
    }
    let mut sets: Vec<ReplicaSet> = claimed
        .iter()
        .filter(|rs| !pods::terminating(&rs.metadata))
        .map(|rs| ReplicaSet::clone(rs))
        .collect();
    // Oldest first.
    sets.sort_by(|a, b| {
        let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let replicas = spec.replicas.unwrap_or(1);
    let old_status = d.status.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, old_status.collision_count);
    let mut new_idx = sets.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| without_hash(t) == spec.template)
    });
    let max_old_revision = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision(rs))
        .max()
        .unwrap_or(0);
    let new_revision = match new_idx {
        Some(i) if revision(&sets[i]) > max_old_revision => revision(&sets[i]),
        _ => max_old_revision + 1,
    };
    let strategy = spec.strategy.clone().unwrap_or_default();
    let rolling = strategy.rolling_update.unwrap_or_default();
    // Recreate has no surge and, for the Available condition, no allowance.
    let (surge, unavailable) = if strategy.type_.as_deref() == Some("Recreate") {
        (0, 0)
    } else {
        rollout::fenceposts(
            rolling.max_surge.as_ref(),
            rolling.max_unavailable.as_ref(),
            replicas,
        )?
    };
    let r = Rollout {
        ctx: &ctx,
        d: &d,
        name: name.clone(),
        ns: ns.clone(),
        uid: uid.clone(),
        api: Api::namespaced(ctx.client.clone(), &ns),
    };
    let mut step = Step::default();
    if !spec.paused.unwrap_or(false) {
        let recreate = strategy.type_.as_deref() == Some("Recreate");
        // The new set first exists (Recreate: once the old pods are gone), then grows.
        if new_idx.is_none() {
            let old_running = recreate && old_pods_running(&ctx, &sets, new_idx, &ns);
            let old_scaled = sets.iter().any(|rs| spec_replicas(rs) > 0);
            if !recreate || (!old_running && !old_scaled) {
                let total: i32 = sets.iter().map(spec_replicas).sum();
                let size = if recreate {
                    replicas
                } else {
                    rollout::new_replicas(replicas, surge, total, 0)
                };
                match r.create(&hash, size, new_revision).await? {
                    Some(rs) => {
                        step.created_new = true;
                        sets.push(rs);
                        new_idx = Some(sets.len() - 1);
                    }
                    None => {
                        let count = old_status.collision_count.unwrap_or(0).saturating_add(1);
                        tracing::warn!(deployment = %name, namespace = %ns, hash, count, "replica set name collision");
                        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                            )
                            .await
                            .map_err(api_err("writing the collision count"))?;
                        return Ok(Action::await_change());
                    }
                }
            }
        }
        if recreate {
            for (i, rs) in sets.iter_mut().enumerate() {
                if Some(i) != new_idx {
                    r.scale(rs, 0, None).await?;
                }
            }
            if let Some(i) = new_idx
                && !old_pods_running(&ctx, &sets, new_idx, &ns)
                && sets
                    .iter()
                    .enumerate()
                    .all(|(j, rs)| Some(j) == new_idx || spec_replicas(rs) == 0)
            {
                r.scale(&mut sets[i], replicas, Some(new_revision)).await?;
            }
        } else if let Some(i) = new_idx {
            let total: i32 = sets.iter().map(spec_replicas).sum();
            let current = spec_replicas(&sets[i]);
            let target = rollout::new_replicas(replicas, surge, total, current);
            r.scale(&mut sets[i], target, Some(new_revision)).await?;
            if target <= current {
                let old: Vec<usize> = (0..sets.len()).filter(|j| *j != i).collect();
                let plan = rollout::scale_down_old(
                    &old.iter()
                        .map(|j| rollout::Old {
                            replicas: spec_replicas(&sets[*j]),
                            available: status_of(&sets[*j], |s| s.available_replicas),
                        })
                        .collect::<Vec<_>>(),
                    spec_replicas(&sets[i]),
                    status_of(&sets[i], |s| s.available_replicas),
                    replicas,
                    unavailable,
                );
                for (j, size) in old.into_iter().zip(plan) {
                    r.scale(&mut sets[j], size, None).await?;
                }
            }
        }
    }
    let new_rs = new_idx.map(|i| &sets[i]);
    if let Some(rs) = new_rs
        && d.annotations().get(REVISION) != Some(&revision(rs).to_string())
        && revision(rs) > 0
    {
        let patch = json!({"metadata": {"annotations": {REVISION: revision(rs).to_string()}}});
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("writing the revision"))?;
    }
    let now = pods::now();
    let status = compute_status(&d, &sets, new_rs, unavailable, step, now);
    let complete = complete(&status, replicas);
    if complete {
        cleanup(&ctx, &d, &sets, new_idx, &ns).await?;
    }
    crate::write_status::<Deployment, _>(&ctx.client, &ns, &name, &old_status, &status).await?;
    // Wake up when the progress deadline passes, to report it.
    let deadline = spec
        .progress_deadline_seconds
        .filter(|_| !complete && !spec.paused.unwrap_or(false));
    let progressing = condition(&status, "Progressing");
    match (
        deadline,
        progressing.and_then(|c| c.last_update_time.as_ref()),
    ) {
        (Some(secs), Some(t)) if progressing.is_some_and(|c| c.status == "True") => {
            let left = t.0.as_second() + i64::from(secs) - now.as_second();
            Ok(Action::requeue(Duration::from_secs(
                left.max(0).unsigned_abs() + 1,
            )))
        }
        _ => Ok(Action::await_change()),
    }
}

/// Whether pods of the old (not-new) sets still exist, for Recreate: the new pods start
/// only once every old one has gone, terminating ones included.
fn old_pods_running(ctx: &Context, sets: &[ReplicaSet], new_idx: Option<usize>, ns: &str) -> bool {
    let old: Vec<&str> = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .filter_map(|(_, rs)| rs.metadata.uid.as_deref())
        .collect();
    ctx.pods.in_namespace(ns).iter().any(|p| {
        !pods::finished(p)
            && pods::controller_of(&p.metadata).is_some_and(|c| old.contains(&c.uid.as_str()))
    })
}

fn condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn complete(s: &DeploymentStatus, replicas: i32) -> bool {
    s.updated_replicas.unwrap_or(0) == replicas
        && s.replicas.unwrap_or(0) == replicas
        && s.available_replicas.unwrap_or(0) == replicas
}

/// Set condition `c` in `conds`: unchanged if it says the same; a new status moves both
/// times, a new reason or message (or `touch`) only the update time.
fn set_condition(
    conds: &mut Vec<DeploymentCondition>,
    mut c: DeploymentCondition,
    touch: bool,
    now: Timestamp,
) {
    let now = Time(now);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x)
            if x.status == c.status && x.reason == c.reason && x.message == c.message && !touch => {
        }
        Some(x) if x.status == c.status => {
            c.last_transition_time = x.last_transition_time.clone();
            c.last_update_time = Some(now);
            *x = c;
        }
        Some(x) => {
            c.last_transition_time = Some(now.clone());
            c.last_update_time = Some(now);
            *x = c;
        }
        None => {
            c.last_transition_time = Some(now.clone());
            c.last_update_time = Some(now);
            conds.push(c);
        }
    }
}

fn cond(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        ..Default::default()
    }
}

/// The status of `d` given its sets (`new_rs` among them) and what this step did.
fn compute_status(
    d: &Deployment,
    sets: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    max_unavailable: i32,
    step: Step,
    now: Timestamp,
) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let sum = |f: fn(&ReplicaSet) -> i32| sets.iter().map(f).sum::<i32>();
    let available = sum(|rs| status_of(rs, |s| s.available_replicas));
    let total_spec = sum(spec_replicas);
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))),
        updated_replicas: Some(new_rs.map_or(0, |rs| rs.status.as_ref().map_or(0, |s| s.replicas))),
        ready_replicas: Some(sum(|rs| status_of(rs, |s| s.ready_replicas))),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    let mut conds = s.conditions.take().unwrap_or_default();
    if available >= replicas - max_unavailable {
        set_condition(
            &mut conds,
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
            false,
            now,
        );
    } else {
        set_condition(
            &mut conds,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
            false,
            now,
        );
    }
    let rs_name = new_rs.map(|rs| rs.name_any());
    let subject = match &rs_name {
        Some(n) => format!("ReplicaSet \"{n}\""),
        None => format!("Deployment \"{}\"", d.name_any()),
    };
    let progressing = || {
        cond(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("{subject} is progressing."),
        )
    };
    let paused = spec.and_then(|s| s.paused).unwrap_or(false);
    let n = |o: Option<i32>| o.unwrap_or(0);
    let progressed = n(s.updated_replicas) > n(old.updated_replicas)
        || n(s.ready_replicas) > n(old.ready_replicas)
        || n(s.available_replicas) > n(old.available_replicas)
        || n(s.replicas) - n(s.updated_replicas) < n(old.replicas) - n(old.updated_replicas);
    if paused {
        set_condition(
            &mut conds,
            cond(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            ),
            false,
            now,
        );
    } else if complete(&s, replicas) {
        set_condition(
            &mut conds,
            cond(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("{subject} has successfully progressed."),
            ),
            false,
            now,
        );
    } else if step.created_new {
        set_condition(
            &mut conds,
            cond(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!(
                    "Created new replica set \"{}\"",
                    rs_name.unwrap_or_default()
                ),
            ),
            true,
            now,
        );
    } else if progressed {
        set_condition(&mut conds, progressing(), true, now);
    } else {
        let current = conds.iter().find(|c| c.type_ == "Progressing").cloned();
        let deadline = spec.and_then(|s| s.progress_deadline_seconds);
        match current {
            Some(c) if c.status == "True" || c.status == "Unknown" => {
                let since = c.last_update_time.as_ref().map(|t| t.0.as_second());
                let expired = matches!((deadline, since), (Some(secs), Some(t)) if t + i64::from(secs) <= now.as_second());
                if expired {
                    set_condition(
                        &mut conds,
                        cond(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("{subject} has timed out progressing."),
                        ),
                        false,
                        now,
                    );
                } else if c.reason.as_deref() == Some("NewReplicaSetAvailable")
                    || c.status == "Unknown"
                {
                    // A new rollout (or a resumed one) started: it is progressing now.
                    set_condition(&mut conds, progressing(), true, now);
                }
            }
            Some(_) => {}
            None => set_condition(
                &mut conds,
                cond(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("{subject} is progressing."),
                ),
                true,
                now,
            ),
        }
    }
    s.conditions = Some(conds);
    s
}

/// Delete old, empty sets beyond `revisionHistoryLimit`, lowest revisions first.
async fn cleanup(
    ctx: &Context,
    d: &Deployment,
    sets: &[ReplicaSet],
    new_idx: Option<usize>,
    ns: &str,
) -> Result<(), Error> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0);
    let mut empty: Vec<&ReplicaSet> = sets
        .iter()
        .enumerate()
        .filter(|(i, rs)| {
            Some(*i) != new_idx
                && spec_replicas(rs) == 0
                && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .map(|(_, rs)| rs)
        .collect();
    let excess = empty
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    if excess == 0 {
        return Ok(());
    }
    empty.sort_by_key(|rs| revision(rs));
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    for rs in empty.into_iter().take(excess) {
        let rs_name = rs.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: rs.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&rs_name, &dp).await {
            Ok(_) => {
                if let Some(u) = rs.metadata.uid.as_deref()
                    && let Some(owner) = d.metadata.uid.as_deref()
                {
                    ctx.expectations.deleted(owner, u);
                }
                tracing::info!(deployment = %d.name_any(), namespace = %ns, replicaset = %rs_name, "deleted old replica set beyond the history limit");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting replica set {rs_name}"))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};

    fn deployment(replicas: i32, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: Some(status),
        }
    }

    fn rs(name: &str, spec: i32, replicas: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn reason(s: &DeploymentStatus, t: &str) -> String {
        condition(s, t)
            .and_then(|c| c.reason.clone())
            .unwrap_or_default()
    }

    #[test]
    fn status_reports_rollout_progress() {
        let now = pods::now();
        let later = Timestamp::from_second(now.as_second() + 700).unwrap_or(now);
        // (sets, index of new, replicas, step, when) -> (replicas, updated, available,
        // unavailable, Available reason, Progressing reason)
        let cases = [
            (
                vec![rs("a", 2, 2, 2)],
                Some(0),
                2,
                false,
                now,
                (
                    2,
                    2,
                    2,
                    0,
                    "MinimumReplicasAvailable",
                    "NewReplicaSetAvailable",
                ),
            ),
            (
                vec![rs("a", 2, 2, 0)],
                Some(0),
                2,
                true,
                now,
                (
                    2,
                    2,
                    0,
                    2,
                    "MinimumReplicasUnavailable",
                    "NewReplicaSetCreated",
                ),
            ),
            (
                vec![rs("a", 2, 2, 2), rs("b", 1, 0, 0)],
                Some(1),
                2,
                true,
                now,
                (
                    2,
                    0,
                    2,
                    1,
                    "MinimumReplicasAvailable",
                    "NewReplicaSetCreated",
                ),
            ),
            (
                vec![rs("a", 2, 2, 2), rs("b", 1, 1, 0)],
                Some(1),
                2,
                false,
                now,
                (3, 1, 2, 1, "MinimumReplicasAvailable", "ReplicaSetUpdated"),
            ),
        ];
        for (sets, new, replicas, created, when, want) in cases {
            let d = deployment(replicas, DeploymentStatus::default());
            let s = compute_status(
                &d,
                &sets,
                new.map(|i| &sets[i]),
                0,
                Step {
                    created_new: created,
                },
                when,
            );
            let got = (
                s.replicas.unwrap_or(0),
                s.updated_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
                s.unavailable_replicas.unwrap_or(0),
                reason(&s, "Available"),
                reason(&s, "Progressing"),
            );
            assert_eq!(
                (got.0, got.1, got.2, got.3, got.4.as_str(), got.5.as_str()),
                want
            );
            assert_eq!(s.observed_generation, Some(2));
            // Run again on its own output: nothing changes (the reconcile is idempotent).
            let d2 = deployment(replicas, s.clone());
            let again = compute_status(&d2, &sets, new.map(|i| &sets[i]), 0, Step::default(), when);
            assert_eq!(again, s, "second pass changed the status");
            // Without progress, the deadline passes.
            if reason(&s, "Progressing") != "NewReplicaSetAvailable" {
                let stuck =
                    compute_status(&d2, &sets, new.map(|i| &sets[i]), 0, Step::default(), later);
                assert_eq!(reason(&stuck, "Progressing"), "ProgressDeadlineExceeded");
            }
        }
    }
}
