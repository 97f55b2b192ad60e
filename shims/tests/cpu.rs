//! CPU limits, measured as this process's CPU time (its own test binary, so no other test
//! runs beside it).
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::time::{Duration, Instant};

use common::*;
use skiff_shims::{Executor, Limits};

/// CPU share of this process while `id` spins for `window`.
async fn share_while_running(window: Duration) -> f64 {
    let (cpu0, t0) = (process_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, t1) = (process_cpu(), Instant::now());
    (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_throttles_a_busy_loop() {
    let node = node();
    let spin = node.wat("spin", SPIN);

    let mut capped = node.spec("capped", spin.clone());
    capped.limits = Limits {
        memory_bytes: None,
        cpu_millis: Some(200),
    };
    node.executor.run(capped).await.unwrap();
    let capped_share = share_while_running(Duration::from_secs(2)).await;
    node.executor.stop("capped", Duration::ZERO).await.unwrap();

    node.executor.run(node.spec("free", spin)).await.unwrap();
    let free_share = share_while_running(Duration::from_secs(2)).await;
    node.executor.stop("free", Duration::ZERO).await.unwrap();

    eprintln!("cpu share: capped at 200m {capped_share:.2}, uncapped {free_share:.2}");
    assert!(capped_share < 0.32, "capped share {capped_share:.2}");
    assert!(
        capped_share > 0.05,
        "capped guest made no progress: {capped_share:.2}"
    );
    assert!(
        free_share > capped_share * 1.5,
        "uncapped {free_share:.2} vs capped {capped_share:.2}"
    );
}
