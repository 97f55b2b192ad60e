//! Pod Security admission: the Pod Security Standards (`privileged`, `baseline`,
//! `restricted`) as pure functions over a pod's JSON, with Kubernetes' exact messages.
//!
//! Start at [`policy`] (a namespace's labels to the levels of its three modes) and
//! [`check`] (a pod's `metadata` and `spec` to its violations at one level); [`details`]
//! renders them as the text after `violates PodSecurity "restricted:latest": `.
//! Checks, order and strings follow `k8s.io/pod-security-admission` v0.33 (Kubernetes
//! 1.33): `policy/check_*.go` for the checks, `api/helpers.go` for the labels and
//! `admission/admission.go` for updates and namespace changes.
//!
//! Simplification: every policy version runs the 1.33 checks. A namespace pinned to
//! `v1.N` is printed as `v1.N` but checked as `latest`, so older behaviours (seccomp
//! annotations before v1.19, no `runAsUser` check before v1.23, shorter sysctl and
//! SELinux type lists) are not reproduced. The alpha `UserNamespacesPodSecurityStandards`
//! relaxation for `hostUsers: false` is off, as it is by default in 1.33.
//!
//! ```
//! use serde_json::json;
//! use skiff_api::podsecurity::{Level, LevelVersion, check, details};
//! let lv = LevelVersion::latest(Level::Baseline);
//! let spec = json!({"hostNetwork": true, "containers": [{"name": "a"}]});
//! assert_eq!(details(&check(&lv, &json!({}), &spec)), "host namespaces (hostNetwork=true)");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::validation::Cause;

/// The prefix of the namespace labels that set a policy.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A Pod Security Standard level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Unrestricted: no checks run.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// The label value of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level and the policy version it was asked at (`latest` or `v1.N`), printed as
/// `restricted:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// `latest` or `v1.N`, as the label gave it.
    pub version: String,
}

impl LevelVersion {
    /// `level` at version `latest`.
    pub fn latest(level: Level) -> LevelVersion {
        LevelVersion {
            level,
            version: LATEST.into(),
        }
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// The three modes of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Violations reject the pod.
    pub enforce: LevelVersion,
    /// Violations are recorded in the audit event.
    pub audit: LevelVersion,
    /// Violations are returned as a warning.
    pub warn: LevelVersion,
}

/// Defaults for labels that are absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Used where `enforce` / `enforce-version` are absent.
    pub enforce: LevelVersion,
    /// Used where `audit` / `audit-version` are absent.
    pub audit: LevelVersion,
    /// Used where `warn` / `warn-version` are absent, before warn follows enforce.
    pub warn: LevelVersion,
}

impl Default for Defaults {
    /// Skiff's defaults: enforce `baseline:latest` (Kubernetes' are all privileged, but an
    /// unconfigured cluster should still refuse host access), audit and warn privileged.
    fn default() -> Defaults {
        Defaults {
            enforce: LevelVersion::latest(Level::Baseline),
            audit: LevelVersion::latest(Level::Privileged),
            warn: LevelVersion::latest(Level::Privileged),
        }
    }
}

const LATEST: &str = "latest";

fn parse_level(s: &str) -> Option<Level> {
    [Level::Privileged, Level::Baseline, Level::Restricted]
        .into_iter()
        .find(|l| l.as_str() == s)
}

/// `latest`, or `^v1\.(0|[1-9][0-9]*)$` that fits Go's `int` as `api.ParseVersion` wants.
fn parse_version(s: &str) -> Option<String> {
    let minor = s.strip_prefix("v1.").unwrap_or("");
    let canonical = minor == "0" || !minor.starts_with('0');
    let number = minor.bytes().all(|b| b.is_ascii_digit()) && minor.parse::<i64>().is_ok();
    (s == LATEST || (canonical && number)).then(|| s.to_string())
}

const LEVEL_MSG: &str = "must be one of privileged, baseline, restricted";
const VERSION_MSG: &str = r#"must be "latest" or "v1.x""#;

/// A namespace's labels being read, and the errors found in them so far.
struct Reader<'a> {
    labels: &'a Value,
    errs: Vec<Cause>,
}

