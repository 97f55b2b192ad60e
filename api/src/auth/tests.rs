#![allow(clippy::unwrap_used)]
use super::node::{Graph, RefKind};
use super::rbac::Policy;
use super::*;
use crate::resources::by_kind;
use serde_json::json;

/// Node `a`'s pods reference Secret `default/mine` and ConfigMap `default/cm`.
struct Refs;

impl Graph for Refs {
    fn reaches(&self, node: &str, kind: RefKind, ns: &str, name: &str) -> bool {
        node == "a"
            && ns == "default"
            && matches!(
                (kind, name),
                (RefKind::Secret, "mine")
                    | (RefKind::ConfigMap, "cm")
                    | (RefKind::ServiceAccount, "default")
            )
    }
}

#[test]
fn bearer_tokens_are_read_from_the_header() {
    let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
    assert_eq!(Auth::bearer(Some(&h("Bearer abc"))), Some("abc"));
    assert_eq!(Auth::bearer(Some(&h("bearer  abc "))), Some("abc"));
    assert_eq!(Auth::bearer(Some(&h("Basic abc"))), None);
    assert_eq!(Auth::bearer(Some(&h("Bearer "))), None);
    assert_eq!(Auth::bearer(None), None);
    let a = Auth::new("admin-tok".into(), "join".into(), b"k".to_vec());
    assert_eq!(a.admin_user("admin-tok"), Some(UserInfo::admin()));
    assert_eq!(a.admin_user("admin-to"), None);
    let empty = Auth::new(String::new(), String::new(), Vec::new());
    assert_eq!(empty.admin_user(""), None);
    let full = JoinToken {
        ca_sha256: "0".repeat(64),
        secret: "s3cret".into(),
    };
    assert_eq!(Auth::join_secret_of(&full.to_string()), "s3cret");
    assert_eq!(Auth::join_secret_of("bare"), "bare");
}

#[test]
fn identities_say_what_they_are() {
    let n = UserInfo::node("edge-1");
    assert_eq!(n.name, "system:node:edge-1");
    assert_eq!(n.node_name(), Some("edge-1"));
    assert!(n.in_group(AUTHENTICATED));
    // The name alone does not make a node.
    let fake = UserInfo::new("system:node:edge-1", []);
    assert_eq!(fake.node_name(), None);
    assert!(UserInfo::joining("abc123").is_joining());
    assert!(UserInfo::admin().is_master());
    assert_eq!(
        UserInfo::new("alice", ["dev".to_string()]).describe(),
        "user \"alice\" (groups=[\"dev\" \"system:authenticated\"])"
    );
}

/// `expect` is `"ok"`, `"403"`, or the restriction left for the handler.
struct Row {
    verb: &'static str,
    kind: &'static str,
    sub: Option<&'static str>,
    ns: Option<&'static str>,
    name: Option<&'static str>,
    expect: &'static str,
}

fn row(
    verb: &'static str,
    kind: &'static str,
    sub: Option<&'static str>,
    ns: Option<&'static str>,
    name: Option<&'static str>,
    expect: &'static str,
) -> Row {
    Row {
        verb,
        kind,
        sub,
        ns,
        name,
        expect,
    }
}

fn judge(id: &UserInfo, r: &Row, policy: &Policy) -> String {
    let res = by_kind(r.kind).unwrap();
    let attrs = Attributes::of(r.verb, res, r.sub, r.ns, r.name);
    match authorize(id, &attrs, &Refs, policy) {
        Ok(Restriction::None) => "ok".to_string(),
        Ok(Restriction::CreateNamed(n)) => format!("create:{n}"),
        Ok(Restriction::PodBoundTo(n)) => format!("pod:{n}"),
        Ok(Restriction::NodeSelector(n)) => format!("selector:{n}"),
        Ok(Restriction::NodeLabels(n)) => format!("labels:{n}"),
        Ok(Restriction::TokenForPodOn(n)) => format!("token:{n}"),
        Err(e) => {
            assert_eq!(e.code, 403);
            "403".to_string()
        }
    }
}

