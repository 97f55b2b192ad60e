//! Reconciles are safe to run twice: a second reconcile that runs before the caches have
//! seen the first one's writes (a burst of events, a status write that triggers itself)
//! creates nothing more. The apiserver is Skiff's own, in process on a temporary store;
//! the caches are left empty on purpose, as if their watches lagged behind.

#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use skiff_api::apiserver;
use skiff_api::auth::Auth;
use skiff_api::events::Recorder;
use skiff_api::store::{RedbStore, StoreConfig};
use skiff_controllers::cache::informer;
use skiff_controllers::expectations::Expectations;
use skiff_controllers::run::Context;
use skiff_controllers::{deployment, job, replicaset};
use std::sync::Arc;

struct Cluster {
    client: Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(StoreConfig::new(dir.path().join("store.redb"))).unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let api = apiserver::Api::new(
        store,
        Auth::new("admin".into(), "node".into(), b"node-key".to_vec()),
        rx,
    );
    api.bootstrap().await.unwrap();
    let client = skiff_api::client::in_process(apiserver::router(api), "admin").unwrap();
    Cluster {
        client,
        _dir: dir,
        _stop: stop,
    }
}

/// A context whose caches never fill.
fn stale_context(client: &Client) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        pods: informer(Api::<Pod>::all(client.clone())).0,
        replicasets: informer(Api::<ReplicaSet>::all(client.clone())).0,
        nodes: informer(Api::all(client.clone())).0,
        runtime_classes: informer(Api::all(client.clone())).0,
        endpoint_slices: informer(Api::all(client.clone())).0,
        endpoints: informer(Api::all(client.clone())).0,
        expectations: Expectations::default(),
        recorder: Recorder::new(client.clone(), "test", "test"),
    })
}

fn parse<T: k8s_openapi::serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).unwrap()
}

const TEMPLATE: &str = r#"{"metadata": {"labels": {"app": "x"}},
    "spec": {"containers": [{"name": "a", "image": "registry.local/a:1"}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reconcile_before_the_cache_catches_up_creates_nothing() {
    let c = cluster().await;
    let pp = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let count = |selector: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items
                .len()
        }
    };

    // ReplicaSet: 3 replicas, reconciled twice.
    let rs: ReplicaSet = parse(&format!(
        r#"{{"metadata": {{"name": "x"}}, "spec": {{"replicas": 3,
            "selector": {{"matchLabels": {{"app": "x"}}}}, "template": {TEMPLATE}}}}}"#
    ));
    let rs = Api::<ReplicaSet>::namespaced(c.client.clone(), "default")
        .create(&pp, &rs)
        .await
        .unwrap();
    let ctx = stale_context(&c.client);
    for _ in 0..2 {
        replicaset::reconcile(Arc::new(rs.clone()), ctx.clone())
            .await
            .unwrap();
    }
    assert_eq!(count("app=x").await, 3);

    // Job: parallelism 2, reconciled twice.
    let j: Job = parse(&format!(
        r#"{{"metadata": {{"name": "j"}}, "spec": {{"parallelism": 2, "completions": 4,
            "template": {}}}}}"#,
        TEMPLATE
            .replace("\"app\": \"x\"", "\"app\": \"j\"")
            .replace("\"spec\": {", "\"spec\": {\"restartPolicy\": \"Never\", ")
    ));
    let j = Api::<Job>::namespaced(c.client.clone(), "default")
        .create(&pp, &j)
        .await
        .unwrap();
    let ctx = stale_context(&c.client);
    for _ in 0..2 {
        job::reconcile(Arc::new(j.clone()), ctx.clone())
            .await
            .unwrap();
    }
    assert_eq!(count("job-name=j").await, 2);

    // Deployment: reconciled twice, one ReplicaSet.
    let d: Deployment = parse(&format!(
        r#"{{"metadata": {{"name": "d"}}, "spec": {{"replicas": 2,
            "selector": {{"matchLabels": {{"app": "d"}}}}, "template": {}}}}}"#,
        TEMPLATE.replace("\"app\": \"x\"", "\"app\": \"d\"")
    ));
    let d = Api::<Deployment>::namespaced(c.client.clone(), "default")
        .create(&pp, &d)
        .await
        .unwrap();
    let ctx = stale_context(&c.client);
    for _ in 0..2 {
        deployment::reconcile(Arc::new(d.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let sets = Api::<ReplicaSet>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default().labels("app=d"))
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 1, "{sets:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_slices_are_written_once_however_often_it_is_reconciled() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let c = cluster().await;
    let svc: Service = parse(
        r#"{"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80}]}}"#,
    );
    let svc = Api::<Service>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let ctx = stale_context(&c.client);
    for _ in 0..3 {
        skiff_controllers::endpoints::reconcile(Arc::new(svc.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let slices = Api::<EndpointSlice>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(slices.items.len(), 1, "one slice, replaced in place");
    assert!(
        Api::<Endpoints>::namespaced(c.client.clone(), "default")
            .get_opt("web")
            .await
            .unwrap()
            .is_some()
    );
}
