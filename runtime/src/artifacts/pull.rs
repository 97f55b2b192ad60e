//! Pulling: cache lookup, single-flight, manifest resolution, blob downloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::{FutureExt as _, StreamExt as _};
use oci_client::Reference;
use tracing::Instrument as _;

use super::cache::{ArtifactRecord, WasmRecord, remove_quietly, sha256_hex};
use super::error::ArtifactError;
use super::layout::{self, Descriptor, Parsed, Plan, WasmLayout, check_digest};
use super::policy::{PullPolicy, parse_reference, uses_plain_http};
use super::registry::{Remote, map_stream_error, new_client};
use super::tarlayer::{self, TarScan};
use super::wasm::{self, WasmFlavor};
use super::{Artifact, ArtifactStore, RegistryCredentials, lock};

/// Manifests and configs are small documents; refuse anything absurd before buffering.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Where blobs come from while resolving an artifact.
pub(crate) enum Source {
    /// A registry: missing blobs are downloaded.
    Remote(Remote),
    /// The cache only (imports): a missing blob is an error.
    Local,
}

/// Result of looking in the cache.
enum Cached {
    Hit(Artifact),
    Miss,
    /// It was cached but a blob failed verification and was removed.
    Corrupt,
}

impl ArtifactStore {
    /// Makes the artifact `reference` available locally and returns it.
    ///
    /// `policy` decides whether the registry is asked ([`PullPolicy`]); `credentials`
    /// are used if it is. Concurrent calls for the same reference share one pull; its
    /// result (success or error) goes to all of them. Cancelling a call does not cancel a
    /// pull other callers wait for (the pull runs on its own task).
    pub async fn pull(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: &RegistryCredentials,
    ) -> Result<Artifact, ArtifactError> {
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        let span = tracing::info_span!("pull", reference = %name, policy = ?policy);
        async {
            let mut corrupt = false;
            if policy != PullPolicy::Always {
                match self.cached(&parsed, &name).await? {
                    Cached::Hit(artifact) => {
                        tracing::debug!(digest = %artifact.digest, "cache hit");
                        return Ok(artifact);
                    }
                    Cached::Miss => {}
                    Cached::Corrupt => corrupt = true,
                }
            }
            if policy == PullPolicy::Never {
                return Err(ArtifactError::NeverPull {
                    reference: name.clone(),
                    detail: if corrupt {
                        "; the cached copy failed verification and was removed".to_string()
                    } else {
                        String::new()
                    },
                });
            }
            self.single_flight(parsed, name.clone(), credentials.clone())
                .await
        }
        .instrument(span)
        .await
        .inspect(|artifact| {
            lock(&self.inner.last_used).insert(artifact.digest.clone(), Instant::now());
        })
    }

    async fn cached(&self, parsed: &Reference, name: &str) -> Result<Cached, ArtifactError> {
        let cache = &self.inner.cache;
        let digest = match parsed.digest() {
            Some(d) => d.to_string(),
            None => match cache.lookup_ref(name).await {
                Some(d) => d,
                None => return Ok(Cached::Miss),
            },
        };
        let Some(record) = cache.lookup_artifact(&digest).await else {
            return Ok(Cached::Miss);
        };
        Ok(match self.materialize(name, &digest, &record).await? {
            Some(artifact) => Cached::Hit(artifact),
            None => Cached::Corrupt,
        })
    }

