//! End-to-end tests of the standalone agent on real containerd, runc and CNI
//! (issue 2, points 1–7). Run serially: they share containerd and the host network.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;

fn phase(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}
fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}
fn app_status(p: &Pod, i: usize) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.get(i).cloned()
}
fn waiting_reason(p: &Pod, i: usize) -> Option<String> {
    app_status(p, i)?.state?.waiting?.reason
}
fn running_pod_ip(p: &Pod) -> Option<String> {
    (phase(p) == "Running" && app_status(p, 0)?.ready).then(|| pod_ip(p)).flatten()
}

fn httpd_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo hello-$(POD_NAME) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
"#
    )
}

#[test]
fn t1_httpd_pod_gets_an_ip_and_answers_http_from_the_host() {
    let agent = Agent::new("t1");
    agent.write_manifest("web.yaml", &httpd_pod("web"));
    let ip = agent.wait_pod("web", Duration::from_secs(60), "Running with an IP", running_pod_ip);
    assert!(ip.starts_with("10.244.77."), "pod IP {ip} from the test network");
    let mut body = None;
    agent.wait_until(Duration::from_secs(15), "HTTP answer from the pod", || {
        body = http_get(&ip, 8080, "/");
        body.as_deref().map(|b| b.contains("200 OK")).unwrap_or(false)
    });
    assert!(body.unwrap().contains(&format!("hello-web-{NODE}")), "fieldRef env reached the container");
    let p = agent.pod("web").unwrap();
    let cs = app_status(&p, 0).unwrap();
    assert!(cs.container_id.unwrap().starts_with("containerd://"));
    assert_eq!(cs.restart_count, 0);
    let conds: Vec<_> = p.status.unwrap().conditions.unwrap().into_iter().map(|c| (c.type_, c.status)).collect();
    for t in ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
        assert!(conds.contains(&(t.to_string(), "True".to_string())), "{t} True in {conds:?}");
    }
    // The CLI shows it like kubectl get pods -o wide.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkubelet"))
        .args(["pods", "--root-dir", agent.state_dir().to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&format!("web-{NODE}")) && out.contains("Running") && out.contains(&ip), "{out}");
}

#[test]
fn t2_init_container_writes_into_an_empty_dir_that_the_app_serves() {
    let agent = Agent::new("t2");
    agent.write_manifest(
        "init.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: initpod}}
spec:
  terminationGracePeriodSeconds: 3
  volumes: [{{name: data, emptyDir: {{}}}}]
  initContainers:
  - name: prep
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 2; echo from-init > /data/index.html"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["httpd", "-f", "-p", "8080", "-h", "/data"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"#
        ),
    );
    // While the init container runs, the pod is Pending/Init and the app waits.
    agent.wait_pod("initpod", Duration::from_secs(60), "init running", |p| {
        (phase(p) == "Pending" && waiting_reason(p, 0).as_deref() == Some("PodInitializing")).then_some(())
    });
    let ip = agent.wait_pod("initpod", Duration::from_secs(60), "Running", running_pod_ip);
    let p = agent.pod("initpod").unwrap();
    let init = p.status.as_ref().unwrap().init_container_statuses.as_ref().unwrap()[0].clone();
    let term = init.state.unwrap().terminated.expect("init terminated");
    assert_eq!((term.exit_code, term.reason.as_deref()), (0, Some("Completed")));
    let app_started = app_status(&p, 0).unwrap().state.unwrap().running.unwrap().started_at.unwrap();
    assert!(term.finished_at.unwrap().0 <= app_started.0, "app started only after init exited");
    let mut body = None;
    agent.wait_until(Duration::from_secs(15), "HTTP answer", || {
        body = http_get(&ip, 8080, "/index.html");
        body.is_some()
    });
    assert!(body.unwrap().contains("from-init"));
}

fn oneshot(name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "{script}"]
"#
    )
}

