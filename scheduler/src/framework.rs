//! The plugin framework: one trait per extension point, as in Kubernetes'
//! `framework/interface.go`.
//!
//! A scheduling cycle starts by preparing a [`Cycle`] for the pod (Kubernetes' PreFilter:
//! the pod's selectors, images and owner turned into symbols once). Every [`Filter`]
//! then judges each candidate node; its [`Verdict`] says "fits", "no, for now"
//! (something that can change, like free memory), "no, never on this node" (a label or
//! taint the pod cannot satisfy) or "broken". The feasible nodes are scored by every
//! [`Score`] plugin (0–100 after [`Score::normalize`]), weighted and summed.

use crate::model::{Interner, NodeInfo, PodInfo, Sym};
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// Highest score a plugin gives a node.
pub const MAX_SCORE: i64 = 100;

/// Why a node was refused; counted per reason in the `FailedScheduling` message.
pub type Reason = Cow<'static, str>;

/// One or more reasons; the common single static reason costs no allocation, which
/// matters because most nodes a large search visits are refused by someone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reasons {
    first: Reason,
    rest: Vec<Reason>,
}

impl Reasons {
    /// One reason.
    pub fn one(r: impl Into<Reason>) -> Reasons {
        Reasons {
            first: r.into(),
            rest: Vec::new(),
        }
    }

    /// Add another reason.
    pub fn and(mut self, r: impl Into<Reason>) -> Reasons {
        self.rest.push(r.into());
        self
    }

    /// Every reason, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Reason> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// A filter's judgement of one node for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The pod may go there.
    Fit,
    /// Not now: it may fit once something changes (pods leave, the node grows).
    Unschedulable(Reasons),
    /// Never on this node as it is (labels, taints): no change to pods will help.
    Unresolvable(Reasons),
    /// The plugin could not decide.
    Error(String),
}

impl Verdict {
    /// Not now, for one reason.
    pub fn unschedulable(r: impl Into<Reason>) -> Verdict {
        Verdict::Unschedulable(Reasons::one(r))
    }

    /// Never here, for one reason.
    pub fn unresolvable(r: impl Into<Reason>) -> Verdict {
        Verdict::Unresolvable(Reasons::one(r))
    }

    /// Whether the node fits.
    pub fn fits(&self) -> bool {
        matches!(self, Verdict::Fit)
    }
}

/// A label requirement resolved to symbols.
#[derive(Clone, Debug)]
pub struct ResolvedReq {
    /// The key; `None` when no node has ever carried it.
    pub key: Option<Sym>,
    /// The requirement as written.
    pub op: Op,
    /// Values that some node carries (unknown values can match no node).
    pub values: Vec<Sym>,
    /// The single integer value of `Gt`/`Lt`.
    pub number: Option<i64>,
}

/// A selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Value in the set.
    In,
    /// Absent, or value not in the set.
    NotIn,
    /// Key present.
    Exists,
    /// Key absent.
    DoesNotExist,
    /// Value is an integer greater than the given one.
    Gt,
    /// Value is an integer less than the given one.
    Lt,
    /// An operator Kubernetes does not define: matches nothing.
    Invalid,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" => Op::Gt,
            "Lt" => Op::Lt,
            _ => Op::Invalid,
        }
    }
}

/// A node selector term resolved to symbols.
#[derive(Clone, Debug, Default)]
pub struct ResolvedTerm {
    /// Label requirements (all must hold).
    pub labels: Vec<ResolvedReq>,
    /// `metadata.name` requirements: (op, names).
    pub names: Vec<(Op, Vec<String>)>,
}

impl ResolvedReq {
    /// Whether a node satisfies the requirement.
    pub fn matches(&self, node: &NodeInfo, interner: &Interner) -> bool {
        let have = self.key.and_then(|k| node.label(k));
        match self.op {
            Op::In => have.is_some_and(|v| self.values.contains(&v)),
            Op::NotIn => have.is_none_or(|v| !self.values.contains(&v)),
            Op::Exists => have.is_some(),
            Op::DoesNotExist => have.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(v), Some(n)) = (have, self.number) else {
                    return false;
                };
                match interner.name(v).parse::<i64>() {
                    Ok(x) if self.op == Op::Gt => x > n,
                    Ok(x) => x < n,
                    Err(_) => false,
                }
            }
            Op::Invalid => false,
        }
    }
}

impl ResolvedTerm {
    /// Whether a node satisfies every requirement of the term. An empty term matches
    /// nothing, as in Kubernetes.
    pub fn matches(&self, node: &NodeInfo, interner: &Interner) -> bool {
        if self.labels.is_empty() && self.names.is_empty() {
            return false;
        }
        self.labels.iter().all(|r| r.matches(node, interner))
            && self.names.iter().all(|(op, names)| {
                let has = names.iter().any(|n| **n == *node.name);
                match op {
                    Op::In => has,
                    Op::NotIn => !has,
                    _ => false,
                }
            })
    }
}

/// The pod being placed, prepared once per scheduling cycle.
pub struct Cycle<'a> {
    /// The pod.
    pub pod: &'a PodInfo,
    /// The cluster's interner.
    pub interner: &'a Interner,
    /// The node selector as symbols; `None` if some pair is carried by no node at all.
    pub selector: Option<Vec<(Sym, Sym)>>,
    /// Required affinity terms (any must match); empty when the pod has none.
    pub required: Vec<ResolvedTerm>,
    /// Preferred affinity terms with weights.
    pub preferred: Vec<(i64, ResolvedTerm)>,
    /// Images that some node reports.
    pub images: Vec<Sym>,
    /// Controlling owner, if some node already runs one of its pods.
    pub owner: Option<Sym>,
    /// Number of nodes in the cluster.
    pub total_nodes: usize,
    /// For each image, how many nodes report it.
    pub image_nodes: &'a FxHashMap<Sym, u32>,
}

