//! Liveness, readiness and startup probes with Kubernetes' timing fields.
//!
//! [`probes`] turns a container's probes into [`ProbeSpec`]s (pure, table-tested);
//! [`check`] runs one check from inside the pod's network namespace (a pod has no address
//! of its own before pod networking, so `httpGet`, `tcpSocket` and `grpc` go to the pod's
//! loopback, where Wasm and container ports listen alike); [`Tracker`] counts successes
//! and failures against the thresholds. The pod worker schedules the checks and applies
//! what they decide: readiness to the pod's conditions, a failed liveness or startup
//! probe as a restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Failing restarts the container.
    Liveness,
    /// Failing keeps the pod out of `Ready`.
    Readiness,
    /// Until it succeeds the others wait; failing restarts the container.
    Startup,
}

impl Kind {
    /// As Kubernetes' events name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// An HTTP GET; 200–399 is a success.
    Http {
        /// Port in the pod.
        port: u16,
        /// Path and query.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens.
    Tcp {
        /// Port in the pod.
        port: u16,
    },
    /// A command run in the container (Linux containers only); exit 0 is a success.
    Exec {
        /// argv.
        command: Vec<String>,
    },
    /// A gRPC health check (`grpc.health.v1.Health/Check`); only `SERVING` passes.
    Grpc {
        /// Port in the pod.
        port: u16,
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

/// One probe of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Which.
    pub kind: Kind,
    /// What it checks.
    pub action: Action,
    /// Before the first check.
    pub initial_delay: Duration,
    /// Between checks.
    pub period: Duration,
    /// For one check.
    pub timeout: Duration,
    /// Successes in a row that count.
    pub success_threshold: u32,
    /// Failures in a row that count.
    pub failure_threshold: u32,
}

fn port_of(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => {
            u16::try_from(*n).map_err(|_| format!("probe port {n} is out of range"))
        }
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("probe port {name:?} names no port of container {}", c.name)),
    }
}

