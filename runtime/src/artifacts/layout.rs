//! Media types, the manifest shapes we read, image-index platform choice, and the rules
//! that classify a manifest as one of the Wasm layouts or a container image.

use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Config of a CNCF Wasm OCI artifact.
pub const CNCF_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer of a CNCF Wasm OCI artifact.
pub const CNCF_WASM_LAYER: &str = "application/wasm";
/// Config of the legacy wasm-to-oci layout.
pub const WASM_TO_OCI_CONFIG: &str = "application/vnd.wasm.config.v1+json";
/// Wasm layer of the legacy wasm-to-oci layout, also used by Spin for its components.
pub const WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Config of a Spin application.
pub const SPIN_CONFIG: &str = "application/vnd.fermyon.spin.application.v1+config";

/// The manifest media types we ask registries for.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

const TAR_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How a Wasm artifact was laid out in its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WasmLayout {
    /// CNCF Wasm OCI artifact (`application/vnd.wasm.config.v0+json`, `application/wasm`).
    Cncf,
    /// A Spin application with one component.
    Spin,
    /// The legacy wasm-to-oci layout (`application/vnd.wasm.config.v1+json`).
    WasmToOci,
    /// Some other manifest whose single layer has a Wasm media type.
    WasmLayer,
    /// An ordinary OCI/Docker image whose single tar layer holds one `.wasm` file.
    ImageLayer,
}

/// A content descriptor (media type, digest, size) as in OCI manifests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// The fields of an image manifest or image index that we read. Unknown fields are
/// ignored; an index has `manifests`, an image manifest `config` and `layers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDoc {
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<RawDescriptor>,
    #[serde(default)]
    pub layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDescriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    // Sizes are int64 in the spec; a negative one is rejected when converting.
    pub size: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// A parsed manifest: either an index to choose from or an image manifest.
pub(crate) enum Parsed {
    Index(Vec<IndexEntry>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses manifest bytes; errors are reasons for `InvalidArtifact`.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Parsed, String> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if let Some(v) = doc.schema_version
        && v != 2
    {
        return Err(format!("unsupported manifest schemaVersion {v}"));
    }
    let media_type = doc.media_type.as_deref().unwrap_or("");
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_MANIFEST_LIST
        || (media_type.is_empty() && doc.manifests.is_some());
    if is_index {
        return Ok(Parsed::Index(doc.manifests.unwrap_or_default()));
    }
    if !media_type.is_empty() && media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(format!("unknown manifest media type {media_type:?}"));
    }
    let config = doc
        .config
        .ok_or("manifest has no config descriptor")?
        .into_descriptor()?;
    let layers = doc
        .layers
        .unwrap_or_default()
        .into_iter()
        .map(RawDescriptor::into_descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed::Image { config, layers })
}

impl RawDescriptor {
    fn into_descriptor(self) -> Result<Descriptor, String> {
        check_digest(&self.digest)?;
        let size = u64::try_from(self.size)
            .map_err(|_| format!("descriptor {} has negative size {}", self.digest, self.size))?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest: self.digest,
            size,
        })
    }
}

/// Accepts only `sha256:` followed by 64 lowercase hex digits. Digests become file
/// names in the cache, so nothing else may pass.
pub(crate) fn check_digest(digest: &str) -> Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("unsupported digest {digest:?} (only sha256 is supported)"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("malformed digest {digest:?}"));
    }
    Ok(hex)
}

