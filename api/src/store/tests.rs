use super::*;
use std::time::Duration;

fn put(key: &str, value: &str, precondition: Precondition) -> Op {
    let value = Bytes::from(value.to_string());
    Op::Put {
        key: key.into(),
        value: Box::new(move |_| Ok(value)),
        precondition,
    }
}

fn open(dir: &std::path::Path) -> RedbStore {
    RedbStore::open(StoreConfig::new(dir.join("store.redb"))).expect("open store")
}

#[tokio::test]
async fn create_conflicts_and_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r1 = s
        .txn(vec![put("a/1", "one", Precondition::Absent)])
        .await
        .unwrap();
    assert_eq!(r1.revision, 1);
    let again = s.txn(vec![put("a/1", "uno", Precondition::Absent)]).await;
    assert!(matches!(
        again,
        Err(StoreError::Conflict {
            reason: ConflictReason::Exists,
            ..
        })
    ));
    let r2 = s
        .txn(vec![put("a/1", "two", Precondition::ModRevision(1))])
        .await
        .unwrap();
    assert_eq!(r2.results[0].create_revision, 1);
    assert_eq!(r2.results[0].mod_revision, 2);
    let stale = s
        .txn(vec![put("a/1", "three", Precondition::ModRevision(1))])
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::Conflict {
            reason: ConflictReason::Stale,
            ..
        })
    ));
    assert_eq!(s.get("a/1").unwrap().value, Bytes::from("two"));
    assert_eq!(s.revision(), 2, "refused writes must not consume revisions");
}

#[tokio::test]
async fn concurrent_compare_and_swap_has_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let base = s
        .txn(vec![put("k", "0", Precondition::Absent)])
        .await
        .unwrap()
        .revision;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.txn(vec![put(
                "k",
                &i.to_string(),
                Precondition::ModRevision(base),
            )])
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn list_at_an_older_revision_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..5 {
        s.txn(vec![put(&format!("p/{i}"), "v1", Precondition::None)])
            .await
            .unwrap();
    }
    let at = s.revision();
    s.txn(vec![put("p/0", "v2", Precondition::None)])
        .await
        .unwrap();
    s.txn(vec![Op::Delete {
        key: "p/1".into(),
        precondition: Precondition::Exists,
    }])
    .await
    .unwrap();
    s.txn(vec![put("p/9", "new", Precondition::None)])
        .await
        .unwrap();
    let old = s
        .list(
            "p/",
            &ListOptions {
                revision: Some(at),
                ..Default::default()
            },
        )
        .unwrap();
    let keys: Vec<_> = old.items.iter().map(|kv| kv.key.to_string()).collect();
    assert_eq!(keys, ["p/0", "p/1", "p/2", "p/3", "p/4"]);
    assert_eq!(old.items[0].value, Bytes::from("v1"));
    let page = s
        .list(
            "p/",
            &ListOptions {
                limit: 2,
                start_after: Some("p/0".into()),
                revision: Some(at),
            },
        )
        .unwrap();
    assert!(page.more);
    assert_eq!(page.items.len(), 2);
    assert_eq!(&*page.items[0].key, "p/1");
    let now = s.list("p/", &ListOptions::default()).unwrap();
    assert_eq!(now.items.len(), 5);
    assert_eq!(&*now.items[4].key, "p/9");
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.txn(vec![put("w/a", "1", Precondition::None)])
        .await
        .unwrap();
    let from = s.revision();
    s.txn(vec![put("w/b", "2", Precondition::None)])
        .await
        .unwrap();
    s.txn(vec![put("other/x", "3", Precondition::None)])
        .await
        .unwrap();
    let mut w = s.watch("w/", from).unwrap();
    s.txn(vec![Op::Delete {
        key: "w/a".into(),
        precondition: Precondition::None,
    }])
    .await
    .unwrap();
    let e1 = w.next().await.unwrap();
    assert_eq!((&*e1.kv.key, e1.kind), ("w/b", EventKind::Put));
    let e2 = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&*e2.kv.key, e2.kind), ("w/a", EventKind::Delete));
    assert_eq!(e2.prev.as_ref().unwrap().value, Bytes::from("1"));
}

