//! What a cgroup has used, read from its files on either cgroup version: CPU
//! time, memory (usage, working set, rss, cache, swap, limit), block I/O per
//! device, pids and, on v2, pressure stall information. The summary API, the
//! resource metrics and `/metrics/cadvisor` are all built from one [`Usage`].
//! The parsers take file contents, so they are tested without a cgroup.

use std::path::{Path, PathBuf};

/// Limits above this are "unlimited" (cadvisor's `maxMemorySize`, 1 << 62).
const UNLIMITED: u64 = 1 << 62;

/// One reading of a cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Cumulative CPU time, ns.
    pub cpu_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The memory limit; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Swap in use (v2 `memory.swap.current`; v1 `memsw` minus memory).
    pub swap_bytes: Option<u64>,
    /// The swap limit; `None` when unlimited or unknown.
    pub swap_limit: Option<u64>,
    /// Tasks (threads) in the cgroup (`pids.current`) and their limit (`None`: max).
    pub threads: Option<u64>,
    pub threads_max: Option<u64>,
    /// Bytes and operations per block device.
    pub io: Vec<DeviceIo>,
    /// Pressure stall information (cgroup v2 only).
    pub psi: Option<Pressure>,
}

/// Block I/O of one device (`io.stat`, or v1 `blkio.throttle.*_recursive`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceIo {
    pub major: u64,
    pub minor: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// One line of a pressure file: `total` in µs, averages in percent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiData {
    pub total: u64,
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// A pressure file: the `some` and `full` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiStats {
    pub some: PsiData,
    pub full: PsiData,
}

/// `cpu.pressure`, `memory.pressure` and `io.pressure`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub cpu: Option<PsiStats>,
    pub memory: Option<PsiStats>,
    pub io: Option<PsiStats>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// A limit file: a number, or `max` (v2) / a huge value (v1) for none.
pub fn parse_limit(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|v| *v < UNLIMITED)
}

/// `key value` from a flat-keyed file (`memory.stat`, `cpu.stat`).
pub fn flat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn field(stat: &Option<String>, key: &str) -> Option<u64> {
    stat.as_deref().and_then(|s| flat_field(s, key))
}

/// A pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and `full ...`).
pub fn parse_pressure(text: &str) -> Option<PsiStats> {
    let line = |kind: &str| -> Option<PsiData> {
        let l = text.lines().find(|l| l.split_whitespace().next() == Some(kind))?;
        let mut d = PsiData::default();
        for kv in l.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            match k {
                "avg10" => d.avg10 = v.parse().ok()?,
                "avg60" => d.avg60 = v.parse().ok()?,
                "avg300" => d.avg300 = v.parse().ok()?,
                "total" => d.total = v.parse().ok()?,
                _ => {}
            }
        }
        Some(d)
    };
    let some = line("some")?;
    // Before 5.13 cpu.pressure had no `full` line: upstream reports zeros.
    Some(PsiStats { some, full: line("full").unwrap_or_default() })
}

/// v2 `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`.
pub fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (major, minor) = it.next()?.split_once(':')?;
            let mut d = DeviceIo { major: major.parse().ok()?, minor: minor.parse().ok()?, ..Default::default() };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else { continue };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.read_bytes = v,
                    "wbytes" => d.write_bytes = v,
                    "rios" => d.reads = v,
                    "wios" => d.writes = v,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

/// v1 `blkio.throttle.io_service_bytes_recursive` and `..._io_serviced_recursive`
/// (`8:0 Read 4096` lines) merged per device.
pub fn parse_blkio_v1(bytes: &str, ops: &str) -> Vec<DeviceIo> {
    let mut out: Vec<DeviceIo> = Vec::new();
    for (text, is_bytes) in [(bytes, true), (ops, false)] {
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, v] = f[..] else { continue };
            let (Some((ma, mi)), Ok(v)) = (dev.split_once(':'), v.parse::<u64>()) else { continue };
            let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse()) else { continue };
            let i = match out.iter().position(|d| d.major == major && d.minor == minor) {
                Some(i) => i,
                None => {
                    out.push(DeviceIo { major, minor, ..Default::default() });
                    out.len() - 1
                }
            };
            let Some(d) = out.get_mut(i) else { continue };
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = v,
                ("Write", true) => d.write_bytes = v,
                ("Read", false) => d.reads = v,
                ("Write", false) => d.writes = v,
                _ => {}
            }
        }
    }
    out
}

