#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

/// One row per message shape: `LEVEL SPEC`, then `= ` and the expected `details()`.
/// A `metadata` key in SPEC is taken out as the pod's metadata. Level `r` is restricted
/// over a compliant pod (see `compliant`), so such rows show only what they break.
const CHECKS: &str = r#"
R {"containers": [{"name": "nginx", "image": "nginx"}]}
= allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")
B {"containers": [{"name": "nginx"}]}
=
P {"hostPID": true, "containers": [{"name": "a", "securityContext": {"privileged": true}}]}
=
r {"containers": [{"name": "a"}, {"name": "b", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}], "volumes": [{"name": "v", "configMap": {}}]}
=
B {"hostNetwork": true, "hostPID": true, "hostIPC": true, "containers": [{"name": "a"}]}
= host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)
B {"hostIPC": true, "hostNetwork": false, "containers": [{"name": "a", "securityContext": {"privileged": true}}]}
= host namespaces (hostIPC=true), privileged (container "a" must not set securityContext.privileged=true)
B {"containers": [{"name": "a"}, {"name": "d", "securityContext": {"privileged": true}}, {"name": "e", "securityContext": {"privileged": true}}]}
= privileged (containers "d", "e" must not set securityContext.privileged=true)
# Visit order: init, regular, then ephemeral containers.
B {"ephemeralContainers": [{"name": "x", "securityContext": {"privileged": true}}], "containers": [{"name": "c", "securityContext": {"privileged": true}}], "initContainers": [{"name": "i", "securityContext": {"privileged": true}}]}
= privileged (containers "i", "c", "x" must not set securityContext.privileged=true)
r {"containers": [{"name": "a", "securityContext": {"privileged": true}}]}
= privileged (container "a" must not set securityContext.privileged=true)
B {"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["FOO", "CHOWN", "BAR"], "drop": ["X"]}}}, {"name": "b", "securityContext": {"capabilities": {"add": ["BAZ", "FOO", "CAP_CHOWN"]}}}, {"name": "c", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "KILL"]}}}]}
= non-default capabilities (containers "a", "b" must not include "BAR", "BAZ", "CAP_CHOWN", "FOO" in securityContext.capabilities.add)
r {"containers": [{"name": "a", "securityContext": {"capabilities": {"drop": null, "add": ["FOO"]}}}, {"name": "b", "securityContext": {"capabilities": {"drop": ["all"], "add": ["BAR", "BAZ"]}}}, {"name": "c", "securityContext": {"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}}}, {"name": "d", "securityContext": {"capabilities": null}}]}
= unrestricted capabilities (containers "a", "b", "d" must set securityContext.capabilities.drop=["ALL"]; containers "a", "b", "c" must not include "BAR", "BAZ", "CHOWN", "FOO" in securityContext.capabilities.add)
B {"containers": [{"name": "a"}], "volumes": [{"name": "host", "hostPath": {"path": "/"}}, {"name": "cm", "configMap": {}}]}
= hostPath volumes (volume "host")
B {"containers": [{"name": "a"}], "volumes": [{"name": "a", "hostPath": {}}, {"name": "b", "nfs": {}}, {"name": "c", "hostPath": {}}]}
= hostPath volumes (volumes "a", "c")
r {"containers": [{"name": "a"}], "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}
= restricted volume types (volume "host" uses restricted volume type "hostPath")
r {"containers": [{"name": "a"}], "volumes": [{"name": "a", "nfs": {}}, {"name": "b", "hostPath": {}}, {"name": "c"}, {"name": "d", "hostPath": {}}, {"name": "e", "image": {}}, {"name": "f", "projected": {}, "hostPath": null}]}
= restricted volume types (volumes "a", "b", "c", "d" use restricted volume types "hostPath", "nfs", "unknown")
B {"containers": [{"name": "a", "ports": [{"containerPort": 80}, {"hostPort": 0}]}, {"name": "b", "ports": [{"hostPort": 20}]}]}
= hostPort (container "b" uses hostPort 20)
B {"containers": [{"name": "b", "ports": [{"hostPort": 20}]}, {"name": "c", "ports": [{"hostPort": 20}]}]}
= hostPort (containers "b", "c" use hostPort 20)
B {"containers": [{"name": "b", "ports": [{"hostPort": 20}, {"hostPort": 9}]}, {"name": "c", "ports": [{"hostPort": 8080}, {"hostPort": 10}, {"hostPort": 20}]}]}
= hostPort (containers "b", "c" use hostPorts 10, 20, 8080, 9)
B {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": [{"name": "a"}]}
= forbidden AppArmor profile (pod must not set AppArmor profile type to "Unconfined")
B {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/e": "unconfined", "container.apparmor.security.beta.kubernetes.io/f": "runtime/default", "container.apparmor.security.beta.kubernetes.io/g": "localhost/x", "other": "unconfined"}}, "securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": [{"name": "foo", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, {"name": "ok", "securityContext": {"appArmorProfile": {"type": "Localhost"}}}]}
= forbidden AppArmor profiles (pod and container "foo" and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/e="unconfined"")
B {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/b": "unconfined", "container.apparmor.security.beta.kubernetes.io/a": "x"}}, "containers": [{"name": "a"}]}
= forbidden AppArmor profiles (annotations must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/a="x"", "container.apparmor.security.beta.kubernetes.io/b="unconfined"")
B {"securityContext": {"seLinuxOptions": {"type": "foo", "user": "u", "level": "s0"}}, "containers": [{"name": "e", "securityContext": {"seLinuxOptions": {"type": "bar"}}}, {"name": "f", "securityContext": {"seLinuxOptions": {"role": "r"}}}, {"name": "g", "securityContext": {"seLinuxOptions": {"type": "foo"}}}, {"name": "h", "securityContext": {"seLinuxOptions": {"type": "container_engine_t", "level": "s0:c1"}}}]}
= seLinuxOptions (pod and containers "e", "f", "g" set forbidden securityContext.seLinuxOptions: types "bar", "foo"; user may not be set; role may not be set)
B {"containers": [{"name": "a", "securityContext": {"seLinuxOptions": {"type": "spc_t"}}}]}
= seLinuxOptions (container "a" set forbidden securityContext.seLinuxOptions: type "spc_t")
# hostUsers: false relaxes nothing while the 1.33 feature gate is off.
B {"hostUsers": false, "containers": [{"name": "c", "securityContext": {"procMount": "Default"}}, {"name": "d", "securityContext": {"procMount": "Unmasked"}}, {"name": "e", "securityContext": {"procMount": "other"}}]}
= procMount (containers "d", "e" must not set securityContext.procMount to "Unmasked", "other")
B {"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}, {"name": "d", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}, {"name": "e", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}, {"name": "f"}]}
= seccompProfile (pod and containers "c", "d" must not set securityContext.seccompProfile.type to "Unconfined")
r {"securityContext": {"seccompProfile": null}, "containers": [{"name": "a", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}, {"name": "b"}]}
= seccompProfile (container "a" must not set securityContext.seccompProfile.type to "Unconfined")
r {"securityContext": {"seccompProfile": null}, "containers": [{"name": "a"}, {"name": "b", "securityContext": {"seccompProfile": {"type": "Localhost"}}}]}
= seccompProfile (pod or container "a" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")
r {"securityContext": {"seccompProfile": {"type": "Localhost"}}, "containers": [{"name": "a"}]}
=
B {"securityContext": {"sysctls": [{"name": "kernel.msgmax"}, {"name": "net.ipv4.tcp_rmem"}, {"name": "kernel.msgmax"}, {"name": "net/ipv4/tcp_syncookies"}, {"name": "net.ipv4.tcp_keepalive_time"}]}, "containers": [{"name": "a"}]}
= forbidden sysctls (kernel.msgmax, kernel.msgmax, net/ipv4/tcp_syncookies)
B {"securityContext": {"windowsOptions": {"hostProcess": true}}, "containers": [{"name": "d", "securityContext": {"windowsOptions": {"hostProcess": false}}}, {"name": "e", "securityContext": {"windowsOptions": {"hostProcess": true}}}, {"name": "f", "securityContext": {"windowsOptions": {"hostProcess": true}}}]}
= hostProcess (pod and containers "e", "f" must not set securityContext.windowsOptions.hostProcess=true)
r {"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": true}}, {"name": "b", "securityContext": {"allowPrivilegeEscalation": null}}, {"name": "c"}]}
= allowPrivilegeEscalation != false (containers "a", "b" must set securityContext.allowPrivilegeEscalation=false)
r {"securityContext": {"runAsNonRoot": false}, "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsNonRoot": false}}]}
= runAsNonRoot != true (pod and container "b" must not set securityContext.runAsNonRoot=false)
r {"securityContext": {"runAsNonRoot": null}, "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsNonRoot": true}}, {"name": "c"}]}
= runAsNonRoot != true (pod or containers "a", "c" must set securityContext.runAsNonRoot=true)
r {"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}
= runAsUser=0 (pod must not set runAsUser=0)
r {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "b", "securityContext": {"runAsUser": 1000}}, {"name": "c", "securityContext": {"runAsUser": 0}}, {"name": "d", "securityContext": {"runAsUser": 0}}]}
= runAsUser=0 (containers "c", "d" must not set runAsUser=0)
# Windows skips allowPrivilegeEscalation, capabilities and seccomp, nothing else.
R {"os": {"name": "windows"}, "containers": [{"name": "nginx"}]}
= runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)
R {"os": {"name": "windows"}, "hostNetwork": true, "securityContext": {"runAsNonRoot": true, "windowsOptions": {"hostProcess": true}}, "containers": [{"name": "w"}]}
= host namespaces (hostNetwork=true), hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)
R {"os": {"name": "linux"}, "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}, "containers": [{"name": "l"}]}
= allowPrivilegeEscalation != false (container "l" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "l" must set securityContext.capabilities.drop=["ALL"])
"#;

/// `a` with `b` merged in, objects recursively; a null in `b` unsets.
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                let old = a.remove(&k).unwrap_or(Value::Null);
                a.insert(k, merge(old, v));
            }
            Value::Object(a)
        }
        (_, b) => b,
    }
}

