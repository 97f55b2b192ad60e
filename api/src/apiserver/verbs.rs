//! The verbs on resources once a request is authorized: list, watch, get, create,
//! update, patch (and the scale, status, binding, token and log subresources), delete and
//! deletecollection, each enforcing what authorization left for it to check on the object.

use super::objects::parse;
use super::{
    Api, DeleteOptions, Output, Query, Selectors, Target, WriteOptions, json_response, node, now,
    read_body, request, value_response, watch, with_warnings,
};
use crate::auth::{self, Attributes, Restriction, UserInfo};
use crate::codec::{self, FieldValidation};
use crate::error::{ApiError, ApiResult};
use crate::patch::{self, PatchKind};
use crate::resources::Resource;
use crate::select::FieldSelector;
use crate::store::ListOptions;
use crate::table;
use axum::extract::Request;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

#[allow(clippy::too_many_arguments)]
pub(super) async fn resource(
    api: &Arc<Api>,
    id: &UserInfo,
    restriction: Restriction,
    t: Target,
    q: Query,
    verb: &str,
    accept: &str,
    req: Request,
) -> ApiResult<Response> {
    let res = t.res;
    let ns = t.ns.as_deref();
    let attrs = Attributes::of(verb, res, t.sub.as_deref(), ns, t.name.as_deref());
    // Restrictions are enforced by the arms below that read the object, query or body
    // they depend on; any other request that carries one is refused rather than let
    // through unchecked.
    let enforced = match &restriction {
        Restriction::None => true,
        Restriction::CreateNamed(_) => (verb, attrs.sub) == ("create", None),
        Restriction::NodeLabels(_) => {
            matches!(
                (verb, attrs.sub),
                ("update" | "patch", None | Some("status"))
            )
        }
        Restriction::PodBoundTo(_) => matches!(
            (verb, attrs.sub),
            ("update" | "patch", Some("status")) | ("delete" | "get", None)
        ),
        Restriction::NodeSelector(_) => matches!((verb, attrs.sub), ("list" | "watch", None)),
        Restriction::TokenForPodOn(_) => (verb, attrs.sub) == ("create", Some("token")),
    };
    if !enforced {
        return Err(auth::forbidden(id, &attrs, None));
    }
    restriction.check_selector(id, &attrs, q.get("fieldSelector").unwrap_or(""))?;
    if res.create_only {
        if verb != "create" {
            return Err(ApiError::method_not_allowed(&format!(
                "{verb} on {}",
                res.plural
            )));
        }
        let (ct, body) = read_body(req).await?;
        let obj = codec::decode(&ct, &body)?;
        let (obj, _) = codec::typed(res, obj, FieldValidation::Ignore)?;
        let out = api.review(id, res, ns, obj)?;
        return Ok(value_response(StatusCode::CREATED, &out));
    }
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    match (verb, t.name.as_deref(), t.sub.as_deref()) {
        ("list", None, None) => {
            let output = request::negotiate(Some(accept), &q)?;
            list(api, res, ns, &q, output)
        }
        ("create", Some(name), Some("token")) => {
            let (ct, body) = read_body(req).await?;
            let body = codec::decode(&ct, &body)?;
            let out = api.token_request(&restriction, ns.unwrap_or_default(), name, body)?;
            Ok(value_response(StatusCode::CREATED, &out))
        }
        ("watch", None, None) => {
            let output = request::negotiate(Some(accept), &q)?;
            let sel = Selectors::parse(res, &q)?;
            watch::serve(api.clone(), res, res.ns_prefix(ns), &q, output, sel).await
        }
        ("watch", Some(name), None) => {
            // Old-style watch of one object.
            let output = request::negotiate(Some(accept), &q)?;
            let mut sel = Selectors::parse(res, &q)?;
            // The name narrows the client's field selector; it never replaces it (a node's
            // `spec.nodeName` requirement must still hold).
            let asked = q.get("fieldSelector").unwrap_or("").trim();
            let fields = if asked.is_empty() {
                format!("metadata.name={name}")
            } else {
                format!("{asked},metadata.name={name}")
            };
            sel.fields = FieldSelector::parse(res.kind, &fields)?;
            watch::serve(api.clone(), res, res.ns_prefix(ns), &q, output, sel).await
        }
        ("get", Some(name), None | Some("status")) => {
            let output = request::negotiate(Some(accept), &q)?;
            let kv = match api.get_kv(res, ns, name) {
                // A node learns nothing of pods that are not its own, not even whether
                // they exist.
                Err(e) if e.code == 404 && restriction != Restriction::None => {
                    restriction.check_stored(id, &attrs, &Value::Null)?;
                    return Err(e);
                }
                r => r?,
            };
            if restriction != Restriction::None {
                restriction.check_stored(id, &attrs, &parse(&kv)?)?;
            }
            match output {
                Output::Json => Ok(json_response(StatusCode::OK, kv.value)),
                Output::Table(include) => {
                    let obj = parse(&kv)?;
                    let md = json!({"resourceVersion": kv.mod_revision.to_string()});
                    Ok(value_response(
                        StatusCode::OK,
                        &table::table(res.kind, &[obj], md, include, true),
                    ))
                }
            }
        }
        ("get", Some(name), Some("scale")) => {
            let kv = api.get_kv(res, ns, name)?;
            Ok(value_response(StatusCode::OK, &scale_of(&parse(&kv)?)))
        }
        ("create", Some(name), Some(sub @ ("exec" | "attach" | "portforward")))
            if res.kind == "Pod" =>
        {
            node::stream(api, ns.unwrap_or_default(), name, sub, req).await
        }
        ("get", Some(name), Some("proxy")) if res.kind == "Node" => {
            node::proxy(api, name, t.proxy_path.as_deref().unwrap_or_default()).await
        }
        ("get", Some(name), Some("log")) => {
            let ns = ns.unwrap_or_default();
            node::logs(api, ns, name, req.uri().query()).await
        }
        ("create", None, None) => {
            let dry = q.dry_run()?;
            let (ct, body) = read_body(req).await?;
            let obj = codec::decode(&ct, &body)?;
            restriction.check_created(id, &attrs, &obj)?;
            api.check_escalation(id, res, ns, &obj)?;
            let named = obj["metadata"]["name"]
                .as_str()
                .or(obj["metadata"]["generateName"].as_str())
                .unwrap_or_default();
            guard_credentials(id, res, ns, named, Some(&obj))?;
            let w = api.create(res, ns, obj, fv, dry).await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, w.body),
                &w.warnings,
            ))
        }
        ("create", Some(name), Some("binding")) => {
            let (ct, body) = read_body(req).await?;
            let b = codec::decode(&ct, &body)?;
            bind(api, res, ns, name, &b).await
        }
        ("update", Some(name), sub @ (None | Some("status") | Some("finalize"))) => {
            guard_credentials(id, res, ns, name, None)?;
            let dry = q.dry_run()?;
            let (ct, body) = read_body(req).await?;
            let new = codec::decode(&ct, &body)?;
            let status_sub = sub.filter(|s| *s == "status");
            let finalize = sub == Some("finalize");
            let w = api
                .update(
                    res,
                    ns,
                    name,
                    status_sub,
                    WriteOptions::client(fv, dry),
                    |cur| {
                        restriction.check_stored(id, &attrs, cur)?;
                        restriction.check_change(cur, &new)?;
                        api.check_escalation(id, res, ns, &new)?;
                        if finalize {
                            let mut c = cur.clone();
                            c["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
                            if let Some(rv) = new["metadata"].get("resourceVersion") {
                                c["metadata"]["resourceVersion"] = rv.clone();
                            }
                            return Ok(c);
                        }
                        Ok(new.clone())
                    },
                )
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, w.body),
                &w.warnings,
            ))
        }
        ("patch", Some(name), sub @ (None | Some("status"))) => {
            guard_credentials(id, res, ns, name, None)?;
            let dry = q.dry_run()?;
            let (ct, body) = read_body(req).await?;
            let kind = PatchKind::from_content_type(&ct)?;
            let p: Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}"))
            })?;
            let w = api
                .update(res, ns, name, sub, WriteOptions::client(fv, dry), |cur| {
                    restriction.check_stored(id, &attrs, cur)?;
                    let new = patch::apply(kind, cur, &p)?;
                    restriction.check_change(cur, &new)?;
                    api.check_escalation(id, res, ns, &new)?;
                    Ok(new)
                })
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, w.body),
                &w.warnings,
            ))
        }
        ("update" | "patch", Some(name), Some("scale")) => {
            let dry = q.dry_run()?;
            let (ct, body) = read_body(req).await?;
            let input = if verb == "patch" {
                let kind = PatchKind::from_content_type(&ct)?;
                let p: Value = serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}"))
                })?;
                Err((kind, p))
            } else {
                Ok(codec::decode(&ct, &body)?)
            };
            let w = api
                .update(
                    res,
                    ns,
                    name,
                    None,
                    WriteOptions::client(FieldValidation::Ignore, dry),
                    |cur| {
                        let scale = match &input {
                            Ok(s) => s.clone(),
                            Err((kind, p)) => patch::apply(*kind, &scale_of(cur), p)?,
                        };
                        let replicas = scale["spec"]["replicas"].clone();
                        if !replicas.is_i64() {
                            return Err(ApiError::bad_request(
                                "Scale spec.replicas must be an integer",
                            ));
                        }
                        let mut c = cur.clone();
                        c["spec"]["replicas"] = replicas;
                        if let Some(rv) = scale["metadata"]
                            .get("resourceVersion")
                            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                        {
                            c["metadata"]["resourceVersion"] = rv.clone();
                        }
                        Ok(c)
                    },
                )
                .await?;
            let obj: Value = serde_json::from_slice(&w.body).map_err(ApiError::internal)?;
            Ok(value_response(StatusCode::OK, &scale_of(&obj)))
        }
        ("delete", Some(name), None) => {
            guard_credentials(id, res, ns, name, None)?;
            let (ct, body) = read_body(req).await?;
            let mut opts = delete_options(&q, &ct, &body)?;
            if restriction != Restriction::None {
                let stored = parse(&api.get_kv(res, ns, name)?)?;
                restriction.check_stored(id, &attrs, &stored)?;
                // Delete exactly the object checked, not a namesake created since.
                if opts.uid.is_none() {
                    opts.uid = stored["metadata"]["uid"].as_str().map(String::from);
                }
            }
            let out = api.delete(res, ns, name, opts).await?;
            Ok(json_response(StatusCode::OK, out))
        }
        ("deletecollection", None, None) => {
            let (ct, body) = read_body(req).await?;
            let opts = delete_options(&q, &ct, &body)?;
            let sel = Selectors::parse(res, &q)?;
            let items = api
                .store
                .list(&res.ns_prefix(ns), &ListOptions::default())
                .map_err(|e| ApiError::from_store(e, res, ""))?;
            let mut deleted = Vec::new();
            for kv in items.items {
                let obj = parse(&kv)?;
                let oname = obj["metadata"]["name"].as_str().unwrap_or_default();
                let ons = obj["metadata"]["namespace"].as_str();
                if guard_credentials(id, res, ons, oname, Some(&obj)).is_err() {
                    continue;
                }
                if !sel.matches(&obj) {
                    continue;
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ons = obj["metadata"]["namespace"].as_str().map(String::from);
                match api.delete(res, ons.as_deref(), &name, opts.clone()).await {
                    Ok(b) => {
                        deleted.push(serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {"resourceVersion": api.store.revision().to_string()}, "items": deleted});
            Ok(value_response(StatusCode::OK, &list))
        }
        (v, _, sub) => Err(ApiError::method_not_allowed(&format!(
            "{v} on {}{}",
            res.plural,
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
}

/// Skiff's stored credentials (join tokens, node credentials, user tokens: Secrets
/// `kube-system/skiff-*` of type `skiff.dev/*`) mint identities: only cluster admins
/// write or delete them, whatever RBAC grants on Secrets in `kube-system` (Kubernetes
/// keeps its bootstrap tokens as Secrets too, but they only ever make bootstrappers).
fn guard_credentials(
    id: &UserInfo,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    obj: Option<&Value>,
) -> ApiResult<()> {
    if res.kind != "Secret" || ns != Some(auth::credentials::NAMESPACE) || id.is_master() {
        return Ok(());
    }
    let typed = obj.is_some_and(|o| {
        o["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("skiff.dev/"))
    });
    if typed || name.starts_with("skiff-") {
        return Err(ApiError::forbidden(format!(
            "secrets \"{name}\" is forbidden: Skiff's credentials (kube-system/skiff-* Secrets of type skiff.dev/*) are written and deleted by cluster admins only"
        )));
    }
    Ok(())
}

fn delete_options(q: &Query, ct: &str, body: &[u8]) -> ApiResult<DeleteOptions> {
    let opts = DeleteOptions {
        grace: q.int("gracePeriodSeconds")?,
        propagation: q.get("propagationPolicy").map(String::from),
        dry_run: q.dry_run()?,
        ..Default::default()
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        codec::decode(ct, body)?
    };
    opts.from_body(&body)
}

fn scale_of(obj: &Value) -> Value {
    let md = &obj["metadata"];
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
    })
}

async fn bind(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    b: &Value,
) -> ApiResult<Response> {
    let node = b["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from);
    let Some(node) = node else {
        let causes = [crate::validation::Cause::required("target.name")];
        return Err(ApiError::invalid(res, name, &causes));
    };
    if b["target"]["kind"]
        .as_str()
        .is_some_and(|k| !k.is_empty() && k != "Node")
    {
        return Err(ApiError::bad_request("a binding's target must be a Node"));
    }
    // One write sets the node and the PodScheduled condition together: a scheduler
    // binding thousands of pods a second pays one commit per pod, and a watcher never
    // sees a bound pod without its condition.
    api.update(res, ns, name, Some("binding"), WriteOptions::INTERNAL, |cur| {
        if let Some(existing) = cur["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""),
                details: None,
            });
        }
        if !cur["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict(res, name));
        }
        if let Some(uid) = b["metadata"]["uid"].as_str().filter(|u| !u.is_empty())
            && cur["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(res, name));
        }
        let mut c = cur.clone();
        c["spec"]["nodeName"] = json!(node);
        let mut conds: Vec<Value> = c["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|x| x["type"] != "PodScheduled")
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        c["status"]["conditions"] = json!(conds);
        Ok(c)
    })
    .await?;
    Ok(value_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    start: String,
}

fn list(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    output: Output,
) -> ApiResult<Response> {
    let sel = Selectors::parse(res, q)?;
    let limit = q.int("limit")?.unwrap_or(0) as usize;
    let prefix = res.ns_prefix(ns);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (mut revision, mut start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let tok: Continue = b64
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|t: &Continue| t.start.starts_with(&prefix))
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            (Some(tok.rv), Some(tok.start))
        }
        None => {
            let rv = match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
                (Some(rv), Some("Exact")) if !rv.is_empty() => {
                    Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?)
                }
                _ => None,
            };
            (rv, None)
        }
    };
    let mut items = Vec::new();
    let mut more = false;
    let mut last_key = None;
    'pages: loop {
        let page = api
            .store
            .list(&prefix, &ListOptions { start_after: start.clone(), limit, revision })
            .map_err(|e| match e {
                crate::store::StoreError::Compacted { .. } if q.get("continue").is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                e => ApiError::from_store(e, res, ""),
            })?;
        revision = Some(page.revision);
        let n = page.items.len();
        for (i, kv) in page.items.into_iter().enumerate() {
            last_key = Some(kv.key.to_string());
            if sel.is_empty() {
                items.push((kv, None));
            } else {
                let o = parse(&kv)?;
                if sel.matches(&o) {
                    items.push((kv, Some(o)));
                }
            }
            if limit > 0 && items.len() >= limit {
                more = i + 1 < n || page.more;
                break 'pages;
            }
        }
        if !page.more {
            break;
        }
        start = last_key.clone();
    }
    let rv = revision.unwrap_or_else(|| api.store.revision());
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if more && let Some(k) = last_key {
        let tok = serde_json::to_vec(&Continue { rv, start: k }).map_err(ApiError::internal)?;
        meta["continue"] = json!(b64.encode(tok));
    }
    match output {
        Output::Json => {
            let mut out = Vec::with_capacity(
                items
                    .iter()
                    .map(|(kv, _)| kv.value.len() + 1)
                    .sum::<usize>()
                    + 128,
            );
            out.extend_from_slice(
                format!(
                    "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":",
                    res.kind,
                    res.api_version()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&serde_json::to_vec(&meta).map_err(ApiError::internal)?);
            out.extend_from_slice(b",\"items\":[");
            for (i, (kv, _)) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&kv.value);
            }
            out.extend_from_slice(b"]}");
            Ok(json_response(StatusCode::OK, out))
        }
        Output::Table(include) => {
            let objs = items
                .into_iter()
                .map(|(kv, o)| match o {
                    Some(o) => Ok(o),
                    None => parse(&kv),
                })
                .collect::<ApiResult<Vec<Value>>>()?;
            Ok(value_response(
                StatusCode::OK,
                &table::table(res.kind, &objs, meta, include, true),
            ))
        }
    }
}