fn resolve_term(t: &crate::model::Term, interner: &Interner) -> ResolvedTerm {
    ResolvedTerm {
        labels: t
            .labels
            .iter()
            .map(|r| ResolvedReq {
                key: interner.get(&r.key),
                op: Op::parse(&r.op),
                values: r.values.iter().filter_map(|v| interner.get(v)).collect(),
                number: match r.values.as_slice() {
                    [one] => one.parse().ok(),
                    _ => None,
                },
            })
            .collect(),
        names: t
            .fields
            .iter()
            .filter(|r| r.key == "metadata.name")
            .map(|r| (Op::parse(&r.op), r.values.clone()))
            .collect(),
    }
}

impl<'a> Cycle<'a> {
    /// Prepare `pod` against the cluster's symbols.
    pub fn new(
        pod: &'a PodInfo,
        interner: &'a Interner,
        total_nodes: usize,
        image_nodes: &'a FxHashMap<Sym, u32>,
    ) -> Cycle<'a> {
        let selector = pod
            .node_selector
            .iter()
            .map(|(k, v)| Some((interner.get(k)?, interner.get(v)?)))
            .collect::<Option<Vec<_>>>();
        Cycle {
            pod,
            interner,
            selector,
            required: pod
                .required_terms
                .iter()
                .map(|t| resolve_term(t, interner))
                .collect(),
            preferred: pod
                .preferred_terms
                .iter()
                .map(|(w, t)| (i64::from(*w), resolve_term(t, interner)))
                .collect(),
            images: pod.images.iter().filter_map(|i| interner.get(i)).collect(),
            owner: pod.owner.as_deref().and_then(|o| interner.get(o)),
            total_nodes,
            image_nodes,
        }
    }
}

/// The Filter extension point: may the pod run on this node?
pub trait Filter: Send + Sync {
    /// The plugin's name (used in queueing decisions and logs).
    fn name(&self) -> &'static str;
    /// Judge one node.
    fn filter(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> Verdict;
    /// Whether the filter has anything to check for this pod (Kubernetes' PreFilter
    /// `Skip`); a skipped filter is not called for any node.
    fn applies(&self, _cycle: &Cycle<'_>) -> bool {
        true
    }
    /// Whether the verdict depends only on the node object and the pod's
    /// [`PodInfo::static_signature`] parts — not on the pods placed on the node. Such
    /// verdicts are computed once per pod shape and node version and shared.
    ///
    /// [`PodInfo::static_signature`]: crate::model::PodInfo::static_signature
    fn node_static(&self) -> bool {
        false
    }
    /// Keep in `candidates` (indexes into `nodes`) the nodes that fit. The default calls
    /// [`Filter::filter`] for each; being generic per plugin, it costs one dynamic call
    /// per batch instead of one per node.
    fn filter_many(&self, cycle: &Cycle<'_>, nodes: &[NodeInfo], candidates: &mut Vec<usize>) {
        candidates.retain(|&i| self.filter(cycle, &nodes[i]).fits());
    }
}

/// The Score extension point: how good is this feasible node?
pub trait Score: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> &'static str;
    /// A raw score for one node (0–100 unless [`Score::normalize`] maps it there).
    fn score(&self, cycle: &Cycle<'_>, node: &NodeInfo) -> i64;
    /// Map the raw scores of all feasible nodes to 0–100 (Kubernetes' NormalizeScore).
    fn normalize(&self, _scores: &mut [i64]) {}
    /// Whether the score can tell nodes apart for this pod (Kubernetes' PreScore
    /// `Skip`); a skipped score adds the same to every node, so it is not computed.
    fn applies(&self, _cycle: &Cycle<'_>) -> bool {
        true
    }
    /// Raw scores of the `feasible` nodes (indexes into `nodes`), appended to `out` in
    /// order. The default calls [`Score::score`] for each, with one dynamic call per
    /// batch.
    fn score_many(
        &self,
        cycle: &Cycle<'_>,
        nodes: &[NodeInfo],
        feasible: &[usize],
        out: &mut Vec<i64>,
    ) {
        out.extend(feasible.iter().map(|&i| self.score(cycle, &nodes[i])));
    }
}

/// The plugins of a profile, in the order they run.
pub struct Framework {
    /// Filters, cheapest and most selective first.
    pub filters: Vec<Box<dyn Filter>>,
    /// Score plugins with their weights.
    pub scores: Vec<(Box<dyn Score>, i64)>,
}

impl Framework {
    /// Skiff's default profile.
    pub fn default_profile() -> Framework {
        use crate::plugins::*;
        Framework {
            filters: vec![
                Box::new(NodeUnschedulable),
                Box::new(NodeReady),
                Box::new(TaintToleration),
                Box::new(NodeAffinity),
                Box::new(NodePorts),
                Box::new(NodeResourcesFit),
            ],
            scores: vec![
                (Box::new(LeastAllocated), 1),
                (Box::new(BalancedAllocation), 1),
                (Box::new(OwnerSpread), 2),
                (Box::new(ImageLocality), 1),
                (Box::new(PreferredNodeAffinity), 2),
            ],
        }
    }
}
