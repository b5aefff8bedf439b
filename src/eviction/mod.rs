//! The eviction manager (pkg/kubelet/eviction): every monitoring period it
//! reads the eviction signals ([`observe`]), decides which thresholds are met
//! ([`threshold::State`]), reports the node's pressure conditions, and, when a
//! threshold must be acted on, evicts one pod at a time ranked as upstream does
//! ([`rank`]): the pod's worker stops it with phase `Failed`, reason `Evicted`
//! and the message naming the resource. Admission refuses pods the pressure
//! forbids ([`EvictionState::admit`]).

pub mod notifier;
pub mod observe;
pub mod rank;
pub mod threshold;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use threshold::{Condition, Threshold};

/// Upstream's status reason of an evicted or pressure-rejected pod.
pub const REASON: &str = "Evicted";
/// How often the signals are read (upstream's evictionMonitoringPeriod).
pub const MONITORING_PERIOD: Duration = Duration::from_secs(10);
/// The grace period of a pod evicted for a hard threshold.
const IMMEDIATE_GRACE_SECONDS: u64 = 1;
/// How long the manager waits for an evicted pod to stop before going on.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The node taint a pod tolerates to be admitted under memory pressure.
const MEMORY_PRESSURE_TAINT: &str = "node.kubernetes.io/memory-pressure";

/// What disk pressure reclaims before evicting: exited containers and unused
/// images (upstream's node-level reclaim on one filesystem).
#[derive(Clone)]
pub struct Reclaim {
    pub image_gc: Arc<crate::gc::images::ImageGc>,
    pub containers: crate::runtime::containers::Containers,
    pub root_dir: std::path::PathBuf,
    pub pod_logs_dir: std::path::PathBuf,
    pub node: String,
}

/// The eviction settings, resolved from the configuration.
#[derive(Clone)]
pub struct Settings {
    pub thresholds: Vec<Threshold>,
    /// `evictionPressureTransitionPeriod`.
    pub transition: Duration,
    /// `evictionMaxPodGracePeriod` (soft thresholds).
    pub max_pod_grace_seconds: i64,
    pub paths: observe::Paths,
    pub period: Duration,
    pub reclaim: Option<Reclaim>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Wake on a memory crossing between passes (`kernelMemcgNotification`).
    pub notify: bool,
}

/// What the manager shares with admission, the pod workers and the node status.
#[derive(Debug, Default)]
pub struct EvictionState {
    conditions: RwLock<Vec<Condition>>,
    /// uid → (message, grace period in seconds) of the pods told to go.
    orders: Mutex<HashMap<String, (String, u64)>>,
    stopped: Mutex<HashSet<String>>,
}

/// Whether a pod is critical: static, mirror, or of system-critical priority
/// (upstream's IsCriticalPod): never evicted, admitted under pressure.
pub fn is_critical(pod: &Pod) -> bool {
    let source = pod.metadata.annotations.as_ref().and_then(|a| a.get(crate::pod::manifest::CONFIG_SOURCE)).map(String::as_str);
    let mirror = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    matches!(source, Some(s) if s != "api") || mirror || pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) >= crate::shutdown::SYSTEM_CRITICAL_PRIORITY
}

/// Whether `pod` tolerates the NoSchedule taint `key` (no value).
fn tolerates(pod: &Pod, key: &str) -> bool {
    pod.spec.iter().flat_map(|s| s.tolerations.iter().flatten()).any(|t| {
        let effect_ok = t.effect.as_deref().map(|e| e.is_empty() || e == "NoSchedule").unwrap_or(true);
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = match t.key.as_deref() {
            None | Some("") => exists,
            Some(k) => k == key,
        };
        effect_ok && key_ok && (exists || t.value.as_deref().unwrap_or("").is_empty())
    })
}

