//! A real `docker-registry` on a free loopback port, and helpers to put artifacts in it.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

const BINARY: &str = "docker-registry";

/// A registry process with its own storage; killed on drop.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: tempfile::TempDir,
}

fn binary_present() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(BINARY).is_file()))
}

/// Starts a registry. A missing `docker-registry` fails the test: scripts/test.sh
/// installs it (Debian package `docker-registry`).
pub fn registry() -> TestRegistry {
    start(None).expect("start docker-registry")
}

/// A registry that requires HTTP basic auth for `user`/`password`.
pub fn registry_with_auth(user: &str, password: &str) -> TestRegistry {
    start(Some((user, password))).expect("start docker-registry")
}

fn start(auth: Option<(&str, &str)>) -> anyhow::Result<TestRegistry> {
    anyhow::ensure!(
        binary_present(),
        "`{BINARY}` is not on PATH: install the Debian package docker-registry \
         (scripts/test.sh does) to run the registry tests"
    );
    let mut last_err = None;
    // The port is free when we look; retry if another process takes it before the
    // registry binds it.
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}}}\n",
            storage.display()
        );
        if let Some((user, password)) = auth {
            let hash =
                bcrypt::hash_with_result(password, 4)?.format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: skiff-test, path: {}}}}}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {BINARY}"))?;
        let mut registry = TestRegistry { child, addr, dir };
        match registry.wait_ready(Duration::from_secs(15)) {
            Ok(()) => return Ok(registry),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
}

impl TestRegistry {
    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                bail!("docker-registry exited with {status}: {log}");
            }
            if let Ok(status) = http_status(&self.addr, "/v2/")
                && (status == 200 || status == 401)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("docker-registry on {} not ready in {within:?}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem layout).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `127.0.0.1:<port>/<repo>`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// An oci-client over plain HTTP to this registry.
    pub fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of a plain HTTP/1.0 GET.
fn http_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A valid core module; `seed` makes its bytes (and digest) differ between tests.
pub fn module(seed: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module (func (export "_start")) (func (export "seed") (result i32) i32.const {seed}))"#
    ))
    .expect("valid wat")
}

/// The smallest valid component.
pub const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

/// One blob to push.
pub struct Blob<'a> {
    pub media_type: &'a str,
    pub data: Vec<u8>,
}

impl Blob<'_> {
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": sha256(&self.data),
            "size": self.data.len(),
        })
    }
}

/// Pushes a manifest of any layout (config + layers with the given media types) with
/// oci-client, as other tools would have. Returns the manifest digest.
pub async fn push_layout(
    client: &Client,
    reference: &str,
    manifest_media_type: &str,
    config: Blob<'_>,
    layers: Vec<Blob<'_>>,
    auth: &RegistryAuth,
) -> anyhow::Result<String> {
    let r: Reference = reference.parse()?;
    client
        .auth(&r, auth, oci_client::RegistryOperation::Push)
        .await?;
    for blob in layers.iter().chain(std::iter::once(&config)) {
        let digest = sha256(&blob.data);
        if !client.blob_exists(&r, &digest).await? {
            client.push_blob(&r, blob.data.clone(), &digest).await?;
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_media_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    push_manifest(
        client,
        &r,
        manifest_media_type,
        &serde_json::to_vec(&manifest)?,
    )
    .await
}

/// Pushes raw manifest bytes; returns their digest.
pub async fn push_manifest(
    client: &Client,
    r: &Reference,
    media_type: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    client
        .push_manifest_raw(r, bytes.to_vec(), http::HeaderValue::from_str(media_type)?)
        .await?;
    Ok(sha256(bytes))
}

/// A tar (optionally gzip-compressed) holding `files` (name, bytes) under a directory.
pub fn tar_layer(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "app/", std::io::empty())
        .expect("tar dir");
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, name, *data)
            .expect("tar file");
    }
    let tar = builder.into_inner().expect("tar");
    if !gzip {
        return tar;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).expect("gzip");
    enc.finish().expect("gzip")
}

/// An OCI image config for `os/arch`.
pub fn image_config(os: &str, arch: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {"Entrypoint": ["/app/app.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("json")
}

/// Overwrites a file with different bytes of the same length.
pub fn tamper(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read for tamper");
    for b in bytes.iter_mut() {
        *b ^= 0x5a;
    }
    // Cached blobs are read-only; tests run as root in CI, but do not rely on it.
    let mut perms = std::fs::metadata(path).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).expect("chmod");
    std::fs::write(path, bytes).expect("write tamper");
}

/// The size of a manifest in the registry.
pub async fn manifest_size(client: &Client, reference: &str, digest: &str) -> usize {
    let r: Reference = reference.parse().expect("reference");
    let (bytes, _) = client
        .pull_manifest_raw(
            &r.clone_with_digest(digest.to_string()),
            &RegistryAuth::Anonymous,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .expect("manifest");
    bytes.len()
}

/// A TCP proxy on loopback that waits before connecting each client to `upstream`, so
/// that requests made at the same time are certainly in flight together.
pub struct SlowProxy {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: &str, delay: Duration) -> SlowProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let upstream = upstream.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        SlowProxy { addr, task }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
