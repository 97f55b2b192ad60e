//! The server side of SPDY/3.1 as Kubernetes' streaming clients speak it (moby/spdystream
//! under client-go): port-forward over SPDY, raw after an `Upgrade: SPDY/3.1` or tunnelled
//! in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`).
//!
//! No crate serves SPDY (the ones published are clients), so this is a small codec: the
//! frames a peer sends (SYN_STREAM, DATA, RST_STREAM, PING, GOAWAY; SETTINGS, HEADERS and
//! WINDOW_UPDATE are read and ignored) and those a server answers (SYN_REPLY, DATA,
//! RST_STREAM, PING, GOAWAY). Header blocks are zlib streams, one per direction per
//! connection, primed with SPDY/3's dictionary (flate2 on zlib-rs has preset
//! dictionaries). Like spdystream, it does no flow control.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::sync::mpsc;

/// A decompressed header block bigger than this is refused.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// A frame bigger than this is refused (SPDY allows 16 MiB; clients send 32 KiB at most).
const MAX_FRAME: usize = 1 << 20;

/// Data sent in frames of at most this size.
pub const DATA_CHUNK: usize = 32 * 1024;

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;

/// Control frame types.
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status: the stream is refused.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream is cancelled.
pub const CANCEL: u32 = 5;

/// SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// length-prefixed header names and values, then a run of common text.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// A malformed or unacceptable frame.
#[derive(Debug, thiserror::Error)]
#[error("SPDY: {0}")]
pub struct SpdyError(String);

fn err(m: impl Into<String>) -> SpdyError {
    SpdyError(m.into())
}

/// Header names and values (a value holding several is NUL-separated, as sent).
pub type Headers = Vec<(String, String)>;

/// A frame, as read or to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A peer opens a stream.
    SynStream {
        /// Stream id.
        id: u32,
        /// The peer sends nothing more on it.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// The answer to a SYN_STREAM.
    SynReply {
        /// Stream id.
        id: u32,
        /// This side sends nothing more on it.
        fin: bool,
        /// Headers.
        headers: Headers,
    },
    /// Data of a stream.
    Data {
        /// Stream id.
        id: u32,
        /// The sender's last frame on it.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A stream ends abnormally.
    RstStream {
        /// Stream id.
        id: u32,
        /// Why.
        status: u32,
    },
    /// A ping, echoed.
    Ping(u32),
    /// The connection ends.
    GoAway {
        /// The last stream the sender handled.
        last: u32,
        /// Why.
        status: u32,
    },
    /// Read and ignored (SETTINGS, HEADERS, WINDOW_UPDATE, unknown types).
    Ignored,
}

/// One connection's framing state: the two header compression streams.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh stream takes a dictionary at once; it cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Codec {
            inflate: Decompress::new(true),
            deflate,
        }
    }
}

