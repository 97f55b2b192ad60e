//! Pull policy, reference parsing and the plain-HTTP decision.

use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use super::error::ArtifactError;

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Ask the registry which digest the reference names every time; download only blobs
    /// that are not cached yet.
    Always,
    /// Use the cached artifact if the reference was pulled (or imported) before.
    IfNotPresent,
    /// Never contact a registry: the artifact must be in the cache already.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default for a container that sets no `imagePullPolicy`: `Always` when
    /// the reference has no tag or the tag `latest` (and no digest), `IfNotPresent`
    /// otherwise. A reference that does not parse gets `IfNotPresent`; the pull itself
    /// reports it as `InvalidImageName`.
    pub fn default_for(reference: &str) -> PullPolicy {
        // Decide on the text, not on a parsed `Reference`, which fills in `latest`. As in
        // the apiserver's defaulting, a digest without a tag means IfNotPresent, and an
        // explicit `:latest` means Always even next to a digest.
        let reference = reference.trim();
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let last = name.rsplit('/').next().unwrap_or(name);
        match (last.split_once(':'), digest) {
            (Some((_, "latest")), _) => PullPolicy::Always,
            (None, None) => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

impl FromStr for PullPolicy {
    type Err = String;

    /// Parses the Pod spec spelling (`Always`, `IfNotPresent`, `Never`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown imagePullPolicy {other:?} (expected Always, IfNotPresent or Never)"
            )),
        }
    }
}

/// Parses an image reference the way container runtimes do (`busybox` is
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, ArtifactError> {
    Reference::from_str(reference.trim()).map_err(|e| ArtifactError::InvalidReference {
        reference: reference.to_string(),
        reason: e.to_string(),
    })
}

/// Whether `registry` (as in a reference: `host`, `host:port`, `[v6]:port`) is spoken to
/// over plain HTTP: loopback addresses and `localhost` always, and any registry named in
/// `insecure` (the agent's `--insecure-registry` list; an entry without a port matches
/// every port of that host).
pub fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = IpAddr::from_str(host)
        && ip.is_loopback()
    {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        let entry = entry
            .strip_prefix("http://")
            .or_else(|| entry.strip_prefix("https://"))
            .unwrap_or(entry)
            .trim_end_matches('/');
        if entry.eq_ignore_ascii_case(registry) {
            return true;
        }
        // An entry without a port names the host on any port.
        host_of(entry) == entry && entry.eq_ignore_ascii_case(host)
    })
}

/// The host part of `host[:port]` or `[v6][:port]`.
pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            host
        }
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_follows_kubernetes() {
        let table = [
            ("busybox", PullPolicy::Always),
            ("busybox:latest", PullPolicy::Always),
            ("127.0.0.1:5000/app", PullPolicy::Always),
            ("127.0.0.1:5000/app:latest", PullPolicy::Always),
            ("127.0.0.1:5000/app:1", PullPolicy::IfNotPresent),
            ("ghcr.io/a/b:v2", PullPolicy::IfNotPresent),
            (
                "ghcr.io/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                PullPolicy::IfNotPresent,
            ),
            (
                "ghcr.io/a/b:latest@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                PullPolicy::Always,
            ),
        ];
        for (reference, want) in table {
            assert_eq!(PullPolicy::default_for(reference), want, "{reference}");
        }
    }

    #[test]
    fn plain_http_for_loopback_and_listed_registries() {
        let insecure = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        let table = [
            ("127.0.0.1:5000", true),
            ("127.3.4.5", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("reg.lan:5000", true),
            ("reg.lan:6000", false),
            ("other.lan:7000", true),
            ("other.lan", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
            ("[2001:db8::1]:5000", false),
        ];
        for (registry, want) in table {
            assert_eq!(uses_plain_http(registry, &insecure), want, "{registry}");
        }
    }

    #[test]
    fn pull_policy_parses_pod_spelling() {
        assert_eq!("Never".parse::<PullPolicy>(), Ok(PullPolicy::Never));
        assert!("never".parse::<PullPolicy>().is_err());
    }
}
