//! What the pod network tests share: the machine's net guard, pods' addresses, and
//! fetching a URL from inside a container.

use super::Server;
use k8s_openapi::api::core::v1::Pod;
use std::net::Ipv4Addr;
use std::path::Path;

/// `net-guard.sh ARG` beside the project (or `SKIFF_NET_GUARD`); its output.
pub fn net_guard(arg: &str) -> String {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/net-guard.sh");
    let script = std::env::var("SKIFF_NET_GUARD").unwrap_or_else(|_| {
        if beside.exists() {
            beside.display().to_string()
        } else {
            "/work/shared/net-guard.sh".to_string()
        }
    });
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A pod's `status.podIP`; panics without one.
pub fn pod_ip(p: &Pod) -> Ipv4Addr {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or_else(|| panic!("no podIP: {:?}", p.status))
        .parse()
        .expect("an IPv4 podIP")
}

/// `wget -qO- URL` in pod `pod` (busybox's), through `kubectl exec`; its output.
pub fn wget_in(s: &Server, pod: &str, url: &str) -> String {
    s.kubectl_ok(&["exec", pod, "--", "wget", "-qO-", url])
}
