//! The two transports exec and attach speak, behind one [`Client`]:
//! - a WebSocket with Kubernetes' channel subprotocols (kubectl since 1.30, the Python
//!   client, kube-rs): one message per chunk, its first byte the channel;
//! - SPDY/3.1 after `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version:
//!   v4.channel.k8s.io` (client-go's remotecommand before 1.30, kubectl with
//!   `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`): the client opens one stream per channel
//!   (`streamType: error|stdin|stdout|stderr|resize`), the server writes the outcome, a
//!   `Status`, on the error stream and closes the connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequest as _;
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::channel::{self, In, Protocol, ch};
use super::spdy::{self, Connection, StreamWriter};
use super::{Upgrade, bad_request, upgrade_of};

/// The remotecommand protocol served over SPDY (the error stream carries a `Status`,
/// terminals are resized over a stream of their own).
pub(super) const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// How long a SPDY client has to open the streams it asked for (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client asked to be connected.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wants {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Wants {
    pub(super) fn of(p: &super::Params) -> Wants {
        let tty = p.flag("tty");
        Wants {
            stdin: p.flag("stdin") || p.flag("input"),
            stdout: p.flag("stdout") || p.flag("output"),
            // A terminal has no separate stderr.
            stderr: !tty && (p.flag("stderr") || p.flag("error")),
            tty,
        }
    }

    /// The SPDY streams a client with these wants opens, by channel.
    fn spdy_streams(self) -> Vec<(&'static str, u8)> {
        [
            (true, "error", ch::ERROR),
            (self.stdin, "stdin", ch::STDIN),
            (self.stdout, "stdout", ch::STDOUT),
            (self.stderr, "stderr", ch::STDERR),
            (self.tty, "resize", ch::RESIZE),
        ]
        .into_iter()
        .filter(|(wanted, ..)| *wanted)
        .map(|(_, name, c)| (name, c))
        .collect()
    }
}

/// What the client sends.
pub(super) enum FromClient {
    Stdin(Bytes),
    CloseStdin,
    Resize(u16, u16),
}

/// Sends on the client's channels; cheap to clone.
#[derive(Clone)]
pub(super) enum Sender {
    Ws {
        proto: Protocol,
        tx: mpsc::Sender<Message>,
    },
    Spdy(Arc<HashMap<u8, StreamWriter>>),
}

impl Sender {
    /// Sends `data` on `channel` (dropped if the client opened no such stream); false
    /// once the client is gone.
    pub(super) async fn send(&self, channel: u8, data: &[u8]) -> bool {
        match self {
            Sender::Ws { proto, tx } => tx.send(super::framed(*proto, channel, data)).await.is_ok(),
            Sender::Spdy(writers) => match writers.get(&channel) {
                Some(w) => w.send(Bytes::copy_from_slice(data)).await,
                None => true,
            },
        }
    }

    /// The protocol whose error-channel messages the client reads.
    pub(super) fn protocol(&self) -> Protocol {
        match self {
            Sender::Ws { proto, .. } => *proto,
            Sender::Spdy(_) => Protocol::V4,
        }
    }
}

/// A connected client: where to send, what it sends (closed once it is gone), and how
/// its connection ends.
pub(super) struct Client {
    pub out: Sender,
    pub input: mpsc::Receiver<FromClient>,
    end: End,
}

enum End {
    /// The socket's writer, which closes it normally once every sender is gone.
    Ws(JoinHandle<()>),
    Spdy(Connection),
}

