//! Publishing a `.wasm` file as a CNCF Wasm OCI artifact.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use oci_client::RegistryOperation;
use serde_json::json;
use tracing::Instrument as _;

use super::RegistryCredentials;
use super::cache::sha256_hex;
use super::error::ArtifactError;
use super::layout::{CNCF_WASM_CONFIG, CNCF_WASM_LAYER, Descriptor, OCI_MANIFEST};
use super::policy::{parse_reference, uses_plain_http};
use super::registry::{map_error, new_client};
use super::wasm::{self, WasmInfo};

/// Upload chunk size, and so the granularity of progress reports.
const CHUNK: usize = 256 * 1024;

/// How to reach the registry for [`push`].
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Plain HTTP even though the registry is not on loopback (`skiff push --insecure`).
    pub insecure: bool,
    /// Credentials, for example from [`super::DockerConfig::credentials_for`].
    pub credentials: RegistryCredentials,
}

/// Upload progress of the `.wasm` layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushProgress {
    /// Bytes handed to the connection so far.
    pub sent: u64,
    /// Bytes of the layer in total.
    pub total: u64,
}

/// What [`push`] published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The normalized reference pushed to.
    pub reference: String,
    /// Digest of the manifest: pull `repository@digest` to get exactly this.
    pub digest: String,
    /// Digest of the `.wasm` layer.
    pub wasm_digest: String,
    /// Size of the `.wasm` in bytes.
    pub size: u64,
    /// Module (os `wasip1`) or component (os `wasip2`).
    pub flavor: wasm::WasmFlavor,
    /// Whether the registry already had the layer (nothing was uploaded for it).
    pub layer_existed: bool,
}

/// The CNCF Wasm config document. `created` is left out for imports so that importing
/// the same file twice yields the same digest.
pub(crate) fn cncf_config(info: &WasmInfo, layer_digest: &str, created: Option<String>) -> Vec<u8> {
    let mut config = json!({
        "architecture": "wasm",
        "os": info.flavor.wasi_os(),
        "layerDigests": [layer_digest],
    });
    if let Some(created) = created {
        config["created"] = json!(created);
    }
    if info.flavor == wasm::WasmFlavor::Component {
        config["component"] = json!({
            "imports": info.imports,
            "exports": info.exports,
        });
    }
    // Serializing a `Value` built here cannot fail.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The OCI image manifest of a CNCF Wasm artifact.
pub(crate) fn cncf_manifest(config: &Descriptor, layer: &Descriptor) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": config.media_type,
            "digest": config.digest,
            "size": config.size,
        },
        "layers": [{
            "mediaType": layer.media_type,
            "digest": layer.digest,
            "size": layer.size,
        }],
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// Publishes `file` (a Wasm module or component) at `reference` as a CNCF Wasm OCI
/// artifact: config `application/vnd.wasm.config.v0+json` with `created`,
/// `architecture: "wasm"`, `os: "wasip1"` (module) or `"wasip2"` (component), and one
/// `application/wasm` layer.
///
/// `progress` is called as the layer is uploaded, with bytes sent and the total, and
/// once more with `sent == total` at the end; a terminal progress bar can be driven
/// from it. Loopback registries are spoken to over plain HTTP; others over TLS unless
/// `options.insecure`.
pub async fn push(
    file: impl AsRef<Path>,
    reference: &str,
    options: &PushOptions,
    progress: impl Fn(PushProgress) + Send + Sync + 'static,
) -> Result<PushOutcome, ArtifactError> {
    let file = file.as_ref();
    let parsed = parse_reference(reference)?;
    let name = parsed.whole();
    let raw = tokio::fs::read(file)
        .await
        .map_err(|e| ArtifactError::input(file, format!("cannot read: {e}")))?;
    let raw = Bytes::from(raw);
    let inspected = raw.clone();
    let info = tokio::task::spawn_blocking(move || wasm::inspect(&inspected))
        .await
        .map_err(|e| ArtifactError::input(file, e))?
        .map_err(|reason| ArtifactError::invalid(file.display().to_string(), reason))?;

    let layer = Descriptor {
        media_type: CNCF_WASM_LAYER.to_string(),
        digest: format!("sha256:{}", sha256_hex(&raw)),
        size: raw.len() as u64,
    };
    let config_bytes = cncf_config(
        &info,
        &layer.digest,
        Some(jiff::Timestamp::now().to_string()),
    );
    let config = Descriptor {
        media_type: CNCF_WASM_CONFIG.to_string(),
        digest: format!("sha256:{}", sha256_hex(&config_bytes)),
        size: config_bytes.len() as u64,
    };
    let manifest = cncf_manifest(&config, &layer);
    let digest = format!("sha256:{}", sha256_hex(&manifest));

    let raw_len = raw.len() as u64;
    let registry = parsed.resolve_registry().to_string();
    let plain_http = options.insecure || uses_plain_http(&registry, &[]);
    let client = new_client(&registry, plain_http);
    let auth = options.credentials.to_oci();
    let span = tracing::info_span!("push", reference = %name, size = layer.size);
    let layer_existed = async {
        upload(
            &client,
            &auth,
            &parsed,
            &name,
            raw,
            &layer,
            config_bytes,
            &config,
            manifest,
            progress,
        )
        .await
    }
    .instrument(span)
    .await?;
    tracing::info!(reference = %name, %digest, wasm_digest = %layer.digest, layer_existed,
        "pushed Wasm artifact");
    Ok(PushOutcome {
        reference: name,
        digest,
        wasm_digest: layer.digest,
        size: raw_len,
        flavor: info.flavor,
        layer_existed,
    })
}

