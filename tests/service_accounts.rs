//! ServiceAccounts end to end: every namespace gets `default` and the cluster CA, a Wasm
//! pod finds its token, CA and namespace where client libraries look
//! (`/var/run/secrets/kubernetes.io/serviceaccount`), the token acts with exactly the
//! RBAC its ServiceAccount has, and it dies with the pod. `kubectl create token` issues
//! tokens that expire.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Registry, Server, kube_client};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::wait::await_condition;
use std::io::Write;
use std::time::Duration;

/// Prints `== NAME` and the contents of `token`, `namespace` and `ca.crt` in preopen 3.
const PRINT_SA_FILES: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "token")
  (data (i32.const 110) "namespace")
  (data (i32.const 120) "ca.crt")
  (data (i32.const 130) "== ")
  (data (i32.const 140) "\n")
  (func $out (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $show (param $name i32) (param $len i32)
    (local $fd i32) (local $n i32)
    (call $out (i32.const 130) (i32.const 3))
    (call $out (local.get $name) (local.get $len))
    (call $out (i32.const 140) (i32.const 1))
    (if (call $open (i32.const 3) (i32.const 0) (local.get $name) (local.get $len)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $exit (i32.const 7))))
    (local.set $fd (i32.load (i32.const 200)))
    (block $done
      (loop $more
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.const 8192))
        (if (call $read (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24))
          (then (call $exit (i32.const 8))))
        (local.set $n (i32.load (i32.const 24)))
        (br_if $done (i32.eqz (local.get $n)))
        (call $out (i32.const 1024) (local.get $n))
        (br $more)))
    (call $out (i32.const 140) (i32.const 1)))
  (func (export "_start")
    (call $show (i32.const 100) (i32.const 5))
    (call $show (i32.const 110) (i32.const 9))
    (call $show (i32.const 120) (i32.const 6))
    (call $exit (i32.const 0))))
"#;

fn apply(s: &Server, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    s.kubectl_ok(&["apply", "-f", f.path().to_str().unwrap()]);
}

/// The section after `== name` in a guest's output.
fn section(out: &str, name: &str) -> String {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no {name} in {out:?}"))
        + name.len()
        + 4;
    let rest = &out[start..];
    let end = rest.find("\n== ").unwrap_or(rest.len());
    rest[..end].trim_end_matches('\n').to_string()
}

async fn status_with(s: &Server, token: &str, path: &str) -> u16 {
    s.http()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_pod_calls_the_api_as_its_service_account_until_it_is_deleted() {
    let reg = Registry::start();
    let image = reg.push_wat(PRINT_SA_FILES, "sa/print:1");
    let s = Server::start_node("sa-node", &[]);
    let client = kube_client(&s).await;
    // The controllers give the namespace its ServiceAccount and the cluster CA.
    let wait = Duration::from_secs(60);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    tokio::time::timeout(
        wait,
        await_condition(sas, "default", |x: Option<&ServiceAccount>| x.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    tokio::time::timeout(
        wait,
        await_condition(cms, "kube-root-ca.crt", |x: Option<&ConfigMap>| x.is_some()),
    )
    .await
    .unwrap()
    .unwrap();

    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sa-reader}}\nspec:\n  runtimeClassName: wasm\n  restartPolicy: Never\n  containers:\n  - {{name: app, image: {image}}}\n"
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods.get("sa-reader").await.unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let vol = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .unwrap();
    assert!(vol.projected.is_some(), "{vol:?}");
    let done = tokio::time::timeout(
        wait,
        await_condition(pods.clone(), "sa-reader", |p: Option<&Pod>| {
            matches!(
                p.and_then(|p| p.status.as_ref()?.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        }),
    )
    .await;
    let pod = pods.get("sa-reader").await.unwrap();
    assert!(done.is_ok(), "{:#?}", pod.status);
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded"),
        "{:#?}",
        pod.status
    );
    let out = s.kubectl_ok(&["logs", "sa-reader"]);
    let token = section(&out, "token");
    assert_eq!(section(&out, "namespace"), "default");
    let ca = section(&out, "ca.crt");
    assert_eq!(ca.trim(), String::from_utf8(s.ca_pem()).unwrap().trim());
    assert!(token.starts_with("eyJ"), "{token}");

    // The token is the ServiceAccount: nothing until a binding says so.
    let pods_path = "/api/v1/namespaces/default/pods";
    assert_eq!(status_with(&s, &token, pods_path).await, 403);
    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    assert_eq!(status_with(&s, &token, pods_path).await, 200);
    assert_eq!(
        status_with(&s, &token, "/api/v1/namespaces/default/secrets").await,
        403
    );
    let who = s
        .http()
        .post(s.url("/apis/authentication.k8s.io/v1/selfsubjectreviews"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "sa-reader"
    );

    // Bound to the pod: gone with it.
    pods.delete("sa-reader", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        wait,
        await_condition(pods.clone(), "sa-reader", |p: Option<&Pod>| p.is_none()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status_with(&s, &token, pods_path).await, 401);
}

#[tokio::test]
async fn kubectl_create_token_issues_tokens_for_a_service_account() {
    let s = Server::start_with(&[]);
    s.kubectl_ok(&["create", "namespace", "apps"]);
    s.kubectl_ok(&["-n", "apps", "create", "serviceaccount", "builder"]);
    let token = s.kubectl_ok(&[
        "-n",
        "apps",
        "create",
        "token",
        "builder",
        "--duration",
        "15m",
    ]);
    let token = token.trim();
    s.kubectl_ok(&[
        "-n",
        "apps",
        "create",
        "rolebinding",
        "b",
        "--clusterrole=edit",
        "--serviceaccount=apps:builder",
    ]);
    assert_eq!(
        status_with(&s, token, "/api/v1/namespaces/apps/secrets").await,
        200
    );
    assert_eq!(
        status_with(&s, token, "/api/v1/namespaces/default/secrets").await,
        403
    );
    // Too short a lifetime is refused with Kubernetes' message.
    let out = s.kubectl(&[
        "-n",
        "apps",
        "create",
        "token",
        "builder",
        "--duration",
        "1m",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    // Deleting the ServiceAccount kills its tokens, even if one of that name returns.
    s.kubectl_ok(&["-n", "apps", "delete", "serviceaccount", "builder"]);
    s.kubectl_ok(&["-n", "apps", "create", "serviceaccount", "builder"]);
    assert_eq!(
        status_with(&s, token, "/api/v1/namespaces/apps/secrets").await,
        401
    );
    // A token nobody signed is no token.
    let forged = format!("{}.{}.AAAA", "eyJhbGciOiJFUzI1NiJ9", "eyJzdWIiOiJ4In0");
    assert_eq!(
        status_with(&s, &forged, "/api/v1/namespaces/apps/secrets").await,
        401
    );
}
