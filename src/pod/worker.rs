//! One task per pod UID. The worker observes the pod's containers in containerd,
//! asks [`super::plan`] what to do, does it (sandbox, images, containers), and
//! writes the status [`super::status`] computes. It wakes on a new spec, a task
//! exit routed from containerd's event stream, a back-off deadline, or the
//! periodic resync. When the desired spec becomes `None` it stops and removes
//! everything the pod had; when the agent shuts down it just returns, leaving
//! the pod running for the next agent to adopt.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::backoff::Backoff;
use super::manager::Context;
use super::plan::{latest, plan_with, Start};
use super::status::{compute, StatusInput};
use super::{format_pod, pod_key, Instance, InstanceState, Kind, SandboxState, Waiting};
use crate::events::{field_path, reason};
use crate::network::cni::PodNetwork;
use crate::network::netns;
use crate::runtime::containers::{labels, ContainerRecord, NewContainer, TaskState};
use crate::runtime::image::{ImageError, ImageInfo, PullPolicy, PullSecrets};
use crate::runtime::spec::{self, BindMount, ContainerInput, SandboxInput};

const KIND_SANDBOX: &str = "sandbox";
const KIND_INIT: &str = "init";
const KIND_APP: &str = "app";
const KIND_EPHEMERAL: &str = "ephemeral";
const STOP_SIGNAL: &str = super::lifecycle::STOP_SIGNAL_LABEL;
/// Upstream's message for a pod past its activeDeadlineSeconds.
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// A pod worker's inputs and its in-memory cache (back-off, waiting reasons).
pub struct Worker {
    ctx: Arc<Context>,
    uid: String,
    spec_rx: watch::Receiver<Option<Arc<Pod>>>,
    notify: Arc<Notify>,
    cancel: CancellationToken,
    backoff: Backoff,
    image_backoff: Backoff,
    image_failures: HashMap<String, (DateTime<Utc>, String)>,
    sandbox_failures: u32,
    waiting: HashMap<String, Waiting>,
    reported_backoff: HashSet<(String, u32)>,
    last_status: Option<PodStatus>,
    /// Whether `last_status` was written by this worker (the spec may have changed since a restart).
    status_saved: bool,
    last_pod: Option<Arc<Pod>>,
    /// The pod cgroup's OOM kill count (cgroup v2) when last looked at.
    pod_oom_kills: Option<u64>,
    registered: HashSet<String>,
    /// Why the pod was evicted (emptyDir over its sizeLimit), once it was.
    eviction: Option<String>,
    /// Probe tasks of the pod's running containers and their results.
    prober: super::prober::Prober,
    /// When this agent first saw the pod, for `kubelet_pod_start_duration_seconds`.
    seen_at: Instant,
    /// This worker started a container, and whether the pod start was measured.
    started_any: bool,
    start_measured: bool,
    /// The allocated resources of the pod's resizable containers (`pod::resize`),
    /// checkpointed in the pod directory; None until the first sync.
    allocation: Option<super::resize::Allocation>,
    /// `PodResizePending` and `PodResizeInProgress`, while they hold.
    resize_pending: Option<PodCondition>,
    resize_in_progress: Option<PodCondition>,
}

/// What `start_container` did.
enum Started {
    /// The container runs (its post-start hook, if any, succeeded).
    Running(Box<Instance>),
    /// Not started, or started and failed; maybe a time to try again.
    Not(Option<DateTime<Utc>>),
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

fn container_of(pod: &Pod, name: &str, kind: Kind) -> Option<Container> {
    let spec = pod.spec.as_ref()?;
    match kind {
        Kind::Init => spec.init_containers.as_ref()?.iter().find(|c| c.name == name).cloned(),
        Kind::App => spec.containers.iter().find(|c| c.name == name).cloned(),
        Kind::Ephemeral => spec.ephemeral_containers.as_ref()?.iter().find(|c| c.name == name).map(super::ephemeral_as_container),
    }
}

/// The kind of a container record (sandboxes read as app containers).
fn kind_of(r: &ContainerRecord) -> Kind {
    match r.label(labels::KIND) {
        Some(KIND_INIT) => Kind::Init,
        Some(KIND_EPHEMERAL) => Kind::Ephemeral,
        _ => Kind::App,
    }
}

/// The label value of a container kind.
fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Init => KIND_INIT,
        Kind::App => KIND_APP,
        Kind::Ephemeral => KIND_EPHEMERAL,
    }
}

/// The field path of a container for its events.
fn event_field_path(name: &str, kind: Kind) -> Option<String> {
    match kind {
        Kind::Ephemeral => crate::events::ephemeral_field_path(name),
        k => field_path(name, k == Kind::Init),
    }
}

impl Worker {
    pub fn new(
        ctx: Arc<Context>,
        uid: String,
        spec_rx: watch::Receiver<Option<Arc<Pod>>>,
        notify: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        let last_status = super::store::load_pod(&ctx.config.root_dir, &uid).and_then(|p| p.status);
        let allocation = super::resize::load(&super::store::pod_dir(&ctx.config.root_dir, &uid));
        let prober = super::prober::Prober::new(ctx.clone(), notify.clone(), &cancel);
        Self {
            prober,
            ctx,
            uid,
            spec_rx,
            notify,
            cancel,
            backoff: Backoff::default(),
            image_backoff: Backoff::default(),
            image_failures: HashMap::new(),
            sandbox_failures: 0,
            waiting: HashMap::new(),
            reported_backoff: HashSet::new(),
            last_status,
            seen_at: Instant::now(),
            started_any: false,
            start_measured: false,
            status_saved: false,
            last_pod: None,
            pod_oom_kills: None,
            registered: HashSet::new(),
            eviction: None,
            allocation,
            resize_pending: None,
            resize_in_progress: None,
        }
    }

    /// The worker loop; returns when the pod is gone or the agent shuts down.
    pub async fn run(mut self) {
        self.run_loop().await;
        self.unregister_objects();
    }

