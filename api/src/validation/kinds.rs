//! Per-kind validation: what Kubernetes checks on create and on update, with its field
//! paths and messages. Objects arrive here already decoded into the typed schema (so
//! types are right) and defaulted.

use super::{
    Cause, QUANTITY_MSG, dns1035_label, dns1123_label, dns1123_subdomain, labels, parse_quantity,
    qualified_name,
};
use crate::resources::{NameRule, Resource};
use serde_json::Value;

const MAX_ANNOTATIONS: usize = 256 * 1024;
const MAX_CONFIG_DATA: usize = 1024 * 1024;

/// Check a new object (create, or the result of an update before [`validate_update`]).
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    metadata(res, obj, &mut out);
    match res.kind {
        "Pod" => pod_spec("spec", &obj["spec"], &mut out),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" => workload(res.kind, obj, &mut out),
        "Service" => service(obj, &mut out),
        "EndpointSlice" => super::discovery::slice(obj, &mut out),
        "ConfigMap" | "Secret" => data_keys(res.kind, obj, &mut out),
        "RuntimeClass" => {
            let h = &obj["handler"];
            match h.as_str() {
                None | Some("") => out.push(Cause::required("handler")),
                Some(s) => {
                    for e in dns1123_label(s) {
                        out.push(Cause::invalid("handler", h, e));
                    }
                }
            }
        }
        "Event" if obj["involvedObject"].is_null() => out.push(Cause::required("involvedObject")),
        "Role" | "ClusterRole" => super::rbac::rules(obj, res.namespaced, &mut out),
        "RoleBinding" | "ClusterRoleBinding" => super::rbac::binding(obj, res.namespaced, &mut out),
        _ => {}
    }
    out
}

