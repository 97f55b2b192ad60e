//! The node's resource usage, as the kubelet's `GET /stats/summary` reports it (the
//! subset `kubectl top` and metrics-server read): the node, each pod, each container.
//! The apiserver proxies it as `GET /api/v1/nodes/NAME/proxy/stats/summary`.
//!
//! Linux containers' figures come from their cgroups, read with libcgroups (the
//! libcontainer project's cgroup crate, already here for the containers themselves, which
//! reads v1, v2 and hybrid layouts alike); a pod's are its cgroup's. CPU rates
//! (`usageNanoCores`) are the change since the previous read of the same cgroup. Wasm
//! guests share the node's Wasm host process, so they have no cgroup of their own: the
//! Wasm host accounts for each container itself (the CPU time of every poll of its
//! guests, the linear memories and tables of its live instances) and reports it in its
//! container list. A pod's figures are its cgroup's plus its Wasm containers'.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager as _};
use serde_json::{Value, json};

use skiff_shims::{Executor as _, GuestUsage};

use crate::executors::Runtime;
use crate::logserver::{authorized, status};
use crate::pod::logs::LogRegistry;
use crate::wasmhost::WasmHost;

/// One reading of a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used so far, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory charged to the cgroup, page cache included.
    pub memory_bytes: u64,
    /// Memory the kernel cannot simply drop: usage less inactive file pages.
    pub working_set_bytes: u64,
    /// Anonymous memory and swap cache.
    pub rss_bytes: u64,
}

/// Reads the cgroup at `path` (relative to each hierarchy's root, e.g.
/// `skiff/pod-UID/app`).
pub fn cgroup_usage(path: &str) -> Option<Usage> {
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: path.into(),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .ok()?;
    // cgroup v1 counts CPU in nanoseconds, v2 in microseconds.
    let cpu_scale = match &manager {
        AnyCgroupManager::V2(_) | AnyCgroupManager::Systemd(_) => 1000,
        AnyCgroupManager::V1(_) => 1,
    };
    let stats = manager.stats().ok()?;
    let m = &stats.memory;
    let get = |k: &str| m.stats.get(k).copied().unwrap_or(0);
    let (inactive_file, rss) = match cpu_scale {
        1 => (get("total_inactive_file"), get("total_rss")),
        _ => (get("inactive_file"), get("anon")),
    };
    Some(Usage {
        cpu_ns: stats.cpu.usage.usage_total.saturating_mul(cpu_scale),
        memory_bytes: m.memory.usage,
        working_set_bytes: m.memory.usage.saturating_sub(inactive_file),
        rss_bytes: rss,
    })
}

impl From<GuestUsage> for Usage {
    /// A Wasm guest's memory is all anonymous and in use: every figure is its size.
    fn from(g: GuestUsage) -> Usage {
        Usage {
            cpu_ns: g.cpu_ns,
            memory_bytes: g.memory_bytes,
            working_set_bytes: g.memory_bytes,
            rss_bytes: g.memory_bytes,
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_add(o.cpu_ns),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            working_set_bytes: self.working_set_bytes.saturating_add(o.working_set_bytes),
            rss_bytes: self.rss_bytes.saturating_add(o.rss_bytes),
        }
    }
}

/// CPU rates from successive readings.
#[derive(Clone, Default)]
pub struct Rates {
    last: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

impl Rates {
    /// Nanocores used by `key` since its previous reading (none on the first).
    pub fn nano_cores(&self, key: &str, cpu_ns: u64) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let prev = last.insert(key.to_string(), (cpu_ns, now));
        let (prev_ns, at) = prev?;
        let secs = now.duration_since(at).as_secs_f64();
        (secs > 0.0).then(|| (cpu_ns.saturating_sub(prev_ns) as f64 / secs) as u64)
    }
}

/// The JSON of one reading, as the kubelet writes `cpu` and `memory`.
pub fn usage_json(u: &Usage, nano_cores: Option<u64>, time: &str) -> (Value, Value) {
    let mut cpu = json!({"time": time, "usageCoreNanoSeconds": u.cpu_ns});
    if let Some(n) = nano_cores {
        cpu["usageNanoCores"] = json!(n);
    }
    let memory = json!({
        "time": time,
        "usageBytes": u.memory_bytes,
        "workingSetBytes": u.working_set_bytes,
        "rssBytes": u.rss_bytes,
    });
    (cpu, memory)
}

/// The node's own usage, from `/proc`.
fn node_usage() -> Option<(Usage, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are used.
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .map(|(_, v)| v)
        .sum();
    let hz = 100; // USER_HZ, 100 on Linux.
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |k: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
            .unwrap_or(0)
    };
    let (total, available) = (kb("MemTotal:"), kb("MemAvailable:"));
    let used = total.saturating_sub(kb("MemFree:"));
    Some((
        Usage {
            cpu_ns: busy * (1_000_000_000 / hz),
            memory_bytes: used,
            working_set_bytes: total.saturating_sub(available),
            rss_bytes: kb("AnonPages:"),
        },
        available,
    ))
}