/// An `httpGet` handler (of a probe or a hook) as an [`Action`].
pub(super) fn http_action(c: &Container, h: &HTTPGetAction) -> Result<Action, String> {
    Ok(Action::Http {
        port: port_of(c, &h.port)?,
        path: h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into()),
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

fn spec(c: &Container, kind: Kind, p: &Probe) -> Result<ProbeSpec, String> {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    let action = if let Some(h) = &p.http_get {
        http_action(c, h)?
    } else if let Some(t) = &p.tcp_socket {
        Action::Tcp {
            port: port_of(c, &t.port)?,
        }
    } else if let Some(e) = &p.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(format!(
                "{} probe of container {} has an empty exec command",
                kind.as_str(),
                c.name
            ));
        }
        Action::Exec { command }
    } else if let Some(g) = &p.grpc {
        Action::Grpc {
            port: port_of(c, &IntOrString::Int(g.port))?,
            service: g.service.clone().unwrap_or_default(),
        }
    } else {
        return Err(format!(
            "{} probe of container {} has no handler",
            kind.as_str(),
            c.name
        ));
    };
    Ok(ProbeSpec {
        kind,
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        // Liveness and startup probes must use 1 (validation refuses others).
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

/// The container's probes.
pub fn probes(c: &Container) -> Result<Vec<ProbeSpec>, String> {
    let mut out = Vec::new();
    for (kind, p) in [
        (Kind::Startup, &c.startup_probe),
        (Kind::Liveness, &c.liveness_probe),
        (Kind::Readiness, &c.readiness_probe),
    ] {
        if let Some(p) = p {
            out.push(spec(c, kind, p)?);
        }
    }
    Ok(out)
}

/// Runs one check against the pod's loopback from inside `netns`.
pub async fn check(action: &Action, netns: &Path, timeout: Duration) -> Result<(), String> {
    let run = async {
        match action {
            Action::Tcp { port } => connect(netns, *port).await.map(drop),
            Action::Http {
                port,
                path,
                headers,
            } => http_get(netns, *port, path, headers).await,
            Action::Exec { .. } => Err("exec probes run through the container's executor".into()),
            Action::Grpc { port, service } => {
                let stream = connect(netns, *port).await?;
                super::grpc_health::check(stream, *port, service).await
            }
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {timeout:?}")),
    }
}

async fn connect(netns: &Path, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    skiff_shims::wasm::netns::connect_in(netns, addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))
}

async fn http_get(
    netns: &Path,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut s = connect(netns, port).await?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_string())?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Output of an exec probe kept for its failure message, as the kubelet keeps.
const EXEC_OUTPUT_LIMIT: usize = 10 * 1024;

/// Runs an exec probe's command in Linux container `id`, killed past `timeout`.
pub async fn exec_check(
    oci: &skiff_shims::oci::OciExecutor,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    use skiff_shims::oci::exec::Report;
    use skiff_shims::oci::session::ExecIo;
    let mut session = oci
        .exec(id, command, false)
        .await
        .map_err(|e| e.to_string())?;
    let output = match session.io.take() {
        Some(ExecIo::Pipes {
            stdin,
            stdout,
            stderr,
        }) => {
            drop(stdin);
            Some((stdout, stderr))
        }
        _ => None,
    };
    // Taken before the session moves into the check; used only if that times out, while
    // the helper still runs (it is not reaped before its process ends).
    let pid = session.pid();
    let run = async {
        let mut text = Vec::new();
        if let Some((out, err)) = output {
            let (a, b) = tokio::join!(read_capped(out), read_capped(err));
            text = a;
            text.extend_from_slice(&b);
            text.truncate(EXEC_OUTPUT_LIMIT);
        }
        (session.wait().await, text)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((Report::Exited(0), _)) => Ok(()),
        Ok((Report::Exited(code), out)) => {
            let out = String::from_utf8_lossy(&out);
            let out = out.trim();
            Err(if out.is_empty() {
                format!("command {command:?} exited with {code}")
            } else {
                format!("command {command:?} exited with {code}: {out}")
            })
        }
        Ok((Report::Failed(m), _)) => Err(m),
        Err(_) => {
            pid.kill();
            Err(format!("command {command:?} timed out after {timeout:?}"))
        }
    }
}

/// Reads to the end, keeping the first [`EXEC_OUTPUT_LIMIT`] bytes (the rest is read and
/// dropped, so the command never blocks on a full pipe).
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Consecutive results of one probe against its thresholds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    successes: u32,
    failures: u32,
}

/// What a result decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The success threshold was reached.
    Passing,
    /// The failure threshold was reached.
    Failing,
    /// Not decided yet.
    Undecided,
}

impl Tracker {
    /// Records one result.
    pub fn record(&mut self, spec: &ProbeSpec, ok: bool) -> Verdict {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= spec.success_threshold {
                return Verdict::Passing;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= spec.failure_threshold {
                return Verdict::Failing;
            }
        }
        Verdict::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        let mut base = json!({"name": "c", "ports": [{"name": "web", "containerPort": 8080}]});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn probes_from_the_spec() {
        let c = container(json!({
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "web", "httpHeaders": [{"name": "X", "value": "1"}]},
                               "periodSeconds": 2, "successThreshold": 2},
            "livenessProbe": {"tcpSocket": {"port": 9000}, "initialDelaySeconds": 5, "failureThreshold": 1},
            "startupProbe": {"exec": {"command": ["true"]}},
        }));
        let p = probes(&c).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].kind, &p[0].action),
            (
                Kind::Startup,
                &Action::Exec {
                    command: vec!["true".into()]
                }
            )
        );
        let empty = container(json!({"livenessProbe": {"exec": {"command": []}}}));
        assert!(probes(&empty).unwrap_err().contains("empty exec command"));
        let grpc = container(json!({"livenessProbe": {"grpc": {"port": 9000}}}));
        assert_eq!(
            probes(&grpc).unwrap()[0].action,
            Action::Grpc {
                port: 9000,
                service: String::new()
            }
        );
        let named = container(json!({"readinessProbe": {"grpc": {"port": 9000, "service": "db"}}}));
        assert_eq!(
            probes(&named).unwrap()[0].action,
            Action::Grpc {
                port: 9000,
                service: "db".into()
            }
        );
        assert_eq!(p[1].kind, Kind::Liveness);
        assert_eq!(p[1].action, Action::Tcp { port: 9000 });
        assert_eq!(p[1].initial_delay, Duration::from_secs(5));
        assert_eq!(p[1].failure_threshold, 1);
        assert_eq!(p[1].period, Duration::from_secs(10), "Kubernetes' default");
        assert_eq!(
            p[2].action,
            Action::Http {
                port: 8080,
                path: "/ready".into(),
                headers: vec![("X".into(), "1".into())]
            }
        );
        assert_eq!(
            (p[2].period, p[2].success_threshold, p[2].failure_threshold),
            (Duration::from_secs(2), 2, 3)
        );
        assert_eq!(p[2].timeout, Duration::from_secs(1));
        assert!(
            probes(&container(
                json!({"livenessProbe": {"tcpSocket": {"port": "nope"}}})
            ))
            .is_err()
        );
        assert!(probes(&container(json!({"livenessProbe": {"periodSeconds": 1}}))).is_err());
    }

    #[test]
    fn thresholds() {
        let spec = probes(&container(json!({"readinessProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2, "failureThreshold": 2}}))).unwrap().remove(0);
        let mut t = Tracker::default();
        assert_eq!(t.record(&spec, true), Verdict::Undecided);
        assert_eq!(t.record(&spec, true), Verdict::Passing);
        assert_eq!(t.record(&spec, false), Verdict::Undecided);
        assert_eq!(
            t.record(&spec, true),
            Verdict::Undecided,
            "a success resets the failures"
        );
        assert_eq!(t.record(&spec, false), Verdict::Undecided);
        assert_eq!(t.record(&spec, false), Verdict::Failing);
    }
}
