//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` holds
//! the rules of every ClusterRole its selectors match, so adding a ClusterRole labelled
//! `rbac.authorization.k8s.io/aggregate-to-edit: "true"` extends `edit` (and `admin`,
//! which aggregates `edit`) as in Kubernetes. The rules are computed by
//! [`skiff_api::auth::rbac::aggregate`].

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    client: Client,
    roles: Store<ClusterRole>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("cluster role does not serialize: {0}")]
    Json(#[from] serde_json::Error),
}

async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if role.aggregation_rule.is_none() {
        return Ok(Action::await_change());
    }
    let all: Vec<Value> = ctx
        .roles
        .state()
        .iter()
        .map(|r| serde_json::to_value(r.as_ref()))
        .collect::<Result<_, _>>()?;
    let me = serde_json::to_value(role.as_ref())?;
    let Some(rules) = skiff_api::auth::rbac::aggregate(&me, &all) else {
        return Ok(Action::await_change());
    };
    let current: Vec<Value> = me["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| skiff_api::auth::rbac::PolicyRule::from_json(r).to_json())
        .collect();
    if current != rules {
        let api: Api<ClusterRole> = Api::all(ctx.client.clone());
        api.patch(
            &role.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"rules": rules})),
        )
        .await?;
        tracing::info!(clusterrole = %role.name_any(), rules = rules.len(), "aggregated cluster role rules");
    }
    // The cache this read may have been a moment behind the change that brought us here.
    Ok(Action::requeue(Duration::from_secs(5)))
}

fn on_error(_r: Arc<ClusterRole>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "cluster role aggregation failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Run until `stop` resolves.
pub async fn run(client: Client, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<ClusterRole> = Api::all(client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let roles = controller.store();
    let ctx = Arc::new(Ctx {
        client,
        roles: roles.clone(),
    });
    // Any ClusterRole change may change what an aggregated role must hold: each change
    // brings every aggregated role back to its reconcile.
    let store = roles.clone();
    controller
        .watches(
            api,
            watcher::Config::default(),
            move |_changed: ClusterRole| {
                store
                    .state()
                    .iter()
                    .filter(|r| r.aggregation_rule.is_some())
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, on_error, ctx)
        .for_each(|_| async {})
        .await;
}