impl Client {
    fn websocket(socket: WebSocket, proto: Protocol) -> Client {
        let (ws_tx, mut ws_rx) = socket.split();
        let (tx, writer) = super::socket_writer(ws_tx);
        let (in_tx, input) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let frame = match msg {
                    Message::Binary(b) => channel::decode_binary(proto, &b),
                    Message::Text(t) => channel::decode_text(t.as_str()),
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                let m = match frame {
                    Some(In::Data(ch::STDIN, data)) => FromClient::Stdin(data),
                    Some(In::Close(ch::STDIN)) => FromClient::CloseStdin,
                    Some(In::Data(ch::RESIZE, data)) => match channel::resize(&data) {
                        Some((w, h)) => FromClient::Resize(w, h),
                        None => continue,
                    },
                    _ => continue,
                };
                if in_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        Client {
            out: Sender::Ws { proto, tx },
            input,
            end: End::Ws(writer),
        }
    }

    /// Serves SPDY on `io` and waits for the streams `wants` asks for; `None` if the
    /// client does not open them in time.
    async fn spdy(
        io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
        wants: Wants,
    ) -> Option<Client> {
        let (st_tx, mut st_rx) = mpsc::channel(8);
        let conn = spdy::serve_io(io, st_tx);
        let expected = wants.spdy_streams();
        let mut got = HashMap::new();
        let opened = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
            while got.len() < expected.len() {
                let s = st_rx.recv().await?;
                let kind = spdy::header(&s.headers, "streamtype").unwrap_or("");
                match expected.iter().find(|(n, _)| kind.eq_ignore_ascii_case(n)) {
                    Some((_, c)) => {
                        got.insert(*c, s);
                    }
                    None => s.out.reset().await,
                }
            }
            Some(())
        })
        .await;
        if !matches!(opened, Ok(Some(()))) {
            tracing::debug!("a SPDY client did not open the streams it asked for");
            conn.close();
            conn.closed().await;
            return None;
        }
        let (in_tx, input) = mpsc::channel(16);
        let mut writers = HashMap::new();
        for (c, mut s) in got {
            writers.insert(c, s.out.clone());
            let tx = in_tx.clone();
            match c {
                ch::STDIN => {
                    tokio::spawn(async move {
                        while let Some(d) = s.incoming.recv().await {
                            if tx.send(FromClient::Stdin(d)).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(FromClient::CloseStdin).await;
                    });
                }
                ch::RESIZE => {
                    tokio::spawn(async move {
                        // One JSON object per line, as Go's json.Encoder writes them.
                        let mut buf = Vec::new();
                        while let Some(d) = s.incoming.recv().await {
                            buf.extend_from_slice(&d);
                            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=i).collect();
                                if let Some((w, h)) = channel::resize(&line)
                                    && tx.send(FromClient::Resize(w, h)).await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                    });
                }
                _ => {}
            }
        }
        // The input closes when the connection is gone, not when stdin ends.
        let gone = conn.gone();
        tokio::spawn(async move {
            gone.await;
            drop(in_tx);
        });
        Some(Client {
            out: Sender::Spdy(Arc::new(writers)),
            input,
            end: End::Spdy(conn),
        })
    }

    /// Ends the session: every stream closed and the connection with them.
    pub(super) async fn end(self) {
        let Client { out, input, end } = self;
        drop(input);
        match end {
            End::Ws(writer) => {
                drop(out);
                let _ = writer.await;
            }
            End::Spdy(conn) => {
                if let Sender::Spdy(writers) = &out {
                    for w in writers.values() {
                        w.finish().await;
                    }
                }
                conn.close();
                conn.closed().await;
            }
        }
    }
}

/// Accepts exec's or attach's upgrade and runs `serve` with the client it connects.
pub(super) async fn accept<F, Fut>(
    mut req: Request,
    what: &'static str,
    wants: Wants,
    serve: F,
) -> Response
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if upgrade_of(req.headers()) == Some(Upgrade::Spdy) {
        let offered: Vec<String> = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect();
        if !offered.iter().any(|p| p == SPDY_PROTOCOL) {
            return bad_request(format!(
                "unable to negotiate a stream protocol: the client offers [{}], {what} over \
                 SPDY speaks {SPDY_PROTOCOL}",
                offered.join(", ")
            ));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on.await {
                Ok(io) => {
                    if let Some(client) = Client::spdy(TokioIo::new(io), wants).await {
                        serve(client).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "{what} upgrade failed"),
            }
        });
        return (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, "Upgrade"),
                (header::UPGRADE, "SPDY/3.1"),
                (
                    header::HeaderName::from_static("x-stream-protocol-version"),
                    SPDY_PROTOCOL,
                ),
            ],
        )
            .into_response();
    }
    let ws = WebSocketUpgrade::from_request(req, &()).await;
    match negotiate(ws, what) {
        Ok((ws, proto)) => ws
            .on_upgrade(move |socket| async move { serve(Client::websocket(socket, proto)).await }),
        Err(r) => r,
    }
}

#[allow(clippy::result_large_err)]
fn negotiate(
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    what: &str,
) -> Result<(WebSocketUpgrade, Protocol), Response> {
    let ws = ws.map_err(|e| {
        bad_request(format!(
            "{what} takes a WebSocket upgrade (subprotocol v5.channel.k8s.io) or SPDY/3.1 \
             ({SPDY_PROTOCOL}): {e}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spdy_client_opens_one_stream_per_wanted_channel() {
        let w = |stdin, stdout, stderr, tty| Wants {
            stdin,
            stdout,
            stderr,
            tty,
        };
        let names = |w: Wants| -> Vec<&str> { w.spdy_streams().iter().map(|(n, _)| *n).collect() };
        assert_eq!(
            names(w(false, true, true, false)),
            ["error", "stdout", "stderr"]
        );
        assert_eq!(
            names(w(true, true, false, true)),
            ["error", "stdin", "stdout", "resize"]
        );
        assert_eq!(names(w(false, false, false, false)), ["error"]);
        let p = super::super::Params::parse(Some("stdout=1&stderr=1&tty=1&stdin=1"));
        assert!(!Wants::of(&p).stderr, "a terminal has no stderr stream");
    }
}
