//! The Wasm host over a real unix socket: run, list after a reconnect, exit events.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use skiff_shims::host::{self, Client};
use skiff_shims::{ContainerState, ErrorKind, Executor, ExitReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_and_readopts_running_containers() {
    let node = node();
    let socket = node.dir.path().join("run/wasm-host.sock");
    let listener = host::bind(&socket).await.unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let server = tokio::spawn(host::serve_on(listener, node.executor.clone()));

    // A second host on the same socket is refused while the first answers.
    assert!(matches!(
        host::bind(&socket).await,
        Err(host::Error::AlreadyRunning(_))
    ));

    let agent = Client::connect(&socket).await.unwrap();
    let mut events = agent.subscribe();
    let info = agent
        .run(node.spec("spin", node.wat("spin", SPIN)))
        .await
        .unwrap();
    assert!(matches!(info.state, ContainerState::Running { .. }));
    let err = agent
        .run(node.spec("bad", node.artifact("bad", b"not wasm")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArtifact);

    // The agent dies; the container keeps running; a new agent sees it unchanged.
    drop(agent);
    drop(events);
    let agent = Client::connect(&socket).await.unwrap();
    events = agent.subscribe();
    let listed = agent.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    // Usage moves while the guest runs; everything else is exactly what run answered.
    let still = skiff_shims::ContainerInfo {
        usage: info.usage,
        ..listed[0].clone()
    };
    assert_eq!(still, info);
    assert!(listed[0].usage.is_some(), "a running guest reports usage");

    // Exits arrive as events, and wait answers too.
    agent
        .run(node.spec("three", node.wat("three", EXIT_3)))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event.id.as_str(), event.status.code), ("three", 3));
    assert_eq!(agent.wait("three").await.unwrap().code, 3);

    agent.stop("spin", Duration::from_secs(1)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.id, "spin");
    assert_eq!(event.status.reason, ExitReason::Stopped);

    agent.remove("spin").await.unwrap();
    agent.remove("three").await.unwrap();
    assert!(agent.list().await.unwrap().is_empty());
    assert_eq!(
        agent.remove("spin").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The host goes away: calls fail as Unavailable instead of hanging.
    server.abort();
    let _ = server.await;
    let gone = tokio::time::timeout(Duration::from_secs(10), agent.list())
        .await
        .unwrap();
    assert_eq!(gone.unwrap_err().kind(), ErrorKind::Unavailable);
}
