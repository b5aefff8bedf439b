//! The node checks of `rkubelet doctor`; each returns what it saw and, for a
//! problem, the one-line fix. None changes anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{first_existing, show, AgentProcess, Check};
use crate::config::{CgroupDriver, Config};

const DEADLINE: Duration = Duration::from_secs(5);
/// Upstream's default `imageGCHighThresholdPercent`.
const IMAGE_GC_HIGH_PERCENT: i64 = 85;

/// containerd answers on the configured socket, with its version.
pub async fn containerd(cfg: &Config) -> Check {
    let sock = &cfg.containerd_socket;
    if !sock.exists() {
        return Check::fail(
            "containerd",
            format!("no socket at {} (containerd is not running)", show(sock)),
            "systemctl start containerd (and check: journalctl -u containerd)",
        );
    }
    let version = async {
        let ch = crate::runtime::connect(sock).await.map_err(|e| e.to_string())?;
        crate::runtime::version(&ch).await.map_err(|e| e.message().to_string())
    };
    match tokio::time::timeout(DEADLINE, version).await {
        Ok(Ok(v)) => Check::ok("containerd", format!("containerd {v} at {}", show(sock))),
        Ok(Err(e)) => Check::fail(
            "containerd",
            format!("containerd does not answer at {}: {e}", show(sock)),
            "systemctl restart containerd (and check: journalctl -u containerd)",
        ),
        Err(_) => Check::fail("containerd", format!("containerd at {} did not answer within 5s", show(sock)), "systemctl restart containerd"),
    }
}

/// runc, which containerd's shim runs, is installed.
pub fn runc() -> Check {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&path).map(|d| d.join("runc")).collect();
    candidates.extend(["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"].map(PathBuf::from));
    let Some(runc) = first_existing(&candidates) else {
        return Check::fail("runc", "runc is not installed (containerd cannot start containers)", "apt-get install runc");
    };
    match std::process::Command::new(&runc).arg("--version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string();
            Check::ok("runc", format!("{v} ({})", show(&runc)))
        }
        Ok(o) => Check::fail("runc", format!("{} --version failed: {}", show(&runc), String::from_utf8_lossy(&o.stderr).trim()), "apt-get install --reinstall runc"),
        Err(e) => Check::fail("runc", format!("cannot run {}: {e}", show(&runc)), "apt-get install --reinstall runc"),
    }
}

/// A CNI config loads and every plugin it names is installed.
pub fn cni(cfg: &Config) -> Check {
    let cni = crate::network::cni::Cni::new(crate::network::cni::CniConfig {
        bin_dirs: cfg.cni_bin_dirs.clone(),
        conf_dir: cfg.cni_conf_dir.clone(),
        cache_dir: cfg.cni_cache_dir.clone(),
    });
    let dirs = cfg.cni_bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    match cni.status() {
        Ok(()) => {
            let name = cni.load_network().map(|n| n.name.clone()).unwrap_or_default();
            Check::ok("cni", format!("network {name:?} from {}, plugins found in {dirs}", show(&cfg.cni_conf_dir)))
        }
        Err(e @ crate::network::cni::CniError::PluginNotFound { .. }) => Check::fail(
            "cni",
            e.to_string(),
            format!("install the missing plugin into one of {dirs} (Debian: apt-get install containernetworking-plugins), or fix the config in {}", show(&cfg.cni_conf_dir)),
        ),
        Err(e) => Check::fail(
            "cni",
            e.to_string(),
            format!("put a valid .conflist into {} (a CNI add-on such as a DaemonSet usually writes it)", show(&cfg.cni_conf_dir)),
        ),
    }
}

/// The agent process for this configuration runs and answers `/healthz`.
pub async fn agent(cfg: &Config, procs: &[AgentProcess]) -> Check {
    let Some(p) = procs.iter().find(|p| p.config.as_ref().is_some_and(|c| c.root_dir == cfg.root_dir)) else {
        return Check::fail(
            "agent",
            format!("no rkubelet process runs with root dir {}", show(&cfg.root_dir)),
            "systemctl start kubelet (see why it stopped: journalctl -u rkubelet -e)",
        );
    };
    if cfg.healthz_port <= 0 {
        return Check::ok("agent", format!("pid {} (healthz disabled)", p.pid));
    }
    let host = if cfg.healthz_bind_address.contains(':') { format!("[{}]", cfg.healthz_bind_address) } else { cfg.healthz_bind_address.clone() };
    let addr = format!("{host}:{}", cfg.healthz_port);
    match tokio::time::timeout(DEADLINE, healthz(&addr)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Check::ok("agent", format!("pid {}, http://{addr}/healthz: ok", p.pid)),
        Ok(Ok(body)) => Check::warn("agent", format!("pid {}, http://{addr}/healthz answered {:?}", p.pid, body.trim()), "journalctl -u rkubelet -e"),
        Ok(Err(e)) => Check::warn("agent", format!("pid {} runs but http://{addr}/healthz: {e}", p.pid), "check healthzPort/healthzBindAddress; journalctl -u rkubelet -e"),
        Err(_) => Check::warn("agent", format!("pid {} runs but http://{addr}/healthz did not answer within 5s", p.pid), "journalctl -u rkubelet -e"),
    }
}

