//! Linux containers: the OCI executor on real libcontainer containers from a busybox
//! root filesystem, then container Pods through the real binary and kubectl.
#![allow(clippy::unwrap_used)]

mod common;

use common::pods::cpod;

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_shims::oci::{OciExecutor, ShimCommand, spec::DEFAULT_CAPABILITIES};
use skiff_shims::{
    Artifact, ContainerSpec, ContainerState, Executor, ExitReason, Limits, LogSpec, OciOptions,
    OciSecurity, OciUser,
};

/// A busybox root filesystem (Debian's busybox-static), made once under the target
/// directory and shared by every test process (made aside, then renamed into place).
fn busybox_rootfs() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("busybox-rootfs");
    if !dir.join("bin/busybox").exists() {
        let tmp = dir.with_extension(format!("{}", std::process::id()));
        common::busybox_tree(&tmp);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process won.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    netns: String,
    ex: OciExecutor,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        common::kill_containers(&self.dir.join("oci"));
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
        outgoing: None,
        oci: Some(OciOptions {
            layers: vec![busybox_rootfs()],
            cwd: "/".into(),
            user: OciUser::default(),
            hostname: name.into(),
            pid_ns: None,
            netns: Path::new("/run/netns").join(&f.netns),
            cgroup: format!("skiff-test/{}/{name}", f.netns),
            files: vec![],
            cpu_request_millis: None,
            pids_limit: Some(1024),
            security: OciSecurity {
                capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            host_ports: vec![],
            stdin: false,
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
    let started = started_json(&f, &spec);
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

fn started_json(f: &Fixture, spec: &ContainerSpec) -> serde_json::Value {
    let dir = f.dir.join("oci").join(spec.id.replace('/', "_"));
    serde_json::from_slice(&std::fs::read(dir.join("started.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn a_killed_container_host_leaves_its_shims_running_and_is_replaced() {
    let f = fixture().await;
    let first = container(&f, "first", &["/bin/sleep", "600"]);
    f.ex.run(first.clone()).await.unwrap();
    let shim = started_json(&f, &first)["shimPid"].as_u64().unwrap() as u32;
    // The shim is a fork of the container host, not an exec of its own.
    let host = common::ppid(shim).unwrap();
    let cmdline = std::fs::read(format!("/proc/{host}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("container-host"),
        "the shim's parent is {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let shim_cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).unwrap();
    assert_eq!(shim_cmdline, cmdline, "forked, not executed");

    std::process::Command::new("kill")
        .args(["-9", &host.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::ppid(shim) == Some(host) {
        assert!(std::time::Instant::now() < deadline, "the host never died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The running container did not notice.
    let list = f.ex.list().await.unwrap();
    assert!(
        matches!(list[0].state, ContainerState::Running { .. }),
        "{list:?}"
    );
    assert!(Path::new(&format!("/proc/{shim}")).exists());

    // The next container gets a new host.
    let second = container(&f, "second", &["/bin/sh", "-c", "exit 7"]);
    f.ex.run(second.clone()).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), f.ex.wait(&second.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, 7, "{status:?}");
    f.ex.stop(&first.id, Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_deployment_from_the_readme_serves_logs_and_frees_its_port() {
    use common::pods::{apply, http_get, status, wait_gone};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
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
    let hostname = s.kubectl_ok(&["exec", "deploy/web", "--", "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), name);
    // The node says it runs containers.
    let labels = s.kubectl_ok(&["get", "node", "edge-c", "-o", "jsonpath={.metadata.labels}"]);
    assert!(
        labels.contains("\"runtime.skiff.dev/oci\":\"true\""),
        "{labels}"
    );
    let cond = s.kubectl_ok(&[
        "get",
        "node",
        "edge-c",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"LinuxContainersReady\")].status}",
    ]);
    assert_eq!(cond, "True");
    s.kubectl_ok(&["delete", "deploy/web"]);
    wait_gone(&pods, &name).await;
    let freed = http_get(port, "/").await;
    assert!(freed.is_err(), "port {port} still answers: {freed:?}");
}

/// A tar layer with entries written as given (names are not checked, so `../` can be
/// written); `(name, body)`, a name ending in `/` is a directory.
fn raw_layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            let dir = name.ends_with('/');
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_size(body.len() as u64);
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *body).unwrap();
        }
        b.finish().unwrap();
    }
    raw
}

/// The busybox root filesystem as one tar layer.
fn busybox_layer() -> Vec<u8> {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        b.follow_symlinks(false);
        b.append_dir_all(".", busybox_rootfs()).unwrap();
        b.finish().unwrap();
    }
    raw
}

/// Publishes an image of `layers` (uncompressed tars, bottom first) with skopeo from an
/// OCI layout written here.
fn push_layers(
    reg: &common::Registry,
    repo_tag: &str,
    layers: &[Vec<u8>],
    cmd: &[&str],
) -> (String, Vec<String>) {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer_descs: Vec<(String, usize)> = layers.iter().map(|l| put(l)).collect();
    let _ = &layer_descs;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layer_descs.iter().map(|(d, _)| d).collect::<Vec<_>>()},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n,
        })).collect::<Vec<_>>(),
    });
    let (m_digest, m_size) = put(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let reference = reg.reference(repo_tag);
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", dir.path().display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // skopeo may compress layers on the way: the registry's manifest has the digests.
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let got = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://127.0.0.1:{}/v2/{repo}/manifests/{tag}",
            reg.port
        ))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    let digests = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (reference, digests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_faults_end_in_the_right_reason_while_a_bystander_serves() {
    use common::pods::{Load, apply, running, status, terminated, wait_for, waiting};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-f", &["--pod-max-pids", "64"]);
    let client = common::kube_client(&s).await;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(client.clone());
    let port = common::free_port();
    let bystander = std::fs::read_to_string(common::example("examples/containers/deployment.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000/busybox:1", &image)
        .replace("hostPort: 8081", &format!("hostPort: {port}"));
    apply(&s, &bystander);
    s.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let load = Load::start(port, 1, |b| b.contains("hello from a Skiff container"));

    // Images that cannot run: one with a layer escaping its root, one whose layer the
    // registry corrupts, one that does not exist.
    let marker = format!("skiff-escape-{}", std::process::id());
    let escape_name = format!("../../../../../../../../../../tmp/{marker}");
    let (escaping, _) = push_layers(
        &reg,
        "bad:escape",
        &[busybox_layer(), raw_layer(&[(&escape_name, b"pwned")])],
        &["/bin/true"],
    );
    let (corrupt, digests) = push_layers(
        &reg,
        "bad:corrupt",
        &[busybox_layer(), raw_layer(&[("x", b"original")])],
        &["/bin/true"],
    );
    let blob = reg.blob_path(&digests[1]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let missing = reg.reference("nothing:here");

    let res = "    resources:\n      limits: {memory: 32Mi}\n";
    apply(
        &s,
        &[
            cpod("exit3", &image, "Never", "echo failing; exit 3", "", ""),
            cpod("again", &image, "OnFailure", "exit 3", "", ""),
            cpod(
                "hog",
                &image,
                "Never",
                "x=0123456789abcdef; while true; do x=$x$x; done",
                res,
                "",
            ),
            cpod(
                "bomb",
                &image,
                "Never",
                "b() { b | b & }; b; sleep 30",
                "",
                "",
            ),
            cpod("escape", &escaping, "Never", "true", "", ""),
            cpod("corrupt", &corrupt, "Never", "true", "", ""),
            cpod("missing", &missing, "Never", "true", "", ""),
            cpod(
                "priv",
                &image,
                "Never",
                "true",
                "    securityContext: {privileged: true}\n",
                "",
            ),
        ]
        .join("---\n"),
    );

    let p = wait_for(&pods, "exit3", "terminated", |p| terminated(p).is_some()).await;
    let (reason, _, code) = terminated(&p).unwrap();
    assert_eq!((reason.as_str(), code), ("Error", 3));
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    let p = wait_for(&pods, "again", "restarted", |p| {
        status(Some(p)).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    let last = status(Some(&p))
        .unwrap()
        .last_state
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 3);
    let p = wait_for(&pods, "hog", "terminated", |p| terminated(p).is_some()).await;
    let (reason, _, code) = terminated(&p).unwrap();
    assert_eq!(
        (reason.as_str(), code),
        ("OOMKilled", 137),
        "{:?}",
        p.status
    );

    // The fork bomb runs into the pod's pids limit and no further.
    wait_for(&pods, "bomb", "Running", |p| {
        status(Some(p)).is_some_and(|c| c.state.and_then(|s| s.running).is_some())
    })
    .await;
    let uid = pods.get("bomb").await.unwrap().metadata.uid.unwrap();
    // The kernel keeps the pod cgroup's high-water mark (pids.peak) and counts refused
    // forks in the pids.events of the cgroup that forked (the container's, below it).
    let dir = Path::new("/sys/fs/cgroup/pids/skiff").join(format!("pod-{uid}"));
    let number = |text: String, prefix: &str| -> u64 {
        text.trim()
            .strip_prefix(prefix)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let refused = || -> u64 {
        let children = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        children
            .filter(|e| e.path().is_dir())
            .map(|e| {
                number(
                    std::fs::read_to_string(e.path().join("pids.events")).unwrap_or_default(),
                    "max ",
                )
            })
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline && refused() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused() > 0, "the bomb never ran into its pids limit");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(read("pids.max").trim(), "64");
    assert_eq!(
        number(read("pids.peak"), ""),
        64,
        "the bomb should reach the limit of 64 and stop there"
    );
    s.kubectl_ok(&["delete", "pod", "bomb", "--wait=true", "--timeout=30s"]);

    let p = wait_for(&pods, "escape", "refused", |p| {
        waiting(p).is_some_and(|(r, _)| r != "ContainerCreating")
    })
    .await;
    let (reason, message) = waiting(&p).unwrap();
    assert_eq!(reason, "InvalidArtifact", "{message}");
    assert!(message.contains("escape the layer"), "{message}");
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "the layer wrote outside its root"
    );
    let p = wait_for(&pods, "corrupt", "refused", |p| {
        waiting(p).is_some_and(|(r, _)| r != "ContainerCreating")
    })
    .await;
    let (_, message) = waiting(&p).unwrap();
    assert!(
        message.contains("digest") || message.contains("hashes to"),
        "{message}"
    );
    // ErrImagePull, then ImagePullBackOff while it waits; the registry's reason is in the
    // event.
    wait_for(&pods, "missing", "pull failed", |p| {
        waiting(p).is_some_and(|(r, _)| r.contains("ImagePull"))
    })
    .await;
    let events = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=missing",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("not found"), "{events}");
    let p = wait_for(&pods, "priv", "refused", |p| {
        waiting(p).is_some_and(|(r, _)| r == "CreateContainerConfigError")
    })
    .await;
    assert!(waiting(&p).unwrap().1.contains("--allow-privileged"));

    let (ok, failed) = load.finish().await;
    assert!(failed.is_empty(), "the bystander failed: {failed:?}");
    assert!(ok > 10, "only {ok} requests");
    let p = pods
        .list(&kube::api::ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert!(running(&p.items[0]));
    assert_eq!(status(Some(&p.items[0])).unwrap().restart_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_container_only_its_own_world_is_visible() {
    use common::pods::{apply, terminated, wait_for};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-i", &[]);
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    // Results are printed through variables, so they never match the command line
    // that `ps` shows.
    let look = "y=yes; n=no; echo ps:; ps -o pid,args; echo cmdline:$(tr '\\0' ' ' </proc/1/cmdline); \
        echo id:$(id -u):$(id -g); ls /work >/dev/null 2>&1 && echo host-files:$y; \
        touch /rootfs-write 2>/dev/null && echo root-writable:$y || echo root-writable:$n; \
        ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo ping:$y || echo ping:$n; \
        cat /etc/hostname; echo done";
    apply(&s, &[
        cpod("plain", &image, "Never", look, "", ""),
        cpod("locked", &image, "Never", look,
            "    securityContext:\n      runAsUser: 65534\n      runAsGroup: 65534\n      readOnlyRootFilesystem: true\n      allowPrivilegeEscalation: false\n      capabilities: {drop: [NET_RAW]}\n", ""),
    ].join("---\n"));
    for name in ["plain", "locked"] {
        let p = wait_for(&pods, name, "completed", |p| terminated(p).is_some()).await;
        assert_eq!(terminated(&p).unwrap().2, 0, "{name}: {:?}", p.status);
    }
    let plain = s.kubectl_ok(&["logs", "plain"]);
    let locked = s.kubectl_ok(&["logs", "locked"]);
    for (name, log) in [("plain", &plain), ("locked", &locked)] {
        assert!(
            log.contains("cmdline:/bin/sh -c"),
            "{name}: pid 1 is the container's own: {log}"
        );
        let ps: Vec<&str> = log
            .lines()
            .skip_while(|l| *l != "ps:")
            .skip(2)
            .take_while(|l| !l.starts_with("cmdline"))
            .collect();
        assert!(
            ps.iter()
                .all(|l| l.contains("ps -o") || l.contains("/bin/sh")),
            "{name}: ps shows others: {ps:?}"
        );
        assert!(
            !log.contains("host-files:yes"),
            "{name}: the host's files are visible: {log}"
        );
        assert!(
            log.contains(&format!("{name}\n")),
            "{name}: hostname: {log}"
        );
    }
    assert!(
        plain.contains("id:0:0")
            && plain.contains("root-writable:yes")
            && plain.contains("ping:yes"),
        "{plain}"
    );
    assert!(locked.contains("id:65534:65534"), "{locked}");
    assert!(locked.contains("root-writable:no"), "{locked}");
    assert!(locked.contains("ping:no"), "{locked}");
}

fn serving(b: &str) -> bool {
    b.contains("hello from a Skiff container")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_under_load_leaves_containers_serving_and_they_are_readopted() {
    agent_goes_away_under_load(false).await;
}

/// A graceful stop (SIGTERM, as `systemctl restart` sends) must not take the node's
/// containers with it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_gracefully_leaves_containers_running_and_they_are_readopted() {
    agent_goes_away_under_load(true).await;
}

async fn agent_goes_away_under_load(graceful: bool) {
    use common::pods::{Load, apply, mark_stale, running, status, wait_event, wait_for};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_with(&[]);
    let mut agent = common::Agent::start(&s, "edge-ka");
    let client = common::kube_client(&s).await;
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(client.clone());
    let port = common::free_port();
    let ports = format!("    ports:\n    - containerPort: 8080\n      hostPort: {port}\n");
    let pod = cpod(
        "steady",
        &image,
        "Always",
        "trap 'exit 0' TERM; httpd -f -p 8080 -h /var/www & wait",
        &ports,
        "",
    );
    apply(&s, &pod);
    let before = wait_for(&pods, "steady", "Running", running).await;
    let started = status(Some(&before))
        .unwrap()
        .state
        .unwrap()
        .running
        .unwrap()
        .started_at;
    let load = Load::start(port, 2, serving);
    // The hostPort is served by the container's shim, which outlives the agent.
    if graceful {
        assert!(
            agent.terminate(),
            "the agent did not exit cleanly on SIGTERM"
        );
    } else {
        agent.kill9();
    }
    mark_stale(&pods, "steady", "app", &image).await;
    agent.restart();
    wait_event(&client, "steady", "Adopted").await;
    let after = wait_for(&pods, "steady", "status rewritten by the new agent", |p| {
        status(Some(p)).is_some_and(|c| c.state.and_then(|s| s.running).is_some())
    })
    .await;
    assert!(running(&after), "{:#?}", after.status);
    let cs = status(Some(&after)).unwrap();
    assert_eq!(cs.restart_count, 0);
    assert_eq!(cs.state.unwrap().running.unwrap().started_at, started);
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "requests failed across the agent's death: {failed:?}"
    );
    assert!(ok > 10, "only {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_shim_restarts_its_container_by_policy() {
    use common::pods::{apply, http_get, running, status, wait_for};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-ks", &[]);
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    let port = common::free_port();
    let ports = format!("    ports:\n    - containerPort: 8080\n      hostPort: {port}\n");
    apply(
        &s,
        &cpod(
            "web",
            &image,
            "Always",
            "trap 'exit 0' TERM; httpd -f -p 8080 -h /var/www & wait",
            &ports,
            "",
        ),
    );
    let p = wait_for(&pods, "web", "Running", running).await;
    let uid = p.metadata.uid.unwrap();
    let started: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            s.agent_dir()
                .join("containers")
                .join(format!("{uid}_app"))
                .join("started.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let shim = started["shimPid"].as_i64().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &shim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let killed = std::time::Instant::now();
    let p = wait_for(&pods, "web", "restarted", |p| {
        running(p) && status(Some(p)).is_some_and(|c| c.restart_count == 1)
    })
    .await;
    loop {
        if let Ok((200, b)) = http_get(port, "/").await
            && serving(&b)
        {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "not serving again within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = killed.elapsed();
    let last = status(Some(&p))
        .unwrap()
        .last_state
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(
        last.message
            .unwrap_or_default()
            .contains("shim stopped unexpectedly")
    );
    println!("serving again {back:?} after kill -9 of the container's shim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pod_wasm_and_containers_share_localhost() {
    use common::pods::{apply, http_get, wait_for};
    use k8s_openapi::api::core::v1::Pod;
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let front = reg.push(&common::guest("front-py.wasm"), "front:1");
    let s = common::Server::start_node("edge-m", &[]);
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(common::kube_client(&s).await);
    let port = common::free_port();
    let manifest = std::fs::read_to_string(common::example("examples/containers/mixed-pod.yaml"))
        .unwrap()
        .replace("127.0.0.1:5000/busybox:1", &image)
        .replace("127.0.0.1:5000/front:1", &front)
        .replace("hostPort: 8082", &format!("hostPort: {port}"));
    apply(&s, &manifest);
    let p = wait_for(&pods, "mixed", "all three running", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.len() == 3 && cs.iter().all(|c| c.ready))
    })
    .await;
    let ids: Vec<String> = p
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .iter()
        .map(|c| c.container_id.clone().unwrap_or_default())
        .collect();
    assert!(
        ids.iter().filter(|i| i.starts_with("wasm://")).count() == 1,
        "{ids:?}"
    );
    assert!(
        ids.iter().filter(|i| i.starts_with("oci://")).count() == 2,
        "{ids:?}"
    );
    // Wasm → container: the front fetches the sidecar on localhost.
    let (code, body) = http_get(port, "/").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "front got: <h1>hello from a Skiff container</h1>\n");
    // Container → Wasm: the caller reached the front on localhost (and it the sidecar).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = s.kubectl_ok(&["logs", "mixed", "-c", "caller"]);
        if logs.contains("caller: front got: <h1>hello from a Skiff container</h1>") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "caller logs: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // kubectl exec into the sidecar, which fetches the Wasm service on localhost; exec
    // into the Wasm front has nothing to run.
    let got = s.kubectl_ok(&[
        "exec",
        "mixed",
        "-c",
        "sidecar",
        "--",
        "wget",
        "-qO-",
        "http://localhost:8080/",
    ]);
    assert_eq!(got, "front got: <h1>hello from a Skiff container</h1>\n");
    let out = s.kubectl(&["exec", "mixed", "-c", "front", "--", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Wasm containers have no processes"), "{err}");
}
