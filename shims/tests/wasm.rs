//! The Wasm executor against real wasmtime: guests in inline WAT, files in temp dirs.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::time::Duration;

use common::*;
use skiff_shims::{ContainerState, ErrorKind, Executor, ExitReason, Limits, Mount, WorkloadKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_module_writes_cri_log_lines() {
    let node = node();
    let spec = node.spec("hello", node.wat("hello", HELLO));
    let info = node.executor.run(spec).await.unwrap();
    assert_eq!(info.kind, WorkloadKind::Module);
    let status = node.executor.wait("hello").await.unwrap();
    assert_eq!(status.reason, ExitReason::Completed);
    assert_eq!(status.code, 0);
    assert_eq!(
        node.log("hello"),
        ["stdout F hello world", "stderr F to stderr"]
    );
    let raw = std::fs::read_to_string(node.log_path("hello")).unwrap();
    let stamp = raw.split(' ').next().unwrap();
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_and_env_are_exactly_the_specs() {
    let node = node();
    let mut spec = node.spec("args", node.wat("args", ARGS_ENV));
    spec.args = vec!["prog".into(), "--flag".into(), "two words".into()];
    spec.env = vec![("A".into(), "1".into()), ("B".into(), "x=y".into())];
    node.executor.run(spec).await.unwrap();
    node.executor.wait("args").await.unwrap();
    assert_eq!(
        node.log("args"),
        [
            "stdout F prog",
            "stdout F --flag",
            "stdout F two words",
            "stdout F A=1",
            "stdout F B=x=y"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_become_completed_or_error() {
    let node = node();
    node.executor
        .run(node.spec("three", node.wat("three", EXIT_3)))
        .await
        .unwrap();
    let status = node.executor.wait("three").await.unwrap();
    assert_eq!((status.code, status.reason), (3, ExitReason::Error));

    node.executor
        .run(node.spec("zero", node.wat("zero", EXIT_0)))
        .await
        .unwrap();
    let status = node.executor.wait("zero").await.unwrap();
    assert_eq!((status.code, status.reason), (0, ExitReason::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_reports_its_text() {
    let node = node();
    node.executor
        .run(node.spec("div", node.wat("div", DIV_BY_ZERO)))
        .await
        .unwrap();
    let status = node.executor.wait("div").await.unwrap();
    assert_eq!(status.reason, ExitReason::Trap);
    assert_eq!(status.message, "wasm trap: integer divide by zero");
    assert_eq!(status.code, skiff_shims::executor::EXIT_TRAP);
    assert!(
        node.log("div")
            .iter()
            .any(|l| l.contains("integer divide by zero"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow_is_a_trap() {
    let node = node();
    node.executor
        .run(node.spec("deep", node.wat("deep", RECURSE)))
        .await
        .unwrap();
    let status = node.executor.wait("deep").await.unwrap();
    assert_eq!(status.reason, ExitReason::Trap);
    assert_eq!(status.message, "wasm trap: call stack exhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_past_limit_is_oom_killed() {
    let node = node();
    let mut spec = node.spec("bomb", node.wat("bomb", MEMORY_BOMB));
    spec.limits = Limits {
        memory_bytes: Some(8 << 20),
        cpu_millis: None,
    };
    node.executor.run(spec).await.unwrap();
    let status = node.executor.wait("bomb").await.unwrap();
    assert_eq!(status.reason, ExitReason::OomKilled, "{status:?}");
    assert_eq!(status.code, 137);
    assert!(
        status.message.contains("memory limit of 8388608 bytes"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_runs_until_stopped() {
    let node = node();
    node.executor
        .run(node.spec("spin", node.wat("spin", SPIN)))
        .await
        .unwrap();
    // Still running after a good number of epoch ticks: it is not timed out by itself.
    let running = || {
        node.executor
            .get("spin")
            .is_some_and(|c| matches!(c.state, ContainerState::Running { .. }))
    };
    assert!(!eventually(Duration::from_millis(300), || !running()).await);
    let started = std::time::Instant::now();
    node.executor
        .stop("spin", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "commands stop at once"
    );
    let status = node.executor.wait("spin").await.unwrap();
    assert_eq!(status.reason, ExitReason::Stopped);
    assert_eq!(status.code, 137);
    assert_eq!(status.message, "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_start_export_is_invalid_artifact() {
    let node = node();
    let err = node
        .executor
        .run(node.spec("nostart", node.wat("nostart", NO_START)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArtifact, "{err}");
    assert!(err.to_string().contains("_start"), "{err}");
    assert!(node.executor.get("nostart").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_wasm_is_invalid_artifact() {
    let node = node();
    let artifact = node.artifact("script", b"#!/bin/sh\necho hi\n");
    assert!(!node.executor.handles(&artifact.path));
    let err = node
        .executor
        .run(node.spec("script", artifact))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArtifact, "{err}");

    let broken = node.artifact("broken", b"\0asm\x01\0\0\0\x99garbage");
    assert!(node.executor.handles(&broken.path));
    let err = node
        .executor
        .run(node.spec("broken", broken))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArtifact, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_import_cannot_run() {
    let node = node();
    let err = node
        .executor
        .run(node.spec("missiles", node.wat("missiles", UNKNOWN_IMPORT)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContainerCannotRun, "{err}");
    assert!(err.to_string().contains("launch_missiles"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_all_the_guest_sees_and_read_only_holds() {
    let node = node();
    let ro = node.dir.path().join("ro");
    let rw = node.dir.path().join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("hello.txt"), "mounted file\n").unwrap();
    std::fs::write(node.dir.path().join("secret.txt"), "do not read").unwrap();
    let mut spec = node.spec("fs", node.wat("fs", FS_PROBE));
    spec.mounts = vec![
        Mount {
            host_path: ro.clone(),
            sub_path: String::new(),
            guest_path: "/data".into(),
            read_only: true,
        },
        Mount {
            host_path: rw.clone(),
            sub_path: String::new(),
            guest_path: "/scratch".into(),
            read_only: false,
        },
    ];
    node.executor.run(spec).await.unwrap();
    let status = node.executor.wait("fs").await.unwrap();
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(node.log("fs"), ["stdout F mounted file"]);
    assert!(!ro.join("new.txt").exists());
    assert!(rw.join("new.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mount_cannot_run() {
    let node = node();
    let mut spec = node.spec("nomount", node.wat("hello", HELLO));
    spec.mounts = vec![Mount {
        host_path: node.dir.path().join("absent"),
        sub_path: String::new(),
        guest_path: "/data".into(),
        read_only: true,
    }];
    let err = node.executor.run(spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContainerCannotRun, "{err}");
}

/// A guest of an earlier container left `up -> ../..` in a volume; mounting that
/// subPath must not hand the next guest the directory it points to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_path_through_a_planted_symlink_cannot_run() {
    let node = node();
    let vol = node.dir.path().join("vol");
    std::fs::create_dir_all(vol.join("ok")).unwrap();
    std::os::unix::fs::symlink("../..", vol.join("up")).unwrap();
    std::fs::write(vol.join("ok/hello.txt"), "mounted file\n").unwrap();
    let mount = |sub: &str| Mount {
        host_path: vol.clone(),
        sub_path: sub.into(),
        guest_path: "/data".into(),
        read_only: true,
    };
    let mut spec = node.spec("escape", node.wat("fs", FS_PROBE));
    spec.mounts = vec![mount("up")];
    let err = node.executor.run(spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContainerCannotRun, "{err}");
    assert!(
        err.to_string()
            .contains("subPath \"up\" resolves outside of its volume"),
        "{err}"
    );
    // The same volume through a subPath that stays inside works.
    let mut spec = node.spec("inside", node.wat("fs", FS_PROBE));
    let scratch = node.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    spec.mounts = vec![
        mount("ok"),
        Mount {
            host_path: scratch,
            sub_path: String::new(),
            guest_path: "/scratch".into(),
            read_only: false,
        },
    ];
    node.executor.run(spec).await.unwrap();
    let status = node.executor.wait("inside").await.unwrap();
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(node.log("inside"), ["stdout F mounted file"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_start_loads_compiled_code_from_cache() {
    let node = node();
    let artifact = node.wat("hello", HELLO);
    node.executor
        .run(node.spec("a", artifact.clone()))
        .await
        .unwrap();
    node.executor.wait("a").await.unwrap();
    let stats = node.executor.cache_stats();
    assert_eq!((stats.compiled, stats.loaded), (1, 0));

    node.executor
        .run(node.spec("b", artifact.clone()))
        .await
        .unwrap();
    node.executor.wait("b").await.unwrap();
    let stats = node.executor.cache_stats();
    assert_eq!((stats.compiled, stats.loaded), (1, 1));

    // A new process (here: a new executor on the same cache dir) does not compile either.
    let again = executor_in(&node.dir.path().join("cache"));
    again.run(node.spec("c", artifact.clone())).await.unwrap();
    assert_eq!(again.wait("c").await.unwrap().code, 0);
    assert_eq!(again.cache_stats().compiled, 0);
    assert_eq!(again.cache_stats().loaded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_entry_is_recompiled() {
    let node = node();
    let artifact = node.wat("hello", HELLO);
    node.executor
        .run(node.spec("a", artifact.clone()))
        .await
        .unwrap();
    node.executor.wait("a").await.unwrap();
    let cache = node.dir.path().join("cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"definitely not machine code").unwrap();

    let fresh = executor_in(&cache);
    fresh.run(node.spec("b", artifact)).await.unwrap();
    assert_eq!(fresh.wait("b").await.unwrap().code, 0);
    assert_eq!(fresh.cache_stats().compiled, 1);
    assert!(std::fs::metadata(&entries[0]).unwrap().len() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_cannot_run_twice_but_replaces_an_exited_one() {
    let node = node();
    let spin = node.wat("spin", SPIN);
    node.executor
        .run(node.spec("x", spin.clone()))
        .await
        .unwrap();
    let err = node
        .executor
        .run(node.spec("x", spin.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    node.executor.stop("x", Duration::ZERO).await.unwrap();
    node.executor
        .run(node.spec("x", node.wat("hello", HELLO)))
        .await
        .unwrap();
    assert_eq!(node.executor.wait("x").await.unwrap().code, 0);
    node.executor.remove("x").await.unwrap();
    assert!(node.executor.list().await.unwrap().is_empty());
    assert_eq!(
        node.executor.wait("x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_events_are_broadcast() {
    let node = node();
    let mut events = node.executor.subscribe();
    node.executor
        .run(node.spec("e", node.wat("three", EXIT_3)))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.id, "e");
    assert_eq!(event.status.code, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_command_component_runs() {
    let node = node();
    let info = node
        .executor
        .run(node.spec("cmd", node.wat("cmd", COMMAND_COMPONENT)))
        .await
        .unwrap();
    assert_eq!(info.kind, WorkloadKind::Command);
    let status = node.executor.wait("cmd").await.unwrap();
    assert_eq!((status.code, status.reason), (0, ExitReason::Completed));
    assert_eq!(node.log("cmd"), ["stdout F hello from a component"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_without_known_exports_is_invalid_artifact() {
    let node = node();
    let empty = node.wat("empty", "(component)");
    let err = node
        .executor
        .run(node.spec("empty", empty))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArtifact, "{err}");
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sized_from_memory_runs_guests() {
    let dir = tempfile::tempdir().unwrap();
    let executor = skiff_shims::wasm::WasmExecutor::new(skiff_shims::wasm::WasmConfig::new(
        dir.path().join("cache"),
    ))
    .unwrap();
    eprintln!("pooling allocator reserved: {}", executor.pooling());
    let node = Node {
        dir,
        executor: executor.clone(),
    };
    node.executor
        .run(node.spec("hello", node.wat("hello", HELLO)))
        .await
        .unwrap();
    assert_eq!(node.executor.wait("hello").await.unwrap().code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_that_cannot_be_reserved_falls_back_to_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = skiff_shims::wasm::WasmConfig::new(dir.path().join("cache"));
    // Far more address space than any machine has.
    config.pool = skiff_shims::wasm::PoolSize::Slots(1 << 30);
    let executor = skiff_shims::wasm::WasmExecutor::new(config).unwrap();
    assert!(!executor.pooling());
    let node = Node { dir, executor };
    node.executor
        .run(node.spec("hello", node.wat("hello", HELLO)))
        .await
        .unwrap();
    assert_eq!(node.executor.wait("hello").await.unwrap().code, 0);
}

/// With pool slots keeping pages resident between instances, nothing one instance wrote
/// may be seen by the next in the same slot: each run stores a marker and fails if a
/// marker is already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_pool_pages_start_clean_for_the_next_instance() {
    const MARK_ONCE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (if (i32.eq (i32.load (i32.const 70000)) (i32.const 0x5eed))
      (then (call $exit (i32.const 1))))
    (i32.store (i32.const 70000) (i32.const 0x5eed))
    (i32.store (i32.const 100) (i32.const 0x5eed))
    (call $exit (i32.const 0))))
"#;
    let dir = tempfile::tempdir().unwrap();
    let mut config = skiff_shims::wasm::WasmConfig::new(dir.path().join("cache"));
    config.pool = skiff_shims::wasm::PoolSize::Slots(4);
    config.keep_resident = Some(1 << 20);
    let node = Node {
        executor: skiff_shims::wasm::WasmExecutor::new(config).unwrap(),
        dir,
    };
    let artifact = node.wat("mark", MARK_ONCE);
    for i in 0..6 {
        let id = format!("mark-{i}");
        node.executor
            .run(node.spec(&id, artifact.clone()))
            .await
            .unwrap();
        let status = node.executor.wait(&id).await.unwrap();
        assert_eq!(
            status.code, 0,
            "run {i} saw the previous run's memory: {status:?}"
        );
    }
}
