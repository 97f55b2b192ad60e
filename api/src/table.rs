//! Server-side `Table` output, so `kubectl get` prints Kubernetes' columns.

use serde_json::{Value, json};

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// From the query parameter.
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// A column: name, type, priority (1 = only with `-o wide`), description.
type Col = (&'static str, &'static str, u8, &'static str);

const NAME: Col = (
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Col = (
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(kind: &str) -> Vec<Col> {
    match kind {
        "Pod" => vec![
            NAME,
            (
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            (
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            (
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            ("IP", "string", 1, "IP address allocated to the pod."),
            (
                "Node",
                "string",
                1,
                "Name of the Node this pod is assigned to.",
            ),
            (
                "Nominated Node",
                "string",
                1,
                "Node the scheduler nominated for this pod.",
            ),
            ("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        "Node" => vec![
            NAME,
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            AGE,
            (
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            ("Internal-IP", "string", 1, "List of internal IPs."),
            ("External-IP", "string", 1, "List of external IPs."),
            ("OS-Image", "string", 1, "OS Image reported by the node."),
            (
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node.",
            ),
            (
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ],
        "Namespace" => vec![
            NAME,
            ("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", 0, "The type of the service."),
            ("Cluster-IP", "string", 0, "The cluster IP of the service."),
            (
                "External-IP",
                "string",
                0,
                "The external IP of the service.",
            ),
            ("Port(s)", "string", 0, "The ports of the service."),
            AGE,
            (
                "Selector",
                "string",
                1,
                "The label selector of the service.",
            ),
        ],
        "Endpoints" => vec![
            NAME,
            ("Endpoints", "string", 0, "Endpoints of the service."),
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            ("AddressType", "string", 0, "The type of the addresses."),
            ("Ports", "string", 0, "The ports of the slice."),
            (
                "Endpoints",
                "string",
                0,
                "The addresses of the slice's endpoints.",
            ),
            AGE,
        ],
        "ConfigMap" => vec![NAME, ("Data", "string", 0, "Number of keys."), AGE],
        "Secret" => vec![
            NAME,
            ("Type", "string", 0, "The type of the secret."),
            ("Data", "string", 0, "Number of keys."),
            AGE,
        ],
        "Event" => vec![
            (
                "Last Seen",
                "string",
                0,
                "Time since the event was last seen.",
            ),
            ("Type", "string", 0, "Type of this event."),
            ("Reason", "string", 0, "Reason of this event."),
            ("Object", "string", 0, "The object this event is about."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the event.",
            ),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", 0, "Number of the pod with ready state."),
            (
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        "ReplicaSet" => vec![
            NAME,
            ("Desired", "string", 0, "Number of desired pods."),
            ("Current", "string", 0, "Number of actual replicas."),
            ("Ready", "string", 0, "Number of ready replicas."),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        "DaemonSet" => vec![
            NAME,
            (
                "Desired",
                "string",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            (
                "Current",
                "string",
                0,
                "The number of nodes running at least one daemon pod.",
            ),
            (
                "Ready",
                "string",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            (
                "Up-to-date",
                "string",
                0,
                "The total number of nodes that are running updated daemon pod.",
            ),
            (
                "Available",
                "string",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
        ],
        "Job" => vec![
            NAME,
            ("Status", "string", 0, "Status of the job."),
            (
                "Completions",
                "string",
                0,
                "The completion status of the job.",
            ),
            (
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            AGE,
        ],
        "RuntimeClass" => vec![
            NAME,
            (
                "Handler",
                "string",
                0,
                "The handler that runs pods of this class.",
            ),
            AGE,
        ],
        "Lease" => vec![
            NAME,
            ("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// Kubernetes' short human duration (`45s`, `3m12s`, `5h`, `12d`).
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: &Value, now: i64) -> String {
    ts.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or("<unknown>".into(), |t| human_duration(now - t.as_second()))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The first three of a list, and how many more there are, as kubectl shows endpoints.
fn first_few(items: &[String]) -> String {
    match items.len() {
        0..=3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{} in ({})", s(&e["key"]), vals.join(",")),
            Some("NotIn") => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
            Some("Exists") => s(&e["key"]),
            _ => format!("!{}", s(&e["key"])),
        });
    }
    or_none(parts.join(","))
}

fn map_string(m: &Value) -> String {
    or_none(
        m.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn template_columns(spec: &Value) -> (String, String) {
    let cs = spec["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn pod_status(o: &Value) -> String {
    if !o["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    let st = &o["status"];
    let mut reason = s(&st["reason"]);
    if reason.is_empty() {
        reason = s(&st["phase"]);
    }
    for c in st["initContainerStatuses"].as_array().into_iter().flatten() {
        let t = &c["state"]["terminated"];
        if t.is_object() && int(&t["exitCode"]) != 0 {
            return format!(
                "Init:{}",
                if t["reason"].is_string() {
                    s(&t["reason"])
                } else {
                    format!("ExitCode:{}", int(&t["exitCode"]))
                }
            );
        }
        let w = &c["state"]["waiting"];
        if w.is_object() && !w["reason"].is_null() && s(&w["reason"]) != "PodInitializing" {
            return format!("Init:{}", s(&w["reason"]));
        }
    }
    for c in st["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
    {
        let w = &c["state"]["waiting"];
        let t = &c["state"]["terminated"];
        if w.is_object() && !w["reason"].is_null() {
            reason = s(&w["reason"]);
        } else if t.is_object() {
            reason = if t["reason"].is_string() {
                s(&t["reason"])
            } else if t["signal"].is_number() {
                format!("Signal:{}", int(&t["signal"]))
            } else {
                format!("ExitCode:{}", int(&t["exitCode"]))
            };
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let md = &o["metadata"];
    let name = json!(s(&md["name"]));
    let created = age(&md["creationTimestamp"], now);
    let spec = &o["spec"];
    let st = &o["status"];
    match kind {
        "Pod" => {
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c["ready"] == Value::Bool(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
            let gates = spec["readinessGates"].as_array().map_or(0, Vec::len);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(created),
                json!(or_none(s(&st["podIP"]))),
                json!(or_none(s(&spec["nodeName"]))),
                json!(or_none(s(&st["nominatedNodeName"]))),
                json!(if gates == 0 {
                    "<none>".to_string()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        "Node" => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let mut status = match ready.map(|c| s(&c["status"])) {
                Some(x) if x == "True" => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if spec["unschedulable"] == Value::Bool(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = md["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .collect();
            let addr = |t: &str| {
                or_none(
                    st["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|a| a["type"] == t)
                        .map(|a| s(&a["address"]))
                        .collect::<Vec<_>>()
                        .join(","),
                )
            };
            let info = &st["nodeInfo"];
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                json!(created),
                json!(s(&info["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_none(s(&info["osImage"]))),
                json!(or_none(s(&info["kernelVersion"]))),
                json!(or_none(s(&info["containerRuntimeVersion"]))),
            ]
        }
        "Namespace" => vec![name, json!(s(&st["phase"])), json!(created)],
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    if p["nodePort"].is_number() {
                        format!(
                            "{}:{}/{}",
                            int(&p["port"]),
                            int(&p["nodePort"]),
                            s(&p["protocol"])
                        )
                    } else {
                        format!("{}/{}", int(&p["port"]), s(&p["protocol"]))
                    }
                })
                .collect();
            let external = match spec["type"].as_str() {
                Some("ExternalName") => s(&spec["externalName"]),
                Some("LoadBalancer") => "<pending>".into(),
                _ => "<none>".into(),
            };
            vec![
                name,
                json!(s(&spec["type"])),
                json!(or_none(s(&spec["clusterIP"]))),
                json!(external),
                json!(or_none(ports.join(","))),
                json!(created),
                json!(map_string(&spec["selector"])),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for ss in o["subsets"].as_array().into_iter().flatten() {
                for a in ss["addresses"].as_array().into_iter().flatten() {
                    for p in ss["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", s(&a["ip"]), int(&p["port"])));
                    }
                }
            }
            vec![name, json!(or_none(first_few(&eps))), json!(created)]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map_or("<unset>".into(), |n| n.to_string())
                })
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten().map(s))
                .collect();
            let unset = |x: String| if x.is_empty() { "<unset>".into() } else { x };
            vec![
                name,
                json!(s(&o["addressType"])),
                json!(unset(ports.join(","))),
                json!(unset(first_few(&addrs))),
                json!(created),
            ]
        }
        "ConfigMap" => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n.to_string()), json!(created)]
        }
        "Secret" => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![
                name,
                json!(s(&o["type"])),
                json!(n.to_string()),
                json!(created),
            ]
        }
        "Event" => {
            let last = if o["lastTimestamp"].is_string() {
                &o["lastTimestamp"]
            } else if o["eventTime"].is_string() {
                &o["eventTime"]
            } else {
                &md["creationTimestamp"]
            };
            let io = &o["involvedObject"];
            vec![
                json!(age(last, now)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&o["message"])),
            ]
        }
        "Deployment" => {
            let (cn, im) = template_columns(spec);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(&st["readyReplicas"]),
                    int(&spec["replicas"])
                )),
                json!(int(&st["updatedReplicas"]).to_string()),
                json!(int(&st["availableReplicas"]).to_string()),
                json!(created),
                json!(cn),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (cn, im) = template_columns(spec);
            vec![
                name,
                json!(int(&spec["replicas"]).to_string()),
                json!(int(&st["replicas"]).to_string()),
                json!(int(&st["readyReplicas"]).to_string()),
                json!(created),
                json!(cn),
                json!(im),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "DaemonSet" => vec![
            name,
            json!(int(&st["desiredNumberScheduled"]).to_string()),
            json!(int(&st["currentNumberScheduled"]).to_string()),
            json!(int(&st["numberReady"]).to_string()),
            json!(int(&st["updatedNumberScheduled"]).to_string()),
            json!(int(&st["numberAvailable"]).to_string()),
            json!(map_string(&spec["template"]["spec"]["nodeSelector"])),
            json!(created),
        ],
        "Job" => {
            let done = st["conditions"].as_array().into_iter().flatten().find(|c| {
                c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
            });
            let status = match done {
                Some(c) => s(&c["type"]),
                None if spec["suspend"] == Value::Bool(true) => "Suspended".into(),
                None => "Running".into(),
            };
            let duration = match (st["startTime"].as_str(), st["completionTime"].as_str()) {
                (Some(a), Some(b)) => {
                    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
                        (Ok(a), Ok(b)) => human_duration(b.as_second() - a.as_second()),
                        _ => String::new(),
                    }
                }
                (Some(a), None) => age(&json!(a), now),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    int(&st["succeeded"]),
                    spec["completions"].as_i64().unwrap_or(1)
                )),
                json!(duration),
                json!(created),
            ]
        }
        "RuntimeClass" => vec![name, json!(s(&o["handler"])), json!(created)],
        "Lease" => vec![
            name,
            json!(or_none(s(&spec["holderIdentity"]))),
            json!(created),
        ],
        _ => vec![name, json!(created)],
    }
}

fn row(kind: &str, o: &Value, now: i64, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(kind, o, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            });
        }
        IncludeObject::Object => r["object"] = o.clone(),
    }
    r
}

/// A `Table` of objects of one kind.
pub fn table(
    kind: &str,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let cols: Vec<Value> = if with_columns {
        columns(kind)
            .into_iter()
            .map(|(name, ty, priority, desc)| {
                json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": desc, "priority": priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": cols,
        "rows": objects.iter().map(|o| row(kind, o, now, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (10 * 3600, "10h"),
            (3 * 86400, "3d"),
            (400 * 86400, "400d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn pod_row_shows_ready_status_restarts() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells("Pod", &pod, 0);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "3");
        assert_eq!(c[6], "n1");
    }
}
