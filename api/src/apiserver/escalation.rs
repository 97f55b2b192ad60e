//! Roles and bindings cannot grant more than their writer holds (Kubernetes' RBAC
//! escalation checks, done where the object is written).

use super::Api;
use crate::auth::rbac::{self, PolicyRule, describe_rule};
use crate::auth::{Attributes, UserInfo};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use serde_json::Value;

impl Api {
    /// Refuse a Role, ClusterRole, RoleBinding or ClusterRoleBinding that `u` may not
    /// write: one granting rules `u` does not hold itself, unless `u` may `escalate` (for
    /// roles) or `bind` (for bindings) the role.
    pub fn check_escalation(
        &self,
        u: &UserInfo,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
    ) -> ApiResult<()> {
        if res.group != rbac::GROUP || u.is_master() {
            return Ok(());
        }
        let policy = self.rbac.policy(&*self.store);
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let scope = if res.namespaced { ns } else { None };
        let may = |verb: &str, resource: &str, role: &str| {
            let a = Attributes {
                verb,
                group: rbac::GROUP,
                resource,
                sub: None,
                ns: scope,
                name: Some(role),
                res: None,
                path: None,
            };
            policy.allows(u, &a).is_some()
        };
        let wanted: Vec<PolicyRule> = match res.kind {
            "Role" | "ClusterRole" => {
                if res.kind == "ClusterRole" && obj["aggregationRule"].is_object() {
                    let all = [
                        PolicyRule {
                            verbs: vec!["*".into()],
                            api_groups: vec!["*".into()],
                            resources: vec!["*".into()],
                            ..Default::default()
                        },
                        PolicyRule {
                            verbs: vec!["*".into()],
                            non_resource_urls: vec!["*".into()],
                            ..Default::default()
                        },
                    ];
                    if !policy.uncovered(u, None, &all).is_empty() {
                        return Err(ApiError::forbidden(format!(
                            "clusterroles.rbac.authorization.k8s.io \"{name}\" is forbidden: must have cluster-admin privileges to use the aggregationRule"
                        )));
                    }
                    return Ok(());
                }
                if may("escalate", res.plural, name) {
                    return Ok(());
                }
                obj["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(PolicyRule::from_json)
                    .collect()
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
                let plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", plural, role) {
                    return Ok(());
                }
                match policy.role_of(kind, ns.unwrap_or_default(), role) {
                    Some(rules) => rules.to_vec(),
                    None => {
                        return Err(ApiError {
                            code: 404,
                            reason: "NotFound",
                            message: format!(
                                "{plural}.rbac.authorization.k8s.io \"{role}\" not found"
                            ),
                            details: None,
                        });
                    }
                }
            }
            _ => return Ok(()),
        };
        // Each rule is checked as the product of its verbs, groups, resources and names:
        // bound the work before doing it.
        const MAX_ATOMS: usize = 100_000;
        if rbac::atom_count(&wanted) > MAX_ATOMS {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: its rules expand to more than {MAX_ATOMS} verb-resource pairs, too many to check against what {} holds; a cluster admin must write it",
                res.qualified(),
                u.describe()
            )));
        }
        let missing = policy.uncovered(u, scope, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = missing.iter().map(describe_rule).collect();
        Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {} is attempting to grant RBAC permissions not currently held:\n{}",
            res.qualified(),
            u.describe(),
            lines.join("\n")
        )))
    }
}
