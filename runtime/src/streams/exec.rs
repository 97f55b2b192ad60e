//! exec and attach, over WebSocket channels or SPDY ([`super::client`]).
//!
//! exec runs a process in a Linux container (`skiff container-exec`); Wasm containers
//! have no processes to add, so exec into one is refused before the upgrade. attach
//! streams what the container writes from now on (read from its log, for Wasm and Linux
//! containers alike) and, for a Linux container started with `stdin: true`, writes the
//! client's input to the container's stdin (a FIFO the container holds open, so it stays
//! open between attaches; `stdinOnce` is not honoured).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::response::Response;
use http::StatusCode;
use skiff_shims::oci::exec::Report;
use skiff_shims::oci::session::{ExecIo, ExecSession};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::channel::{self, ch};
use super::client::{Client, FromClient, Sender, Wants, accept};
use super::{Params, StreamState, bad_request, pod_of, running};
use crate::executors::Runtime;
use crate::logserver::status;
use crate::pod::logs::{Follower, parse_line};

/// How long output may still come after the process ended (a background child holding
/// the pipes open does not hold the session).
const DRAIN: Duration = Duration::from_secs(2);

/// How often attach looks for new output.
const ATTACH_POLL: Duration = Duration::from_millis(50);

/// `/exec/{ns}/{pod}/{container}`.
pub(super) async fn exec(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let view = match pod_of(&st, req.headers(), &ns, &pod) {
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
    accept(req, "exec", wants, move |client| async move {
        let session = oci.exec(&id, &argv, wants.tty).await;
        run_exec(client, session, wants).await;
    })
    .await
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

async fn run_exec(
    mut client: Client,
    session: Result<ExecSession, skiff_shims::Error>,
    wants: Wants,
) {
    let out = client.out.clone();
    let proto = out.protocol();
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            out.send(ch::ERROR, &channel::failure_message(proto, &e.to_string()))
                .await;
            drop(out);
            client.end().await;
            return;
        }
    };
    let pid = session.pid();
    let finished = Arc::new(AtomicBool::new(false));
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<FromClient>(16);
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
                while let Some(m) = stdin_rx.recv().await {
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
                    client.end().await;
                    return;
                }
            };
            outputs.push(tokio::spawn(pump(
                r,
                wants.stdout.then(|| (out.clone(), ch::STDOUT)),
            )));
            let want_stdin = wants.stdin;
            tokio::spawn(async move {
                while let Some(m) = stdin_rx.recv().await {
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
    let pumps: Vec<_> = outputs.iter().map(|o| o.abort_handle()).collect();
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
            m = client.input.recv() => match m {
                Some(m) => { let _ = stdin_tx.send(m).await; }
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
    // A background child may still hold the pipes: its output is not waited for.
    for p in pumps {
        p.abort();
    }
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
    client.end().await;
}

/// `/attach/{ns}/{pod}/{container}`: the container's output from now on.
pub(super) async fn attach(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let view = match pod_of(&st, req.headers(), &ns, &pod) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (c, runtime, id) = match running(&view, &pod, &container) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(path) = c.current.clone() else {
        return bad_request(format!(
            "container {container} in pod {pod} has no output yet"
        ));
    };
    let wants = Wants::of(&Params::parse(q.as_deref()));
    // A container started with `stdin: true` reads what the client types; others (and
    // Wasm guests) have no stdin to write to, and the input is dropped, as kubectl warns.
    let stdin = match (&st.oci, runtime) {
        (Some(oci), Runtime::Oci) if wants.stdin => match oci.stdin(&id) {
            Ok(s) => s,
            Err(e) => return bad_request(e.to_string()),
        },
        _ => None,
    };
    let registry = st.registry.clone();
    accept(req, "attach", wants, move |client| async move {
        let log = path.clone();
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
        run_attach(client, log, wants, stdin, still_running).await;
    })
    .await
}

async fn run_attach(
    mut client: Client,
    log: std::path::PathBuf,
    wants: Wants,
    mut stdin: Option<tokio::net::unix::pipe::Sender>,
    still_running: impl Fn() -> bool + Send + 'static,
) {
    let out = client.out.clone();
    let mut follower = Follower::new(&log, Follower::size(&log));
    'follow: loop {
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
            if wanted && !out.send(channel, &bytes).await {
                break 'follow;
            }
        }
        if text.is_empty() && !still_running() {
            if let Some(m) = channel::exit_message(out.protocol(), 0) {
                out.send(ch::ERROR, &m).await;
            }
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(ATTACH_POLL) => {}
            m = client.input.recv() => match m {
                None => break,
                Some(FromClient::Stdin(d)) => {
                    if let Some(w) = &mut stdin
                        && w.write_all(&d).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // The container's stdin stays open for the next attach (no `stdinOnce`).
                Some(FromClient::CloseStdin) => stdin = None,
                Some(FromClient::Resize(..)) => {}
            },
        }
    }
    drop(out);
    client.end().await;
}
