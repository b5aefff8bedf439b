//! Pod admission before anything starts (pkg/kubelet/lifecycle/predicate.go,
//! GeneralPredicates): a pod that does not fit the node's allocatable cpu, memory
//! or pod count, whose nodeSelector or required node affinity does not match the
//! node, or whose hostPorts are taken, is rejected: phase `Failed` with reason
//! `OutOfcpu`/`OutOfmemory`/`OutOfhugepages-<size>`/`OutOfpods`/`NodeAffinity`/`NodePorts`,
//! never started.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, NodeSelectorRequirement, NodeSelectorTerm, Pod};

/// What the node offers.
#[derive(Debug, Clone, Default)]
pub struct NodeResources {
    /// The node's name (for `matchFields` on `metadata.name`).
    pub name: String,
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub pods: i64,
    pub labels: BTreeMap<String, String>,
    /// Allocatable huge pages by resource (`hugepages-2Mi` → bytes).
    pub hugepages: BTreeMap<String, i64>,
}

/// Why a pod was rejected: reason and message as upstream sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// A container's request of `resource` (its limit when it has no request, as
/// API defaulting does): millicores for `cpu`, plain units otherwise; 0 without.
pub fn container_request(c: &Container, resource: &str) -> i64 {
    let res = c.resources.as_ref();
    let q = res.and_then(|x| x.requests.as_ref()).and_then(|m| m.get(resource)).or_else(|| res.and_then(|x| x.limits.as_ref()).and_then(|m| m.get(resource)));
    q.and_then(|q| if resource == "cpu" { crate::quantity::to_milli(&q.0).ok() } else { crate::quantity::to_value(&q.0).ok() }).unwrap_or(0)
}

/// A pod's effective requests (cpu millicores, memory bytes): the larger of the sum
/// over app containers and the largest init container, as the scheduler computes.
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0) };
    let req = container_request;
    let sum = |r: &str| spec.containers.iter().map(|c| req(c, r)).sum::<i64>();
    let init_max = |r: &str| spec.init_containers.iter().flatten().map(|c| req(c, r)).max().unwrap_or(0);
    (sum("cpu").max(init_max("cpu")), sum("memory").max(init_max("memory")))
}

/// A pod's huge page requests by resource: app containers' sum or the largest init container.
pub fn pod_hugepages(pod: &Pod) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else { return out };
    let of = |c: &Container| -> BTreeMap<String, i64> {
        let res = c.resources.as_ref();
        let m = res.and_then(|x| x.requests.as_ref()).into_iter().chain(res.and_then(|x| x.limits.as_ref())).flatten();
        let mut v = BTreeMap::new();
        for (k, q) in m.filter(|(k, _)| k.starts_with("hugepages-")) {
            v.entry(k.clone()).or_insert_with(|| crate::quantity::to_value(&q.0).unwrap_or(0));
        }
        v
    };
    for c in &spec.containers {
        for (k, v) in of(c) {
            *out.entry(k).or_insert(0) += v;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in of(c) {
            let e = out.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    out
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.map(|v| values.iter().any(|x| x == v)).unwrap_or(false),
        "NotIn" => value.map(|v| !values.iter().any(|x| x == v)).unwrap_or(true),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (value.and_then(int), values.first().and_then(|x| int(x))) {
            (Some(v), Some(x)) => if r.operator == "Gt" { v > x } else { v < x },
            _ => false,
        },
        _ => false,
    }
}

/// One nodeSelectorTerm: every expression (labels) and field (`metadata.name`)
/// matches; a term with neither matches nothing, as upstream.
fn term_matches(t: &NodeSelectorTerm, node: &NodeResources) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
}

/// nodeSelector and requiredDuringSchedulingIgnoredDuringExecution (terms are ORed).
fn node_affinity_matches(pod: &Pod, node: &NodeResources) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    required.map(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node))).unwrap_or(true)
}

/// The (protocol, hostIP, hostPort) a pod asks for.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = pod.spec.as_ref() else { return vec![] };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|hp| *hp > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, hp))
        })
        .collect()
}

