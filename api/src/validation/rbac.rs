//! Validation of RBAC objects, with Kubernetes' field paths and messages
//! (`pkg/apis/rbac/validation`).

use super::Cause;
use serde_json::Value;

const GROUP: &str = "rbac.authorization.k8s.io";

fn non_empty(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

/// The rules of a Role (`namespaced`) or ClusterRole.
pub fn rules(obj: &Value, namespaced: bool, out: &mut Vec<Cause>) {
    for (i, r) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let p = format!("rules[{i}]");
        if !non_empty(&r["verbs"]) {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{p}.verbs"),
                message: "Required value: verbs must contain at least one value".into(),
            });
        }
        let urls = non_empty(&r["nonResourceURLs"]);
        if urls && namespaced {
            out.push(Cause::invalid(
                format!("{p}.nonResourceURLs"),
                &r["nonResourceURLs"],
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        let resourceful = non_empty(&r["apiGroups"])
            || non_empty(&r["resources"])
            || non_empty(&r["resourceNames"]);
        if urls && resourceful {
            out.push(Cause::invalid(
                format!("{p}.nonResourceURLs"),
                &r["nonResourceURLs"],
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
            continue;
        }
        if urls {
            continue;
        }
        if !non_empty(&r["apiGroups"]) {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{p}.apiGroups"),
                message: "Required value: resource rules must supply at least one api group".into(),
            });
        }
        if !non_empty(&r["resources"]) {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{p}.resources"),
                message: "Required value: resource rules must supply at least one resource".into(),
            });
        }
    }
}

/// The roleRef and subjects of a RoleBinding (`namespaced`) or ClusterRoleBinding.
pub fn binding(obj: &Value, namespaced: bool, out: &mut Vec<Cause>) {
    let r = &obj["roleRef"];
    if r["apiGroup"].as_str().unwrap_or(GROUP) != GROUP {
        out.push(Cause::not_supported(
            "roleRef.apiGroup",
            &r["apiGroup"],
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    match r["kind"].as_str() {
        None | Some("") => out.push(Cause::required("roleRef.kind")),
        Some(k) if !kinds.contains(&k) => {
            out.push(Cause::not_supported("roleRef.kind", &r["kind"], kinds))
        }
        _ => {}
    }
    if r["name"].as_str().is_none_or(str::is_empty) {
        out.push(Cause::required("roleRef.name"));
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let p = format!("subjects[{i}]");
        if s["name"].as_str().is_none_or(str::is_empty) {
            out.push(Cause::required(format!("{p}.name")));
        }
        match s["kind"].as_str() {
            Some("ServiceAccount") => {
                if s["apiGroup"].as_str().is_some_and(|g| !g.is_empty()) {
                    out.push(Cause::not_supported(
                        format!("{p}.apiGroup"),
                        &s["apiGroup"],
                        &[""],
                    ));
                }
                if !namespaced && s["namespace"].as_str().is_none_or(str::is_empty) {
                    out.push(Cause::required(format!("{p}.namespace")));
                }
            }
            Some("User" | "Group") => {
                if s["apiGroup"].as_str().unwrap_or(GROUP) != GROUP {
                    out.push(Cause::not_supported(
                        format!("{p}.apiGroup"),
                        &s["apiGroup"],
                        &[GROUP],
                    ));
                }
            }
            _ => out.push(Cause::not_supported(
                format!("{p}.kind"),
                &s["kind"],
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// A binding's roleRef never changes.
pub fn binding_update(old: &Value, new: &Value, out: &mut Vec<Cause>) {
    if old["roleRef"] != new["roleRef"] {
        out.push(Cause::invalid(
            "roleRef",
            &new["roleRef"],
            "cannot change roleRef",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(f: impl Fn(&mut Vec<Cause>)) -> Vec<String> {
        let mut out = Vec::new();
        f(&mut out);
        out.iter().map(Cause::line).collect()
    }

    #[test]
    fn roles_and_bindings_are_checked_as_kubernetes_does() {
        let bad_rules = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
            {"verbs": ["get"]},
            {"nonResourceURLs": ["/x"], "resources": ["pods"], "verbs": ["get"]},
        ]});
        let got = lines(|o| rules(&bad_rules, true, o));
        assert_eq!(
            got,
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: [\"/metrics\"]: namespaced rules cannot apply to non-resource URLs",
                "rules[2].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[2].resources: Required value: resource rules must supply at least one resource",
                "rules[3].nonResourceURLs: Invalid value: [\"/x\"]: namespaced rules cannot apply to non-resource URLs",
                "rules[3].nonResourceURLs: Invalid value: [\"/x\"]: rules cannot apply to both regular resources and non-resource URLs",
            ]
        );
        assert!(
            lines(|o| rules(
                &json!({"rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
                false,
                o
            ))
            .is_empty()
        );
        let b = json!({"roleRef": {"kind": "Role", "name": ""}, "subjects": [
            {"kind": "Robot", "name": "r"}, {"kind": "ServiceAccount", "name": "sa"}, {"kind": "User"}]});
        let got = lines(|o| binding(&b, false, o));
        assert_eq!(
            got,
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "roleRef.name: Required value",
                "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
                "subjects[1].namespace: Required value",
                "subjects[2].name: Required value",
            ]
        );
        let ok = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]});
        assert!(lines(|o| binding(&ok, true, o)).is_empty());
        let moved = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "other"}});
        assert_eq!(lines(|o| binding_update(&ok, &moved, o)).len(), 1);
    }
}
