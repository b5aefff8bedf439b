//! Pod-level and QoS cgroups, as upstream's pod and QoS container managers
//! (pkg/kubelet/cm) set them up, with either cgroup driver on either cgroup
//! version:
//!
//! | | cgroupfs | systemd |
//! |---|---|---|
//! | pods | `/kubepods` | `kubepods.slice` |
//! | QoS | `/kubepods/{burstable,besteffort}` | `kubepods-{burstable,besteffort}.slice` |
//! | pod | `/kubepods/burstable/pod<uid>` | `kubepods-burstable-pod<uid_>.slice` |
//! | container | `<pod>/<id>` | `<pod slice>:cri-containerd:<id>` (runc's scope) |
//!
//! The pod cgroup carries the pod's summed limits (ResourceConfigForPod: cpu
//! shares from requests, CFS quota and memory limit when every container sets
//! them, `podPidsLimit`); the burstable QoS cgroup's cpu shares follow the sum of
//! its pods' requests, besteffort's stay at the minimum. With cgroupfs the files
//! are written directly; with systemd the slices are transient units set over
//! D-Bus.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;
use tracing::debug;
use zbus::zvariant::Value;

use super::systemd::{self, Property, Systemd};
use super::QosClass;
use crate::config::CgroupDriver;

/// Errors setting up pod cgroups.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("systemd: {0}")]
    Systemd(#[from] zbus::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.display().to_string(), source }
}

/// What a pod cgroup is given (upstream's ResourceConfig).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodConfig {
    pub shares: u64,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub memory: Option<i64>,
    pub pids: Option<i64>,
    /// hugetlb limits by page size as the cgroup files name it (`2MB` → bytes).
    pub hugepages: Vec<(String, i64)>,
}

/// The page size of a `hugepages-<size>` resource as the hugetlb files and the
/// OCI spec write it (upstream's sizeString: `2Mi` → `2MB`, `1Gi` → `1GB`).
pub fn hugepage_size_name(resource: &str) -> Option<String> {
    let size = crate::quantity::to_value(resource.strip_prefix("hugepages-")?).ok()?;
    let (mut n, mut unit) = (size, 0);
    while n >= 1024 && unit < 5 {
        n /= 1024;
        unit += 1;
    }
    Some(format!("{n}{}", ["B", "KB", "MB", "GB", "TB", "PB"][unit]))
}

/// The hugepage limits of a container's resources: (page size name, bytes).
pub fn hugepage_limits(c: &k8s_openapi::api::core::v1::Container) -> Vec<(String, i64)> {
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    limits
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((hugepage_size_name(k)?, crate::quantity::to_value(&q.0).ok()?)))
        .collect()
}

/// Upstream's ResourceConfigForPod: Guaranteed pods get shares, quota and memory
/// limit; Burstable ones shares, and quota / memory limit when every container
/// declares that limit; BestEffort the minimum shares. The sums are the larger of
/// the app containers' sum and the largest init container. `pids_limit` > 0 caps
/// the pod's processes.
pub fn pod_config(pod: &Pod, pids_limit: i64) -> PodConfig {
    let qos = super::qos_class(pod);
    let spec = pod.spec.as_ref();
    let apps: Vec<_> = spec.map(|s| s.containers.iter().collect()).unwrap_or_default();
    let inits: Vec<_> = spec.and_then(|s| s.init_containers.as_ref()).map(|v| v.iter().collect()).unwrap_or_default();
    let value = |c: &k8s_openapi::api::core::v1::Container, section: &str, r: &str| -> Option<i64> {
        let res = c.resources.as_ref()?;
        let m = if section == "limits" { res.limits.as_ref()? } else { res.requests.as_ref().or(res.limits.as_ref())? };
        let q = &m.get(r)?.0;
        if r == "cpu" { crate::quantity::to_milli(q).ok() } else { crate::quantity::to_value(q).ok() }
    };
    let total = |section: &str, r: &str| -> i64 {
        let sum: i64 = apps.iter().map(|c| value(c, section, r).unwrap_or(0)).sum();
        sum.max(inits.iter().map(|c| value(c, section, r).unwrap_or(0)).max().unwrap_or(0))
    };
    let declared = |r: &str| apps.iter().chain(inits.iter()).all(|c| value(c, "limits", r).is_some_and(|v| v > 0));
    let mut cfg = PodConfig { pids: (pids_limit > 0).then_some(pids_limit), ..Default::default() };
    // Huge pages (every QoS class): the pod's requests per page size, as admission counts them.
    cfg.hugepages = crate::pod::admission::pod_hugepages(pod).into_iter().filter_map(|(r, v)| Some((hugepage_size_name(&r)?, v))).collect();
    match qos {
        QosClass::BestEffort => cfg.shares = 2,
        QosClass::Guaranteed | QosClass::Burstable => {
            cfg.shares = super::milli_cpu_to_shares(total("requests", "cpu"));
            if qos == QosClass::Guaranteed || declared("cpu") {
                cfg.quota = Some(crate::runtime::spec::milli_cpu_to_quota(total("limits", "cpu")));
                cfg.period = Some(crate::runtime::spec::CPU_PERIOD);
            }
            if qos == QosClass::Guaranteed || declared("memory") {
                cfg.memory = Some(total("limits", "memory"));
            }
        }
    }
    cfg
}

