//! Issuing credentials: ServiceAccount tokens (`serviceaccounts/NAME/token`, the
//! TokenRequest API `kubectl create token` and node agents use), and node credentials
//! through `POST /skiff/v1/join`.

use super::Api;
use crate::auth::{Restriction, UserInfo, credentials, serviceaccount};
use crate::error::{ApiError, ApiResult};
use crate::resources::by_kind;
use crate::store::{Op, Precondition};
use crate::token;
use crate::validation::Cause;
use serde_json::{Value, json};
use std::sync::Arc;

fn invalid_request(field: &str, v: &Value, msg: &str) -> ApiError {
    ApiError::invalid_kind(
        "TokenRequest.authentication.k8s.io",
        "authentication.k8s.io",
        "TokenRequest",
        "",
        &[Cause::invalid(field, v, msg)],
    )
}

fn stored(api: &Api, kind: &str, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let res = by_kind(kind).ok_or_else(|| ApiError::internal(format!("{kind} is not served")))?;
    super::objects::parse(&api.get_kv(res, ns, name)?)
}

impl Api {
    /// `POST .../serviceaccounts/NAME/token`: a token for ServiceAccount `ns/name`, bound
    /// to a pod if the request says so. A node (`restriction`) may only ask for tokens
    /// bound to a pod on itself that runs as that ServiceAccount.
    pub fn token_request(
        &self,
        restriction: &Restriction,
        ns: &str,
        name: &str,
        mut req: Value,
    ) -> ApiResult<Value> {
        let Some(signer) = self.auth.signer() else {
            return Err(ApiError::unavailable(
                "this server has no ServiceAccount signing key",
            ));
        };
        if !req.is_object() {
            return Err(ApiError::bad_request("a TokenRequest must be an object"));
        }
        for (f, want) in [("name", name), ("namespace", ns)] {
            if let Some(v) = req["metadata"][f].as_str().filter(|v| !v.is_empty())
                && v != want
            {
                return Err(invalid_request(
                    &format!("metadata.{f}"),
                    &json!(v),
                    "must match the service account name if specified",
                ));
            }
        }
        let sa = stored(self, "ServiceAccount", Some(ns), name)?;
        let sa_uid = sa["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let spec = &req["spec"];
        let seconds = match &spec["expirationSeconds"] {
            Value::Null => 3600,
            v => v.as_i64().ok_or_else(|| {
                invalid_request("spec.expirationSeconds", v, "must be an integer")
            })?,
        };
        if seconds < serviceaccount::MIN_EXPIRATION {
            return Err(invalid_request(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > serviceaccount::MAX_EXPIRATION {
            return Err(invalid_request(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let bound = self.token_binding(restriction, ns, name, &spec["boundObjectRef"])?;
        let (tok, exp) = signer
            .issue(ns, name, &sa_uid, &audiences, seconds, &bound)
            .map_err(ApiError::internal)?;
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["kind"] = json!("TokenRequest");
        req["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": super::now()});
        req["spec"]["expirationSeconds"] = json!(seconds);
        if audiences.is_empty() {
            req["spec"]["audiences"] = json!([serviceaccount::ISSUER]);
        }
        req["status"] = json!({
            "token": tok,
            "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        Ok(req)
    }

    fn token_binding(
        &self,
        restriction: &Restriction,
        ns: &str,
        sa: &str,
        r: &Value,
    ) -> ApiResult<serviceaccount::Binding> {
        let node_only = match restriction {
            Restriction::TokenForPodOn(n) => Some(n.as_str()),
            _ => None,
        };
        if r.is_null() {
            return match node_only {
                Some(_) => Err(ApiError::forbidden(
                    "node requested token not bound to a pod",
                )),
                None => Ok(Default::default()),
            };
        }
        let kind = r["kind"].as_str().unwrap_or_default();
        if kind != "Pod" {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {kind}: only Pod is supported"
            )));
        }
        let pod_name = r["name"].as_str().unwrap_or_default();
        let pod = stored(self, "Pod", Some(ns), pod_name)?;
        let pod_uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(u) = r["uid"].as_str().filter(|u| !u.is_empty())
            && u != pod_uid
        {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on Pod \"{pod_name}\": the UID in the bound object reference ({u}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
                details: None,
            });
        }
        if pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            != sa
        {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount \"{sa}\" to pod running with different serviceaccount name."
            )));
        }
        let pod_node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
        if let Some(n) = node_only {
            if r["uid"].as_str().is_none_or(str::is_empty) {
                return Err(ApiError::forbidden(
                    "node requested token with a pod binding without a uid",
                ));
            }
            if pod_node != Some(n) {
                return Err(ApiError::forbidden(
                    "node requested token bound to a pod scheduled on a different node",
                ));
            }
        }
        let node = pod_node.map(|n| {
            let uid = stored(self, "Node", None, n)
                .ok()
                .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
                .unwrap_or_default();
            (n.to_string(), uid)
        });
        Ok(serviceaccount::Binding {
            pod: Some((pod_name.to_string(), pod_uid)),
            node,
        })
    }

