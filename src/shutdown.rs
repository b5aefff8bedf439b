//! Graceful node shutdown (upstream's pkg/kubelet/nodeshutdown): with
//! `shutdownGracePeriod` (or `shutdownGracePeriodByPodPriority`) set, the agent
//! holds a logind *delay* inhibitor lock; when logind announces
//! `PrepareForShutdown(true)`, the pods are stopped group by group, lowest
//! priority first, each group within its grace period, with upstream's status
//! (Failed, `Terminated`, "Pod was terminated in response to imminent node
//! shutdown.", a `DisruptionTarget` condition); then the lock is released and the
//! shutdown goes on. New pods are rejected meanwhile (`NodeShutdown`).
//!
//! The pods' side lives in the workers (pod::worker reads [`ShutdownState`]);
//! this module talks to logind and orders the groups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::kubelet_config::ShutdownGracePeriodByPodPriority as Group;

/// The pod status reason of a pod stopped for the node's shutdown.
pub const REASON: &str = "Terminated";
/// Its message (also the `DisruptionTarget` condition's).
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// Admission's reason while the node shuts down.
pub const NOT_ADMITTED_REASON: &str = "NodeShutdown";
pub const NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// `scheduling.SystemCriticalPriority`.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// Where upstream raises logind's InhibitDelayMaxSec.
pub const LOGIND_DROP_IN: &str = "/etc/systemd/logind.conf.d/99-kubelet.conf";

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

/// Errors of the shutdown manager's D-Bus side.
#[derive(Debug, Error)]
pub enum ShutdownError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("failed writing logind shutdown inhibit override file {LOGIND_DROP_IN}: {0}")]
    DropIn(#[source] std::io::Error),
    #[error("node shutdown manager was unable to update logind InhibitDelayMaxSec to {want:?} (ShutdownGracePeriod), current value of InhibitDelayMaxSec ({have:?}) is less than requested ShutdownGracePeriod")]
    InhibitDelay { want: Duration, have: Duration },
}

/// The shutdown groups as upstream builds them: `by_priority` when given, else
/// `shutdownGracePeriod` split into the default-priority part and the critical
/// pods' part (migrateConfig); sorted by priority. Empty: no graceful shutdown.
pub fn groups(grace: Duration, critical: Duration, by_priority: Vec<Group>) -> Vec<Group> {
    let mut g = if !by_priority.is_empty() {
        by_priority
    } else if grace.is_zero() || critical > grace {
        Vec::new()
    } else {
        vec![
            Group { priority: 0, shutdown_grace_period_seconds: (grace - critical).as_secs() as i64 },
            Group { priority: SYSTEM_CRITICAL_PRIORITY, shutdown_grace_period_seconds: critical.as_secs() as i64 },
        ]
    };
    g.sort_by_key(|g| g.priority);
    g
}

/// The group a pod of `priority` falls in (groupByPriority): the highest group
/// whose priority is not above the pod's; the lowest group for pods below all.
pub fn group_index(groups: &[Group], priority: i32) -> usize {
    let i = groups.partition_point(|g| g.priority < priority);
    if i == groups.len() {
        groups.len().saturating_sub(1)
    } else if i > 0 && groups[i].priority > priority {
        i - 1
    } else {
        i
    }
}

/// A pod's grace period in its group: the group's, or the pod's own when shorter.
pub fn pod_grace(group: &Group, pod: &Pod) -> Duration {
    let own = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
    let secs = match own {
        Some(o) if o <= group.shutdown_grace_period_seconds => o,
        _ => group.shutdown_grace_period_seconds,
    };
    Duration::from_secs(secs.max(0) as u64)
}

/// What the workers and admission read: whether the node is shutting down and
/// which pods must stop now, with what grace period.
#[derive(Debug, Default)]
pub struct ShutdownState {
    shutting_down: AtomicBool,
    /// uid → (grace period, stopped).
    orders: Mutex<HashMap<String, (Duration, bool)>>,
}

