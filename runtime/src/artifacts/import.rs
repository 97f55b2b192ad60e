//! Loading artifacts from files, for nodes without a registry.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::cache::remove_quietly;
use super::error::ArtifactError;
use super::layout::{CNCF_WASM_CONFIG, CNCF_WASM_LAYER, Descriptor, check_digest};
use super::policy::parse_reference;
use super::pull::Source;
use super::push::{cncf_config, cncf_manifest};
use super::tarlayer::copy_hashed;
use super::{Artifact, ArtifactStore, wasm};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_INDEX_BYTES: u64 = 4 << 20;

#[derive(Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
struct LayoutEntry {
    digest: String,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// What reading an archive produced: verified blobs in temp files, and `index.json`.
struct Unpacked {
    blobs: Vec<(PathBuf, String)>,
    index: Option<Vec<u8>>,
}

impl ArtifactStore {
    /// Imports `file` into the cache under `reference`, so that pods naming that reference
    /// with `imagePullPolicy: IfNotPresent` or `Never` find it. `file` is either a `.wasm`
    /// (stored as a CNCF Wasm artifact) or an OCI image-layout archive (a tar of an OCI
    /// layout directory, optionally gzip-compressed, as `skopeo copy ... oci-archive:x.tar`
    /// writes); the kind is told from the content.
    pub async fn import(
        &self,
        file: impl AsRef<Path>,
        reference: &str,
    ) -> Result<Artifact, ArtifactError> {
        let file = file.as_ref();
        let mut head = [0u8; 4];
        let n = {
            let mut f = tokio::fs::File::open(file)
                .await
                .map_err(|e| ArtifactError::input(file, format!("cannot open: {e}")))?;
            f.read(&mut head)
                .await
                .map_err(|e| ArtifactError::input(file, format!("cannot read: {e}")))?
        };
        if &head[..n] == b"\0asm" {
            self.import_wasm(file, reference).await
        } else {
            self.import_oci_archive(file, reference).await
        }
    }

    /// Imports a `.wasm` file as a CNCF Wasm artifact named `reference`.
    pub async fn import_wasm(
        &self,
        file: impl AsRef<Path>,
        reference: &str,
    ) -> Result<Artifact, ArtifactError> {
        let file = file.as_ref();
        let name = parse_reference(reference)?.whole();
        let raw = tokio::fs::read(file)
            .await
            .map_err(|e| ArtifactError::input(file, format!("cannot read: {e}")))?;
        let (raw, info) = tokio::task::spawn_blocking(move || {
            let info = wasm::inspect(&raw);
            (raw, info)
        })
        .await
        .map_err(|e| ArtifactError::input(file, e))?;
        let info =
            info.map_err(|reason| ArtifactError::invalid(file.display().to_string(), reason))?;
        let cache = &self.inner.cache;
        let layer_digest = cache.put_bytes(&raw).await?;
        let layer = Descriptor {
            media_type: CNCF_WASM_LAYER.to_string(),
            digest: layer_digest,
            size: raw.len() as u64,
        };
        let config_bytes = cncf_config(&info, &layer.digest, None);
        let config = Descriptor {
            media_type: CNCF_WASM_CONFIG.to_string(),
            digest: cache.put_bytes(&config_bytes).await?,
            size: config_bytes.len() as u64,
        };
        let manifest = cncf_manifest(&config, &layer);
        let digest = cache.put_bytes(&manifest).await?;
        let record = self.resolve(&Source::Local, &name, &digest).await?;
        tracing::info!(reference = %name, file = %file.display(), %digest, "imported .wasm");
        self.finish(&name, &digest, record).await
    }

