//! EndpointSlices and Endpoints against the real server and its controllers: a Service's
//! pods listed as their addresses, readiness and deletion change, seen through kube-rs
//! and kubectl. The pods are bound to a node that does not run (no agent), and the test
//! writes their status as a node would, so every transition is the test's to make.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, kube_client};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

const SELECTED: &str = "kubernetes.io/service-name=web";

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "edge-a", "containers": [{"name": "app", "image": "example/web:1",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .unwrap()
}

/// Writes the pod's status as its node would: running at `ip`, ready or not.
async fn running(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// (address, ready, serving, terminating) of every endpoint of the Service's slices.
async fn listed(slices: &Api<EndpointSlice>) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<_> = slices
        .list(&ListParams::default().labels(SELECTED))
        .await
        .unwrap()
        .items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .map(|e| {
            let c = e.conditions.unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready.unwrap(),
                c.serving.unwrap(),
                c.terminating.unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the Service's slices list `want`.
async fn wait_listed(slices: &Api<EndpointSlice>, want: &[(&str, bool, bool, bool)]) {
    let want: Vec<(String, bool, bool, bool)> = want
        .iter()
        .map(|(a, r, s, t)| (a.to_string(), *r, *s, *t))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = listed(slices).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slices list {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ready and not-ready addresses of the legacy Endpoints, once they are `want`.
async fn wait_endpoints(eps: &Api<Endpoints>, want: (Vec<&str>, Vec<&str>)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = eps.get_opt("web").await.unwrap().map(|e| {
            let subsets = e.subsets.unwrap_or_default();
            let ready = subsets.iter().flat_map(|s| s.addresses.iter().flatten());
            let not_ready = subsets
                .iter()
                .flat_map(|s| s.not_ready_addresses.iter().flatten());
            (
                ready.map(|a| a.ip.clone()).collect::<Vec<_>>(),
                not_ready.map(|a| a.ip.clone()).collect::<Vec<_>>(),
            )
        });
        let wanted = (
            want.0.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            want.1.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        if got.as_ref() == Some(&wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints are {got:?}, not {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_slices_and_endpoints_follow_its_pods() {
    let s = Server::start_with(&["--no-scheduler"]);
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    for p in ["w0", "w1", "w2"] {
        pods.create(&PostParams::default(), &pod(p)).await.unwrap();
    }

    // No pod has an address yet: one empty slice says the Service is known.
    let deadline = Instant::now() + Duration::from_secs(20);
    let placeholder = loop {
        let l = slices
            .list(&ListParams::default().labels(SELECTED))
            .await
            .unwrap();
        if let Some(s) = l.items.into_iter().next() {
            break s;
        }
        assert!(Instant::now() < deadline, "no slice for the Service");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(placeholder.endpoints.is_empty() && placeholder.ports.is_none());
    let owner = &placeholder.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), &owner.uid),
        ("Service", svc.metadata.uid.as_ref().unwrap())
    );

    running(&pods, "w0", "10.42.7.2", true).await;
    running(&pods, "w1", "10.42.7.3", true).await;
    running(&pods, "w2", "10.42.7.4", false).await;
    wait_listed(
        &slices,
        &[
            ("10.42.7.2", true, true, false),
            ("10.42.7.3", true, true, false),
            ("10.42.7.4", false, false, false),
        ],
    )
    .await;
    wait_endpoints(&eps, (vec!["10.42.7.2", "10.42.7.3"], vec!["10.42.7.4"])).await;
    // The named target port resolved to the pods' container port.
    let l = slices
        .list(&ListParams::default().labels(SELECTED))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1, "the placeholder made way");
    let port = &l.items[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080))
    );

    // kubectl shows them in its columns.
    let out = s.kubectl_ok(&["get", "endpointslices", "-l", SELECTED]);
    let row = out.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        out.starts_with("NAME") && out.contains("ADDRESSTYPE"),
        "{out}"
    );
    assert_eq!(
        &cells[1..4],
        ["IPv4", "8080", "10.42.7.2,10.42.7.3,10.42.7.4"],
        "{out}"
    );
    let out = s.kubectl_ok(&["get", "endpoints", "web"]);
    assert!(out.contains("10.42.7.2:8080,10.42.7.3:8080"), "{out}");

    // Readiness comes and goes.
    running(&pods, "w2", "10.42.7.4", true).await;
    running(&pods, "w0", "10.42.7.2", false).await;
    wait_endpoints(&eps, (vec!["10.42.7.3", "10.42.7.4"], vec!["10.42.7.2"])).await;

    // A pod being deleted (its node never confirms) stays listed as terminating, and
    // leaves the legacy Endpoints; once gone, it leaves the slice too.
    pods.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_listed(
        &slices,
        &[
            ("10.42.7.2", false, false, false),
            ("10.42.7.3", false, true, true),
            ("10.42.7.4", true, true, false),
        ],
    )
    .await;
    wait_endpoints(&eps, (vec!["10.42.7.4"], vec!["10.42.7.2"])).await;
    pods.delete("w1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_listed(
        &slices,
        &[
            ("10.42.7.2", false, false, false),
            ("10.42.7.4", true, true, false),
        ],
    )
    .await;

    // A pod relabelled away from the selector leaves.
    pods.patch(
        "w0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_listed(&slices, &[("10.42.7.4", true, true, false)]).await;

    // A slice deleted by hand comes back.
    let name = slices
        .list(&ListParams::default().labels(SELECTED))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    slices
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slices.get_opt(&name).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the slice was not made again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_listed(&slices, &[("10.42.7.4", true, true, false)]).await;

    // The Service's deletion takes its slices and Endpoints with it.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = slices
            .list(&ListParams::default().labels(SELECTED))
            .await
            .unwrap()
            .items
            .len();
        let ep = eps.get_opt("web").await.unwrap();
        if left == 0 && ep.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left} slices, endpoints {ep:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn endpoint_slices_are_checked_and_served_as_discovery_k8s_io_v1() {
    let s = Server::start();
    let out = s.kubectl_ok(&["api-resources", "--api-group", "discovery.k8s.io"]);
    assert!(
        out.contains("endpointslices") && out.contains("discovery.k8s.io/v1"),
        "{out}"
    );
    let bad = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bad\naddressType: IPv4\nendpoints:\n- addresses: [\"fd00::1\"]\n";
    let out = s.kubectl_apply(bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"
        ),
        "{err}"
    );
    let good = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: mine\naddressType: IPv4\nendpoints:\n- addresses: [\"10.0.0.1\"]\nports:\n- {name: http, port: 80}\n";
    let out = s.kubectl_apply(good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = good.replace("addressType: IPv4", "addressType: FQDN");
    let out = s.kubectl_apply(&changed);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("addressType: Invalid value: \"FQDN\": field is immutable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_the_variables_of_their_namespaces_services() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = Server::start_node("env-node", &[]);
    let out = s.kubectl_apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: redis-primary\nspec:\n  selector: {app: redis}\n  ports:\n  - {name: redis, port: 6379}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ip = s.kubectl_ok(&[
        "get",
        "svc",
        "redis-primary",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let pod = |name: &str, links: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  enableServiceLinks: {links}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    env:\n    - {{name: REDIS_PRIMARY_SERVICE_PORT_REDIS, value: mine}}\n"
        )
    };
    for (name, links) in [("linked", true), ("unlinked", false)] {
        let out = s.kubectl_apply(&pod(name, links));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/linked",
        "pod/unlinked",
        "--timeout=60s",
    ]);
    let env = s.kubectl_ok(&["exec", "linked", "--", "env"]);
    for want in [
        format!("REDIS_PRIMARY_SERVICE_HOST={ip}"),
        "REDIS_PRIMARY_SERVICE_PORT=6379".to_string(),
        format!("REDIS_PRIMARY_PORT=tcp://{ip}:6379"),
        format!("REDIS_PRIMARY_PORT_6379_TCP_ADDR={ip}"),
        "REDIS_PRIMARY_PORT_6379_TCP_PROTO=tcp".to_string(),
        // The container's own variable wins over the Service's.
        "REDIS_PRIMARY_SERVICE_PORT_REDIS=mine".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "no {want} in\n{env}");
    }
    let env = s.kubectl_ok(&["exec", "unlinked", "--", "env"]);
    assert!(!env.contains("REDIS_PRIMARY_SERVICE_HOST"), "{env}");
}
