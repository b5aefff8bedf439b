//! In-place pod resize (KEP-1287, GA in 1.35), as upstream's allocation manager
//! and kuberuntime do it: the spec's cpu/memory are the *desired* resources; the
//! kubelet *allocates* them when they fit the node (checkpointed in the pod
//! directory, so an agent restart keeps them), containers start with the
//! allocation, and running containers are *actuated* in place (their cgroup
//! limits updated through containerd) or restarted when their `resizePolicy`
//! says `RestartContainer`. `status.containerStatuses[].resources` reports what a
//! running container actually has; the `PodResizePending` (Deferred/Infeasible)
//! and `PodResizeInProgress` conditions and the `ResizeStarted`,
//! `ResizeCompleted`, `ResizeDeferred` and `ResizeInfeasible` events tell the
//! rest. Pure except [`load`] and [`save`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::Kind;

pub const PENDING: &str = "PodResizePending";
pub const IN_PROGRESS: &str = "PodResizeInProgress";
pub const DEFERRED: &str = "Deferred";
pub const INFEASIBLE: &str = "Infeasible";
/// The in-progress condition's reason when actuating failed (retried every sync).
pub const ERROR: &str = "Error";

/// The allocated resources of the pod's resizable containers, by name.
pub type Allocation = BTreeMap<String, ResourceRequirements>;

/// App containers and sidecars are resizable; other init containers and ephemeral
/// containers are not (upstream's IsResizableContainer).
pub fn resizable(c: &Container, kind: Kind) -> bool {
    match kind {
        Kind::App => true,
        Kind::Init => super::plan::is_sidecar(c),
        Kind::Ephemeral => false,
    }
}

fn resizable_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let inits = spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten().filter(|c| resizable(c, Kind::Init));
    inits.chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
}

/// The allocation the pod's spec asks for.
pub fn desired(pod: &Pod) -> Allocation {
    resizable_containers(pod).map(|c| (c.name.clone(), c.resources.clone().unwrap_or_default())).collect()
}

/// Whether the spec asks for other resources than `allocated`.
pub fn differs(pod: &Pod, allocated: &Allocation) -> bool {
    resizable_containers(pod).any(|c| allocated.get(&c.name).is_some_and(|a| !same(a, &c.resources.clone().unwrap_or_default())))
}

/// Two resource requirements are the same for cpu, memory and the rest when their
/// quantities are equal (`0.1` is `100m`).
fn same(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    let eq = |x: &Option<BTreeMap<String, Quantity>>, y: &Option<BTreeMap<String, Quantity>>| {
        let (x, y) = (x.clone().unwrap_or_default(), y.clone().unwrap_or_default());
        x.len() == y.len() && x.iter().all(|(k, q)| y.get(k).is_some_and(|p| p.0 == q.0 || (milli(&p.0).is_some() && milli(&p.0) == milli(&q.0))))
    };
    eq(&a.limits, &b.limits) && eq(&a.requests, &b.requests)
}

fn milli(q: &str) -> Option<i64> {
    crate::quantity::to_milli(q).ok()
}

/// The container as it runs: its allocated resources instead of the spec's.
pub fn with_allocation(mut c: Container, allocated: Option<&Allocation>) -> Container {
    if let Some(r) = allocated.and_then(|a| a.get(&c.name)) {
        c.resources = Some(r.clone());
    }
    c
}

/// The pod with its allocated resources (what admission counts for it).
pub fn allocated_pod(pod: &Pod, allocated: &Allocation) -> Pod {
    let mut p = pod.clone();
    if let Some(spec) = p.spec.as_mut() {
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            if let Some(r) = allocated.get(&c.name) {
                c.resources = Some(r.clone());
            }
        }
    }
    p
}

fn path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("allocated.json")
}

/// The checkpointed allocation of a pod, if any.
pub fn load(pod_dir: &Path) -> Option<Allocation> {
    serde_json::from_slice(&std::fs::read(path(pod_dir)).ok()?).ok()
}

/// Checkpoints the allocation (atomically).
pub fn save(pod_dir: &Path, allocated: &Allocation) -> std::io::Result<()> {
    std::fs::create_dir_all(pod_dir)?;
    super::store::write_atomic(&path(pod_dir), &serde_json::to_vec(allocated).unwrap_or_default())
}

/// What a container's cgroup was given (the OCI spec's cpu and memory), kept on
/// its containerd record: the *actual* resources the status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Applied {
    pub shares: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
}

