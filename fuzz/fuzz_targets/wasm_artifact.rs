//! A Wasm artifact as the node loads it: the header sniff the executors use, the whole
//! binary validated as the artifact store does, and the same bytes as an image layer
//! scanned for a lone `.wasm` file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("skiff-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = skiff_shims::wasm::sniff(data);
    let _ = skiff_runtime::artifacts::fuzzing::wasm(data);
    let _ = skiff_runtime::artifacts::fuzzing::layer(data, scratch());
});
