//! Outgoing `wasi:http` requests of a guest: denied, unless the spec gives the guest its
//! pod's network ([`OutgoingHttp`]). Then a request to the pod's own loopback (`localhost`,
//! `127.0.0.1`, `[::1]`) — where the pod's other containers listen — or to a host the pod
//! lists is sent over a connection made inside the pod's network namespace, never the
//! node's. Only plain HTTP: TLS to a sidecar on loopback buys nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::executor::OutgoingHttp;

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// The hooks of one guest store.
pub(crate) struct Outgoing(pub(crate) Option<Arc<OutgoingHttp>>);

/// Where a request may go: the pod's loopback, or a listed host; `None` if denied.
pub(crate) fn destination(host: &str, allowed: &[String]) -> Option<Destination> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare == "localhost" {
        return Some(Destination::Loopback(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    if let Ok(ip) = bare.parse::<IpAddr>()
        && ip.is_loopback()
    {
        return Some(Destination::Loopback(ip));
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(bare))
        .then(|| Destination::Listed(bare.to_string()))
}

/// An allowed destination.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// The pod's own loopback.
    Loopback(IpAddr),
    /// A host the pod lists (resolved by the node's resolver).
    Listed(String),
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let Some(net) = self.0.clone() else {
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        Box::new(send(net, request, options))
    }
}

async fn send(
    net: Arc<OutgoingHttp>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let uri = request.uri().clone();
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(HttpError::HttpRequestDenied);
    }
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = match destination(authority.host(), &net.allowed_hosts) {
        None => return Err(HttpError::HttpRequestDenied),
        Some(Destination::Loopback(ip)) => SocketAddr::new(ip, port),
        Some(Destination::Listed(host)) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| HttpError::DestinationNotFound)?
            .next()
            .ok_or(HttpError::DestinationNotFound)?,
    };
    let timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(std::time::Duration::from_secs(30));
    let stream = tokio::time::timeout(timeout, super::netns::connect_in(&net.netns, addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(|_| HttpError::ConnectionRefused)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::from)?;
    let io = tokio::spawn(conn);
    // The request line carries the path only (the authority is for proxies).
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(HttpError::from)?;
    let response = response.map(|b| b.map_err(HttpError::from).boxed_unsync());
    let io: IoFuture = Box::new(async move {
        match io.await {
            Ok(r) => r.map_err(HttpError::from),
            Err(_) => Err(HttpError::HttpProtocolError),
        }
    });
    Ok((response, io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn only_loopback_and_listed_hosts() {
        let listed = vec!["api.example".to_string()];
        let lo4 = Some(Destination::Loopback(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(destination("localhost", &listed), lo4);
        assert_eq!(destination("127.0.0.1", &listed), lo4);
        assert_eq!(
            destination("[::1]", &listed),
            Some(Destination::Loopback(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(
            destination("API.example", &listed),
            Some(Destination::Listed("API.example".into()))
        );
        for denied in [
            "10.0.0.1",
            "example.com",
            "169.254.169.254",
            "localhost.evil",
            "",
        ] {
            assert_eq!(destination(denied, &listed), None, "{denied}");
        }
    }
}
