//! exec, attach, cp and port-forward through the real binary, with real kubectl (its
//! defaults: WebSocket v5 for exec, SPDY tunnelled in WebSocket for port-forward), its
//! SPDY fallback, and kube-rs (WebSocket channels).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pods::{apply, http_get};
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The example container Deployment on node port `port`, rolled out; its pod's name.
fn web(s: &common::Server, image: &str, port: u16) -> String {
    let manifest = std::fs::read_to_string(common::example("examples/containers/deployment.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000/busybox:1", image)
        .replace("hostPort: 8081", &format!("hostPort: {port}"));
    apply(s, &manifest);
    s.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    s.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (up to 5 s) inside the container until its terminal has the client's size:
/// kubectl sends it on the resize stream, which may arrive after the command starts.
const SIZED: &str =
    "i=0; while [ \"$(stty size)\" = \"0 0\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done";

/// kubectl exec's everyday uses, over WebSocket or (`websockets` false) SPDY: the
/// README's step, an exit code with stdout and stderr apart, stdin to its end, a missing
/// command, a terminal with the client's size.
fn exec_basics(s: &common::Server, pod: &str, websockets: bool) {
    let via = if websockets { "websocket" } else { "spdy" };
    let kubectl = |args: &[&str]| {
        let mut c = s.kubectl_cmd();
        c.env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .args(args);
        c
    };
    let out = kubectl(&["exec", "deploy/web", "--", "cat", "/etc/hostname"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{via}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), pod, "{via}");
    let out = kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{via}");
    assert_eq!(text(&out.stdout), "out\n", "{via}");
    let err = text(&out.stderr);
    assert!(err.starts_with("err\n"), "{via}: {err}");
    assert!(
        err.contains("command terminated with exit code 3"),
        "{via}: {err}"
    );
    let mut child = kubectl(&["exec", "-i", pod, "--", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{via}");
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n", "{via}");
    let out = kubectl(&["exec", pod, "--", "no-such-command"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{via}");
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{via}: {}",
        text(&out.stderr)
    );
    let out = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "stty cols 91 rows 27; KUBECTL_REMOTE_COMMAND_WEBSOCKETS={websockets} KUBECONFIG={} \
             kubectl exec -it {pod} -- sh -c 'tty; {SIZED}; stty size; exit 4'",
            s.kubeconfig().display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/"), "{via}: {shown}");
    assert!(shown.contains("27 91"), "{via}: {shown}");
    assert!(
        shown.contains("command terminated with exit code 4"),
        "{via}: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_runs_processes_in_containers_as_the_container_runs() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-x", &[]);
    let pod = web(&s, &image, common::free_port());

    // kubectl's default transport (WebSocket v5), then SPDY as client-go spoke it
    // before 1.30.
    exec_basics(&s, &pod, true);
    exec_basics(&s, &pod, false);

    // A client that goes away takes its process with it.
    let mut gone = s
        .kubectl_cmd()
        .args(["exec", &pod, "--", "sleep", "4242"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s
        .kubectl_ok(&["exec", &pod, "--", "ps"])
        .contains("sleep 4242")
    {
        assert!(Instant::now() < deadline, "the exec'd sleep never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gone.kill().unwrap();
    let _ = gone.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s
        .kubectl_ok(&["exec", &pod, "--", "ps"])
        .contains("sleep 4242")
    {
        assert!(
            Instant::now() < deadline,
            "the exec'd sleep outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An exec'd process is the container's: its user, capabilities, no_new_privs and
    // seccomp filter.
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tight\nspec:\n  terminationGracePeriodSeconds: 1\n  securityContext:\n    runAsUser: 65534\n    seccompProfile: {{type: RuntimeDefault}}\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    securityContext:\n      allowPrivilegeEscalation: false\n      capabilities: {{drop: [ALL]}}\n"
        ),
    );
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/tight",
        "--timeout=60s",
    ]);
    let st = s.kubectl_ok(&[
        "exec",
        "tight",
        "--",
        "sh",
        "-c",
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    assert!(st.starts_with("65534\n"), "{st}");
    assert!(st.contains("CapEff:\t0000000000000000"), "{st}");
    assert!(st.contains("NoNewPrivs:\t1"), "{st}");
    assert!(st.contains("Seccomp:\t2"), "{st}");

    // kube-rs speaks v5 (or v4) WebSocket channels.
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    let mut att = pods
        .exec(
            &pod,
            ["sh", "-c", "read x; echo got $x; exit 7"],
            &AttachParams::default().stdin(true).stderr(false),
        )
        .await
        .unwrap();
    att.stdin().unwrap().write_all(b"hello\n").await.unwrap();
    let mut got = String::new();
    att.stdout()
        .unwrap()
        .read_to_string(&mut got)
        .await
        .unwrap();
    assert_eq!(got, "got hello\n");
    let status = att.take_status().unwrap().await.unwrap();
    assert_eq!(
        status.reason.as_deref(),
        Some("NonZeroExitCode"),
        "{status:?}"
    );

    // Exec is `create` on pods/exec, even as a GET: a reader may not.
    apply(
        &s,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [\"\"]\n  resources: [pods, pods/log]\n  verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: reader\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: rita}\n",
    );
    let out = s.kubectl(&["exec", &pod, "--as=rita", "--", "true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot create resource \"pods/exec\""),
        "{err}"
    );
}

/// A running `kubectl port-forward`: the local port it forwards from, and what it has
/// written to stderr so far.
struct Forward {
    child: std::process::Child,
    local: u16,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Forward {
    fn start(s: &common::Server, target: &str, remote: u16, websockets: bool) -> Forward {
        let local = common::free_port();
        let mut child = s
            .kubectl_cmd()
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .args([
                "port-forward",
                target,
                &format!("{local}:{remote}"),
                "--address=127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("Forwarding from"), "{line}");
        // kubectl keeps writing ("Handling connection for ..."): keep reading.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Forward {
            child,
            local,
            stderr,
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_containers_and_wasm_pods_and_cp_copies_both_ways() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let hello = reg.push(&common::guest("hello-http-c.wasm"), "hello:1");
    let s = common::Server::start_node("edge-pf", &[]);
    let pod = web(&s, &image, common::free_port());
    let wasm = std::fs::read_to_string(common::example("examples/wasm/hello-http.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000/skiff/hello-http:c", &hello)
        .replace(
            "hostPort: 8080",
            &format!("hostPort: {}", common::free_port()),
        );
    apply(&s, &wasm);
    s.kubectl_ok(&["rollout", "status", "deploy/hello-http", "--timeout=60s"]);

    // kubectl cp, in and out, through exec and tar.
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("in.bin"), &payload).unwrap();
    let local_in = dir.path().join("in.bin").display().to_string();
    s.kubectl_ok(&["cp", &local_in, &format!("{pod}:/var/www/big.bin")]);
    let local_out = dir.path().join("out.bin").display().to_string();
    s.kubectl_ok(&["cp", &format!("{pod}:/var/www/big.bin"), &local_out]);
    assert!(
        std::fs::read(&local_out).unwrap() == payload,
        "cp changed the bytes"
    );

    // port-forward to the container: kubectl's default (SPDY in WebSocket) and its SPDY
    // fallback, small and large answers.
    for websockets in [true, false] {
        let pf = Forward::start(&s, &format!("pod/{pod}"), 8080, websockets);
        let local = pf.local;
        let (code, body) = http_get(local, "/").await.unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("hello from a Skiff container"), "{body}");
        let big = reqwest::get(format!("http://127.0.0.1:{local}/big.bin"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            big.as_ref() == payload.as_slice(),
            "websockets={websockets}: {} bytes",
            big.len()
        );
        drop(pf);
    }

    // To a Wasm pod: it is the pod's network namespace.
    let pf = Forward::start(&s, "deploy/hello-http", 8080, true);
    let (code, body) = http_get(pf.local, "/").await.unwrap();
    assert_eq!((code, body.trim()), (200, "hello from skiff"));
    drop(pf);

    // A port nothing listens on: kubectl says why.
    let pf = Forward::start(&s, &format!("pod/{pod}"), 9, true);
    assert!(http_get(pf.local, "/").await.is_err());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let err = pf.stderr.lock().unwrap().clone();
        if err.contains("error forwarding port 9 to the pod") {
            break;
        }
        assert!(Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(pf);

    // kube-rs: WebSocket channels with ?ports=.
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    let wasm_pod = s.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=hello-http",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let mut fwd = pods.portforward(&wasm_pod, &[8080]).await.unwrap();
    let mut conn = fwd.take_stream(8080).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = text(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from skiff"), "{answer}");

    // exec into a Wasm container is refused, clearly.
    let out = s.kubectl(&["exec", &wasm_pod, "--", "sh"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("Wasm containers have no processes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_what_a_container_writes_from_then_on() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-at", &[]);
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; echo tock $i >&2; sleep 0.1; done\"]\n"
        ),
    );
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/ticker",
        "--timeout=60s",
    ]);
    // kubectl's default (WebSocket), then SPDY.
    for websockets in [true, false] {
        let mut child = s
            .kubectl_cmd()
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets.to_string())
            .args(["attach", "ticker", "-c", "app"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "attach ended (websockets: {websockets}): {seen:?}"
            );
            if line.starts_with("tick ") {
                seen.push(line.trim().to_string());
            }
        }
        child.kill().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let _ = child.wait();
        // Consecutive lines, live: each one number past the last.
        let n: Vec<u64> = seen
            .iter()
            .map(|l| l.trim_start_matches("tick ").parse().unwrap())
            .collect();
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
        assert!(
            err.contains("tock "),
            "stderr comes on its own channel (websockets: {websockets}): {err}"
        );
    }
}

/// `kubectl attach -i` to a container with `stdin: true`: what is typed reaches the
/// container, over WebSocket and SPDY, and its stdin stays open from one attach to the
/// next (no `stdinOnce`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_i_writes_to_the_stdin_of_a_container_that_keeps_one() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-ai", &[]);
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: echoer\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {image}\n    stdin: true\n    command: [\"/bin/sh\", \"-c\", \"while read l; do echo \\\"got $l\\\"; done; echo stdin closed\"]\n"
        ),
    );
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/echoer",
        "--timeout=60s",
    ]);
    for websockets in [true, false] {
        let mut child = s
            .kubectl_cmd()
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets.to_string())
            .args(["attach", "-i", "echoer", "-c", "app"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let word = format!("hello-{websockets}");
        // Typed until seen: attach follows output from its start, so a line written
        // before kubectl was connected would not come back.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).is_ok_and(|n| n > 0) {
                if tx.send(line.trim().to_string()).is_err() {
                    return;
                }
                line.clear();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.contains(&format!("got {word}")) {
            assert!(
                Instant::now() < deadline,
                "no echo (websockets: {websockets}): {seen:?}"
            );
            writeln!(input, "{word}").unwrap();
            input.flush().unwrap();
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.push(l);
            }
        }
        assert!(!seen.iter().any(|l| l == "stdin closed"), "{seen:?}");
        child.kill().unwrap();
        let _ = child.wait();
        drop(input);
        let _ = reader.join();
    }
    // Both sessions over, the container still reads its stdin: never restarted.
    let pods: kube::Api<Pod> = kube::Api::namespaced(common::kube_client(&s).await, "default");
    let st = pods.get("echoer").await.unwrap().status.unwrap();
    let c = &st.container_statuses.unwrap()[0];
    assert_eq!(c.restart_count, 0);
    assert!(c.state.as_ref().unwrap().running.is_some(), "{c:?}");
}
