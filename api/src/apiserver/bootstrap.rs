//! What every cluster starts with: the system namespaces, the built-in RuntimeClasses,
//! Kubernetes' default ClusterRoles and ClusterRoleBindings, and the `default` join
//! token (the one in `DATA_DIR/node-token`).

use super::Api;
use super::objects::{WriteOptions, parse};
use crate::auth::{credentials, rbac_defaults};
use crate::codec::FieldValidation;
use crate::error::{ApiError, ApiResult};
use crate::resources::{Resource, by_kind};
use crate::store::{Op, Precondition};
use serde_json::{Value, json};
use std::sync::Arc;

/// The store key recording that the `default` join token was made once: deleting its
/// Secret (`skiff token delete default`) must not bring it back at the next start.
const DEFAULT_JOIN_TOKEN_MADE: &str = "skiff/bootstrap/default-join-token";

fn runtime_class(name: &str, runtimes: &[&str]) -> Value {
    let mut selector = serde_json::Map::new();
    for r in runtimes {
        selector.insert(format!("runtime.skiff.dev/{r}"), json!("true"));
    }
    json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name, "labels": {"skiff.dev/built-in": "true"}},
        "handler": name,
        "scheduling": {"nodeSelector": selector},
    })
}

fn kind_of(o: &Value) -> ApiResult<&'static Resource> {
    by_kind(o["kind"].as_str().unwrap_or_default())
        .ok_or_else(|| ApiError::internal("unknown bootstrap kind"))
}

/// What `stored` lacks of `default`: missing rules of a role, missing subjects of a
/// binding (Kubernetes' auto-reconciliation adds, never removes). `None` when nothing.
fn reconciled(stored: &Value, default: &Value) -> Option<Value> {
    if stored["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] != "true" {
        return None;
    }
    let field = if default["kind"] == "ClusterRole" {
        "rules"
    } else {
        "subjects"
    };
    let have: Vec<Value> = stored[field].as_array().cloned().unwrap_or_default();
    let missing: Vec<&Value> = default[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| !have.contains(x))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut next = stored.clone();
    let mut all = have;
    all.extend(missing.into_iter().cloned());
    next[field] = json!(all);
    Some(next)
}

impl Api {
    /// Create what every cluster starts with, if missing, and put back what was removed
    /// from the default RBAC objects that allow it.
    pub async fn bootstrap(self: &Arc<Self>) -> ApiResult<()> {
        let mut objects = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-public"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}}),
            runtime_class("wasm", &["wasm"]),
            runtime_class("oci", &["oci"]),
            runtime_class("mixed", &["wasm", "oci"]),
        ];
        objects.extend(rbac_defaults::objects());
        for o in objects {
            let res = kind_of(&o)?;
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(kv) = self.store.get(&res.key(None, &name)) {
                if res.group == crate::auth::rbac::GROUP
                    && let Some(next) = reconciled(&parse(&kv)?, &o)
                {
                    self.update(res, None, &name, None, WriteOptions::INTERNAL, |_| {
                        Ok(next.clone())
                    })
                    .await?;
                }
                continue;
            }
            match self
                .create(res, None, o.clone(), FieldValidation::Strict, false)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        self.claim_existing_cluster_ips().await?;
        self.default_join_token().await
    }

    /// The `default` join token's Secret, from the secret in `DATA_DIR/node-token`, made
    /// once per cluster.
    async fn default_join_token(self: &Arc<Self>) -> ApiResult<()> {
        let secret = self.auth.default_join_secret().to_string();
        if secret.is_empty() {
            return Ok(());
        }
        let res = by_kind("Secret").ok_or_else(|| ApiError::internal("no secrets"))?;
        let obj = credentials::join_token_object(
            "default",
            &secret,
            None,
            "the join token skiff server wrote to DATA_DIR/node-token",
        );
        if self.store.get(DEFAULT_JOIN_TOKEN_MADE).is_some() {
            // Made before: follow an edited node-token file, but do not bring back a
            // deleted token.
            let name = credentials::join_token_name("default");
            if let Some((_, stored)) = credentials::read(&*self.store, &name)
                && stored["data"] != obj["data"]
            {
                let data = obj["data"].clone();
                self.update(
                    res,
                    Some(credentials::NAMESPACE),
                    &name,
                    None,
                    WriteOptions::INTERNAL,
                    |cur| {
                        let mut c = cur.clone();
                        c["data"] = data.clone();
                        Ok(c)
                    },
                )
                .await?;
            }
            return Ok(());
        }
        match self
            .create(
                res,
                Some(credentials::NAMESPACE),
                obj,
                FieldValidation::Strict,
                false,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        let op = Op::Put {
            key: DEFAULT_JOIN_TOKEN_MADE.into(),
            value: Box::new(|_| Ok(bytes::Bytes::from_static(b"made"))),
            precondition: Precondition::None,
        };
        self.store
            .txn(vec![op])
            .await
            .map_err(|e| ApiError::from_store(e, res, "default"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_adds_what_is_missing_and_only_when_allowed() {
        let default =
            json!({"kind": "ClusterRole", "rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]});
        let auto = json!({"kind": "ClusterRole", "metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": [{"verbs": ["get"]}, {"verbs": ["custom"]}]});
        let next = reconciled(&auto, &default).unwrap_or_default();
        assert_eq!(
            next["rules"],
            json!([{"verbs": ["get"]}, {"verbs": ["custom"]}, {"verbs": ["list"]}])
        );
        assert!(reconciled(&next, &default).is_none());
        let mut pinned = auto.clone();
        pinned["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
            json!("false");
        assert!(reconciled(&pinned, &default).is_none());
    }
}
