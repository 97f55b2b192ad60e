//! What every guest store carries: WASI context, memory limiter, CPU meter; and how a
//! guest's end becomes an [`ExitStatus`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Error;
use crate::executor::{ContainerSpec, EXIT_KILLED, EXIT_TRAP, ExitReason, ExitStatus, GuestUsage};
use crate::logs::{LogWriter, Stream};

/// Per-store guard rails shared by every kind of guest.
pub(crate) struct Guard {
    pub(crate) limiter: MemoryLimiter,
    pub(crate) meter: CpuMeter,
}

impl Guard {
    pub(crate) fn new(
        memory_limit: Option<u64>,
        cpu: Option<Arc<CpuBudget>>,
        account: Arc<Accounting>,
    ) -> Guard {
        Guard {
            limiter: MemoryLimiter {
                limit: memory_limit.map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
                used: 0,
                exceeded: false,
                account,
            },
            meter: CpuMeter::new(cpu),
        }
    }
}

/// What one container's guests use, summed over all of its stores, for the node's
/// stats: the Wasm host is one process, so no cgroup can tell its guests apart.
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    cpu_ns: AtomicU64,
    memory_bytes: AtomicU64,
}

impl Accounting {
    pub(crate) fn usage(&self) -> GuestUsage {
        GuestUsage {
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
        }
    }

    /// Drives `fut`, charging the CPU time of each of its polls (the polling thread's
    /// clock around the poll: exact, since a poll never leaves its thread) to this
    /// container. A guest runs only inside such polls, with the host calls it makes.
    pub(crate) async fn metered<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            let before = thread_cpu();
            let polled = fut.as_mut().poll(cx);
            let spent = thread_cpu().saturating_sub(before);
            let ns = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
            self.cpu_ns.fetch_add(ns, Ordering::Relaxed);
            polled
        })
        .await
    }

    fn resize(&self, from: usize, to: usize) {
        let (from, to) = (from as u64, to as u64);
        if to >= from {
            self.memory_bytes.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.memory_bytes.fetch_sub(from - to, Ordering::Relaxed);
        }
    }
}

/// The calling thread's CPU clock.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Store data of a preview 1 module.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) guard: Guard,
}

/// Store data of a component (command or HTTP proxy).
pub(crate) struct P2State {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: super::outgoing::Outgoing,
    pub(crate) guard: Guard,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Access to the guard inside any store data.
pub(crate) trait Guarded: Send + 'static {
    fn guard(&mut self) -> &mut Guard;
}

impl Guarded for P1State {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl Guarded for P2State {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

/// Ticks a guest without a CPU limit runs between yields.
///
/// Yielding lets other tasks of the worker run and lets a stopped guest be dropped; but
/// each yield sends the guest to the back of the run queue, so with many requests in
/// flight a short slice turns first-come-first-served into round robin: every request
/// finishes late and the interleaved heaps thrash the caches. With one-tick (5 ms)
/// slices, a componentize-py guest served ~870 req/s at p99 130 ms where `wasmtime
/// serve`, which never yields, served ~1,050 at p99 27 ms. Four ticks (20 ms) bound how
/// long a busy guest holds a worker while letting most requests finish in one go.
const UNLIMITED_SLICE_TICKS: u64 = 4;

/// Installs the memory limiter and the epoch callback that yields to tokio (every tick
/// for a guest with a CPU limit, which is charged then; every [`UNLIMITED_SLICE_TICKS`]
/// otherwise), so a busy guest never starves other tasks and can be dropped when
/// stopped.
pub(crate) fn arm<T: Guarded>(store: &mut Store<T>) {
    store.limiter(|data| &mut data.guard().limiter as &mut dyn ResourceLimiter);
    let slice = if store.data_mut().guard().meter.budget.is_some() {
        1
    } else {
        UNLIMITED_SLICE_TICKS
    };
    store.set_epoch_deadline(slice);
    store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().guard().meter.on_tick()));
}

/// Bounds the bytes of all linear memories and tables of one store, and remembers
/// whether the bound was hit (that is how `OOMKilled` is told from other traps).
pub(crate) struct MemoryLimiter {
    limit: Option<usize>,
    used: usize,
    pub(crate) exceeded: bool,
    account: Arc<Accounting>,
}

impl Drop for MemoryLimiter {
    /// The store and its memories are going: they no longer count.
    fn drop(&mut self) {
        self.account.resize(self.used, 0);
    }
}

