//! What to do next for a pod, as a pure function of its spec and what was observed
//! (upstream: kuberuntime `computePodActions`): create the sandbox, start the next
//! init container, (re)start app containers per `restartPolicy` and back-off, or
//! conclude that the pod has finished. Init containers with `restartPolicy:
//! Always` are sidecars (upstream's SidecarContainers): started in order, each
//! one started before the next init container, restarted whenever they exit,
//! and not counted when deciding whether the pod has finished.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::backoff::{go_duration, Backoff};
use super::{Instance, InstanceState, Kind, SandboxState};

/// A container to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    pub kind: Kind,
}

/// The decision for one sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// (Re)create the sandbox; every container of an old sandbox is killed first.
    pub create_sandbox: bool,
    /// Containers to start now, in order.
    pub start: Vec<Start>,
    /// Containers held in CrashLoopBackOff, with upstream's message.
    pub crash_loop: Vec<(String, String)>,
    /// When the next back-off ends (the worker wakes then).
    pub wake_at: Option<DateTime<Utc>>,
    /// `Succeeded` or `Failed` once nothing will ever run again.
    pub terminal: Option<&'static str>,
    /// Running containers whose definition changed (instance id, name): killed,
    /// then started again.
    pub kill: Vec<(String, String)>,
}

/// The container hash (kubecontainer.HashContainer): since 1.31 only the name and
/// the image, so that changes of other fields, or an agent upgrade, restart nothing.
pub fn container_hash(c: &Container) -> String {
    // FNV-1a, 32 bits, over the two fields (the value stays in this node's labels).
    let mut h: u32 = 0x811c_9dc5;
    for b in c.name.bytes().chain([0u8]).chain(c.image.as_deref().unwrap_or("").bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// A running instance started from another definition of container `c`.
fn definition_changed(i: &Instance, c: &Container) -> bool {
    i.is_running() && i.hash.as_deref().is_some_and(|h| h != container_hash(c))
}

/// The newest instance of each container name.
pub fn latest<'a>(instances: &'a [Instance], name: &str, kind: Kind) -> Option<&'a Instance> {
    instances.iter().filter(|i| i.name == name && i.kind == kind).max_by_key(|i| i.attempt)
}

