//! The out-of-process Wasm host: a [`WasmExecutor`] behind a unix socket, so Wasm
//! workloads keep running while the node agent restarts or upgrades.
//!
//! The protocol is newline-delimited JSON. The client sends requests tagged with a
//! sequence number; the host answers each with the same number, in any order (a `wait`
//! answers when the container exits; other requests go on meanwhile). A client that sends
//! `events` receives every exit from then on as `{"event": ...}` lines.
//!
//! ```text
//! → {"seq":1,"op":"run","spec":{...}}
//! ← {"seq":1,"ok":{"id":"c1","kind":"Module","state":{"state":"running",...},...}}
//! → {"seq":2,"op":"events"}
//! ← {"seq":2,"ok":null}
//! ← {"event":{"id":"c1","finishedAt":...,"status":{"code":0,"reason":"Completed",...}}}
//! ```
//!
//! Start with [`serve`] (in the host process) and [`Client::connect`] (in the agent).
//! Containers live as long as the host process; a reconnecting agent calls
//! [`Client::subscribe`] and then [`Executor::list`] to re-adopt them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::executor::{ContainerInfo, ContainerSpec, ErrorKind, Executor, ExitEvent, ExitStatus};
use crate::wasm::{WasmConfig, WasmExecutor};

/// Longest protocol line accepted (a spec with a long env is still far below).
const MAX_LINE: usize = 4 << 20;

/// Errors of the host and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or state-directory I/O.
    #[error("wasm host {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another host already answers on the socket.
    #[error("a wasm host is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// The host is gone (connection closed or refused).
    #[error("wasm host unavailable: {0}")]
    Unavailable(String),
    /// A malformed message.
    #[error("wasm host protocol: {0}")]
    Protocol(String),
    /// An error the host reported for a request.
    #[error("{message}")]
    Remote {
        /// The host-side classification.
        kind: ErrorKind,
        /// The host-side message.
        message: String,
    },
    /// Setting up the executor failed.
    #[error(transparent)]
    Wasm(#[from] crate::wasm::Error),
}

impl Error {
    /// How the agent should report this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::AlreadyRunning(_) | Error::Protocol(_) => ErrorKind::Internal,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Remote { kind, .. } => *kind,
            Error::Wasm(e) => e.kind(),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// One request from the agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Request {
    Run { spec: Box<ContainerSpec> },
    Stop { id: String, grace: Duration },
    Wait { id: String },
    Remove { id: String },
    List,
    Events,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    seq: u64,
    #[serde(flatten)]
    request: Request,
}

/// One line from the host: a reply (`seq` with `ok` or `error`) or an exit event.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RemoteError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<ExitEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RemoteError {
    kind: ErrorKind,
    message: String,
}

/// Runs the Wasm host until the process ends: creates the executor (its compiled-code
/// cache in `state_dir/cache`) and serves it on `socket_path` (mode 0600).
pub async fn serve(socket_path: &Path, state_dir: &Path) -> Result<(), Error> {
    create_private_dir(state_dir)?;
    let executor = WasmExecutor::new(WasmConfig::new(state_dir.join("cache")))?;
    let listener = bind(socket_path).await?;
    tracing::info!(socket = %socket_path.display(), pooling = executor.pooling(), "wasm host listening");
    serve_on(listener, executor).await;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))
}

/// Binds the host socket (mode 0600), replacing a stale socket file but refusing to
/// steal the socket of a host that still answers.
pub async fn bind(socket_path: &Path) -> Result<UnixListener, Error> {
    if socket_path.exists() {
        if UnixStream::connect(socket_path).await.is_ok() {
            return Err(Error::AlreadyRunning(socket_path.to_owned()));
        }
        std::fs::remove_file(socket_path)
            .map_err(io(format!("remove stale {}", socket_path.display())))?;
    }
    if let Some(dir) = socket_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    let listener =
        UnixListener::bind(socket_path).map_err(io(format!("bind {}", socket_path.display())))?;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", socket_path.display())))?;
    Ok(listener)
}

/// Serves `executor` to every client that connects to `listener`, until dropped (which
/// also closes every client connection; the containers keep running in `executor`).
pub async fn serve_on(listener: UnixListener, executor: WasmExecutor) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, executor.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "wasm host accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: UnixStream, executor: WasmExecutor) {
    let (read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
    // Owned by this future: when it ends or is dropped, the writer and with it the
    // socket close, even while detached request tasks still hold senders.
    let mut writer = tokio::task::JoinSet::new();
    writer.spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&message) else {
                continue;
            };
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                return;
            }
        }
    });
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%error, "wasm host: bad client line, closing");
                break;
            }
        };
        let envelope: Envelope = match serde_json::from_slice(&line) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, "wasm host: malformed request, closing");
                break;
            }
        };
        let executor = executor.clone();
        let out = out_tx.clone();
        tokio::spawn(async move {
            let seq = envelope.seq;
            let reply = answer(&executor, envelope.request, &out).await;
            let message = match reply {
                Ok(ok) => Message {
                    seq: Some(seq),
                    ok: Some(ok),
                    ..Message::default()
                },
                Err(error) => Message {
                    seq: Some(seq),
                    error: Some(RemoteError {
                        kind: error.kind(),
                        message: error.to_string(),
                    }),
                    ..Message::default()
                },
            };
            let _ = out.send(message).await;
        });
    }
    // The client is gone: dropping the writer (and its receiver) ends the event forwarder
    // and pending waits at their next send, or when they notice the channel closed.
    writer.abort_all();
}

