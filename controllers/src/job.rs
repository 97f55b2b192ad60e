//! The Job controller (NonIndexed completion mode): run pods until `completions` of them
//! succeed, at most `parallelism` at a time, and give up after more than `backoffLimit`
//! failures or past `activeDeadlineSeconds`.
//!
//! A reconcile tallies the Job's pods ([`Tally`]), judges the Job ([`verdict`]), then
//! creates or deletes pods to match and writes the status with Kubernetes' conditions
//! (`SuccessCriteriaMet` and `Complete`; `FailureTarget` and `Failed` with
//! `BackoffLimitExceeded` or `DeadlineExceeded`). Finished pods stay, for their logs.
//! Replacements for failed pods wait out an exponential back-off (10 s, doubling, at most
//! 6 min) from the last failure, as in Kubernetes.

use crate::children;
use crate::pods::{self, Matcher};
use crate::run::{Context, event_ref};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Duration;

/// Failures of a reconcile.
pub use crate::ReconcileError as Error;

/// How errors name this kind.
const KIND: &str = "job";

/// The first back-off after a failed pod.
const BACKOFF_BASE_SECS: i64 = 10;
/// The longest back-off.
const BACKOFF_MAX_SECS: i64 = 360;

/// What a Job's pods amount to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Pods neither finished nor being deleted.
    pub active: i32,
    /// Active and ready.
    pub ready: i32,
    /// Pods that succeeded.
    pub succeeded: i32,
    /// Pods that failed.
    pub failed: i32,
    /// Container restarts of active pods (`restartPolicy: OnFailure` retries in place).
    pub restarts: i32,
    /// When the last failed pod finished, if known.
    pub last_failure: Option<Timestamp>,
}

/// Tally `pods`; counts never go below what `status` already recorded (finished pods
/// deleted by someone stay counted).
pub fn tally(pods: &[Arc<Pod>], status: &JobStatus) -> Tally {
    let mut t = Tally::default();
    for p in pods {
        if pods::active(p) {
            t.active += 1;
            t.restarts += pods::restart_count(p);
            if pods::ready(p) {
                t.ready += 1;
            }
        } else if pods::succeeded(p) {
            t.succeeded += 1;
        } else if pods::failed(p) {
            t.failed += 1;
            t.last_failure = t.last_failure.max(finished_at(p));
        }
    }
    t.succeeded = t.succeeded.max(status.succeeded.unwrap_or(0));
    t.failed = t.failed.max(status.failed.unwrap_or(0));
    t
}

fn finished_at(p: &Pod) -> Option<Timestamp> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

/// What a Job should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep this many pods active.
    Run {
        /// Pods to keep active.
        active: i32,
    },
    /// Enough pods succeeded.
    Complete,
    /// Give up.
    Fail {
        /// `BackoffLimitExceeded` or `DeadlineExceeded`.
        reason: &'static str,
        /// For people.
        message: &'static str,
    },
}

