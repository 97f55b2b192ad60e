//! Serving a `wasi:http/proxy` component: hyper http1 on the container's listeners, one
//! fresh store and instance per request from a pre-instantiated `ProxyPre`.
//!
//! A request that outlives the deadline is interrupted (its store is dropped at the next
//! epoch yield) and answered 504; a trap or guest error is answered 500 and logged. Either
//! way the connection and the service go on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::guest::{self, Accounting, CpuBudget, Guard, P2State};
use super::outgoing::Outgoing;
use crate::executor::{ContainerSpec, EXIT_KILLED, ExitReason, ExitStatus};
use crate::logs::{LogWriter, Stream};

/// One HTTP service: what each request needs to build its store.
pub(crate) struct Service {
    pub(crate) pre: ProxyPre<P2State>,
    pub(crate) spec: Arc<ContainerSpec>,
    pub(crate) log: LogWriter,
    pub(crate) cpu: Option<Arc<CpuBudget>>,
    pub(crate) account: Arc<Accounting>,
    pub(crate) timeout: Duration,
}

type Response = hyper::Response<HyperOutgoingBody>;

/// Aborts a spawned task when dropped (hyper dropping a request future must also end
/// the guest that serves it).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Service {
    fn store(&self) -> Result<Store<P2State>, super::Error> {
        let wasi = guest::wasi_builder(&self.spec, &self.log)?.build();
        let state = P2State {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outgoing(self.spec.outgoing.clone().map(Arc::new)),
            guard: Guard::new(
                self.spec.limits.memory_bytes,
                self.cpu.clone(),
                self.account.clone(),
            ),
        };
        let mut store = Store::new(self.pre.engine(), state);
        guest::arm(&mut store);
        Ok(store)
    }

    async fn handle(self: Arc<Self>, req: hyper::Request<Incoming>) -> Response {
        let id = self.spec.id.as_str();
        let deadline = Instant::now() + self.timeout;
        let mut store = match self.store() {
            Ok(store) => store,
            Err(error) => {
                tracing::warn!(container = id, %error, "cannot prepare request store");
                return plain(500, "internal server error\n");
            }
        };
        let (tx, rx) = oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| Ok((req, store.data_mut().http().new_response_outparam(tx)?)));
        let (req, out) = match prepared {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(container = id, error = %format!("{error:#}"), "bad request");
                return plain(400, "bad request\n");
            }
        };
        let pre = self.pre.clone();
        let account = self.account.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            let result = account
                .metered(async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                })
                .await;
            let oom = store.data_mut().guard.limiter.exceeded;
            guest::exit_status(result, oom)
        }));

        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(response))) => {
                // The guest may still be writing the body: let it, until the deadline.
                let service = self.clone();
                tokio::spawn(async move { service.finish(task, deadline).await });
                response
            }
            Ok(Ok(Err(code))) => {
                self.failed(&format!("handler answered with error {code:?}"));
                plain(500, "internal server error\n")
            }
            Ok(Err(_)) => {
                // The guest dropped the response outparam: it ended without answering.
                let status = match tokio::time::timeout_at(deadline, join(task)).await {
                    Ok(status) => status,
                    Err(_) => return self.timed_out(),
                };
                self.failed(&describe(&status));
                plain(500, "internal server error\n")
            }
            Err(_) => {
                drop(task);
                self.timed_out()
            }
        }
    }

    async fn finish(&self, task: AbortOnDrop<ExitStatus>, deadline: Instant) {
        match tokio::time::timeout_at(deadline, join(task)).await {
            Ok(status) if status.reason == ExitReason::Completed => {}
            Ok(status) => self.failed(&describe(&status)),
            Err(_) => self.failed("response body not finished before the deadline"),
        }
    }

    fn failed(&self, what: &str) {
        tracing::warn!(
            container = self.spec.id.as_str(),
            error = what,
            "request failed"
        );
        self.log
            .line(Stream::Stderr, &format!("skiff: request failed: {what}"));
    }

    fn timed_out(&self) -> Response {
        let what = format!("request deadline of {:?} exceeded", self.timeout);
        self.failed(&what);
        plain(504, "gateway timeout: the handler did not answer in time\n")
    }
}