/// `spec` over a restricted-compliant pod: every container drops ALL and forbids
/// privilege escalation, the pod runs as non-root with the runtime's seccomp profile.
fn compliant(spec: Value) -> Value {
    let pod = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}});
    let sc = json!({"securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}});
    let mut spec = merge(pod, spec);
    for c in spec["containers"].as_array_mut().unwrap() {
        *c = merge(sc.clone(), c.take());
    }
    spec
}

#[test]
fn checks_give_kubernetes_messages() {
    let mut lines = CHECKS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    while let Some(row) = lines.next() {
        let want = lines
            .next()
            .unwrap()
            .strip_prefix('=')
            .unwrap()
            .trim_start();
        let (level, pod) = row.split_once(' ').unwrap();
        let mut spec: Value = serde_json::from_str(pod).unwrap();
        let meta = spec.as_object_mut().unwrap().remove("metadata");
        let (level, spec) = match level {
            "P" => (Level::Privileged, spec),
            "B" => (Level::Baseline, spec),
            "R" => (Level::Restricted, spec),
            _ => (Level::Restricted, compliant(spec)),
        };
        let got = check(
            &LevelVersion::latest(level),
            &meta.unwrap_or(json!({})),
            &spec,
        );
        assert_eq!(details(&got), want, "{row}");
    }
}

#[test]
fn pinned_versions_print_as_given_and_check_as_latest() {
    let lv = LevelVersion {
        level: Level::Restricted,
        version: "v1.99".into(),
    };
    let latest = LevelVersion::latest(Level::Restricted);
    let spec = json!({"containers": [{"name": "a"}]});
    assert_eq!(
        check(&lv, &json!({}), &spec),
        check(&latest, &json!({}), &spec)
    );
    assert_eq!(lv.to_string(), "restricted:v1.99");
}

#[test]
fn details_and_reasons_join_violations() {
    let v: Vec<(String, String)> = [("a", "x"), ("b", ""), ("", "y")]
        .map(|(r, d)| (r.to_string(), d.to_string()))
        .into();
    assert_eq!(details(&v), "a (x), b, unknown forbidden reason (y)");
    assert_eq!(reasons(&v), "a, b, unknown forbidden reason");
    assert_eq!(details(&[]), "");
}

/// `KEY=VALUE ...` (keys without the prefix) as a labels object.
fn labels(s: &str) -> Value {
    let pairs = s.split_whitespace().map(|kv| kv.split_once('=').unwrap());
    pairs
        .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), json!(v)))
        .collect()
}