    /// The generation of node `node`'s credential: its Secret's uid (empty without one).
    pub fn node_credential_generation(&self, node: &str) -> String {
        credentials::read(&*self.store, &credentials::node_credential_name(node))
            .and_then(|(_, s)| s["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// A new credential for node `node` (replacing any it had): what the server gives its
    /// own embedded agent. Returns the credential and the token the apiserver presents to
    /// that node's agent.
    pub async fn issue_node_credential(
        self: &Arc<Self>,
        node: &str,
    ) -> ApiResult<(String, String)> {
        let seen = credentials::read(&*self.store, &credentials::node_credential_name(node))
            .map(|(rev, _)| rev);
        self.issue_node_credential_over(node, seen).await
    }

    /// Same, replacing exactly the credential at store revision `seen` (`None`: there
    /// must be none), so two joins racing for one name cannot both win.
    async fn issue_node_credential_over(
        self: &Arc<Self>,
        node: &str,
        seen: Option<u64>,
    ) -> ApiResult<(String, String)> {
        let (tok, hash) = token::new_credential(token::NODE_CREDENTIAL_PREFIX, node);
        let obj = credentials::node_credential_object(node, &hash);
        let secrets = by_kind("Secret").ok_or_else(|| ApiError::internal("no secrets"))?;
        let name = credentials::node_credential_name(node);
        let key = secrets.key(Some(credentials::NAMESPACE), &name);
        let (mut obj, _) =
            crate::codec::typed(secrets, obj, crate::codec::FieldValidation::Ignore)?;
        let generation = uuid::Uuid::new_v4().to_string();
        obj["metadata"]["uid"] = json!(generation);
        obj["metadata"]["creationTimestamp"] = json!(super::now());
        let op = Op::Put {
            key,
            value: super::objects::encoder(obj),
            precondition: match seen {
                Some(rev) => Precondition::ModRevision(rev),
                None => Precondition::Absent,
            },
        };
        self.store
            .txn(vec![op])
            .await
            .map_err(|e| ApiError::from_store(e, secrets, &name))?;
        Ok((tok, self.auth.node_logs_token(node, &generation)))
    }

    /// `POST /skiff/v1/join` `{"nodeName": N}` by `caller`: node `N`'s credential. A join
    /// token may claim a name once: a name held by a credential or a Node needs the admin's
    /// approval (`skiff node approve N`), or the node's own credential (which then rotates).
    pub async fn join_as(self: &Arc<Self>, caller: &UserInfo, node: &str) -> ApiResult<Value> {
        let held_by_credential =
            credentials::read(&*self.store, &credentials::node_credential_name(node));
        let approved = held_by_credential.as_ref().is_some_and(|(_, s)| {
            s["metadata"]["annotations"][credentials::APPROVED_ANNOTATION] == "true"
        });
        let node_exists =
            by_kind("Node").is_some_and(|r| self.store.get(&r.key(None, node)).is_some());
        let own = caller.node_name() == Some(node);
        if let Some(other) = caller.node_name().filter(|n| *n != node) {
            return Err(ApiError::forbidden(format!(
                "node \"{other}\" may only renew its own credential, not join as \"{node}\""
            )));
        }
        let held = held_by_credential.is_some() || node_exists;
        if held && !own && !approved && !caller.is_master() {
            return Err(ApiError::forbidden(format!(
                "node name \"{node}\" is already held by a joined node: the admin can approve a new machine taking it over (`skiff node approve {node}`), or revoke it first (`skiff node revoke {node}`)"
            )));
        }
        if credentials::node_credential_name(node).len() > 253 {
            return Err(ApiError::bad_request(format!(
                "node name \"{node}\" is too long to hold a credential (at most 242 characters)"
            )));
        }
        let seen = held_by_credential.as_ref().map(|(rev, _)| *rev);
        let (tok, logs) = self.issue_node_credential_over(node, seen).await?;
        tracing::info!(node, by = %caller.name, rejoin = held, "node credential issued");
        Ok(json!({"token": tok, "logsToken": logs}))
    }
}
