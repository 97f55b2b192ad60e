//! Shared end-to-end fixtures: the real `skiff` binary on a loopback port, with its real
//! credentials, driven by the real kubectl and HTTP clients.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

pub mod net;
pub mod pods;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    cache: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

fn port_of(kubeconfig: &str) -> Option<u16> {
    let line = kubeconfig
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

/// Where a test server's log goes (beside its data directory, so it is not part of the
/// state tests look at); its end is printed when the test fails.
fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

fn spawn_child(dir: &Path, port: u16, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("server log");
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
        .args(extra)
        .env("RUST_LOG", "info,libcgroups=error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start skiff server")
}

impl Server {
    /// Start a server on a fresh data directory and a free port.
    /// The API alone (`--no-scheduler --no-controllers`): tests of the API itself see
    /// only their own writes.
    pub fn start() -> Server {
        Server::start_with(&["--no-scheduler", "--no-controllers"])
    }

    /// The control plane without a node agent, with more `skiff server` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let mut flags = vec!["--no-agent"];
        flags.extend_from_slice(extra);
        Server::start_flags(&flags)
    }

    /// The whole server: control plane, scheduler and this machine's node agent (as
    /// node `node_name`, logs endpoint on a free port).
    pub fn start_node(node_name: &str, extra: &[&str]) -> Server {
        let mut flags = vec!["--node-name", node_name, "--node-port", "0"];
        flags.extend_from_slice(extra);
        Server::start_flags(&flags)
    }

    fn start_flags(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Server::spawn(dir, 0, extra);
        s._tmp = Some(tmp);
        s
    }

    fn spawn(dir: PathBuf, port: u16, extra: Vec<String>) -> Server {
        let child = spawn_child(&dir, port, &extra);
        let mut s = Server {
            dir,
            _tmp: None,
            cache: tempfile::tempdir().expect("tempdir"),
            port,
            child: Some(child),
            extra,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "skiff server did not become ready"
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("skiff server exited early: {status}");
            }
            if self.port == 0
                && let Ok(k) = std::fs::read_to_string(self.kubeconfig())
                && let Some(p) = port_of(&k)
            {
                self.port = p;
            }
            if self.port != 0 {
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                    .arg(self.dir.join("pki/ca.crt"))
                    .arg(format!("https://127.0.0.1:{}/readyz", self.port))
                    .output();
                if out.is_ok_and(|o| o.stdout == b"200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("pki/admin-token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    pub fn node_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("node-token"))
            .expect("node token")
            .trim()
            .to_string()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("pki/ca.crt")).expect("ca")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// An HTTP client that trusts the server's CA (no token attached).
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("ca pem");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client")
    }

    /// The kubectl command, pointed at this server with a private discovery cache.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path());
        c
    }

    /// `kubectl apply` of `yaml` (through a file); returns its output whatever the exit
    /// status.
    pub fn kubectl_apply(&self, yaml: &str) -> Output {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), yaml).expect("write the manifest");
        let path = f.path().to_string_lossy().into_owned();
        self.kubectl(&["apply", "-f", &path])
    }

    /// Run kubectl; returns its output whatever the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd().args(args).output().expect("run kubectl")
    }

    /// Run kubectl and require success; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        terminate_child(&mut self.child)
    }

    /// Start again on the same data directory and port, with these flags instead.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Start again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.child = Some(spawn_child(&self.dir, self.port, &self.extra));
        self.wait_ready();
    }
}

impl Server {
    /// The node agent's state directory.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    /// Pid of the node's Wasm host, if one was started.
    pub fn wasm_host_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.agent_dir().join("wasm-host/wasm-host.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let log = log_path(&self.dir);
        if std::thread::panicking()
            && let Ok(text) = std::fs::read_to_string(&log)
        {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "--- the end of the server's log ({}) ---\n{tail}",
                log.display()
            );
        }
        let _ = std::fs::remove_file(&log);
        // The Wasm host outlives the agent by design; a test's host ends with the test,
        // and so do the network namespaces of its pods.
        kill_node_leftovers(&self.agent_dir());
    }
}

/// A separate `skiff agent` process joined to a server.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub name: String,
    server_url: String,
    /// The join token file it starts with (`None`: none, its stored credential only).
    pub token_file: Option<PathBuf>,
    extra: Vec<String>,
    child: Option<Child>,
    /// The network namespace (by `ip netns` name) it runs in, and its address there.
    netns: Option<String>,
    node_ip: String,
}

impl Agent {
    pub fn start(server: &Server, name: &str) -> Agent {
        Agent::start_with(server, name, &[])
    }

