//! What a local user or a slow client can get out of a running server: file modes of the
//! state on disk, Secrets at rest (sealed, and still readable after `skiff secrets
//! rotate-key`), secret volumes on the node, and connections held open without
//! finishing a request.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Registry, Server, guest, kube_client};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn file_has(p: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(p).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"password": value},
    }))
    .unwrap()
}

#[tokio::test]
async fn state_on_disk_is_private_and_secrets_are_sealed_through_a_key_rotation() {
    let mut s = Server::start();
    let secrets: Api<Secret> = Api::namespaced(kube_client(&s).await, "default");
    let value = format!("hunter2-{}", std::process::id());
    secrets
        .create(&PostParams::default(), &secret("db", &value))
        .await
        .unwrap();
    // A data directory an older version left open to everyone is closed at start.
    s.kill9();
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        s.dir.join("store.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    s.restart();
    assert_eq!(mode(&s.dir), 0o700, "data dir");
    assert_eq!(mode(&s.dir.join("pki")), 0o700, "pki dir");
    for f in [
        "store.redb",
        "pki/encryption-keys",
        "pki/ca.key",
        "pki/admin-token",
        "node-token",
    ] {
        assert_eq!(mode(&s.dir.join(f)), 0o600, "{f}");
    }
    let store = s.dir.join("store.redb");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    assert!(
        !file_has(&store, &value),
        "the Secret's value is in the store file"
    );
    assert!(
        !file_has(&store, &b64),
        "the Secret's base64 value is in the store file"
    );

    // Rotation needs the store to itself.
    let skiff = env!("CARGO_BIN_EXE_skiff");
    let dir = s.dir.to_str().unwrap().to_string();
    let busy = std::process::Command::new(skiff)
        .args(["secrets", "rotate-key", "--data-dir", &dir])
        .output()
        .unwrap();
    assert!(!busy.status.success());
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("stop `skiff server` first"), "{err}");
    assert!(s.terminate());
    let keys_before = std::fs::read_to_string(s.dir.join("pki/encryption-keys")).unwrap();
    let out = std::process::Command::new(skiff)
        .args(["secrets", "rotate-key", "--data-dir", &dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Secrets sealed with the new key"), "{said}");
    let keys_after = std::fs::read_to_string(s.dir.join("pki/encryption-keys")).unwrap();
    let key_lines = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(key_lines(&keys_after).len(), 1, "the old key is dropped");
    assert_ne!(key_lines(&keys_after), key_lines(&keys_before));
    assert!(!file_has(&store, &b64));
    s.restart();
    let secrets: Api<Secret> = Api::namespaced(kube_client(&s).await, "default");
    let got = secrets.get("db").await.unwrap();
    let data = got.data.unwrap();
    assert_eq!(
        data["password"].0,
        value.as_bytes(),
        "the Secret reads back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_on_the_node_is_readable_by_its_owner_only() {
    let reg = Registry::start();
    let image = reg.push(&guest("hello-http-c.wasm"), "skiff/hello-http:c");
    let s = Server::start_node("private-node", &[]);
    let client = kube_client(&s).await;
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret("creds", "s3cret"))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "with-secret"},
        "spec": {"runtimeClassName": "wasm", "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
            "containers": [{"name": "app", "image": image,
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    common::pods::wait_for(&pods, "with-secret", "Running", common::pods::running).await;
    let uid = created.metadata.uid.unwrap();
    let vol = s.agent_dir().join("pods").join(&uid).join("volumes/creds");
    assert_eq!(mode(&s.agent_dir()), 0o700, "agent data dir");
    assert_eq!(mode(&vol), 0o700, "secret volume directory");
    assert_eq!(mode(&vol.join("password")), 0o600, "secret volume file");
    assert_eq!(
        std::fs::read_to_string(vol.join("password")).unwrap(),
        "s3cret"
    );
}

/// Open a TLS connection from `from` (any 127/8 address) and send `head` of a request.
async fn half_request(
    port: u16,
    from: [u8; 4],
    ca: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    let tcp = sock.connect(([127, 0, 0, 1], port).into()).await?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c?).map_err(std::io::Error::other)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    tls.write_all(b"GET /api/v1/namespa").await?;
    tls.flush().await?;
    Ok(tls)
}

/// Whether the server closed `tls` (a read ends) within `within`.
async fn closed_within(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, tls.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before the close is fine; keep reading to the end.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected_and_the_connection_caps_hold() {
    let s = Server::start_with(&[
        "--no-scheduler",
        "--no-controllers",
        "--request-header-timeout",
        "4s",
        "--max-connections",
        "13",
        "--max-connections-per-ip",
        "4",
    ]);
    let ca = s.ca_pem();
    // One address opens more than its share of half-finished requests (quickly: the
    // first ones are dropped once the 4 s header timeout passes).
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match half_request(s.port, [127, 0, 0, 2], &ca).await {
            Ok(mut tls) => {
                // Past the cap the server closes at once (the handshake may even fail).
                if closed_within(&mut tls, Duration::from_millis(100)).await {
                    refused += 1;
                } else {
                    held.push(tls);
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (4, 4), "the per-address cap");
    // Others still get answers while it does.
    let http = s.http();
    let answered = || async {
        let r = s
            .http()
            .get(s.url("/api/v1/namespaces/default/configmaps"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(answered().await, 200);
    // More addresses fill the server-wide cap; the next connection is closed at once.
    for from in [3, 4] {
        for _ in 0..4 {
            let mut tls = half_request(s.port, [127, 0, 0, from], &ca).await.unwrap();
            assert!(!closed_within(&mut tls, Duration::from_millis(50)).await);
            held.push(tls);
        }
    }
    let started = Instant::now();
    // The first may still fit if the answered request's connection is gone already.
    let mut over = false;
    for _ in 0..2 {
        let Ok(mut tls) = half_request(s.port, [127, 0, 0, 5], &ca).await else {
            over = true;
            break;
        };
        if closed_within(&mut tls, Duration::from_millis(100)).await {
            over = true;
            break;
        }
        held.push(tls);
    }
    assert!(over, "connections past the server-wide cap were kept");
    // The header-read timeout frees them all; then everyone is served again.
    for tls in &mut held {
        assert!(
            closed_within(tls, Duration::from_secs(10)).await,
            "a slow client was not disconnected"
        );
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    let metrics = http
        .get(s.url("/metrics"))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("skiff_apiserver_refused_connections_total") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert_eq!(answered().await, 200);
}
