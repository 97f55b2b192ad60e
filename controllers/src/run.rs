//! Wiring: the shared caches, the routing of their changes to the controllers that care,
//! and one reconcile loop per kind.
//!
//! Each kind is watched once ([`crate::cache`]); a change goes to its own controller and
//! to its owner's (a pod to its ReplicaSet, Job or DaemonSet, a ReplicaSet to its
//! Deployment), an orphan to every owner whose selector matches it, a Node or
//! RuntimeClass change to every DaemonSet. Why kube-runtime's [`applier`] and not its
//! `Controller`: a `Controller` keeps its own watch of each child kind, so the pod cache
//! could not be shared, and its shared-stream variant drops deletions, which a
//! ReplicaSet must see to replace a pod. The loops are kube-runtime
//! [`applier`]s, which run at most one reconcile per object at a time and merge
//! requests that pile up while one runs.

use crate::cache::{Cache, Changed, Informer, informer};
use crate::expectations::Expectations;
use crate::pods::{Matcher, controller_of, terminating};
use crate::{daemonset, deployment, endpoints, job, replicaset};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::runtime::controller::{self, Action, ReconcileRequest, applier};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use skiff_api::events::{self, Recorder};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How the controllers run.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Name of this machine, reported in events.
    pub host: String,
    /// The cluster CA, published in every namespace as `kube-root-ca.crt` (`None`: not
    /// published).
    pub root_ca: Option<String>,
    /// Give each Node a block of the cluster CIDR (`None`: Nodes keep what they have).
    pub pod_cidrs: Option<crate::nodeipam::PodCidrs>,
}

/// Why the controllers stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A cache never filled (its watch kept failing) before the stop signal.
    #[error("stopped before the caches synced")]
    NotSynced,
}

/// What every reconcile reads and writes through.
pub struct Context {
    /// The API.
    pub client: Client,
    /// All pods.
    pub pods: Cache<Pod>,
    /// All replica sets.
    pub replicasets: Cache<ReplicaSet>,
    /// All nodes (where daemon sets run).
    pub nodes: Cache<Node>,
    /// All runtime classes (their node selectors narrow where daemon sets run).
    pub runtime_classes: Cache<RuntimeClass>,
    /// All EndpointSlices.
    pub endpoint_slices: Cache<EndpointSlice>,
    /// All legacy Endpoints.
    pub endpoints: Cache<Endpoints>,
    /// Writes not yet seen in the caches, by owner uid.
    pub expectations: Expectations,
    /// Events about the workloads.
    pub recorder: Recorder,
}

/// A reference to `obj` for an event.
pub fn event_ref<K: Resource<DynamicType = ()>>(obj: &K) -> events::ObjectRef {
    events::ObjectRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
    }
}

type Tx<K> = mpsc::UnboundedSender<ReconcileRequest<K>>;

fn send<K: Resource<DynamicType = ()>>(tx: &Tx<K>, name: &str, ns: Option<&str>) {
    let mut r = ObjectRef::<K>::new(name);
    if let Some(ns) = ns {
        r = r.within(ns);
    }
    // The receiver lives as long as the controllers; a send after stop is moot.
    let _ = tx.unbounded_send(r.into());
}

fn send_self<K: Resource<DynamicType = ()>>(tx: &Tx<K>, o: &K) {
    send(tx, &o.name_any(), o.meta().namespace.as_deref());
}

fn send_all<K: Resource<DynamicType = ()> + Clone>(tx: &Tx<K>, cache: &Cache<K>) {
    for o in cache.store().state() {
        send_self(tx, o.as_ref());
    }
}

/// Owners of kind `K` in the object's namespace whose selector matches its labels.
fn send_matching<K, C>(
    tx: &Tx<K>,
    cache: &Cache<K>,
    child: &C,
    selector: impl Fn(&K) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) where
    K: Resource<DynamicType = ()> + Clone,
    C: Resource,
{
    let Some(ns) = child.meta().namespace.as_deref() else {
        return;
    };
    for o in cache.in_namespace(ns) {
        if Matcher::new(selector(&o)).is_ok_and(|m| m.matches(child.meta().labels.as_ref())) {
            send_self(tx, o.as_ref());
        }
    }
}