/// The directory of cgroup `rel` for `controller` (its v1 hierarchy, or the v2 mount).
pub fn cgroup_dir(controller: &str, rel: &str) -> Option<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if super::uses_v1() {
        super::v1_root(controller).map(|r| r.join(rel))
    } else {
        Some(Path::new("/sys/fs/cgroup").join(rel))
    }
}

/// Pids listed in `dir` and every cgroup below it.
pub fn procs_below(dir: PathBuf) -> impl Iterator<Item = u32> {
    let mut stack = vec![dir];
    std::iter::from_fn(move || {
        let d = stack.pop()?;
        stack.extend(std::fs::read_dir(&d).into_iter().flatten().flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        Some(read(&d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
    })
    .flatten()
}

/// Processes in cgroup `rel` and below (upstream's `process_count`).
pub fn count_procs(rel: &str) -> usize {
    cgroup_dir("pids", rel).map(|d| procs_below(d).count()).unwrap_or(0)
}

/// Reads the cgroup at `rel` (e.g. `/kubepods/besteffort/pod<uid>`).
pub fn read_usage(rel: &str) -> Usage {
    let rel = rel.trim_start_matches('/');
    if super::uses_v1() {
        let dir = |c: &str| super::v1_root(c).map(|r| r.join(rel));
        let (cpu, mem) = (dir("cpuacct"), dir("memory"));
        let usage = mem.as_ref().and_then(|m| read_u64(&m.join("memory.usage_in_bytes")));
        let stat = mem.as_ref().and_then(|m| read(&m.join("memory.stat")));
        let inactive = field(&stat, "total_inactive_file").unwrap_or(0);
        let memsw = mem.as_ref().and_then(|m| read_u64(&m.join("memory.memsw.usage_in_bytes")));
        let memsw_limit = mem.as_ref().and_then(|m| read(&m.join("memory.memsw.limit_in_bytes"))).and_then(|s| parse_limit(&s));
        let memory_limit = mem.as_ref().and_then(|m| read(&m.join("memory.limit_in_bytes"))).and_then(|s| parse_limit(&s));
        let cpuacct_stat = cpu.as_ref().and_then(|c| read(&c.join("cpuacct.stat")));
        // cpuacct.stat is in USER_HZ ticks.
        let tick_ns = 1_000_000_000 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
        let pids = dir("pids");
        let blkio = dir("blkio");
        let blk = |f: &str| blkio.as_ref().and_then(|b| read(&b.join(f))).unwrap_or_default();
        Usage {
            cpu_ns: cpu.as_ref().and_then(|c| read_u64(&c.join("cpuacct.usage"))),
            cpu_user_ns: field(&cpuacct_stat, "user").map(|t| t * tick_ns),
            cpu_system_ns: field(&cpuacct_stat, "system").map(|t| t * tick_ns),
            memory_bytes: usage,
            working_set_bytes: usage.map(|u| u.saturating_sub(inactive)),
            rss_bytes: field(&stat, "total_rss"),
            cache_bytes: field(&stat, "total_cache"),
            page_faults: field(&stat, "total_pgfault"),
            major_page_faults: field(&stat, "total_pgmajfault"),
            memory_limit,
            swap_bytes: memsw.zip(usage).map(|(sw, u)| sw.saturating_sub(u)),
            swap_limit: memsw_limit.zip(memory_limit).map(|(sw, m)| sw.saturating_sub(m)),
            threads: pids.as_ref().and_then(|p| read_u64(&p.join("pids.current"))),
            threads_max: pids.as_ref().and_then(|p| read(&p.join("pids.max"))).and_then(|s| parse_limit(&s)),
            io: parse_blkio_v1(&blk("blkio.throttle.io_service_bytes_recursive"), &blk("blkio.throttle.io_serviced_recursive")),
            psi: None,
        }
    } else {
        usage_v2(&Path::new("/sys/fs/cgroup").join(rel))
    }
}

/// Reads a cgroup v2 directory.
pub fn usage_v2(d: &Path) -> Usage {
    let usage = read_u64(&d.join("memory.current"));
    let stat = read(&d.join("memory.stat"));
    let cpu = read(&d.join("cpu.stat"));
    let inactive = field(&stat, "inactive_file").unwrap_or(0);
    let pressure = |f: &str| read(&d.join(f)).and_then(|t| parse_pressure(&t));
    let psi = Pressure { cpu: pressure("cpu.pressure"), memory: pressure("memory.pressure"), io: pressure("io.pressure") };
    Usage {
        cpu_ns: field(&cpu, "usage_usec").map(|u| u * 1000),
        cpu_user_ns: field(&cpu, "user_usec").map(|u| u * 1000),
        cpu_system_ns: field(&cpu, "system_usec").map(|u| u * 1000),
        memory_bytes: usage,
        working_set_bytes: usage.map(|u| u.saturating_sub(inactive)),
        rss_bytes: field(&stat, "anon"),
        cache_bytes: field(&stat, "file"),
        page_faults: field(&stat, "pgfault"),
        major_page_faults: field(&stat, "pgmajfault"),
        memory_limit: read(&d.join("memory.max")).and_then(|s| parse_limit(&s)),
        swap_bytes: read_u64(&d.join("memory.swap.current")),
        swap_limit: read(&d.join("memory.swap.max")).and_then(|s| parse_limit(&s)),
        threads: read_u64(&d.join("pids.current")),
        threads_max: read(&d.join("pids.max")).and_then(|s| parse_limit(&s)),
        io: read(&d.join("io.stat")).map(|t| parse_io_stat(&t)).unwrap_or_default(),
        psi: (psi != Pressure::default()).then_some(psi),
    }
}

/// OOM kills counted in cgroup `rel`'s memory controller: v2 `memory.events`
/// `oom_kill` (its processes and its descendants'), v1 `memory.oom_control`
/// `oom_kill` (its own). `None` when the cgroup or the counter is gone.
pub fn oom_kills(rel: &str) -> Option<u64> {
    let dir = cgroup_dir("memory", rel)?;
    if super::uses_v1() {
        read(&dir.join("memory.oom_control")).and_then(|s| flat_field(&s, "oom_kill"))
    } else {
        read(&dir.join("memory.events")).and_then(|s| flat_field(&s, "oom_kill"))
    }
}

/// The node's memory usage and working set, as cadvisor reads its root
/// container: v1 the root memory cgroup (`usage_in_bytes` less
/// `total_inactive_file`); v2 /proc/meminfo (`MemTotal - MemFree` less `Inactive(file)`).
pub fn root_memory() -> Option<(u64, u64)> {
    if super::uses_v1() {
        let root = super::v1_root("memory")?;
        let usage = read_u64(&root.join("memory.usage_in_bytes"))?;
        let inactive = read(&root.join("memory.stat")).and_then(|s| flat_field(&s, "total_inactive_file")).unwrap_or(0);
        Some((usage, usage.saturating_sub(inactive)))
    } else {
        let usage = super::meminfo("MemTotal:")?.saturating_sub(super::meminfo("MemFree:")?);
        Some((usage, usage.saturating_sub(super::meminfo("Inactive(file):").unwrap_or(0))))
    }
}

/// The node's memory working set (see [`root_memory`]).
pub fn root_working_set() -> Option<u64> {
    root_memory().map(|(_, ws)| ws)
}

/// The node's pressure (`/proc/pressure/*`), reported on cgroup v2 nodes as upstream.
pub fn node_pressure() -> Option<Pressure> {
    if super::uses_v1() {
        return None;
    }
    let p = |f: &str| read(&Path::new("/proc/pressure").join(f)).and_then(|t| parse_pressure(&t));
    let psi = Pressure { cpu: p("cpu"), memory: p("memory"), io: p("io") };
    (psi != Pressure::default()).then_some(psi)
}

/// `/dev/<name>` of block device `major:minor` (from sysfs), as cadvisor labels it.
pub fn device_name(major: u64, minor: u64) -> Option<String> {
    let uevent = read(Path::new(&format!("/sys/dev/block/{major}:{minor}/uevent")))?;
    uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(|n| format!("/dev/{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files_with_and_without_full() {
        let p = parse_pressure("some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n").unwrap();
        assert_eq!(p.some, PsiData { total: 123456, avg10: 1.5, avg60: 0.25, avg300: 0.0 });
        assert_eq!(p.full.total, 42);
        let old = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((old.some.total, old.full), (7, PsiData::default()));
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x total=1"), None, "a bad number is no reading, not a zero");
    }

    #[test]
    fn io_stat_per_device() {
        let d = parse_io_stat("253:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=0 rios=1 wios=0\nnonsense\n");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], DeviceIo { major: 253, minor: 0, read_bytes: 4096, write_bytes: 8192, reads: 1, writes: 2 });
        assert_eq!((d[1].major, d[1].read_bytes), (8, 1));
    }

    #[test]
    fn blkio_v1_merges_bytes_and_operations() {
        let d = parse_blkio_v1("8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Total 4608\nTotal 4608\n", "8:0 Read 2\n8:0 Write 1\n");
        assert_eq!(d, vec![DeviceIo { major: 8, minor: 0, read_bytes: 4096, write_bytes: 512, reads: 2, writes: 1 }]);
    }

    #[test]
    fn limits_max_and_huge_are_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712"), None);
        assert_eq!(parse_limit("104857600\n"), Some(104857600));
    }

    #[test]
    fn flat_fields_match_whole_keys() {
        let s = "anon 10\nanon_thp 20\nfile 30\n";
        assert_eq!(flat_field(s, "anon"), Some(10));
        assert_eq!(flat_field(s, "file"), Some(30));
        assert_eq!(flat_field(s, "fil"), None);
    }

    #[test]
    fn a_v2_directory_is_read_whole() {
        let d = tempfile::tempdir().unwrap();
        for (f, t) in [
            ("memory.current", "1000\n"),
            ("memory.stat", "anon 600\nfile 300\ninactive_file 200\npgfault 5\npgmajfault 1\n"),
            ("memory.max", "4096\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "max\n"),
            ("cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n"),
            ("pids.current", "3\n"),
            ("pids.max", "1024\n"),
            ("io.stat", "8:0 rbytes=1 wbytes=2 rios=3 wios=4\n"),
            ("cpu.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n"),
        ] {
            std::fs::write(d.path().join(f), t).unwrap();
        }
        let u = usage_v2(d.path());
        assert_eq!((u.cpu_ns, u.cpu_user_ns, u.cpu_system_ns), (Some(10_000), Some(6_000), Some(4_000)));
        assert_eq!((u.memory_bytes, u.working_set_bytes, u.rss_bytes, u.cache_bytes), (Some(1000), Some(800), Some(600), Some(300)));
        assert_eq!((u.memory_limit, u.swap_bytes, u.swap_limit), (Some(4096), Some(0), None));
        assert_eq!((u.threads, u.threads_max), (Some(3), Some(1024)));
        assert_eq!(u.io.len(), 1);
        let psi = u.psi.unwrap();
        assert_eq!(psi.cpu.unwrap().some.total, 9);
        assert_eq!((psi.memory, psi.io), (None, None));
    }
}
