//! The pod manager: one worker task per pod UID, fed the latest desired spec over a
//! `watch` channel; task events from containerd routed to the owning worker; pods
//! found in containerd that no source wants any more (removed while the agent was
//! down) are stopped and cleaned up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::worker::Worker;
use crate::config::Config;
use crate::events::Recorder;
use crate::network::cni::Cni;
use crate::runtime::containers::{labels, Containers};
use crate::runtime::events::TaskEvent;
use crate::runtime::image::ImageService;

/// What every worker shares: configuration and handles on containerd, CNI and events.
pub struct Context {
    pub config: Arc<Config>,
    pub containers: Containers,
    pub images: ImageService,
    pub cni: Cni,
    pub recorder: Recorder,
    pub router: Router,
    /// The agent's own OOM score and whether it may lower scores (CAP_SYS_RESOURCE).
    pub oom: (i32, bool),
    /// The agent's effective capabilities: "all" for privileged containers.
    pub capabilities: Vec<String>,
    pub memory_capacity: i64,
    pub cpu_capacity_milli: i64,
    /// Images' /etc/passwd and /etc/group, by top layer (read once per image).
    pub image_users: Mutex<HashMap<String, Arc<crate::runtime::user::ImageUsers>>>,
    /// Node allocatable: what a limit a container does not set stands for.
    pub allocatable: super::resources::Allocatable,
    pub host_ip: Option<String>,
    /// The cluster's DNS settings for pods' resolv.conf and hostnames.
    pub dns: super::dns::Configurer,
    /// What the node offers to pods (admission).
    pub node: super::admission::NodeResources,
    /// The sysctls pods may set: the safe set and `allowedUnsafeSysctls` (admission).
    pub sysctls: super::sysctl::Allowlist,
    /// Whether the host enforces AppArmor (Err: upstream's reason why not), read at start.
    pub apparmor_host: Result<(), String>,
    /// The API server, when the agent has a kubeconfig.
    pub client: Option<kube::Client>,
    /// ConfigMaps and Secrets referenced by pods, watched (with an API server).
    pub objects: Option<crate::api::objects::ObjectCache>,
    /// RuntimeClasses, for pods' runtime handlers (with an API server).
    pub runtime_classes: Option<crate::api::runtime_classes::RuntimeClasses>,
    /// Every Service, for container environments (with an API server).
    pub services: Option<crate::api::services::Services>,
    /// Pod status to the API server (a no-op standalone).
    pub status: crate::api::status::StatusManager,
    /// `/metrics` and `/metrics/probes` of the kubelet API.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each running pod's allocated requests (cpu millicores, memory bytes), by
    /// UID: what an in-place resize must fit next to (`pod::resize`).
    pub allocated: Mutex<HashMap<String, (i64, i64, crate::cgroups::QosClass)>>,
    /// Pod-level and QoS cgroups (cgroupfs or systemd driver).
    pub cgroups: Arc<crate::cgroups::pods::PodCgroups>,
    /// Graceful node shutdown: which pods must stop now (`shutdown`).
    pub shutdown: Arc<crate::shutdown::ShutdownState>,
    /// Node pressure: conditions for admission, pods told to go (`eviction`).
    pub eviction: Arc<crate::eviction::EvictionState>,
    /// Image last-used times for image garbage collection (`gc::images`).
    pub image_usage: Arc<crate::gc::images::Usage>,
}

#[derive(Default)]
struct RouterInner {
    by_container: HashMap<String, Arc<Notify>>,
    oom: HashSet<String>,
}

/// Routes containerd task events to the worker that owns the container.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<RouterInner>>,
}

impl Router {
    pub fn register(&self, container_id: &str, notify: Arc<Notify>) {
        if let Ok(mut g) = self.inner.lock() {
            g.by_container.insert(container_id.to_string(), notify);
        }
    }

    pub fn unregister(&self, container_id: &str) {
        if let Ok(mut g) = self.inner.lock() {
            g.by_container.remove(container_id);
            g.oom.remove(container_id);
        }
    }

