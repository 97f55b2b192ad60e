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

/// The `Authorization` value of the apiserver's calls to node `node`'s agent.
fn agent_bearer(api: &Api, node: &str) -> String {
    format!(
        "Bearer {}",
        api.auth
            .node_logs_token(node, &api.node_credential_generation(node))
    )
}

/// The pod, the node it runs on, and how to reach that node's agent (`what` says what
/// the agent is asked for, in errors).
fn agent_of(
    api: &Api,
    ns: &str,
    name: &str,
    what: &str,
) -> ApiResult<(Value, String, AgentEndpoint)> {
    let pods = kind("Pod")?;
    let pod = parse(&api.get_kv(pods, Some(ns), name)?)?;
    let Some(node) = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from)
    else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let nodes = kind("Node")?;
    let node_obj = match api.store.get(&nodes.key(None, &node)) {
        Some(kv) => parse(&kv)?,
        None => {
            return Err(ApiError::unavailable(format!(
                "pod {name} runs on node {node}, which is not registered: no node agent to ask for {what}"
            )));
        }
    };
    let ep = AgentEndpoint::of_node(&node_obj).map_err(|e| {
        ApiError::unavailable(format!(
            "cannot ask the node agent of node {node} for {what} of pod {name}: {e}"
        ))
    })?;
    Ok((pod, node, ep))
}

/// An agent's error answer as the caller's error: its 4xx (but 401 and 403, which are the
/// cluster's problem) passed through, anything else 503.
async fn agent_error(
    code: StatusCode,
    body: impl http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
    node: &str,
    what: &str,
    name: &str,
) -> ApiError {
    let body = tokio::time::timeout(AGENT_TIMEOUT, read_limited(body, AGENT_ERROR_LIMIT))
        .await
        .ok()
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    match code.as_u16() {
        c @ (400..=499) if c != 401 && c != 403 => ApiError::passed_through(c, message),
        c => ApiError::unavailable(format!(
            "the node agent of node {node} answered {c} for {what} of pod {name}: {message}"
        )),
    }
}

async fn read_limited(
    mut body: impl http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
    limit: usize,
) -> Bytes {
    use http_body_util::BodyExt as _;
    let mut buf = bytes::BytesMut::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    let room = limit - buf.len();
                    buf.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    buf.freeze()
}

