//! Pod QoS classes and the `kubepods` cgroup hierarchy (cgroupfs driver), plus the
//! OOM score the kubelet gives each QoS class (pkg/kubelet/qos).
//!
//! runc creates the per-container cgroups from the OCI `cgroupsPath`; this module
//! names the pod-level parent and removes it when the pod is gone, on cgroup v1
//! (every mounted controller) and v2 (the unified mount).

pub mod pods;
pub mod systemd;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Pod;

pub use crate::config::CgroupDriver;

static DRIVER: OnceLock<CgroupDriver> = OnceLock::new();

/// Sets the node's cgroup driver (once, at start; cgroupfs until then).
pub fn set_driver(d: CgroupDriver) {
    let _ = DRIVER.set(d);
}

/// The node's cgroup driver.
pub fn driver() -> CgroupDriver {
    DRIVER.get().copied().unwrap_or(CgroupDriver::Cgroupfs)
}

/// The pods cgroup below the cgroup root (`/kubepods`, `/kubepods.slice`).
pub fn kubepods() -> &'static str {
    match driver() {
        CgroupDriver::Cgroupfs => "/kubepods",
        CgroupDriver::Systemd => "/kubepods.slice",
    }
}

/// A pod's quality-of-service class, computed as upstream's GetPodQOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// Upstream's GetPodQOS: BestEffort when no container sets cpu/memory requests or
/// limits; Guaranteed when every container has cpu and memory limits equal to its
/// requests (requests default to limits); otherwise Burstable.
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else { return QosClass::BestEffort };
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        let requests = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        for res in ["cpu", "memory"] {
            let l = limits.get(res).map(|q| q.0.as_str());
            let q = requests.get(res).map(|q| q.0.as_str()).or(l);
            let nonzero = |s: Option<&str>| s.map(|s| crate::quantity::to_milli(s).map(|v| v != 0).unwrap_or(false)).unwrap_or(false);
            if nonzero(l) || nonzero(q) {
                any = true;
            }
            match (l, q) {
                (Some(l), Some(q)) if crate::quantity::to_milli(l).ok() == crate::quantity::to_milli(q).ok() => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// containerd's cgroup driver as its `config.toml` sets it for the runc runtime
/// (`SystemdCgroup` of the CRI plugin, config version 2 or 3); None when unset.
pub fn containerd_driver(config_toml: &str) -> Option<CgroupDriver> {
    let doc: toml::Table = toml::from_str(config_toml).ok()?;
    let plugins = doc.get("plugins")?.as_table()?;
    ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"].iter().find_map(|p| {
        let on = plugins.get(*p)?.get("containerd")?.get("runtimes")?.get("runc")?.get("options")?.get("SystemdCgroup")?.as_bool()?;
        Some(if on { CgroupDriver::Systemd } else { CgroupDriver::Cgroupfs })
    })
}

fn driver_name(d: CgroupDriver) -> &'static str {
    match d {
        CgroupDriver::Cgroupfs => "cgroupfs",
        CgroupDriver::Systemd => "systemd",
    }
}

/// Why the configured driver cannot work here, and the fix: systemd without
/// systemd running, or a driver other than containerd's (what CRI clients of the
/// same containerd would use). Upstream's words for the mismatch.
pub fn driver_problem(configured: CgroupDriver, containerd: Option<CgroupDriver>, systemd_running: bool) -> Option<(String, String)> {
    if configured == CgroupDriver::Systemd && !systemd_running {
        return Some((
            "cgroupDriver is systemd but systemd is not running as the init system (no /run/systemd/system)".into(),
            "set cgroupDriver: cgroupfs (or --cgroup-driver=cgroupfs)".into(),
        ));
    }
    match containerd {
        Some(c) if c != configured => Some((
            format!("misconfiguration: kubelet cgroup driver: {:?} is different from containerd cgroup driver: {:?} (SystemdCgroup = {} in /etc/containerd/config.toml)", driver_name(configured), driver_name(c), c == CgroupDriver::Systemd),
            format!("use one driver: set cgroupDriver: {} in the kubelet config, or SystemdCgroup = {} in /etc/containerd/config.toml and restart containerd", driver_name(c), configured == CgroupDriver::Systemd),
        )),
        _ => None,
    }
}

