//! Who is calling, and what they may do.
//!
//! Authentication turns a bearer token into a [`UserInfo`], as Kubernetes does: the
//! admin token is a member of `system:masters`; a node credential is `system:node:<name>`
//! in `system:nodes`; a join token is `system:bootstrap:<id>` in `system:bootstrappers`;
//! a user token made by `skiff kubeconfig create` and a ServiceAccount token carry their
//! own names and groups ([`credentials`], [`serviceaccount`]). Impersonation headers may
//! then replace the caller with another user, if RBAC lets the caller impersonate them.
//!
//! Authorization runs Kubernetes' chain: members of `system:masters` may do anything;
//! nodes are judged by the Node authorizer and NodeRestriction ([`node`]), which reads
//! a graph of what the pods bound to each node reference; everyone (nodes included, for
//! what the Node authorizer has no opinion on) by [`rbac`].

pub mod credentials;
pub mod node;
pub mod rbac;
pub mod rbac_defaults;
pub mod serviceaccount;

use crate::error::ApiError;
use crate::pki::Credentials;
use crate::resources::Resource;
use crate::token::{self, JoinToken};
use std::collections::BTreeMap;

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// The group of every authenticated caller.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of node agents.
pub const NODES: &str = "system:nodes";
/// The group of join-token holders.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";

/// An authenticated caller, as Kubernetes' `user.Info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name (`alice`, `system:node:edge-1`, `system:serviceaccount:ns:sa`).
    pub name: String,
    /// A unique id, when the credential has one (ServiceAccounts: the SA's uid).
    pub uid: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// Extra attributes (a bound token's pod, for instance).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with these groups; `system:authenticated` is added.
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> UserInfo {
        let mut groups: Vec<String> = groups.into_iter().collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo {
            name: name.into(),
            groups,
            ..Default::default()
        }
    }

    /// The admin of the generated kubeconfig.
    pub fn admin() -> UserInfo {
        UserInfo::new("skiff:admin", [MASTERS.to_string()])
    }

    /// The node agent of node `name`.
    pub fn node(name: &str) -> UserInfo {
        UserInfo::new(format!("system:node:{name}"), [NODES.to_string()])
    }

    /// A holder of the join token `id`.
    pub fn joining(id: &str) -> UserInfo {
        UserInfo::new(
            format!("system:bootstrap:{id}"),
            [BOOTSTRAPPERS.to_string()],
        )
    }

    /// Whether `g` is one of the groups.
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// The node this is the agent of: `system:node:<name>` in `system:nodes`.
    pub fn node_name(&self) -> Option<&str> {
        self.name
            .strip_prefix("system:node:")
            .filter(|n| !n.is_empty() && self.in_group(NODES))
    }

    /// Whether this is a join-token holder that has not joined yet.
    pub fn is_joining(&self) -> bool {
        self.in_group(BOOTSTRAPPERS) && self.name.starts_with("system:bootstrap:")
    }

    /// Whether this caller may do anything.
    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// `user "alice" (groups=["a" "b"])`, as escalation refusals name a caller.
    pub fn describe(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(|g| format!("{g:?}")).collect();
        format!("user {:?} (groups=[{}])", self.name, groups.join(" "))
    }
}

/// The static secrets the server holds: the admin token, the key node logs tokens are
/// derived from, the ServiceAccount token signer, and the CA served on `/cacerts`.
#[derive(Clone)]
pub struct Auth {
    admin: String,
    legacy_join_secret: String,
    node_key: Vec<u8>,
    ca_pem: Option<String>,
    signer: Option<std::sync::Arc<serviceaccount::Signer>>,
}

impl Auth {
    /// Accept `admin` as the admin's token; `join_secret` is the secret of the join
    /// token in `DATA_DIR/node-token` (the `default` join token); `node_key` derives the
    /// tokens the apiserver calls node agents with.
    pub fn new(admin: String, join_secret: String, node_key: Vec<u8>) -> Self {
        Auth {
            admin,
            legacy_join_secret: join_secret,
            node_key,
            ca_pem: None,
            signer: None,
        }
    }

    /// The policy of a server with these credentials; `/cacerts` serves their CA.
    pub fn from_credentials(c: &Credentials) -> Self {
        let mut a = Auth::new(
            c.admin_token.clone(),
            c.join_secret.clone(),
            c.node_key.as_bytes().to_vec(),
        )
        .with_ca_pem(c.ca_pem.clone());
        a.signer = c.sa_signer.clone();
        a
    }

