//! Label and field selectors as lists and watches parse them, then matched against an
//! object, for every kind's field set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::resources::RESOURCES;
use skiff_api::select::{FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let obj = serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
        "spec": {"nodeName": "edge-1"},
        "status": {"phase": "Running"},
        "type": "Opaque",
    });
    if let Ok(l) = LabelSelector::parse(s) {
        let _ = l.matches(&obj["metadata"]["labels"]);
    }
    for r in RESOURCES {
        if let Ok(f) = FieldSelector::parse(r.kind, s) {
            let _ = f.matches(&obj);
        }
    }
});