/// [`driver_problem`] for this machine (containerd's /etc/containerd/config.toml).
pub fn check_driver(configured: CgroupDriver) -> Option<(String, String)> {
    let containerd = std::fs::read_to_string("/etc/containerd/config.toml").ok().and_then(|t| containerd_driver(&t));
    driver_problem(configured, containerd, Path::new("/run/systemd/system").is_dir())
}

/// The pod's cgroup below the cgroup root for the node's driver, e.g.
/// `/kubepods/besteffort/pod<uid>` or `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice`.
pub fn pod_cgroup_parent(qos: QosClass, uid: &str) -> String {
    pods::pod_path(driver(), qos, uid)
}

/// A container's cgroup below the cgroup root (runc's scope with systemd).
pub fn container_cgroup(qos: QosClass, uid: &str, id: &str) -> String {
    let parent = pod_cgroup_parent(qos, uid);
    match driver() {
        CgroupDriver::Cgroupfs => format!("{parent}/{id}"),
        CgroupDriver::Systemd => format!("{parent}/cri-containerd-{id}.scope"),
    }
}

/// The OOM score adjustment for the pause container (pkg/kubelet/qos PodInfraOOMAdj).
pub const POD_INFRA_OOM_ADJ: i32 = -998;

/// The OOM score adjustment for a container of a pod of this QoS class, as
/// upstream's GetContainerOOMScoreAdjust.
pub fn container_oom_score_adj(qos: QosClass, memory_request: i64, memory_capacity: i64) -> i32 {
    match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            if memory_capacity <= 0 {
                return 999;
            }
            let adj = 1000 - (1000 * memory_request) / memory_capacity;
            adj.clamp(2, 999) as i32
        }
    }
}

/// Without CAP_SYS_RESOURCE a process may not lower an OOM score below its own:
/// clamp like containerd's `restrict_oom_score_adj`.
pub fn restrict_oom_score_adj(adj: i32, own: i32, has_sys_resource: bool) -> i32 {
    if has_sys_resource { adj } else { adj.max(own) }
}

/// The agent's own OOM score adjustment and whether it holds CAP_SYS_RESOURCE.
pub fn own_oom_restriction() -> (i32, bool) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let cap = crate::runtime::spec::effective_capability_mask()
        .map(|bits| bits & (1 << 24) != 0) // CAP_SYS_RESOURCE = 24
        .unwrap_or(false);
    (own, cap)
}

/// A `/proc/meminfo` field (`MemTotal:`, …) in bytes.
pub fn meminfo(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Total memory of the machine in bytes (for Burstable OOM scores).
pub fn memory_capacity() -> i64 {
    meminfo("MemTotal:").unwrap_or(0) as i64
}

/// The cgroup mount points a pod cgroup may live under: each v1 controller
/// hierarchy and the v2 unified mount.
fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    let mut roots = Vec::new();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let fstype = post.split_whitespace().next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mp) = pre.split_whitespace().nth(4) {
            roots.push(PathBuf::from(mp));
        }
    }
    roots
}

/// Removes the pod's cgroup directories (they must be empty: all containers gone).
/// Returns the paths that could not be removed.
pub fn remove_pod_cgroup(parent: &str) -> Vec<PathBuf> {
    remove_under(&cgroup_roots(), parent)
}

fn remove_under(roots: &[PathBuf], parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut left = Vec::new();
    for root in roots {
        let dir = root.join(rel);
        if !dir.exists() {
            continue;
        }
        // Leftover child dirs of runc (already empty) go first.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if std::fs::remove_dir(&dir).is_err() && dir.exists() {
            left.push(dir);
        }
    }
    left
}

/// The v1 hierarchies by controller (`memory` → /sys/fs/cgroup/memory), from mountinfo.
pub(crate) fn v1_controller_roots() -> Vec<(String, PathBuf)> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    let mut out = Vec::new();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split_whitespace();
        if post.next() != Some("cgroup") {
            continue;
        }
        let (Some(mp), Some(opts)) = (pre.split_whitespace().nth(4), post.nth(1)) else { continue };
        for o in opts.split(',') {
            out.push((o.to_string(), PathBuf::from(mp)));
        }
    }
    out
}

