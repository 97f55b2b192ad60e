//! Nodes against the real server: joining with the token `skiff server` writes, what a
//! node credential may and may not touch, and `kubectl logs` reaching a node agent.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Lines, Server, kube_client};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skiff_api::client::{self, ClientError, NodeCredentials};
use skiff_api::node::SERVING_CERT_SHA256_ANNOTATION;
use skiff_api::token::{JoinToken, sha256_hex};
use std::io::{Read, Write};
use std::sync::{Arc, mpsc};
use std::time::Duration;

async fn join(s: &Server, name: &str) -> NodeCredentials {
    client::join(&s.url(""), &s.node_token(), name)
        .await
        .unwrap_or_else(|e| panic!("join as {name}: {e}"))
}

/// The code and message of a refused kube call.
fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.local/app:1"}]},
    }))
    .unwrap()
}

fn node_obj(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap()
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
    }))
    .unwrap()
}

#[tokio::test]
async fn nodes_join_with_the_token_that_names_the_ca() {
    let s = Server::start();
    let token = s.node_token();
    let parsed = JoinToken::parse(&token).expect("node-token is a skiff1 token");
    assert_eq!(parsed.ca_sha256, sha256_hex(&s.ca_pem()));

    // /cacerts needs no token.
    let resp = s.http().get(s.url("/cacerts")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), s.ca_pem().as_slice());

    let creds = join(&s, "node-a").await;
    assert_eq!(creds.ca_pem.as_bytes(), s.ca_pem().as_slice());
    assert!(
        creds.token.starts_with("skiff-node.node-a."),
        "{}",
        creds.token
    );
    assert_eq!(creds.server_url, s.url(""));
    assert!(creds.logs_token.starts_with("skiff-logs.node-a."));
    // A join token claims a name once: joining again as node-a is refused.
    match client::join(&s.url(""), &token, "node-a").await {
        Err(ClientError::Refused {
            code: 403, message, ..
        }) => assert!(message.contains("already held"), "{message}"),
        other => panic!("took a held name: {other:?}"),
    }
    // The first credential still works.
    let me = client::with_token(&creds.server_url, &creds.ca_pem, &creds.token).unwrap();
    Api::<Node>::all(me)
        .create(&PostParams::default(), &node_obj("node-a"))
        .await
        .unwrap();

    // A token naming another CA: refused before the secret is sent anywhere.
    let wrong_ca = JoinToken {
        ca_sha256: "0".repeat(64),
        ..parsed.clone()
    };
    match client::join(&s.url(""), &wrong_ca.to_string(), "node-a").await {
        Err(e @ ClientError::CaMismatch { .. }) => {
            assert!(e.to_string().contains("refusing to join"), "{e}")
        }
        other => panic!("joined with a wrong CA hash: {other:?}"),
    }
    // The right CA, a wrong secret.
    let wrong_secret = JoinToken {
        secret: "not-the-secret".into(),
        ..parsed.clone()
    };
    match client::join(&s.url(""), &wrong_secret.to_string(), "node-a").await {
        Err(ClientError::Refused { code: 401, .. }) => {}
        other => panic!("joined with a wrong secret: {other:?}"),
    }
    match client::join(&s.url(""), &token, "Not_A_Name").await {
        Err(ClientError::Refused {
            code: 422, message, ..
        }) => {
            assert!(message.contains("nodeName"), "{message}")
        }
        other => panic!("joined with an invalid name: {other:?}"),
    }
    assert!(matches!(
        client::join(&s.url(""), &parsed.secret, "node-a").await,
        Err(ClientError::JoinToken(_))
    ));

    // The bare secret works at the join endpoint too (what older agents hold).
    let http = s.http();
    let resp = http
        .post(s.url("/skiff/v1/join"))
        .bearer_auth(&parsed.secret)
        .json(&json!({"nodeName": "node-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["token"]
            .as_str()
            .unwrap()
            .starts_with("skiff-node.node-b.")
    );
    let resp = http
        .post(s.url("/skiff/v1/join"))
        .json(&json!({"nodeName": "node-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The join secret itself opens discovery and nothing else.
    for tok in [&parsed.secret, &token] {
        let resp = http
            .get(s.url("/api/v1/namespaces/default/pods"))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["kind"], "Status");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("POST /skiff/v1/join"),
            "{v}"
        );
        let resp = http
            .get(s.url("/api"))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn a_node_credential_writes_only_its_own_objects() {
    let s = Server::start();
    let creds = join(&s, "node-a").await;
    let me = client::with_token(&creds.server_url, &creds.ca_pem, &creds.token).unwrap();
    let admin = kube_client(&s).await;
    let pp = PostParams::default();
    join(&s, "node-b").await;
    let merge = |v: Value| Patch::Merge(v);
    let pat = PatchParams::default();

    // Its own Node: create, patch, status.
    let nodes: Api<Node> = Api::all(me.clone());
    nodes.create(&pp, &node_obj("node-a")).await.unwrap();
    nodes
        .patch(
            "node-a",
            &pat,
            &merge(json!({"metadata": {"labels": {"zone": "edge"}}})),
        )
        .await
        .unwrap();
    let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let got = nodes
        .patch_status("node-a", &pat, &merge(st.clone()))
        .await
        .unwrap();
    assert_eq!(got.status.unwrap().conditions.unwrap()[0].status, "True");
    // Not another node's.
    let (code, msg) = refusal(nodes.create(&pp, &node_obj("node-b")).await);
    assert_eq!(code, 403, "{msg}");
    Api::<Node>::all(admin.clone())
        .create(&pp, &node_obj("node-b"))
        .await
        .unwrap();
    let (code, msg) = refusal(nodes.patch_status("node-b", &pat, &merge(st)).await);
    assert_eq!(code, 403);
    assert!(
        msg.starts_with(
            "nodes \"node-b\" is forbidden: User \"system:node:node-a\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope"
        ),
        "{msg}"
    );
    let (code, _) = refusal(nodes.delete("node-b", &DeleteParams::default()).await);
    assert_eq!(code, 403);

    // Its own Lease in kube-node-lease.
    let leases: Api<Lease> = Api::namespaced(me.clone(), "kube-node-lease");
    leases.create(&pp, &lease("node-a")).await.unwrap();
    leases
        .patch(
            "node-a",
            &pat,
            &merge(json!({"spec": {"renewTime": "2025-01-01T00:00:00.000000Z"}})),
        )
        .await
        .unwrap();
    let (code, msg) = refusal(leases.create(&pp, &lease("node-b")).await);
    assert_eq!(code, 403, "{msg}");
    let mut elsewhere = lease("node-a");
    elsewhere.metadata.namespace = Some("default".into());
    let (code, _) = refusal(
        Api::<Lease>::namespaced(me.clone(), "default")
            .create(&pp, &elsewhere)
            .await,
    );
    assert_eq!(code, 403);

    // Pods: the status and deletion of pods bound to it, no others.
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for (name, node) in [
        ("mine", "node-a"),
        ("mine-2", "node-a"),
        ("theirs", "node-b"),
    ] {
        admin_pods.create(&pp, &pod(name, node)).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(me.clone(), "default");
    let running = json!({"status": {"phase": "Running"}});
    let got = pods
        .patch_status("mine", &pat, &merge(running.clone()))
        .await
        .unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Running"));
    let (code, msg) = refusal(pods.patch_status("theirs", &pat, &merge(running)).await);
    assert_eq!(code, 403);
    assert!(msg.contains("spec.nodeName set to itself"), "{msg}");
    let (code, _) = refusal(pods.delete("theirs", &DeleteParams::default()).await);
    assert_eq!(code, 403);
    let (code, _) = refusal(pods.create(&pp, &pod("new", "node-a")).await);
    assert_eq!(code, 403);
    let (code, _) = refusal(
        pods.patch(
            "mine",
            &pat,
            &merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await,
    );
    assert_eq!(code, 403);
    pods.delete("mine-2", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let (code, _) = refusal(pods.logs("mine", &Default::default()).await);
    assert_eq!(code, 403, "a node reads no logs through the apiserver");
    // It reads its own pods only: by name, or listed by spec.nodeName (the one it deleted
    // with grace 0 is gone).
    pods.get("mine").await.unwrap();
    let (code, msg) = refusal(pods.get("theirs").await);
    assert_eq!(code, 403, "{msg}");
    let (code, msg) = refusal(pods.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert!(
        msg.contains("can only list/watch pods with spec.nodeName field selector"),
        "{msg}"
    );
    let own = ListParams::default().fields("spec.nodeName=node-a");
    assert_eq!(pods.list(&own).await.unwrap().items.len(), 1);
    let (code, _) = refusal(
        pods.list(&ListParams::default().fields("spec.nodeName=node-b"))
            .await,
    );
    assert_eq!(code, 403);
    // A watch of another node's pod by name, with its own selector, shows nothing of it.
    let watched = s
        .http()
        .get(s.url("/api/v1/namespaces/default/pods/theirs?watch=1&fieldSelector=spec.nodeName%3Dnode-a&timeoutSeconds=1"))
        .bearer_auth(&creds.token)
        .send()
        .await
        .unwrap();
    assert_eq!(watched.status(), 200);
    let body = watched.text().await.unwrap();
    assert!(
        !body.contains("node-b"),
        "another node's pod leaked through a watch: {body}"
    );
    // Nor whether a pod exists.
    let (code, _) = refusal(pods.get("no-such-pod").await);
    assert_eq!(code, 403, "a missing pod looks like a foreign one");
    // Its own Node, not another's.
    nodes.get("node-a").await.unwrap();
    // Not the taints an admin put on it.
    Api::<Node>::all(admin.clone())
        .patch(
            "node-a",
            &pat,
            &merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    let (code, msg) = refusal(
        nodes
            .patch("node-a", &pat, &merge(json!({"spec": {"taints": []}})))
            .await,
    );
    assert_eq!(code, 403);
    assert!(msg.contains("is not allowed to modify taints"), "{msg}");
    // Every Node is readable (it routes to the others' pods), none writable but its own.
    assert_eq!(
        nodes.get("node-b").await.unwrap().metadata.name.as_deref(),
        Some("node-b")
    );
    let all = nodes.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = all
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    assert!(
        names.contains(&"node-a") && names.contains(&"node-b"),
        "{names:?}"
    );
    let (code, _) = refusal(
        nodes
            .patch(
                "node-b",
                &pat,
                &merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
    );
    assert_eq!(code, 403);

    // Secrets and ConfigMaps its pods reference, one by one; nothing else.
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    for name in ["unrelated", "db"] {
        let secret: Secret = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}}),
        )
        .unwrap();
        admin_secrets.create(&pp, &secret).await.unwrap();
    }
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"k": "v"}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .create(&pp, &cm)
        .await
        .unwrap();
    let mut uses: Pod = pod("uses-db", "node-a");
    let spec = uses.spec.as_mut().unwrap();
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "db", "secret": {"secretName": "db"}})).unwrap(),
    ]);
    admin_pods.create(&pp, &uses).await.unwrap();
    let mut elsewhere: Pod = pod("theirs-cm", "node-b");
    elsewhere.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(json!({"name": "s", "configMap": {"name": "settings"}})).unwrap(),
    ]);
    admin_pods.create(&pp, &elsewhere).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(me.clone(), "default");
    let got = secrets.get("db").await.unwrap();
    assert_eq!(got.data.unwrap()["k"].0, b"v");
    let (code, msg) = refusal(secrets.get("unrelated").await);
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        "secrets \"unrelated\" is forbidden: User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object"
    );
    let (code, _) = refusal(secrets.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    let (code, _) = refusal(
        Api::<ConfigMap>::namespaced(me.clone(), "default")
            .get("settings")
            .await,
    );
    assert_eq!(code, 403, "another node's pod's ConfigMap");
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
    )
    .unwrap();
    let (code, _) = refusal(
        Api::<ConfigMap>::namespaced(me.clone(), "default")
            .create(&pp, &cm)
            .await,
    );
    assert_eq!(code, 403);
    // Events are a node's to write.
    let ev: Event = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "mine.1"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": "mine"},
        "reason": "Started", "message": "started", "type": "Normal",
        "source": {"component": "skiff-agent", "host": "node-a"},
    }))
    .unwrap();
    Api::<Event>::namespaced(me.clone(), "default")
        .create(&pp, &ev)
        .await
        .unwrap();

    // A credential the server did not issue is no credential.
    let (forged, _) = skiff_api::token::new_credential("skiff-node", "node-a");
    let status = |tok: String| {
        let http = s.http();
        let url = s.url("/api/v1/nodes/node-a");
        async move {
            http.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(forged).await, 401);
    // Revoked (its Secret deleted, as `skiff node revoke` does): refused at once.
    assert_eq!(status(creds.token.clone()).await, 200);
    Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .delete("skiff-node-node-a", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status(creds.token.clone()).await, 401);
}

