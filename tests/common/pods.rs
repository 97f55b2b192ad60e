//! Pods through the API as tests await them: apply, wait for a condition, read a
//! container's state, fetch from a hostPort, wait for an event.

use super::Server;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use kube::runtime::wait::await_condition;
use std::io::Write;
use std::time::Duration;

/// How long a test waits for a pod to get somewhere.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn apply(s: &Server, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl_ok(&["apply", "-f", f.path().to_str().unwrap()]);
}

pub fn status(p: Option<&Pod>) -> Option<ContainerStatus> {
    p?.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

pub async fn wait_for(pods: &Api<Pod>, name: &str, what: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
    let found = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), name, move |p: Option<&Pod>| {
            p.is_some_and(&cond)
        }),
    )
    .await;
    match found {
        Ok(Ok(Some(p))) => p,
        _ => {
            let now = pods.get_opt(name).await.ok().flatten();
            panic!(
                "pod {name}: {what} did not happen within {WAIT:?}; status: {:#?}",
                now.and_then(|p| p.status)
            )
        }
    }
}

pub fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && status(Some(p)).is_some_and(|c| c.ready)
}

pub fn terminated(p: &Pod) -> Option<(String, String, i32)> {
    let t = status(Some(p))?.state?.terminated?;
    Some((
        t.reason.unwrap_or_default(),
        t.message.unwrap_or_default(),
        t.exit_code,
    ))
}

pub fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = status(Some(p))?.state?.waiting?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let r = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    Ok((code, r.text().await.map_err(|e| e.to_string())?))
}

/// Wait until an event with `reason` is recorded about `object`.
pub async fn wait_event(client: &kube::Client, object: &str, reason: &str) {
    wait_event_where(client, object, reason, |_| true).await;
}

/// Waits until an event with `reason` about `object` satisfies `cond` (its message, its
/// count); returns that event as last written.
pub async fn wait_event_where(
    client: &kube::Client,
    object: &str,
    reason: &str,
    cond: impl Fn(&k8s_openapi::api::core::v1::Event) -> bool,
) -> k8s_openapi::api::core::v1::Event {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Event;
    use kube::runtime::watcher;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().fields(&format!("involvedObject.name={object}"));
    let mut stream = std::pin::pin!(watcher(events, cfg));
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = ev
                && e.reason.as_deref() == Some(reason)
            {
                if cond(&e) {
                    return Some(e);
                }
                last = e.message;
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        _ => panic!("no {reason} event for {object} as expected; the last said {last:?}"),
    }
}

/// Waits until the pod `name` is gone from the API.
pub async fn wait_gone(pods: &Api<Pod>, name: &str) {
    let gone = tokio::time::timeout(
        WAIT,
        await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_none()),
    )
    .await;
    assert!(
        matches!(gone, Ok(Ok(None))),
        "pod {name} still exists after {WAIT:?}"
    );
}

/// Clients fetching `http://127.0.0.1:PORT/` one request after another until stopped,
/// each answer checked.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    /// `clients` loops; an answer is good when it is 200 and `good(body)`.
    pub fn start(port: u16, clients: usize, good: fn(&str) -> bool) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match http_get(port, "/").await {
                            Ok((200, b)) if good(&b) => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients; returns the good answers and the failures.
    pub async fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// Overwrites the pod's status with a stale one (restart count kept at 0), so whatever it
/// shows afterwards was written by an agent after this point.
pub async fn mark_stale(pods: &Api<Pod>, name: &str, container: &str, image: &str) {
    let stale = serde_json::json!({"status": {"phase": "Unknown", "containerStatuses": [{
        "name": container, "image": image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "StaleForTest"}},
    }]}});
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&stale),
    )
    .await
    .unwrap();
}

/// A container pod (no runtimeClassName); `extra` goes into the container at 4 spaces,
/// `pod_extra` into the pod spec at 2.
pub fn cpod(
    name: &str,
    image: &str,
    restart: &str,
    command: &str,
    extra: &str,
    pod_extra: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 2\n{pod_extra}  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n{extra}"
    )
}
