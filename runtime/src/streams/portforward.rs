//! Port-forward into a pod's network namespace: connections are made to the pod's
//! loopback from inside its namespace, so it works for Linux containers and Wasm services
//! alike (both listen there).
//!
//! Three transports, one per kind of client:
//! - SPDY/3.1 inside WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`), kubectl's
//!   default since 1.31;
//! - SPDY/3.1 after `Upgrade: SPDY/3.1`, older kubectl and client-go;
//! - WebSocket channels with `?ports=` (kube-rs): channel 2i carries the i-th port's data,
//!   2i+1 its error; the first message of each channel carries the port.
//!
//! Over SPDY each forwarded connection is a pair of streams (`streamType: error|data`, the
//! same `requestID`, a `port`), opened by the client.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest as _, Path as UrlPath, RawQuery, Request, State};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::channel::{self, In, Protocol};
use super::spdy::{self, Stream};
use super::{Params, StreamState, Upgrade, bad_request, pod_of, upgrade_of};

/// The WebSocket subprotocol of SPDY tunnelled in binary messages.
const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The WebSocket subprotocols served, the SPDY tunnel first.
const PROTOCOLS: [&str; 6] = [
    SPDY_TUNNEL,
    "portforward.k8s.io",
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

/// `/portForward/{ns}/{pod}`.
pub(super) async fn port_forward(
    State(st): State<StreamState>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    mut req: Request,
) -> Response {
    let view = match pod_of(&st, req.headers(), &ns, &pod) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(netns) = view.netns.clone() else {
        return bad_request(format!("pod {pod} has no network namespace yet"));
    };
    match upgrade_of(req.headers()) {
        Some(Upgrade::Spdy) => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match on.await {
                    Ok(io) => spdy_over(TokioIo::new(io), netns).await,
                    Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
                }
            });
            (
                StatusCode::SWITCHING_PROTOCOLS,
                [
                    (header::CONNECTION, "Upgrade"),
                    (header::UPGRADE, "SPDY/3.1"),
                    (
                        header::HeaderName::from_static("x-stream-protocol-version"),
                        "portforward.k8s.io",
                    ),
                ],
            )
                .into_response()
        }
        Some(Upgrade::WebSocket) => {
            let ws = match WebSocketUpgrade::from_request(req, &()).await {
                Ok(ws) => ws.protocols(PROTOCOLS),
                Err(e) => return bad_request(format!("port-forward: {e}")),
            };
            let chosen = ws
                .selected_protocol()
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            match chosen.as_deref() {
                Some(SPDY_TUNNEL) => ws.on_upgrade(move |s| spdy_in_websocket(s, netns)),
                other => {
                    let proto = match other {
                        Some("portforward.k8s.io") | None => Protocol::Binary,
                        Some(p) => match Protocol::of(Some(p)) {
                            Some(p) => p,
                            None => return bad_request(format!("unknown subprotocol {p}")),
                        },
                    };
                    let ports = match ports_of(&Params::parse(q.as_deref())) {
                        Ok(p) => p,
                        Err(m) => return bad_request(m),
                    };
                    ws.on_upgrade(move |s| channels(s, proto, netns, ports))
                }
            }
        }
        None => bad_request(
            "port-forward takes an upgrade: WebSocket (SPDY/3.1+portforward.k8s.io or \
             v4.channel.k8s.io) or SPDY/3.1"
                .into(),
        ),
    }
}

fn ports_of(p: &Params) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for v in p.all("ports") {
        for s in v.split(',').filter(|s| !s.is_empty()) {
            match s.trim().parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {s:?}: ports are 1 to 65535")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be given (?ports=)".into());
    }
    Ok(ports)
}

/// Connects to `port` on the pod's loopback (IPv4, then IPv6).
async fn connect(netns: &Path, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match skiff_shims::wasm::netns::connect_in(netns, v4).await {
        Ok(c) => Ok(c),
        Err(e4) => skiff_shims::wasm::netns::connect_in(
            netns,
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        )
        .await
        .map_err(|_| e4),
    }
}

/// SPDY on a raw upgraded connection.
async fn spdy_over(io: impl AsyncRead + AsyncWrite + Send + 'static, netns: PathBuf) {
    let (st_tx, st_rx) = mpsc::channel::<Stream>(16);
    let conn = spdy::serve_io(io, st_tx);
    pair_streams(st_rx, netns).await;
    conn.closed().await;
}

/// SPDY in WebSocket binary messages.
async fn spdy_in_websocket(socket: WebSocket, netns: PathBuf) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws_rx.next().await {
            match m {
                Message::Binary(b) if in_tx.send(b.clone()).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(b)).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.send(super::normal_close()).await;
    });
    spdy_session(in_rx, out_tx, netns).await;
    reader.abort();
    let _ = writer.await;
}

