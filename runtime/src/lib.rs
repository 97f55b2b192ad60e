//! Skiff's node agent: registers a Node, runs the Pods bound to it, reports their status
//! and serves their logs.
//!
//! Not built yet: this crate is a placeholder in the workspace layout. `skiff server`
//! runs the control plane only; `pods/log` answers 503 until an agent can serve logs.