    async fn single_flight(
        &self,
        parsed: Reference,
        name: String,
        credentials: RegistryCredentials,
    ) -> Result<Artifact, ArtifactError> {
        let key = (name.clone(), credentials.clone());
        let shared = {
            let mut inflight = lock(&self.inner.inflight);
            if let Some(existing) = inflight.get(&key) {
                tracing::debug!("joining a pull in progress");
                existing.clone()
            } else {
                let store = self.clone();
                let task_name = name.clone();
                let task_key = key.clone();
                let span = tracing::Span::current();
                // Its own task: a pod that gives up waiting must not abort the pull for
                // the others. The task removes its entry when done; it cannot do so
                // before the insert below, which happens under the same lock.
                let task = tokio::spawn(
                    async move {
                        let result = store.fetch(&parsed, &task_name, &credentials).await;
                        lock(&store.inner.inflight).remove(&task_key);
                        result
                    }
                    .instrument(span),
                );
                let join_name = name.clone();
                let fut = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(ArtifactError::Registry {
                            reference: join_name,
                            reason: format!("pull task failed: {e}"),
                        })
                    })
                }
                .boxed()
                .shared();
                inflight.insert(key, fut.clone());
                fut
            }
        };
        shared.await
    }

    fn remote(&self, parsed: &Reference, name: &str, credentials: &RegistryCredentials) -> Remote {
        let registry = parsed.resolve_registry().to_string();
        let plain_http = uses_plain_http(&registry, &self.inner.options.insecure_registries);
        let key = (registry.clone(), plain_http, credentials.clone());
        let client = {
            let mut clients = lock(&self.inner.clients);
            clients
                .entry(key)
                .or_insert_with(|| Arc::new(new_client(&registry, plain_http)))
                .clone()
        };
        Remote {
            client,
            reference: parsed.clone(),
            auth: credentials.to_oci(),
            name: name.to_string(),
        }
    }

    /// Asks the registry what the reference names now, and fetches what is not cached.
    async fn fetch(
        &self,
        parsed: &Reference,
        name: &str,
        credentials: &RegistryCredentials,
    ) -> Result<Artifact, ArtifactError> {
        let remote = self.remote(parsed, name, credentials);
        self.inner
            .counters
            .digest_resolutions
            .fetch_add(1, Ordering::Relaxed);
        let digest = remote.resolve_digest().await?;
        check_digest(&digest).map_err(|e| ArtifactError::invalid(name, e))?;
        if let Some(expected) = parsed.digest()
            && expected != digest
        {
            return Err(ArtifactError::invalid(
                name,
                format!("registry answered digest {digest} for a reference pinned to {expected}"),
            ));
        }
        let cache = &self.inner.cache;
        if let Some(record) = cache.lookup_artifact(&digest).await
            && let Some(artifact) = self.materialize(name, &digest, &record).await?
        {
            tracing::debug!(%digest, "registry digest is cached");
            cache.record(&[name.to_string()], &digest, record).await?;
            return Ok(artifact);
        }
        let record = self.resolve(&Source::Remote(remote), name, &digest).await?;
        self.finish(name, &digest, record).await
    }

    /// Records a resolved artifact under `name` and returns it.
    pub(crate) async fn finish(
        &self,
        name: &str,
        digest: &str,
        record: ArtifactRecord,
    ) -> Result<Artifact, ArtifactError> {
        let cache = &self.inner.cache;
        cache
            .record(&[name.to_string()], digest, record.clone())
            .await?;
        let artifact = self
            .materialize(name, digest, &record)
            .await?
            .ok_or_else(|| ArtifactError::Store {
                path: cache.root().display().to_string(),
                reason: format!("{name}: blobs vanished from the cache right after the pull"),
            })?;
        tracing::info!(digest, kind = ?artifact.kind(), size = artifact.size, "artifact ready");
        Ok(artifact)
    }

    /// From a top-level digest (manifest or index) to a record of what to run, fetching
    /// (or, for [`Source::Local`], requiring) every blob needed.
    pub(crate) async fn resolve(
        &self,
        source: &Source,
        name: &str,
        digest: &str,
    ) -> Result<ArtifactRecord, ArtifactError> {
        let top = self.manifest_bytes(source, name, digest).await?;
        let mut size = top.len() as u64;
        let (manifest_digest, config, layers) = match layout::parse_manifest(&top)
            .map_err(|e| ArtifactError::invalid(name, e))?
        {
            Parsed::Image { config, layers } => (digest.to_string(), config, layers),
            Parsed::Index(entries) => {
                let entry = layout::choose_platform(&entries)
                    .map_err(|e| ArtifactError::invalid(name, e))?;
                check_digest(&entry.digest).map_err(|e| ArtifactError::invalid(name, e))?;
                tracing::debug!(manifest = %entry.digest, "chose image index entry");
                let bytes = self.manifest_bytes(source, name, &entry.digest).await?;
                if i64::try_from(bytes.len()).ok() != Some(entry.size) {
                    return Err(ArtifactError::invalid(
                        name,
                        format!(
                            "manifest {} is {} bytes but the image index says {}",
                            entry.digest,
                            bytes.len(),
                            entry.size
                        ),
                    ));
                }
                size += bytes.len() as u64;
                match layout::parse_manifest(&bytes).map_err(|e| ArtifactError::invalid(name, e))? {
                    Parsed::Image { config, layers } => (entry.digest.clone(), config, layers),
                    Parsed::Index(_) => {
                        return Err(ArtifactError::invalid(
                            name,
                            "image index points at another image index",
                        ));
                    }
                }
            }
        };
        let plan =
            layout::classify(&config, &layers).map_err(|e| ArtifactError::invalid(name, e))?;
        if config.size > MAX_CONFIG_BYTES {
            return Err(ArtifactError::invalid(
                name,
                format!("config blob of {} bytes is too large", config.size),
            ));
        }
        self.ensure_blob(source, name, &config).await?;
        size += config.size;
        let plan_layer = match &plan {
            Plan::InspectTar { layer } => Some(layer.digest.clone()),
            _ => None,
        };
        let wasm = match plan {
            Plan::WasmLayer { layout, layer } => {
                let path = self.ensure_blob(source, name, &layer).await?;
                size += layer.size;
                let flavor = validate_file(name, path).await?;
                Some(WasmRecord {
                    layout,
                    flavor,
                    digest: layer.digest.clone(),
                    size: layer.size,
                    media_type: layer.media_type.clone(),
                })
            }
            Plan::InspectTar { layer } => {
                let path = self.ensure_blob(source, name, &layer).await?;
                size += layer.size;
                match self.wasm_from_tar(name, path, &layer).await? {
                    Some(record) => {
                        size += record.size;
                        Some(record)
                    }
                    None => None,
                }
            }
            Plan::Container => None,
        };
        if wasm.is_none() {
            // A container image: every layer, each verified against its digest (the
            // one inspected above is already counted).
            let inspected = match &plan_layer {
                Some(d) => d.as_str(),
                None => "",
            };
            for layer in &layers {
                self.ensure_blob(source, name, layer).await?;
                if layer.digest != inspected {
                    size += layer.size;
                }
            }
        }
        Ok(ArtifactRecord {
            manifest_digest,
            config,
            layers,
            wasm,
            size,
        })
    }

    /// Takes the lone `.wasm` out of a tar layer into the cache, or `None` if the layer
    /// is a container layer.
    async fn wasm_from_tar(
        &self,
        name: &str,
        layer_path: PathBuf,
        layer: &Descriptor,
    ) -> Result<Option<WasmRecord>, ArtifactError> {
        let cache = &self.inner.cache;
        let tmp = cache.new_tmp_path();
        let scan_tmp = tmp.clone();
        let scanned = tokio::task::spawn_blocking(move || tarlayer::scan(&layer_path, &scan_tmp))
            .await
            .map_err(|e| ArtifactError::store(&tmp, e))?;
        let scanned = match scanned {
            Ok(s) => s,
            Err(reason) => {
                remove_quietly(&tmp).await;
                return Err(ArtifactError::invalid(
                    name,
                    format!("layer {}: {reason}", layer.digest),
                ));
            }
        };
        match scanned {
            TarScan::NotWasm(why) => {
                tracing::info!(layer = %layer.digest, why, "single-layer image is a container image");
                Ok(None)
            }
            TarScan::Wasm {
                tmp,
                digest,
                size,
                name: file,
            } => {
                let flavor = match validate_file(name, tmp.clone()).await {
                    Ok(f) => f,
                    Err(e) => {
                        remove_quietly(&tmp).await;
                        return Err(e);
                    }
                };
                let lock = cache.blob_lock(&digest);
                let _guard = lock.lock().await;
                cache.adopt(&tmp, &digest).await?;
                tracing::debug!(layer = %layer.digest, file, %digest, "took .wasm out of image layer");
                Ok(Some(WasmRecord {
                    layout: WasmLayout::ImageLayer,
                    flavor,
                    digest,
                    size,
                    media_type: layer.media_type.clone(),
                }))
            }
        }
    }

    /// A manifest's bytes, from the cache or the source; always checked against `digest`.
    async fn manifest_bytes(
        &self,
        source: &Source,
        name: &str,
        digest: &str,
    ) -> Result<Vec<u8>, ArtifactError> {
        check_digest(digest).map_err(|e| ArtifactError::invalid(name, e))?;
        let cache = &self.inner.cache;
        if let Some(bytes) = cache.read_blob(digest).await? {
            return Ok(bytes);
        }
        let remote = match source {
            Source::Remote(remote) => remote,
            Source::Local => {
                return Err(ArtifactError::invalid(
                    name,
                    format!("manifest {digest} is missing"),
                ));
            }
        };
        self.inner
            .counters
            .manifest_downloads
            .fetch_add(1, Ordering::Relaxed);
        let bytes = remote.fetch_manifest(digest).await?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ArtifactError::invalid(
                name,
                format!("manifest {digest} is {} bytes, too large", bytes.len()),
            ));
        }
        let actual = format!("sha256:{}", sha256_hex(&bytes));
        if actual != digest {
            return Err(ArtifactError::invalid(
                name,
                format!("digest mismatch: manifest {digest} hashes to {actual}"),
            ));
        }
        cache.put_bytes(&bytes).await?;
        Ok(bytes.to_vec())
    }

    /// The verified blob for `desc`, downloading it if needed (once, however many pulls
    /// want it at the same time).
    pub(crate) async fn ensure_blob(
        &self,
        source: &Source,
        name: &str,
        desc: &Descriptor,
    ) -> Result<PathBuf, ArtifactError> {
        check_digest(&desc.digest).map_err(|e| ArtifactError::invalid(name, e))?;
        let cache = &self.inner.cache;
        let lock = cache.blob_lock(&desc.digest);
        let _guard = lock.lock().await;
        if cache.verify_blob(&desc.digest, Some(desc.size)).await? {
            return Ok(cache.blob_path(&desc.digest));
        }
        let remote = match source {
            Source::Remote(remote) => remote,
            Source::Local => {
                return Err(ArtifactError::invalid(
                    name,
                    format!(
                        "blob {} ({}) is missing or does not match its digest",
                        desc.digest, desc.media_type
                    ),
                ));
            }
        };
        let mut writer = cache.begin_blob().await?;
        let tmp = writer.path().to_path_buf();
        let downloaded = async {
            let mut stream = remote.blob_stream(desc).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| map_stream_error(name, desc, e))?;
                if writer.written() + chunk.len() as u64 > desc.size {
                    return Err(ArtifactError::invalid(
                        name,
                        format!(
                            "blob {} is larger than the {} bytes its descriptor says",
                            desc.digest, desc.size
                        ),
                    ));
                }
                writer
                    .write(&chunk)
                    .await
                    .map_err(|e| ArtifactError::store(&tmp, e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = downloaded {
            drop(writer);
            remove_quietly(&tmp).await;
            return Err(e);
        }
        let bytes = writer.written();
        let path = cache.commit_blob(writer, desc, name).await?;
        let counters = &self.inner.counters;
        counters.blob_downloads.fetch_add(1, Ordering::Relaxed);
        counters.blob_bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::debug!(digest = %desc.digest, media_type = %desc.media_type, bytes, "blob downloaded");
        Ok(path)
    }
}

/// Reads a cached file and checks it is WebAssembly; returns its flavor.
pub(crate) async fn validate_file(name: &str, path: PathBuf) -> Result<WasmFlavor, ArtifactError> {
    let shown = path.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| Err(e.to_string()))?;
        wasm::inspect(&bytes).map(|info| info.flavor).map_err(Ok)
    })
    .await
    .map_err(|e| ArtifactError::store(&shown, e))?;
    match checked {
        Ok(flavor) => Ok(flavor),
        Err(Ok(reason)) => Err(ArtifactError::invalid(name, reason)),
        Err(Err(io)) => Err(ArtifactError::store(&shown, io)),
    }
}