#[test]
fn label_errors_name_the_label_and_value() {
    let bad = labels(
        "enforce=foo enforce-version=1.33 audit=baseline audit-version=v1.0 warn=Restricted warn-version=v1.033",
    );
    let lines: Vec<String> = label_errors(&bad).iter().map(Cause::line).collect();
    let p = "metadata.labels[pod-security.kubernetes.io";
    assert_eq!(
        lines,
        [
            format!(
                "{p}/enforce]: Invalid value: \"foo\": must be one of privileged, baseline, restricted"
            ),
            format!(
                "{p}/enforce-version]: Invalid value: \"1.33\": must be \"latest\" or \"v1.x\""
            ),
            format!(
                "{p}/warn]: Invalid value: \"Restricted\": must be one of privileged, baseline, restricted"
            ),
            format!("{p}/warn-version]: Invalid value: \"v1.033\": must be \"latest\" or \"v1.x\""),
        ]
    );
    assert_eq!(label_errors(&json!({"app": "x"})), []);
    assert_eq!(label_errors(&Value::Null), []);
    for ok in ["latest", "v1.0", "v1.33", "v1.99"] {
        assert_eq!(
            label_errors(&labels(&format!("audit-version={ok}"))),
            [],
            "{ok}"
        );
    }
    for bad in [
        "v2.0",
        "v1.",
        "v1.x",
        "v1.-1",
        "v1.+1",
        "v1.99999999999999999999",
        "Latest",
        "",
    ] {
        assert_eq!(
            label_errors(&labels(&format!("audit-version={bad}"))).len(),
            1,
            "{bad}"
        );
    }
    let typed = json!({"pod-security.kubernetes.io/audit": 1});
    assert_eq!(
        label_errors(&typed)[0].message,
        format!(
            "Invalid value: 1: {}",
            "must be one of privileged, baseline, restricted"
        )
    );
}

