//! The pod worker's side of probes and lifecycle hooks: arming probes for each instance,
//! running the checks that are due, acting on their verdicts (see [`super::probes`]), and
//! running `postStart` and `preStop` hooks (see [`super::hooks`]).

use super::specs::runner_of;
use super::{Ctx, Msg, ProbeRun, Worker, container_id, hooks, probes};
use crate::executors::Runtime;
use skiff_api::events::ObjectRef;
use skiff_shims::Executor;
use std::time::{Duration, Instant};

/// How long a `postStart` hook may run (Kubernetes sets no bound; a hook that never ends
/// would hold the pod's worker).
const POST_START_LIMIT: Duration = Duration::from_secs(120);

impl Worker {
    /// Arms the probes of slot `i`'s new (or adopted) instance; `ready` is its readiness
    /// until the readiness probe decides (not ready, for a new instance).
    pub(super) fn arm_probes(&mut self, i: usize, ready: Option<bool>) {
        let object = self.object();
        let slot = &mut self.slots[i];
        let specs = match probes::probes(&slot.spec) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.recorder.warning(&object, "ProbeError", e);
                Vec::new()
            }
        };
        let now = Instant::now();
        slot.probes.clear();
        for spec in specs {
            if matches!(spec.action, probes::Action::Exec { .. })
                && slot.runtime == Some(Runtime::Wasm)
            {
                self.ctx.recorder.warning(
                    &object,
                    "ProbeUnsupported",
                    format!(
                        "{} probe of container {} is an exec probe, but Wasm containers have no processes to run it; it is ignored (use httpGet or tcpSocket)",
                        spec.kind.as_str(),
                        slot.spec.name
                    ),
                );
                continue;
            }
            slot.probes.push(ProbeRun {
                next_at: now + spec.initial_delay,
                spec,
                tracker: probes::Tracker::default(),
                in_flight: false,
            });
        }
        let has = |k| slot.probes.iter().any(|p| p.spec.kind == k);
        slot.startup_done = !has(probes::Kind::Startup);
        slot.st.probe_ready = has(probes::Kind::Readiness).then(|| ready.unwrap_or(false));
    }

    /// Starts the checks that are due.
    pub(super) fn run_due_probes(&mut self) {
        let Some(netns) = self.sandbox.as_ref().map(|s| s.netns.clone()) else {
            return;
        };
        let now = Instant::now();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if !slot.st.running() {
                continue;
            }
            let startup_done = slot.startup_done;
            for (j, p) in slot.probes.iter_mut().enumerate() {
                let gated = !startup_done && p.spec.kind != probes::Kind::Startup;
                if p.in_flight || p.next_at > now || gated {
                    continue;
                }
                p.in_flight = true;
                p.next_at = now + p.spec.period;
                let (action, timeout, netns) =
                    (p.spec.action.clone(), p.spec.timeout, netns.clone());
                let (tx, instance) = (self.self_tx.clone(), slot.instances);
                let oci = self.ctx.oci.as_ref().ok().cloned();
                let id = container_id(&self.uid, &slot.spec.name);
                tokio::spawn(async move {
                    let result = match (&action, oci) {
                        (probes::Action::Exec { command }, Some(oci)) => {
                            probes::exec_check(&oci, &id, command, timeout).await
                        }
                        (probes::Action::Exec { .. }, None) => {
                            Err("this node runs no Linux containers".into())
                        }
                        _ => probes::check(&action, &netns, timeout).await,
                    };
                    let _ = tx.send(Msg::Probe {
                        slot: i,
                        probe: j,
                        instance,
                        result,
                    });
                });
            }
        }
    }

    /// A probe check finished: count it, and act on a verdict.
    pub(super) fn probed(&mut self, i: usize, j: usize, instance: i32, result: Result<(), String>) {
        let object = self.object();
        let grace = self.grace();
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.instances != instance || !slot.st.running() {
            return;
        }
        let Some(p) = slot.probes.get_mut(j) else {
            return;
        };
        p.in_flight = false;
        let kind = p.spec.kind;
        let verdict = p.tracker.record(&p.spec, result.is_ok());
        if let Err(e) = &result {
            self.ctx.recorder.warning(
                &object,
                "Unhealthy",
                format!("{} probe failed: {e}", kind.as_str()),
            );
        }
        match (kind, verdict) {
            (probes::Kind::Readiness, probes::Verdict::Passing) => slot.st.probe_ready = Some(true),
            (probes::Kind::Readiness, probes::Verdict::Failing) => {
                slot.st.probe_ready = Some(false)
            }
            (probes::Kind::Startup, probes::Verdict::Passing) => slot.startup_done = true,
            (probes::Kind::Liveness | probes::Kind::Startup, probes::Verdict::Failing) => {
                // Restarted per policy when its exit arrives.
                slot.probes.clear();
                let name = slot.spec.name.clone();
                self.ctx.recorder.normal(
                    &object,
                    "Killing",
                    format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.as_str().to_lowercase()
                    ),
                );
                let id = container_id(&self.uid, &name);
                let (ctx, runtime) = (self.ctx.clone(), slot.runtime.unwrap_or(Runtime::Wasm));
                // As for any stop, the preStop hook runs first, within the grace period.
                let pre_stop = hooks::hook(&slot.spec, hooks::Which::PreStop)
                    .ok()
                    .flatten()
                    .zip(self.sandbox.as_ref().map(|s| s.netns.clone()));
                tokio::spawn(async move {
                    let mut grace = grace;
                    if let Some((hook, netns)) = pre_stop {
                        grace =
                            run_pre_stop(&ctx, &object, &netns, &id, runtime, &hook, grace).await;
                    }
                    let _ = runner_of(&ctx, runtime).stop(&id, grace).await;
                });
            }
            _ => {}
        }
    }

    /// Runs slot `i`'s `postStart` hook, if it has one, once its instance has started; a
    /// failure kills the instance, which then restarts by the pod's policy.
    pub(super) async fn post_start(&mut self, i: usize) {
        let object = self.object();
        let slot = &self.slots[i];
        let name = slot.spec.name.clone();
        let hook = match hooks::hook(&slot.spec, hooks::Which::PostStart) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                self.ctx.recorder.warning(
                    &object,
                    hooks::Which::PostStart.failed_reason(),
                    format!("PostStartHook of container {name} is invalid: {e}"),
                );
                return;
            }
        };
        let (Some(runtime), Some(netns)) =
            (slot.runtime, self.sandbox.as_ref().map(|s| s.netns.clone()))
        else {
            return;
        };
        let id = container_id(&self.uid, &name);
        let oci = self.ctx.oci.as_ref().ok();
        let target = hooks::Target {
            runtime,
            oci,
            id: &id,
            netns: &netns,
        };
        if let Err(e) = hooks::run(&hook, &target, POST_START_LIMIT).await {
            self.ctx.recorder.warning(
                &object,
                hooks::Which::PostStart.failed_reason(),
                format!("PostStartHook of container {name} failed: {e}; the container is killed"),
            );
            let _ = runner_of(&self.ctx, runtime).stop(&id, self.grace()).await;
        }
    }

    /// Runs a container's `preStop` hook within `grace`; returns what is left of it for
    /// the stop signal.
    pub(super) async fn pre_stop(
        &self,
        id: &str,
        runtime: Runtime,
        hook: &hooks::Hook,
        grace: Duration,
    ) -> Duration {
        let Some(netns) = self.sandbox.as_ref().map(|s| s.netns.clone()) else {
            return grace;
        };
        run_pre_stop(&self.ctx, &self.object(), &netns, id, runtime, hook, grace).await
    }

    /// The pod's termination grace period.
    pub(super) fn grace(&self) -> Duration {
        let s = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(s.max(0) as u64)
    }
}

/// Runs `hook` for container `id` within `grace`; a failure is a `FailedPreStopHook`
/// event. Returns what is left of `grace` for the stop signal.
async fn run_pre_stop(
    ctx: &Ctx,
    object: &ObjectRef,
    netns: &std::path::Path,
    id: &str,
    runtime: Runtime,
    hook: &hooks::Hook,
    grace: Duration,
) -> Duration {
    let started = Instant::now();
    let target = hooks::Target {
        runtime,
        oci: ctx.oci.as_ref().ok(),
        id,
        netns,
    };
    if let Err(e) = hooks::run(hook, &target, grace).await {
        let name = id.rsplit('/').next().unwrap_or(id);
        ctx.recorder.warning(
            object,
            hooks::Which::PreStop.failed_reason(),
            format!("PreStopHook of container {name} failed: {e}"),
        );
    }
    grace.saturating_sub(started.elapsed())
}
