//! Pod Security admission as kubectl users meet it: new namespaces enforce `baseline`
//! unless labelled otherwise, `restricted` refuses hostPath and root pods with
//! Kubernetes' messages, `warn` admits with a warning kubectl prints, workloads are warned
//! and never refused, bad labels are refused, and tightening a namespace lists the pods
//! that would no longer be admitted.

#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use std::io::Write;
use std::process::Output;

fn apply(s: &Server, ns: &str, yaml: &str) -> Output {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl(&["-n", ns, "apply", "-f", f.path().to_str().unwrap()])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const HOSTPATH: &str = "apiVersion: v1
kind: Pod
metadata: {name: hostpath}
spec:
  volumes: [{name: host, hostPath: {path: /etc}}]
  containers: [{name: app, image: registry.local/app:1, volumeMounts: [{name: host, mountPath: /host}]}]
";

const ROOT: &str = "apiVersion: v1
kind: Pod
metadata: {name: root}
spec:
  securityContext: {runAsUser: 0, runAsNonRoot: false, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: app
    image: registry.local/app:1
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
";

const RESTRICTED_OK: &str = "apiVersion: v1
kind: Pod
metadata: {name: tidy}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: app
    image: registry.local/app:1
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
";

#[tokio::test]
async fn restricted_refuses_baseline_by_default_and_warn_only_warns() {
    let s = Server::start();
    // A new namespace enforces baseline; the default namespace stays privileged.
    s.kubectl_ok(&["create", "namespace", "locked"]);
    let labels = s.kubectl_ok(&["get", "namespace", "locked", "--show-labels"]);
    assert!(
        labels.contains("pod-security.kubernetes.io/enforce=baseline"),
        "{labels}"
    );
    let out = apply(&s, "locked", HOSTPATH);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pods \"hostpath\" is forbidden: violates PodSecurity \"baseline:latest\": hostPath volumes (volume \"host\")"),
        "{}",
        text(&out)
    );
    let out = apply(&s, "default", HOSTPATH);
    assert!(out.status.success(), "{}", text(&out));

    // Restricted.
    s.kubectl_ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    ]);
    let out = apply(&s, "locked", HOSTPATH);
    let msg = text(&out);
    assert!(!out.status.success());
    assert!(
        msg.contains("violates PodSecurity \"restricted:latest\""),
        "{msg}"
    );
    assert!(
        msg.contains(
            "restricted volume types (volume \"host\" uses restricted volume type \"hostPath\")"
        ),
        "{msg}"
    );
    assert!(msg.contains("allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false)"), "{msg}");
    let out = apply(&s, "locked", ROOT);
    let msg = text(&out);
    assert!(!out.status.success());
    assert!(
        msg.contains("pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false), runAsUser=0 (pod must not set runAsUser=0)"),
        "{msg}"
    );
    let out = apply(&s, "locked", RESTRICTED_OK);
    assert!(out.status.success(), "{}", text(&out));
    // Workloads are warned (warn follows a stricter enforce), not refused.
    let deploy = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.local/web:1}]}
";
    let out = apply(&s, "locked", deploy);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false)"),
        "{}",
        text(&out)
    );

    // Warn mode admits and warns.
    let ns = "apiVersion: v1
kind: Namespace
metadata:
  name: warned
  labels: {pod-security.kubernetes.io/enforce: privileged, pod-security.kubernetes.io/warn: restricted}
";
    let out = apply(&s, "default", ns);
    assert!(out.status.success(), "{}", text(&out));
    let out = apply(&s, "warned", HOSTPATH);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Warning: would violate PodSecurity \"restricted:latest\":"),
        "{}",
        text(&out)
    );
    // Tightening it lists the pods that would no longer be admitted.
    let out = s.kubectl(&[
        "label",
        "namespace",
        "warned",
        "pod-security.kubernetes.io/enforce=baseline",
        "--overwrite",
    ]);
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    assert!(msg.contains("Warning: existing pods in namespace \"warned\" violate the new PodSecurity enforce level \"baseline:latest\""), "{msg}");
    assert!(msg.contains("Warning: hostpath: hostPath volumes"), "{msg}");

    // Labels that are not levels are refused.
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: typo\n  labels: {pod-security.kubernetes.io/enforce: strict}\n";
    let out = apply(&s, "default", bad);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn the_default_level_is_a_flag() {
    let s = Server::start_with(&[
        "--no-scheduler",
        "--no-controllers",
        "--pod-security-default",
        "restricted",
    ]);
    s.kubectl_ok(&["create", "namespace", "strict"]);
    let out = apply(&s, "strict", ROOT);
    assert!(
        text(&out).contains("violates PodSecurity \"restricted:latest\""),
        "{}",
        text(&out)
    );
    let s = Server::start_with(&[
        "--no-scheduler",
        "--no-controllers",
        "--pod-security-default",
        "privileged",
    ]);
    s.kubectl_ok(&["create", "namespace", "open"]);
    let labels = s.kubectl_ok(&["get", "namespace", "open", "--show-labels"]);
    assert!(!labels.contains("pod-security"), "{labels}");
    let out = apply(&s, "open", HOSTPATH);
    assert!(out.status.success(), "{}", text(&out));
}
