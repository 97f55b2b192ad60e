//! Probes for Wasm and container pods alike, through the real binary: a readiness probe
//! that fails keeps the pod out of Ready, one that passes lets it in; a failing liveness
//! probe restarts the container.
#![allow(clippy::unwrap_used)]

mod common;

use common::pods::{apply, running, status, wait_event, wait_event_where, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// `runtime`: `wasm` or `oci`; `probe`: YAML at 4 spaces.
fn pod(name: &str, runtime: &str, image: &str, probe: &str) -> String {
    let command = if runtime == "oci" {
        "    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; httpd -f -p 8080 -h /var/www & wait\"]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: {runtime}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {image}\n{command}    ports:\n    - {{name: http, containerPort: 8080}}\n{probe}"
    )
}

fn ready_condition(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_liveness_probes_for_wasm_and_containers() {
    let reg = common::Registry::start();
    let wasm = reg.push(&common::guest("hello-http-c.wasm"), "hello:c");
    let oci = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-p", &[]);
    let client = common::kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let fast = "      periodSeconds: 1\n      failureThreshold: 1\n";
    let ready_http = |path: &str| {
        format!("    readinessProbe:\n      httpGet: {{path: {path}, port: http}}\n{fast}")
    };
    let live_tcp = format!("    livenessProbe:\n      tcpSocket: {{port: 9999}}\n{fast}");
    let unready_tcp = format!("    readinessProbe:\n      tcpSocket: {{port: 9999}}\n{fast}");
    apply(
        &s,
        &[
            pod("wasm-ready", "wasm", &wasm, &ready_http("/")),
            pod("wasm-unready", "wasm", &wasm, &unready_tcp),
            pod("wasm-live", "wasm", &wasm, &live_tcp),
            pod("oci-ready", "oci", &oci, &ready_http("/index.html")),
            pod("oci-unready", "oci", &oci, &ready_http("/missing")),
            pod("oci-live", "oci", &oci, &live_tcp),
        ]
        .join("---\n"),
    );
    for name in ["wasm-ready", "oci-ready"] {
        let p = wait_for(&pods, name, "Ready", running).await;
        assert_eq!(ready_condition(&p).as_deref(), Some("True"), "{name}");
    }
    for (name, why) in [
        ("wasm-unready", "dial tcp 127.0.0.1:9999"),
        ("oci-unready", "statuscode: 404"),
    ] {
        wait_event(&client, name, "Unhealthy").await;
        // Written after the failure was seen: running, but not ready.
        let p = wait_for(&pods, name, "running, not ready", |p| {
            status(Some(p)).is_some_and(|c| c.state.and_then(|s| s.running).is_some() && !c.ready)
        })
        .await;
        assert_eq!(ready_condition(&p).as_deref(), Some("False"), "{name}");
        // A first check may come before the server listens (connection refused); the
        // failure under test follows within a few periods.
        let e = wait_event_where(&client, name, "Unhealthy", |e| {
            e.message.as_deref().is_some_and(|m| m.contains(why))
        })
        .await;
        let message = e.message.unwrap_or_default();
        assert!(
            message.starts_with("Readiness probe failed: "),
            "{name}: {message}"
        );
    }
    for name in ["wasm-live", "oci-live"] {
        let p = wait_for(&pods, name, "restarted by its liveness probe", |p| {
            status(Some(p)).is_some_and(|c| c.restart_count >= 1)
        })
        .await;
        let events = s.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason=Killing"),
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        assert!(
            events.contains("failed liveness probe, will be restarted"),
            "{name}: {events} {:?}",
            p.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_run_in_containers_and_are_refused_for_wasm() {
    let reg = common::Registry::start();
    let wasm = reg.push(&common::guest("hello-http-c.wasm"), "hello:c");
    let oci = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-pe", &[]);
    let client = common::kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let exec = |kind: &str, cmd: &str, extra: &str| {
        format!(
            "    {kind}:\n      exec: {{command: [\"/bin/sh\", \"-c\", {cmd:?}]}}\n      periodSeconds: 1\n      failureThreshold: 1\n{extra}"
        )
    };
    // The container writes /tmp/ready a moment after it starts.
    let late_ready = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: oci-exec-ready\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: IMAGE\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 1; touch /tmp/ready; sleep 3600 & wait\"]\n".replace("IMAGE", &oci)
        + &exec("readinessProbe", "cat /tmp/ready", "");
    apply(
        &s,
        &[
            late_ready,
            pod(
                "oci-exec-unready",
                "oci",
                &oci,
                &exec("readinessProbe", "echo nope >&2; exit 2", ""),
            ),
            pod(
                "oci-exec-slow",
                "oci",
                &oci,
                &exec("readinessProbe", "sleep 30", "      timeoutSeconds: 1\n"),
            ),
            pod(
                "oci-exec-live",
                "oci",
                &oci,
                &exec("livenessProbe", "false", ""),
            ),
            pod(
                "wasm-exec",
                "wasm",
                &wasm,
                &exec("readinessProbe", "true", ""),
            ),
        ]
        .join("---\n"),
    );
    let p = wait_for(&pods, "oci-exec-ready", "Ready", |p| {
        status(Some(p)).is_some_and(|c| c.ready)
    })
    .await;
    assert_eq!(ready_condition(&p).as_deref(), Some("True"));
    for (name, why) in [
        ("oci-exec-unready", "exited with 2: nope"),
        ("oci-exec-slow", "timed out after 1s"),
    ] {
        let e = wait_event_where(&client, name, "Unhealthy", |e| {
            e.message.as_deref().is_some_and(|m| m.contains(why))
        })
        .await;
        let message = e.message.unwrap_or_default();
        assert!(
            message.starts_with("Readiness probe failed: "),
            "{name}: {message}"
        );
        let p = pods.get(name).await.unwrap();
        assert_eq!(ready_condition(&p).as_deref(), Some("False"), "{name}");
    }
    // Timed-out commands are killed, not left running: after three timeouts, at most the
    // check in flight is there.
    wait_event_where(&client, "oci-exec-slow", "Unhealthy", |e| {
        e.message
            .as_deref()
            .is_some_and(|m| m.contains("timed out"))
            && e.count.unwrap_or(1) >= 3
    })
    .await;
    let ps = s.kubectl_ok(&["exec", "oci-exec-slow", "--", "ps"]);
    assert!(ps.matches("sleep 30").count() <= 1, "{ps}");
    wait_for(
        &pods,
        "oci-exec-live",
        "restarted by its liveness probe",
        |p| status(Some(p)).is_some_and(|c| c.restart_count >= 1),
    )
    .await;
    // Wasm: the exec probe is ignored with a warning saying why; the pod is Ready.
    wait_event(&client, "wasm-exec", "ProbeUnsupported").await;
    let p = wait_for(&pods, "wasm-exec", "Ready", running).await;
    assert_eq!(ready_condition(&p).as_deref(), Some("True"));
}

/// The reference gRPC health service (grpcio's `grpc_health`), which the test runs inside
/// the pod's network namespace: the busybox image has no gRPC server of its own.
const HEALTH_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
h.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
server.add_insecure_port("127.0.0.1:50051")
server.start()
print("serving", flush=True)
sys.stdin.read()
"#;

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_probes_ask_the_standard_health_service() {
    use std::io::BufRead as _;
    let reg = common::Registry::start();
    let oci = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-pg", &[]);
    let client = common::kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let container = |name: &str, service: &str| {
        format!(
            "  - name: {name}\n    image: {oci}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    readinessProbe:\n      grpc: {{port: 50051, service: {service:?}}}\n      periodSeconds: 1\n      failureThreshold: 1\n"
        )
    };
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: grpc\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n{}{}{}",
            container("up", ""),
            container("down", "down"),
            container("missing", "nope")
        ),
    );
    // Nothing listens yet: the checks fail to connect.
    wait_event_where(&client, "grpc", "Unhealthy", |e| {
        e.message
            .as_deref()
            .is_some_and(|m| m.contains("dial tcp 127.0.0.1:50051"))
    })
    .await;
    let uid = pods.get("grpc").await.unwrap().metadata.uid.unwrap();
    let mut server = Killed(
        std::process::Command::new("ip")
            .args(["netns", "exec", &format!("skiff-{uid}")])
            .args(["python3", "-c", HEALTH_SERVER])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip netns exec python3"),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "serving", "the health server started");

    let ready = |p: &Pod, name: &str| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == name))
            .is_some_and(|c| c.ready)
    };
    let p = wait_for(&pods, "grpc", "container up ready", |p| ready(p, "up")).await;
    assert!(
        !ready(&p, "down") && !ready(&p, "missing"),
        "{:?}",
        p.status
    );
    for why in [
        "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")",
        "Readiness probe failed: rpc error: code = NotFound desc = ",
    ] {
        wait_event_where(&client, "grpc", "Unhealthy", |e| {
            e.message.as_deref().is_some_and(|m| m.contains(why))
        })
        .await;
    }
    let p = pods.get("grpc").await.unwrap();
    assert_eq!(ready_condition(&p).as_deref(), Some("False"));
    assert!(ready(&p, "up"), "SERVING keeps its container ready");
}
