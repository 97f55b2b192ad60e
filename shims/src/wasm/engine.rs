//! The one `wasmtime::Engine` of a host process: its configuration (async, epoch
//! interruption, a pooling allocator sized from the machine's memory), the epoch ticker
//! thread, and the on-disk cache of compiled code.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use super::{Error, PoolSize, WasmConfig};

/// Builds the engine, preferring the pooling allocator; returns whether pooling is on.
///
/// The pool reserves address space for every slot up front; a machine with a small
/// address space or strict overcommit refuses that, and then on-demand allocation is used
/// instead of failing.
pub(crate) fn build(cfg: &WasmConfig) -> Result<(Engine, bool), Error> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    config.max_wasm_stack(cfg.max_wasm_stack);
    config.async_stack_size(cfg.max_wasm_stack + 1024 * 1024);

    let mem_total = mem_total_bytes();
    let slots = match cfg.pool {
        PoolSize::Off => None,
        PoolSize::Slots(n) => Some(n.max(1)),
        PoolSize::Auto => Some(auto_slots(mem_total)),
    };
    if let Some(slots) = slots {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(2))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(2))
            .total_stacks(slots)
            .max_memory_size(max_memory_bytes(mem_total))
            .linear_memory_keep_resident(
                cfg.keep_resident
                    .unwrap_or_else(|| keep_resident_bytes(mem_total)),
            )
            .table_keep_resident(TABLE_KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => {
                tracing::info!(slots, "wasm engine: pooling allocator");
                return Ok((engine, true));
            }
            Err(error) => {
                tracing::warn!(slots, error = %format!("{error:#}"),
                    "pooling allocator unavailable, falling back to on-demand allocation");
            }
        }
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    }
    let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
    tracing::info!("wasm engine: on-demand allocation");
    Ok((engine, false))
}

/// `MemTotal` from /proc/meminfo in bytes; 1 GiB if it cannot be read.
pub(crate) fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total(&text))
        .unwrap_or(1 << 30)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// One instance slot per 16 MiB of memory, between 32 and 10 000: a slot costs address
/// space, not memory, until a guest touches its pages.
fn auto_slots(mem_total: u64) -> u32 {
    (mem_total / (16 << 20)).clamp(32, 10_000) as u32
}

/// No linear memory may exceed the machine's memory (nor wasm32's 4 GiB).
fn max_memory_bytes(mem_total: u64) -> usize {
    mem_total.min(4 << 30) as usize
}

/// Bytes of a linear memory a pool slot keeps resident when its instance ends: they are
/// reset in place, not returned to the kernel, so the next request's instance does not
/// fault them in again. A fresh instance per request makes this the hot path: measured
/// with `wasmtime serve` on this machine, 16 MiB took a componentize-py guest from ~400
/// to ~980 req/s and a small C guest from ~9,600 to ~13,400 (BENCHMARKS.md). The cost is
/// at most this much memory per slot ever used at once; 1/1024 of the machine's memory,
/// at most 16 MiB, keeps it small on small machines.
///
/// Tables likewise ([`TABLE_KEEP_RESIDENT`]): without it every instance's end is a
/// `madvise` and a TLB shootdown across cores, which `perf` showed as the largest single
/// cost of serving the C guest (~12,400 → ~17,800 req/s with `wasmtime serve`).
fn keep_resident_bytes(mem_total: u64) -> usize {
    (mem_total / 1024).min(16 << 20) as usize
}

/// Bytes of a table kept resident between instances (see [`keep_resident_bytes`]).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Advances the engine's epoch every `tick` on a thread of its own, for as long as the
/// engine lives (stores and pre-instantiated code hold it; a running guest must never
/// lose its ticks, or it could neither yield nor be stopped).
pub(crate) fn start_ticker(engine: &Engine, tick: Duration) -> Result<(), Error> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;
    Ok(())
}

/// Compiled code, either kind.
#[derive(Clone)]
pub(crate) enum Compiled {
    Module(Module),
    Component(Component),
}

/// What the first bytes of a file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmBinary {
    /// A core module (`\0asm` version 1).
    Module,
    /// A component (`\0asm` component-model layer).
    Component,
}

impl WasmBinary {
    fn suffix(self) -> &'static str {
        match self {
            WasmBinary::Module => "module",
            WasmBinary::Component => "component",
        }
    }
}

