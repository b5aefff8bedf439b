//! The Node object: registration (create, or adopt an existing one) and status
//! (capacity, allocatable, conditions, addresses, nodeInfo), patched on the
//! `status` subresource when it changes and at least every
//! `nodeStatusReportFrequency` (pkg/kubelet/kubelet_node_status.go). Building the
//! object is pure; the loop does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{is_conflict, ApiError, Result};

/// GOARCH-style architecture name.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Facts about the machine that go into the Node, read once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineInfo {
    pub cpus: u32,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    pub container_runtime_version: String,
    /// Pre-allocated huge pages by page size: (page size, pool bytes).
    pub hugepages: Vec<(u64, i64)>,
}

/// The huge page pools under `dir` (`/sys/kernel/mm/hugepages`):
/// `hugepages-2048kB/nr_hugepages` → (2 MiB, count × 2 MiB), sorted by size.
pub fn read_hugepages(dir: &std::path::Path) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let kb: u64 = name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
            let n: i64 = std::fs::read_to_string(e.path().join("nr_hugepages")).ok()?.trim().parse().ok()?;
            Some((kb * 1024, n * (kb * 1024) as i64))
        })
        .collect();
    out.sort();
    out
}

/// `hugepages-2Mi`, `hugepages-1Gi`: the resource name of a page size.
pub fn hugepage_resource(page_bytes: u64) -> String {
    format!("hugepages-{}", crate::quantity::format_binary(page_bytes as i64))
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The size of the filesystem holding the root dir (nodefs): ephemeral-storage capacity.
pub fn ephemeral_storage_capacity(root_dir: &std::path::Path) -> i64 {
    nix::sys::statvfs::statvfs(root_dir)
        .or_else(|_| nix::sys::statvfs::statvfs("/"))
        .map(|s| s.blocks() as i64 * s.fragment_size() as i64)
        .unwrap_or(0)
}

impl MachineInfo {
    /// Reads /proc, /etc and statfs of the root dir; `runtime_version` is containerd's.
    pub fn read(root_dir: &std::path::Path, runtime_version: &str) -> MachineInfo {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        let storage = ephemeral_storage_capacity(root_dir);
        let machine_id = read_trim("/etc/machine-id");
        let uuid = read_trim("/sys/class/dmi/id/product_uuid");
        MachineInfo {
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory_bytes: crate::cgroups::memory_capacity(),
            ephemeral_storage_bytes: storage,
            system_uuid: if uuid.is_empty() { machine_id.clone() } else { uuid },
            machine_id,
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            kernel_version: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default(),
            os_image,
            // containerd reports e.g. 1.6.20~ds1; the kubelet shows containerd://1.6.20.
            container_runtime_version: format!("containerd://{}", runtime_version.split('~').next().unwrap_or(runtime_version)),
            hugepages: read_hugepages(std::path::Path::new("/sys/kernel/mm/hugepages")),
        }
    }
}

/// How the node registers, from flags and the KubeletConfiguration.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub name: String,
    pub node_ip: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub max_pods: u32,
    /// memory.available hard eviction threshold in bytes (default 100Mi).
    pub eviction_memory_bytes: i64,
    /// kubeReserved + systemReserved: cpu (millicores), memory and ephemeral-storage (bytes).
    pub reserved_cpu_milli: i64,
    pub reserved_memory_bytes: i64,
    pub reserved_storage_bytes: i64,
    /// nodefs.available hard eviction threshold as a fraction (default 0.10).
    pub eviction_nodefs_fraction: f64,
    pub kubelet_port: i32,
    /// The runtime handlers pods may use (RuntimeClass handlers; "" the default).
    pub runtime_handlers: Vec<String>,
}

/// The network error the readiness watch starts with, before the first check.
pub const NOT_CHECKED: &str = "not checked yet";

/// What the node's readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub runtime_ok: bool,
    /// None when the network is ready, else the CNI error message.
    pub network_error: Option<String>,
    /// Graceful node shutdown under way (the Ready condition says so).
    pub shutting_down: bool,
    /// The eviction manager's pressure conditions now true.
    pub pressure: Vec<crate::eviction::threshold::Condition>,
}