#[test]
fn t3_crash_loops_back_off_and_finished_pods_succeed_or_fail() {
    let agent = Agent::new("t3");
    agent.write_manifest("crasher.yaml", &oneshot("crasher", "Always", "exit 1"));
    agent.write_manifest("never.yaml", &oneshot("never", "Never", "exit 3"));
    agent.write_manifest("ok.yaml", &oneshot("ok", "Never", "exit 0"));

    let failed = agent.wait_pod("never", Duration::from_secs(60), "Failed", |p| (phase(p) == "Failed").then(|| app_status(p, 0)));
    let t = failed.unwrap().state.unwrap().terminated.unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    let ok = agent.wait_pod("ok", Duration::from_secs(60), "Succeeded", |p| (phase(p) == "Succeeded").then(|| app_status(p, 0)));
    assert_eq!(ok.unwrap().state.unwrap().terminated.unwrap().reason.as_deref(), Some("Completed"));

    // Always: restarts at once, then after 10s, then after 20s.
    let msg1 = agent.wait_pod("crasher", Duration::from_secs(60), "CrashLoopBackOff", |p| {
        let cs = app_status(p, 0)?;
        let w = cs.state?.waiting?;
        (w.reason.as_deref() == Some("CrashLoopBackOff") && cs.restart_count >= 1).then(|| (cs.restart_count, w.message.unwrap_or_default()))
    });
    assert!(msg1.1.contains("back-off 10s restarting failed container=c pod=crasher-rk-test_default("), "{}", msg1.1);
    let msg2 = agent.wait_pod("crasher", Duration::from_secs(60), "a longer back-off", |p| {
        let cs = app_status(p, 0)?;
        let w = cs.state?.waiting?.message?;
        (cs.restart_count > msg1.0 && w.contains("back-off 20s")).then_some(cs.restart_count)
    });
    assert!(msg2 >= 2);
    let p = agent.pod("crasher").unwrap();
    assert_eq!(phase(&p), "Running", "a crash-looping Always pod stays Running");
    let last = app_status(&p, 0).unwrap().last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert!(agent.events().iter().any(|e| e.reason == "BackOff" && e.message.starts_with("Back-off restarting failed container c in pod crasher-rk-test_default(")));
}

#[test]
fn t4_missing_images_back_off_and_registry_pulls_work() {
    let agent = Agent::new("t4");
    agent.write_manifest(
        "noimg.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: noimg}
spec:
  containers:
  - {name: c, image: "127.0.0.1:5000/test/nope:1"}
"#,
    );
    // Pull from the local registry: Always (":latest") and IfNotPresent (a fresh name).
    let _ = std::process::Command::new("ctr").args(["-n", "k8s.io", "images", "rm", "127.0.0.1:5000/test/busybox:1.0"]).output();
    agent.write_manifest(
        "pulled.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: pulled}
spec:
  containers:
  - {name: always, image: "127.0.0.1:5000/test/busybox:latest", command: ["sleep", "3600"]}
  - {name: ifnp, image: "127.0.0.1:5000/test/busybox:1.0", imagePullPolicy: IfNotPresent, command: ["sleep", "3600"]}
"#,
    );
    agent.wait_pod("noimg", Duration::from_secs(60), "ErrImagePull", |p| (waiting_reason(p, 0).as_deref() == Some("ErrImagePull")).then_some(()));
    let msg = agent.wait_pod("noimg", Duration::from_secs(60), "ImagePullBackOff", |p| {
        (waiting_reason(p, 0).as_deref() == Some("ImagePullBackOff")).then(|| app_status(p, 0).unwrap().state.unwrap().waiting.unwrap().message.unwrap_or_default())
    });
    assert!(msg.starts_with("Back-off pulling image \"127.0.0.1:5000/test/nope:1\": ErrImagePull: "), "{msg}");
    assert_eq!(phase(&agent.pod("noimg").unwrap()), "Pending");

    agent.wait_pod("pulled", Duration::from_secs(90), "both containers running", |p| {
        (phase(p) == "Running" && app_status(p, 0)?.ready && app_status(p, 1)?.ready).then_some(())
    });
    let p = agent.pod("pulled").unwrap();
    for i in 0..2 {
        let id = app_status(&p, i).unwrap().image_id;
        assert!(id.contains("@sha256:"), "imageID {id}");
    }
    let ev = agent.events();
    assert!(ev.iter().any(|e| e.reason == "Pulling" && e.message == "Pulling image \"127.0.0.1:5000/test/busybox:latest\""));
    assert!(ev.iter().any(|e| e.reason == "Pulled" && e.message.starts_with("Successfully pulled image \"127.0.0.1:5000/test/busybox:latest\"")));
    assert!(ev.iter().any(|e| e.reason == "Failed" && e.message == "Error: ErrImagePull"));
    assert!(ev.iter().any(|e| e.reason == "BackOff" && e.message == "Back-off pulling image \"127.0.0.1:5000/test/nope:1\""));
    assert!(ctr(&["images", "ls", "-q"]).contains("127.0.0.1:5000/test/busybox:1.0"), "IfNotPresent pulled the missing image");
}

