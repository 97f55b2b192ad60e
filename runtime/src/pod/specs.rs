//! What the pod worker hands an executor: the executor for an artifact, and the
//! [`ContainerSpec`] completed for a Wasm guest (argv, listeners, outgoing HTTP) or a Linux
//! container (layers, image config, user, privileges, the pod's files, hostPorts).

use super::{
    ALLOWED_HOSTS_ANNOTATION, Ctx, DEFAULT_HTTP_PORT, DEFAULT_REQUEST_TIMEOUT,
    REQUEST_TIMEOUT_ANNOTATION, Worker, container, env, parse_duration, quantity_u64,
};
use crate::artifacts::ArtifactContent;
use crate::executors::{Runner, Runtime};
use k8s_openapi::api::core::v1::Container as K8sContainer;
use skiff_shims::{ContainerSpec, HttpSpec, Listener};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

impl Worker {
    /// The executor for `runtime`. The OCI one exists whenever a slot was given
    /// [`Runtime::Oci`] ([`Worker::runtime_for`] checks).
    pub(super) fn runner(&self, runtime: Runtime) -> Runner<'_> {
        runner_of(&self.ctx, runtime)
    }

    /// Which executor runs this artifact under the pod's RuntimeClass handler, or why none.
    pub(super) fn runtime_for(
        &self,
        image: &str,
        handler: &str,
        content: &ArtifactContent,
    ) -> Result<Runtime, String> {
        let class = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .unwrap_or_else(|| "oci".into());
        match content {
            ArtifactContent::Wasm(_) if handler == "oci" => Err(format!(
                "image \"{image}\" is a Wasm artifact, and RuntimeClass \"{class}\" runs only OCI containers; use runtimeClassName \"wasm\" or \"mixed\""
            )),
            ArtifactContent::Wasm(_) => Ok(Runtime::Wasm),
            ArtifactContent::Container(_) if handler == "wasm" => Err(format!(
                "image \"{image}\" is a container image, and RuntimeClass \"{class}\" runs only Wasm artifacts; use runtimeClassName \"oci\" or \"mixed\""
            )),
            ArtifactContent::Container(_) => match &self.ctx.oci {
                Ok(_) => Ok(Runtime::Oci),
                Err(why) => Err(format!(
                    "image \"{image}\" is a container image, and this node cannot run Linux containers: {why}"
                )),
            },
        }
    }

    /// Completes `cspec` for a Wasm artifact: argv and the HTTP service's listeners.
    pub(super) fn wasm_spec(
        &self,
        cspec: &mut ContainerSpec,
        spec: &K8sContainer,
        wasm: &crate::artifacts::WasmArtifact,
    ) {
        let expand = |s: &String| env::expand(s, &cspec.env);
        let mut args: Vec<String> = spec.command.iter().flatten().map(expand).collect();
        if args.is_empty() {
            args.push(spec.name.clone());
        }
        args.extend(spec.args.iter().flatten().map(expand));
        cspec.args = args;
        cspec.artifact.path = wasm.path.clone();
        cspec.artifact.digest = wasm.digest.clone();
        cspec.http = Some(self.http_spec(spec));
        // Outgoing HTTP goes out from the pod's namespace: to its own containers on
        // localhost, and to the hosts the pod lists.
        cspec.outgoing = self.sandbox.as_ref().map(|sb| skiff_shims::OutgoingHttp {
            netns: sb.netns.clone(),
            allowed_hosts: self
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ALLOWED_HOSTS_ANNOTATION))
                .map(|v| {
                    v.split(',')
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        });
    }

    /// Completes `cspec` for a Linux container: its image's layers and config merged with
    /// the container's spec, its user, privileges and the pod's files. Errors are
    /// `(reason, message)` for the container's waiting state.
    pub(super) async fn oci_spec(
        &mut self,
        cspec: &mut ContainerSpec,
        spec: &K8sContainer,
        image: &str,
        img: &crate::artifacts::ContainerImage,
    ) -> Result<(), (&'static str, String)> {
        let layers = self
            .ctx
            .artifacts
            .unpacked_layers(image, img)
            .await
            .map_err(|e| {
                (
                    e.reason().as_str(),
                    format!("Failed to pull image \"{image}\": {e}"),
                )
            })?;
        let config_bytes = std::fs::read(&img.config_path)
            .map_err(|e| ("ErrImagePull", format!("image config: {e}")))?;
        let config = container::parse_image_config(&config_bytes)
            .map_err(|e| ("InvalidArtifact", format!("image \"{image}\": {e}")))?;
        let expand = |s: &String| env::expand(s, &cspec.env);
        cspec.args =
            container::argv(&config, spec, expand).map_err(|e| ("CreateContainerError", e))?;
        cspec.env = container::merge_env(&config.env, std::mem::take(&mut cspec.env));
        let (passwd, group) = image_identity_files(&layers);
        let user = container::user(&self.pod, spec, &config, &passwd, &group)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        let mut security = container::security(&self.pod, spec, self.ctx.allow_privileged)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        if let Some(name) = container::localhost_profile(&self.pod, spec)
            .map_err(|e| ("CreateContainerConfigError", e))?
        {
            let profile = container::load_seccomp_profile(&self.ctx.seccomp_dir, &name)
                .map_err(|e| ("CreateContainerConfigError", e))?;
            security.seccomp_profile = Some(profile);
        }
        let files = self.pod_files().map_err(|e| ("CreateContainerError", e))?;
        let sandbox = self
            .sandbox
            .as_ref()
            .ok_or(("CreateContainerError", "the pod has no sandbox".to_string()))?;
        let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
        cspec.artifact.path = img.config_path.clone();
        cspec.oci = Some(skiff_shims::OciOptions {
            layers,
            cwd: container::working_dir(&config, spec),
            user,
            hostname: container::hostname(&self.pod),
            netns: sandbox.netns.clone(),
            pid_ns: sandbox.pid_ns.clone(),
            cgroup: format!("{}/{}", sandbox.cgroup, spec.name),
            files,
            cpu_request_millis: quantity_u64(requests.and_then(|r| r.get("cpu")), true),
            pids_limit: Some(self.ctx.pod_max_pids),
            security,
            host_ports: host_ports(spec),
            stdin: spec.stdin.unwrap_or(false),
        });
        Ok(())
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of the pod's containers,
    /// written once into the pod's directory.
    pub(super) fn pod_files(&self) -> Result<Vec<(PathBuf, String)>, String> {
        let dir = self.ctx.pods_dir.join(&self.uid).join("etc");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hosts", container::etc_hosts(&self.pod)),
            ("hostname", format!("{}\n", container::hostname(&self.pod))),
            (
                "resolv.conf",
                container::resolv_conf(&self.pod, &node_resolv),
            ),
        ];
        let mut out = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            if !path.exists() {
                std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            out.push((path, format!("/etc/{name}")));
        }
        Ok(out)
    }

    pub(super) fn http_spec(&self, c: &K8sContainer) -> HttpSpec {
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone());
        let mut listeners = Vec::new();
        for p in c.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|x| x != "TCP") {
                continue;
            }
            let Ok(port) = u16::try_from(p.container_port) else {
                continue;
            };
            listeners.push(Listener {
                addr: SocketAddr::new(pod_any(), port),
                netns: netns.clone(),
            });
            if let Some(hp) = p
                .host_port
                .and_then(|h| u16::try_from(h).ok())
                .filter(|h| *h > 0)
            {
                let ip = p
                    .host_ip
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                listeners.push(Listener {
                    addr: SocketAddr::new(ip, hp),
                    netns: None,
                });
            }
        }
        if listeners.is_empty() {
            listeners.push(Listener {
                addr: SocketAddr::new(pod_any(), DEFAULT_HTTP_PORT),
                netns,
            });
        }
        let request_timeout = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REQUEST_TIMEOUT_ANNOTATION))
            .and_then(|v| parse_duration(v))
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        HttpSpec {
            listeners,
            request_timeout,
            header_read_timeout: self.ctx.http_limits.header_read_timeout,
            max_connections: self.ctx.http_limits.max_connections,
        }
    }
}