impl Reader<'_> {
    /// The label `pod-security.kubernetes.io/{key}` through `parse`: `None` when absent,
    /// `Some(None)` when invalid, in which case its cause is recorded.
    fn get<T>(&mut self, key: &str, parse: fn(&str) -> Option<T>, msg: &str) -> Option<Option<T>> {
        let key = format!("{LABEL_PREFIX}{key}");
        let value = self.labels.get(&key)?;
        let parsed = value.as_str().and_then(parse);
        if parsed.is_none() {
            let field = format!("metadata.labels[{key}]");
            self.errs.push(Cause::invalid(field, value, msg));
        }
        Some(parsed)
    }

    /// Applies the `mode` and `mode-version` labels to `lv`, an invalid level becoming
    /// `fallback`. Returns whether the level label is valid (`None` when absent) and
    /// whether a version label is present.
    fn apply(
        &mut self,
        mode: &str,
        fallback: Level,
        lv: &mut LevelVersion,
    ) -> (Option<bool>, bool) {
        let level = self.get(mode, parse_level, LEVEL_MSG);
        if let Some(l) = level {
            lv.level = l.unwrap_or(fallback);
        }
        let version = self.get(&format!("{mode}-version"), parse_version, VERSION_MSG);
        if let Some(v) = &version {
            lv.version = v.clone().unwrap_or_else(|| LATEST.into());
        }
        (level.map(|l| l.is_some()), version.is_some())
    }
}

/// `api.PolicyToEvaluate`: the policy and the label errors, computed together so the
/// fallbacks and the errors cannot disagree.
fn resolve(labels: &Value, defaults: &Defaults) -> (Policy, Vec<Cause>) {
    let mut r = Reader {
        labels,
        errs: Vec::new(),
    };
    let Defaults {
        mut enforce,
        mut audit,
        mut warn,
    } = defaults.clone();
    // A typo in enforce must not open the namespace up; audit and warn fail open.
    let (enforce_valid, _) = r.apply("enforce", Level::Restricted, &mut enforce);
    r.apply("audit", Level::Privileged, &mut audit);
    let (warn_level, warn_version) = r.apply("warn", Level::Privileged, &mut warn);
    // Whoever sets only `enforce=restricted` should hear what their Deployments will
    // break before their pods are rejected.
    if warn_level.is_none() && enforce_valid == Some(true) && enforce.level > warn.level {
        warn.level = enforce.level;
        if !warn_version {
            warn.version = enforce.version.clone();
        }
    }
    let policy = Policy {
        enforce,
        audit,
        warn,
    };
    (policy, r.errs)
}

/// Label errors of a namespace's labels (its `metadata.labels` object), as Kubernetes
/// reports them: field `metadata.labels[pod-security.kubernetes.io/enforce]`, messages
/// `must be one of privileged, baseline, restricted` and `must be "latest" or "v1.x"`.
pub fn label_errors(labels: &Value) -> Vec<Cause> {
    resolve(labels, &Defaults::default()).1
}

/// The effective policy of a namespace with these labels: invalid labels fall back
/// (enforce to restricted, audit and warn to privileged, versions to latest), missing
/// ones to `defaults`, and without a warn label warn follows a stricter enforce label.
pub fn policy(labels: &Value, defaults: &Defaults) -> Policy {
    resolve(labels, defaults).0
}

/// A violation's reason and detail, rendered `reason (detail)`.
type Violation = (String, String);
/// One check over a pod's metadata and spec: `None` when the pod passes.
type CheckFn = fn(&Value, &Value) -> Option<Violation>;

/// Check order at v1.33: baseline ids sorted, then restricted ids sorted.
const BASELINE: [CheckFn; 11] = [
    app_armor,
    capabilities_baseline,
    host_namespaces,
    host_path_volumes,
    host_ports,
    privileged,
    proc_mount,
    se_linux,
    seccomp_baseline,
    sysctls,
    windows_host_process,
];