#[test]
fn t5_removing_the_manifest_leaves_nothing_behind() {
    let agent = Agent::new("t5");
    agent.write_manifest("web.yaml", &httpd_pod("gone"));
    agent.wait_pod("gone", Duration::from_secs(60), "Running", running_pod_ip);
    let p = agent.pod("gone").unwrap();
    let uid = p.metadata.uid.clone().unwrap();
    let ids = containerd_containers(&uid);
    assert_eq!(ids.len(), 2, "pause + web: {ids:?}");
    let ipam_files = || -> Vec<String> {
        std::fs::read_dir(agent.ipam_dir.join("rktest")).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("10.")).collect()).unwrap_or_default()
    };
    assert_eq!(ipam_files().len(), 1);
    let netns_before: Vec<String> = run_ip_netns();
    let bridge_ports = || std::fs::read_dir(format!("/sys/class/net/{BRIDGE}/brif")).map(|d| d.count()).unwrap_or(0);
    assert!(bridge_ports() >= 1);

    let t0 = std::time::Instant::now();
    agent.remove_manifest("web.yaml");
    agent.wait_until(Duration::from_secs(30), "pod removed", || agent.pod("gone").is_none());
    assert!(t0.elapsed() < Duration::from_secs(5 + 10), "stopped within the grace period");

    assert!(containerd_containers(&uid).is_empty(), "containerd containers left");
    let tasks = ctr(&["tasks", "ls"]);
    for id in &ids {
        assert!(!tasks.contains(id), "task {id} left");
        assert!(!ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"]).contains(id.as_str()), "snapshot {id} left");
    }
    assert!(ipam_files().is_empty(), "IPAM allocation left: {:?}", ipam_files());
    assert_eq!(bridge_ports(), 0, "veth left on the bridge");
    let netns_after = run_ip_netns();
    assert!(netns_after.len() < netns_before.len() || netns_before.is_empty(), "netns removed: {netns_before:?} -> {netns_after:?}");
    assert!(!agent.state_dir().join("pods").join(&uid).exists(), "pod dir left");
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{uid}")).exists(), "pod cgroup left");
    let loggers = std::process::Command::new("pgrep").args(["-af", "rkubelet-cri-log"]).output().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    assert!(!loggers.contains(&uid), "container logger left: {loggers}");
    let links: Vec<String> = std::fs::read_dir("/var/log/containers").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| ids.iter().any(|id| n.contains(id.as_str()))).collect()).unwrap_or_default();
    assert!(links.is_empty(), "/var/log/containers links left: {links:?}");
}

fn run_ip_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default()
}

#[test]
fn t6_kill_9_and_restart_adopts_running_pods_without_restarting_them() {
    let mut agent = Agent::new("t6");
    agent.write_manifest("web.yaml", &httpd_pod("adopt"));
    let ip = agent.wait_pod("adopt", Duration::from_secs(60), "Running", running_pod_ip);
    let before = app_status(&agent.pod("adopt").unwrap(), 0).unwrap();
    agent.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(http_get(&ip, 8080, "/").is_some(), "the pod keeps serving without the agent");
    agent.start();
    std::thread::sleep(Duration::from_secs(5));
    agent.wait_pod("adopt", Duration::from_secs(30), "Running again", running_pod_ip);
    let after = app_status(&agent.pod("adopt").unwrap(), 0).unwrap();
    assert_eq!(before.container_id, after.container_id, "same container");
    assert_eq!(before.restart_count, after.restart_count);
    assert_eq!(
        before.state.unwrap().running.unwrap().started_at,
        after.state.unwrap().running.unwrap().started_at,
        "same start time"
    );
    assert_eq!(pod_ip(&agent.pod("adopt").unwrap()).as_deref(), Some(ip.as_str()));
    // And exits are still noticed after adoption: kill the app's process, it restarts.
    let cid = after.container_id.unwrap().trim_start_matches("containerd://").to_string();
    ctr(&["tasks", "kill", "-s", "KILL", &cid]);
    agent.wait_pod("adopt", Duration::from_secs(30), "restarted", |p| (app_status(p, 0)?.restart_count == 1 && app_status(p, 0)?.ready).then_some(()));
}