/// Where pod changes go.
struct PodRoutes {
    rs_tx: Tx<ReplicaSet>,
    job_tx: Tx<Job>,
    ds_tx: Tx<DaemonSet>,
    rss: Cache<ReplicaSet>,
    jobs: Cache<Job>,
    dss: Cache<DaemonSet>,
}

/// A pod's change goes to its controller, or, for an orphan, to every ReplicaSet, Job
/// and DaemonSet that could adopt it.
fn route_pod(p: &Pod, to: &PodRoutes) {
    let ns = p.namespace();
    match controller_of(&p.metadata) {
        Some(o) if o.kind == "ReplicaSet" => send(&to.rs_tx, &o.name, ns.as_deref()),
        Some(o) if o.kind == "Job" => send(&to.job_tx, &o.name, ns.as_deref()),
        Some(o) if o.kind == "DaemonSet" => send(&to.ds_tx, &o.name, ns.as_deref()),
        Some(_) => {}
        None if terminating(&p.metadata) => {}
        None => {
            send_matching(&to.rs_tx, &to.rss, p, |r: &ReplicaSet| {
                r.spec.as_ref().map(|s| &s.selector)
            });
            send_matching(&to.job_tx, &to.jobs, p, |j: &Job| {
                j.spec.as_ref()?.selector.as_ref()
            });
            send_matching(&to.ds_tx, &to.dss, p, |d: &DaemonSet| {
                d.spec.as_ref().map(|s| &s.selector)
            });
        }
    }
}

