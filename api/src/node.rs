//! The contract between the apiserver and a node agent, in one place for both sides.
//!
//! A node agent serves its pods' logs over HTTPS with a self-signed certificate
//! ([`serving_certificate`]) and publishes on its Node object where and how to reach it:
//! an address in `status.addresses` (`InternalIP`, else `Hostname`), the port in
//! `status.daemonEndpoints.kubeletEndpoint.Port`, and the certificate's pin in the
//! annotation [`SERVING_CERT_SHA256_ANNOTATION`]. The apiserver answers
//! `GET .../pods/NAME/log` by calling `GET` [`container_logs_path`]`?`[`LogOptions::to_query`]
//! on the agent, trusting only the pinned certificate and sending
//! `Authorization: Bearer <that node's credential>`, which the agent checks with
//! [`bearer_matches`]. The agent answers `text/plain` on 200 and a JSON `Status` on
//! errors (404 container not started, 400 no previous instance, ...).

use serde_json::Value;

/// Annotation on a Node: lowercase hex SHA-256 of the DER of its agent's serving
/// certificate (the leaf).
pub const SERVING_CERT_SHA256_ANNOTATION: &str = "skiff.dev/serving-cert-sha256";

/// Failures of the node-side helpers.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A log query parameter is invalid.
    #[error("{0}")]
    Query(String),
    /// The Node object does not say how to reach its agent.
    #[error("{0}")]
    NoEndpoint(String),
    /// Generating the serving certificate failed.
    #[error("serving certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Lowercase hex SHA-256 of a certificate's DER, the form of
/// [`SERVING_CERT_SHA256_ANNOTATION`].
pub fn cert_sha256_hex(der: &[u8]) -> String {
    crate::token::sha256_hex(der)
}

/// The agent's log path for one container.
pub fn container_logs_path(namespace: &str, pod: &str, container: &str) -> String {
    format!("/containerLogs/{namespace}/{pod}/{container}")
}

/// Whether an `Authorization` header carries exactly `Bearer <credential>` (compared in
/// constant time). An agent checks the apiserver's calls with its own node credential.
pub fn bearer_matches(header: Option<&http::HeaderValue>, credential: &str) -> bool {
    let Some(tok) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return false;
    };
    !credential.is_empty() && crate::token::same_secret(tok.as_bytes(), credential.as_bytes())
}

/// `kubectl logs`' options, as the `pods/log` query carries them and as the apiserver
/// passes them on to the agent (the container goes in the path instead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `container`.
    pub container: Option<String>,
    /// `follow`: keep the stream open for new lines.
    pub follow: bool,
    /// `previous`: the previous instance of the container.
    pub previous: bool,
    /// `timestamps`: prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// `tailLines`: only the last N lines.
    pub tail_lines: Option<i64>,
    /// `sinceSeconds`: only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// `sinceTime`: only lines newer than this RFC 3339 time.
    pub since_time: Option<String>,
    /// `limitBytes`: stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

fn flag(k: &str, v: &str) -> Result<bool, NodeError> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(NodeError::Query(format!(
            "invalid value for {k}: {v:?}: must be true or false"
        ))),
    }
}

fn int(k: &str, v: &str, min: i64) -> Result<i64, NodeError> {
    v.parse::<i64>().ok().filter(|n| *n >= min).ok_or_else(|| {
        NodeError::Query(format!(
            "invalid value for {k}: {v:?}: must be an integer of at least {min}"
        ))
    })
}

impl LogOptions {
    /// Read the query string of a log request. Unknown parameters are ignored, as
    /// Kubernetes does.
    pub fn from_query(query: Option<&str>) -> Result<LogOptions, NodeError> {
        let mut o = LogOptions::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "container" if !v.is_empty() => o.container = Some(v.into_owned()),
                "follow" => o.follow = flag(&k, &v)?,
                "previous" => o.previous = flag(&k, &v)?,
                "timestamps" => o.timestamps = flag(&k, &v)?,
                "tailLines" => o.tail_lines = Some(int(&k, &v, 0)?),
                "sinceSeconds" => o.since_seconds = Some(int(&k, &v, 1)?),
                "limitBytes" => o.limit_bytes = Some(int(&k, &v, 1)?),
                "sinceTime" => {
                    if v.parse::<jiff::Timestamp>().is_err() {
                        return Err(NodeError::Query(format!(
                            "invalid value for sinceTime: {v:?}: must be an RFC 3339 time"
                        )));
                    }
                    o.since_time = Some(v.into_owned());
                }
                _ => {}
            }
        }
        if o.since_seconds.is_some() && o.since_time.is_some() {
            return Err(NodeError::Query(
                "at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        Ok(o)
    }

    /// The query string for the agent (without `container`, which is in the path).
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                q.append_pair(k, "true");
            }
        }
        for (k, v) in [
            ("tailLines", self.tail_lines),
            ("sinceSeconds", self.since_seconds),
            ("limitBytes", self.limit_bytes),
        ] {
            if let Some(v) = v {
                q.append_pair(k, &v.to_string());
            }
        }
        if let Some(t) = &self.since_time {
            q.append_pair("sinceTime", t);
        }
        q.finish()
    }
}

/// Where a node's agent serves, read from its Node object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// Address: the first `InternalIP`, else the first `Hostname`.
    pub host: String,
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub port: u16,
    /// The serving certificate's pin.
    pub cert_sha256: String,
}