    /// Imports the image of an OCI image-layout archive under `reference`. If the
    /// archive holds several images, the one whose `org.opencontainers.image.ref.name`
    /// matches `reference` (or its tag) is taken. Every blob is checked against its
    /// digest; an image index inside is resolved like a pulled one.
    pub async fn import_oci_archive(
        &self,
        archive: impl AsRef<Path>,
        reference: &str,
    ) -> Result<Artifact, ArtifactError> {
        let archive = archive.as_ref();
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        let cache = &self.inner.cache;
        let tmp_dir = cache.root().join("tmp");
        let src = archive.to_path_buf();
        let unpacked = tokio::task::spawn_blocking(move || unpack(&src, &tmp_dir))
            .await
            .map_err(|e| ArtifactError::input(archive, e))?
            .map_err(|reason| ArtifactError::input(archive, reason))?;
        let Unpacked { blobs, index } = unpacked;
        let mut adopt_failed = None;
        for (tmp, digest) in &blobs {
            if adopt_failed.is_some() {
                remove_quietly(tmp).await;
                continue;
            }
            let lock = cache.blob_lock(digest);
            let _guard = lock.lock().await;
            if let Err(e) = cache.adopt(tmp, digest).await {
                adopt_failed = Some(e);
            }
        }
        if let Some(e) = adopt_failed {
            return Err(e);
        }
        let index = index.ok_or_else(|| {
            ArtifactError::input(archive, "not an OCI image-layout archive: no index.json")
        })?;
        let index: LayoutIndex = serde_json::from_slice(&index)
            .map_err(|e| ArtifactError::input(archive, format!("index.json: {e}")))?;
        let entry = pick_entry(&index.manifests, reference, parsed.tag())
            .map_err(|reason| ArtifactError::input(archive, reason))?;
        check_digest(&entry.digest).map_err(|e| ArtifactError::input(archive, e))?;
        let digest = entry.digest.clone();
        let record = self.resolve(&Source::Local, &name, &digest).await?;
        tracing::info!(reference = %name, archive = %archive.display(), %digest,
            blobs = blobs.len(), "imported OCI archive");
        self.finish(&name, &digest, record).await
    }
}

fn pick_entry<'a>(
    entries: &'a [LayoutEntry],
    reference: &str,
    tag: Option<&str>,
) -> Result<&'a LayoutEntry, String> {
    let ref_name = |e: &LayoutEntry| {
        e.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let named: Vec<&LayoutEntry> = entries
        .iter()
        .filter(|e| ref_name(e).is_some_and(|n| n == reference || Some(n.as_str()) == tag))
        .collect();
    match (named.as_slice(), entries) {
        ([one], _) => Ok(one),
        ([], [only]) => Ok(only),
        ([], []) => Err("index.json lists no image".to_string()),
        _ => {
            let names: Vec<String> = entries
                .iter()
                .map(|e| ref_name(e).unwrap_or_else(|| e.digest.clone()))
                .collect();
            Err(format!(
                "archive holds several images ({}); none is named uniquely by {reference:?}",
                names.join(", ")
            ))
        }
    }
}

/// Reads the archive once: each `blobs/sha256/<hex>` is copied to a temp file in
/// `tmp_dir` and checked against its name; `index.json` is kept. Other entries are
/// ignored, so nothing in the archive can choose where we write.
fn unpack(archive: &Path, tmp_dir: &Path) -> Result<Unpacked, String> {
    let mut blobs: Vec<(PathBuf, String)> = Vec::new();
    let result = unpack_into(archive, tmp_dir, &mut blobs);
    match result {
        Ok(index) => Ok(Unpacked { blobs, index }),
        Err(e) => {
            for (tmp, _) in &blobs {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e)
        }
    }
}

fn unpack_into(
    archive: &Path,
    tmp_dir: &Path,
    blobs: &mut Vec<(PathBuf, String)>,
) -> Result<Option<Vec<u8>>, String> {
    let mut magic = [0u8; 2];
    let mut probe = std::fs::File::open(archive).map_err(|e| format!("cannot open: {e}"))?;
    let n = probe
        .read(&mut magic)
        .map_err(|e| format!("cannot read: {e}"))?;
    let file = std::fs::File::open(archive).map_err(|e| format!("cannot open: {e}"))?;
    let reader: Box<dyn Read> = if magic[..n] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let mut index = None;
    let mut seq = 0u32;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a readable tar archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            if entry.header().size().unwrap_or(u64::MAX) > MAX_INDEX_BYTES {
                return Err("index.json is too large".to_string());
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("index.json: {e}"))?;
            index = Some(bytes);
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            check_digest(&digest).map_err(|e| format!("{path}: {e}"))?;
            seq += 1;
            let tmp = tmp_dir.join(format!("import-{}-{seq}.part", std::process::id()));
            blobs.push((tmp.clone(), digest.clone()));
            let (actual, _) = copy_hashed(&mut entry, &tmp).map_err(|e| format!("{path}: {e}"))?;
            if actual != digest {
                return Err(format!("{path}: content hashes to {actual}"));
            }
        }
    }
    Ok(index)
}
