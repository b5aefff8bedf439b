//! Probes and lifecycle hooks end to end (issue 4, points 4–6): the standalone
//! agent on real containerd, runc and CNI; probes run against real processes in
//! the pods (exec through containerd, HTTP and TCP to the pod IP). The gRPC
//! prober is also checked against a grpc.health.v1 server on loopback, since the
//! test image has no gRPC server. Run serially (shared containerd and bridge).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use rkubelet::events::PodEvent;

fn status_of(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == name).cloned()
}
fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| c.status.clone())
}
fn running(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().map(|s| s.running.is_some()).unwrap_or(false)
}
fn events_for(agent: &Agent, pod: &str) -> Vec<PodEvent> {
    let full = format!("{pod}-{NODE}");
    agent.events().into_iter().filter(|e| e.pod == full).collect()
}
fn has_event(agent: &Agent, pod: &str, reason: &str, f: impl Fn(&str) -> bool) -> bool {
    events_for(agent, pod).iter().any(|e| e.reason == reason && f(&e.message))
}

#[test]
fn readiness_probe_that_fails_then_passes_flips_ready_false_to_true() {
    let agent = Agent::new("probe-readiness");
    agent.write_manifest(
        "r.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: ready}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 5; touch /tmp/ready; exec sleep 3600"]
    readinessProbe:
      exec: {{command: ["test", "-f", "/tmp/ready"]}}
      periodSeconds: 1
"#
        ),
    );
    // Running but not ready while the probe fails.
    agent.wait_pod("ready", Duration::from_secs(60), "running and not ready", |p| {
        let cs = status_of(p, "app")?;
        (running(&cs) && !cs.ready && condition(p, "Ready").as_deref() == Some("False") && condition(p, "ContainersReady").as_deref() == Some("False"))
            .then_some(())
    });
    agent.wait_until(Duration::from_secs(20), "a Readiness Unhealthy event", || {
        has_event(&agent, "ready", "Unhealthy", |m| m.starts_with("Readiness probe failed:"))
    });
    // Then the file appears and Ready flips.
    agent.wait_pod("ready", Duration::from_secs(30), "Ready True", |p| {
        let cs = status_of(p, "app")?;
        (cs.ready && condition(p, "Ready").as_deref() == Some("True") && condition(p, "ContainersReady").as_deref() == Some("True")).then_some(())
    });
    let p = agent.pod("ready").unwrap();
    assert_eq!(status_of(&p, "app").unwrap().restart_count, 0, "readiness never restarts");
    assert!(!has_event(&agent, "ready", "Killing", |_| true));
}

#[test]
fn liveness_probe_failure_restarts_the_container_with_upstream_events() {
    let agent = Agent::new("probe-liveness");
    agent.write_manifest(
        "l.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: live}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 3600"]
    livenessProbe:
      exec: {{command: ["cat", "/tmp/alive"]}}
      periodSeconds: 1
      failureThreshold: 2
"#
        ),
    );
    let restarted = agent.wait_pod("live", Duration::from_secs(60), "restartCount 1 and running again", |p| {
        let cs = status_of(p, "app")?;
        (cs.restart_count >= 1 && running(&cs)).then_some(cs)
    });
    let last = restarted.last_state.and_then(|s| s.terminated).expect("lastState.terminated after the kill");
    assert_eq!(last.exit_code, 137, "sh as PID 1 ignores SIGTERM: killed after the grace period");
    assert!(
        has_event(&agent, "live", "Unhealthy", |m| m.starts_with("Liveness probe failed: cat: can't open '/tmp/alive'")),
        "events: {:?}",
        events_for(&agent, "live")
    );
    assert!(
        has_event(&agent, "live", "Killing", |m| m == "Container app failed liveness probe, will be restarted"),
        "events: {:?}",
        events_for(&agent, "live")
    );
    let e = events_for(&agent, "live").into_iter().find(|e| e.reason == "Unhealthy").unwrap();
    assert_eq!(e.type_, "Warning");
    assert_eq!(e.field_path.as_deref(), Some("spec.containers{app}"));
}

