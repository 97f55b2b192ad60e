//! `wasi:http/proxy` services over real TCP on 127.0.0.1 (and inside a network namespace
//! when root).
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use skiff_shims::{ContainerSpec, Executor, ExitReason, HttpSpec, Limits, Listener, WorkloadKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn proxy_spec(node: &Node, id: &str, timeout: Duration) -> ContainerSpec {
    let bytes = wat::parse_str(PROXY_COMPONENT).unwrap();
    let mut spec = node.spec(id, node.artifact("proxy", &bytes));
    spec.http = Some(HttpSpec {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            netns: None,
        }],
        request_timeout: timeout,
        header_read_timeout: Duration::from_secs(10),
        max_connections: 1024,
    });
    spec
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    get_on(&mut stream, path, true).await
}

async fn get_on(stream: &mut TcpStream, path: &str, close: bool) -> (u16, String) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    if close {
        stream.read_to_end(&mut raw).await.unwrap();
    } else {
        // Read until the head and a content-length body (or chunked terminator) arrived.
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let head = &text[..head_end].to_ascii_lowercase();
                let body = &text[head_end + 4..];
                if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    if body.len() >= len {
                        break;
                    }
                } else if body.ends_with("0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, dechunk(&text, body))
}

fn dechunk(full: &str, body: &str) -> String {
    if !full
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_serves_traps_500_times_out_504_and_keeps_serving() {
    let node = node();
    let info = node
        .executor
        .run(proxy_spec(&node, "web", Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(info.kind, WorkloadKind::HttpProxy);
    let addr = info.listening[0];

    assert_eq!(get(addr, "/").await, (200, "hello from wasm\n".to_string()));

    let (status, _) = get(addr, "/trap").await;
    assert_eq!(status, 500);

    let started = Instant::now();
    let (status, _) = get(addr, "/loop").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Keep-alive connection: an error answer does not drop it.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut conn, "/trap", false).await.0, 500);
    assert_eq!(get_on(&mut conn, "/", false).await.0, 200);

    assert!(
        node.log("web")
            .iter()
            .any(|l| l.starts_with("stderr F skiff: request failed") && l.contains("unreachable")),
        "{:?}",
        node.log("web")
    );
    assert!(
        node.executor
            .get("web")
            .unwrap()
            .state
            .exit_status()
            .is_none()
    );
}

/// Whether the server closes `stream` within `within` (reads reach the end).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_the_connection_cap_holds() {
    let node = node();
    let mut spec = proxy_spec(&node, "capped", Duration::from_secs(5));
    if let Some(h) = spec.http.as_mut() {
        h.header_read_timeout = Duration::from_secs(1);
        h.max_connections = 4;
    }
    let info = node.executor.run(spec).await.unwrap();
    let addr = info.listening[0];
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HT").await.unwrap();
        slow.push(s);
    }
    // The fifth is closed at once; the four are held until their headers time out.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut fifth, Duration::from_millis(500)).await);
    for s in &mut slow {
        assert!(!closed_within(s, Duration::from_millis(10)).await);
    }
    let started = std::time::Instant::now();
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "slow client kept"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // With them gone, requests are served.
    assert_eq!(get(addr, "/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_request_past_memory_limit_gets_500() {
    let node = node();
    let mut spec = proxy_spec(&node, "fat", Duration::from_secs(5));
    spec.limits = Limits {
        memory_bytes: Some(16 << 20),
        cpu_millis: None,
    };
    let info = node.executor.run(spec).await.unwrap();
    let addr = info.listening[0];
    assert_eq!(get(addr, "/oom").await.0, 500);
    assert_eq!(get(addr, "/").await.0, 200);
    assert!(
        node.log("fat").iter().any(|l| l.contains("OOMKilled")),
        "{:?}",
        node.log("fat")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_frees_the_port_at_once_and_drains() {
    let node = node();
    let info = node
        .executor
        .run(proxy_spec(&node, "web", Duration::from_secs(30)))
        .await
        .unwrap();
    let addr = info.listening[0];
    assert_eq!(get(addr, "/").await.0, 200);

    // An in-flight request that never finishes: the stop waits for it up to the grace.
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    let cpu0 = process_cpu();
    stuck
        .write_all(b"GET /loop HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Its handler is spinning (this process burns CPU) before the stop is asked for.
    assert!(
        eventually(Duration::from_secs(5), || process_cpu()
            >= cpu0 + Duration::from_millis(50))
        .await
    );
    let executor = node.executor.clone();
    let stopping =
        tokio::spawn(async move { executor.stop("web", Duration::from_millis(300)).await });
    // The listener goes away before the drain ends: the port can be bound again.
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpListener::bind(addr)
            .is_ok())
        .await
    );
    stopping.await.unwrap().unwrap();
    let status = node.executor.wait("web").await.unwrap();
    assert_eq!(status.reason, ExitReason::Stopped, "{status:?}");
    assert_eq!(status.code, 137);

    // With nothing in flight, a stop drains at once and exits 0.
    let info = node
        .executor
        .run(proxy_spec(&node, "idle", Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(get(info.listening[0], "/").await.0, 200);
    node.executor
        .stop("idle", Duration::from_secs(10))
        .await
        .unwrap();
    let status = node.executor.wait("idle").await.unwrap();
    assert_eq!((status.code, status.reason), (0, ExitReason::Completed));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_lives_in_the_named_network_namespace() {
    assert!(
        is_root(),
        "this test needs root (network namespaces); CI runs as root"
    );
    let name = format!("skiff-shims-test-{}", std::process::id());
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(
        ip(&["netns", "add", &name]),
        "`ip netns add {name}` failed (iproute2 missing, or no permission)"
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(name.clone());
    assert!(ip(&["-n", &name, "link", "set", "lo", "up"]));

    let node = node();
    let mut spec = proxy_spec(&node, "pod", Duration::from_secs(5));
    spec.http = Some(HttpSpec {
        listeners: vec![Listener {
            addr: "127.0.0.1:18089".parse().unwrap(),
            netns: Some(format!("/run/netns/{name}").into()),
        }],
        request_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 16,
    });
    node.executor.run(spec).await.unwrap();

    // Not reachable from the host namespace...
    assert!(TcpStream::connect("127.0.0.1:18089").await.is_err());
    // ...but from inside the namespace.
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &name,
            "curl",
            "-s",
            "http://127.0.0.1:18089/",
        ])
        .output()
        .await
        .expect("`ip netns exec curl` could not start");
    assert!(out.status.success(), "curl inside the namespace: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from wasm\n");
    node.executor.stop("pod", Duration::ZERO).await.unwrap();
}
