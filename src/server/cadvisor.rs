//! `/metrics/cadvisor`: the per-cgroup series Prometheus scrapes from the
//! kubelet's embedded cadvisor (`container_*`, `machine_*`), for the node's root
//! cgroup, each pod cgroup (`container=""`) and each running container, read
//! from the same cgroup files as the summary ([`crate::cgroups::usage`]): CPU,
//! memory, block I/O per device (`io.stat`), processes and threads
//! (`pids.current`) and, on cgroup v2, pressure stall times. Labels and names
//! are cadvisor's (`container`, `id` = cgroup path, `image`, `name` = container
//! id, `namespace`, `pod`); families are sorted by name, samples stamped in ms.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::cgroups::usage::{read_usage, Usage};

/// One cgroup cadvisor reports, with its identifying labels.
pub struct Target {
    pub labels: Vec<(&'static str, String)>,
    pub usage: Usage,
    pub processes: usize,
}

/// The label set of a cgroup (`id` its path; the rest empty unless known).
fn labels(id: &str, container: &str, image: &str, name: &str, namespace: &str, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("container", container.to_string()),
        ("id", id.to_string()),
        ("image", image.to_string()),
        ("name", name.to_string()),
        ("namespace", namespace.to_string()),
        ("pod", pod.to_string()),
    ]
}

/// The root cgroup, every pod's cgroup and every running container of `pods`.
pub fn targets(pods: &[Pod]) -> Vec<Target> {
    let target = |id: &str, labels| Target { labels, usage: read_usage(id), processes: crate::cgroups::usage::count_procs(id) };
    let mut out = vec![target("/", labels("/", "", "", "", "", ""))];
    for p in pods.iter().filter(|p| super::stats::in_summary(p)) {
        let (ns, name) = (p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref().unwrap_or_default());
        let (qos, uid) = (crate::cgroups::qos_class(p), p.metadata.uid.as_deref().unwrap_or_default());
        let parent = crate::cgroups::pod_cgroup_parent(qos, uid);
        out.push(target(&parent, labels(&parent, "", "", "", ns, name)));
        let st = p.status.as_ref();
        let statuses = st.into_iter().flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
        for c in statuses.filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())) {
            let Some(id) = c.container_id.as_deref().map(|i| i.trim_start_matches("containerd://")) else { continue };
            let cg = crate::cgroups::container_cgroup(qos, uid, id);
            out.push(target(&cg, labels(&cg, &c.name, &c.image, id, ns, name)));
        }
    }
    out
}

/// A Prometheus label value, escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(base: &[(&'static str, String)], extra: &[(&'static str, String)]) -> String {
    let mut all: Vec<&(&'static str, String)> = base.iter().chain(extra).collect();
    all.sort_by_key(|(k, _)| *k);
    let parts: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", parts.join(","))
}

/// A metric family: help, type and samples (labels, value).
#[derive(Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

/// Renders the targets as cadvisor's Prometheus text. `device` names a block
/// device by major:minor (`/dev/vda`); `machine` is (cores, memory bytes).
pub fn render(targets: &[Target], device: &dyn Fn(u64, u64) -> String, machine: (usize, u64), now_ms: i64) -> String {
    let mut fams: BTreeMap<&'static str, Family> = BTreeMap::new();
    let mut add = |name: &'static str, help: &'static str, kind: &'static str, labels: String, v: f64| {
        let f = fams.entry(name).or_insert_with(|| Family { help, kind, ..Default::default() });
        f.samples.push((labels, v));
    };
    for t in targets {
        let u = &t.usage;
        let l = label_text(&t.labels, &[]);
        let secs = |ns: u64| ns as f64 / 1e9;
        if let Some(ns) = u.cpu_ns {
            add("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", "counter", label_text(&t.labels, &[("cpu", "total".into())]), secs(ns));
        }
        if let Some(ns) = u.cpu_user_ns {
            add("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", "counter", l.clone(), secs(ns));
        }
        if let Some(ns) = u.cpu_system_ns {
            add("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", "counter", l.clone(), secs(ns));
        }
        let gauges: [(&'static str, &'static str, Option<u64>); 5] = [
            ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", u.memory_bytes),
            ("container_memory_working_set_bytes", "Current working set in bytes.", u.working_set_bytes),
            ("container_memory_rss", "Size of RSS in bytes.", u.rss_bytes),
            ("container_memory_cache", "Number of bytes of page cache memory.", u.cache_bytes),
            ("container_memory_swap", "Container swap usage in bytes.", u.swap_bytes),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                add(name, help, "gauge", l.clone(), v as f64);
            }
        }
        // cadvisor reports an unlimited memory or pids limit as 0.
        add("container_spec_memory_limit_bytes", "Memory limit for the container.", "gauge", l.clone(), u.memory_limit.unwrap_or(0) as f64);
        add("container_processes", "Number of processes running inside the container.", "gauge", l.clone(), t.processes as f64);
        if let Some(n) = u.threads {
            add("container_threads", "Number of threads running inside the container", "gauge", l.clone(), n as f64);
            add("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", "gauge", l.clone(), u.threads_max.unwrap_or(0) as f64);
        }
        for d in &u.io {
            let dl = label_text(&t.labels, &[("device", device(d.major, d.minor))]);
            add("container_fs_reads_bytes_total", "Cumulative count of bytes read", "counter", dl.clone(), d.read_bytes as f64);
            add("container_fs_writes_bytes_total", "Cumulative count of bytes written", "counter", dl.clone(), d.write_bytes as f64);
            add("container_fs_reads_total", "Cumulative count of reads completed", "counter", dl.clone(), d.reads as f64);
            add("container_fs_writes_total", "Cumulative count of writes completed", "counter", dl, d.writes as f64);
        }
        if let Some(p) = u.psi {
            let kinds = [
                (p.cpu, "container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited due to CPU congestion.", "container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to CPU congestion."),
                (p.memory, "container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited due to memory congestion.", "container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to memory congestion."),
                (p.io, "container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due to IO congestion.", "container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to IO congestion."),
            ];
            for (s, waiting, wh, stalled, sh) in kinds {
                if let Some(s) = s {
                    // PSI totals are in µs.
                    add(waiting, wh, "counter", l.clone(), s.some.total as f64 / 1e6);
                    add(stalled, sh, "counter", l.clone(), s.full.total as f64 / 1e6);
                }
            }
        }
    }
    add("container_scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", "gauge", String::new(), 0.0);
    add("machine_cpu_cores", "Number of logical CPU cores.", "gauge", String::new(), machine.0 as f64);
    add("machine_memory_bytes", "Amount of memory installed on the machine.", "gauge", String::new(), machine.1 as f64);
    let mut out = String::new();
    for (name, f) in &fams {
        out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {}\n", f.help, f.kind));
        for (l, v) in &f.samples {
            out.push_str(&format!("{name}{l} {v} {now_ms}\n"));
        }
    }
    out
}

