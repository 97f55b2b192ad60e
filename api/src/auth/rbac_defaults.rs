//! The ClusterRoles and ClusterRoleBindings every cluster starts with, as Kubernetes'
//! bootstrap policy defines them: `cluster-admin`, the aggregated `admin` ⊇ `edit` ⊇
//! `view` with the `system:aggregate-to-*` roles they are made of, and the small roles
//! every authenticated caller holds (`system:basic-user`, `system:discovery`,
//! `system:public-info-viewer`). The server creates them when missing and puts back
//! rules and subjects that were removed from those marked
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`.

use super::rbac::aggregate;
use serde_json::{Value, json};

const RW: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            l[k] = v.clone();
        }
    }
    json!({"name": name, "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: Value, to: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}]},
        "rules": []})
}

fn binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(name, json!({})),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": subjects})
}

fn aggregate_to_view() -> Value {
    role(
        "system:aggregate-to-view",
        json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
        vec![
            rule(
                &[""],
                &[
                    "configmaps",
                    "endpoints",
                    "persistentvolumeclaims",
                    "persistentvolumeclaims/status",
                    "pods",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "serviceaccounts",
                    "services",
                    "services/status",
                ],
                READ,
            ),
            rule(
                &[""],
                &[
                    "bindings",
                    "events",
                    "limitranges",
                    "namespaces/status",
                    "pods/log",
                    "pods/status",
                    "replicationcontrollers/status",
                    "resourcequotas",
                    "resourcequotas/status",
                ],
                READ,
            ),
            rule(&[""], &["namespaces"], READ),
            rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            rule(
                &["apps"],
                &[
                    "controllerrevisions",
                    "daemonsets",
                    "daemonsets/status",
                    "deployments",
                    "deployments/scale",
                    "deployments/status",
                    "replicasets",
                    "replicasets/scale",
                    "replicasets/status",
                    "statefulsets",
                    "statefulsets/scale",
                    "statefulsets/status",
                ],
                READ,
            ),
            rule(
                &["autoscaling"],
                &[
                    "horizontalpodautoscalers",
                    "horizontalpodautoscalers/status",
                ],
                READ,
            ),
            rule(
                &["batch"],
                &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                READ,
            ),
            rule(
                &["policy"],
                &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                READ,
            ),
            rule(
                &["networking.k8s.io"],
                &["ingresses", "ingresses/status", "networkpolicies"],
                READ,
            ),
        ],
    )
}

fn aggregate_to_edit() -> Value {
    role(
        "system:aggregate-to-edit",
        json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
        vec![
            rule(
                &[""],
                &[
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                    "secrets",
                    "services/proxy",
                ],
                READ,
            ),
            rule(&[""], &["serviceaccounts"], &["impersonate"]),
            rule(
                &[""],
                &[
                    "pods",
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                ],
                RW,
            ),
            rule(&[""], &["pods/eviction"], &["create"]),
            rule(
                &[""],
                &[
                    "configmaps",
                    "events",
                    "persistentvolumeclaims",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "secrets",
                    "serviceaccounts",
                    "services",
                    "services/proxy",
                ],
                RW,
            ),
            rule(&[""], &["serviceaccounts/token"], &["create"]),
            rule(
                &["apps"],
                &[
                    "daemonsets",
                    "deployments",
                    "deployments/rollback",
                    "deployments/scale",
                    "replicasets",
                    "replicasets/scale",
                    "statefulsets",
                    "statefulsets/scale",
                ],
                RW,
            ),
            rule(&["autoscaling"], &["horizontalpodautoscalers"], RW),
            rule(&["batch"], &["cronjobs", "jobs"], RW),
            rule(&["policy"], &["poddisruptionbudgets"], RW),
            rule(
                &["networking.k8s.io"],
                &["ingresses", "networkpolicies"],
                RW,
            ),
            rule(&["coordination.k8s.io"], &["leases"], ALL),
        ],
    )
}

fn aggregate_to_admin() -> Value {
    role(
        "system:aggregate-to-admin",
        json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
        vec![
            rule(
                &["authorization.k8s.io"],
                &["localsubjectaccessreviews"],
                &["create"],
            ),
            rule(
                &["rbac.authorization.k8s.io"],
                &["rolebindings", "roles"],
                ALL,
            ),
        ],
    )
}

/// The default ClusterRoles, aggregated ones with their rules filled in, then the
/// default ClusterRoleBindings.
pub fn objects() -> Vec<Value> {
    let mut roles = vec![
        role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", json!({}), "admin"),
        aggregated(
            "edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            "edit",
        ),
        aggregated(
            "view",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            "view",
        ),
        aggregate_to_view(),
        aggregate_to_edit(),
        aggregate_to_admin(),
        role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        role(
            "system:discovery",
            json!({}),
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        role(
            "system:monitoring",
            json!({}),
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
    ];
    // Aggregate until nothing changes: edit takes view's rules, then admin edit's.
    for _ in 0..4 {
        let snapshot = roles.clone();
        for r in &mut roles {
            if let Some(rules) = aggregate(r, &snapshot) {
                r["rules"] = json!(rules);
            }
        }
        if roles == snapshot {
            break;
        }
    }
    roles.extend([
        binding("cluster-admin", &["system:masters"]),
        binding("system:basic-user", &["system:authenticated"]),
        binding("system:discovery", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:monitoring", &["system:monitoring"]),
    ]);
    roles
}