impl Codec {
    /// Takes one frame off the front of `buf`, if a whole one is there.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(err(format!("a frame of {len} bytes")));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut body = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                id,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(err(format!("version {version}, not 3")));
        }
        let typ = u16::from_be_bytes([head[2], head[3]]);
        let need = |b: &Bytes, n: usize| {
            if b.len() < n {
                Err(err(format!("a short control frame of type {typ}")))
            } else {
                Ok(())
            }
        };
        let frame = match typ {
            kind::SYN_STREAM => {
                need(&body, 10)?;
                let id = body.get_u32() & 0x7fff_ffff;
                body.advance(6);
                let headers = self.headers(&body)?;
                Frame::SynStream {
                    id,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            kind::SYN_REPLY => {
                need(&body, 4)?;
                let id = body.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&body)?;
                Frame::SynReply {
                    id,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            kind::RST_STREAM => {
                need(&body, 8)?;
                Frame::RstStream {
                    id: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            kind::PING => {
                need(&body, 4)?;
                Frame::Ping(body.get_u32())
            }
            kind::GOAWAY => {
                need(&body, 4)?;
                let last = body.get_u32() & 0x7fff_ffff;
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway { last, status }
            }
            kind::HEADERS => {
                // Still read, so the header decompressor stays in step.
                need(&body, 4)?;
                body.advance(4);
                self.headers(&body)?;
                Frame::Ignored
            }
            kind::SETTINGS | kind::WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    /// Appends `frame` to `out`.
    pub fn write(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let control = |out: &mut BytesMut, typ: u16, flags: u8, body: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(typ);
            out.put_u32((u32::from(flags) << 24) | body.len() as u32);
            out.put_slice(body);
        };
        match frame {
            Frame::SynReply { id, fin, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&self.header_block(headers)?);
                control(out, kind::SYN_REPLY, if *fin { FLAG_FIN } else { 0 }, &body);
            }
            Frame::SynStream { id, fin, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&[0; 6]);
                body.extend_from_slice(&self.header_block(headers)?);
                control(
                    out,
                    kind::SYN_STREAM,
                    if *fin { FLAG_FIN } else { 0 },
                    &body,
                );
            }
            Frame::Data { id, fin, data } => {
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32((u32::from(if *fin { FLAG_FIN } else { 0 }) << 24) | data.len() as u32);
                out.put_slice(data);
            }
            Frame::RstStream { id, status } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, kind::RST_STREAM, 0, &body);
            }
            Frame::Ping(id) => control(out, kind::PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last, status } => {
                let mut body = last.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, kind::GOAWAY, 0, &body);
            }
            Frame::Ignored => {}
        }
        Ok(())
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate_block(block)?;
        parse_headers(&raw)
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.len() > MAX_HEADER_BLOCK {
                return Err(err("a header block past 64 KiB"));
            }
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let before = self.inflate.total_in();
            let r = self
                .inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - before) as usize;
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| err(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(err(format!("header block: {e}"))),
            }
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k.to_ascii_lowercase().as_str(), v.as_str()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| err(format!("compressing headers: {e}")))?;
            pos += (self.deflate.total_in() - before) as usize;
            if pos >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn parse_headers(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    let short = || err("a truncated header block");
    let take = |raw: &mut &[u8]| -> Result<String, SpdyError> {
        if raw.len() < 4 {
            return Err(short());
        }
        let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let rest = &raw[4..];
        if rest.len() < n {
            return Err(short());
        }
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        *raw = &rest[n..];
        Ok(s)
    };
    if raw.len() < 4 {
        return Err(short());
    }
    let count = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    raw = &raw[4..];
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let k = take(&mut raw)?;
        let v = take(&mut raw)?;
        headers.push((k, v));
    }
    Ok(headers)
}

/// The value of header `name` (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A stream the peer opened.
pub struct Stream {
    /// Its id.
    pub id: u32,
    /// Its headers.
    pub headers: Headers,
    /// What the peer sends on it; ends at its FIN or reset.
    pub incoming: mpsc::Receiver<Bytes>,
    /// Sends on it.
    pub out: StreamWriter,
}