/// Check an update of `old` into `new` (both whole objects) for changes Kubernetes
/// forbids.
pub fn validate_update(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = validate(res, new);
    match res.kind {
        "Pod" => pod_update(old, new, &mut out),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" => {
            if old["spec"]["selector"] != new["spec"]["selector"] {
                out.push(Cause::invalid(
                    "spec.selector",
                    &new["spec"]["selector"],
                    "field is immutable",
                ));
            }
            if res.kind == "Job"
                && strip_job_mutable(&old["spec"]["template"])
                    != strip_job_mutable(&new["spec"]["template"])
            {
                out.push(Cause::invalid(
                    "spec.template",
                    &new["spec"]["template"],
                    "field is immutable",
                ));
            }
        }
        "EndpointSlice" => super::discovery::slice_update(old, new, &mut out),
        "Service" => {
            let (o, n) = (&old["spec"]["clusterIP"], &new["spec"]["clusterIP"]);
            if o.is_string() && o != n {
                out.push(Cause::invalid("spec.clusterIP", n, "field is immutable"));
            }
        }
        "ConfigMap" | "Secret" => {
            if old["immutable"] == Value::Bool(true) {
                for f in ["data", "binaryData", "stringData"] {
                    if old[f] != new[f] {
                        out.push(Cause::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new["immutable"] != Value::Bool(true) {
                    out.push(Cause::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if res.kind == "Secret" && old["type"] != new["type"] {
                out.push(Cause::invalid("type", &new["type"], "field is immutable"));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => super::rbac::binding_update(old, new, &mut out),
        _ => {}
    }
    out
}

fn strip_job_mutable(t: &Value) -> Value {
    let mut t = t.clone();
    // Kubernetes lets a suspended job's scheduling directives change; keep it simple and
    // compare all but labels and annotations.
    if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("labels");
        m.remove("annotations");
    }
    t
}

fn metadata(res: &Resource, obj: &Value, out: &mut Vec<Cause>) {
    let md = &obj["metadata"];
    let name = &md["name"];
    match name.as_str() {
        None | Some("") => out.push(Cause::required("metadata.name")),
        Some(n) => {
            let errs = match res.names {
                NameRule::Subdomain => dns1123_subdomain(n),
                NameRule::Label => dns1123_label(n),
                NameRule::Dns1035 => dns1035_label(n),
                NameRule::PathSegment => path_segment(n),
            };
            for e in errs {
                out.push(Cause::invalid("metadata.name", name, e));
            }
        }
    }
    labels("metadata.labels", md.get("labels"), out);
    if let Some(a) = md.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in a {
            for e in qualified_name(k) {
                out.push(Cause::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    e,
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS {
            out.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than {MAX_ANNOTATIONS} bytes"),
            });
        }
    }
    if let Some(fs) = md.get("finalizers").and_then(Value::as_array) {
        for (i, f) in fs.iter().enumerate() {
            if let Some(s) = f.as_str() {
                for e in qualified_name(s) {
                    out.push(Cause::invalid(format!("metadata.finalizers[{i}]"), f, e));
                }
            }
        }
    }
}

fn path_segment(n: &str) -> Vec<String> {
    if n == "." || n == ".." {
        return vec![format!("may not be '{n}'")];
    }
    if n.contains('/') || n.contains('%') {
        return vec!["may not contain '/' or '%'".into()];
    }
    Vec::new()
}

fn names_of(list: &Value) -> impl Iterator<Item = (usize, &Value)> {
    list.as_array().into_iter().flatten().enumerate()
}

fn pod_spec(path: &str, spec: &Value, out: &mut Vec<Cause>) {
    let containers = &spec["containers"];
    if containers.as_array().is_none_or(Vec::is_empty) {
        out.push(Cause::required(format!("{path}.containers")));
    }
    let mut volume_names = Vec::new();
    for (i, v) in names_of(&spec["volumes"]) {
        let f = format!("{path}.volumes[{i}].name");
        match v["name"].as_str() {
            None | Some("") => out.push(Cause::required(f)),
            Some(n) => {
                for e in dns1123_label(n) {
                    out.push(Cause::invalid(&f, &v["name"], e));
                }
                if volume_names.contains(&n) {
                    out.push(Cause::duplicate(&f, &v["name"]));
                }
                volume_names.push(n);
            }
        }
    }
    let mut seen = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in names_of(&spec[list]) {
            container(
                &format!("{path}.{list}[{i}]"),
                c,
                &volume_names,
                &mut seen,
                out,
            );
        }
    }
    let rp = &spec["restartPolicy"];
    if let Some(s) = rp.as_str()
        && !["Always", "OnFailure", "Never"].contains(&s)
    {
        out.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(rc) = spec["runtimeClassName"].as_str() {
        for e in dns1123_subdomain(rc) {
            out.push(Cause::invalid(
                format!("{path}.runtimeClassName"),
                &spec["runtimeClassName"],
                e,
            ));
        }
    }
    labels(
        &format!("{path}.nodeSelector"),
        spec.get("nodeSelector"),
        out,
    );
    if let Some(g) = spec["terminationGracePeriodSeconds"].as_i64()
        && g < 0
    {
        out.push(Cause::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            &spec["terminationGracePeriodSeconds"],
            "must be greater than or equal to 0",
        ));
    }
}

fn container<'a>(
    path: &str,
    c: &'a Value,
    volumes: &[&str],
    seen: &mut Vec<&'a str>,
    out: &mut Vec<Cause>,
) {
    match c["name"].as_str() {
        None | Some("") => out.push(Cause::required(format!("{path}.name"))),
        Some(n) => {
            for e in dns1123_label(n) {
                out.push(Cause::invalid(format!("{path}.name"), &c["name"], e));
            }
            if seen.contains(&n) {
                out.push(Cause::duplicate(format!("{path}.name"), &c["name"]));
            }
            seen.push(n);
        }
    }
    if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
        out.push(Cause::required(format!("{path}.image")));
    }
    for (j, p) in names_of(&c["ports"]) {
        let pp = format!("{path}.ports[{j}]");
        port_number(
            &format!("{pp}.containerPort"),
            &p["containerPort"],
            true,
            out,
        );
        port_number(&format!("{pp}.hostPort"), &p["hostPort"], false, out);
        protocol(&format!("{pp}.protocol"), &p["protocol"], out);
        if let Some(n) = p["name"].as_str()
            && !(n.len() <= 15
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && n.bytes().any(|b| b.is_ascii_lowercase())
                && !n.starts_with('-')
                && !n.ends_with('-'))
        {
            out.push(Cause::invalid(format!("{pp}.name"), &p["name"], "must be no more than 15 characters, contain only lowercase alphanumerics or '-', contain at least one letter and not start or end with '-'"));
        }
    }
    for (j, e) in names_of(&c["env"]) {
        if e["name"].as_str().is_none_or(str::is_empty) {
            out.push(Cause::required(format!("{path}.env[{j}].name")));
        }
    }
    for (j, m) in names_of(&c["volumeMounts"]) {
        let n = m["name"].as_str().unwrap_or_default();
        if !volumes.contains(&n) {
            out.push(Cause {
                reason: "FieldValueNotFound",
                field: format!("{path}.volumeMounts[{j}].name"),
                message: format!("Not found: \"{n}\""),
            });
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            out.push(Cause::required(format!(
                "{path}.volumeMounts[{j}].mountPath"
            )));
        }
        let mp = format!("{path}.volumeMounts[{j}]");
        for key in ["subPath", "subPathExpr"] {
            local_descending_path(&format!("{mp}.{key}"), &m[key], out);
        }
        let set = |k: &str| m[k].as_str().is_some_and(|s| !s.is_empty());
        if set("subPath") && set("subPathExpr") {
            out.push(Cause::invalid(
                format!("{mp}.subPathExpr"),
                &m["subPathExpr"],
                "subPathExpr and subPath are mutually exclusive",
            ));
        }
    }
    resources(&format!("{path}.resources"), &c["resources"], out);
}

/// A path that must stay inside the directory it is relative to (Kubernetes'
/// `validateLocalDescendingPath`): not absolute, no `..` component. Empty means unset.
fn local_descending_path(path: &str, v: &Value, out: &mut Vec<Cause>) {
    let Some(p) = v.as_str().filter(|p| !p.is_empty()) else {
        return;
    };
    if p.starts_with('/') {
        out.push(Cause::invalid(path, v, "must be a relative path"));
    }
    if p.split('/').any(|part| part == "..") {
        out.push(Cause::invalid(path, v, "must not contain '..'"));
    }
}

pub(super) fn port_number(path: &str, v: &Value, required: bool, out: &mut Vec<Cause>) {
    match v.as_i64() {
        None if required => out.push(Cause::required(path)),
        None => {}
        Some(0) if !required => {}
        Some(n) if !(1..=65535).contains(&n) => out.push(Cause::invalid(
            path,
            v,
            "must be between 1 and 65535, inclusive",
        )),
        Some(_) => {}
    }
}

pub(super) fn protocol(path: &str, v: &Value, out: &mut Vec<Cause>) {
    if let Some(p) = v.as_str()
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        out.push(Cause::not_supported(path, v, &["SCTP", "TCP", "UDP"]));
    }
}

fn resources(path: &str, r: &Value, out: &mut Vec<Cause>) {
    for part in ["limits", "requests"] {
        for (name, q) in r[part].as_object().into_iter().flatten() {
            let field = format!("{path}.{part}[{name}]");
            match q.as_str().and_then(parse_quantity) {
                None => out.push(Cause::invalid(&field, q, QUANTITY_MSG)),
                Some(v) if v.value() < 0.0 => out.push(Cause::invalid(
                    &field,
                    q,
                    "must be greater than or equal to 0",
                )),
                Some(_) => {}
            }
        }
    }
    for (name, req) in r["requests"].as_object().into_iter().flatten() {
        let lim = &r["limits"][name.as_str()];
        if let (Some(rq), Some(l)) = (
            req.as_str().and_then(parse_quantity),
            lim.as_str().and_then(parse_quantity),
        ) && rq.value() > l.value()
        {
            out.push(Cause::invalid(
                format!("{path}.requests"),
                req,
                format!(
                    "must be less than or equal to {name} limit of {}",
                    lim.as_str().unwrap_or_default()
                ),
            ));
        }
    }
}

fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let ml = selector["matchLabels"].as_object();
    let ok_labels = ml
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let ok_exprs = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let vals: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).and_then(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => have.is_some_and(|h| vals.contains(&h)),
                Some("NotIn") => have.is_none_or(|h| !vals.contains(&h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        });
    ok_labels && ok_exprs
}

fn workload(kind: &str, obj: &Value, out: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let tmpl = &spec["template"];
    if kind != "Job" {
        let sel = &spec["selector"];
        if sel.is_null() {
            out.push(Cause::required("spec.selector"));
        } else if sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && sel["matchExpressions"].as_array().is_none_or(Vec::is_empty)
        {
            out.push(Cause::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            ));
        } else if !selector_matches(sel, &tmpl["metadata"]["labels"]) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                &tmpl["metadata"]["labels"],
                "`selector` does not match template `labels`",
            ));
        }
        labels("spec.selector.matchLabels", sel.get("matchLabels"), out);
    }
    for f in ["replicas", "parallelism", "completions", "backoffLimit"] {
        if let Some(n) = spec[f].as_i64()
            && n < 0
        {
            out.push(Cause::invalid(
                format!("spec.{f}"),
                &spec[f],
                "must be greater than or equal to 0",
            ));
        }
    }
    labels(
        "spec.template.metadata.labels",
        tmpl["metadata"].get("labels"),
        out,
    );
    pod_spec("spec.template.spec", &tmpl["spec"], out);
    let rp = tmpl["spec"]["restartPolicy"].as_str();
    match kind {
        "Job" if rp == Some("Always") => out.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            &tmpl["spec"]["restartPolicy"],
            &["OnFailure", "Never"],
        )),
        "Deployment" | "ReplicaSet" | "DaemonSet" if rp.is_some_and(|r| r != "Always") => {
            out.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                &tmpl["spec"]["restartPolicy"],
                &["Always"],
            ))
        }
        _ => {}
    }
}

