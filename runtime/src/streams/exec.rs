//! exec and attach over WebSocket channels.
//!
//! exec runs a process in a Linux container (`skiff container-exec`); Wasm containers
//! have no processes to add, so exec into one is refused before the upgrade. attach
//! streams what the container writes from now on (read from its log, for Wasm and Linux
//! containers alike); the containers' stdin is not kept open, so attach carries output
//! only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, StatusCode};
use skiff_shims::oci::exec::Report;
use skiff_shims::oci::session::{ExecIo, ExecSession};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::channel::{self, In, Protocol, ch};
use super::{Params, StreamState, bad_request, pod_of, running};
use crate::executors::Runtime;
use crate::logserver::status;
use crate::pod::logs::{Follower, parse_line};

/// How long output may still come after the process ended (a background child holding
/// the pipes open does not hold the session).
const DRAIN: Duration = Duration::from_secs(2);

/// How often attach looks for new output.
const ATTACH_POLL: Duration = Duration::from_millis(50);

/// What the client asked to be connected.
#[derive(Clone, Copy, Debug)]
struct Wants {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Wants {
    fn of(p: &Params) -> Wants {
        let tty = p.flag("tty");
        Wants {
            stdin: p.flag("stdin") || p.flag("input"),
            stdout: p.flag("stdout") || p.flag("output"),
            // A terminal has no separate stderr.
            stderr: !tty && (p.flag("stderr") || p.flag("error")),
            tty,
        }
    }
}

#[allow(clippy::result_large_err)]
fn negotiate(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    what: &str,
) -> Result<(WebSocketUpgrade, Protocol), Response> {
    let ws = ws.map_err(|e| {
        bad_request(format!(
            "{what} takes a WebSocket upgrade (subprotocol v5.channel.k8s.io): {e}"
        ))
    })?;
    let ws = ws.protocols(channel::PROTOCOLS);
    let chosen = ws.selected_protocol().and_then(|v| v.to_str().ok());
    let asked = ws.requested_protocols().next().is_some();
    match Protocol::of(chosen) {
        Some(p) if chosen.is_some() || !asked => Ok((ws, p)),
        _ => Err(bad_request(format!(
            "none of the requested WebSocket subprotocols is served; {what} speaks {}",
            channel::PROTOCOLS.join(", ")
        ))),
    }
}

/// `/exec/{ns}/{pod}/{container}`.
pub(super) async fn exec(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let view = match pod_of(&st, &headers, &ns, &pod) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (_, runtime, id) = match running(&view, &pod, &container) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if runtime == Runtime::Wasm {
        return bad_request(format!(
            "Wasm containers have no processes: container {container} of pod {pod} is a Wasm \
             guest on the node's Wasm host, so there is nothing to exec into (logs, attach and \
             port-forward work)"
        ));
    }
    let params = Params::parse(q.as_deref());
    let argv = params.all("command").to_vec();
    if argv.is_empty() {
        return bad_request("you must specify at least one command for the container".into());
    }
    let Some(oci) = st.oci.clone() else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "this node runs no Linux containers".into(),
        );
    };
    let wants = Wants::of(&params);
    let (ws, proto) = match negotiate(ws, "exec") {
        Ok(x) => x,
        Err(r) => return r,
    };
    ws.on_upgrade(move |socket| async move {
        let session = oci.exec(&id, &argv, wants.tty).await;
        run_exec(socket, proto, session, wants).await;
    })
}

/// Sends framed messages, one writer for the socket.
#[derive(Clone)]
struct Sender {
    proto: Protocol,
    tx: mpsc::Sender<Message>,
}

impl Sender {
    async fn send(&self, channel: u8, data: &[u8]) -> bool {
        self.tx
            .send(super::framed(self.proto, channel, data))
            .await
            .is_ok()
    }
}

/// Copies a stream to a channel (or drops it, if the client did not ask for it).
async fn pump(mut from: impl AsyncRead + Unpin, to: Option<(Sender, u8)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some((s, c)) = &to
                    && !s.send(*c, &buf[..n]).await
                {
                    return;
                }
            }
        }
    }
}

/// What the client sends: stdin, its close, resizes; `None` when it is gone.
enum FromClient {
    Stdin(Bytes),
    CloseStdin,
    Resize(u16, u16),
}

async fn next_from_client(
    rx: &mut futures::stream::SplitStream<WebSocket>,
    proto: Protocol,
) -> Option<Option<FromClient>> {
    let msg = rx.next().await?.ok()?;
    let frame = match msg {
        Message::Binary(b) => channel::decode_binary(proto, &b),
        Message::Text(t) => channel::decode_text(t.as_str()),
        Message::Close(_) => return None,
        Message::Ping(_) | Message::Pong(_) => return Some(None),
    };
    Some(match frame {
        Some(In::Data(ch::STDIN, data)) => Some(FromClient::Stdin(data)),
        Some(In::Close(ch::STDIN)) => Some(FromClient::CloseStdin),
        Some(In::Data(ch::RESIZE, data)) => {
            channel::resize(&data).map(|(w, h)| FromClient::Resize(w, h))
        }
        _ => None,
    })
}