/// Writes one stream's data.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends bytes (in frames of at most [`DATA_CHUNK`]); false once the connection is gone.
    pub async fn send(&self, data: Bytes) -> bool {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(DATA_CHUNK));
            let f = Frame::Data {
                id: self.id,
                fin: false,
                data: chunk,
            };
            if self.frames.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Says this side sends nothing more.
    pub async fn finish(&self) {
        let _ = self
            .frames
            .send(Frame::Data {
                id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    /// Ends the stream abnormally.
    pub async fn reset(&self) {
        let _ = self
            .frames
            .send(Frame::RstStream {
                id: self.id,
                status: CANCEL,
            })
            .await;
    }
}

/// Serves one connection: bytes in from `input`, bytes out to `output`. Each stream the
/// peer opens is accepted (SYN_REPLY) and handed to `streams`. Returns when the peer
/// goes away, says GOAWAY, breaks the protocol, or `output` closes.
pub async fn serve(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    streams: mpsc::Sender<Stream>,
) -> Result<(), SpdyError> {
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    let codec = std::sync::Arc::new(std::sync::Mutex::new(Codec::default()));
    // One writer, which compresses header blocks in the order frames go out.
    let writer_codec = codec.clone();
    let writer = tokio::spawn(async move {
        while let Some(f) = frames_rx.recv().await {
            let mut buf = BytesMut::new();
            let written = writer_codec
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write(&f, &mut buf);
            if written.is_err() || output.send(buf.freeze()).await.is_err() {
                break;
            }
        }
    });
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = BytesMut::new();
    let mut last = 0;
    let result = 'conn: loop {
        let Some(chunk) = input.recv().await else {
            break Ok(());
        };
        buf.extend_from_slice(&chunk);
        loop {
            let frame = codec
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .read(&mut buf);
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn Err(e),
            };
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    last = id;
                    let (tx, rx) = mpsc::channel(16);
                    if !fin {
                        open.insert(id, tx);
                    }
                    let reply = Frame::SynReply {
                        id,
                        fin: false,
                        headers: Vec::new(),
                    };
                    if frames_tx.send(reply).await.is_err() {
                        break 'conn Ok(());
                    }
                    let s = Stream {
                        id,
                        headers,
                        incoming: rx,
                        out: StreamWriter {
                            id,
                            frames: frames_tx.clone(),
                        },
                    };
                    if streams.send(s).await.is_err() {
                        let _ = frames_tx
                            .send(Frame::RstStream {
                                id,
                                status: REFUSED_STREAM,
                            })
                            .await;
                    }
                }
                Frame::Data { id, fin, data } => {
                    if let Some(tx) = open.get(&id)
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        open.remove(&id);
                    }
                    if fin {
                        open.remove(&id);
                    }
                }
                Frame::RstStream { id, .. } => {
                    open.remove(&id);
                }
                Frame::Ping(n) => {
                    let _ = frames_tx.send(Frame::Ping(n)).await;
                }
                Frame::GoAway { .. } => break 'conn Ok(()),
                Frame::SynReply { .. } | Frame::Ignored => {}
            }
        }
    };
    let _ = frames_tx.send(Frame::GoAway { last, status: 0 }).await;
    drop(frames_tx);
    drop(open);
    let _ = writer.await;
    result
}

/// A connection [`serve_io`] serves; [`Connection::close`] ends it from this side.
pub struct Connection {
    close: std::sync::Arc<tokio::sync::Notify>,
    gone: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// Says GOAWAY, sends what is queued and closes the connection.
    pub fn close(&self) {
        self.close.notify_one();
    }

