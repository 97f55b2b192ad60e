//! A request body as the apiserver reads it: decoded as JSON, YAML or Kubernetes
//! protobuf (the first byte picks), checked against a kind's schema (the second byte
//! picks the kind), defaulted and validated. Any input must end in an object or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::codec::{self, FieldValidation};
use skiff_api::resources::RESOURCES;

const TYPES: [&str; 3] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fuzz_target!(|data: &[u8]| {
    let [t, k, body @ ..] = data else { return };
    let ct = TYPES[usize::from(*t) % TYPES.len()];
    let res = &RESOURCES[usize::from(*k) % RESOURCES.len()];
    let Ok(obj) = codec::decode(ct, body) else {
        return;
    };
    let Ok((mut obj, _)) = codec::typed(res, obj, FieldValidation::Strict) else {
        return;
    };
    skiff_api::defaults::apply(res, &mut obj);
    let _ = skiff_api::validation::validate(res, &obj);
    let _ = skiff_api::validation::validate_update(res, &obj, &obj);
});
