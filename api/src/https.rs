//! A small HTTPS client for the few calls Skiff makes outside `kube`'s client: the
//! apiserver reaching a node agent (whose self-signed certificate is trusted by its
//! pinned SHA-256), and a joining node fetching `/cacerts` before it trusts anything.
//!
//! One request per connection, HTTP/1.1, rustls with the ring provider. The connection
//! lives exactly as long as the response body: dropping the body closes it, so a client
//! that goes away ends the upstream request too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Failures of an HTTPS call.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (a certificate that is not trusted, among others).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{what} with {addr} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// `host:port`.
        addr: String,
        /// How long.
        after: Duration,
    },
    /// The HTTP exchange failed.
    #[error("HTTP with {addr}: {source}")]
    Http {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] http::Error),
    /// The answer is larger than accepted.
    #[error("the answer from {addr} is larger than {limit} bytes")]
    TooLarge {
        /// `host:port`.
        addr: String,
        /// The limit.
        limit: usize,
    },
}

/// How a server's certificate is checked.
#[derive(Debug)]
enum Trust {
    /// The leaf certificate's DER hashes (SHA-256, lowercase hex) to this.
    Pin(String),
    /// Anything: only for fetching a document whose hash is checked afterwards.
    Any,
}

/// A verifier that checks the leaf certificate by its pin (or not at all) but still
/// verifies the handshake signatures, so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinVerifier {
    trust: Trust,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::Pin(pin) => {
                let got = crate::token::sha256_hex(end_entity.as_ref());
                if crate::token::same_secret(got.as_bytes(), pin.as_bytes()) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "the server's certificate has SHA-256 {got}, not the pinned {pin}"
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_verifier(trust: Trust) -> Result<rustls::ClientConfig, HttpsError> {
    let provider = provider();
    let verifier = Arc::new(PinVerifier {
        trust,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client configuration that trusts exactly the server whose leaf certificate's DER
/// has SHA-256 `pin` (lowercase hex, as [`crate::node::cert_sha256_hex`] gives), whatever
/// its names and issuer. Handshake signatures are still verified.
pub fn pinned_client_config(pin: &str) -> Result<rustls::ClientConfig, HttpsError> {
    with_verifier(Trust::Pin(pin.trim().to_ascii_lowercase()))
}

/// A client configuration that trusts nothing but the certificates of `ca_pem`.
pub fn ca_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, HttpsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let c = c.map_err(|e| HttpsError::Config(format!("the CA PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| HttpsError::Config(format!("the CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(HttpsError::Config("the CA PEM holds no certificate".into()));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Trust any certificate: only for a download whose content is checked by hash after.
pub(crate) fn unverified_client_config() -> Result<rustls::ClientConfig, HttpsError> {
    with_verifier(Trust::Any)
}

/// Aborts the connection task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body that holds its connection open; dropping it closes the connection.
pub struct ResponseBody {
    inner: Incoming,
    _connection: AbortOnDrop,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ResponseBody {
    /// Read the whole body, refusing more than `limit` bytes.
    pub async fn read_limited(mut self, limit: usize) -> Result<Bytes, hyper::Error> {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > limit {
                    let room = limit - buf.len();
                    buf.extend_from_slice(&data[..room]);
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Send `req` (its URI is a path and query) to `https://host:port`, connecting within
/// `timeout` and getting the response head within `timeout` too.
pub async fn send(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    mut req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<http::Response<ResponseBody>, HttpsError> {
    let addr = authority(host, port);
    let tls_stream = connect(host, port, tls, timeout).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|source| HttpsError::Http {
            addr: addr.clone(),
            source,
        })?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTPS client connection ended with an error");
        }
    });
    let guard = AbortOnDrop(task.abort_handle());
    if let Ok(v) = http::HeaderValue::from_str(&addr) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let resp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| timed_out(&addr, "waiting for the answer", timeout))?
        .map_err(|source| HttpsError::Http {
            addr: addr.clone(),
            source,
        })?;
    Ok(resp.map(|inner| ResponseBody {
        inner,
        _connection: guard,
    }))
}

/// Like [`send`], for a request that asks to upgrade the connection (`Upgrade:` header):
/// the connection stays usable after a `101 Switching Protocols`, through
/// `hyper::upgrade::on(response)`.
pub async fn send_upgrade(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    mut req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<http::Response<Incoming>, HttpsError> {
    let addr = authority(host, port);
    let tls_stream = connect(host, port, tls, timeout).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|source| HttpsError::Http {
            addr: addr.clone(),
            source,
        })?;
    // The connection task hands the connection over on an upgrade, and ends then.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "HTTPS client connection ended with an error");
        }
    });
    if let Ok(v) = http::HeaderValue::from_str(&addr) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| timed_out(&addr, "waiting for the answer", timeout))?
        .map_err(|source| HttpsError::Http { addr, source })
}

fn timed_out(addr: &str, what: &'static str, after: Duration) -> HttpsError {
    HttpsError::Timeout {
        what,
        addr: addr.to_string(),
        after,
    }
}

/// A TLS connection to `host:port`, within `timeout` for the TCP connect and again for
/// the handshake.
async fn connect(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpsError> {
    let addr = authority(host, port);
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| timed_out(&addr, "connecting", timeout))?
        .map_err(|source| HttpsError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|e| HttpsError::Connect {
        addr: addr.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out(&addr, "the TLS handshake", timeout))?
    .map_err(|source| HttpsError::Handshake { addr, source })
}

/// Send `req` and read the whole answer (at most `limit` bytes).
pub async fn fetch(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::StatusCode, Bytes), HttpsError> {
    let addr = authority(host, port);
    let resp = send(host, port, tls, req, timeout).await?;
    let code = resp.status();
    let body = tokio::time::timeout(timeout, resp.into_body().read_limited(limit + 1))
        .await
        .map_err(|_| HttpsError::Timeout {
            what: "reading the answer",
            addr: addr.clone(),
            after: timeout,
        })?
        .map_err(|source| HttpsError::Http {
            addr: addr.clone(),
            source,
        })?;
    if body.len() > limit {
        return Err(HttpsError::TooLarge { addr, limit });
    }
    Ok((code, body))
}