/// Classifies the header of a binary: a core module, a component, or not Wasm at all.
pub fn sniff(header: &[u8]) -> Option<WasmBinary> {
    match header.get(..8)? {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmBinary::Module),
        [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmBinary::Component),
        _ => None,
    }
}

/// Reads the first bytes of `path` and sniffs them.
pub fn sniff_file(path: &Path) -> std::io::Result<Option<WasmBinary>> {
    use std::io::Read;
    let mut header = [0u8; 8];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < header.len() {
        let n = file.read(&mut header[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(sniff(&header[..filled]))
}

/// Counters of the compiled-code cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Artifacts compiled (cache misses, corrupt entries).
    pub compiled: u64,
    /// Artifacts loaded from the cache without compiling.
    pub loaded: u64,
}

/// Compiled code on disk, one file per (artifact digest, engine compatibility hash).
///
/// A file is `serialized code ‖ MAGIC ‖ crc32 ‖ length`; it is written to a temporary
/// name and renamed into place, so readers see whole files only, and a damaged one
/// (checksum, or wasmtime's own header checks) is compiled again and replaced.
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_key: String,
    compiled: AtomicU64,
    loaded: AtomicU64,
    /// Recently used compiled artifacts, shared by every container running them: a
    /// thousand pods of one artifact hold one copy of its machine code, not a thousand.
    memory: std::sync::Mutex<std::collections::HashMap<String, Compiled>>,
}

/// Distinct artifacts kept in [`CompileCache::memory`]; beyond this it starts over
/// (running containers keep their code alive on their own).
const MEMORY_ENTRIES: usize = 64;

const MAGIC: &[u8; 8] = b"SKIFFCW1";
const TRAILER: usize = 8 + 4 + 8;

impl CompileCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Result<CompileCache, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Engine(format!("cannot create cache dir {}: {e}", dir.display()))
        })?;
        // DefaultHasher::new() has fixed keys: the same engine settings give the same key
        // in every process of this build, which is all the cache needs.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            memory: Default::default(),
        })
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    /// Path of the cache entry for an artifact; `None` if the digest is not `sha256:<hex>`.
    pub(crate) fn entry_path(&self, digest: &str, kind: WasmBinary) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(format!(
            "{}-{}.{}.cwasm",
            hex.to_ascii_lowercase(),
            self.engine_key,
            kind.suffix()
        )))
    }

    /// Loads the artifact's compiled code from the cache, or compiles and stores it.
    /// Blocking (compilation takes seconds for large artifacts): call off the runtime.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        path: &Path,
        digest: &str,
    ) -> Result<Compiled, Error> {
        let shared = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .cloned();
        if let Some(c) = shared {
            self.loaded.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        let compiled = self.load_or_compile_file(engine, path, digest)?;
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if memory.len() >= MEMORY_ENTRIES {
            memory.clear();
        }
        memory.insert(digest.to_string(), compiled.clone());
        Ok(compiled)
    }

    fn load_or_compile_file(
        &self,
        engine: &Engine,
        path: &Path,
        digest: &str,
    ) -> Result<Compiled, Error> {
        let kind = sniff_file(path)
            .map_err(|e| Error::CannotRun(format!("cannot read artifact {}: {e}", path.display())))?
            .ok_or_else(|| {
                Error::InvalidArtifact("not a WebAssembly module or component".to_string())
            })?;
        let entry = self.entry_path(digest, kind).ok_or_else(|| {
            Error::InvalidArtifact(format!("artifact digest {digest:?} is not sha256:<hex>"))
        })?;
        if entry.exists() {
            match self.load(engine, &entry, kind) {
                Ok(compiled) => {
                    self.loaded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(digest, entry = %entry.display(), "compiled code from cache");
                    return Ok(compiled);
                }
                Err(error) => {
                    tracing::warn!(digest, entry = %entry.display(), %error,
                        "damaged compiled-code cache entry, compiling again");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let bytes = std::fs::read(path).map_err(|e| {
            Error::CannotRun(format!("cannot read artifact {}: {e}", path.display()))
        })?;
        let started = std::time::Instant::now();
        let (compiled, serialized) = match kind {
            WasmBinary::Module => {
                let module = Module::new(engine, &bytes)
                    .map_err(|e| Error::InvalidArtifact(format!("{e:#}")))?;
                let code = module.serialize();
                (Compiled::Module(module), code)
            }
            WasmBinary::Component => {
                let component = Component::new(engine, &bytes)
                    .map_err(|e| Error::InvalidArtifact(format!("{e:#}")))?;
                let code = component.serialize();
                (Compiled::Component(component), code)
            }
        };
        self.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled"
        );
        match serialized {
            Ok(code) => {
                if let Err(error) = self.store(&entry, &code) {
                    tracing::warn!(digest, entry = %entry.display(), %error,
                        "cannot write compiled-code cache entry");
                }
            }
            Err(error) => tracing::warn!(digest, error = %format!("{error:#}"), "cannot serialize"),
        }
        Ok(compiled)
    }

    fn load(&self, engine: &Engine, entry: &Path, kind: WasmBinary) -> Result<Compiled, String> {
        let data = std::fs::read(entry).map_err(|e| e.to_string())?;
        let code = check_trailer(&data).ok_or("bad checksum or truncated")?;
        match kind {
            WasmBinary::Module => deserialize_module(engine, code).map(Compiled::Module),
            WasmBinary::Component => deserialize_component(engine, code).map(Compiled::Component),
        }
        .map_err(|e| format!("{e:#}"))
    }

    fn store(&self, entry: &Path, code: &[u8]) -> std::io::Result<()> {
        let tmp = entry.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(code)?;
        file.write_all(MAGIC)?;
        file.write_all(&crc32fast::hash(code).to_le_bytes())?;
        file.write_all(&(code.len() as u64).to_le_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, entry).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The serialized code inside a cache file, if its trailer (magic, checksum, length) is
/// intact.
fn check_trailer(data: &[u8]) -> Option<&[u8]> {
    let split = data.len().checked_sub(TRAILER)?;
    let (code, trailer) = data.split_at(split);
    let (magic, rest) = trailer.split_at(8);
    let (crc, len) = rest.split_at(4);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    let len = u64::from_le_bytes(len.try_into().ok()?);
    (magic == MAGIC && len == code.len() as u64 && crc32fast::hash(code) == crc).then_some(code)
}

// Deserializing runs native code that wasmtime trusts blindly, hence `unsafe`. The bytes
// come only from this cache: files this process's engine produced, written whole
// (temp + rename) into the host's private state directory, and checked against their
// crc32 before use; wasmtime re-checks its own header and engine compatibility.
#[allow(unsafe_code)]
fn deserialize_module(engine: &Engine, code: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `code` was produced by `Module::serialize` of a compatible engine (see above).
    unsafe { Module::deserialize(engine, code) }
}

#[allow(unsafe_code)]
fn deserialize_component(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `code` was produced by `Component::serialize` of a compatible engine.
    unsafe { Component::deserialize(engine, code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_memory_within_bounds() {
        assert_eq!(auto_slots(256 << 20), 32);
        assert_eq!(auto_slots(24 << 30), 1536);
        assert_eq!(auto_slots(1 << 50), 10_000);
        assert_eq!(max_memory_bytes(512 << 20), 512 << 20);
        assert_eq!(max_memory_bytes(64 << 30), 4 << 30);
        assert_eq!(keep_resident_bytes(1 << 30), 1 << 20);
        assert_eq!(keep_resident_bytes(24 << 30), 16 << 20);
    }

    #[test]
    fn mem_total_is_parsed() {
        let text = "MemTotal:       24684212 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(text), Some(24684212 * 1024));
        assert_eq!(parse_mem_total("garbage"), None);
    }

    #[test]
    fn sniff_tells_modules_components_and_junk_apart() {
        assert_eq!(sniff(b"\0asm\x01\0\0\0rest"), Some(WasmBinary::Module));
        assert_eq!(sniff(b"\0asm\x0d\0\x01\0"), Some(WasmBinary::Component));
        assert_eq!(sniff(b"#!/bin/sh\n"), None);
        assert_eq!(sniff(b"\0as"), None);
    }

    #[test]
    fn trailer_detects_damage() {
        let mut data = b"code".to_vec();
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&crc32fast::hash(b"code").to_le_bytes());
        data.extend_from_slice(&4u64.to_le_bytes());
        assert_eq!(check_trailer(&data), Some(&b"code"[..]));
        data[0] = b'x';
        assert_eq!(check_trailer(&data), None);
        assert_eq!(check_trailer(b"short"), None);
    }
}
