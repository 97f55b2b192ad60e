//! The object store: etcd's data model behind a small trait.
//!
//! Every write gets the next value of one global revision (the Kubernetes
//! `resourceVersion`). Writes are compare-and-swap on a key's modification revision, a
//! list can be taken at any revision that has not been compacted away, and a watch
//! replays every event after a given revision before it follows live writes. A watch or
//! list from a compacted revision fails with [`StoreError::Compacted`], which the API
//! turns into `410 Gone` so a client re-lists.
//!
//! [`RedbStore`] is the embedded implementation; an etcd implementation can sit behind
//! the same trait. Secrets are sealed on disk with the keys of [`seal`].

mod redb_store;
pub mod seal;

pub use redb_store::{RedbStore, StoreConfig};

use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;

/// One value of the global revision counter.
pub type Revision = u64;

/// A key with its current value and revisions, as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Arc<str>,
    /// The stored bytes.
    pub value: Bytes,
    /// The revision that created the key.
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
}

/// Whether an event wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or replaced.
    Put,
    /// The key was removed.
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The revision of this change.
    pub revision: Revision,
    /// For a put, the new value; for a delete, the value that was removed.
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

/// Produces the bytes to store, given the revision the write will get. The apiserver
/// stamps `metadata.resourceVersion` this way; an encoder that fails aborts the whole
/// transaction.
pub type Encoder = Box<dyn FnOnce(Revision) -> Result<Bytes, String> + Send>;

/// What must hold for an operation to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist, with any revision.
    Exists,
    /// The key must exist with exactly this modification revision (compare-and-swap).
    ModRevision(Revision),
}

/// One operation of a transaction.
pub enum Op {
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// What to write.
        value: Encoder,
        /// What must hold first.
        precondition: Precondition,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
        /// What must hold first.
        precondition: Precondition,
    },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put {
                key, precondition, ..
            } => write!(f, "Put({key}, {precondition:?})"),
            Op::Delete { key, precondition } => write!(f, "Delete({key}, {precondition:?})"),
        }
    }
}

/// Options of a range read.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Return keys strictly after this one (paging).
    pub start_after: Option<String>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read at this revision instead of the latest.
    pub revision: Option<Revision>,
}

/// The answer to a range read.
#[derive(Clone, Debug)]
pub struct ListResult {
    /// The keys, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was taken at.
    pub revision: Revision,
    /// Whether more keys follow the last one returned.
    pub more: bool,
}

/// What a committed transaction reports.
#[derive(Clone, Debug)]
pub struct TxnResult {
    /// The revision of the transaction.
    pub revision: Revision,
    /// For each operation: the key's value after a put, or the removed value after a delete.
    pub results: Vec<KeyValue>,
}

impl TxnResult {
    /// The bytes of the first operation's result (the object written or removed).
    pub fn into_first_value(self) -> Bytes {
        self.results
            .into_iter()
            .next()
            .map(|kv| kv.value)
            .unwrap_or_default()
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of operation `index` did not hold.
    #[error("precondition failed on {key}: {reason}")]
    Conflict {
        /// The key whose precondition failed.
        key: String,
        /// Which precondition failed.
        reason: ConflictReason,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision that was asked for.
        requested: Revision,
        /// The newest compacted revision.
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's.
    #[error("revision {0} is in the future")]
    FutureRevision(Revision),
    /// An encoder refused to produce a value.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The backing database failed.
    #[error("storage: {0}")]
    Backend(String),
}

/// Why a precondition failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictReason {
    /// The key exists but had to be absent.
    Exists,
    /// The key is absent but had to exist.
    Missing,
    /// The key's modification revision differs from the expected one.
    Stale,
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictReason::Exists => "key exists",
            ConflictReason::Missing => "key not found",
            ConflictReason::Stale => "modification revision changed",
        })
    }
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// The watcher fell too far behind the writers; re-list and watch again.
    #[error("watcher fell behind by {0} commits and was dropped; re-list")]
    Lagged(u64),
    /// The store shut down.
    #[error("store closed")]
    Closed,
}

/// A stream of events for one key prefix, starting after a revision.
pub struct Watch {
    pub(crate) prefix: String,
    pub(crate) backlog: std::collections::VecDeque<Arc<Event>>,
    pub(crate) pending: std::collections::VecDeque<Arc<Event>>,
    pub(crate) live: tokio::sync::broadcast::Receiver<Arc<Vec<Arc<Event>>>>,
    pub(crate) after: Revision,
}

impl Watch {
    /// The next event under the prefix. Cancel-safe.
    pub async fn next(&mut self) -> Result<Arc<Event>, WatchError> {
        if let Some(e) = self.backlog.pop_front() {
            self.after = e.revision;
            return Ok(e);
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.after = e.revision;
                return Ok(e);
            }
            use tokio::sync::broadcast::error::RecvError;
            match self.live.recv().await {
                Ok(batch) => {
                    for e in batch.iter() {
                        if e.revision > self.after && e.kv.key.starts_with(self.prefix.as_str()) {
                            self.pending.push_back(e.clone());
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => return Err(WatchError::Lagged(n)),
                Err(RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }

    /// The revision of the last event delivered (or the start revision).
    pub fn revision(&self) -> Revision {
        self.after
    }
}

/// etcd's semantics, as the apiserver needs them.
pub trait Store: Send + Sync + 'static {
    /// The latest value of a key.
    fn get(&self, key: &str) -> Option<KeyValue>;
    /// Keys under a prefix, in order, at the latest or a given revision.
    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError>;
    /// Apply operations atomically: all preconditions hold and every operation applies
    /// with one new revision, or nothing changes. Returns once the change is durable.
    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<TxnResult, StoreError>>;
    /// Every event under `prefix` after revision `after`, then live ones.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError>;
    /// The current revision.
    fn revision(&self) -> Revision;
    /// The newest compacted revision: history at or before it is gone.
    fn compacted_revision(&self) -> Revision;
    /// Forget history at and before `revision`.
    fn compact(&self, revision: Revision) -> BoxFuture<'static, Result<(), StoreError>>;
}

#[cfg(test)]
mod tests;