#[test]
fn t7_a_malformed_manifest_is_reported_and_the_good_pod_runs() {
    let mut agent = Agent::new("t7");
    agent.write_manifest("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports: [{containerPort: eighty}]\n");
    agent.write_manifest("broken.json", "{ this is not json");
    agent.write_manifest("good.yaml", &httpd_pod("good"));
    agent.wait_pod("good", Duration::from_secs(60), "Running", running_pod_ip);
    assert!(agent.is_running(), "the agent keeps running");
    let errs = std::fs::read_to_string(agent.state_dir().join("manifest-errors.json")).unwrap();
    assert!(errs.contains("bad.yaml") && errs.contains("spec.containers[0].ports[0].containerPort"), "{errs}");
    assert!(errs.contains("broken.json"), "{errs}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkubelet"))
        .args(["pods", "--root-dir", agent.state_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
    assert_eq!(agent.pods().len(), 1);
    // A pod whose image entrypoint does not exist fails with StartError, others are untouched.
    agent.write_manifest("nocmd.yaml", &oneshot("nocmd", "Never", "x").replace("[\"sh\", \"-c\", \"x\"]", "[\"/no/such/binary\"]"));
    let t = agent.wait_pod("nocmd", Duration::from_secs(60), "StartError", |p| {
        let t = app_status(p, 0)?.state?.terminated?;
        (t.reason.as_deref() == Some("StartError")).then_some(t)
    });
    assert_eq!(t.exit_code, 128);
    assert!(t.message.unwrap_or_default().contains("/no/such/binary"));
    assert_eq!(phase(&agent.pod("good").unwrap()), "Running");
    agent.stop();
    assert!(!agent.is_running());
}

#[test]
fn t8_security_context_resources_host_files_logs_and_host_network() {
    let root = std::path::PathBuf::from("/var/lib/rkubelet-test/agents/t8-notify.sock");
    let _ = std::fs::remove_file(&root);
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(&root).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let agent = Agent::with_env("t8", &[("NOTIFY_SOCKET", root.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("sd_notify message from the agent");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "READY=1 sent: {msg:?}");

    agent.write_manifest(
        "sec.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sec}}
spec:
  terminationGracePeriodSeconds: 2
  securityContext: {{runAsUser: 1000, runAsGroup: 2000}}
  hostAliases: [{{ip: "10.9.9.9", hostnames: [extra.example]}}]
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); touch /probe 2>/dev/null && echo rootfs=rw || echo rootfs=ro; grep -E 'CapEff|NoNewPrivs' /proc/self/status; echo host=$(hostname); grep -v '^#' /etc/hosts | grep sec; grep extra /etc/hosts; echo env=$HOSTNAME; exec sleep 3600"]
    securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    resources: {{limits: {{memory: 64Mi, cpu: 250m}}}}
"#
        ),
    );
    let ip = agent.wait_pod("sec", Duration::from_secs(60), "Running", running_pod_ip);
    let p = agent.pod("sec").unwrap();
    assert_eq!(p.status.as_ref().unwrap().qos_class.as_deref(), Some("Guaranteed"));
    let mut out = String::new();
    agent.wait_until(Duration::from_secs(10), "container output in its log file", || {
        out = agent.container_output(&p, "c", 0);
        out.contains("env=")
    });
    let raw = std::fs::read_to_string(agent.container_log(&p, "c", 0)).unwrap_or_default();
    let first = raw.lines().next().unwrap_or("");
    assert!(first.split(' ').nth(1) == Some("stdout") && first.split(' ').nth(2) == Some("F"), "CRI log format: {first:?}");
    assert!(chrono::DateTime::parse_from_rfc3339(first.split(' ').next().unwrap_or("")).is_ok(), "CRI timestamp: {first:?}");
    assert!(out.contains("uid=1000 gid=2000"), "{out}");
    assert!(out.contains("rootfs=ro"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains(&format!("host=sec-{NODE}")), "{out}");
    assert!(out.contains(&format!("{ip}\tsec-{NODE}")), "{out}");
    assert!(out.contains("10.9.9.9\textra.example"), "{out}");
    assert!(out.contains(&format!("env=sec-{NODE}")), "{out}");
    // Limits reached the cgroup (Guaranteed pods live directly under kubepods).
    let uid = p.metadata.uid.clone().unwrap();
    let find = |ctrl: &str, file: &str| -> Vec<String> {
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/{ctrl}/kubepods/pod{uid}"));
        std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).filter_map(|e| std::fs::read_to_string(e.path().join(file)).ok()).map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    };
    assert!(find("memory", "memory.limit_in_bytes").contains(&(64 * 1024 * 1024).to_string()), "{:?}", find("memory", "memory.limit_in_bytes"));
    assert!(find("cpu", "cpu.cfs_quota_us").contains(&"25000".to_string()), "{:?}", find("cpu", "cpu.cfs_quota_us"));

    // runAsNonRoot against a root image is a config error with upstream's message.
    agent.write_manifest(
        "nonroot.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: nonroot}}\nspec:\n  securityContext: {{runAsNonRoot: true}}\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [sleep, \"60\"]}}\n"),
    );
    let w = agent.wait_pod("nonroot", Duration::from_secs(60), "CreateContainerConfigError", |p| {
        let w = app_status(p, 0)?.state?.waiting?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w.message.unwrap_or_default())
    });
    assert!(w.starts_with("container has runAsNonRoot and image will run as root (pod: \"nonroot-rk-test_default("), "{w}");

    // privileged: every capability the node has (this VM lacks CAP_SYS_RESOURCE, so not "all").
    agent.write_manifest(
        "priv.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: priv}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: \"{BUSYBOX}\"\n    command: [sh, -c, \"grep CapEff /proc/self/status; exec sleep 3600\"]\n    securityContext: {{privileged: true}}\n"),
    );
    let p = agent.wait_pod("priv", Duration::from_secs(60), "Running", |p| (phase(p) == "Running").then(|| p.clone()));
    let own = std::fs::read_to_string("/proc/self/status").unwrap().lines().find(|l| l.starts_with("CapEff:")).unwrap().to_string();
    let mut out = String::new();
    agent.wait_until(Duration::from_secs(10), "privileged container output", || {
        out = agent.container_output(&p, "c", 0);
        out.contains("CapEff")
    });
    assert_eq!(out.trim(), own, "a privileged container gets the node's capabilities");

    // hostNetwork: no CNI, the host's network.
    agent.write_manifest(
        "hostnet.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: hostnet}}\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 2\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [httpd, -f, -p, \"127.0.0.1:18089\", -h, /etc]}}\n"),
    );
    agent.wait_pod("hostnet", Duration::from_secs(60), "Running", |p| (phase(p) == "Running" && app_status(p, 0)?.ready).then_some(()));
    let mut body = None;
    agent.wait_until(Duration::from_secs(15), "host-network httpd on loopback", || {
        body = http_get("127.0.0.1", 18089, "/passwd");
        body.is_some()
    });
    let body = body.unwrap();
    assert!(body.contains("200 OK") && body.contains("root:"), "{body}");
    let ipam: Vec<_> = std::fs::read_dir(agent.ipam_dir.join("rktest")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).collect();
    assert_eq!(ipam.len(), 3, "sec, nonroot and priv took pod IPs, the host-network pod none");
}

