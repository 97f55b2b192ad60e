//! Skiff's executors behind one trait: the Wasm host (wasmtime) and the OCI executor
//! (youki's libcontainer).
//!
//! Not built yet: this crate is a placeholder in the workspace layout.