    /// Serve `ca_pem` on `/cacerts`.
    pub fn with_ca_pem(mut self, ca_pem: String) -> Self {
        self.ca_pem = Some(ca_pem);
        self
    }

    /// Sign and check ServiceAccount tokens with `signer`.
    pub fn with_signer(mut self, signer: std::sync::Arc<serviceaccount::Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The CA certificate file, as served on `/cacerts`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The ServiceAccount token signer, if this server issues tokens.
    pub fn signer(&self) -> Option<&serviceaccount::Signer> {
        self.signer.as_deref()
    }

    /// The token the apiserver presents to node `node_name`'s agent (for `pods/log`), for
    /// its credential `generation` (the credential Secret's uid, empty without one); the
    /// agent learns it when it joins.
    pub fn node_logs_token(&self, node_name: &str, generation: &str) -> String {
        token::node_logs_token(&self.node_key, node_name, generation)
    }

    /// The secret of the `default` join token (the one in `DATA_DIR/node-token`).
    pub fn default_join_secret(&self) -> &str {
        &self.legacy_join_secret
    }

    /// The bearer token of an `Authorization` header.
    pub fn bearer(header: Option<&http::HeaderValue>) -> Option<&str> {
        let h = header?.to_str().ok()?;
        let (scheme, tok) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| tok.trim())
            .filter(|t| !t.is_empty())
    }

    /// The admin, if `tok` is the admin token.
    pub fn admin_user(&self, tok: &str) -> Option<UserInfo> {
        (!self.admin.is_empty() && token::same_secret(tok.as_bytes(), self.admin.as_bytes()))
            .then(UserInfo::admin)
    }

    /// The join token's secret part, if `tok` is (or holds) one: a whole `skiff1` token
    /// or its bare secret.
    pub fn join_secret_of(tok: &str) -> String {
        match JoinToken::parse(tok) {
            Ok(t) => t.secret,
            Err(_) => tok.to_string(),
        }
    }
}

/// What a request does, as authorization sees it: a verb on a resource (which need not
/// be one Skiff serves, for access reviews), or on a non-resource path.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`
    /// (`impersonate`, `bind`, `escalate`, ... in reviews); for paths, the lower-cased
    /// HTTP method.
    pub verb: &'a str,
    /// API group, empty for core.
    pub group: &'a str,
    /// The resource's plural name (empty for a non-resource request).
    pub resource: &'a str,
    /// The subresource (`status`, `log`, ...).
    pub sub: Option<&'a str>,
    /// The namespace of the request (for `namespaces/NAME`, NAME itself).
    pub ns: Option<&'a str>,
    /// The object name from the path or a `metadata.name` field selector.
    pub name: Option<&'a str>,
    /// The served resource, when it is one.
    pub res: Option<&'a Resource>,
    /// For a non-resource request, its path.
    pub path: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    /// A request on a served resource.
    pub fn of(
        verb: &'a str,
        res: &'a Resource,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group: res.group,
            resource: res.plural,
            sub,
            ns,
            name,
            res: Some(res),
            path: None,
        }
    }

    /// A request on a path that is no resource (`/metrics`, `/api`).
    pub fn path(verb: &'a str, path: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource: "",
            sub: None,
            ns: None,
            name: None,
            res: None,
            path: Some(path),
        }
    }

    /// The kind, for kind-specific rules (empty when not a served resource).
    pub fn kind(&self) -> &'a str {
        self.res.map_or("", |r| r.kind)
    }

    /// `pods` or `deployments.apps`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// A permission that depends on the object itself; the handler, which reads the object,
/// enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Restriction {
    /// Allowed as asked.
    None,
    /// Allowed if the created object's `metadata.name` is this (a node creating its own
    /// Node or Lease).
    CreateNamed(String),
    /// Allowed only on a pod whose `spec.nodeName` is this node.
    PodBoundTo(String),
    /// A list or watch of pods allowed only with the field selector
    /// `spec.nodeName=<this node>`.
    NodeSelector(String),
    /// A node writing its own Node: only the labels a kubelet may set or change.
    NodeLabels(String),
    /// A node asking for a ServiceAccount token: only bound to a pod on this node that
    /// runs as that ServiceAccount.
    TokenForPodOn(String),
}

