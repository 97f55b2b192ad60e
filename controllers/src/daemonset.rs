//! The DaemonSet controller: one pod on every eligible node.
//!
//! A node is eligible ([`eligible`]) when it carries the labels of the template's
//! `nodeSelector` and of its RuntimeClass's `scheduling.nodeSelector`, satisfies the
//! required node affinity, and every `NoSchedule`/`NoExecute` taint on it is tolerated
//! (DaemonSet pods tolerate the node-condition taints, as in Kubernetes). Each pod is
//! pinned to its node the way Kubernetes does it: a required node affinity on
//! `metadata.name`, which the scheduler honours. [`plan`] decides, per node, what to
//! create and delete, including a `RollingUpdate` that replaces out-of-date pods (marked
//! with the template's hash in `controller-revision-hash`) no faster than
//! `maxUnavailable` allows; `OnDelete` replaces a pod only once someone deletes it.

use crate::children;
use crate::deployment::hash::template_hash;
use crate::deployment::rollout;
use crate::pods::{self, Matcher};
use crate::run::Context;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::api::node::v1::Scheduling;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Pods created at once at most, per reconcile (the rest wait for the next one).
const BURST: usize = 500;

/// The label carrying the hash of the template a pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// Failures of a reconcile.
pub use crate::ReconcileError as Error;

/// How errors name this kind.
const KIND: &str = "daemon set";

/// Taints on a node's conditions, which DaemonSet pods tolerate (Kubernetes adds the
/// same tolerations to them).
const CONDITION_TAINTS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

fn condition_tolerations() -> Vec<Toleration> {
    CONDITION_TAINTS
        .iter()
        .map(|(key, effect)| Toleration {
            key: Some((*key).into()),
            operator: Some("Exists".into()),
            effect: Some((*effect).into()),
            ..Default::default()
        })
        .collect()
}

fn tolerates(t: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == effect);
    let exists = t.operator.as_deref() == Some("Exists");
    let key_ok = match t.key.as_deref() {
        None | Some("") => exists,
        Some(k) => k == key,
    };
    let value_ok = exists || t.value.as_deref().unwrap_or("") == value.unwrap_or("");
    effect_ok && key_ok && value_ok
}

fn requirement_ok(r: &NodeSelectorRequirement, have: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => have.is_some_and(|h| values.iter().any(|v| v == h)),
        "NotIn" => have.is_none_or(|h| values.iter().all(|v| v != h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => match (have.and_then(num), values.first().and_then(|v| num(v))) {
            (Some(h), Some(v)) => {
                if r.operator == "Gt" {
                    h > v
                } else {
                    h < v
                }
            }
            _ => false,
        },
        _ => false,
    }
}

fn term_ok(t: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let name = node.name_any();
    let exprs = t.match_expressions.iter().flatten();
    let fields = t.match_fields.iter().flatten();
    let has_any = t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
        || t.match_fields.as_ref().is_some_and(|f| !f.is_empty());
    has_any
        && exprs
            .into_iter()
            .all(|r| requirement_ok(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .into_iter()
            .all(|r| r.key == "metadata.name" && requirement_ok(r, Some(name.as_str())))
}

/// Whether a pod with `spec` (and its RuntimeClass's `class` scheduling, if any) belongs
/// on `node`.
pub fn eligible(node: &Node, spec: &PodSpec, class: Option<&Scheduling>) -> bool {
    let labels = node.labels();
    let selected = |sel: Option<&BTreeMap<String, String>>| {
        sel.into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    if !selected(spec.node_selector.as_ref())
        || !selected(class.and_then(|c| c.node_selector.as_ref()))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required
        && !req.node_selector_terms.iter().any(|t| term_ok(t, node))
    {
        return false;
    }
    let defaults = condition_tolerations();
    let tolerations: Vec<&Toleration> = spec
        .tolerations
        .iter()
        .flatten()
        .chain(
            class
                .and_then(|c| c.tolerations.as_ref())
                .into_iter()
                .flatten(),
        )
        .chain(defaults.iter())
        .collect();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            tolerations
                .iter()
                .any(|tol| tolerates(tol, &t.key, t.value.as_deref(), &t.effect))
        })
}

/// The node a daemon pod is for: its `spec.nodeName`, or the node its required affinity
/// names.
pub fn node_of(p: &Pod) -> Option<&str> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}

/// One node as the plan sees it.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Whether a daemon pod belongs there.
    pub should_run: bool,
    /// Its daemon pods that are active.
    pub active: Vec<Arc<Pod>>,
    /// Its daemon pods that failed (replaced, as in Kubernetes).
    pub failed: Vec<Arc<Pod>>,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that need a pod.
    pub create_on: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.labels().get(HASH_LABEL).map(String::as_str)
}

