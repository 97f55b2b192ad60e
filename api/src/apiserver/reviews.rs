//! The create-only review APIs: access reviews (`kubectl auth can-i`, with `--list`),
//! `kubectl auth whoami`, and token reviews. Each answers with the request object and its
//! `status` filled in; nothing is stored.

use super::Api;
use crate::auth::{self, Attributes, UserInfo, rbac::PolicyRule};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::validation::Cause;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn invalid(res: &Resource, field: &str, v: &Value, msg: &str) -> ApiError {
    ApiError::invalid(res, "", &[Cause::invalid(field, v, msg)])
}

/// The user a SubjectAccessReview's spec names.
fn spec_user(spec: &Value) -> UserInfo {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut extra = BTreeMap::new();
    if let Some(m) = spec["extra"].as_object() {
        for (k, v) in m {
            extra.insert(k.clone(), strings(v));
        }
    }
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: strings(&spec["groups"]),
        extra,
    }
}

impl Api {
    /// Whether `u` may do `a`, and why: `(allowed, reason)`.
    pub fn decide(&self, u: &UserInfo, a: &Attributes<'_>) -> (bool, String) {
        if u.is_master() {
            return (true, String::new());
        }
        if u.is_joining() {
            return (false, auth::join_first_message(u));
        }
        let policy = self.rbac.policy(&*self.store);
        if let Some(n) = u.node_name() {
            match auth::node::authorize(n, a, &*self.graph) {
                auth::node::Decision::Allow(_) => return (true, String::new()),
                auth::node::Decision::NoOpinion(r) => {
                    return match policy.allows(u, a) {
                        Some(why) => (true, why),
                        None => (false, r),
                    };
                }
            }
        }
        match policy.allows(u, a) {
            Some(why) => (true, why),
            None => (false, String::new()),
        }
    }

    /// Answer a create of a review resource `res` made by `caller`.
    pub fn review(
        &self,
        caller: &UserInfo,
        res: &'static Resource,
        ns: Option<&str>,
        mut obj: Value,
    ) -> ApiResult<Value> {
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        let status = match res.kind {
            "SelfSubjectAccessReview" => self.access_review(caller, res, &obj["spec"], None)?,
            "SubjectAccessReview" => {
                self.access_review(&spec_user(&obj["spec"]), res, &obj["spec"], None)?
            }
            "LocalSubjectAccessReview" => {
                let ns = ns.unwrap_or_default();
                if obj["spec"]["nonResourceAttributes"].is_object() {
                    return Err(invalid(
                        res,
                        "spec.nonResourceAttributes",
                        &obj["spec"]["nonResourceAttributes"],
                        "disallowed on this kind of request",
                    ));
                }
                let asked = obj["spec"]["resourceAttributes"]["namespace"].as_str();
                if asked.is_some_and(|a| a != ns) {
                    return Err(invalid(
                        res,
                        "spec.resourceAttributes.namespace",
                        &json!(asked),
                        "must match metadata.namespace",
                    ));
                }
                self.access_review(&spec_user(&obj["spec"]), res, &obj["spec"], Some(ns))?
            }
            "SelfSubjectRulesReview" => self.rules_review(caller, &obj["spec"])?,
            "SelfSubjectReview" => {
                obj["metadata"]["creationTimestamp"] = json!(super::now());
                json!({"userInfo": user_json(caller)})
            }
            "TokenReview" => self.token_review(&obj["spec"]),
            other => return Err(ApiError::internal(format!("{other} is not a review"))),
        };
        obj["status"] = status;
        Ok(obj)
    }

    fn access_review(
        &self,
        u: &UserInfo,
        res: &Resource,
        spec: &Value,
        local_ns: Option<&str>,
    ) -> ApiResult<Value> {
        let ra = &spec["resourceAttributes"];
        let na = &spec["nonResourceAttributes"];
        match (ra.is_object(), na.is_object()) {
            (true, true) => {
                return Err(invalid(
                    res,
                    "spec.nonResourceAttributes",
                    na,
                    "cannot be specified in combination with resourceAttributes",
                ));
            }
            (false, false) => {
                return Err(invalid(
                    res,
                    "spec.resourceAttributes",
                    ra,
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                ));
            }
            _ => {}
        }
        if res.kind != "SelfSubjectAccessReview" && u.name.is_empty() && u.groups.is_empty() {
            return Err(invalid(
                res,
                "spec.user",
                &json!(""),
                "at least one of user or group must be specified",
            ));
        }
        fn s(v: &Value) -> Option<&str> {
            v.as_str().filter(|x| !x.is_empty())
        }
        let (allowed, reason) = if na.is_object() {
            let path = s(&na["path"]).unwrap_or("/");
            let verb = s(&na["verb"]).unwrap_or("get");
            self.decide(u, &Attributes::path(verb, path))
        } else {
            let resource = s(&ra["resource"]).unwrap_or_default();
            let group = s(&ra["group"]).unwrap_or_default();
            let served = crate::resources::RESOURCES
                .iter()
                .find(|r| r.plural == resource && r.group == group);
            let ns = local_ns.or(s(&ra["namespace"]));
            let a = Attributes {
                verb: s(&ra["verb"]).unwrap_or_default(),
                group,
                resource,
                sub: s(&ra["subresource"]),
                ns,
                name: s(&ra["name"]),
                res: served,
                path: None,
            };
            self.decide(u, &a)
        };
        let mut st = json!({"allowed": allowed});
        if !reason.is_empty() {
            st["reason"] = json!(reason);
        }
        Ok(st)
    }

    fn rules_review(&self, u: &UserInfo, spec: &Value) -> ApiResult<Value> {
        let Some(ns) = spec["namespace"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request("no namespace on request"));
        };
        let policy = self.rbac.policy(&*self.store);
        let rules = policy.rules_for(u, Some(ns));
        let (res, non): (Vec<&PolicyRule>, Vec<&PolicyRule>) =
            rules.iter().partition(|r| r.non_resource_urls.is_empty());
        let mut st = json!({
            "resourceRules": res.iter().map(|r| {
                let mut o = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
                if !r.resource_names.is_empty() {
                    o["resourceNames"] = json!(r.resource_names);
                }
                o
            }).collect::<Vec<_>>(),
            "nonResourceRules": non.iter().map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls})).collect::<Vec<_>>(),
            "incomplete": false,
        });
        if u.node_name().is_some() {
            st["incomplete"] = json!(true);
            st["evaluationError"] = json!("node authorizer does not support user rule resolution");
        }
        Ok(st)
    }

    fn token_review(&self, spec: &Value) -> Value {
        match spec["token"].as_str().and_then(|t| self.user_of_token(t)) {
            Some(u) if !u.is_joining() => json!({
                "authenticated": true,
                "user": user_json(&u),
                "audiences": [auth::serviceaccount::ISSUER],
            }),
            _ => json!({"authenticated": false, "error": "the token is not valid"}),
        }
    }
}

/// A user as `userInfo` JSON (empty fields left out).
pub fn user_json(u: &UserInfo) -> Value {
    let mut o = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        o["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        o["extra"] = json!(u.extra);
    }
    o
}
