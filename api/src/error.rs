//! The one place where failures become HTTP: every refusal is a Kubernetes `Status`.

use crate::resources::Resource;
use crate::store::{ConflictReason, StoreError};
use crate::validation::Cause;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A refused request, rendered as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes' machine-readable reason (`NotFound`, `Invalid`, ...).
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
    /// `details` of the Status.
    pub details: Option<Value>,
}

/// Results of the API layer.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 for an object.
    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    /// 404 for a path that is not served.
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource (path {path})"))
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    /// 405.
    pub fn method_not_allowed(what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({what})"),
        )
    }

    /// 406.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 409 for a create of an existing name.
    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    /// 409 for a stale resourceVersion.
    pub fn conflict(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    /// 410 after compaction.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415.
    pub fn unsupported_media(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"
            ),
        )
    }

    /// 422 with field causes.
    pub fn invalid(res: &Resource, name: &str, causes: &[Cause]) -> Self {
        Self::invalid_kind(res.kind, res.group, res.kind, name, causes)
    }

    /// 422 with field causes for an object that is not a served resource's (a
    /// `TokenRequest.authentication.k8s.io`): `shown` names it in the message.
    pub fn invalid_kind(
        shown: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: &[Cause],
    ) -> Self {
        let lines: Vec<String> = causes.iter().map(Cause::line).collect();
        let joined = if lines.len() == 1 {
            lines[0].clone()
        } else {
            format!("[{}]", lines.join(", "))
        };
        Self::new(422, "Invalid", format!("{shown} \"{name}\" is invalid: {joined}")).with_details(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }))
    }

    /// 500, without leaking internals beyond the one-line cause.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// A refusal another component (a node agent) gave, passed on with its code.
    pub fn passed_through(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            406 => "NotAcceptable",
            409 => "Conflict",
            410 => "Gone",
            413 => "RequestEntityTooLarge",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ if code >= 500 => "InternalError",
            _ => "BadRequest",
        };
        Self::new(code, reason, message)
    }

    /// Map a store failure on `name` of `res`.
    pub fn from_store(e: StoreError, res: &Resource, name: &str) -> Self {
        match e {
            StoreError::Conflict {
                reason: ConflictReason::Exists,
                ..
            } => Self::already_exists(res, name),
            StoreError::Conflict {
                reason: ConflictReason::Missing,
                ..
            } => Self::not_found(res, name),
            StoreError::Conflict {
                reason: ConflictReason::Stale,
                ..
            } => Self::conflict(res, name),
            StoreError::Compacted {
                requested,
                compacted,
            } => Self::gone(format!(
                "The resourceVersion for the provided list is too old (requested {requested}, oldest available {})",
                compacted + 1
            )),
            StoreError::FutureRevision(r) => {
                Self::new(504, "Timeout", format!("Too large resource version: {r}"))
            }
            StoreError::Encode(m) => Self::internal(m),
            StoreError::Closed => Self::unavailable("the server is shutting down"),
            StoreError::Backend(m) => Self::internal(m),
        }
    }

    /// The Status object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let code = http::StatusCode::from_u16(self.code)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.code == 401 {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}
