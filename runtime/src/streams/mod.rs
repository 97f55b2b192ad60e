//! The agent's streaming endpoints, which the apiserver proxies `pods/exec`, `pods/attach`
//! and `pods/portforward` to (the upgrade passes through it untouched):
//!
//! ```text
//! GET|POST /exec/{ns}/{pod}/{container}?command=..&stdin=&stdout=&stderr=&tty=
//! GET|POST /attach/{ns}/{pod}/{container}?stdin=&stdout=&stderr=&tty=
//! GET|POST /portForward/{ns}/{pod}[?ports=..]
//! ```
//!
//! exec and attach speak Kubernetes' WebSocket channel protocols ([`channel`]) and
//! SPDY/3.1 with a stream per channel, as client-go did before 1.30; port-forward speaks
//! SPDY/3.1 ([`spdy`]), raw or inside WebSocket messages as kubectl does, and the
//! WebSocket channel form kube-rs uses. Requests carry the node's logs
//! token, like `/containerLogs`.

pub mod channel;
mod client;
mod exec;
mod portforward;
pub mod spdy;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::response::Response;
use axum::routing::any;
use http::{HeaderMap, StatusCode, header};

use crate::executors::Runtime;
use crate::logserver::{authorized, status};
use crate::pod::logs::{ContainerLogs, LogRegistry, PodLogs};

/// What the streaming endpoints need.
#[derive(Clone)]
pub struct StreamState {
    /// The node's pods.
    pub registry: LogRegistry,
    /// The token the apiserver's calls carry.
    pub token: Arc<String>,
    /// Linux containers, if the node runs them.
    pub oci: Option<skiff_shims::oci::OciExecutor>,
}

/// The endpoints' router.
pub fn router(state: StreamState) -> Router {
    Router::new()
        .route("/exec/{ns}/{pod}/{container}", any(exec::exec))
        .route("/attach/{ns}/{pod}/{container}", any(exec::attach))
        .route("/portForward/{ns}/{pod}", any(portforward::port_forward))
        .with_state(state)
}

/// A request's query, every value of each key in order (`command` repeats).
pub(crate) struct Params(HashMap<String, Vec<String>>);

impl Params {
    fn parse(q: Option<&str>) -> Params {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            m.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Params(m)
    }

    fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or_default()
    }

    fn flag(&self, k: &str) -> bool {
        self.all(k)
            .first()
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
    }
}

/// Which transport a request asks to upgrade to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    WebSocket,
    Spdy,
}

fn upgrade_of(headers: &HeaderMap) -> Option<Upgrade> {
    let up = headers.get(header::UPGRADE)?.to_str().ok()?;
    if up.eq_ignore_ascii_case("websocket") {
        Some(Upgrade::WebSocket)
    } else if up.to_ascii_lowercase().starts_with("spdy/3.1") {
        Some(Upgrade::Spdy)
    } else {
        None
    }
}

/// A WebSocket close with "normal closure" (1000), which clients read as the end of the
/// stream; a close without a code is an error to client-go.
pub(crate) fn normal_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// `data` for `channel` as one WebSocket message of protocol `proto`.
pub(crate) fn framed(
    proto: channel::Protocol,
    channel: u8,
    data: &[u8],
) -> axum::extract::ws::Message {
    match channel::encode(proto, channel, data) {
        channel::Out::Binary(b) => axum::extract::ws::Message::Binary(b),
        channel::Out::Text(t) => axum::extract::ws::Message::Text(t.into()),
    }
}

/// The one writer of a socket: messages sent on the returned channel go out in order;
/// once every sender is gone the socket is closed normally.
pub(crate) fn socket_writer(
    mut sink: futures::stream::SplitSink<axum::extract::ws::WebSocket, axum::extract::ws::Message>,
) -> (
    tokio::sync::mpsc::Sender<axum::extract::ws::Message>,
    tokio::task::JoinHandle<()>,
) {
    use futures::SinkExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel(32);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    (tx, task)
}

fn bad_request(m: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", m)
}

/// The checks every streaming request passes: the apiserver's token, a pod of this node.
#[allow(clippy::result_large_err)]
fn pod_of(st: &StreamState, headers: &HeaderMap, ns: &str, pod: &str) -> Result<PodLogs, Response> {
    if !authorized(headers, &st.token) {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ));
    }
    st.registry.get(ns, pod).ok_or_else(|| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node"),
        )
    })
}

/// A running container of the pod.
#[allow(clippy::result_large_err)]
fn running(
    view: &PodLogs,
    pod: &str,
    container: &str,
) -> Result<(ContainerLogs, Runtime, String), Response> {
    let Some(c) = view.containers.get(container) else {
        return Err(bad_request(format!(
            "container {container} is not valid for pod {pod}"
        )));
    };
    match c.running_on.clone() {
        Some((rt, id)) => Ok((c.clone(), rt, id)),
        None => Err(bad_request(format!(
            "container {container} in pod {pod} is not running{}",
            c.waiting
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_keep_every_command_word_in_order() {
        let p = Params::parse(Some(
            "command=sh&command=-c&command=echo+a%26b&stdin=true&tty=1",
        ));
        assert_eq!(p.all("command"), ["sh", "-c", "echo a&b"]);
        assert!(p.flag("stdin") && p.flag("tty"));
        assert!(!p.flag("stdout"));
        assert!(Params::parse(None).all("command").is_empty());
    }

    #[test]
    fn upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        assert_eq!(upgrade_of(&h), None);
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert_eq!(upgrade_of(&h), Some(Upgrade::WebSocket));
        h.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert_eq!(upgrade_of(&h), Some(Upgrade::Spdy));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert_eq!(upgrade_of(&h), None);
    }
}