/// Where a Wasm service listens inside its pod: every address, IPv6 and IPv4 alike when
/// the kernel has IPv6 (`localhost` may resolve to `::1` for the pod's other containers).
fn pod_any() -> IpAddr {
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// The executor for `runtime` (the Wasm host if the node has no OCI executor, which
/// [`Worker::runtime_for`] never lets a container ask for).
pub(super) fn runner_of(ctx: &Ctx, runtime: Runtime) -> Runner<'_> {
    match (runtime, &ctx.oci) {
        (Runtime::Oci, Ok(oci)) => Runner::Oci(oci),
        _ => Runner::Wasm(&ctx.host),
    }
}

/// The TCP hostPorts of a container (its shim serves them).
fn host_ports(c: &K8sContainer) -> Vec<skiff_shims::executor::HostPort> {
    c.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP"))
        .filter_map(|p| {
            let host = u16::try_from(p.host_port?).ok().filter(|h| *h > 0)?;
            let ip = p
                .host_ip
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            Some(skiff_shims::executor::HostPort {
                host: SocketAddr::new(ip, host),
                container_port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

/// The image's `/etc/passwd` and `/etc/group` (from the topmost layer that has each), for
/// resolving a user name; empty when the image has none.
fn image_identity_files(layers: &[PathBuf]) -> (String, String) {
    let read = |name: &str| {
        layers
            .iter()
            .rev()
            .find_map(|l| std::fs::read_to_string(l.join("etc").join(name)).ok())
            .unwrap_or_default()
    };
    (read("passwd"), read("group"))
}