/// Judge a Job from its spec, its pods and when it started.
pub fn verdict(spec: &JobSpec, t: &Tally, started: Option<Timestamp>, now: Timestamp) -> Verdict {
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let limit = spec.backoff_limit.unwrap_or(6);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    // In-place restarts count like failed pods: with a limit of 0 the first one fails
    // the Job, otherwise reaching the limit does.
    let restarts_exceed = on_failure && t.restarts > 0 && t.restarts >= limit.max(1);
    if t.failed > limit || restarts_exceed {
        return Verdict::Fail {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if spec.suspend == Some(true) {
        return Verdict::Run { active: 0 };
    }
    if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, started)
        && now.as_second() - start.as_second() >= deadline
    {
        return Verdict::Fail {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        };
    }
    match spec.completions {
        Some(c) if t.succeeded >= c => Verdict::Complete,
        Some(c) => Verdict::Run {
            active: parallelism.min(c - t.succeeded),
        },
        // A work queue: once one pod succeeded no new ones start, and the Job is done
        // when the rest have finished.
        None if t.succeeded > 0 && t.active == 0 => Verdict::Complete,
        None if t.succeeded > 0 => Verdict::Run {
            active: t.active.min(parallelism),
        },
        None => Verdict::Run {
            active: parallelism,
        },
    }
}

/// Seconds to wait before replacing failed pods, if any.
pub fn backoff_left(t: &Tally, now: Timestamp) -> Option<i64> {
    let last = t.last_failure?;
    if t.failed <= 0 {
        return None;
    }
    let exp = u32::try_from(t.failed - 1).unwrap_or(0).min(16);
    let delay = (BACKOFF_BASE_SECS << exp).min(BACKOFF_MAX_SECS);
    let left = last.as_second() + delay - now.as_second();
    (left > 0).then_some(left)
}

fn has_condition(s: &JobStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn set_condition(s: &mut JobStatus, type_: &str, reason: &str, message: &str, now: Timestamp) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    if conds.iter().any(|c| c.type_ == type_ && c.status == "True") {
        return;
    }
    conds.retain(|c| c.type_ != type_);
    conds.push(JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// Reconcile one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::terminating(&job.metadata) {
        return Ok(Action::await_change());
    }
    let name = job.name_any();
    let (ns, uid) = crate::identity(job.as_ref(), KIND)?;
    let spec = job.spec.as_ref().ok_or(Error::missing(KIND, "spec"))?;
    let old = job.status.clone().unwrap_or_default();
    let matcher = Matcher::new(spec.selector.as_ref())?;
    let owner = pods::controller_ref("batch/v1", "Job", &name, &uid);
    let claimed = children::claim(&ctx.client, &ctx.pods, &owner, false, &matcher, &ns).await?;
    if !ctx
        .expectations
        .satisfied(&uid, ctx.pods.revision(), |u| ctx.pods.holds_live(u))
    {
        tracing::debug!(job = %name, namespace = %ns, "waiting for the pod cache");
        return Ok(Action::requeue(crate::expectations::TIMEOUT));
    }
    let now = pods::now();
    let mut active: Vec<Arc<Pod>> = claimed
        .iter()
        .filter(|p| pods::active(p))
        .cloned()
        .collect();
    let t = tally(&claimed, &old);
    let finished = has_condition(&old, "Complete") || has_condition(&old, "Failed");
    let started = old.start_time.as_ref().map(|t| t.0);
    let verdict = if finished {
        Verdict::Run { active: 0 }
    } else {
        verdict(spec, &t, started, now)
    };
    let mut status = old.clone();
    let mut requeue = None;
    let want = match &verdict {
        Verdict::Run { active } => *active,
        Verdict::Complete | Verdict::Fail { .. } => 0,
    };
    let have = i32::try_from(active.len()).unwrap_or(i32::MAX);
    if have < want {
        match backoff_left(&t, now) {
            Some(left) => requeue = Some(left),
            None => {
                let template = &spec.template;
                let pod = children::pod_from_template(template, &format!("{name}-"), &ns, owner);
                let n = usize::try_from(want - have).unwrap_or(0);
                let (created, error) = children::create_pods(&ctx, job.as_ref(), &pod, n).await;
                tracing::info!(job = %name, namespace = %ns, created = created.len(), "created pods");
                if let Some(e) = error {
                    return Err(e.into());
                }
            }
        }
    } else if have > want {
        active.sort_by(|a, b| pods::deletion_order(a, b));
        let victims: Vec<Arc<Pod>> = active
            .drain(..active.len() - usize::try_from(want).unwrap_or(0))
            .collect();
        children::delete_pods(&ctx, job.as_ref(), &victims).await?;
    }
    if !finished {
        if status.start_time.is_none() && spec.suspend != Some(true) {
            status.start_time = Some(Time(now));
        }
        status.active = Some(t.active);
        status.ready = Some(t.ready);
        status.succeeded = Some(t.succeeded);
        status.failed = Some(t.failed);
        match verdict {
            Verdict::Complete => {
                let msg = "Reached expected number of succeeded pods";
                set_condition(
                    &mut status,
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    msg,
                    now,
                );
                set_condition(&mut status, "Complete", "CompletionsReached", msg, now);
                status.completion_time = Some(Time(now));
                status.active = Some(0);
                status.ready = Some(0);
                tracing::info!(job = %name, namespace = %ns, succeeded = t.succeeded, "job complete");
                ctx.recorder
                    .normal(&event_ref(job.as_ref()), "Completed", "Job completed");
            }
            Verdict::Fail { reason, message } => {
                set_condition(&mut status, "FailureTarget", reason, message, now);
                set_condition(&mut status, "Failed", reason, message, now);
                status.active = Some(0);
                status.ready = Some(0);
                tracing::info!(job = %name, namespace = %ns, failed = t.failed, %reason, "job failed");
                ctx.recorder
                    .warning(&event_ref(job.as_ref()), reason, message);
            }
            Verdict::Run { .. } => {
                // Wake up at the deadline.
                if let (Some(d), Some(s)) =
                    (spec.active_deadline_seconds, status.start_time.as_ref())
                {
                    let left = s.0.as_second() + d - now.as_second();
                    requeue = Some(requeue.map_or(left, |r: i64| r.min(left)));
                }
            }
        }
    }
    crate::write_status::<Job, _>(&ctx.client, &ns, &name, &old, &status).await?;
    Ok(match requeue {
        Some(s) => Action::requeue(Duration::from_secs(s.max(1).unsigned_abs())),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};

    fn spec(completions: Option<i32>, parallelism: i32, backoff: i32, restart: &str) -> JobSpec {
        JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(backoff),
            template: PodTemplateSpec {
                spec: Some(PodSpec {
                    restart_policy: Some(restart.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn tally_of(active: i32, succeeded: i32, failed: i32, restarts: i32) -> Tally {
        Tally {
            active,
            succeeded,
            failed,
            restarts,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_completions_parallelism_and_backoff() {
        let now = pods::now();
        let run = |active| Verdict::Run { active };
        let backoff = Verdict::Fail {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
        let cases = [
            // (completions, parallelism, backoffLimit, restartPolicy, tally) -> verdict
            (Some(1), 1, 6, "Never", tally_of(0, 0, 0, 0), run(1)),
            (
                Some(1),
                1,
                6,
                "Never",
                tally_of(1, 1, 0, 0),
                Verdict::Complete,
            ),
            (Some(2), 1, 6, "Never", tally_of(1, 1, 0, 0), run(1)),
            (Some(5), 2, 6, "Never", tally_of(2, 1, 0, 0), run(2)),
            (Some(5), 3, 6, "Never", tally_of(2, 3, 0, 0), run(2)),
            (Some(2), 2, 1, "Never", tally_of(0, 0, 1, 0), run(2)),
            (
                Some(2),
                2,
                1,
                "Never",
                tally_of(0, 0, 2, 0),
                backoff.clone(),
            ),
            (
                Some(1),
                1,
                0,
                "Never",
                tally_of(0, 0, 1, 0),
                backoff.clone(),
            ),
            (Some(1), 1, 2, "OnFailure", tally_of(1, 0, 0, 1), run(1)),
            (
                Some(1),
                1,
                2,
                "OnFailure",
                tally_of(1, 0, 0, 2),
                backoff.clone(),
            ),
            (Some(1), 1, 0, "OnFailure", tally_of(1, 0, 0, 1), backoff),
            (None, 3, 6, "Never", tally_of(0, 0, 0, 0), run(3)),
            (None, 3, 6, "Never", tally_of(2, 1, 0, 0), run(2)),
            (None, 3, 6, "Never", tally_of(0, 1, 0, 0), Verdict::Complete),
        ];
        for (completions, parallelism, limit, restart, t, want) in cases {
            let s = spec(completions, parallelism, limit, restart);
            assert_eq!(
                verdict(&s, &t, Some(now), now),
                want,
                "completions {completions:?} parallelism {parallelism} limit {limit} {restart} {t:?}"
            );
        }
    }

    #[test]
    fn deadlines_and_back_off() {
        let now = pods::now();
        let ago = |s: i64| Timestamp::from_second(now.as_second() - s).unwrap_or(now);
        let mut s = spec(Some(1), 1, 6, "Never");
        s.active_deadline_seconds = Some(30);
        let t = tally_of(1, 0, 0, 0);
        assert_eq!(
            verdict(&s, &t, Some(ago(10)), now),
            Verdict::Run { active: 1 }
        );
        assert!(matches!(
            verdict(&s, &t, Some(ago(30)), now),
            Verdict::Fail {
                reason: "DeadlineExceeded",
                ..
            }
        ));
        // failed pods, seconds since the last failure -> seconds left to wait
        let cases = [
            (1, 3, Some(7)),
            (1, 10, None),
            (2, 3, Some(17)),
            (3, 30, Some(10)),
            (20, 0, Some(360)),
            (0, 0, None),
        ];
        for (failed, since, want) in cases {
            let t = Tally {
                failed,
                last_failure: Some(ago(since)),
                ..Default::default()
            };
            assert_eq!(backoff_left(&t, now), want, "failed {failed} since {since}");
        }
        assert_eq!(
            backoff_left(&tally_of(0, 0, 3, 0), now),
            None,
            "no failure time, no wait"
        );
    }
}