#[tokio::test]
async fn nobody_joins_as_the_servers_own_node() {
    let s = Server::start_node("control", &[]);
    match client::join(&s.url(""), &s.node_token(), "control").await {
        Err(ClientError::Refused {
            code: 403, message, ..
        }) => {
            assert!(message.contains("already held"), "{message}")
        }
        other => panic!("joined as the server's own node: {other:?}"),
    }
}

/// A blocking stand-in for a node agent's log endpoint: HTTPS on 127.0.0.1 with a
/// self-signed certificate, accepting only `credential`. Each `follow` request hands the
/// test a sender on `followers`; the lines sent there go out as they come.
struct Agent {
    port: u16,
    pin: String,
    followers: mpsc::Receiver<mpsc::Sender<String>>,
    seen: mpsc::Receiver<String>,
}

fn read_head(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

fn serve_one(
    tcp: std::net::TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    credential: &str,
    followers: &mpsc::Sender<mpsc::Sender<String>>,
    seen: &mpsc::Sender<String>,
) -> Option<()> {
    let conn = rustls::ServerConnection::new(cfg).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = read_head(&mut tls)?;
    let target = head.split_whitespace().nth(1)?.to_string();
    let _ = seen.send(target.clone());
    let authorized = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {credential}")
        })
    });
    if !authorized {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","code":401}"#;
        write!(
            tls,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        return tls.flush().ok();
    }
    if !target.contains("follow=true") {
        let body = "hello from the agent\n";
        write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        return tls.flush().ok();
    }
    write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .ok()?;
    tls.flush().ok()?;
    let (tx, lines) = mpsc::channel();
    followers.send(tx).ok()?;
    loop {
        let line = lines.recv().ok()?;
        write!(tls, "{:x}\r\n{line}\r\n", line.len()).ok()?;
        tls.flush().ok()?;
    }
}

