//! In-process API test: a watch from a compacted revision ends with a 410 `Expired`
//! Status event, and a list continued past compaction gets 410 too.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skiff_api::apiserver::{Api, router};
use skiff_api::auth::Auth;
use skiff_api::store::{RedbStore, Store, StoreConfig};
use std::sync::Arc;
use tower::ServiceExt;

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> (u16, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer admin");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body
        .map(|b| Body::from(serde_json::to_vec(&b).unwrap()))
        .unwrap_or_else(Body::empty);
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let code = resp.status().as_u16();
    (
        code,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

#[tokio::test]
async fn watch_and_continue_from_compacted_history_answer_410() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(StoreConfig::new(dir.path().join("s.redb"))).unwrap());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let api = Api::new(
        store.clone(),
        Auth::new("admin".into(), "join".into(), b"key".to_vec()),
        rx,
    );
    api.bootstrap().await.unwrap();
    let app = router(api);
    let start = store.revision();
    for i in 0..5 {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}});
        let (code, _) = call(
            &app,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await;
        assert_eq!(code, 201);
    }
    // A paged list taken before compaction.
    let (code, body) = call(
        &app,
        "GET",
        "/api/v1/namespaces/default/configmaps?limit=2",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();

    // Before compaction the watch replays what was missed.
    let (code, body) = call(
        &app,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=1"
        ),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.contains("\"ADDED\""))
            .count(),
        5
    );

    // A write after the list, then compaction past the list's revision.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}});
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(cm)
        )
        .await
        .0,
        201
    );
    store.compact(store.revision()).await.unwrap();

    let (code, body) = call(
        &app,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=1"
        ),
        None,
    )
    .await;
    assert_eq!(
        code, 200,
        "watch errors arrive in the stream, as in Kubernetes"
    );
    let first: Value = serde_json::from_slice(
        String::from_utf8_lossy(&body)
            .lines()
            .next()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(first["type"], "ERROR");
    assert_eq!(first["object"]["code"], 410);
    assert_eq!(first["object"]["reason"], "Expired");

    let (code, body) = call(
        &app,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"),
        None,
    )
    .await;
    assert_eq!(code, 410, "{}", String::from_utf8_lossy(&body));
}