async fn run_exec(
    socket: WebSocket,
    proto: Protocol,
    session: Result<ExecSession, skiff_shims::Error>,
    wants: Wants,
) {
    let (ws_tx, mut ws_rx) = socket.split();
    let (tx, writer) = super::socket_writer(ws_tx);
    let out = Sender { proto, tx };
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            out.send(ch::ERROR, &channel::failure_message(proto, &e.to_string()))
                .await;
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    let pid = session.pid();
    let finished = Arc::new(AtomicBool::new(false));
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<FromClient>>(16);
    let mut outputs = Vec::new();
    let io = session.io.take();
    let stdin_task = match io {
        Some(ExecIo::Pipes {
            mut stdin,
            stdout,
            stderr,
        }) => {
            outputs.push(tokio::spawn(pump(
                stdout,
                wants.stdout.then(|| (out.clone(), ch::STDOUT)),
            )));
            outputs.push(tokio::spawn(pump(
                stderr,
                wants.stderr.then(|| (out.clone(), ch::STDERR)),
            )));
            let want_stdin = wants.stdin;
            tokio::spawn(async move {
                if !want_stdin {
                    return;
                }
                while let Some(Some(m)) = stdin_rx.recv().await {
                    match m {
                        FromClient::Stdin(d) => {
                            if stdin.write_all(&d).await.is_err() {
                                return;
                            }
                        }
                        FromClient::CloseStdin => return,
                        FromClient::Resize(..) => {}
                    }
                }
            })
        }
        Some(ExecIo::Terminal(term)) => {
            let (r, mut w) = match term.split() {
                Ok(x) => x,
                Err(e) => {
                    session.kill();
                    out.send(ch::ERROR, &channel::failure_message(proto, &e.to_string()))
                        .await;
                    drop(out);
                    let _ = writer.await;
                    return;
                }
            };
            outputs.push(tokio::spawn(pump(
                r,
                wants.stdout.then(|| (out.clone(), ch::STDOUT)),
            )));
            let want_stdin = wants.stdin;
            tokio::spawn(async move {
                while let Some(Some(m)) = stdin_rx.recv().await {
                    match m {
                        FromClient::Stdin(d)
                            if want_stdin
                                && (w.write_all(&d).await.is_err() || w.flush().await.is_err()) =>
                        {
                            return;
                        }
                        FromClient::Resize(width, height) => {
                            let _ = term.resize(width, height);
                        }
                        _ => {}
                    }
                }
            })
        }
        None => tokio::spawn(async {}),
    };
    let done = {
        let finished = finished.clone();
        async move {
            let report = session.wait().await;
            finished.store(true, Ordering::SeqCst);
            // The output ends with the process, or shortly after.
            let _ = tokio::time::timeout(DRAIN, futures::future::join_all(outputs)).await;
            report
        }
    };
    tokio::pin!(done);
    let report = loop {
        tokio::select! {
            r = &mut done => break Some(r),
            m = next_from_client(&mut ws_rx, proto) => match m {
                Some(Some(m)) => { let _ = stdin_tx.send(Some(m)).await; }
                Some(None) => {}
                None => {
                    // The client went away: the process goes too.
                    if !finished.load(Ordering::SeqCst) {
                        pid.kill();
                    }
                    break None;
                }
            }
        }
    };
    stdin_task.abort();
    if let Some(report) = report {
        let msg = match report {
            Report::Exited(code) => channel::exit_message(proto, code),
            Report::Failed(m) => Some(channel::failure_message(proto, &m)),
        };
        if let Some(m) = msg {
            out.send(ch::ERROR, &m).await;
        }
    } else {
        // Let the helper finish and its report be removed.
        let _ = done.await;
    }
    drop(out);
    let _ = writer.await;
}

/// `/attach/{ns}/{pod}/{container}`: the container's output from now on.
pub(super) async fn attach(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let view = match pod_of(&st, &headers, &ns, &pod) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (c, _, _) = match running(&view, &pod, &container) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(path) = c.current.clone() else {
        return bad_request(format!(
            "container {container} in pod {pod} has no output yet"
        ));
    };
    let wants = Wants::of(&Params::parse(q.as_deref()));
    let (ws, proto) = match negotiate(ws, "attach") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let registry = st.registry.clone();
    ws.on_upgrade(move |socket| async move {
        let still_running = move || {
            registry
                .get(&ns, &pod)
                .and_then(|v| {
                    v.containers
                        .get(&container)
                        .map(|c| c.running && c.current.as_ref() == Some(&path))
                })
                .unwrap_or(false)
        };
        run_attach(
            socket,
            proto,
            c.current.clone().unwrap_or_default(),
            wants,
            still_running,
        )
        .await;
    })
}

async fn run_attach(
    socket: WebSocket,
    proto: Protocol,
    log: std::path::PathBuf,
    wants: Wants,
    still_running: impl Fn() -> bool + Send + 'static,
) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut follower = Follower::new(&log, Follower::size(&log));
    let frame = |c: u8, d: &[u8]| super::framed(proto, c, d);
    loop {
        let text = follower.poll();
        for line in text.lines() {
            let Some(l) = parse_line(line) else { continue };
            let stderr = l.stream == "stderr";
            let mut bytes = l.text.as_bytes().to_vec();
            if l.full {
                bytes.push(b'\n');
            }
            let channel = if stderr && !wants.tty {
                ch::STDERR
            } else {
                ch::STDOUT
            };
            let wanted = if channel == ch::STDERR {
                wants.stderr
            } else {
                wants.stdout
            };
            if wanted && ws_tx.send(frame(channel, &bytes)).await.is_err() {
                return;
            }
        }
        if text.is_empty() && !still_running() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(ATTACH_POLL) => {}
            m = ws_rx.next() => match m {
                // Input is not forwarded: the container's stdin is not kept open.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
    if let Some(m) = channel::exit_message(proto, 0) {
        let _ = ws_tx.send(frame(ch::ERROR, &m)).await;
    }
    let _ = ws_tx.send(super::normal_close()).await;
}
