//! Probe scheduling for one pod, as upstream's pkg/kubelet/prober (worker.go,
//! prober_manager.go, results): one tokio task (a timer, no thread) per probe per
//! running container. A task waits out `initialDelaySeconds`, probes every
//! `periodSeconds` within `timeoutSeconds`, and publishes a result once
//! `successThreshold`/`failureThreshold` consecutive results agree. Startup gates
//! liveness and readiness. A published change wakes the pod worker, which reads
//! [`Prober::health`] into the container statuses (`started`, `ready`, hence
//! `ContainersReady`/`Ready`) and kills containers whose liveness or startup probe
//! failed ([`Prober::kill_unhealthy`]). Tasks stop with their container or pod.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::manager::Context;
use super::{lifecycle, Instance, InstanceState, Kind, SandboxState};
use crate::events::field_path;
use crate::probe::{Outcome, ProbeResult, Target};
use crate::runtime::containers::labels;

/// Event reasons (pkg/kubelet/events).
pub const UNHEALTHY: &str = "Unhealthy";
pub const PROBE_WARNING: &str = "ProbeWarning";

/// Upstream retries a probe that errored (not one that failed) this many times.
const MAX_PROBE_RETRIES: usize = 3;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeType {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeType {
    pub const ALL: [ProbeType; 3] = [ProbeType::Startup, ProbeType::Liveness, ProbeType::Readiness];

    /// As upstream's events print it ("Liveness probe failed: …").
    pub fn name(self) -> &'static str {
        match self {
            ProbeType::Liveness => "Liveness",
            ProbeType::Readiness => "Readiness",
            ProbeType::Startup => "Startup",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeType::Liveness => c.liveness_probe.as_ref(),
            ProbeType::Readiness => c.readiness_probe.as_ref(),
            ProbeType::Startup => c.startup_probe.as_ref(),
        }
    }

    /// The result before any threshold is met (worker.go newWorker).
    pub fn initial(self) -> Verdict {
        match self {
            ProbeType::Liveness => Verdict::Success,
            ProbeType::Readiness => Verdict::Failure,
            ProbeType::Startup => Verdict::Unknown,
        }
    }
}

/// A published probe result (pkg/kubelet/prober/results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unknown,
    Success,
    Failure,
}

/// Consecutive-result counting (worker.go doProbe).
#[derive(Debug, Clone)]
pub struct Thresholds {
    success: u32,
    failure: u32,
    last: Option<bool>,
    run: u32,
}

impl Thresholds {
    pub fn new(p: &Probe) -> Self {
        Self {
            success: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure: p.failure_threshold.unwrap_or(3).max(1) as u32,
            last: None,
            run: 0,
        }
    }

    /// Records one result; returns the verdict to publish once its threshold is met.
    pub fn record(&mut self, ok: bool) -> Option<Verdict> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok { self.success } else { self.failure };
        (self.run >= threshold).then_some(if ok { Verdict::Success } else { Verdict::Failure })
    }
}

/// A probe's timing with upstream's defaults (period 10 s, timeout 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.filter(|v| *v > 0).unwrap_or(d) as u64);
        Self {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: secs(p.period_seconds, 10),
            timeout: secs(p.timeout_seconds, 1),
        }
    }
}

/// One probe's schedule: after `delay` (what is left of the initial delay),
/// every period: skip unless `gate()` allows (startup gating), run the probe,
/// feed the thresholds and `publish` verdicts. Errors are thrown away like
/// upstream. Stops when cancelled, or after publishing a liveness/startup
/// failure (the container is about to be killed; upstream's "on hold").
pub async fn schedule<R, F>(
    ty: ProbeType,
    p: &Probe,
    delay: Duration,
    cancel: CancellationToken,
    gate: impl Fn() -> bool,
    mut run: R,
    mut publish: impl FnMut(Verdict),
) where
    R: FnMut() -> F,
    F: Future<Output = Option<bool>>,
{
    let timing = Timing::of(p);
    let mut th = Thresholds::new(p);
    let probe_from = Instant::now() + delay;
    loop {
        if Instant::now() >= probe_from && gate() {
            if let Some(ok) = run().await {
                if let Some(v) = th.record(ok) {
                    publish(v);
                    if v == Verdict::Failure && ty != ProbeType::Readiness {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(timing.period) => {}
        }
    }
}

/// What the status reports for a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub started: bool,
    pub ready: bool,
}

/// Whether the running instance(s) of container `name` passed their startup
/// probe, from [`Prober::health`] (a container without one is started).
pub fn started(health: &HashMap<String, Health>, instances: &[Instance], name: &str) -> bool {
    instances.iter().filter(|i| i.name == name && i.is_running()).all(|i| health.get(&i.id).is_none_or(|h| h.started))
}

type Results = Arc<Mutex<HashMap<(String, ProbeType), Verdict>>>;

/// The probes of one pod's containers.
pub struct Prober {
    ctx: Arc<Context>,
    notify: Arc<Notify>,
    results: Results,
    tasks: HashMap<(String, ProbeType), CancellationToken>,
    /// Containers already killed for a failed liveness/startup probe.
    handled: HashSet<String>,
    cancel: CancellationToken,
}

fn spec_of<'a>(pod: &'a Pod, name: &str, kind: Kind) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    match kind {
        Kind::App => spec.containers.iter().find(|c| c.name == name),
        // Only restartable init containers (sidecars) are probed.
        Kind::Init => spec.init_containers.iter().flatten().find(|c| c.name == name && c.restart_policy.as_deref() == Some("Always")),
        // Ephemeral containers have no probes.
        Kind::Ephemeral => None,
    }
}