/// SPDY carried in `input` and `output`: pairs each request's streams and forwards them.
async fn spdy_session(input: mpsc::Receiver<Bytes>, output: mpsc::Sender<Bytes>, netns: PathBuf) {
    let (st_tx, st_rx) = mpsc::channel::<Stream>(16);
    let server = tokio::spawn(spdy::serve(input, output, st_tx));
    pair_streams(st_rx, netns).await;
    if let Ok(Err(e)) = server.await {
        tracing::debug!(error = %e, "port-forward session ended");
    }
}

/// Pairs each request's error and data streams and forwards them, until the connection
/// ends.
async fn pair_streams(mut st_rx: mpsc::Receiver<Stream>, netns: PathBuf) {
    let mut pending: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(s) = st_rx.recv().await {
        let kind = spdy::header(&s.headers, "streamtype")
            .unwrap_or("")
            .to_string();
        let request = spdy::header(&s.headers, "requestid")
            .map(String::from)
            .unwrap_or_else(|| spdy::header(&s.headers, "port").unwrap_or("").to_string());
        let entry = pending.entry(request.clone()).or_default();
        match kind.as_str() {
            "error" => entry.0 = Some(s),
            "data" => entry.1 = Some(s),
            _ => {
                s.out.reset().await;
                continue;
            }
        }
        if entry.0.is_some()
            && entry.1.is_some()
            && let Some((Some(error), Some(data))) = pending.remove(&request)
        {
            tokio::spawn(forward_pair(netns.clone(), error, data));
        }
    }
}

async fn forward_pair(netns: PathBuf, error: Stream, mut data: Stream) {
    let port = spdy::header(&data.headers, "port")
        .unwrap_or("")
        .to_string();
    let conn = match port.parse::<u16>() {
        Ok(p) if p > 0 => connect(&netns, p).await.map_err(|e| e.to_string()),
        _ => Err(format!("invalid port {port:?}")),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to the pod: {e}");
            error.out.send(Bytes::from(msg)).await;
            error.out.finish().await;
            data.out.finish().await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    let to_pod = async {
        while let Some(b) = data.incoming.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let out = data.out.clone();
    let from_pod = async move {
        let mut buf = vec![0u8; spdy::DATA_CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.send(Bytes::copy_from_slice(&buf[..n])).await {
                        return;
                    }
                }
            }
        }
        out.finish().await;
    };
    tokio::join!(to_pod, from_pod);
    error.out.finish().await;
}

/// Port-forward over WebSocket channels.
async fn channels(socket: WebSocket, proto: Protocol, netns: PathBuf, ports: Vec<u16>) {
    let (ws_tx, mut ws_rx) = socket.split();
    let (tx, writer) = super::socket_writer(ws_tx);
    let frame = move |c: u8, d: &[u8]| super::framed(proto, c, d);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = tx.send(frame(data_ch, &port.to_le_bytes())).await;
        let _ = tx.send(frame(err_ch, &port.to_le_bytes())).await;
        match connect(&netns, port).await {
            Ok(c) => {
                let (mut r, w) = c.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || tx.send(frame(data_ch, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(e) => {
                let msg = format!("error forwarding port {port} to the pod: {e}");
                let _ = tx.send(frame(err_ch, msg.as_bytes())).await;
                writers.push(None);
            }
        }
    }
    let all_read = futures::future::join_all(readers);
    tokio::pin!(all_read);
    loop {
        tokio::select! {
            _ = &mut all_read => break,
            m = ws_rx.next() => {
                let frame = match m {
                    Some(Ok(Message::Binary(b))) => channel::decode_binary(proto, &b),
                    Some(Ok(Message::Text(t))) => channel::decode_text(t.as_str()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    _ => break,
                };
                match frame {
                    Some(In::Data(c, d)) if c % 2 == 0 => {
                        let i = usize::from(c / 2);
                        if let Some(Some(w)) = writers.get_mut(i)
                            && w.write_all(&d).await.is_err()
                        {
                            writers[i] = None;
                        }
                    }
                    Some(In::Close(c)) if c % 2 == 0 => {
                        if let Some(slot) = writers.get_mut(usize::from(c / 2))
                            && let Some(mut w) = slot.take()
                        {
                            let _ = w.shutdown().await;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_listed_and_checked() {
        assert_eq!(
            ports_of(&Params::parse(Some("ports=80%2C8080"))).unwrap(),
            [80, 8080]
        );
        assert_eq!(
            ports_of(&Params::parse(Some("ports=80&ports=81"))).unwrap(),
            [80, 81]
        );
        assert!(ports_of(&Params::parse(Some("ports=0"))).is_err());
        assert!(ports_of(&Params::parse(Some("ports=x"))).is_err());
        assert!(ports_of(&Params::parse(None)).is_err());
    }
}