/// The network part of [`push`]: layer, config, manifest. Returns whether the layer
/// was already there.
#[allow(clippy::too_many_arguments)]
async fn upload(
    client: &oci_client::Client,
    auth: &oci_client::secrets::RegistryAuth,
    parsed: &oci_client::Reference,
    name: &str,
    raw: Bytes,
    layer: &Descriptor,
    config_bytes: Vec<u8>,
    config: &Descriptor,
    manifest: Vec<u8>,
    progress: impl Fn(PushProgress) + Send + Sync + 'static,
) -> Result<bool, ArtifactError> {
    let map = |e| map_error(name, e);
    client
        .auth(parsed, auth, RegistryOperation::Push)
        .await
        .map_err(map)?;

    let total = layer.size;
    let layer_existed = client
        .blob_exists(parsed, &layer.digest)
        .await
        .map_err(map)?;
    if !layer_existed {
        let sent = Arc::new(AtomicU64::new(0));
        let report = Arc::new(progress);
        let chunks: Vec<Bytes> = (0..raw.len())
            .step_by(CHUNK)
            .map(|start| raw.slice(start..(start + CHUNK).min(raw.len())))
            .collect();
        let stream_report = report.clone();
        let stream_sent = sent.clone();
        let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
            let now =
                stream_sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            stream_report(PushProgress { sent: now, total });
            Ok(chunk)
        }));
        if total > 0 {
            client
                .push_blob_stream(parsed, stream, &layer.digest, Some(total))
                .await
                .map_err(map)?;
        } else {
            client
                .push_blob(parsed, Bytes::new(), &layer.digest)
                .await
                .map_err(map)?;
        }
        report(PushProgress { sent: total, total });
    } else {
        progress(PushProgress { sent: total, total });
    }
    if !client
        .blob_exists(parsed, &config.digest)
        .await
        .map_err(map)?
    {
        client
            .push_blob(parsed, config_bytes, &config.digest)
            .await
            .map_err(map)?;
    }
    let content_type = http::HeaderValue::from_static(OCI_MANIFEST);
    client
        .push_manifest_raw(parsed, manifest, content_type)
        .await
        .map_err(map)?;
    Ok(layer_existed)
}