    /// Whether the container was OOM-killed (and forget it).
    pub fn take_oom(&self, container_id: &str) -> bool {
        self.inner.lock().map(|mut g| g.oom.remove(container_id)).unwrap_or(false)
    }

    /// Wakes the worker concerned (all workers on a resync).
    pub fn route(&self, ev: &TaskEvent) {
        let Ok(mut g) = self.inner.lock() else { return };
        match ev {
            TaskEvent::Exit { container_id, .. } => {
                if let Some(n) = g.by_container.get(container_id) {
                    n.notify_one();
                }
            }
            TaskEvent::Oom { container_id } => {
                g.oom.insert(container_id.clone());
            }
            TaskEvent::Resync => {
                for n in g.by_container.values() {
                    n.notify_one();
                }
            }
        }
    }
}

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    notify: Arc<Notify>,
}

/// Keeps the set of workers in line with the desired pods.
pub struct Manager {
    ctx: Arc<Context>,
    workers: HashMap<String, Handle>,
    /// Pods whose deletion this node finished; not restarted while the API still lists them.
    finished: HashSet<String>,
    /// Pods admission rejected; never started.
    rejected: HashSet<String>,
    tasks: JoinSet<String>,
    cancel: CancellationToken,
}

impl Manager {
    pub fn new(ctx: Arc<Context>, cancel: CancellationToken) -> Self {
        Self { ctx, workers: HashMap::new(), finished: HashSet::new(), rejected: HashSet::new(), tasks: JoinSet::new(), cancel }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn spawn(&mut self, uid: &str, pod: Option<Arc<Pod>>) {
        let (tx, rx) = watch::channel(pod);
        let notify = Arc::new(Notify::new());
        let worker = Worker::new(self.ctx.clone(), uid.to_string(), rx, notify.clone(), self.cancel.child_token());
        let uid_s = uid.to_string();
        self.tasks.spawn(async move {
            worker.run().await;
            uid_s
        });
        self.workers.insert(uid.to_string(), Handle { tx, notify });
    }

    /// Applies a full desired set from a source: new pods get workers, changed ones
    /// their new spec, missing ones are stopped.
    pub fn set_desired(&mut self, pods: Vec<Pod>) {
        let mut want: HashMap<String, Arc<Pod>> = HashMap::new();
        for p in pods {
            if let Some(uid) = p.metadata.uid.clone() {
                want.insert(uid, Arc::new(p));
            }
        }
        for (uid, h) in &self.workers {
            if !want.contains_key(uid) && h.tx.borrow().is_some() {
                info!(pod_uid = %uid, "pod removed from its source; stopping it");
                let _ = h.tx.send(None);
            }
        }
        self.finished.retain(|uid| want.contains_key(uid));
        // A rejected pod never ran: only its saved status is left to remove.
        let (root, status) = (self.ctx.config.root_dir.clone(), self.ctx.status.clone());
        self.rejected.retain(|uid| {
            let keep = want.contains_key(uid);
            if !keep {
                let _ = std::fs::remove_dir_all(super::store::pod_dir(&root, uid));
                status.forget(uid);
            }
            keep
        });
        // New pods are admitted in creation order, like upstream's HandlePodAdditions.
        let mut want: Vec<(String, Arc<Pod>)> = want.into_iter().collect();
        want.sort_by(|a, b| {
            let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
            (t(&a.1), &a.0).cmp(&(t(&b.1), &b.0))
        });
        for (uid, pod) in want {
            if self.rejected.contains(&uid) && pod.metadata.deletion_timestamp.is_some() {
                // Deleting a rejected pod: nothing to stop, so finish the delete now.
                self.rejected.remove(&uid);
                self.finished.insert(uid.clone());
                let _ = std::fs::remove_dir_all(super::store::pod_dir(&self.ctx.config.root_dir, &uid));
                let status = self.ctx.status.clone();
                tokio::spawn(async move { status.finish_deletion(&pod).await });
                continue;
            }
            if self.finished.contains(&uid) || self.rejected.contains(&uid) {
                continue;
            }
            match self.workers.get(&uid) {
                Some(h) => {
                    let same = h
                        .tx
                        .borrow()
                        .as_ref()
                        .map(|p| {
                            p.spec == pod.spec
                                && p.metadata.generation == pod.metadata.generation
                                && p.metadata.labels == pod.metadata.labels
                                // downwardAPI volumes write annotations too.
                                && p.metadata.annotations == pod.metadata.annotations
                                && p.metadata.deletion_timestamp == pod.metadata.deletion_timestamp
                                && super::status::readiness_gate_conditions(p) == super::status::readiness_gate_conditions(&pod)
                        })
                        .unwrap_or(false);
                    if !same {
                        let _ = h.tx.send(Some(pod));
                    }
                }
                None => {
                    if pod.metadata.deletion_timestamp.is_none() && self.ctx.shutdown.shutting_down() {
                        let r = super::admission::Rejection { reason: crate::shutdown::NOT_ADMITTED_REASON.into(), message: crate::shutdown::NOT_ADMITTED_MESSAGE.into() };
                        self.reject(&uid, &pod, r);
                        continue;
                    }
                    if pod.metadata.deletion_timestamp.is_none() {
                        if let Err((reason, message)) = self.ctx.eviction.admit(&pod) {
                            self.reject(&uid, &pod, super::admission::Rejection { reason, message });
                            continue;
                        }
                        // Upstream's order: eviction, then sysctls, then the predicates.
                        if let Err(r) = self.ctx.sysctls.admit(&pod) {
                            self.reject(&uid, &pod, r);
                            continue;
                        }
                        let admitted: Vec<Arc<Pod>> = self.workers.values().filter_map(|h| h.tx.borrow().clone()).filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                        let refs: Vec<&Pod> = admitted.iter().map(|p| p.as_ref()).collect();
                        if let Err(r) = super::admission::admit(&pod, &refs, &self.ctx.node) {
                            self.reject(&uid, &pod, r);
                            continue;
                        }
                    }
                    info!(pod = %super::pod_key(&pod), pod_uid = %uid, "pod added");
                    self.spawn(&uid, Some(pod));
                }
            }
        }
    }

    /// Marks a pod rejected by admission: Failed with the reason, an event with
    /// the message, and the status message "Pod was rejected: <message>"
    /// (upstream's rejectPod); no containers.
    fn reject(&mut self, uid: &str, pod: &Pod, r: super::admission::Rejection) {
        warn!(pod = %super::pod_key(pod), reason = %r.reason, "Pod was rejected: {}", r.message);
        self.ctx.recorder.warning(pod, None, &r.reason, r.message.clone());
        let status = k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            reason: Some(r.reason),
            message: Some(format!("Pod was rejected: {}", r.message)),
            start_time: Some(super::k8s_time(chrono::Utc::now())),
            observed_generation: pod.metadata.generation,
            ..Default::default()
        };
        self.ctx.status.set(pod, &status);
        let mut saved = pod.clone();
        saved.status = Some(status);
        let _ = super::store::save_pod(&self.ctx.config.root_dir, &saved);
        self.rejected.insert(uid.to_string());
    }

