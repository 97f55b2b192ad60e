//! What the controllers ask of a Pod (is it active, ready, available?), which pods go
//! first when there are too many, and the ownership bookkeeping (controller references,
//! selectors) that ReplicaSets, Deployments and Jobs share.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::core::{Selector, SelectorExt};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A selector that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// An expression with an unknown operator or missing values.
    #[error("invalid selector: {0}")]
    Invalid(String),
}

/// A label selector as the controllers use it: an empty or missing selector matches
/// nothing (a controller must never claim every pod of a namespace).
#[derive(Clone, Debug)]
pub struct Matcher(Option<Selector>);

impl Matcher {
    /// Compile `selector`.
    pub fn new(selector: Option<&LabelSelector>) -> Result<Matcher, SelectorError> {
        let Some(sel) = selector else {
            return Ok(Matcher(None));
        };
        let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
        if empty {
            return Ok(Matcher(None));
        }
        Selector::try_from(sel.clone())
            .map(|s| Matcher(Some(s)))
            .map_err(|e| SelectorError::Invalid(e.0))
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        self.0
            .as_ref()
            .is_some_and(|s| s.matches(labels.unwrap_or(&empty)))
    }
}

/// The controller reference of an object's metadata, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to an owner, as Kubernetes' controllers set it.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object is being deleted.
pub fn terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod ran to an end (`Succeeded` or `Failed`).
pub fn finished(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// Whether the pod succeeded.
pub fn succeeded(p: &Pod) -> bool {
    phase(p) == "Succeeded"
}

/// Whether the pod failed.
pub fn failed(p: &Pod) -> bool {
    phase(p) == "Failed"
}

/// Active: neither finished nor being deleted. Only active pods count towards replicas.
pub fn active(p: &Pod) -> bool {
    !finished(p) && !terminating(&p.metadata)
}

/// When the pod's `Ready` condition turned true, if it is true.
pub fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod is ready.
pub fn ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`; when not,
/// and it is ready, how long until it is.
pub fn available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> Availability {
    match ready_since(p) {
        None => Availability::No,
        Some(_) if min_ready_seconds <= 0 => Availability::Yes,
        // A ready pod whose condition carries no time counts as ready since forever.
        Some(None) => Availability::Yes,
        Some(Some(since)) => {
            let left = since.as_second() + i64::from(min_ready_seconds) - now.as_second();
            if left <= 0 {
                Availability::Yes
            } else {
                Availability::InSeconds(left)
            }
        }
    }
}

/// The answer of [`available`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Available now.
    Yes,
    /// Not ready.
    No,
    /// Ready, available after this many more seconds.
    InSeconds(i64),
}

impl Availability {
    /// Whether available now.
    pub fn yes(self) -> bool {
        self == Availability::Yes
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Total container restarts of a pod (for Jobs with `restartPolicy: OnFailure`).
pub fn restart_count(p: &Pod) -> i32 {
    restarts(p)
}

fn phase_rank(p: &Pod) -> u8 {
    match phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    }
}

fn scheduled(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Order in which surplus pods are deleted, first to go first, Kubernetes' ranking
/// simplified: unscheduled before scheduled, pending before running, not ready before
/// ready, ready for less time before ready for longer, more restarts before fewer,
/// newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    scheduled(a)
        .cmp(&scheduled(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| ready(a).cmp(&ready(b)))
        // Both ready: the one ready more recently goes first (None = long ago).
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
        )
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The time now, to the second (Kubernetes' `Time` has no finer grain, so a status
/// written and read back compares equal).
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    /// A pod: name, node?, phase, ready since (seconds), restarts, created (seconds).
    fn pod(
        name: &str,
        node: bool,
        phase: &str,
        ready: Option<i64>,
        restarts: i32,
        created: i64,
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(t(created)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.then(|| "n".to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready.is_some() { "True" } else { "False" }.into(),
                    last_transition_time: ready.map(t),
                    ..Default::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn surplus_pods_go_in_kubernetes_order() {
        let mut pods = [
            pod("old-ready", true, "Running", Some(10), 0, 0),
            pod("new-ready", true, "Running", Some(50), 0, 40),
            pod("unscheduled", false, "Pending", None, 0, 0),
            pod("pending", true, "Pending", None, 0, 0),
            pod("running-not-ready", true, "Running", None, 0, 0),
            pod("restarted", true, "Running", Some(10), 3, 0),
            pod("newer-not-ready", true, "Running", None, 0, 30),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "newer-not-ready",
                "running-not-ready",
                "new-ready",
                "restarted",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_honours_min_ready_seconds() {
        let now = t(100).0;
        let cases = [
            (None, 0, Availability::No),
            (Some(99), 0, Availability::Yes),
            (Some(90), 10, Availability::Yes),
            (Some(95), 10, Availability::InSeconds(5)),
            (None, 10, Availability::No),
        ];
        for (ready, min, want) in cases {
            let p = pod("p", true, "Running", ready, 0, 0);
            assert_eq!(available(&p, min, now), want, "ready {ready:?} min {min}");
        }
    }

    #[test]
    fn activity_by_phase_and_deletion() {
        let cases = [
            ("Pending", false, true),
            ("Running", false, true),
            ("Succeeded", false, false),
            ("Failed", false, false),
            ("Running", true, false),
        ];
        for (phase, deleting, want) in cases {
            let mut p = pod("p", true, phase, None, 0, 0);
            if deleting {
                p.metadata.deletion_timestamp = Some(t(0));
            }
            assert_eq!(active(&p), want, "{phase} deleting={deleting}");
        }
    }

    #[test]
    fn empty_selectors_match_nothing() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let by_label = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        let by_expr = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: Some(vec!["web".into(), "api".into()]),
            }]),
            ..Default::default()
        };
        let cases = [
            (None, false),
            (Some(LabelSelector::default()), false),
            (Some(by_label), true),
            (Some(by_expr), true),
        ];
        for (sel, want) in cases {
            let m = Matcher::new(sel.as_ref()).unwrap_or(Matcher(None));
            assert_eq!(m.matches(Some(&labels)), want, "{sel:?}");
            assert!(!m.matches(None));
        }
    }
}
