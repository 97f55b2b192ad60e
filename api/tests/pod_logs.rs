//! `pods/log` proxied to the node agent: the apiserver in-process, a test double of the
//! agent's log endpoint as a real HTTPS server on 127.0.0.1 with a self-signed certificate,
//! and real Node and Pod objects saying where it is and which certificate to trust.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use skiff_api::apiserver::{Api, router};
use skiff_api::auth::Auth;
use skiff_api::node::{self, SERVING_CERT_SHA256_ANNOTATION};
use skiff_api::store::{RedbStore, StoreConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;

type Chunk = Result<Frame<Bytes>, Infallible>;
type DoubleBody = http_body_util::Either<Full<Bytes>, StreamBody<LinesStream>>;
type LinesStream = tokio_stream::wrappers::ReceiverStream<Chunk>;

/// What the double saw of one request.
#[derive(Debug)]
struct Seen {
    path_and_query: String,
    authorization: Option<String>,
}

/// A stand-in for a node agent's `/containerLogs` endpoint.
struct Agent {
    addr: SocketAddr,
    pin: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// For each `follow` request, the sender of its body.
    followers: mpsc::UnboundedReceiver<mpsc::Sender<Chunk>>,
}

fn status(code: StatusCode, message: &str) -> http::Response<DoubleBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code.as_u16()});
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(
            body.to_string(),
        ))))
        .unwrap()
}

fn answer(
    req: &Request<Incoming>,
    credential: &str,
    followers: &mpsc::UnboundedSender<mpsc::Sender<Chunk>>,
) -> http::Response<DoubleBody> {
    if !node::bearer_matches(req.headers().get("authorization"), credential) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let opts = match node::LogOptions::from_query(req.uri().query()) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match req.uri().path() {
        "/containerLogs/default/p/c" => {}
        "/containerLogs/default/w/waiting" => {
            return status(
                StatusCode::NOT_FOUND,
                "container \"waiting\" in pod \"w\" is waiting to start: ContainerCreating",
            );
        }
        _ => return status(StatusCode::NOT_FOUND, "no such container"),
    }
    if opts.previous {
        return status(
            StatusCode::BAD_REQUEST,
            "previous terminated container \"c\" in pod \"p\" not found",
        );
    }
    if opts.follow {
        let (tx, rx) = mpsc::channel(8);
        let _ = followers.send(tx);
        return http::Response::builder()
            .header("content-type", "text/plain")
            .body(http_body_util::Either::Right(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
            .unwrap();
    }
    let lines: Vec<String> = (1..=5).map(|i| format!("line {i}\n")).collect();
    let skip = opts
        .tail_lines
        .map(|n| lines.len().saturating_sub(n as usize))
        .unwrap_or(0);
    http::Response::builder()
        .header("content-type", "text/plain")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(
            lines[skip..].concat(),
        ))))
        .unwrap()
}

impl Agent {
    /// Serve on a free loopback port, accepting only `credential`.
    async fn start(credential: String) -> Agent {
        let cert = node::serving_certificate(&["127.0.0.1".into()]).unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (follow_tx, followers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let credential = credential.clone();
                let seen_tx = seen_tx.clone();
                let follow_tx = follow_tx.clone();
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake: fine.
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let _ = seen_tx.send(Seen {
                            path_and_query: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            authorization: req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from),
                        });
                        let resp = answer(&req, &credential, &follow_tx);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Agent {
            addr,
            pin: cert.sha256,
            seen,
            followers,
        }
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the agent double saw no request")
            .unwrap()
    }
}

