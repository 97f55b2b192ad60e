//! The embedded store: a redb file, with the current state and the recent revision log
//! mirrored in memory so reads, lists and watch replays never touch the disk.
//!
//! One writer thread owns all mutation. It drains whatever transactions are queued,
//! checks their preconditions in order, writes them in one redb transaction with
//! immediate durability (one fsync for the whole batch: group commit), and only then
//! publishes them to readers and watchers and answers the callers. A caller that got an
//! answer therefore survives `kill -9`.
//!
//! On disk: `kv` (key → create rev, mod rev, value), `log` (revision → event, with the
//! previous value so that lists at older revisions can be rebuilt) and `meta`
//! (revision counters). The log is compacted by age and count, which keeps the file
//! bounded: redb reuses the freed pages.

use super::seal::{self, Sealer};
use super::{
    ConflictReason, Event, EventKind, KeyValue, ListOptions, ListResult, Op, Precondition,
    Revision, Store, StoreError, TxnResult, Watch,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How the store keeps history and batches writes.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The redb file.
    pub path: PathBuf,
    /// Keep at most this many events of history.
    pub retain_events: usize,
    /// Keep history at least this long (unless `retain_events` is exceeded).
    pub retain_for: Duration,
    /// Most transactions committed in one batch.
    pub max_batch: usize,
    /// Committed batches buffered for each watcher before it is dropped as too slow.
    pub watch_buffer: usize,
    /// Seals the values of [`seal::is_sealed_key`] keys (Secrets) on disk; `None` keeps
    /// them in the clear.
    pub sealer: Option<Arc<Sealer>>,
}

impl StoreConfig {
    /// Defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            retain_events: 100_000,
            retain_for: Duration::from_secs(300),
            max_batch: 2048,
            watch_buffer: 8192,
            sealer: None,
        }
    }

    /// Seal Secrets on disk with `sealer`.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }
}

struct State {
    data: BTreeMap<Arc<str>, KeyValue>,
    log: VecDeque<(Instant, Arc<Event>)>,
    revision: Revision,
    compacted: Revision,
}

#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    commit_micros_total: AtomicU64,
    txns: AtomicU64,
    // Histogram of commit latency, bucket upper bounds in COMMIT_BUCKETS_US.
    commit_buckets: [AtomicU64; COMMIT_BUCKETS_US.len()],
}

const COMMIT_BUCKETS_US: [u64; 10] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

struct Shared {
    state: RwLock<State>,
    live: broadcast::Sender<Arc<Vec<Arc<Event>>>>,
    stats: Stats,
}

