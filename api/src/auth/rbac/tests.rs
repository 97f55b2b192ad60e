#![allow(clippy::unwrap_used)]
use super::*;
use crate::auth::Attributes;
use serde_json::json;

fn attrs<'a>(
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    sub: Option<&'a str>,
    ns: Option<&'a str>,
    name: Option<&'a str>,
) -> Attributes<'a> {
    Attributes {
        verb,
        group,
        resource,
        sub,
        ns,
        name,
        res: None,
        path: None,
    }
}

#[test]
fn rules_match_as_kubernetes_rule_allows() {
    let r = |v: Value| PolicyRule::from_json(&v);
    let pods_read = r(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}));
    let a = |verb, res, sub, name| attrs(verb, "", res, sub, Some("d"), name);
    assert!(pods_read.allows(&a("get", "pods", None, Some("x"))));
    assert!(!pods_read.allows(&a("delete", "pods", None, Some("x"))));
    assert!(
        !pods_read.allows(&a("get", "pods", Some("log"), Some("x"))),
        "pods does not cover pods/log"
    );
    assert!(
        !pods_read.allows(&attrs("get", "apps", "pods", None, None, None)),
        "group"
    );
    let scale = r(json!({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["*"]}));
    assert!(scale.allows(&attrs(
        "patch",
        "apps",
        "deployments",
        Some("scale"),
        None,
        Some("w")
    )));
    assert!(!scale.allows(&attrs(
        "patch",
        "apps",
        "deployments",
        None,
        None,
        Some("w")
    )));
    let star = r(json!({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}));
    assert!(
        !star.allows(&a("get", "pods", Some("log"), None)),
        "pods/* is no wildcard"
    );
    let named = r(
        json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app"], "verbs": ["get", "list"]}),
    );
    assert!(named.allows(&attrs("get", "", "configmaps", None, None, Some("app"))));
    assert!(!named.allows(&attrs("get", "", "configmaps", None, None, Some("other"))));
    assert!(
        !named.allows(&attrs("list", "", "configmaps", None, None, None)),
        "unnamed list"
    );
    let urls = r(json!({"nonResourceURLs": ["/apis/*", "/metrics"], "verbs": ["get"]}));
    assert!(urls.allows(&Attributes::path("get", "/metrics")));
    assert!(urls.allows(&Attributes::path("get", "/apis/apps/v1")));
    assert!(
        !urls.allows(&Attributes::path("get", "/apis")),
        "/apis/* does not match /apis"
    );
    assert!(!urls.allows(&Attributes::path("post", "/metrics")));
    assert!(
        !urls.allows(&a("get", "pods", None, None)),
        "paths do not grant resources"
    );
}

fn policy() -> Policy {
    let mut objects = crate::auth::rbac_defaults::objects();
    objects.extend([
        json!({"kind": "RoleBinding", "metadata": {"name": "alice-edit", "namespace": "dev"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "viewers"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "auditors"}]}),
        json!({"kind": "Role", "metadata": {"name": "cm-reader", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        json!({"kind": "RoleBinding", "metadata": {"name": "app-reads", "namespace": "dev"},
            "roleRef": {"kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "app"}]}),
    ]);
    Policy::from_objects(&objects)
}

#[test]
fn bindings_grant_where_they_are() {
    let p = policy();
    let alice = UserInfo::new("alice", []);
    let auditor = UserInfo::new("bob", ["auditors".to_string()]);
    let app = UserInfo::new("system:serviceaccount:dev:app", []);
    let other_app = UserInfo::new("system:serviceaccount:prod:app", []);
    let pods = |verb, ns| attrs(verb, "", "pods", None, ns, None);
    assert!(p.allows(&alice, &pods("create", Some("dev"))).is_some());
    assert!(
        p.allows(&alice, &pods("create", Some("prod"))).is_none(),
        "a RoleBinding stays in its namespace"
    );
    assert!(
        p.allows(&alice, &pods("list", None)).is_none(),
        "nor across namespaces"
    );
    assert!(
        p.allows(
            &alice,
            &attrs("get", "", "secrets", None, Some("dev"), Some("s"))
        )
        .is_some(),
        "edit reads secrets"
    );
    assert!(
        p.allows(
            &alice,
            &attrs(
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                None,
                Some("dev"),
                None
            )
        )
        .is_none(),
        "edit does not bind"
    );
    assert!(
        p.allows(&auditor, &pods("list", None)).is_some(),
        "a ClusterRoleBinding applies everywhere"
    );
    assert!(
        p.allows(
            &auditor,
            &attrs("get", "", "secrets", None, Some("dev"), Some("s"))
        )
        .is_none(),
        "view reads no secrets"
    );
    assert!(
        p.allows(
            &auditor,
            &attrs("get", "", "pods", Some("log"), Some("dev"), Some("x"))
        )
        .is_some(),
        "view reads logs"
    );
    assert!(
        p.allows(&auditor, &attrs("list", "", "nodes", None, None, None))
            .is_none(),
        "view is namespaced content only"
    );
    assert!(
        p.allows(
            &app,
            &attrs("get", "", "configmaps", None, Some("dev"), Some("c"))
        )
        .is_some()
    );
    assert!(
        p.allows(
            &other_app,
            &attrs("get", "", "configmaps", None, Some("dev"), Some("c"))
        )
        .is_none()
    );
    let why = p.allows(&alice, &pods("create", Some("dev"))).unwrap();
    assert_eq!(
        why,
        "RBAC: allowed by RoleBinding \"alice-edit/dev\" of ClusterRole \"edit\" to User \"alice\""
    );
    // Everyone authenticated: discovery and access reviews of itself, not /metrics.
    let anyone = UserInfo::new("carol", []);
    assert!(
        p.allows(&anyone, &Attributes::path("get", "/apis/apps/v1"))
            .is_some()
    );
    assert!(
        p.allows(&anyone, &Attributes::path("get", "/metrics"))
            .is_none()
    );
    assert!(
        p.allows(
            &anyone,
            &attrs(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                None,
                None,
                None
            )
        )
        .is_some()
    );
    // A path is never granted by a RoleBinding, even to a namespace's admin.
    assert!(
        p.allows(
            &alice,
            &Attributes {
                ns: Some("dev"),
                ..Attributes::path("get", "/metrics")
            }
        )
        .is_none()
    );
}

#[test]
fn the_default_roles_nest_and_escalation_is_measured_against_own_rules() {
    let p = policy();
    let rules = |n: &str| p.role_of("ClusterRole", "", n).unwrap().to_vec();
    let (view, edit, admin) = (rules("view"), rules("edit"), rules("admin"));
    assert!(!view.is_empty());
    for r in &view {
        assert!(edit.contains(r), "edit holds view's {r:?}");
    }
    for r in &edit {
        assert!(admin.contains(r), "admin holds edit's {r:?}");
    }
    let alice = UserInfo::new("alice", []);
    // In dev, alice (edit) may grant view, not admin.
    assert!(p.uncovered(&alice, Some("dev"), &view).is_empty());
    let missing = p.uncovered(&alice, Some("dev"), &admin);
    assert!(
        missing.iter().any(|r| r.resources == ["rolebindings"]),
        "{missing:?}"
    );
    assert!(
        !p.uncovered(&alice, Some("prod"), &view).is_empty(),
        "nothing in prod"
    );
    let secret_get = PolicyRule::from_json(
        &json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
    );
    assert_eq!(
        describe_rule(&secret_get),
        "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"
    );
    let admin_user = UserInfo::admin();
    assert!(
        p.uncovered(&admin_user, None, &admin).is_empty(),
        "cluster-admin covers everything"
    );
}
