//! `/stats/summary` and `/metrics/resource`: CPU, memory, network and filesystem
//! usage of the node, its pods and their containers, read from the cgroups
//! (v1 or v2), /proc and statfs — what metrics-server and `kubectl top` read
//! (pkg/kubelet/apis/stats/v1alpha1, pkg/kubelet/metrics/collectors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::cgroups::usage::{cgroup_dir, count_procs, procs_below, read_usage, PsiStats, Usage};

/// A process in the cgroup (for its network namespace's counters).
fn a_pid(rel: &str) -> Option<u32> {
    procs_below(cgroup_dir("memory", rel)?).next()
}

/// `/proc/<pid>/net/dev` (or the host's): (interface, rx bytes, rx errors, tx bytes, tx errors).
fn net_dev(pid: Option<u32>) -> Vec<(String, u64, u64, u64, u64)> {
    let p = pid.map(|p| PathBuf::from(format!("/proc/{p}/net/dev"))).unwrap_or_else(|| PathBuf::from("/proc/net/dev"));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            match f.as_slice() {
                [rx, _, rx_errors, _, _, _, _, _, tx, _, tx_errors, _, ..] if name.trim() != "lo" => Some((name.trim().to_string(), *rx, *rx_errors, *tx, *tx_errors)),
                _ => None,
            }
        })
        .collect()
}

#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
fn network(time: &str, pid: Option<u32>, default_if: &str) -> Value {
    let ifs: Vec<Value> = net_dev(pid)
        .into_iter()
        .map(|(n, rx, rxe, tx, txe)| json!({"name": n, "rxBytes": rx, "rxErrors": rxe, "txBytes": tx, "txErrors": txe}))
        .collect();
    let main = ifs.iter().find(|i| i["name"] == default_if).or(ifs.first()).cloned().unwrap_or(json!({}));
    let mut v = main.clone();
    v["time"] = json!(time);
    v["interfaces"] = json!(ifs);
    v
}

/// How often the housekeeping samples CPU (cadvisor's housekeeping interval).
pub const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// CPU samples per cgroup, taken on the housekeeping interval: the summary
/// reports `usageNanoCores` from the last two, as cadvisor does, so its rate
/// does not depend on how often the summary is read, and is there from the
/// first request on (a cgroup sampled once so far is compared with a reading
/// taken for the request).
#[derive(Default)]
pub struct Sampler {
    samples: Mutex<HashMap<String, Samples>>,
}

#[derive(Debug, Clone, Copy)]
struct Samples {
    prev: Option<(DateTime<Utc>, u64)>,
    last: (DateTime<Utc>, u64),
}

/// Two readings shorter apart than this give no rate (too noisy).
const MIN_RATE_WINDOW: chrono::Duration = chrono::Duration::milliseconds(200);

fn rate((t0, v0): (DateTime<Utc>, u64), (t1, v1): (DateTime<Utc>, u64)) -> Option<u64> {
    let dt = (t1 - t0).num_nanoseconds()?;
    (dt >= MIN_RATE_WINDOW.num_nanoseconds()? && v1 >= v0).then(|| ((v1 - v0) as f64 / dt as f64 * 1e9) as u64)
}

impl Sampler {
    /// Records a reading of `key`.
    pub fn record(&self, key: &str, now: DateTime<Utc>, cpu_ns: u64) {
        if let Ok(mut g) = self.samples.lock() {
            let prev = g.get(key).map(|s| s.last).filter(|(_, v)| *v <= cpu_ns);
            g.insert(key.to_string(), Samples { prev, last: (now, cpu_ns) });
        }
    }

    /// Forgets cgroups not in `keys` (pods and containers that are gone).
    pub fn retain(&self, keys: &std::collections::HashSet<String>) {
        if let Ok(mut g) = self.samples.lock() {
            g.retain(|k, _| keys.contains(k));
        }
    }

