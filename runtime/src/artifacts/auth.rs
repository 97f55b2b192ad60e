//! Registry credentials, and the parser for a `kubernetes.io/dockerconfigjson` Secret.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum RegistryCredentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// A username and password (sent as HTTP Basic, or exchanged for a bearer token when
    /// the registry asks for one).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
}

impl RegistryCredentials {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        RegistryCredentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn to_oci(&self) -> RegistryAuth {
        match self {
            RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
            RegistryCredentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

// Never print a password, not even in debug logs.
impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCredentials::Anonymous => f.write_str("Anonymous"),
            RegistryCredentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// A `.dockerconfigjson` (or legacy `.dockercfg`) document does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    /// Not JSON of the expected shape.
    #[error("not a docker config JSON document: {0}")]
    Json(String),
    /// An entry's `auth` field is not base64 of `user:password`.
    #[error("entry for {registry:?}: the auth field is not base64 of \"user:password\": {reason}")]
    BadAuthField {
        /// The entry's key.
        registry: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

#[derive(Deserialize)]
struct ConfigJson {
    auths: BTreeMap<String, Entry>,
}

/// The parsed contents of a `kubernetes.io/dockerconfigjson` Secret (its
/// `.dockerconfigjson` key) or of a legacy `kubernetes.io/dockercfg` Secret.
///
/// ```
/// use skiff_runtime::artifacts::{DockerConfig, RegistryCredentials};
/// let json = br#"{"auths":{"reg.example:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#;
/// let config = DockerConfig::parse(json).unwrap();
/// assert_eq!(
///     config.credentials_for("reg.example:5000/team/app:1"),
///     Some(RegistryCredentials::basic("alice", "s3cret"))
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    // (normalized key, credentials), in document order.
    entries: Vec<(String, RegistryCredentials)>,
}

impl DockerConfig {
    /// Parses `{"auths": {"<registry>": {"username", "password"} | {"auth": base64}}}`,
    /// or the legacy form without the `auths` wrapper. Entries with neither a password
    /// nor an `auth` field (for example identity-token-only entries) are skipped.
    pub fn parse(json: &[u8]) -> Result<Self, DockerConfigError> {
        let auths = match serde_json::from_slice::<ConfigJson>(json) {
            Ok(doc) => doc.auths,
            Err(first) => serde_json::from_slice::<BTreeMap<String, Entry>>(json)
                .map_err(|_| DockerConfigError::Json(first.to_string()))?,
        };
        let mut entries = Vec::new();
        for (key, entry) in auths {
            let creds = match (entry.username, entry.password, entry.auth) {
                (Some(u), Some(p), _) if !u.is_empty() || !p.is_empty() => {
                    RegistryCredentials::basic(u, p)
                }
                (_, _, Some(auth)) if !auth.is_empty() => decode_auth(&key, &auth)?,
                _ => continue,
            };
            entries.push((normalize_key(&key), creds));
        }
        Ok(DockerConfig { entries })
    }

    /// The credentials for an image reference (`host[:port]/repo[:tag]`) or a bare
    /// registry host. Matching follows the kubelet: the registry host must match (a key's
    /// `*` matches one DNS label), ports must be equal, and a key with a path must be a
    /// prefix of the repository; the most specific (longest) match wins. Docker Hub's
    /// aliases (`docker.io`, `index.docker.io`, `registry-1.docker.io`, and the
    /// `https://index.docker.io/v1/` key) are one registry.
    pub fn credentials_for(&self, image: &str) -> Option<RegistryCredentials> {
        let target = normalize_image(image);
        self.entries
            .iter()
            .filter(|(key, _)| key_matches(key, &target))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, creds)| creds.clone())
    }

    /// Whether the document had no usable entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn decode_auth(key: &str, auth: &str) -> Result<RegistryCredentials, DockerConfigError> {
    let bad = |reason: String| DockerConfigError::BadAuthField {
        registry: key.to_string(),
        reason,
    };
    let trimmed = auth.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".to_string()))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| bad("no ':' between user and password".to_string()))?;
    Ok(RegistryCredentials::basic(user, pass))
}

/// `https://Reg.Example:5000/v1/` → `reg.example:5000/v1`; Docker Hub aliases → `docker.io`.
fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = match key.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (key, ""),
    };
    let host = canonical_host(host);
    // Docker's own login writes `https://index.docker.io/v1/`: the path is an API
    // version, not a repository prefix.
    let path = if host == "docker.io" && (path == "v1" || path == "v2") {
        ""
    } else {
        path
    };
    if path.is_empty() {
        host
    } else {
        format!("{host}/{path}")
    }
}

