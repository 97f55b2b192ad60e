//! The audit log (`--audit-log PATH`): one JSON line per request, in Kubernetes' audit
//! event format (`audit.k8s.io/v1` `Event`, level Metadata, stage ResponseComplete):
//! who (user, impersonated user, source address, user agent), what (verb, URI, object),
//! and how it ended (code, the refusal's message, the authorization decision).
//!
//! The file is the owner's only (0600, in a 0700 directory) and rotates by size: past
//! `max_bytes` it becomes `PATH.1` (older ones shift to `.2`, ...; `max_backups` are kept),
//! as logrotate names them, where kube-apiserver's lumberjack would put a timestamp.

use crate::auth::UserInfo;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

tokio::task_local! {
    /// Annotations admission adds to the audit event of the request being served.
    static NOTES: std::cell::RefCell<Vec<(String, String)>>;
}

/// Add an annotation to the audit event of the request being served (nothing outside
/// one, or with no audit log).
pub fn note(key: &str, value: &str) {
    let _ = NOTES.try_with(|n| n.borrow_mut().push((key.to_string(), value.to_string())));
}

/// Run `f`, collecting the annotations it [`note`]s.
pub async fn collecting<F: std::future::Future>(f: F) -> (F::Output, Vec<(String, String)>) {
    NOTES
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let out = f.await;
            let notes = NOTES.with(|n| n.take());
            (out, notes)
        })
        .await
}

/// Where and how big.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The log file.
    pub path: PathBuf,
    /// Rotate once the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: usize,
}

struct Open {
    file: std::fs::File,
    size: u64,
}

/// An open audit log.
pub struct AuditLog {
    config: AuditConfig,
    file: Mutex<Option<Open>>,
}

/// What a request was, for its audit line.
#[derive(Debug, Default)]
pub struct Record {
    /// The verb (`get`, `create`, ... or the lower-cased method of a path).
    pub verb: String,
    /// Path and query as sent.
    pub uri: String,
    /// The caller, once authenticated.
    pub user: Option<UserInfo>,
    /// Whom the caller acted as, when impersonating.
    pub impersonated: Option<UserInfo>,
    /// The client's address.
    pub source: Option<std::net::IpAddr>,
    /// `User-Agent`.
    pub user_agent: String,
    /// `objectRef`: resource, namespace, name, apiGroup, apiVersion, subresource.
    pub object: Option<Value>,
    /// Annotations admission added.
    pub notes: Vec<(String, String)>,
    /// What authorization decided (none: it did not get that far).
    pub authorized: Option<bool>,
}

fn user_json(u: &UserInfo) -> Value {
    let mut o = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        o["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        o["extra"] = json!(u.extra);
    }
    o
}

fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The audit event of a request, Kubernetes' shape. `status` is the refusal's `Status`
/// (for codes past 299) or none.
pub fn event(
    r: &Record,
    id: &str,
    code: u16,
    status: Option<&Value>,
    received: jiff::Timestamp,
    done: jiff::Timestamp,
) -> Value {
    let mut e = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": id,
        "stage": "ResponseComplete",
        "requestURI": r.uri,
        "verb": r.verb,
        "user": r.user.as_ref().map(user_json).unwrap_or_else(|| json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]})),
        "sourceIPs": r.source.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "userAgent": r.user_agent,
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": micro_time(received),
        "stageTimestamp": micro_time(done),
    });
    if let Some(u) = &r.impersonated {
        e["impersonatedUser"] = user_json(u);
    }
    if let Some(o) = &r.object {
        e["objectRef"] = o.clone();
    }
    if let Some(s) = status {
        for k in ["status", "message", "reason", "details"] {
            if let Some(v) = s.get(k) {
                e["responseStatus"][k] = v.clone();
            }
        }
    }
    let mut notes = serde_json::Map::new();
    if let Some(allowed) = r.authorized {
        let decision = if allowed { "allow" } else { "forbid" };
        notes.insert("authorization.k8s.io/decision".into(), json!(decision));
    }
    for (k, v) in &r.notes {
        notes.insert(k.clone(), json!(v));
    }
    if !notes.is_empty() {
        e["annotations"] = Value::Object(notes);
    }
    e
}