fn get(results: &Results, id: &str, ty: ProbeType) -> Verdict {
    results.lock().ok().and_then(|r| r.get(&(id.to_string(), ty)).copied()).unwrap_or(ty.initial())
}

impl Prober {
    pub fn new(ctx: Arc<Context>, notify: Arc<Notify>, cancel: &CancellationToken) -> Self {
        Self { ctx, notify, results: Arc::default(), tasks: HashMap::new(), handled: HashSet::new(), cancel: cancel.child_token() }
    }

    /// Starts probe tasks for running containers that have probes and stops those
    /// of containers that are no longer running.
    pub fn sync(&mut self, pod: &Pod, sandbox: Option<&SandboxState>, instances: &[Instance]) {
        let pod_ip = sandbox.and_then(|s| s.ips.first().cloned());
        let mut live = HashSet::new();
        let mut shared: Option<Arc<Pod>> = None;
        for i in instances {
            let InstanceState::Running { started_at } = i.state else { continue };
            let Some(c) = spec_of(pod, &i.name, i.kind) else { continue };
            for ty in ProbeType::ALL {
                let Some(p) = ty.of(c) else { continue };
                let key = (i.id.clone(), ty);
                live.insert(key.clone());
                if self.tasks.contains_key(&key) {
                    continue;
                }
                let since = (Utc::now() - started_at).to_std().unwrap_or(Duration::ZERO);
                let delay = Timing::of(p).initial_delay.saturating_sub(since);
                let token = self.cancel.child_token();
                self.tasks.insert(key, token.clone());
                let job = ProbeJob {
                    ctx: self.ctx.clone(),
                    notify: self.notify.clone(),
                    results: self.results.clone(),
                    pod: shared.get_or_insert_with(|| Arc::new(pod.clone())).clone(),
                    container: c.clone(),
                    kind: i.kind,
                    id: i.id.clone(),
                    pod_ip: pod_ip.clone(),
                };
                debug!(container = %c.name, probe = ty.name(), "starting probe worker");
                tokio::spawn(job.run(ty, p.clone(), delay, token));
            }
        }
        self.tasks.retain(|k, t| {
            let keep = live.contains(k);
            if !keep {
                t.cancel();
            }
            keep
        });
        if let Ok(mut r) = self.results.lock() {
            r.retain(|k, _| live.contains(k));
        }
        self.handled.retain(|id| live.iter().any(|(i, _)| i == id));
    }