    /// Completes once the connection is gone (closed by either side).
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut gone = self.gone.clone();
        async move {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    /// Waits until the connection is gone.
    pub async fn closed(self) {
        self.gone().await;
    }
}

/// Serves SPDY on a byte stream (an upgraded HTTP connection), as [`serve`] does.
pub fn serve_io(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    streams: mpsc::Sender<Stream>,
) -> Connection {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut r, mut w) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let close = std::sync::Arc::new(tokio::sync::Notify::new());
    let closing = close.clone();
    // Ends at the peer's end or at close(); dropping `in_tx` then ends `serve`.
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                read = r.read(&mut buf) => match read {
                    Ok(n) if n > 0 => {
                        if in_tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                },
                () = closing.notified() => return,
            }
        }
    };
    let writer = async move {
        while let Some(b) = out_rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let (gone_tx, gone) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let reader = tokio::spawn(reader);
        let writer = tokio::spawn(writer);
        if let Err(e) = serve(in_rx, out_tx, streams).await {
            tracing::debug!(error = %e, "SPDY connection ended");
        }
        reader.abort();
        let _ = writer.await;
        gone_tx.send_replace(true);
    });
    Connection { close, gone }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
    }

    /// A client's codec: the same framing, from the other side.
    fn pair() -> (Codec, Codec) {
        (Codec::default(), Codec::default())
    }

    #[test]
    fn frames_round_trip_through_the_header_compression() {
        let (mut client, mut server) = pair();
        let mut wire = BytesMut::new();
        let frames = [
            Frame::SynStream {
                id: 1,
                fin: true,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
            },
            Frame::SynStream {
                id: 3,
                fin: false,
                headers: vec![("streamtype".into(), "data".into())],
            },
            Frame::Data {
                id: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::Ping(1),
            Frame::RstStream { id: 3, status: 5 },
            Frame::GoAway { last: 3, status: 0 },
        ];
        for f in &frames {
            client.write(f, &mut wire).unwrap();
        }
        // Split anywhere: frames come whole only when all their bytes are in.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.chunks(7) {
            buf.extend_from_slice(b);
            while let Some(f) = server.read(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        // And the other way, on the server's own compression stream.
        let mut back = BytesMut::new();
        let reply = Frame::SynReply {
            id: 1,
            fin: false,
            headers: vec![],
        };
        server.write(&reply, &mut back).unwrap();
        assert_eq!(client.read(&mut back).unwrap(), Some(reply));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut c = Codec::default();
        // Version 2.
        let mut b = BytesMut::from(&[0x80, 0x02, 0, 1, 0, 0, 0, 0][..]);
        assert!(c.read(&mut b).is_err());
        // A SYN_STREAM too short for its fields.
        let mut b = BytesMut::from(&[0x80, 0x03, 0, 1, 0, 0, 0, 2, 0, 0][..]);
        assert!(c.read(&mut b).is_err());
        // A header block that is not zlib.
        let mut b = BytesMut::from(&[0x80, 0x03, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(c.read(&mut b).is_err());
        // A frame claiming 16 MiB.
        let mut b = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(Codec::default().read(&mut b).is_err());
        assert!(parse_headers(&[0, 0, 0, 2, 0, 0, 0, 9, b'a']).is_err());
    }

    #[tokio::test]
    async fn a_session_accepts_streams_answers_pings_and_carries_data() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let (st_tx, mut st_rx) = mpsc::channel(4);
        let server = tokio::spawn(serve(in_rx, out_tx, st_tx));
        let mut client = Codec::default();
        let mut wire = BytesMut::new();
        client
            .write(
                &Frame::SynStream {
                    id: 1,
                    fin: false,
                    headers: vec![("streamtype".into(), "data".into())],
                },
                &mut wire,
            )
            .unwrap();
        client.write(&Frame::Ping(7), &mut wire).unwrap();
        client
            .write(
                &Frame::Data {
                    id: 1,
                    fin: true,
                    data: Bytes::from_static(b"ping"),
                },
                &mut wire,
            )
            .unwrap();
        in_tx.send(wire.freeze()).await.unwrap();
        let mut s = st_rx.recv().await.unwrap();
        assert_eq!(header(&s.headers, "StreamType"), Some("data"));
        assert_eq!(
            s.incoming.recv().await.unwrap(),
            Bytes::from_static(b"ping")
        );
        assert!(s.incoming.recv().await.is_none(), "FIN ends the stream");
        s.out.send(Bytes::from_static(b"pong")).await;
        s.out.finish().await;
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < 4 {
            buf.extend_from_slice(&out_rx.recv().await.unwrap());
            while let Some(f) = client.read(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(matches!(got[0], Frame::SynReply { id: 1, .. }));
        assert_eq!(got[1], Frame::Ping(7));
        assert_eq!(
            got[2],
            Frame::Data {
                id: 1,
                fin: false,
                data: Bytes::from_static(b"pong")
            }
        );
        assert_eq!(
            got[3],
            Frame::Data {
                id: 1,
                fin: true,
                data: Bytes::new()
            }
        );
        drop(in_tx);
        drop(s);
        server.await.unwrap().unwrap();
    }
}
