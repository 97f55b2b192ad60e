//! Control-plane benchmarks against the real `skiff server` binary over HTTPS on
//! loopback. Prints one line per figure; BENCHMARKS.md records the results.
//!
//! `cargo bench --bench control_plane` (full) or with `SKIFF_BENCH_QUICK=1` (short).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::Server;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"runtimeClassName": "wasm", "containers": [{"name": "app", "image": "127.0.0.1:5000/hello:1",
        "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn client(s: &Server) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&s.ca_pem()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .pool_max_idle_per_host(2000)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn create_ns(s: &Server, http: &reqwest::Client, token: &str, ns: &str) {
    let r = http
        .post(s.url("/api/v1/namespaces"))
        .bearer_auth(token)
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Pod creates from `clients` concurrent clients, each on its own connection.
async fn concurrent_creates(s: &Server, token: &str, ns: &str, clients: usize, total: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let http = client(s);
        let (next, token, url) = (
            next.clone(),
            token.to_string(),
            s.url(&format!("/api/v1/namespaces/{ns}/pods")),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&pod(&format!("p-{i}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "pod creates, {clients} concurrent clients: {total} in {secs:.2} s = {:.0} creates/s (p50 {}, p99 {})",
        total as f64 / secs,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
}

/// Open-loop creates at a fixed rate; latency percentiles.
async fn paced_creates(s: &Server, token: &str, ns: &str, rate: u64, secs: u64) {
    let http = client(s);
    let url = s.url(&format!("/api/v1/namespaces/{ns}/pods"));
    // Warm the connection pool first, so the figure is the server's latency and not the
    // load generator's TLS handshakes.
    let warm: Vec<_> = (0..64)
        .map(|_| {
            let (http, url, token) = (http.clone(), url.clone(), token.to_string());
            tokio::spawn(async move {
                http.get(&url)
                    .query(&[("limit", "1")])
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        tick.tick().await;
        let (http, url, token) = (http.clone(), url.clone(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .json(&pod(&format!("paced-{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort();
    println!(
        "pod create latency at {rate}/s for {secs} s: p50 {}, p99 {}, max {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
}

async fn gets(s: &Server, token: &str, ns: &str, n: usize, of: usize) {
    let http = client(s);
    let mut lat = Vec::new();
    for i in 0..n {
        let url = s.url(&format!(
            "/api/v1/namespaces/{ns}/pods/p-{}",
            (i * 7919) % of
        ));
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "pod get, one client, {n} gets: p50 {}, p99 {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
}

async fn lists(s: &Server, token: &str, ns: &str, runs: usize) {
    let http = client(s);
    for (what, accept) in [
        ("JSON", "application/json"),
        (
            "Table (kubectl get)",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        ),
    ] {
        let mut lat = Vec::new();
        let mut count = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let r = http
                .get(s.url(&format!("/api/v1/namespaces/{ns}/pods")))
                .header("accept", accept)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let body = r.bytes().await.unwrap();
            lat.push(t.elapsed());
            count = body.len();
        }
        lat.sort();
        println!(
            "list of 10,000 pods as {what} ({:.1} MB): p50 {}, max {}",
            count as f64 / 1e6,
            ms(pct(&lat, 0.5)),
            ms(*lat.last().unwrap())
        );
    }
}

fn revision_of(line: &[u8]) -> Option<u64> {
    // The object's own resourceVersion; cheaper than parsing every event.
    let pat = b"\"resourceVersion\":\"";
    let at = line.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let end = line[at..].iter().position(|b| *b == b'"')? + at;
    std::str::from_utf8(&line[at..end]).ok()?.parse().ok()
}

/// `watchers` watches on one namespace while a writer creates config maps at `rate`/s.
async fn watchers(s: &Server, token: &str, watchers: usize, rate: u64, secs: u64) {
    let ns = "watched";
    let http = client(s);
    create_ns(s, &http, token, ns).await;
    let list: Value = http
        .get(s.url(&format!("/api/v1/namespaces/{ns}/configmaps")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let (http, token, started, expected) = (
            http.clone(),
            token.to_string(),
            started.clone(),
            expected.clone(),
        );
        let url = s.url(&format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={from}&timeoutSeconds={}",
            secs + 120
        ));
        tasks.push(tokio::spawn(async move {
            use futures::StreamExt;
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            started.wait().await;
            let mut stream = r.bytes_stream();
            let (mut buf, mut seen, mut last, mut dup_or_reorder, mut errors) =
                (Vec::new(), 0u64, 0u64, 0u64, 0u64);
            loop {
                if seen >= expected.load(Ordering::Relaxed) {
                    break;
                }
                // Wake up now and then: the count to reach is known only after the
                // writes end, possibly after the last event already arrived.
                let chunk =
                    match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                        Err(_) => continue,
                        Ok(None) => break,
                        Ok(Some(c)) => c,
                    };
                let Ok(chunk) = chunk else { break };
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if line.starts_with(b"{\"type\":\"ERROR\"") {
                        errors += 1;
                        continue;
                    }
                    match revision_of(&line) {
                        Some(rv) if rv > last => {
                            last = rv;
                            seen += 1;
                        }
                        _ => dup_or_reorder += 1,
                    }
                }
            }
            (seen, dup_or_reorder, errors)
        }));
    }
    started.wait().await;
    let url = s.url(&format!("/api/v1/namespaces/{ns}/configmaps"));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut writes = Vec::new();
    let t0 = Instant::now();
    for i in 0..rate * secs {
        tick.tick().await;
        let (http, url, token) = (http.clone(), url.clone(), token.to_string());
        writes.push(tokio::spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}});
            http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap().status() == 201
        }));
    }
    let mut acked = 0u64;
    for w in writes {
        if w.await.unwrap() {
            acked += 1;
        }
    }
    let write_secs = t0.elapsed().as_secs_f64();
    expected.store(acked, Ordering::Relaxed);
    let rss = s.rss_kib().unwrap_or(0);
    let (mut lost, mut dups, mut errs, mut complete, mut unfinished) =
        (0u64, 0u64, 0u64, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t).await {
            Ok(Ok((seen, d, e))) => {
                lost += acked.saturating_sub(seen);
                dups += d;
                errs += e;
                if seen == acked {
                    complete += 1;
                }
            }
            _ => unfinished += 1,
        }
    }
    println!(
        "{watchers} watchers, {acked} writes at {:.0}/s over {write_secs:.1} s: {complete}/{watchers} watchers got every event, {unfinished} still reading 60 s after the last write; among finished watchers lost {lost}, duplicated or out of order {dups}, watch errors {errs}; server RSS {:.0} MB",
        acked as f64 / write_secs,
        rss as f64 / 1024.0
    );
}

fn main() {
    let quick = std::env::var("SKIFF_BENCH_QUICK").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        {
            let s = Server::start();
            // Idle: ready, nothing to do.
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!(
                "idle RSS of `skiff server --no-agent`: {:.1} MB",
                s.rss_kib().unwrap() as f64 / 1024.0
            );
        }
        let s = Server::start();
        let token = s.token();
        let http = client(&s);
        for ns in ["bench", "paced"] {
            create_ns(&s, &http, &token, ns).await;
        }
        concurrent_creates(&s, &token, "bench", 64, 10_000).await;
        lists(&s, &token, "bench", if quick { 5 } else { 20 }).await;
        gets(
            &s,
            &token,
            "bench",
            if quick { 2_000 } else { 10_000 },
            10_000,
        )
        .await;
        paced_creates(&s, &token, "paced", 500, if quick { 4 } else { 20 }).await;
        let (w, secs) = if quick { (200, 10) } else { (1000, 60) };
        watchers(&s, &token, w, 500, secs).await;
        println!(
            "store file: {:.1} MB",
            std::fs::metadata(s.dir.join("store.redb"))
                .map(|m| m.len())
                .unwrap_or(0) as f64
                / 1e6
        );
    });
}
