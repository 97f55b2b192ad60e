//! Container lifecycle hooks through the real binary: `postStart` runs before the
//! container counts as started (a failing one restarts it), `preStop` runs before the
//! stop signal, and an exec hook on a Wasm container fails with a clear event; containers
//! of a pod that shares its process namespace see each other's processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read as _;
use std::process::Stdio;

use common::pods::{apply, running, status, wait_event, wait_for, wait_gone};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

fn pod(name: &str, image: &str, command: &str, lifecycle: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n    lifecycle:\n{lifecycle}"
    )
}

fn events(s: &common::Server, name: &str, reason: &str) -> String {
    s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},reason={reason}"),
        "-o",
        "jsonpath={.items[*].message}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_and_pre_stop_hooks_run_around_the_container() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let wasm = reg.push(&common::guest("hello-http-c.wasm"), "hello:c");
    let s = common::Server::start_node("edge-lc", &[]);
    let client = common::kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let serve = "trap 'exit 0' TERM; sleep 3600 & wait";
    // The main process waits for the file preStop writes and says so; the hook waits for
    // that before it ends, and only then comes SIGTERM.
    let drain = "trap 'exit 0' TERM; echo waiting; while [ ! -f /tmp/drain ]; do sleep 0.1; done; echo drained by preStop; touch /tmp/drained; sleep 3600 & wait";
    apply(
        &s,
        &[
            pod(
                "started",
                &image,
                serve,
                "      postStart:\n        exec: {command: [\"/bin/sh\", \"-c\", \"echo hook > /tmp/started\"]}\n",
            ),
            pod(
                "bad-start",
                &image,
                serve,
                "      postStart:\n        exec: {command: [\"/bin/sh\", \"-c\", \"echo no >&2; exit 1\"]}\n",
            ),
            pod(
                "draining",
                &image,
                drain,
                "      preStop:\n        exec: {command: [\"/bin/sh\", \"-c\", \"touch /tmp/drain; until [ -f /tmp/drained ]; do sleep 0.1; done\"]}\n",
            ),
            // Killed by its liveness probe: preStop runs first, as for any stop. A healthy
            // container of the pod reads what the hook wrote into their shared volume.
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: unhealthy\nspec:\n  terminationGracePeriodSeconds: 5\n  volumes: [{{name: data, emptyDir: {{}}}}]\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", {serve:?}]\n    volumeMounts: [{{name: data, mountPath: /data}}]\n    livenessProbe:\n      tcpSocket: {{port: 9999}}\n      periodSeconds: 1\n      failureThreshold: 1\n    lifecycle:\n      preStop:\n        exec: {{command: [\"/bin/sh\", \"-c\", \"echo ran >> /data/pre-stop\"]}}\n  - name: reader\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", {serve:?}]\n    volumeMounts: [{{name: data, mountPath: /data}}]\n"
            ),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wasm-hook\nspec:\n  runtimeClassName: wasm\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: app\n    image: {wasm}\n    lifecycle:\n      preStop:\n        exec: {{command: [\"true\"]}}\n"
            ),
        ]
        .join("---\n"),
    );

    // postStart ran before the container was reported started.
    wait_for(&pods, "started", "running", running).await;
    let got = s.kubectl_ok(&["exec", "started", "--", "cat", "/tmp/started"]);
    assert_eq!(got, "hook\n");

    // A failing postStart kills the container, which restarts by policy.
    wait_event(&client, "bad-start", "FailedPostStartHook").await;
    let ev = events(&s, "bad-start", "FailedPostStartHook");
    assert!(ev.contains("exited with 1: no"), "{ev}");
    wait_for(&pods, "bad-start", "restarted", |p| {
        status(Some(p)).is_some_and(|c| c.restart_count >= 1)
    })
    .await;

    // A liveness kill runs preStop too.
    wait_for(&pods, "unhealthy", "restarted by its liveness probe", |p| {
        status(Some(p)).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    let got = s.kubectl_ok(&[
        "exec",
        "unhealthy",
        "-c",
        "reader",
        "--",
        "cat",
        "/data/pre-stop",
    ]);
    assert!(got.starts_with("ran\n"), "{got:?}");

    // preStop runs before SIGTERM: the main process sees its file and says so in the
    // log that `kubectl logs -f` streams until the container ends.
    wait_for(&pods, "draining", "running", running).await;
    let mut follow = s
        .kubectl_cmd()
        .args(["logs", "-f", "draining"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Following once the first line came: then delete.
    let mut out = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert_eq!(first, "waiting\n");
    s.kubectl_ok(&["delete", "pod", "draining", "--wait=false"]);
    let mut logs = String::new();
    out.read_to_string(&mut logs).unwrap();
    let _ = follow.wait();
    assert!(logs.contains("drained by preStop"), "{logs}");
    wait_gone(&pods, "draining").await;

    // An exec hook on a Wasm container cannot run; the deletion still completes.
    wait_for(&pods, "wasm-hook", "running", running).await;
    s.kubectl_ok(&["delete", "pod", "wasm-hook", "--wait=false"]);
    wait_gone(&pods, "wasm-hook").await;
    let ev = events(&s, "wasm-hook", "FailedPreStopHook");
    assert!(ev.contains("Wasm containers have no processes"), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_start_first_restart_always_and_end_with_the_main_containers() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-sc", &[]);
    let client = common::kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let sidecar = |name: &str, command: &str, extra: &str| {
        format!(
            "  - name: {name}\n    image: {image}\n    restartPolicy: Always\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n{extra}"
        )
    };
    // A Job-like pod: the main container needs the sidecar's server from its first
    // moment (it starts once the sidecar's startup probe passed); once it completes, the
    // sidecar is stopped and the pod Succeeded.
    let job = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: with-sidecar\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 2\n  initContainers:\n{}  containers:\n  - name: main\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"wget -qO- http://localhost:8081/ && echo fetched\"]\n",
        sidecar(
            "server",
            "trap 'exit 0' TERM; sleep 0.5; httpd -f -p 8081 -h /var/www & wait",
            "    startupProbe:\n      tcpSocket: {port: 8081}\n      periodSeconds: 1\n"
        ),
    );
    // A sidecar that keeps crashing restarts, though the pod's policy is Never.
    let flaky = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: flaky-sidecar\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  initContainers:\n{}  containers:\n  - name: main\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
        sidecar("flaky", "sleep 0.3; exit 1", ""),
    );
    apply(&s, &[job, flaky].join("---\n"));

    let p = wait_for(&pods, "with-sidecar", "Succeeded", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    let logs = s.kubectl_ok(&["logs", "with-sidecar", "-c", "main"]);
    assert!(
        logs.contains("hello from a Skiff container") && logs.contains("fetched"),
        "{logs}"
    );
    let st = p.status.unwrap();
    let side = &st.init_container_statuses.unwrap()[0];
    assert!(
        side.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "the sidecar was stopped: {side:?}"
    );

    let p = wait_for(&pods, "flaky-sidecar", "sidecar restarted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "{:?}",
        p.status
    );
    let main = status(Some(&p)).unwrap();
    assert!(
        main.state.and_then(|s| s.running).is_some(),
        "the main container runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_sharing_its_process_namespace_see_each_other() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-pid", &[]);
    let pods: Api<Pod> = Api::default_namespaced(common::kube_client(&s).await);
    let sleeper = |name: &str, secs: u32| {
        format!(
            "  - name: {name}\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep {secs} & wait\"]\n"
        )
    };
    let shared = |name: &str, share: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  shareProcessNamespace: {share}\n  terminationGracePeriodSeconds: 1\n  containers:\n{}{}",
            sleeper("a", 1111),
            sleeper("b", 2222)
        )
    };
    apply(
        &s,
        &[shared("shared", true), shared("apart", false)].join("---\n"),
    );
    let all_ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c.ready))
    };
    let shared_pod = wait_for(&pods, "shared", "both containers ready", all_ready).await;
    wait_for(&pods, "apart", "both containers ready", all_ready).await;

    let ps = s.kubectl_ok(&["exec", "shared", "-c", "a", "--", "ps", "-o", "pid,args"]);
    assert!(
        ps.contains("sleep 1111") && ps.contains("sleep 2222"),
        "a sees b's processes: {ps}"
    );
    let init = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default();
    assert!(init.contains("pod-init"), "PID 1 is the pod's holder: {ps}");
    let ps = s.kubectl_ok(&["exec", "apart", "-c", "a", "--", "ps", "-o", "pid,args"]);
    assert!(
        ps.contains("sleep 1111") && !ps.contains("sleep 2222"),
        "without sharing each sees only its own: {ps}"
    );

    // The holder ends with the pod.
    let uid = shared_pod.metadata.uid.unwrap();
    let record = std::path::PathBuf::from(format!("/run/skiff/pid-ns/{uid}"));
    let text = std::fs::read_to_string(&record).expect("the holder's record");
    let pid: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
    // Running, not a zombie its parent (the node's init) has yet to reap.
    let runs = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|f| !f.trim_start().starts_with('Z'))
        })
    };
    assert!(runs(), "the holder runs");
    s.kubectl_ok(&["delete", "pod", "shared", "--timeout=60s"]);
    wait_gone(&pods, "shared").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (record.exists() || runs()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!record.exists(), "the record is removed with the pod");
    assert!(!runs(), "the holder is gone with the pod");
}
