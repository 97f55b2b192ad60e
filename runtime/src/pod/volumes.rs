//! Pod volumes as directories a Wasm guest can have preopened: `emptyDir`, `hostPath`,
//! `configMap`, `secret`, `downwardAPI` and `projected` (ServiceAccount tokens among its
//! sources). Nothing else of the host is visible.

use super::env::{ConfigError, Objects, field_ref};
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, ProjectedVolumeSource, Volume};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A directory to preopen for a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    /// The volume's directory on the node.
    pub host: PathBuf,
    /// The `subPath` inside it, checked to descend; the executor opens it without
    /// leaving `host` (`skiff_shims::mounts`), so a symlink a guest planted in the volume
    /// cannot redirect it. Empty for the whole volume.
    pub sub_path: String,
    /// Path the guest sees.
    pub guest: String,
    /// Read-only.
    pub read_only: bool,
}

fn io(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError(format!("{}: {e}", path.display()))
}

/// A relative path that stays inside its directory.
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Who may read a volume's files on the node (a guest reads them through the Wasm
/// host, whatever the mode).
#[derive(Clone, Copy)]
enum Access {
    /// Only the node's owner of the files: Secrets.
    Private,
    /// Anyone on the node: ConfigMaps, the downward API.
    Shared,
}

/// Write `files` into `dir` atomically: a fresh directory swapped in by rename, so a
/// guest never sees half of an update.
fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    access: Access,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (dir_mode, file_mode) = match access {
        Access::Private => (0o700, 0o600),
        Access::Shared => (0o755, 0o644),
    };
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("vol")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut mkdir = std::fs::DirBuilder::new();
    mkdir.recursive(true).mode(dir_mode);
    mkdir.create(&tmp).map_err(|e| io(&tmp, e))?;
    for (rel, bytes) in files {
        if !safe_relative(rel) {
            return Err(ConfigError(format!("invalid volume item path {rel:?}")));
        }
        // `tmp` is the agent's own fresh directory and `rel` descends: no guest has seen
        // it, so nothing in it can be a planted link.
        let p = tmp.join(rel);
        if let Some(d) = p.parent() {
            mkdir.create(d).map_err(|e| io(d, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        std::io::Write::write_all(&mut f, bytes).map_err(|e| io(&p, e))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
}

fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data);
    };
    let mut out = BTreeMap::new();
    for it in items {
        match data.get(&it.key) {
            Some(v) => {
                out.insert(it.path.clone(), v.clone());
            }
            None => {
                return Err(ConfigError(format!(
                    "configmap references non-existent config key: {} ({what})",
                    it.key
                )));
            }
        }
    }
    Ok(out)
}

/// When a projected ServiceAccount token should be fetched again: at 80% of its life,
/// and at least daily, as the kubelet does.
pub fn token_refresh_after(
    issued: jiff::Timestamp,
    expires: jiff::Timestamp,
) -> std::time::Duration {
    let life = expires
        .as_second()
        .saturating_sub(issued.as_second())
        .max(0) as u64;
    std::time::Duration::from_secs((life * 8 / 10).min(24 * 3600))
}

/// The files of a projected volume, and when its token (if it has one) expires.
async fn projected_files(
    pod: &Pod,
    p: &ProjectedVolumeSource,
    objects: &impl Objects,
    host_ip: &str,
) -> Result<
    (
        BTreeMap<String, Vec<u8>>,
        Option<(jiff::Timestamp, jiff::Timestamp)>,
    ),
    ConfigError,
> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut files = BTreeMap::new();
    let mut token_life = None;
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            let issued = jiff::Timestamp::now();
            let (token, expires) = objects
                .service_account_token(
                    ns,
                    &sa,
                    (name, uid),
                    t.audience.as_deref().filter(|a| !a.is_empty()),
                    t.expiration_seconds.unwrap_or(3607),
                )
                .await
                .map_err(|e| ConfigError(format!("serviceaccount token for {ns}/{sa}: {e}")))?;
            files.insert(t.path.clone(), token.into_bytes());
            token_life = Some((issued, expires));
        }
        if let Some(c) = &src.config_map {
            let data = match objects.config_map(ns, &c.name).await.map_err(ConfigError)? {
                Some(cm) => {
                    let mut d: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    d.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    d
                }
                None if c.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError(format!("configmap \"{}\" not found", c.name))),
            };
            files.extend(project(data, c.items.as_ref(), &c.name)?);
        }
        if let Some(s) = &src.secret {
            let data = match objects.secret(ns, &s.name).await.map_err(ConfigError)? {
                Some(sec) => sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                None if s.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError(format!("secret \"{}\" not found", s.name))),
            };
            files.extend(project(data, s.items.as_ref(), &s.name)?);
        }
        if let Some(d) = &src.downward_api {
            for it in d.items.iter().flatten() {
                if let Some(f) = &it.field_ref {
                    files.insert(
                        it.path.clone(),
                        field_ref(pod, &f.field_path, host_ip)?.into_bytes(),
                    );
                }
            }
        }
    }
    Ok((files, token_life))
}