/// Two host ports clash on the same protocol and port when their IPs are equal or
/// either is the wildcard.
fn ports_conflict(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

/// Checks `pod` against the node given the pods already admitted.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeResources) -> Result<(), Rejection> {
    if !node_affinity_matches(pod, node) {
        return Err(Rejection { reason: "NodeAffinity".into(), message: "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into() });
    }
    let wanted = host_ports(pod);
    if !wanted.is_empty() {
        let used: Vec<_> = admitted.iter().flat_map(|p| host_ports(p)).collect();
        if wanted.iter().any(|w| used.iter().any(|u| ports_conflict(w, u))) {
            return Err(Rejection {
                reason: "NodePorts".into(),
                message: "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".into(),
            });
        }
    }
    if admitted.len() as i64 + 1 > node.pods {
        return Err(Rejection {
            reason: "OutOfpods".into(),
            message: format!("Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}", admitted.len(), node.pods),
        });
    }
    let (cpu, mem) = pod_requests(pod);
    let (used_cpu, used_mem) = admitted.iter().map(|p| pod_requests(p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if cpu > 0 && used_cpu + cpu > node.cpu_milli {
        return Err(Rejection {
            reason: "OutOfcpu".into(),
            message: format!("Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}", node.cpu_milli),
        });
    }
    if mem > 0 && used_mem + mem > node.memory_bytes {
        return Err(Rejection {
            reason: "OutOfmemory".into(),
            message: format!("Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}", node.memory_bytes),
        });
    }
    for (name, want) in pod_hugepages(pod).into_iter().filter(|(_, v)| *v > 0) {
        let used: i64 = admitted.iter().map(|p| pod_hugepages(p).get(&name).copied().unwrap_or(0)).sum();
        let cap = node.hugepages.get(&name).copied().unwrap_or(0);
        if used + want > cap {
            return Err(Rejection {
                reason: format!("OutOf{name}"),
                message: format!("Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {cap}"),
            });
        }
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
        NodeResources { name: "n1".into(), cpu_milli: 2000, memory_bytes: 1 << 30, pods: 2, labels: [("disk".to_string(), "ssd".to_string()), ("gen".to_string(), "5".to_string())].into(), hugepages: [("hugepages-2Mi".to_string(), 8 << 20)].into() }
    }

    #[test]
    fn pods_that_fit_are_admitted() {
        assert!(admit(&pod("500m", "100Mi"), &[], &node()).is_ok());
    }

    #[test]
    fn too_much_memory_is_out_of_memory_with_upstream_message() {
        let r = admit(&pod("100m", "2Gi"), &[], &node()).unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        assert_eq!(r.message, "Node didn't have enough resource: memory, requested: 2147483648, used: 0, capacity: 1073741824");
    }

    #[test]
    fn huge_pages_must_fit_the_pools() {
        let huge = |size: &str, q: &str| {
            let mut p = pod("100m", "16Mi");
            let c = &mut p.spec.as_mut().unwrap().containers[0];
            let r = c.resources.as_mut().unwrap();
            r.limits = Some([(size.to_string(), Quantity(q.into())), ("memory".to_string(), Quantity("16Mi".into()))].into());
            p
        };
        let four = huge("hugepages-2Mi", "4Mi");
        assert!(admit(&four, &[&four], &node()).is_ok(), "8Mi in the 2Mi pool: two of them fit");
        let r = admit(&four, &[&four, &four], &NodeResources { pods: 10, ..node() }).unwrap_err();
        assert_eq!(r.reason, "OutOfhugepages-2Mi");
        assert_eq!(r.message, "Node didn't have enough resource: hugepages-2Mi, requested: 4194304, used: 8388608, capacity: 8388608");
        assert_eq!(admit(&huge("hugepages-1Gi", "1Gi"), &[], &node()).unwrap_err().reason, "OutOfhugepages-1Gi", "no 1Gi pool");
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

    fn affinity(terms: Vec<NodeSelectorTerm>) -> Pod {
        let mut p = pod("0", "0");
        p.spec.as_mut().unwrap().affinity = Some(k8s_openapi::api::core::v1::Affinity {
            node_affinity: Some(k8s_openapi::api::core::v1::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(k8s_openapi::api::core::v1::NodeSelector { node_selector_terms: terms }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }
    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement { key: key.into(), operator: op.into(), values: Some(values.iter().map(|v| v.to_string()).collect()) }
    }

    #[test]
    fn required_node_affinity_terms_are_ored_and_expressions_anded() {
        let term = |e: Vec<NodeSelectorRequirement>| NodeSelectorTerm { match_expressions: Some(e), match_fields: None };
        assert!(admit(&affinity(vec![term(vec![req("disk", "In", &["ssd", "nvme"]), req("gen", "Gt", &["4"])])]), &[], &node()).is_ok());
        let r = admit(&affinity(vec![term(vec![req("disk", "In", &["ssd"]), req("gen", "Lt", &["4"])])]), &[], &node()).unwrap_err();
        assert_eq!(r.reason, "NodeAffinity");
        assert!(admit(&affinity(vec![term(vec![req("gpu", "Exists", &[])]), term(vec![req("gpu", "DoesNotExist", &[])])]), &[], &node()).is_ok());
        assert!(admit(&affinity(vec![term(vec![req("disk", "NotIn", &["ssd"])])]), &[], &node()).is_err());
        let by_name = |n: &str| NodeSelectorTerm { match_expressions: None, match_fields: Some(vec![req("metadata.name", "In", &[n])]) };
        assert!(admit(&affinity(vec![by_name("n1")]), &[], &node()).is_ok());
        assert!(admit(&affinity(vec![by_name("n2")]), &[], &node()).is_err());
        assert!(admit(&affinity(vec![NodeSelectorTerm::default()]), &[], &node()).is_err(), "an empty term matches nothing");
    }

    #[test]
    fn a_taken_host_port_is_node_ports() {
        let with_port = |port: i32, ip: Option<&str>, proto: Option<&str>| {
            let mut p = pod("0", "0");
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 80,
                host_port: Some(port),
                host_ip: ip.map(String::from),
                protocol: proto.map(String::from),
                ..Default::default()
            }]);
            p
        };
        let big = NodeResources { pods: 10, ..node() };
        let a = with_port(8080, None, None);
        let r = admit(&with_port(8080, Some("127.0.0.1"), None), &[&a], &big).unwrap_err();
        assert_eq!(r.reason, "NodePorts");
        assert_eq!(r.message, "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports");
        assert!(admit(&with_port(8080, None, Some("UDP")), &[&a], &big).is_ok(), "another protocol");
        assert!(admit(&with_port(8081, None, None), &[&a], &big).is_ok(), "another port");
        let b = with_port(9090, Some("127.0.0.1"), None);
        assert!(admit(&with_port(9090, Some("127.0.0.2"), None), &[&b], &big).is_ok(), "two specific IPs");
    }
}