/// Restricted replaces `capabilities_baseline`, `hostPathVolumes` and
/// `seccompProfile_baseline` with stricter checks of its own.
const RESTRICTED: [CheckFn; 14] = [
    app_armor,
    host_namespaces,
    host_ports,
    privileged,
    proc_mount,
    se_linux,
    sysctls,
    windows_host_process,
    allow_privilege_escalation,
    capabilities_restricted,
    restricted_volumes,
    run_as_non_root,
    run_as_user,
    seccomp_restricted,
];

/// The violations of a pod (its `metadata` and `spec` objects) at `lv`, as (reason,
/// detail) pairs in check order; empty means allowed. Every version runs the 1.33
/// checks (see the module doc).
pub fn check(lv: &LevelVersion, metadata: &Value, spec: &Value) -> Vec<(String, String)> {
    let checks: &[CheckFn] = match lv.level {
        Level::Privileged => &[],
        Level::Baseline => &BASELINE,
        Level::Restricted => &RESTRICTED,
    };
    checks.iter().filter_map(|c| c(metadata, spec)).collect()
}

fn reason(r: &str) -> &str {
    if r.is_empty() {
        "unknown forbidden reason"
    } else {
        r
    }
}

/// `R1 (D1), R2 (D2)`, the detail and its parentheses omitted when empty.
pub fn details(violations: &[(String, String)]) -> String {
    let parts = violations.iter().map(|(r, d)| match d.as_str() {
        "" => reason(r).to_string(),
        d => format!("{} ({d})", reason(r)),
    });
    parts.collect::<Vec<_>>().join(", ")
}

/// `R1, R2`: the reasons only, as the namespace label warnings list them.
pub fn reasons(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(r, _)| reason(r))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- JSON access. Go's nil pointer is an absent key or a JSON null here.

fn path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .try_fold(v, |v, k| v.get(k).filter(|x| !x.is_null()))
}

fn is_true(v: &Value, keys: &[&str]) -> bool {
    path(v, keys).and_then(Value::as_bool) == Some(true)
}

fn text<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    path(v, keys).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, keys: &[&str]) -> &'a [Value] {
    path(v, keys)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name(v: &Value) -> &str {
    text(v, &["name"])
}

/// `visitContainers`: init containers, containers, then ephemeral containers; every
/// per-container check covers all three.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|k| list(spec, &[k]))
}