impl Restriction {
    /// Check a created object's name; `Err` is the 403 to answer.
    pub fn check_created(
        &self,
        id: &UserInfo,
        a: &Attributes<'_>,
        obj: &serde_json::Value,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::CreateNamed(want) => {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                if name != want {
                    let a = Attributes {
                        name: Some(name).filter(|n| !n.is_empty()),
                        ..*a
                    };
                    return Err(forbidden(
                        id,
                        &a,
                        Some(&format!(
                            "a node may only create the {} named after itself (\"{want}\")",
                            a.resource
                        )),
                    ));
                }
                if a.kind() == "Node" {
                    return node::check_node_labels(want, None, obj);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Check the stored object a request applies to; `Err` is the 403 to answer.
    pub fn check_stored(
        &self,
        id: &UserInfo,
        a: &Attributes<'_>,
        stored: &serde_json::Value,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::PodBoundTo(node) => {
                if stored["spec"]["nodeName"].as_str() == Some(node) {
                    return Ok(());
                }
                let reason = match a.verb {
                    "delete" => format!(
                        "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                    ),
                    "get" => format!("no relationship found between node '{node}' and this object"),
                    _ => format!(
                        "node \"{node}\" can only update the status of pods with spec.nodeName set to itself"
                    ),
                };
                Err(forbidden(id, a, Some(&reason)))
            }
            _ => Ok(()),
        }
    }

    /// Check an update: `old` as stored, `new` as it would be written.
    pub fn check_change(
        &self,
        old: &serde_json::Value,
        new: &serde_json::Value,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::NodeLabels(node) => {
                node::check_node_labels(node, Some(old), new)?;
                node::check_node_taints(node, old, new)
            }
            _ => Ok(()),
        }
    }

    /// Check a list or watch's field selector.
    pub fn check_selector(
        &self,
        id: &UserInfo,
        a: &Attributes<'_>,
        field_selector: &str,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::NodeSelector(node) => {
                let want = format!("spec.nodeName={node}");
                if field_selector
                    .split(',')
                    .any(|t| t.trim().replace("==", "=") == want)
                {
                    Ok(())
                } else {
                    Err(forbidden(
                        id,
                        a,
                        Some("can only list/watch pods with spec.nodeName field selector"),
                    ))
                }
            }
            _ => Ok(()),
        }
    }
}

/// The refusal for the join secret used as an API credential.
pub fn join_first_message(id: &UserInfo) -> String {
    format!(
        "User \"{}\" holds the node join token, which only allows joining: POST /skiff/v1/join \
         with {{\"nodeName\": \"<name>\"}} to get this node's credential, then call the API with it",
        id.name
    )
}

/// Whether `id` may do what `a` describes: `Ok` with what the handler must still check on
/// the object, or the 403 to answer. `graph` says whether a node's pods reference an
/// object; `rbac` is the current RBAC policy.
pub fn authorize(
    id: &UserInfo,
    a: &Attributes<'_>,
    graph: &dyn node::Graph,
    rbac: &rbac::Policy,
) -> Result<Restriction, ApiError> {
    if id.is_master() {
        return Ok(Restriction::None);
    }
    if id.is_joining() {
        return Err(ApiError::forbidden(join_first_message(id)));
    }
    let mut reason = None;
    if let Some(n) = id.node_name() {
        match node::authorize(n, a, graph) {
            node::Decision::Allow(r) => return Ok(r),
            node::Decision::NoOpinion(r) => reason = Some(r),
        }
    }
    if rbac.allows(id, a).is_some() {
        return Ok(Restriction::None);
    }
    Err(forbidden(
        id,
        a,
        reason.as_deref().filter(|r| !r.is_empty()),
    ))
}

/// A 403 in Kubernetes' words, with an optional reason after a colon.
pub fn forbidden(id: &UserInfo, a: &Attributes<'_>, reason: Option<&str>) -> ApiError {
    let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
    if let Some(path) = a.path {
        return ApiError::forbidden(format!(
            "forbidden: User \"{}\" cannot {} path \"{path}\"{reason}",
            id.name, a.verb
        ));
    }
    let what = match a.sub {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let subject = match a.name {
        Some(n) => format!("{} \"{n}\"", a.qualified()),
        None => a.qualified(),
    };
    let scope = match a.ns {
        Some(ns) if !ns.is_empty() => format!("in the namespace \"{ns}\""),
        _ => "at the cluster scope".into(),
    };
    let mut e = ApiError::forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{what}\" in API group \"{}\" {scope}{reason}",
        id.name, a.verb, a.group
    ));
    let mut details = serde_json::json!({"kind": a.resource});
    if let Some(n) = a.name {
        details["name"] = serde_json::json!(n);
    }
    if !a.group.is_empty() {
        details["group"] = serde_json::json!(a.group);
    }
    e.details = Some(details);
    e
}

#[cfg(test)]
mod tests;
