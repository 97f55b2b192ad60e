//! Shared test helpers: guests in inline WAT, executors in temp dirs.
#![allow(dead_code)]
// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_shims::wasm::{PoolSize, WasmConfig, WasmExecutor};
use skiff_shims::{Artifact, ContainerSpec, Limits, LogSpec};

/// A temp dir with an executor whose cache lives inside it.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub executor: WasmExecutor,
}

pub fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor_in(&dir.path().join("cache"));
    Node { dir, executor }
}

pub fn executor_in(cache: &Path) -> WasmExecutor {
    let mut config = WasmConfig::new(cache);
    // Small pools: many test executors live in one process.
    config.pool = PoolSize::Slots(16);
    WasmExecutor::new(config).unwrap()
}

/// A fake but stable `sha256:` digest of some bytes (the executor only keys on it).
pub fn digest_of(bytes: &[u8]) -> String {
    let mut out = String::from("sha256:");
    for salt in 0u8..4 {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        bytes.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Node {
    /// Writes an artifact (WAT text is compiled; raw bytes are kept as they are).
    pub fn artifact(&self, name: &str, bytes: &[u8]) -> Artifact {
        let path = self.dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        Artifact {
            path,
            digest: digest_of(bytes),
        }
    }

    pub fn wat(&self, name: &str, wat: &str) -> Artifact {
        let bytes = wat::parse_str(wat).unwrap();
        self.artifact(name, &bytes)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    pub fn spec(&self, id: &str, artifact: Artifact) -> ContainerSpec {
        ContainerSpec {
            id: id.to_string(),
            artifact,
            args: Vec::new(),
            env: Vec::new(),
            mounts: Vec::new(),
            log: LogSpec {
                path: self.log_path(id),
                max_bytes: 1 << 20,
            },
            limits: Limits::default(),
            http: None,
            oci: None,
            outgoing: None,
        }
    }

    /// The log's records without timestamps: `stdout F text`.
    pub fn log(&self, id: &str) -> Vec<String> {
        read_log(&self.log_path(id))
    }
}

pub fn read_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map(|(_, rest)| rest.to_string()).unwrap())
        .collect()
}

/// Polls `cond` every 10 ms for up to `limit` (awaiting a condition, not sleeping for one).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub const HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello world\n")
  (data (i32.const 48) "to stderr\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 48))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

/// Prints argv then the environment, one per line.
pub const ARGS_ENV: &str = r#"
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $asz (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $aget (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $esz (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $eget (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $print (param $buf i32) (param $len i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eqz (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
          (then (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 0) (local.get $buf))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (drop (call $asz (i32.const 16) (i32.const 20)))
    (drop (call $aget (i32.const 1024) (i32.const 4096)))
    (call $print (i32.const 4096) (i32.load (i32.const 20)))
    (drop (call $esz (i32.const 16) (i32.const 20)))
    (drop (call $eget (i32.const 1024) (i32.const 8192)))
    (call $print (i32.const 8192) (i32.load (i32.const 20)))))
"#;

pub const EXIT_3: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))
"#;

pub const EXIT_0: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 0))))
"#;

pub const DIV_BY_ZERO: &str = r#"
(module
  (memory (export "memory") 1)
  (func $div (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0)))
  (func (export "_start") (drop (call $div (i32.const 0)))))
"#;

pub const SPIN: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
"#;

/// Grows memory by 1 MiB at a time, for ever.
pub const MEMORY_BOMB: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (drop (memory.grow (i32.const 16)))
      (br $more))))
"#;

pub const RECURSE: &str = r#"
(module
  (memory (export "memory") 1)
  (func $down (param i64) (result i64)
    (i64.add (call $down (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "_start") (drop (call $down (i64.const 0)))))
"#;

pub const NO_START: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "main")))
"#;

pub const UNKNOWN_IMPORT: &str = r#"
(module
  (import "env" "launch_missiles" (func))
  (memory (export "memory") 1)
  (func (export "_start")))
"#;

/// Exit 0 if the filesystem is what the fs test mounted, else a code naming the check:
/// fd 3 = read-only mount holding hello.txt, fd 4 = read-write mount.
pub const FS_PROBE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello.txt")
  (data (i32.const 120) "new.txt")
  (data (i32.const 140) "../secret.txt")
  (data (i32.const 160) "/etc/passwd")
  (func (export "_start")
    (local $fd i32)
    ;; reading from the read-only mount works
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 9)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $exit (i32.const 100))))
    (local.set $fd (i32.load (i32.const 200)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 64))
    (if (call $read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $exit (i32.const 106))))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; creating in the read-only mount fails
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 7)
          (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (call $exit (i32.const 101))))
    ;; nothing outside the mount: neither .. nor absolute paths
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 140) (i32.const 13)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (call $exit (i32.const 102))))
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 160) (i32.const 11)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (call $exit (i32.const 103))))
    ;; creating in the read-write mount works
    (if (call $open (i32.const 4) (i32.const 0) (i32.const 120) (i32.const 7)
          (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $exit (i32.const 105))))
    ;; no third preopen: EBADF (8)
    (if (i32.ne (call $prestat (i32.const 5) (i32.const 300)) (i32.const 8))
      (then (call $exit (i32.const 104))))))
"#;

/// The `wasi:http/proxy` fixture (see tests/fixtures/build-fixtures.sh).
pub const PROXY_COMPONENT: &str = include_str!("../fixtures/proxy.component.wat");

/// The `wasi:cli/command` fixture: prints "hello from a component".
pub const COMMAND_COMPONENT: &str = include_str!("../fixtures/command.component.wat");

/// This process's user+system CPU time, from /proc/self/stat (clock ticks of 10 ms).
#[allow(dead_code)]
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((tick(11) + tick(12)) * 10)
}