/// The names of the containers that satisfy `pred`, in visit order.
fn matching(spec: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&str> {
    containers(spec).filter(|c| pred(c)).map(name).collect()
}

/// The containers for which `bad` yields values, and the sorted union of those values.
fn collect<'a, T: Ord, I: IntoIterator<Item = T>>(
    spec: &'a Value,
    bad: impl Fn(&'a Value) -> I,
) -> (Vec<&'a str>, BTreeSet<T>) {
    let (mut names, mut all) = (Vec::new(), BTreeSet::new());
    for c in containers(spec) {
        let values: Vec<T> = bad(c).into_iter().collect();
        if !values.is_empty() {
            names.push(name(c));
            all.extend(values);
        }
    }
    (names, all)
}

fn is_windows(spec: &Value) -> bool {
    text(spec, &["os", "name"]) == "windows"
}

// ---- Message helpers, as in the policy package.

/// `Some((reason, format!(detail...)))`: a failed check, as Go's `CheckResult` literal.
macro_rules! found {
    ($reason:expr, $($detail:tt)+) => {
        Some(($reason.to_string(), format!($($detail)+)))
    };
}

/// `joinQuote`: `"a", "b"`.
fn joinquote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items
        .into_iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

/// `container "a"` or `containers "a", "b"`; `None` for no containers.
fn phrase(names: &[&str]) -> Option<String> {
    let word = plural("container", "containers", names.len());
    (!names.is_empty()).then(|| format!("{word} {}", joinquote(names)))
}

/// Who set a bad value: `pod`, then the containers.
fn setters(pod: bool, names: &[&str]) -> Vec<String> {
    pod.then(|| "pod".to_string())
        .into_iter()
        .chain(phrase(names))
        .collect()
}

/// The setters joined with ` and `; `None` when nobody set a bad value.
fn and(who: Vec<String>) -> Option<String> {
    (!who.is_empty()).then(|| who.join(" and "))
}

/// Whether `word` is one of the space-separated `words`.
fn one_of(words: &str, word: &str) -> bool {
    words.split(' ').any(|w| w == word)
}

// ---- Baseline checks.

/// The forbidden AppArmor profile type of a pod or container, if it sets one.
fn apparmor_type(v: &Value) -> Option<&str> {
    let t = text(path(v, &["securityContext", "appArmorProfile"])?, &["type"]);
    (!one_of("RuntimeDefault Localhost", t)).then_some(t)
}

fn app_armor(meta: &Value, spec: &Value) -> Option<Violation> {
    let pod = apparmor_type(spec);
    let (names, mut types) = collect(spec, apparmor_type);
    types.extend(pod);
    let annotations = path(meta, &["annotations"])
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    let mut notes: Vec<String> = annotations
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .filter(|(_, v)| !v.is_empty() && *v != "runtime/default" && !v.starts_with("localhost/"))
        // Rust's `{:?}` quotes as Go's `%q` does, short of control characters.
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    notes.sort();
    let mut who = setters(pod.is_some(), &names);
    if !notes.is_empty() {
        who.push(plural("annotation", "annotations", notes.len()).to_string());
    }
    let who = and(who)?;
    let bad: Vec<String> = types.into_iter().map(String::from).chain(notes).collect();
    let n = bad.len();
    let reason = plural(
        "forbidden AppArmor profile",
        "forbidden AppArmor profiles",
        n,
    );
    let bad = joinquote(&bad);
    found!(reason, "{who} must not set AppArmor profile type to {bad}")
}

/// `C must not include CAPS in ...` for the containers adding capabilities outside
/// `allowed`; `None` when none does.
fn added_caps<'a>(spec: &'a Value, allowed: &str) -> Option<String> {
    let adds = |c: &'a Value| list(c, &["securityContext", "capabilities", "add"]);
    let (names, caps) = collect(spec, |c| {
        adds(c)
            .iter()
            .map(|v| v.as_str().unwrap_or(""))
            .filter(|a| !one_of(allowed, a))
    });
    let caps = joinquote(caps);
    let who = phrase(&names)?;
    Some(format!(
        "{who} must not include {caps} in securityContext.capabilities.add"
    ))
}

fn capabilities_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    const DEFAULT: &str = "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT";
    found!("non-default capabilities", "{}", added_caps(spec, DEFAULT)?)
}

fn host_namespaces(_: &Value, spec: &Value) -> Option<Violation> {
    let on = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| is_true(spec, &[k]));
    let set: Vec<String> = on.map(|k| format!("{k}=true")).collect();
    if set.is_empty() {
        return None;
    }
    found!("host namespaces", "{}", set.join(", "))
}

fn host_path_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    let vols: Vec<&str> = list(spec, &["volumes"])
        .iter()
        .filter(|v| path(v, &["hostPath"]).is_some())
        .map(name)
        .collect();
    if vols.is_empty() {
        return None;
    }
    let word = plural("volume", "volumes", vols.len());
    found!("hostPath volumes", "{word} {}", joinquote(&vols))
}

fn host_ports(_: &Value, spec: &Value) -> Option<Violation> {
    let bound = |c| {
        list(c, &["ports"])
            .iter()
            .filter_map(|p| p.get("hostPort")?.as_i64())
    };
    // Ports are a set of decimal strings, so they sort as strings: 10, 20, 8080, 9.
    let (names, ports) = collect(spec, |c| {
        bound(c).filter(|p| *p != 0).map(|p| p.to_string())
    });
    let who = phrase(&names)?;
    let verb = plural("uses", "use", names.len());
    let noun = plural("hostPort", "hostPorts", ports.len());
    let ports = ports.into_iter().collect::<Vec<_>>().join(", ");
    found!("hostPort", "{who} {verb} {noun} {ports}")
}

fn privileged(_: &Value, spec: &Value) -> Option<Violation> {
    let who = phrase(&matching(spec, |c| {
        is_true(c, &["securityContext", "privileged"])
    }))?;
    found!(
        "privileged",
        "{who} must not set securityContext.privileged=true"
    )
}