/// A plain HTTP/1.0 GET of `/healthz`; the body on 200.
async fn healthz(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(4096).read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(head.lines().next().unwrap_or("no answer").to_string())
    }
}

/// The systemd unit's state, where systemd runs.
pub fn unit() -> Check {
    if !Path::new("/run/systemd/system").exists() {
        return Check::ok("unit", "systemd is not the init system here: unit not checked");
    }
    let out = std::process::Command::new("systemctl").args(["is-active", "rkubelet.service"]).output();
    match out {
        Ok(o) => {
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "active" {
                Check::ok("unit", "rkubelet.service (kubelet.service) is active")
            } else {
                Check::fail("unit", format!("rkubelet.service is {state}"), "systemctl start kubelet; journalctl -u rkubelet -e")
            }
        }
        Err(e) => Check::warn("unit", format!("cannot run systemctl: {e}"), "check systemd"),
    }
}

/// The API server answers with the node's credentials; the client certificate's
/// expiry; the clock against the server's `Date`.
pub async fn api(cfg: &Config) -> Vec<Check> {
    let Some(kc_path) = &cfg.kubeconfig else {
        return vec![Check::ok("api", "standalone (no --kubeconfig): static pods only")];
    };
    let mut out = Vec::new();
    if !kc_path.exists() {
        let boot = cfg.bootstrap_kubeconfig.as_ref().filter(|b| b.exists());
        out.push(match boot {
            Some(b) => Check::warn(
                "api",
                format!("{} does not exist yet: the TLS bootstrap (with {}) has not completed", show(kc_path), show(b)),
                "kubectl get csr (approve the node's CSR if your cluster does not auto-approve); journalctl -u rkubelet -e",
            ),
            None => Check::fail("api", format!("{} does not exist and there is no bootstrap kubeconfig", show(kc_path)), "kubeadm join again (it writes /etc/kubernetes/bootstrap-kubelet.conf)"),
        });
        return out;
    }
    // Client certificate expiry.
    match crate::api::bootstrap::client_cert_not_after(kc_path) {
        Ok(Some(na)) => {
            let now = SystemTime::now();
            let when = chrono::DateTime::<chrono::Utc>::from(na).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if now > na {
                out.push(Check::fail(
                    "certificate",
                    format!("the client certificate of {} expired at {when}", show(kc_path)),
                    if cfg.bootstrap_kubeconfig.as_ref().map(|b| b.exists()).unwrap_or(false) {
                        "restart the agent: with the bootstrap kubeconfig it requests a new certificate".to_string()
                    } else {
                        "re-join the node (kubeadm reset; kubeadm join ...) or give it a new certificate; enable rotateCertificates".to_string()
                    },
                ));
            } else {
                let left = na.duration_since(now).unwrap_or_default();
                let days = left.as_secs() / 86_400;
                if left < Duration::from_secs(7 * 86_400) && !cfg.rotate_certificates {
                    out.push(Check::warn("certificate", format!("the client certificate expires at {when} ({days} days) and rotation is off"), "set rotateCertificates: true"));
                } else {
                    out.push(Check::ok("certificate", format!("client certificate valid until {when} ({days} days){}", if cfg.rotate_certificates { ", rotated" } else { "" })));
                }
            }
        }
        Ok(None) => out.push(Check::ok("certificate", format!("{} uses no client certificate", show(kc_path)))),
        Err(e) => out.push(Check::fail("certificate", format!("cannot read the client certificate of {}: {e}", show(kc_path)), "re-join the node (kubeadm join) or fix the kubeconfig")),
    }
    // Reachability and clock skew.
    let client = async {
        let kc = kube::config::Kubeconfig::read_from(kc_path).map_err(|e| e.to_string())?;
        let conf = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
        let server = conf.cluster_url.to_string();
        let client = kube::Client::try_from(conf).map_err(|e| e.to_string())?;
        let req = http::Request::get("/version").body(kube::client::Body::from(Vec::new())).map_err(|e| e.to_string())?;
        let sent = SystemTime::now();
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let date = resp.headers().get(http::header::DATE).and_then(|d| d.to_str().ok()).map(String::from);
        Ok::<_, String>((server, status, date, sent))
    };
    match tokio::time::timeout(Duration::from_secs(10), client).await {
        Ok(Ok((server, status, date, sent))) if status.is_success() => {
            out.push(Check::ok("api", format!("{server} answers with the node's credentials")));
            out.push(clock(date.as_deref(), sent));
        }
        Ok(Ok((server, status, _, _))) => out.push(Check::fail(
            "api",
            format!("{server} answered {status} to the node's credentials"),
            "the node's credentials are rejected: re-join the node (kubeadm join) or check RBAC for system:nodes",
        )),
        Ok(Err(e)) => out.push(Check::fail("api", format!("the API server is unreachable with {}: {e}", show(kc_path)), "check the server address, the network and the node's certificate (kubectl --kubeconfig ... get --raw /version)")),
        Err(_) => out.push(Check::fail("api", "the API server did not answer within 10s", "check the network path to the control plane")),
    }
    out
}

