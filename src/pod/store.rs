//! A pod's directory under the root dir (`pods/<uid>/`, as upstream's
//! `/var/lib/kubelet/pods/<uid>`): the hosts/resolv.conf/hostname files mounted into
//! its containers, volumes, and `status.json` — the pod as last reported, which
//! `rkubelet pods` reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// `<root>/pods/<uid>`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// Writes `data` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// Saves the pod (spec + status) as `status.json`.
pub fn save_pod(root: &Path, pod: &Pod) -> std::io::Result<()> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("unknown");
    let data = serde_json::to_vec_pretty(pod).map_err(std::io::Error::other)?;
    write_atomic(&pod_dir(root, uid).join("status.json"), &data)
}

/// Reads one pod's last saved state.
pub fn load_pod(root: &Path, uid: &str) -> Option<Pod> {
    let data = std::fs::read(pod_dir(root, uid).join("status.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

/// When the pod's termination must be over, on this node's clock: recorded when
/// it starts (`terminating` in the pod dir), so that an agent restarted in the
/// middle resumes with what is left of the grace period instead of a new one.
/// Returns the deadline: the recorded one if earlier than `now + grace`.
pub fn termination_deadline(root: &Path, uid: &str, grace: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    let path = pod_dir(root, uid).join("terminating");
    let now = chrono::Utc::now();
    // A grace period past what a date holds (terminationGracePeriodSeconds is any
    // non-negative int64 the API accepts) waits for ever rather than overflowing.
    let wanted = chrono::Duration::from_std(grace).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let recorded = std::fs::read_to_string(&path).ok().and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok()).map(|t| t.with_timezone(&chrono::Utc));
    match recorded {
        Some(t) if t <= wanted => t,
        _ => {
            if pod_dir(root, uid).is_dir() {
                let _ = write_atomic(&path, wanted.to_rfc3339().as_bytes());
            }
            wanted
        }
    }
}

/// Every pod with a saved state, sorted by namespace and name.
pub fn load_all(root: &Path) -> Vec<Pod> {
    let mut pods: Vec<Pod> = std::fs::read_dir(root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| load_pod(root, &e.file_name().to_string_lossy()))
        .collect();
    pods.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    pods
}

/// The kubelet's managed `/etc/hosts` (pkg/kubelet/kubelet_pods.go `managedHostsFileContent`).
pub fn hosts_file(pod_ip: Option<&str>, hostname: &str, domain: Option<&str>, aliases: &[(String, Vec<String>)]) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file.\n");
    s.push_str("127.0.0.1\tlocalhost\n");
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str("fe00::0\tip6-localnet\n");
    s.push_str("fe00::0\tip6-mcastprefix\n");
    s.push_str("fe00::1\tip6-allnodes\n");
    s.push_str("fe00::2\tip6-allrouters\n");
    if let Some(ip) = pod_ip {
        match domain {
            Some(d) => s.push_str(&format!("{ip}\t{hostname}.{d}\t{hostname}\n")),
            None => s.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in aliases {
            s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    s
}

/// The pod's hostname: `spec.hostname` or the pod name, truncated to 63 characters.
pub fn pod_hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let mut h = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    h.truncate(63);
    h.trim_end_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_matches_upstream_layout() {
        let h = hosts_file(Some("10.1.2.3"), "web", None, &[("1.2.3.4".into(), vec!["a".into(), "b".into()])]);
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.1.2.3\tweb\n"));
        assert!(h.contains("# Entries added by HostAliases.\n1.2.3.4\ta\tb\n"));
    }

    /// terminationGracePeriodSeconds: 9000000000000000 (the API accepts any
    /// non-negative int64) overflowed `now + grace` when the pod was deleted: a panic.
    #[test]
    fn a_grace_period_beyond_any_date_waits_for_ever_not_a_panic() {
        let root = tempfile::tempdir().unwrap();
        let huge = std::time::Duration::from_secs(9_000_000_000_000_000);
        assert_eq!(termination_deadline(root.path(), "u", huge), chrono::DateTime::<chrono::Utc>::MAX_UTC);
        assert_eq!(termination_deadline(root.path(), "u", std::time::Duration::from_secs(u64::MAX)), chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let soon = termination_deadline(root.path(), "u", std::time::Duration::from_secs(30));
        assert!(soon > chrono::Utc::now() && soon < chrono::Utc::now() + chrono::Duration::seconds(31));
    }

    #[test]
    fn saved_pods_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let mut p = Pod::default();
        p.metadata.uid = Some("u1".into());
        p.metadata.name = Some("n".into());
        save_pod(t.path(), &p).unwrap();
        assert_eq!(load_all(t.path()).len(), 1);
        assert_eq!(load_pod(t.path(), "u1").unwrap().metadata.name.as_deref(), Some("n"));
    }
}
