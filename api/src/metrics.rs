//! Request metrics in Prometheus' text format.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Hist {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and histograms of the apiserver.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    latency: Mutex<HashMap<(String, String), Hist>>,
    /// Watches currently open.
    pub watches: AtomicI64,
}

impl Metrics {
    /// Count one request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((verb.to_string(), resource.to_string(), code))
                .or_default() += 1;
        }
        if verb == "watch" {
            return;
        }
        let secs = took.as_secs_f64();
        if let Ok(mut m) = self.latency.lock() {
            let h = m
                .entry((verb.to_string(), resource.to_string()))
                .or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// Render all metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP skiff_apiserver_requests_total Requests by verb, resource and HTTP code.\n",
        );
        out.push_str("# TYPE skiff_apiserver_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((verb, res, code), n) in rows {
                out.push_str(&format!(
                    "skiff_apiserver_requests_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP skiff_apiserver_request_duration_seconds Request latency by verb and resource.\n");
        out.push_str("# TYPE skiff_apiserver_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((verb, res), h) in rows {
                let l = format!("verb=\"{verb}\",resource=\"{res}\"");
                for (i, b) in BUCKETS.iter().enumerate() {
                    out.push_str(&format!(
                        "skiff_apiserver_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}\n",
                        h.buckets[i]
                    ));
                }
                out.push_str(&format!(
                    "skiff_apiserver_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}\n",
                    h.count
                ));
                out.push_str(&format!(
                    "skiff_apiserver_request_duration_seconds_sum{{{l}}} {}\n",
                    h.sum
                ));
                out.push_str(&format!(
                    "skiff_apiserver_request_duration_seconds_count{{{l}}} {}\n",
                    h.count
                ));
            }
        }
        out.push_str("# HELP skiff_apiserver_watches Watches currently open.\n# TYPE skiff_apiserver_watches gauge\n");
        out.push_str(&format!(
            "skiff_apiserver_watches {}\n",
            self.watches.load(Ordering::Relaxed)
        ));
        out
    }
}
