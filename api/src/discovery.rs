//! Discovery (`/api`, `/apis`, per group-version resource lists, and the aggregated
//! form), `/version` and the OpenAPI v3 documents kubectl reads before `apply`.

use crate::resources::{RESOURCES, Resource, groups};
use serde_json::{Value, json};

/// The Kubernetes release whose API Skiff speaks. kubectl's dispatcher picks its
/// matching client by this minor version.
pub const KUBE_MINOR: &str = "32";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+skiff-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let gs: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .map(|(g, v)| {
            let mut e = group_entry(g, v);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

/// What a subresource answers with: its kind, group, version and verbs.
fn subresource_kind(r: &Resource, sub: &str) -> (&'static str, &'static str, &'static str, Value) {
    match sub {
        "scale" => (
            "Scale",
            "autoscaling",
            "v1",
            json!(["get", "patch", "update"]),
        ),
        "binding" => ("Binding", "", "v1", json!(["create"])),
        "log" => ("Pod", "", "v1", json!(["get"])),
        "exec" => ("PodExecOptions", "", "v1", json!(["create", "get"])),
        "attach" => ("PodAttachOptions", "", "v1", json!(["create", "get"])),
        "portforward" => ("PodPortForwardOptions", "", "v1", json!(["create", "get"])),
        "finalize" => (r.kind, r.group, r.version, json!(["update"])),
        _ => (
            r.kind,
            r.group,
            r.version,
            json!(["get", "patch", "update"]),
        ),
    }
}

fn resource_entries(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let (kind, group, version, verbs) = subresource_kind(r, sub);
        let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
        if (group, version) != (r.group, r.version) {
            e["group"] = json!(group);
            e["version"] = json!(version);
        }
        out.push(e);
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": rs.iter().flat_map(|r| resource_entries(r)).collect::<Vec<_>>(),
    }))
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2`) for `/api` (legacy)
/// or `/apis`.
pub fn aggregated(legacy: bool, api_version: &str) -> Value {
    let mut items = Vec::new();
    let wanted: Vec<(&str, &str)> = if legacy { vec![("", "v1")] } else { groups() };
    for (g, v) in wanted {
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == g && r.version == v)
            .map(|r| {
                let subs: Vec<Value> = r
                    .subresources
                    .iter()
                    .map(|sub| {
                        let (kind, group, version, verbs) = subresource_kind(r, sub);
                        json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
                    })
                    .collect();
                json!({
                    "resource": r.plural,
                    "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": r.verbs(),
                    "shortNames": r.short_names,
                    "categories": r.categories,
                    "subresources": subs,
                })
            })
            .collect();
        items.push(json!({
            "metadata": {"name": g, "creationTimestamp": null},
            "versions": [{"version": v, "resources": resources, "freshness": "Current"}],
        }));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of per group-version documents.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv>`: operations per kind, enough for kubectl to see that the server
/// validates fields itself (`fieldValidation`) and which kind each path serves.
pub fn openapi_doc(path: &str) -> Option<Value> {
    let (g, v) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let rs: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == g && r.version == v)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.", "schema": {"type": "string"}, "uniqueItems": true},
    ]);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in rs {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(g, v), r.plural)
        } else {
            format!("/{}/{}", gv_path(g, v), r.plural)
        };
        let schema_name = format!(
            "io.skiff.{}.{}.{}",
            if g.is_empty() { "core" } else { g },
            v,
            r.kind
        );
        let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "requestBody": body,
                "responses": {"200": body},
            })
        };
        paths.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        schemas.insert(
            schema_name,
            json!({
                "type": "object",
                "description": format!("{} ({}); fields are validated by the server.", r.kind, r.api_version()),
                "x-kubernetes-group-version-kind": [gvk],
                "x-kubernetes-preserve-unknown-fields": true,
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Skiff", "version": format!("v1.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