/// cgroup v2's cpu.weight for v1 shares, as runc and the kubelet convert them.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

fn qos_dir(qos: QosClass) -> &'static str {
    match qos {
        QosClass::Guaranteed => "",
        QosClass::Burstable => "burstable",
        QosClass::BestEffort => "besteffort",
    }
}

/// The systemd slice of a pod: `kubepods-burstable-pod<uid with _>.slice`.
pub fn pod_slice(qos: QosClass, uid: &str) -> String {
    let uid = uid.replace('-', "_");
    match qos {
        QosClass::Guaranteed => format!("kubepods-pod{uid}.slice"),
        q => format!("kubepods-{}-pod{uid}.slice", qos_dir(q)),
    }
}

/// The slice of a QoS class (kubepods.slice for Guaranteed).
fn qos_slice(qos: QosClass) -> String {
    match qos {
        QosClass::Guaranteed => "kubepods.slice".into(),
        q => format!("kubepods-{}.slice", qos_dir(q)),
    }
}

/// A pod's cgroup as a path below the cgroup root, for either driver.
pub fn pod_path(driver: CgroupDriver, qos: QosClass, uid: &str) -> String {
    match (driver, qos) {
        (CgroupDriver::Cgroupfs, QosClass::Guaranteed) => format!("/kubepods/pod{uid}"),
        (CgroupDriver::Cgroupfs, q) => format!("/kubepods/{}/pod{uid}", qos_dir(q)),
        (CgroupDriver::Systemd, QosClass::Guaranteed) => format!("/kubepods.slice/{}", pod_slice(qos, uid)),
        (CgroupDriver::Systemd, q) => format!("/kubepods.slice/{}/{}", qos_slice(q), pod_slice(q, uid)),
    }
}

/// The OCI `cgroupsPath` of a container: a path for cgroupfs, runc's
/// `slice:prefix:name` for systemd (scope `cri-containerd-<id>.scope`).
pub fn container_cgroups_path(driver: CgroupDriver, qos: QosClass, uid: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => format!("{}/{id}", pod_path(driver, qos, uid)),
        CgroupDriver::Systemd => format!("{}:cri-containerd:{id}", pod_slice(qos, uid)),
    }
}

/// The node's pod cgroups: one per agent.
pub struct PodCgroups {
    pub driver: CgroupDriver,
    /// The cgroup v2 mount, when the pods' cgroups are v2.
    unified: Option<PathBuf>,
    systemd: tokio::sync::OnceCell<Systemd>,
    pids_limit: i64,
}

impl PodCgroups {
    pub fn new(driver: CgroupDriver, pids_limit: i64) -> PodCgroups {
        let unified = (!super::uses_v1()).then(|| PathBuf::from("/sys/fs/cgroup"));
        PodCgroups { driver, unified, systemd: tokio::sync::OnceCell::new(), pids_limit }
    }

    async fn systemd(&self) -> Result<&Systemd, CgroupError> {
        Ok(self.systemd.get_or_try_init(Systemd::connect).await?)
    }

    /// The pod's cgroup path below the cgroup root.
    pub fn pod_path(&self, qos: QosClass, uid: &str) -> String {
        pod_path(self.driver, qos, uid)
    }

    pub fn container_cgroups_path(&self, qos: QosClass, uid: &str, id: &str) -> String {
        container_cgroups_path(self.driver, qos, uid, id)
    }

