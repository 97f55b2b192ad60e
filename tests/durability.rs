//! Acknowledged writes survive `kill -9`; revisions keep increasing; a watch resumed from
//! an old revision gets what it missed; optimistic concurrency has exactly one winner.

#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_watches_resume() {
    let mut s = Server::start();
    let http = s.http();
    let token = s.token();
    let first: Value = http
        .post(s.url(CMS))
        .bearer_auth(&token)
        .json(&cm("first"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let start_rv: u64 = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Writers keep creating until the server dies under them; every 201 is recorded. The
    // server is killed once the writers themselves hold 300 acknowledgements (counting the
    // store's revision instead races with responses still in flight).
    const KILL_AFTER: usize = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, token, url, stop) = (http.clone(), token.clone(), s.url(CMS), stop.clone());
        let (acks, enough) = (acks.clone(), enough.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("w{w}-{i}");
                match http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&cm(&name))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => break,
                        };
                        acked.push((
                            name,
                            v["metadata"]["resourceVersion"]
                                .as_str()
                                .unwrap()
                                .parse::<u64>()
                                .unwrap(),
                        ));
                        if acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    enough.notified().await;
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} writes acknowledged",
        acked.len()
    );
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap();

    s.restart();
    let http = s.http();
    let list: Value = http
        .get(s.url(CMS))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: std::collections::HashSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|(n, _)| !names.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );

    // Revisions keep increasing.
    let after: Value = http
        .post(s.url(CMS))
        .bearer_auth(&token)
        .json(&cm("after-restart"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after_rv: u64 = after["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after_rv > max_rv, "{after_rv} <= {max_rv}");

    // A watch resumed from before the crash replays every acknowledged create, in order.
    let resp = http
        .get(s.url(&format!(
            "{CMS}?watch=1&resourceVersion={start_rv}&timeoutSeconds=5"
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut last = start_rv;
    for line in body.lines() {
        let ev: Value = serde_json::from_str(line).unwrap();
        assert_eq!(ev["type"], "ADDED", "{line}");
        let rv: u64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv > last, "events out of order");
        last = rv;
        seen.insert(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for (n, _) in &acked {
        assert!(seen.contains(n), "watch from {start_rv} missed {n}");
    }
    assert!(seen.contains("after-restart"));
    assert!(
        !seen.contains("first"),
        "the start revision itself is not replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_resource_version_exactly_one_update_wins() {
    let s = Server::start();
    let http = s.http();
    let token = s.token();
    let created: Value = http
        .post(s.url(CMS))
        .bearer_auth(&token)
        .json(&cm("race"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut next = created.clone();
        next["data"]["k"] = json!(format!("writer-{i}"));
        let (http, token, url) = (http.clone(), token.clone(), s.url(&format!("{CMS}/race")));
        tasks.push(tokio::spawn(async move {
            http.put(url)
                .bearer_auth(token)
                .json(&next)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 11, "{codes:?}");
}

#[test]
fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let mut s = Server::start();
    s.kubectl_ok(&["create", "configmap", "--dry-run=client", "-o", "yaml", "x"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cm.json");
    std::fs::write(&f, serde_json::to_vec(&cm("kept")).unwrap()).unwrap();
    s.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    assert!(
        s.terminate(),
        "skiff server did not exit cleanly on SIGTERM"
    );
    s.restart();
    assert_eq!(
        s.kubectl_ok(&["get", "cm", "kept", "-o", "jsonpath={.data.k}"])
            .trim(),
        "kept"
    );
}