fn service(obj: &Value, out: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        out.push(Cause::not_supported(
            "spec.type",
            &spec["type"],
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec["ports"].as_array();
    let headless = spec["clusterIP"].as_str() == Some("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        out.push(Cause::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    let mut names = Vec::new();
    for (i, p) in names_of(&spec["ports"]) {
        port_number(&format!("spec.ports[{i}].port"), &p["port"], true, out);
        protocol(&format!("spec.ports[{i}].protocol"), &p["protocol"], out);
        match p["name"].as_str() {
            None | Some("") if many => out.push(Cause::required(format!("spec.ports[{i}].name"))),
            Some(n) if !n.is_empty() => {
                if names.contains(&n) {
                    out.push(Cause::duplicate(
                        format!("spec.ports[{i}].name"),
                        &p["name"],
                    ));
                }
                names.push(n);
            }
            _ => {}
        }
    }
    labels("spec.selector", spec.get("selector"), out);
    session_affinity(spec, out);
}

/// Kubernetes' bound on `sessionAffinityConfig.clientIP.timeoutSeconds`.
const MAX_AFFINITY_SECONDS: i64 = 86400;

fn session_affinity(spec: &Value, out: &mut Vec<Cause>) {
    let config = spec.get("sessionAffinityConfig").filter(|c| !c.is_null());
    match spec["sessionAffinity"].as_str() {
        None | Some("None") => {
            if let Some(c) = config {
                out.push(Cause::invalid(
                    "spec.sessionAffinityConfig",
                    c,
                    "must not be set when session affinity is None",
                ));
            }
        }
        Some("ClientIP") => {
            let t = &spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
            if !t.is_null()
                && !t
                    .as_i64()
                    .is_some_and(|t| t > 0 && t <= MAX_AFFINITY_SECONDS)
            {
                out.push(Cause::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                ));
            }
        }
        Some(_) => out.push(Cause::not_supported(
            "spec.sessionAffinity",
            &spec["sessionAffinity"],
            &["ClientIP", "None"],
        )),
    }
}

fn data_keys(kind: &str, obj: &Value, out: &mut Vec<Cause>) {
    let mut total = 0;
    for f in ["data", "binaryData", "stringData"] {
        for (k, v) in obj[f].as_object().into_iter().flatten() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                out.push(Cause::invalid(
                    format!("{f}[{k}]"),
                    &Value::String(k.clone()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    if kind == "ConfigMap" && total > MAX_CONFIG_DATA {
        out.push(Cause {
            reason: "FieldValueTooLong",
            field: "data".into(),
            message: format!("Too long: may not be more than {MAX_CONFIG_DATA} bytes"),
        });
    }
}

fn pod_update(old: &Value, new: &Value, out: &mut Vec<Cause>) {
    // Kubernetes allows only these pod spec fields to change after creation.
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
            o.remove("terminationGracePeriodSeconds");
        }
        s
    };
    if strip(&old["spec"]) != strip(&new["spec"]) {
        out.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn pod_rules() {
        let res = by_kind("Pod").unwrap();
        let table: Vec<(Value, &str)> = vec![
            (
                pod(json!({"containers": []})),
                "spec.containers: Required value",
            ),
            (
                pod(json!({"containers": [{"name": "a"}]})),
                "spec.containers[0].image: Required value",
            ),
            (
                pod(json!({"containers": [{"name": "A", "image": "x"}]})),
                "spec.containers[0].name: Invalid value: \"A\"",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}),
                ),
                "spec.containers[1].name: Duplicate value",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]}),
                ),
                "must be between 1 and 65535",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "lots"}}}]}),
                ),
                "spec.containers[0].resources.limits[cpu]: Invalid value: \"lots\"",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}}]}),
                ),
                "must be less than or equal to cpu limit of 1",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}),
                ),
                "volumeMounts[0].name: Not found: \"v\"",
            ),
            (
                pod(
                    json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "/etc"}]}]}),
                ),
                "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/etc\": must be a relative path",
            ),
            (
                pod(
                    json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "a/../../b"}]}]}),
                ),
                "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"a/../../b\": must not contain '..'",
            ),
            (
                pod(
                    json!({"volumes": [{"name": "v", "emptyDir": {}}], "initContainers": [{"name": "i", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPathExpr": "../$(POD)"}]}], "containers": [{"name": "a", "image": "x"}]}),
                ),
                "spec.initContainers[0].volumeMounts[0].subPathExpr: Invalid value: \"../$(POD)\": must not contain '..'",
            ),
            (
                pod(
                    json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "a", "subPathExpr": "b"}]}]}),
                ),
                "subPathExpr and subPath are mutually exclusive",
            ),
            (
                pod(
                    json!({"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}),
                ),
                "spec.restartPolicy: Unsupported value: \"Sometimes\"",
            ),
        ];
        for (obj, want) in table {
            let got: Vec<String> = validate(res, &obj).iter().map(Cause::line).collect();
            assert!(
                got.iter().any(|l| l.contains(want)),
                "want {want:?} in {got:?}"
            );
        }
        let ok = pod(
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}]}),
        );
        assert!(validate(res, &ok).is_empty());
    }

    #[test]
    fn pod_spec_is_immutable_but_image_is_not() {
        let res = by_kind("Pod").unwrap();
        let old = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        let image = pod(json!({"containers": [{"name": "a", "image": "y"}]}));
        assert!(validate_update(res, &old, &image).is_empty());
        let ports = pod(
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 1}]}]}),
        );
        assert!(
            validate_update(res, &old, &ports)[0]
                .line()
                .starts_with("spec: Forbidden: pod updates may not change")
        );
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let res = by_kind("Deployment").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let got = validate(res, &d);
        assert_eq!(got[0].field, "spec.template.metadata.labels");
    }
}