    /// What the pod's cgroup gets.
    pub fn config(&self, pod: &Pod) -> PodConfig {
        pod_config(pod, self.pids_limit)
    }

    /// Creates the pod's cgroup (and its parents) with `cfg`, or updates it.
    pub async fn ensure_pod(&self, qos: QosClass, uid: &str, cfg: &PodConfig) -> Result<(), CgroupError> {
        match self.driver {
            CgroupDriver::Systemd => {
                let sd = self.systemd().await?;
                // Parents first: systemd would create them implicitly, without accounting.
                sd.ensure_slice("kubepods.slice", "libcontainer container kubepods.slice", accounting()).await?;
                if qos != QosClass::Guaranteed {
                    sd.ensure_slice(&qos_slice(qos), &format!("libcontainer container {}", qos_slice(qos)), accounting()).await?;
                }
                let name = pod_slice(qos, uid);
                let mut props = accounting();
                props.extend(self.properties(cfg));
                sd.ensure_slice(&name, &format!("libcontainer container {name}"), props).await?;
                // systemd has no hugetlb property: the files, as runc writes them.
                if !cfg.hugepages.is_empty() {
                    self.write_hugetlb(&self.pod_path(qos, uid), &cfg.hugepages)?;
                }
                Ok(())
            }
            CgroupDriver::Cgroupfs => self.write_files(&self.pod_path(qos, uid), cfg),
        }
    }

    /// Removes the pod's cgroup once its containers are gone; the paths left.
    pub async fn remove_pod(&self, qos: QosClass, uid: &str) -> Vec<PathBuf> {
        if self.driver == CgroupDriver::Systemd {
            match self.systemd().await {
                Ok(sd) => {
                    if let Err(e) = sd.stop(&pod_slice(qos, uid)).await {
                        debug!(error = %e, "stopping the pod slice failed");
                    }
                }
                Err(e) => debug!(error = %e, "no systemd connection to stop the pod slice"),
            }
        }
        let mut left = super::remove_pod_cgroup(&self.pod_path(qos, uid));
        // A pod started before the node switched to the systemd driver left its
        // cgroupfs directory (systemd's slices go only through systemd).
        if self.driver == CgroupDriver::Systemd {
            left.extend(super::remove_pod_cgroup(&pod_path(CgroupDriver::Cgroupfs, qos, uid)));
        }
        left
    }

    /// The QoS cgroups' cpu shares: burstable gets the sum of its pods' cpu
    /// requests (`burstable_milli`), besteffort the minimum.
    pub async fn update_qos(&self, burstable_milli: i64) -> Result<(), CgroupError> {
        let burstable = PodConfig { shares: super::milli_cpu_to_shares(burstable_milli), ..Default::default() };
        let besteffort = PodConfig { shares: 2, ..Default::default() };
        match self.driver {
            CgroupDriver::Systemd => {
                let sd = self.systemd().await?;
                for (qos, cfg) in [(QosClass::Burstable, burstable), (QosClass::BestEffort, besteffort)] {
                    let mut props = accounting();
                    props.extend(self.properties(&cfg));
                    sd.ensure_slice(&qos_slice(qos), &format!("libcontainer container {}", qos_slice(qos)), props).await?;
                }
                Ok(())
            }
            CgroupDriver::Cgroupfs => {
                self.write_files("/kubepods/burstable", &burstable)?;
                self.write_files("/kubepods/besteffort", &besteffort)
            }
        }
    }

    /// Node allocatable on the pods cgroup (`enforceNodeAllocatable: [pods]`): its
    /// memory limit and cpu shares. Returns the cgroup's path.
    pub async fn enforce_node_allocatable(&self, memory_limit: i64, cpu_milli: i64) -> Result<String, CgroupError> {
        let cfg = PodConfig { shares: super::milli_cpu_to_shares(cpu_milli), memory: Some(memory_limit), ..Default::default() };
        match self.driver {
            CgroupDriver::Systemd => {
                let mut props = accounting();
                props.extend(self.properties(&cfg));
                self.systemd().await?.ensure_slice("kubepods.slice", "libcontainer container kubepods.slice", props).await?;
                Ok("/kubepods.slice".into())
            }
            CgroupDriver::Cgroupfs => {
                self.write_files("/kubepods", &cfg)?;
                Ok("/kubepods".into())
            }
        }
    }

