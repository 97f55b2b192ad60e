//! The node agent end to end, as a user meets it: a real registry on loopback, guests
//! published with `skiff push`, the real `skiff server` with its agent, pods applied
//! with kubectl, HTTP through the pod's hostPort, and the guest-fault table (each fault
//! ends in the right reason and message while other pods keep serving).

#![allow(clippy::unwrap_used)]

mod common;

use common::pods::{
    Load, WAIT, apply, http_get, mark_stale, running, status, terminated, wait_event, wait_for,
    waiting,
};
use common::{Agent, Registry, Server, free_port, guest, kube_client};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::wait::await_condition;
use std::time::Duration;

/// A Wasm pod; `extra` is appended to the container (YAML at 4 spaces).
fn pod(name: &str, image: &str, restart: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: wasm\n  restartPolicy: {restart}\n  containers:\n  - name: app\n    image: {image}\n{extra}"
    )
}

fn hello_pod(name: &str, image: &str, host_port: u16) -> String {
    pod(
        name,
        image,
        "Always",
        &format!(
            "    ports:\n    - containerPort: 8080\n      hostPort: {host_port}\n    resources:\n      limits: {{cpu: 500m, memory: 64Mi}}\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_service_from_the_registry_serves_on_its_host_port() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let s = Server::start_node("edge-a", &[]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // The node registered itself, with its runtime and real capacity.
    let node = tokio::time::timeout(
        WAIT,
        await_condition(
            Api::<Node>::all(client.clone()),
            "edge-a",
            |n: Option<&Node>| n.is_some(),
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("runtime.skiff.dev/wasm").map(String::as_str),
        Some("true")
    );
    let st = node.status.unwrap();
    assert!(st.allocatable.unwrap().contains_key("memory"));
    assert!(
        st.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    s.kubectl_ok(&["-n", "kube-node-lease", "get", "lease", "edge-a"]);

    let port = free_port();
    apply(&s, &hello_pod("hello", &image, port));
    let p = wait_for(&pods, "hello", "Running", running).await;
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("edge-a"));
    let (code, body) = http_get(port, "/greet").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
    let table = s.kubectl_ok(&["get", "pod", "hello"]);
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    let logs = s.kubectl_ok(&["logs", "hello"]);
    assert!(
        logs.contains(&format!(
            "skiff: serving wasi:http on [::]:8080 (pod), 0.0.0.0:{port} (node)"
        )),
        "{logs}"
    );

    s.kubectl_ok(&["delete", "pod", "hello", "--timeout=60s"]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "deleting the pod frees its host port"
    );

    // A wasi:cli job: args, env, exit code, and its output through `kubectl logs`.
    let job = reg.push(&guest("job.wasm"), "skiff/job:1");
    apply(
        &s,
        &pod(
            "job",
            &job,
            "Never",
            "    args: [\"first\", \"--exit=3\"]\n    env: [{name: GREETING, value: hi there}]\n",
        ),
    );
    let p = wait_for(&pods, "job", "exit 3", |p: &Pod| {
        terminated(p).is_some_and(|(r, _, code)| r == "Error" && code == 3)
    })
    .await;
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Failed"));
    let logs = s.kubectl_ok(&["logs", "job"]);
    assert!(logs.contains("argv[1]=first"), "{logs}");
    assert!(logs.contains("GREETING=hi there"), "{logs}");
    assert!(logs.contains("this line goes to stderr"), "{logs}");
    let tail = s.kubectl_ok(&["logs", "job", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let prev = s.kubectl(&["logs", "job", "--previous"]);
    assert!(!prev.status.success());
    assert!(
        String::from_utf8_lossy(&prev.stderr).contains("previous terminated container"),
        "{}",
        String::from_utf8_lossy(&prev.stderr)
    );
}

const TRAP: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
const STACK: &str =
    r#"(module (memory (export "memory") 1) (func $f (export "_start") (call $f)))"#;
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
const BOMB: &str = r#"(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#;
const NO_START: &str = r#"(module (memory (export "memory") 1) (func (export "main")))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_faults_end_in_the_right_reason_and_others_keep_serving() {
    let reg = Registry::start();
    let hello = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let s = Server::start_node("edge-f", &[]);
    let pods: Api<Pod> = Api::namespaced(kube_client(&s).await, "default");
    let hello_port = free_port();
    apply(&s, &hello_pod("bystander", &hello, hello_port));
    wait_for(&pods, "bystander", "Running", running).await;

    let trap = reg.push_wat(TRAP, "faults/trap:1");
    let stack = reg.push_wat(STACK, "faults/stack:1");
    let spin = reg.push_wat(SPIN, "faults/spin:1");
    let bomb = reg.push_wat(BOMB, "faults/bomb:1");
    let no_start = reg.push_wat(NO_START, "faults/nostart:1");
    // A proxy component whose /loop handler never returns.
    let proxy = reg.push_wat(
        include_str!("../shims/tests/fixtures/proxy.component.wat"),
        "faults/proxy:1",
    );
    // Bytes that are not Wasm, served with a Wasm media type: publish a valid module,
    // then replace the registry's copy of the layer (the digest no longer matches).
    let tampered = reg.push_wat(
        r#"(module (memory (export "memory") 1) (func (export "_start")) (data (i32.const 0) "tamper"))"#,
        "faults/tampered:1",
    );
    let missing = reg.reference("faults/missing:1");
    let layer = {
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "_start")) (data (i32.const 0) "tamper"))"#,
        )
        .unwrap();
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&wasm)))
    };
    std::fs::write(reg.blob_path(&layer), b"this is not wasm at all").unwrap();

    let loop_port = free_port();
    let limits =
        |mem: &str| format!("    resources:\n      limits: {{cpu: 200m, memory: {mem}}}\n");
    let yaml = [
        pod("trap", &trap, "Never", ""),
        pod("stack", &stack, "Never", ""),
        pod("bomb", &bomb, "Never", &limits("16Mi")),
        pod("spin", &spin, "Never", "    resources:\n      limits: {cpu: 50m, memory: 16Mi}\n"),
        pod("nostart", &no_start, "Never", ""),
        pod("tampered", &tampered, "Never", ""),
        pod("missing", &missing, "Never", ""),
        pod("crashloop", &trap, "Always", ""),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\n  annotations: {{skiff.dev/request-timeout: 1s}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {proxy}\n    ports:\n    - containerPort: 8080\n      hostPort: {loop_port}\n"
        ),
    ]
    .join("---\n");
    apply(&s, &yaml);

    let term = |reason: &'static str, text: &'static str| {
        move |p: &Pod| terminated(p).is_some_and(|(r, m, _)| r == reason && m.contains(text))
    };
    let wait_reason = |reason: &'static str, text: &'static str| {
        move |p: &Pod| waiting(p).is_some_and(|(r, m)| r == reason && m.contains(text))
    };
    let p = wait_for(&pods, "trap", "Trap", term("Trap", "unreachable")).await;
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Failed"));
    wait_for(&pods, "stack", "Trap (stack)", term("Trap", "stack")).await;
    wait_for(&pods, "bomb", "OOMKilled", |p: &Pod| {
        terminated(p).is_some_and(|(r, _, code)| r == "OOMKilled" && code == 137)
    })
    .await;
    wait_for(
        &pods,
        "nostart",
        "InvalidArtifact",
        wait_reason("InvalidArtifact", "_start"),
    )
    .await;
    wait_for(
        &pods,
        "tampered",
        "InvalidArtifact (digest)",
        wait_reason("InvalidArtifact", "digest"),
    )
    .await;
    let p = wait_for(&pods, "missing", "ErrImagePull", |p: &Pod| {
        waiting(p).is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;
    let (_, m) = waiting(&p).unwrap();
    assert!(
        m.contains("not found") || m.contains("Back-off pulling"),
        "{m}"
    );
    let p = wait_for(
        &pods,
        "crashloop",
        "CrashLoopBackOff",
        wait_reason("CrashLoopBackOff", "back-off"),
    )
    .await;
    let cs = status(Some(&p)).unwrap();
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.reason.as_deref(), Some("Trap"));
    assert!(last.message.unwrap_or_default().contains("unreachable"));
    assert!(cs.restart_count >= 1);
    let events = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crashloop",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("Trap") && events.contains("BackOff"),
        "{events}"
    );

    // A busy loop keeps running (CPU-capped) until the pod is deleted.
    wait_for(&pods, "spin", "Running", running).await;
    s.kubectl_ok(&["delete", "pod", "spin", "--timeout=60s"]);

    // A request that never returns is cut at the deadline; the service goes on.
    wait_for(&pods, "slow", "Running", running).await;
    let (code, _) = http_get(loop_port, "/loop").await.unwrap();
    assert_eq!(code, 504);
    let (code, _) = http_get(loop_port, "/").await.unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_get(loop_port, "/trap").await.unwrap();
    assert_eq!(code, 500);
    let (code, _) = http_get(loop_port, "/").await.unwrap();
    assert_eq!(code, 200);

    // Through all of it, the bystander served.
    let (code, body) = http_get(hello_port, "/").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
    let p = pods.get("bystander").await.unwrap();
    assert_eq!(status(Some(&p)).unwrap().restart_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_under_load_fails_no_request_and_it_readopts() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    // The control plane alone, and the node as a separate `skiff agent` that joins it.
    let s = Server::start_with(&[]);
    let mut agent = Agent::start(&s, "edge-k");
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let port = free_port();
    apply(&s, &hello_pod("steady", &image, port));
    let before = wait_for(&pods, "steady", "Running", running).await;
    let started = status(Some(&before))
        .unwrap()
        .state
        .unwrap()
        .running
        .unwrap()
        .started_at;

    // Load: two clients, sequential requests each, every answer checked.
    let load = Load::start(port, 2, |b| b == "hello from skiff\n");
    agent.kill9();
    // With the old agent dead, mark the stored status stale: whatever state the pod
    // shows after this was written by the restarted agent, not left by the old one.
    mark_stale(&pods, "steady", "app", &image).await;
    agent.restart();
    // The restarted agent finds the running instance and says so.
    wait_event(&client, "steady", "Adopted").await;
    let after = wait_for(&pods, "steady", "status rewritten by the new agent", |p| {
        status(Some(p)).is_some_and(|c| c.state.and_then(|s| s.running).is_some())
    })
    .await;
    assert!(running(&after), "{:#?}", after.status);
    // Let the load run a little past the restart, then stop it.
    let (code, _) = http_get(port, "/after-restart").await.unwrap();
    assert_eq!(code, 200);
    let (total, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "requests failed across the agent's death: {failed:?}"
    );
    assert!(total > 10, "only {total} requests made");
    let cs = status(Some(&after)).unwrap();
    assert_eq!(cs.restart_count, 0);
    assert_eq!(cs.state.unwrap().running.unwrap().started_at, started);
}

