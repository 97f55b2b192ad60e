//! Kubernetes RBAC: Roles and ClusterRoles hold rules, RoleBindings and
//! ClusterRoleBindings give them to users, groups and ServiceAccounts.
//!
//! Evaluation is Kubernetes' `RuleAllows` and `appliesTo`: a ClusterRoleBinding grants
//! its role everywhere, a RoleBinding only inside its namespace (so never on
//! cluster-scoped resources or paths); `*` matches any verb, group or resource,
//! `*/scale` any resource's `scale`, and `pods` does not cover `pods/log`; rules with
//! `resourceNames` match only named requests. The [`Policy`] is a parsed snapshot of every
//! RBAC object, rebuilt when one changes ([`Rbac`]). Creating roles and bindings cannot
//! grant more than the creator holds ([`Policy::uncovered`]), unless the creator may
//! `escalate` or `bind`.

use super::{Attributes, UserInfo};
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One rule of a role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// Verbs, or `*`.
    pub verbs: Vec<String>,
    /// API groups (`""` for core), or `*`.
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`), or `*`.
    pub resources: Vec<String>,
    /// Object names; empty means any.
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/metrics`, `/apis/*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl PolicyRule {
    /// A rule from its JSON form.
    pub fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    /// The rule's JSON form (empty lists left out, as Kubernetes serializes them).
    pub fn to_json(&self) -> Value {
        let mut o = json!({"verbs": self.verbs});
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                o[k] = json!(v);
            }
        }
        o
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        if !has(&self.verbs, a.verb) {
            return false;
        }
        if let Some(path) = a.path {
            return self.non_resource_urls.iter().any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            });
        }
        if !has(&self.api_groups, a.group) {
            return false;
        }
        let combined = match a.sub {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.to_string(),
        };
        let resource = self.resources.iter().any(|r| {
            r == "*" || *r == combined || a.sub.is_some_and(|s| r.strip_prefix("*/") == Some(s))
        });
        if !resource {
            return false;
        }
        self.resource_names.is_empty()
            || a.name
                .is_some_and(|n| self.resource_names.iter().any(|x| x == n))
    }
}

/// Who a binding names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// The name.
    pub name: String,
    /// For a ServiceAccount, its namespace (defaults to the binding's).
    pub namespace: String,
}

impl Subject {
    fn applies_to(&self, u: &UserInfo, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => u.name == self.name,
            "Group" => u.in_group(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                u.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => format!("ServiceAccount \"{}/{}\"", self.name, self.namespace),
            k => format!("{k} \"{}\"", self.name),
        }
    }
}

#[derive(Clone, Debug)]
struct Binding {
    name: String,
    /// Empty for a ClusterRoleBinding.
    ns: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value) -> Binding {
        let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
        Binding {
            name: v["metadata"]["name"].as_str().unwrap_or_default().into(),
            ns: ns.into(),
            role_kind: v["roleRef"]["kind"].as_str().unwrap_or_default().into(),
            role_name: v["roleRef"]["name"].as_str().unwrap_or_default().into(),
            subjects: v["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Subject {
                    kind: s["kind"].as_str().unwrap_or_default().into(),
                    name: s["name"].as_str().unwrap_or_default().into(),
                    namespace: s["namespace"].as_str().unwrap_or(ns).into(),
                })
                .collect(),
        }
    }
}

/// Every RBAC object, parsed.
#[derive(Default, Debug)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

fn rules_of(v: &Value) -> Vec<PolicyRule> {
    v["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(PolicyRule::from_json)
        .collect()
}

impl Policy {
    /// The policy of these stored RBAC objects.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Policy {
        let mut p = Policy::default();
        for o in objects {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match o["kind"].as_str() {
                Some("ClusterRole") => {
                    p.cluster_roles.insert(name, rules_of(o));
                }
                Some("Role") => {
                    p.roles.insert((ns, name), rules_of(o));
                }
                Some("ClusterRoleBinding") => p.cluster_bindings.push(Binding::from_json(o)),
                Some("RoleBinding") => p
                    .bindings
                    .entry(ns)
                    .or_default()
                    .push(Binding::from_json(o)),
                _ => {}
            }
        }
        p
    }

    fn role_rules(&self, b: &Binding) -> &[PolicyRule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" if !b.ns.is_empty() => self.roles.get(&(b.ns.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map_or(&[], Vec::as_slice)
    }

    /// The bindings that apply to `u` for a request in `ns` (cluster-wide ones always,
    /// namespaced ones only in their namespace).
    fn bindings_for<'a>(
        &'a self,
        u: &'a UserInfo,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Binding, &'a Subject)> + 'a {
        let local = ns
            .filter(|n| !n.is_empty())
            .and_then(|n| self.bindings.get(n))
            .into_iter()
            .flatten();
        self.cluster_bindings
            .iter()
            .chain(local)
            .filter_map(move |b| {
                b.subjects
                    .iter()
                    .find(|s| s.applies_to(u, &b.ns))
                    .map(|s| (b, s))
            })
    }

    /// Why `u` may do `a` (`RBAC: allowed by ...`), or `None`.
    pub fn allows(&self, u: &UserInfo, a: &Attributes<'_>) -> Option<String> {
        // Paths and cluster-scoped resources are never granted by a RoleBinding.
        let ns = if a.path.is_some() { None } else { a.ns };
        for (b, s) in self.bindings_for(u, ns) {
            if self.role_rules(b).iter().any(|r| r.allows(a)) {
                let how = if b.ns.is_empty() {
                    format!("ClusterRoleBinding \"{}\"", b.name)
                } else {
                    format!("RoleBinding \"{}/{}\"", b.name, b.ns)
                };
                return Some(format!(
                    "RBAC: allowed by {how} of {} \"{}\" to {}",
                    b.role_kind,
                    b.role_name,
                    s.describe()
                ));
            }
        }
        None
    }

    /// Every rule that applies to `u` in `ns` (`None`: cluster-wide bindings only).
    pub fn rules_for(&self, u: &UserInfo, ns: Option<&str>) -> Vec<PolicyRule> {
        self.bindings_for(u, ns)
            .flat_map(|(b, _)| self.role_rules(b).iter().cloned())
            .collect()
    }

    /// The rules of a binding's role, or why there are none.
    pub fn role_of(&self, kind: &str, ns: &str, name: &str) -> Option<&[PolicyRule]> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).map(Vec::as_slice),
            "Role" => self
                .roles
                .get(&(ns.to_string(), name.to_string()))
                .map(Vec::as_slice),
            _ => None,
        }
    }

    /// The parts of `wanted` that `u`'s own rules in `ns` do not cover: what a Role or
    /// binding created by `u` would grant beyond `u`'s own rights (Kubernetes'
    /// `ConfirmNoEscalation`). Empty means nothing is escalated.
    pub fn uncovered(
        &self,
        u: &UserInfo,
        ns: Option<&str>,
        wanted: &[PolicyRule],
    ) -> Vec<PolicyRule> {
        let owner = self.rules_for(u, ns);
        let mut missing = Vec::new();
        for atom in wanted.iter().flat_map(atoms) {
            if !owner.iter().any(|o| covers(o, &atom)) && !missing.contains(&atom) {
                missing.push(atom);
                // Enough to refuse, and to say why; no need to list every missing one.
                if missing.len() >= MAX_LISTED_MISSING {
                    break;
                }
            }
        }
        missing
    }
}

/// How many missing rules an escalation refusal lists.
const MAX_LISTED_MISSING: usize = 32;

/// The single-verb, single-resource rules `rules` break into (saturating): the work an
/// escalation check does, to be bounded before it starts.
pub fn atom_count(rules: &[PolicyRule]) -> usize {
    rules.iter().fold(0usize, |total, r| {
        let names = r.resource_names.len().max(1);
        let resourceful = r
            .api_groups
            .len()
            .saturating_mul(r.resources.len())
            .saturating_mul(names);
        let per_verb = resourceful.saturating_add(r.non_resource_urls.len());
        total.saturating_add(r.verbs.len().saturating_mul(per_verb))
    })
}

/// A rule broken into single-verb, single-resource (and single-name) rules.
fn atoms(r: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for v in &r.verbs {
        for u in &r.non_resource_urls {
            out.push(PolicyRule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Default::default()
            });
        }
        for g in &r.api_groups {
            for res in &r.resources {
                let one = |names: Vec<String>| PolicyRule {
                    verbs: vec![v.clone()],
                    api_groups: vec![g.clone()],
                    resources: vec![res.clone()],
                    resource_names: names,
                    non_resource_urls: vec![],
                };
                if r.resource_names.is_empty() {
                    out.push(one(vec![]));
                } else {
                    out.extend(r.resource_names.iter().map(|n| one(vec![n.clone()])));
                }
            }
        }
    }
    out
}

/// Whether one owner rule covers one atom.
fn covers(owner: &PolicyRule, atom: &PolicyRule) -> bool {
    let verb = &atom.verbs[0];
    if !has(&owner.verbs, verb) {
        return false;
    }
    if let Some(u) = atom.non_resource_urls.first() {
        return owner
            .non_resource_urls
            .iter()
            .any(|o| o == "*" || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)));
    }
    let (g, res) = (&atom.api_groups[0], &atom.resources[0]);
    if !has(&owner.api_groups, g) {
        return false;
    }
    let res_ok = owner.resources.iter().any(|o| {
        o == "*"
            || o == res
            || res
                .split_once('/')
                .is_some_and(|(_, sub)| o.strip_prefix("*/") == Some(sub))
    });
    res_ok
        && (owner.resource_names.is_empty()
            || atom
                .resource_names
                .first()
                .is_some_and(|n| owner.resource_names.contains(n)))
}

/// `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`, as escalation refusals
/// print a rule.
pub fn describe_rule(r: &PolicyRule) -> String {
    let q = |l: &[String]| {
        l.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", q(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:[{}]", q(&r.resources)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", q(&r.resource_names)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:[{}]", q(&r.non_resource_urls)));
    }
    parts.push(format!("Verbs:[{}]", q(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

/// The rules an aggregated ClusterRole gets: those of every ClusterRole whose labels
/// match one of its `clusterRoleSelectors` (by name order, itself excluded, duplicates
/// dropped), as Kubernetes' clusterrole-aggregation controller computes them.
pub fn aggregate(role: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array()?;
    let me = role["metadata"]["name"].as_str().unwrap_or_default();
    let mut sources: Vec<&Value> = all
        .iter()
        .filter(|o| o["metadata"]["name"].as_str() != Some(me))
        .filter(|o| {
            selectors.iter().any(|s| {
                let labels = &o["metadata"]["labels"];
                s["matchLabels"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
            })
        })
        .collect();
    sources.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut rules: Vec<Value> = Vec::new();
    for s in sources {
        for r in s["rules"].as_array().into_iter().flatten() {
            let norm = PolicyRule::from_json(r).to_json();
            if !rules.contains(&norm) {
                rules.push(norm);
            }
        }
    }
    Some(rules)
}

/// The current policy, rebuilt from the store when RBAC objects change.
pub struct Rbac {
    current: RwLock<Arc<Policy>>,
    dirty: AtomicBool,
    /// One rebuild at a time: a slow rebuild must not publish after a newer one.
    rebuilding: std::sync::Mutex<()>,
}

impl Default for Rbac {
    fn default() -> Self {
        Rbac {
            current: RwLock::new(Arc::new(Policy::default())),
            dirty: AtomicBool::new(true),
            rebuilding: std::sync::Mutex::new(()),
        }
    }
}

impl Rbac {
    /// Mark the policy stale: an RBAC object was written.
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// The policy as the store holds it now.
    pub fn policy(&self, store: &dyn Store) -> Arc<Policy> {
        if self.dirty.load(Ordering::SeqCst) {
            let _one = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
            // Clear first: a write landing while the store is read marks it again. Under
            // the lock, so rebuilds publish in the order they read the store.
            if !self.dirty.swap(false, Ordering::SeqCst) {
                return self
                    .current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
            }
            let mut objects = Vec::new();
            for plural in [
                "clusterroles",
                "roles",
                "clusterrolebindings",
                "rolebindings",
            ] {
                if let Ok(l) = store.list(&format!("{GROUP}/{plural}/"), &Default::default()) {
                    objects.extend(
                        l.items
                            .iter()
                            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok()),
                    );
                }
            }
            let p = Arc::new(Policy::from_objects(&objects));
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = p.clone();
            return p;
        }
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Invalidate whenever `store` changes an RBAC object (writes through this server
    /// invalidate at once; this catches the rest), until `stop` turns true.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let Ok(mut w) = store.watch(&format!("{GROUP}/"), store.revision()) else {
                return;
            };
            self.invalidate();
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    ev = w.next() => match ev {
                        Ok(_) => self.invalidate(),
                        Err(_) => break,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