impl Applied {
    /// What the runtime spec gives a container with these resources (see
    /// `runtime::spec`: requests → shares, cpu limit → CFS quota, memory limit).
    pub fn of(r: Option<&ResourceRequirements>) -> Applied {
        let get = |m: Option<&BTreeMap<String, Quantity>>, k: &str| m.and_then(|m| m.get(k)).map(|q| q.0.clone());
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        let cpu_limit = get(limits, "cpu").and_then(|q| milli(&q));
        let cpu_request = get(requests, "cpu").and_then(|q| milli(&q)).or(cpu_limit);
        Applied {
            shares: crate::runtime::spec::milli_cpu_to_shares(cpu_request),
            quota: cpu_limit.map(crate::runtime::spec::milli_cpu_to_quota),
            period: cpu_limit.map(|_| crate::runtime::spec::CPU_PERIOD),
            memory: get(limits, "memory").and_then(|q| crate::quantity::to_value(&q).ok()),
        }
    }

    /// The OCI `LinuxResources` containerd's task update takes. A limit that goes
    /// away is lifted (-1 quota, -1 memory: unlimited).
    pub fn linux_resources(&self) -> serde_json::Value {
        let mut cpu = serde_json::json!({ "shares": self.shares, "quota": self.quota.unwrap_or(-1) });
        if let Some(p) = self.period {
            cpu["period"] = p.into();
        }
        serde_json::json!({ "cpu": cpu, "memory": { "limit": self.memory.unwrap_or(-1) } })
    }
}

/// Which resources differ between what a container has and what it should have:
/// (cpu, memory). Memory requests are not actuated on cgroups (no MemoryQoS).
pub fn changes(actual: &Applied, target: &Applied) -> (bool, bool) {
    (actual.shares != target.shares || actual.quota != target.quota, actual.memory != target.memory)
}

/// Whether the container's `resizePolicy` asks for a restart for one of the
/// changed resources (RestartContainer wins over NotRequired/PreferNoRestart).
pub fn needs_restart(c: &Container, (cpu, memory): (bool, bool)) -> bool {
    c.resize_policy.iter().flatten().any(|p| p.restart_policy == "RestartContainer" && ((p.resource_name == "cpu" && cpu) || (p.resource_name == "memory" && memory)))
}

/// Millicores as a quantity string (`100m`, `2`).
fn cpu_quantity(m: i64) -> Quantity {
    Quantity(if m % 1000 == 0 { (m / 1000).to_string() } else { format!("{m}m") })
}

