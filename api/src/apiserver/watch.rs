//! `?watch=1`: a chunked stream of newline-delimited watch events.

use super::objects::parse;
use super::request::{Output, Query};
use super::{Api, Selectors};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::store::{EventKind, ListOptions, Revision, StoreError, WatchError};
use crate::table;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Stream {
    res: &'static Resource,
    output: Output,
    first: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Stream {
    async fn send(&mut self, ty: &str, object: &[u8]) -> bool {
        let mut frame = Vec::with_capacity(object.len() + 32);
        frame.extend_from_slice(b"{\"type\":\"");
        frame.extend_from_slice(ty.as_bytes());
        frame.extend_from_slice(b"\",\"object\":");
        frame.extend_from_slice(object);
        frame.extend_from_slice(b"}\n");
        self.tx.send(Ok(Bytes::from(frame))).await.is_ok()
    }

    async fn send_object(&mut self, ty: &str, obj: &Value, raw: Option<&[u8]>) -> bool {
        let body = match self.output {
            Output::Table(include) if ty != "BOOKMARK" && ty != "ERROR" => {
                let t = table::table(
                    self.res.kind,
                    std::slice::from_ref(obj),
                    json!({}),
                    include,
                    self.first,
                );
                self.first = false;
                serde_json::to_vec(&t).unwrap_or_default()
            }
            _ => match raw {
                Some(r) => r.to_vec(),
                None => serde_json::to_vec(obj).unwrap_or_default(),
            },
        };
        self.send(ty, &body).await
    }

    async fn bookmark(&mut self, rev: Revision, initial_end: bool) -> bool {
        let mut md = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": md});
        self.send_object("BOOKMARK", &obj, None).await
    }

    async fn error(&mut self, e: ApiError) {
        let s = e.status();
        self.send_object("ERROR", &s, None).await;
    }
}

/// Serve a watch on `prefix`.
pub async fn serve(
    api: Arc<Api>,
    res: &'static Resource,
    prefix: String,
    q: &Query,
    output: Output,
    sel: Selectors,
) -> ApiResult<Response> {
    let timeout = q
        .int("timeoutSeconds")?
        .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s as u64));
    let bookmarks = q.flag("allowWatchBookmarks");
    let rv = q.get("resourceVersion").unwrap_or("");
    let send_initial = match q.get("sendInitialEvents") {
        Some("true") => true,
        Some(_) => false,
        None => rv.is_empty() || rv == "0",
    };
    // Where to start: replay after `from`, after sending the state at `from` if asked.
    let (from, initial) = if rv.is_empty() || rv == "0" || send_initial {
        let at = if rv.is_empty() || rv == "0" {
            None
        } else {
            Some(parse_rv(rv)?)
        };
        if send_initial {
            let list = api
                .store
                .list(
                    &prefix,
                    &ListOptions {
                        revision: at,
                        ..Default::default()
                    },
                )
                .map_err(|e| ApiError::from_store(e, res, ""))?;
            (list.revision, list.items)
        } else {
            (api.store.revision(), Vec::new())
        }
    } else {
        (parse_rv(rv)?, Vec::new())
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut stream = Stream {
        res,
        output,
        first: true,
        tx,
    };
    let watch = api.store.watch(&prefix, from);
    let mut shutdown = api.shutdown.clone();
    api.metrics.watches.fetch_add(1, Ordering::Relaxed);
    let metrics_api = api.clone();
    tokio::spawn(async move {
        let _guard = WatchGuard(metrics_api);
        let mut watch = match watch {
            Ok(w) => w,
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                stream
                    .error(ApiError::gone(format!(
                        "too old resource version: {requested} ({})",
                        compacted + 1
                    )))
                    .await;
                return;
            }
            Err(e) => {
                stream.error(ApiError::from_store(e, res, "")).await;
                return;
            }
        };
        for kv in &initial {
            let Ok(obj) = parse(kv) else { continue };
            if sel.matches(&obj) && !stream.send_object("ADDED", &obj, Some(&kv.value)).await {
                return;
            }
        }
        if send_initial && bookmarks && !stream.bookmark(from, true).await {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = stream.tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if !stream.bookmark(watch.revision(), false).await {
                        return;
                    }
                }
                ev = watch.next() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(WatchError::Lagged(_)) => {
                            stream.error(ApiError::gone("too old resource version: the watch fell behind; re-list and watch again")).await;
                            return;
                        }
                        Err(WatchError::Closed) => return,
                    };
                    let sent = match ev.kind {
                        // The common case (no selector, JSON out) forwards the stored
                        // bytes without parsing them: a thousand watchers must not
                        // mean a thousand JSON parses per write.
                        EventKind::Put if sel.is_empty() && stream.output == Output::Json => {
                            let ty = if ev.prev.is_none() { "ADDED" } else { "MODIFIED" };
                            stream.send(ty, &ev.kv.value).await
                        }
                        EventKind::Put => {
                            let Ok(obj) = parse(&ev.kv) else { continue };
                            let now = sel.matches(&obj);
                            // An object that starts or stops matching the selectors is
                            // ADDED or DELETED for this watcher, as in Kubernetes.
                            let before = match &ev.prev {
                                None => false,
                                Some(p) => sel.is_empty() || parse(p).is_ok_and(|o| sel.matches(&o)),
                            };
                            match (before, now) {
                                (false, true) => stream.send_object("ADDED", &obj, Some(&ev.kv.value)).await,
                                (true, true) => stream.send_object("MODIFIED", &obj, Some(&ev.kv.value)).await,
                                (true, false) => stream.send_object("DELETED", &obj, Some(&ev.kv.value)).await,
                                (false, false) => true,
                            }
                        }
                        EventKind::Delete => {
                            let Ok(mut obj) = parse(&ev.kv) else { continue };
                            if !sel.matches(&obj) {
                                continue;
                            }
                            obj["metadata"]["resourceVersion"] = json!(ev.revision.to_string());
                            stream.send_object("DELETED", &obj, None).await
                        }
                    };
                    if !sent {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .map_err(ApiError::internal)
}

fn parse_rv(rv: &str) -> ApiResult<Revision> {
    rv.parse::<Revision>().map_err(|_| {
        ApiError::bad_request(format!("invalid resource version {rv:?}: must be a number"))
    })
}

/// Counts the watch in the open-watches gauge for as long as its task lives.
struct WatchGuard(Arc<Api>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.metrics.watches.fetch_sub(1, Ordering::Relaxed);
    }
}
