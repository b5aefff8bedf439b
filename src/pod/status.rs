//! PodStatus as upstream's `generateAPIPodStatus` computes it: phase, conditions,
//! init and app container statuses with waiting/running/terminated states and
//! their reasons, restart counts, pod IPs, QoS class. Pure: everything comes in as
//! arguments.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{latest, terminal_phase};
use super::{Instance, InstanceState, Kind, SandboxState, Waiting};

/// Everything a status depends on.
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub sandbox: Option<&'a SandboxState>,
    pub instances: &'a [Instance],
    pub waiting: &'a HashMap<String, Waiting>,
    /// Probe-derived `started`/`ready` of running containers, by container id
    /// (`pod::prober`); a running container not in it is started and ready.
    pub health: &'a HashMap<String, super::prober::Health>,
    pub host_ip: Option<&'a str>,
    pub previous: Option<&'a PodStatus>,
    pub now: DateTime<Utc>,
    /// The allocated resources of resizable containers (`pod::resize`).
    pub allocation: Option<&'a super::resize::Allocation>,
    /// `PodResizePending` / `PodResizeInProgress`, when set.
    pub resize: &'a [PodCondition],
}

fn time(t: DateTime<Utc>) -> Time {
    super::k8s_time(t)
}

fn terminated(i: &Instance) -> Option<ContainerStateTerminated> {
    match &i.state {
        InstanceState::Exited { exit_code, reason, message, started_at, finished_at } => Some(ContainerStateTerminated {
            container_id: Some(format!("containerd://{}", i.id)),
            exit_code: *exit_code,
            reason: Some(reason.clone()),
            message: message.clone(),
            started_at: started_at.map(time),
            finished_at: Some(time(*finished_at)),
            signal: None,
        }),
        _ => None,
    }
}

fn container_status(c: &Container, kind: Kind, i: &StatusInput<'_>, default_reason: &str) -> ContainerStatus {
    let (instances, waiting, health) = (i.instances, i.waiting, i.health);
    let cur = latest(instances, &c.name, kind);
    let prev = cur.and_then(|cur| {
        instances.iter().filter(|i| i.name == c.name && i.kind == kind && i.attempt < cur.attempt).max_by_key(|i| i.attempt)
    });
    let mut st = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: cur.map(|i| i.attempt as i32).unwrap_or(0),
        last_state: Some(ContainerState::default()),
        volume_mounts: None,
        ..Default::default()
    };
    let w = waiting.get(&c.name);
    let state = match (cur, w) {
        // A held container (back-off, image error) shows waiting; its last run moves to lastState.
        (Some(i), Some(w)) if !i.is_running() => {
            st.last_state = Some(ContainerState { terminated: terminated(i), ..Default::default() });
            ContainerState { waiting: Some(ContainerStateWaiting { reason: Some(w.reason.clone()), message: Some(w.message.clone()).filter(|m| !m.is_empty()) }), ..Default::default() }
        }
        (None, Some(w)) => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(w.reason.clone()), message: Some(w.message.clone()).filter(|m| !m.is_empty()) }),
            ..Default::default()
        },
        (None, None) => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(default_reason.into()), message: None }),
            ..Default::default()
        },
        (Some(i), _) => {
            if let Some(p) = prev {
                st.last_state = Some(ContainerState { terminated: terminated(p), ..Default::default() });
            }
            match &i.state {
                InstanceState::Running { started_at } => ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(time(*started_at)) }),
                    ..Default::default()
                },
                InstanceState::Exited { .. } => ContainerState { terminated: terminated(i), ..Default::default() },
            }
        }
    };
    if let Some(i) = cur {
        st.container_id = Some(format!("containerd://{}", i.id));
        st.image_id = i.image_id.clone();
        if !i.image.is_empty() {
            st.image = i.image.clone();
        }
    }
    let running = state.running.is_some();
    let succeeded = state.terminated.as_ref().map(|t| t.exit_code == 0).unwrap_or(false);
    let probed = cur.filter(|_| running).and_then(|i| health.get(&i.id));
    st.started = Some(running && probed.is_none_or(|h| h.started));
    st.ready = match kind {
        Kind::App => running && probed.is_none_or(|h| h.ready),
        Kind::Init if super::plan::is_sidecar(c) => running && probed.is_none_or(|h| h.ready),
        Kind::Init => succeeded,
        Kind::Ephemeral => false,
    };
    // What a running container has (upstream reports it with InPlacePodVerticalScaling).
    if running {
        let allocated = i.allocation.and_then(|a| a.get(&c.name)).or(c.resources.as_ref());
        st.resources = Some(super::resize::status_resources(allocated, cur.and_then(|i| i.resources.as_ref())));
    }
    st.state = Some(state);
    st
}