impl Agent {
    fn start(credential: String) -> Agent {
        let cert = skiff_api::node::serving_certificate(&["127.0.0.1".into()]).unwrap();
        let cfg = Arc::new(cert.server_config().unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (followers_tx, followers) = mpsc::channel();
        let (seen_tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let (cfg, credential, followers, seen) = (
                    cfg.clone(),
                    credential.clone(),
                    followers_tx.clone(),
                    seen_tx.clone(),
                );
                std::thread::spawn(move || serve_one(tcp, cfg, &credential, &followers, &seen));
            }
        });
        Agent {
            port,
            pin: cert.sha256,
            followers,
            seen,
        }
    }
}

#[tokio::test]
async fn kubectl_logs_reach_the_node_agent_and_follow_streams() {
    let s = Server::start();
    // The agent double knows its own credential, as a real agent would after joining.
    let creds = join(&s, "n1").await;
    let agent = Agent::start(creds.logs_token.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "annotations": {SERVING_CERT_SHA256_ANNOTATION: agent.pin}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": agent.port}},
        },
    });
    let me = client::with_token(&creds.server_url, &creds.ca_pem, &creds.token).unwrap();
    Api::<Node>::all(me)
        .create(
            &PostParams::default(),
            &serde_json::from_value(node).unwrap(),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(kube_client(&s).await, "default")
        .create(&PostParams::default(), &pod("web", "n1"))
        .await
        .unwrap();

    // The admin kubeconfig still works for kubectl, logs included.
    assert!(s.kubectl_ok(&["get", "nodes"]).contains("n1"));
    assert_eq!(s.kubectl_ok(&["logs", "web"]), "hello from the agent\n");
    let target = agent.seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(target, "/containerLogs/default/web/c");

    let mut cmd = s.kubectl_cmd();
    cmd.args(["logs", "-f", "--tail=3", "web"]);
    let mut follow = Lines::spawn(cmd);
    let target = agent.seen.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        target,
        "/containerLogs/default/web/c?follow=true&tailLines=3"
    );
    let lines = agent
        .followers
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    for l in ["one", "two", "three"] {
        lines.send(format!("{l}\n")).unwrap();
        follow.wait_for(l, Duration::from_secs(30), |x| x == l);
    }
    drop(follow);

    // Over HTTP/1.1 a followed log is chunked.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&s.ca_pem()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let mut resp = http
        .get(s.url("/api/v1/namespaces/default/pods/web/log?follow=true"))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let lines = agent
        .followers
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    lines.send("four\n".into()).unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(chunk.as_ref(), b"four\n");
}

