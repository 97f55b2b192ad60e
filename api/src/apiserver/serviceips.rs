//! ClusterIPs for Services from the service CIDR (`--service-cidr`, `10.96.0.0/12` by
//! default), handed out atomically: each address in use has a key of its own in the
//! store, written in the same transaction as its Service (absent before, or the write
//! fails) and removed in the same transaction as the Service's deletion. Two Services
//! created at once can never get the same address, as with Kubernetes' `IPAddress`
//! objects.

use super::Api;
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::store::{Op, Precondition};
use crate::validation::Cause;
use bytes::Bytes;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// Where the keys of addresses in use live (not an API resource).
const PREFIX: &str = "skiff/serviceips/";

/// The default service CIDR.
pub fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default()
}

fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

/// A Service's asked-for address refused, as Kubernetes words it.
fn refused(res: &Resource, name: &str, asked: &str, why: String) -> ApiError {
    let cause = Cause::invalid("spec.clusterIPs", &json!([asked]), why);
    ApiError::invalid(res, name, &[cause])
}

/// The asked-for `ip` belongs to another Service (seen before the write, or lost to a
/// concurrent create).
pub(super) fn taken(res: &Resource, name: &str, ip: impl std::fmt::Display) -> ApiError {
    let why = format!("failed to allocate IP {ip}: provided IP is already allocated");
    refused(res, name, &ip.to_string(), why)
}

/// Writes the key of `ip` naming its Service `svc`.
fn claim_op(ip: Ipv4Addr, svc: &Value, precondition: Precondition) -> Op {
    let md = &svc["metadata"];
    let owner = json!({"namespace": md["namespace"], "name": md["name"], "uid": md["uid"]});
    Op::Put {
        key: key(ip),
        value: Box::new(move |_| Ok(Bytes::from(owner.to_string()))),
        precondition,
    }
}

/// An address of `range` for which `taken` is false: random first, then the first free
/// one from a random start, so a nearly full range is still searched to the end. The
/// network address, the first host (the `kubernetes` Service's) and the broadcast
/// address are never handed out.
pub fn pick(range: Ipv4Net, taken: impl Fn(Ipv4Addr) -> bool, start: u32) -> Option<Ipv4Addr> {
    let base = u32::from(range.network());
    let size = 1u64 << (32 - u32::from(range.prefix_len()));
    // Offsets 2 ..= size-2.
    let usable = u32::try_from(size.checked_sub(3)?).ok()?;
    if usable == 0 {
        return None;
    }
    (0..usable)
        .map(|i| base + 2 + (start.wrapping_add(i) % usable))
        .map(Ipv4Addr::from)
        .find(|ip| !taken(*ip))
}

impl Api {
    /// The range ClusterIPs come from.
    pub fn service_cidr(&self) -> Ipv4Net {
        self.service_cidr
            .get()
            .copied()
            .unwrap_or_else(default_service_cidr)
    }

    /// Hand out ClusterIPs from `range` (`--service-cidr`); before the server serves.
    pub fn set_service_cidr(&self, range: Ipv4Net) {
        let _ = self.service_cidr.set(range.trunc());
    }

    /// Gives a new Service its address: the one it asks for (checked against the range
    /// and against addresses in use), or a free one. Returns the store operation that
    /// claims it, to commit with the Service; `None` for Services without an address.
    pub(super) fn claim_cluster_ip(
        &self,
        res: &Resource,
        obj: &mut Value,
    ) -> ApiResult<Option<Op>> {
        if res.kind != "Service" {
            return Ok(None);
        }
        let spec = &obj["spec"];
        let ty = spec["type"].as_str().unwrap_or("ClusterIP");
        let asked = spec["clusterIP"].as_str().unwrap_or("").to_string();
        if ty == "ExternalName" {
            return Ok(None);
        }
        if asked == "None" {
            // Headless: no address, listed as Kubernetes lists it.
            if obj["spec"]["clusterIPs"].is_null() {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
            return Ok(None);
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let range = self.service_cidr();
        let ip = if asked.is_empty() {
            let start: u32 = rand::random();
            pick(range, |ip| self.store.get(&key(ip)).is_some(), start)
                .ok_or_else(|| ApiError::internal("the service address range is full"))?
        } else {
            let refuse = |why: String| refused(res, &name, &asked, why);
            let ip: Ipv4Addr = asked.parse().map_err(|_| {
                refuse(format!(
                    "failed to allocate IP {asked}: not an IPv4 address"
                ))
            })?;
            if !range.contains(&ip) {
                return Err(refuse(format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                )));
            }
            if self.store.get(&key(ip)).is_some() {
                return Err(taken(res, &name, ip));
            }
            ip
        };
        obj["spec"]["clusterIP"] = json!(ip.to_string());
        obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        Ok(Some(claim_op(ip, obj, Precondition::Absent)))
    }

    /// Whether a failed claim lost a race for `key` (another Service took the address
    /// meanwhile).
    pub(super) fn is_cluster_ip_key(key: &str) -> bool {
        key.starts_with(PREFIX)
    }

    /// The operation freeing a deleted Service's address, to commit with the deletion.
    pub(super) fn release_cluster_ip(res: &Resource, obj: &Value) -> Option<Op> {
        if res.kind != "Service" {
            return None;
        }
        let ip: Ipv4Addr = obj["spec"]["clusterIP"].as_str()?.parse().ok()?;
        Some(Op::Delete {
            key: key(ip),
            precondition: Precondition::None,
        })
    }

    /// Claims the addresses of Services stored before addresses had keys (bootstrap).
    pub(super) async fn claim_existing_cluster_ips(&self) -> ApiResult<()> {
        let Some(svc) = crate::resources::by_kind("Service") else {
            return Ok(());
        };
        let list = self
            .store
            .list(&svc.prefix(), &Default::default())
            .map_err(|e| ApiError::from_store(e, svc, ""))?;
        let mut ops = Vec::new();
        for kv in &list.items {
            let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let Some(ip) = obj["spec"]["clusterIP"]
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if self.store.get(&key(ip)).is_none() {
                ops.push(claim_op(ip, &obj, Precondition::None));
            }
        }
        if !ops.is_empty() {
            self.store
                .txn(ops)
                .await
                .map_err(|e| ApiError::from_store(e, svc, ""))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_skip_what_is_taken_and_the_reserved_addresses() {
        let r: Ipv4Net = "10.0.0.0/29".parse().unwrap_or_default();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED);
        // Usable: .2 ..= .6 (not .0, .1 nor .7).
        assert_eq!(pick(r, |_| false, 0), Some(ip("10.0.0.2")));
        assert_eq!(pick(r, |_| false, 4), Some(ip("10.0.0.6")));
        assert_eq!(pick(r, |_| false, 5), Some(ip("10.0.0.2")), "wraps");
        let taken = |a: Ipv4Addr| a != ip("10.0.0.5");
        assert_eq!(
            pick(r, taken, 0),
            Some(ip("10.0.0.5")),
            "the last free one is found"
        );
        assert_eq!(pick(r, |_| true, 0), None);
        let tiny: Ipv4Net = "10.0.0.0/30".parse().unwrap_or_default();
        assert_eq!(pick(tiny, |_| false, 0), Some(ip("10.0.0.2")));
        let one: Ipv4Net = "10.0.0.0/31".parse().unwrap_or_default();
        assert_eq!(pick(one, |_| false, 0), None);
    }
}