/// Two agents on one machine (here: two nodes of one test): an agent's clean-up of
/// orphaned sandboxes takes its own orphans and leaves the other agent's pods alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_clean_up_leaves_another_agents_sandboxes_alone() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let s = Server::start_with(&[]);
    let _b = Agent::start(&s, "edge-b");
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let port = free_port();
    apply(&s, &hello_pod("neighbour", &image, port));
    let pod = wait_for(&pods, "neighbour", "Running", running).await;
    let netns = std::path::PathBuf::from(format!(
        "/run/netns/skiff-{}",
        pod.metadata.uid.clone().unwrap()
    ));
    assert!(netns.exists(), "{} exists", netns.display());

    // A second agent starts (its first clean-up), stops, finds an orphan of its own
    // (a pod directory and a namespace) and starts again.
    let mut a = Agent::start(&s, "edge-a");
    let nodes: Api<Node> = Api::all(client.clone());
    tokio::time::timeout(
        WAIT,
        await_condition(nodes, "edge-a", |n: Option<&Node>| n.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    a.kill9();
    let orphan = "00000000-0000-4000-8000-00000000beef";
    std::fs::create_dir_all(a.dir.path().join("pods").join(orphan)).unwrap();
    let added = std::process::Command::new("ip")
        .args(["netns", "add", &format!("skiff-{orphan}")])
        .status()
        .unwrap();
    assert!(added.success());
    let orphan_ns = std::path::PathBuf::from(format!("/run/netns/skiff-{orphan}"));
    a.restart();
    let deadline = std::time::Instant::now() + WAIT;
    while orphan_ns.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not remove its orphaned sandbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !a.dir.path().join("pods").join(orphan).exists(),
        "its pod directory goes with it"
    );

    assert!(netns.exists(), "the other agent's pod keeps its namespace");
    let (code, _) = http_get(port, "/").await.unwrap();
    assert_eq!(code, 200, "and keeps serving");
    let after = pods.get("neighbour").await.unwrap();
    assert_eq!(status(Some(&after)).unwrap().restart_count, 0);
}