async fn join(mut task: AbortOnDrop<ExitStatus>) -> ExitStatus {
    match (&mut task.0).await {
        Ok(status) => status,
        Err(error) => ExitStatus {
            code: 1,
            reason: ExitReason::Error,
            message: format!("handler task failed: {error}"),
        },
    }
}

fn describe(status: &ExitStatus) -> String {
    if status.message.is_empty() {
        "handler returned without setting a response".to_string()
    } else {
        format!("{}: {}", status.reason, status.message)
    }
}

fn plain(status: u16, body: &'static str) -> Response {
    let mut response = hyper::Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves until a stop is requested; then stops accepting (freeing the ports at once),
/// lets in-flight requests finish for up to the grace period, and kills the rest.
pub(crate) async fn serve(
    service: Arc<Service>,
    listeners: Vec<TcpListener>,
    mut stop: watch::Receiver<Option<Duration>>,
) -> ExitStatus {
    let id = service.spec.id.clone();
    let (conn_tx, mut conn_rx) = mpsc::channel::<(TcpStream, OwnedSemaphorePermit)>(64);
    let mut acceptors = JoinSet::new();
    // A public port must not be held by clients that connect and never finish a
    // request: connections past the cap are closed at once, and each request's headers
    // must arrive within the header-read timeout (see `connection`).
    let cap = service
        .spec
        .http
        .as_ref()
        .map_or(1024, |h| h.max_connections.max(1));
    let permits = Arc::new(Semaphore::new(cap));
    for listener in listeners {
        let conn_tx = conn_tx.clone();
        let id = id.clone();
        let permits = permits.clone();
        acceptors.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            tracing::debug!(container = id.as_str(), %peer, "connection refused: too many open connections");
                            drop(stream);
                            continue;
                        };
                        // A response goes out as headers, then body chunks as the guest
                        // writes them: with Nagle on, a chunk waits for the peer's
                        // delayed ACK (~40 ms), which showed as a p99 of 25-35 ms.
                        let _ = stream.set_nodelay(true);
                        if conn_tx.send((stream, permit)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        // Per-connection errors (EMFILE, ECONNABORTED): keep accepting.
                        tracing::warn!(container = id.as_str(), %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(conn_tx);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            stream = conn_rx.recv() => {
                let Some((stream, permit)) = stream else { break Duration::ZERO };
                let conn = connection(service.clone(), stream, shutdown_rx.clone());
                connections.spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
            requested = stop.wait_for(Option::is_some) => {
                break match requested {
                    Ok(grace) => grace.unwrap_or_default(),
                    // The executor is gone: nobody can stop us later either.
                    Err(_) => Duration::ZERO,
                };
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };

    // Stop accepting: dropping the listeners frees the ports now, not after the drain.
    acceptors.shutdown().await;
    drop(conn_rx);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if drained {
        tracing::info!(container = id.as_str(), "http service drained and stopped");
        ExitStatus {
            code: 0,
            reason: ExitReason::Completed,
            message: "stopped by request after draining".to_string(),
        }
    } else {
        connections.shutdown().await;
        tracing::info!(
            container = id.as_str(),
            ?grace,
            "http service killed after grace"
        );
        ExitStatus {
            code: EXIT_KILLED,
            reason: ExitReason::Stopped,
            message: format!("stopped: requests still running after a grace of {grace:?}"),
        }
    }
}

async fn connection(service: Arc<Service>, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let header_timeout = service
        .spec
        .http
        .as_ref()
        .map_or(Duration::from_secs(10), |h| h.header_read_timeout);
    let id = service.spec.id.clone();
    let handler = hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(service.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), handler);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(container = id.as_str(), %error, "connection ended with an error");
    }
}
