//! Pod status as the kubelet writes it: phase, conditions, container statuses with
//! state and last state, restart counts, reasons and messages.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How a container instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Exit code.
    pub code: i32,
    /// Reason (`Completed`, `Error`, `OOMKilled`, `Trap`, ...).
    pub reason: String,
    /// Message (a trap's text, ...).
    pub message: String,
    /// Start.
    pub started_at: jiff::Timestamp,
    /// End.
    pub finished_at: jiff::Timestamp,
    /// Container id (`wasm://...`).
    pub container_id: String,
}

/// Where a container is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not running: being created, pulling, backing off...
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...
        reason: String,
        /// Details.
        message: String,
    },
    /// Running since.
    Running {
        /// Start.
        started_at: jiff::Timestamp,
    },
    /// Ended, and not restarting (or not yet).
    Terminated(Ended),
}

/// One container as the agent tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Resolved image id (`registry/repo@sha256:...`), once pulled.
    pub image_id: String,
    /// Restarts so far.
    pub restart_count: i32,
    /// Current state.
    pub phase: Phase,
    /// The previous instance's end.
    pub last: Option<Ended>,
    /// Container id of the running instance.
    pub container_id: String,
    /// The readiness probe's verdict; `None` when it has none (ready while running).
    pub probe_ready: Option<bool>,
    /// A sidecar: an init container with `restartPolicy: Always`, which runs beside the
    /// main containers and counts toward the pod's readiness, not its phase.
    pub sidecar: bool,
}

impl Container {
    /// A container not started yet.
    pub fn new(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            restart_count: 0,
            phase: Phase::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            container_id: String::new(),
            probe_ready: None,
            sidecar: false,
        }
    }

    /// Running, and its readiness probe (if any) passes.
    pub fn ready(&self) -> bool {
        self.running() && self.probe_ready.unwrap_or(true)
    }

    /// Running now.
    pub fn running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// Ended with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(&self.phase, Phase::Terminated(e) if e.code == 0)
    }
}

fn terminated(e: &Ended) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.code,
        reason: Some(e.reason.clone()),
        message: Some(e.message.clone()).filter(|m| !m.is_empty()),
        started_at: Some(Time(e.started_at)),
        finished_at: Some(Time(e.finished_at)),
        container_id: Some(e.container_id.clone()).filter(|c| !c.is_empty()),
        signal: None,
    }
}

/// The Kubernetes status of one container.
pub fn container_status(c: &Container) -> ContainerStatus {
    let state = match &c.phase {
        Phase::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        },
        Phase::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        Phase::Terminated(e) => ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: Some(c.container_id.clone()).filter(|s| !s.is_empty()),
        ready: c.ready(),
        started: Some(c.running()),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: c.last.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kubernetes' pod phase from its containers and restart policy.
pub fn pod_phase(
    init: &[Container],
    init_done: bool,
    containers: &[Container],
    restart_policy: &str,
) -> &'static str {
    if !init_done {
        let failed_for_good = restart_policy == "Never"
            && init
                .iter()
                .any(|c| !c.sidecar && matches!(&c.phase, Phase::Terminated(e) if e.code != 0));
        return if failed_for_good { "Failed" } else { "Pending" };
    }
    let (mut running, mut fresh, mut restarting, mut ok, mut failed) = (0, 0, 0, 0, 0);
    for c in containers {
        match &c.phase {
            Phase::Running { .. } => running += 1,
            Phase::Waiting { .. } if c.last.is_some() => restarting += 1,
            Phase::Waiting { .. } => fresh += 1,
            Phase::Terminated(e) if e.code == 0 => ok += 1,
            Phase::Terminated(_) => failed += 1,
        }
    }
    if fresh > 0 {
        return "Pending";
    }
    if running > 0 || restarting > 0 {
        return "Running";
    }
    match (restart_policy, failed) {
        ("Always", _) if ok + failed > 0 => "Running",
        ("OnFailure", f) if f > 0 => "Running",
        (_, 0) => "Succeeded",
        _ => "Failed",
    }
}

fn cond(type_: &str, ok: bool, reason: Option<&str>, since: &Time) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.filter(|_| !ok).map(String::from),
        last_transition_time: Some(since.clone()),
        last_probe_time: None,
        message: None,
        observed_generation: None,
    }
}

