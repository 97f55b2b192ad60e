//! Property: no sequence of placements and removals ever puts more on a node than it
//! can hold, or puts a pod on a node lacking a label its RuntimeClass requires.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use skiff_scheduler::cache::Cluster;
use skiff_scheduler::framework::Framework;
use skiff_scheduler::model::{NodeInfo, PodInfo, Resources, runtime_label};
use skiff_scheduler::placement::Placer;
use std::collections::HashMap;

#[derive(Clone, Debug)]
struct NodeSpec {
    cpu: i64,
    mem: i64,
    pods: i64,
    wasm: bool,
    oci: bool,
}

#[derive(Clone, Debug)]
enum Step {
    Place { cpu: i64, mem: i64, class: u8 },
    Remove(usize),
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        0i64..4000,
        0i64..4096,
        0i64..8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cpu, mem, pods, wasm, oci)| NodeSpec {
            cpu,
            mem: mem << 20,
            pods,
            wasm,
            oci,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0i64..1500, 0i64..1024, 0u8..3).prop_map(|(cpu, mem, class)| Step::Place { cpu, mem: mem << 20, class }),
        1 => (0usize..64).prop_map(Step::Remove),
    ]
}

const CLASSES: [(&str, &[&str]); 3] = [
    ("wasm", &["wasm"]),
    ("oci", &["oci"]),
    ("mixed", &["wasm", "oci"]),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn placements_respect_capacity_and_runtime_labels(
        nodes in prop::collection::vec(node_spec(), 0..12),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut cluster = Cluster::new();
        let mut specs = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let name = format!("n{i}");
            let mut info = NodeInfo::new(&name, Resources { milli_cpu: n.cpu, memory: n.mem, pods: n.pods });
            if n.wasm {
                info.set_label(&mut cluster.interner, &runtime_label("wasm"), "true");
            }
            if n.oci {
                info.set_label(&mut cluster.interner, &runtime_label("oci"), "true");
            }
            cluster.insert_node(info);
            specs.insert(name, n.clone());
        }
        let mut placer = Placer::new(Framework::default_profile());
        // Our own ledger: pod → (node, requests, class).
        let mut placed: Vec<(String, String, Resources, usize)> = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            match s {
                Step::Place { cpu, mem, class } => {
                    let class = class as usize;
                    let mut pod = PodInfo::with_requests(&format!("p{i}"), cpu, mem);
                    pod.node_selector = CLASSES[class].1.iter().map(|h| (runtime_label(h), "true".to_string())).collect();
                    pod.runtime_class = CLASSES[class].0.into();
                    if let Ok(idx) = placer.place(&cluster, &pod) {
                        let node = cluster.nodes()[idx].name.to_string();
                        cluster.assume(&pod, &node);
                        placed.push((pod.uid.clone(), node, pod.requests, class));
                    }
                }
                Step::Remove(k) => {
                    if !placed.is_empty() {
                        let (uid, ..) = placed.swap_remove(k % placed.len());
                        cluster.remove_pod(&uid);
                    }
                }
            }
            let mut used: HashMap<&str, Resources> = HashMap::new();
            for (_, node, req, class) in &placed {
                let u = used.entry(node.as_str()).or_default();
                *u = u.plus(*req);
                let spec = &specs[node];
                for h in CLASSES[*class].1 {
                    let has = if *h == "wasm" { spec.wasm } else { spec.oci };
                    prop_assert!(has, "{} pod on {node} lacking {h}", CLASSES[*class].0);
                }
            }
            for (node, u) in used {
                let spec = &specs[node];
                prop_assert!(u.milli_cpu <= spec.cpu, "{node}: cpu {} > {}", u.milli_cpu, spec.cpu);
                prop_assert!(u.memory <= spec.mem, "{node}: memory {} > {}", u.memory, spec.mem);
                prop_assert!(u.pods <= spec.pods, "{node}: pods {} > {}", u.pods, spec.pods);
                prop_assert_eq!(cluster.node(node).unwrap().requested, u);
            }
        }
    }
}
