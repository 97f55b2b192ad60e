//! The EndpointSlice and Endpoints controllers (kube-controller-manager's
//! `endpointslice` and `endpoints`): every Service with a selector gets EndpointSlices
//! (discovery.k8s.io/v1) and the legacy Endpoints listing its pods, kept in step with
//! the pods' addresses, readiness and deletion. What they should hold is decided by the
//! pure functions of [`desired`]; [`reconcile`] writes the difference.
//!
//! A reconcile reads the shared caches and writes whole objects: a slice that is missing
//! is created (one that exists already is replaced), one that differs is replaced
//! without a resourceVersion (its content is this controller's alone), and a managed
//! slice of the Service that is no longer wanted is deleted. Writes are idempotent, so a
//! reconcile that ran on a cache behind its own last writes only repeats them.

pub mod desired;

use crate::run::Context;
use crate::{ReconcileError, identity};
use desired::{CONTROLLER_NAME, MANAGED_BY, SERVICE_NAME};
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, ReconcileRequest};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

/// The label nodes carry their zone in.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Whether this controller manages the slice.
pub fn managed(s: &EndpointSlice) -> bool {
    s.labels().get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
}

/// The Service a managed slice belongs to.
pub fn service_of(s: &EndpointSlice) -> Option<&str> {
    managed(s)
        .then(|| s.labels().get(SERVICE_NAME).map(String::as_str))
        .flatten()
}

/// Creates `obj`, or replaces it when it exists already.
async fn put<K>(api: &Api<K>, obj: &K) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let failed = |action: &str| {
        let action = format!("{action} {} {name}", K::kind(&()));
        move |source| ReconcileError::Api { action, source }
    };
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .replace(&name, &PostParams::default(), obj)
            .await
            .map(|_| ())
            .map_err(failed("replacing")),
        Err(e) => Err(failed("creating")(e)),
    }
}

/// Whether the stored slice already says what `want` says.
fn same_slice(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.address_type == want.address_type
        && have.endpoints == want.endpoints
        && have.ports == want.ports
        && have.metadata.labels == want.metadata.labels
        && have.metadata.owner_references == want.metadata.owner_references
}

fn same_endpoints(have: &Endpoints, want: &Endpoints) -> bool {
    have.subsets == want.subsets
        && have.metadata.labels == want.metadata.labels
        && have.metadata.owner_references == want.metadata.owner_references
}

/// Brings the Service's EndpointSlices and Endpoints in line with its pods.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let (ns, uid) = identity(svc.as_ref(), "service")?;
    let name = svc.name_any();
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let have: Vec<Arc<EndpointSlice>> = ctx
        .endpoint_slices
        .in_namespace(&ns)
        .into_iter()
        .filter(|s| service_of(s) == Some(name.as_str()))
        .collect();
    let keep = desired::selector(&svc).is_some() && svc.meta().deletion_timestamp.is_none();
    let want = if keep {
        let zone_of = |node: &str| {
            ctx.nodes
                .store()
                .get(&ObjectRef::new(node))
                .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
        };
        let members = desired::members(&svc, &ctx.pods.in_namespace(&ns), &zone_of);
        let ep = desired::endpoints(&svc, &uid, &members);
        let current = ctx
            .endpoints
            .store()
            .get(&ObjectRef::new(&name).within(&ns));
        if !current.is_some_and(|c| same_endpoints(&c, &ep)) {
            put(&Api::<Endpoints>::namespaced(ctx.client.clone(), &ns), &ep).await?;
        }
        desired::slices(&svc, &uid, &members)
    } else {
        Vec::new()
    };
    for s in &want {
        let current = have.iter().find(|h| h.metadata.name == s.metadata.name);
        if !current.is_some_and(|c| same_slice(c, s)) {
            put(&slices, s).await?;
        }
    }
    for h in &have {
        if want.iter().any(|w| w.metadata.name == h.metadata.name) {
            continue;
        }
        let slice = h.name_any();
        match slices.delete(&slice, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Api {
                    action: format!("deleting EndpointSlice {slice}"),
                    source,
                });
            }
        }
    }
    Ok(Action::await_change())
}

/// Where changes that concern Services' endpoints go.
pub struct Routes {
    /// The Services' queue.
    pub tx: mpsc::UnboundedSender<ReconcileRequest<Service>>,
    /// All Services.
    pub services: crate::cache::Cache<Service>,
    /// All EndpointSlices.
    pub slices: crate::cache::Cache<EndpointSlice>,
}

impl Routes {
    /// The Service `ns/name`.
    pub fn send(&self, ns: &str, name: &str) {
        let _ = self
            .tx
            .unbounded_send(ObjectRef::<Service>::new(name).within(ns).into());
    }

    /// A pod changed: the Services that select it now, and those whose slices list it.
    pub fn pod(&self, p: &Pod) {
        let Some(ns) = p.metadata.namespace.as_deref() else {
            return;
        };
        let name = p.name_any();
        for s in self.services.in_namespace(ns) {
            if desired::selector(&s)
                .is_some_and(|sel| desired::selects(sel, p.metadata.labels.as_ref()))
            {
                self.send(ns, &s.name_any());
            }
        }
        for s in self.slices.in_namespace(ns) {
            let lists = s.endpoints.iter().any(|e| {
                e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            });
            if lists && let Some(svc) = service_of(&s) {
                self.send(ns, svc);
            }
        }
    }

    /// A slice (or legacy Endpoints of that name) changed: its Service.
    pub fn slice(&self, s: &EndpointSlice) {
        if let (Some(ns), Some(svc)) = (s.metadata.namespace.as_deref(), service_of(s)) {
            self.send(ns, svc);
        }
    }

    /// Legacy Endpoints changed: the Service of the same name.
    pub fn endpoints(&self, e: &Endpoints) {
        if let Some(ns) = e.metadata.namespace.as_deref() {
            self.send(ns, &e.name_any());
        }
    }

    /// Everything may have changed.
    pub fn all(&self) {
        for s in self.services.store().state() {
            self.send(
                s.metadata.namespace.as_deref().unwrap_or_default(),
                &s.name_any(),
            );
        }
    }
}
