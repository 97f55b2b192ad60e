//! Skiff's scheduler: places Pods on Nodes by runtime class, CPU and memory.
//!
//! Not built yet: this crate is a placeholder in the workspace layout. Until it lands,
//! Pods stay unscheduled (`Pending`, no `spec.nodeName`) unless a client binds them
//! through the `pods/binding` subresource, which the apiserver already serves.
