//! What a Linux container runs, decided from its Pod and its image, as the kubelet and
//! container runtimes decide it: pure functions, table-tested, no I/O.
//!
//! - argv: `command` replaces the image's Entrypoint, `args` its Cmd;
//! - env: the image's, then the container's (a name set by both takes the container's
//!   value, in the image's position);
//! - working directory: `workingDir`, else the image's, else `/`;
//! - user: `runAsUser`/`runAsGroup` (container over pod), else the image's `User`, names
//!   looked up in the image's `/etc/passwd` and `/etc/group`; supplementary groups from
//!   the pod; `runAsNonRoot` refuses uid 0;
//! - privileges: the default capability set with `add`/`drop`, `privileged` only where the
//!   node allows it, `allowPrivilegeEscalation: false` as no_new_privs, seccomp.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use serde::Deserialize;
use skiff_shims::oci::spec::DEFAULT_CAPABILITIES;
use skiff_shims::{OciSecurity, OciUser};

/// The parts of an OCI image config a container run needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub working_dir: String,
    /// `config.User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub user: String,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigInner {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// Reads an image config blob (OCI or Docker; they agree on these fields).
pub fn parse_image_config(bytes: &[u8]) -> Result<ImageConfig, String> {
    let doc: ConfigDoc = serde_json::from_slice(bytes).map_err(|e| format!("image config: {e}"))?;
    let c = doc.config.unwrap_or(ConfigInner {
        entrypoint: None,
        cmd: None,
        env: None,
        working_dir: None,
        user: None,
    });
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    })
}

/// The process's argv; `expand` applies `$(VAR)` references to the container's own
/// `command` and `args` (not to the image's).
pub fn argv(
    image: &ImageConfig,
    c: &Container,
    expand: impl Fn(&String) -> String,
) -> Result<Vec<String>, String> {
    let command: Option<Vec<String>> = c
        .command
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(&expand).collect());
    let args: Option<Vec<String>> = c
        .args
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(&expand).collect());
    let argv = match (command, args) {
        (Some(cmd), args) => [cmd, args.unwrap_or_default()].concat(),
        (None, Some(args)) => [image.entrypoint.clone(), args].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    };
    if argv.is_empty() {
        return Err(
            "no command specified: the image has no Entrypoint or Cmd and the container no command"
                .into(),
        );
    }
    Ok(argv)
}

/// The image's environment, then the container's.
pub fn merge_env(image: &[String], container: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = image
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (k, v) in container {
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    out
}

/// The working directory.
pub fn working_dir(image: &ImageConfig, c: &Container) -> String {
    c.working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into())
}

fn lookup(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    file.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        })?
    })
}

fn primary_gid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
    })
}

/// Who the container runs as. `passwd` and `group` are the image's files (empty if none).
pub fn user(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    passwd: &str,
    group: &str,
) -> Result<OciUser, String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let (image_user, image_group) = match image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image.user.as_str(), None),
    };
    let to_id =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"));
    let (uid, passwd_gid) = match run_as_user {
        Some(u) => {
            let u = to_id(u, "runAsUser")?;
            (u, primary_gid(passwd, u))
        }
        None if image_user.is_empty() => (0, Some(0)),
        None => match image_user.parse::<u32>() {
            Ok(u) => (u, primary_gid(passwd, u)),
            Err(_) => lookup(passwd, image_user).ok_or_else(|| {
                format!("unable to find user {image_user}: no matching entries in the image's /etc/passwd")
            })?,
        },
    };
    let gid = match run_as_group {
        Some(g) => to_id(g, "runAsGroup")?,
        None => match image_group.filter(|g| !g.is_empty()) {
            Some(g) => match g.parse::<u32>() {
                Ok(g) => g,
                Err(_) => lookup(group, g).map(|(id, _)| id).ok_or_else(|| {
                    format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    )
                })?,
            },
            None => passwd_gid.unwrap_or(0),
        },
    };
    if non_root && uid == 0 {
        return Err(
            "container has runAsNonRoot and image will run as root (pod or container runAsUser, or a non-root image User, is needed)"
                .into(),
        );
    }
    let mut additional: Vec<u32> = Vec::new();
    if let Some(p) = psc {
        for g in p.supplemental_groups.iter().flatten() {
            additional.push(to_id(*g, "supplementalGroups")?);
        }
        if let Some(fs) = p.fs_group {
            additional.push(to_id(fs, "fsGroup")?);
        }
    }
    additional.sort_unstable();
    additional.dedup();
    Ok(OciUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The container's privileges; refuses `privileged` unless the node allows it.
pub fn security(pod: &Pod, c: &Container, allow_privileged: bool) -> Result<OciSecurity, String> {
    let sc: Option<&SecurityContext> = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    if privileged && !allow_privileged {
        return Err(format!(
            "container {} is privileged, and this node does not allow privileged containers (start the agent with --allow-privileged)",
            c.name
        ));
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if let Some(k) = sc.and_then(|s| s.capabilities.as_ref()) {
        let drop: Vec<String> = k.drop.iter().flatten().map(|d| cap_name(d)).collect();
        if drop.iter().any(|d| d == "CAP_ALL") {
            caps.clear();
        } else {
            caps.retain(|c| !drop.contains(c));
        }
        for a in k.add.iter().flatten() {
            let a = cap_name(a);
            if a == "CAP_ALL" {
                caps = skiff_shims::oci::spec::ALL_CAPABILITIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            } else if !caps.contains(&a) {
                caps.push(a);
            }
        }
    }
    let seccomp_default = match seccomp_of(pod, c).map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => false,
        Some("RuntimeDefault") => true,
        // Loaded from the node's profile directory by the caller (see
        // [`localhost_profile`] and [`load_seccomp_profile`]).
        Some("Localhost") => false,
        Some(other) => {
            return Err(format!(
                "seccomp profile type {other} is not supported on this node (RuntimeDefault, Localhost and Unconfined are)"
            ));
        }
    };
    Ok(OciSecurity {
        privileged,
        capabilities: caps,
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        read_only_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        seccomp_default,
        seccomp_profile: None,
    })
}

/// The container's seccomp profile, else the pod's.
fn seccomp_of<'a>(
    pod: &'a Pod,
    c: &'a Container,
) -> Option<&'a k8s_openapi::api::core::v1::SeccompProfile> {
    c.security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.seccomp_profile.as_ref())
        })
}

