//! Recording core/v1 Events from Skiff's components (scheduler, node agent), as
//! Kubernetes' event recorder does: best effort, never blocking the caller, repeated
//! events folded into one with a growing `count` (so `kubectl describe` shows
//! "x5 over 2m" instead of five lines).

use http::Request;
use rustc_hash::FxHashMap;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Events waiting to be written; beyond this, new events are dropped (and counted).
const QUEUE: usize = 1024;
/// Repeated-event memory; cleared when full.
const MEMORY: usize = 4096;

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// `v1`, `apps/v1`, ...
    pub api_version: String,
    /// `Pod`, `Node`, ...
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects; their events go to `default`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl ObjectRef {
    /// A reference to a pod.
    pub fn pod(namespace: &str, name: &str, uid: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// A reference to a node (its uid is its name, as the kubelet reports it).
    pub fn node(name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "Node".into(),
            namespace: String::new(),
            name: name.into(),
            uid: name.into(),
        }
    }
}

struct Record {
    object: ObjectRef,
    warning: bool,
    reason: String,
    message: String,
}

/// Sends events in the background.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder writing through `client` as `component` (e.g. `skiff-scheduler`),
    /// from `host`. Spawns its writer task on the current Tokio runtime.
    pub fn new(client: kube::Client, component: &str, host: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(
            client,
            component.to_string(),
            host.to_string(),
            rx,
        ));
        Recorder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn send(&self, object: &ObjectRef, warning: bool, reason: &str, message: String) {
        let r = Record {
            object: object.clone(),
            warning,
            reason: reason.to_string(),
            message,
        };
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A `Normal` event.
    pub fn normal(&self, object: &ObjectRef, reason: &str, message: impl Into<String>) {
        self.send(object, false, reason, message.into());
    }

    /// A `Warning` event.
    pub fn warning(&self, object: &ObjectRef, reason: &str, message: impl Into<String>) {
        self.send(object, true, reason, message.into());
    }

    /// Events dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

type Key = (String, String, String);

async fn write_events(
    client: kube::Client,
    component: String,
    host: String,
    mut rx: mpsc::Receiver<Record>,
) {
    // (object uid, reason, message) → (event namespace, event name, count)
    let mut seen: FxHashMap<Key, (String, String, i64)> = FxHashMap::default();
    while let Some(r) = rx.recv().await {
        let now = crate::apiserver::now();
        let ns = if r.object.namespace.is_empty() {
            "default".to_string()
        } else {
            r.object.namespace.clone()
        };
        let key = (r.object.uid.clone(), r.reason.clone(), r.message.clone());
        if let Some((ens, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let body = json!({"count": *count, "lastTimestamp": now});
            let req = Request::patch(format!("/api/v1/namespaces/{ens}/events/{name}"))
                .header("content-type", "application/merge-patch+json")
                .body(body.to_string().into_bytes());
            let patched = match req {
                Ok(req) => client.request_text(req).await.is_ok(),
                Err(_) => false,
            };
            if patched {
                continue;
            }
            // The event expired or was deleted: write a new one.
            seen.remove(&key);
        }
        let o = &r.object;
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}.", o.name), "namespace": ns},
            "involvedObject": {
                "apiVersion": o.api_version, "kind": o.kind, "name": o.name,
                "namespace": if o.namespace.is_empty() { None } else { Some(&o.namespace) },
                "uid": o.uid,
            },
            "reason": r.reason,
            "message": r.message,
            "type": if r.warning { "Warning" } else { "Normal" },
            "source": {"component": component, "host": host},
            "reportingComponent": component,
            "reportingInstance": host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let req = match Request::post(format!("/api/v1/namespaces/{ns}/events"))
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
        {
            Ok(r) => r,
            Err(_) => continue,
        };
        match client.request_text(req).await {
            Ok(text) => {
                let name = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["metadata"]["name"].as_str().map(String::from));
                if let Some(name) = name {
                    if seen.len() >= MEMORY {
                        seen.clear();
                    }
                    seen.insert(key, (ns, name, 1));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, reason = %r.reason, object = %o.name, "event not recorded");
            }
        }
    }
}