fn condition(prev: Option<&PodStatus>, type_: &str, ok: bool, reason: Option<String>, message: Option<String>, now: DateTime<Utc>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        last_transition_time: Some(last.unwrap_or(time(now))),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The condition types the kubelet sets; any other condition belongs to someone else.
pub const KUBELET_CONDITIONS: &[&str] = &["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];

/// The condition of a pod the kubelet (or another component) is disrupting.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
/// Its reason when the kubelet evicts the pod or stops it for the node's shutdown.
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";

/// Whether the kubelet sends this condition in its status patches: the ones it
/// owns, and a DisruptionTarget it set itself.
pub fn sent_by_kubelet(c: &PodCondition) -> bool {
    kubelet_owned(&c.type_) || (c.type_ == DISRUPTION_TARGET && c.reason.as_deref() == Some(TERMINATION_BY_KUBELET))
}

/// Whether the kubelet owns a condition type: [`KUBELET_CONDITIONS`] and the resize
/// conditions, which come and go (and carry their own observedGeneration).
pub fn kubelet_owned(type_: &str) -> bool {
    KUBELET_CONDITIONS.contains(&type_) || type_ == super::resize::PENDING || type_ == super::resize::IN_PROGRESS
}

/// Upstream's messages for the pod's readiness gates that are not `True` (empty
/// when every gate is satisfied).
pub fn readiness_gate_messages(spec: &k8s_openapi::api::core::v1::PodSpec, conditions: &[PodCondition]) -> Vec<String> {
    spec.readiness_gates
        .iter()
        .flatten()
        .filter_map(|g| match conditions.iter().find(|c| c.type_ == g.condition_type) {
            None => Some(format!("corresponding condition of pod readiness gate {:?} does not exist.", g.condition_type)),
            Some(c) if c.status != "True" => Some(format!("the status of pod readiness gate {:?} is not \"True\", but {}", g.condition_type, c.status)),
            Some(_) => None,
        })
        .collect()
}

/// The conditions of the pod's readiness gates, as the API last showed them.
pub fn readiness_gate_conditions(pod: &Pod) -> Vec<PodCondition> {
    let gates: Vec<&str> = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref()).into_iter().flatten().map(|g| g.condition_type.as_str()).collect();
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| gates.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

/// Computes the pod's status.
pub fn compute(i: &StatusInput<'_>) -> PodStatus {
    let Some(spec) = i.pod.spec.as_ref() else { return PodStatus::default() };
    let inits = spec.init_containers.as_deref().unwrap_or(&[]);
    let default_reason = if inits.is_empty() { "ContainerCreating" } else { "PodInitializing" };

    let ephemeral_statuses: Vec<ContainerStatus> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|e| container_status(&super::ephemeral_as_container(e), Kind::Ephemeral, i, "ContainerCreating"))
        .collect();
    let init_statuses: Vec<ContainerStatus> =
        inits.iter().map(|c| container_status(c, Kind::Init, i, default_reason)).collect();
    let app_statuses: Vec<ContainerStatus> =
        spec.containers.iter().map(|c| container_status(c, Kind::App, i, default_reason)).collect();

    // Initialized once every regular init container succeeded and every sidecar
    // started; it stays so once app containers have run (a sidecar restart later
    // does not un-initialize the pod).
    let apps_ran = spec.containers.iter().any(|c| latest(i.instances, &c.name, Kind::App).is_some());
    let initialized = apps_ran || init_statuses.iter().all(|s| s.ready);
    let phase = phase(spec, i.instances, &app_statuses, initialized);

    let sandbox_ready = i.sandbox.map(|s| s.ready).unwrap_or(false);
    // Sidecars count for ContainersReady like app containers (upstream, SidecarContainers).
    let sidecar_unready = inits.iter().zip(&init_statuses).filter(|(c, s)| super::plan::is_sidecar(c) && !s.ready).map(|(_, s)| s.name.as_str());
    let unready: Vec<&str> = sidecar_unready.chain(app_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str())).collect();
    let uninit: Vec<&str> = init_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let list = |v: &[&str]| format!("[{}]", v.join(" "));
    let (ready_reason, ready_msg) = if terminal {
        (Some("PodCompleted".to_string()), None)
    } else {
        (Some("ContainersNotReady".to_string()), Some(format!("containers with unready status: {}", list(&unready))))
    };
    let containers_ready = unready.is_empty() && !terminal;
    // Conditions other components own (readiness gates among them) are kept, first,
    // as upstream's mergePodStatus does.
    let external: Vec<PodCondition> = i
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| !kubelet_owned(&c.type_))
        .cloned()
        .collect();
    let gates = readiness_gate_messages(spec, &external);
    let (pod_ready, pod_ready_reason, pod_ready_msg) = if !containers_ready || gates.is_empty() {
        (containers_ready, ready_reason.clone(), ready_msg.clone())
    } else {
        (false, Some("ReadinessGatesNotReady".to_string()), Some(gates.join(", ")))
    };
    let mut conditions = external;
    conditions.extend([
        condition(i.previous, "PodReadyToStartContainers", sandbox_ready, None, None, i.now),
        condition(
            i.previous,
            "Initialized",
            initialized || (terminal && uninit.is_empty()),
            Some("ContainersNotInitialized".into()),
            Some(format!("containers with incomplete status: {}", list(&uninit))),
            i.now,
        ),
        condition(i.previous, "Ready", pod_ready, pod_ready_reason, pod_ready_msg, i.now),
        condition(i.previous, "ContainersReady", containers_ready, ready_reason, ready_msg, i.now),
        condition(i.previous, "PodScheduled", true, None, None, i.now),
    ]);
    conditions.extend(i.resize.iter().cloned());
    // The generation of the spec this status answers (KEP-5067), on the status and
    // on every condition the kubelet owns; static pods have none.
    let generation = i.pod.metadata.generation;
    for c in conditions.iter_mut().filter(|c| KUBELET_CONDITIONS.contains(&c.type_.as_str())) {
        c.observed_generation = generation;
    }

    let ips: Vec<String> = i
        .sandbox
        .map(|s| s.ips.clone())
        .filter(|v| !v.is_empty())
        .or_else(|| i.previous.and_then(|p| p.pod_ips.as_ref()).map(|v| v.iter().map(|p| p.ip.clone()).collect()))
        .unwrap_or_default();
    let start_time = i
        .previous
        .and_then(|p| p.start_time.clone())
        .unwrap_or_else(|| time(i.sandbox.map(|s| s.created_at).unwrap_or(i.now)));
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(app_statuses),
        init_container_statuses: (!inits.is_empty()).then_some(init_statuses),
        ephemeral_container_statuses: (!ephemeral_statuses.is_empty()).then_some(ephemeral_statuses),
        host_ip: i.host_ip.map(String::from),
        host_ips: i.host_ip.map(|h| vec![HostIP { ip: h.into() }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        qos_class: Some(crate::cgroups::qos_class(i.pod).as_str().into()),
        start_time: Some(start_time),
        observed_generation: generation,
        ..Default::default()
    }
}