    /// (time, cumulative ns, rate) of `key` for a summary: the last two samples,
    /// or the last sample and `fresh` (a reading taken now).
    fn cpu(&self, key: &str, fresh: Option<(DateTime<Utc>, u64)>) -> Option<(DateTime<Utc>, u64, Option<u64>)> {
        let mut g = self.samples.lock().ok()?;
        let s = match (g.get(key), fresh) {
            (Some(s), _) => *s,
            // Not sampled yet (started since the last pass): this reading is its first sample.
            (None, Some(f)) => {
                g.insert(key.to_string(), Samples { prev: None, last: f });
                return Some((f.0, f.1, None));
            }
            (None, None) => return None,
        };
        drop(g);
        match (s.prev.and_then(|p| rate(p, s.last)), fresh) {
            (Some(r), _) => Some((s.last.0, s.last.1, Some(r))),
            (None, Some(f)) => Some((f.0, f.1, rate(s.last, f))),
            (None, None) => Some((s.last.0, s.last.1, None)),
        }
    }
}

/// The cgroups the summary reports CPU for, by sampler key: the node (`/`), the
/// pods cgroup, and each pod and running container of `pods`.
fn cpu_targets(pods: &[k8s_openapi::api::core::v1::Pod]) -> Vec<String> {
    let mut keys = vec!["/".to_string(), crate::cgroups::kubepods().to_string()];
    for p in pods.iter().filter(|p| in_summary(p)) {
        let (qos, uid) = (crate::cgroups::qos_class(p), p.metadata.uid.as_deref().unwrap_or_default());
        let parent = crate::cgroups::pod_cgroup_parent(qos, uid);
        for id in running_container_ids(p) {
            keys.push(crate::cgroups::container_cgroup(qos, uid, &id));
        }
        keys.push(parent);
    }
    keys
}

/// The CPU time of a sampler key: the node's from /proc/stat, a cgroup's from it.
fn cpu_reading(key: &str) -> Option<u64> {
    if key == "/" {
        node_cpu_ns()
    } else {
        read_usage(key).cpu_ns
    }
}

/// One housekeeping pass: samples every target's CPU time.
pub fn housekeep(sampler: &Sampler, root_dir: &Path) {
    let keys = cpu_targets(&crate::pod::store::load_all(root_dir));
    for k in &keys {
        if let Some(ns) = cpu_reading(k) {
            sampler.record(k, Utc::now(), ns);
        }
    }
    sampler.retain(&keys.into_iter().collect());
}

/// Samples at start, a second later (so that rates exist soon after a start),
/// then every [`HOUSEKEEPING_INTERVAL`] until `cancel`.
pub async fn run_housekeeping(sampler: std::sync::Arc<Sampler>, root_dir: PathBuf, cancel: tokio_util::sync::CancellationToken) {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        let (s, r) = (sampler.clone(), root_dir.clone());
        let _ = tokio::task::spawn_blocking(move || housekeep(&s, &r)).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = HOUSEKEEPING_INTERVAL;
    }
}

#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
fn cpu_json(s: &Sampler, key: &str, now: DateTime<Utc>, u: &Usage) -> Value {
    let fresh = u.cpu_ns.map(|ns| (now, ns));
    let mut v = match s.cpu(key, fresh) {
        Some((t, ns, r)) => {
            let mut v = json!({"time": crate::logs::timestamp(t), "usageCoreNanoSeconds": ns});
            if let Some(r) = r {
                v["usageNanoCores"] = json!(r);
            }
            v
        }
        None => {
            let mut v = json!({"time": crate::logs::timestamp(now)});
            if let Some(ns) = u.cpu_ns {
                v["usageCoreNanoSeconds"] = json!(ns);
            }
            v
        }
    };
    if let Some(p) = u.psi.and_then(|p| p.cpu) {
        v["psi"] = psi_json(&p);
    }
    v
}

/// A pressure reading as the summary's `PSIStats` (KubeletPSI, on by default since 1.34).
fn psi_json(p: &PsiStats) -> Value {
    let d = |d: &crate::cgroups::usage::PsiData| json!({"total": d.total, "avg10": d.avg10, "avg60": d.avg60, "avg300": d.avg300});
    json!({"full": d(&p.full), "some": d(&p.some)})
}

