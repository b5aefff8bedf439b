//! Pod admission before anything starts (pkg/kubelet/lifecycle/predicate.go,
//! GeneralPredicates): a pod that does not fit the node's allocatable cpu, memory
//! or pod count, or whose nodeSelector does not match the node's labels, is
//! rejected: phase `Failed` with reason `OutOfcpu`/`OutOfmemory`/`OutOfpods`/
//! `NodeAffinity`, and never started.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the node offers.
#[derive(Debug, Clone, Default)]
pub struct NodeResources {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub pods: i64,
    pub labels: BTreeMap<String, String>,
}

/// Why a pod was rejected: reason and message as upstream sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// A pod's effective requests (cpu millicores, memory bytes): the larger of the sum
/// over app containers and the largest init container, as the scheduler computes.
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0) };
    let req = |c: &Container, r: &str| -> i64 {
        let res = c.resources.as_ref();
        let q = res.and_then(|x| x.requests.as_ref()).and_then(|m| m.get(r)).or_else(|| res.and_then(|x| x.limits.as_ref()).and_then(|m| m.get(r)));
        q.and_then(|q| if r == "cpu" { crate::quantity::to_milli(&q.0).ok() } else { crate::quantity::to_value(&q.0).ok() }).unwrap_or(0)
    };
    let sum = |r: &str| spec.containers.iter().map(|c| req(c, r)).sum::<i64>();
    let init_max = |r: &str| spec.init_containers.iter().flatten().map(|c| req(c, r)).max().unwrap_or(0);
    (sum("cpu").max(init_max("cpu")), sum("memory").max(init_max("memory")))
}

/// Checks `pod` against the node given the pods already admitted.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeResources) -> Result<(), Rejection> {
    if let Some(sel) = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()) {
        if sel.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
            return Err(Rejection { reason: "NodeAffinity".into(), message: "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into() });
        }
    }
    if admitted.len() as i64 + 1 > node.pods {
        return Err(Rejection {
            reason: "OutOfpods".into(),
            message: format!("Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}", admitted.len(), node.pods),
        });
    }
    let (cpu, mem) = pod_requests(pod);
    let (used_cpu, used_mem) = admitted.iter().map(|p| pod_requests(p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if cpu > 0 && used_cpu + cpu > node.cpu_milli {
        return Err(Rejection {
            reason: "OutOfcpu".into(),
            message: format!("Pod was rejected: Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}", node.cpu_milli),
        });
    }
    if mem > 0 && used_mem + mem > node.memory_bytes {
        return Err(Rejection {
            reason: "OutOfmemory".into(),
            message: format!("Pod was rejected: Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}", node.memory_bytes),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(cpu: &str, mem: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(mem.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn node() -> NodeResources {
        NodeResources { cpu_milli: 2000, memory_bytes: 1 << 30, pods: 2, labels: [("disk".to_string(), "ssd".to_string())].into() }
    }

    #[test]
    fn pods_that_fit_are_admitted() {
        assert!(admit(&pod("500m", "100Mi"), &[], &node()).is_ok());
    }

    #[test]
    fn too_much_memory_is_out_of_memory_with_upstream_message() {
        let r = admit(&pod("100m", "2Gi"), &[], &node()).unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        assert_eq!(r.message, "Pod was rejected: Node didn't have enough resource: memory, requested: 2147483648, used: 0, capacity: 1073741824");
    }

    #[test]
    fn admitted_pods_count_against_cpu_and_pods() {
        let a = pod("1500m", "1Mi");
        let r = admit(&pod("1", "1Mi"), &[&a], &node()).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        let b = pod("0", "0");
        assert_eq!(admit(&pod("0", "0"), &[&b, &b], &node()).unwrap_err().reason, "OutOfpods");
    }

    #[test]
    fn node_selectors_must_match_node_labels() {
        let mut p = pod("0", "0");
        p.spec.as_mut().unwrap().node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        assert_eq!(admit(&p, &[], &node()).unwrap_err().reason, "NodeAffinity");
        p.spec.as_mut().unwrap().node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(admit(&p, &[], &node()).is_ok());
    }
}