/// The trap raised when a guest grows past its memory limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (wanted {wanted} bytes)")]
pub(crate) struct MemoryLimitExceeded {
    limit: usize,
    wanted: usize,
}

/// Table elements are charged as pointers.
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_sub(current).saturating_add(desired);
        if let Some(limit) = self.limit
            && wanted > limit
        {
            self.exceeded = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded { limit, wanted }));
        }
        self.account.resize(self.used, wanted);
        self.used = wanted;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The allocator refused memory the limiter allowed (pool slot size, mmap
        // failure): for the guest it is the same as running out of memory.
        self.exceeded = true;
        Err(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }
}

/// A container's CPU allowance: `budget` of guest time per `period`, shared by all of its
/// stores (an HTTP service's concurrent requests draw on one budget).
pub(crate) struct CpuBudget {
    period: Duration,
    budget: Duration,
    window: Mutex<Window>,
}

struct Window {
    start: Instant,
    used: Duration,
}

impl CpuBudget {
    /// `None` when unlimited (no millicores given, or at least one core per core of ...
    /// nothing to enforce).
    pub(crate) fn new(cpu_millis: Option<u32>, period: Duration) -> Option<Arc<CpuBudget>> {
        let millis = cpu_millis?;
        Some(Arc::new(CpuBudget {
            period,
            budget: period.mul_f64(f64::from(millis.max(1)) / 1000.0),
            window: Mutex::new(Window {
                start: Instant::now(),
                used: Duration::ZERO,
            }),
        }))
    }

    /// Charges `ran` of guest time; returns when to resume if the budget is spent.
    fn charge(&self, now: Instant, ran: Duration) -> Option<Instant> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= w.start + self.period {
            w.start = now;
            w.used = Duration::ZERO;
        }
        w.used += ran;
        (w.used >= self.budget).then_some(w.start + self.period)
    }
}

/// Measures the CPU time a store's guest spends between epoch ticks.
///
/// Time is the executing thread's CPU clock, not the wall clock: a guest preempted by
/// other processes on a busy node is not charged for time it did not run. The mark is
/// taken when the guest resumes after a yield, on the thread that resumes it.
pub(crate) struct CpuMeter {
    budget: Option<Arc<CpuBudget>>,
    mark: Arc<Mutex<Mark>>,
}

#[derive(Clone, Copy)]
struct Mark {
    thread: std::thread::ThreadId,
    cpu: Duration,
}

impl Mark {
    fn here() -> Mark {
        Mark {
            thread: std::thread::current().id(),
            cpu: thread_cpu(),
        }
    }
}

/// A guest is charged at most this much per tick, whatever the clocks say.
const MAX_CHARGE: Duration = Duration::from_millis(20);
/// Charged when the guest resumed on another thread without a mark (after a host call
/// that suspended it): about one tick.
const UNKNOWN_CHARGE: Duration = Duration::from_millis(5);

impl CpuMeter {
    fn new(budget: Option<Arc<CpuBudget>>) -> CpuMeter {
        CpuMeter {
            budget,
            mark: Arc::new(Mutex::new(Mark::here())),
        }
    }

    fn on_tick(&mut self) -> UpdateDeadline {
        let Some(budget) = &self.budget else {
            return UpdateDeadline::Yield(UNLIMITED_SLICE_TICKS);
        };
        let here = Mark::here();
        let ran = {
            let mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
            if mark.thread == here.thread {
                here.cpu.saturating_sub(mark.cpu).min(MAX_CHARGE)
            } else {
                UNKNOWN_CHARGE
            }
        };
        let resume_at = budget.charge(Instant::now(), ran);
        let mark = self.mark.clone();
        UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                match resume_at {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => tokio::task::yield_now().await,
                }
                // Completes on the thread that is about to resume the guest.
                *mark.lock().unwrap_or_else(PoisonError::into_inner) = Mark::here();
            }),
        )
    }
}

