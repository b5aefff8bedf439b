//! `rkubelet doctor --pod NS/NAME`: why a pod is Pending, ContainerCreating,
//! ImagePullBackOff or CrashLoopBackOff on this node, from the agent's own
//! state: the saved pod status (`<root>/pods/<uid>/status.json`), the events
//! it recorded (`<root>/events.jsonl`: pull errors, CNI and mount failures)
//! and the containers' log files (the last lines before a crash).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Serialize;

use super::Level;
use crate::config::Config;
use crate::events::PodEvent;

/// What doctor found out about one pod.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub phase: String,
    pub status: Level,
    /// One line: the state and the main cause.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub containers: Vec<ContainerFinding>,
    /// The pod's recent Warning events (newest last).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerFinding {
    pub name: String,
    pub state: String,
    pub restart_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub detail: String,
    /// The last lines the previous (crashed) instance wrote.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
}

const LOG_LINES: usize = 10;

/// Explains `reference` (`NS/NAME` or `NAME` in `default`).
pub fn explain(cfg: &Config, reference: &str) -> Explanation {
    let (ns, name) = reference.split_once('/').unwrap_or(("default", reference));
    let pods = crate::pod::store::load_all(&cfg.root_dir);
    let found = pods.iter().find(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns && p.metadata.name.as_deref() == Some(name));
    let events = crate::events::read_file(&cfg.root_dir.join(crate::agent::EVENTS_FILE));
    let Some(pod) = found else {
        return Explanation {
            pod: format!("{ns}/{name}"),
            uid: None,
            phase: "Unknown".into(),
            status: Level::Fail,
            summary: format!("this node's agent has no pod {ns}/{name}"),
            fix: Some(format!(
                "check where it is scheduled: kubectl get pod -n {ns} {name} -o wide (Pending with no node: the scheduler found no node; see kubectl describe pod)"
            )),
            containers: vec![],
            warnings: vec![],
        };
    };
    explain_pod(pod, &events, &cfg.pod_logs_dir.display().to_string(), &|path, n| tail(path, n))
}

