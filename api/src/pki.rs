//! First-start credentials: a CA, a serving certificate, the admin and node-join tokens,
//! and the admin kubeconfig. Everything secret is written with mode 0600; later starts
//! reuse what is there and re-issue the serving certificate for the current addresses.

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
    /// The node join token.
    pub node_token: String,
    /// Where the admin kubeconfig was written.
    pub kubeconfig: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file readable only by its owner, atomically (temp file, then rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
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
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
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
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(io(&pki))?;
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
    let node_token = read_or_create(&dir.join("node-token"), || Ok(token()))?
        .trim()
        .to_string();
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
        node_token,
        kubeconfig,
    })
}

/// A kubeconfig for the admin user.
pub fn kubeconfig_text(ca_pem: &str, server_url: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: skiff-admin
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: skiff-admin
    namespace: default
current-context: skiff
"
    )
}