fn normalize_image(image: &str) -> String {
    let image = image.trim();
    let without_digest = image.split('@').next().unwrap_or(image);
    let (first, rest) = match without_digest.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (without_digest, None),
    };
    // As in references: the first component is a registry only if it has a dot, a port,
    // or is localhost; otherwise the image is on Docker Hub.
    let is_registry =
        rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    let (host, repo) = if is_registry {
        (first, rest.unwrap_or(""))
    } else if rest.is_none() && (first.contains('.') || first.starts_with("localhost")) {
        // A bare registry host was given (`busybox:1` is an image, `reg.example:5000` a
        // registry).
        (first, "")
    } else {
        ("docker.io", without_digest)
    };
    // Drop a tag from the last path component.
    let repo = match repo.rsplit_once('/') {
        Some((dir, last)) => format!("{dir}/{}", last.split(':').next().unwrap_or(last)),
        None => repo.split(':').next().unwrap_or(repo).to_string(),
    };
    let host = canonical_host(host);
    if repo.is_empty() {
        host
    } else {
        format!("{host}/{repo}")
    }
}

fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

fn key_matches(key: &str, target: &str) -> bool {
    let (key_host, key_path) = key.split_once('/').unwrap_or((key, ""));
    let (target_host, target_path) = target.split_once('/').unwrap_or((target, ""));
    let (key_name, key_port) = split_port(key_host);
    let (target_name, target_port) = split_port(target_host);
    if key_port != target_port || !host_glob_matches(key_name, target_name) {
        return false;
    }
    if key_path.is_empty() {
        return true;
    }
    target_path == key_path
        || target_path
            .strip_prefix(key_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => (name, Some(port)),
        _ => (host, None),
    }
}

fn host_glob_matches(pattern: &str, host: &str) -> bool {
    let pattern_labels: Vec<&str> = pattern.split('.').collect();
    let host_labels: Vec<&str> = host.split('.').collect();
    pattern_labels.len() == host_labels.len()
        && pattern_labels
            .iter()
            .zip(&host_labels)
            .all(|(p, h)| glob_label(p, h))
}

/// One DNS label against a pattern where `*` matches any run of characters.
fn glob_label(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, rest)) => {
            let Some(after) = label.strip_prefix(prefix) else {
                return false;
            };
            (0..=after.len())
                .filter(|i| after.is_char_boundary(*i))
                .any(|i| glob_label(rest, &after[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn finds_entries_by_registry() {
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{hub}"}},
                "reg.example:5000":{{"username":"u","password":"p"}},
                "reg.example:5000/team":{{"auth":"{team}"}},
                "*.corp.example":{{"auth":"{corp}"}},
                "token.example":{{"identitytoken":"x"}}
            }}}}"#,
            hub = b64("hubuser:hub:pass"),
            team = b64("team:tp"),
            corp = b64("corp:cp"),
        );
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        let table = [
            ("busybox", Some(("hubuser", "hub:pass"))),
            ("docker.io/library/busybox:1", Some(("hubuser", "hub:pass"))),
            ("reg.example:5000/app:1", Some(("u", "p"))),
            ("reg.example:5000/team/app:1", Some(("team", "tp"))),
            ("reg.example:5000/teamster/app", Some(("u", "p"))),
            ("reg.example/app", None),
            ("a.corp.example/x/y", Some(("corp", "cp"))),
            ("a.b.corp.example/x", None),
            ("token.example/x", None),
            ("reg.example:5000", Some(("u", "p"))),
            ("busybox:1", Some(("hubuser", "hub:pass"))),
        ];
        for (image, want) in table {
            let want = want.map(|(u, p)| RegistryCredentials::basic(u, p));
            assert_eq!(config.credentials_for(image), want, "{image}");
        }
    }

    #[test]
    fn legacy_dockercfg_and_errors() {
        let json = format!(r#"{{"reg.example":{{"auth":"{}"}}}}"#, b64("a:b"));
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            config.credentials_for("reg.example/x"),
            Some(RegistryCredentials::basic("a", "b"))
        );
        assert!(matches!(
            DockerConfig::parse(br#"{"auths":{"r":{"auth":"!!!"}}}"#),
            Err(DockerConfigError::BadAuthField { .. })
        ));
        assert!(matches!(
            DockerConfig::parse(b"[1]"),
            Err(DockerConfigError::Json(_))
        ));
    }

    #[test]
    fn debug_hides_password() {
        let shown = format!("{:?}", RegistryCredentials::basic("alice", "s3cret"));
        assert!(shown.contains("alice") && !shown.contains("s3cret"));
    }
}
