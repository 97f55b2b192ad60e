//! Reading a request: its route, query, wanted output format and body.

use crate::error::{ApiError, ApiResult};
use crate::resources::{self, Resource};
use crate::table::IncludeObject;
use std::collections::HashMap;

/// Where a path leads.
#[derive(Debug)]
pub enum Route {
    /// `/livez`, `/readyz`, `/healthz`.
    Health,
    /// `/version`.
    Version,
    /// `/metrics`.
    Metrics,
    /// `/cacerts`: the CA certificate, for nodes about to join (no token needed).
    CaCerts,
    /// `/skiff/v1/join`: trade the join token for a node credential.
    Join,
    /// `/api`.
    Api,
    /// `/apis`.
    Apis,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<g>/<v>`.
    ResourceList(String, String),
    /// `/openapi/v3`.
    OpenApiIndex,
    /// `/openapi/v3/<gv path>`.
    OpenApiDoc(String),
    /// A resource, collection or subresource.
    Resource(Target),
    /// Nothing served here.
    NotFound,
}

/// A resource request's target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub res: &'static Resource,
    /// The namespace, for namespaced requests.
    pub ns: Option<String>,
    /// The object name.
    pub name: Option<String>,
    /// The subresource.
    pub sub: Option<String>,
    /// Old-style `/watch/` path.
    pub watch_path: bool,
    /// For `nodes/NAME/proxy/PATH`: the path.
    pub proxy_path: Option<String>,
}

/// Parse a path into a route.
pub fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["livez"] | ["readyz"] | ["healthz"] => Route::Health,
        ["livez" | "readyz" | "healthz", _] => Route::Health,
        ["version"] => Route::Version,
        ["metrics"] => Route::Metrics,
        ["cacerts"] => Route::CaCerts,
        ["skiff", "v1", "join"] => Route::Join,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", rest @ ..] => Route::OpenApiDoc(rest.join("/")),
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    if rest.is_empty() {
        return Route::ResourceList(group.to_string(), version.to_string());
    }
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let Some(res) = resources::find(group, version, plural) else {
            return Route::NotFound;
        };
        if ns.is_some() && !res.namespaced {
            return Route::NotFound;
        }
        if name.is_some() && res.namespaced && ns.is_none() {
            return Route::NotFound;
        }
        if let Some(s) = sub
            && !res.has_sub(s)
        {
            return Route::NotFound;
        }
        Route::Resource(Target {
            res,
            ns: ns.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
            watch_path,
            proxy_path: None,
        })
    };
    match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            t("namespaces", None, Some(ns), Some(sub))
        }
        ["namespaces", ns, plural] => t(plural, Some(ns), None, None),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(plural, Some(ns), Some(name), Some(sub)),
        ["nodes", name, "proxy", path @ ..] if group.is_empty() => {
            match t("nodes", None, Some(name), Some("proxy")) {
                Route::Resource(mut target) => {
                    target.proxy_path = Some(path.join("/"));
                    Route::Resource(target)
                }
                other => other,
            }
        }
        [plural] => t(plural, None, None, None),
        [plural, name] => t(plural, None, Some(name), None),
        [plural, name, sub] => t(plural, None, Some(name), Some(sub)),
        _ => Route::NotFound,
    }
}

/// The query string, decoded.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Decode `a=b&c=d`.
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// A parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// A boolean parameter (`true`, `1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    /// A non-negative integer parameter.
    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid value for {k}: {v:?}: must be a non-negative integer"
                    ))
                }),
        }
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(o) => Err(ApiError::bad_request(format!(
                "unsupported dryRun value {o:?}: only \"All\" is supported"
            ))),
        }
    }
}

/// The response format the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The objects as JSON.
    Json,
    /// A `meta.k8s.io/v1` Table.
    Table(IncludeObject),
}

/// Choose the output from the `Accept` header.
pub fn negotiate(accept: Option<&str>, q: &Query) -> ApiResult<Output> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Output::Json);
    };
    let mut json_ok = false;
    for part in accept.split(',') {
        let mut it = part.split(';').map(str::trim);
        let mt = it.next().unwrap_or("");
        let params: Vec<&str> = it.collect();
        let is_json = matches!(mt, "application/json" | "*/*" | "application/*");
        if is_json && params.iter().any(|p| p.replace(' ', "") == "as=Table") {
            let v1 = params.contains(&"v=v1") || !params.iter().any(|p| p.starts_with("v="));
            if v1 {
                return Ok(Output::Table(IncludeObject::parse(q.get("includeObject"))));
            }
            continue;
        }
        if is_json && !params.iter().any(|p| p.starts_with("as=")) {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Output::Json)
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (asked for {accept:?})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |p: &str| match route(p) {
            Route::Resource(t) => format!("{}:{:?}:{:?}:{:?}", t.res.plural, t.ns, t.name, t.sub),
            other => format!("{other:?}"),
        };
        assert_eq!(
            r("/api/v1/namespaces/default/pods"),
            "pods:Some(\"default\"):None:None"
        );
        assert_eq!(
            r("/api/v1/namespaces/default/pods/x/log"),
            "pods:Some(\"default\"):Some(\"x\"):Some(\"log\")"
        );
        assert_eq!(
            r("/api/v1/namespaces/kube-system"),
            "namespaces:None:Some(\"kube-system\"):None"
        );
        assert_eq!(
            r("/api/v1/namespaces/x/status"),
            "namespaces:None:Some(\"x\"):Some(\"status\")"
        );
        assert_eq!(r("/api/v1/pods"), "pods:None:None:None");
        assert_eq!(
            r("/apis/apps/v1/namespaces/d/deployments/w/scale"),
            "deployments:Some(\"d\"):Some(\"w\"):Some(\"scale\")"
        );
        assert_eq!(r("/api/v1/nodes/n1"), "nodes:None:Some(\"n1\"):None");
        assert_eq!(r("/api/v1/pods/x"), "NotFound");
        assert_eq!(r("/apis/apps/v1/namespaces/d/statefulsets"), "NotFound");
        assert_eq!(
            r("/api/v1/namespaces/d/pods/x/exec"),
            "pods:Some(\"d\"):Some(\"x\"):Some(\"exec\")"
        );
        assert_eq!(r("/api/v1/namespaces/d/pods/x/eviction"), "NotFound");
        match route("/api/v1/nodes/n1/proxy/stats/summary") {
            Route::Resource(t) => assert_eq!(
                (t.name.as_deref(), t.sub.as_deref(), t.proxy_path.as_deref()),
                (Some("n1"), Some("proxy"), Some("stats/summary"))
            ),
            _ => panic!("not a node proxy route"),
        }
    }

    #[test]
    fn kubectl_get_asks_for_a_table() {
        let q = Query::default();
        let a = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(a), &q).unwrap(),
            Output::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            negotiate(Some("application/json"), &q).unwrap(),
            Output::Json
        );
        assert!(negotiate(Some("application/vnd.kubernetes.protobuf"), &q).is_err());
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*"), &q).unwrap(),
            Output::Json
        );
    }
}