impl EvictionState {
    /// The pressure conditions now true.
    pub fn conditions(&self) -> Vec<Condition> {
        self.conditions.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn set_conditions(&self, c: Vec<Condition>) {
        if let Ok(mut g) = self.conditions.write() {
            *g = c;
        }
    }

    /// Upstream's eviction admit handler: under memory pressure alone only
    /// BestEffort pods that do not tolerate the memory-pressure taint are
    /// refused; under any other pressure every pod is; critical pods always pass.
    /// Err is (reason, message).
    pub fn admit(&self, pod: &Pod) -> Result<(), (String, String)> {
        let conditions = self.conditions();
        if conditions.is_empty() || is_critical(pod) {
            return Ok(());
        }
        if conditions == [Condition::MemoryPressure]
            && (crate::cgroups::qos_class(pod) != crate::cgroups::QosClass::BestEffort || tolerates(pod, MEMORY_PRESSURE_TAINT))
        {
            return Ok(());
        }
        let names: Vec<&str> = conditions.iter().map(|c| c.as_str()).collect();
        Err((REASON.into(), format!("The node had condition: [{}]. ", names.join(" "))))
    }

    /// The eviction of `uid`, if it was told to go: (message, grace period s).
    pub fn order(&self, uid: &str) -> Option<(String, u64)> {
        self.orders.lock().ok()?.get(uid).cloned()
    }

    /// A worker reports its evicted pod stopped.
    pub fn stopped(&self, uid: &str) {
        if let Ok(mut g) = self.stopped.lock() {
            g.insert(uid.to_string());
        }
    }

    fn is_stopped(&self, uid: &str) -> bool {
        self.stopped.lock().map(|g| g.contains(uid)).unwrap_or(true)
    }

    /// Drops what is kept about pods no longer active.
    fn forget_others<'a>(&self, active: impl Iterator<Item = &'a str>) {
        let keep: HashSet<&str> = active.collect();
        if let Ok(mut g) = self.orders.lock() {
            g.retain(|uid, _| keep.contains(uid.as_str()));
        }
        if let Ok(mut g) = self.stopped.lock() {
            g.retain(|uid| keep.contains(uid.as_str()));
        }
    }

    fn evict(&self, uid: &str, message: String, grace: u64) {
        if let Ok(mut g) = self.orders.lock() {
            g.insert(uid.to_string(), (message, grace));
        }
    }
}

/// Runs the manager until `cancel`. `pods` asks the pod manager for its active
/// pods (as graceful shutdown does); `status_of` gives a pod's last status.
pub async fn run(
    state: Arc<EvictionState>,
    settings: Settings,
    pods: mpsc::Sender<crate::shutdown::PodsRequest>,
    root_dir: std::path::PathBuf,
    recorder: crate::events::Recorder,
    node: String,
    cancel: CancellationToken,
) {
    let mut st = threshold::State::default();
    let mut armed: Option<notifier::Notifier> = None;
    info!(thresholds = ?settings.thresholds.iter().map(|t| format!("{}<{}{}", t.signal.as_str(), t.value.text(), if t.is_hard() { String::new() } else { format!(" after {:?}", t.grace) })).collect::<Vec<_>>(), "eviction manager started");
    loop {
        let paths = settings.paths.clone();
        let obs = tokio::task::spawn_blocking(move || observe::observations(&paths)).await.unwrap_or_default();
        let act = st.step(&settings.thresholds, &obs, settings.transition, tokio::time::Instant::now());
        if st.conditions != state.conditions() {
            info!(conditions = ?st.conditions.iter().map(|c| c.as_str()).collect::<Vec<_>>(), "node pressure conditions");
        }
        state.set_conditions(st.conditions.clone());
        let mut evicted = None;
        if let Some(t) = act.first() {
            let resource = t.signal.resource();
            warn!(signal = t.signal.as_str(), observed = ?obs.get(&t.signal), "eviction threshold met; attempting to reclaim {}", resource.as_str());
            recorder.node(&node, "Warning", "EvictionThresholdMet", format!("Attempting to reclaim {}", resource.as_str()));
            if reclaim_node_level(&settings, resource).await {
                info!(resource = resource.as_str(), "eviction manager: able to reduce resource pressure without evicting pods");
            } else {
                evicted = evict_one(&state, &settings, t, &act, &obs, &pods, &root_dir, &recorder).await;
            }
        }
        if let Some(uid) = evicted {
            // One pod at a time: wait (bounded) until it stopped before looking again.
            let deadline = tokio::time::Instant::now() + CLEANUP_TIMEOUT;
            while !state.is_stopped(&uid) && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            continue;
        }
        if !wait_next_pass(&settings, &mut armed, &cancel).await {
            return;
        }
    }
}

