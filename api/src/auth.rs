//! Bearer-token authentication and the authorization policy.
//!
//! Three kinds of caller: the admin (the kubeconfig's token) may do anything; a node agent
//! holding its own credential ([`crate::token`]) may read, and write only what Kubernetes'
//! Node authorizer and NodeRestriction admission let a kubelet write (its own Node and
//! Lease, events, the status of pods bound to it); a holder of the join secret may only
//! trade it for a node credential.

use crate::error::ApiError;
use crate::pki::Credentials;
use crate::resources::Resource;
use crate::token::{self, JoinToken};

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The cluster administrator.
    Admin,
    /// The node agent of the named node, holding its node credential.
    Node(String),
    /// Someone holding the join secret, who has not joined yet.
    Joining,
}

impl Identity {
    /// The user name Kubernetes would report.
    pub fn user(&self) -> String {
        match self {
            Identity::Admin => "skiff:admin".into(),
            Identity::Node(n) => format!("system:node:{n}"),
            Identity::Joining => "system:bootstrap:skiff-join".into(),
        }
    }

    /// The groups Kubernetes would report.
    pub fn groups(&self) -> &'static [&'static str] {
        match self {
            Identity::Admin => &["system:masters", "system:authenticated"],
            Identity::Node(_) => &["system:nodes", "system:authenticated"],
            Identity::Joining => &["system:bootstrappers", "system:authenticated"],
        }
    }
}

/// The tokens the server accepts, and what it needs to hand out node credentials.
#[derive(Clone)]
pub struct Auth {
    admin: String,
    join_secret: String,
    node_key: Vec<u8>,
    ca_pem: Option<String>,
}

impl Auth {
    /// Accept `admin` as the admin's token, `join_secret` (bare or inside a `skiff1` join
    /// token) for joining, and node credentials signed with `node_key`.
    pub fn new(admin: String, join_secret: String, node_key: Vec<u8>) -> Self {
        Auth {
            admin,
            join_secret,
            node_key,
            ca_pem: None,
        }
    }

    /// The policy of a server with these credentials; `/cacerts` serves their CA.
    pub fn from_credentials(c: &Credentials) -> Self {
        Auth::new(
            c.admin_token.clone(),
            c.join_secret.clone(),
            c.node_key.as_bytes().to_vec(),
        )
        .with_ca_pem(c.ca_pem.clone())
    }

    /// Serve `ca_pem` on `/cacerts`.
    pub fn with_ca_pem(mut self, ca_pem: String) -> Self {
        self.ca_pem = Some(ca_pem);
        self
    }

    /// The CA certificate file, as served on `/cacerts`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The credential of node `node_name`.
    pub fn node_credential(&self, node_name: &str) -> String {
        token::node_credential(&self.node_key, node_name)
    }

    /// The identity behind an `Authorization` header, if any.
    pub fn authenticate(&self, header: Option<&http::HeaderValue>) -> Option<Identity> {
        let h = header?.to_str().ok()?;
        let (scheme, tok) = h.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let tok = tok.trim();
        if !self.admin.is_empty() && token::same_secret(tok.as_bytes(), self.admin.as_bytes()) {
            return Some(Identity::Admin);
        }
        if tok.starts_with(token::NODE_CREDENTIAL_PREFIX) {
            return token::verify_node_credential(&self.node_key, tok).map(Identity::Node);
        }
        // The whole join token works as well as its secret; the CA hash in it is for the
        // node to check the server, not the other way round.
        let secret = match JoinToken::parse(tok) {
            Ok(t) => t.secret,
            Err(_) => tok.to_string(),
        };
        if !self.join_secret.is_empty()
            && token::same_secret(secret.as_bytes(), self.join_secret.as_bytes())
        {
            return Some(Identity::Joining);
        }
        None
    }
}

/// What a request does, as authorization sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'a str,
    /// The resource.
    pub res: &'a Resource,
    /// The subresource (`status`, `log`, ...).
    pub sub: Option<&'a str>,
    /// The namespace of the request.
    pub ns: Option<&'a str>,
    /// The object name from the path (none for create, list and watch).
    pub name: Option<&'a str>,
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
}

