//! Bearer-token authentication and the small authorization policy: the admin may do
//! anything; a node (the join token) may read, and write only what a node agent writes.

use crate::error::ApiError;
use crate::resources::Resource;

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The cluster administrator.
    Admin,
    /// A node agent, holding the join token.
    Node,
}

impl Identity {
    /// The user name Kubernetes would report.
    pub fn user(&self) -> &'static str {
        match self {
            Identity::Admin => "skiff:admin",
            Identity::Node => "system:node",
        }
    }
}

/// The tokens the server accepts.
#[derive(Clone)]
pub struct Auth {
    admin: String,
    node: String,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Compare in time independent of where the first difference is.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Accept these two tokens.
    pub fn new(admin: String, node: String) -> Self {
        Auth { admin, node }
    }

    /// The identity behind an `Authorization` header, if any.
    pub fn authenticate(&self, header: Option<&http::HeaderValue>) -> Option<Identity> {
        let h = header?.to_str().ok()?;
        let (scheme, tok) = h.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let tok = tok.trim().as_bytes();
        if !self.admin.is_empty() && same(tok, self.admin.as_bytes()) {
            Some(Identity::Admin)
        } else if !self.node.is_empty() && same(tok, self.node.as_bytes()) {
            Some(Identity::Node)
        } else {
            None
        }
    }

    /// Whether `id` may do `verb` on `res` (and subresource `sub`).
    pub fn authorize(
        &self,
        id: Identity,
        verb: &str,
        res: &Resource,
        sub: Option<&str>,
        ns: Option<&str>,
    ) -> Result<(), ApiError> {
        if id == Identity::Admin || matches!(verb, "get" | "list" | "watch") && res.kind != "Secret"
        {
            return Ok(());
        }
        let allowed = match (res.kind, sub) {
            ("Node", _) | ("Lease", _) | ("Event", _) => true,
            ("Pod", Some("status")) => true,
            ("Pod", None) => matches!(verb, "delete" | "create"),
            // Nodes read the secrets and config maps their pods mount.
            ("Secret", None) => matches!(verb, "get"),
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        let what = match sub {
            Some(s) => format!("{}/{s}", res.plural),
            None => res.plural.to_string(),
        };
        let scope = match ns {
            Some(ns) if res.namespaced => format!(" in the namespace \"{ns}\""),
            _ => " at the cluster scope".into(),
        };
        Err(ApiError::forbidden(format!(
            "{} is forbidden: User \"{}\" cannot {verb} resource \"{what}\" in API group \"{}\"{scope}",
            res.qualified(),
            id.user(),
            res.group
        )))
    }
}