/// The `localhostProfile` a container's `Localhost` seccomp profile names, if it has one;
/// an error if the name is missing or leaves the node's profile directory.
pub fn localhost_profile(pod: &Pod, c: &Container) -> Result<Option<String>, String> {
    let Some(p) = seccomp_of(pod, c).filter(|p| p.type_ == "Localhost") else {
        return Ok(None);
    };
    let name = p.localhost_profile.as_deref().unwrap_or_default();
    let inside = !name.is_empty()
        && std::path::Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(format!(
            "seccomp profile of container {}: localhostProfile {name:?} must be a relative path inside the node's profile directory",
            c.name
        ));
    }
    Ok(Some(name.to_string()))
}

/// Reads the seccomp profile `name` under `dir` (the agent's `seccomp/` directory, as the
/// kubelet's is `/var/lib/kubelet/seccomp`): the OCI runtime spec's `LinuxSeccomp`
/// JSON, which is also the format of Docker's and Kubernetes' example profiles.
pub fn load_seccomp_profile(dir: &Path, name: &str) -> Result<serde_json::Value, String> {
    let path = dir.join(name);
    let text = std::fs::read(&path)
        .map_err(|e| format!("failed to load seccomp profile {}: {e}", path.display()))?;
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&text)
        .map_err(|e| format!("seccomp profile {} is not valid: {e}", path.display()))?;
    serde_json::to_value(profile).map_err(|e| e.to_string())
}

/// The pod's hostname: `spec.hostname`, else its name (truncated to a DNS label).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars().take(63).collect()
}

/// `/etc/hosts` of a pod's containers (the kubelet's, with `hostAliases`).
pub fn etc_hosts(pod: &Pod) -> String {
    let host = hostname(pod);
    let mut s = String::from(
        "# Kubernetes-managed hosts file (Skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    s.push_str(&format!("127.0.1.1\t{host}\n"));
    for a in pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_ref())
        .into_iter()
        .flatten()
    {
        let names = a.hostnames.clone().unwrap_or_default().join("\t");
        s.push_str(&format!("{}\t{names}\n", a.ip));
    }
    s
}

