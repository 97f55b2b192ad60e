//! The node's artifact store: pull, verify, cache, push and import Wasm artifacts.
//!
//! One [`ArtifactStore`] per node, shared by all its pods (it is a cheap `Clone` handle).
//! It keeps a content-addressed cache on disk and answers "give me the verified `.wasm`
//! for this image reference":
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_runtime::artifacts::ArtifactError> {
//! use skiff_runtime::artifacts::{
//!     ArtifactContent, ArtifactStore, PullPolicy, RegistryCredentials, StoreOptions,
//! };
//!
//! let store = ArtifactStore::open_with(
//!     "/var/lib/skiff/artifacts",
//!     StoreOptions { insecure_registries: vec!["registry.lan:5000".into()] },
//! )
//! .await?;
//! let image = "registry.lan:5000/hello:1";
//! let policy = PullPolicy::default_for(image); // or the container's imagePullPolicy
//! match store.pull(image, policy, &RegistryCredentials::Anonymous).await {
//!     Ok(artifact) => match &artifact.content {
//!         ArtifactContent::Wasm(wasm) => println!("run {} ({:?})", wasm.path.display(), wasm.flavor),
//!         ArtifactContent::Container(image) => println!("container with {} layers", image.layers.len()),
//!     },
//!     // `err.reason()` is the container's waiting reason; `err` itself the message.
//!     Err(err) => eprintln!("{}: {err}", err.reason()),
//! }
//! # Ok(()) }
//! ```
//!
//! What it understands:
//! - layouts: the CNCF Wasm OCI artifact, Spin's (one component), the legacy wasm-to-oci
//!   layout, any manifest with a single Wasm layer, and an ordinary OCI/Docker image whose
//!   one tar layer holds one `.wasm` file; anything else that is a valid image is reported
//!   as a container image with its layers;
//! - image indexes: a wasi/wasm entry first, then `linux/<node arch>`, then the only entry;
//! - pull policies with Kubernetes semantics ([`PullPolicy::default_for`]);
//! - credentials from `kubernetes.io/dockerconfigjson` Secrets ([`DockerConfig`]);
//! - plain HTTP for loopback registries and those in [`StoreOptions::insecure_registries`].
//!
//! Every blob is checked against its digest before it is stored and before a cached copy
//! is used: a process re-hashes a cached blob the first time it uses it, and after that
//! trusts it while its size, mtime, ctime and inode are unchanged, so a cache hit costs a
//! `stat` and any write to a cached file is still caught (details in `cache.rs`). Concurrent pulls of one
//! reference share one download; different references sharing blobs download each blob
//! once. [`push`] publishes a `.wasm` as a CNCF Wasm artifact; [`ArtifactStore::import`]
//! loads a `.wasm` or an `oci-archive` tarball for air-gapped nodes.

mod auth;
mod cache;
mod error;
mod import;
mod layout;
mod policy;
mod pull;
mod push;
mod registry;
mod tarlayer;
pub mod unpack;
mod wasm;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, Shared};

pub use auth::{DockerConfig, DockerConfigError, RegistryCredentials};
pub use error::{ArtifactError, PullFailureReason};
pub use layout::{
    CNCF_WASM_CONFIG, CNCF_WASM_LAYER, Descriptor, SPIN_CONFIG, WASM_CONTENT_LAYER,
    WASM_TO_OCI_CONFIG, WasmLayout,
};
pub use policy::{PullPolicy, parse_reference, uses_plain_http};
pub use push::{PushOptions, PushOutcome, PushProgress, push};
pub use wasm::WasmFlavor;

use cache::{ArtifactRecord, Cache};

/// Settings of a node's store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP, from the agent's
    /// `--insecure-registry` flags. Loopback registries always are.
    pub insecure_registries: Vec<String>,
}

/// A pulled or imported artifact, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The normalized reference (`docker.io/library/app:1`).
    pub reference: String,
    /// The digest the reference resolved to: the manifest's, or the image index's.
    pub digest: String,
    /// The image manifest used (differs from `digest` when that names an index).
    pub manifest_digest: String,
    /// Bytes this artifact occupies in the cache.
    pub size: u64,
    /// What to run.
    pub content: ArtifactContent,
}

/// What an artifact holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactContent {
    /// A Wasm module or component, for the Wasm host.
    Wasm(WasmArtifact),
    /// Not Wasm: a container image, for the OCI executor.
    Container(ContainerImage),
}

/// The verified `.wasm` of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmArtifact {
    /// The file in the cache. Shared by every pod of the node and read-only: open it,
    /// never modify or move it.
    pub path: PathBuf,
    /// `sha256:` digest of the `.wasm` bytes: the key for compiled-code caches.
    pub digest: String,
    /// Size of the `.wasm` in bytes.
    pub size: u64,
    /// Core module or component.
    pub flavor: WasmFlavor,
    /// The registry layout it came in.
    pub layout: WasmLayout,
}

