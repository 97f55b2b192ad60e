#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;

fn svc(spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"app": "web"}},
        "spec": spec,
    }))
    .unwrap()
}

/// A pod of `default` labelled app=web unless `labels` say otherwise.
fn pod(name: &str, ip: Option<&str>, ready: bool, extra: serde_json::Value) -> Arc<Pod> {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "labels": {"app": "web"}},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
    });
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
    }
    merge(&mut p, extra);
    Arc::new(serde_json::from_value(p).unwrap())
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn zone(node: &str) -> Option<String> {
    (node == "edge-1").then(|| "zone-a".to_string())
}

/// (pod, ready, serving, terminating) of a member.
type Conditions<'a> = (&'a str, bool, bool, bool);

/// The conditions of each member.
fn conditions(ms: &[Member]) -> Vec<Conditions<'_>> {
    ms.iter()
        .map(|m| (m.pod.as_str(), m.ready, m.serving, m.terminating))
        .collect()
}

#[test]
fn which_pods_are_endpoints_and_in_what_condition() {
    let http = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    let deleting = json!({"metadata": {"deletionTimestamp": "2026-12-03T00:00:00Z"}});
    let pods = vec![
        pod("a-ready", Some("10.42.0.5"), true, json!({})),
        pod("b-unready", Some("10.42.0.6"), false, json!({})),
        pod("c-no-ip", None, true, json!({})),
        pod(
            "d-done",
            Some("10.42.0.7"),
            true,
            json!({"status": {"phase": "Succeeded"}}),
        ),
        pod(
            "e-other-app",
            Some("10.42.0.8"),
            true,
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        pod(
            "f-other-ns",
            Some("10.42.0.9"),
            true,
            json!({"metadata": {"namespace": "kube-system"}}),
        ),
        pod("g-terminating", Some("10.42.0.10"), true, deleting.clone()),
        pod("h-terminating-unready", Some("10.42.0.11"), false, deleting),
    ];
    let cases: Vec<(&str, serde_json::Value, Vec<Conditions>)> = vec![
        (
            "ready, unready and terminating pods of the selector",
            http.clone(),
            vec![
                ("a-ready", true, true, false),
                ("b-unready", false, false, false),
                ("g-terminating", false, true, true),
                ("h-terminating-unready", false, false, true),
            ],
        ),
        (
            "publishNotReadyAddresses makes every endpoint ready",
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true}),
            vec![
                ("a-ready", true, true, false),
                ("b-unready", true, true, false),
                ("g-terminating", true, true, true),
                ("h-terminating-unready", true, true, true),
            ],
        ),
        (
            "no selector: someone else's endpoints",
            json!({"ports": [{"port": 80}]}),
            vec![],
        ),
        (
            "an empty selector selects nothing",
            json!({"selector": {}}),
            vec![],
        ),
        (
            "ExternalName has no endpoints",
            json!({"type": "ExternalName", "externalName": "example.org", "selector": {"app": "web"}}),
            vec![],
        ),
    ];
    for (what, spec, want) in cases {
        let got = members(&svc(spec), &pods, &zone);
        assert_eq!(conditions(&got), want, "{what}");
    }
    let m = &members(&svc(http), &pods, &zone)[0];
    assert_eq!(
        (
            m.ip.to_string(),
            m.node.as_deref(),
            m.zone.as_deref(),
            m.uid.as_str()
        ),
        (
            "10.42.0.5".into(),
            Some("edge-1"),
            Some("zone-a"),
            "a-ready-uid"
        )
    );
}

#[test]
fn target_ports_resolve_per_pod() {
    let spec = json!({"selector": {"app": "web"}, "ports": [
        {"name": "web", "port": 80, "targetPort": "http"},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
        {"name": "dns-tcp", "port": 53, "targetPort": "dns"},
        {"name": "admin", "port": 9000},
        {"name": "metrics", "port": 9100, "targetPort": 9102},
    ]});
    let other = json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 3000}]}]}});
    let pods = vec![
        pod("a", Some("10.42.0.5"), true, json!({})),
        pod("b", Some("10.42.0.6"), true, other),
    ];
    let ms = members(&svc(spec), &pods, &zone);
    let ports = |m: &Member| -> Vec<(String, i32, String)> {
        m.ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap(),
                    p.port.unwrap(),
                    p.protocol.clone().unwrap(),
                )
            })
            .collect()
    };
    let t = |n: &str, p: i32, pr: &str| (n.to_string(), p, pr.to_string());
    // The UDP `dns` container port does not serve the TCP Service port of that name.
    assert_eq!(
        ports(&ms[0]),
        vec![
            t("web", 8080, "TCP"),
            t("dns", 53, "UDP"),
            t("admin", 9000, "TCP"),
            t("metrics", 9102, "TCP")
        ]
    );
    assert_eq!(
        ports(&ms[1]),
        vec![
            t("web", 3000, "TCP"),
            t("admin", 9000, "TCP"),
            t("metrics", 9102, "TCP")
        ]
    );
    // Pods serving the ports differently are in different slices.
    let s = slices(&svc(json!({})), "svc-uid", &ms);
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|s| s.endpoints.len() == 1));
}