impl AuditLog {
    /// Open (or create) the log.
    pub fn open(config: AuditConfig) -> std::io::Result<AuditLog> {
        let log = AuditLog {
            file: Mutex::new(None),
            config,
        };
        let open = log.open_file()?;
        *log.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        Ok(log)
    }

    fn open_file(&self) -> std::io::Result<Open> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let path = &self.config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let size = file.metadata()?.len();
        Ok(Open { file, size })
    }

    fn backup(&self, n: usize) -> PathBuf {
        let mut p = self.config.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&self) -> std::io::Result<()> {
        let keep = self.config.max_backups;
        if keep == 0 {
            return std::fs::remove_file(&self.config.path);
        }
        let _ = std::fs::remove_file(self.backup(keep));
        for n in (1..keep).rev() {
            let from = self.backup(n);
            if from.exists() {
                std::fs::rename(&from, self.backup(n + 1))?;
            }
        }
        std::fs::rename(&self.config.path, self.backup(1))
    }

    /// Append one event. Failures are logged, never returned: an audit write does not
    /// fail the request it records.
    pub fn write(&self, event: &Value) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let needs_rotation = guard
            .as_ref()
            .is_some_and(|o| o.size > 0 && o.size + line.len() as u64 > self.config.max_bytes);
        if needs_rotation {
            *guard = None;
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, path = %self.config.path.display(), "audit log rotation failed");
            }
        }
        if guard.is_none() {
            match self.open_file() {
                Ok(o) => *guard = Some(o),
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.config.path.display(), "audit log cannot be opened");
                    return;
                }
            }
        }
        if let Some(o) = guard.as_mut() {
            match o.file.write_all(&line) {
                Ok(()) => o.size += line.len() as u64,
                Err(e) => tracing::warn!(error = %e, "audit log write failed"),
            }
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.config.path
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_have_kubernetes_shape_and_the_log_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.log");
        let log = AuditLog::open(AuditConfig {
            path: path.clone(),
            max_bytes: 2000,
            max_backups: 2,
        })
        .unwrap();
        let r = Record {
            verb: "get".into(),
            uri: "/api/v1/namespaces/team/secrets/db".into(),
            user: Some(UserInfo::new("vera", [])),
            source: Some([127, 0, 0, 1].into()),
            object: Some(
                json!({"resource": "secrets", "namespace": "team", "name": "db", "apiVersion": "v1"}),
            ),
            authorized: Some(false),
            ..Default::default()
        };
        let now = jiff::Timestamp::now();
        let status = json!({"status": "Failure", "message": "secrets \"db\" is forbidden", "reason": "Forbidden", "code": 403});
        let e = event(&r, "id-1", 403, Some(&status), now, now);
        assert_eq!(e["user"]["username"], "vera");
        assert_eq!(e["objectRef"]["name"], "db");
        assert_eq!(e["responseStatus"]["code"], 403);
        assert_eq!(e["responseStatus"]["reason"], "Forbidden");
        assert_eq!(e["annotations"]["authorization.k8s.io/decision"], "forbid");
        assert_eq!(e["sourceIPs"][0], "127.0.0.1");
        let line_len = serde_json::to_vec(&e).unwrap().len() + 1;
        for _ in 0..(3 * 2000 / line_len + 2) {
            log.write(&e);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(log.backup(1).exists() && log.backup(2).exists());
        assert!(!log.backup(3).exists(), "only max_backups are kept");
        for p in [path.clone(), log.backup(1)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() as u64 <= 2000,
                "{} grew past the limit",
                p.display()
            );
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["kind"], "Event");
            }
        }
    }
}