/// An init container with `restartPolicy: Always`: a sidecar.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Whether a sidecar instance counts as started: running (its startup probe, when
/// it has one, must also have passed; `started` holds the containers that did).
fn sidecar_started(i: &Instance, started: &dyn Fn(&str) -> bool) -> bool {
    i.is_running() && started(&i.name)
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

/// Decides the next actions. `pod_name` is `name_ns(uid)` for back-off messages.
pub fn plan(
    spec: &PodSpec,
    pod_name: &str,
    instances: &[Instance],
    sandbox: Option<&SandboxState>,
    backoff: &mut Backoff,
    now: DateTime<Utc>,
) -> Plan {
    plan_with(spec, pod_name, instances, sandbox, backoff, now, &|_| true)
}

/// [`plan`] with `started`: whether a running container has passed its startup
/// probe (sidecars gate the next init container on it).
pub fn plan_with(
    spec: &PodSpec,
    pod_name: &str,
    instances: &[Instance],
    sandbox: Option<&SandboxState>,
    backoff: &mut Backoff,
    now: DateTime<Utc>,
    started: &dyn Fn(&str) -> bool,
) -> Plan {
    let mut p = Plan::default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");

    // Is the pod finished? Then nothing is (re)created, not even the sandbox.
    if let Some(t) = terminal_phase(spec, instances) {
        p.terminal = Some(t);
        return p;
    }
    if !sandbox.map(|s| s.ready).unwrap_or(false) {
        p.create_sandbox = true;
        return p;
    }

    // Ephemeral containers start once, even before initialization completes, and
    // are never restarted (computePodActions).
    for e in spec.ephemeral_containers.iter().flatten() {
        if latest(instances, &e.name, Kind::Ephemeral).is_none() {
            p.start.push(Start { name: e.name.clone(), kind: Kind::Ephemeral });
        }
    }

    let restart_or_backoff = |p: &mut Plan, backoff: &mut Backoff, name: &str, kind: Kind, finished: DateTime<Utc>| {
        if let Some(until) = backoff.in_backoff_since(name, finished, now) {
            let delay = backoff.delay(name).unwrap_or_default();
            p.crash_loop.push((
                name.to_string(),
                format!("back-off {} restarting failed container={} pod={}", go_duration(delay), name, pod_name),
            ));
            p.wake_at = Some(p.wake_at.map_or(until, |w| w.min(until)));
        } else {
            backoff.next(name, finished);
            p.start.push(Start { name: name.to_string(), kind });
        }
    };

    let inits = spec.init_containers.as_deref().unwrap_or(&[]);
    for (idx, c) in inits.iter().enumerate() {
        if is_sidecar(c) {
            // Past this sidecar already (something after it ran): a restart never
            // holds the rest of the pod back.
            let later_ran = inits[idx + 1..].iter().any(|n| latest(instances, &n.name, Kind::Init).is_some())
                || spec.containers.iter().any(|n| latest(instances, &n.name, Kind::App).is_some());
            match latest(instances, &c.name, Kind::Init) {
                None => {
                    p.start.push(Start { name: c.name.clone(), kind: Kind::Init });
                    return p;
                }
                Some(i) if definition_changed(i, c) => {
                    p.kill.push((i.id.clone(), c.name.clone()));
                    if !later_ran {
                        return p;
                    }
                }
                Some(i) if i.is_running() => {
                    if !later_ran && !sidecar_started(i, started) {
                        return p;
                    }
                }
                Some(i) if i.changed => {
                    backoff.forget(&c.name);
                    p.start.push(Start { name: c.name.clone(), kind: Kind::Init });
                    if !later_ran {
                        return p;
                    }
                }
                Some(i) => {
                    // A sidecar restarts whatever the pod's restartPolicy, with back-off.
                    let finished = i.finished_at().unwrap_or(now);
                    restart_or_backoff(&mut p, backoff, &c.name, Kind::Init, finished);
                    if !later_ran {
                        return p;
                    }
                }
            }
            continue;
        }
        match latest(instances, &c.name, Kind::Init) {
            None => {
                p.start.push(Start { name: c.name.clone(), kind: Kind::Init });
                return p;
            }
            Some(i) => match &i.state {
                InstanceState::Running { .. } => return p,
                InstanceState::Exited { exit_code: 0, .. } => continue,
                InstanceState::Exited { finished_at, .. } => {
                    // Never was handled by terminal_phase; Always/OnFailure retry with back-off.
                    restart_or_backoff(&mut p, backoff, &c.name, Kind::Init, *finished_at);
                    return p;
                }
            },
        }
    }

    for c in &spec.containers {
        match latest(instances, &c.name, Kind::App) {
            None => p.start.push(Start { name: c.name.clone(), kind: Kind::App }),
            // computePodActions: a changed definition restarts the container whatever
            // the restart policy, with a fresh back-off (its key has the hash).
            Some(i) if definition_changed(i, c) => p.kill.push((i.id.clone(), c.name.clone())),
            Some(i) if i.changed && !i.is_running() => {
                backoff.forget(&c.name);
                p.start.push(Start { name: c.name.clone(), kind: Kind::App });
            }
            Some(i) => match &i.state {
                InstanceState::Running { .. } => {}
                InstanceState::Exited { exit_code, finished_at, .. } => {
                    if should_restart(policy, *exit_code) {
                        restart_or_backoff(&mut p, backoff, &c.name, Kind::App, *finished_at);
                    }
                }
            },
        }
    }
    p
}

/// `Succeeded`/`Failed` when the pod can never run a container again: a failed init
/// container under `Never`, or every app container exited and none will restart.
pub fn terminal_phase(spec: &PodSpec, instances: &[Instance]) -> Option<&'static str> {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if policy == "Never" {
        for c in spec.init_containers.iter().flatten().filter(|c| !is_sidecar(c)) {
            if let Some(code) = latest(instances, &c.name, Kind::Init).and_then(|i| i.exit_code()) {
                if code != 0 {
                    return Some("Failed");
                }
            }
        }
    }
    if policy == "Always" || spec.containers.is_empty() {
        return None;
    }
    let mut all_zero = true;
    for c in &spec.containers {
        let i = latest(instances, &c.name, Kind::App)?;
        if i.changed {
            return None;
        }
        let code = i.exit_code()?;
        if should_restart(policy, code) {
            return None;
        }
        all_zero &= code == 0;
    }
    Some(if all_zero { "Succeeded" } else { "Failed" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }
    fn spec(policy: &str, init: &[&str], apps: &[&str]) -> PodSpec {
        let c = |n: &&str| Container { name: n.to_string(), ..Default::default() };
        PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
            containers: apps.iter().map(c).collect(),
            ..Default::default()
        }
    }
    fn sb() -> SandboxState {
        SandboxState { id: "s".into(), handler: String::new(), ready: true, pid: 1, ips: vec![], created_at: t(0) }
    }
    fn exited(name: &str, kind: Kind, attempt: u32, code: i32, at: i64) -> Instance {
        Instance {
            id: format!("{name}{attempt}"),
            name: name.into(),
            kind,
            attempt,
            image: String::new(),
            image_id: String::new(),
            state: InstanceState::Exited { exit_code: code, reason: String::new(), message: None, started_at: None, finished_at: t(at) },
            hash: None,
            changed: false,
            resources: None,
        }
    }
    fn running(name: &str, kind: Kind) -> Instance {
        Instance { state: InstanceState::Running { started_at: t(0) }, ..exited(name, kind, 0, 0, 0) }
    }

    #[test]
    fn no_sandbox_means_create_it_first() {
        let p = plan(&spec("Always", &[], &["a"]), "p", &[], None, &mut Backoff::default(), t(0));
        assert!(p.create_sandbox && p.start.is_empty());
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_apps() {
        let s = spec("Always", &["i1", "i2"], &["a"]);
        let mut b = Backoff::default();
        let p = plan(&s, "p", &[], Some(&sb()), &mut b, t(0));
        assert_eq!(p.start, vec![Start { name: "i1".into(), kind: Kind::Init }]);
        let p = plan(&s, "p", &[running("i1", Kind::Init)], Some(&sb()), &mut b, t(0));
        assert!(p.start.is_empty());
        let p = plan(&s, "p", &[exited("i1", Kind::Init, 0, 0, 1)], Some(&sb()), &mut b, t(2));
        assert_eq!(p.start, vec![Start { name: "i2".into(), kind: Kind::Init }]);
        let done = [exited("i1", Kind::Init, 0, 0, 1), exited("i2", Kind::Init, 0, 0, 2)];
        let p = plan(&s, "p", &done, Some(&sb()), &mut b, t(3));
        assert_eq!(p.start, vec![Start { name: "a".into(), kind: Kind::App }]);
    }

    fn with_sidecar(policy: &str) -> PodSpec {
        let mut s = spec(policy, &["side", "i2"], &["a"]);
        s.init_containers.as_mut().unwrap()[0].restart_policy = Some("Always".into());
        s
    }

    #[test]
    fn a_sidecar_starts_first_and_keeps_running_next_to_the_app() {
        let s = with_sidecar("Never");
        let mut b = Backoff::default();
        let p = plan(&s, "p", &[], Some(&sb()), &mut b, t(0));
        assert_eq!(p.start, vec![Start { name: "side".into(), kind: Kind::Init }]);
        // Running but its startup probe has not passed: the next init container waits.
        let side = running("side", Kind::Init);
        let p = plan_with(&s, "p", std::slice::from_ref(&side), Some(&sb()), &mut b, t(1), &|_| false);
        assert!(p.start.is_empty());
        let p = plan(&s, "p", std::slice::from_ref(&side), Some(&sb()), &mut b, t(1));
        assert_eq!(p.start, vec![Start { name: "i2".into(), kind: Kind::Init }]);
        let p = plan(&s, "p", &[side.clone(), exited("i2", Kind::Init, 0, 0, 2)], Some(&sb()), &mut b, t(3));
        assert_eq!(p.start, vec![Start { name: "a".into(), kind: Kind::App }]);
    }

    #[test]
    fn an_exited_sidecar_restarts_even_under_never_and_does_not_block_the_app() {
        let s = with_sidecar("Never");
        let mut b = Backoff::default();
        let inst = [exited("side", Kind::Init, 0, 1, 5), exited("i2", Kind::Init, 0, 0, 2), running("a", Kind::App)];
        let p = plan(&s, "p", &inst, Some(&sb()), &mut b, t(6));
        assert_eq!(p.start, vec![Start { name: "side".into(), kind: Kind::Init }]);
        assert_eq!(p.terminal, None);
    }

    #[test]
    fn sidecars_do_not_keep_a_finished_pod_alive() {
        let s = with_sidecar("Never");
        let inst = [running("side", Kind::Init), exited("i2", Kind::Init, 0, 0, 2), exited("a", Kind::App, 0, 0, 9)];
        assert_eq!(terminal_phase(&s, &inst), Some("Succeeded"));
        let failed_side = [exited("side", Kind::Init, 0, 1, 9), exited("i2", Kind::Init, 0, 0, 2), exited("a", Kind::App, 0, 0, 9)];
        assert_eq!(terminal_phase(&s, &failed_side), Some("Succeeded"), "a sidecar's exit code does not decide the phase");
    }

    #[test]
    fn a_failed_init_container_fails_the_pod_under_never() {
        let s = spec("Never", &["i1"], &["a"]);
        let p = plan(&s, "p", &[exited("i1", Kind::Init, 0, 1, 1)], Some(&sb()), &mut Backoff::default(), t(2));
        assert_eq!(p.terminal, Some("Failed"));
        assert!(p.start.is_empty());
    }

    #[test]
    fn crash_loops_back_off_with_growing_delays() {
        let s = spec("Always", &[], &["a"]);
        let mut b = Backoff::default();
        // First exit: restart at once.
        let p = plan(&s, "p_ns(u)", &[exited("a", Kind::App, 0, 1, 10)], Some(&sb()), &mut b, t(10));
        assert_eq!(p.start.len(), 1);
        // Second exit right away: back-off 10s.
        let p = plan(&s, "p_ns(u)", &[exited("a", Kind::App, 1, 1, 11)], Some(&sb()), &mut b, t(12));
        assert!(p.start.is_empty());
        assert_eq!(p.wake_at, Some(t(21)));
        assert_eq!(p.crash_loop[0].1, "back-off 10s restarting failed container=a pod=p_ns(u)");
        // After it: restart, and the next back-off is 20s.
        let p = plan(&s, "p_ns(u)", &[exited("a", Kind::App, 1, 1, 11)], Some(&sb()), &mut b, t(22));
        assert_eq!(p.start.len(), 1);
        let p = plan(&s, "p_ns(u)", &[exited("a", Kind::App, 2, 1, 23)], Some(&sb()), &mut b, t(24));
        assert_eq!(p.wake_at, Some(t(43)));
    }

    #[test]
    fn restart_policies_decide_terminal_phases() {
        let never = spec("Never", &[], &["a", "b"]);
        let ok = [exited("a", Kind::App, 0, 0, 1), exited("b", Kind::App, 0, 0, 1)];
        assert_eq!(terminal_phase(&never, &ok), Some("Succeeded"));
        let bad = [exited("a", Kind::App, 0, 0, 1), exited("b", Kind::App, 0, 3, 1)];
        assert_eq!(terminal_phase(&never, &bad), Some("Failed"));
        assert_eq!(terminal_phase(&never, &ok[..1]), None);
        let onf = spec("OnFailure", &[], &["a", "b"]);
        assert_eq!(terminal_phase(&onf, &ok), Some("Succeeded"));
        assert_eq!(terminal_phase(&onf, &bad), None);
        assert_eq!(terminal_phase(&spec("Always", &[], &["a", "b"]), &ok), None);
    }

    #[test]
    fn ephemeral_containers_start_once_even_before_initialization() {
        let mut sp = spec("Always", &["i"], &["a"]);
        sp.ephemeral_containers = Some(vec![k8s_openapi::api::core::v1::EphemeralContainer { name: "dbg".into(), ..Default::default() }]);
        let mut b = Backoff::default();
        let p = plan(&sp, "p", &[running("i", Kind::Init)], Some(&sb()), &mut b, t(1));
        assert_eq!(p.start, vec![Start { name: "dbg".into(), kind: Kind::Ephemeral }]);
        let done = exited("dbg", Kind::Ephemeral, 0, 1, 2);
        let p = plan(&sp, "p", &[exited("i", Kind::Init, 0, 0, 1), done], Some(&sb()), &mut b, t(3));
        assert_eq!(p.start, vec![Start { name: "a".into(), kind: Kind::App }], "an exited ephemeral container stays exited");
    }

    #[test]
    fn a_changed_image_restarts_the_container_whatever_the_policy() {
        let mut sp = spec("Never", &[], &["a"]);
        sp.containers[0].image = Some("img:2".into());
        let old = Container { name: "a".into(), image: Some("img:1".into()), ..Default::default() };
        let mut b = Backoff::default();
        let mut run = running("a", Kind::App);
        run.hash = Some(container_hash(&old));
        let p = plan(&sp, "p", &[run.clone()], Some(&sb()), &mut b, t(10));
        assert_eq!(p.kill, vec![("a0".to_string(), "a".to_string())]);
        assert!(p.start.is_empty());
        // Killed for the change: started again at once, even under Never; not terminal.
        let mut killed = exited("a", Kind::App, 0, 137, 11);
        killed.changed = true;
        b.next("a", t(5));
        assert_eq!(terminal_phase(&sp, &[killed.clone()]), None);
        let p = plan(&sp, "p", &[killed], Some(&sb()), &mut b, t(12));
        assert_eq!(p.start, vec![Start { name: "a".into(), kind: Kind::App }]);
        assert!(p.crash_loop.is_empty(), "a fresh back-off");
        // The same definition, or an instance of an older agent: nothing.
        run.hash = Some(container_hash(&sp.containers[0]));
        assert!(plan(&sp, "p", &[run.clone()], Some(&sb()), &mut b, t(13)).kill.is_empty());
        run.hash = None;
        assert!(plan(&sp, "p", &[run], Some(&sb()), &mut b, t(13)).kill.is_empty());
        assert_ne!(container_hash(&old), container_hash(&sp.containers[0]));
        let mut other = old.clone();
        other.command = Some(vec!["x".into()]);
        assert_eq!(container_hash(&old), container_hash(&other), "only name and image count");
    }
}