/// Clock skew against the API server's `Date` header (1 s resolution).
fn clock(date: Option<&str>, sent: SystemTime) -> Check {
    let Some(server) = date.and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok()) else {
        return Check::warn("clock", "the API server sent no Date header; skew unknown", "check time sync (timedatectl)");
    };
    let local = chrono::DateTime::<chrono::Utc>::from(sent);
    let skew = (local.timestamp() - server.timestamp()).abs();
    if skew >= 60 {
        Check::fail("clock", format!("{skew}s off the API server's clock"), "synchronize time (timedatectl set-ntp true): certificates and tokens fail with large skew")
    } else if skew >= 5 {
        Check::warn("clock", format!("{skew}s off the API server's clock"), "synchronize time (timedatectl set-ntp true)")
    } else {
        Check::ok("clock", format!("within {}s of the API server", skew.max(1)))
    }
}

/// Swap, which the upstream kubelet refuses by default (failSwapOn).
pub fn swap() -> Check {
    let active = crate::compat::active_swaps();
    if active.is_empty() {
        Check::ok("swap", "off")
    } else {
        Check::warn("swap", format!("on ({}): pods' memory limits do not bound their swap use", active.join(", ")), "swapoff -a, and remove swap from /etc/fstab")
    }
}

/// The upstream flags and config fields the agent was given that rkubelet does
/// not implement (what the agent's start-up warning names).
pub fn settings(cfg: &Config) -> Check {
    let given = &cfg.compat.not_implemented;
    if given.is_empty() {
        Check::ok("settings", "every upstream flag and config field given is implemented (or its value is what rkubelet does)")
    } else {
        Check::warn("settings", format!("not implemented: {}", given.join(", ")), crate::compat::FIX)
    }
}

/// The configured cgroup driver against the init system and containerd's.
pub fn cgroup_driver(cfg: &Config) -> Check {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default().trim().to_string();
    if let Some((problem, fix)) = crate::cgroups::check_driver(cfg.cgroup_driver) {
        return Check::fail("cgroup-driver", problem, fix);
    }
    match (cfg.cgroup_driver, init == "systemd") {
        (CgroupDriver::Cgroupfs, true) => Check::warn(
            "cgroup-driver",
            "cgroupDriver is cgroupfs while systemd manages the cgroup tree",
            "set cgroupDriver: systemd in the config file (kubeadm's default)",
        ),
        (d, _) => Check::ok("cgroup-driver", format!("{} (init: {init})", if d == CgroupDriver::Systemd { "systemd" } else { "cgroupfs" })),
    }
}