/// A container image, described for the OCI executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The image config descriptor; its blob is cached at `config_path`.
    pub config: Descriptor,
    /// The cached, verified config JSON.
    pub config_path: PathBuf,
    /// The layers, bottom first.
    pub layers: Vec<ContainerLayer>,
}

/// One layer of a container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLayer {
    /// Media type, digest and size.
    pub descriptor: Descriptor,
    /// The verified blob, if it is cached. Only single-layer images have their layer
    /// downloaded by a pull (to look for a `.wasm`); fetching the rest is the container
    /// executor's business.
    pub path: Option<PathBuf>,
}

/// The three things a pod can be asked to run from an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A core Wasm module.
    WasmModule,
    /// A Wasm component.
    WasmComponent,
    /// A container image.
    ContainerImage,
}

impl Artifact {
    /// Module, component or container image.
    pub fn kind(&self) -> ArtifactKind {
        match &self.content {
            ArtifactContent::Wasm(w) => match w.flavor {
                WasmFlavor::Module => ArtifactKind::WasmModule,
                WasmFlavor::Component => ArtifactKind::WasmComponent,
            },
            ArtifactContent::Container(_) => ArtifactKind::ContainerImage,
        }
    }

    /// The `.wasm` file to run, if this is a Wasm artifact.
    pub fn wasm_path(&self) -> Option<&Path> {
        match &self.content {
            ArtifactContent::Wasm(w) => Some(&w.path),
            ArtifactContent::Container(_) => None,
        }
    }

    /// The value for `status.containerStatuses[].imageID`: `registry/repository@digest`.
    pub fn image_id(&self) -> String {
        match parse_reference(&self.reference) {
            Ok(r) => format!("{}/{}@{}", r.registry(), r.repository(), self.digest),
            Err(_) => self.digest.clone(),
        }
    }
}

/// A cached artifact as a Node's `status.images` entry wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// The references that name it, and `registry/repository@digest` for each repository.
    pub names: Vec<String>,
    /// Bytes in the cache.
    pub size_bytes: u64,
    /// When this agent last handed it to a container (`None`: not since it started).
    pub last_used: Option<std::time::Instant>,
}

/// What [`ArtifactStore::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Artifacts no reference named.
    pub artifacts: usize,
    /// Blob files deleted.
    pub blobs: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Counters of network work, for metrics and for tests that check single-flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Requests asking a registry which digest a reference names.
    pub digest_resolutions: u64,
    /// Manifests downloaded.
    pub manifest_downloads: u64,
    /// Blobs (configs and layers) downloaded.
    pub blob_downloads: u64,
    /// Bytes of blobs downloaded.
    pub blob_bytes: u64,
}

#[derive(Default)]
struct Counters {
    digest_resolutions: AtomicU64,
    manifest_downloads: AtomicU64,
    blob_downloads: AtomicU64,
    blob_bytes: AtomicU64,
}

type PullFuture = Shared<BoxFuture<'static, Result<Artifact, ArtifactError>>>;
type ClientKey = (String, bool, RegistryCredentials);
/// One pull in flight per reference and credentials: a pod with valid credentials must
/// not inherit the failure of an anonymous pull of the same reference.
type FlightKey = (String, RegistryCredentials);

struct Inner {
    cache: Cache,
    options: StoreOptions,
    clients: Mutex<HashMap<ClientKey, Arc<oci_client::Client>>>,
    inflight: Mutex<HashMap<FlightKey, PullFuture>>,
    counters: Counters,
    /// When each artifact (by digest) was last returned by a pull, for image GC.
    last_used: Mutex<HashMap<String, std::time::Instant>>,
}