/// Fetch a projected volume's token again and replace its file inside the same
/// directory (a guest holds that directory open, so it cannot be swapped for a new
/// one). Returns when it expires.
pub async fn refresh_projected_token(
    pod: &Pod,
    v: &Volume,
    dir: &Path,
    objects: &impl Objects,
    host_ip: &str,
) -> Result<Option<(jiff::Timestamp, jiff::Timestamp)>, ConfigError> {
    let Some(p) = &v.projected else {
        return Ok(None);
    };
    let (files, life) = projected_files(pod, p, objects, host_ip).await?;
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token
            && let Some(bytes) = files.get(&t.path)
        {
            use std::os::unix::fs::OpenOptionsExt;
            if !safe_relative(&t.path) {
                return Err(ConfigError(format!(
                    "invalid volume item path {:?}",
                    t.path
                )));
            }
            let tmp = dir.join(format!(".{}.refresh", t.path.replace('/', "_")));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io(&tmp, e))?;
            std::io::Write::write_all(&mut f, bytes).map_err(|e| io(&tmp, e))?;
            let target = dir.join(&t.path);
            std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
        }
    }
    Ok(life)
}

/// Materialize one pod volume under `root` (the pod's volume directory). Returns the
/// directory backing it.
pub async fn materialize(
    pod: &Pod,
    v: &Volume,
    root: &Path,
    objects: &impl Objects,
    host_ip: &str,
) -> Result<PathBuf, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = root.join(&v.name);
    if v.empty_dir.is_some() {
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(|e| io(&p, e))?,
            "" | "Directory" => {
                if !p.is_dir() {
                    return Err(ConfigError(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    )));
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "hostPath type {other} is not supported for Wasm containers (they see directories only)"
                )));
            }
        }
        return Ok(p);
    }
    if let Some(c) = &v.config_map {
        let optional = c.optional.unwrap_or(false);
        let data = match objects.config_map(ns, &c.name).await.map_err(ConfigError)? {
            Some(cm) => {
                let mut d: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                d.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                d
            }
            None if optional => BTreeMap::new(),
            None => return Err(ConfigError(format!("configmap \"{}\" not found", c.name))),
        };
        write_files(
            &dir,
            &project(data, c.items.as_ref(), &c.name)?,
            Access::Shared,
        )?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let data = match objects.secret(ns, &name).await.map_err(ConfigError)? {
            Some(sec) => sec
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            None if optional => BTreeMap::new(),
            None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
        };
        write_files(
            &dir,
            &project(data, s.items.as_ref(), &name)?,
            Access::Private,
        )?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let (files, _) = projected_files(pod, p, objects, host_ip).await?;
        write_files(&dir, &files, Access::Private)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let mut files = BTreeMap::new();
        for it in d.items.iter().flatten() {
            if let Some(f) = &it.field_ref {
                files.insert(
                    it.path.clone(),
                    field_ref(pod, &f.field_path, host_ip)?.into_bytes(),
                );
            }
        }
        write_files(&dir, &files, Access::Shared)?;
        return Ok(dir);
    }
    Err(ConfigError(format!(
        "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported",
        v.name
    )))
}