/// Disk pressure: exited containers, then unused images go; true when that
/// was enough (no threshold met counting the minimum reclaim).
async fn reclaim_node_level(settings: &Settings, resource: threshold::Resource) -> bool {
    let Some(r) = settings.reclaim.as_ref().filter(|_| matches!(resource, threshold::Resource::EphemeralStorage | threshold::Resource::Inodes)) else {
        return false;
    };
    let containers = crate::gc::containers::collect(&r.containers, &r.root_dir, &r.node, 0).await;
    let images = match r.image_gc.delete_unused().await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "eviction manager: unexpected error when attempting to reduce resource pressure");
            0
        }
    };
    info!(containers, image_bytes = images, "eviction manager: node-level reclaim");
    let paths = settings.paths.clone();
    let obs = tokio::task::spawn_blocking(move || observe::observations(&paths)).await.unwrap_or_default();
    threshold::met(&settings.thresholds, &obs, true).is_empty()
}

/// The highest memory.available threshold (the first a falling availability
/// crosses), against `capacity`.
fn memory_threshold(settings: &Settings, capacity: i64) -> Option<i64> {
    settings.thresholds.iter().filter(|t| t.signal == threshold::Signal::MemoryAvailable).map(|t| threshold::quantity(&t.value, capacity)).max()
}

/// Sleeps until the next pass: the monitoring period, or sooner when memory
/// crosses its threshold (the v1 notifier, re-armed here; v2: a poll every
/// second). false when cancelled.
async fn wait_next_pass(settings: &Settings, armed: &mut Option<notifier::Notifier>, cancel: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + settings.period;
    // Without a memory threshold to watch (or told not to), only the period.
    let watched = settings.notify.then(observe::node_memory).flatten().and_then(|(cap, _)| Some((cap, memory_threshold(settings, cap)?)));
    let Some((cap, t)) = watched else {
        return tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(deadline) => true,
        };
    };
    if crate::cgroups::uses_v1() {
        if let Some((usage, ws)) = crate::cgroups::usage::root_memory() {
            let at = notifier::usage_threshold(cap, t, usage as i64, ws as i64);
            match notifier::Notifier::arm(at) {
                Ok(n) => *armed = Some(n),
                Err(e) => debug!(error = %e, "memory threshold notifier not armed; polling"),
            }
        }
    }
    let below = || observe::node_memory().is_some_and(|(cap, ws)| cap - ws < t);
    // Already below: the pass that saw it acts; only a new crossing wakes early.
    let was_below = below();
    loop {
        let poll = tokio::time::Instant::now() + notifier::POLL;
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until(deadline) => return true,
            r = async { armed.as_ref().unwrap().crossed().await }, if armed.is_some() => {
                if r.is_ok() && below() {
                    info!("eviction manager: hard memory eviction threshold crossed");
                    return true;
                }
            }
            _ = tokio::time::sleep_until(poll), if armed.is_none() => {
                if !was_below && below() {
                    info!("eviction manager: memory eviction threshold crossed");
                    return true;
                }
            }
        }
    }
}

/// A pod, its last status and each container's writable layer size.
type PodWithRootfs = (Arc<Pod>, Option<k8s_openapi::api::core::v1::PodStatus>, Vec<(String, u64)>);