#[test]
fn t9_a_changed_manifest_replaces_the_pod_and_a_dead_sandbox_is_recreated() {
    let agent = Agent::new("t9");
    agent.write_manifest("web.yaml", &httpd_pod("chg"));
    agent.wait_pod("chg", Duration::from_secs(60), "Running", running_pod_ip);
    let old_uid = agent.pod("chg").unwrap().metadata.uid.unwrap();
    // A changed manifest is a new static pod (new UID); the old one goes away.
    agent.write_manifest("web.yaml", &httpd_pod("chg").replace("hello-", "changed-"));
    agent.wait_until(Duration::from_secs(30), "the new pod replaces the old", || {
        agent.pod("chg").and_then(|p| p.metadata.uid).map(|u| u != old_uid).unwrap_or(false)
    });
    let ip = agent.wait_pod("chg", Duration::from_secs(60), "new pod Running", running_pod_ip);
    agent.wait_until(Duration::from_secs(30), "old pod's containers removed", || containerd_containers(&old_uid).is_empty());
    let mut body = None;
    agent.wait_until(Duration::from_secs(15), "the new pod serves", || {
        body = http_get(&ip, 8080, "/");
        body.as_deref().map(|b| b.contains("changed-chg")).unwrap_or(false)
    });

    // Kill the pause container: the sandbox is re-created and the app restarted in it.
    let p = agent.pod("chg").unwrap();
    let uid = p.metadata.uid.clone().unwrap();
    let app_id = app_status(&p, 0).unwrap().container_id.unwrap().trim_start_matches("containerd://").to_string();
    let pause = containerd_containers(&uid).into_iter().find(|c| *c != app_id).expect("pause container");
    ctr(&["tasks", "kill", "-s", "KILL", &pause]);
    agent.wait_pod("chg", Duration::from_secs(60), "running again in a new sandbox", |p| {
        let cs = app_status(p, 0)?;
        (cs.restart_count == 1 && cs.ready && phase(p) == "Running").then_some(())
    });
    assert!(!containerd_containers(&uid).contains(&pause), "the dead sandbox was removed");
    assert!(agent.events().iter().any(|e| e.reason == "SandboxChanged" && e.message == "Pod sandbox changed, it will be killed and re-created."));
}

