//! What the apiserver does for and through nodes: `/cacerts`, `/skiff/v1/join`, and
//! `pods/log` proxied to the node agent that runs the pod.

use super::objects::parse;
use super::{Api, read_body, value_response};
use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::https;
use crate::node::{AgentEndpoint, LogOptions, container_logs_path};
use crate::resources::{Resource, by_kind};
use crate::validation::{Cause, dns1123_subdomain};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, StatusCode, header};
use http_body_util::{BodyDataStream, Full};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to an agent and waiting for its answer's head may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an agent's error answer is read.
const AGENT_ERROR_LIMIT: usize = 64 * 1024;

fn kind(k: &str) -> ApiResult<&'static Resource> {
    by_kind(k).ok_or_else(|| ApiError::internal(format!("the {k} resource is not served")))
}

/// `GET /cacerts`: the CA certificate file, for a node that checks it against the hash in
/// its join token before trusting it.
pub(super) fn cacerts(api: &Api, method: &Method, path: &str) -> ApiResult<Response> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(path));
    }
    let pem = api.auth.ca_pem().ok_or_else(|| ApiError::no_route(path))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        pem.to_string(),
    )
        .into_response())
}

/// `POST /skiff/v1/join` with `{"nodeName": "..."}`: the node credential for that name
/// (see [`Api::join_as`]).
pub(super) async fn join(api: &Arc<Api>, id: &UserInfo, req: Request) -> ApiResult<Response> {
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("/skiff/v1/join: use POST"));
    }
    if !(id.is_joining() || id.node_name().is_some() || id.is_master()) {
        return Err(ApiError::forbidden(format!(
            "User \"{}\" may not join: joining takes a join token (`skiff token create`)",
            id.name
        )));
    }
    let (_, body) = read_body(req).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the join request must be the JSON object {{\"nodeName\": \"<name>\"}}: {e}"
        ))
    })?;
    let nodes = kind("Node")?;
    let name = match &v["nodeName"] {
        Value::String(n) if !n.is_empty() => n.as_str(),
        Value::Null => {
            return Err(ApiError::invalid(nodes, "", &[Cause::required("nodeName")]));
        }
        other => {
            return Err(ApiError::invalid(
                nodes,
                "",
                &[Cause::invalid(
                    "nodeName",
                    other,
                    "must be a non-empty string",
                )],
            ));
        }
    };
    let errs = dns1123_subdomain(name);
    if !errs.is_empty() {
        let cause = Cause::invalid("nodeName", &json!(name), errs.join("; "));
        return Err(ApiError::invalid(nodes, name, &[cause]));
    }
    let answer = api.join_as(id, name).await?;
    Ok(value_response(StatusCode::OK, &answer))
}

/// The container whose logs are asked for: the named one, or the only one.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let main = names("containers");
    let init = names("initContainers");
    match asked {
        Some(c) => {
            if main.iter().chain(&init).any(|n| n == c)
                || names("ephemeralContainers").iter().any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match main.as_slice() {
            [only] => Ok(only.clone()),
            _ => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                );
                if !init.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

/// `GET .../pods/NAME/log`: ask the node agent running the pod and stream its answer.
pub(super) async fn logs(
    api: &Arc<Api>,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> ApiResult<Response> {
    let opts = LogOptions::from_query(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let pods = kind("Pod")?;
    let pod = parse(&api.get_kv(pods, Some(ns), name)?)?;
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let container = container_of(&pod, name, opts.container.as_deref())?;
    let nodes = kind("Node")?;
    let node_obj = match api.store.get(&nodes.key(None, node)) {
        Some(kv) => parse(&kv)?,
        None => {
            return Err(ApiError::unavailable(format!(
                "pod {name} runs on node {node}, which is not registered: no node agent to ask for its logs"
            )));
        }
    };
    let ep = AgentEndpoint::of_node(&node_obj).map_err(|e| {
        ApiError::unavailable(format!(
            "cannot ask the node agent of node {node} for the logs of pod {name}: {e}"
        ))
    })?;
    let tls = https::pinned_client_config(&ep.cert_sha256).map_err(ApiError::internal)?;
    let mut path = container_logs_path(ns, name, &container);
    let q = opts.to_query();
    if !q.is_empty() {
        path = format!("{path}?{q}");
    }
    let req = http::Request::get(path)
        .header(
            header::AUTHORIZATION,
            format!(
                "Bearer {}",
                api.auth
                    .node_logs_token(node, &api.node_credential_generation(node))
            ),
        )
        .body(Full::new(Bytes::new()))
        .map_err(ApiError::internal)?;
    let resp = https::send(&ep.host, ep.port, Arc::new(tls), req, AGENT_TIMEOUT)
        .await
        .map_err(|e| {
            tracing::warn!(node, pod = name, error = %e, "node agent unreachable for logs");
            ApiError::unavailable(format!(
                "the node agent of node {node} could not be reached for the logs of pod {name}: {e}"
            ))
        })?;
    let code = resp.status();
    if code == StatusCode::OK {
        // The stream ends when the agent ends it, when the server shuts down, or (by
        // dropping it, which closes the agent connection) when the client goes away.
        let mut shutdown = api.shutdown.clone();
        let stream = BodyDataStream::new(resp.into_body()).take_until(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let body = tokio::time::timeout(
        AGENT_TIMEOUT,
        resp.into_body().read_limited(AGENT_ERROR_LIMIT),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    match code.as_u16() {
        // The agent refusing the apiserver is the cluster's problem, not the caller's.
        c @ (400..=499) if c != 401 && c != 403 => Err(ApiError::passed_through(c, message)),
        c => Err(ApiError::unavailable(format!(
            "the node agent of node {node} answered {c} for the logs of pod {name}: {message}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "a");
        assert_eq!(container_of(&one, "p", Some("a")).unwrap(), "a");
        let e = container_of(&one, "p", Some("b")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container b is not valid for pod p")
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = container_of(&two, "p", None).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_of(&two, "p", Some("i")).unwrap(), "i");
    }
}