/// The preopens of one container from its `volumeMounts`, given the pod's volumes'
/// directories.
pub fn preopens(
    c: &Container,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
) -> Result<Vec<Preopen>, ConfigError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some((dir, always_ro)) = volumes.get(&m.name) else {
            return Err(ConfigError(format!(
                "volumeMount {:?} refers to no volume of the pod",
                m.name
            )));
        };
        let sub = m.sub_path.as_deref().unwrap_or_default();
        if !sub.is_empty() && !safe_relative(sub) {
            return Err(ConfigError(format!(
                "volumeMount {:?}: invalid subPath {sub:?}: it must be a relative path without '..'",
                m.name
            )));
        }
        if m.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
            return Err(ConfigError(format!(
                "volumeMount {:?}: subPathExpr is not supported yet; use subPath",
                m.name
            )));
        }
        out.push(Preopen {
            host: dir.clone(),
            sub_path: sub.to_string(),
            guest: m.mount_path.clone(),
            read_only: *always_ro || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::json;

    struct Table;

    impl Objects for Table {
        async fn config_map(&self, _ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
            Ok((name == "site").then(|| {
                serde_json::from_value(json!({"data": {"index.html": "<h1>hi</h1>", "other": "x"}}))
                    .unwrap_or_default()
            }))
        }
        async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, String> {
            Ok((name == "tls").then(|| {
                serde_json::from_value(json!({"data": {"key.pem": "a2V5"}})).unwrap_or_default()
            }))
        }
        async fn service_account_token(
            &self,
            ns: &str,
            name: &str,
            pod: (&str, &str),
            _audience: Option<&str>,
            seconds: i64,
        ) -> Result<(String, jiff::Timestamp), String> {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
            Ok((format!("token-of-{ns}/{name}-for-{}/{}", pod.0, pod.1), at))
        }
    }

    #[tokio::test]
    async fn a_projected_volume_holds_the_pods_token_ca_and_namespace() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"serviceAccountName": "app"},
        }))
        .unwrap_or_default();
        let v = vol(
            json!({"name": "kube-api-access-x", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "site", "items": [{"key": "index.html", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]}}),
        );
        let d = materialize(&pod, &v, tmp.path(), &Table, "")
            .await
            .unwrap_or_default();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        assert_eq!(read("token"), "token-of-ns/app-for-web/u1");
        assert_eq!(read("ca.crt"), "<h1>hi</h1>");
        assert_eq!(read("namespace"), "ns");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("token"))
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        // A refresh replaces the token inside the same directory (a guest holds it open).
        let inode = |p: &Path| {
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(p).unwrap_or_else(|e| panic!("{e}")),
            )
        };
        let before = inode(&d);
        std::fs::write(d.join("token"), "stale").unwrap_or_default();
        let life = refresh_projected_token(&pod, &v, &d, &Table, "")
            .await
            .unwrap_or_default();
        assert!(life.is_some());
        assert_eq!(read("token"), "token-of-ns/app-for-web/u1");
        assert_eq!(inode(&d), before);
    }

    #[test]
    fn tokens_are_refreshed_at_four_fifths_of_their_life_and_daily() {
        let now = jiff::Timestamp::now();
        let secs = |s: i64| now + jiff::SignedDuration::from_secs(s);
        assert_eq!(token_refresh_after(now, secs(3600)).as_secs(), 2880);
        assert_eq!(token_refresh_after(now, secs(365 * 86400)).as_secs(), 86400);
        assert_eq!(token_refresh_after(now, secs(-5)).as_secs(), 0);
    }

    fn vol(v: serde_json::Value) -> Volume {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[tokio::test]
    async fn volumes_become_directories() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path();
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns"}}))
                .unwrap_or_default();
        let d = materialize(
            &pod,
            &vol(json!({"name": "scratch", "emptyDir": {}})),
            root,
            &Table,
            "",
        )
        .await;
        assert!(d.as_ref().is_ok_and(|d| d.is_dir()));
        let d = materialize(&pod, &vol(json!({"name": "site", "configMap": {"name": "site", "items": [{"key": "index.html", "path": "www/index.html"}]}})), root, &Table, "").await;
        let d = d.unwrap_or_default();
        assert_eq!(
            std::fs::read_to_string(d.join("www/index.html"))
                .ok()
                .as_deref(),
            Some("<h1>hi</h1>")
        );
        assert!(!d.join("other").exists(), "items select keys");
        let d = materialize(
            &pod,
            &vol(json!({"name": "tls", "secret": {"secretName": "tls"}})),
            root,
            &Table,
            "",
        )
        .await
        .unwrap_or_default();
        assert_eq!(std::fs::read(d.join("key.pem")).ok(), Some(b"key".to_vec()));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(
            mode(&d),
            Some(0o700),
            "a secret volume is the node owner's only"
        );
        assert_eq!(mode(&d.join("key.pem")), Some(0o600));
        let d = materialize(&pod, &vol(json!({"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}})), root, &Table, "").await.unwrap_or_default();
        assert_eq!(
            std::fs::read_to_string(d.join("name")).ok().as_deref(),
            Some("web")
        );
        let cases = [
            (
                json!({"name": "a", "configMap": {"name": "missing"}}),
                "configmap \"missing\" not found",
            ),
            (
                json!({"name": "b", "hostPath": {"path": "/nonexistent/skiff"}}),
                "hostPath type check failed: /nonexistent/skiff is not a directory",
            ),
            (
                json!({"name": "c", "nfs": {"server": "x", "path": "/"}}),
                "volume \"c\": only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported",
            ),
            (
                json!({"name": "d", "configMap": {"name": "site", "items": [{"key": "index.html", "path": "../escape"}]}}),
                "invalid volume item path \"../escape\"",
            ),
        ];
        for (v, want) in cases {
            let got = materialize(&pod, &vol(v), root, &Table, "").await;
            assert_eq!(got, Err(ConfigError(want.into())));
        }
    }
}