#[test]
fn t10_bad_cni_config_and_unreachable_containerd_are_reported_not_fatal() {
    // No valid CNI config: the sandbox fails with a clear event, then recovers once fixed.
    let agent = Agent::new("t10");
    let good = std::fs::read_to_string(agent.cni_conf.join("10-test.conflist")).unwrap();
    std::fs::write(agent.cni_conf.join("10-test.conflist"), "{ not json").unwrap();
    agent.write_manifest("web.yaml", &httpd_pod("nonet"));
    agent.wait_until(Duration::from_secs(30), "FailedCreatePodSandBox event", || {
        agent.events().iter().any(|e| e.reason == "FailedCreatePodSandBox" && e.message.contains("no networks found") && e.message.contains("10-test.conflist"))
    });
    let p = agent.pod("nonet").expect("the pod is reported");
    assert_eq!(phase(&p), "Pending");
    assert_eq!(waiting_reason(&p, 0).as_deref(), Some("ContainerCreating"));
    std::fs::write(agent.cni_conf.join("10-test.conflist"), good).unwrap();
    agent.wait_pod("nonet", Duration::from_secs(60), "Running once the network is configured", running_pod_ip);

    // containerd unreachable: a clear error on stderr, and the agent keeps trying.
    let root = std::path::PathBuf::from("/var/lib/rkubelet-test/agents/t10-noctr");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rkubelet"))
        .args(["--root-dir", root.to_str().unwrap(), "--container-runtime-endpoint", "unix:///nonexistent/containerd.sock", "--hostname-override", "noctr"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "the agent keeps running without containerd");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("containerd is unreachable") && err.contains("/nonexistent/containerd.sock"), "{err}");
    assert!(out.status.success(), "SIGTERM ends it cleanly");

    // A broken flag value exits with 64 before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkubelet")).args(["--container-runtime-endpoint", "tcp://1.2.3.4:5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--container-runtime-endpoint must be unix://"));
}

#[test]
fn t11_a_container_over_its_memory_limit_is_oom_killed() {
    let agent = Agent::new("t11");
    agent.write_manifest(
        "oom.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: hog
    image: {BUSYBOX}
    command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]
    resources: {{limits: {{memory: 32Mi}}}}
"#
        ),
    );
    let t = agent.wait_pod("oom", Duration::from_secs(60), "OOMKilled", |p| {
        let t = app_status(p, 0)?.state?.terminated?;
        (phase(p) == "Failed").then_some(t)
    });
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));
}