impl Restriction {
    /// Check a created object's name; `Err` is the 403 to answer.
    pub fn check_created(
        &self,
        id: &Identity,
        a: &Attributes<'_>,
        obj: &serde_json::Value,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::CreateNamed(want) => {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                if name == want {
                    Ok(())
                } else {
                    let a = Attributes {
                        name: Some(name).filter(|n| !n.is_empty()),
                        ..*a
                    };
                    Err(forbidden(
                        id,
                        &a,
                        Some(&format!(
                            "a node may only create the {} named after itself (\"{want}\")",
                            a.res.plural
                        )),
                    ))
                }
            }
            Restriction::None | Restriction::PodBoundTo(_) => Ok(()),
        }
    }

    /// Check the stored object a write applies to; `Err` is the 403 to answer.
    pub fn check_stored(
        &self,
        id: &Identity,
        a: &Attributes<'_>,
        stored: &serde_json::Value,
    ) -> Result<(), ApiError> {
        match self {
            Restriction::PodBoundTo(node) => {
                if stored["spec"]["nodeName"].as_str() == Some(node) {
                    Ok(())
                } else {
                    let what = if a.verb == "delete" {
                        "delete"
                    } else {
                        "update the status of"
                    };
                    Err(forbidden(
                        id,
                        a,
                        Some(&format!(
                            "node \"{node}\" can only {what} pods with spec.nodeName set to itself"
                        )),
                    ))
                }
            }
            Restriction::None | Restriction::CreateNamed(_) => Ok(()),
        }
    }
}

/// Whether `id` may do what `a` describes: `Ok` with what the handler must still check on
/// the object, or the 403 to answer.
pub fn authorize(id: &Identity, a: &Attributes<'_>) -> Result<Restriction, ApiError> {
    match id {
        Identity::Admin => Ok(Restriction::None),
        Identity::Joining => Err(ApiError::forbidden(join_first_message(id))),
        Identity::Node(node) => node_rule(node, a)
            .map_err(|reason| forbidden(id, a, reason.as_deref().filter(|r| !r.is_empty()))),
    }
}

/// The refusal for the join secret used as an API credential.
pub fn join_first_message(id: &Identity) -> String {
    format!(
        "User \"{}\" holds the node join token, which only allows joining: POST /skiff/v1/join \
         with {{\"nodeName\": \"<name>\"}} to get this node's credential, then call the API with it",
        id.user()
    )
}

/// Kubernetes' Node authorizer and NodeRestriction, simplified. `Err` carries an optional
/// reason appended to the 403.
fn node_rule(node: &str, a: &Attributes<'_>) -> Result<Restriction, Option<String>> {
    let own_name = a.name == Some(node);
    let write = |ok: bool, reason: String| {
        if ok {
            Ok(Restriction::None)
        } else {
            Err(Some(reason))
        }
    };
    if matches!(a.verb, "get" | "list" | "watch") {
        // A node reads the secrets its pods mount one by one, never all of them.
        if a.res.kind == "Secret" && a.verb != "get" {
            return Err(None);
        }
        // Logs are fetched from the node that runs the pod with that node's credential, and
        // may hold anything the workload prints: no node reads another's through here.
        if a.sub == Some("log") {
            return Err(Some(
                "a node does not read pod logs through the apiserver".into(),
            ));
        }
        return Ok(Restriction::None);
    }
    match (a.res.kind, a.sub, a.verb) {
        ("Node", None, "create") => Ok(Restriction::CreateNamed(node.to_string())),
        ("Node", None | Some("status"), "update" | "patch") | ("Node", None, "delete") => write(
            own_name,
            format!("node \"{node}\" may only modify its own Node object"),
        ),
        ("Lease", None, verb @ ("create" | "update" | "patch" | "delete"))
            if a.res.group == "coordination.k8s.io" =>
        {
            if a.ns != Some(NODE_LEASE_NAMESPACE) {
                return Err(Some(format!(
                    "a node may only write its Lease in the namespace \"{NODE_LEASE_NAMESPACE}\""
                )));
            }
            if verb == "create" {
                return Ok(Restriction::CreateNamed(node.to_string()));
            }
            write(
                own_name,
                format!("node \"{node}\" may only modify the Lease named after itself"),
            )
        }
        ("Event", None, "create" | "update" | "patch") => Ok(Restriction::None),
        ("Pod", Some("status"), "update" | "patch") | ("Pod", None, "delete") => {
            Ok(Restriction::PodBoundTo(node.to_string()))
        }
        _ => Err(None),
    }
}

