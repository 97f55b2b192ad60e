//! The lifecycle of an object: create, update (PUT, PATCH, subresources), delete with
//! grace periods and finalizers, and the garbage collection they trigger.

use super::Api;
use crate::codec::{self, FieldValidation};
use crate::defaults;
use crate::error::{ApiError, ApiResult};
use crate::resources::{RESOURCES, Resource, by_kind};
use crate::store::{ConflictReason, Encoder, KeyValue, Op, Precondition, StoreError};
use crate::validation;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;

/// RFC 3339 with seconds, as Kubernetes writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn timestamp_in(secs: i64) -> String {
    let t = jiff::Timestamp::now().as_second() + secs;
    jiff::Timestamp::from_second(t)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Stamp `metadata.resourceVersion` with the revision the write gets.
pub fn encoder(obj: Value) -> Encoder {
    Box::new(move |rev| {
        let mut o = obj;
        o["metadata"]["resourceVersion"] = Value::String(rev.to_string());
        serde_json::to_vec(&o)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    })
}

/// Parse stored bytes.
pub fn parse(kv: &KeyValue) -> ApiResult<Value> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))
}

fn name_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Everything but metadata, status and type fields: what `generation` tracks.
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        for k in ["metadata", "status", "kind", "apiVersion"] {
            m.remove(k);
        }
    }
    c
}

/// Options of a delete (from the body or the query).
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    /// Seconds to wait for graceful termination.
    pub grace: Option<i64>,
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation: Option<String>,
    /// Delete only if the uid matches.
    pub uid: Option<String>,
    /// Delete only if the resourceVersion matches.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Merge a DeleteOptions body into options read from the query.
    pub fn from_body(mut self, body: &Value) -> ApiResult<Self> {
        if body.is_null() {
            return Ok(self);
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("DeleteOptions must be an object"));
        }
        if let Some(g) = body.get("gracePeriodSeconds").filter(|v| !v.is_null()) {
            self.grace =
                Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
        }
        if let Some(p) = body["propagationPolicy"].as_str() {
            self.propagation = Some(p.to_string());
        }
        if body["orphanDependents"] == Value::Bool(true) {
            self.propagation = Some("Orphan".into());
        }
        if let Some(u) = body["preconditions"]["uid"].as_str() {
            self.uid = Some(u.to_string());
        }
        if let Some(r) = body["preconditions"]["resourceVersion"].as_str() {
            self.resource_version = Some(r.to_string());
        }
        if body["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            self.dry_run = true;
        }
        match self.propagation.as_deref() {
            None | Some("Orphan" | "Background" | "Foreground") => Ok(self),
            Some(o) => Err(ApiError::bad_request(format!(
                "propagationPolicy must be one of Orphan, Background or Foreground, got {o:?}"
            ))),
        }
    }
}

/// How a write treats unknown fields, and whether it is only tried.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Unknown-field handling.
    pub field_validation: FieldValidation,
    /// `dryRun=All`: check everything, store nothing.
    pub dry_run: bool,
    /// The new object is built by the server from a stored one (a binding, garbage
    /// collection): it needs no decoding against the schema, only the update rules.
    pub trusted: bool,
}

impl WriteOptions {
    /// What internal writers use: unknown fields dropped, really written, trusted.
    pub const INTERNAL: WriteOptions = WriteOptions {
        field_validation: FieldValidation::Ignore,
        dry_run: false,
        trusted: true,
    };

    /// A client's write.
    pub fn client(field_validation: FieldValidation, dry_run: bool) -> WriteOptions {
        WriteOptions {
            field_validation,
            dry_run,
            trusted: false,
        }
    }
}

/// What an update produced.
pub struct Written {
    /// The object as stored (or as it would be, for a dry run).
    pub body: Bytes,
    /// Warnings for the `Warning` header.
    pub warnings: Vec<String>,
}

impl Api {
    /// Bookkeeping after a write of a `res` object: the RBAC policy is rebuilt when an
    /// RBAC object changed, so the next request is judged by it.
    /// Also the node graph learns of a pod written (`obj`, none for a delete) at store
    /// revision `revision`, before the caller hears back.
    fn written(&self, res: &Resource, key: &str, obj: Option<&Value>, revision: u64) {
        if res.group == crate::auth::rbac::GROUP {
            self.rbac.invalidate();
        }
        if res.kind == "Pod" {
            self.graph.update(&Arc::from(key), obj, revision);
        }
    }