/// cgroup version and the controllers the agent uses; CAP_SYS_RESOURCE.
pub fn cgroups() -> Vec<Check> {
    let mut out = Vec::new();
    let v2_root = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = crate::cgroups::uses_v1();
    let need = ["cpu", "cpuacct", "memory", "pids", "cpuset"];
    if v1 {
        let missing: Vec<&str> = need.iter().copied().filter(|c| crate::cgroups::v1_root(c).is_none()).collect();
        let mode = if Path::new("/sys/fs/cgroup/unified").exists() { "cgroup v1 (hybrid, v2 at /sys/fs/cgroup/unified)" } else { "cgroup v1" };
        if missing.is_empty() {
            out.push(Check::ok("cgroups", format!("{mode}; controllers {} mounted", need.join(", "))));
        } else {
            out.push(Check::fail("cgroups", format!("{mode}; controllers not mounted: {}", missing.join(", ")), format!("mount them, e.g. mount -t cgroup -o {} none /sys/fs/cgroup/{}", missing[0], missing[0])));
        }
        if crate::cgroups::v1_root("hugetlb").is_none() {
            out.push(Check::warn(
                "hugetlb",
                "the hugetlb controller is mounted nowhere: runc cannot set hugepage limits",
                "mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb none /sys/fs/cgroup/hugetlb",
            ));
        } else {
            out.push(Check::ok("hugetlb", "hugetlb controller mounted"));
        }
    } else if v2_root {
        let ctrls = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let have: Vec<&str> = ctrls.split_whitespace().collect();
        let missing: Vec<&str> = ["cpu", "memory", "pids", "cpuset"].into_iter().filter(|c| !have.contains(c)).collect();
        if missing.is_empty() {
            out.push(Check::ok("cgroups", format!("cgroup v2; controllers: {}", have.join(" "))));
        } else {
            out.push(Check::fail("cgroups", format!("cgroup v2 without controllers: {}", missing.join(", ")), "enable them in the kernel command line / systemd (cgroup_enable=...)"));
        }
        if !have.contains(&"hugetlb") {
            out.push(Check::warn("hugetlb", "no hugetlb controller: hugepage limits cannot be set", "enable the hugetlb controller (kernel CONFIG_CGROUP_HUGETLB)"));
        }
    } else {
        out.push(Check::fail("cgroups", "no cgroup hierarchy found under /sys/fs/cgroup", "mount cgroup2 on /sys/fs/cgroup"));
    }
    let (own, cap) = crate::cgroups::own_oom_restriction();
    if cap {
        out.push(Check::ok("capabilities", "CAP_SYS_RESOURCE: negative oomScoreAdj values are applied"));
    } else {
        // The agent copes (as containerd's restrict_oom_score_adj): a note, not a problem.
        out.push(Check::ok("capabilities", format!("no CAP_SYS_RESOURCE: negative oomScoreAdj values are raised to the agent's own ({own})")));
    }
    out
}

/// Free space and inodes of the agent's and containerd's filesystems against
/// the hard eviction thresholds (nodefs.*, imagefs.*).
pub fn disk(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let image_root = first_existing(&[PathBuf::from("/var/lib/containerd")]);
    let mut fs: Vec<(&str, PathBuf)> = vec![("nodefs", cfg.root_dir.clone())];
    if let Some(i) = image_root {
        fs.push(("imagefs", i));
    }
    for (signal, path) in fs {
        let Ok(st) = nix::sys::statvfs::statvfs(&path) else {
            out.push(Check::warn("disk", format!("cannot stat the filesystem of {}", show(&path)), "check that the directory exists"));
            continue;
        };
        let total = st.blocks() as i64 * st.fragment_size() as i64;
        let avail = st.blocks_available() as i64 * st.fragment_size() as i64;
        let files = st.files() as i64;
        let ffree = st.files_available() as i64;
        let space_t = cfg.eviction_hard.get(&format!("{signal}.available")).map(|t| t.amount(total)).unwrap_or(0);
        let inode_t = cfg.eviction_hard.get(&format!("{signal}.inodesFree")).map(|t| t.amount(files)).unwrap_or(0);
        let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
        let msg = format!(
            "{} ({signal}): {:.1} GiB of {:.1} GiB free (eviction below {:.1} GiB), {} of {} inodes free",
            show(&path),
            gib(avail),
            gib(total),
            gib(space_t),
            ffree,
            files
        );
        let fix = format!("free space on {} (crictl/ctr image prune, old logs in /var/log/pods)", show(&path));
        if avail < space_t || (files > 0 && ffree < inode_t) {
            out.push(Check::fail("disk", format!("{msg}: below the hard eviction threshold, pods will be evicted"), fix));
        } else if signal == "imagefs" && total > 0 && (total - avail) * 100 / total >= IMAGE_GC_HIGH_PERCENT {
            // Upstream starts image garbage collection here (imageGCHighThresholdPercent).
            out.push(Check::warn("disk", format!("{msg}: {}% used, image garbage collection starts at {IMAGE_GC_HIGH_PERCENT}%", (total - avail) * 100 / total), fix));
        } else if signal == "nodefs" && (avail < space_t + space_t / 2 || (files > 0 && ffree < inode_t + inode_t / 2)) {
            out.push(Check::warn("disk", format!("{msg}: close to the eviction threshold"), fix));
        } else {
            out.push(Check::ok("disk", msg));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_levels() {
        let now = SystemTime::now();
        let at = |secs: i64| chrono::DateTime::<chrono::Utc>::from(now).checked_add_signed(chrono::Duration::seconds(secs)).unwrap().to_rfc2822();
        assert_eq!(clock(Some(&at(0)), now).status, super::super::Level::Ok);
        assert_eq!(clock(Some(&at(-10)), now).status, super::super::Level::Warn);
        assert_eq!(clock(Some(&at(120)), now).status, super::super::Level::Fail);
        assert_eq!(clock(None, now).status, super::super::Level::Warn);
    }
}
