//! Linux containers: the OCI executor on real libcontainer containers from a busybox
//! root filesystem, then container Pods through the real binary and kubectl.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_shims::oci::{OciExecutor, ShimCommand, spec::DEFAULT_CAPABILITIES};
use skiff_shims::{
    Artifact, ContainerSpec, ContainerState, Executor, ExitReason, Limits, LogSpec, OciOptions,
    OciSecurity, OciUser,
};

/// A busybox root filesystem (Debian's busybox-static), made once per test process.
fn busybox_rootfs() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("skiff-busybox-{}", std::process::id()));
        common::busybox_tree(&dir);
        dir
    })
    .clone()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    netns: String,
    ex: OciExecutor,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
        // libcontainer removes each container's cgroup; the test's parents are ours.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join("skiff-test").join(&self.netns));
        }
    }
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let netns = format!("skiff-test-{}", uuid_like());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(ok.success(), "ip netns add");
    let ex = OciExecutor::open(
        &dir.join("oci"),
        ShimCommand {
            exe: env!("CARGO_BIN_EXE_skiff").into(),
            args: vec!["container-shim".into()],
        },
    )
    .await
    .unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        netns,
        ex,
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn container(f: &Fixture, name: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: format!("pod-{}/{name}", f.netns),
        artifact: Artifact {
            path: busybox_rootfs(),
            digest: "sha256:busybox".into(),
        },
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin".into())],
        mounts: vec![],
        log: LogSpec {
            path: f.dir.join(format!("{name}.log")),
            max_bytes: 0,
        },
        limits: Limits::default(),
        http: None,
        oci: Some(OciOptions {
            layers: vec![busybox_rootfs()],
            cwd: "/".into(),
            user: OciUser::default(),
            hostname: name.into(),
            netns: Path::new("/run/netns").join(&f.netns),
            cgroup: format!("skiff-test/{}/{name}", f.netns),
            files: vec![],
            cpu_request_millis: None,
            pids_limit: Some(1024),
            security: OciSecurity {
                capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        }),
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn the_oci_executor_runs_waits_and_reports_exit_codes() {
    let f = fixture().await;
    let mut exits = f.ex.subscribe();
    let spec = container(
        &f,
        "hello",
        &["/bin/sh", "-c", "echo hello from $(hostname); exit 3"],
    );
    let info = f.ex.run(spec.clone()).await.unwrap();
    assert!(matches!(info.state, ContainerState::Running { .. }));
    let status = tokio::time::timeout(Duration::from_secs(10), f.ex.wait(&spec.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, 3);
    assert_eq!(status.reason, ExitReason::Error);
    let ev = exits.recv().await.unwrap();
    assert_eq!(ev.id, spec.id);
    let log = log_text(&spec.log.path);
    assert!(log.contains(" stdout F hello from hello"), "log: {log}");
    // A clean exit is Completed.
    let ok = container(&f, "ok", &["/bin/true"]);
    f.ex.run(ok.clone()).await.unwrap();
    let status = f.ex.wait(&ok.id).await.unwrap();
    assert_eq!((status.code, status.reason), (0, ExitReason::Completed));
    f.ex.remove(&ok.id).await.unwrap();
    f.ex.remove(&spec.id).await.unwrap();
    assert!(f.ex.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let f = fixture().await;
    // Ignores SIGTERM: only the SIGKILL after the grace period ends it.
    let stubborn = container(
        &f,
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got TERM' TERM; while true; do sleep 0.1; done",
        ],
    );
    f.ex.run(stubborn.clone()).await.unwrap();
    let t = std::time::Instant::now();
    f.ex.stop(&stubborn.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500));
    let status = f.ex.wait(&stubborn.id).await.unwrap();
    assert_eq!(status.code, 137, "{status:?}");
    // One that exits on SIGTERM ends before the grace period. (An init process has no
    // default signal actions, so it must handle SIGTERM itself, as in Kubernetes.)
    let polite = container(
        &f,
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
        ],
    );
    f.ex.run(polite.clone()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log_text(&polite.log.path).contains("stdout F up") {
        assert!(std::time::Instant::now() < deadline, "never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = std::time::Instant::now();
    f.ex.stop(&polite.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(f.ex.wait(&polite.id).await.unwrap().code, 0);
    assert!(log_text(&polite.log.path).contains("stdout F bye"));
}

#[tokio::test]
async fn a_container_past_its_memory_limit_is_oom_killed() {
    let f = fixture().await;
    let mut hog = container(
        &f,
        "hog",
        // Grows a shell variable until the kernel kills it.
        &[
            "/bin/sh",
            "-c",
            "x=0123456789abcdef; while true; do x=$x$x; done",
        ],
    );
    hog.limits.memory_bytes = Some(32 << 20);
    f.ex.run(hog.clone()).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), f.ex.wait(&hog.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reason, ExitReason::OomKilled, "{status:?}");
    assert_eq!(status.code, 137);
}

#[tokio::test]
async fn a_restarted_executor_adopts_running_containers_and_a_dead_shim_is_an_exit() {
    let f = fixture().await;
    let spec = container(&f, "long", &["/bin/sleep", "600"]);
    let info = f.ex.run(spec.clone()).await.unwrap();
    let ContainerState::Running { started_at } = info.state else {
        panic!("not running")
    };
    // A second executor on the same root (what a restarted agent makes) finds it.
    let again = OciExecutor::open(
        &f.dir.join("oci"),
        ShimCommand {
            exe: env!("CARGO_BIN_EXE_skiff").into(),
            args: vec!["container-shim".into()],
        },
    )
    .await
    .unwrap();
    let list = again.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].state,
        ContainerState::Running { started_at },
        "same start time"
    );
    // kill -9 of the shim: the container is killed and its end says why.
    let started: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            f.dir
                .join("oci")
                .join(spec.id.replace('/', "_"))
                .join("started.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let shim = started["shimPid"].as_i64().unwrap();
    let init = started["initPid"].as_i64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), again.wait(&spec.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reason, ExitReason::Error);
    assert!(
        status.message.contains("shim stopped unexpectedly"),
        "{status:?}"
    );
    // The container's processes are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{init}")).exists()
        && std::fs::read_to_string(format!("/proc/{init}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "container init {init} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds the example image (examples/containers/build-image.sh) and pushes it.
fn push_example_image(reg: &common::Registry, repo_tag: &str) -> String {
    let reference = reg.reference(repo_tag);
    let out = std::process::Command::new(common::example("examples/containers/build-image.sh"))
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_deployment_from_the_readme_serves_logs_and_frees_its_port() {
    use common::pods::{apply, http_get, status, wait_gone};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = push_example_image(&reg, "busybox:1");
    let s = common::Server::start_node("edge-c", &[]);
    let port = common::free_port();
    let manifest = std::fs::read_to_string(common::example("examples/containers/deployment.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000/busybox:1", &image)
        .replace("hostPort: 8081", &format!("hostPort: {port}"));
    apply(&s, &manifest);
    s.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let client = common::kube_client(&s).await;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(client.clone());
    let list = pods.list(&Default::default()).await.unwrap();
    let pod = list.items.first().expect("a pod");
    let name = pod.metadata.name.clone().unwrap();
    let st = status(Some(pod)).expect("container status");
    assert!(
        st.container_id
            .as_deref()
            .is_some_and(|c| c.starts_with("oci://")),
        "{st:?}"
    );
    assert!(st.ready);
    let (code, body) = http_get(port, "/").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("hello from a Skiff container"), "{body}");
    let logs = s.kubectl_ok(&["logs", "deploy/web"]);
    assert!(logs.contains("ready"), "{logs}");
    // The node says it runs containers.
    let labels = s.kubectl_ok(&["get", "node", "edge-c", "-o", "jsonpath={.metadata.labels}"]);
    assert!(
        labels.contains("\"runtime.skiff.dev/oci\":\"true\""),
        "{labels}"
    );
    s.kubectl_ok(&["delete", "deploy/web"]);
    wait_gone(&pods, &name).await;
    let freed = http_get(port, "/").await;
    assert!(freed.is_err(), "port {port} still answers: {freed:?}");
}