/// The `io` object (pressure only, as upstream's `IOStats`), when there is a reading.
fn io_json(time: &str, u: &Usage) -> Option<Value> {
    let p = u.psi.and_then(|p| p.io)?;
    Some(json!({"time": time, "psi": psi_json(&p)}))
}

/// The `swap` object: usage, and what is left under a limit.
#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
fn swap_json(time: &str, u: &Usage) -> Option<Value> {
    let used = u.swap_bytes?;
    let mut v = json!({"time": time, "swapUsageBytes": used});
    if let Some(l) = u.swap_limit {
        v["swapAvailableBytes"] = json!(l.saturating_sub(used));
    }
    Some(v)
}

/// Adds the optional `io` and `swap` objects of `u` to a container, pod or node object.
#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
fn with_io_swap(mut v: Value, time: &str, u: &Usage) -> Value {
    if let Some(io) = io_json(time, u) {
        v["io"] = io;
    }
    if let Some(sw) = swap_json(time, u) {
        v["swap"] = sw;
    }
    v
}

/// Pods the summary lists: those with a sandbox that have not finished.
pub(crate) fn in_summary(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    let st = p.status.as_ref();
    match st.and_then(|s| s.phase.as_deref()) {
        Some("Running") => true,
        Some("Pending") => st.and_then(|s| s.pod_ip.as_ref()).is_some(),
        _ => false,
    }
}

/// The ids of the pod's running containers (init, sidecar and app).
fn running_container_ids(p: &k8s_openapi::api::core::v1::Pod) -> impl Iterator<Item = String> + '_ {
    let st = p.status.as_ref();
    st.into_iter()
        .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| Some(c.container_id.as_deref()?.trim_start_matches("containerd://").to_string()))
}

/// The `memory` object; `availableBytes` is the limit (the cgroup's, or the
/// node's capacity) less the working set, and absent without a limit.
#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
fn memory_json(time: &str, u: &Usage, limit: Option<u64>) -> Value {
    let mut v = json!({"time": time});
    for (k, val) in [("usageBytes", u.memory_bytes), ("workingSetBytes", u.working_set_bytes), ("rssBytes", u.rss_bytes), ("pageFaults", u.page_faults), ("majorPageFaults", u.major_page_faults)] {
        if let Some(x) = val {
            v[k] = json!(x);
        }
    }
    if let (Some(l), Some(ws)) = (limit.or(u.memory_limit), u.working_set_bytes) {
        v["availableBytes"] = json!(l.saturating_sub(ws));
    }
    if let Some(p) = u.psi.and_then(|p| p.memory) {
        v["psi"] = psi_json(&p);
    }
    v
}

fn fs_json(time: &str, path: &Path) -> Value {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let f = s.fragment_size();
            let (cap, avail, free) = (s.blocks() * f, s.blocks_available() * f, s.blocks_free() * f);
            json!({"time": time, "capacityBytes": cap, "availableBytes": avail, "usedBytes": cap.saturating_sub(free),
                   "inodes": s.files(), "inodesFree": s.files_free(), "inodesUsed": s.files().saturating_sub(s.files_free())})
        }
        Err(_) => json!({"time": time}),
    }
}

/// The node's CPU time (all CPUs, non-idle) in ns, from /proc/stat.
fn node_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: u64 = f.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| *v).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Some(busy * 1_000_000_000 / hz.max(1))
}

