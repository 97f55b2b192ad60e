//! Talking to a registry through oci-client, and turning its errors into ours.

use std::sync::{Arc, Once};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::{ArtifactError, chain};
use super::layout::{ACCEPTED_MANIFESTS, Descriptor};

static CRYPTO: Once = Once::new();

/// oci-client is built without a bundled rustls provider (see the workspace manifest):
/// give rustls the ring provider, unless the process already chose one.
fn ensure_crypto_provider() {
    CRYPTO.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: some provider is set.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// A client for one registry, over HTTP or HTTPS.
pub(crate) fn new_client(registry: &str, plain_http: bool) -> Client {
    ensure_crypto_provider();
    let protocol = if plain_http {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        // We choose index entries ourselves (see layout::choose_platform).
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

/// One reference on one registry, with the credentials to use.
#[derive(Clone)]
pub(crate) struct Remote {
    pub client: Arc<Client>,
    pub reference: Reference,
    pub auth: RegistryAuth,
    /// The reference as the user gave it, for messages.
    pub name: String,
}

impl Remote {
    /// The digest the reference currently names (a HEAD request, falling back to GET).
    pub async fn resolve_digest(&self) -> Result<String, ArtifactError> {
        self.client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| map_error(&self.name, e))
    }

    /// The raw bytes of a manifest by digest (oci-client checks them against it; the
    /// caller hashes them again before storing).
    pub async fn fetch_manifest(&self, digest: &str) -> Result<bytes::Bytes, ArtifactError> {
        let by_digest = self.reference.clone_with_digest(digest.to_string());
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&by_digest, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| map_error(&self.name, e))?;
        Ok(bytes)
    }

    /// A stream of a blob's bytes.
    pub async fn blob_stream(
        &self,
        desc: &Descriptor,
    ) -> Result<oci_client::client::SizedStream, ArtifactError> {
        // No `urls`: we never follow foreign-layer URLs to hosts other than the registry.
        let oci_desc = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        self.client
            .pull_blob_stream(&self.reference, &oci_desc)
            .await
            .map_err(|e| map_error(&self.name, e))
    }
}

/// Classifies an oci-client error, keeping the registry's own words.
pub(crate) fn map_error(reference: &str, err: OciDistributionError) -> ArtifactError {
    let reference = reference.to_string();
    match err {
        OciDistributionError::RegistryError { envelope, url } => {
            let reason = envelope
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{:?}", e.code));
                    if e.message.is_empty() {
                        code
                    } else {
                        format!("{code}: {}", e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let reason = format!("{reason} ({url})");
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ArtifactError::NotFound { reference, reason }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ArtifactError::Unauthorized { reference, reason }
            } else {
                ArtifactError::Registry { reference, reason }
            }
        }
        OciDistributionError::ServerError { code, url, message } => {
            let reason = format!("HTTP {code}: {} ({url})", message.trim());
            match code {
                404 => ArtifactError::NotFound { reference, reason },
                401 | 403 => ArtifactError::Unauthorized { reference, reason },
                _ => ArtifactError::Registry { reference, reason },
            }
        }
        OciDistributionError::UnauthorizedError { url } => ArtifactError::Unauthorized {
            reference,
            reason: format!(
                "the registry answered 401 Unauthorized for {url}: credentials are missing \
                 or were rejected"
            ),
        },
        OciDistributionError::AuthenticationFailure(reason) => ArtifactError::Unauthorized {
            reference,
            reason: format!("token request failed: {}", reason.trim()),
        },
        OciDistributionError::ImageManifestNotFoundError(reason) => {
            ArtifactError::NotFound { reference, reason }
        }
        OciDistributionError::DigestError(e) => ArtifactError::InvalidArtifact {
            reference,
            reason: format!("digest mismatch: {e}"),
        },
        OciDistributionError::UnsupportedMediaTypeError(mt) => ArtifactError::InvalidArtifact {
            reference,
            reason: format!("unknown manifest media type {mt:?}"),
        },
        OciDistributionError::ManifestParsingError(e)
        | OciDistributionError::VersionedParsingError(e) => ArtifactError::InvalidArtifact {
            reference,
            reason: format!("manifest does not parse: {e}"),
        },
        OciDistributionError::UnsupportedSchemaVersionError(v) => ArtifactError::InvalidArtifact {
            reference,
            reason: format!("unsupported manifest schemaVersion {v}"),
        },
        OciDistributionError::RequestError(e) => {
            let reason = chain(&e);
            match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => ArtifactError::Unauthorized { reference, reason },
                Some(404) => ArtifactError::NotFound { reference, reason },
                _ => ArtifactError::Registry { reference, reason },
            }
        }
        other => ArtifactError::Registry {
            reference,
            reason: chain(&other),
        },
    }
}

/// Classifies an I/O error raised while streaming a blob (oci-client reports its own
/// digest check through this channel).
pub(crate) fn map_stream_error(
    reference: &str,
    desc: &Descriptor,
    err: std::io::Error,
) -> ArtifactError {
    if let Some(inner) = err.get_ref()
        && inner.is::<oci_client::errors::DigestError>()
    {
        return ArtifactError::invalid(
            reference,
            format!(
                "digest mismatch for blob {} ({}): {inner}",
                desc.digest, desc.media_type
            ),
        );
    }
    ArtifactError::Registry {
        reference: reference.to_string(),
        reason: format!(
            "download of blob {} interrupted: {}",
            desc.digest,
            chain(&err)
        ),
    }
}