fn proc_mount(_: &Value, spec: &Value) -> Option<Violation> {
    let bad = |c| {
        path(c, &["securityContext", "procMount"])
            .map(|t| t.as_str().unwrap_or(""))
            .filter(|t| *t != "Default")
    };
    let (names, types) = collect(spec, bad);
    let (who, types) = (phrase(&names)?, joinquote(types));
    found!(
        "procMount",
        "{who} must not set securityContext.procMount to {types}"
    )
}

/// The forbidden parts of a pod's or container's seLinuxOptions, if any: a bad type,
/// whether `user` is set, whether `role` is set.
fn selinux_bad(v: &Value) -> Option<(Option<&str>, bool, bool)> {
    const TYPES: &str = "container_t container_init_t container_kvm_t container_engine_t";
    let o = path(v, &["securityContext", "seLinuxOptions"])?;
    let t = text(o, &["type"]);
    let bad = (
        Some(t).filter(|t| !t.is_empty() && !one_of(TYPES, t)),
        !text(o, &["user"]).is_empty(),
        !text(o, &["role"]).is_empty(),
    );
    (bad != (None, false, false)).then_some(bad)
}

fn se_linux(_: &Value, spec: &Value) -> Option<Violation> {
    let pod = selinux_bad(spec);
    let judged: Vec<(&str, _)> = containers(spec)
        .filter_map(|c| Some((name(c), selinux_bad(c)?)))
        .collect();
    let names: Vec<&str> = judged.iter().map(|(n, _)| *n).collect();
    let who = and(setters(pod.is_some(), &names))?;
    let all: Vec<_> = pod
        .into_iter()
        .chain(judged.into_iter().map(|(_, j)| j))
        .collect();
    let types: BTreeSet<&str> = all.iter().filter_map(|j| j.0).collect();
    let mut what = Vec::new();
    if !types.is_empty() {
        what.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            joinquote(&types)
        ));
    }
    if all.iter().any(|j| j.1) {
        what.push("user may not be set".to_string());
    }
    if all.iter().any(|j| j.2) {
        what.push("role may not be set".to_string());
    }
    let what = what.join("; ");
    found!(
        "seLinuxOptions",
        "{who} set forbidden securityContext.seLinuxOptions: {what}"
    )
}

/// The seccomp profile type of a pod or container, if it sets a profile.
fn seccomp_type(v: &Value) -> Option<&str> {
    path(v, &["securityContext", "seccompProfile"]).map(|p| text(p, &["type"]))
}

fn seccomp_bad(v: &Value) -> Option<&str> {
    seccomp_type(v).filter(|t| !one_of("RuntimeDefault Localhost", t))
}

/// The explicit seccomp violation both levels share: a profile of a forbidden type.
fn seccomp_explicit(spec: &Value) -> Option<Violation> {
    let pod = seccomp_bad(spec);
    let (names, mut types) = collect(spec, seccomp_bad);
    types.extend(pod);
    let (who, types) = (and(setters(pod.is_some(), &names))?, joinquote(types));
    found!(
        "seccompProfile",
        "{who} must not set securityContext.seccompProfile.type to {types}"
    )
}

fn seccomp_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    seccomp_explicit(spec)
}

