//! The artifact store's error, classified the way a Pod's container status needs it.

use std::fmt;

/// The Kubernetes waiting reason an [`ArtifactError`] maps to.
///
/// The agent puts [`PullFailureReason::as_str`] into
/// `status.containerStatuses[].state.waiting.reason` and the error's `Display` into
/// `message`. After repeated [`PullFailureReason::ErrImagePull`] failures it is the
/// agent's job to report `ImagePullBackOff` while it waits to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullFailureReason {
    /// The registry could not be reached, refused the credentials, or does not have the
    /// artifact. Worth retrying with back-off.
    ErrImagePull,
    /// The artifact was fetched but cannot be used: a digest mismatch, an unknown media
    /// type, or bytes that are not WebAssembly. Retrying the same digest will not help.
    InvalidArtifact,
    /// `imagePullPolicy: Never` and the artifact is not in the node's cache.
    ErrImageNeverPull,
    /// The image reference itself does not parse.
    InvalidImageName,
}

impl PullFailureReason {
    /// The reason string Kubernetes clients expect (`ErrImagePull`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PullFailureReason::ErrImagePull => "ErrImagePull",
            PullFailureReason::InvalidArtifact => "InvalidArtifact",
            PullFailureReason::ErrImageNeverPull => "ErrImageNeverPull",
            PullFailureReason::InvalidImageName => "InvalidImageName",
        }
    }
}

impl fmt::Display for PullFailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the artifact store, with the registry's own words in
/// the message where there is a registry involved.
///
/// The type is `Clone` because one pull's result is shared by every pod that waited for
/// it (single-flight); causes are therefore kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// The reference does not parse as `[registry/]repository[:tag][@digest]`.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The registry says the manifest, repository or blob does not exist.
    #[error("{reference}: not found: {reason}")]
    NotFound {
        /// The reference being pulled.
        reference: String,
        /// The registry's answer.
        reason: String,
    },
    /// The registry refused the request: credentials missing, wrong, or not allowed.
    #[error("{reference}: unauthorized: {reason}")]
    Unauthorized {
        /// The reference being pulled.
        reference: String,
        /// The registry's answer.
        reason: String,
    },
    /// Any other registry or network failure (connection refused, TLS, 5xx, timeouts).
    #[error("{reference}: registry error: {reason}")]
    Registry {
        /// The reference being pulled or pushed.
        reference: String,
        /// What failed, with the registry's answer when there was one.
        reason: String,
    },
    /// The artifact's content cannot be used: digest mismatch, unknown media type,
    /// unsupported layout, not WebAssembly.
    #[error("{reference}: invalid artifact: {reason}")]
    InvalidArtifact {
        /// The reference (or file) whose content is bad.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `imagePullPolicy: Never` and the artifact is not cached on this node.
    #[error("{reference}: not present on this node and the pull policy is Never{detail}")]
    NeverPull {
        /// The reference asked for.
        reference: String,
        /// Extra context (empty, or starting with "; ").
        detail: String,
    },
    /// The node's own disk failed us (cache directory, temp files, index).
    #[error("artifact store at {path}: {reason}")]
    Store {
        /// The file or directory involved.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A local input file (for `push` or `import`) cannot be read or is not what it
    /// should be.
    #[error("{path}: {reason}")]
    Input {
        /// The file given by the caller.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl ArtifactError {
    /// The Kubernetes waiting reason for this error.
    pub fn reason(&self) -> PullFailureReason {
        match self {
            ArtifactError::InvalidReference { .. } => PullFailureReason::InvalidImageName,
            ArtifactError::NotFound { .. }
            | ArtifactError::Unauthorized { .. }
            | ArtifactError::Registry { .. }
            | ArtifactError::Store { .. } => PullFailureReason::ErrImagePull,
            ArtifactError::InvalidArtifact { .. } | ArtifactError::Input { .. } => {
                PullFailureReason::InvalidArtifact
            }
            ArtifactError::NeverPull { .. } => PullFailureReason::ErrImageNeverPull,
        }
    }

    pub(crate) fn invalid(reference: impl Into<String>, reason: impl Into<String>) -> Self {
        ArtifactError::InvalidArtifact {
            reference: reference.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn store(path: impl AsRef<std::path::Path>, err: impl fmt::Display) -> Self {
        ArtifactError::Store {
            path: path.as_ref().display().to_string(),
            reason: err.to_string(),
        }
    }

    pub(crate) fn input(path: impl AsRef<std::path::Path>, reason: impl fmt::Display) -> Self {
        ArtifactError::Input {
            path: path.as_ref().display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The error with its whole `source()` chain, for causes such as reqwest's whose
/// top-level message alone ("error sending request") hides the useful part.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