/// A 403 in Kubernetes' words, with an optional reason after a colon.
pub fn forbidden(id: &Identity, a: &Attributes<'_>, reason: Option<&str>) -> ApiError {
    let what = match a.sub {
        Some(s) => format!("{}/{s}", a.res.plural),
        None => a.res.plural.to_string(),
    };
    let subject = match a.name {
        Some(n) => format!("{} \"{n}\"", a.res.qualified()),
        None => a.res.qualified(),
    };
    let scope = match a.ns {
        Some(ns) if a.res.namespaced => format!("in the namespace \"{ns}\""),
        _ => "at the cluster scope".into(),
    };
    let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
    ApiError::forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{what}\" in API group \"{}\" {scope}{reason}",
        id.user(),
        a.verb,
        a.res.group
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources::by_kind;
    use serde_json::json;

    fn auth() -> Auth {
        Auth::new("admin-tok".into(), "join-secret".into(), b"key".to_vec())
    }

    fn header(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn tokens_map_to_identities() {
        let a = auth();
        let who = |h: &str| a.authenticate(Some(&header(h)));
        assert_eq!(who("Bearer admin-tok"), Some(Identity::Admin));
        assert_eq!(who("bearer admin-tok"), Some(Identity::Admin));
        assert_eq!(who("Bearer join-secret"), Some(Identity::Joining));
        let full = JoinToken {
            ca_sha256: "0".repeat(64),
            secret: "join-secret".into(),
        };
        assert_eq!(who(&format!("Bearer {full}")), Some(Identity::Joining));
        let cred = a.node_credential("n1");
        assert_eq!(
            who(&format!("Bearer {cred}")),
            Some(Identity::Node("n1".into()))
        );
        let forged = token::node_credential(b"other", "n1");
        assert_eq!(who(&format!("Bearer {forged}")), None);
        assert_eq!(who("Bearer nope"), None);
        assert_eq!(who("Basic admin-tok"), None);
        assert_eq!(a.authenticate(None), None);
        // An empty configured secret matches nothing.
        let empty = Auth::new(String::new(), String::new(), Vec::new());
        assert_eq!(empty.authenticate(Some(&header("Bearer "))), None);
        assert_eq!(Identity::Node("n1".into()).user(), "system:node:n1");
        assert!(
            Identity::Node("n1".into())
                .groups()
                .contains(&"system:nodes")
        );
    }

    /// `expect` is `"ok"`, `"403"`, or the restriction left for the handler.
    struct Row {
        id: Identity,
        verb: &'static str,
        kind: &'static str,
        sub: Option<&'static str>,
        ns: Option<&'static str>,
        name: Option<&'static str>,
        expect: &'static str,
    }

    fn row(
        id: &Identity,
        verb: &'static str,
        kind: &'static str,
        sub: Option<&'static str>,
        ns: Option<&'static str>,
        name: Option<&'static str>,
        expect: &'static str,
    ) -> Row {
        Row {
            id: id.clone(),
            verb,
            kind,
            sub,
            ns,
            name,
            expect,
        }
    }

    #[test]
    fn authorization_table() {
        let admin = Identity::Admin;
        let a = Identity::Node("a".into());
        let join = Identity::Joining;
        let (d, l) = (Some("default"), Some(NODE_LEASE_NAMESPACE));
        let rows = [
            // The admin does anything.
            row(&admin, "list", "Secret", None, d, None, "ok"),
            row(&admin, "deletecollection", "Pod", None, d, None, "ok"),
            row(&admin, "patch", "Node", None, None, Some("b"), "ok"),
            // Reads, except secrets in bulk.
            row(&a, "get", "Pod", None, d, Some("x"), "ok"),
            row(&a, "list", "Pod", None, None, None, "ok"),
            row(&a, "watch", "ConfigMap", None, d, None, "ok"),
            row(&a, "get", "Secret", None, d, Some("s"), "ok"),
            row(&a, "list", "Secret", None, d, None, "403"),
            row(&a, "watch", "Secret", None, None, None, "403"),
            row(&a, "get", "Pod", Some("log"), d, Some("x"), "403"),
            row(&admin, "get", "Pod", Some("log"), d, Some("x"), "ok"),
            // Its own Node only.
            row(&a, "create", "Node", None, None, None, "create:a"),
            row(&a, "update", "Node", None, None, Some("a"), "ok"),
            row(&a, "patch", "Node", Some("status"), None, Some("a"), "ok"),
            row(&a, "update", "Node", Some("status"), None, Some("a"), "ok"),
            row(&a, "delete", "Node", None, None, Some("a"), "ok"),
            row(&a, "patch", "Node", None, None, Some("b"), "403"),
            row(&a, "patch", "Node", Some("status"), None, Some("b"), "403"),
            row(&a, "delete", "Node", None, None, Some("b"), "403"),
            row(&a, "deletecollection", "Node", None, None, None, "403"),
            // Its own Lease in kube-node-lease only.
            row(&a, "create", "Lease", None, l, None, "create:a"),
            row(&a, "update", "Lease", None, l, Some("a"), "ok"),
            row(&a, "patch", "Lease", None, l, Some("a"), "ok"),
            row(&a, "update", "Lease", None, l, Some("b"), "403"),
            row(&a, "create", "Lease", None, d, None, "403"),
            row(&a, "update", "Lease", None, d, Some("a"), "403"),
            // Events.
            row(&a, "create", "Event", None, d, None, "ok"),
            row(&a, "patch", "Event", None, d, Some("e"), "ok"),
            row(&a, "delete", "Event", None, d, Some("e"), "403"),
            // Pods: status and delete of its own, checked on the stored pod.
            row(&a, "patch", "Pod", Some("status"), d, Some("x"), "pod:a"),
            row(&a, "update", "Pod", Some("status"), d, Some("x"), "pod:a"),
            row(&a, "delete", "Pod", None, d, Some("x"), "pod:a"),
            row(&a, "create", "Pod", None, d, None, "403"),
            row(&a, "update", "Pod", None, d, Some("x"), "403"),
            row(&a, "patch", "Pod", None, d, Some("x"), "403"),
            row(&a, "create", "Pod", Some("binding"), d, Some("x"), "403"),
            row(&a, "deletecollection", "Pod", None, d, None, "403"),
            // Nothing else.
            row(&a, "create", "ConfigMap", None, d, None, "403"),
            row(&a, "create", "Secret", None, d, None, "403"),
            row(
                &a,
                "patch",
                "Deployment",
                Some("scale"),
                d,
                Some("w"),
                "403",
            ),
            row(&a, "create", "Namespace", None, None, None, "403"),
            // The join secret: nothing at all through the resource API.
            row(&join, "get", "Pod", None, d, Some("x"), "403"),
            row(&join, "list", "Pod", None, d, None, "403"),
            row(&join, "create", "Node", None, None, None, "403"),
        ];
        let mut failures = Vec::new();
        for r in &rows {
            let res = by_kind(r.kind).unwrap();
            let attrs = Attributes {
                verb: r.verb,
                res,
                sub: r.sub,
                ns: r.ns,
                name: r.name,
            };
            let got = match authorize(&r.id, &attrs) {
                Ok(Restriction::None) => "ok".to_string(),
                Ok(Restriction::CreateNamed(n)) => format!("create:{n}"),
                Ok(Restriction::PodBoundTo(n)) => format!("pod:{n}"),
                Err(e) => {
                    assert_eq!(e.code, 403);
                    "403".to_string()
                }
            };
            if got != r.expect {
                failures.push(format!(
                    "{:?} {} {}{} {:?}/{:?}: want {}, got {got}",
                    r.id,
                    r.verb,
                    r.kind,
                    r.sub.map(|s| format!("/{s}")).unwrap_or_default(),
                    r.ns,
                    r.name,
                    r.expect
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn refusals_read_like_kubernetes() {
        let a = Identity::Node("a".into());
        let nodes = by_kind("Node").unwrap();
        let attrs = Attributes {
            verb: "patch",
            res: nodes,
            sub: None,
            ns: None,
            name: Some("b"),
        };
        let e = authorize(&a, &attrs).unwrap_err();
        assert!(
            e.message.starts_with(
                "nodes \"b\" is forbidden: User \"system:node:a\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
            ),
            "{}",
            e.message
        );
        let secrets = by_kind("Secret").unwrap();
        let attrs = Attributes {
            verb: "list",
            res: secrets,
            sub: None,
            ns: Some("default"),
            name: None,
        };
        let e = authorize(&a, &attrs).unwrap_err();
        assert_eq!(
            e.message,
            "secrets is forbidden: User \"system:node:a\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
        );
        let e = authorize(&Identity::Joining, &attrs).unwrap_err();
        assert!(e.message.contains("POST /skiff/v1/join"), "{}", e.message);
    }

    #[test]
    fn restrictions_check_the_object() {
        let a = Identity::Node("a".into());
        let pods = by_kind("Pod").unwrap();
        let attrs = Attributes {
            verb: "patch",
            res: pods,
            sub: Some("status"),
            ns: Some("default"),
            name: Some("x"),
        };
        let r = Restriction::PodBoundTo("a".into());
        assert!(
            r.check_stored(&a, &attrs, &json!({"spec": {"nodeName": "a"}}))
                .is_ok()
        );
        let e = r
            .check_stored(&a, &attrs, &json!({"spec": {"nodeName": "b"}}))
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("spec.nodeName set to itself"),
            "{}",
            e.message
        );
        assert!(r.check_stored(&a, &attrs, &json!({"spec": {}})).is_err());
        let leases = by_kind("Lease").unwrap();
        let attrs = Attributes {
            verb: "create",
            res: leases,
            sub: None,
            ns: Some(NODE_LEASE_NAMESPACE),
            name: None,
        };
        let r = Restriction::CreateNamed("a".into());
        assert!(
            r.check_created(&a, &attrs, &json!({"metadata": {"name": "a"}}))
                .is_ok()
        );
        let e = r
            .check_created(&a, &attrs, &json!({"metadata": {"name": "b"}}))
            .unwrap_err();
        assert!(
            e.message
                .starts_with("leases.coordination.k8s.io \"b\" is forbidden"),
            "{}",
            e.message
        );
        assert!(
            r.check_created(&a, &attrs, &json!({"metadata": {"generateName": "a-"}}))
                .is_err()
        );
    }
}