fn sysctls(_: &Value, spec: &Value) -> Option<Violation> {
    const SAFE: &str = "kernel.shm_rmid_forced net.ipv4.ip_local_port_range net.ipv4.tcp_syncookies \
        net.ipv4.ping_group_range net.ipv4.ip_unprivileged_port_start net.ipv4.ip_local_reserved_ports \
        net.ipv4.tcp_keepalive_time net.ipv4.tcp_fin_timeout net.ipv4.tcp_keepalive_intvl \
        net.ipv4.tcp_keepalive_probes net.ipv4.tcp_rmem net.ipv4.tcp_wmem";
    // Spec order, unquoted, duplicates kept, as upstream prints them.
    let bad: Vec<&str> = list(spec, &["securityContext", "sysctls"])
        .iter()
        .map(name)
        .filter(|n| !one_of(SAFE, n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    found!("forbidden sysctls", "{}", bad.join(", "))
}

fn windows_host_process(_: &Value, spec: &Value) -> Option<Violation> {
    let on = |v: &Value| is_true(v, &["securityContext", "windowsOptions", "hostProcess"]);
    let who = and(setters(on(spec), &matching(spec, on)))?;
    found!(
        "hostProcess",
        "{who} must not set securityContext.windowsOptions.hostProcess=true"
    )
}

// ---- Restricted checks. Three of them skip Windows pods, which have no such knobs.

fn allow_privilege_escalation(_: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let key = ["securityContext", "allowPrivilegeEscalation"];
    let who = phrase(&matching(spec, |c| {
        path(c, &key).and_then(Value::as_bool) != Some(false)
    }))?;
    let reason = "allowPrivilegeEscalation != false";
    found!(
        reason,
        "{who} must set securityContext.allowPrivilegeEscalation=false"
    )
}

fn capabilities_restricted(_: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let no_drop = matching(spec, |c| {
        !list(c, &["securityContext", "capabilities", "drop"])
            .iter()
            .any(|d| d == "ALL")
    });
    let drop = phrase(&no_drop)
        .map(|who| format!("{who} must set securityContext.capabilities.drop=[\"ALL\"]"));
    let parts: Vec<String> = drop
        .into_iter()
        .chain(added_caps(spec, "NET_BIND_SERVICE"))
        .collect();
    if parts.is_empty() {
        return None;
    }
    found!("unrestricted capabilities", "{}", parts.join("; "))
}

fn restricted_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    const ALLOWED: &str =
        "configMap csi downwardAPI emptyDir ephemeral image persistentVolumeClaim projected secret";
    const NAMED: &str = "hostPath gcePersistentDisk awsElasticBlockStore gitRepo nfs iscsi glusterfs rbd flexVolume \
        cinder cephfs flocker fc azureFile vsphereVolume quobyte azureDisk photonPersistentDisk portworxVolume scaleIO storageos";
    let has = |v: &Value, k: &&str| path(v, &[k]).is_some();
    let bad: Vec<&Value> = list(spec, &["volumes"])
        .iter()
        .filter(|v| !ALLOWED.split(' ').any(|k| has(v, &k)))
        .collect();
    let types: BTreeSet<&str> = bad
        .iter()
        .map(|v| NAMED.split(' ').find(|k| has(v, k)).unwrap_or("unknown"))
        .collect();
    let (n, t) = (bad.len(), types.len());
    let what = format!(
        "{} {}",
        plural("volume", "volumes", n),
        joinquote(bad.iter().map(|v| name(v)))
    );
    let uses = plural("uses", "use", n);
    let kind = plural("restricted volume type", "restricted volume types", t);
    if n == 0 {
        return None;
    }
    found!(
        "restricted volume types",
        "{what} {uses} {kind} {}",
        joinquote(types)
    )
}

fn run_as_non_root(_: &Value, spec: &Value) -> Option<Violation> {
    let key = ["securityContext", "runAsNonRoot"];
    let pod = path(spec, &key).and_then(Value::as_bool);
    // An explicit false anywhere is the more useful message, so it wins.
    let explicit = matching(spec, |c| {
        path(c, &key).is_some_and(|v| v.as_bool() != Some(true))
    });
    if let Some(who) = and(setters(pod == Some(false), &explicit)) {
        return found!(
            "runAsNonRoot != true",
            "{who} must not set securityContext.runAsNonRoot=false"
        );
    }
    let implicit = matching(spec, |c| path(c, &key).is_none() && pod != Some(true));
    let who = phrase(&implicit)?;
    found!(
        "runAsNonRoot != true",
        "pod or {who} must set securityContext.runAsNonRoot=true"
    )
}

fn run_as_user(_: &Value, spec: &Value) -> Option<Violation> {
    let root =
        |v: &Value| path(v, &["securityContext", "runAsUser"]).and_then(Value::as_i64) == Some(0);
    let who = and(setters(root(spec), &matching(spec, root)))?;
    found!("runAsUser=0", "{who} must not set runAsUser=0")
}

fn seccomp_restricted(_: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    if let Some(v) = seccomp_explicit(spec) {
        return Some(v);
    }
    // Past the explicit check a pod-level profile is a valid one, and covers everyone.
    let pod_set = seccomp_type(spec).is_some();
    let who = phrase(&matching(spec, |c| !pod_set && seccomp_type(c).is_none()))?;
    let types = r#""RuntimeDefault" or "Localhost""#;
    found!(
        "seccompProfile",
        "pod or {who} must set securityContext.seccompProfile.type to {types}"
    )
}

// ---- Updates, workloads and namespace changes.

/// Whether a pod update must be evaluated again (`isSignificantPodUpdate`): the number
/// of containers or init containers changed, an image changed by index, or an ephemeral
/// container was added or its image changed. Metadata changes never count.
pub fn significant_update(old_spec: &Value, new_spec: &Value) -> bool {
    // Go compares strings, so an absent image equals an empty one.
    fn image(c: &Value) -> &str {
        text(c, &["image"])
    }
    let changed = |k: &str| {
        let (old, new) = (list(old_spec, &[k]), list(new_spec, &[k]));
        old.len() != new.len() || old.iter().zip(new).any(|(o, n)| image(o) != image(n))
    };
    let old = list(old_spec, &["ephemeralContainers"]);
    let ephemeral = |n: &Value| {
        old.iter()
            .find(|o| name(o) == name(n))
            .is_none_or(|o| image(o) != image(n))
    };
    changed("containers")
        || changed("initContainers")
        || list(new_spec, &["ephemeralContainers"])
            .iter()
            .any(ephemeral)
}

/// Stands in for a template's missing `metadata` or `spec`, as Go's zero value does.
static NULL: Value = Value::Null;

/// The pod template (metadata, spec) of a workload object of `kind`, from
/// `spec.template` (`spec.jobTemplate.spec.template` for a CronJob, `template` for a
/// PodTemplate); `None` for kinds without a pod template. Missing parts come back null.
pub fn template_of<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let keys: &[&str] = match kind {
        "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "PodTemplate" => &["template"],
        _ => return None,
    };
    let t = path(obj, keys).unwrap_or(&NULL);
    Some((
        path(t, &["metadata"]).unwrap_or(&NULL),
        path(t, &["spec"]).unwrap_or(&NULL),
    ))
}

