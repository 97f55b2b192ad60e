//! Where a pod's configuration comes from: the API, for ConfigMaps, Secrets and the
//! ServiceAccount tokens projected into pods (asked for with the node's own credential,
//! bound to the pod).

use super::env::Objects;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Api;

/// The lifetime a projected volume asks its ServiceAccount token for, if it has one.
pub(crate) fn token_seconds(v: &k8s_openapi::api::core::v1::Volume) -> Option<i64> {
    v.projected
        .as_ref()?
        .sources
        .iter()
        .flatten()
        .find_map(|s| s.service_account_token.as_ref())
        .map(|t| t.expiration_seconds.unwrap_or(3607))
}

/// The API as the source of ConfigMaps, Secrets and ServiceAccount tokens.
pub struct ApiObjects(pub kube::Client);

impl Objects for ApiObjects {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        Api::<ConfigMap>::namespaced(self.0.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("reading configmap {ns}/{name}: {e}"))
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        Api::<Secret>::namespaced(self.0.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("reading secret {ns}/{name}: {e}"))
    }

    async fn services(&self, ns: &str) -> Result<Vec<Service>, String> {
        let lp = kube::api::ListParams::default();
        let mut all = Api::<Service>::namespaced(self.0.clone(), ns)
            .list(&lp)
            .await
            .map_err(|e| format!("listing services of {ns}: {e}"))?
            .items;
        if ns != "default" {
            let k = Api::<Service>::namespaced(self.0.clone(), "default")
                .get_opt("kubernetes")
                .await
                .map_err(|e| format!("reading default/kubernetes: {e}"))?;
            all.extend(k);
        }
        Ok(all)
    }

    async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        pod: (&str, &str),
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<(String, jiff::Timestamp), String> {
        let req = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": audience.map(|a| vec![a]),
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.0, "uid": pod.1},
            },
        });
        let out: serde_json::Value =
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(self.0.clone(), ns)
                .create_subresource("token", name, &kube::api::PostParams::default(), &req)
                .await
                .map_err(|e| format!("requesting a token: {e}"))?;
        let token = out["status"]["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("the TokenRequest answer has no token")?
            .to_string();
        let expires = out["status"]["expirationTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or("the TokenRequest answer has no expirationTimestamp")?;
        Ok((token, expires))
    }
}
