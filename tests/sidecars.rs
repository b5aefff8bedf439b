//! Sidecar containers (init containers with `restartPolicy: Always`) and
//! `activeDeadlineSeconds` (issue 4), with the real agent, containerd and CNI.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

fn init_status(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status.as_ref()?.init_container_statuses.as_ref()?.iter().find(|s| s.name == name).cloned()
}

fn app_status(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.iter().find(|s| s.name == name).cloned()
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| c.status.clone())
}

fn event_time(agent: &Agent, reason: &str, field: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    agent
        .events()
        .into_iter()
        .filter(|e| e.reason == reason && e.field_path.as_deref() == Some(field))
        .filter_map(|e| chrono::DateTime::parse_from_rfc3339(&e.time).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .max()
}

#[test]
fn s1_a_sidecar_starts_before_the_app_survives_its_restarts_and_stops_last() {
    let agent = Agent::new("s1");
    agent.write_manifest(
        "side.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sidecar}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - name: side
    image: {BUSYBOX}
    restartPolicy: Always
    command: ["sh", "-c", "touch /shared/side-up; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "test -f /shared/side-up && echo saw-sidecar; trap 'sleep 2; exit 0' TERM; sleep 3; exit 1"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#
        ),
    );
    // The sidecar runs first; the app sees it; the pod is Running with both ready.
    let p = agent.wait_pod("sidecar", Duration::from_secs(60), "app running next to the sidecar", |p| {
        let side = init_status(p, "side")?;
        let app = app_status(p, "app")?;
        (side.state.as_ref()?.running.is_some() && app.state.as_ref()?.running.is_some()).then(|| p.clone())
    });
    let side = init_status(&p, "side").unwrap();
    assert_eq!((side.ready, side.started), (true, Some(true)), "a running sidecar is ready and started");
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    let side_started = side.state.unwrap().running.unwrap().started_at.unwrap().0;
    let app_started = app_status(&p, "app").unwrap().state.unwrap().running.unwrap().started_at.unwrap().0;
    assert!(side_started <= app_started, "the sidecar started before the app");
    let side_id = side.container_id.clone().unwrap();
    let log = agent.container_output(&p, "app", 0);
    assert!(log.contains("saw-sidecar"), "the app saw the sidecar's file: {log:?}");

    // The app exits 1 every 3 s and restarts; the sidecar keeps running, untouched.
    let p = agent.wait_pod("sidecar", Duration::from_secs(60), "the app restarted", |p| (app_status(p, "app")?.restart_count >= 1).then(|| p.clone()));
    let side = init_status(&p, "side").unwrap();
    assert_eq!(side.container_id.as_deref(), Some(side_id.as_str()), "same sidecar container");
    assert_eq!(side.restart_count, 0);
    assert!(side.state.unwrap().running.is_some());

    // Removal: the app stops first (it takes 2 s after SIGTERM), then the sidecar.
    agent.wait_pod("sidecar", Duration::from_secs(30), "app running again", |p| app_status(p, "app")?.state?.running.map(|_| ()));
    agent.remove_manifest("side.yaml");
    agent.wait_until(Duration::from_secs(40), "pod removed", || agent.pod("sidecar").is_none());
    let app_kill = event_time(&agent, "Killing", "spec.containers{app}").expect("Killing app");
    let side_kill = event_time(&agent, "Killing", "spec.initContainers{side}").expect("Killing side");
    assert!(
        side_kill - app_kill >= chrono::Duration::milliseconds(1500),
        "the sidecar is stopped after the app exited: app {app_kill}, sidecar {side_kill}"
    );
}

#[test]
fn s2_active_deadline_fails_the_pod_with_deadline_exceeded() {
    let agent = Agent::new("s2");
    agent.write_manifest(
        "deadline.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: deadline}}\nspec:\n  activeDeadlineSeconds: 4\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [sleep, \"3600\"]}}\n"
        ),
    );
    let uid = agent.wait_pod("deadline", Duration::from_secs(60), "Running", |p| {
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.metadata.uid.clone().unwrap())
    });
    let p = agent.wait_pod("deadline", Duration::from_secs(30), "Failed", |p| (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone()));
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(st.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    let c = st.container_statuses.unwrap()[0].clone();
    assert!(c.state.unwrap().terminated.is_some(), "the container was stopped");
    assert!(agent.events().iter().any(|e| e.reason == "DeadlineExceeded" && e.type_ == "Warning"));
    let ids = containerd_containers(&uid);
    agent.wait_until(Duration::from_secs(10), "no task of the pod running", || {
        !ctr(&["tasks", "ls"]).lines().any(|l| l.contains("RUNNING") && ids.iter().any(|id| l.starts_with(id.as_str())))
    });
}

#[test]
fn s3_a_disk_empty_dir_over_its_size_limit_evicts_the_pod() {
    let agent = Agent::new("s3");
    agent.write_manifest(
        "hog.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  terminationGracePeriodSeconds: 30\n  volumes: [{{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}]\n  containers:\n  - name: c\n    image: \"{BUSYBOX}\"\n    command: [sh, -c, \"sleep 1; dd if=/dev/zero of=/scratch/big bs=1024 count=3072; sleep 3600\"]\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n"
        ),
    );
    let p = agent.wait_pod("hog", Duration::from_secs(60), "evicted", |p| (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone()));
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert_eq!(st.message.as_deref(), Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "));
    let disruption = st.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget").expect("a DisruptionTarget condition");
    assert_eq!((disruption.status.as_str(), disruption.reason.as_deref()), ("True", Some("TerminationByKubelet")));
    assert!(st.container_statuses.unwrap()[0].state.as_ref().unwrap().terminated.is_some(), "the container was killed");
    assert!(agent.events().iter().any(|e| e.reason == "Evicted" && e.type_ == "Warning"));
}

#[test]
fn s4_a_pod_asking_more_huge_pages_than_the_node_has_is_rejected_and_stays_listed() {
    let agent = Agent::new("s4");
    agent.write_manifest(
        "huge.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: huge}}\nspec:\n  containers:\n  - name: c\n    image: \"{BUSYBOX}\"\n    command: [sleep, \"3600\"]\n    resources: {{limits: {{memory: 32Mi, hugepages-2Mi: 64Gi}}}}\n"
        ),
    );
    let p = agent.wait_pod("huge", Duration::from_secs(60), "rejected", |p| (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone()));
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("OutOfhugepages-2Mi"));
    assert!(st.message.as_deref().unwrap_or("").starts_with("Pod was rejected: Node didn't have enough resource: hugepages-2Mi, requested: 68719476736, used: 0, capacity: "), "{:?}", st.message);
    assert!(agent.events().iter().any(|e| e.reason == "OutOfhugepages-2Mi" && e.type_ == "Warning"));
    // The start-up cleanup of pod directories without containers leaves it alone.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.pod("huge").and_then(|p| p.status?.reason), Some("OutOfhugepages-2Mi".to_string()), "still listed with its status");
}
