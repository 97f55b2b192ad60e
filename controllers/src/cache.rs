//! Shared informer caches: one writer per kind, many readers.
//!
//! Each kind the controllers read (pods, replica sets, deployments, jobs) is watched once.
//! The [`Informer`] half owns the watch and the store's writer and is driven by one task;
//! the [`Cache`] half is a cheap, clonable read handle that every controller holds. After
//! the store has applied an event, the informer hands the changed object to a callback
//! that routes it to the controllers that care (an owner, the orphan's candidate owners),
//! so a reconcile triggered by an event always reads a cache that already holds it.
//!
//! Besides the objects, a cache knows the highest resourceVersion its watch has applied,
//! which is what [`crate::expectations`] compares a controller's own writes against.

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A read handle on one kind's cache.
pub struct Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    revision: Arc<AtomicU64>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            store: self.store.clone(),
            revision: self.revision.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    /// The store.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Every cached object of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let mut v: Vec<Arc<K>> = self
            .store
            .state()
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
            .collect();
        // A stable order, so that reconciles are deterministic.
        v.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        v
    }

    /// Whether the cache holds the object with this uid, not being deleted.
    pub fn holds_live(&self, uid: &str) -> bool {
        self.store
            .find(|o| o.meta().uid.as_deref() == Some(uid))
            .is_some_and(|o| o.meta().deletion_timestamp.is_none())
    }

    /// The highest resourceVersion applied so far.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }
}

/// What changed in a cache.
pub enum Changed<'a, K> {
    /// One object was added or modified.
    One(&'a K),
    /// One object was deleted (its last state).
    Gone(&'a K),
    /// The watch (re)listed: anything may have changed.
    All,
}

/// The writing half of a cache.
pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    revision: Arc<AtomicU64>,
}

/// A cache of the objects `api` lists, and the informer that fills it.
pub fn informer<K>(api: Api<K>) -> (Cache<K>, Informer<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, writer) = reflector::store();
    let revision = Arc::new(AtomicU64::new(0));
    (
        Cache {
            store,
            revision: revision.clone(),
        },
        Informer {
            api,
            writer,
            revision,
        },
    )
}

fn revision_of<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Watch forever (re-listing with back-off on errors), calling `changed` after each
    /// change is in the store.
    pub async fn run(self, mut changed: impl FnMut(Changed<'_, K>) + Send) {
        let kind = K::kind(&());
        let Informer {
            api,
            writer,
            revision,
        } = self;
        let bump = |rv: u64| {
            revision.fetch_max(rv, Ordering::AcqRel);
        };
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let mut stream = std::pin::pin!(stream);
        // The largest revision of a re-list, applied once the list is in the store.
        let mut listed = 0;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o)) => {
                    bump(revision_of(&o));
                    changed(Changed::One(&o));
                }
                Ok(watcher::Event::Delete(o)) => {
                    bump(revision_of(&o));
                    changed(Changed::Gone(&o));
                }
                Ok(watcher::Event::Init) => listed = 0,
                Ok(watcher::Event::InitApply(o)) => listed = listed.max(revision_of(&o)),
                Ok(watcher::Event::InitDone) => {
                    bump(listed);
                    tracing::debug!(%kind, "cache synced");
                    changed(Changed::All);
                }
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    }
}