/// The Summary API object (stats/v1alpha1) for the node and `pods`.
pub fn summary(node: &str, root_dir: &Path, image_fs: &Path, pods: &[k8s_openapi::api::core::v1::Pod], sampler: &Sampler) -> Value {
    let now = Utc::now();
    let time = crate::logs::timestamp(now);
    let total = crate::cgroups::meminfo("MemTotal:").unwrap_or(0);
    let psi = crate::cgroups::usage::node_pressure();
    // cadvisor's root container: what eviction's memory.available is taken from.
    let root = crate::cgroups::usage::root_memory();
    let node_mem = Usage { memory_bytes: root.map(|r| r.0), working_set_bytes: root.map(|r| r.1), psi, ..Default::default() };
    let node_cpu = Usage { cpu_ns: node_cpu_ns(), psi, ..Default::default() };
    let swap_total = crate::cgroups::meminfo("SwapTotal:");
    let node_swap = Usage {
        swap_bytes: swap_total.map(|t| t.saturating_sub(crate::cgroups::meminfo("SwapFree:").unwrap_or(t))),
        swap_limit: swap_total,
        psi,
        ..Default::default()
    };
    let default_if = crate::agent::default_route_interface().unwrap_or_default();
    let pods_json: Vec<Value> = pods
        .iter()
        .filter(|p| in_summary(p))
        .map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let parent = crate::cgroups::pod_cgroup_parent(crate::cgroups::qos_class(p), &uid);
            let st = p.status.clone().unwrap_or_default();
            let statuses = st.init_container_statuses.iter().flatten().chain(st.container_statuses.iter().flatten());
            let containers: Vec<Value> = statuses
                .filter(|c| c.state.as_ref().map(|s| s.running.is_some()).unwrap_or(false))
                .filter_map(|c| {
                    let id = c.container_id.as_deref()?.trim_start_matches("containerd://");
                    let rel = crate::cgroups::container_cgroup(crate::cgroups::qos_class(p), &uid, id);
                    let u = read_usage(&rel);
                    let started = c.state.as_ref()?.running.as_ref()?.started_at.as_ref().map(|t| t.0.to_string());
                    let c = json!({"name": c.name, "startTime": started, "cpu": cpu_json(sampler, &rel, now, &u), "memory": memory_json(&time, &u, None),
                                   "logs": fs_json(&time, Path::new("/var/log/pods")), "rootfs": fs_json(&time, root_dir)});
                    Some(with_io_swap(c, &time, &u))
                })
                .collect();
            let u = read_usage(&parent);
            let pod = json!({
                "podRef": {"name": p.metadata.name, "namespace": p.metadata.namespace, "uid": uid},
                "startTime": st.start_time.as_ref().map(|t| t.0.to_string()),
                "containers": containers,
                "cpu": cpu_json(sampler, &parent, now, &u),
                "memory": memory_json(&time, &u, None),
                "network": network(&time, a_pid(&parent), "eth0"),
                "ephemeral-storage": fs_json(&time, root_dir),
                "process_stats": {"process_count": count_procs(&parent)},
            });
            with_io_swap(pod, &time, &u)
        })
        .collect();
    // The pods cgroup, as upstream's "pods" system container.
    let pods_cg = read_usage(crate::cgroups::kubepods());
    let pods_system = json!({"name": "pods", "startTime": boot_time().map(crate::logs::timestamp), "cpu": cpu_json(sampler, crate::cgroups::kubepods(), now, &pods_cg), "memory": memory_json(&time, &pods_cg, None)});
    let system_containers = vec![with_io_swap(pods_system, &time, &pods_cg)];
    let pids = crate::eviction::observe::pids();
    let node_json = json!({
        "nodeName": node,
        "startTime": boot_time().map(crate::logs::timestamp),
        "systemContainers": system_containers,
        "cpu": cpu_json(sampler, "/", now, &node_cpu),
        "memory": memory_json(&time, &node_mem, Some(total)),
        "network": network(&time, None, &default_if),
        "fs": fs_json(&time, root_dir),
        // One runtime filesystem: containers' writable layers live with the images.
        "runtime": {"imageFs": fs_json(&time, image_fs), "containerFs": fs_json(&time, image_fs)},
        // pid.available's inputs, as upstream's pidlimit stats: the PID limit and the tasks running.
        "rlimit": {"time": time, "maxpid": pids.map(|p| p.0), "curproc": pids.map(|p| p.1)},
    });
    json!({
        "node": with_io_swap(node_json, &time, &node_swap),
        "pods": pods_json,
    })
}

fn boot_time() -> Option<DateTime<Utc>> {
    let secs: u64 = std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    DateTime::from_timestamp(secs as i64, 0)
}

