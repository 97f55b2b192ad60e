//! The on-disk, content-addressed cache: blobs by digest, and an index of references.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   immutable content, written to tmp/ and renamed into place
//! <root>/index.json           reference → digest, digest → what the artifact is
//! <root>/tmp/                 partial downloads; emptied on open
//! ```
//!
//! Trusting a cached blob: a blob is hashed while it is written, and hashed again the
//! first time this process uses it after opening the cache. Each successful hash records
//! the file's (size, mtime, ctime, inode, device); later uses compare a `stat` against
//! that record and re-hash only if it changed. So a cache hit costs one `stat` (the
//! create → Running budget is tens of milliseconds; re-hashing an 18 MB component costs
//! about as much), any write to or replacement of a blob file is caught (the kernel
//! updates ctime on every write and no user call can set it back), and bit rot or a
//! crash that left a renamed but unflushed blob is caught on the first use after the
//! agent starts. Blobs are therefore not fsynced; the index is.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::error::ArtifactError;
use super::layout::{Descriptor, WasmLayout, check_digest};
use super::wasm::WasmFlavor;

const INDEX_VERSION: u32 = 1;

/// What the index remembers about one resolved artifact, keyed by the digest its
/// reference resolved to (an image index's digest, or the manifest's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ArtifactRecord {
    /// The image manifest used (differs from the key when the key is an image index).
    pub manifest_digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Present for Wasm artifacts; absent for container images.
    pub wasm: Option<WasmRecord>,
    /// Bytes of everything this artifact stores in the cache.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WasmRecord {
    pub layout: WasmLayout,
    pub flavor: WasmFlavor,
    /// Digest of the `.wasm` bytes (the layer, or the file taken out of a tar layer).
    pub digest: String,
    pub size: u64,
    /// Media type of the layer it came from.
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefRecord {
    digest: String,
    updated: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    refs: BTreeMap<String, RefRecord>,
    artifacts: BTreeMap<String, ArtifactRecord>,
}

/// What a blob file looked like when it last hashed correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        Fingerprint {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// The cache directory and its in-memory state.
pub(crate) struct Cache {
    root: PathBuf,
    index: tokio::sync::Mutex<Index>,
    verified: Mutex<HashMap<String, Fingerprint>>,
    blob_locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    tmp_seq: AtomicU64,
}

/// A temp file being filled while it is hashed.
pub(crate) struct BlobWriter {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small maps leaves it consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hashes a file; returns (`sha256:<hex>`, size).
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}