/// Ranks the active pods for `t`'s resource and tells the first that may go to
/// stop; returns its uid.
#[allow(clippy::too_many_arguments)]
async fn evict_one(
    state: &EvictionState,
    settings: &Settings,
    t: &Threshold,
    met: &[Threshold],
    obs: &threshold::Observations,
    pods: &mpsc::Sender<crate::shutdown::PodsRequest>,
    root_dir: &std::path::Path,
    recorder: &crate::events::Recorder,
) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pods.send(tx).await.ok()?;
    let active = rx.await.ok()?;
    state.forget_others(active.iter().map(|(uid, _, _)| uid.as_str()));
    let root = root_dir.to_path_buf();
    // Pods not told to go yet, with a status that is not final (upstream's active pods).
    let active: Vec<_> = active
        .into_iter()
        .filter(|(uid, _, _)| state.order(uid).is_none())
        .map(|(uid, p, n)| {
            let status = crate::pod::store::load_pod(&root, &uid).and_then(|s| s.status);
            (uid, p, n, status)
        })
        .filter(|(_, _, _, s)| !matches!(s.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect();
    if active.is_empty() {
        warn!("eviction thresholds have been met, but no pods are active to evict");
        return None;
    }
    let resource = t.signal.resource();
    let disk = matches!(resource, threshold::Resource::EphemeralStorage | threshold::Resource::Inodes);
    // Disk: each running container's writable layer, from the snapshotter.
    let mut list: Vec<PodWithRootfs> = Vec::new();
    for (_, p, _, s) in &active {
        let mut rootfs = Vec::new();
        if let (true, Some(r)) = (disk, settings.reclaim.as_ref()) {
            let ids: Vec<(String, String)> = s
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
                .filter_map(|c| Some((c.name.clone(), c.container_id.as_deref()?.trim_start_matches("containerd://").to_string())))
                .collect();
            for (name, id) in ids {
                rootfs.push((name, r.containers.snapshot_usage(&id).await.unwrap_or(0)));
            }
        }
        list.push((p.clone(), s.clone(), rootfs));
    }
    let logs_dir = settings.reclaim.as_ref().map(|r| r.pod_logs_dir.clone()).unwrap_or_else(|| std::path::PathBuf::from("/var/log/pods"));
    let root = root_dir.to_path_buf();
    let mut candidates = tokio::task::spawn_blocking(move || {
        list.iter()
            .map(|(p, s, rootfs)| {
                let d = disk.then(|| observe::disk_use(p, &root, &logs_dir, rootfs));
                observe::candidate(p, s.as_ref(), d.as_ref())
            })
            .collect::<Vec<_>>()
    })
    .await
    .ok()?;
    rank::rank(resource, &mut candidates);
    debug!(ranked = ?candidates.iter().map(|c| &c.name).collect::<Vec<_>>(), "pods ranked for eviction");
    let grace = if t.is_hard() { IMMEDIATE_GRACE_SECONDS } else { settings.max_pod_grace_seconds.max(1) as u64 };
    for c in &candidates {
        let Some((uid, pod, notify, _)) = active.iter().find(|(uid, _, _, _)| *uid == c.uid) else { continue };
        if is_critical(pod) {
            warn!(pod = %crate::pod::pod_key(pod), "eviction manager: cannot evict a critical pod");
            continue;
        }
        let message = rank::message(resource, c, met, obs);
        recorder.warning(pod, None, REASON, message.clone());
        info!(pod = %crate::pod::pod_key(pod), pod_uid = %uid, "{message}");
        state.evict(uid, message, grace);
        if let Some(m) = &settings.metrics {
            m.eviction(t.signal.as_str());
        }
        notify.notify_one();
        return Some(uid.clone());
    }
    warn!("eviction manager: unable to evict any pods from the node");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(qos_requests: Option<&str>, tolerate: bool, source: Option<&str>) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        if let Some(m) = qos_requests {
            p.spec.as_mut().unwrap().containers[0].resources = Some(serde_json::from_value(serde_json::json!({"requests": {"memory": m}})).unwrap());
        }
        if tolerate {
            p.spec.as_mut().unwrap().tolerations = Some(vec![serde_json::from_value(serde_json::json!({"key": MEMORY_PRESSURE_TAINT, "operator": "Exists", "effect": "NoSchedule"})).unwrap()]);
        }
        if let Some(s) = source {
            p.metadata.annotations = Some([(crate::pod::manifest::CONFIG_SOURCE.to_string(), s.to_string())].into());
        }
        p
    }

    #[test]
    fn admission_under_pressure_is_upstreams() {
        let s = EvictionState::default();
        assert!(s.admit(&pod(None, false, None)).is_ok(), "no pressure");
        s.set_conditions(vec![Condition::MemoryPressure]);
        assert_eq!(s.admit(&pod(None, false, Some("api"))), Err(("Evicted".into(), "The node had condition: [MemoryPressure]. ".into())));
        assert!(s.admit(&pod(Some("64Mi"), false, Some("api"))).is_ok(), "Burstable passes memory pressure");
        assert!(s.admit(&pod(None, true, Some("api"))).is_ok(), "tolerates the memory-pressure taint");
        assert!(s.admit(&pod(None, false, Some("file"))).is_ok(), "static pods are critical");
        s.set_conditions(vec![Condition::MemoryPressure, Condition::DiskPressure]);
        assert_eq!(s.admit(&pod(Some("64Mi"), true, Some("api"))).unwrap_err().1, "The node had condition: [MemoryPressure DiskPressure]. ");
    }
}