#[test]
fn node_authorization_table() {
    let a = UserInfo::node("a");
    let policy = Policy::from_objects(&crate::auth::rbac_defaults::objects());
    let (d, l) = (Some("default"), Some(NODE_LEASE_NAMESPACE));
    let rows = [
        // Its own Node only, read and written.
        row("get", "Node", None, None, Some("a"), "ok"),
        row("get", "Node", None, None, Some("b"), "ok"),
        row("list", "Node", None, None, None, "ok"),
        row("list", "Node", None, None, Some("a"), "ok"),
        row("create", "Node", None, None, None, "create:a"),
        row("update", "Node", None, None, Some("a"), "labels:a"),
        row("patch", "Node", Some("status"), None, Some("a"), "labels:a"),
        row("delete", "Node", None, None, Some("a"), "ok"),
        row("patch", "Node", None, None, Some("b"), "403"),
        row("patch", "Node", Some("status"), None, Some("b"), "403"),
        row("delete", "Node", None, None, Some("b"), "403"),
        row("deletecollection", "Node", None, None, None, "403"),
        // Its own Lease in kube-node-lease only.
        row("create", "Lease", None, l, None, "create:a"),
        row("get", "Lease", None, l, Some("a"), "ok"),
        row("update", "Lease", None, l, Some("a"), "ok"),
        row("update", "Lease", None, l, Some("b"), "403"),
        row("create", "Lease", None, d, None, "403"),
        row("list", "Lease", None, l, None, "403"),
        // Pods: those bound to it, checked on the object or the selector.
        row("get", "Pod", None, d, Some("x"), "pod:a"),
        row("list", "Pod", None, None, None, "selector:a"),
        row("watch", "Pod", None, d, None, "selector:a"),
        row("patch", "Pod", Some("status"), d, Some("x"), "pod:a"),
        row("delete", "Pod", None, d, Some("x"), "pod:a"),
        row("create", "Pod", None, d, None, "403"),
        row("patch", "Pod", None, d, Some("x"), "403"),
        row("create", "Pod", Some("binding"), d, Some("x"), "403"),
        row("get", "Pod", Some("log"), d, Some("x"), "403"),
        row("deletecollection", "Pod", None, d, None, "403"),
        // What its pods reference, by name, and nothing else.
        row("get", "Secret", None, d, Some("mine"), "ok"),
        row("watch", "Secret", None, d, Some("mine"), "ok"),
        row("get", "Secret", None, d, Some("other"), "403"),
        row(
            "get",
            "Secret",
            None,
            Some("kube-system"),
            Some("mine"),
            "403",
        ),
        row("list", "Secret", None, d, None, "403"),
        row("get", "ConfigMap", None, d, Some("cm"), "ok"),
        row("get", "ConfigMap", None, d, Some("other"), "403"),
        row("list", "ConfigMap", None, None, None, "403"),
        row("create", "ConfigMap", None, d, None, "403"),
        row(
            "create",
            "ServiceAccount",
            Some("token"),
            d,
            Some("default"),
            "token:a",
        ),
        row(
            "create",
            "ServiceAccount",
            Some("token"),
            d,
            Some("admin"),
            "403",
        ),
        row("get", "ServiceAccount", None, d, Some("default"), "403"),
        // Events and RuntimeClasses.
        row("create", "Event", None, d, None, "ok"),
        row("patch", "Event", None, d, Some("e"), "ok"),
        row("delete", "Event", None, d, Some("e"), "403"),
        row("get", "RuntimeClass", None, None, Some("wasm"), "ok"),
        row("list", "Deployment", None, d, None, "403"),
        row("patch", "Deployment", Some("scale"), d, Some("w"), "403"),
        row("create", "Namespace", None, None, None, "403"),
        // Services and their endpoints, read-only, for the node's Service proxy.
        row("list", "Service", None, None, None, "ok"),
        row("watch", "EndpointSlice", None, None, None, "ok"),
        row("create", "Service", None, d, None, "403"),
        row("patch", "EndpointSlice", None, d, Some("s"), "403"),
        row("list", "Endpoints", None, None, None, "403"),
        row("list", "ClusterRole", None, None, None, "403"),
        // What every authenticated caller may: access reviews of itself.
        row("create", "SelfSubjectAccessReview", None, None, None, "ok"),
    ];
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let got = judge(&a, r, &policy);
            (got != r.expect).then(|| {
                format!(
                    "{} {}{} {:?}/{:?}: want {}, got {got}",
                    r.verb,
                    r.kind,
                    r.sub.map(|s| format!("/{s}")).unwrap_or_default(),
                    r.ns,
                    r.name,
                    r.expect
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The admin does anything; the join token nothing.
    let admin = UserInfo::admin();
    let join = UserInfo::joining("default");
    for r in [
        row("list", "Secret", None, d, None, "ok"),
        row("patch", "Node", None, None, Some("b"), "ok"),
        row("delete", "ClusterRole", None, None, Some("admin"), "ok"),
    ] {
        assert_eq!(judge(&admin, &r, &policy), "ok");
        assert_eq!(judge(&join, &r, &policy), "403");
    }
}

#[test]
fn refusals_read_like_kubernetes() {
    let a = UserInfo::node("a");
    let policy = Policy::default();
    let nodes = by_kind("Node").unwrap();
    let e = authorize(
        &a,
        &Attributes::of("patch", nodes, None, None, Some("b")),
        &Refs,
        &policy,
    )
    .unwrap_err();
    assert!(
        e.message.starts_with(
            "nodes \"b\" is forbidden: User \"system:node:a\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
        ),
        "{}",
        e.message
    );
    let secrets = by_kind("Secret").unwrap();
    let e = authorize(
        &a,
        &Attributes::of("get", secrets, None, Some("default"), Some("s")),
        &Refs,
        &policy,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "secrets \"s\" is forbidden: User \"system:node:a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'a' and this object"
    );
    let alice = UserInfo::new("alice", []);
    let deploys = by_kind("Deployment").unwrap();
    let e = authorize(
        &alice,
        &Attributes::of("patch", deploys, Some("scale"), Some("prod"), Some("web")),
        &Refs,
        &policy,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "deployments.apps \"web\" is forbidden: User \"alice\" cannot patch resource \"deployments/scale\" in API group \"apps\" in the namespace \"prod\""
    );
    let e = authorize(&alice, &Attributes::path("get", "/metrics"), &Refs, &policy).unwrap_err();
    assert_eq!(
        e.message,
        "forbidden: User \"alice\" cannot get path \"/metrics\""
    );
    let e = authorize(
        &UserInfo::joining("x"),
        &Attributes::of("list", secrets, None, Some("default"), None),
        &Refs,
        &policy,
    )
    .unwrap_err();
    assert!(e.message.contains("POST /skiff/v1/join"), "{}", e.message);
}

#[test]
fn restrictions_check_the_object() {
    let a = UserInfo::node("a");
    let pods = by_kind("Pod").unwrap();
    let attrs = Attributes::of("patch", pods, Some("status"), Some("default"), Some("x"));
    let r = Restriction::PodBoundTo("a".into());
    assert!(
        r.check_stored(&a, &attrs, &json!({"spec": {"nodeName": "a"}}))
            .is_ok()
    );
    let e = r
        .check_stored(&a, &attrs, &json!({"spec": {"nodeName": "b"}}))
        .unwrap_err();
    assert_eq!(e.code, 403);
    assert!(
        e.message.contains("spec.nodeName set to itself"),
        "{}",
        e.message
    );
    assert!(r.check_stored(&a, &attrs, &json!({"spec": {}})).is_err());
    let leases = by_kind("Lease").unwrap();
    let attrs = Attributes::of("create", leases, None, Some(NODE_LEASE_NAMESPACE), None);
    let r = Restriction::CreateNamed("a".into());
    assert!(
        r.check_created(&a, &attrs, &json!({"metadata": {"name": "a"}}))
            .is_ok()
    );
    let e = r
        .check_created(&a, &attrs, &json!({"metadata": {"name": "b"}}))
        .unwrap_err();
    assert!(
        e.message
            .starts_with("leases.coordination.k8s.io \"b\" is forbidden"),
        "{}",
        e.message
    );
    assert!(
        r.check_created(&a, &attrs, &json!({"metadata": {"generateName": "a-"}}))
            .is_err()
    );
    let nodes = by_kind("Node").unwrap();
    let attrs = Attributes::of("create", nodes, None, None, None);
    let e = r
        .check_created(&a, &attrs, &json!({"metadata": {"name": "a", "labels": {"node-role.kubernetes.io/control-plane": ""}}}))
        .unwrap_err();
    assert!(
        e.message
            .contains("is not allowed to set the following labels"),
        "{}",
        e.message
    );
    let pods_attrs = Attributes::of("list", pods, None, None, None);
    let sel = Restriction::NodeSelector("a".into());
    assert!(
        sel.check_selector(&a, &pods_attrs, "spec.nodeName=a")
            .is_ok()
    );
    assert!(
        sel.check_selector(&a, &pods_attrs, "metadata.namespace=x,spec.nodeName==a")
            .is_ok()
    );
    assert!(
        sel.check_selector(&a, &pods_attrs, "spec.nodeName=b")
            .is_err()
    );
    assert!(sel.check_selector(&a, &pods_attrs, "").is_err());
}