    /// The stored object, or 404.
    pub fn get_kv(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        self.store
            .get(&res.key(ns, name))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        };
        let want = res.api_version();
        match m.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                return Err(ApiError::bad_request(format!(
                    "Object 'Kind' is missing in the request body (expected {:?})",
                    res.kind
                )));
            }
            Some(k) if k != res.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({k}) does not match the kind of the request ({}); send it to the {} endpoint",
                    res.kind,
                    by_kind(k).map_or("right".to_string(), |r| r.plural.to_string())
                )));
            }
            _ => {}
        }
        match m.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v == want => Ok(()),
            Some(v) => Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            ))),
            None => Err(ApiError::bad_request(
                "Object 'apiVersion' is missing in the request body",
            )),
        }
    }

    fn namespace_ok(&self, res: &Resource, ns: Option<&str>) -> ApiResult<()> {
        let Some(ns) = ns.filter(|_| res.namespaced) else {
            return Ok(());
        };
        let nsres = by_kind("Namespace").ok_or_else(|| ApiError::internal("no namespace kind"))?;
        let kv = self
            .store
            .get(&nsres.key(None, ns))
            .ok_or_else(|| ApiError::not_found(nsres, ns))?;
        let obj = parse(&kv)?;
        if obj["status"]["phase"] == "Terminating" {
            return Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                res.qualified(),
                ""
            )));
        }
        Ok(())
    }

    /// Create an object in `ns`.
    pub async fn create(
        self: &Arc<Self>,
        res: &'static Resource,
        ns: Option<&str>,
        obj: Value,
        fv: FieldValidation,
        dry_run: bool,
    ) -> ApiResult<Written> {
        let mut obj = obj;
        Self::check_type(res, &mut obj)?;
        // Admission mutates before the schema pass, so what it adds is kept in the same
        // normal form as the rest (a later update compares against it).
        let admitted = if res.kind == "Pod" && obj["spec"].is_object() {
            self.namespace_ok(res, ns)?;
            self.admit_service_account(ns.unwrap_or("default"), &mut obj)?
        } else {
            Vec::new()
        };
        let (mut obj, mut warnings) = codec::typed(res, obj, fv)?;
        warnings.extend(admitted);
        let md = &mut obj["metadata"];
        if !md.is_object() {
            *md = json!({});
        }
        if res.namespaced {
            let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
            match md["namespace"].as_str() {
                None | Some("") => md["namespace"] = json!(ns),
                Some(n) if n == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        let generate = md["name"].as_str().is_none_or(str::is_empty)
            && md["generateName"].as_str().is_some_and(|g| !g.is_empty());
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            if let Some(m) = md.as_object_mut() {
                m.remove(k);
            }
        }
        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
        md["creationTimestamp"] = json!(now());
        if tracks_generation(res) {
            md["generation"] = json!(1);
        }
        self.namespace_ok(res, ns)?;
        self.prepare_new(res, &mut obj)?;
        if res.kind == "Namespace" {
            let level = self.pod_security_default();
            warnings.extend(self.admit_namespace_security(&mut obj, None, level)?);
        }
        // A Service that lets the server pick its address retries with another one if
        // a concurrent create took it first.
        let picks_ip = res.kind == "Service"
            && obj["spec"]["type"] != "ExternalName"
            && obj["spec"]["clusterIP"].as_str().is_none_or(str::is_empty);
        let attempts = if generate || picks_ip { 8 } else { 1 };
        for _ in 0..attempts {
            if generate {
                let base = obj["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                obj["metadata"]["name"] = json!(format!("{base}{}", name_suffix()));
            }
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if picks_ip {
                obj["spec"]["clusterIP"] = json!("");
            }
            let claim = self.claim_cluster_ip(res, &mut obj)?;
            let causes = validation::validate(res, &obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(res, &name, &causes));
            }
            let mut warnings = warnings.clone();
            warnings.extend(self.admit_security(res, ns, &obj, None)?);
            let key = res.key(ns, &name);
            if dry_run {
                if self.store.get(&key).is_some() {
                    return Err(ApiError::already_exists(res, &name));
                }
                return Ok(Written {
                    body: Bytes::from(serde_json::to_vec(&obj).map_err(ApiError::internal)?),
                    warnings,
                });
            }
            let op = Op::Put {
                key: key.clone(),
                value: encoder(obj.clone()),
                precondition: Precondition::Absent,
            };
            let ops = std::iter::once(op).chain(claim).collect();
            match self.store.txn(ops).await {
                Ok(r) => {
                    self.written(res, &key, Some(&obj), r.revision);
                    let body = r.into_first_value();
                    return Ok(Written { body, warnings });
                }
                Err(StoreError::Conflict {
                    key: lost,
                    reason: ConflictReason::Exists,
                }) if Self::is_cluster_ip_key(&lost) => {
                    if picks_ip {
                        continue;
                    }
                    let ip = obj["spec"]["clusterIP"].as_str().unwrap_or_default();
                    return Err(super::serviceips::taken(res, &name, ip));
                }
                Err(StoreError::Conflict {
                    reason: ConflictReason::Exists,
                    ..
                }) if generate => continue,
                Err(e) => return Err(ApiError::from_store(e, res, &name)),
            }
        }
        Err(ApiError::internal(
            "could not generate a unique name; try again",
        ))
    }

    /// Kind-specific preparation of a new object: defaults, status reset, allocations.
    fn prepare_new(&self, res: &Resource, obj: &mut Value) -> ApiResult<()> {
        if res.kind == "Job" {
            let uid = obj["metadata"]["uid"].clone();
            let name = obj["metadata"]["name"].clone();
            let spec = &mut obj["spec"];
            if spec["selector"].is_null() {
                spec["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            }
            let labels = &mut spec["template"]["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["batch.kubernetes.io/controller-uid"] = uid.clone();
            labels["controller-uid"] = uid;
            labels["batch.kubernetes.io/job-name"] = name.clone();
            labels["job-name"] = name;
        }
        defaults::apply(res, obj);
        match res.kind {
            "Pod" => {
                let qos = defaults::qos_class(&obj["spec"]);
                obj["status"] = json!({"phase": "Pending", "qosClass": qos});
                if let Some(m) = obj["spec"].as_object_mut()
                    && m.get("nodeName")
                        .is_some_and(|n| n.as_str().is_some_and(|s| !s.is_empty()))
                {
                    obj["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
                }
            }
            "Node" | "Namespace" | "Event" => {}
            _ if res.has_status() => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Update an object by computing the new version from the current one. `mutate` may be
    /// called more than once: a write that loses a race is retried on the fresh object,
    /// unless the new object pins a resourceVersion (then the loser gets 409).
    pub async fn update(
        self: &Arc<Self>,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        opts: WriteOptions,
        mutate: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Written> {
        let WriteOptions {
            field_validation: fv,
            dry_run,
            trusted,
        } = opts;
        // Writers of one object in this apiserver take turns: with a dozen writers
        // racing (status patches, a binding, labels), optimistic retries alone would
        // let one lose every round. The compare-and-swap below still guards against
        // writers elsewhere.
        let _turn = self.write_turn(&res.key(ns, name)).lock().await;
        for _ in 0..16 {
            let kv = self.get_kv(res, ns, name)?;
            let old = parse(&kv)?;
            let mut new = mutate(&old)?;
            Self::check_type(res, &mut new)?;
            let pinned = new["metadata"]["resourceVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from);
            if let Some(rv) = &pinned
                && rv.parse::<u64>().ok() != Some(kv.mod_revision)
            {
                return Err(ApiError::conflict(res, name));
            }
            let (new, warnings) = if trusted {
                (new, Vec::new())
            } else {
                codec::typed(res, new, fv)?
            };
            let mut new = self.merge_update(res, sub, &old, new, name, ns)?;
            if new == old {
                return Ok(Written {
                    body: kv.value,
                    warnings,
                });
            }
            let mut warnings = warnings;
            if !trusted && sub.is_none() {
                if res.kind == "Namespace" {
                    let level = self.pod_security_default();
                    warnings.extend(self.admit_namespace_security(&mut new, Some(&old), level)?);
                }
                warnings.extend(self.admit_security(res, ns, &new, Some(&old))?);
            }
            if dry_run {
                return Ok(Written {
                    body: Bytes::from(serde_json::to_vec(&new).map_err(ApiError::internal)?),
                    warnings,
                });
            }
            let finished = !new["metadata"]["deletionTimestamp"].is_null()
                && new["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                && !(res.kind == "Pod"
                    && new["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty()))
                && res.kind != "Namespace";
            let key = res.key(ns, name);
            let mut ops = vec![if finished {
                Op::Delete {
                    key: key.clone(),
                    precondition: Precondition::ModRevision(kv.mod_revision),
                }
            } else {
                Op::Put {
                    key: key.clone(),
                    value: encoder(new.clone()),
                    precondition: Precondition::ModRevision(kv.mod_revision),
                }
            }];
            if finished {
                ops.extend(Self::release_cluster_ip(res, &new));
            }
            match self.store.txn(ops).await {
                Ok(r) => {
                    self.written(res, &key, (!finished).then_some(&new), r.revision);
                    let body = r.into_first_value();
                    if finished {
                        self.after_delete(res, ns, &new, None);
                    }
                    return Ok(Written { body, warnings });
                }
                // Written meanwhile: read it again and re-apply. A resourceVersion the
                // caller pinned no longer matches then and is refused above; one the
                // mutation merely carried over from the stored object follows it.
                Err(StoreError::Conflict {
                    reason: ConflictReason::Stale,
                    ..
                }) => continue,
                Err(e) => return Err(ApiError::from_store(e, res, name)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    fn merge_update(
        &self,
        res: &Resource,
        sub: Option<&str>,
        old: &Value,
        mut new: Value,
        name: &str,
        ns: Option<&str>,
    ) -> ApiResult<Value> {
        match new["metadata"]["name"].as_str() {
            Some(n) if n == name => {}
            None | Some("") => new["metadata"]["name"] = json!(name),
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        if res.namespaced {
            match new["metadata"]["namespace"].as_str() {
                None | Some("") => new["metadata"]["namespace"] = json!(ns),
                Some(n) if Some(n) == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        match sub {
            Some("status") => {
                // Status writes change status (and labels/annotations), never the spec.
                let mut merged = old.clone();
                merged["status"] = new["status"].take();
                // A namespace's labels carry its Pod Security levels: those change only
                // through the namespace itself, where admission sees them.
                if res.kind != "Namespace" {
                    for k in ["labels", "annotations"] {
                        merged["metadata"][k] = new["metadata"][k].take();
                    }
                }
                new = merged;
            }
            // The binding subresource writes the node and the PodScheduled condition.
            Some("binding") => {}
            _ if res.has_status() => new["status"] = old["status"].clone(),
            _ => {}
        }
        let md = &mut new["metadata"];
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => md[k] = v.clone(),
                None => {
                    if let Some(m) = md.as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        md["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if let Some(m) = md.as_object_mut() {
            m.remove("managedFields");
            m.retain(|_, v| !v.is_null());
        }
        defaults::apply(res, &mut new);
        if res.kind == "Secret"
            && new["data"].is_null()
            && let Some(m) = new.as_object_mut()
        {
            m.remove("data");
        }
        let causes = if sub == Some("binding") {
            // The binding subresource is the one way to set `spec.nodeName`; the rest of
            // the spec stays as it was (the closure only sets the node).
            let mut unbound = new.clone();
            unbound["spec"]["nodeName"] = old["spec"]["nodeName"].clone();
            if let Some(s) = unbound["spec"].as_object_mut() {
                s.retain(|_, v| !v.is_null());
            }
            validation::validate_update(res, old, &unbound)
        } else {
            validation::validate_update(res, old, &new)
        };
        if !causes.is_empty() {
            return Err(ApiError::invalid(res, name, &causes));
        }
        if tracks_generation(res) && spec_part(old) != spec_part(&new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        Ok(new)
    }

    /// Delete an object, honoring finalizers, pod grace periods and namespaces. Returns
    /// the object as it is after the call (deleted, or marked for deletion).
    pub async fn delete(
        self: &Arc<Self>,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        opts: DeleteOptions,
    ) -> ApiResult<Bytes> {
        for _ in 0..16 {
            let kv = self.get_kv(res, ns, name)?;
            let obj = parse(&kv)?;
            if let Some(uid) = &opts.uid
                && obj["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::conflict(res, name));
            }
            if let Some(rv) = &opts.resource_version
                && rv.parse::<u64>().ok() != Some(kv.mod_revision)
            {
                return Err(ApiError::conflict(res, name));
            }
            let marked = !obj["metadata"]["deletionTimestamp"].is_null();
            let finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            let bound_pod = res.kind == "Pod"
                && obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
            let grace = opts
                .grace
                .or(obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            let graceful = res.kind == "Namespace" || finalizers || (bound_pod && grace > 0);
            if graceful {
                if marked
                    && !(bound_pod
                        && grace
                            < obj["metadata"]["deletionGracePeriodSeconds"]
                                .as_i64()
                                .unwrap_or(i64::MAX))
                {
                    return Ok(kv.value);
                }
                let mut next = obj.clone();
                next["metadata"]["deletionTimestamp"] = json!(if bound_pod {
                    timestamp_in(grace)
                } else {
                    now()
                });
                next["metadata"]["deletionGracePeriodSeconds"] =
                    json!(if bound_pod { grace } else { 0 });
                if res.kind == "Namespace" {
                    next["status"]["phase"] = json!("Terminating");
                }
                if opts.dry_run {
                    return Ok(Bytes::from(
                        serde_json::to_vec(&next).map_err(ApiError::internal)?,
                    ));
                }
                let op = Op::Put {
                    key: res.key(ns, name),
                    value: encoder(next),
                    precondition: Precondition::ModRevision(kv.mod_revision),
                };
                match self.store.txn(vec![op]).await {
                    Ok(r) => {
                        if res.kind == "Namespace" {
                            let api = self.clone();
                            let ns_name = name.to_string();
                            tokio::spawn(async move { api.finalize_namespace(ns_name).await });
                        }
                        return Ok(r.into_first_value());
                    }
                    Err(StoreError::Conflict {
                        reason: ConflictReason::Stale,
                        ..
                    }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, res, name)),
                }
            }
            if opts.dry_run {
                return Ok(kv.value);
            }
            let op = Op::Delete {
                key: res.key(ns, name),
                precondition: Precondition::ModRevision(kv.mod_revision),
            };
            let ops = std::iter::once(op)
                .chain(Self::release_cluster_ip(res, &obj))
                .collect();
            match self.store.txn(ops).await {
                Ok(r) => {
                    self.written(res, &kv.key, None, r.revision);
                    self.after_delete(res, ns, &obj, opts.propagation.as_deref());
                    return Ok(kv.value);
                }
                Err(StoreError::Conflict {
                    reason: ConflictReason::Stale,
                    ..
                }) => continue,
                Err(e) => return Err(ApiError::from_store(e, res, name)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Garbage-collect what the deleted object owned.
    fn after_delete(
        self: &Arc<Self>,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
        propagation: Option<&str>,
    ) {
        let Some(uid) = obj["metadata"]["uid"].as_str().map(String::from) else {
            return;
        };
        let orphan = propagation == Some("Orphan");
        let ns = if res.namespaced {
            ns.map(String::from)
        } else {
            None
        };
        let api = self.clone();
        tokio::spawn(async move {
            if let Err(e) = api.collect_dependents(&uid, ns.as_deref(), orphan).await {
                tracing::warn!(owner = %uid, error = %e, "garbage collection failed");
            }
        });
    }

    // Boxed, with an explicit `Send`: deletes spawn collections that delete again, and
    // the compiler cannot see through that recursion on its own.
    fn collect_dependents<'a>(
        self: &'a Arc<Self>,
        uid: &'a str,
        ns: Option<&'a str>,
        orphan: bool,
    ) -> futures::future::BoxFuture<'a, ApiResult<()>> {
        Box::pin(self.collect_dependents_inner(uid, ns, orphan))
    }

    async fn collect_dependents_inner(
        self: &Arc<Self>,
        uid: &str,
        ns: Option<&str>,
        orphan: bool,
    ) -> ApiResult<()> {
        for res in RESOURCES
            .iter()
            .filter(|r| r.namespaced == ns.is_some() || r.namespaced)
        {
            let prefix = res.ns_prefix(ns);
            let items = self
                .store
                .list(&prefix, &Default::default())
                .map_err(|e| ApiError::from_store(e, res, ""))?
                .items;
            for kv in items {
                // Cheap test before parsing: the owner's uid must appear in the bytes.
                if !kv.value.windows(uid.len()).any(|w| w == uid.as_bytes()) {
                    continue;
                }
                let o = parse(&kv)?;
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                if !owned {
                    continue;
                }
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ons = o["metadata"]["namespace"].as_str().map(String::from);
                let result = if orphan {
                    let uid = uid.to_string();
                    self.update(
                        res,
                        ons.as_deref(),
                        &name,
                        None,
                        WriteOptions::INTERNAL,
                        move |cur| {
                            let mut c = cur.clone();
                            if let Some(refs) = c["metadata"]["ownerReferences"].as_array_mut() {
                                refs.retain(|r| r["uid"] != uid.as_str());
                            }
                            Ok(c)
                        },
                    )
                    .await
                    .map(|_| ())
                } else {
                    self.delete(res, ons.as_deref(), &name, DeleteOptions::default())
                        .await
                        .map(|_| ())
                };
                if let Err(e) = result
                    && e.code != 404
                {
                    tracing::warn!(resource = res.plural, name = %name, error = %e, "dependent not collected");
                }
            }
        }
        Ok(())
    }

    /// Remove everything in a terminating namespace, then the namespace itself.
    fn finalize_namespace(self: Arc<Self>, ns: String) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.finalize_namespace_inner(ns))
    }

    async fn finalize_namespace_inner(self: Arc<Self>, ns: String) {
        let nsres = by_kind("Namespace").expect("namespaces are served");
        // Like Kubernetes' namespace controller, start a moment after the namespace is
        // marked: a client deleting the namespace and its content in one go (`kubectl
        // delete -f` of a file holding both) finds its objects still there.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let mut remaining = 0;
            for res in RESOURCES.iter().filter(|r| r.namespaced) {
                let Ok(list) = self
                    .store
                    .list(&res.ns_prefix(Some(&ns)), &Default::default())
                else {
                    remaining += 1;
                    continue;
                };
                for kv in list.items {
                    remaining += 1;
                    let Ok(o) = parse(&kv) else { continue };
                    if !o["metadata"]["deletionTimestamp"].is_null() {
                        continue;
                    }
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Err(e) = self
                        .delete(res, Some(&ns), &name, DeleteOptions::default())
                        .await
                        && e.code != 404
                    {
                        tracing::warn!(namespace = %ns, name = %name, error = %e, "namespace content not deleted");
                    }
                }
            }
            if remaining == 0 {
                let key = nsres.key(None, &ns);
                if let Some(kv) = self.store.get(&key) {
                    let op = Op::Delete {
                        key,
                        precondition: Precondition::ModRevision(kv.mod_revision),
                    };
                    match self.store.txn(vec![op]).await {
                        Ok(_) => {
                            tracing::info!(namespace = %ns, "namespace deleted");
                            return;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => {
                            tracing::warn!(namespace = %ns, error = %e, "namespace not deleted")
                        }
                    }
                } else {
                    return;
                }
            }
            if self.is_shutting_down() {
                // Picked up again at the next start.
                return;
            }
            // Pods bound to a node wait for it to finish them; look again shortly.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Resume namespace deletions that a previous run did not finish.
    pub async fn resume_namespace_deletions(self: &Arc<Self>) {
        let Some(nsres) = by_kind("Namespace") else {
            return;
        };
        let Ok(list) = self.store.list(&nsres.prefix(), &Default::default()) else {
            return;
        };
        for kv in list.items {
            if let Ok(o) = parse(&kv)
                && o["status"]["phase"] == "Terminating"
                && let Some(name) = o["metadata"]["name"].as_str()
            {
                let api = self.clone();
                let name = name.to_string();
                tokio::spawn(async move { api.finalize_namespace(name).await });
            }
        }
    }
}

/// Kinds whose spec changes bump `metadata.generation` (those a controller reconciles).
fn tracks_generation(res: &Resource) -> bool {
    matches!(
        res.kind,
        "Pod" | "Deployment" | "ReplicaSet" | "DaemonSet" | "Job"
    )
}