/// The node's artifact cache. Cheap to clone; all clones share one cache.
///
/// One store per cache directory: two processes must not open the same directory.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("root", &self.inner.cache.root())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ArtifactStore {
    /// Opens (creating if needed) the cache in `dir` with default options.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, ArtifactError> {
        Self::open_with(dir, StoreOptions::default()).await
    }

    /// Opens (creating if needed) the cache in `dir`.
    pub async fn open_with(
        dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Self, ArtifactError> {
        let cache = Cache::open(dir.as_ref()).await?;
        Ok(ArtifactStore {
            inner: Arc::new(Inner {
                cache,
                options,
                clients: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                last_used: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        self.inner.cache.root()
    }

    /// Network work done so far by this handle's store.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            digest_resolutions: c.digest_resolutions.load(Ordering::Relaxed),
            manifest_downloads: c.manifest_downloads.load(Ordering::Relaxed),
            blob_downloads: c.blob_downloads.load(Ordering::Relaxed),
            blob_bytes: c.blob_bytes.load(Ordering::Relaxed),
        }
    }

    /// The cached artifacts, for a Node's `status.images`. Largest first, as the kubelet
    /// reports them.
    pub async fn images(&self) -> Vec<CachedImage> {
        let mut out = Vec::new();
        let last_used = lock(&self.inner.last_used).clone();
        for (digest, names, record) in self.inner.cache.list().await {
            let mut all: BTreeSet<String> = BTreeSet::new();
            for name in &names {
                all.insert(name.clone());
                if let Ok(r) = parse_reference(name) {
                    all.insert(format!("{}/{}@{}", r.registry(), r.repository(), digest));
                }
            }
            if all.is_empty() {
                continue;
            }
            out.push(CachedImage {
                names: all.into_iter().collect(),
                size_bytes: record.size,
                last_used: last_used.get(&digest).copied(),
            });
        }
        out.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.names.cmp(&b.names)));
        out
    }

    /// Forgets `reference` (as given to [`ArtifactStore::pull`] or
    /// [`ArtifactStore::import`]); its blobs stay until [`ArtifactStore::prune`]. Returns
    /// whether the name was known. Running pods keep their open files.
    pub async fn remove(&self, reference: &str) -> Result<bool, ArtifactError> {
        let name = parse_reference(reference)?.whole();
        self.inner.cache.forget(&name).await
    }

    /// Garbage collection: deletes artifacts that no reference names any more (after
    /// [`ArtifactStore::remove`], or a tag that now points elsewhere) and the blobs only
    /// they used. Blob files younger than `grace` are kept, because a pull or import in
    /// progress writes its blobs before it records them; a minute is plenty. The agent
    /// decides which references are unused (like the kubelet's image GC) and removes
    /// them first.
    pub async fn prune(&self, grace: std::time::Duration) -> Result<PruneReport, ArtifactError> {
        let (artifacts, blobs, bytes) = self.inner.cache.prune(grace).await?;
        tracing::info!(artifacts, blobs, bytes, "pruned artifact cache");
        Ok(PruneReport {
            artifacts,
            blobs,
            bytes,
        })
    }

    /// Turns an index record into an [`Artifact`] after verifying the blobs it needs.
    /// `None` if one is missing or failed verification (and was removed).
    async fn materialize(
        &self,
        name: &str,
        digest: &str,
        record: &ArtifactRecord,
    ) -> Result<Option<Artifact>, ArtifactError> {
        let cache = &self.inner.cache;
        let content = match &record.wasm {
            Some(w) => {
                if !cache.verify_blob(&w.digest, Some(w.size)).await? {
                    return Ok(None);
                }
                ArtifactContent::Wasm(WasmArtifact {
                    path: cache.blob_path(&w.digest),
                    digest: w.digest.clone(),
                    size: w.size,
                    flavor: w.flavor,
                    layout: w.layout,
                })
            }
            None => {
                if !cache
                    .verify_blob(&record.config.digest, Some(record.config.size))
                    .await?
                {
                    return Ok(None);
                }
                let mut layers = Vec::with_capacity(record.layers.len());
                for layer in &record.layers {
                    let present = cache.verify_blob(&layer.digest, Some(layer.size)).await?;
                    layers.push(ContainerLayer {
                        descriptor: layer.clone(),
                        path: present.then(|| cache.blob_path(&layer.digest)),
                    });
                }
                ArtifactContent::Container(ContainerImage {
                    config: record.config.clone(),
                    config_path: cache.blob_path(&record.config.digest),
                    layers,
                })
            }
        };
        Ok(Some(Artifact {
            reference: name.to_string(),
            digest: digest.to_string(),
            manifest_digest: record.manifest_digest.clone(),
            size: record.size,
            content,
        }))
    }
}

/// The parsers that read what a registry or an archive hands the node, as plain
/// functions over bytes, for the fuzz targets in `fuzz/`. Each returns whether the input
/// was accepted; none may panic, whatever the bytes.
#[doc(hidden)]
pub mod fuzzing {
    /// A manifest or index: parse it, then pick a platform or plan the layers.
    pub fn manifest(bytes: &[u8]) -> bool {
        match super::layout::parse_manifest(bytes) {
            Ok(super::layout::Parsed::Index(entries)) => {
                super::layout::choose_platform(&entries).is_ok()
            }
            Ok(super::layout::Parsed::Image { config, layers }) => {
                super::layout::classify(&config, &layers).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Wasm bytes as the artifact store checks them before anything runs.
    pub fn wasm(bytes: &[u8]) -> bool {
        super::wasm::inspect(bytes).is_ok()
    }

    /// An image layer (tar or gzip'ed tar) as scanned for a lone `.wasm` file, in the
    /// directory `scratch` (which must exist).
    pub fn layer(bytes: &[u8], scratch: &std::path::Path) -> bool {
        let blob = scratch.join("layer");
        if std::fs::write(&blob, bytes).is_err() {
            return false;
        }
        let ok = super::tarlayer::scan(&blob, &scratch.join("out.wasm")).is_ok();
        let _ = std::fs::remove_file(scratch.join("out.wasm"));
        ok
    }
}