struct Cluster {
    app: axum::Router,
    auth: Auth,
    _shutdown: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(StoreConfig::new(dir.path().join("s.redb"))).unwrap());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let auth = Auth::new("admin".into(), "join".into(), b"server key".to_vec());
        let api = Api::new(store, auth.clone(), rx);
        api.bootstrap().await.unwrap();
        Cluster {
            app: router(api),
            auth,
            _shutdown: shutdown,
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> http::Response<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", "Bearer admin");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body
            .map(|b| Body::from(serde_json::to_vec(&b).unwrap()))
            .unwrap_or_else(Body::empty);
        self.app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap()
    }

    async fn create(&self, path: &str, obj: Value) {
        let resp = self.call("POST", path, Some(obj)).await;
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    }

    /// A node whose agent is at `port` on 127.0.0.1 with certificate `pin`.
    async fn node(&self, name: &str, port: u16, pin: Option<&str>) {
        let mut annotations = json!({});
        if let Some(p) = pin {
            annotations[SERVING_CERT_SHA256_ANNOTATION] = json!(p);
        }
        self.create(
            "/api/v1/nodes",
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": annotations},
                "status": {
                    "addresses": [{"type": "Hostname", "address": "not-resolvable.invalid"}, {"type": "InternalIP", "address": "127.0.0.1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                },
            }),
        )
        .await;
    }

    async fn pod(&self, name: &str, node: Option<&str>, containers: &[&str]) {
        let cs: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "registry.local/app:1"}))
            .collect();
        let mut spec = json!({"containers": cs});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        self.create(
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
        )
        .await;
    }

    /// GET a log; returns code, content type and the whole body.
    async fn log(&self, pod: &str, query: &str) -> (u16, String, String) {
        let resp = self
            .call(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{pod}/log{query}"),
                None,
            )
            .await;
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("the log body did not end")
            .unwrap()
            .to_bytes();
        (code, ct, String::from_utf8_lossy(&body).into_owned())
    }
}

fn message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["kind"], "Status", "not a Status: {body}");
    v["message"].as_str().unwrap_or_default().to_string()
}

async fn next_chunk(body: &mut Body) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("no log line arrived")
            .expect("the log stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return String::from_utf8_lossy(&data).into_owned();
        }
    }
}

#[tokio::test]
async fn logs_come_from_the_agent_with_the_nodes_logs_token_and_kubectl_parameters() {
    let c = Cluster::new().await;
    let mut agent = Agent::start(c.auth.node_logs_token("n1", "")).await;
    c.node("n1", agent.addr.port(), Some(&agent.pin)).await;
    c.pod("p", Some("n1"), &["c"]).await;

    let (code, ct, body) = c.log("p", "").await;
    assert_eq!((code, ct.as_str()), (200, "text/plain"), "{body}");
    assert_eq!(body, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    let seen = agent.next_seen().await;
    assert_eq!(seen.path_and_query, "/containerLogs/default/p/c");
    assert_eq!(
        seen.authorization,
        Some(format!("Bearer {}", c.auth.node_logs_token("n1", "")))
    );

    let (code, _, body) = c.log("p", "?container=c&tailLines=2&timestamps=true").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "line 4\nline 5\n");
    let seen = agent.next_seen().await;
    assert_eq!(
        seen.path_and_query,
        "/containerLogs/default/p/c?timestamps=true&tailLines=2"
    );

    // The agent's own refusals come through as Statuses with its message.
    let (code, _, body) = c.log("p", "?previous=true").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        message(&body),
        "previous terminated container \"c\" in pod \"p\" not found"
    );
    c.pod("w", Some("n1"), &["waiting"]).await;
    let (code, _, body) = c.log("p", "?container=waiting").await;
    assert_eq!(code, 400, "a container not in the pod: {body}");
    let (code, _, body) = c.log("w", "").await;
    assert_eq!(code, 404, "{body}");
    assert!(message(&body).contains("waiting to start"), "{body}");
}