#[tokio::test]
async fn acknowledged_writes_and_history_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for i in 0..10 {
            s.txn(vec![put(&format!("r/{i}"), "x", Precondition::None)])
                .await
                .unwrap();
        }
    }
    let s = open(dir.path());
    assert_eq!(s.revision(), 10);
    assert_eq!(
        s.list("r/", &ListOptions::default()).unwrap().items.len(),
        10
    );
    let mut w = s.watch("r/", 8).unwrap();
    assert_eq!(w.next().await.unwrap().revision, 9);
    let r = s
        .txn(vec![put("r/new", "y", Precondition::None)])
        .await
        .unwrap();
    assert_eq!(r.revision, 11, "revisions keep increasing across restarts");
}

#[tokio::test]
async fn compacted_history_answers_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..10 {
        s.txn(vec![put(&format!("c/{i}"), "x", Precondition::None)])
            .await
            .unwrap();
    }
    s.compact(6).await.unwrap();
    assert!(matches!(
        s.watch("c/", 3),
        Err(StoreError::Compacted { compacted: 6, .. })
    ));
    assert!(s.watch("c/", 6).is_ok());
    let old = s.list(
        "c/",
        &ListOptions {
            revision: Some(2),
            ..Default::default()
        },
    );
    assert!(matches!(old, Err(StoreError::Compacted { .. })));
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.compacted_revision(), 6);
    assert!(matches!(
        s.watch("c/", 3),
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test]
async fn slow_watcher_is_dropped_not_buffered_forever() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("s.redb"));
    cfg.watch_buffer = 16;
    let s = RedbStore::open(cfg).unwrap();
    let mut w = s.watch("", 0).unwrap();
    for i in 0..64 {
        s.txn(vec![put(&format!("s/{i}"), "x", Precondition::None)])
            .await
            .unwrap();
    }
    let mut lagged = false;
    for _ in 0..64 {
        match w.next().await {
            Ok(_) => {}
            Err(WatchError::Lagged(_)) => {
                lagged = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(lagged);
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn sealed_store(dir: &std::path::Path) -> RedbStore {
    let sealer = seal::Sealer::load_or_create(&dir.join("keys")).unwrap();
    RedbStore::open(StoreConfig::new(dir.join("store.redb")).with_sealer(Arc::new(sealer))).unwrap()
}

#[tokio::test]
async fn secrets_are_sealed_on_disk_and_resealed_after_a_key_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.redb");
    // A store from before encryption: a Secret in the clear, and history of it.
    {
        let s = open(dir.path());
        s.txn(vec![put(
            "core/secrets/ns/a",
            "plain-old-value",
            Precondition::Absent,
        )])
        .await
        .unwrap();
        s.txn(vec![put(
            "core/configmaps/ns/c",
            "visible-config",
            Precondition::Absent,
        )])
        .await
        .unwrap();
    }
    assert!(file_has(&file, "plain-old-value"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the store file is its owner's only");
    // Opened with a key: the old value is sealed in place, history and revisions kept.
    {
        let s = sealed_store(dir.path());
        assert_eq!(
            s.get("core/secrets/ns/a").unwrap().value,
            Bytes::from("plain-old-value")
        );
        assert_eq!(s.revision(), 2);
        s.txn(vec![put(
            "core/secrets/ns/b",
            "new-secret-value",
            Precondition::Absent,
        )])
        .await
        .unwrap();
        let w = s.watch("core/secrets/", 0).unwrap();
        drop(w);
    }
    assert!(!file_has(&file, "plain-old-value"), "resealed at open");
    assert!(!file_has(&file, "new-secret-value"), "sealed when written");
    assert!(file_has(&file, "visible-config"), "only Secrets are sealed");
    // A rotation: new key first, reopen (reseals), old key dropped; all still reads.
    let keys = dir.path().join("keys");
    let old = std::fs::read_to_string(&keys).unwrap();
    seal::add_primary_key(&keys).unwrap();
    drop(sealed_store(dir.path()));
    seal::drop_old_keys(&keys).unwrap();
    assert_ne!(std::fs::read_to_string(&keys).unwrap(), old);
    let s = sealed_store(dir.path());
    assert_eq!(
        s.get("core/secrets/ns/a").unwrap().value,
        Bytes::from("plain-old-value")
    );
    assert_eq!(
        s.get("core/secrets/ns/b").unwrap().value,
        Bytes::from("new-secret-value")
    );
    let history = s.list(
        "core/secrets/",
        &ListOptions {
            revision: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(
        history.unwrap().items.len(),
        1,
        "history reads at old revisions"
    );
    drop(s);
    // Without the keys the store refuses to open instead of serving ciphertext.
    let e = RedbStore::open(StoreConfig::new(&file)).err().unwrap();
    assert!(e.to_string().contains("encrypted"), "{e}");
}
