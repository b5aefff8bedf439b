//! The eviction signals read off the node, as upstream's makeSignalObservations
//! derives them from the summary: memory from the root cgroup (capacity minus
//! working set), allocatable memory from the pods cgroup, the node and image
//! filesystems from statfs, PIDs from `pid_max` against the tasks running; and
//! each active pod's usage for ranking.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use super::rank::{Candidate, ContainerUsage};
use super::threshold::{Observation, Observations, Signal};

/// Where the filesystems the signals watch are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The kubelet's root dir (nodefs).
    pub root_dir: PathBuf,
    /// containerd's image and snapshot store (imagefs).
    pub image_fs: PathBuf,
}

/// (bytes available, bytes, inodes free, inodes) of the filesystem holding `p`.
pub fn statfs(p: &Path) -> Option<(i64, i64, i64, i64)> {
    let s = nix::sys::statvfs::statvfs(p).ok()?;
    let f = s.fragment_size() as i64;
    Some(((s.blocks_available() as i64) * f, (s.blocks() as i64) * f, s.files_free() as i64, s.files() as i64))
}

/// The node's memory as the summary's node object has it (cadvisor's root
/// container): (capacity, working set) in bytes.
pub fn node_memory() -> Option<(i64, i64)> {
    let total = crate::cgroups::meminfo("MemTotal:")? as i64;
    let ws = crate::cgroups::usage::root_working_set()? as i64;
    Some((total, ws))
}

/// The maximum number of PIDs (`pid_max`, or `threads-max` when lower) and the
/// tasks running now (sysinfo's count), as upstream's pidlimit stats.
pub fn pids() -> Option<(i64, i64)> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<i64>().ok();
    let max = match (read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/threads-max")) {
        (Some(p), Some(t)) => p.min(t),
        (p, t) => p.or(t)?,
    };
    let procs = nix::sys::sysinfo::sysinfo().ok()?.process_count() as i64;
    Some((max, procs))
}

/// Every signal that can be read now.
pub fn observations(paths: &Paths) -> Observations {
    let mut o = Observations::new();
    let mut put = |s: Signal, available: i64, capacity: i64| {
        o.insert(s, Observation { available, capacity });
    };
    if let Some((cap, ws)) = node_memory() {
        put(Signal::MemoryAvailable, cap - ws, cap);
    }
    let pods = crate::cgroups::usage::read_usage(crate::cgroups::kubepods());
    if let (Some(limit), Some(ws)) = (pods.memory_limit, pods.working_set_bytes) {
        put(Signal::AllocatableMemoryAvailable, limit as i64 - ws as i64, limit as i64);
    }
    if let Some((avail, cap, ifree, inodes)) = statfs(&paths.root_dir) {
        put(Signal::NodeFsAvailable, avail, cap);
        put(Signal::NodeFsInodesFree, ifree, inodes);
    }
    if let Some((avail, cap, ifree, inodes)) = statfs(&paths.image_fs) {
        put(Signal::ImageFsAvailable, avail, cap);
        put(Signal::ImageFsInodesFree, ifree, inodes);
        // One runtime filesystem: containers' writable layers live with the images.
        put(Signal::ContainerFsAvailable, avail, cap);
        put(Signal::ContainerFsInodesFree, ifree, inodes);
    }
    if let Some((max, procs)) = pids() {
        put(Signal::PidAvailable, max - procs, max);
    }
    o
}

/// What a pod holds on the node's disk: its volumes (emptyDir and the
/// rest under the pod dir), and each container's writable layer and logs.
#[derive(Debug, Clone, Default)]
pub struct DiskUse {
    pub volumes: u64,
    /// container name → (rootfs bytes, log bytes).
    pub containers: Vec<(String, u64, u64)>,
}

/// The disk use of `pod` (blocking: walks directories). `rootfs` has the
/// writable layer size of each running container by name.
pub fn disk_use(pod: &Pod, root_dir: &Path, pod_logs_dir: &Path, rootfs: &[(String, u64)]) -> DiskUse {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes = crate::volume::empty_dir::disk_usage(&crate::pod::store::pod_dir(root_dir, &uid).join("volumes"));
    let logs = pod_logs_dir.join(format!("{}_{}_{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""), uid));
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            let root = rootfs.iter().find(|(n, _)| *n == c.name).map(|(_, b)| *b).unwrap_or(0);
            (c.name.clone(), root, crate::volume::empty_dir::disk_usage(&logs.join(&c.name)))
        })
        .collect();
    DiskUse { volumes, containers }
}

/// `pod` as an eviction candidate: its cgroup's working set and processes, and
/// each running container's working set (ids from `status`, the pod's last
/// status); with `disk`, its disk use for disk pressure (containers named with
/// rootfs + logs, as upstream's message counts them).
pub fn candidate(pod: &Pod, status: Option<&k8s_openapi::api::core::v1::PodStatus>, disk: Option<&DiskUse>) -> Candidate {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let qos = crate::cgroups::qos_class(pod);
    let parent = crate::cgroups::pod_cgroup_parent(qos, &uid);
    let usage = crate::cgroups::usage::read_usage(&parent);
    let spec = pod.spec.clone().unwrap_or_default();
    let ids: Vec<(String, String)> = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| Some((c.name.clone(), c.container_id.as_deref()?.trim_start_matches("containerd://").to_string())))
        .collect();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            let ws = ids.iter().find(|(n, _)| *n == c.name).and_then(|(_, id)| crate::cgroups::usage::read_usage(&crate::cgroups::container_cgroup(qos, &uid, id)).working_set_bytes);
            match disk {
                Some(d) => {
                    let u = d.containers.iter().find(|(n, _, _)| *n == c.name).map(|(_, r, l)| (r + l) as i64);
                    ContainerUsage { name: c.name.clone(), usage: u, request: crate::pod::admission::container_request(c, "ephemeral-storage") }
                }
                None => ContainerUsage { name: c.name.clone(), usage: ws.map(|w| w as i64), request: crate::pod::admission::container_request(c, "memory") },
            }
        })
        .collect();
    let ephemeral_request = spec.containers.iter().map(|c| crate::pod::admission::container_request(c, "ephemeral-storage")).sum::<i64>();
    Candidate {
        uid,
        name: pod.metadata.name.clone().unwrap_or_default(),
        priority: spec.priority.unwrap_or(0),
        memory: usage.working_set_bytes.map(|w| w as i64),
        memory_request: crate::pod::admission::pod_requests(pod).1,
        disk: disk.map(|d| (d.volumes + d.containers.iter().map(|(_, r, l)| r + l).sum::<u64>()) as i64),
        disk_request: ephemeral_request,
        processes: Some(crate::cgroups::usage::count_procs(&parent) as u64),
        containers,
    }
}