#[tokio::test]
async fn a_plain_join_secret_from_an_older_version_keeps_working() {
    let mut s = Server::start();
    assert!(s.terminate());
    std::fs::write(s.dir.join("node-token"), "0123456789abcdef\n").unwrap();
    s.restart();
    let token = s.node_token();
    let parsed = JoinToken::parse(&token).expect("rewritten as a skiff1 token");
    assert_eq!(parsed.secret, "0123456789abcdef");
    assert_eq!(parsed.ca_sha256, sha256_hex(&s.ca_pem()));
    join(&s, "old-node").await;
    let resp = s
        .http()
        .post(s.url("/skiff/v1/join"))
        .bearer_auth("0123456789abcdef")
        .json(&json!({"nodeName": "old-node-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["token"]
            .as_str()
            .unwrap()
            .starts_with("skiff-node.old-node-2.")
    );
}

/// The node IPAM controller: Nodes registering together get distinct blocks of the
/// cluster CIDR; a Node that has one keeps it; a full range leaves a Node without one
/// until a deleted Node frees its block.
#[tokio::test]
async fn every_node_gets_a_pod_cidr_of_its_own_and_blocks_come_back() {
    let s = Server::start_with(&[
        "--no-scheduler",
        "--cluster-cidr",
        "10.50.0.0/22",
        "--node-cidr-mask-size",
        "24",
    ]);
    let nodes: Api<Node> = Api::all(kube_client(&s).await);
    let mut preset = node_obj("preset");
    preset.spec = Some(serde_json::from_value(json!({"podCIDR": "10.50.2.0/24"})).unwrap());
    nodes.create(&PostParams::default(), &preset).await.unwrap();
    let names = ["n-a", "n-b", "n-c"];
    let creates = names.map(|n| {
        let nodes = nodes.clone();
        async move { nodes.create(&PostParams::default(), &node_obj(n)).await }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let cidr_of = |nodes: Api<Node>, name: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let n = nodes.get(name).await.unwrap();
            if let Some(c) = n.spec.and_then(|s| s.pod_cidr) {
                return Some(c);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut got = std::collections::BTreeSet::new();
    for n in names {
        got.insert(cidr_of(nodes.clone(), n).await.expect("a pod CIDR"));
    }
    let want: std::collections::BTreeSet<String> = ["10.50.0.0/24", "10.50.1.0/24", "10.50.3.0/24"]
        .map(String::from)
        .into();
    assert_eq!(got, want, "distinct blocks, around the one set by hand");
    assert_eq!(
        cidr_of(nodes.clone(), "preset").await.as_deref(),
        Some("10.50.2.0/24")
    );

    // The range is full: a fifth node waits, and gets the block of a deleted node.
    nodes
        .create(&PostParams::default(), &node_obj("late"))
        .await
        .unwrap();
    let events: Api<Event> = Api::all(kube_client(&s).await);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let list = events.list(&ListParams::default()).await.unwrap();
            if list.items.iter().any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.involved_object.name.as_deref() == Some("late")
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a CIDRNotAvailable event for the node that found the range full");
    let b = nodes
        .get("n-b")
        .await
        .unwrap()
        .spec
        .unwrap()
        .pod_cidr
        .unwrap();
    assert!(
        nodes
            .get("late")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.pod_cidr)
            .is_none(),
        "no block is left"
    );
    nodes.delete("n-b", &DeleteParams::default()).await.unwrap();
    // The controller retries a full range every 5 s.
    let late = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(c) = cidr_of(nodes.clone(), "late").await {
                return c;
            }
        }
    })
    .await
    .expect("the freed block is handed out again");
    assert_eq!(late, b);
}