    /// systemd unit properties for a config, for the cgroup version in use.
    fn properties(&self, cfg: &PodConfig) -> Vec<Property> {
        let v2 = self.unified.is_some();
        let mut p: Vec<Property> = Vec::new();
        if v2 {
            p.push(("CPUWeight", Value::U64(shares_to_weight(cfg.shares))));
        } else {
            p.push(("CPUShares", Value::U64(cfg.shares)));
        }
        if let (Some(q), Some(period)) = (cfg.quota, cfg.period) {
            p.push(("CPUQuotaPerSecUSec", Value::U64(systemd::quota_per_sec_usec(q, period))));
        }
        if let Some(m) = cfg.memory {
            p.push((if v2 { "MemoryMax" } else { "MemoryLimit" }, Value::U64(m.max(0) as u64)));
        }
        if let Some(n) = cfg.pids {
            p.push(("TasksMax", Value::U64(n.max(0) as u64)));
        }
        p
    }

    /// The hugetlb limits of cgroup `rel` (a systemd slice): v2 enables the
    /// controller down to it first, v1 writes into the hugetlb hierarchy.
    fn write_hugetlb(&self, rel: &str, limits: &[(String, i64)]) -> Result<(), CgroupError> {
        let rel = rel.trim_start_matches('/');
        let (dir, file) = match &self.unified {
            Some(root) => {
                enable_controllers(root, rel)?;
                (root.join(rel), "max")
            }
            None => match super::v1_root("hugetlb") {
                Some(r) => (r.join(rel), "limit_in_bytes"),
                None => return Ok(()),
            },
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (size, limit) in limits {
            write(&dir, &format!("hugetlb.{size}.{file}"), &limit.to_string())?;
        }
        Ok(())
    }

    /// cgroupfs: creates `rel` in every hierarchy and writes the config's files.
    fn write_files(&self, rel: &str, cfg: &PodConfig) -> Result<(), CgroupError> {
        let rel = rel.trim_start_matches('/');
        match &self.unified {
            Some(root) => {
                let dir = root.join(rel);
                enable_controllers(root, rel)?;
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                write(&dir, "cpu.weight", &shares_to_weight(cfg.shares).to_string())?;
                let max = match (cfg.quota, cfg.period) {
                    (Some(q), Some(p)) => format!("{q} {p}"),
                    _ => "max".into(),
                };
                write(&dir, "cpu.max", &max)?;
                write(&dir, "memory.max", &cfg.memory.map(|m| m.to_string()).unwrap_or_else(|| "max".into()))?;
                if let Some(n) = cfg.pids {
                    write(&dir, "pids.max", &n.to_string())?;
                }
                for (size, limit) in &cfg.hugepages {
                    write(&dir, &format!("hugetlb.{size}.max"), &limit.to_string())?;
                }
                // What runc creates below gets the same controllers.
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), subtree(root));
            }
            None => {
                let roots = super::v1_controller_roots();
                let mut mounts: Vec<&PathBuf> = roots.iter().map(|(_, m)| m).collect();
                mounts.dedup();
                for mount in mounts {
                    let dir = mount.join(rel);
                    if !dir.exists() {
                        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                    }
                }
                for (controller, mount) in &roots {
                    let dir = mount.join(rel);
                    match controller.as_str() {
                        "cpu" => {
                            write(&dir, "cpu.shares", &cfg.shares.to_string())?;
                            write(&dir, "cpu.cfs_quota_us", &cfg.quota.unwrap_or(-1).to_string())?;
                            if let Some(p) = cfg.period {
                                write(&dir, "cpu.cfs_period_us", &p.to_string())?;
                            }
                        }
                        "memory" => write(&dir, "memory.limit_in_bytes", &cfg.memory.unwrap_or(-1).to_string())?,
                        "pids" => write(&dir, "pids.max", &cfg.pids.map(|n| n.to_string()).unwrap_or_else(|| "max".into()))?,
                        "hugetlb" => {
                            for (size, limit) in &cfg.hugepages {
                                write(&dir, &format!("hugetlb.{size}.limit_in_bytes"), &limit.to_string())?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// The accounting libcontainer's systemd manager turns on for every unit it
/// starts, so the pod slices have cpu, memory, io (blkio on v1) and pids files.
fn accounting() -> Vec<Property> {
    let io = if super::uses_v1() { "BlockIOAccounting" } else { "IOAccounting" };
    vec![("CPUAccounting", Value::Bool(true)), ("MemoryAccounting", Value::Bool(true)), (io, Value::Bool(true)), ("TasksAccounting", Value::Bool(true))]
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(io(&p))
}

/// The controllers the v2 root offers that pods use, as `+cpu +memory …`.
fn subtree(root: &Path) -> String {
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    available.split_whitespace().filter(|c| ["cpu", "cpuset", "memory", "pids", "io", "hugetlb"].contains(c)).map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ")
}

/// cgroup v2: enables the pods' controllers on every ancestor of `rel` (each
/// cgroup hands its controllers to its children through `cgroup.subtree_control`).
fn enable_controllers(root: &Path, rel: &str) -> Result<(), CgroupError> {
    let want = subtree(root);
    let mut dir = root.to_path_buf();
    for part in Path::new(rel).parent().into_iter().flat_map(|p| p.components()) {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), &want);
        dir = dir.join(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).map_err(io(&dir))?;
        }
    }
    let _ = std::fs::write(dir.join("cgroup.subtree_control"), &want);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    type Res<'a> = &'a [(&'a str, &'a str)];

    fn pod(containers: &[(Res, Res)]) -> Pod {
        let m = |v: &[(&str, &str)]| (!v.is_empty()).then(|| v.iter().map(|(k, q)| (k.to_string(), Quantity(q.to_string()))).collect());
        Pod {
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .enumerate()
                    .map(|(i, (l, r))| Container { name: format!("c{i}"), resources: Some(ResourceRequirements { limits: m(l), requests: m(r), ..Default::default() }), ..Default::default() })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_config_is_upstreams_resource_config_for_pod() {
        let g = pod(&[(&[("cpu", "500m"), ("memory", "64Mi")], &[]), (&[("cpu", "250m"), ("memory", "32Mi")], &[])]);
        assert_eq!(pod_config(&g, 100), PodConfig { shares: 768, quota: Some(75_000), period: Some(100_000), memory: Some(96 << 20), pids: Some(100), hugepages: vec![] });
        // Burstable: a limit counts only when every container declares it.
        let b = pod(&[(&[("memory", "64Mi")], &[("cpu", "100m")]), (&[], &[("cpu", "100m")])]);
        assert_eq!(pod_config(&b, -1), PodConfig { shares: 204, ..Default::default() });
        let b2 = pod(&[(&[("memory", "64Mi")], &[("cpu", "100m")])]);
        assert_eq!(pod_config(&b2, -1).memory, Some(64 << 20));
        assert_eq!(pod_config(&pod(&[(&[], &[])]), 0), PodConfig { shares: 2, ..Default::default() });
    }

    #[test]
    fn huge_pages_are_limited_per_page_size_on_the_pod() {
        assert_eq!(hugepage_size_name("hugepages-2Mi").as_deref(), Some("2MB"));
        assert_eq!(hugepage_size_name("hugepages-1Gi").as_deref(), Some("1GB"));
        assert_eq!(hugepage_size_name("memory"), None);
        let p = pod(&[(&[("memory", "64Mi"), ("hugepages-2Mi", "4Mi")], &[]), (&[("memory", "32Mi"), ("hugepages-2Mi", "2Mi"), ("hugepages-1Gi", "1Gi")], &[])]);
        assert_eq!(pod_config(&p, -1).hugepages, vec![("1GB".to_string(), 1 << 30), ("2MB".to_string(), 6 << 20)]);
    }

    #[test]
    fn names_for_both_drivers() {
        let u = "1b4e-77";
        assert_eq!(pod_path(CgroupDriver::Cgroupfs, QosClass::Burstable, u), "/kubepods/burstable/pod1b4e-77");
        assert_eq!(pod_path(CgroupDriver::Systemd, QosClass::Burstable, u), "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e_77.slice");
        assert_eq!(pod_path(CgroupDriver::Systemd, QosClass::Guaranteed, u), "/kubepods.slice/kubepods-pod1b4e_77.slice");
        assert_eq!(container_cgroups_path(CgroupDriver::Systemd, QosClass::BestEffort, u, "abc"), "kubepods-besteffort-pod1b4e_77.slice:cri-containerd:abc");
        assert_eq!(container_cgroups_path(CgroupDriver::Cgroupfs, QosClass::Guaranteed, u, "abc"), "/kubepods/pod1b4e-77/abc");
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