#[test]
fn t12_container_logs_lose_no_line_when_the_agent_is_killed_and_restarted() {
    // The shim runs each container's logger (binary:// task IO), so the agent's
    // death must not touch logging: every line before, during and after is kept once.
    let mut agent = Agent::new("t12");
    agent.write_manifest(
        "count.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: count}}\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, \"i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo n-$i; sleep 0.01; done; exec sleep 3600\"]\n"
        ),
    );
    let pod = agent.wait_pod("count", Duration::from_secs(60), "Running", |p| (phase(p) == "Running").then(|| p.clone()));
    let log = agent.container_log(&pod, "c", 0);
    agent.kill9();
    let killed_at = std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(800));
    agent.start();
    agent.wait_until(Duration::from_secs(60), "the last line logged", || std::fs::read_to_string(&log).map(|s| s.contains(" n-400\n")).unwrap_or(false));
    let text = std::fs::read_to_string(&log).unwrap();
    let numbers: Vec<u32> = text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).filter_map(|c| c.strip_prefix("n-")).map(|n| n.parse().unwrap()).collect();
    assert_eq!(numbers, (1..=400).collect::<Vec<u32>>(), "lines lost or repeated across the restart (agent killed after {killed_at} lines)");
    assert!(killed_at < 400, "the agent was killed while the container was still writing ({killed_at} lines by then)");
}

#[test]
fn t13_node_daemon_features_host_namespaces_devices_image_users_and_termination_messages() {
    let agent = Agent::new("t13");
    // A SysV shared memory segment on the host: visible in the host's IPC namespace only.
    let out = std::process::Command::new("ipcmk").args(["-M", "4096"]).output().expect("ipcmk (util-linux)");
    let shm_id: String = String::from_utf8_lossy(&out.stdout).split(':').nth(1).unwrap_or("").trim().to_string();
    assert!(!shm_id.is_empty(), "ipcmk: {}", String::from_utf8_lossy(&out.stderr));
    struct Shm(String);
    impl Drop for Shm {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ipcrm").args(["-m", &self.0]).output();
        }
    }
    let _shm = Shm(shm_id.clone());
    let pod = |name: &str, spec: &str, image: &str, container: &str, cmd: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n{spec}  containers:\n  - name: c\n    image: {image}\n{container}    command: [sh, -c, '{cmd}']\n")
    };
    agent.write_manifest("hostpid.yaml", &pod("hostpid", "  hostPID: true\n", BUSYBOX, "", "tr \"\\\\0\" \" \" < /proc/1/cmdline"));
    agent.write_manifest("hostipc.yaml", &pod("hostipc", "  hostIPC: true\n", BUSYBOX, "", "cat /proc/sysvipc/shm"));
    agent.write_manifest("podipc.yaml", &pod("podipc", "", BUSYBOX, "", "cat /proc/sysvipc/shm"));
    agent.write_manifest("priv.yaml", &pod("priv", "", BUSYBOX, "    securityContext: {privileged: true}\n", "ls /dev"));
    agent.write_manifest("unpriv.yaml", &pod("unpriv", "", BUSYBOX, "", "ls /dev"));
    agent.write_manifest("nobody.yaml", &pod("nobody", "", NOBODY_IMAGE, "", "id -u; id -g; id -G"));
    agent.write_manifest("msg.yaml", &pod("msg", "", BUSYBOX, "", "echo some output; printf \"the end\" > /dev/termination-log; exit 3"));
    agent.write_manifest("fallback.yaml", &pod("fallback", "", BUSYBOX, "    terminationMessagePolicy: FallbackToLogsOnError\n", "echo first; echo last words; exit 4"));
    let done = |name: &str| {
        agent.wait_pod(name, Duration::from_secs(60), "finished", |p| {
            let phase = p.status.as_ref()?.phase.clone()?;
            (phase == "Succeeded" || phase == "Failed").then(|| p.clone())
        })
    };
    // The logger may still be writing the last lines when the status shows the exit.
    let output = |name: &str| {
        let p = done(name);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = agent.container_output(&p, "c", 0);
            if !out.is_empty() || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let host_init = std::fs::read("/proc/1/cmdline").unwrap().iter().map(|b| if *b == 0 { ' ' } else { *b as char }).collect::<String>();
    assert_eq!(output("hostpid").trim_end(), host_init.trim_end(), "hostPID: the host's PID 1");
    let seg = |text: &str| text.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(shm_id.as_str()));
    assert!(seg(&output("hostipc")), "hostIPC: the host's segment {shm_id} is visible:\n{}", output("hostipc"));
    assert!(!seg(&output("podipc")), "a pod IPC namespace does not show it:\n{}", output("podipc"));
    let loops = |text: &str| text.split_whitespace().filter(|d| d.starts_with("loop")).count();
    assert!(loops(&output("priv")) > 0, "a privileged container has the host's loop devices:\n{}", output("priv"));
    assert_eq!(loops(&output("unpriv")), 0, "{}", output("unpriv"));
    assert_eq!(output("nobody").lines().collect::<Vec<_>>(), ["65534", "65534", "65534 50"], "USER nobody: its uid, gid and the groups that list it");
    let terminated = |name: &str| done(name).status.unwrap().container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    let t = terminated("msg");
    assert_eq!((t.exit_code, t.message.as_deref()), (3, Some("the end")), "the termination message file");
    let t = terminated("fallback");
    assert_eq!((t.exit_code, t.message.as_deref()), (4, Some("first\nlast words\n")), "FallbackToLogsOnError: the log's tail");
}