    async fn run_loop(&mut self) {
        // Changes of the ConfigMaps/Secrets the pod uses wake it to rewrite its volumes.
        let mut object_changes = self.ctx.objects.as_ref().map(|o| o.subscribe());
        loop {
            let desired = self.spec_rx.borrow_and_update().clone();
            let Some(pod) = desired else {
                let span = info_span!("terminate", pod_uid = %self.uid);
                self.terminate(None).instrument(span).await;
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                // Deleted through the API: stop within min(spec, deletionGracePeriodSeconds),
                // clean up, then finish the delete like upstream.
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .into_iter()
                    .chain(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                    .min();
                self.last_pod = Some(pod.clone());
                let span = info_span!("terminate", pod = %pod_key(&pod), pod_uid = %self.uid);
                if self.terminate(grace).instrument(span).await {
                    self.ctx.status.finish_deletion(&pod).await;
                }
                return;
            }
            self.last_pod = Some(pod.clone());
            let span = info_span!("sync", pod = %pod_key(&pod), pod_uid = %self.uid);
            let wake = match self.sync(&pod).instrument(span).await {
                Ok(w) => w,
                Err(e) => {
                    warn!(pod = %pod_key(&pod), error = %e, "pod sync failed; will retry");
                    Some(Duration::from_secs(2))
                }
            };
            let sleep = wake.unwrap_or(self.ctx.config.sync_frequency).min(self.ctx.config.sync_frequency);
            tokio::select! {
                _ = self.cancel.cancelled() => { self.unregister_all(); return; }
                r = self.spec_rx.changed() => if r.is_err() { self.unregister_all(); return; },
                _ = self.notify.notified() => {}
                _ = crate::volume::referenced_change(&mut object_changes, &pod) => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn register(&mut self, id: &str) {
        if self.registered.insert(id.to_string()) {
            self.ctx.router.register(id, self.notify.clone());
        }
    }

    /// Stops watching the ConfigMaps and Secrets only this pod referenced: it sets
    /// up no more volumes (upstream: SyncTerminatedPod, pod manager RemovePod).
    fn unregister_objects(&self) {
        if let Some(objects) = &self.ctx.objects {
            objects.unregister_pod(&self.uid);
        }
    }

    /// Whether the cgroups counted an OOM kill for container `id` that
    /// containerd's event did not report (the kill of a whole systemd scope
    /// can remove it before the shim reads its `memory.events`): v1, the
    /// container's own counter; v2, a rise of the pod cgroup's counter.
    fn oom_kill_counted(&mut self, id: &str) -> bool {
        let Some(pod) = self.last_pod.clone() else { return false };
        let qos = crate::cgroups::qos_class(&pod);
        if crate::cgroups::uses_v1() {
            return crate::cgroups::usage::oom_kills(&crate::cgroups::container_cgroup(qos, &self.uid, id)).unwrap_or(0) > 0;
        }
        let now = crate::cgroups::usage::oom_kills(&crate::cgroups::pod_cgroup_parent(qos, &self.uid));
        let before = std::mem::replace(&mut self.pod_oom_kills, now);
        matches!((before, now), (Some(b), Some(n)) if n > b)
    }

    /// The pod cgroup's OOM kill count before any exit is looked at (v2).
    fn note_pod_oom_kills(&mut self) {
        if self.pod_oom_kills.is_some() || crate::cgroups::uses_v1() {
            return;
        }
        if let Some(pod) = self.last_pod.clone() {
            self.pod_oom_kills = crate::cgroups::usage::oom_kills(&crate::cgroups::pod_cgroup_parent(crate::cgroups::qos_class(&pod), &self.uid));
        }
    }

    fn unregister_all(&mut self) {
        for id in self.registered.drain() {
            self.ctx.router.unregister(&id);
        }
    }

    /// Lists the pod's containers, records exits of stopped tasks onto their labels
    /// and deletes those tasks (freeing the shim), and drops half-created leftovers.
    async fn observe(&mut self) -> Result<(Option<SandboxState>, Vec<ContainerRecord>, Vec<Instance>), crate::runtime::containers::ContainerError> {
        let ctx = self.ctx.clone();
        let rt = &ctx.containers;
        let mut records = rt.list(Some(&self.uid)).await?;
        if records.iter().all(|r| !matches!(r.task, TaskState::Stopped { .. }) || r.label(labels::EXIT_CODE).is_some()) {
            self.note_pod_oom_kills();
        }
        for r in records.iter_mut() {
            self.register(&r.id);
            let kind = r.label(labels::KIND).unwrap_or("").to_string();
            match r.task.clone() {
                TaskState::Stopped { exit_code, exited_at } if r.label(labels::EXIT_CODE).is_none() => {
                    let finished = exited_at.unwrap_or_else(now);
                    let oom = self.ctx.router.take_oom(&r.id) || (exit_code == 137 && self.oom_kill_counted(&r.id));
                    let reason = if oom { "OOMKilled" } else if exit_code == 0 { "Completed" } else { "Error" };
                    let set = vec![
                        (labels::EXIT_CODE, exit_code.to_string()),
                        (labels::FINISHED_AT, finished.to_rfc3339()),
                        (labels::REASON, reason.to_string()),
                    ];
                    rt.set_labels(&r.id, &set).await?;
                    for (k, v) in set {
                        r.labels.insert(k.to_string(), v);
                    }
                    // The termination message, kept next to the file the container wrote.
                    if let Some(tlog) = r.label(labels::TERMINATION_LOG) {
                        let fallback = r.label(labels::TERMINATION_POLICY) == Some("FallbackToLogsOnError") && exit_code != 0;
                        let msg = super::termination::message(Path::new(tlog), fallback, r.label(labels::LOG_PATH).map(Path::new));
                        if !msg.is_empty() {
                            let _ = super::store::write_atomic(&super::termination::saved(Path::new(tlog)), msg.as_bytes());
                        }
                    }
                    rt.delete_task(&r.id).await?;
                    r.task = TaskState::None;
                    info!(container = r.label(labels::CONTAINER_NAME).unwrap_or(&kind), exit_code, reason, "container exited");
                }
                TaskState::Stopped { .. } => {
                    rt.delete_task(&r.id).await?;
                    r.task = TaskState::None;
                }
                TaskState::Created if kind != KIND_SANDBOX => {
                    // Created but never started (the agent died in between): discard.
                    rt.delete_task(&r.id).await?;
                    r.task = TaskState::None;
                }
                _ => {}
            }
        }
        // Containers that never started and have no recorded exit are leftovers.
        let mut keep = Vec::new();
        for r in records {
            let kind = r.label(labels::KIND).unwrap_or("");
            if kind != KIND_SANDBOX && r.task == TaskState::None && r.label(labels::EXIT_CODE).is_none() {
                debug!(container = %r.id, "removing container that never started");
                rt.delete_container(&r.id).await?;
                continue;
            }
            keep.push(r);
        }
        let records = keep;

        let sandbox = records
            .iter()
            .filter(|r| r.label(labels::KIND) == Some(KIND_SANDBOX))
            .max_by_key(|r| r.label(labels::CREATED_AT).unwrap_or("").to_string())
            .map(|r| SandboxState {
                id: r.id.clone(),
                handler: r.label(labels::RUNTIME_HANDLER).unwrap_or("").to_string(),
                ready: matches!(r.task, TaskState::Running { .. }),
                pid: match r.task {
                    TaskState::Running { pid } => pid,
                    _ => 0,
                },
                ips: r.label(labels::POD_IPS).map(|s| s.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default(),
                created_at: parse_time(r.label(labels::CREATED_AT)).or(r.created_at).unwrap_or_else(now),
            });
        let instances = records
            .iter()
            .filter_map(|r| {
                let kind = match r.label(labels::KIND)? {
                    KIND_INIT => Kind::Init,
                    KIND_APP => Kind::App,
                    KIND_EPHEMERAL => Kind::Ephemeral,
                    _ => return None,
                };
                let started = parse_time(r.label(labels::STARTED_AT));
                let state = match r.task {
                    TaskState::Running { .. } => InstanceState::Running { started_at: started.or(r.created_at).unwrap_or_else(now) },
                    _ => InstanceState::Exited {
                        exit_code: r.label(labels::EXIT_CODE).and_then(|c| c.parse().ok()).unwrap_or(128),
                        reason: r.label(labels::REASON).unwrap_or("Error").to_string(),
                        message: super::termination::combine(r.label(labels::MESSAGE), r.label(labels::TERMINATION_LOG).map(Path::new)),
                        started_at: started,
                        finished_at: parse_time(r.label(labels::FINISHED_AT)).unwrap_or_else(now),
                    },
                };
                Some(Instance {
                    id: r.id.clone(),
                    name: r.label(labels::CONTAINER_NAME)?.to_string(),
                    kind,
                    attempt: r.label(labels::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0),
                    image: r.label(labels::IMAGE).unwrap_or("").to_string(),
                    image_id: r.label(labels::IMAGE_ID).unwrap_or("").to_string(),
                    state,
                    hash: r.label(labels::SPEC_HASH).map(String::from),
                    changed: r.label(labels::DEFINITION_CHANGED).is_some(),
                    resources: r.label(labels::RESOURCES).and_then(|s| serde_json::from_str(s).ok()),
                })
            })
            .collect();
        Ok((sandbox, records, instances))
    }

    async fn sync(&mut self, pod: &Arc<Pod>) -> anyhow::Result<Option<Duration>> {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut wake: Option<DateTime<Utc>> = None;
        // Containers that failed their liveness/startup probe are killed first; the plan restarts them.
        self.prober.kill_unhealthy(pod).await;
        // A pod already reported Succeeded/Failed stays so: nothing is started again.
        let reported = self.last_status.as_ref().and_then(|s| s.phase.clone()).or_else(|| pod.status.as_ref().and_then(|s| s.phase.clone()));
        let mut pinned = reported.filter(|p| p == "Succeeded" || p == "Failed");
        // activeDeadlineSeconds: counted from the pod's startTime (upstream's activeDeadlineHandler).
        let mut pod_reason = None;
        // A disk-backed emptyDir over its sizeLimit evicts the pod (upstream's eviction manager).
        if pinned.is_none() && crate::volume::empty_dir::has_disk_limit(pod) {
            let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
            if let Some(msg) = crate::volume::empty_dir::over_limit(pod, &pod_dir) {
                self.ctx.recorder.warning(pod, None, reason::EVICTED, msg.clone());
                self.eviction = Some(msg);
            }
        }
        // Node pressure: the eviction manager picked this pod (it recorded the event).
        let pressure = self.ctx.eviction.order(&self.uid);
        if let (Some((msg, _)), None, None) = (pressure.as_ref(), pinned.as_ref(), self.eviction.as_ref()) {
            self.eviction = Some(msg.clone());
        }
        let eviction = self.eviction.clone();
        if let (Some(msg), None) = (eviction.as_deref(), pinned.as_ref()) {
            pinned = Some("Failed".into());
            pod_reason = Some((reason::EVICTED, msg));
        }
        // Graceful node shutdown: this pod's group is being stopped.
        let shutdown_grace = self.ctx.shutdown.order(&self.uid);
        if let (Some(_), None) = (shutdown_grace, pinned.as_ref()) {
            pinned = Some("Failed".into());
            pod_reason = Some((crate::shutdown::REASON, crate::shutdown::MESSAGE));
        }
        if let (Some(deadline), None) = (self.active_deadline(pod), pinned.as_ref()) {
            if now() >= deadline {
                self.ctx.recorder.warning(pod, None, reason::DEADLINE_EXCEEDED, DEADLINE_MESSAGE);
                pinned = Some("Failed".into());
                pod_reason = Some((reason::DEADLINE_EXCEEDED, DEADLINE_MESSAGE));
            } else {
                wake = Some(deadline);
            }
        }
        // AppArmor asked for where it cannot be enforced: upstream's soft
        // admission (canRunPod) keeps the pod Pending with reason AppArmor and
        // its containers Blocked, and runs nothing.
        if let (None, Err(e)) = (pinned.as_ref(), super::apparmor::validate(pod, &self.ctx.apparmor_host)) {
            let (sandbox, records, _) = self.observe().await?;
            if let Some(sb) = sandbox.as_ref().filter(|s| s.ready) {
                self.kill_pod_containers(pod, &records, Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).clamp(1, 300) as u64)).await;
                self.stop_sandbox(&records, &sb.id).await;
            }
            for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
                self.waiting.insert(c.name.clone(), Waiting { reason: super::apparmor::BLOCKED.into(), message: String::new() });
            }
            let msg = super::apparmor::message(&e);
            if self.last_status.as_ref().and_then(|s| s.reason.as_deref()) != Some(super::apparmor::REASON) {
                warn!(pod = %pod_key(pod), "{msg}");
            }
            self.write_status_with_phase(pod, None, &[], Some("Pending"), Some((super::apparmor::REASON, &msg)))?;
            return Ok(None);
        }
        // In-place resize: allocate a changed spec's resources when they fit.
        if pinned.is_none() {
            if let Some(retry) = self.allocate(pod) {
                wake = Some(wake.map_or(retry, |w| w.min(retry)));
            }
        }
        // A sync may create the sandbox and then go on to start containers.
        let rounds = 3 + spec.init_containers.as_ref().map(Vec::len).unwrap_or(0);
        let mut volumes: Option<crate::volume::VolumeMap> = None;
        for _round in 0..rounds {
            let (sandbox, records, instances) = self.observe().await?;
            self.gc_instances(&records, &instances).await;
            // A sidecar counts as started once its startup probe passed (pod::prober).
            let health = self.prober.health(pod, &instances);
            let started = |name: &str| super::prober::started(&health, &instances, name);
            let p = plan_with(&spec, &format_pod(pod), &instances, sandbox.as_ref(), &mut self.backoff, now(), &started);
            debug!(?p, "plan");

            if let Some(phase) = pinned.as_deref().or(p.terminal) {
                if let Some(sb) = sandbox.as_ref().filter(|s| s.ready) {
                    info!(phase, "pod finished; stopping its sandbox");
                    // Sidecars (and, for a pinned phase, anything else) may still run.
                    // An eviction for local storage kills at once (upstream: grace period 0).
                    let evicting = pod_reason.map(|(r, _)| r == reason::EVICTED).unwrap_or(false);
                    let grace = match (evicting, pressure.as_ref()) {
                        // The eviction manager's override: 1 s for a hard threshold, evictionMaxPodGracePeriod for a soft one.
                        (true, Some((_, g))) => *g,
                        (true, None) => 1,
                        _ => spec.termination_grace_period_seconds.unwrap_or(30).clamp(1, 300) as u64,
                    };
                    // Node shutdown: the group's grace period (or the pod's own, when shorter).
                    let grace = shutdown_grace.map(|g| g.as_secs().max(1)).unwrap_or(grace);
                    self.kill_pod_containers(pod, &records, Duration::from_secs(grace)).await;
                    self.stop_sandbox(&records, &sb.id).await;
                }
                // Report what the kill left: containers terminated, sandbox not ready.
                let (sandbox, instances) = match self.observe().await {
                    Ok((sb, _, inst)) => (sb.or(sandbox), inst),
                    Err(_) => (sandbox, instances),
                };
                let sb = sandbox.map(|s| SandboxState { ready: false, ..s });
                // An evicted pod gives its disk back at once: its volumes are torn
                // down (upstream's volume manager unmounts a terminated pod's volumes).
                if pod_reason.is_some_and(|(r, _)| r == reason::EVICTED) {
                    if let Err(e) = crate::volume::teardown(&super::store::pod_dir(&self.ctx.config.root_dir, &self.uid)) {
                        warn!(error = %e, "volume teardown of the evicted pod failed");
                    }
                }
                self.unregister_objects();
                self.unpublish_allocation();
                self.write_status_with_phase(pod, sb.as_ref(), &instances, pinned.as_deref(), pod_reason)?;
                if shutdown_grace.is_some() {
                    self.ctx.shutdown.stopped(&self.uid);
                }
                if pressure.is_some() {
                    self.ctx.eviction.stopped(&self.uid);
                }
                return Ok(None);
            }

            // Volumes before the sandbox and any container, as upstream's syncPod
            // waits for them (a pod that cannot mount gets no sandbox and no IP);
            // once per sync (idempotent). The ConfigMaps and Secrets the pod
            // references are registered first, so the cache watches them (no-op if unchanged).
            if volumes.is_none() {
                if let Some(objects) = &self.ctx.objects {
                    objects.register_pod(pod);
                }
                let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
                let vcx = crate::volume::SetupContext {
                    client: self.ctx.client.as_ref(),
                    objects: self.ctx.objects.as_ref(),
                    host: self.ctx.allocatable,
                };
                match crate::volume::setup(pod, &pod_dir, &vcx).await {
                    Ok(v) => volumes = Some(v),
                    Err(e) => {
                        self.ctx.recorder.warning(pod, None, reason::FAILED_MOUNT, e.to_string());
                        self.write_status(pod, sandbox.as_ref(), &instances)?;
                        return Ok(Some(Duration::from_secs(5)));
                    }
                }
            }

            if p.create_sandbox {
                if sandbox.is_some() {
                    pod_event_sandbox_changed(&self.ctx, pod);
                    self.kill_pod_containers(pod, &records, Duration::from_secs(2)).await;
                    for r in records.iter().filter(|r| r.label(labels::KIND) == Some(KIND_SANDBOX)) {
                        self.stop_sandbox(&records, &r.id).await;
                        let _ = self.ctx.containers.delete_container(&r.id).await;
                    }
                    // Containers of a dead sandbox are history; their restart counts carry on.
                }
                let t = Instant::now();
                let created = self.create_sandbox(pod).await;
                self.ctx.metrics.operation("run_podsandbox", t.elapsed(), created.is_ok());
                match created {
                    Ok(()) => {
                        self.sandbox_failures = 0;
                        continue;
                    }
                    Err(e) => {
                        self.sandbox_failures += 1;
                        self.ctx.recorder.warning(pod, None, reason::FAILED_CREATE_POD_SANDBOX, format!("Failed to create pod sandbox: {e}"));
                        self.write_status(pod, None, &instances)?;
                        let secs = (5u64 << self.sandbox_failures.min(6)).min(300);
                        return Ok(Some(Duration::from_secs(secs)));
                    }
                }
            }
            let sandbox = sandbox.expect("plan creates the sandbox when there is none");
            let volumes = volumes.as_ref().expect("volumes are set up before the sandbox");
            if !p.kill.is_empty() {
                self.kill_changed(pod, &records, &p.kill, false).await;
                // Observe the exits and start the new definitions.
                continue;
            }
            // In-place resize: running containers get their allocated resources.
            let (restart, updated) = self.actuate(pod, &instances).await;
            if !restart.is_empty() {
                self.kill_changed(pod, &records, &restart, true).await;
                continue;
            }
            if updated {
                continue;
            }

            for (name, msg) in &p.crash_loop {
                let attempt = latest(&instances, name, Kind::App).or_else(|| latest(&instances, name, Kind::Init)).map(|i| i.attempt).unwrap_or(0);
                if self.reported_backoff.insert((name.clone(), attempt)) {
                    let init = latest(&instances, name, Kind::App).is_none();
                    self.ctx.recorder.warning(
                        pod,
                        field_path(name, init),
                        reason::BACK_OFF,
                        format!("Back-off restarting failed container {} in pod {}", name, format_pod(pod)),
                    );
                }
                self.waiting.insert(name.clone(), Waiting { reason: "CrashLoopBackOff".into(), message: msg.clone() });
            }
            wake = match (wake, p.wake_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };

            let mut started_sidecar = false;
            let mut fresh = Vec::new();
            for Start { name, kind } in &p.start {
                self.waiting.remove(name);
                let attempt = latest(&instances, name, *kind).map(|i| i.attempt + 1).unwrap_or(0);
                match self.start_container(pod, &sandbox, name, *kind, attempt, volumes).await {
                    Started::Running(i) => fresh.push(*i),
                    Started::Not(Some(retry)) => wake = Some(wake.map_or(retry, |w| w.min(retry))),
                    Started::Not(None) => {}
                }
                if *kind == Kind::Init {
                    // A sidecar keeps running (no exit wakes us): plan again right away.
                    started_sidecar = container_of(pod, name, Kind::Init).as_ref().map(super::plan::is_sidecar).unwrap_or(false);
                    break;
                }
            }
            if started_sidecar {
                continue;
            }
            // What this round started is known: report it at once. containerd is asked
            // again only when a start went wrong (its record holds the outcome);
            // under a burst of pod starts a listing costs up to ~100 ms.
            if fresh.len() == p.start.len() {
                let mut instances = instances;
                instances.extend(fresh);
                self.write_status(pod, Some(&sandbox), &instances)?;
            } else {
                let (sandbox, _, instances) = self.observe().await?;
                self.write_status(pod, sandbox.as_ref(), &instances)?;
            }
            break;
        }
        // Disk-backed emptyDirs with a sizeLimit are measured every 10 s (upstream's housekeeping).
        if crate::volume::empty_dir::has_disk_limit(pod) {
            let next = now() + chrono::Duration::seconds(10);
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        // The first status may have just set startTime: wake at the deadline.
        if let Some(d) = self.active_deadline(pod) {
            wake = Some(wake.map_or(d, |w| w.min(d)));
        }
        Ok(wake.map(|w| (w - now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(50)))
    }

    /// When the pod passes its `activeDeadlineSeconds`, counted from its startTime.
    fn active_deadline(&self, pod: &Pod) -> Option<DateTime<Utc>> {
        let secs = pod.spec.as_ref()?.active_deadline_seconds?;
        let start = self.last_status.as_ref().or(pod.status.as_ref())?.start_time.as_ref()?;
        deadline_after(start.0.as_second(), secs)
    }

    /// In-place resize, step 1 (upstream's allocation manager): the first sync
    /// allocates the admitted spec; a later spec asking for other resources is
    /// allocated when it fits (`ResizeStarted`), or the pod gets
    /// `PodResizePending` (Deferred: retried every 30 s and on changes; Infeasible:
    /// only when the spec changes again). Returns when to retry.
    fn allocate(&mut self, pod: &Pod) -> Option<DateTime<Utc>> {
        use super::resize::{self, Decision};
        let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
        let generation = pod.metadata.generation.unwrap_or(0);
        let Some(current) = self.allocation.as_ref() else {
            let a = resize::desired(pod);
            if let Err(e) = resize::save(&pod_dir, &a) {
                warn!(error = %e, "cannot checkpoint the pod's allocated resources");
            }
            self.publish_allocation(pod, &a);
            self.allocation = Some(a);
            return None;
        };
        self.publish_allocation(pod, &current.clone());
        if !resize::differs(pod, current) {
            self.resize_pending = None;
            return None;
        }
        let infeasible_already = self.resize_pending.as_ref().is_some_and(|c| c.reason.as_deref() == Some(resize::INFEASIBLE) && c.observed_generation == Some(generation));
        if infeasible_already {
            return None;
        }
        let others = self.ctx.allocated.lock().map(|m| m.iter().filter(|(u, _)| **u != self.uid).fold((0, 0), |a, (_, r)| (a.0 + r.0, a.1 + r.1))).unwrap_or_default();
        let want = super::admission::pod_requests(pod);
        let rec = self.ctx.recorder.clone();
        match resize::decide(want, others, &self.ctx.node) {
            Decision::Accept => {
                let a = resize::desired(pod);
                if let Err(e) = resize::save(&pod_dir, &a) {
                    warn!(error = %e, "cannot checkpoint the pod's allocated resources");
                    return Some(now() + chrono::Duration::seconds(5));
                }
                info!(generation, "pod resize allocated");
                self.publish_allocation(pod, &a);
                self.allocation = Some(a);
                self.resize_pending = None;
                self.resize_in_progress = Some(resize_condition(resize::IN_PROGRESS, None, None, generation, self.resize_in_progress.as_ref()));
                rec.normal(pod, None, reason::RESIZE_STARTED, resize::event_message("Pod resize started", pod, generation, ""));
                None
            }
            Decision::Pending(why, msg) => {
                let same = self.resize_pending.as_ref().is_some_and(|c| c.reason.as_deref() == Some(why) && c.message.as_deref() == Some(msg.as_str()) && c.observed_generation == Some(generation));
                if !same {
                    info!(generation, reason = why, message = %msg, "pod resize pending");
                    let event = if why == resize::INFEASIBLE { reason::RESIZE_INFEASIBLE } else { reason::RESIZE_DEFERRED };
                    rec.warning(pod, None, event, resize::event_message(&format!("Pod resize {why}"), pod, generation, &msg));
                    self.resize_pending = Some(resize_condition(resize::PENDING, Some(why), Some(msg), generation, self.resize_pending.as_ref()));
                }
                (why == resize::DEFERRED).then(|| now() + chrono::Duration::seconds(30))
            }
        }
    }

    /// Makes the pod's allocated requests known to other pods' resizes.
    fn publish_allocation(&self, pod: &Pod, a: &super::resize::Allocation) {
        let (cpu, mem) = super::admission::pod_requests(&super::resize::allocated_pod(pod, a));
        if let Ok(mut m) = self.ctx.allocated.lock() {
            m.insert(self.uid.clone(), (cpu, mem, crate::cgroups::qos_class(pod)));
        }
    }

    /// The pod's cgroup with its allocated resources (summed limits, pids), then
    /// the QoS cgroups' shares.
    async fn ensure_pod_cgroup(&self, pod: &Pod) -> Result<(), crate::cgroups::pods::CgroupError> {
        let allocated = match &self.allocation {
            Some(a) => super::resize::allocated_pod(pod, a),
            None => pod.clone(),
        };
        let cfg = self.ctx.cgroups.config(&allocated);
        self.ctx.cgroups.ensure_pod(crate::cgroups::qos_class(pod), &self.uid, &cfg).await?;
        self.update_qos_cgroups().await;
        Ok(())
    }

    /// The burstable QoS cgroup's shares follow its pods' cpu requests.
    async fn update_qos_cgroups(&self) {
        let burstable = self.ctx.allocated.lock().map(|m| m.values().filter(|v| v.2 == crate::cgroups::QosClass::Burstable).map(|v| v.0).sum()).unwrap_or(0);
        if let Err(e) = self.ctx.cgroups.update_qos(burstable).await {
            warn!(error = %e, "cannot update the QoS cgroups");
        }
    }

    fn unpublish_allocation(&self) {
        if let Ok(mut m) = self.ctx.allocated.lock() {
            m.remove(&self.uid);
        }
    }

    /// In-place resize, step 2 (kuberuntime's doPodResizeAction): running
    /// resizable containers get their allocated cpu and memory, in place through
    /// containerd, or — when their `resizePolicy` says RestartContainer for a
    /// changed resource — by a restart: returned as (id, name) to kill. True in
    /// the second value when a container was updated.
    async fn actuate(&mut self, pod: &Pod, instances: &[Instance]) -> (Vec<(String, String)>, bool) {
        use super::resize::{self, Applied};
        let Some(alloc) = self.allocation.clone() else { return (Vec::new(), false) };
        let (mut restart, mut updated, mut error) = (Vec::new(), false, None);
        let behind = instances.iter().any(|i| i.is_running() && i.resources.is_some_and(|a| a != Applied::of(alloc.get(&i.name))) && container_of(pod, &i.name, i.kind).is_some_and(|c| resize::resizable(&c, i.kind)));
        if behind {
            // The pod cgroup's summed limits follow the allocation first.
            if let Err(e) = self.ensure_pod_cgroup(pod).await {
                warn!(error = %e, "cannot resize the pod cgroup");
            }
        }
        for i in instances.iter().filter(|i| i.is_running()) {
            let Some(c) = container_of(pod, &i.name, i.kind).filter(|c| resize::resizable(c, i.kind)) else { continue };
            // An instance started by an older agent: what it has is unknown.
            let Some(actual) = i.resources else { continue };
            let target = Applied::of(alloc.get(&i.name));
            if actual == target {
                continue;
            }
            let changed = resize::changes(&actual, &target);
            if resize::needs_restart(&c, changed) {
                restart.push((i.id.clone(), i.name.clone()));
                continue;
            }
            match self.ctx.containers.update_resources(&i.id, &target.linux_resources()).await {
                Ok(()) => {
                    info!(container = %i.name, id = %i.id, ?target, "container resources updated in place");
                    let label = serde_json::to_string(&target).unwrap_or_default();
                    if let Err(e) = self.ctx.containers.set_labels(&i.id, &[(labels::RESOURCES, label)]).await {
                        warn!(container = %i.name, error = %e, "cannot record the container's new resources");
                    }
                    updated = true;
                }
                Err(e) => {
                    warn!(container = %i.name, error = %e, "updating the container's resources failed; will retry");
                    error = Some(e.to_string());
                }
            }
        }
        let generation = self.resize_in_progress.as_ref().and_then(|c| c.observed_generation).or(pod.metadata.generation).unwrap_or(0);
        match error {
            Some(msg) => self.resize_in_progress = Some(resize_condition(resize::IN_PROGRESS, Some(resize::ERROR), Some(msg), generation, self.resize_in_progress.as_ref())),
            None if self.resize_in_progress.as_ref().is_some_and(|c| c.reason.is_some()) => {
                self.resize_in_progress = Some(resize_condition(resize::IN_PROGRESS, None, None, generation, self.resize_in_progress.as_ref()));
            }
            None => {}
        }
        (restart, updated)
    }

    /// In-place resize, step 3: `PodResizeInProgress` while a running resizable
    /// container's resources differ from its allocation (set again after an
    /// agent restart), cleared with `ResizeCompleted` once none does. The resize
    /// conditions the status carries.
    fn resize_conditions(&mut self, pod: &Pod, instances: &[Instance]) -> Vec<PodCondition> {
        use super::resize::{self, Applied};
        if let Some(alloc) = self.allocation.as_ref() {
            let behind = instances.iter().filter(|i| i.is_running()).any(|i| {
                container_of(pod, &i.name, i.kind).is_some_and(|c| resize::resizable(&c, i.kind)) && i.resources.is_some_and(|a| a != Applied::of(alloc.get(&i.name)))
            });
            if behind && self.resize_in_progress.is_none() {
                self.resize_in_progress = Some(resize_condition(resize::IN_PROGRESS, None, None, pod.metadata.generation.unwrap_or(0), None));
            } else if !behind {
                if let Some(c) = self.resize_in_progress.take() {
                    let generation = c.observed_generation.unwrap_or(0);
                    info!(generation, "pod resize completed");
                    let allocated = resize::allocated_pod(pod, alloc);
                    self.ctx.recorder.normal(pod, None, reason::RESIZE_COMPLETED, resize::event_message("Pod resize completed", &allocated, generation, ""));
                }
            }
        }
        self.resize_pending.iter().chain(self.resize_in_progress.iter()).cloned().collect()
    }

    /// Keeps the newest two instances of each container (current + lastState),
    /// deleting older dead ones like the kubelet's container GC.
    async fn gc_instances(&mut self, records: &[ContainerRecord], instances: &[Instance]) {
        for i in instances.iter().filter(|i| !i.is_running()) {
            let newer = instances.iter().filter(|o| o.name == i.name && o.kind == i.kind && o.attempt > i.attempt).count();
            if newer >= 2 && records.iter().any(|r| r.id == i.id) {
                let _ = self.ctx.containers.delete_container(&i.id).await;
                crate::runtime::stdio::remove(&self.ctx.config.root_dir, &self.uid, &i.id);
                crate::logs::unlink_container_logs(|id| id == i.id);
                self.ctx.router.unregister(&i.id);
                self.registered.remove(&i.id);
            }
        }
    }

    fn write_status(&mut self, pod: &Pod, sandbox: Option<&SandboxState>, instances: &[Instance]) -> std::io::Result<()> {
        self.write_status_with_phase(pod, sandbox, instances, None, None)
    }

    /// Computes, saves and reports the status; `phase` pins a terminal phase and
    /// `pod_reason` gives the pod its reason and message (kept once reported).
    fn write_status_with_phase(
        &mut self,
        pod: &Pod,
        sandbox: Option<&SandboxState>,
        instances: &[Instance],
        phase: Option<&str>,
        pod_reason: Option<(&str, &str)>,
    ) -> std::io::Result<()> {
        self.prober.sync(pod, sandbox, instances);
        let health = self.prober.health(pod, instances);
        let resize = if phase.is_some() { Vec::new() } else { self.resize_conditions(pod, instances) };
        let mut status = compute(&StatusInput {
            allocation: self.allocation.as_ref(),
            resize: &resize,
            pod,
            sandbox,
            instances,
            waiting: &self.waiting,
            health: &health,
            host_ip: self.ctx.host_ip.as_deref(),
            // Before our first report, the API's copy (e.g. the scheduler's PodScheduled time).
            previous: self.last_status.as_ref().or(pod.status.as_ref()),
            now: now(),
        });
        if let Some(p) = phase {
            status.phase = Some(p.to_string());
            let before = self.last_status.as_ref().or(pod.status.as_ref()).filter(|s| s.phase.as_deref() == Some(p));
            // The kubelet's own disruptions (eviction, node shutdown) mark the pod
            // as upstream does: DisruptionTarget, TerminationByKubelet; kept on
            // later reports of the pinned phase.
            let ours = |c: &&k8s_openapi::api::core::v1::PodCondition| c.type_ == super::status::DISRUPTION_TARGET && c.reason.as_deref() == Some(super::status::TERMINATION_BY_KUBELET);
            let kept = before.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(ours)).cloned();
            let fresh = pod_reason.filter(|(r, _)| *r == reason::EVICTED || *r == crate::shutdown::REASON).map(|(_, m)| k8s_openapi::api::core::v1::PodCondition {
                type_: super::status::DISRUPTION_TARGET.into(),
                status: "True".into(),
                reason: Some(super::status::TERMINATION_BY_KUBELET.into()),
                message: Some(m.to_string()),
                last_transition_time: Some(super::k8s_time(now())),
                ..Default::default()
            });
            if let Some(c) = kept.or(fresh) {
                let conds = status.conditions.get_or_insert_with(Vec::new);
                if !conds.iter().any(|x| x.type_ == super::status::DISRUPTION_TARGET) {
                    conds.push(c);
                }
            }
            match pod_reason {
                Some((r, m)) => (status.reason, status.message) = (Some(r.into()), Some(m.into())),
                None => (status.reason, status.message) = (before.and_then(|s| s.reason.clone()), before.and_then(|s| s.message.clone())),
            }
        }
        if self.last_status.as_ref() == Some(&status) && self.status_saved {
            return Ok(());
        }
        self.ctx.status.set(pod, &status);
        let all_running = status.container_statuses.as_ref().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())));
        if self.started_any && !self.start_measured && status.phase.as_deref() == Some("Running") && all_running {
            self.start_measured = true;
            self.ctx.metrics.pod_started(self.seen_at.elapsed());
        }
        if self.last_status.as_ref().and_then(|s| s.phase.clone()) != status.phase {
            info!(pod = %pod_key(pod), phase = status.phase.as_deref().unwrap_or(""), "pod phase");
        }
        let mut out = pod.clone();
        out.status = Some(status.clone());
        // fsync'd: off the runtime's two worker threads, which a slow disk would stall.
        tokio::task::block_in_place(|| super::store::save_pod(&self.ctx.config.root_dir, &out))?;
        self.last_status = Some(status);
        self.status_saved = true;
        Ok(())
    }

