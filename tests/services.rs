//! Services against the real server: ClusterIPs from `--service-cidr`, handed out
//! atomically under concurrent creates, checked when asked for, freed on deletion.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, kube_client};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;

fn service(name: &str, ip: Option<&str>) -> Service {
    let mut spec = json!({"ports": [{"port": 80}]});
    if let Some(ip) = ip {
        spec["clusterIP"] = json!(ip);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn cluster_ips_are_unique_under_concurrent_creates_and_checked_when_asked_for() {
    // 10.97.0.0/27: .2 to .30 can be handed out (29 addresses).
    let s = Server::start_with(&["--service-cidr", "10.97.0.0/27"]);
    let svcs: Api<Service> = Api::namespaced(kube_client(&s).await, "default");
    let creates = (0..28).map(|i| {
        let svcs = svcs.clone();
        async move {
            svcs.create(&PostParams::default(), &service(&format!("s{i}"), None))
                .await
        }
    });
    let mut ips = BTreeSet::new();
    for r in futures::future::join_all(creates).await {
        let ip = r.unwrap().spec.unwrap().cluster_ip.unwrap();
        let addr: std::net::Ipv4Addr = ip.parse().unwrap();
        let last = addr.octets()[3];
        assert!(
            ip.starts_with("10.97.0.") && (2..=30).contains(&last),
            "{ip}"
        );
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 28, "every Service has an address of its own");

    // One address is left; asking for a taken one or one outside the range is refused.
    let taken = ips.iter().next().unwrap().clone();
    let (code, msg) = refusal(
        svcs.create(&PostParams::default(), &service("dup", Some(&taken)))
            .await,
    );
    assert_eq!(code, 422);
    assert!(msg.contains("provided IP is already allocated"), "{msg}");
    let (code, msg) = refusal(
        svcs.create(&PostParams::default(), &service("far", Some("10.1.2.3")))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        msg.contains("is not in the valid range") && msg.contains("10.97.0.0/27"),
        "{msg}"
    );
    let last = svcs
        .create(&PostParams::default(), &service("last", None))
        .await
        .unwrap();
    let last_ip = last.spec.unwrap().cluster_ip.unwrap();
    assert!(!ips.contains(&last_ip));
    let (code, msg) = refusal(
        svcs.create(&PostParams::default(), &service("over", None))
            .await,
    );
    assert_eq!(code, 500);
    assert!(msg.contains("range is full"), "{msg}");

    // A deleted Service's address can be had again, by asking for it.
    svcs.delete("s0", &DeleteParams::default()).await.unwrap();
    let freed = svcs.get_opt("s0").await.unwrap();
    assert!(freed.is_none());
    let s0_ip = {
        // Whichever address s0 had is the only free one now: a new Service gets it.
        let again = svcs
            .create(&PostParams::default(), &service("again", None))
            .await
            .unwrap();
        again.spec.unwrap().cluster_ip.unwrap()
    };
    assert!(ips.contains(&s0_ip), "the freed address is reused: {s0_ip}");
    // Headless and ExternalName Services take no address.
    let headless = svcs
        .create(&PostParams::default(), &service("headless", Some("None")))
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let ext: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "example.test"},
    }))
    .unwrap();
    let ext = svcs.create(&PostParams::default(), &ext).await.unwrap();
    assert_eq!(ext.spec.unwrap().cluster_ip, None);
}