/// Edge autonomy, the part that exists: the apiserver goes away for a while; the node
/// agent stays up, its pod keeps serving, and once the server is back the agent acts
/// on the API again (here: the pod's deletion) without having restarted anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rides_out_an_apiserver_outage() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let mut s = Server::start_with(&[]);
    let mut agent = Agent::start(&s, "edge-o");
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let port = free_port();
    apply(&s, &hello_pod("steady", &image, port));
    wait_for(&pods, "steady", "Running", running).await;

    s.kill9();
    // Three seconds without a server (the agent's watch fails and retries meanwhile),
    // with requests all along.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while std::time::Instant::now() < until {
        let (code, body) = http_get(port, "/").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
        served += 1;
    }
    assert!(served > 0);
    assert!(agent.alive(), "the agent survives the outage");

    s.restart();
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods.get("steady").await.unwrap();
    assert_eq!(status(Some(&p)).unwrap().restart_count, 0);
    s.kubectl_ok(&["delete", "pod", "steady", "--timeout=60s"]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the agent, back on the API, stopped the deleted pod"
    );
    assert!(agent.alive());
}

/// An edge node that boots before its uplink: `skiff agent` started while the server is
/// down waits for it and joins once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_the_server_waits_and_joins() {
    let mut s = Server::start_with(&[]);
    s.kill9();
    let mut agent = Agent::start(&s, "edge-late");
    // Without the wait the agent ends at its first refused connection, at once.
    let watch_until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < watch_until {
        assert!(agent.alive(), "the agent gave up while the server was down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.restart();
    let client = kube_client(&s).await;
    let nodes: Api<Node> = Api::all(client);
    tokio::time::timeout(
        WAIT,
        await_condition(nodes, "edge-late", |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref()?.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }),
    )
    .await
    .expect("the agent joined and its Node became Ready")
    .unwrap();
    assert!(agent.alive());
}