async fn answer(
    executor: &WasmExecutor,
    request: Request,
    out: &mpsc::Sender<Message>,
) -> Result<Value, crate::Error> {
    let json = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| crate::Error::Host(Error::Protocol(e.to_string())))
    };
    match request {
        Request::Run { spec } => json(serde_json::to_value(executor.run(*spec).await?)),
        Request::Stop { id, grace } => {
            executor.stop(&id, grace).await?;
            Ok(Value::Null)
        }
        Request::Wait { id } => {
            // A wait may last for ever: give up when the client goes away.
            tokio::select! {
                status = executor.wait(&id) => json(serde_json::to_value(status?)),
                () = out.closed() => Ok(Value::Null),
            }
        }
        Request::Remove { id } => {
            executor.remove(&id).await?;
            Ok(Value::Null)
        }
        Request::List => json(serde_json::to_value(executor.list().await?)),
        Request::Events => {
            let mut events = executor.subscribe();
            let out = out.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            let message = Message {
                                event: Some(event),
                                ..Message::default()
                            };
                            if out.send(message).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "wasm host: event subscriber lagged");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(Value::Null)
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes; `None` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (&buf[..pos], pos + 1),
            None => (buf, buf.len()),
        };
        line.extend_from_slice(chunk);
        let found = done != buf.len() || buf.last() == Some(&b'\n');
        reader.consume(done);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::other("protocol line too long"));
        }
        if found {
            return Ok(Some(line));
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, Error>>>>>>;

/// The agent's handle on a running Wasm host; implements [`Executor`].
///
/// One connection, shared by clones; requests run concurrently over it. When the host
/// goes away every call fails with [`ErrorKind::Unavailable`]: connect again.
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next: Arc<AtomicU64>,
    events: broadcast::Sender<ExitEvent>,
    closed: watch::Receiver<bool>,
}

impl Client {
    /// Connects to the host at `socket_path` and subscribes to its exit events.
    pub async fn connect(socket_path: impl AsRef<Path>) -> Result<Client, Error> {
        let socket_path = socket_path.as_ref();
        let stream = UnixStream::connect(socket_path)
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {e}", socket_path.display())))?;
        let (read, mut write) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
        tokio::spawn(async move {
            while let Some(line) = out_rx.recv().await {
                if write.write_all(&line).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let pending_for_reader = pending.clone();
        let (events, _) = broadcast::channel(1024);
        let events_for_reader = events.clone();
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(async move {
            read_replies(BufReader::new(read), pending_for_reader, events_for_reader).await;
            let _ = closed_tx.send(true);
        });
        let client = Client {
            out,
            pending,
            next: Arc::new(AtomicU64::new(1)),
            events,
            closed,
        };
        client.call(Request::Events).await?;
        Ok(client)
    }

    /// Resolves once the connection to the host is gone (the host died or closed it):
    /// every call fails from then on, and no more exits arrive.
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|gone| *gone).await;
    }

    /// Exit events from now on (see [`WasmExecutor::subscribe`]). Subscribe first, then
    /// `list()`, so that no exit falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.events.subscribe()
    }

    async fn call(&self, request: Request) -> Result<Value, Error> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(map) = pending.as_mut() else {
                return Err(Error::Unavailable("connection closed".into()));
            };
            map.insert(seq, tx);
        }
        let mut line = serde_json::to_vec(&Envelope { seq, request })
            .map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        if self.out.send(line).await.is_err() {
            return Err(Error::Unavailable("connection closed".into()));
        }
        rx.await
            .map_err(|_| Error::Unavailable("connection closed".into()))?
    }

    async fn call_as<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, Error> {
        let value = self.call(request).await?;
        serde_json::from_value(value).map_err(|e| Error::Protocol(e.to_string()))
    }
}

async fn read_replies<R: AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    pending: Pending,
    events: broadcast::Sender<ExitEvent>,
) {
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%error, "wasm host connection failed");
                break;
            }
        };
        let message: Message = match serde_json::from_slice(&line) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "wasm host sent a malformed message");
                continue;
            }
        };
        if let Some(event) = message.event {
            let _ = events.send(event);
            continue;
        }
        let Some(seq) = message.seq else { continue };
        let reply = match (message.ok, message.error) {
            (_, Some(e)) => Err(Error::Remote {
                kind: e.kind,
                message: e.message,
            }),
            (ok, None) => Ok(ok.unwrap_or(Value::Null)),
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(|map| map.remove(&seq));
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }
    // Dropping the senders fails every call still waiting, and refuses new ones.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
}

impl Executor for Client {
    fn handles(&self, path: &Path) -> bool {
        matches!(crate::wasm::sniff_file(path), Ok(Some(_)))
    }

    async fn run(&self, spec: ContainerSpec) -> Result<ContainerInfo, crate::Error> {
        Ok(self
            .call_as(Request::Run {
                spec: Box::new(spec),
            })
            .await?)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), crate::Error> {
        self.call(Request::Stop {
            id: id.to_string(),
            grace,
        })
        .await?;
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, crate::Error> {
        Ok(self.call_as(Request::Wait { id: id.to_string() }).await?)
    }

    async fn remove(&self, id: &str) -> Result<(), crate::Error> {
        self.call(Request::Remove { id: id.to_string() }).await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, crate::Error> {
        Ok(self.call_as(Request::List).await?)
    }
}