/// `DEFAULTS LABELS => ENFORCE AUDIT WARN`; DEFAULTS `d` is Skiff's, `p` has warn
/// pinned at `baseline:v1.30`.
const POLICIES: &str = "
d => baseline:latest privileged:latest privileged:latest
d enforce=restricted => restricted:latest privileged:latest restricted:latest
d enforce=restricted enforce-version=v1.29 => restricted:v1.29 privileged:latest restricted:v1.29
d enforce=restricted enforce-version=v1.29 warn-version=v1.30 => restricted:v1.29 privileged:latest restricted:v1.30
d enforce=restricted warn=baseline => restricted:latest privileged:latest baseline:latest
d enforce=baseline warn=privileged => baseline:latest privileged:latest privileged:latest
d enforce=privileged => privileged:latest privileged:latest privileged:latest
d enforce=foo => restricted:latest privileged:latest privileged:latest
d enforce=foo enforce-version=v1.29 => restricted:v1.29 privileged:latest privileged:latest
d audit=bogus warn=bogus enforce-version=2 audit-version=v1.5 => baseline:latest privileged:v1.5 privileged:latest
d audit=restricted warn-version=v1.3 => baseline:latest restricted:latest privileged:v1.3
d enforce-version=v1.29 => baseline:v1.29 privileged:latest privileged:latest
p => privileged:latest privileged:latest baseline:v1.30
p enforce=baseline => baseline:latest privileged:latest baseline:v1.30
p enforce=restricted enforce-version=v1.2 => restricted:v1.2 privileged:latest restricted:v1.2
p enforce=restricted warn-version=bad => restricted:latest privileged:latest restricted:latest
";

#[test]
fn policy_applies_fallbacks_and_warn_defaulting() {
    let pinned = Defaults {
        enforce: LevelVersion::latest(Level::Privileged),
        audit: LevelVersion::latest(Level::Privileged),
        warn: LevelVersion {
            level: Level::Baseline,
            version: "v1.30".into(),
        },
    };
    for row in POLICIES.lines().filter(|l| !l.is_empty()) {
        let (input, want) = row.split_once(" => ").unwrap();
        let (defaults, set) = input.split_at(1);
        let defaults = if defaults == "p" {
            pinned.clone()
        } else {
            Defaults::default()
        };
        let p = policy(&labels(set), &defaults);
        assert_eq!(
            format!("{} {} {}", p.enforce, p.audit, p.warn),
            want,
            "{row}"
        );
    }
}