#[test]
fn startup_probe_holds_back_liveness_and_readiness() {
    let agent = Agent::new("probe-startup");
    agent.write_manifest(
        "s.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 6; touch /tmp/started; exec sleep 3600"]
    startupProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 30
    livenessProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 1
    readinessProbe:
      exec: {{command: ["true"]}}
      periodSeconds: 1
"#
        ),
    );
    // While the startup probe fails: running, not started, not ready, not killed.
    agent.wait_pod("slow", Duration::from_secs(60), "running, started=false", |p| {
        let cs = status_of(p, "app")?;
        (running(&cs) && cs.started == Some(false) && !cs.ready).then_some(())
    });
    agent.wait_until(Duration::from_secs(20), "a Startup Unhealthy event", || {
        has_event(&agent, "slow", "Unhealthy", |m| m.starts_with("Startup probe failed:"))
    });
    let p = agent.wait_pod("slow", Duration::from_secs(30), "started and ready", |p| {
        let cs = status_of(p, "app")?;
        (cs.started == Some(true) && cs.ready).then(|| p.clone())
    });
    assert_eq!(status_of(&p, "app").unwrap().restart_count, 0, "liveness never ran before startup passed");
    assert!(!has_event(&agent, "slow", "Unhealthy", |m| m.starts_with("Liveness") || m.starts_with("Readiness")));
    assert!(!has_event(&agent, "slow", "Killing", |_| true));
}

#[test]
fn http_tcp_and_grpc_probes_reach_processes_in_the_pod() {
    let agent = Agent::new("probe-handlers");
    agent.write_manifest(
        "h.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: handlers}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /index.html, port: http, httpHeaders: [{{name: X-Probe, value: "1"}}]}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
  - name: missing
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    readinessProbe:
      httpGet: {{path: /missing, port: 8080}}
      periodSeconds: 1
  - name: closed
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    readinessProbe:
      tcpSocket: {{port: 9999}}
      periodSeconds: 1
  - name: nogrpc
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    readinessProbe:
      grpc: {{port: 9998}}
      periodSeconds: 1
  - name: slowexec
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    readinessProbe:
      exec: {{command: ["sleep", "5"]}}
      timeoutSeconds: 1
      periodSeconds: 1
"#
        ),
    );
    let p = agent.wait_pod("handlers", Duration::from_secs(60), "web ready", |p| status_of(p, "web").filter(|c| c.ready).map(|_| p.clone()));
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    agent.wait_until(Duration::from_secs(20), "failure events of the four failing probes", || {
        has_event(&agent, "handlers", "Unhealthy", |m| m == "Readiness probe failed: command \"sleep 5\" timed out") &&
        has_event(&agent, "handlers", "Unhealthy", |m| m == "Readiness probe failed: HTTP probe failed with statuscode: 404")
            && has_event(&agent, "handlers", "Unhealthy", |m| m == format!("Readiness probe failed: dial tcp {ip}:9999: connect: connection refused"))
            && has_event(&agent, "handlers", "Unhealthy", |m| {
                m.starts_with(&format!("Readiness probe failed: error: failed to connect service at \"{ip}:9998\""))
            })
    });
    let p = agent.pod("handlers").unwrap();
    for c in ["missing", "closed", "nogrpc", "slowexec"] {
        let cs = status_of(&p, c).unwrap();
        assert!(running(&cs) && !cs.ready, "{c} runs but is not ready: {cs:?}");
    }
    let web = status_of(&p, "web").unwrap();
    assert!(web.ready && web.restart_count == 0, "tcpSocket liveness passes: {web:?}");
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    assert!(!events_for(&agent, "handlers").iter().any(|e| e.field_path.as_deref() == Some("spec.containers{web}") && e.reason == "Unhealthy"));
}

/// The gRPC prober against a real grpc.health.v1 server (tonic-health) on loopback.
#[tokio::test]
async fn grpc_prober_reports_serving_and_not_serving() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status("db", ServingStatus::NotServing).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let t = Duration::from_secs(5);
    let ok = rkubelet::probe::grpc::probe("127.0.0.1", port, "", t).await;
    assert_eq!(ok, rkubelet::probe::Outcome::success("service healthy"));
    let bad = rkubelet::probe::grpc::probe("127.0.0.1", port, "db", t).await;
    assert_eq!(bad, rkubelet::probe::Outcome::failure("service unhealthy (responded with \"NOT_SERVING\")"));
    let unknown = rkubelet::probe::grpc::probe("127.0.0.1", port, "nope", t).await;
    assert_eq!(unknown.result, rkubelet::probe::ProbeResult::Failure);
    assert!(unknown.output.starts_with("error: health rpc probe failed: rpc error: code = NotFound"), "{}", unknown.output);
    server.abort();
}