/// `/etc/resolv.conf`: the pod's `dnsConfig` over the node's own resolver settings (the
/// cluster DNS comes with the networking work).
pub fn resolv_conf(pod: &Pod, node_resolv: &str) -> String {
    let dns = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref());
    let mut servers: Vec<String> = node_resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|v| v.trim().to_string())
        .collect();
    let mut search: Vec<String> = node_resolv
        .lines()
        .filter_map(|l| l.strip_prefix("search"))
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    let mut options: Vec<String> = Vec::new();
    if let Some(d) = dns {
        if let Some(ns) = d.nameservers.as_ref().filter(|n| !n.is_empty()) {
            servers = ns.clone();
        }
        search.extend(d.searches.iter().flatten().cloned());
        for o in d.options.iter().flatten() {
            options.push(match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            });
        }
    }
    let mut s = String::new();
    for n in servers.iter().take(3) {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        let mut base = json!({"name": "c", "image": "x"});
        base.as_object_mut()
            .expect("object")
            .extend(v.as_object().expect("object").clone());
        serde_json::from_value(base).expect("container")
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c"}]});
        s.as_object_mut()
            .expect("object")
            .extend(spec.as_object().expect("object").clone());
        serde_json::from_value(json!({"metadata": {"name": "web-7f"}, "spec": s})).expect("pod")
    }

    fn image(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entry.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_kubernetes() {
        let id = |s: &String| s.clone();
        let img = image(&["/entry"], &["--default"]);
        let cases = [
            (json!({}), Ok(vec!["/entry", "--default"])),
            (json!({"args": ["-v"]}), Ok(vec!["/entry", "-v"])),
            (json!({"command": ["/bin/sh"]}), Ok(vec!["/bin/sh"])),
            (
                json!({"command": ["/bin/sh"], "args": ["-c", "x"]}),
                Ok(vec!["/bin/sh", "-c", "x"]),
            ),
            (json!({"command": []}), Ok(vec!["/entry", "--default"])),
        ];
        for (c, want) in cases {
            let got = argv(&img, &container(c.clone()), id);
            let want: Result<Vec<String>, String> =
                want.map(|v: Vec<&str>| v.into_iter().map(String::from).collect());
            assert_eq!(got, want, "{c}");
        }
        assert!(argv(&ImageConfig::default(), &container(json!({})), id).is_err());
        let expand = |s: &String| s.replace("$(X)", "1");
        assert_eq!(
            argv(&img, &container(json!({"args": ["$(X)"]})), expand).expect("argv"),
            vec!["/entry", "1"]
        );
    }

    #[test]
    fn env_image_first_container_wins() {
        let env = merge_env(
            &["PATH=/bin".into(), "A=image".into(), "B=keep".into()],
            vec![("A".into(), "pod".into()), ("C".into(), "new".into())],
        );
        let want: Vec<(String, String)> =
            [("PATH", "/bin"), ("A", "pod"), ("B", "keep"), ("C", "new")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(env, want);
        assert_eq!(merge_env(&[], vec![])[0].0, "PATH", "a default PATH");
    }

    #[test]
    fn working_dir_order() {
        let mut img = ImageConfig::default();
        assert_eq!(working_dir(&img, &container(json!({}))), "/");
        img.working_dir = "/app".into();
        assert_eq!(working_dir(&img, &container(json!({}))), "/app");
        assert_eq!(
            working_dir(&img, &container(json!({"workingDir": "/w"}))),
            "/w"
        );
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let img = |u: &str| ImageConfig {
            user: u.into(),
            ..Default::default()
        };
        let p = pod(json!({}));
        let u = |pod: &Pod, c: serde_json::Value, i: &ImageConfig| {
            user(pod, &container(c), i, passwd, group).map(|u| (u.uid, u.gid, u.additional_gids))
        };
        assert_eq!(u(&p, json!({}), &img("")), Ok((0, 0, vec![])));
        assert_eq!(u(&p, json!({}), &img("web")), Ok((33, 44, vec![])));
        assert_eq!(u(&p, json!({}), &img("33")), Ok((33, 44, vec![])));
        assert_eq!(u(&p, json!({}), &img("web:staff")), Ok((33, 50, vec![])));
        assert_eq!(
            u(&p, json!({}), &img("1000:1000")),
            Ok((1000, 1000, vec![]))
        );
        assert!(u(&p, json!({}), &img("nobody")).is_err());
        let sc = json!({"securityContext": {"runAsUser": 65534}});
        assert_eq!(u(&p, sc, &img("web")), Ok((65534, 0, vec![])));
        let pp = pod(json!({"securityContext": {"runAsUser": 7, "runAsGroup": 8,
            "supplementalGroups": [9, 5], "fsGroup": 5}}));
        assert_eq!(u(&pp, json!({}), &img("")), Ok((7, 8, vec![5, 9])));
        let nr = pod(json!({"securityContext": {"runAsNonRoot": true}}));
        assert!(u(&nr, json!({}), &img("")).is_err());
        assert!(u(&nr, json!({}), &img("web")).is_ok());
    }

    #[test]
    fn capabilities_and_privileges() {
        let p = pod(json!({}));
        let s = |c: serde_json::Value, allow: bool| security(&p, &container(c), allow);
        let d = s(json!({}), false).expect("default");
        assert_eq!(d.capabilities.len(), DEFAULT_CAPABILITIES.len());
        assert!(!d.no_new_privs && !d.read_only_rootfs && !d.seccomp_default);
        let k = s(
            json!({"securityContext": {"capabilities": {"drop": ["NET_RAW"], "add": ["sys_time", "CAP_NET_ADMIN"]},
                   "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                   "seccompProfile": {"type": "RuntimeDefault"}}}),
            false,
        )
        .expect("custom");
        assert!(!k.capabilities.contains(&"CAP_NET_RAW".to_string()));
        assert!(k.capabilities.contains(&"CAP_SYS_TIME".to_string()));
        assert!(k.capabilities.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(k.no_new_privs && k.read_only_rootfs && k.seccomp_default);
        let none = s(json!({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}), false)
            .expect("drop all");
        assert_eq!(none.capabilities, vec!["CAP_NET_BIND_SERVICE".to_string()]);
        let priv_ = json!({"securityContext": {"privileged": true}});
        let err = s(priv_.clone(), false).expect_err("refused");
        assert!(err.contains("--allow-privileged"), "{err}");
        assert!(s(priv_, true).expect("allowed").privileged);
        assert!(
            s(
                json!({"securityContext": {"seccompProfile": {"type": "Weird"}}}),
                false
            )
            .is_err()
        );
        let pod_level =
            pod(json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}));
        assert!(
            security(&pod_level, &container(json!({})), false)
                .expect("pod")
                .seccomp_default
        );
    }

    #[test]
    fn image_config_parses_oci_and_docker() {
        let c = parse_image_config(
            br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox"],"Cmd":["httpd","-f"],"Env":["PATH=/bin"],"WorkingDir":"/www","User":"65534"}}"#,
        )
        .expect("parses");
        assert_eq!(c.entrypoint, vec!["/bin/busybox"]);
        assert_eq!(c.cmd, vec!["httpd", "-f"]);
        assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/www", "65534"));
        assert_eq!(
            parse_image_config(br#"{"os":"linux"}"#),
            Ok(ImageConfig::default())
        );
        assert!(parse_image_config(b"nope").is_err());
    }

    #[test]
    fn etc_files() {
        let p = pod(
            json!({"hostAliases": [{"ip": "10.0.0.9", "hostnames": ["db", "db.local"]}],
            "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["x.local"], "options": [{"name": "ndots", "value": "2"}]}}),
        );
        let hosts = etc_hosts(&p);
        assert!(hosts.contains("127.0.0.1\tlocalhost"));
        assert!(hosts.contains("\tweb-7f\n"));
        assert!(hosts.contains("10.0.0.9\tdb\tdb.local\n"));
        let r = resolv_conf(&p, "nameserver 9.9.9.9\nsearch lan\n");
        assert_eq!(
            r,
            "nameserver 1.2.3.4\nsearch lan x.local\noptions ndots:2\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({})), "nameserver 9.9.9.9\n"),
            "nameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn localhost_seccomp_profiles_stay_in_the_profile_directory() {
        let p = pod(json!({}));
        let named = |name: serde_json::Value| {
            localhost_profile(
                &p,
                &container(json!({"securityContext": {"seccompProfile":
                    {"type": "Localhost", "localhostProfile": name}}})),
            )
        };
        assert_eq!(named(json!("deny.json")), Ok(Some("deny.json".into())));
        assert_eq!(named(json!("team/a.json")), Ok(Some("team/a.json".into())));
        for bad in ["", "../etc/shadow", "/etc/x.json", "a/../../b"] {
            let err = named(json!(bad)).expect_err(bad);
            assert!(err.contains("must be a relative path"), "{bad}: {err}");
        }
        let pod_level = pod(json!({"securityContext": {"seccompProfile":
            {"type": "Localhost", "localhostProfile": "p.json"}}}));
        assert_eq!(
            localhost_profile(&pod_level, &container(json!({}))),
            Ok(Some("p.json".into()))
        );
        let runtime_default =
            container(json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}));
        assert_eq!(
            localhost_profile(&pod_level, &runtime_default),
            Ok(None),
            "the container's wins"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("deny.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"defaultAction": "SCMP_ACT_NOPE"}"#,
        )
        .unwrap();
        let loaded = load_seccomp_profile(dir.path(), "deny.json").expect("loads");
        assert_eq!(loaded["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(loaded["syscalls"][0]["names"], json!(["mkdir"]));
        let err = load_seccomp_profile(dir.path(), "bad.json").expect_err("invalid");
        assert!(err.contains("is not valid"), "{err}");
        let err = load_seccomp_profile(dir.path(), "missing.json").expect_err("missing");
        assert!(err.starts_with("failed to load seccomp profile"), "{err}");
    }
}