/// A cgroup file of the pods' hierarchy (`controller` names the v1 hierarchy;
/// on v2 the unified one), trimmed.
fn pod_cgroup_file(controller: &str, rel: &str, file: &str) -> Option<String> {
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join(rel.trim_start_matches('/')).join(file);
    std::fs::read_to_string(v1).ok().map(|s| s.trim().to_string())
}

#[test]
fn t14_pod_and_qos_cgroups_carry_the_pods_summed_limits_pids_and_shares() {
    let agent = Agent::with_options("t14", &[], &["--pod-max-pids", "64"]);
    let c = |name: &str, res: &str| format!("  - name: {name}\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    resources: {res}\n");
    let guaranteed = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: gpod}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n{}{}",
        c("a", "{limits: {cpu: 100m, memory: 32Mi}}"),
        c("b", "{limits: {cpu: 200m, memory: 64Mi}}")
    );
    let burstable = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: bpod}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n{}", c("a", "{requests: {cpu: 250m}}"));
    agent.write_manifest("g.yaml", &guaranteed);
    agent.write_manifest("b.yaml", &burstable);
    let running = |name: &str| agent.wait_pod(name, Duration::from_secs(60), "Running", |p| (phase(p) == "Running").then(|| p.clone()));
    let (g, b) = (running("gpod"), running("bpod"));
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap();
    let gdir = format!("kubepods/pod{}", uid(&g));
    // The pod's summed limits and podPidsLimit on the pod cgroup.
    assert_eq!(pod_cgroup_file("memory", &gdir, "memory.limit_in_bytes"), Some((96u64 << 20).to_string()));
    assert_eq!(pod_cgroup_file("cpu", &gdir, "cpu.cfs_quota_us"), Some("30000".into()));
    assert_eq!(pod_cgroup_file("cpu", &gdir, "cpu.shares"), Some("307".into()));
    assert_eq!(pod_cgroup_file("pids", &gdir, "pids.max"), Some("64".into()));
    // Its containers run below it.
    let cid = app_status(&g, 0).and_then(|s| s.container_id).unwrap();
    let cid = cid.trim_start_matches("containerd://");
    assert!(Path::new("/sys/fs/cgroup/memory").join(&gdir).join(cid).is_dir(), "container cgroup under the pod cgroup");
    // Burstable: no limits declared, shares from requests; the QoS cgroup's shares follow.
    let bdir = format!("kubepods/burstable/pod{}", uid(&b));
    assert_eq!(pod_cgroup_file("cpu", &bdir, "cpu.shares"), Some("256".into()));
    assert_eq!(pod_cgroup_file("cpu", &bdir, "cpu.cfs_quota_us"), Some("-1".into()));
    assert_eq!(pod_cgroup_file("cpu", "kubepods/burstable", "cpu.shares"), Some("256".into()));
    agent.remove_manifest("b.yaml");
    agent.wait_until(Duration::from_secs(30), "burstable pod cgroup gone and QoS shares back to the minimum", || {
        !Path::new("/sys/fs/cgroup/cpu").join(&bdir).exists() && pod_cgroup_file("cpu", "kubepods/burstable", "cpu.shares").as_deref() == Some("2")
    });
    assert_eq!(pod_cgroup_file("cpu", "kubepods/besteffort", "cpu.shares"), Some("2".into()));
}