#[test]
fn post_start_hook_runs_before_the_app_sees_it_and_a_failing_one_kills() {
    let agent = Agent::new("hook-poststart");
    agent.write_manifest(
        "ps.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: poststart}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "for i in $(seq 1 100); do if [ -f /tmp/hook ]; then echo saw-$(cat /tmp/hook); break; fi; sleep 0.1; done; exec sleep 3600"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo from-hook > /tmp/hook"]}}
  - name: bad
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo nope; exit 3"]}}
"#
        ),
    );
    let p = agent.wait_pod("poststart", Duration::from_secs(60), "app running", |p| status_of(p, "app").filter(running).map(|_| p.clone()));
    let log = agent.container_log(&p, "app", 0);
    agent.wait_until(Duration::from_secs(15), "the app saw the hook's file", || {
        std::fs::read_to_string(&log).map(|s| s.contains("saw-from-hook")).unwrap_or(false)
    });
    let full = format!("poststart-{NODE}");
    agent.wait_until(Duration::from_secs(30), "FailedPostStartHook and its Killing event", || {
        has_event(&agent, "poststart", "FailedPostStartHook", |m| {
            m.starts_with(&format!("Exec lifecycle hook ([sh -c echo nope; exit 3]) for Container \"bad\" in Pod \"{full}_default("))
                && m.contains("command 'sh -c echo nope; exit 3' exited with 3: nope")
        }) && has_event(&agent, "poststart", "Killing", |m| m == "FailedPostStartHook")
    });
    // The failed container is not left running: it is reported waiting/terminated and restarted.
    agent.wait_pod("poststart", Duration::from_secs(30), "bad restarted after its hook failed", |p| {
        let cs = status_of(p, "bad")?;
        (cs.restart_count >= 1 || cs.state.as_ref()?.waiting.as_ref()?.reason.as_deref() == Some("PostStartHookError")).then_some(())
    });
}

#[test]
fn pre_stop_runs_before_the_stop_signal_inside_the_grace_period() {
    let agent = Agent::new("hook-prestop");
    // Liveness fails once 2 s passed; the kill runs preStop (4 s) and then the
    // stop signal, which the app logs and ignores, so SIGKILL comes when the
    // grace period (8 s, counted from the preStop's start) runs out.
    agent.write_manifest(
        "pre.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: prestop}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 8
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo TERM $(date +%s)' TERM; echo START $(date +%s); while true; do sleep 0.2; done"]
    livenessProbe:
      exec: {{command: ["false"]}}
      initialDelaySeconds: 2
      periodSeconds: 1
      failureThreshold: 1
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo PRESTOP $(date +%s) > /proc/1/fd/1; sleep 4"]}}
"#
        ),
    );
    let p = agent.wait_pod("prestop", Duration::from_secs(90), "app terminated", |p| {
        let cs = status_of(p, "app")?;
        cs.state.as_ref()?.terminated.as_ref().map(|_| p.clone())
    });
    let cs = status_of(&p, "app").unwrap();
    let term = cs.state.unwrap().terminated.unwrap();
    assert_eq!(term.exit_code, 137, "the app ignored the stop signal, so it was killed");
    let log = std::fs::read_to_string(agent.container_log(&p, "app", 0)).unwrap();
    let ts = |tag: &str| -> i64 {
        log.lines()
            .find_map(|l| l.split_once(&format!("{tag} ")).and_then(|(_, t)| t.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {tag} line in log:\n{log}"))
    };
    let (prestop, term_at) = (ts("PRESTOP"), ts("TERM"));
    assert!(term_at - prestop >= 4, "SIGTERM came after the 4 s preStop hook: {log}");
    let finished = term.finished_at.unwrap().0.as_second();
    let total = finished - prestop;
    assert!((6..=10).contains(&total), "the hook's time counts inside the 8 s grace period (took {total}s, not 8+4)");
    assert!(has_event(&agent, "prestop", "Killing", |m| m == "Container app failed liveness probe"), "restartPolicy Never: no restart in the message");
    assert!(!has_event(&agent, "prestop", "FailedPreStopHook", |_| true));
}

#[test]
fn a_sidecars_startup_probe_gates_the_containers_after_it() {
    let agent = Agent::new("probe-sidecar");
    agent.write_manifest(
        "sc.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sidecar}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: proxy
    image: {BUSYBOX}
    restartPolicy: Always
    command: ["sh", "-c", "sleep 4; echo UP $(date +%s); touch /tmp/up; exec sleep 3600"]
    startupProbe:
      exec: {{command: ["test", "-f", "/tmp/up"]}}
      periodSeconds: 1
      failureThreshold: 30
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "echo APP $(date +%s); exec sleep 3600"]
"#
        ),
    );
    let p = agent.wait_pod("sidecar", Duration::from_secs(60), "app running", |p| status_of(p, "app").filter(running).map(|_| p.clone()));
    let ts = |c: &str, tag: &str| -> i64 {
        let log = agent.container_log(&p, c, 0);
        let mut v = None;
        agent.wait_until(Duration::from_secs(10), "the log line", || {
            v = std::fs::read_to_string(&log).ok().and_then(|s| s.lines().find_map(|l| l.split_once(&format!("{tag} ")).and_then(|(_, t)| t.trim().parse().ok())));
            v.is_some()
        });
        v.unwrap()
    };
    let (up, app) = (ts("proxy", "UP"), ts("app", "APP"));
    assert!(app >= up, "the app started ({app}) only after the sidecar's startup probe passed ({up})");
    let side = p.status.as_ref().and_then(|s| s.init_container_statuses.as_ref()).and_then(|v| v.first().cloned()).unwrap();
    assert_eq!(side.started, Some(true));
    assert!(has_event(&agent, "sidecar", "Unhealthy", |m| m.starts_with("Startup probe failed:")));
}