/// Builds the WASI context a spec grants: its argv, env, mounts and log; no inherited
/// stdio, env, args or network.
pub(crate) fn wasi_builder(spec: &ContainerSpec, log: &LogWriter) -> Result<WasiCtxBuilder, Error> {
    let mut builder = WasiCtxBuilder::new();
    if spec.args.is_empty() {
        builder.arg(&spec.id);
    } else {
        builder.args(&spec.args);
    }
    builder
        .envs(&spec.env)
        .stdout(log.wasi_stream(Stream::Stdout))
        .stderr(log.wasi_stream(Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &spec.mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        // Never the joined path: a guest may have planted a symlink in the volume.
        let dir = crate::mounts::open_beneath(&mount.host_path, &mount.sub_path, true)
            .map_err(|e| Error::CannotRun(format!("cannot mount at {}: {e}", mount.guest_path)))?;
        builder
            .preopened_dir(dir.proc_path(), &mount.guest_path, perms)
            .map_err(|e| {
                Error::CannotRun(format!(
                    "cannot mount {} at {}: {e:#}",
                    mount.host_path.join(&mount.sub_path).display(),
                    mount.guest_path
                ))
            })?;
    }
    Ok(builder)
}

/// Turns the end of a guest's run into an exit status.
pub(crate) fn exit_status(result: wasmtime::Result<()>, oom: bool) -> ExitStatus {
    let error = match result {
        Ok(()) => return completed(),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return exit_code(exit.0);
    }
    if oom || error.downcast_ref::<MemoryLimitExceeded>().is_some() {
        let message = error
            .downcast_ref::<MemoryLimitExceeded>()
            .map(ToString::to_string)
            .unwrap_or_else(|| format!("{error:#}"));
        return ExitStatus {
            code: EXIT_KILLED,
            reason: ExitReason::OomKilled,
            message,
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return ExitStatus {
            code: EXIT_TRAP,
            reason: ExitReason::Trap,
            message: trap.to_string(),
        };
    }
    ExitStatus {
        code: 1,
        reason: ExitReason::Error,
        message: format!("{error:#}"),
    }
}

pub(crate) fn completed() -> ExitStatus {
    ExitStatus {
        code: 0,
        reason: ExitReason::Completed,
        message: String::new(),
    }
}

pub(crate) fn exit_code(code: i32) -> ExitStatus {
    if code == 0 {
        return completed();
    }
    ExitStatus {
        code,
        reason: ExitReason::Error,
        message: format!("exited with code {code}"),
    }
}

pub(crate) fn stopped() -> ExitStatus {
    ExitStatus {
        code: EXIT_KILLED,
        reason: ExitReason::Stopped,
        message: "stopped".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_and_flags_excess() {
        let account = Arc::new(Accounting::default());
        let mut l = Guard::new(Some(100), None, account.clone()).limiter;
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.table_growing(0, 4, None).unwrap()); // 32 bytes
        assert!(l.memory_growing(0, 20, None).is_err());
        assert!(l.exceeded);
        assert_eq!(account.usage().memory_bytes, 92, "what was granted counts");
        let mut other = Guard::new(None, None, account.clone()).limiter;
        assert!(other.memory_growing(0, 8, None).unwrap());
        assert!(other.memory_growing(8, 16, None).unwrap());
        assert_eq!(
            account.usage().memory_bytes,
            108,
            "stores of one container add up"
        );
        drop(l);
        assert_eq!(
            account.usage().memory_bytes,
            16,
            "a dropped store no longer counts"
        );
    }

    #[tokio::test]
    async fn polls_are_charged_their_cpu_time() {
        let account = Accounting::default();
        let spin = |d: Duration| {
            let start = thread_cpu();
            while thread_cpu() - start < d {}
        };
        account
            .metered(async {
                spin(Duration::from_millis(20));
                tokio::task::yield_now().await;
                spin(Duration::from_millis(20));
            })
            .await;
        let ns = account.usage().cpu_ns;
        assert!((40_000_000..80_000_000).contains(&ns), "{ns}");
        // Time spent outside the future's polls is not its guest's.
        spin(Duration::from_millis(20));
        assert_eq!(account.usage().cpu_ns, ns);
    }

    #[test]
    fn budget_is_spent_within_a_period_and_renewed_after() {
        let period = Duration::from_millis(100);
        let b = CpuBudget::new(Some(200), period).unwrap();
        let t0 = Instant::now();
        assert_eq!(b.charge(t0, Duration::from_millis(10)), None);
        let resume = b.charge(t0, Duration::from_millis(10)).unwrap();
        assert!(resume > t0);
        assert_eq!(b.charge(resume + period, Duration::from_millis(5)), None);
    }
}
