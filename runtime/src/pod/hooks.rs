//! Container lifecycle hooks: `postStart`, run once the container has started (a failure
//! kills it, and it restarts by its policy), and `preStop`, run before the stop signal
//! within the termination grace period.
//!
//! [`hook`] reads a hook from the container (pure, table-tested); [`run`] runs it: `exec`
//! in a Linux container (Wasm containers have no processes), `httpGet` to the pod's
//! loopback from inside its network namespace, `sleep`.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};

use super::probes::{self, Action};
use crate::executors::Runtime;

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// After the container starts.
    PostStart,
    /// Before it is stopped.
    PreStop,
}

impl Which {
    /// The event reason of its failure.
    pub fn failed_reason(self) -> &'static str {
        match self {
            Which::PostStart => "FailedPostStartHook",
            Which::PreStop => "FailedPreStopHook",
        }
    }
}

/// What a hook does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A command (or an HTTP GET), as probes run them.
    Check(Action),
    /// Wait this long.
    Sleep(Duration),
}

/// The container's `which` hook, if it has one.
pub fn hook(c: &Container, which: Which) -> Result<Option<Hook>, String> {
    let Some(lc) = &c.lifecycle else {
        return Ok(None);
    };
    let h: Option<&LifecycleHandler> = match which {
        Which::PostStart => lc.post_start.as_ref(),
        Which::PreStop => lc.pre_stop.as_ref(),
    };
    let Some(h) = h else { return Ok(None) };
    if let Some(e) = &h.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("the hook's exec command is empty".into());
        }
        return Ok(Some(Hook::Check(Action::Exec { command })));
    }
    if let Some(g) = &h.http_get {
        return Ok(Some(Hook::Check(probes::http_action(c, g)?)));
    }
    if let Some(s) = &h.sleep {
        return Ok(Some(Hook::Sleep(Duration::from_secs(
            s.seconds.max(0) as u64
        ))));
    }
    Err("the hook has no handler this node runs (exec, httpGet, sleep)".into())
}

/// Where a hook runs.
pub struct Target<'a> {
    /// The container's executor.
    pub runtime: Runtime,
    /// Linux containers, for exec.
    pub oci: Option<&'a skiff_shims::oci::OciExecutor>,
    /// The container's executor id.
    pub id: &'a str,
    /// The pod's network namespace, for httpGet.
    pub netns: &'a Path,
}

/// Runs `hook` for at most `limit`.
pub async fn run(hook: &Hook, target: &Target<'_>, limit: Duration) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        Hook::Check(Action::Exec { command }) => match (target.runtime, target.oci) {
            (Runtime::Oci, Some(oci)) => probes::exec_check(oci, target.id, command, limit).await,
            _ => Err("Wasm containers have no processes: an exec hook cannot run".into()),
        },
        Hook::Check(action) => probes::check(action, target.netns, limit).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn container(lifecycle: serde_json::Value) -> Container {
        serde_json::from_value(json!({
            "name": "c", "ports": [{"name": "web", "containerPort": 8080}],
            "lifecycle": lifecycle,
        }))
        .unwrap()
    }

    #[test]
    fn hooks_from_the_spec() {
        let c = container(json!({
            "postStart": {"exec": {"command": ["touch", "/tmp/started"]}},
            "preStop": {"httpGet": {"path": "/drain", "port": "web"}},
        }));
        assert_eq!(
            hook(&c, Which::PostStart).unwrap(),
            Some(Hook::Check(Action::Exec {
                command: vec!["touch".into(), "/tmp/started".into()]
            }))
        );
        assert_eq!(
            hook(&c, Which::PreStop).unwrap(),
            Some(Hook::Check(Action::Http {
                port: 8080,
                path: "/drain".into(),
                headers: vec![]
            }))
        );
        let sleepy = container(json!({"preStop": {"sleep": {"seconds": 3}}}));
        assert_eq!(
            hook(&sleepy, Which::PreStop).unwrap(),
            Some(Hook::Sleep(Duration::from_secs(3)))
        );
        assert_eq!(hook(&sleepy, Which::PostStart).unwrap(), None);
        let none: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(hook(&none, Which::PreStop).unwrap(), None);
        for bad in [
            json!({"preStop": {"exec": {"command": []}}}),
            json!({"preStop": {"httpGet": {"port": "nope"}}}),
            json!({"preStop": {"tcpSocket": {"port": 80}}}),
        ] {
            assert!(
                hook(&container(bad.clone()), Which::PreStop).is_err(),
                "{bad}"
            );
        }
        assert_eq!(Which::PreStop.failed_reason(), "FailedPreStopHook");
    }
}