enum Msg {
    Txn(Vec<Op>, oneshot::Sender<Result<TxnResult, StoreError>>),
    Compact(Revision, oneshot::Sender<Result<(), StoreError>>),
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Open (or create) the store file and load it.
    pub fn open(config: StoreConfig) -> Result<RedbStore, StoreError> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        private_file(&config.path)?;
        let mut db = Database::create(&config.path).map_err(backend)?;
        // Give freed pages back to the file system once per start; cheap on a
        // compacted log.
        db.compact().map_err(backend)?;
        let sealer = config.sealer.as_deref();
        let (state, stale) = load(&db, sealer)?;
        if let Some(sealer) = sealer
            && stale.any()
        {
            let n = reseal(&db, sealer, &state, &stale)?;
            tracing::info!(
                values = n,
                key = sealer.primary(),
                "sealed stored Secrets with the current key"
            );
            // The plaintext or old-key pages just freed go back to the file system.
            db.compact().map_err(backend)?;
        }
        let (live, _) = broadcast::channel(config.watch_buffer.max(16));
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            live,
            stats: Stats::default(),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || Writer::new(db, writer_shared, config).run(rx))
            .map_err(backend)?;
        Ok(RedbStore {
            shared,
            tx,
            writer: Some(writer),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means a writer panicked mid-update; the data it guards was
        // only changed after a successful commit, so reading it is still sound.
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys start with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.read()
            .data
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count()
    }

    /// Prometheus text for the store's own metrics.
    pub fn metrics_text(&self) -> String {
        let s = &self.shared.stats;
        let mut out = String::new();
        out.push_str(
            "# HELP skiff_store_commit_duration_seconds Time to durably commit one batch.\n",
        );
        out.push_str("# TYPE skiff_store_commit_duration_seconds histogram\n");
        let mut cum = 0;
        for (i, ub) in COMMIT_BUCKETS_US.iter().enumerate() {
            cum += s.commit_buckets[i].load(Ordering::Relaxed);
            out.push_str(&format!(
                "skiff_store_commit_duration_seconds_bucket{{le=\"{}\"}} {cum}\n",
                *ub as f64 / 1e6
            ));
        }
        let commits = s.commits.load(Ordering::Relaxed);
        out.push_str(&format!(
            "skiff_store_commit_duration_seconds_bucket{{le=\"+Inf\"}} {commits}\n"
        ));
        out.push_str(&format!(
            "skiff_store_commit_duration_seconds_sum {}\n",
            s.commit_micros_total.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!(
            "skiff_store_commit_duration_seconds_count {commits}\n"
        ));
        out.push_str("# HELP skiff_store_transactions_total Transactions committed.\n");
        out.push_str("# TYPE skiff_store_transactions_total counter\n");
        out.push_str(&format!(
            "skiff_store_transactions_total {}\n",
            s.txns.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP skiff_store_batches_total Group commits (fsyncs).\n");
        out.push_str("# TYPE skiff_store_batches_total counter\n");
        out.push_str(&format!("skiff_store_batches_total {commits}\n"));
        let st = self.read();
        out.push_str("# HELP skiff_store_revision Current store revision.\n# TYPE skiff_store_revision gauge\n");
        out.push_str(&format!("skiff_store_revision {}\n", st.revision));
        out.push_str("# HELP skiff_store_keys Keys in the store.\n# TYPE skiff_store_keys gauge\n");
        out.push_str(&format!("skiff_store_keys {}\n", st.data.len()));
        out.push_str("# HELP skiff_store_history_events Events kept for watch and list at revision.\n# TYPE skiff_store_history_events gauge\n");
        out.push_str(&format!("skiff_store_history_events {}\n", st.log.len()));
        out
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it committed what is queued.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Create the store file readable by its owner only, and take that right from anyone
/// else on an older file.
fn private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| backend(format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| backend(format!("{}: {e}", path.display())))
}

/// What [`load`] found stored in the clear or under an older key.
#[derive(Default)]
struct Stale {
    keys: Vec<Arc<str>>,
    log: Vec<Revision>,
}

impl Stale {
    fn any(&self) -> bool {
        !self.keys.is_empty() || !self.log.is_empty()
    }
}

/// The value part of an encoded kv record (after the two revisions), if it is long
/// enough to have one.
fn raw_value(buf: &[u8]) -> &[u8] {
    buf.get(16..).unwrap_or_default()
}

fn load(db: &Database, sealer: Option<&Sealer>) -> Result<(State, Stale), StoreError> {
    let w = db.begin_write().map_err(backend)?;
    {
        // Create the tables on first start.
        w.open_table(KV).map_err(backend)?;
        w.open_table(LOG).map_err(backend)?;
        w.open_table(META).map_err(backend)?;
    }
    w.commit().map_err(backend)?;
    let r = db.begin_read().map_err(backend)?;
    let meta = r.open_table(META).map_err(backend)?;
    let revision = meta
        .get("revision")
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let compacted = meta
        .get("compacted")
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut data = BTreeMap::new();
    let mut stale = Stale::default();
    let kv = r.open_table(KV).map_err(backend)?;
    for row in kv.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let key: Arc<str> = Arc::from(k.value());
        if let Some(s) = sealer
            && seal::is_sealed_key(&key)
            && s.is_stale(raw_value(v.value()))
        {
            stale.keys.push(key.clone());
        }
        let kv = decode_kv(key.clone(), v.value(), sealer)?;
        data.insert(key, kv);
    }
    let mut log = VecDeque::new();
    let now = Instant::now();
    let lt = r.open_table(LOG).map_err(backend)?;
    for row in lt.range((compacted + 1)..).map_err(backend)? {
        let (rev, v) = row.map_err(backend)?;
        let e = decode_event(rev.value(), v.value(), sealer)?;
        if let Some(s) = sealer
            && seal::is_sealed_key(&e.kv.key)
            && event_is_stale(s, v.value())
        {
            stale.log.push(e.revision);
        }
        log.push_back((now, Arc::new(e)));
    }
    Ok((
        State {
            data,
            log,
            revision,
            compacted,
        },
        stale,
    ))
}

/// Whether a log record of a sealed key holds a value in the clear or under an old key.
fn event_is_stale(sealer: &Sealer, mut buf: &[u8]) -> bool {
    let parsed = (|| {
        take(&mut buf, 1, "log")?;
        let klen = take_u32(&mut buf, "log")?;
        take(&mut buf, klen, "log")?;
        let vlen = take_u32(&mut buf, "log")?;
        let kv = take(&mut buf, vlen, "log")?;
        let has_prev = take(&mut buf, 1, "log")?[0] != 0;
        Ok::<_, StoreError>((kv, has_prev.then_some(buf)))
    })();
    match parsed {
        Ok((kv, prev)) => {
            sealer.is_stale(raw_value(kv)) || prev.is_some_and(|p| sealer.is_stale(raw_value(p)))
        }
        Err(_) => false,
    }
}

/// Write the stale values found by [`load`] again, sealed with the current key, in one
/// transaction: revisions and history stay as they were.
fn reseal(db: &Database, sealer: &Sealer, st: &State, stale: &Stale) -> Result<usize, StoreError> {
    let w = db.begin_write().map_err(backend)?;
    {
        let mut kv = w.open_table(KV).map_err(backend)?;
        for key in &stale.keys {
            if let Some(v) = st.data.get(key) {
                kv.insert(&**key, encode_kv(v, Some(sealer)).as_slice())
                    .map_err(backend)?;
            }
        }
        let mut log = w.open_table(LOG).map_err(backend)?;
        for (_, e) in &st.log {
            if stale.log.binary_search(&e.revision).is_ok() {
                log.insert(e.revision, encode_event(e, Some(sealer)).as_slice())
                    .map_err(backend)?;
            }
        }
    }
    w.commit().map_err(backend)?;
    Ok(stale.keys.len() + stale.log.len())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], StoreError> {
    if buf.len() < n {
        return Err(corrupt(what));
    }
    let (h, t) = buf.split_at(n);
    *buf = t;
    Ok(h)
}

fn take_u64(buf: &mut &[u8], what: &str) -> Result<u64, StoreError> {
    let b = take(buf, 8, what)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn take_u32(buf: &mut &[u8], what: &str) -> Result<usize, StoreError> {
    let b = take(buf, 4, what)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    Ok(u32::from_le_bytes(a) as usize)
}

fn encode_kv(kv: &KeyValue, sealer: Option<&Sealer>) -> Vec<u8> {
    let sealed = match sealer {
        Some(s) if seal::is_sealed_key(&kv.key) => Some(s.seal(&kv.key, &kv.value)),
        _ => None,
    };
    let value = sealed.as_deref().unwrap_or(&kv.value);
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(
    key: Arc<str>,
    mut buf: &[u8],
    sealer: Option<&Sealer>,
) -> Result<KeyValue, StoreError> {
    let create_revision = take_u64(&mut buf, "kv")?;
    let mod_revision = take_u64(&mut buf, "kv")?;
    let value = match sealer {
        Some(s) if seal::is_sealed_key(&key) => match s.open(&key, buf) {
            Ok(v) => Bytes::from(v.into_owned()),
            Err(e) => return Err(StoreError::Backend(e.to_string())),
        },
        _ if buf.starts_with(b"skiff:enc:") => {
            return Err(StoreError::Backend(format!(
                "{key} is encrypted, and the store was opened without its encryption keys"
            )));
        }
        _ => Bytes::copy_from_slice(buf),
    };
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
    })
}

fn encode_event(e: &Event, sealer: Option<&Sealer>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.kv.key.len() + e.kv.value.len());
    out.push(match e.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&(e.kv.key.len() as u32).to_le_bytes());
    out.extend_from_slice(e.kv.key.as_bytes());
    let kv = encode_kv(&e.kv, sealer);
    out.extend_from_slice(&(kv.len() as u32).to_le_bytes());
    out.extend_from_slice(&kv);
    if let Some(p) = &e.prev {
        out.push(1);
        out.extend_from_slice(&encode_kv(p, sealer));
    } else {
        out.push(0);
    }
    out
}

fn decode_event(
    revision: Revision,
    mut buf: &[u8],
    sealer: Option<&Sealer>,
) -> Result<Event, StoreError> {
    let kind = match take(&mut buf, 1, "log")?[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        _ => return Err(corrupt("log")),
    };
    let klen = take_u32(&mut buf, "log")?;
    let key = std::str::from_utf8(take(&mut buf, klen, "log")?).map_err(|_| corrupt("log"))?;
    let key: Arc<str> = Arc::from(key);
    let vlen = take_u32(&mut buf, "log")?;
    let kv = decode_kv(key.clone(), take(&mut buf, vlen, "log")?, sealer)?;
    let prev = match take(&mut buf, 1, "log")?[0] {
        0 => None,
        _ => Some(decode_kv(key, buf, sealer)?),
    };
    Ok(Event {
        kind,
        revision,
        kv,
        prev,
    })
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Option<KeyValue> {
        self.read().data.get(key).cloned()
    }

    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        let st = self.read();
        let at = opts.revision.unwrap_or(st.revision);
        if at > st.revision {
            return Err(StoreError::FutureRevision(at));
        }
        let limit = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let start: &str = match &opts.start_after {
            Some(s) if s.as_str() >= prefix => s.as_str(),
            _ => prefix,
        };
        let in_range =
            |k: &str| k.starts_with(prefix) && opts.start_after.as_deref().is_none_or(|s| k > s);
        if at == st.revision {
            let mut items = Vec::new();
            let mut more = false;
            for (k, v) in st
                .data
                .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            {
                if !k.starts_with(prefix) {
                    break;
                }
                if !in_range(k) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(v.clone());
            }
            return Ok(ListResult {
                items,
                revision: at,
                more,
            });
        }
        if at < st.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: st.compacted,
            });
        }
        // Rebuild the prefix as it was at `at` by undoing the newer events.
        let mut view: BTreeMap<Arc<str>, KeyValue> = st
            .data
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (_, e) in st.log.iter().rev() {
            if e.revision <= at {
                break;
            }
            if !e.kv.key.starts_with(prefix) {
                continue;
            }
            match &e.prev {
                Some(p) => view.insert(e.kv.key.clone(), p.clone()),
                None => view.remove(&e.kv.key),
            };
        }
        let mut items = Vec::new();
        let mut more = false;
        for (k, v) in view {
            if !in_range(&k) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(v);
        }
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<TxnResult, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Txn(ops, tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let st = self.read();
        if after < st.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: st.compacted,
            });
        }
        // Subscribing under the read lock: every batch not yet in the log is published
        // after this point, so nothing falls between backlog and live events.
        let live = self.shared.live.subscribe();
        let backlog = st
            .log
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.revision > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok(Watch {
            prefix: prefix.to_string(),
            backlog,
            pending: VecDeque::new(),
            live,
            after,
        })
    }

    fn revision(&self) -> Revision {
        self.read().revision
    }

    fn compacted_revision(&self) -> Revision {
        self.read().compacted
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Compact(revision, tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

struct Writer {
    db: Database,
    shared: Arc<Shared>,
    config: StoreConfig,
}

type Reply = oneshot::Sender<Result<TxnResult, StoreError>>;
type Pending = (Vec<Arc<Event>>, TxnResult, Reply);

impl Writer {
    fn new(db: Database, shared: Arc<Shared>, config: StoreConfig) -> Self {
        Writer { db, shared, config }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.auto_compact();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut txns = Vec::with_capacity(batch.len());
            for m in batch {
                match m {
                    Msg::Txn(ops, reply) => txns.push((ops, reply)),
                    Msg::Compact(rev, reply) => {
                        let _ = reply.send(self.compact_to(rev));
                    }
                }
            }
            if !txns.is_empty() {
                self.commit_batch(txns);
                self.auto_compact();
            }
        }
    }

    fn commit_batch(&mut self, txns: Vec<(Vec<Op>, Reply)>) {
        let started = Instant::now();
        let mut next = self
            .shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision;
        // Changes made by earlier transactions of this batch, not yet visible to readers.
        let mut overlay: HashMap<Arc<str>, Option<KeyValue>> = HashMap::new();
        let mut done: Vec<Pending> = Vec::new();
        for (ops, reply) in txns {
            match self.prepare(ops, next + 1, &mut overlay) {
                Ok((events, result)) => {
                    next += 1;
                    done.push((events, result, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if done.is_empty() {
            return;
        }
        if let Err(e) = self.write(&done, next) {
            tracing::error!(error = %e, "store commit failed");
            for (_, _, reply) in done {
                let _ = reply.send(Err(StoreError::Backend(e.to_string())));
            }
            return;
        }
        let elapsed = started.elapsed().as_micros() as u64;
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.txns.fetch_add(done.len() as u64, Ordering::Relaxed);
        stats
            .commit_micros_total
            .fetch_add(elapsed, Ordering::Relaxed);
        let bucket = COMMIT_BUCKETS_US.iter().position(|b| elapsed <= *b);
        if let Some(b) = bucket {
            stats.commit_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut published = Vec::new();
        {
            let mut st = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            for (events, _, _) in &done {
                for e in events {
                    match e.kind {
                        EventKind::Put => st.data.insert(e.kv.key.clone(), e.kv.clone()),
                        EventKind::Delete => st.data.remove(&e.kv.key),
                    };
                    st.log.push_back((now, e.clone()));
                    published.push(e.clone());
                }
            }
            st.revision = next;
            // Sent under the lock so that a new watch sees each batch exactly once:
            // either in its backlog or live.
            let _ = self.shared.live.send(Arc::new(published));
        }
        for (_, result, reply) in done {
            let _ = reply.send(Ok(result));
        }
    }

    fn lookup(
        &self,
        overlay: &HashMap<Arc<str>, Option<KeyValue>>,
        local: &[Event],
        key: &str,
    ) -> Option<KeyValue> {
        if let Some(e) = local.iter().rev().find(|e| &*e.kv.key == key) {
            return match e.kind {
                EventKind::Put => Some(e.kv.clone()),
                EventKind::Delete => None,
            };
        }
        if let Some(v) = overlay.get(key) {
            return v.clone();
        }
        self.shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .data
            .get(key)
            .cloned()
    }

    fn prepare(
        &self,
        ops: Vec<Op>,
        revision: Revision,
        overlay: &mut HashMap<Arc<str>, Option<KeyValue>>,
    ) -> Result<(Vec<Arc<Event>>, TxnResult), StoreError> {
        let mut local: Vec<Event> = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, precondition) = match &op {
                Op::Put {
                    key, precondition, ..
                }
                | Op::Delete { key, precondition } => (key.clone(), *precondition),
            };
            let current = self.lookup(overlay, &local, &key);
            check(&key, precondition, current.as_ref())?;
            let key: Arc<str> = Arc::from(key);
            match op {
                Op::Put { value, .. } => {
                    let bytes = value(revision).map_err(StoreError::Encode)?;
                    local.push(Event {
                        kind: EventKind::Put,
                        revision,
                        kv: KeyValue {
                            key,
                            value: bytes,
                            create_revision: current
                                .as_ref()
                                .map_or(revision, |c| c.create_revision),
                            mod_revision: revision,
                        },
                        prev: current,
                    });
                }
                Op::Delete { .. } => {
                    let Some(cur) = current else {
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                            reason: ConflictReason::Missing,
                        });
                    };
                    local.push(Event {
                        kind: EventKind::Delete,
                        revision,
                        kv: KeyValue {
                            mod_revision: revision,
                            ..cur.clone()
                        },
                        prev: Some(cur),
                    });
                }
            }
        }
        let results = local.iter().map(|e| e.kv.clone()).collect();
        for e in &local {
            overlay.insert(
                e.kv.key.clone(),
                (e.kind == EventKind::Put).then(|| e.kv.clone()),
            );
        }
        Ok((
            local.into_iter().map(Arc::new).collect(),
            TxnResult { revision, results },
        ))
    }

    fn write(&self, done: &[Pending], revision: Revision) -> Result<(), redb::Error> {
        let sealer = self.config.sealer.as_deref();
        let w = self.db.begin_write()?;
        {
            let mut kv = w.open_table(KV)?;
            let mut log = w.open_table(LOG)?;
            for (events, _, _) in done {
                for e in events {
                    match e.kind {
                        EventKind::Put => {
                            kv.insert(&*e.kv.key, encode_kv(&e.kv, sealer).as_slice())?;
                        }
                        EventKind::Delete => {
                            kv.remove(&*e.kv.key)?;
                        }
                    }
                    log.insert(e.revision, encode_event(e, sealer).as_slice())?;
                }
            }
            let mut meta = w.open_table(META)?;
            meta.insert("revision", revision)?;
        }
        w.commit()?;
        Ok(())
    }

    fn auto_compact(&mut self) {
        let target = {
            let st = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            let by_count = st.log.len().saturating_sub(self.config.retain_events);
            let horizon = Instant::now().checked_sub(self.config.retain_for);
            let by_age = horizon.map_or(0, |h| st.log.iter().take_while(|(t, _)| *t < h).count());
            let n = by_count.max(by_age);
            if n == 0 {
                return;
            }
            // Compact in slices so one pass never stalls writers for long.
            let n = n.min(20_000);
            st.log[n - 1].1.revision
        };
        if let Err(e) = self.compact_to(target) {
            tracing::warn!(error = %e, "log compaction failed");
        }
    }

    fn compact_to(&mut self, revision: Revision) -> Result<(), StoreError> {
        let (current, revision) = {
            let st = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            (st.compacted, revision.min(st.revision))
        };
        if revision <= current {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(backend)?;
        {
            let mut log = w.open_table(LOG).map_err(backend)?;
            log.retain_in(..=revision, |_, _| false).map_err(backend)?;
            let mut meta = w.open_table(META).map_err(backend)?;
            meta.insert("compacted", revision).map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        let mut st = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        while st.log.front().is_some_and(|(_, e)| e.revision <= revision) {
            st.log.pop_front();
        }
        st.compacted = revision;
        Ok(())
    }
}

fn check(key: &str, p: Precondition, current: Option<&KeyValue>) -> Result<(), StoreError> {
    let fail = |reason| {
        Err(StoreError::Conflict {
            key: key.to_string(),
            reason,
        })
    };
    match (p, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, Some(_)) => fail(ConflictReason::Exists),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Exists | Precondition::ModRevision(_), None) => {
            fail(ConflictReason::Missing)
        }
        (Precondition::Exists, Some(_)) => Ok(()),
        (Precondition::ModRevision(r), Some(c)) if c.mod_revision == r => Ok(()),
        (Precondition::ModRevision(_), Some(_)) => fail(ConflictReason::Stale),
    }
}