    /// Stops every probe (the pod is terminating).
    pub fn stop_all(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.cancel();
        }
    }

    /// `started` and `ready` of each running container, by container id
    /// (containers without probes: both true).
    pub fn health(&self, pod: &Pod, instances: &[Instance]) -> HashMap<String, Health> {
        let mut out = HashMap::new();
        for i in instances.iter().filter(|i| i.is_running()) {
            let Some(c) = spec_of(pod, &i.name, i.kind) else { continue };
            let started = c.startup_probe.is_none() || get(&self.results, &i.id, ProbeType::Startup) == Verdict::Success;
            let ready = started && (c.readiness_probe.is_none() || get(&self.results, &i.id, ProbeType::Readiness) == Verdict::Success);
            out.insert(i.id.clone(), Health { started, ready });
        }
        out
    }

    /// Containers whose liveness or startup probe failed and that were not killed yet.
    fn take_failed(&mut self) -> Vec<(String, ProbeType)> {
        let failed: Vec<(String, ProbeType)> = self
            .results
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|((_, ty), v)| *ty != ProbeType::Readiness && **v == Verdict::Failure)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        failed.into_iter().filter(|(id, _)| self.handled.insert(id.clone())).collect()
    }

    /// Kills the containers whose liveness or startup probe failed (computePodActions,
    /// then killContainer), with upstream's `Killing` message; the restart follows the
    /// pod's restartPolicy in the next plan. Returns whether it killed any.
    pub async fn kill_unhealthy(&mut self, pod: &Pod) -> bool {
        let failed = self.take_failed();
        if failed.is_empty() {
            return false;
        }
        let ctx = self.ctx.clone();
        let records = match ctx.containers.list(pod.metadata.uid.as_deref()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing containers to kill failed");
                for (id, _) in &failed {
                    self.handled.remove(id);
                }
                return false;
            }
        };
        let pod_ip = lifecycle::pod_ip(&records);
        let restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
        let mut kills = Vec::new();
        for (id, ty) in failed {
            let Some(r) = records.iter().find(|r| r.id == id) else { continue };
            let kind = match r.label(labels::KIND) {
                Some("init") => Kind::Init,
                Some("ephemeral") => Kind::Ephemeral,
                _ => Kind::App,
            };
            let Some(c) = r.label(labels::CONTAINER_NAME).and_then(|n| spec_of(pod, n, kind)) else { continue };
            let mut message = format!("Container {} failed {} probe", c.name, ty.name().to_lowercase());
            if restart || kind == Kind::Init {
                message.push_str(", will be restarted");
            }
            // setTerminationGracePeriod: the probe's own grace period wins for these kills.
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| ty.of(c).and_then(|p| p.termination_grace_period_seconds))
                .unwrap_or_else(|| lifecycle::pod_grace(pod));
            info!(container = %c.name, probe = ty.name(), "killing container that failed its probe");
            kills.push(lifecycle::kill_container(&ctx, pod, r, c, kind, grace, Some(message), pod_ip.as_deref()));
        }
        futures::future::join_all(kills).await;
        true
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Everything one probe task needs.
struct ProbeJob {
    ctx: Arc<Context>,
    notify: Arc<Notify>,
    results: Results,
    pod: Arc<Pod>,
    container: Container,
    kind: Kind,
    id: String,
    pod_ip: Option<String>,
}

impl ProbeJob {
    async fn run(self, ty: ProbeType, p: Probe, delay: Duration, cancel: CancellationToken) {
        let has_startup = self.container.startup_probe.is_some();
        let gate = || {
            let started = !has_startup || get(&self.results, &self.id, ProbeType::Startup) == Verdict::Success;
            // Startup probes stop once started; the others wait for it.
            if ty == ProbeType::Startup {
                !started
            } else {
                started
            }
        };
        let timeout = Timing::of(&p).timeout;
        let publish = |v: Verdict| {
            let changed = self.results.lock().map(|mut r| r.insert((self.id.clone(), ty), v) != Some(v)).unwrap_or(false);
            if changed {
                debug!(container = %self.container.name, probe = ty.name(), ?v, "probe result changed");
                self.notify.notify_one();
            }
        };
        schedule(ty, &p, delay, cancel, gate, || self.probe_once(ty, &p, timeout), publish).await;
    }

