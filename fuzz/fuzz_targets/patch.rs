//! Patch application as PATCH requests run it: JSON merge, JSON patch (RFC 6902) and
//! strategic merge (the first byte picks), the rest split at the first NUL into the
//! stored object and the patch, both JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::patch::{self, PatchKind};

fuzz_target!(|data: &[u8]| {
    let [k, rest @ ..] = data else { return };
    let kind = match k % 3 {
        0 => PatchKind::Merge,
        1 => PatchKind::Json,
        _ => PatchKind::Strategic,
    };
    let Some(split) = rest.iter().position(|b| *b == 0) else {
        return;
    };
    let (target, p) = (&rest[..split], &rest[split + 1..]);
    let (Ok(target), Ok(p)) = (
        serde_json::from_slice::<serde_json::Value>(target),
        serde_json::from_slice::<serde_json::Value>(p),
    ) else {
        return;
    };
    let _ = patch::apply(kind, &target, &p);
});
