//! The HTTP API: one entry point that authenticates, routes Kubernetes paths to verbs on
//! the store, and renders every refusal as a `Status`.

mod admission;
mod authn;
mod bootstrap;
mod escalation;
mod node;
mod objects;
mod request;
mod reviews;
pub mod serviceips;
mod tokens;
mod verbs;
mod watch;

pub use objects::{DeleteOptions, WriteOptions, now};
pub use request::{Output, Query, Route, Target, route};

use crate::auth::node::NodeGraph;
use crate::auth::rbac::Rbac;
use crate::auth::{self, Attributes, Auth};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::resources::Resource;
use crate::select::{FieldSelector, LabelSelector};
use crate::store::Store;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

/// Largest request body accepted (Kubernetes' limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How much of an oversize body is read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 32 * 1024 * 1024;

/// The apiserver's shared state.
pub struct Api {
    /// The object store.
    pub store: Arc<dyn Store>,
    auth: Auth,
    /// Request metrics.
    pub metrics: Metrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
    extra_metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// What the pods bound to each node reference, for the Node authorizer.
    pub graph: Arc<NodeGraph>,
    /// The RBAC policy.
    pub rbac: Arc<Rbac>,
    audit: std::sync::OnceLock<crate::audit::AuditLog>,
    pod_security: std::sync::OnceLock<crate::podsecurity::Level>,
    service_cidr: std::sync::OnceLock<ipnet::Ipv4Net>,
    /// Updates of one object take turns on the stripe its key hashes to.
    write_turns: Box<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Api::write_turn`]: enough that unrelated objects rarely share one.
const WRITE_STRIPES: usize = 256;

impl Api {
    /// The lock updates of the object at `key` take turns on.
    fn write_turn(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        &self.write_turns[(h % WRITE_STRIPES as u64) as usize]
    }

    /// An apiserver over `store` accepting `auth`'s tokens; watches end when `shutdown`
    /// turns true.
    pub fn new(
        store: Arc<dyn Store>,
        auth: Auth,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Api> {
        Self::build(store, auth, shutdown, None)
    }

    /// Same, with a function adding more Prometheus text to `/metrics`.
    pub fn with_metrics(
        store: Arc<dyn Store>,
        auth: Auth,
        shutdown: tokio::sync::watch::Receiver<bool>,
        extra: Box<dyn Fn() -> String + Send + Sync>,
    ) -> Arc<Api> {
        Self::build(store, auth, shutdown, Some(extra))
    }

    fn build(
        store: Arc<dyn Store>,
        auth: Auth,
        shutdown: tokio::sync::watch::Receiver<bool>,
        extra_metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
    ) -> Arc<Api> {
        Arc::new(Api {
            graph: Arc::new(NodeGraph::new(store.clone())),
            audit: std::sync::OnceLock::new(),
            pod_security: std::sync::OnceLock::new(),
            service_cidr: std::sync::OnceLock::new(),
            write_turns: (0..WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            rbac: Arc::new(Rbac::default()),
            store,
            auth,
            metrics: Metrics::default(),
            shutdown,
            extra_metrics,
        })
    }

    /// Write an audit line for every request from now on.
    pub fn enable_audit(&self, log: crate::audit::AuditLog) {
        let _ = self.audit.set(log);
    }

    /// Keep the authorizers' caches current from the store (the node graph, RBAC) until
    /// the server shuts down. Without them authorization is still right, only slower.
    pub fn follow_store(self: &Arc<Self>) {
        tokio::spawn(
            self.graph
                .clone()
                .follow(self.store.clone(), self.shutdown.clone()),
        );
        tokio::spawn(
            self.rbac
                .clone()
                .follow(self.store.clone(), self.shutdown.clone()),
        );
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The router serving the whole API.
pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(handle).with_state(api)
}

/// Label and field selectors of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    fn parse(res: &Resource, q: &Query) -> ApiResult<Selectors> {
        Ok(Selectors {
            labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(res.kind, q.get("fieldSelector").unwrap_or(""))?,
        })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&obj["metadata"]["labels"]) && self.fields.matches(obj)
    }
}

fn json_response(code: StatusCode, body: impl Into<Body>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let started = Instant::now();
    let received = jiff::Timestamp::now();
    let mut rec = crate::audit::Record::default();
    if api.audit.get().is_some() {
        rec.uri = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        rec.user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        rec.source = req
            .extensions()
            .get::<crate::listen::PeerAddr>()
            .map(|p| p.0.ip());
    }
    let ((verb, resource, resp), notes) =
        crate::audit::collecting(dispatch(&api, req, &mut rec)).await;
    rec.notes = notes;
    let status = match (&resp, api.audit.get()) {
        (Err(e), Some(_)) => Some(e.status()),
        _ => None,
    };
    let mut resp = resp.unwrap_or_else(IntoResponse::into_response);
    let code = resp.status().as_u16();
    api.metrics
        .observe(&verb, &resource, code, started.elapsed());
    if let Some(log) = api.audit.get() {
        let id = uuid::Uuid::new_v4().to_string();
        rec.verb = verb;
        let e = crate::audit::event(
            &rec,
            &id,
            code,
            status.as_ref(),
            received,
            jiff::Timestamp::now(),
        );
        log.write(&e);
        if let Ok(v) = http::HeaderValue::from_str(&id) {
            resp.headers_mut().insert("audit-id", v);
        }
    }
    resp
}

type Dispatched = (String, String, Result<Response, ApiError>);

async fn dispatch(api: &Arc<Api>, req: Request, rec: &mut crate::audit::Record) -> Dispatched {
    let path = req.uri().path().to_string();
    let route = request::route(&path);
    match route {
        Route::Health => {
            return (
                "get".into(),
                "healthz".into(),
                Ok((StatusCode::OK, "ok").into_response()),
            );
        }
        Route::Version => {
            return (
                "get".into(),
                "version".into(),
                Ok(value_response(StatusCode::OK, &discovery::version())),
            );
        }
        Route::CaCerts => {
            return (
                "get".into(),
                "cacerts".into(),
                node::cacerts(api, req.method(), &path),
            );
        }
        _ => {}
    }
    let Some(real) = api.authenticate(req.headers()) else {
        return ("".into(), "".into(), Err(ApiError::unauthorized()));
    };
    rec.user = Some(real.clone());
    let id = match api.impersonate(real, req.headers()) {
        Ok(u) => u,
        Err(e) => return ("".into(), "".into(), Err(e)),
    };
    if rec.user.as_ref() != Some(&id) {
        rec.impersonated = Some(id.clone());
    }
    let method = req.method().clone();
    if matches!(route, Route::Join) {
        return (
            "create".into(),
            "join".into(),
            node::join(api, &id, req).await,
        );
    }
    if !matches!(route, Route::Resource(_)) && method != Method::GET {
        return (
            "".into(),
            "".into(),
            Err(ApiError::method_not_allowed(&path)),
        );
    }
    let discovery = matches!(
        route,
        Route::Api
            | Route::Apis
            | Route::Group(_)
            | Route::ResourceList(..)
            | Route::OpenApiIndex
            | Route::OpenApiDoc(_)
    );
    // The join token opens discovery and the join endpoint, nothing else.
    if id.is_joining() && !discovery {
        return (
            "".into(),
            "".into(),
            Err(ApiError::forbidden(auth::join_first_message(&id))),
        );
    }
    if !matches!(route, Route::Resource(_) | Route::NotFound) && !id.is_joining() {
        let policy = api.rbac.policy(&*api.store);
        let decided = auth::authorize(&id, &Attributes::path("get", &path), &*api.graph, &policy);
        rec.authorized = Some(decided.is_ok());
        if let Err(e) = decided {
            return ("get".into(), "".into(), Err(e));
        }
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match route {
        Route::Metrics => {
            let mut text = api.metrics.render();
            if let Some(f) = &api.extra_metrics {
                text.push_str(&f());
            }
            (
                "get".into(),
                "metrics".into(),
                Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()),
            )
        }
        Route::Api => (
            "get".into(),
            "discovery".into(),
            Ok(discovery_response(&accept, true)),
        ),
        Route::Apis => (
            "get".into(),
            "discovery".into(),
            Ok(discovery_response(&accept, false)),
        ),
        Route::Group(g) => {
            let r = discovery::api_group(&g)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(&path));
            ("get".into(), "discovery".into(), r)
        }
        Route::ResourceList(g, v) => {
            let r = discovery::resource_list(&g, &v)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(&path));
            ("get".into(), "discovery".into(), r)
        }
        Route::OpenApiIndex => (
            "get".into(),
            "openapi".into(),
            Ok(value_response(StatusCode::OK, &discovery::openapi_index())),
        ),
        Route::OpenApiDoc(p) => {
            let r = discovery::openapi_doc(&p)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(&path));
            ("get".into(), "openapi".into(), r)
        }
        Route::NotFound => ("".into(), "".into(), Err(ApiError::no_route(&path))),
        Route::Resource(t) => {
            let q = Query::parse(req.uri().query());
            let verb = verb_of(&method, &t, &q);
            let label = match &t.sub {
                Some(s) => format!("{}/{s}", t.res.plural),
                None => t.res.plural.to_string(),
            };
            // As Kubernetes' RequestInfo: a namespace's own name is the namespace of a
            // request on it, and a list or watch of one name is a request on that name.
            let selected = if t.name.is_none() && matches!(verb.as_str(), "list" | "watch") {
                q.get("fieldSelector").and_then(single_name)
            } else {
                None
            };
            let ns = if t.res.kind == "Namespace" {
                t.name.as_deref()
            } else {
                t.ns.as_deref()
            };
            let attrs = Attributes::of(
                &verb,
                t.res,
                t.sub.as_deref(),
                ns,
                t.name.as_deref().or(selected.as_deref()),
            );
            if api.audit.get().is_some() {
                let mut o = serde_json::Map::new();
                o.insert("resource".into(), json!(t.res.plural));
                for (k, v) in [
                    ("namespace", &t.ns),
                    ("name", &t.name),
                    ("subresource", &t.sub),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), json!(v));
                    }
                }
                if !t.res.group.is_empty() {
                    o.insert("apiGroup".into(), json!(t.res.group));
                }
                o.insert("apiVersion".into(), json!(t.res.version));
                rec.object = Some(Value::Object(o));
            }
            let policy = api.rbac.policy(&*api.store);
            let decided = auth::authorize(&id, &attrs, &*api.graph, &policy);
            rec.authorized = Some(decided.is_ok());
            let r = match decided {
                Ok(restriction) => {
                    verbs::resource(api, &id, restriction, t.clone(), q, &verb, &accept, req).await
                }
                Err(e) => Err(e),
            };
            (verb, label, r)
        }
        Route::Health | Route::Version | Route::CaCerts | Route::Join => {
            unreachable!("answered above")
        }
    }
}

fn discovery_response(accept: &str, legacy: bool) -> Response {
    // Aggregated discovery when asked for, plain otherwise; kubectl goes by Content-Type.
    for v in ["v2", "v2beta1"] {
        if accept.contains(&format!(
            "g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
        )) {
            let body = discovery::aggregated(legacy, &format!("apidiscovery.k8s.io/{v}"));
            let ct =
                format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList");
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, ct)],
                serde_json::to_vec(&body).unwrap_or_default(),
            )
                .into_response();
        }
    }
    let body = if legacy {
        discovery::api_versions()
    } else {
        discovery::api_group_list()
    };
    value_response(StatusCode::OK, &body)
}

/// The name a field selector picks, if it is exactly `metadata.name=X`.
fn single_name(fs: &str) -> Option<String> {
    let fs = fs.trim();
    let v = fs
        .strip_prefix("metadata.name==")
        .or_else(|| fs.strip_prefix("metadata.name="))?;
    (!v.is_empty() && !v.contains(',')).then(|| v.to_string())
}

fn verb_of(method: &Method, t: &Target, q: &Query) -> String {
    // Streaming subresources are created, whether by a WebSocket GET or a SPDY POST (as
    // the apiserver authorizes them since 1.35: a GET must not need less than a POST).
    if matches!(t.sub.as_deref(), Some("exec" | "attach" | "portforward"))
        && matches!(*method, Method::GET | Method::POST)
    {
        return "create".into();
    }
    let v = match *method {
        Method::GET if t.watch_path || q.flag("watch") => "watch",
        Method::GET if t.name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if t.name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "unsupported",
    };
    v.to_string()
}

async fn read_body(req: Request) -> ApiResult<(String, Bytes)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        // Too big to even read past: answer now (the connection closes).
        return Err(ApiError::too_large(MAX_BODY));
    }
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    // An oversize body is read to its end (up to DRAIN_LIMIT) and thrown away, so an
    // HTTP/1.1 client still writing it sees the 413 instead of a broken pipe.
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok((ct, buf.freeze()))
}