fn q(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

/// The default labels upstream puts on a node, plus `--node-labels`.
pub fn node_labels(o: &NodeOptions) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("beta.kubernetes.io/arch".into(), go_arch().into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), go_arch().into());
    l.insert("kubernetes.io/hostname".into(), o.name.clone());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.extend(o.labels.clone());
    l
}

/// The Node to create at registration.
pub fn initial_node(o: &NodeOptions, m: &MachineInfo, host_ip: Option<&str>) -> Node {
    let mut ann = BTreeMap::new();
    ann.insert("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string());
    ann.insert("volumes.kubernetes.io/controller-managed-attach-detach".to_string(), "true".to_string());
    ann.insert("rkubelet.io/version".to_string(), crate::config::version_line());
    Node {
        metadata: kube::api::ObjectMeta { name: Some(o.name.clone()), labels: Some(node_labels(o)), annotations: Some(ann), ..Default::default() },
        spec: Some(NodeSpec { taints: (!o.taints.is_empty()).then(|| o.taints.clone()), ..Default::default() }),
        status: Some(node_status(o, m, host_ip, &Readiness { runtime_ok: true, network_error: Some("initializing".into()), shutting_down: false, pressure: vec![] }, None, Utc::now())),
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: &str, prev: Option<&NodeStatus>, now: DateTime<Utc>) -> NodeCondition {
    let s = if status { "True" } else { "False" };
    let last = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == s)
        .and_then(|c| c.last_transition_time.clone());
    NodeCondition {
        type_: type_.into(),
        status: s.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(crate::pod::k8s_time(now)),
        last_transition_time: Some(last.unwrap_or_else(|| crate::pod::k8s_time(now))),
    }
}

/// Allocatable memory in bytes: capacity - reserved - the hard eviction
/// threshold - the huge page pools (upstream's MachineInfo setter).
pub fn allocatable_memory(o: &NodeOptions, m: &MachineInfo) -> i64 {
    let huge: i64 = m.hugepages.iter().map(|(_, b)| b).sum();
    (m.memory_bytes - o.reserved_memory_bytes - o.eviction_memory_bytes - huge).max(0)
}

/// Bytes as upstream prints a BinarySI memory quantity: `Ki` when it divides, else bytes.
fn memory_quantity(bytes: i64) -> String {
    if bytes % 1024 == 0 {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// The node's status (upstream's setters: capacity/allocatable, nodeInfo,
/// addresses, daemon endpoints and the four conditions).
pub fn node_status(o: &NodeOptions, m: &MachineInfo, host_ip: Option<&str>, r: &Readiness, prev: Option<&NodeStatus>, now: DateTime<Utc>) -> NodeStatus {
    let mem_ki = m.memory_bytes / 1024;
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), q(m.cpus.to_string()));
    capacity.insert("memory".to_string(), q(format!("{mem_ki}Ki")));
    capacity.insert("pods".to_string(), q(o.max_pods.to_string()));
    capacity.insert("ephemeral-storage".to_string(), q(format!("{}Ki", m.ephemeral_storage_bytes / 1024)));
    // The pools the kernel has (cadvisor's machine info); both x86 sizes at least.
    capacity.insert("hugepages-1Gi".to_string(), q("0"));
    capacity.insert("hugepages-2Mi".to_string(), q("0"));
    for (page, bytes) in &m.hugepages {
        capacity.insert(hugepage_resource(*page), q(crate::quantity::format_binary(*bytes)));
    }
    // Upstream's allocatable: capacity - kubeReserved - systemReserved - hard eviction.
    let mut allocatable = capacity.clone();
    let cpu_milli = (m.cpus as i64 * 1000 - o.reserved_cpu_milli).max(0);
    allocatable.insert("cpu".to_string(), q(if cpu_milli % 1000 == 0 { (cpu_milli / 1000).to_string() } else { format!("{cpu_milli}m") }));
    allocatable.insert("memory".to_string(), q(memory_quantity(allocatable_memory(o, m))));
    let storage_alloc = (m.ephemeral_storage_bytes as f64 * (1.0 - o.eviction_nodefs_fraction)) as i64 - o.reserved_storage_bytes;
    allocatable.insert("ephemeral-storage".to_string(), q(storage_alloc.max(0).to_string()));

    let ready_msg = if !r.runtime_ok {
        Some("container runtime is down".to_string())
    } else {
        r.network_error.as_ref().map(|e| format!("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {e}"))
    };
    // The shutdown manager's error joins the others as upstream's aggregate prints them.
    let ready_msg = match (ready_msg, r.shutting_down) {
        (Some(m), true) => Some(format!("[{m}, node is shutting down]")),
        (None, true) => Some("node is shutting down".to_string()),
        (m, false) => m,
    };
    use crate::eviction::threshold::Condition;
    let under = |c: Condition| r.pressure.contains(&c);
    let conditions = vec![
        if under(Condition::MemoryPressure) {
            cond("MemoryPressure", true, "KubeletHasInsufficientMemory", "kubelet has insufficient memory available", prev, now)
        } else {
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available", prev, now)
        },
        if under(Condition::DiskPressure) {
            cond("DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure", prev, now)
        } else {
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure", prev, now)
        },
        if under(Condition::PIDPressure) {
            cond("PIDPressure", true, "KubeletHasInsufficientPID", "kubelet has insufficient PID available", prev, now)
        } else {
            cond("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available", prev, now)
        },
        match &ready_msg {
            None => cond("Ready", true, "KubeletReady", "kubelet is posting ready status", prev, now),
            Some(msg) => cond("Ready", false, "KubeletNotReady", msg, prev, now),
        },
    ];
    let mut addresses = Vec::new();
    if let Some(ip) = o.node_ip.as_deref().or(host_ip) {
        addresses.push(NodeAddress { type_: "InternalIP".into(), address: ip.into() });
    }
    addresses.push(NodeAddress { type_: "Hostname".into(), address: o.name.clone() });
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: o.kubelet_port }) }),
        // As a runtime that reports its handlers does (containerd 2's CRI); neither
        // recursive read-only mounts nor user namespaces are supported here.
        runtime_handlers: (!o.runtime_handlers.is_empty()).then(|| {
            o.runtime_handlers
                .iter()
                .map(|h| k8s_openapi::api::core::v1::NodeRuntimeHandler {
                    name: Some(h.clone()),
                    features: Some(k8s_openapi::api::core::v1::NodeRuntimeHandlerFeatures { recursive_read_only_mounts: Some(false), user_namespaces: Some(false) }),
                })
                .collect()
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            boot_id: m.boot_id.clone(),
            container_runtime_version: m.container_runtime_version.clone(),
            kernel_version: m.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: crate::config::KUBERNETES_VERSION.into(),
            machine_id: m.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: m.os_image.clone(),
            system_uuid: m.system_uuid.clone(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// True when two statuses differ in more than heartbeat times.
pub fn status_changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

/// The strategic merge patch upstream sends for nodes/status: lists merged by key,
/// with `$setElementOrder` for conditions and addresses.
pub fn status_patch(s: &NodeStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or(json!({}));
    if let Some(o) = v.as_object_mut() {
        let order = |list: &Option<Vec<String>>| json!(list.clone().unwrap_or_default().into_iter().map(|t| json!({"type": t})).collect::<Vec<_>>());
        o.insert("$setElementOrder/conditions".into(), order(&s.conditions.as_ref().map(|c| c.iter().map(|c| c.type_.clone()).collect())));
        o.insert("$setElementOrder/addresses".into(), order(&s.addresses.as_ref().map(|c| c.iter().map(|c| c.type_.clone()).collect())));
    }
    json!({ "status": v })
}

/// Registers the node: create it, or on 409 adopt the existing one (making sure the
/// default labels are there), like upstream's tryRegisterWithAPIServer. Returns
/// the Node and whether this call created it.
pub async fn register(client: &kube::Client, node: &Node) -> Result<(Node, bool)> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), node).await {
        Ok(n) => {
            info!(node = %name, "node registered");
            Ok((n, true))
        }
        Err(e) if is_conflict(&e) => {
            let existing = api.get(&name).await.map_err(|source| ApiError::Request { op: format!("get node {name}"), source })?;
            let want = node.metadata.labels.clone().unwrap_or_default();
            let have = existing.metadata.labels.clone().unwrap_or_default();
            let missing: BTreeMap<_, _> = want.into_iter().filter(|(k, v)| have.get(k) != Some(v)).collect();
            if missing.is_empty() {
                info!(node = %name, "node already registered; adopting it");
                return Ok((existing, false));
            }
            let patch = json!({"metadata": {"labels": missing}});
            let n = api
                .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .map_err(|source| ApiError::Request { op: format!("patch node {name} labels"), source })?;
            info!(node = %name, "node already registered; labels reconciled");
            Ok((n, false))
        }
        Err(source) => Err(ApiError::Request { op: format!("register node {name}"), source }),
    }
}