    async fn ensure_pause_image(&self) -> Result<ImageInfo, ImageError> {
        self.ctx.images.ensure(&self.ctx.config.pause_image, PullPolicy::IfNotPresent).await
    }

    /// Creates the network namespace, runs CNI ADD, writes the pod's hosts files and
    /// starts the pause container. Undoes what it did on failure.
    async fn create_sandbox(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let started = Instant::now();
        let spec = pod.spec.clone().unwrap_or_default();
        // The RuntimeClass's handler first (upstream looks it up before anything
        // else); standalone, without RuntimeClasses, the default runtime.
        let handler = match (spec.runtime_class_name.as_deref().filter(|n| !n.is_empty()), &self.ctx.runtime_classes) {
            (Some(name), Some(classes)) => classes.handler(name).map_err(anyhow::Error::msg)?,
            _ => String::new(),
        };
        let runtime = self.runtime_type(&handler).map_err(anyhow::Error::msg)?;
        // The pod cgroup before its first container (upstream's EnsureExists in syncPod).
        self.ensure_pod_cgroup(pod).await.map_err(|e| anyhow::anyhow!("failed to ensure that the pod: {} cgroups exist and are correctly applied: {e}", self.uid))?;
        let host_network = spec.host_network.unwrap_or(false);
        let id = random_id();
        let image = self.ensure_pause_image().await?;
        let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
        tokio::fs::create_dir_all(&pod_dir).await?;

        let mut netns_path: Option<PathBuf> = None;
        let mut ips: Vec<String> = Vec::new();
        if !host_network {
            let ns = netns::create_async(&netns::generate_name()).await?;
            netns_path = Some(ns.path.clone());
            let net = PodNetwork {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: self.uid.clone(),
                sandbox_id: id.clone(),
                netns: ns.path.clone(),
                ifname: "eth0".into(),
                port_mappings: host_ports(pod),
            };
            match self.ctx.cni.setup(&net).await {
                Ok(r) => ips = r.ips.iter().map(|ip| ip.to_string()).collect(),
                Err(e) => {
                    let _ = netns::remove_async(&ns.path).await;
                    return Err(anyhow::anyhow!("failed to setup network for sandbox {id:?}: {e}"));
                }
            }
        } else if let Some(h) = &self.ctx.host_ip {
            ips.push(h.clone());
        }

        let res = self.start_pause(pod, &id, &image, netns_path.as_deref(), &ips, &pod_dir, (&handler, &runtime)).await;
        if let Err(e) = res {
            if netns_path.is_some() {
                let _ = self.ctx.cni.teardown(&id, netns_path.as_deref()).await;
            }
            if let Some(p) = &netns_path {
                let _ = netns::remove_async(p).await;
            }
            let _ = self.ctx.containers.delete_container(&id).await;
            return Err(e);
        }
        info!(sandbox = %id, ips = ?ips, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox ready");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // one call site
    async fn start_pause(&mut self, pod: &Pod, id: &str, image: &ImageInfo, netns: Option<&Path>, ips: &[String], pod_dir: &Path, (handler, runtime): (&str, &str)) -> anyhow::Result<()> {
        let dns = &self.ctx.dns;
        let (hostname, domain) = super::dns::hostname_and_domain(pod, dns.cluster_domain.as_deref());
        let kernel_hostname = super::dns::kernel_hostname(pod, &hostname, domain.as_deref()).map_err(anyhow::Error::msg)?;
        let host_resolv = match &dns.resolv_conf {
            Some(p) => tokio::fs::read_to_string(p).await.unwrap_or_else(|e| {
                warn!(path = %p.display(), error = %e, "cannot read the resolver configuration");
                String::new()
            }),
            None => String::new(),
        };
        let (dns_config, warnings) = dns.pod_dns(pod, &host_resolv);
        for w in warnings {
            warn!(pod = %pod_key(pod), reason = w.reason, "{}", w.message);
            self.ctx.recorder.warning(pod, None, w.reason, w.message);
            if let Some(m) = w.node_message {
                self.ctx.recorder.node(&self.ctx.config.node_name, "Warning", w.reason, m);
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let aliases: Vec<(String, Vec<String>)> = spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect();
        tokio::task::block_in_place(|| -> std::io::Result<()> {
            super::store::write_atomic(&pod_dir.join("etc-hosts"), super::store::hosts_file(ips.first().map(String::as_str), &hostname, domain.as_deref(), &aliases).as_bytes())?;
            super::store::write_atomic(&pod_dir.join("resolv.conf"), super::dns::render(&dns_config, &host_resolv).as_bytes())?;
            super::store::write_atomic(&pod_dir.join("hostname"), format!("{kernel_hostname}\n").as_bytes())
        })?;
        ensure_shm(&pod_dir.join("shm"))?;

        let qos = crate::cgroups::qos_class(pod);
        let (own, cap) = self.ctx.oom;
        // The pod-level seccomp profile, as containerd's RunPodSandbox applies it.
        let seccomp_dir = self.ctx.config.root_dir.join(crate::runtime::seccomp::PROFILE_DIR);
        let profile = crate::runtime::seccomp::resolve_sandbox(pod, &seccomp_dir, self.ctx.config.seccomp_default)?;
        let privileged = crate::runtime::seccomp::has_privileged_container(pod);
        let caps: Vec<String> = spec::DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        let seccomp = crate::runtime::seccomp::linux_seccomp(&profile, privileged, &caps, crate::kernel::KernelVersion::current())?;
        let oci = spec::sandbox_spec(&SandboxInput {
            pod,
            image: image.config.config().as_ref().unwrap_or(&Default::default()),
            netns,
            hostname: &kernel_hostname,
            cgroups_path: self.ctx.cgroups.container_cgroups_path(qos, &self.uid, id),
            oom_score_adj: crate::cgroups::restrict_oom_score_adj(crate::cgroups::POD_INFRA_OOM_ADJ, own, cap),
            seccomp,
        })?;
        let mut l = self.base_labels(pod);
        l.insert(labels::KIND.into(), KIND_SANDBOX.into());
        l.insert(labels::POD_IPS.into(), ips.join(","));
        l.insert(labels::CREATED_AT.into(), now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        if let Some(n) = netns {
            l.insert(labels::NETNS.into(), n.display().to_string());
        }
        l.insert(labels::RUNTIME_HANDLER.into(), handler.to_string());
        let mounts = self
            .ctx
            .containers
            .create(&NewContainer { id, image: &image.name, chain_id: &image.chain_id, spec: &oci, labels: l, log_uri: String::new(), read_only_rootfs_view: false, runtime, systemd_cgroup: self.systemd_cgroup() })
            .await?;
        self.register(id);
        self.ctx.containers.start_task(id, mounts, &Default::default()).await?;
        Ok(())
    }

    /// Kills running containers whose definition changed ("Container c definition
    /// changed, will be restarted") and marks them, so the plan starts them again.
    /// Kills running containers to restart them at once (whatever the restart
    /// policy and back-off): their definition changed, or (`resize`) their
    /// resizePolicy restarts them for a resize.
    async fn kill_changed(&self, pod: &Pod, records: &[ContainerRecord], kill: &[(String, String)], resize: bool) {
        let pod_ip = super::lifecycle::pod_ip(records);
        let grace = super::lifecycle::pod_grace(pod);
        for (id, name) in kill {
            let Some(r) = records.iter().find(|r| r.id == *id) else { continue };
            let kind = kind_of(r);
            let Some(c) = container_of(pod, name, kind) else { continue };
            let message = if resize {
                info!(container = %name, "container resize requires a restart");
                format!("Container {name} resize requires restart")
            } else {
                info!(container = %name, "container definition changed; restarting it");
                format!("Container {name} definition changed, will be restarted")
            };
            super::lifecycle::kill_container(&self.ctx, pod, r, &c, kind, grace, Some(message), pod_ip.as_deref()).await;
            if let Err(e) = self.ctx.containers.set_labels(id, &[(labels::DEFINITION_CHANGED, "true".into())]).await {
                warn!(container = %name, error = %e, "cannot mark the changed container");
            }
        }
    }

    /// The containerd runtime of a handler, or containerd CRI's error for one not configured.
    fn runtime_type(&self, handler: &str) -> Result<String, String> {
        self.ctx.config.runtime_handlers.get(handler).cloned().ok_or_else(|| format!("rpc error: code = Unknown desc = failed to get sandbox runtime: no runtime for {handler:?} is configured"))
    }

    fn systemd_cgroup(&self) -> bool {
        self.ctx.cgroups.driver == crate::cgroups::CgroupDriver::Systemd
    }

    fn base_labels(&self, pod: &Pod) -> HashMap<String, String> {
        let mut l = HashMap::new();
        l.insert(labels::MANAGED_BY.into(), "rkubelet".into());
        l.insert(labels::NODE.into(), self.ctx.config.node_name.clone());
        l.insert(labels::POD_UID.into(), self.uid.clone());
        l.insert(labels::POD_NAME.into(), pod.metadata.name.clone().unwrap_or_default());
        l.insert(labels::POD_NAMESPACE.into(), pod.metadata.namespace.clone().unwrap_or_default());
        l
    }

    /// Pulls (per policy and back-off), builds the spec, creates and starts one
    /// container. Returns when to retry if it was held back.
    async fn start_container(
        &mut self,
        pod: &Pod,
        sandbox: &SandboxState,
        name: &str,
        kind: Kind,
        attempt: u32,
        volumes: &crate::volume::VolumeMap,
    ) -> Started {
        // With its allocated resources (an in-place resize may not be allocated yet).
        let Some(c) = container_of(pod, name, kind).map(|c| super::resize::with_allocation(c, self.allocation.as_ref())) else { return Started::Not(None) };
        let applied = super::resize::Applied::of(c.resources.as_ref());
        let fp = event_field_path(name, kind);
        let rec = self.ctx.recorder.clone();
        let image_ref = c.image.clone().unwrap_or_default();

        // Image, with ImagePullBackOff.
        let image = match self.pull(pod, &c, fp.clone()).await {
            Ok(i) => i,
            Err(retry) => return Started::Not(retry),
        };

        // Config: env (ConfigMaps/Secrets read first), user, mounts, spec.
        let id = random_id();
        let env_objects = match &self.ctx.objects {
            Some(o) => Some(super::env::fetch(pod, &c, o).await),
            None => None,
        };
        let users = self.image_users(&image).await;
        // An ephemeral container with a target joins the target's process namespace.
        let mut target_pid = None;
        if let Some(target) = (kind == Kind::Ephemeral).then(|| super::ephemeral_target(pod, name)).flatten() {
            let records = self.ctx.containers.list(Some(&self.uid)).await.unwrap_or_default();
            target_pid = records.iter().filter(|r| r.label(labels::CONTAINER_NAME) == Some(target) && kind_of(r) != Kind::Ephemeral).find_map(|r| match r.task {
                TaskState::Running { pid } => Some(pid),
                _ => None,
            });
            if target_pid.is_none() {
                let msg = format!("container {target:?} to target is not running");
                self.waiting.insert(name.into(), Waiting { reason: "CreateContainerConfigError".into(), message: msg.clone() });
                rec.warning(pod, fp, reason::FAILED, format!("Error: {msg}"));
                return Started::Not(Some(now() + chrono::Duration::seconds(2)));
            }
        }
        let built = self.build_container_spec(pod, sandbox, &c, &image, &users, target_pid, volumes, &id, env_objects.as_ref());
        let (oci, stop_signal, termination_log) = match built {
            Ok(v) => v,
            Err(msg) => {
                rec.warning(pod, fp, reason::FAILED, format!("Error: {msg}"));
                self.waiting.insert(name.into(), Waiting { reason: "CreateContainerConfigError".into(), message: msg });
                return Started::Not(Some(now() + chrono::Duration::seconds(10)));
            }
        };

        let log_path = self.log_path(pod, name, attempt);
        if let Some(dir) = log_path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let mut l = self.base_labels(pod);
        l.insert(labels::KIND.into(), kind_label(kind).into());
        l.insert(labels::CONTAINER_NAME.into(), name.into());
        l.insert(labels::ATTEMPT.into(), attempt.to_string());
        l.insert(labels::IMAGE.into(), image_ref.clone());
        l.insert(labels::IMAGE_ID.into(), image_id(&image));
        self.ctx.image_usage.used(&image.target_digest);
        l.insert(labels::LOG_PATH.into(), log_path.display().to_string());
        l.insert(labels::CREATED_AT.into(), now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        l.insert(STOP_SIGNAL.into(), stop_signal.to_string());
        l.insert(labels::SPEC_HASH.into(), super::plan::container_hash(&c));
        l.insert(labels::RESOURCES.into(), serde_json::to_string(&applied).unwrap_or_default());
        if let Some(f) = &termination_log {
            l.insert(labels::TERMINATION_LOG.into(), f.display().to_string());
        }
        if c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError") {
            l.insert(labels::TERMINATION_POLICY.into(), "FallbackToLogsOnError".into());
        }
        let t = Instant::now();
        let created = self
            .ctx
            .containers
            .create(&NewContainer { id: &id, image: &image.name, chain_id: &image.chain_id, spec: &oci, labels: l, log_uri: String::new(), read_only_rootfs_view: false, runtime: &self.runtime_type(&sandbox.handler).unwrap_or_else(|_| crate::config::DEFAULT_RUNTIME_TYPE.into()), systemd_cgroup: self.systemd_cgroup() })
            .await;
        self.ctx.metrics.operation("create_container", t.elapsed(), created.is_ok());
        let mounts = match created {
            Ok(m) => m,
            Err(e) => {
                rec.warning(pod, fp, reason::FAILED, format!("Error: {e}"));
                self.waiting.insert(name.into(), Waiting { reason: "CreateContainerError".into(), message: e.to_string() });
                return Started::Not(Some(now() + chrono::Duration::seconds(10)));
            }
        };
        rec.normal(pod, fp.clone(), reason::CREATED, "Container created");
        self.register(&id);
        // Our logger runs next to the container (CRI format, rotation); a
        // container with stdin gets a FIFO for /attach.
        let spec = crate::logs::driver::Spec {
            path: log_path.clone(),
            max_size: self.ctx.config.container_log_max_size,
            max_files: self.ctx.config.container_log_max_files as usize,
        };
        let stdio = match crate::runtime::stdio::prepare(&self.ctx.config.root_dir, &self.uid, &id, &spec, c.stdin == Some(true), c.tty == Some(true)) {
            Ok(s) => s,
            Err(e) => {
                rec.warning(pod, fp, reason::FAILED, format!("Error: {e}"));
                self.waiting.insert(name.into(), Waiting { reason: "CreateContainerError".into(), message: e.to_string() });
                let _ = self.ctx.containers.delete_container(&id).await;
                return Started::Not(Some(now() + chrono::Duration::seconds(10)));
            }
        };
        crate::logs::link_container_log(pod, name, &id, &log_path);
        let t = Instant::now();
        let started = self.ctx.containers.start_task(&id, mounts, &stdio.task).await;
        self.ctx.metrics.operation("start_container", t.elapsed(), started.is_ok());
        match started {
            Ok(pid) => {
                stdio.started();
                self.started_any = true;
                let started_at = now();
                let _ = self.ctx.containers.set_labels(&id, &[(labels::STARTED_AT, started_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))]).await;
                rec.normal(pod, fp, reason::STARTED, "Container started");
                info!(container = name, id = %id, pid, attempt, "container started");
                let pod_ip = sandbox.ips.first().map(String::as_str);
                let abort = super::lifecycle::until_deleted(self.spec_rx.clone(), self.cancel.clone());
                if let Some(msg) = super::lifecycle::post_start(&self.ctx, pod, &c, kind, &id, pod_ip, abort).await {
                    self.waiting.insert(name.into(), Waiting { reason: "PostStartHookError".into(), message: msg });
                    self.notify.notify_one();
                    return Started::Not(None);
                }
                // As observe() would read it back from the labels.
                Started::Running(Box::new(Instance {
                    id,
                    name: name.to_string(),
                    kind,
                    attempt,
                    image: image_ref,
                    image_id: image_id(&image),
                    state: InstanceState::Running { started_at },
                    hash: Some(super::plan::container_hash(&c)),
                    changed: false,
                    resources: Some(applied),
                }))
            }
            Err(e) => {
                stdio.failed().await;
                // Upstream reports this as a terminated instance: exit 128, StartError.
                let msg = e.to_string();
                rec.warning(pod, fp, reason::FAILED, format!("Error: {msg}"));
                let t = now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                let _ = self
                    .ctx
                    .containers
                    .set_labels(&id, &[(labels::EXIT_CODE, "128".into()), (labels::REASON, "StartError".into()), (labels::MESSAGE, msg), (labels::FINISHED_AT, t.clone()), (labels::STARTED_AT, t)])
                    .await;
                let _ = self.ctx.containers.delete_task(&id).await;
                self.notify.notify_one();
                Started::Not(None)
            }
        }
    }

    fn log_path(&self, pod: &Pod, name: &str, attempt: u32) -> PathBuf {
        self.ctx.config.pod_logs_dir.join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
            self.uid
        ))
        .join(name)
        .join(format!("{attempt}.log"))
    }

    /// Ensures the container's image per its pull policy, recording upstream's
    /// events and waiting reasons. Err(Some(t)) means retry at t.
    async fn pull(&mut self, pod: &Pod, c: &Container, fp: Option<String>) -> Result<ImageInfo, Option<DateTime<Utc>>> {
        let image = c.image.clone().unwrap_or_default();
        let name = c.name.clone();
        let policy = PullPolicy::from_k8s(c.image_pull_policy.as_deref(), &image);
        let rec = self.ctx.recorder.clone();
        let key = image.clone();
        let pull_secrets = self.pull_secrets(pod).await;
        let t = now();
        if let Some((failed_at, err)) = self.image_failures.get(&key).cloned() {
            if let Some(until) = self.image_backoff.in_backoff_since(&key, failed_at, t) {
                rec.normal(pod, fp.clone(), reason::BACK_OFF, format!("Back-off pulling image {image:?}"));
                rec.warning(pod, fp, reason::FAILED, "Error: ImagePullBackOff");
                self.waiting.insert(
                    name,
                    Waiting { reason: "ImagePullBackOff".into(), message: format!("Back-off pulling image {image:?}: ErrImagePull: {err}") },
                );
                return Err(Some(until));
            }
        }
        if policy != PullPolicy::Always {
            match self.ctx.images.local(&image).await {
                Ok(Some(info)) => {
                    rec.normal(pod, fp, reason::PULLED, format!("Container image {image:?} already present on machine and can be accessed by the pod"));
                    self.image_failures.remove(&key);
                    return Ok(info);
                }
                Ok(None) if policy == PullPolicy::Never => {
                    let msg = format!("Container image {image:?} is not present with pull policy of Never");
                    rec.warning(pod, fp, "ErrImageNeverPull", msg.clone());
                    self.waiting.insert(name, Waiting { reason: "ErrImageNeverPull".into(), message: msg });
                    return Err(Some(now() + chrono::Duration::seconds(10)));
                }
                Ok(None) => {}
                Err(e) => return Err(self.image_error(pod, &c.name, fp, &image, e)),
            }
        }
        // Upstream reads the secrets' docker configs only for a pull; one that does not
        // parse fails the container's start with its error as the waiting reason
        // (no pull, no back-off), like the kubelet's MakeDockerKeyring error.
        let secrets = match PullSecrets::from_secrets(&pull_secrets) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                warn!(pod = %pod_key(pod), container = %name, error = %msg, "cannot read the pod's image pull secrets");
                rec.warning(pod, fp, reason::FAILED, format!("Error: {msg}"));
                self.waiting.insert(name, Waiting { reason: msg.clone(), message: msg });
                return Err(Some(now() + chrono::Duration::seconds(10)));
            }
        };
        rec.normal(pod, fp.clone(), reason::PULLING, format!("Pulling image {image:?}"));
        let started = Instant::now();
        match self.ctx.images.ensure_with(&image, PullPolicy::Always, &secrets).await {
            Ok(info) => {
                let ms = started.elapsed().as_millis();
                rec.normal(pod, fp, reason::PULLED, format!("Successfully pulled image {image:?} in {ms}ms ({ms}ms including waiting)"));
                self.image_failures.remove(&key);
                self.image_backoff.forget(&key);
                Ok(info)
            }
            Err(e) => Err(self.image_error(pod, &c.name, fp, &image, e)),
        }
    }