/// Bytes as the API server's canonical BinarySI form (`64Mi`, `1000000000`).
fn bytes_quantity(b: i64) -> Quantity {
    if b.abs() < 1024 {
        return Quantity(b.to_string());
    }
    let (mut n, mut i) = (b, 0);
    while n % 1024 == 0 && i < 6 {
        n /= 1024;
        i += 1;
    }
    Quantity(format!("{n}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i]))
}

/// `status.containerStatuses[].resources` of a running container, as upstream's
/// convertContainerStatusResources: limits when the allocation has limits (cpu
/// from the CFS quota, memory from the limit the runtime has), requests when it
/// has requests (cpu from the shares, memory and ephemeral-storage as allocated).
pub fn status_resources(allocated: Option<&ResourceRequirements>, actual: Option<&Applied>) -> ResourceRequirements {
    let limits = allocated.and_then(|r| r.limits.as_ref());
    let requests = allocated.and_then(|r| r.requests.as_ref()).filter(|m| !m.is_empty());
    let mut out = ResourceRequirements::default();
    if let Some(l) = limits {
        let mut m = BTreeMap::new();
        match actual.and_then(|a| Some(a.quota? * 1000 / a.period? as i64)).filter(|q| *q > 0) {
            Some(q) => {
                m.insert("cpu".into(), cpu_quantity(q));
            }
            None => {
                if let Some(q) = l.get("cpu") {
                    m.insert("cpu".into(), q.clone());
                }
            }
        }
        match actual.and_then(|a| a.memory).filter(|b| *b > 0) {
            Some(b) => {
                m.insert("memory".into(), bytes_quantity(b));
            }
            None => {
                if let Some(q) = l.get("memory") {
                    m.insert("memory".into(), q.clone());
                }
            }
        }
        if let Some(q) = l.get("ephemeral-storage") {
            m.insert("ephemeral-storage".into(), q.clone());
        }
        out.limits = Some(m);
    }
    if let Some(r) = requests {
        let mut m = BTreeMap::new();
        match actual.filter(|a| a.shares >= 2) {
            // upstream's sharesToMilliCPU: ceil(shares * 1000 / 1024).
            Some(a) => {
                m.insert("cpu".into(), cpu_quantity(((a.shares as i64) * 1000 + 1023) / 1024));
            }
            None => {
                if let Some(q) = r.get("cpu") {
                    m.insert("cpu".into(), q.clone());
                }
            }
        }
        for k in ["memory", "ephemeral-storage"] {
            if let Some(q) = r.get(k) {
                m.insert(k.into(), q.clone());
            }
        }
        out.requests = Some(m);
    }
    out
}

/// What to do with a spec whose resources differ from the allocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It fits: allocate it.
    Accept,
    /// `PodResizePending` with this reason (Deferred, Infeasible) and message.
    Pending(&'static str, String),
}

/// Upstream's canResizePod: Infeasible when the pod alone would not fit the
/// node's allocatable; Deferred when it does not fit next to the other pods'
/// allocated requests (the admission message); else accepted.
pub fn decide(desired_requests: (i64, i64), others: (i64, i64), node: &super::admission::NodeResources) -> Decision {
    let (cpu, mem) = desired_requests;
    if mem > node.memory_bytes {
        return Decision::Pending(INFEASIBLE, format!("Node didn't have enough capacity: memory, requested: {mem}, capacity: {}", node.memory_bytes));
    }
    if cpu > node.cpu_milli {
        return Decision::Pending(INFEASIBLE, format!("Node didn't have enough capacity: cpu, requested: {cpu}, capacity: {}", node.cpu_milli));
    }
    if cpu > 0 && others.0 + cpu > node.cpu_milli {
        return Decision::Pending(DEFERRED, format!("Node didn't have enough resource: cpu, requested: {cpu}, used: {}, capacity: {}", others.0, node.cpu_milli));
    }
    if mem > 0 && others.1 + mem > node.memory_bytes {
        return Decision::Pending(DEFERRED, format!("Node didn't have enough resource: memory, requested: {mem}, used: {}, capacity: {}", others.1, node.memory_bytes));
    }
    Decision::Accept
}

fn quantities_json(m: &BTreeMap<String, Quantity>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, q)| format!("{}:{}", json_str(k), json_str(&q.0))).collect();
    format!("{{{}}}", parts.join(","))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn resources_json(r: Option<&ResourceRequirements>) -> String {
    let mut parts = Vec::new();
    if let Some(l) = r.and_then(|r| r.limits.as_ref()).filter(|m| !m.is_empty()) {
        parts.push(format!("\"limits\":{}", quantities_json(l)));
    }
    if let Some(q) = r.and_then(|r| r.requests.as_ref()).filter(|m| !m.is_empty()) {
        parts.push(format!("\"requests\":{}", quantities_json(q)));
    }
    format!("{{{}}}", parts.join(","))
}

/// Upstream's resize event message: `<prefix>: {"initContainers":[…],"containers":[…],"generation":N[,"error":"…"]}`
/// with every init and app container's resources, as Go marshals the summary.
pub fn event_message(prefix: &str, pod: &Pod, generation: i64, error: &str) -> String {
    let list = |cs: &[Container]| -> String {
        let items: Vec<String> = cs.iter().map(|c| format!("{{\"name\":{},\"resources\":{}}}", json_str(&c.name), resources_json(c.resources.as_ref()))).collect();
        format!("[{}]", items.join(","))
    };
    let mut parts = Vec::new();
    if let Some(spec) = pod.spec.as_ref() {
        if let Some(inits) = spec.init_containers.as_ref().filter(|v| !v.is_empty()) {
            parts.push(format!("\"initContainers\":{}", list(inits)));
        }
        if !spec.containers.is_empty() {
            parts.push(format!("\"containers\":{}", list(&spec.containers)));
        }
    }
    parts.push(format!("\"generation\":{generation}"));
    if !error.is_empty() {
        parts.push(format!("\"error\":{}", json_str(error)));
    }
    format!("{prefix}: {{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerResizePolicy, PodSpec};

    fn res(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let m = |v: &[(&str, &str)]| (!v.is_empty()).then(|| v.iter().map(|(k, q)| (k.to_string(), Quantity(q.to_string()))).collect());
        ResourceRequirements { limits: m(limits), requests: m(requests), ..Default::default() }
    }

    fn pod(r: ResourceRequirements) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container { name: "c1".into(), resources: Some(r), ..Default::default() }],
                init_containers: Some(vec![Container { name: "init".into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_event_message_is_upstreams_resource_summary() {
        let p = pod(res(&[], &[("cpu", "1"), ("memory", "1Gi")]));
        assert_eq!(
            event_message("Pod resize started", &p, 1, ""),
            r#"Pod resize started: {"initContainers":[{"name":"init","resources":{}}],"containers":[{"name":"c1","resources":{"requests":{"cpu":"1","memory":"1Gi"}}}],"generation":1}"#
        );
        assert!(event_message("Pod resize Infeasible", &p, 2, "no room").ends_with(r#""generation":2,"error":"no room"}"#));
    }

    #[test]
    fn only_app_containers_and_sidecars_are_allocated_and_quantities_compare_by_value() {
        let mut p = pod(res(&[("cpu", "200m")], &[("cpu", "0.1")]));
        let a = desired(&p);
        assert_eq!(a.keys().collect::<Vec<_>>(), vec!["c1"]);
        p.spec.as_mut().unwrap().containers[0].resources = Some(res(&[("cpu", "0.2")], &[("cpu", "100m")]));
        assert!(!differs(&p, &a));
        p.spec.as_mut().unwrap().containers[0].resources = Some(res(&[("cpu", "300m")], &[("cpu", "100m")]));
        assert!(differs(&p, &a));
        assert_eq!(with_allocation(p.spec.as_ref().unwrap().containers[0].clone(), Some(&a)).resources, Some(res(&[("cpu", "200m")], &[("cpu", "0.1")])));
    }

    #[test]
    fn status_resources_report_what_the_runtime_has() {
        let alloc = res(&[("cpu", "200m"), ("memory", "64Mi")], &[("cpu", "100m"), ("memory", "32Mi")]);
        let actual = Applied::of(Some(&alloc));
        assert_eq!((actual.shares, actual.quota, actual.memory), (102, Some(20_000), Some(64 << 20)));
        assert_eq!(status_resources(Some(&alloc), Some(&actual)), alloc);
        // A container without resources reports `{}` (as upstream's golden pods).
        assert_eq!(serde_json::to_string(&status_resources(Some(&ResourceRequirements::default()), Some(&Applied::of(None)))).unwrap(), "{}");
        assert_eq!(bytes_quantity(1_000_000_000).0, "1000000000");
        assert_eq!(bytes_quantity(96 << 20).0, "96Mi");
        assert_eq!(cpu_quantity(1500).0, "1500m");
    }

    #[test]
    fn restart_follows_the_policy_of_a_changed_resource() {
        let mut c = Container { name: "c".into(), ..Default::default() };
        assert!(!needs_restart(&c, (true, true)));
        c.resize_policy = Some(vec![ContainerResizePolicy { resource_name: "memory".into(), restart_policy: "RestartContainer".into() }]);
        assert!(!needs_restart(&c, (true, false)));
        assert!(needs_restart(&c, (false, true)));
        let a = Applied::of(Some(&res(&[("memory", "64Mi")], &[])));
        let b = Applied::of(Some(&res(&[("memory", "96Mi")], &[])));
        assert_eq!(changes(&a, &b), (false, true));
        assert_eq!(b.linux_resources()["memory"]["limit"], 96 << 20);
        assert_eq!(Applied::of(None).linux_resources()["cpu"]["quota"], -1);
    }

    #[test]
    fn a_resize_is_infeasible_beyond_the_node_and_deferred_beyond_what_is_free() {
        let node = crate::pod::admission::NodeResources { cpu_milli: 2000, memory_bytes: 4 << 30, pods: 110, ..Default::default() };
        assert_eq!(decide((100, 1 << 30), (1000, 1 << 30), &node), Decision::Accept);
        match decide((100, 5 << 30), (0, 0), &node) {
            Decision::Pending(r, m) => assert_eq!((r, m.as_str()), (INFEASIBLE, "Node didn't have enough capacity: memory, requested: 5368709120, capacity: 4294967296")),
            d => panic!("{d:?}"),
        }
        assert!(matches!(decide((1500, 0), (1000, 0), &node), Decision::Pending(DEFERRED, _)));
    }
}