    /// One probe with upstream's retries on error and its events. None: errored.
    async fn probe_once(&self, ty: ProbeType, p: &Probe, timeout: Duration) -> Option<bool> {
        let uid = self.pod.metadata.uid.as_deref().unwrap_or("");
        let scratch = lifecycle::scratch_dir(&self.ctx, uid);
        let target = Target {
            containers: &self.ctx.containers,
            container_id: &self.id,
            container: &self.container,
            pod_ip: self.pod_ip.as_deref(),
            scratch: &scratch,
        };
        let mut last = None;
        for _ in 0..MAX_PROBE_RETRIES {
            match crate::probe::run(p, &target, timeout).await {
                Ok(o) => {
                    last = Some(Ok(o));
                    break;
                }
                Err(e) => last = Some(Err(e)),
            }
        }
        let fp = field_path(&self.container.name, self.kind == Kind::Init);
        let rec = &self.ctx.recorder;
        let result = match &last {
            Some(Ok(Outcome { result: ProbeResult::Success | ProbeResult::Warning, .. })) => "successful",
            Some(Ok(_)) => "failed",
            _ => "unknown",
        };
        self.ctx.metrics.probe(ty.name(), result, &self.container.name, &self.pod);
        match last? {
            Ok(Outcome { result: ProbeResult::Success, .. }) => Some(true),
            Ok(Outcome { result: ProbeResult::Warning, output }) => {
                rec.warning(&self.pod, fp, PROBE_WARNING, format!("{} probe warning: {output}", ty.name()));
                Some(true)
            }
            Ok(Outcome { result, output }) => {
                debug!(container = %self.container.name, probe = ty.name(), result = result.as_str(), %output, "probe failed");
                rec.warning(&self.pod, fp, UNHEALTHY, format!("{} probe failed: {output}", ty.name()));
                Some(false)
            }
            Err(e) => {
                rec.warning(&self.pod, fp, UNHEALTHY, format!("{} probe errored and resulted in unknown state: {e}", ty.name()));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn probe(period: i32, success: i32, failure: i32, delay: i32) -> Probe {
        Probe {
            period_seconds: Some(period),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            initial_delay_seconds: Some(delay),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_need_consecutive_agreeing_results() {
        let mut t = Thresholds::new(&probe(1, 2, 3, 0));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failure run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Verdict::Failure));
        assert_eq!(t.record(false), Some(Verdict::Failure), "keeps publishing while the run lasts");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Verdict::Success));
    }

    #[test]
    fn defaults_are_upstreams() {
        let p = Probe::default();
        assert_eq!(Timing::of(&p), Timing { initial_delay: Duration::ZERO, period: Duration::from_secs(10), timeout: Duration::from_secs(1) });
        let mut t = Thresholds::new(&p);
        assert_eq!(t.record(true), Some(Verdict::Success));
        assert_eq!((t.record(false), t.record(false), t.record(false)), (None, None, Some(Verdict::Failure)));
        assert_eq!(ProbeType::Readiness.initial(), Verdict::Failure);
        assert_eq!(ProbeType::Liveness.initial(), Verdict::Success);
        assert_eq!(ProbeType::Startup.initial(), Verdict::Unknown);
    }

    /// Runs `schedule` with scripted results; returns (seconds since start, verdict) of each publish.
    async fn run_script(ty: ProbeType, p: Probe, delay: u64, script: Vec<bool>, gate_open_after: usize) -> Vec<(u64, Verdict)> {
        let start = Instant::now();
        let calls = AtomicUsize::new(0);
        let gates = AtomicUsize::new(0);
        let published = Mutex::new(Vec::new());
        let cancel = CancellationToken::new();
        let fut = schedule(
            ty,
            &p,
            Duration::from_secs(delay),
            cancel.clone(),
            || gates.fetch_add(1, Ordering::SeqCst) >= gate_open_after,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let r = script.get(n).copied();
                async move { r }
            },
            |v| published.lock().unwrap().push((start.elapsed().as_secs(), v)),
        );
        let _ = tokio::time::timeout(Duration::from_secs(60), fut).await;
        published.into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_publishes_at_thresholds_every_period() {
        // period 2 s, success 1, failure 2: fail, fail, ok, ok.
        let got = run_script(ProbeType::Readiness, probe(2, 1, 2, 0), 0, vec![false, false, true, true], 0).await;
        assert_eq!(got, vec![(2, Verdict::Failure), (4, Verdict::Success), (6, Verdict::Success)]);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_and_startup_gate_hold_probes_back() {
        // Delay 5 s with period 1 s: the first probe runs at t=5.
        let got = run_script(ProbeType::Readiness, probe(1, 1, 1, 5), 5, vec![true], 0).await;
        assert_eq!(got, vec![(5, Verdict::Success)]);
        // Gate closed for the first 3 ticks: the first probe runs at t=3.
        let got = run_script(ProbeType::Readiness, probe(1, 1, 1, 0), 0, vec![true], 3).await;
        assert_eq!(got, vec![(3, Verdict::Success)]);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_stops_probing_after_publishing_a_failure() {
        let got = run_script(ProbeType::Liveness, probe(3, 1, 2, 0), 0, vec![true, false, false, true, true], 0).await;
        assert_eq!(got, vec![(0, Verdict::Success), (6, Verdict::Failure)]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_do_not_count() {
        let calls = AtomicUsize::new(0);
        let published = Mutex::new(Vec::new());
        let p = probe(1, 1, 2, 0);
        let fut = schedule(
            ProbeType::Liveness,
            &p,
            Duration::ZERO,
            CancellationToken::new(),
            || true,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                // fail, error, fail → the errored probe does not break the run.
                async move { [Some(false), None, Some(false)].get(n).copied().flatten() }
            },
            |v| published.lock().unwrap().push(v),
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), fut).await;
        assert_eq!(published.into_inner().unwrap(), vec![Verdict::Failure]);
    }
}