/// Upstream's getPhase.
fn phase(spec: &k8s_openapi::api::core::v1::PodSpec, instances: &[Instance], apps: &[ContainerStatus], initialized: bool) -> &'static str {
    if let Some(t) = terminal_phase(spec, instances) {
        return t;
    }
    if !initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in apps {
        let st = s.state.as_ref();
        if st.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = st.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" || (policy == "OnFailure" && succeeded < stopped) {
            "Running"
        } else if succeeded == stopped {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }
    fn pod(policy: &str, init: &[&str], apps: &[&str]) -> Pod {
        let c = |n: &&str| Container { name: n.to_string(), image: Some("img:1".into()), ..Default::default() };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
                containers: apps.iter().map(c).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn inst(name: &str, kind: Kind, attempt: u32, state: InstanceState) -> Instance {
        Instance { id: format!("{name}-{attempt}"), name: name.into(), kind, attempt, image: String::new(), image_id: String::new(), state, hash: None, changed: false, resources: None }
    }
    fn exited(code: i32, reason: &str) -> InstanceState {
        InstanceState::Exited { exit_code: code, reason: reason.into(), message: None, started_at: Some(t(0)), finished_at: t(1) }
    }
    fn sb() -> SandboxState {
        SandboxState { id: "s".into(), handler: String::new(), ready: true, pid: 1, ips: vec!["10.0.0.5".into()], created_at: t(0) }
    }
    fn run(p: &Pod, inst: &[Instance], waiting: &HashMap<String, Waiting>) -> PodStatus {
        let s = sb();
        compute(&StatusInput { pod: p, sandbox: Some(&s), instances: inst, waiting, health: &HashMap::new(), host_ip: Some("192.0.2.1"), previous: None, now: t(5), allocation: None, resize: &[] })
    }
    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn probe_health_drives_started_ready_and_the_ready_conditions() {
        use super::super::prober::Health;
        let p = pod("Always", &[], &["a", "b"]);
        let running = [
            inst("a", Kind::App, 0, InstanceState::Running { started_at: t(1) }),
            inst("b", Kind::App, 0, InstanceState::Running { started_at: t(1) }),
        ];
        let s = sb();
        let status = |health: &HashMap<String, Health>| {
            compute(&StatusInput { pod: &p, sandbox: Some(&s), instances: &running, waiting: &HashMap::new(), health, host_ip: None, previous: None, now: t(5), allocation: None, resize: &[] })
        };
        // "a" waits for its startup probe, "b" (no probes) is started and ready.
        let h = HashMap::from([("a-0".to_string(), Health { started: false, ready: false })]);
        let st = status(&h);
        let cs = st.container_statuses.as_ref().unwrap();
        assert_eq!((cs[0].started, cs[0].ready), (Some(false), false));
        assert_eq!((cs[1].started, cs[1].ready), (Some(true), true));
        assert_eq!(cond(&st, "ContainersReady").status, "False");
        assert_eq!(cond(&st, "Ready").message.as_deref(), Some("containers with unready status: [a]"));
        // Started, readiness not yet passed.
        let h = HashMap::from([("a-0".to_string(), Health { started: true, ready: false })]);
        let st = status(&h);
        assert_eq!(st.container_statuses.as_ref().unwrap()[0].started, Some(true));
        assert_eq!(cond(&st, "Ready").status, "False");
        let h = HashMap::from([("a-0".to_string(), Health { started: true, ready: true })]);
        let st = status(&h);
        assert_eq!(cond(&st, "ContainersReady").status, "True");
        assert_eq!(cond(&st, "Ready").status, "True");
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_condition_is_true() {
        let mut p = pod("Always", &[], &["a"]);
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate { condition_type: "example.com/lb".into() }]);
        let running = [inst("a", Kind::App, 0, InstanceState::Running { started_at: t(1) })];
        let s = run(&p, &running, &HashMap::new());
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("corresponding condition of pod readiness gate \"example.com/lb\" does not exist."));
        let gate = |status: &str| PodCondition { type_: "example.com/lb".into(), status: status.into(), ..Default::default() };
        p.status = Some(PodStatus { conditions: Some(vec![gate("False")]), ..Default::default() });
        let s = run(&p, &running, &HashMap::new());
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("the status of pod readiness gate \"example.com/lb\" is not \"True\", but False"));
        p.status = Some(PodStatus { conditions: Some(vec![gate("True")]), ..Default::default() });
        let s = run(&p, &running, &HashMap::new());
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.conditions.as_ref().unwrap()[0].type_, "example.com/lb", "other owners' conditions are kept, first");
    }

    #[test]
    fn a_running_pod_is_ready_with_its_ip() {
        let p = pod("Always", &[], &["a"]);
        let s = run(&p, &[inst("a", Kind::App, 0, InstanceState::Running { started_at: t(1) })], &HashMap::new());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("containerd://a-0"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn the_generation_acted_on_is_observed_on_the_status_and_the_kubelets_conditions() {
        let mut p = pod("Always", &[], &["a"]);
        p.metadata.generation = Some(7);
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition { type_: "example.com/gate".into(), status: "True".into(), observed_generation: Some(3), ..Default::default() }]),
            ..Default::default()
        });
        let s = run(&p, &[inst("a", Kind::App, 0, InstanceState::Running { started_at: t(1) })], &HashMap::new());
        assert_eq!(s.observed_generation, Some(7));
        for c in s.conditions.as_ref().unwrap() {
            let want = if KUBELET_CONDITIONS.contains(&c.type_.as_str()) { Some(7) } else { Some(3) };
            assert_eq!(c.observed_generation, want, "{}", c.type_);
        }
        // A static pod has no generation.
        let s = run(&pod("Always", &[], &["a"]), &[], &HashMap::new());
        assert_eq!(s.observed_generation, None);
    }

    #[test]
    fn pending_init_shows_pod_initializing_and_not_initialized() {
        let p = pod("Always", &["i"], &["a"]);
        let s = run(&p, &[inst("i", Kind::Init, 0, InstanceState::Running { started_at: t(1) })], &HashMap::new());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = cond(&s, "Initialized");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(c.message.as_deref(), Some("containers with incomplete status: [i]"));
        let app = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state_and_restart_count() {
        let p = pod("Always", &[], &["a"]);
        let w: HashMap<String, Waiting> = [("a".to_string(), Waiting { reason: "CrashLoopBackOff".into(), message: "back-off 10s".into() })].into();
        let s = run(&p, &[inst("a", Kind::App, 0, exited(1, "Error")), inst("a", Kind::App, 1, exited(1, "Error"))], &w);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn finished_pods_succeed_or_fail_by_exit_codes() {
        let p = pod("Never", &[], &["a"]);
        let s = run(&p, &[inst("a", Kind::App, 0, exited(0, "Completed"))], &HashMap::new());
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        let s = run(&p, &[inst("a", Kind::App, 0, exited(3, "Error"))], &HashMap::new());
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let t = s.container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    }

    #[test]
    fn image_errors_keep_the_container_waiting_and_the_pod_pending() {
        let p = pod("Always", &[], &["a"]);
        let w: HashMap<String, Waiting> = [("a".to_string(), Waiting { reason: "ErrImagePull".into(), message: "not found".into() })].into();
        let s = run(&p, &[], &w);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ErrImagePull"));
    }

    #[test]
    fn the_kubelet_sends_its_own_disruption_target_only() {
        let c = |t: &str, r: Option<&str>| PodCondition { type_: t.into(), status: "True".into(), reason: r.map(String::from), ..Default::default() };
        assert!(sent_by_kubelet(&c("Ready", None)));
        assert!(sent_by_kubelet(&c(DISRUPTION_TARGET, Some(TERMINATION_BY_KUBELET))));
        assert!(!sent_by_kubelet(&c(DISRUPTION_TARGET, Some("EvictionByEvictionAPI"))), "another component's: left to it");
        assert!(!sent_by_kubelet(&c("example.com/gate", None)));
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let p = pod("Always", &[], &["a"]);
        let i = [inst("a", Kind::App, 0, InstanceState::Running { started_at: t(1) })];
        let s1 = run(&p, &i, &HashMap::new());
        let sbx = sb();
        let s2 = compute(&StatusInput { pod: &p, sandbox: Some(&sbx), instances: &i, waiting: &HashMap::new(), health: &HashMap::new(), host_ip: None, previous: Some(&s1), now: t(99), allocation: None, resize: &[] });
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(super::super::k8s_time(t(5))));
    }
}