impl ShutdownState {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The grace period a pod must stop within, if it has been told to.
    pub fn order(&self, uid: &str) -> Option<Duration> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner()).get(uid).map(|(g, _)| *g)
    }

    /// A worker reports its pod stopped (and its status written).
    pub fn stopped(&self, uid: &str) {
        if let Some(o) = self.orders.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid) {
            o.1 = true;
        }
    }

    fn all_stopped(&self, uids: &[String]) -> bool {
        let o = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        uids.iter().all(|u| o.get(u).is_none_or(|(_, done)| *done))
    }

    fn set(&self, shutting_down: bool) {
        self.shutting_down.store(shutting_down, Ordering::Relaxed);
        if !shutting_down {
            self.orders.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// An active pod as the agent's loop hands it over: its spec and its worker's wake-up.
pub type ActivePod = (String, Arc<Pod>, Arc<Notify>);

/// What the shutdown manager asks the agent's loop for: the active pods.
pub type PodsRequest = oneshot::Sender<Vec<ActivePod>>;

/// Stops the pods group by group: each group's pods are told their grace period
/// and woken, then awaited until they stopped or the group's period ran out.
pub async fn stop_pods(state: &ShutdownState, groups: &[Group], pods: Vec<ActivePod>) {
    if groups.is_empty() {
        return;
    }
    let mut by_group: Vec<Vec<ActivePod>> = vec![Vec::new(); groups.len()];
    for p in pods {
        let prio = p.1.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        by_group[group_index(groups, prio)].push(p);
    }
    for (group, pods) in groups.iter().zip(by_group) {
        if pods.is_empty() {
            continue;
        }
        let uids: Vec<String> = pods.iter().map(|p| p.0.clone()).collect();
        {
            let mut o = state.orders.lock().unwrap_or_else(|e| e.into_inner());
            for (uid, pod, _) in &pods {
                let grace = pod_grace(group, pod);
                info!(pod = %crate::pod::pod_key(pod), grace_seconds = grace.as_secs(), priority = group.priority, "Shutdown manager killing pod with gracePeriod");
                o.insert(uid.clone(), (grace, false));
            }
        }
        for (_, _, wake) in &pods {
            wake.notify_one();
        }
        let period = Duration::from_secs(group.shutdown_grace_period_seconds.max(0) as u64);
        let waited = tokio::time::timeout(period, async {
            while !state.all_stopped(&uids) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match waited {
            Ok(()) => info!(priority = group.priority, pods = uids.len(), "Done waiting for all pods in group to terminate"),
            Err(_) => warn!(priority = group.priority, grace_period = group.shutdown_grace_period_seconds, "Shutdown manager pod killing time out"),
        }
    }
}

/// logind over the system bus.
struct Logind {
    conn: zbus::Connection,
}

impl Logind {
    async fn connect() -> Result<Logind, ShutdownError> {
        Ok(Logind { conn: zbus::Connection::system().await? })
    }

    async fn manager(&self) -> zbus::Result<zbus::Proxy<'static>> {
        zbus::Proxy::new(&self.conn, LOGIND, LOGIND_PATH, LOGIND_MANAGER).await
    }

    async fn inhibit_delay(&self) -> Result<Duration, ShutdownError> {
        // Uncached: upstream reads it again after reloading logind.
        let m: zbus::Proxy<'_> = zbus::proxy::Builder::new(&self.conn)
            .destination(LOGIND)?
            .path(LOGIND_PATH)?
            .interface(LOGIND_MANAGER)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let usec: u64 = m.get_property("InhibitDelayMaxUSec").await?;
        Ok(Duration::from_micros(usec))
    }

    /// Raises InhibitDelayMaxSec as upstream does: its own logind.conf drop-in,
    /// then SIGHUP to systemd-logind through systemd.
    async fn raise_inhibit_delay(&self, want: Duration) -> Result<(), ShutdownError> {
        let text = format!("# Kubelet logind override\n[Login]\nInhibitDelayMaxSec={}\n", want.as_secs());
        let path = std::path::Path::new(LOGIND_DROP_IN);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(ShutdownError::DropIn)?;
        }
        std::fs::write(path, text).map_err(ShutdownError::DropIn)?;
        crate::cgroups::systemd::Systemd::on(&self.conn).kill("systemd-logind.service", "all", nix::sys::signal::Signal::SIGHUP as i32).await?;
        // logind rereads its configuration asynchronously.
        for _ in 0..20 {
            if self.inhibit_delay().await? >= want {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ShutdownError::InhibitDelay { want, have: self.inhibit_delay().await? })
    }

    /// A delay lock on shutdown: held as long as the fd is open.
    async fn inhibit(&self) -> Result<zbus::zvariant::OwnedFd, ShutdownError> {
        let m = self.manager().await?;
        Ok(m.call("Inhibit", &("shutdown", "kubelet", "Kubelet needs time to handle node shutdown", "delay")).await?)
    }
}

/// Watches logind for the node's shutdown until `cancel`: takes the inhibitor
/// lock (raising logind's InhibitDelayMaxSec to the groups' sum first), and on
/// PrepareForShutdown(true) sets `state`, gets the active pods from the agent's
/// loop through `pods`, stops them in order and releases the lock. A cancelled
/// shutdown takes the lock again. Reconnects after a lost bus (1 s apart).
pub async fn run(state: Arc<ShutdownState>, groups: Vec<Group>, recorder: crate::events::Recorder, node: String, pods: mpsc::Sender<PodsRequest>, cancel: CancellationToken) {
    let period: i64 = groups.iter().map(|g| g.shutdown_grace_period_seconds).sum();
    let period = Duration::from_secs(period.max(0) as u64);
    info!(?groups, shutdown_grace_period = ?period, "Creating node shutdown manager");
    loop {
        match watch(&state, &groups, period, &recorder, &node, &pods, &cancel).await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "Unable to watch the node for shutdown events"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => debug!("Restarting watch for node shutdown events"),
        }
    }
}

async fn watch(
    state: &ShutdownState,
    groups: &[Group],
    period: Duration,
    recorder: &crate::events::Recorder,
    node: &str,
    pods: &mpsc::Sender<PodsRequest>,
    cancel: &CancellationToken,
) -> Result<(), ShutdownError> {
    let logind = Logind::connect().await?;
    let have = logind.inhibit_delay().await?;
    if period > have {
        info!(from = ?have, to = ?period, file = LOGIND_DROP_IN, "raising logind's InhibitDelayMaxSec to the shutdown grace period");
        logind.raise_inhibit_delay(period).await?;
    }
    let mut signals = logind.manager().await?.receive_signal("PrepareForShutdown").await?;
    let mut lock = Some(logind.inhibit().await?);
    debug!("shutdown inhibitor lock taken");
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = signals.next() => m,
        };
        let Some(msg) = msg else { return Err(ShutdownError::Bus(zbus::Error::InputOutput(std::io::Error::other("the PrepareForShutdown signal stream ended").into()))) };
        let Ok(active) = msg.body().deserialize::<bool>() else {
            warn!("Failed obtaining shutdown event, PrepareForShutdown event was not bool type as expected");
            continue;
        };
        if active {
            info!("Shutdown manager detected new shutdown event");
            recorder.node(node, "Normal", "NodeShutdown", "Shutdown manager detected shutdown event");
            state.set(true);
            let (tx, rx) = oneshot::channel();
            let active_pods = if pods.send(tx).await.is_ok() { rx.await.unwrap_or_default() } else { Vec::new() };
            stop_pods(state, groups, active_pods).await;
            drop(lock.take());
            info!("Shutdown manager completed processing shutdown event, node will shutdown shortly");
        } else {
            info!("Shutdown manager detected shutdown cancellation");
            recorder.node(node, "Normal", "NodeShutdown", "Shutdown manager detected shutdown cancellation");
            state.set(false);
            lock = Some(logind.inhibit().await?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn g(priority: i32, secs: i64) -> Group {
        Group { priority, shutdown_grace_period_seconds: secs }
    }

    #[test]
    fn the_two_periods_become_a_default_and_a_critical_group() {
        let s = Duration::from_secs;
        assert_eq!(groups(s(30), s(10), vec![]), vec![g(0, 20), g(SYSTEM_CRITICAL_PRIORITY, 10)]);
        assert_eq!(groups(s(0), s(0), vec![]), vec![]);
        assert_eq!(groups(s(10), s(20), vec![]), vec![], "critical above the whole period: off, as upstream");
        assert_eq!(groups(s(30), s(10), vec![g(100, 5), g(-5, 3)]), vec![g(-5, 3), g(100, 5)], "by priority wins, sorted");
    }

    #[test]
    fn pods_fall_in_the_highest_group_not_above_their_priority() {
        let gs = [g(0, 20), g(1000, 5), g(SYSTEM_CRITICAL_PRIORITY, 10)];
        assert_eq!(group_index(&gs, 0), 0);
        assert_eq!(group_index(&gs, 999), 0);
        assert_eq!(group_index(&gs, 1000), 1);
        assert_eq!(group_index(&gs, -10), 0, "below all: the lowest");
        assert_eq!(group_index(&gs, SYSTEM_CRITICAL_PRIORITY + 1000), 2, "above all: the highest");
        assert_eq!(group_index(&[], 5), 0);
    }

    #[test]
    fn a_pod_gets_its_own_grace_period_when_shorter() {
        let pod = |t: Option<i64>| Pod { spec: Some(PodSpec { termination_grace_period_seconds: t, ..Default::default() }), ..Default::default() };
        assert_eq!(pod_grace(&g(0, 20), &pod(Some(5))), Duration::from_secs(5));
        assert_eq!(pod_grace(&g(0, 20), &pod(Some(30))), Duration::from_secs(20));
        assert_eq!(pod_grace(&g(0, 20), &pod(None)), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn groups_stop_in_order_and_wait_at_most_their_period() {
        let state = Arc::new(ShutdownState::default());
        state.set(true);
        let pod = |prio: i32| Arc::new(Pod { spec: Some(PodSpec { priority: Some(prio), termination_grace_period_seconds: Some(30), ..Default::default() }), ..Default::default() });
        let (low, crit) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let pods = vec![("crit".to_string(), pod(SYSTEM_CRITICAL_PRIORITY), crit.clone()), ("low".to_string(), pod(0), low.clone())];
        let gs = groups(Duration::from_secs(30), Duration::from_secs(10), vec![]);
        let s2 = state.clone();
        // The low pod's worker stops at once; the critical one never does.
        let worker = tokio::spawn(async move {
            low.notified().await;
            assert_eq!(s2.order("low"), Some(Duration::from_secs(20)));
            assert_eq!(s2.order("crit"), None, "the critical group waits for the default group");
            s2.stopped("low");
            crit.notified().await;
            assert_eq!(s2.order("crit"), Some(Duration::from_secs(10)));
        });
        let t = tokio::time::Instant::now();
        stop_pods(&state, &gs, pods).await;
        worker.await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "the critical group ran out its 10 s, the default group did not wait: {took:?}");
    }
}