/// `/metrics/resource` (Prometheus text) from a summary: the series metrics-server
/// reads, as upstream's resource metrics collector writes them (families sorted
/// by name; samples stamped with the time of their reading).
#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: reads of a missing key give Null, never a panic.
pub fn resource_metrics(summary: &Value) -> String {
    let ms = Utc::now().timestamp_millis();
    let mut out = String::new();
    // (name, stability, help, kind, rows); a row is (labels, value, stamped).
    let mut family = |name: &str, stability: &str, help: &str, kind: &str, rows: Vec<(String, f64, bool)>| {
        out.push_str(&format!("# HELP {name} [{stability}] {help}\n# TYPE {name} {kind}\n"));
        for (labels, v, stamped) in rows {
            if stamped {
                out.push_str(&format!("{name}{labels} {v} {ms}\n"));
            } else {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        }
    };
    let secs = |v: &Value| v["cpu"]["usageCoreNanoSeconds"].as_f64().map(|n| n / 1e9);
    let ws = |v: &Value| v["memory"]["workingSetBytes"].as_f64();
    let swap = |v: &Value| v["swap"]["swapUsageBytes"].as_f64();
    let swap_limit = |v: &Value| v["swap"]["swapAvailableBytes"].as_f64().map(|a| a + v["swap"]["swapUsageBytes"].as_f64().unwrap_or(0.0));
    let start = |v: &Value| v["startTime"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp() as f64).filter(|t| *t > 0.0);
    let pods = summary["pods"].as_array().cloned().unwrap_or_default();
    let pl = |p: &Value| format!("namespace=\"{}\",pod=\"{}\"", p["podRef"]["namespace"].as_str().unwrap_or(""), p["podRef"]["name"].as_str().unwrap_or(""));
    let containers = |f: &dyn Fn(&Value) -> Option<f64>, stamped: bool| -> Vec<(String, f64, bool)> {
        pods.iter()
            .flat_map(|p| {
                let l = pl(p);
                p["containers"].as_array().cloned().unwrap_or_default().into_iter().filter_map(move |c| f(&c).map(|v| (format!("{{container=\"{}\",{l}}}", c["name"].as_str().unwrap_or("")), v, stamped)))
            })
            .collect()
    };
    let pod_rows = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(String, f64, bool)> { pods.iter().filter_map(|p| f(p).map(|v| (format!("{{{}}}", pl(p)), v, true))).collect() };
    let node = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(String, f64, bool)> { f(&summary["node"]).map(|v| vec![(String::new(), v, true)]).unwrap_or_default() };
    family("container_cpu_usage_seconds_total", "STABLE", "Cumulative cpu time consumed by the container in core-seconds", "counter", containers(&secs, true));
    family("container_memory_working_set_bytes", "STABLE", "Current working set of the container in bytes", "gauge", containers(&ws, true));
    family("container_start_time_seconds", "STABLE", "Start time of the container since unix epoch in seconds", "gauge", containers(&start, false));
    family("container_swap_limit_bytes", "ALPHA", "Current amount of the container swap limit in bytes. Reported only on non-windows systems", "gauge", containers(&swap_limit, true));
    family("container_swap_usage_bytes", "ALPHA", "Current amount of the container swap usage in bytes. Reported only on non-windows systems", "gauge", containers(&swap, true));
    family("node_cpu_usage_seconds_total", "STABLE", "Cumulative cpu time consumed by the node in core-seconds", "counter", node(&secs));
    family("node_memory_working_set_bytes", "STABLE", "Current working set of the node in bytes", "gauge", node(&ws));
    family("node_swap_usage_bytes", "ALPHA", "Current swap usage of the node in bytes. Reported only on non-windows systems", "gauge", node(&swap));
    family("pod_cpu_usage_seconds_total", "STABLE", "Cumulative cpu time consumed by the pod in core-seconds", "counter", pod_rows(&secs));
    family("pod_memory_working_set_bytes", "STABLE", "Current working set of the pod in bytes", "gauge", pod_rows(&ws));
    family("pod_swap_usage_bytes", "ALPHA", "Current amount of the pod swap usage in bytes. Reported only on non-windows systems", "gauge", pod_rows(&swap));
    family("resource_scrape_error", "STABLE", "1 if there was an error while getting container metrics, 0 otherwise", "gauge", vec![(String::new(), 0.0, false)]);
    family("scrape_error", "ALPHA", "(Deprecated since 1.29.0) 1 if there was an error while getting container metrics, 0 otherwise", "gauge", vec![(String::new(), 0.0, false)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_come_from_the_last_two_samples_or_a_fresh_reading() {
        let s = Sampler::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let secs = chrono::Duration::seconds;
        assert!(s.cpu("a", None).is_none());
        // A cgroup the housekeeping has not seen yet: the request's reading is its first sample.
        assert_eq!(s.cpu("new", Some((t0, 7))), Some((t0, 7, None)));
        assert_eq!(s.cpu("new", Some((t0 + secs(1), 1_000_000_007))), Some((t0 + secs(1), 1_000_000_007, Some(1_000_000_000))));
        s.record("a", t0, 1_000_000_000);
        assert_eq!(s.cpu("a", None), Some((t0, 1_000_000_000, None)));
        // One sample so far: compared with the reading taken for the request.
        assert_eq!(s.cpu("a", Some((t0 + secs(4), 3_000_000_000))), Some((t0 + secs(4), 3_000_000_000, Some(500_000_000))));
        assert_eq!(s.cpu("a", Some((t0 + chrono::Duration::milliseconds(50), 1_000_000_001))).unwrap().2, None, "too close for a rate");
        s.record("a", t0 + secs(2), 2_000_000_000);
        // Two samples: their rate, whenever the summary is read.
        assert_eq!(s.cpu("a", Some((t0 + secs(3), 2_100_000_000))), Some((t0 + secs(2), 2_000_000_000, Some(500_000_000))), "1 s of CPU in 2 s = half a core");
        // A counter that went back (a new cgroup of the same name) starts over.
        s.record("a", t0 + secs(4), 5);
        assert_eq!(s.cpu("a", None), Some((t0 + secs(4), 5, None)));
        s.retain(&Default::default());
        assert!(s.cpu("a", None).is_none());
    }

    #[test]
    fn resource_metrics_name_the_series_metrics_server_reads() {
        let sum = json!({"node": {"cpu": {"usageCoreNanoSeconds": 2_000_000_000u64}, "memory": {"workingSetBytes": 1024}},
                         "pods": [{"podRef": {"name": "p", "namespace": "ns"}, "cpu": {"usageCoreNanoSeconds": 500_000_000u64}, "memory": {"workingSetBytes": 10},
                                   "swap": {"swapUsageBytes": 0},
                                   "containers": [{"name": "c", "startTime": "2026-12-06T04:00:00Z", "cpu": {"usageCoreNanoSeconds": 500_000_000u64}, "memory": {"workingSetBytes": 10},
                                                   "swap": {"swapUsageBytes": 4096, "swapAvailableBytes": 4096}}]}]});
        let m = resource_metrics(&sum);
        assert!(m.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} 0.5 "), "{m}");
        assert!(m.contains("node_memory_working_set_bytes 1024 "), "{m}");
        assert!(m.contains("pod_memory_working_set_bytes{namespace=\"ns\",pod=\"p\"} 10 "), "{m}");
        assert!(m.contains("container_start_time_seconds{container=\"c\",namespace=\"ns\",pod=\"p\"} 1796529600\n"), "{m}");
        assert!(m.contains("container_swap_limit_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 8192 "), "{m}");
        assert!(m.contains("pod_swap_usage_bytes{namespace=\"ns\",pod=\"p\"} 0 "), "{m}");
        assert!(!m.lines().any(|l| l.starts_with("node_swap_usage_bytes")), "no swap object on the node, no sample: {m}");
        let names: Vec<&str> = m.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "families sorted by name: {names:?}");
        assert!(m.contains("\nresource_scrape_error 0\n"), "{m}");
        assert!(m.ends_with("\nscrape_error 0\n"), "{m}");
    }
}