/// The GOARCH spelling of the node's architecture, as image platforms use it.
pub(crate) fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Chooses the manifest of an image index to run: a Wasm entry (`os` wasi/wasip1/wasip2
/// or `architecture` wasm) first, then `linux/<node architecture>`, then the only entry
/// that is not an attestation. Returns the entry or a reason listing what was offered.
pub(crate) fn choose_platform(entries: &[IndexEntry]) -> Result<&IndexEntry, String> {
    let is_wasm = |e: &&IndexEntry| {
        e.platform.as_ref().is_some_and(|p| {
            matches!(p.os.as_str(), "wasi" | "wasip1" | "wasip2") || p.architecture == "wasm"
        })
    };
    if let Some(entry) = entries.iter().find(is_wasm) {
        return Ok(entry);
    }
    let arch = node_arch();
    if let Some(entry) = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    }) {
        return Ok(entry);
    }
    // Build tools add attestation manifests as `unknown/unknown` entries.
    let runnable: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| {
            let attestation = e
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
            let unknown = e
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
            !attestation && !unknown
        })
        .collect();
    if let [only] = runnable.as_slice() {
        return Ok(only);
    }
    let offered: Vec<String> = entries
        .iter()
        .map(|e| match &e.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "(no platform)".to_string(),
        })
        .collect();
    Err(format!(
        "image index has no wasi/wasm or linux/{arch} entry (offered: {})",
        if offered.is_empty() {
            "nothing".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

/// What to do with an image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Download this layer: it is the Wasm binary.
    WasmLayer {
        layout: WasmLayout,
        layer: Descriptor,
    },
    /// Download this tar layer and look inside for a single `.wasm` file.
    InspectTar { layer: Descriptor },
    /// A container image: report its layers.
    Container,
}

fn is_wasm_layer(media_type: &str) -> bool {
    media_type == CNCF_WASM_LAYER || media_type == WASM_CONTENT_LAYER
}

fn is_tar_layer(media_type: &str) -> bool {
    TAR_LAYERS.contains(&media_type)
}

/// Classifies an image manifest by its config and layer media types.
pub(crate) fn classify(config: &Descriptor, layers: &[Descriptor]) -> Result<Plan, String> {
    let wasm_layers: Vec<&Descriptor> = layers
        .iter()
        .filter(|l| is_wasm_layer(&l.media_type))
        .collect();
    let one_wasm_layer = |layout: WasmLayout, what: &str| -> Result<Plan, String> {
        match wasm_layers.as_slice() {
            [layer] => Ok(Plan::WasmLayer {
                layout,
                layer: (*layer).clone(),
            }),
            [] => Err(format!(
                "{what} has no Wasm layer (layers: {})",
                media_types(layers)
            )),
            many => Err(format!(
                "{what} has {} Wasm layers; Skiff runs one Wasm binary per container",
                many.len()
            )),
        }
    };
    match config.media_type.as_str() {
        CNCF_WASM_CONFIG => {
            if let Some(other) = layers.iter().find(|l| l.media_type != CNCF_WASM_LAYER) {
                return Err(format!(
                    "CNCF Wasm artifact has a layer of unknown media type {:?}",
                    other.media_type
                ));
            }
            one_wasm_layer(WasmLayout::Cncf, "CNCF Wasm artifact")
        }
        SPIN_CONFIG => match wasm_layers.len() {
            0 | 1 => one_wasm_layer(WasmLayout::Spin, "Spin application"),
            n => Err(format!(
                "Spin application with {n} components is not supported: Skiff runs one \
                 component per container (run each component as its own container, or \
                 compose them into one component)"
            )),
        },
        WASM_TO_OCI_CONFIG => one_wasm_layer(WasmLayout::WasmToOci, "wasm-to-oci artifact"),
        config_type => {
            if layers.is_empty() {
                return Err(format!(
                    "manifest has no layers (config media type {config_type:?})"
                ));
            }
            if !wasm_layers.is_empty() {
                return one_wasm_layer(WasmLayout::WasmLayer, "artifact");
            }
            if let Some(other) = layers.iter().find(|l| !is_tar_layer(&l.media_type)) {
                return Err(format!(
                    "unknown layer media type {:?} (config media type {config_type:?})",
                    other.media_type
                ));
            }
            if !IMAGE_CONFIGS.contains(&config_type) {
                return Err(format!("unknown config media type {config_type:?}"));
            }
            match layers {
                [layer] => Ok(Plan::InspectTar {
                    layer: layer.clone(),
                }),
                _ => Ok(Plan::Container),
            }
        }
    }
}

fn media_types(layers: &[Descriptor]) -> String {
    if layers.is_empty() {
        return "none".to_string();
    }
    layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
        }
    }

    #[test]
    fn classifies_layouts() {
        let wasm = desc(CNCF_WASM_LAYER, 1);
        let content = desc(WASM_CONTENT_LAYER, 2);
        let data = desc("application/vnd.wasm.content.layer.v1+data", 3);
        let tar = desc("application/vnd.oci.image.layer.v1.tar+gzip", 4);
        let oci_config = desc("application/vnd.oci.image.config.v1+json", 9);
        let table: Vec<(Descriptor, Vec<Descriptor>, Result<Plan, &str>)> = vec![
            (
                desc(CNCF_WASM_CONFIG, 9),
                vec![wasm.clone()],
                Ok(Plan::WasmLayer {
                    layout: WasmLayout::Cncf,
                    layer: wasm.clone(),
                }),
            ),
            (
                desc(CNCF_WASM_CONFIG, 9),
                vec![tar.clone()],
                Err("unknown media type"),
            ),
            (
                desc(SPIN_CONFIG, 9),
                vec![content.clone(), data.clone()],
                Ok(Plan::WasmLayer {
                    layout: WasmLayout::Spin,
                    layer: content.clone(),
                }),
            ),
            (
                desc(SPIN_CONFIG, 9),
                vec![content.clone(), desc(WASM_CONTENT_LAYER, 5)],
                Err("2 components is not supported"),
            ),
            (
                desc(WASM_TO_OCI_CONFIG, 9),
                vec![content.clone()],
                Ok(Plan::WasmLayer {
                    layout: WasmLayout::WasmToOci,
                    layer: content.clone(),
                }),
            ),
            (
                oci_config.clone(),
                vec![tar.clone()],
                Ok(Plan::InspectTar { layer: tar.clone() }),
            ),
            (
                oci_config.clone(),
                vec![
                    tar.clone(),
                    desc("application/vnd.oci.image.layer.v1.tar", 6),
                ],
                Ok(Plan::Container),
            ),
            (
                oci_config.clone(),
                vec![desc("application/x-mystery", 7)],
                Err("unknown layer media type"),
            ),
            (
                desc("application/x-mystery-config", 9),
                vec![tar.clone()],
                Err("unknown config media type"),
            ),
            (oci_config.clone(), vec![], Err("no layers")),
        ];
        for (config, layers, want) in table {
            let got = classify(&config, &layers);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got} vs {want}"),
                (got, want) => panic!("{got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn chooses_platforms() {
        let entry = |os: &str, arch: &str, n: u8| IndexEntry {
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.to_string(),
                os: os.to_string(),
            }),
            annotations: None,
        };
        let arch = node_arch();
        let entries = vec![
            entry("linux", arch, 1),
            entry("wasip1", "wasm", 2),
            entry("linux", "s390x-not", 3),
        ];
        assert_eq!(choose_platform(&entries).unwrap().digest, entries[1].digest);
        let entries = vec![entry("linux", "mips", 3), entry("linux", arch, 1)];
        assert_eq!(choose_platform(&entries).unwrap().digest, entries[1].digest);
        let entries = vec![entry("plan9", "mips", 3), entry("unknown", "unknown", 4)];
        assert_eq!(choose_platform(&entries).unwrap().digest, entries[0].digest);
        let entries = vec![entry("plan9", "mips", 3), entry("windows", "mips", 4)];
        let err = choose_platform(&entries).unwrap_err();
        assert!(err.contains("plan9/mips, windows/mips"), "{err}");
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(check_digest("sha256:../../etc/passwd").is_err());
        assert!(check_digest(&format!("sha512:{}", "a".repeat(128))).is_err());
    }
}