/// The gRPC probe against a grpc.health.v1 server running in the pod (the
/// test API server crate's `rk-grpc-health` binary, with the host's libc mounted read-only, since the
/// test image is busybox): NOT_SERVING keeps the pod unready with upstream's
/// message, SERVING makes it Ready.
#[test]
fn grpc_probe_reaches_a_grpc_health_server_in_a_pod() {
    // Workspace binaries land next to the test's deps dir (cargo test --workspace builds it).
    let bin_dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    assert!(bin_dir.join("rk-grpc-health").is_file(), "build it first: cargo build -p rkubelet-test-apiserver --bin rk-grpc-health");
    let agent = Agent::new("probe-grpc-pod");
    agent.write_manifest(
        "grpc.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: grpcpod}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: bin, hostPath: {{path: "{}", type: Directory}}}}
  - {{name: lib, hostPath: {{path: /lib/x86_64-linux-gnu, type: Directory}}}}
  - {{name: lib64, hostPath: {{path: /lib64, type: Directory}}}}
  containers:
  - name: health
    image: {BUSYBOX}
    command: ["/rk/rk-grpc-health", "9555", "4"]
    volumeMounts:
    - {{name: bin, mountPath: /rk, readOnly: true}}
    - {{name: lib, mountPath: /lib/x86_64-linux-gnu, readOnly: true}}
    - {{name: lib64, mountPath: /lib64, readOnly: true}}
    readinessProbe:
      grpc: {{port: 9555}}
      periodSeconds: 1
"#,
            bin_dir.display()
        ),
    );
    agent.wait_pod("grpcpod", Duration::from_secs(60), "the server running, not ready", |p| {
        let cs = status_of(p, "health")?;
        (running(&cs) && !cs.ready).then_some(())
    });
    agent.wait_until(Duration::from_secs(20), "an Unhealthy NOT_SERVING event", || {
        has_event(&agent, "grpcpod", "Unhealthy", |m| m == "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")")
    });
    agent.wait_pod("grpcpod", Duration::from_secs(30), "Ready once SERVING", |p| (condition(p, "Ready")? == "True").then_some(()));
    let p = agent.pod("grpcpod").unwrap();
    assert!(agent.container_output(&p, "health", 0).contains("serving"), "the server in the pod reported SERVING");
}
