//! Who a request is from: the bearer token's user, then, if the request impersonates
//! someone (`kubectl --as`), that user, when RBAC lets the caller impersonate them.

use super::Api;
use crate::auth::{self, Attributes, Auth, UserInfo, credentials, serviceaccount};
use crate::error::{ApiError, ApiResult};
use crate::token::{NODE_CREDENTIAL_PREFIX, USER_TOKEN_PREFIX};
use http::HeaderMap;

impl Api {
    /// The user behind a bearer token, if it is one this server accepts now.
    pub fn user_of_token(&self, tok: &str) -> Option<UserInfo> {
        if let Some(u) = self.auth.admin_user(tok) {
            return Some(u);
        }
        let store = &*self.store;
        if tok.starts_with(&format!("{NODE_CREDENTIAL_PREFIX}.")) {
            return credentials::authenticate_node(store, tok);
        }
        if tok.starts_with(&format!("{USER_TOKEN_PREFIX}.")) {
            return credentials::authenticate_user(store, tok);
        }
        if tok.matches('.').count() == 2
            && tok.starts_with("eyJ")
            && let Some(signer) = self.auth.signer()
        {
            return serviceaccount::authenticate(signer, store, tok);
        }
        credentials::authenticate_join(store, &Auth::join_secret_of(tok))
    }

    /// The caller of a request: `None` is a 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<UserInfo> {
        let tok = Auth::bearer(headers.get(http::header::AUTHORIZATION))?;
        self.user_of_token(tok)
    }

    /// The user a request acts as: `real`, or whom its `Impersonate-*` headers name if
    /// `real` may impersonate each of them.
    pub fn impersonate(&self, real: UserInfo, headers: &HeaderMap) -> ApiResult<UserInfo> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(String::from)
                .collect()
        };
        let user = values("impersonate-user").into_iter().next();
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let extras: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| {
                let key = k.as_str().strip_prefix("impersonate-extra-")?;
                let key = percent_decode(key);
                Some((key, v.to_str().ok()?.to_string()))
            })
            .collect();
        let Some(user) = user else {
            if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
                return Err(ApiError::internal(
                    "requested impersonation of groups, a uid or extras without impersonating a user",
                ));
            }
            return Ok(real);
        };
        let policy = self.rbac.policy(&*self.store);
        let check = |a: Attributes<'_>| -> ApiResult<()> {
            if real.is_master() || policy.allows(&real, &a).is_some() {
                Ok(())
            } else {
                Err(auth::forbidden(&real, &a, None))
            }
        };
        let sa = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'));
        match sa {
            Some((ns, name)) => check(Attributes {
                verb: "impersonate",
                group: "",
                resource: "serviceaccounts",
                sub: None,
                ns: Some(ns),
                name: Some(name),
                res: None,
                path: None,
            })?,
            None => check(imp("", "users", None, &user))?,
        }
        for g in &groups {
            check(imp("", "groups", None, g))?;
        }
        if let Some(u) = &uid {
            check(imp("authentication.k8s.io", "uids", None, u))?;
        }
        for (k, v) in &extras {
            check(imp("authentication.k8s.io", "userextras", Some(k), v))?;
        }
        let groups = if groups.is_empty()
            && let Some((ns, _)) = sa
        {
            vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ]
        } else {
            groups
        };
        let mut u = if user == "system:anonymous" {
            let mut g = groups;
            if !g.iter().any(|x| x == "system:unauthenticated") {
                g.push("system:unauthenticated".into());
            }
            UserInfo {
                name: user,
                groups: g,
                ..Default::default()
            }
        } else if groups.iter().any(|g| g == "system:unauthenticated") {
            UserInfo {
                name: user,
                groups,
                ..Default::default()
            }
        } else {
            UserInfo::new(user, groups)
        };
        u.uid = uid.unwrap_or_default();
        for (k, v) in extras {
            u.extra.entry(k).or_default().push(v);
        }
        Ok(u)
    }
}

fn imp<'a>(
    group: &'a str,
    resource: &'a str,
    sub: Option<&'a str>,
    name: &'a str,
) -> Attributes<'a> {
    Attributes {
        verb: "impersonate",
        group,
        resource,
        sub,
        ns: None,
        name: Some(name),
        res: None,
        path: None,
    }
}

/// `%XX` escapes of a header name's suffix, as Kubernetes unescapes extra keys.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