/// The core, with the log reader injected (unit tests).
pub fn explain_pod(pod: &Pod, events: &[PodEvent], logs_dir: &str, read_tail: &dyn Fn(&str, usize) -> Vec<String>) -> Explanation {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    let mine: Vec<&PodEvent> = events.iter().filter(|e| e.uid == uid || (e.namespace == ns && e.pod == name && e.uid.is_empty())).collect();
    let mut warnings: Vec<String> = mine
        .iter()
        .filter(|e| e.type_ == "Warning")
        .map(|e| format!("{} {}{}: {}", e.time, e.reason, e.field_path.as_deref().map(|f| format!(" ({f})")).unwrap_or_default(), e.message))
        .collect();
    warnings.drain(..warnings.len().saturating_sub(8));
    // The newest event with `reason` (about `container`, if given) whose message starts with `prefix`.
    let last_event_with = |reason: &str, container: Option<&str>, prefix: &str| {
        mine.iter()
            .rev()
            .find(|e| {
                e.reason == reason
                    && e.message.starts_with(prefix)
                    && container.map(|c| e.field_path.as_deref().map(|f| f.contains(&format!("{{{c}}}"))).unwrap_or(false)).unwrap_or(true)
            })
            .map(|e| e.message.clone())
    };
    let last_event = |reason: &str, container: Option<&str>| last_event_with(reason, container, "");
    let log_path = |c: &str, attempt: i32| {
        format!("{logs_dir}/{ns}_{name}_{uid}/{c}/{attempt}.log")
    };

    let all: Vec<&ContainerStatus> = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).collect();
    let mut containers = Vec::new();
    let mut problems: Vec<(Level, String, String)> = Vec::new();
    for cs in &all {
        let st = cs.state.clone().unwrap_or_default();
        let last = cs.last_state.as_ref().and_then(|s| s.terminated.clone());
        let mut f = ContainerFinding { name: cs.name.clone(), state: String::new(), restart_count: cs.restart_count, exit_code: None, detail: String::new(), last_output: vec![] };
        if let Some(w) = &st.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            f.state = reason.clone();
            match reason.as_str() {
                "CrashLoopBackOff" => {
                    let t = last.clone().unwrap_or_default();
                    f.exit_code = Some(t.exit_code);
                    f.detail = format!(
                        "exits again and again: last exit code {} ({}){}, restarted {} times; {}",
                        t.exit_code,
                        t.reason.clone().unwrap_or_else(|| "Error".into()),
                        t.finished_at.as_ref().map(|x| format!(" at {}", x.0)).unwrap_or_default(),
                        cs.restart_count,
                        w.message.clone().unwrap_or_default()
                    );
                    f.last_output = read_tail(&log_path(&cs.name, cs.restart_count), LOG_LINES);
                    let fix = if t.reason.as_deref() == Some("OOMKilled") {
                        format!("container {} runs out of memory: raise its memory limit or lower its use", cs.name)
                    } else {
                        format!(
                            "the container's own command fails (exit code {}): read its output (kubectl logs -n {ns} {name} -c {} --previous) and fix its command, config or dependencies",
                            t.exit_code, cs.name
                        )
                    };
                    problems.push((Level::Fail, format!("container {} is in CrashLoopBackOff (exit code {})", cs.name, t.exit_code), fix));
                }
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => {
                    let pulled = last_event_with("Failed", Some(&cs.name), "Failed to pull image");
                    let why = pulled.clone().or(w.message.clone()).unwrap_or_default();
                    f.detail = format!("image {:?} cannot be pulled: {why}", cs.image);
                    let lower = why.to_lowercase();
                    let fix = if lower.contains("unauthorized") || lower.contains("denied") || lower.contains("401") || lower.contains("403") {
                        format!("the registry refuses the credentials: add or fix imagePullSecrets for {:?}", cs.image)
                    } else if lower.contains("not found") || lower.contains("manifest unknown") || lower.contains("404") {
                        format!("the registry has no {:?}: check the image name and tag", cs.image)
                    } else if lower.contains("connect") || lower.contains("dns") || lower.contains("timeout") || lower.contains("timed out") {
                        "the registry is unreachable from this node: check DNS, proxy and firewall towards it".to_string()
                    } else {
                        format!("check that {:?} exists and this node can pull it (ctr -n k8s.io images pull ...)", cs.image)
                    };
                    problems.push((Level::Fail, format!("container {} cannot pull its image ({reason}): {why}", cs.name), fix));
                }
                "ContainerCreating" | "PodInitializing" => {
                    f.detail = w.message.clone().unwrap_or_else(|| "being created".into());
                }
                "CreateContainerConfigError" | "CreateContainerError" | "PostStartHookError" => {
                    let m = w.message.clone().unwrap_or_default();
                    f.detail = m.clone();
                    problems.push((Level::Fail, format!("container {}: {reason}: {m}", cs.name), "fix the container's spec (env references, volumes, securityContext) as the message says".into()));
                }
                _ => f.detail = w.message.clone().unwrap_or_default(),
            }
        } else if let Some(r) = &st.running {
            f.state = if cs.ready { "Running, ready".into() } else { "Running, not ready".into() };
            f.detail = r.started_at.as_ref().map(|t| format!("since {}", t.0)).unwrap_or_default();
            if !cs.ready {
                if let Some(m) = last_event("Unhealthy", Some(&cs.name)) {
                    f.detail = format!("{}; {m}", f.detail);
                    problems.push((Level::Warn, format!("container {} is not ready: {m}", cs.name), "check the readiness probe and what it reaches".into()));
                }
            }
        } else if let Some(t) = &st.terminated {
            f.state = format!("Terminated ({})", t.reason.clone().unwrap_or_default());
            f.exit_code = Some(t.exit_code);
            f.detail = format!("exit code {}", t.exit_code);
            if t.exit_code != 0 {
                f.last_output = read_tail(&log_path(&cs.name, cs.restart_count), LOG_LINES);
            }
        }
        containers.push(f);
    }

    // Pod-level causes: admission, sandbox (CNI), volumes.
    if phase == "Failed" {
        let why = format!("{}: {}", status.reason.clone().unwrap_or_default(), status.message.clone().unwrap_or_default());
        problems.insert(0, (Level::Fail, format!("the pod failed: {why}"), "see the reason: admission (OutOf*, NodeAffinity, NodePorts), eviction or deadline; delete and recreate it once fixed".into()));
    }
    if all.iter().all(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_none()) && phase == "Pending" {
        if let Some(m) = last_event("FailedCreatePodSandBox", None) {
            problems.insert(0, (Level::Fail, format!("the pod sandbox cannot be created: {m}"), "the network (CNI) or the runtime fails: check /etc/cni/net.d and the plugins (rkubelet doctor's cni check), journalctl -u containerd".into()));
        }
        if let Some(m) = last_event("FailedMount", None) {
            problems.insert(0, (Level::Fail, format!("a volume cannot be mounted: {m}"), "create the ConfigMap/Secret/PVC it names, or fix the volume".into()));
        }
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let state_word = containers.iter().find(|c| !c.state.is_empty() && !c.state.starts_with("Running")).map(|c| c.state.clone()).unwrap_or_else(|| phase.clone());
    let (level, summary, fix) = match problems.first() {
        Some((l, s, f)) => (*l, format!("{phase} ({state_word}): {s}"), Some(f.clone())),
        None if phase == "Succeeded" || (phase == "Running" && ready) => (Level::Ok, format!("{phase}{}", if ready { ", ready" } else { "" }), None),
        None if phase == "Pending" && all.is_empty() => (
            Level::Warn,
            "Pending: the agent has not reported containers yet (admission or sandbox setup in progress)".to_string(),
            Some("wait a few seconds; if it stays, journalctl -u rkubelet -e".to_string()),
        ),
        None => (Level::Warn, format!("{phase} ({state_word})"), Some("see the containers below and kubectl describe pod".to_string())),
    };
    Explanation { pod: format!("{ns}/{name}"), uid: Some(uid), phase, status: level, summary, fix, containers, warnings }
}

