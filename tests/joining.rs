//! Joining nodes as an operator does it: `skiff token create|list|delete`, a real
//! `skiff agent` joining with such a token and keeping its own credential (the join
//! token is not needed again), `skiff node revoke` cutting a node off at once, and
//! `skiff node approve` letting a replacement machine take the name.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Agent, Server, kube_client};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::wait::await_condition;
use skiff_api::client::{self, ClientError};
use std::process::Command;
use std::time::{Duration, Instant};

fn skiff(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn registered(s: &Server, name: &str) {
    let nodes: Api<Node> = Api::all(kube_client(s).await);
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(nodes, name, |n: Option<&Node>| n.is_some()),
    )
    .await
    .unwrap_or_else(|_| panic!("node {name} did not register"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_skiff_token_create_claims_a_name_once_and_can_be_deleted() {
    let s = Server::start_with(&[]);
    let (ok, token, err) = skiff(
        &s,
        &["token", "create", "--ttl", "1h", "--description", "rack 4"],
    );
    assert!(ok, "{err}");
    let token = token.trim().to_string();
    let parsed = skiff_api::token::JoinToken::parse(&token).unwrap();
    let id = skiff_api::token::join_token_id(&parsed.secret).to_string();
    assert_ne!(id, "default");
    let (ok, list, err) = skiff(&s, &["token", "list"]);
    assert!(ok, "{err}");
    let line = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("rack 4") && (line.contains("59m") || line.contains("1h")),
        "{line}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("default ") && l.contains("<forever>")),
        "{list}"
    );
    assert!(!list.contains(&parsed.secret), "list shows no secrets");

    // A real agent joins with it and keeps its own credential, not the token.
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("join-token");
    std::fs::write(&token_file, &token).unwrap();
    let mut agent = Agent::start_with_token(&s, "rack4-a", &token_file);
    registered(&s, "rack4-a").await;
    let cred = agent.dir.path().join("pki/node-credential.json");
    let saved = std::fs::read_to_string(&cred).unwrap();
    assert!(
        !saved.contains(&parsed.secret),
        "the join token is not kept"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cred).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Restarted with no token at all, it carries on with its credential.
    let leases: Api<Lease> = Api::namespaced(kube_client(&s).await, "kube-node-lease");
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(leases.clone(), "rack4-a", |l: Option<&Lease>| l.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    agent.kill9();
    std::fs::remove_file(&token_file).unwrap();
    agent.token_file = None;
    agent.restart();
    let leases: Api<Lease> = Api::namespaced(kube_client(&s).await, "kube-node-lease");
    let before = leases
        .get("rack4-a")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let renewed = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(leases.clone(), "rack4-a", move |l: Option<&Lease>| {
            l.is_some_and(|l| l.metadata.resource_version != before)
        }),
    )
    .await;
    assert!(
        renewed.is_ok(),
        "the restarted agent did not renew its Lease"
    );
    assert!(agent.alive(), "the agent exited");

    // The same token cannot claim that name again, and once deleted joins nothing.
    match client::join(&s.url(""), &token, "rack4-a").await {
        Err(ClientError::Refused { code: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
    let (ok, said, err) = skiff(&s, &["token", "delete", &id]);
    assert!(ok, "{err}");
    assert!(
        said.contains(&format!("join token \"{id}\" deleted")),
        "{said}"
    );
    match client::join(&s.url(""), &token, "rack4-b").await {
        Err(ClientError::Refused { code: 401, .. }) => {}
        other => panic!("joined with a deleted token: {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_join_token_is_refused() {
    let s = Server::start();
    let (ok, token, err) = skiff(&s, &["token", "create", "--ttl", "2s"]);
    assert!(ok, "{err}");
    let token = token.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    // Joining works until the token expires, then never again.
    loop {
        n += 1;
        match client::join(&s.url(""), &token, &format!("short-{n}")).await {
            Ok(_) => assert!(Instant::now() < deadline, "the token did not expire"),
            Err(ClientError::Refused { code: 401, .. }) => break,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(n > 1, "the token never worked");
    let (_, list, _) = skiff(&s, &["token", "list"]);
    assert!(list.contains("<expired>"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_an_approved_machine_takes_its_name() {
    let s = Server::start_with(&[]);
    let mut agent = Agent::start(&s, "edge-r");
    registered(&s, "edge-r").await;
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.dir.path().join("pki/node-credential.json")).unwrap(),
    )
    .unwrap();
    let credential = saved["token"].as_str().unwrap().to_string();
    let status = |tok: &str| {
        let (http, url, tok) = (s.http(), s.url("/api/v1/nodes/edge-r"), tok.to_string());
        async move {
            http.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&credential).await, 200);
    let (ok, said, err) = skiff(&s, &["node", "revoke", "edge-r"]);
    assert!(ok, "{err}");
    assert!(said.contains("credential revoked"), "{said}");
    assert_eq!(status(&credential).await, 401, "refused at once");

    // A restart cannot get back in by itself: the name is held until the admin approves.
    agent.kill9();
    agent.restart();
    let st = agent
        .wait_exit(Duration::from_secs(60))
        .expect("the agent kept running");
    assert!(!st.success());
    match client::join(&s.url(""), &s.node_token(), "edge-r").await {
        Err(ClientError::Refused {
            code: 403, message, ..
        }) => {
            assert!(message.contains("skiff node approve edge-r"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let (ok, _, err) = skiff(&s, &["node", "approve", "edge-r"]);
    assert!(ok, "{err}");
    agent.restart();
    let nodes: Api<Node> = Api::all(kube_client(&s).await);
    let fresh = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let saved = std::fs::read_to_string(agent.dir.path().join("pki/node-credential.json"))
                .unwrap_or_default();
            if !saved.contains(&credential) && !saved.is_empty() {
                return serde_json::from_str::<serde_json::Value>(&saved).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the approved agent did not rejoin");
    assert_eq!(status(fresh["token"].as_str().unwrap()).await, 200);
    assert_eq!(
        status(&credential).await,
        401,
        "the old credential stays dead"
    );
    // The approval was used up.
    match client::join(&s.url(""), &s.node_token(), "edge-r").await {
        Err(ClientError::Refused { code: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
    nodes.get("edge-r").await.unwrap();
}