/// The mount point of a v1 controller's hierarchy (`cpuacct`, `memory`, …).
pub fn v1_root(controller: &str) -> Option<PathBuf> {
    v1_controller_roots().into_iter().find(|(c, _)| c == controller).map(|(_, p)| p)
}

/// True when the pods' cgroups are cgroup v1 (a v1 memory hierarchy is mounted),
/// which is what runc picks on a hybrid system.
pub fn uses_v1() -> bool {
    v1_controller_roots().iter().any(|(c, _)| c == "memory")
}

/// CPU shares for millicores, as upstream's MilliCPUToShares (min 2).
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    ((milli.max(0) as u64) * 1024 / 1000).max(2)
}

/// True when a path is on a cgroup v2 (unified) mount.
pub fn is_unified(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Pod {
        let m = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| v.iter().map(|(k, q)| (k.to_string(), Quantity(q.to_string()))).collect())
        };
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements { limits: m(limits), requests: m(requests), ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_shares_follow_upstream() {
        assert_eq!(milli_cpu_to_shares(2000), 2048);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(250), 256);
    }

    #[test]
    fn qos_classes_follow_upstream_rules() {
        assert_eq!(qos_class(&pod(&[], &[])), QosClass::BestEffort);
        assert_eq!(qos_class(&pod(&[("cpu", "1"), ("memory", "1Gi")], &[])), QosClass::Guaranteed);
        assert_eq!(qos_class(&pod(&[("cpu", "1")], &[])), QosClass::Burstable);
        assert_eq!(qos_class(&pod(&[("cpu", "1"), ("memory", "1Gi")], &[("cpu", "500m")])), QosClass::Burstable);
    }

    #[test]
    fn a_driver_other_than_containerds_or_without_systemd_is_a_problem() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n";
        assert_eq!(containerd_driver(v2), Some(CgroupDriver::Systemd));
        assert_eq!(containerd_driver("version = 2\n"), None);
        let (msg, fix) = driver_problem(CgroupDriver::Cgroupfs, Some(CgroupDriver::Systemd), true).unwrap();
        assert!(msg.starts_with("misconfiguration: kubelet cgroup driver: \"cgroupfs\" is different from containerd cgroup driver: \"systemd\""), "{msg}");
        assert!(fix.contains("cgroupDriver: systemd"), "{fix}");
        assert!(driver_problem(CgroupDriver::Systemd, None, false).is_some());
        assert_eq!(driver_problem(CgroupDriver::Systemd, Some(CgroupDriver::Systemd), true), None);
        assert_eq!(driver_problem(CgroupDriver::Cgroupfs, None, true), None);
    }

    #[test]
    fn cgroup_parents_per_qos() {
        assert_eq!(pod_cgroup_parent(QosClass::BestEffort, "u"), "/kubepods/besteffort/podu");
        assert_eq!(pod_cgroup_parent(QosClass::Guaranteed, "u"), "/kubepods/podu");
        assert_eq!(container_cgroup(QosClass::Guaranteed, "u", "c"), "/kubepods/podu/c");
    }

    #[test]
    fn oom_scores_and_restriction() {
        assert_eq!(container_oom_score_adj(QosClass::Guaranteed, 0, 1), -997);
        assert_eq!(container_oom_score_adj(QosClass::BestEffort, 0, 1), 1000);
        assert_eq!(container_oom_score_adj(QosClass::Burstable, 500, 1000), 500);
        assert_eq!(container_oom_score_adj(QosClass::Burstable, 1000, 1000), 2);
        assert_eq!(restrict_oom_score_adj(-998, 0, false), 0);
        assert_eq!(restrict_oom_score_adj(-998, 0, true), -998);
        assert_eq!(restrict_oom_score_adj(1000, 0, false), 1000);
    }

    #[test]
    fn removing_a_pod_cgroup_removes_empty_children() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("kubepods/besteffort/podx/c1");
        std::fs::create_dir_all(&d).unwrap();
        let left = remove_under(&[t.path().to_path_buf()], "/kubepods/besteffort/podx");
        assert!(left.is_empty());
        assert!(!t.path().join("kubepods/besteffort/podx").exists());
    }
}