#[tokio::test]
async fn follow_streams_lines_as_they_come_and_ends_upstream_when_the_client_leaves() {
    let c = Cluster::new().await;
    let mut agent = Agent::start(c.auth.node_logs_token("n1", "")).await;
    c.node("n1", agent.addr.port(), Some(&agent.pin)).await;
    c.pod("p", Some("n1"), &["c"]).await;

    let resp = c
        .call(
            "GET",
            "/api/v1/namespaces/default/pods/p/log?follow=true",
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let follower = tokio::time::timeout(Duration::from_secs(10), agent.followers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        agent.next_seen().await.path_and_query,
        "/containerLogs/default/p/c?follow=true"
    );
    let mut body = resp.into_body();
    for line in ["first\n", "second\n", "third\n"] {
        follower
            .send(Ok(Frame::data(Bytes::from(line))))
            .await
            .unwrap();
        assert_eq!(next_chunk(&mut body).await, line);
    }
    // The client goes away: the apiserver's request to the agent must end too.
    drop(body);
    tokio::time::timeout(Duration::from_secs(10), follower.closed())
        .await
        .expect("the agent's stream stayed open after the client left");

    // And a stream the agent ends, ends for the client.
    let resp = c
        .call(
            "GET",
            "/api/v1/namespaces/default/pods/p/log?follow=1",
            None,
        )
        .await;
    let follower = agent.followers.recv().await.unwrap();
    let mut body = resp.into_body();
    follower
        .send(Ok(Frame::data(Bytes::from("last\n"))))
        .await
        .unwrap();
    assert_eq!(next_chunk(&mut body).await, "last\n");
    drop(follower);
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream went on: {end:?}");
}

#[tokio::test]
async fn the_agent_is_trusted_by_its_pin_and_refusals_are_clear_statuses() {
    let c = Cluster::new().await;
    let mut agent = Agent::start(c.auth.node_logs_token("n1", "")).await;
    let other = node::serving_certificate(&["127.0.0.1".into()]).unwrap();

    // A wrong pin: the handshake fails, nothing is sent.
    c.node("wrong-pin", agent.addr.port(), Some(&other.sha256))
        .await;
    c.pod("p1", Some("wrong-pin"), &["c"]).await;
    let (code, _, body) = c.log("p1", "").await;
    assert_eq!(code, 503, "{body}");
    let m = message(&body);
    assert!(m.contains(&agent.pin) && m.contains(&other.sha256), "{m}");
    assert!(agent.seen.try_recv().is_err(), "a request went through");

    // The double accepts only n1's credential: a pod on n2 (same agent) is refused by
    // it, which shows the apiserver sends the credential of the pod's node.
    c.node("n2", agent.addr.port(), Some(&agent.pin)).await;
    c.pod("p2", Some("n2"), &["c"]).await;
    let (code, _, body) = c.log("p2", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(message(&body).contains("answered 401"), "{body}");
    let seen = agent.next_seen().await;
    assert_eq!(
        seen.authorization,
        Some(format!("Bearer {}", c.auth.node_logs_token("n2", "")))
    );

    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.node("down", closed, Some(&agent.pin)).await;
    c.pod("p3", Some("down"), &["c"]).await;
    let (code, _, body) = c.log("p3", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(message(&body).contains("could not be reached"), "{body}");

    // A node without a pin, a node that does not exist, a pod not scheduled.
    c.node("no-pin", agent.addr.port(), None).await;
    c.pod("p4", Some("no-pin"), &["c"]).await;
    let (code, _, body) = c.log("p4", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        message(&body).contains(SERVING_CERT_SHA256_ANNOTATION),
        "{body}"
    );
    c.pod("p5", Some("ghost"), &["c"]).await;
    let (code, _, body) = c.log("p5", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(message(&body).contains("not registered"), "{body}");
    c.pod("p6", None, &["c"]).await;
    let (code, _, body) = c.log("p6", "").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(message(&body), "pod p6 does not have a host assigned");

    // Several containers and none named.
    c.node("n1", agent.addr.port(), Some(&agent.pin)).await;
    c.pod("two", Some("n1"), &["a", "b"]).await;
    let (code, _, body) = c.log("two", "").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        message(&body),
        "a container name must be specified for pod two, choose one of: [a b]"
    );
    // Bad parameters never reach the agent.
    let (code, _, body) = c.log("two", "?container=a&tailLines=-3").await;
    assert_eq!(code, 400, "{body}");
    let (code, _, body) = c.log("missing", "").await;
    assert_eq!(code, 404, "{body}");
    assert!(
        agent.seen.try_recv().is_err(),
        "a refused request reached the agent"
    );
}