/// `/metrics/cadvisor` for `pods`, read now.
pub fn metrics(pods: &[Pod]) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = crate::cgroups::meminfo("MemTotal:").unwrap_or(0);
    let device = |ma: u64, mi: u64| crate::cgroups::usage::device_name(ma, mi).unwrap_or_else(|| format!("{ma}:{mi}"));
    render(&targets(pods), &device, (cores, mem), chrono::Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::usage::{DeviceIo, Pressure, PsiData, PsiStats};

    #[test]
    fn series_carry_cadvisor_names_and_labels() {
        let usage = Usage {
            cpu_ns: Some(1_500_000_000),
            memory_bytes: Some(4096),
            working_set_bytes: Some(2048),
            memory_limit: None,
            threads: Some(3),
            threads_max: Some(1024),
            io: vec![DeviceIo { major: 254, minor: 0, read_bytes: 8192, write_bytes: 20 << 20, reads: 2, writes: 5 }],
            psi: Some(Pressure { io: Some(PsiStats { some: PsiData { total: 2_500_000, ..Default::default() }, full: PsiData { total: 1_000_000, ..Default::default() } }), ..Default::default() }),
            ..Default::default()
        };
        let t = Target { labels: labels("/kubepods/besteffort/podu/abc", "c", "img:1", "abc", "ns", "p\"q"), usage, processes: 2 };
        let m = render(&[t], &|ma, mi| format!("/dev/x{ma}_{mi}"), (2, 1 << 30), 1000);
        let l = r#"container="c",id="/kubepods/besteffort/podu/abc",image="img:1",name="abc",namespace="ns",pod="p\"q""#;
        for want in [
            "container_cpu_usage_seconds_total{container=\"c\",cpu=\"total\",id=\"/kubepods/besteffort/podu/abc\",image=\"img:1\",name=\"abc\",namespace=\"ns\",pod=\"p\\\"q\"} 1.5 1000\n".to_string(),
            "container_fs_writes_bytes_total{container=\"c\",device=\"/dev/x254_0\",id=\"/kubepods/besteffort/podu/abc\",image=\"img:1\",name=\"abc\",namespace=\"ns\",pod=\"p\\\"q\"} 20971520 1000\n".to_string(),
            format!("container_memory_working_set_bytes{{{l}}} 2048 1000\n"),
            format!("container_spec_memory_limit_bytes{{{l}}} 0 1000\n"),
            format!("container_processes{{{l}}} 2 1000\n"),
            format!("container_threads{{{l}}} 3 1000\n"),
            format!("container_threads_max{{{l}}} 1024 1000\n"),
            format!("container_pressure_io_waiting_seconds_total{{{l}}} 2.5 1000\n"),
            format!("container_pressure_io_stalled_seconds_total{{{l}}} 1 1000\n"),
            "\nmachine_cpu_cores 2 1000\n".to_string(),
            "\ncontainer_scrape_error 0 1000\n".to_string(),
        ] {
            assert!(m.contains(&want), "missing {want:?} in\n{m}");
        }
        assert!(!m.contains("container_pressure_cpu"), "no cpu pressure reading, no series");
        assert!(!m.contains("container_memory_swap"), "no swap reading, no series");
        let names: Vec<&str> = m.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "families sorted: {names:?}");
    }
}