/// Decide creations and deletions. `rolling` is `Some(maxUnavailable)` for
/// `RollingUpdate`, `None` for `OnDelete`.
pub fn plan(
    nodes: &[NodeState],
    hash: &str,
    rolling: Option<i32>,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Plan {
    let mut p = Plan::default();
    let available = |pod: &Pod| pods::available(pod, min_ready_seconds, now).yes();
    // The pod kept on each node that should run one.
    let mut kept: Vec<(&str, &Arc<Pod>)> = Vec::new();
    let mut unavailable = 0;
    for n in nodes {
        p.delete.extend(n.failed.iter().map(|f| f.name_any()));
        if !n.should_run {
            p.delete.extend(n.active.iter().map(|a| a.name_any()));
            continue;
        }
        if n.active.is_empty() {
            p.create_on.push(n.name.clone());
            unavailable += 1;
            continue;
        }
        // Keep one: up to date first, then available, then the oldest.
        let mut pods: Vec<&Arc<Pod>> = n.active.iter().collect();
        pods.sort_by(|a, b| {
            (hash_of(b) == Some(hash))
                .cmp(&(hash_of(a) == Some(hash)))
                .then_with(|| available(b).cmp(&available(a)))
                .then_with(|| {
                    a.metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp)
                })
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        p.delete.extend(pods[1..].iter().map(|x| x.name_any()));
        if !available(pods[0]) {
            unavailable += 1;
        }
        kept.push((n.name.as_str(), pods[0]));
    }
    let Some(max_unavailable) = rolling else {
        return p;
    };
    let old: Vec<&Arc<Pod>> = kept
        .iter()
        .map(|(_, pod)| *pod)
        .filter(|pod| hash_of(pod) != Some(hash))
        .collect();
    // Out-of-date pods that are not available anyway go at once; available ones only as
    // far as `maxUnavailable` allows.
    let mut budget = max_unavailable - unavailable;
    for pod in &old {
        if !available(pod) {
            p.delete.push(pod.name_any());
        }
    }
    for pod in old.iter().filter(|pod| available(pod)) {
        if budget <= 0 {
            break;
        }
        p.delete.push(pod.name_any());
        budget -= 1;
    }
    p
}

/// The pod for `node`: the template, labelled with its hash, pinned to the node by a
/// required node affinity, tolerating the node-condition taints.
fn pod_for(ds: &DaemonSet, ns: &str, hash: &str, node: &str) -> Option<Pod> {
    let spec = ds.spec.as_ref()?;
    let owner = pods::controller_ref(
        "apps/v1",
        "DaemonSet",
        &ds.name_any(),
        ds.metadata.uid.as_deref()?,
    );
    let mut pod =
        children::pod_from_template(&spec.template, &format!("{}-", ds.name_any()), ns, owner);
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let ps = pod.spec.get_or_insert_with(Default::default);
    let affinity = ps.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
    for t in condition_tolerations() {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    Some(pod)
}

/// Reconcile one DaemonSet.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::terminating(&ds.metadata) {
        return Ok(Action::await_change());
    }
    let name = ds.name_any();
    let (ns, uid) = crate::identity(ds.as_ref(), KIND)?;
    let spec = ds.spec.as_ref().ok_or(Error::missing(KIND, "spec"))?;
    let matcher = Matcher::new(Some(&spec.selector))?;
    let owner = pods::controller_ref("apps/v1", "DaemonSet", &name, &uid);
    let claimed = children::claim(&ctx.client, &ctx.pods, &owner, false, &matcher, &ns).await?;
    if !ctx
        .expectations
        .satisfied(&uid, ctx.pods.revision(), |u| ctx.pods.holds_live(u))
    {
        tracing::debug!(daemonset = %name, namespace = %ns, "waiting for the pod cache");
        return Ok(Action::requeue(crate::expectations::TIMEOUT));
    }
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let class = match template_spec.runtime_class_name.as_deref() {
        None => None,
        Some(c) => match ctx.runtime_classes.store().get(&ObjectRef::new(c)) {
            Some(rc) => Some(rc.scheduling.clone().unwrap_or_default()),
            None => {
                tracing::warn!(daemonset = %name, namespace = %ns, runtime_class = c, "no such RuntimeClass: no node is eligible");
                Some(Scheduling {
                    // A label no node has: the pods could not be created anyway.
                    node_selector: Some(BTreeMap::from([(
                        "runtime.skiff.dev/missing-runtime-class".into(),
                        c.into(),
                    )])),
                    tolerations: None,
                })
            }
        },
    };
    // Per node: (active pods, failed pods).
    type OnNode = (Vec<Arc<Pod>>, Vec<Arc<Pod>>);
    let mut by_node: HashMap<&str, OnNode> = HashMap::new();
    let mut unplaced = Vec::new();
    for p in &claimed {
        let Some(node) = node_of(p) else {
            unplaced.push(p.clone());
            continue;
        };
        let entry = by_node.entry(node).or_default();
        if pods::active(p) {
            entry.0.push(p.clone());
        } else if pods::failed(p) && !pods::terminating(&p.metadata) {
            entry.1.push(p.clone());
        }
    }
    let mut nodes: Vec<NodeState> = ctx
        .nodes
        .store()
        .state()
        .iter()
        .map(|n| {
            let node = n.name_any();
            let (active, failed) = by_node.remove(node.as_str()).unwrap_or_default();
            NodeState {
                should_run: eligible(n, &template_spec, class.as_ref()),
                name: node,
                active,
                failed,
            }
        })
        .collect();
    // Pods for nodes that no longer exist.
    for (node, (active, failed)) in by_node {
        nodes.push(NodeState {
            name: node.to_string(),
            should_run: false,
            active,
            failed,
        });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let hash = template_hash(&spec.template, None);
    let desired = i32::try_from(nodes.iter().filter(|n| n.should_run).count()).unwrap_or(i32::MAX);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = if strategy.type_.as_deref() == Some("OnDelete") {
        None
    } else {
        let ru = strategy.rolling_update.unwrap_or_default();
        let one = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1);
        Some(
            rollout::scaled(
                Some(ru.max_unavailable.as_ref().unwrap_or(&one)),
                desired,
                true,
            )?
            .max(1),
        )
    };
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = pods::now();
    let plan = plan(&nodes, &hash, rolling, min_ready, now);

    if !plan.delete.is_empty() {
        let victims: Vec<Arc<Pod>> = claimed
            .iter()
            .filter(|p| plan.delete.contains(&p.name_any()))
            .cloned()
            .collect();
        children::delete_pods(&ctx, ds.as_ref(), &victims).await?;
        tracing::info!(daemonset = %name, namespace = %ns, deleted = victims.len(), "deleted daemon pods");
    }
    let creates = plan.create_on.iter().take(BURST).filter_map(|node| {
        let pod = pod_for(&ds, &ns, &hash, node)?;
        let ctx = &ctx;
        let ds = ds.as_ref();
        Some(async move { (node, children::create_pods(ctx, ds, &pod, 1).await) })
    });
    for (node, (created, error)) in futures::future::join_all(creates).await {
        if let Some(p) = created.first() {
            tracing::info!(daemonset = %name, namespace = %ns, %node, pod = %p, "created daemon pod");
        }
        if let Some(e) = error {
            return Err(e.into());
        }
    }

    // The status, from the cache (new pods show up with their events).
    let (mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0);
    let mut next_available: Option<i64> = None;
    for n in &nodes {
        let Some(p) = n.active.first() else { continue };
        if !n.should_run {
            misscheduled += 1;
            continue;
        }
        current += 1;
        let p = n
            .active
            .iter()
            .find(|x| hash_of(x) == Some(hash.as_str()))
            .unwrap_or(p);
        if hash_of(p) == Some(hash.as_str()) {
            updated += 1;
        }
        if pods::ready(p) {
            ready += 1;
        }
        match pods::available(p, min_ready, now) {
            pods::Availability::Yes => available += 1,
            pods::Availability::InSeconds(s) => {
                next_available = Some(next_available.map_or(s, |x| x.min(s)))
            }
            pods::Availability::No => {}
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    crate::write_status::<DaemonSet, _>(&ctx.client, &ns, &name, &old, &status).await?;
    if !unplaced.is_empty() {
        tracing::debug!(daemonset = %name, namespace = %ns, pods = unplaced.len(), "pods without a node ignored");
    }
    Ok(match next_available {
        Some(s) => Action::requeue(Duration::from_secs(s.unsigned_abs())),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: (*k).into(),
                            effect: (*e).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn eligibility_by_selector_affinity_taints_and_runtime_class() {
        let wasm = node(
            "w",
            &[("runtime.skiff.dev/wasm", "true"), ("zone", "a")],
            &[],
        );
        let tainted = node(
            "t",
            &[("runtime.skiff.dev/wasm", "true")],
            &[("dedicated", "NoSchedule")],
        );
        let not_ready = node("n", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]);
        let prefer = node("p", &[], &[("dedicated", "PreferNoSchedule")]);
        let wasm_class = Scheduling {
            node_selector: Some(BTreeMap::from([(
                "runtime.skiff.dev/wasm".to_string(),
                "true".to_string(),
            )])),
            tolerations: None,
        };
        let zone_b = PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: "In".into(),
                                values: Some(vec!["b".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tolerate_all = PodSpec {
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let plain = PodSpec::default();
        let cases = [
            (&wasm, &plain, None, true),
            (&wasm, &plain, Some(&wasm_class), true),
            (&not_ready, &plain, Some(&wasm_class), false),
            (&not_ready, &plain, None, true),
            (&tainted, &plain, None, false),
            (&tainted, &tolerate_all, None, true),
            (&prefer, &plain, None, true),
            (&wasm, &zone_b, None, false),
        ];
        for (n, spec, class, want) in cases {
            assert_eq!(
                eligible(n, spec, class),
                want,
                "{} {spec:?} {class:?}",
                n.name_any()
            );
        }
    }

    fn pod(name: &str, hash: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(HASH_LABEL.to_string(), hash.to_string())])),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn state(name: &str, should_run: bool, active: Vec<Arc<Pod>>) -> NodeState {
        NodeState {
            name: name.into(),
            should_run,
            active,
            failed: vec![],
        }
    }

    #[test]
    fn plans_place_one_pod_per_node_and_roll_within_max_unavailable() {
        let now = pods::now();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            // Missing pods are created; pods on ineligible nodes go; duplicates go.
            (
                vec![
                    state("a", true, vec![]),
                    state("b", false, vec![pod("b1", "new", true)]),
                    state(
                        "c",
                        true,
                        vec![pod("c1", "new", true), pod("c2", "new", true)],
                    ),
                ],
                Some(1),
                Plan {
                    create_on: names(&["a"]),
                    delete: names(&["b1", "c2"]),
                },
            ),
            // Rolling with maxUnavailable 1: one available old pod at a time.
            (
                vec![
                    state("a", true, vec![pod("a1", "old", true)]),
                    state("b", true, vec![pod("b1", "old", true)]),
                ],
                Some(1),
                Plan {
                    create_on: vec![],
                    delete: names(&["a1"]),
                },
            ),
            // One node is already down (being replaced): nothing more may go, except
            // old pods that are not available anyway.
            (
                vec![
                    state("a", true, vec![]),
                    state("b", true, vec![pod("b1", "old", true)]),
                    state("c", true, vec![pod("c1", "old", false)]),
                ],
                Some(1),
                Plan {
                    create_on: names(&["a"]),
                    delete: names(&["c1"]),
                },
            ),
            (
                vec![
                    state("a", true, vec![pod("a1", "old", true)]),
                    state("b", true, vec![pod("b1", "old", true)]),
                ],
                Some(2),
                Plan {
                    create_on: vec![],
                    delete: names(&["a1", "b1"]),
                },
            ),
            // OnDelete: old pods stay.
            (
                vec![state("a", true, vec![pod("a1", "old", true)])],
                None,
                Plan::default(),
            ),
        ];
        for (nodes, rolling, want) in cases {
            assert_eq!(plan(&nodes, "new", rolling, 0, now), want, "{nodes:#?}");
        }
    }
}