impl AgentEndpoint {
    /// Read it from a Node object.
    pub fn of_node(node: &Value) -> Result<AgentEndpoint, NodeError> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let addrs = node["status"]["addresses"].as_array();
        let first = |t: &str| {
            addrs
                .into_iter()
                .flatten()
                .find(|a| a["type"] == t)
                .and_then(|a| a["address"].as_str())
                .filter(|a| !a.is_empty())
        };
        let host = first("InternalIP")
            .or_else(|| first("Hostname"))
            .ok_or_else(|| {
                NodeError::NoEndpoint(format!(
                    "node {name} has no InternalIP or Hostname address in status.addresses"
                ))
            })?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                NodeError::NoEndpoint(format!(
                    "node {name} publishes no agent port in status.daemonEndpoints.kubeletEndpoint.Port"
                ))
            })?;
        let pin = node["metadata"]["annotations"][SERVING_CERT_SHA256_ANNOTATION]
            .as_str()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                NodeError::NoEndpoint(format!(
                    "node {name} has no valid {SERVING_CERT_SHA256_ANNOTATION} annotation (64 hex digits)"
                ))
            })?;
        Ok(AgentEndpoint {
            host: host.to_string(),
            port,
            cert_sha256: pin,
        })
    }
}

/// An agent's self-signed serving certificate.
#[derive(Clone)]
pub struct ServingCert {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
    /// The pin to publish in [`SERVING_CERT_SHA256_ANNOTATION`].
    pub sha256: String,
}

impl ServingCert {
    /// A rustls server configuration serving this certificate (HTTP/1.1).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, NodeError> {
        let tls = |e: &dyn std::fmt::Display| NodeError::Tls(e.to_string());
        let certs = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| tls(&e))?
            .ok_or_else(|| NodeError::Tls("no private key in the PEM".into()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// A new self-signed serving certificate for `names` (DNS names or IP addresses).
pub fn serving_certificate(names: &[String]) -> Result<ServingCert, NodeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "skiff-node-agent");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok(ServingCert {
        sha256: cert_sha256_hex(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn log_options_round_trip_kubectl_parameters() {
        let o = LogOptions::from_query(Some(
            "container=c&follow=true&previous=false&tailLines=10&timestamps=1&sinceSeconds=5&limitBytes=100&pretty=x",
        ))
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                container: Some("c".into()),
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(10),
                since_seconds: Some(5),
                since_time: None,
                limit_bytes: Some(100),
            }
        );
        let q = o.to_query();
        assert_eq!(
            q,
            "follow=true&timestamps=true&tailLines=10&sinceSeconds=5&limitBytes=100"
        );
        let back = LogOptions::from_query(Some(&q)).unwrap();
        assert_eq!(
            back,
            LogOptions {
                container: None,
                ..o
            }
        );
        assert_eq!(LogOptions::from_query(None).unwrap(), LogOptions::default());
        assert_eq!(LogOptions::default().to_query(), "");
    }

    #[test]
    fn bad_log_parameters_are_refused() {
        for q in [
            "tailLines=-1",
            "tailLines=x",
            "sinceSeconds=0",
            "limitBytes=0",
            "follow=yes",
            "sinceTime=yesterday",
            "sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z",
        ] {
            assert!(LogOptions::from_query(Some(q)).is_err(), "{q} was accepted");
        }
    }

    #[test]
    fn endpoint_from_a_node() {
        let pin = "ab".repeat(32);
        let mut node = json!({
            "metadata": {"name": "n1", "annotations": {SERVING_CERT_SHA256_ANNOTATION: pin}},
            "status": {
                "addresses": [{"type": "Hostname", "address": "n1.local"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            },
        });
        let ep = AgentEndpoint::of_node(&node).unwrap();
        assert_eq!(
            ep,
            AgentEndpoint {
                host: "10.0.0.5".into(),
                port: 10250,
                cert_sha256: pin.clone()
            }
        );
        node["status"]["addresses"] = json!([{"type": "Hostname", "address": "n1.local"}]);
        assert_eq!(AgentEndpoint::of_node(&node).unwrap().host, "n1.local");
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(0);
        assert!(AgentEndpoint::of_node(&node).is_err());
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(70000);
        assert!(AgentEndpoint::of_node(&node).is_err());
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(1);
        node["metadata"]["annotations"][SERVING_CERT_SHA256_ANNOTATION] = json!("short");
        let e = AgentEndpoint::of_node(&node).unwrap_err().to_string();
        assert!(e.contains(SERVING_CERT_SHA256_ANNOTATION), "{e}");
        node["metadata"]["annotations"] = json!({SERVING_CERT_SHA256_ANNOTATION: pin});
        node["status"]["addresses"] = json!([]);
        assert!(AgentEndpoint::of_node(&node).is_err());
    }

    #[test]
    fn serving_certificates_are_pinned_by_their_der() {
        let c = serving_certificate(&["127.0.0.1".into(), "node-1".into()]).unwrap();
        let der = rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(c.sha256, cert_sha256_hex(der.as_ref()));
        assert_eq!(c.sha256.len(), 64);
        c.server_config().unwrap();
    }

    #[test]
    fn bearer_is_compared_exactly() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert!(bearer_matches(Some(&h("Bearer cred")), "cred"));
        assert!(bearer_matches(Some(&h("bearer cred")), "cred"));
        assert!(!bearer_matches(Some(&h("Bearer cre")), "cred"));
        assert!(!bearer_matches(Some(&h("Basic cred")), "cred"));
        assert!(!bearer_matches(None, "cred"));
        assert!(!bearer_matches(Some(&h("Bearer ")), ""));
    }
}
