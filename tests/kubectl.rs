//! A new user's session with the real kubectl and default flags, against the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Lines, Server, example};
use std::time::Duration;

fn field(s: &Server, args: &[&str]) -> String {
    s.kubectl_ok(args).trim().to_string()
}

#[test]
fn kubectl_apply_get_describe_label_scale_patch_delete() {
    let s = Server::start();
    let app = example("examples/control-plane/app.yaml");
    let app = app.to_str().unwrap();

    // apply a multi-document file
    let out = s.kubectl_ok(&["apply", "-f", app]);
    for line in [
        "namespace/demo created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
        "service/web created",
        "pod/tool created",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    let rv1 = field(
        &s,
        &[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );

    // apply again: nothing changes, generation stays
    let out = s.kubectl_ok(&["apply", "-f", app]);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    assert!(out.contains("pod/tool unchanged"), "{out}");
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.metadata.generation}"
            ]
        ),
        "1"
    );
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.metadata.resourceVersion}"
            ]
        ),
        rv1
    );

    // apply a modified copy: changes land, generation bumps
    let modified = std::fs::read_to_string(app)
        .unwrap()
        .replace("replicas: 2", "replicas: 3")
        .replace("greeting: hello", "greeting: bonjour");
    let dir = tempfile::tempdir().unwrap();
    let app2 = dir.path().join("app2.yaml");
    std::fs::write(&app2, modified).unwrap();
    let out = s.kubectl_ok(&["apply", "-f", app2.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas}/{.metadata.generation}"
            ]
        ),
        "3/2"
    );
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "cm",
                "web-config",
                "-o",
                "jsonpath={.data.greeting}"
            ]
        ),
        "bonjour"
    );

    // get prints Kubernetes' columns
    let pods = s.kubectl_ok(&["-n", "demo", "get", "pods"]);
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(pods.lines().nth(1).unwrap().starts_with("tool"), "{pods}");
    assert!(pods.contains("0/1") && pods.contains("Pending"), "{pods}");
    let deploy = s.kubectl_ok(&["-n", "demo", "get", "deploy"]);
    assert!(
        deploy.starts_with("NAME") && deploy.contains("UP-TO-DATE") && deploy.contains("0/3"),
        "{deploy}"
    );
    let svc = s.kubectl_ok(&["-n", "demo", "get", "svc", "web"]);
    assert!(
        svc.contains("CLUSTER-IP") && svc.contains("80/TCP"),
        "{svc}"
    );
    let all = s.kubectl_ok(&["-n", "demo", "get", "all"]);
    assert!(
        all.contains("pod/tool")
            && all.contains("service/web")
            && all.contains("deployment.apps/web"),
        "{all}"
    );
    let wide = s.kubectl_ok(&["-n", "demo", "get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("NODE") && wide.contains("NOMINATED NODE"),
        "{wide}"
    );
    let ns = s.kubectl_ok(&["get", "ns"]);
    assert!(ns.contains("demo") && ns.contains("Active"), "{ns}");
    let rc = s.kubectl_ok(&["get", "runtimeclass"]);
    for class in ["wasm", "oci", "mixed"] {
        assert!(rc.contains(class), "{rc}");
    }

    // -o yaml and describe
    let yaml = s.kubectl_ok(&["-n", "demo", "get", "pod", "tool", "-o", "yaml"]);
    assert!(
        yaml.contains("runtimeClassName: wasm")
            && yaml.contains("phase: Pending")
            && yaml.contains("uid:"),
        "{yaml}"
    );
    let d = s.kubectl_ok(&["-n", "demo", "describe", "pod", "tool"]);
    assert!(
        d.contains("Runtime Class Name:  wasm") && d.contains("Image:") && d.contains("QoS Class:"),
        "{d}"
    );
    let d = s.kubectl_ok(&["-n", "demo", "describe", "deploy", "web"]);
    assert!(
        d.contains("3 desired") && d.contains("RollingUpdateStrategy"),
        "{d}"
    );

    // get -w sees another client's changes
    let mut cmd = s.kubectl_cmd();
    cmd.args(["-n", "demo", "get", "pods", "-w"]);
    let mut watch = Lines::spawn(cmd);
    watch.wait_for("the initial listing", Duration::from_secs(20), |l| {
        l.starts_with("tool")
    });
    s.kubectl_ok(&[
        "-n",
        "demo",
        "run",
        "other",
        "--image=127.0.0.1:5000/other:1",
    ]);
    watch.wait_for("the new pod", Duration::from_secs(20), |l| {
        l.starts_with("other")
    });

    // label, annotate, scale, patch (three kinds)
    s.kubectl_ok(&["-n", "demo", "label", "pod", "tool", "tier=backend"]);
    assert!(
        s.kubectl_ok(&["-n", "demo", "get", "pods", "-l", "tier=backend"])
            .contains("tool")
    );
    assert!(
        !s.kubectl_ok(&["-n", "demo", "get", "pods", "-l", "tier=backend"])
            .contains("other")
    );
    s.kubectl_ok(&["-n", "demo", "annotate", "pod", "tool", "owner=team-a"]);
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "pod",
                "tool",
                "-o",
                "jsonpath={.metadata.annotations.owner}"
            ]
        ),
        "team-a"
    );
    let out = s.kubectl_ok(&["-n", "demo", "scale", "deployment", "web", "--replicas=5"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "5"
    );
    s.kubectl_ok(&["-n", "demo", "patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"127.0.0.1:5000/hello:2"}]}}}}"#]);
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"
            ]
        ),
        "127.0.0.1:5000/hello:2 8080"
    );
    s.kubectl_ok(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ]);
    s.kubectl_ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "web-config",
        "--type=merge",
        "-p",
        r#"{"data":{"extra":"1"}}"#,
    ]);
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "cm",
                "web-config",
                "-o",
                "jsonpath={.data.extra}"
            ]
        ),
        "1"
    );
    s.kubectl_ok(&[
        "-n",
        "demo",
        "set",
        "image",
        "deploy/web",
        "web=127.0.0.1:5000/hello:3",
    ]);
    assert_eq!(
        field(
            &s,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}"
            ]
        ),
        "127.0.0.1:5000/hello:3"
    );

    // a pod spec is immutable: kubectl prints the field cause
    let out = s.kubectl(&[
        "-n",
        "demo",
        "patch",
        "pod",
        "tool",
        "-p",
        r#"{"spec":{"restartPolicy":"Never"}}"#,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The Pod \"tool\" is invalid")
            && err.contains("spec: Forbidden: pod updates may not change fields"),
        "{err}"
    );

    // delete -f and delete namespace
    let out = s.kubectl_ok(&["delete", "-f", app]);
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    assert!(
        s.kubectl_ok(&["get", "ns"])
            .lines()
            .all(|l| !l.starts_with("demo "))
    );
    let out = s.kubectl(&["-n", "demo", "get", "pod", "other"]);
    assert!(!out.status.success(), "the namespace's pods went with it");

    s.kubectl_ok(&["create", "-f", app]);
    let out = s.kubectl_ok(&["delete", "namespace", "demo"]);
    assert!(out.contains("namespace \"demo\" deleted"), "{out}");
    let gone = s.kubectl(&["get", "namespace", "demo"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("namespaces \"demo\" not found"));
    assert!(
        s.kubectl_ok(&["get", "deploy", "-A"]).trim().is_empty()
            || !s.kubectl_ok(&["get", "deploy", "-A"]).contains("web")
    );
}

#[test]
fn kubectl_errors_are_readable() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\nspec:\n  containers:\n  - name: c\n    image: x\n    resources:\n      limits:\n        memory: lots\n",
    )
    .unwrap();
    let out = s.kubectl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The Pod \"Bad_Name\" is invalid"), "{err}");
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    assert!(
        err.contains("spec.containers[0].resources.limits[memory]: Invalid value: \"lots\""),
        "{err}"
    );

    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\nbogus: true\n",
    )
    .unwrap();
    let out = s.kubectl(&["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"bogus\""),
        "{err}"
    );

    let out = s.kubectl(&["get", "statefulsets"]);
    assert!(
        !out.status.success(),
        "kinds Skiff does not serve are not pretended"
    );
}