impl Cache {
    pub async fn open(root: &Path) -> Result<Self, ArtifactError> {
        let blobs = root.join("blobs").join("sha256");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(|e| ArtifactError::store(&blobs, e))?;
        let tmp = root.join("tmp");
        // Leftovers of downloads interrupted by a crash.
        match tokio::fs::remove_dir_all(&tmp).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArtifactError::store(&tmp, e)),
        }
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| ArtifactError::store(&tmp, e))?;
        let index_path = root.join("index.json");
        let index = match tokio::fs::read(&index_path).await {
            Ok(bytes) => match serde_json::from_slice::<Index>(&bytes) {
                Ok(index) if index.version == INDEX_VERSION => index,
                Ok(index) => {
                    tracing::warn!(path = %index_path.display(), version = index.version,
                        "artifact index has an unknown version; starting with an empty index");
                    Index::default()
                }
                Err(e) => {
                    // Blobs stay; only the names are lost, so the next pull re-resolves
                    // and downloads nothing it already has.
                    tracing::warn!(path = %index_path.display(), error = %e,
                        "artifact index is unreadable; starting with an empty index");
                    Index::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(ArtifactError::store(&index_path, e)),
        };
        Ok(Cache {
            root: root.to_path_buf(),
            index: tokio::sync::Mutex::new(Index {
                version: INDEX_VERSION,
                ..index
            }),
            verified: Mutex::new(HashMap::new()),
            blob_locks: Mutex::new(HashMap::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there). `digest` must have passed
    /// [`check_digest`].
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs").join("sha256").join(hex)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// One lock per digest, so that two pulls needing the same blob download it once.
    pub fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.blob_locks);
        if let Some(existing) = locks.get(digest).and_then(Weak::upgrade) {
            return existing;
        }
        locks.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(digest.to_string(), Arc::downgrade(&fresh));
        fresh
    }

    /// Whether the blob is present with the right size and content (see the module doc
    /// for when this hashes). A blob that fails is deleted, so the caller can fetch it
    /// again.
    pub async fn verify_blob(
        &self,
        digest: &str,
        size: Option<u64>,
    ) -> Result<bool, ArtifactError> {
        check_digest(digest).map_err(|e| ArtifactError::invalid(digest, e))?;
        let path = self.blob_path(digest);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ArtifactError::store(&path, e)),
        };
        let fingerprint = Fingerprint::of(&meta);
        if size.is_some_and(|s| s != meta.len()) {
            tracing::warn!(digest, path = %path.display(), expected = size, found = meta.len(),
                "cached blob has the wrong size; removing it");
            self.discard(digest, &path).await?;
            return Ok(false);
        }
        if lock(&self.verified).get(digest) == Some(&fingerprint) {
            return Ok(true);
        }
        let hashed_path = path.clone();
        let (actual, _) = tokio::task::spawn_blocking(move || hash_file(&hashed_path))
            .await
            .map_err(|e| ArtifactError::store(&path, e))?
            .map_err(|e| ArtifactError::store(&path, e))?;
        if actual == digest {
            lock(&self.verified).insert(digest.to_string(), fingerprint);
            Ok(true)
        } else {
            tracing::warn!(digest, actual = %actual, path = %path.display(),
                "cached blob does not match its digest; removing it");
            self.discard(digest, &path).await?;
            Ok(false)
        }
    }

    async fn discard(&self, digest: &str, path: &Path) -> Result<(), ArtifactError> {
        lock(&self.verified).remove(digest);
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArtifactError::store(path, e)),
        }
    }

    pub async fn begin_blob(&self) -> Result<BlobWriter, ArtifactError> {
        let path = self.tmp_path();
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ArtifactError::store(&path, e))?;
        Ok(BlobWriter {
            path,
            file,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Finishes a download: checks digest and size, then renames the temp file into the
    /// store. On a mismatch the temp file is removed and the reason returned.
    pub async fn commit_blob(
        &self,
        mut writer: BlobWriter,
        expected: &Descriptor,
        reference: &str,
    ) -> Result<PathBuf, ArtifactError> {
        let flushed = writer.file.flush().await;
        let actual = format!("sha256:{}", hex::encode(writer.hasher.finalize_reset()));
        let written = writer.written;
        let BlobWriter { path, file, .. } = writer;
        drop(file);
        if let Err(e) = flushed {
            remove_quietly(&path).await;
            return Err(ArtifactError::store(&path, e));
        }
        if actual == expected.digest && written != expected.size {
            remove_quietly(&path).await;
            return Err(ArtifactError::invalid(
                reference,
                format!(
                    "blob {} is {written} bytes but its descriptor says {}",
                    expected.digest, expected.size
                ),
            ));
        }
        if actual != expected.digest {
            remove_quietly(&path).await;
            return Err(ArtifactError::invalid(
                reference,
                format!(
                    "digest mismatch for {} ({}): content hashes to {actual}",
                    expected.digest, expected.media_type
                ),
            ));
        }
        self.adopt(&path, &expected.digest).await
    }

    /// Moves a temp file whose content is known to hash to `digest` into the store.
    pub async fn adopt(&self, tmp: &Path, digest: &str) -> Result<PathBuf, ArtifactError> {
        let target = self.blob_path(digest);
        let set_ro =
            tokio::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444));
        if let Err(e) = set_ro.await {
            remove_quietly(tmp).await;
            return Err(ArtifactError::store(tmp, e));
        }
        if let Err(e) = tokio::fs::rename(tmp, &target).await {
            remove_quietly(tmp).await;
            return Err(ArtifactError::store(&target, e));
        }
        let meta = tokio::fs::metadata(&target)
            .await
            .map_err(|e| ArtifactError::store(&target, e))?;
        lock(&self.verified).insert(digest.to_string(), Fingerprint::of(&meta));
        Ok(target)
    }

    /// Stores bytes already in memory (manifests, configs); returns their digest.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<String, ArtifactError> {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        if self.verify_blob(&digest, Some(bytes.len() as u64)).await? {
            return Ok(digest);
        }
        let mut writer = self.begin_blob().await?;
        let path = writer.path.clone();
        writer
            .write(bytes)
            .await
            .map_err(|e| ArtifactError::store(&path, e))?;
        let desc = Descriptor {
            media_type: String::new(),
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        self.commit_blob(writer, &desc, "local").await?;
        Ok(digest)
    }

    /// Reads a small blob (manifest, config) after verifying it.
    pub async fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, ArtifactError> {
        if !self.verify_blob(digest, None).await? {
            return Ok(None);
        }
        let path = self.blob_path(digest);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArtifactError::store(&path, e)),
        }
    }

    pub fn new_tmp_path(&self) -> PathBuf {
        self.tmp_path()
    }

    pub async fn lookup_ref(&self, name: &str) -> Option<String> {
        self.index
            .lock()
            .await
            .refs
            .get(name)
            .map(|r| r.digest.clone())
    }

    pub async fn lookup_artifact(&self, digest: &str) -> Option<ArtifactRecord> {
        self.index.lock().await.artifacts.get(digest).cloned()
    }

    /// Records `digest`'s artifact and points `names` at it, then persists the index.
    pub async fn record(
        &self,
        names: &[String],
        digest: &str,
        record: ArtifactRecord,
    ) -> Result<(), ArtifactError> {
        let mut index = self.index.lock().await;
        let unchanged = index.artifacts.get(digest) == Some(&record)
            && names
                .iter()
                .all(|n| index.refs.get(n).is_some_and(|r| r.digest == digest));
        if unchanged {
            // An `Always` pull that found the same digest: no write per pod start.
            return Ok(());
        }
        index.artifacts.insert(digest.to_string(), record);
        let now = jiff::Timestamp::now().to_string();
        for name in names {
            index.refs.insert(
                name.clone(),
                RefRecord {
                    digest: digest.to_string(),
                    updated: now.clone(),
                },
            );
        }
        self.persist(&index).await
    }

    /// Drops a name. Returns whether it existed.
    pub async fn forget(&self, name: &str) -> Result<bool, ArtifactError> {
        let mut index = self.index.lock().await;
        if index.refs.remove(name).is_none() {
            return Ok(false);
        }
        self.persist(&index).await?;
        Ok(true)
    }

    /// Deletes artifacts no name points at, then blob files no remaining artifact uses
    /// and that are older than `grace`. Returns (artifacts, blobs, bytes) removed.
    pub async fn prune(
        &self,
        grace: std::time::Duration,
    ) -> Result<(usize, usize, u64), ArtifactError> {
        let mut index = self.index.lock().await;
        let named: std::collections::HashSet<String> =
            index.refs.values().map(|r| r.digest.clone()).collect();
        let before = index.artifacts.len();
        index.artifacts.retain(|digest, _| named.contains(digest));
        let artifacts_removed = before - index.artifacts.len();
        let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (digest, record) in &index.artifacts {
            live.insert(digest.clone());
            live.insert(record.manifest_digest.clone());
            live.insert(record.config.digest.clone());
            live.extend(record.layers.iter().map(|l| l.digest.clone()));
            if let Some(w) = &record.wasm {
                live.insert(w.digest.clone());
            }
        }
        if artifacts_removed > 0 {
            self.persist(&index).await?;
        }
        let dir = self.root.join("blobs").join("sha256");
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| ArtifactError::store(&dir, e))?;
        let now = std::time::SystemTime::now();
        let (mut blobs, mut bytes) = (0usize, 0u64);
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| ArtifactError::store(&dir, e))?
        {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if live.contains(&digest) {
                continue;
            }
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            // A pull or import in progress has blobs it has not recorded yet.
            let young = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < grace);
            if young {
                continue;
            }
            lock(&self.verified).remove(&digest);
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => {
                    blobs += 1;
                    bytes += meta.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArtifactError::store(entry.path(), e)),
            }
        }
        Ok((artifacts_removed, blobs, bytes))
    }

    /// Every artifact with the names that point at it, for `status.images`.
    pub async fn list(&self) -> Vec<(String, Vec<String>, ArtifactRecord)> {
        let index = self.index.lock().await;
        let mut names: HashMap<&str, Vec<String>> = HashMap::new();
        for (name, r) in &index.refs {
            names
                .entry(r.digest.as_str())
                .or_default()
                .push(name.clone());
        }
        index
            .artifacts
            .iter()
            .map(|(digest, record)| {
                (
                    digest.clone(),
                    names.remove(digest.as_str()).unwrap_or_default(),
                    record.clone(),
                )
            })
            .collect()
    }

    // Called with the index lock held, so writers of index.json never interleave.
    async fn persist(&self, index: &Index) -> Result<(), ArtifactError> {
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| ArtifactError::store(self.root.join("index.json"), e))?;
        let tmp = self.tmp_path();
        let target = self.root.join("index.json");
        let write = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            file.write_all(&bytes).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&tmp, &target).await
        };
        if let Err(e) = write.await {
            remove_quietly(&tmp).await;
            return Err(ArtifactError::store(&target, e));
        }
        Ok(())
    }
}

pub(crate) async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove temp file");
    }
}