#[test]
fn slices_are_stable_chunked_and_labelled() {
    let spec = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    let pods: Vec<Arc<Pod>> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                Some(&format!("10.42.{}.{}", i / 200, i % 200 + 2)),
                true,
                json!({}),
            )
        })
        .collect();
    let s = svc(spec.clone());
    let ms = members(&s, &pods, &zone);
    let got = slices(&s, "svc-uid", &ms);
    let sizes: Vec<usize> = got.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let names: Vec<String> = got
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("web-")), "{names:?}");
    assert_eq!(
        names,
        slices(&s, "svc-uid", &ms)
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    );
    assert_ne!(
        names,
        slices(&s, "another-uid", &ms)
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    );
    let l = got[0].metadata.labels.as_ref().unwrap();
    assert_eq!(l.get(SERVICE_NAME).map(String::as_str), Some("web"));
    assert_eq!(l.get(MANAGED_BY).map(String::as_str), Some(CONTROLLER_NAME));
    assert_eq!(l.get("app").map(String::as_str), Some("web"));
    assert!(!l.contains_key(HEADLESS));
    let owner = &got[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Service", "svc-uid", Some(true))
    );
    let e = &got[0].endpoints[0];
    assert_eq!(e.addresses, vec!["10.42.0.2"]);
    assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("p000"));
    assert_eq!(got[0].address_type, "IPv4");

    // No endpoints: one empty slice without ports; headless Services are labelled.
    let mut hl = spec;
    hl["clusterIP"] = json!("None");
    let empty = slices(&svc(hl), "svc-uid", &[]);
    assert_eq!(empty.len(), 1);
    assert!(empty[0].endpoints.is_empty() && empty[0].ports.is_none());
    assert_eq!(
        empty[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get(HEADLESS)
            .map(String::as_str),
        Some("")
    );
}

#[test]
fn hostnames_only_for_the_pods_subdomain() {
    let spec = json!({"selector": {"app": "web"}, "clusterIP": "None"});
    let pods = vec![
        pod(
            "a",
            Some("10.42.0.5"),
            true,
            json!({"spec": {"hostname": "web-0", "subdomain": "web"}}),
        ),
        pod(
            "b",
            Some("10.42.0.6"),
            true,
            json!({"spec": {"hostname": "other-0", "subdomain": "other"}}),
        ),
    ];
    let ms = members(&svc(spec), &pods, &zone);
    assert_eq!(ms[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(ms[1].hostname, None);
}

#[test]
fn legacy_endpoints_split_ready_from_not_ready_and_leave_out_terminating_pods() {
    let spec = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
    let pods = vec![
        pod("a", Some("10.42.0.9"), true, json!({})),
        pod("b", Some("10.42.0.5"), true, json!({})),
        pod("c", Some("10.42.0.6"), false, json!({})),
        pod(
            "d",
            Some("10.42.0.7"),
            true,
            json!({"metadata": {"deletionTimestamp": "2026-12-03T00:00:00Z"}}),
        ),
        pod(
            "e-no-port",
            Some("10.42.0.8"),
            true,
            json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
        ),
    ];
    let s = svc(spec);
    let ep = endpoints(&s, "svc-uid", &members(&s, &pods, &zone));
    let subsets = ep.subsets.unwrap();
    assert_eq!(subsets.len(), 1);
    let ips = |a: &Option<Vec<EndpointAddress>>| -> Vec<String> {
        a.iter().flatten().map(|a| a.ip.clone()).collect()
    };
    assert_eq!(ips(&subsets[0].addresses), vec!["10.42.0.5", "10.42.0.9"]);
    assert_eq!(ips(&subsets[0].not_ready_addresses), vec!["10.42.0.6"]);
    let p = &subsets[0].ports.as_ref().unwrap()[0];
    assert_eq!((p.name.as_deref(), p.port), (Some("http"), 8080));
    assert_eq!(ep.metadata.name.as_deref(), Some("web"));
    // Nothing to list: no subsets at all.
    assert!(endpoints(&s, "svc-uid", &[]).subsets.is_none());
}