/// The warnings for existing pods when a namespace's enforce level changes: the
/// `existing pods in namespace "NS" violate ...` line, then one `POD (and K other pods):
/// REASONS` line per distinct reason string, POD the smallest name with it. Input: each
/// pod's name and violations at `lv`; empty when no pod violates.
pub fn existing_pod_warnings(
    ns: &str,
    lv: &LevelVersion,
    pods: &[(String, Vec<(String, String)>)],
) -> Vec<String> {
    let mut by_reasons: BTreeMap<String, (&str, usize)> = BTreeMap::new();
    for (pod, violations) in pods.iter().filter(|(_, v)| !v.is_empty()) {
        let (first, count) = by_reasons.entry(reasons(violations)).or_insert((pod, 0));
        *first = (*first).min(pod.as_str());
        *count += 1;
    }
    let mut lines: Vec<String> = by_reasons
        .into_iter()
        .map(|(r, (pod, n))| match n {
            1 => format!("{pod}: {r}"),
            2 => format!("{pod} (and 1 other pod): {r}"),
            _ => format!("{pod} (and {} other pods): {r}", n - 1),
        })
        .collect();
    // Upstream sorts the decorated lines, so the pod name leads the order.
    lines.sort();
    if !lines.is_empty() {
        lines.insert(0, format!("existing pods in namespace \"{ns}\" violate the new PodSecurity enforce level \"{lv}\""));
    }
    lines
}

/// Whether the enforce change from `old` to `new` needs existing pods checked: not when
/// nothing changed, when `new` is privileged, or at the same version when not stricter.
pub fn enforce_tightened(old: &LevelVersion, new: &LevelVersion) -> bool {
    let looser = old.version == new.version && new.level <= old.level;
    !(old == new || new.level == Level::Privileged || looser)
}

#[cfg(test)]
mod tests;