/// Keeps the node registered and its status current until `cancel`: checks every
/// `update_every`, patches when the status changed or `report_every` passed.
/// Publishes the registered Node's UID (for the Lease's owner reference).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    opts: NodeOptions,
    machine: MachineInfo,
    host_ip: Option<String>,
    readiness: watch::Receiver<Readiness>,
    node_uid: watch::Sender<Option<String>>,
    update_every: Duration,
    report_every: Duration,
    recorder: crate::events::Recorder,
    cancel: CancellationToken,
) {
    let api: Api<Node> = Api::all(client.clone());
    let mut readiness = readiness;
    let mut delay = Duration::from_millis(200);
    // Register, retrying until it works.
    let (registered, created) = loop {
        let node = initial_node(&opts, &machine, host_ip.as_deref());
        match register(&client, &node).await {
            Ok(r) => break r,
            Err(e) => warn!(error = %e, "node registration failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(7));
    };
    let _ = node_uid.send(registered.metadata.uid.clone());
    // What the API server holds: ours if we created it, the old status if adopted.
    let mut known: Option<NodeStatus> = registered.status.clone();
    if let (true, Some(k)) = (created, known.as_ref()) {
        for reason in condition_events(None, k) {
            recorder.node_status(&opts.name, reason);
        }
    }
    // The first report waits (briefly) for the first runtime/network check.
    if readiness.borrow().network_error.as_deref() == Some(NOT_CHECKED) {
        let _ = tokio::time::timeout(Duration::from_secs(3), readiness.changed()).await;
    }
    let mut last_sent: Option<NodeStatus> = None;
    let mut last_report = tokio::time::Instant::now();
    loop {
        let r = readiness.borrow_and_update().clone();
        let status = node_status(&opts, &machine, host_ip.as_deref(), &r, last_sent.as_ref(), Utc::now());
        let due = last_sent.as_ref().map(|l| status_changed(l, &status)).unwrap_or(true) || last_report.elapsed() >= report_every;
        if due {
            let patch = status_patch(&status);
            match api.patch_status(&opts.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(_) => {
                    debug!(ready = r.network_error.is_none() && r.runtime_ok, "node status patched");
                    for reason in condition_events(known.as_ref(), &status) {
                        recorder.node_status(&opts.name, reason);
                    }
                    known = Some(status.clone());
                    if last_sent.as_ref().map(|l| ready_of(l) != ready_of(&status)).unwrap_or(true) {
                        info!(node = %opts.name, ready = ready_of(&status), "node readiness");
                    }
                    last_sent = Some(status);
                    last_report = tokio::time::Instant::now();
                }
                Err(e) if super::is_not_found(&e) => {
                    warn!(node = %opts.name, "node object is gone; registering again");
                    let node = initial_node(&opts, &machine, host_ip.as_deref());
                    if let Ok((n, _)) = register(&client, &node).await {
                        let _ = node_uid.send(n.metadata.uid.clone());
                        known = n.status.clone();
                    }
                    last_sent = None;
                }
                Err(e) => warn!(error = %e, "node status update failed; will retry"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(update_every) => {}
            r = readiness.changed() => if r.is_err() { return },
        }
    }
}

/// The node events upstream's condition setters record going from `prev` to `new`:
/// a pressure condition that is new or changed (`NodeHasSufficientMemory`, …), and
/// a Ready condition that changed (`NodeReady` / `NodeNotReady`).
pub fn condition_events(prev: Option<&NodeStatus>, new: &NodeStatus) -> Vec<&'static str> {
    let status_of = |s: Option<&NodeStatus>, t: &str| {
        s.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == t)).map(|c| c.status.clone())
    };
    let mut out = Vec::new();
    for (t, on_true, on_false) in [
        ("MemoryPressure", "NodeHasInsufficientMemory", "NodeHasSufficientMemory"),
        ("DiskPressure", "NodeHasDiskPressure", "NodeHasNoDiskPressure"),
        ("PIDPressure", "NodeHasInsufficientPID", "NodeHasSufficientPID"),
    ] {
        let now = status_of(Some(new), t);
        if now.is_some() && status_of(prev, t) != now {
            out.push(if now.as_deref() == Some("True") { on_true } else { on_false });
        }
    }
    let (before, now) = (status_of(prev, "Ready"), status_of(Some(new), "Ready"));
    if before.is_some() && now.is_some() && before != now {
        out.push(if now.as_deref() == Some("True") { crate::events::reason::NODE_READY } else { crate::events::reason::NODE_NOT_READY });
    }
    out
}

fn ready_of(s: &NodeStatus) -> bool {
    s.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> NodeOptions {
        NodeOptions { name: "n1".into(), max_pods: 110, eviction_memory_bytes: 100 << 20, eviction_nodefs_fraction: 0.1, kubelet_port: 10250, ..Default::default() }
    }
    fn machine() -> MachineInfo {
        MachineInfo { cpus: 2, memory_bytes: 24683656 * 1024, ephemeral_storage_bytes: 1000 * 1024, container_runtime_version: "containerd://1.6.20".into(), ..Default::default() }
    }
    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn capacity_and_allocatable_follow_upstream() {
        let s = node_status(&opts(), &machine(), Some("192.0.2.7"), &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0));
        let cap = s.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "24683656Ki");
        assert_eq!(cap["pods"].0, "110");
        let alloc = s.allocatable.unwrap();
        assert_eq!(alloc["memory"].0, "24581256Ki", "capacity minus the 100Mi hard eviction threshold");
        assert_eq!(alloc["cpu"].0, "2");
        assert_eq!(s.addresses.unwrap()[0].address, "192.0.2.7");
        assert_eq!(s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
        let o = NodeOptions { runtime_handlers: vec!["".into(), "runc".into()], ..opts() };
        let hs = node_status(&o, &machine(), None, &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0)).runtime_handlers.unwrap();
        assert_eq!(hs.iter().map(|h| h.name.clone().unwrap()).collect::<Vec<_>>(), ["", "runc"]);
    }

    #[test]
    fn reserved_resources_come_off_allocatable() {
        let mut o = opts();
        o.reserved_cpu_milli = 250;
        o.reserved_memory_bytes = 512 << 20;
        o.reserved_storage_bytes = 1024;
        let s = node_status(&o, &machine(), None, &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0));
        let (cap, alloc) = (s.capacity.unwrap(), s.allocatable.unwrap());
        assert_eq!(cap["cpu"].0, "2", "capacity is untouched");
        assert_eq!(alloc["cpu"].0, "1750m");
        assert_eq!(alloc["memory"].0, format!("{}Ki", 24683656 - 100 * 1024 - 512 * 1024));
        assert_eq!(alloc["ephemeral-storage"].0, (1000 * 1024 * 9 / 10 - 1024).to_string());
    }

    #[test]
    fn huge_page_pools_are_capacity_and_leave_allocatable_memory() {
        let dir = tempfile::tempdir().unwrap();
        for (size, n) in [("2048kB", "3"), ("1048576kB", "0")] {
            let d = dir.path().join(format!("hugepages-{size}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nr_hugepages"), format!("{n}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("not-a-pool")).unwrap();
        let pools = read_hugepages(dir.path());
        assert_eq!(pools, vec![(2 << 20, 6 << 20), (1 << 30, 0)]);
        let m = MachineInfo { hugepages: pools, ..machine() };
        let s = node_status(&opts(), &m, None, &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0));
        let cap = s.capacity.unwrap();
        assert_eq!(cap["hugepages-2Mi"].0, "6Mi");
        assert_eq!(cap["hugepages-1Gi"].0, "0");
        let alloc = s.allocatable.unwrap();
        let plain = node_status(&opts(), &machine(), None, &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0)).allocatable.unwrap();
        let ki = |q: &Quantity| q.0.trim_end_matches("Ki").parse::<i64>().unwrap();
        assert_eq!(ki(&plain["memory"]) - ki(&alloc["memory"]), 6 * 1024, "the 2Mi pool leaves allocatable memory");
    }

    #[test]
    fn a_node_shutting_down_is_not_ready() {
        let ready = |r: Readiness| node_status(&opts(), &machine(), None, &r, None, t(0)).conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        let c = ready(Readiness { runtime_ok: true, network_error: None, shutting_down: true, pressure: vec![] });
        assert_eq!((c.status.as_str(), c.reason.as_deref(), c.message.as_deref()), ("False", Some("KubeletNotReady"), Some("node is shutting down")));
        let c = ready(Readiness { runtime_ok: false, network_error: None, shutting_down: true, pressure: vec![] });
        assert_eq!(c.message.as_deref(), Some("[container runtime is down, node is shutting down]"));
    }

    #[test]
    fn ready_condition_carries_the_upstream_network_message() {
        let r = Readiness { runtime_ok: true, network_error: Some("cni plugin not initialized".into()), shutting_down: false, pressure: vec![] };
        let s = node_status(&opts(), &machine(), None, &r, None, t(0));
        let ready = s.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized")
        );
    }

    #[test]
    fn heartbeats_alone_are_not_a_change_but_transitions_are() {
        let ok = Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] };
        let a = node_status(&opts(), &machine(), None, &ok, None, t(0));
        let b = node_status(&opts(), &machine(), None, &ok, Some(&a), t(10));
        assert!(!status_changed(&a, &b));
        let c = node_status(&opts(), &machine(), None, &Readiness { runtime_ok: false, network_error: None, shutting_down: false, pressure: vec![] }, Some(&b), t(20));
        assert!(status_changed(&b, &c));
        let ready = c.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(crate::pod::k8s_time(t(20))));
    }

    #[test]
    fn node_events_follow_upstream_setters() {
        let ok = Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] };
        let not_ready = Readiness { runtime_ok: true, network_error: Some("no conf".into()), shutting_down: false, pressure: vec![] };
        let first = node_status(&opts(), &machine(), None, &not_ready, None, t(0));
        assert_eq!(condition_events(None, &first), vec!["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID"], "a new Ready condition is no event");
        let ready = node_status(&opts(), &machine(), None, &ok, Some(&first), t(1));
        assert_eq!(condition_events(Some(&first), &ready), vec!["NodeReady"]);
        assert!(condition_events(Some(&ready), &ready).is_empty());
        let down = node_status(&opts(), &machine(), None, &not_ready, Some(&ready), t(2));
        assert_eq!(condition_events(Some(&ready), &down), vec!["NodeNotReady"]);
    }

    #[test]
    fn default_labels_and_patch_shape() {
        let mut o = opts();
        o.labels.insert("role".into(), "edge".into());
        let l = node_labels(&o);
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["role"], "edge");
        let s = node_status(&o, &machine(), None, &Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] }, None, t(0));
        let p = status_patch(&s);
        assert_eq!(p["status"]["$setElementOrder/conditions"][3]["type"], "Ready");
    }
}
