//! Container garbage collection (pkg/kubelet/kuberuntime/kuberuntime_gc.go):
//! every minute, the exited instances of each container beyond the newest
//! `maxPerPodContainer` (1) go, with their logs and stdio files; under disk
//! pressure every exited instance goes. Sandboxes stay with their pod (a
//! deleted pod's cleanup worker removes them, also after an agent restart).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::runtime::containers::{labels, ContainerRecord, Containers, TaskState};

/// How often the periodic collection runs (upstream's ContainerGCPeriod).
pub const PERIOD: Duration = Duration::from_secs(60);
/// Exited instances kept per container (upstream's MaxPerPodContainer default).
pub const MAX_PER_POD_CONTAINER: usize = 1;

/// The exited app and init instances to remove so that at most `keep` remain
/// per (pod, container), newest (highest attempt) kept; init containers keep
/// their last instance even for `keep` 0.
pub fn evictable(records: &[ContainerRecord], keep: usize) -> Vec<&ContainerRecord> {
    let mut groups: BTreeMap<(String, String, bool), Vec<&ContainerRecord>> = BTreeMap::new();
    for r in records {
        if matches!(r.task, TaskState::Running { .. }) || r.label(labels::KIND) == Some("sandbox") {
            continue;
        }
        let (Some(uid), Some(name)) = (r.label(labels::POD_UID), r.label(labels::CONTAINER_NAME)) else { continue };
        groups.entry((uid.to_string(), name.to_string(), r.label(labels::KIND) == Some("init"))).or_default().push(r);
    }
    let attempt = |r: &ContainerRecord| r.label(labels::ATTEMPT).and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
    let mut out = Vec::new();
    for ((_, _, init), mut v) in groups {
        v.sort_by_key(|r| std::cmp::Reverse(attempt(r)));
        // A completed init container's last instance stays: it is what says it ran.
        out.extend(v.into_iter().skip(if init { keep.max(1) } else { keep }));
    }
    out
}

/// Removes exited instances of `node`'s containers beyond `keep` per
/// container; returns how many went.
pub async fn collect(containers: &Containers, root_dir: &Path, node: &str, keep: usize) -> usize {
    let records = match containers.list(None).await {
        Ok(r) => r.into_iter().filter(|r| r.label(labels::NODE).is_none_or(|n| n == node)).collect::<Vec<_>>(),
        Err(e) => {
            warn!(error = %e, "container garbage collection cannot list containers");
            return 0;
        }
    };
    let mut removed = 0;
    for r in evictable(&records, keep) {
        match containers.delete_container(&r.id).await {
            Ok(_) => {
                if let Some(uid) = r.label(labels::POD_UID) {
                    crate::runtime::stdio::remove(root_dir, uid, &r.id);
                }
                crate::logs::unlink_container_logs(|id| id == r.id);
                if let Some(p) = r.label(labels::LOG_PATH) {
                    let _ = std::fs::remove_file(p);
                }
                removed += 1;
                info!(container = r.label(labels::CONTAINER_NAME).unwrap_or(""), id = %r.id, attempt = r.label(labels::ATTEMPT).unwrap_or("0"), "exited container garbage collected");
            }
            Err(e) => warn!(id = %r.id, error = %e, "container garbage collection could not remove a container"),
        }
    }
    removed
}

/// Runs the collection at start, then every [`PERIOD`] until `cancel` (as
/// upstream's `wait.Until`).
pub async fn run(containers: Containers, root_dir: std::path::PathBuf, node: String, cancel: tokio_util::sync::CancellationToken) {
    loop {
        collect(&containers, &root_dir, &node, MAX_PER_POD_CONTAINER).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rec(id: &str, uid: &str, name: &str, kind: &str, attempt: u32, running: bool) -> ContainerRecord {
        let labels: HashMap<String, String> = [
            (labels::POD_UID, uid),
            (labels::CONTAINER_NAME, name),
            (labels::KIND, kind),
            (labels::ATTEMPT, &attempt.to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let task = if running { TaskState::Running { pid: 1 } } else { TaskState::Stopped { exit_code: 1, exited_at: None } };
        ContainerRecord { id: id.into(), labels, created_at: None, snapshot_key: id.into(), task }
    }

    #[test]
    fn one_exited_instance_per_container_is_kept() {
        let r = vec![
            rec("c0", "u", "c", "app", 0, false),
            rec("c1", "u", "c", "app", 1, false),
            rec("c2", "u", "c", "app", 2, false),
            rec("c3", "u", "c", "app", 3, true),
            rec("i0", "u", "init", "init", 0, false),
            rec("s0", "u", "", "sandbox", 0, false),
            rec("d0", "v", "c", "app", 0, false),
            rec("d1", "v", "c", "app", 1, false),
        ];
        let ids = |v: Vec<&ContainerRecord>| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(evictable(&r, 1)), vec!["c1", "c0", "d0"], "the running one and the newest exited stay; sandboxes are not touched");
        assert_eq!(ids(evictable(&r, 0)), vec!["c2", "c1", "c0", "d1", "d0"], "disk pressure: every exited instance but an init container's last");
    }
}
