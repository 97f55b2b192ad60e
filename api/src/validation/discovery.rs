//! EndpointSlice (discovery.k8s.io/v1) checks, as Kubernetes makes them: an address
//! type that never changes, addresses of that type, and its limits (1,000 endpoints of
//! 1 to 100 addresses, 100 ports).

use super::{Cause, dns1123_label, dns1123_subdomain};
use serde_json::Value;
use std::net::IpAddr;

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 100;

fn too_many(field: String, have: usize, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooMany",
        field,
        message: format!("Too many: {have}: must have at most {max} items"),
    }
}

/// Checks a new EndpointSlice.
pub(super) fn slice(obj: &Value, out: &mut Vec<Cause>) {
    let at = &obj["addressType"];
    let kind = match at.as_str() {
        None | Some("") => {
            out.push(Cause::required("addressType"));
            None
        }
        Some(t) if ADDRESS_TYPES.contains(&t) => Some(t),
        Some(_) => {
            out.push(Cause::not_supported("addressType", at, ADDRESS_TYPES));
            None
        }
    };
    let endpoints = obj["endpoints"].as_array().map_or(&[][..], |v| v);
    if endpoints.len() > MAX_ENDPOINTS {
        out.push(too_many("endpoints".into(), endpoints.len(), MAX_ENDPOINTS));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let addrs = e["addresses"].as_array().map_or(&[][..], |v| v);
        if addrs.is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.addresses"),
                message: "Required value: must contain at least 1 address".into(),
            });
        }
        if addrs.len() > MAX_ADDRESSES {
            out.push(too_many(
                format!("{path}.addresses"),
                addrs.len(),
                MAX_ADDRESSES,
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            if let Some(why) = kind.and_then(|k| bad_address(k, a.as_str().unwrap_or_default())) {
                out.push(Cause::invalid(format!("{path}.addresses[{j}]"), a, why));
            }
        }
        if let Some(h) = e["hostname"].as_str() {
            for why in dns1123_label(h) {
                out.push(Cause::invalid(
                    format!("{path}.hostname"),
                    &e["hostname"],
                    why,
                ));
            }
        }
        if let Some(n) = e["nodeName"].as_str() {
            for why in dns1123_subdomain(n) {
                out.push(Cause::invalid(
                    format!("{path}.nodeName"),
                    &e["nodeName"],
                    why,
                ));
            }
        }
    }
    let ports = obj["ports"].as_array().map_or(&[][..], |v| v);
    if ports.len() > MAX_PORTS {
        out.push(too_many("ports".into(), ports.len(), MAX_PORTS));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let name = p["name"].as_str().unwrap_or_default();
        if !name.is_empty() {
            for why in dns1123_label(name) {
                out.push(Cause::invalid(format!("ports[{i}].name"), &p["name"], why));
            }
        }
        if names.contains(&name) {
            out.push(Cause::duplicate(format!("ports[{i}].name"), &p["name"]));
        }
        names.push(name);
        super::kinds::port_number(&format!("ports[{i}].port"), &p["port"], false, out);
        super::kinds::protocol(&format!("ports[{i}].protocol"), &p["protocol"], out);
    }
}

/// Checks an update: the address type is fixed once set.
pub(super) fn slice_update(old: &Value, new: &Value, out: &mut Vec<Cause>) {
    if old["addressType"] != new["addressType"] {
        out.push(Cause::invalid(
            "addressType",
            &new["addressType"],
            "field is immutable",
        ));
    }
}

/// Why `a` is not an address of type `kind`, if it is not.
fn bad_address(kind: &str, a: &str) -> Option<String> {
    match kind {
        "IPv4" if !matches!(a.parse::<IpAddr>(), Ok(IpAddr::V4(_))) => {
            Some("must be a valid IPv4 address".into())
        }
        "IPv6" if !matches!(a.parse::<IpAddr>(), Ok(IpAddr::V6(_))) => {
            Some("must be a valid IPv6 address".into())
        }
        "FQDN" => dns1123_subdomain(a).into_iter().next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn causes(obj: Value) -> Vec<String> {
        let mut out = Vec::new();
        slice(&obj, &mut out);
        out.iter().map(Cause::line).collect()
    }

    #[test]
    fn slices_are_checked_as_kubernetes_checks_them() {
        let ok = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "hostname": "web-0", "nodeName": "edge-1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "", "port": 9}]});
        assert_eq!(causes(ok), Vec::<String>::new());
        let cases = [
            (json!({}), "addressType: Required value"),
            (
                json!({"addressType": "IP"}),
                "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": []}]}),
                "endpoints[0].addresses: Required value: must contain at least 1 address",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}),
                "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
            ),
            (
                json!({"addressType": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]}),
                "endpoints[0].addresses[0]: Invalid value: \"10.0.0.1\": must be a valid IPv6 address",
            ),
            (
                json!({"addressType": "IPv4", "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}),
                "ports[1].name: Duplicate value: \"a\"",
            ),
            (
                json!({"addressType": "IPv4", "ports": [{"port": 70000}]}),
                "ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": vec![json!({"addresses": ["10.0.0.1"]}); 1001]}),
                "endpoints: Too many: 1001: must have at most 1000 items",
            ),
        ];
        for (obj, want) in cases {
            let got = causes(obj.clone());
            assert_eq!(got, vec![want.to_string()], "{obj}");
        }
        let mut out = Vec::new();
        slice_update(
            &json!({"addressType": "IPv4"}),
            &json!({"addressType": "IPv6"}),
            &mut out,
        );
        assert_eq!(
            out[0].line(),
            "addressType: Invalid value: \"IPv6\": field is immutable"
        );
    }
}
