//! Expectations: what a controller wrote and has not yet seen in its cache.
//!
//! A reconcile reads children from an informer cache that lags behind the controller's
//! own writes. Without care, a second reconcile that runs before the cache has caught up
//! (triggered by its own status write, or by another child's event) would create the same
//! pods again. So each owner remembers its writes: for a created or updated child, the
//! resourceVersion the write returned (the cache has caught up once its watch has
//! delivered an event at or past that revision, which also covers a child deleted before
//! the cache saw it); for a deleted child, its uid (caught up once the cache no longer
//! holds it as live). Until then the owner only waits. An expectation never seen within
//! [`TIMEOUT`] is dropped, so a lost event cannot wedge a controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write may stay unobserved before the controller stops waiting for it.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Pending {
    /// The cache must reach this revision.
    revision: u64,
    /// Uids of children deleted, still to be seen gone (or terminating).
    deletes: Vec<String>,
    since: Option<Instant>,
}

/// Pending writes, by owner uid.
#[derive(Debug, Default)]
pub struct Expectations {
    by_owner: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Pending>) -> T) -> T {
        // A poisoned lock only means another reconcile panicked mid-update; the map is
        // still a valid map (at worst an expectation too many, which times out).
        let mut g = self
            .by_owner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// The owner wrote a child that the server stamped with `revision`.
    pub fn wrote(&self, owner: &str, revision: Option<&str>) {
        let Some(rv) = revision.and_then(|r| r.parse::<u64>().ok()) else {
            return;
        };
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.revision = p.revision.max(rv);
            p.since.get_or_insert_with(Instant::now);
        });
    }

    /// The owner deleted the child with this uid.
    pub fn deleted(&self, owner: &str, uid: &str) {
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.deletes.push(uid.to_string());
            p.since.get_or_insert_with(Instant::now);
        });
    }

    /// Whether the cache (seen up to `cache_revision`, holding live children for which
    /// `live` answers true) reflects every write of `owner`; forgets what it has seen.
    pub fn satisfied(&self, owner: &str, cache_revision: u64, live: impl Fn(&str) -> bool) -> bool {
        self.with(|m| {
            let Some(p) = m.get_mut(owner) else {
                return true;
            };
            p.deletes.retain(|uid| live(uid));
            let caught_up = p.revision <= cache_revision && p.deletes.is_empty();
            let expired = p.since.is_some_and(|s| s.elapsed() >= TIMEOUT);
            if caught_up || expired {
                if expired && !caught_up {
                    tracing::warn!(%owner, "writes not observed in time; syncing anyway");
                }
                m.remove(owner);
                true
            } else {
                false
            }
        })
    }

    /// Forget an owner (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.with(|m| {
            m.remove(owner);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_cache_to_reach_its_writes() {
        let e = Expectations::default();
        assert!(e.satisfied("rs", 0, |_| false));
        e.wrote("rs", Some("10"));
        e.wrote("rs", Some("12"));
        e.wrote("rs", Some("not a number"));
        assert!(!e.satisfied("rs", 11, |_| false));
        assert!(e.satisfied("rs", 12, |_| false));
        // Forgotten once satisfied.
        assert!(e.satisfied("rs", 0, |_| false));
    }

    #[test]
    fn waits_for_deleted_children_to_leave_the_cache() {
        let e = Expectations::default();
        e.deleted("rs", "a");
        e.deleted("rs", "b");
        assert!(!e.satisfied("rs", 0, |uid| uid == "a" || uid == "b"));
        assert!(!e.satisfied("rs", 0, |uid| uid == "b"));
        assert!(e.satisfied("rs", 0, |_| false));
        assert!(e.satisfied("other", 0, |_| true));
    }
}