/// `GET .../pods/NAME/log`: ask the node agent running the pod and stream its answer.
pub(super) async fn logs(
    api: &Arc<Api>,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> ApiResult<Response> {
    let opts = LogOptions::from_query(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (pod, node, ep) = agent_of(api, ns, name, "the logs")?;
    let node = node.as_str();
    let container = container_of(&pod, name, opts.container.as_deref())?;
    let tls = https::pinned_client_config(&ep.cert_sha256).map_err(ApiError::internal)?;
    let mut path = container_logs_path(ns, name, &container);
    let q = opts.to_query();
    if !q.is_empty() {
        path = format!("{path}?{q}");
    }
    let req = http::Request::get(path)
        .header(header::AUTHORIZATION, agent_bearer(api, node))
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
    Err(agent_error(code, resp.into_body(), node, "the logs", name).await)
}

/// What of a node agent `nodes/NAME/proxy/PATH` reaches: its resource usage only (a
/// kubelet's proxy reaches everything it serves, exec included, which is why
/// `nodes/proxy` is a dangerous right; here it is not).
const NODE_PROXY_PATHS: [&str; 1] = ["stats/summary"];

/// `GET /api/v1/nodes/NAME/proxy/stats/summary`: the node agent's resource usage.
pub(super) async fn proxy(api: &Arc<Api>, name: &str, path: &str) -> ApiResult<Response> {
    if !NODE_PROXY_PATHS.contains(&path) {
        return Err(ApiError::passed_through(
            404,
            format!(
                "the node proxy serves only {}, not {path:?}",
                NODE_PROXY_PATHS.join(", ")
            ),
        ));
    }
    let nodes = kind("Node")?;
    let node_obj = parse(&api.get_kv(nodes, None, name)?)?;
    let ep = AgentEndpoint::of_node(&node_obj).map_err(|e| {
        ApiError::unavailable(format!("cannot reach the node agent of node {name}: {e}"))
    })?;
    let tls = https::pinned_client_config(&ep.cert_sha256).map_err(ApiError::internal)?;
    let req = http::Request::get(format!("/{path}"))
        .header(header::AUTHORIZATION, agent_bearer(api, name))
        .body(Full::new(Bytes::new()))
        .map_err(ApiError::internal)?;
    let (code, body) = https::fetch(
        &ep.host,
        ep.port,
        Arc::new(tls),
        req,
        AGENT_TIMEOUT,
        16 << 20,
    )
    .await
    .map_err(|e| {
        ApiError::unavailable(format!(
            "the node agent of node {name} could not be reached: {e}"
        ))
    })?;
    if code != StatusCode::OK {
        return Err(ApiError::unavailable(format!(
            "the node agent of node {name} answered {code} for {path}"
        )));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// The headers of an upgrade that pass between the client and the agent, both ways.
const UPGRADE_HEADERS: [&str; 7] = [
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// `pods/exec`, `pods/attach` and `pods/portforward`: the client's upgrade passed to the
/// agent of the pod's node (pinned TLS, the node's token), and once both sides switched
/// protocols, bytes copied between them until either ends. The agent speaks the
/// streaming protocols; the apiserver does not look inside.
pub(super) async fn stream(
    api: &Arc<Api>,
    ns: &str,
    name: &str,
    sub: &str,
    mut req: Request,
) -> ApiResult<Response> {
    let what = match sub {
        "exec" => "an exec",
        "attach" => "an attach",
        _ => "a port-forward",
    };
    if req.headers().get(header::UPGRADE).is_none() {
        return Err(ApiError::bad_request(format!(
            "{what} takes a connection upgrade (WebSocket or SPDY/3.1)"
        )));
    }
    let (pod, node, ep) = agent_of(api, ns, name, what)?;
    let query = req.uri().query().unwrap_or("").to_string();
    let path = match sub {
        "portforward" => format!("/portForward/{ns}/{name}"),
        _ => {
            let asked = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.into_owned());
            let container = container_of(&pod, name, asked.as_deref())?;
            let agent_sub = if sub == "exec" { "exec" } else { "attach" };
            format!("/{agent_sub}/{ns}/{name}/{container}")
        }
    };
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(path);
    for (k, v) in req.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = out
        .header(header::AUTHORIZATION, agent_bearer(api, &node))
        .body(Full::new(Bytes::new()))
        .map_err(ApiError::internal)?;
    let tls = https::pinned_client_config(&ep.cert_sha256).map_err(ApiError::internal)?;
    let client_side = hyper::upgrade::on(&mut req);
    let resp = https::send_upgrade(&ep.host, ep.port, Arc::new(tls), out, AGENT_TIMEOUT)
        .await
        .map_err(|e| {
            tracing::warn!(node, pod = name, error = %e, "node agent unreachable for {what}");
            ApiError::unavailable(format!(
                "the node agent of node {node} could not be reached for {what} of pod {name}: {e}"
            ))
        })?;
    let code = resp.status();
    if code != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(code, resp.into_body(), &node, what, name).await);
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            answer = answer.header(k, v);
        }
    }
    let mut shutdown = api.shutdown.clone();
    let pod_name = name.to_string();
    tokio::spawn(async move {
        let (client, agent) = match tokio::join!(client_side, hyper::upgrade::on(resp)) {
            (Ok(c), Ok(a)) => (c, a),
            (c, a) => {
                tracing::debug!(pod = %pod_name, client = c.is_ok(), agent = a.is_ok(), "a streaming upgrade did not complete");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut agent = hyper_util::rt::TokioIo::new(agent);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut agent) => {
                if let Err(e) = r {
                    tracing::debug!(pod = %pod_name, error = %e, "a stream ended with an error");
                }
            }
            _ = shutdown.wait_for(|s| *s) => {}
        }
    });
    answer.body(Body::empty()).map_err(ApiError::internal)
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