fn spawn_informer<K>(
    informer: Informer<K>,
    route: impl FnMut(Changed<'_, K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    tokio::spawn(informer.run(route))
}

/// Drive one controller's loop until its queue closes.
async fn drive<K, E, F>(
    kind: &'static str,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
    ctx: Arc<Context>,
    cache: Cache<K>,
    queue: mpsc::UnboundedReceiver<ReconcileRequest<K>>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
    F: Future<Output = Result<Action, E>> + Send + 'static,
{
    let results = applier(
        move |o, ctx| reconcile(o, ctx).boxed(),
        |o: Arc<K>, e: &E, _ctx| {
            tracing::warn!(
                %kind,
                name = %o.name_any(),
                namespace = o.namespace().unwrap_or_default(),
                error = %e,
                "reconcile failed; retrying"
            );
            Action::requeue(Duration::from_secs(2))
        },
        ctx,
        cache.store().clone(),
        queue.map(Ok::<_, Infallible>),
        controller::Config::default(),
    );
    results
        .for_each(|r| async move {
            if let Err(e) = r {
                // Reconcile errors were logged by the error policy; what remains is a
                // request for an object no longer in the cache (deleted meanwhile).
                tracing::trace!(%kind, error = %e, "reconcile request dropped");
            }
        })
        .await;
}

/// Run the ReplicaSet, Deployment, Job and DaemonSet controllers through `client` until
/// `stop` resolves.
pub async fn run(
    client: Client,
    config: Config,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let (pods, pod_informer) = informer(Api::<Pod>::all(client.clone()));
    let (replicasets, rs_informer) = informer(Api::<ReplicaSet>::all(client.clone()));
    let (deployments, deploy_informer) = informer(Api::<Deployment>::all(client.clone()));
    let (jobs, job_informer) = informer(Api::<Job>::all(client.clone()));
    let (daemonsets, ds_informer) = informer(Api::<DaemonSet>::all(client.clone()));
    let (nodes, node_informer) = informer(Api::<Node>::all(client.clone()));
    let (classes, class_informer) = informer(Api::<RuntimeClass>::all(client.clone()));
    let (services, svc_informer) = informer(Api::<Service>::all(client.clone()));
    let (slices, slice_informer) = informer(Api::<EndpointSlice>::all(client.clone()));
    let (eps, ep_informer) = informer(Api::<Endpoints>::all(client.clone()));
    let (svc_tx, svc_rx) = mpsc::unbounded();
    let to_services = Arc::new(endpoints::Routes {
        tx: svc_tx,
        services: services.clone(),
        slices: slices.clone(),
    });
    let (rs_tx, rs_rx) = mpsc::unbounded();
    let (deploy_tx, deploy_rx) = mpsc::unbounded();
    let (job_tx, job_rx) = mpsc::unbounded();
    let (ds_tx, ds_rx) = mpsc::unbounded();

    let mut tasks = Vec::new();
    {
        let to = PodRoutes {
            rs_tx: rs_tx.clone(),
            job_tx: job_tx.clone(),
            ds_tx: ds_tx.clone(),
            rss: replicasets.clone(),
            jobs: jobs.clone(),
            dss: daemonsets.clone(),
        };
        let deploy_tx = deploy_tx.clone();
        let to_services = to_services.clone();
        tasks.push(spawn_informer(pod_informer, move |c| match c {
            Changed::One(p) => {
                route_pod(p, &to);
                to_services.pod(p);
            }
            Changed::Gone(p) => {
                route_pod(p, &to);
                to_services.pod(p);
                // A Recreate rollout waits for the old pods to be gone, not just counted
                // out: their owner's Deployment hears of it.
                if let Some(o) = controller_of(&p.metadata).filter(|o| o.kind == "ReplicaSet") {
                    let key = ObjectRef::<ReplicaSet>::new(&o.name)
                        .within(&p.namespace().unwrap_or_default());
                    if let Some(rs) = to.rss.store().get(&key)
                        && let Some(d) =
                            controller_of(&rs.metadata).filter(|d| d.kind == "Deployment")
                    {
                        send(&deploy_tx, &d.name, rs.namespace().as_deref());
                    }
                }
            }
            Changed::All => {
                send_all(&to.rs_tx, &to.rss);
                send_all(&to.job_tx, &to.jobs);
                send_all(&to.ds_tx, &to.dss);
                to_services.all();
            }
        }));
    }
    {
        let (rs_tx, deploy_tx, rss, deploys) = (
            rs_tx.clone(),
            deploy_tx.clone(),
            replicasets.clone(),
            deployments.clone(),
        );
        tasks.push(spawn_informer(rs_informer, move |c| match c {
            Changed::One(rs) | Changed::Gone(rs) => {
                send_self(&rs_tx, rs);
                match controller_of(&rs.metadata) {
                    Some(o) if o.kind == "Deployment" => {
                        send(&deploy_tx, &o.name, rs.namespace().as_deref())
                    }
                    Some(_) => {}
                    None if terminating(&rs.metadata) => {}
                    None => send_matching(&deploy_tx, &deploys, rs, |d: &Deployment| {
                        d.spec.as_ref().map(|s| &s.selector)
                    }),
                }
            }
            Changed::All => {
                send_all(&rs_tx, &rss);
                send_all(&deploy_tx, &deploys);
            }
        }));
    }
    {
        let (deploy_tx, deploys) = (deploy_tx.clone(), deployments.clone());
        tasks.push(spawn_informer(deploy_informer, move |c| match c {
            Changed::One(d) | Changed::Gone(d) => send_self(&deploy_tx, d),
            Changed::All => send_all(&deploy_tx, &deploys),
        }));
    }
    {
        let (job_tx, js) = (job_tx.clone(), jobs.clone());
        tasks.push(spawn_informer(job_informer, move |c| match c {
            Changed::One(j) | Changed::Gone(j) => send_self(&job_tx, j),
            Changed::All => send_all(&job_tx, &js),
        }));
    }
    {
        let (tx, dss) = (ds_tx.clone(), daemonsets.clone());
        tasks.push(spawn_informer(ds_informer, move |c| match c {
            Changed::One(d) | Changed::Gone(d) => send_self(&tx, d),
            Changed::All => send_all(&tx, &dss),
        }));
    }
    // Any node or runtime class change may change where every daemon set runs.
    {
        let (tx, dss) = (ds_tx.clone(), daemonsets.clone());
        tasks.push(spawn_informer(node_informer, move |_| send_all(&tx, &dss)));
    }
    {
        let (tx, dss) = (ds_tx.clone(), daemonsets.clone());
        tasks.push(spawn_informer(class_informer, move |_| send_all(&tx, &dss)));
    }
    {
        let to = to_services.clone();
        tasks.push(spawn_informer(svc_informer, move |c| match c {
            Changed::One(s) | Changed::Gone(s) => to.send(
                s.metadata.namespace.as_deref().unwrap_or_default(),
                &s.name_any(),
            ),
            Changed::All => to.all(),
        }));
    }
    {
        let to = to_services.clone();
        tasks.push(spawn_informer(slice_informer, move |c| match c {
            Changed::One(s) | Changed::Gone(s) => to.slice(s),
            Changed::All => to.all(),
        }));
    }
    {
        let to = to_services.clone();
        tasks.push(spawn_informer(ep_informer, move |c| match c {
            Changed::One(e) | Changed::Gone(e) => to.endpoints(e),
            Changed::All => to.all(),
        }));
    }
    let abort = || {
        for t in &tasks {
            t.abort();
        }
    };

    let mut stop = std::pin::pin!(stop.fuse());
    // Never act on a partial picture: a ReplicaSet reconciled before the pod cache has
    // listed would create every replica again.
    let synced = async {
        let _ = pods.store().wait_until_ready().await;
        let _ = replicasets.store().wait_until_ready().await;
        let _ = deployments.store().wait_until_ready().await;
        let _ = jobs.store().wait_until_ready().await;
        let _ = daemonsets.store().wait_until_ready().await;
        let _ = nodes.store().wait_until_ready().await;
        let _ = classes.store().wait_until_ready().await;
        let _ = services.store().wait_until_ready().await;
        let _ = slices.store().wait_until_ready().await;
        let _ = eps.store().wait_until_ready().await;
    };
    tokio::select! {
        _ = synced => {}
        _ = &mut stop => {
            abort();
            return Err(RunError::NotSynced);
        }
    }
    tracing::info!("controller caches synced");

    let client_for_roles = client.clone();
    let accounts = crate::serviceaccounts::run(
        client.clone(),
        config.root_ca.clone(),
        std::future::pending(),
    );
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "skiff-controllers", &config.host),
        client,
        pods,
        replicasets: replicasets.clone(),
        nodes,
        runtime_classes: classes,
        endpoint_slices: slices,
        endpoints: eps,
        expectations: Expectations::default(),
    });
    let ipam_recorder = ctx.recorder.clone();
    let endpoint_loop = drive(
        "Service",
        endpoints::reconcile,
        ctx.clone(),
        services,
        svc_rx,
    );
    let loops = futures::future::join5(
        drive(
            "ReplicaSet",
            replicaset::reconcile,
            ctx.clone(),
            replicasets,
            rs_rx,
        ),
        drive(
            "Deployment",
            deployment::reconcile,
            ctx.clone(),
            deployments,
            deploy_rx,
        ),
        drive("Job", job::reconcile, ctx.clone(), jobs, job_rx),
        drive("DaemonSet", daemonset::reconcile, ctx, daemonsets, ds_rx),
        endpoint_loop,
    );
    let aggregation = crate::clusterroles::run(client_for_roles.clone(), std::future::pending());
    let ipam = async {
        match config.pod_cidrs {
            Some(c) => {
                let stop = std::future::pending();
                crate::nodeipam::run(client_for_roles, c, ipam_recorder, stop).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = loops => {}
        _ = accounts => {}
        _ = aggregation => {}
        _ = ipam => {}
        _ = &mut stop => {}
    }
    abort();
    Ok(())
}
