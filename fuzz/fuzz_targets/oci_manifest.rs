//! An OCI or Docker manifest, or an image index, as a registry could serve it: parsed,
//! then a platform chosen or the layers planned.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = skiff_runtime::artifacts::fuzzing::manifest(data);
});