/// What the status is built from.
pub struct Snapshot<'a> {
    /// Init containers, in order.
    pub init: &'a [Container],
    /// Whether every init container completed.
    pub init_done: bool,
    /// Regular containers.
    pub containers: &'a [Container],
    /// `spec.restartPolicy`.
    pub restart_policy: &'a str,
    /// The sandbox exists.
    pub sandbox_ready: bool,
    /// The node's address.
    pub host_ip: &'a str,
    /// The pod's address on the node's pod network, if it has one.
    pub pod_ip: Option<std::net::Ipv4Addr>,
    /// When the agent took the pod.
    pub start_time: jiff::Timestamp,
    /// The previous status (for transition times).
    pub previous: Option<&'a PodStatus>,
}

/// The full status the agent writes.
pub fn pod_status(s: &Snapshot<'_>) -> PodStatus {
    let phase = pod_phase(s.init, s.init_done, s.containers, s.restart_policy);
    let now = Time(jiff::Timestamp::now());
    let all_running = !s.containers.is_empty()
        && s.containers.iter().all(Container::ready)
        && s.init.iter().filter(|c| c.sidecar).all(Container::ready);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let prev_conds = s
        .previous
        .and_then(|p| p.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    // Keep a condition's transition time while its status does not change.
    let keep = |c: PodCondition| -> PodCondition {
        match prev_conds.iter().find(|p| p.type_ == c.type_) {
            Some(p) if p.status == c.status => PodCondition {
                last_transition_time: p
                    .last_transition_time
                    .clone()
                    .or(c.last_transition_time.clone()),
                ..c
            },
            _ => c,
        }
    };
    let mut conditions: Vec<PodCondition> = prev_conds
        .iter()
        .filter(|c| c.type_ == "PodScheduled")
        .cloned()
        .collect();
    for c in [
        cond(
            "PodReadyToStartContainers",
            s.sandbox_ready && !terminal,
            None,
            &now,
        ),
        cond(
            "Initialized",
            s.init_done,
            Some("ContainersNotInitialized"),
            &now,
        ),
        cond("ContainersReady", all_running, Some(not_ready_reason), &now),
        cond("Ready", all_running, Some(not_ready_reason), &now),
    ] {
        conditions.push(keep(c));
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(s.host_ip.to_string()).filter(|h| !h.is_empty()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: s.host_ip.to_string(),
        }])
        .filter(|_| !s.host_ip.is_empty()),
        pod_ip: s.pod_ip.map(|ip| ip.to_string()),
        pod_ips: s
            .pod_ip
            .map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(s.start_time)),
        container_statuses: Some(s.containers.iter().map(container_status).collect()),
        init_container_statuses: Some(s.init.iter().map(container_status).collect())
            .filter(|v: &Vec<ContainerStatus>| !v.is_empty()),
        qos_class: s.previous.and_then(|p| p.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: i32) -> Phase {
        let t = jiff::Timestamp::now();
        Phase::Terminated(Ended {
            code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: t,
            finished_at: t,
            container_id: String::new(),
        })
    }

    fn c(phase: Phase, restarted: bool) -> Container {
        let mut c = Container::new("c", "img");
        c.phase = phase;
        if restarted && let Phase::Terminated(e) = ended(1) {
            c.last = Some(e);
        }
        c
    }

    #[test]
    fn phases_follow_kubernetes() {
        let running = Phase::Running {
            started_at: jiff::Timestamp::now(),
        };
        let waiting = Phase::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        let cases = [
            (vec![c(waiting.clone(), false)], "Always", "Pending"),
            (vec![c(waiting.clone(), true)], "Always", "Running"),
            (vec![c(running.clone(), false)], "Never", "Running"),
            (vec![c(ended(0), false)], "Never", "Succeeded"),
            (vec![c(ended(1), false)], "Never", "Failed"),
            (vec![c(ended(1), false)], "OnFailure", "Running"),
            (vec![c(ended(0), false)], "OnFailure", "Succeeded"),
            (
                vec![c(ended(0), false), c(running, false)],
                "Never",
                "Running",
            ),
        ];
        for (cs, policy, want) in cases {
            assert_eq!(pod_phase(&[], true, &cs, policy), want, "{cs:?} {policy}");
        }
        assert_eq!(
            pod_phase(&[c(ended(1), false)], false, &[], "Never"),
            "Failed"
        );
        assert_eq!(
            pod_phase(&[c(ended(1), false)], false, &[], "Always"),
            "Pending"
        );
        // A sidecar that crashed restarts whatever the pod's policy: not a failure.
        let mut sidecar = c(ended(1), false);
        sidecar.sidecar = true;
        assert_eq!(pod_phase(&[sidecar], false, &[], "Never"), "Pending");
    }
}