/// The node's Wasm host killed with SIGKILL under load: the agent starts a new host,
/// each pod's containers restart by the pod's restart policy (the termination recorded
/// with why), and the service answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_wasm_host_is_replaced_and_its_pods_restart_by_policy() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let s = Server::start_node("edge-h", &[]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let port = free_port();
    apply(&s, &hello_pod("always", &image, port));
    let never_port = free_port();
    apply(
        &s,
        &hello_pod("once", &image, never_port)
            .replace("restartPolicy: Always", "restartPolicy: Never"),
    );
    wait_for(&pods, "always", "Running", running).await;
    wait_for(&pods, "once", "Running", running).await;
    assert_eq!(http_get(port, "/").await.unwrap().0, 200);

    let old = s.wasm_host_pid().expect("the Wasm host's pid file");
    let killed = std::process::Command::new("kill")
        .args(["-9", &old.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let at = std::time::Instant::now();
    // The service answers again: poll until it does (each try fails fast while the
    // port is closed), and report how long it took.
    let back = loop {
        if let Ok((200, body)) = http_get(port, "/").await {
            assert_eq!(body, "hello from skiff\n");
            break at.elapsed();
        }
        assert!(
            at.elapsed() < WAIT,
            "the service did not come back within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("service back {back:?} after the Wasm host was killed");
    assert!(back < Duration::from_secs(5), "took {back:?}");
    let new = s.wasm_host_pid().unwrap();
    assert_ne!(new, old, "a new Wasm host runs");

    const WHY: &str = "the node's Wasm host stopped unexpectedly";
    let restarted = wait_for(&pods, "always", "restarted once and Running", |p| {
        running(p) && status(Some(p)).is_some_and(|c| c.restart_count == 1)
    })
    .await;
    let last = status(Some(&restarted))
        .unwrap()
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(last.message.unwrap_or_default().contains(WHY));

    // restartPolicy Never: the container stays terminated, with the same reason.
    let once = wait_for(&pods, "once", "Failed", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let (reason, message, code) = terminated(&once).unwrap();
    assert_eq!(reason, "Error");
    assert!(message.contains(WHY), "{message}");
    assert_ne!(code, 0);
    assert!(
        http_get(never_port, "/").await.is_err(),
        "a Never pod is not restarted"
    );
}