    /// An agent joining with the join token in `token_file`.
    pub fn start_with_token(server: &Server, name: &str, token_file: &Path) -> Agent {
        let mut a = Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            server_url: server.url(""),
            token_file: Some(token_file.to_path_buf()),
            extra: Vec::new(),
            child: None,
            netns: None,
            node_ip: "127.0.0.1".into(),
        };
        a.restart();
        a
    }

    /// Same, with more `skiff agent` flags.
    pub fn start_with(server: &Server, name: &str, extra: &[&str]) -> Agent {
        let mut a = Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            server_url: server.url(""),
            token_file: Some(server.dir.join("node-token")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            netns: None,
            node_ip: "127.0.0.1".into(),
        };
        a.restart();
        a
    }

    /// An agent in network namespace `netns` (an `ip netns` name), at `node_ip` there,
    /// joining the server at `server_url` with its node token.
    pub fn start_in_netns(
        server: &Server,
        server_url: &str,
        name: &str,
        netns: &str,
        node_ip: &str,
        extra: &[&str],
    ) -> Agent {
        let mut a = Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            server_url: server_url.to_string(),
            token_file: Some(server.dir.join("node-token")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            netns: Some(netns.to_string()),
            node_ip: node_ip.to_string(),
        };
        a.restart();
        a
    }

    /// Pid of the agent process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pid of its Wasm host.
    pub fn wasm_host_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("wasm-host/wasm-host.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Start (again) on the same state directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent first");
        // `nsenter` enters the network namespace alone and executes the agent (the pid is
        // its); `ip netns exec` would also give it a mount namespace of its own, with a
        // /sys of the network namespace and without the machine's cgroup mounts.
        let mut cmd = match &self.netns {
            None => Command::new(env!("CARGO_BIN_EXE_skiff")),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_skiff"));
                c
            }
        };
        cmd.args(["agent", "--server", &self.server_url]);
        if let Some(f) = &self.token_file {
            cmd.arg("--token-file").arg(f);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.path())
            .args([
                "--node-name",
                &self.name,
                "--node-port",
                "0",
                "--node-ip",
                &self.node_ip,
            ])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start skiff agent");
        self.child = Some(child);
    }

    /// Wait for the agent to exit by itself (up to `within`); its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the agent process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` the agent (its Wasm host lives on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for it to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        terminate_child(&mut self.child)
    }
}

/// SIGTERM a child and wait for it; whether it exited successfully.
fn terminate_child(child: &mut Option<Child>) -> bool {
    let Some(mut c) = child.take() else {
        return false;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    c.wait().map(|s| s.success()).unwrap_or(false)
}

fn kill_node_leftovers(agent_dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(agent_dir.join("wasm-host/wasm-host.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // Containers outlive the agent too: end them, their shims and what they hold.
    kill_containers(&agent_dir.join("containers"));
    if let Ok(pods) = std::fs::read_dir(agent_dir.join("pods")) {
        for p in pods.flatten() {
            let uid = p.file_name().to_string_lossy().into_owned();
            let ns = format!("skiff-{uid}");
            let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(h.path().join("skiff").join(format!("pod-{uid}")));
            }
        }
    }
}

/// Ends every container of the OCI executor's bundles under `dir`: its init (and so its
/// pid namespace), its shim, then the shim's own clean-up (mounts, cgroups).
pub fn kill_containers(dir: &Path) {
    let Ok(bundles) = std::fs::read_dir(dir) else {
        return;
    };
    for b in bundles.flatten() {
        let started: Option<serde_json::Value> = std::fs::read(b.path().join("started.json"))
            .ok()
            .and_then(|s| serde_json::from_slice(&s).ok());
        if let Some(st) = started {
            for key in ["initPid", "shimPid"] {
                if let Some(pid) = st[key].as_i64() {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["container-shim", "--delete"])
            .arg(b.path())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        kill_node_leftovers(self.dir.path());
    }
}

/// The parent of process `pid`, while it exists.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses itself.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A free TCP port on 127.0.0.1 (free when asked; tests use it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real OCI registry (Debian's `docker-registry`) on a loopback port.
pub struct Registry {
    pub port: u16,
    pub storage: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_on("127.0.0.1")
    }

    /// A registry listening on `addr` (`0.0.0.0`: also for nodes in network namespaces
    /// of a test's own, on a bridge address of the machine); pushes still go to
    /// loopback.
    pub fn start_on(addr: &str) -> Registry {
        let storage = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}:{port}}}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{port}/v2/"))
                .output();
            if out.is_ok_and(|o| o.stdout == b"200") {
                break;
            }
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        Registry {
            port,
            storage,
            child,
        }
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// Publish a `.wasm` file with `skiff push`; panics if it fails.
    pub fn push(&self, file: &Path, repo_tag: &str) -> String {
        let reference = self.reference(repo_tag);
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("push")
            .arg(file)
            .arg(&reference)
            .output()
            .expect("skiff push");
        assert!(
            out.status.success(),
            "skiff push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }

    /// Publish WAT text compiled to Wasm.
    pub fn push_wat(&self, wat: &str, repo_tag: &str) -> String {
        let bytes = wat::parse_str(wat).expect("valid WAT");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("guest.wasm");
        std::fs::write(&f, bytes).expect("write guest");
        self.push(&f, repo_tag)
    }

    /// Builds the example container image (examples/containers/build-image.sh) and pushes
    /// it here as `repo_tag`; panics if that fails.
    pub fn push_example_image(&self, repo_tag: &str) -> String {
        let reference = self.reference(repo_tag);
        let out = Command::new(example("examples/containers/build-image.sh"))
            .arg(&reference)
            .output()
            .expect("examples/containers/build-image.sh");
        assert!(
            out.status.success(),
            "build-image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }

    /// The registry's stored copy of a blob (to tamper with it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A guest built by `scripts/build-guests.sh` (the README's test command builds them).
pub fn guest(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/guests")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-guests.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A process whose stdout lines arrive on a channel, for `-w` style commands.
pub struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn spawn(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait until a line satisfies `pred`; panics after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; saw {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kube` client from the server's kubeconfig.
pub async fn kube_client(s: &Server) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

pub fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A busybox root filesystem at `dir` from Debian's busybox-static: the binary, a link
/// per applet, and the empty directories a container needs.
pub fn busybox_tree(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static (scripts/test.sh does)"
    );
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        // `busybox --list` names busybox itself; a link to itself would replace it.
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    for d in ["proc", "dev", "sys", "tmp", "etc", "root", "var/www"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}