    /// Starts cleanup workers for pods that containerd still has but no source wants.
    pub async fn adopt_or_clean_orphans(&mut self) {
        let node = self.ctx.config.node_name.clone();
        self.clean_orphans_of(Some(&node)).await;
    }

    /// The ids of the containers of `node` (of every node: None) containerd has.
    pub async fn containers_of(&self, node: Option<&str>) -> Result<Vec<String>, crate::runtime::containers::ContainerError> {
        Ok(self.ctx.containers.list(None).await?.into_iter().filter(|r| of_node(r, node)).map(|r| r.id).collect())
    }

    /// [`Self::adopt_or_clean_orphans`] for the pods of `node`, or of every node
    /// (`rkubelet reset` when the node name is lost).
    pub async fn clean_orphans_of(&mut self, node: Option<&str>) {
        match self.ctx.containers.list(None).await {
            Ok(records) => {
                let uids: HashSet<String> = records
                    .iter()
                    .filter(|r| of_node(r, node))
                    .filter_map(|r| r.label(labels::POD_UID).map(String::from))
                    .collect();
                for uid in uids {
                    if !self.workers.contains_key(&uid) {
                        info!(pod_uid = %uid, "found containers of a pod no source wants; removing them");
                        self.spawn(&uid, None);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list containers for orphan cleanup"),
        }
        // Pod directories left without containers (e.g. the agent died mid-teardown);
        // a pod admission rejected keeps its directory (its saved status) while wanted.
        if let Ok(rd) = std::fs::read_dir(self.ctx.config.root_dir.join("pods")) {
            for e in rd.flatten() {
                let uid = e.file_name().to_string_lossy().to_string();
                if !self.workers.contains_key(&uid) && !self.rejected.contains(&uid) {
                    self.spawn(&uid, None);
                }
            }
        }
    }

    /// Routes a containerd task event.
    pub fn on_task_event(&self, ev: &TaskEvent) {
        self.ctx.router.route(ev);
        if matches!(ev, TaskEvent::Resync) {
            for h in self.workers.values() {
                h.notify.notify_one();
            }
        }
    }

    /// Reaps finished workers (pods fully removed). Call from the agent loop.
    pub async fn reap(&mut self) -> Option<String> {
        match self.tasks.join_next().await {
            Some(Ok(uid)) => {
                let state = self.workers.get(&uid).map(|h| h.tx.borrow().as_ref().map(|p| p.metadata.deletion_timestamp.is_some()));
                match state {
                    // Removed from its source and torn down: gone for good (a
                    // static pod's mirror may go now, upstream's orphaned mirror cleanup).
                    Some(None) => {
                        self.workers.remove(&uid);
                        if !self.cancel.is_cancelled() {
                            self.ctx.status.forget(&uid);
                        }
                    }
                    // Deleted through the API and cleaned up: wait for the watch to drop it.
                    Some(Some(true)) => {
                        self.workers.remove(&uid);
                        self.finished.insert(uid.clone());
                    }
                    // Torn down, but wanted again meanwhile (a manifest removed and put
                    // back): a new worker starts it.
                    Some(Some(false)) if !self.cancel.is_cancelled() => {
                        let pod = self.workers.remove(&uid).and_then(|h| h.tx.borrow().clone());
                        info!(pod_uid = %uid, "pod wanted again after its teardown; starting it");
                        self.spawn(&uid, pod);
                    }
                    _ => {}
                }
                crate::memory::release_free_memory();
                Some(uid)
            }
            Some(Err(e)) => {
                warn!(error = %e, "pod worker panicked");
                None
            }
            None => std::future::pending().await,
        }
    }

    /// Whether any worker is still running.
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// The pods with a worker and a spec (graceful node shutdown stops them).
    pub fn active_pods(&self) -> Vec<crate::shutdown::ActivePod> {
        self.workers.iter().filter_map(|(uid, h)| h.tx.borrow().clone().map(|p| (uid.clone(), p, h.notify.clone()))).collect()
    }

    /// Number of pods with a live desired spec.
    pub fn pod_count(&self) -> usize {
        self.workers.values().filter(|h| h.tx.borrow().is_some()).count()
    }

    /// Waits for every worker to return (after cancel).
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Whether rkubelet made this container for `node` (for any node: None).
fn of_node(r: &crate::runtime::containers::ContainerRecord, node: Option<&str>) -> bool {
    r.label(labels::MANAGED_BY) == Some("rkubelet") && node.is_none_or(|n| r.label(labels::NODE) == Some(n))
}
