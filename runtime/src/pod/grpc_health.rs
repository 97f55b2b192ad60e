//! gRPC probes: the standard health check (`grpc.health.v1.Health/Check`) over HTTP/2
//! without TLS, as the kubelet makes it.
//!
//! The call is small enough that a gRPC stack (tonic, prost and their build step) would
//! be most of the code: hyper, already here for HTTP, carries the request, and the two
//! messages are encoded by hand ([`request`], [`verdict`]; pure and table-tested). A
//! check passes only on `SERVING`; any other status, a gRPC error or a failed connection
//! is a failure with the kubelet's wording.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Runs one health check of `service` against the server on `stream`.
pub async fn check(stream: tokio::net::TcpStream, port: u16, service: &str) -> Result<(), String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("failed to connect service \"127.0.0.1:{port}\": {e}"))?;
    // Driven until the sender is dropped at the end of this check.
    tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(http::header::USER_AGENT, "kube-probe/1.33")
    .body(Full::new(Bytes::from(request(service))))
    .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("rpc error: code = Unavailable desc = {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("rpc error: code = Unavailable desc = {e}"))?;
    // A call that fails at once answers with headers only ("trailers-only").
    let trailers = body.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if !parts.status.is_success() {
        return Err(format!(
            "rpc error: code = Unknown desc = HTTP status {}",
            parts.status
        ));
    }
    verdict(
        field("grpc-status").as_deref(),
        field("grpc-message").as_deref(),
        &body.to_bytes(),
    )
}

/// The framed `HealthCheckRequest { service }`: one uncompressed gRPC message.
pub fn request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        // Field 1, length-delimited.
        msg.push(0x0a);
        varint(service.len() as u64, &mut msg);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// gRPC's names for its status codes, as Go's `codes.Code` prints them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// `HealthCheckResponse.ServingStatus` names.
const SERVING_STATUS: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// What a response decides, from its `grpc-status` and `grpc-message` and its body.
pub fn verdict(status: Option<&str>, message: Option<&str>, body: &[u8]) -> Result<(), String> {
    let code: u32 = status
        .ok_or("rpc error: code = Internal desc = the response has no grpc-status")?
        .trim()
        .parse()
        .map_err(|_| "rpc error: code = Internal desc = malformed grpc-status".to_string())?;
    if code != 0 {
        let name = CODES.get(code as usize).copied().unwrap_or("Unknown");
        return Err(format!(
            "rpc error: code = {name} desc = {}",
            message.unwrap_or_default()
        ));
    }
    let serving = serving_status(body)
        .ok_or("rpc error: code = Internal desc = malformed HealthCheckResponse")?;
    if serving == 1 {
        Ok(())
    } else {
        let name = SERVING_STATUS
            .get(serving as usize)
            .copied()
            .unwrap_or("UNKNOWN");
        Err(format!("service unhealthy (responded with \"{name}\")"))
    }
}

/// Field 1 (`status`) of the one framed message in `body`; 0 (UNKNOWN) when absent, as
/// protobuf leaves default values out.
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&key, tail)) = msg.split_first() {
        msg = tail;
        let value;
        (value, msg) = read_varint(msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = value,
            // An unknown varint field is skipped; other wire types are not expected here.
            (_, 0) => {}
            _ => return None,
        }
    }
    Some(status)
}

fn read_varint(mut b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v, b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0, msg.len() as u8];
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn requests_name_their_service() {
        assert_eq!(
            request(""),
            vec![0, 0, 0, 0, 0],
            "the default service is empty"
        );
        assert_eq!(
            request("db"),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b'],
            "field 1, length 2"
        );
        let long = "s".repeat(200);
        assert_eq!(
            &request(&long)[5..8],
            &[0x0a, 0xc8, 0x01],
            "a two-byte length"
        );
    }

    #[test]
    fn only_serving_passes() {
        // grpc-status, grpc-message, body, verdict.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Vec<u8>,
            Result<(), &'a str>,
        );
        let table: &[Case] = &[
            (Some("0"), None, framed(&[0x08, 1]), Ok(())),
            (
                Some("0"),
                None,
                framed(&[0x08, 2]),
                Err("service unhealthy (responded with \"NOT_SERVING\")"),
            ),
            (
                Some("0"),
                None,
                framed(&[]),
                Err("service unhealthy (responded with \"UNKNOWN\")"),
            ),
            (
                Some("5"),
                Some("unknown service"),
                Vec::new(),
                Err("rpc error: code = NotFound desc = unknown service"),
            ),
            (
                Some("12"),
                None,
                Vec::new(),
                Err("rpc error: code = Unimplemented desc = "),
            ),
            (
                None,
                None,
                framed(&[0x08, 1]),
                Err("rpc error: code = Internal desc = the response has no grpc-status"),
            ),
            (
                Some("0"),
                None,
                vec![1, 0, 0, 0, 2, 0x08, 1],
                Err("rpc error: code = Internal desc = malformed HealthCheckResponse"),
            ),
            (
                Some("0"),
                None,
                vec![0, 0, 0, 0, 9, 0x08],
                Err("rpc error: code = Internal desc = malformed HealthCheckResponse"),
            ),
        ];
        for (status, message, body, want) in table {
            assert_eq!(
                verdict(*status, *message, body),
                want.map_err(String::from),
                "{status:?} {body:?}"
            );
        }
    }
}