    /// The pod's `imagePullSecrets` that can be read; the others are reported in one
    /// `FailedToRetrieveImagePullSecret` event and the pull goes on without them
    /// (upstream's getPullSecretsForPod).
    async fn pull_secrets(&self, pod: &Pod) -> Vec<k8s_openapi::api::core::v1::Secret> {
        let refs = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref());
        let names = refs.into_iter().flatten().map(|r| r.name.as_str()).filter(|n| !n.is_empty());
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (mut found, mut failed) = (Vec::new(), Vec::new());
        for name in names {
            let secret = match &self.ctx.objects {
                Some(objects) => objects.secret(namespace, name).await.map_err(|e| e.to_string()).and_then(|s| s.ok_or_else(|| format!("secret {name:?} not found"))),
                None => Err("no API server to read it from".to_owned()),
            };
            match secret {
                Ok(s) => found.push(s),
                Err(error) => {
                    info!(pod = %pod_key(pod), secret = %format!("{namespace}/{name}"), %error, "Unable to retrieve pull secret, the image pull may not succeed.");
                    failed.push(name);
                }
            }
        }
        if !failed.is_empty() {
            self.ctx.recorder.warning(
                pod,
                None,
                reason::FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET,
                format!("Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.", failed.join(", ")),
            );
        }
        found
    }

    fn image_error(&mut self, pod: &Pod, name: &str, fp: Option<String>, image: &str, e: ImageError) -> Option<DateTime<Utc>> {
        let reason = e.reason();
        let msg = e.to_string();
        let rec = &self.ctx.recorder;
        if reason == "InvalidImageName" {
            rec.warning(pod, fp.clone(), "InspectFailed", format!("Failed to apply default image tag {image:?}: {msg}"));
            rec.warning(pod, fp, reason::FAILED, "Error: InvalidImageName");
        } else {
            rec.warning(pod, fp.clone(), reason::FAILED, format!("Failed to pull image {image:?}: {msg}"));
            rec.warning(pod, fp, reason::FAILED, format!("Error: {reason}"));
        }
        self.waiting.insert(name.into(), Waiting { reason: reason.into(), message: msg.clone() });
        let t = now();
        if reason == "InvalidImageName" {
            // Nothing was pulled, so no pull back-off: the waiting reason stays
            // InvalidImageName and the next sync tries again (upstream's
            // EnsureImageExists returns before its back-off).
            return Some(t + chrono::Duration::seconds(10));
        }
        self.image_backoff.next(image, t);
        self.image_failures.insert(image.to_string(), (t, msg));
        // Like the kubelet's requeue after a failed sync: come back soon, which then
        // reports ImagePullBackOff until the back-off ends.
        Some(t + chrono::Duration::seconds(1))
    }

    /// The image's /etc/passwd and /etc/group, read once per image (top layer).
    async fn image_users(&self, image: &ImageInfo) -> Arc<crate::runtime::user::ImageUsers> {
        if let Some(u) = self.ctx.image_users.lock().ok().and_then(|m| m.get(&image.chain_id).cloned()) {
            return u;
        }
        let users = match self.ctx.containers.read_image_files(&image.chain_id, &["/etc/passwd", "/etc/group"]).await {
            Ok(files) => {
                let text = |i: usize| files.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                Arc::new(crate::runtime::user::ImageUsers::parse(&text(0), &text(1)))
            }
            Err(e) => {
                warn!(image = %image.name, error = %e, "cannot read the image's users and groups");
                return Arc::new(Default::default());
            }
        };
        if let Ok(mut m) = self.ctx.image_users.lock() {
            m.insert(image.chain_id.clone(), users.clone());
        }
        users
    }

    #[allow(clippy::too_many_arguments)] // one call site; the inputs are unrelated
    fn build_container_spec(
        &self,
        pod: &Pod,
        sandbox: &SandboxState,
        c: &Container,
        image: &ImageInfo,
        users: &crate::runtime::user::ImageUsers,
        target_pid: Option<u32>,
        volumes: &crate::volume::VolumeMap,
        id: &str,
        env_objects: Option<&super::env::EnvObjects>,
    ) -> Result<(oci_spec::runtime::Spec, i32, Option<PathBuf>), String> {
        let default_cfg = oci_spec::image::Config::default();
        let img = image.config.config().as_ref().unwrap_or(&default_cfg);
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        // Service variables; an API pod waits until the services were listed once
        // (a static pod does not: it may be what serves the API).
        let service_env = match &self.ctx.services {
            Some(s) if !s.synced() && crate::api::status::is_api_pod(pod) => return Err(crate::api::services::NOT_SYNCED.into()),
            Some(s) => Some(s.env(pod.metadata.namespace.as_deref().unwrap_or("default"), spec.enable_service_links != Some(false))),
            None => None,
        };
        let ctx = super::env::EnvContext {
            pod_ips: &sandbox.ips,
            host_ip: self.ctx.host_ip.as_deref(),
            node_name: &self.ctx.config.node_name,
            allocatable: self.ctx.allocatable,
            objects: env_objects,
            services: service_env.as_ref(),
        };
        let mut pod_env = super::env::resolve(pod, c, &ctx)?;
        // As containerd's CRI: the sandbox's (kernel) hostname, the node's on the host network.
        let (hostname, domain) = super::dns::hostname_and_domain(pod, self.ctx.dns.cluster_domain.as_deref());
        let hostname = super::dns::kernel_hostname(pod, &hostname, domain.as_deref()).unwrap_or(hostname);
        if !pod_env.iter().any(|(k, _)| k == "HOSTNAME") {
            pod_env.insert(0, ("HOSTNAME".into(), if host_network { self.ctx.config.node_name.clone() } else { hostname }));
        }
        let image_env = img.env().clone().unwrap_or_else(|| vec![spec::PATH_ENV.to_string()]);
        let env = spec::merge_env(&image_env, &pod_env);
        let args = spec::resolve_args(c, img, &env).map_err(|e| e.to_string())?;
        let user = crate::runtime::user::resolve(pod, c, img.user().as_deref().unwrap_or(""), users)?;

        let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false);
        let mut mounts = crate::volume::mounts::container_mounts(c, volumes, &pod_env, privileged, Some(&pod_dir))?;
        let has = |mounts: &Vec<BindMount>, p: &str| mounts.iter().any(|m| m.container_path == p);
        if !host_network && !has(&mounts, "/etc/hosts") {
            mounts.push(BindMount { host_path: pod_dir.join("etc-hosts"), container_path: "/etc/hosts".into(), read_only: false, propagation: Default::default() });
        }
        if !has(&mounts, "/etc/resolv.conf") {
            mounts.push(BindMount { host_path: pod_dir.join("resolv.conf"), container_path: "/etc/resolv.conf".into(), read_only: false, propagation: Default::default() });
        }
        if !host_network && !has(&mounts, "/etc/hostname") {
            mounts.push(BindMount { host_path: pod_dir.join("hostname"), container_path: "/etc/hostname".into(), read_only: false, propagation: Default::default() });
        }
        // The pod's /dev/shm; the host's with hostIPC (containerd's CRI).
        let shm = if spec.host_ipc == Some(true) { PathBuf::from("/dev/shm") } else { pod_dir.join("shm") };
        mounts.push(BindMount { host_path: shm, container_path: "/dev/shm".into(), read_only: false, propagation: Default::default() });
        let tpath = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
        let mut termination_log = None;
        if !tpath.is_empty() {
            let dir = pod_dir.join("containers").join(&c.name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let f = dir.join(random_id().get(..8).unwrap_or("log"));
            std::fs::write(&f, b"").map_err(|e| e.to_string())?;
            mounts.push(BindMount { host_path: f.clone(), container_path: tpath, read_only: false, propagation: Default::default() });
            termination_log = Some(f);
        }

        let qos = crate::cgroups::qos_class(pod);
        let mem_request = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().and_then(|m| m.get("memory")).or(r.limits.as_ref().and_then(|m| m.get("memory"))))
            .and_then(|q| crate::quantity::to_value(&q.0).ok())
            .unwrap_or(0);
        // Seccomp: the container's profile over the pod's over seccompDefault;
        // a Localhost file that cannot be read fails this container only.
        let seccomp_dir = self.ctx.config.root_dir.join(crate::runtime::seccomp::PROFILE_DIR);
        let profile = crate::runtime::seccomp::resolve(pod, c, &seccomp_dir, self.ctx.config.seccomp_default).map_err(|e| e.to_string())?;
        let caps = spec::capability_list(c, &self.ctx.capabilities);
        let kernel = crate::kernel::KernelVersion::current();
        let seccomp = crate::runtime::seccomp::linux_seccomp(&profile, privileged, &caps, kernel).map_err(|e| e.to_string())?;
        // AppArmor, on a host that enforces it (elsewhere a pod asking for it never gets here).
        let apparmor_profile = match &self.ctx.apparmor_host {
            Ok(()) => {
                let loaded = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap_or_default();
                super::apparmor::container_profile(pod, c, privileged, &loaded)?
            }
            Err(_) => None,
        };
        let (own, cap) = self.ctx.oom;
        let oom = crate::cgroups::restrict_oom_score_adj(
            crate::cgroups::container_oom_score_adj(qos, mem_request, self.ctx.memory_capacity),
            own,
            cap,
        );
        let oci = spec::container_spec(&ContainerInput {
            pod,
            container: c,
            image: img,
            sandbox_pid: sandbox.pid,
            host_network,
            env,
            args,
            user,
            mounts,
            cgroups_path: self.ctx.cgroups.container_cgroups_path(qos, &self.uid, id),
            oom_score_adj: oom,
            all_capabilities: &self.ctx.capabilities,
            devices: if privileged { spec::host_devices() } else { Vec::new() },
            target_pid,
            // Config: true by default on cgroup v1, where false is refused.
            oom_group: !self.ctx.config.single_process_oom_kill,
            seccomp,
            apparmor_profile,
        })
        .map_err(|e| e.to_string())?;
        let stop = img
            .stop_signal()
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(nix::sys::signal::Signal::SIGTERM as i32);
        Ok((oci, stop, termination_log))
    }

    /// SIGTERM (or the image's STOPSIGNAL) to every running container, SIGKILL once
    /// `grace` has passed. App (and regular init) containers stop first; sidecars
    /// after them, one at a time in reverse order, within the same grace period
    /// (upstream's termination order for SidecarContainers).
    async fn kill_pod_containers(&self, pod: &Pod, records: &[ContainerRecord], grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let pod_ip = super::lifecycle::pod_ip(records);
        let running: Vec<&ContainerRecord> = records
            .iter()
            .filter(|r| r.label(labels::KIND) != Some(KIND_SANDBOX) && matches!(r.task, TaskState::Running { .. } | TaskState::Created))
            .collect();
        let sidecars: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| super::plan::is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        let is_sidecar = |r: &ContainerRecord| r.label(labels::KIND) == Some(KIND_INIT) && r.label(labels::CONTAINER_NAME).map(|n| sidecars.iter().any(|s| s == n)).unwrap_or(false);
        let mut phases: Vec<Vec<&ContainerRecord>> = vec![running.iter().copied().filter(|r| !is_sidecar(r)).collect()];
        for name in sidecars.iter().rev() {
            phases.push(running.iter().copied().filter(|r| is_sidecar(r) && r.label(labels::CONTAINER_NAME) == Some(name.as_str())).collect());
        }
        for phase in phases.into_iter().filter(|p| !p.is_empty()) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.kill_containers(pod, &phase, left, pod_ip.as_deref()).await;
        }
    }

    /// Stops `containers` together (lifecycle::kill_container: preStop, stop
    /// signal, SIGKILL after what is left of `grace`).
    async fn kill_containers(&self, pod: &Pod, containers: &[&ContainerRecord], grace: Duration, pod_ip: Option<&str>) {
        let mut kills = Vec::new();
        for r in containers {
            let name = r.label(labels::CONTAINER_NAME).unwrap_or("").to_string();
            let kind = kind_of(r);
            let c = container_of(pod, &name, kind).unwrap_or(Container { name, ..Default::default() });
            let ctx = &self.ctx;
            kills.push(async move {
                let t = Instant::now();
                super::lifecycle::kill_container(ctx, pod, r, &c, kind, grace.as_secs() as i64, None, pod_ip).await;
                ctx.metrics.operation("stop_container", t.elapsed(), true);
            });
        }
        futures::future::join_all(kills).await;
    }

    /// Kills the pause container and detaches the pod from the network.
    async fn stop_sandbox(&self, records: &[ContainerRecord], id: &str) {
        let rt = &self.ctx.containers;
        let _ = rt.kill(id, nix::sys::signal::Signal::SIGKILL as u32, true).await;
        let _ = rt.wait(id, Duration::from_secs(10)).await;
        let _ = rt.delete_task(id).await;
        let netns = records.iter().find(|r| r.id == id).and_then(|r| r.label(labels::NETNS)).map(PathBuf::from);
        // Attached: a cached ADD, or a namespace left (the agent died before the
        // ADD was cached). With neither, a teardown already detached it: no second
        // DEL, which not every plugin accepts.
        if netns.as_deref().is_some_and(Path::exists) || self.ctx.cni.cached(id).is_some() {
            if let Err(e) = self.ctx.cni.teardown(id, netns.as_deref().filter(|p| p.exists())).await {
                warn!(sandbox = %id, error = %e, "CNI teardown failed");
            }
        }
        if let Some(p) = netns {
            if let Err(e) = netns::remove_async(&p).await {
                warn!(netns = %p.display(), error = %e, "removing netns failed");
            }
        }
    }

    /// Stops and removes everything the pod had: containers (within the grace
    /// period), sandbox, network, volumes, directories, cgroups and logs. The
    /// grace period runs to a deadline recorded in the pod dir, so an agent
    /// restarted meanwhile resumes it. An agent shutting down while containers
    /// are still within their grace period leaves them, and the teardown, to the
    /// next agent (false); true once everything is gone.
    async fn terminate(&mut self, grace_override: Option<i64>) -> bool {
        let pod = self.last_pod.clone().or_else(|| super::store::load_pod(&self.ctx.config.root_dir, &self.uid).map(Arc::new));
        let grace = grace_override
            .or_else(|| pod.as_ref().and_then(|p| p.spec.as_ref()).and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let grace = if self.ctx.config.kill_at_once { 0 } else { grace };
        let deadline = super::store::termination_deadline(&self.ctx.config.root_dir, &self.uid, Duration::from_secs(grace));
        let pod_for_events = pod.clone().unwrap_or_default();
        self.prober.stop_all();
        let left = (deadline - now()).to_std().unwrap_or_default();
        info!(pod_uid = %self.uid, grace_seconds = grace, remaining_seconds = left.as_secs(), "stopping pod");
        for attempt in 0..3 {
            match self.ctx.containers.list(Some(&self.uid)).await {
                Ok(records) => {
                    let left = (deadline - now()).to_std().unwrap_or_default();
                    let kill = self.kill_pod_containers(&pod_for_events, &records, left.max(Duration::from_secs(1)));
                    tokio::select! {
                        _ = kill => {}
                        _ = self.cancel.cancelled() => {
                            info!(pod_uid = %self.uid, "agent shutting down; the next agent finishes stopping the pod");
                            return false;
                        }
                    }
                    if grace_override.is_some() && attempt == 0 {
                        // Deleted through the API: report the stopped containers first.
                        if let (Some(p), Ok((sb, _, inst))) = (pod.clone(), self.observe().await) {
                            let sb = sb.map(|s| SandboxState { ready: false, ..s });
                            let _ = self.write_status(&p, sb.as_ref(), &inst);
                        }
                    }
                    let mut ok = true;
                    for r in records.iter().filter(|r| r.label(labels::KIND) == Some(KIND_SANDBOX)) {
                        self.stop_sandbox(&records, &r.id).await;
                    }
                    crate::logs::unlink_container_logs(|id| records.iter().any(|r| r.id == id));
                    for r in &records {
                        let _ = self.ctx.containers.delete_task(&r.id).await;
                        if let Err(e) = self.ctx.containers.delete_container(&r.id).await {
                            warn!(container = %r.id, error = %e, "delete failed");
                            ok = false;
                        }
                    }
                    if ok {
                        break;
                    }
                }
                Err(e) => warn!(error = %e, attempt, "listing pod containers failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.unregister_all();
        self.unpublish_allocation();
        let pod_dir = super::store::pod_dir(&self.ctx.config.root_dir, &self.uid);
        let shm = pod_dir.join("shm");
        let _ = umount2(&shm, MntFlags::MNT_DETACH);
        match crate::volume::teardown(&pod_dir) {
            // Never a recursive removal through a mount left behind (a sub path
            // bind of a hostPath would take the host's files with it).
            Err(e) => warn!(error = %e, dir = %pod_dir.display(), "volume teardown failed; the pod directory is kept"),
            Ok(()) => {
                let _ = tokio::fs::remove_dir_all(&pod_dir).await;
            }
        }
        // The pod's logs and cgroup; with its spec lost (its directory removed by
        // hand or by kubeadm reset), whichever of them has its UID.
        use crate::cgroups::QosClass;
        let (log_dirs, classes) = match &pod {
            Some(p) => (self.log_path(p, "x", 0).parent().and_then(|d| d.parent()).map(Path::to_path_buf).into_iter().collect(), vec![crate::cgroups::qos_class(p)]),
            None => {
                let suffix = format!("_{}", self.uid);
                let dirs: Vec<PathBuf> = std::fs::read_dir(&self.ctx.config.pod_logs_dir).into_iter().flatten().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(&suffix)).map(|e| e.path()).collect();
                (dirs, vec![QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort])
            }
        };
        for d in log_dirs {
            let _ = tokio::fs::remove_dir_all(d).await;
        }
        for qos in classes {
            for _ in 0..10 {
                if self.ctx.cgroups.remove_pod(qos, &self.uid).await.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.update_qos_cgroups().await;
        info!(pod_uid = %self.uid, "pod removed");
        true
    }
}

/// A resize condition as upstream's status manager sets it: True, probed now, its
/// transition time kept while the reason stays.
fn resize_condition(type_: &str, reason: Option<&str>, message: Option<String>, generation: i64, before: Option<&PodCondition>) -> PodCondition {
    let t = super::k8s_time(now());
    let kept = before.filter(|b| b.reason.as_deref() == reason).and_then(|b| b.last_transition_time.clone());
    PodCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.map(String::from),
        message,
        last_probe_time: Some(t.clone()),
        last_transition_time: Some(kept.unwrap_or(t)),
        observed_generation: Some(generation),
    }
}

fn pod_event_sandbox_changed(ctx: &Context, pod: &Pod) {
    ctx.recorder.normal(pod, None, reason::SANDBOX_CHANGED, "Pod sandbox changed, it will be killed and re-created.");
}

/// `repo@sha256:…` as the kubelet reports imageID.
fn image_id(i: &ImageInfo) -> String {
    let repo = i.name.rsplit_once(':').filter(|(r, t)| !t.contains('/') && !r.is_empty()).map(|(r, _)| r).unwrap_or(&i.name);
    let repo = repo.split('@').next().unwrap_or(repo);
    format!("{repo}@{}", i.target_digest)
}

fn host_ports(pod: &Pod) -> Vec<crate::network::cni::PortMapping> {
    use crate::network::cni::{PortMapping, Protocol};
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let Some(hp) = p.host_port.filter(|h| *h > 0) else { continue };
            out.push(PortMapping {
                host_port: hp as u16,
                container_port: p.container_port as u16,
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                },
                host_ip: p.host_ip.as_deref().and_then(|h| h.parse().ok()),
            });
        }
    }
    out
}

fn parse_signal(s: &str) -> Option<i32> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&name).ok().map(|s| s as i32)
}

/// Mounts the pod's shared /dev/shm tmpfs (64 MiB, as containerd's CRI) if needed.
fn ensure_shm(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if crate::volume::is_mountpoint(dir) {
        return Ok(());
    }
    mount(Some("shm"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=1777,size=67108864"))
        .map_err(std::io::Error::from)
}

/// `start` (Unix seconds) plus `secs`; None past what a date holds (a pod's
/// activeDeadlineSeconds is any int64 the API accepts).
fn deadline_after(start: i64, secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(start, 0)?.checked_add_signed(chrono::Duration::try_seconds(secs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `activeDeadlineSeconds: 9223372036854775807` panicked in chrono::Duration::seconds.
    #[test]
    fn a_deadline_beyond_any_date_is_none_not_a_panic() {
        assert_eq!(deadline_after(1_700_000_000, 60), DateTime::from_timestamp(1_700_000_060, 0));
        assert_eq!(deadline_after(1_700_000_000, i64::MAX), None);
        assert_eq!(deadline_after(1_700_000_000, 9_000_000_000_000_000), None);
    }
    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
