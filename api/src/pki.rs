//! First-start credentials: a CA, a serving certificate, the admin token, the `default`
//! node join token, the key node logs tokens are derived from, the ServiceAccount
//! signing key, and the admin kubeconfig.
//! Everything secret is written with mode 0600; later starts reuse what is there and
//! re-issue the serving certificate for the current addresses.
//!
//! Files under the data directory: `pki/ca.crt`, `pki/ca.key`, `pki/server.crt`,
//! `pki/server.key`, `pki/admin-token`, `pki/node-credential-key` (never leaves the
//! server), `pki/service-account.key`, `node-token` (the `default` join token, see
//! [`crate::token`]) and `kubeconfig.yaml`.

use crate::token::JoinToken;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Failures while preparing credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// The ServiceAccount signing key is unusable.
    #[error(transparent)]
    Signer(#[from] crate::auth::serviceaccount::SignerError),
}

/// The server's credentials.
#[derive(Clone)]
pub struct Credentials {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving key (PEM).
    pub key_pem: String,
    /// The admin bearer token.
    pub admin_token: String,
    /// The node join token, `skiff1.<CA hash>.<secret>` (what `DATA_DIR/node-token` holds).
    pub node_token: String,
    /// The secret part of the join token.
    pub join_secret: String,
    /// The key the tokens the apiserver presents to node agents are derived from; it
    /// never leaves the server.
    pub node_key: String,
    /// Signs ServiceAccount tokens.
    pub sa_signer: Option<std::sync::Arc<crate::auth::serviceaccount::Signer>>,
    /// Where the admin kubeconfig was written.
    pub kubeconfig: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create `dir` (and its parents) if missing, and make it accessible to its owner only
/// (0700), also when an older version left it open.
pub fn private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Write a file readable only by its owner, atomically (temp file, then rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    // Next to the file, named after all of it (`ca.key` and `ca.crt` must not share one).
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, PkiError>,
) -> Result<String, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s),
        Ok(_) => {
            let v = make()?;
            write_private(path, v.as_bytes())?;
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let v = make()?;
            write_private(path, v.as_bytes())?;
            Ok(v)
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn token() -> String {
    crate::token::random_secret()
}

/// The join token to keep in `path`: its secret is the one already there (a plain secret
/// of an older version, or a `skiff1` token's), or a new one; the CA hash is always the
/// current CA's. The file is rewritten when that changes what it holds, so an old
/// data directory moves to the new format and old agents' secret keeps working.
fn join_token(path: &Path, ca_pem: &str) -> Result<JoinToken, PkiError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let secret = match JoinToken::parse(&existing) {
        Ok(t) => t.secret,
        Err(_)
            if !existing.is_empty()
                && !existing.contains(|c: char| c.is_whitespace() || c == '.') =>
        {
            existing.clone()
        }
        Err(e) => {
            if !existing.is_empty() {
                tracing::warn!(path = %path.display(), error = %e, "unreadable join token replaced by a new one");
            }
            token()
        }
    };
    let t = JoinToken::new(ca_pem.as_bytes(), &secret);
    let text = t.to_string();
    if text != existing {
        write_private(path, format!("{text}\n").as_bytes())?;
    }
    Ok(t)
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    dn.push(DnType::OrganizationName, "skiff");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2034, 1, 1);
    Ok(p)
}

/// Load or create the credentials under `dir`; the serving certificate names `sans`;
/// the kubeconfig points at `server_url`.
pub fn ensure(dir: &Path, sans: &[String], server_url: &str) -> Result<Credentials, PkiError> {
    private_dir(dir)?;
    let pki = dir.join("pki");
    private_dir(&pki)?;
    let ca_key_pem = read_or_create(&pki.join("ca.key"), || {
        Ok(KeyPair::generate()?.serialize_pem())
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_pem = read_or_create(&pki.join("ca.crt"), || {
        Ok(ca_params()?.self_signed(&ca_key)?.pem())
    })?;
    // The issuer is rebuilt from the same name and key, so it matches the stored CA.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "skiff-apiserver");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2034, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert_pem = params.signed_by(&key, &issuer)?.pem();
    let key_pem = key.serialize_pem();
    write_private(&pki.join("server.crt"), cert_pem.as_bytes())?;
    write_private(&pki.join("server.key"), key_pem.as_bytes())?;
    let admin_token = read_or_create(&pki.join("admin-token"), || Ok(token()))?
        .trim()
        .to_string();
    let join = join_token(&dir.join("node-token"), &ca_pem)?;
    let node_key = read_or_create(&pki.join("node-credential-key"), || Ok(token()))?
        .trim()
        .to_string();
    let sa_signer =
        crate::auth::serviceaccount::Signer::load_or_create(&pki.join("service-account.key"))?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    write_private(
        &kubeconfig,
        kubeconfig_text(&ca_pem, server_url, &admin_token).as_bytes(),
    )?;
    Ok(Credentials {
        ca_pem,
        cert_pem,
        key_pem,
        admin_token,
        node_token: join.to_string(),
        join_secret: join.secret,
        node_key,
        sa_signer: Some(std::sync::Arc::new(sa_signer)),
        kubeconfig,
    })
}

/// A kubeconfig for the admin user.
pub fn kubeconfig_text(ca_pem: &str, server_url: &str, token: &str) -> String {
    kubeconfig_for(ca_pem, server_url, "skiff-admin", token, "default")
}

/// A kubeconfig for `user`, authenticating with `token`, in `namespace` by default.
pub fn kubeconfig_for(
    ca_pem: &str,
    server_url: &str,
    user: &str,
    token: &str,
    namespace: &str,
) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // YAML double-quoted scalars take JSON string escapes.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let (user, namespace) = (q(user), q(namespace));
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user}
    namespace: {namespace}
current-context: skiff
"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_old_plain_node_token_is_rewritten_keeping_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-token"), "0123abcd\n").unwrap();
        let c = ensure(dir.path(), &["localhost".into()], "https://127.0.0.1:1").unwrap();
        assert_eq!(c.join_secret, "0123abcd");
        let file = std::fs::read_to_string(dir.path().join("node-token")).unwrap();
        assert_eq!(file.trim(), c.node_token);
        let t = JoinToken::parse(&file).unwrap();
        assert_eq!(t.secret, "0123abcd");
        let ca = std::fs::read(dir.path().join("pki/ca.crt")).unwrap();
        assert_eq!(t.ca_sha256, crate::token::sha256_hex(&ca));
        // The node credential key is private to the server and stable across starts.
        let key = dir.path().join("pki/node-credential-key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ensure(dir.path(), &["localhost".into()], "https://127.0.0.1:1").unwrap();
        assert_eq!(again.node_token, c.node_token);
        assert_eq!(again.node_key, c.node_key);
        let logs =
            |c: &Credentials, n: &str| crate::token::node_logs_token(c.node_key.as_bytes(), n, "g");
        assert_eq!(logs(&again, "n1"), logs(&c, "n1"));
        assert_ne!(logs(&c, "n1"), logs(&c, "n2"));
    }

    #[test]
    fn a_new_data_dir_gets_a_skiff1_join_token() {
        let dir = tempfile::tempdir().unwrap();
        let c = ensure(dir.path(), &["localhost".into()], "https://127.0.0.1:1").unwrap();
        let t = JoinToken::parse(&c.node_token).unwrap();
        assert_eq!(t.secret, c.join_secret);
        assert_eq!(t.ca_sha256, crate::token::sha256_hex(c.ca_pem.as_bytes()));
        let mode = std::fs::metadata(dir.path().join("node-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