/// The last `n` lines of a CRI log file, without the CRI prefix.
fn tail(path: &str, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return vec![] };
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            // <time> <stream> <P|F> <content>
            let mut it = l.splitn(4, ' ');
            let (_, _, _, content) = (it.next(), it.next(), it.next(), it.next());
            content.unwrap_or(l).to_string()
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The explanation as text.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "pod {} ({}): {}", e.pod, e.uid.as_deref().unwrap_or("-"), e.summary);
    if let Some(f) = &e.fix {
        if e.status != Level::Ok {
            let _ = writeln!(s, "  fix: {f}");
        }
    }
    for c in &e.containers {
        let _ = writeln!(s, "  container {}: {} (restarts {}){}", c.name, c.state, c.restart_count, if c.detail.is_empty() { String::new() } else { format!(": {}", c.detail) });
        if !c.last_output.is_empty() {
            let _ = writeln!(s, "    last output:");
            for l in &c.last_output {
                let _ = writeln!(s, "      {l}");
            }
        }
    }
    if !e.warnings.is_empty() {
        let _ = writeln!(s, "  recent warnings:");
        for w in &e.warnings {
            let _ = writeln!(s, "    {w}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodStatus};

    fn pod_with(cs: ContainerStatus) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("default".into());
        p.metadata.name = Some("web".into());
        p.metadata.uid = Some("u1".into());
        p.status = Some(PodStatus { phase: Some("Running".into()), container_statuses: Some(vec![cs]), ..Default::default() });
        p
    }

    #[test]
    fn crash_loop_names_the_exit_code_and_shows_the_last_output() {
        let cs = ContainerStatus {
            name: "app".into(),
            restart_count: 3,
            state: Some(ContainerState { waiting: Some(ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), message: Some("back-off 40s".into()) }), ..Default::default() }),
            last_state: Some(ContainerState { terminated: Some(ContainerStateTerminated { exit_code: 3, reason: Some("Error".into()), ..Default::default() }), ..Default::default() }),
            ..Default::default()
        };
        let e = explain_pod(&pod_with(cs), &[], "/var/log/pods", &|path, _| {
            assert!(path.ends_with("/default_web_u1/app/3.log"), "{path}");
            vec!["boom".into()]
        });
        assert_eq!(e.status, Level::Fail);
        assert!(e.summary.contains("CrashLoopBackOff") && e.summary.contains("exit code 3"), "{}", e.summary);
        assert_eq!(e.containers[0].last_output, ["boom"]);
        assert!(render(&e).contains("kubectl logs -n default web -c app --previous"), "{}", render(&e));
    }

    #[test]
    fn pull_errors_quote_the_registry() {
        let cs = ContainerStatus {
            name: "app".into(),
            image: "r.example/x:1".into(),
            state: Some(ContainerState { waiting: Some(ContainerStateWaiting { reason: Some("ImagePullBackOff".into()), message: Some("Back-off pulling image".into()) }), ..Default::default() }),
            ..Default::default()
        };
        let ev = PodEvent {
            kind: Default::default(),
            time: "t".into(),
            namespace: "default".into(),
            pod: "web".into(),
            uid: "u1".into(),
            field_path: Some("spec.containers{app}".into()),
            type_: "Warning".into(),
            reason: "Failed".into(),
            message: "Failed to pull image \"r.example/x:1\": manifest unknown".into(),
        };
        let e = explain_pod(&pod_with(cs), &[ev], "/var/log/pods", &|_, _| vec![]);
        assert!(e.summary.contains("manifest unknown"), "{}", e.summary);
        assert!(e.fix.as_deref().unwrap().contains("image name and tag"), "{:?}", e.fix);
    }
}
