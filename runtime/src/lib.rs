//! Skiff's node agent: registers a Node, runs the Pods bound to it, reports their status
//! and serves their logs.
//!
//! Built so far: [`artifacts`], the node's artifact store — pull Wasm artifacts and
//! container images from OCI registries (or import them from files), verify every blob
//! against its digest, cache them by content on disk, and publish `.wasm` files with
//! [`artifacts::push`]. Start at [`artifacts::ArtifactStore::pull`].
//!
//! Not built yet: the pod sync loop, sandboxes, probes and logs. `skiff server` runs the
//! control plane only; `pods/log` answers 503 until an agent can serve logs.

pub mod artifacts;