/// `SIGNIFICANT PATCH`: PATCH is merged over the base pod spec of the test.
const UPDATES: &str = r#"
false {}
false {"activeDeadlineSeconds": 5, "tolerations": [{}], "securityContext": {"runAsUser": 0}}
false {"containers": [{"name": "a", "image": "nginx:1", "securityContext": {"privileged": true}}]}
false {"containers": [{"name": "renamed", "image": "nginx:1"}]}
false {"ephemeralContainers": []}
true {"containers": [{"name": "a", "image": "nginx:2"}]}
true {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "x"}]}
true {"initContainers": []}
true {"initContainers": [{"name": "i", "image": "alpine"}]}
true {"ephemeralContainers": [{"name": "dbg", "image": "busybox"}, {"name": "dbg2", "image": "busybox"}]}
true {"ephemeralContainers": [{"name": "dbg", "image": "alpine"}]}
"#;

#[test]
fn significant_update_follows_is_significant_pod_update() {
    let base = json!({"initContainers": [{"name": "i", "image": "busybox"}], "containers": [{"name": "a", "image": "nginx:1"}],
                      "ephemeralContainers": [{"name": "dbg", "image": "busybox"}]});
    for row in UPDATES.lines().filter(|l| !l.is_empty()) {
        let (want, patch) = row.split_once(' ').unwrap();
        let new = merge(base.clone(), serde_json::from_str(patch).unwrap());
        assert_eq!(significant_update(&base, &new).to_string(), want, "{row}");
    }
}

#[test]
fn template_of_finds_each_workloads_template() {
    let t = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}});
    let nested = json!({"spec": {"template": t}});
    let rows = [
        ("Deployment", &nested),
        ("ReplicaSet", &nested),
        ("DaemonSet", &nested),
        ("StatefulSet", &nested),
        ("Job", &nested),
        ("ReplicationController", &nested),
        (
            "CronJob",
            &json!({"spec": {"jobTemplate": {"spec": {"template": t}}}}),
        ),
        ("PodTemplate", &json!({"template": t})),
    ];
    for (kind, obj) in rows {
        assert_eq!(
            template_of(kind, obj),
            Some((&t["metadata"], &t["spec"])),
            "{kind}"
        );
    }
    assert_eq!(
        template_of("Deployment", &json!({})),
        Some((&Value::Null, &Value::Null))
    );
    assert_eq!(template_of("Service", &nested), None);
}

#[test]
fn existing_pod_warnings_group_pods_by_reasons() {
    let pod = |name: &str, rs: &[&str]| {
        let v = rs.iter().map(|r| (r.to_string(), "detail".to_string()));
        (name.to_string(), v.collect::<Vec<_>>())
    };
    let web = ["allowPrivilegeEscalation != false", "runAsNonRoot != true"];
    let pods = [
        pod("web-2", &web),
        pod("web-1", &web),
        pod("web-3", &web),
        pod("db", &["runAsUser=0"]),
        pod("clean", &[]),
        pod("z-cache-b", &["hostPort"]),
        pod("z-cache-a", &["hostPort"]),
    ];
    let lv = LevelVersion::latest(Level::Restricted);
    assert_eq!(
        existing_pod_warnings("ns1", &lv, &pods),
        [
            "existing pods in namespace \"ns1\" violate the new PodSecurity enforce level \"restricted:latest\"",
            "db: runAsUser=0",
            "web-1 (and 2 other pods): allowPrivilegeEscalation != false, runAsNonRoot != true",
            "z-cache-a (and 1 other pod): hostPort",
        ]
    );
    assert!(existing_pod_warnings("ns1", &lv, &pods[4..5]).is_empty());
    assert!(existing_pod_warnings("ns1", &lv, &[]).is_empty());
}

/// `OLD NEW CHECK`: whether moving enforce from OLD to NEW checks existing pods.
const CHANGES: &str = "
baseline:latest baseline:latest false
baseline:latest privileged:latest false
restricted:v1.29 privileged:latest false
restricted:latest baseline:latest false
baseline:latest restricted:latest true
privileged:latest baseline:latest true
restricted:latest baseline:v1.29 true
baseline:v1.29 baseline:latest true
";

#[test]
fn enforce_tightened_skips_looser_or_equal_changes() {
    let lv = |s: &str| {
        let (level, version) = s.split_once(':').unwrap();
        LevelVersion {
            level: parse_level(level).unwrap(),
            version: version.into(),
        }
    };
    for row in CHANGES.lines().filter(|l| !l.is_empty()) {
        let [old, new, want] = row.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{row}")
        };
        assert_eq!(
            enforce_tightened(&lv(old), &lv(new)).to_string(),
            want,
            "{row}"
        );
    }
}