/// What the endpoint needs.
#[derive(Clone)]
pub struct StatsState {
    /// The node's name.
    pub node_name: String,
    /// The node's pods.
    pub registry: LogRegistry,
    /// The apiserver's token.
    pub token: Arc<String>,
    /// CPU rates.
    pub rates: Rates,
    /// The Wasm host, which accounts for its guests.
    pub wasm: Arc<WasmHost>,
}

/// The summary; `wasm` is what the Wasm host accounts for each of its containers, by id.
pub fn summary(st: &StatsState, wasm: &HashMap<String, GuestUsage>) -> Value {
    let time = jiff::Timestamp::now().to_string();
    let mut node = json!({"nodeName": st.node_name});
    if let Some((u, available)) = node_usage() {
        let (cpu, mut memory) = usage_json(&u, st.rates.nano_cores("", u.cpu_ns), &time);
        memory["availableBytes"] = json!(available);
        node["cpu"] = cpu;
        node["memory"] = memory;
    }
    let mut pods = Vec::new();
    for ((ns, name), view) in st.registry.all() {
        let mut pod = json!({
            "podRef": {"name": name, "namespace": ns, "uid": view.uid},
        });
        let mut total = view.cgroup.as_deref().and_then(cgroup_usage);
        let mut containers = Vec::new();
        for (cname, c) in &view.containers {
            let Some((runtime, id)) = &c.running_on else {
                continue;
            };
            let usage = match runtime {
                Runtime::Oci => view
                    .cgroup
                    .as_ref()
                    .and_then(|p| cgroup_usage(&format!("{p}/{cname}"))),
                Runtime::Wasm => wasm.get(id).map(|g| Usage::from(*g)),
            };
            let mut cj = json!({"name": cname});
            if let Some(u) = usage {
                let key = format!("{}:{id}", runtime.scheme());
                let (cpu, memory) = usage_json(&u, st.rates.nano_cores(&key, u.cpu_ns), &time);
                cj["cpu"] = cpu;
                cj["memory"] = memory;
                if *runtime == Runtime::Wasm {
                    // Not in the pod's cgroup: added to it.
                    total = Some(total.unwrap_or_default() + u);
                }
            }
            containers.push(cj);
        }
        if let Some(u) = total {
            let key = format!("pod:{}", view.uid);
            let (cpu, memory) = usage_json(&u, st.rates.nano_cores(&key, u.cpu_ns), &time);
            pod["cpu"] = cpu;
            pod["memory"] = memory;
        }
        pod["containers"] = json!(containers);
        pods.push(pod);
    }
    json!({"node": node, "pods": pods})
}

async fn stats_summary(State(st): State<StatsState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &st.token) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    }
    // Without the Wasm host (restarting), its containers are listed without figures.
    let wasm: HashMap<String, GuestUsage> = match st.wasm.list().await {
        Ok(all) => all
            .into_iter()
            .filter_map(|c| Some((c.id, c.usage?)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no Wasm usage for the stats");
            HashMap::new()
        }
    };
    let body = tokio::task::spawn_blocking(move || summary(&st, &wasm))
        .await
        .unwrap_or(Value::Null);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The endpoint's router.
pub fn router(state: StatsState) -> Router {
    Router::new()
        .route("/stats/summary", get(stats_summary))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_successive_readings() {
        let r = Rates::default();
        assert_eq!(r.nano_cores("a", 1_000), None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = r.nano_cores("a", 1_000 + 10_000_000).unwrap_or(0);
        // 10 ms of CPU over about 20 ms: about half a core.
        assert!((100_000_000..=600_000_000).contains(&n), "{n}");
        assert_eq!(r.nano_cores("b", 5), None, "each cgroup has its own");
    }

    #[test]
    fn readings_are_shaped_as_the_kubelet_writes_them() {
        let u = Usage {
            cpu_ns: 7,
            memory_bytes: 100,
            working_set_bytes: 60,
            rss_bytes: 40,
        };
        let (cpu, memory) = usage_json(&u, Some(3), "t");
        assert_eq!(
            cpu,
            json!({"time": "t", "usageCoreNanoSeconds": 7, "usageNanoCores": 3})
        );
        assert_eq!(
            memory,
            json!({"time": "t", "usageBytes": 100, "workingSetBytes": 60, "rssBytes": 40})
        );
    }

    #[test]
    fn the_node_reads_its_own_usage() {
        let (u, available) = node_usage().unwrap_or_default();
        assert!(
            u.cpu_ns > 0 && u.working_set_bytes > 0 && available > 0,
            "{u:?}"
        );
    }
}
