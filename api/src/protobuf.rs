//! Kubernetes' protobuf wire format for request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Not decoded yet: such bodies are refused with 415 and a message naming the formats
//! that work, so a client can switch (kubectl's `create -f` and `apply` send JSON).

use crate::error::{ApiError, ApiResult};
use serde_json::Value;

/// Decode a protobuf body into the JSON form of the object.
pub fn decode(_body: &[u8]) -> ApiResult<Value> {
    Err(ApiError::unsupported_media(
        "application/vnd.kubernetes.protobuf (not supported yet: send JSON or YAML, e.g. `kubectl create -f` or `kubectl apply`)",
    ))
}
