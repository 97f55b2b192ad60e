//! Writing an owner's children: claiming them (adopting matching orphans, releasing
//! owned ones that stopped matching), creating pods from a template, deleting pods. Every
//! write is recorded in [`crate::expectations`] so the next reconcile waits for the
//! cache to show it.

use crate::cache::Cache;
use crate::pods::{self, Matcher};
use crate::run::{Context, event_ref};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;
use std::sync::Arc;

/// A write to a child that failed.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct ChildError {
    /// What was being done.
    pub action: String,
    /// The error.
    #[source]
    pub source: kube::Error,
}

fn failed(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ChildError {
    let action = action.into();
    move |source| ChildError { action, source }
}

/// The children in `cache` that the owner `owner_ref` claims in `namespace`: owned and
/// matching `matcher`, adopting matching orphans (unless the owner is being deleted) and
/// releasing owned children that no longer match.
pub async fn claim<K>(
    client: &kube::Client,
    cache: &Cache<K>,
    owner_ref: &OwnerReference,
    owner_deleting: bool,
    matcher: &Matcher,
    namespace: &str,
) -> Result<Vec<Arc<K>>, ChildError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut claimed = Vec::new();
    for child in cache.in_namespace(namespace) {
        let meta = child.meta();
        let matches = matcher.matches(meta.labels.as_ref());
        let name = child.name_any();
        match pods::controller_of(meta) {
            Some(c) if c.uid == owner_ref.uid => {
                if matches || pods::terminating(meta) {
                    claimed.push(child);
                } else {
                    let refs = other_refs(meta, &owner_ref.uid);
                    patch_refs(&api, meta, refs)
                        .await
                        .map_err(failed(format!("releasing {kind} {name}")))?;
                    tracing::info!(%kind, %name, owner = %owner_ref.name, "released: no longer matches");
                }
            }
            Some(_) => {}
            None if matches && !owner_deleting && !pods::terminating(meta) => {
                let mut refs = other_refs(meta, &owner_ref.uid);
                refs.push(owner_ref.clone());
                let adopted = patch_refs(&api, meta, refs)
                    .await
                    .map_err(failed(format!("adopting {kind} {name}")))?;
                tracing::info!(%kind, %name, owner = %owner_ref.name, "adopted orphan");
                claimed.push(Arc::new(adopted));
            }
            None => {}
        }
    }
    Ok(claimed)
}

fn other_refs(meta: &ObjectMeta, uid: &str) -> Vec<OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect()
}

/// Replace an object's owner references, only if it is still the version we read.
async fn patch_refs<K>(
    api: &Api<K>,
    meta: &ObjectMeta,
    refs: Vec<OwnerReference>,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": meta.resource_version,
    }});
    api.patch(
        meta.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// A pod made from `template`, named `<prefix><random>`, controlled by `owner`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    prefix: &str,
    namespace: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_string()),
            namespace: Some(namespace.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Create `count` copies of `pod`, in batches of growing size (1, 2, 4, ...) so that a
/// failing template produces one error, not hundreds. Records each creation as an
/// expectation of `owner` and as its `SuccessfulCreate` event (a failure as
/// `FailedCreate`); returns the names created, and the error that stopped it, if any.
pub async fn create_pods<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    pod: &Pod,
    count: usize,
) -> (Vec<String>, Option<ChildError>) {
    let owner_uid = owner.meta().uid.as_deref().unwrap_or_default();
    let event_owner = event_ref(owner);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut created = Vec::new();
    let mut batch = 1;
    while created.len() < count {
        let n = batch.min(count - created.len());
        let params = PostParams::default();
        let results = futures::future::join_all((0..n).map(|_| api.create(&params, pod))).await;
        let mut error = None;
        for r in results {
            match r {
                Ok(p) => {
                    ctx.expectations
                        .wrote(owner_uid, p.metadata.resource_version.as_deref());
                    ctx.recorder.normal(
                        &event_owner,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                    created.push(p.name_any());
                }
                Err(e) => error = Some(failed("creating a pod")(e)),
            }
        }
        if let Some(e) = &error {
            ctx.recorder
                .warning(&event_owner, "FailedCreate", e.to_string());
            return (created, error);
        }
        batch *= 2;
    }
    (created, None)
}

/// Delete `victims`, recording each as an expectation of `owner`; once all are gone,
/// each as its `SuccessfulDelete` event.
pub async fn delete_pods<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    victims: &[Arc<Pod>],
) -> Result<(), ChildError> {
    let owner_uid = owner.meta().uid.as_deref().unwrap_or_default();
    let deletes = victims.iter().map(|p| async move {
        let name = p.name_any();
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                // Recorded after the fact: the check is against the cache, so an event
                // that already arrived counts.
                ctx.expectations.deleted(owner_uid, &uid);
                Ok(())
            }
            // Already gone: what we wanted.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(failed(format!("deleting pod {name}"))(e)),
        }
    });
    for r in futures::future::join_all(deletes).await {
        r?;
    }
    let event_owner = event_ref(owner);
    for p in victims {
        ctx.recorder.normal(
            &event_owner,
            "SuccessfulDelete",
            format!("Deleted pod: {}", p.name_any()),
        );
    }
    Ok(())
}
