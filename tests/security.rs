//! Seccomp profiles and sysctls (issue 15, points 3 and 6) on real containerd
//! and runc, with static pods. Seccomp: RuntimeDefault (containerd's default
//! profile, also what `--seccomp-default` gives a container without a profile)
//! refuses `unshare` with EPERM unless the container has CAP_SYS_ADMIN, while
//! Unconfined and privileged containers run unfiltered; a Localhost profile
//! under `<root-dir>/seccomp` is applied, a missing one fails its container
//! with CreateContainerConfigError; the pause container gets the pod-level
//! profile. Sysctls: an allowed unsafe sysctl is set in
//! the pod's own IPC namespace (not the host's); a non-namespaced one and an
//! IPC one with hostIPC reject the pod with `SysctlForbidden`.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

/// A pod whose one container runs `script` (restartPolicy Never), with
/// extra YAML for the pod's and the container's securityContext.
fn pod(name: &str, pod_sc: &str, ctr_sc: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 2\n  securityContext: {{{pod_sc}}}\n  containers:\n  - name: c\n    \
         image: {BUSYBOX}\n    command: [sh, -c, '{script}']\n    securityContext: {{{ctr_sc}}}\n"
    )
}

fn terminated(p: &Pod) -> Option<ContainerStateTerminated> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.clone()
}

/// Waits until the pod's container exited; returns its exit code and output.
fn run_to_end(agent: &Agent, name: &str) -> (i32, String) {
    let (p, t) = agent.wait_pod(name, Duration::from_secs(90), "container terminated", |p| terminated(p).map(|t| (p.clone(), t)));
    (t.exit_code, output(agent, &p))
}

/// What the pod's container wrote up to its `done`.
fn output(agent: &Agent, p: &Pod) -> String {
    let mut out = String::new();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    agent.wait_until(Duration::from_secs(60), &format!("{name}'s output"), || {
        out = agent.container_output(p, "c", 0);
        out.contains("done")
    });
    out
}

/// The running pod (its container started), for its output and its pause container.
fn running(agent: &Agent, name: &str) -> Pod {
    agent.wait_pod(name, Duration::from_secs(90), "Running", |p| {
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.clone())
    })
}

/// The seccomp mode (/proc/<pid>/status: 0 none, 2 filter) of the pod's pause process.
fn pause_seccomp(p: &Pod) -> String {
    let uid = p.metadata.uid.as_deref().unwrap_or_default();
    let filter = format!("labels.\"io.kubernetes.pod.uid\"=={uid},labels.\"io.rkubelet.kind\"==sandbox");
    let id = ctr(&["containers", "ls", "-q", &filter]).lines().next().map(String::from).expect("a sandbox container");
    let tasks = ctr(&["tasks", "ls"]);
    let pid = tasks.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(id.as_str())).then(|| f.next().map(String::from)).flatten()
    });
    let pid = pid.unwrap_or_else(|| panic!("no task for sandbox {id} in:\n{tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|m| m.trim().to_string()).unwrap_or_default()
}

/// The seccomp mode of the container's shell (/proc/self/status: 0 none, 2 filter)
/// and whether `unshare -U` (a user namespace: no capability needed) worked;
/// then it keeps running, as does its pause container.
const UNSHARE: &str = "grep ^Seccomp: /proc/self/status; unshare -U true 2>&1; echo unshare-rc=$?; echo done; exec sleep 3600";

#[test]
fn s1_seccomp_runtime_default_localhost_unconfined_and_seccomp_default() {
    let mut agent = Agent::with_options("s1", &[], &["--seccomp-default"]);
    // The profile is read when a container is created: written after the start.
    let profiles = agent.state_dir().join("seccomp").join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let block_mkdir = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#;
    std::fs::write(profiles.join("block-mkdir.json"), block_mkdir).unwrap();

    let rd = "seccompProfile: {type: RuntimeDefault}";
    agent.write_manifest("rtdefault.yaml", &pod("rtdefault", "", rd, UNSHARE));
    agent.write_manifest("defaulted.yaml", &pod("defaulted", "", "", UNSHARE));
    agent.write_manifest("admin.yaml", &pod("admin", "", &format!("{rd}, capabilities: {{add: [SYS_ADMIN]}}"), UNSHARE));
    agent.write_manifest("unconfined.yaml", &pod("unconfined", rd, "seccompProfile: {type: Unconfined}", UNSHARE));
    agent.write_manifest("privileged.yaml", &pod("privileged", rd, "privileged: true", UNSHARE));
    let local = "seccompProfile: {type: Localhost, localhostProfile: profiles/block-mkdir.json}";
    let mkdir = "grep ^Seccomp: /proc/self/status; mkdir /tmp/x 2>&1; echo mkdir-rc=$?; echo done; exec sleep 3600";
    agent.write_manifest("localhost.yaml", &pod("localhost", local, "", mkdir));
    let missing = "seccompProfile: {type: Localhost, localhostProfile: missing.json}";
    agent.write_manifest("missing.yaml", &pod("missing", "", missing, "echo done"));

    // RuntimeDefault, asked for or from --seccomp-default: unshare is refused (EPERM).
    for name in ["rtdefault", "defaulted"] {
        let out = output(&agent, &running(&agent, name));
        assert!(out.contains("Seccomp:\t2"), "{name} runs under a filter: {out}");
        assert!(out.contains("Operation not permitted") && out.contains("unshare-rc=1"), "{name}: unshare refused with EPERM: {out}");
    }
    // The same profile with CAP_SYS_ADMIN allows unshare (containerd's capability additions).
    let out = output(&agent, &running(&agent, "admin"));
    assert!(out.contains("Seccomp:\t2") && out.contains("unshare-rc=0"), "admin: {out}");
    // The container's Unconfined overrides the pod's RuntimeDefault; privileged gets no filter.
    for name in ["unconfined", "privileged"] {
        let out = output(&agent, &running(&agent, name));
        assert!(out.contains("Seccomp:\t0") && out.contains("unshare-rc=0"), "{name}: {out}");
    }
    // The pod's Localhost profile applies to its container: mkdir fails with EPERM.
    let out = output(&agent, &running(&agent, "localhost"));
    assert!(out.contains("Seccomp:\t2") && out.contains("Operation not permitted") && out.contains("mkdir-rc=1"), "localhost: {out}");
    // The pause containers: the pod-level profile (or seccompDefault), none when a container is privileged.
    for (name, mode) in [("rtdefault", "2"), ("unconfined", "2"), ("localhost", "2"), ("privileged", "0")] {
        assert_eq!(pause_seccomp(&running(&agent, name)), mode, "{name}'s pause container");
    }

    // A missing profile fails that container with a message naming the file.
    let path = agent.state_dir().join("seccomp/missing.json");
    let msg = agent.wait_pod("missing", Duration::from_secs(60), "CreateContainerConfigError", |p| {
        let w = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then(|| w.message.unwrap_or_default())
    });
    assert!(msg.starts_with(&format!("cannot load seccomp profile {path:?}: ")), "{msg}");
    assert!(agent.is_running(), "the agent keeps running");
    // Written now, the profile is used at the next attempt.
    std::fs::write(&path, block_mkdir).unwrap();
    let (code, _) = run_to_end(&agent, "missing");
    assert_eq!(code, 0);
}

#[test]
fn s2_sysctls_allowed_unsafe_namespaced_and_forbidden() {
    let agent = Agent::with_options("s2", &[], &["--allowed-unsafe-sysctls=kernel.msg*"]);
    let host_msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap();
    let value = if host_msgmax.trim() == "65536" { "65537" } else { "65536" };
    let sysctls = |list: &str| format!("sysctls: [{list}]");
    let read = "cat /proc/sys/kernel/msgmax /proc/sys/net/ipv4/ip_local_port_range; echo done";
    // An allowed unsafe sysctl (by pattern) and a safe one in the slash form.
    let msgmax = format!("{{name: kernel.msgmax, value: \"{value}\"}}");
    let allowed = sysctls(&format!("{msgmax}, {{name: net/ipv4/ip_local_port_range, value: \"20000 30000\"}}"));
    agent.write_manifest("msgmax.yaml", &pod("msgmax", &allowed, "", read));
    let sched = sysctls("{name: kernel.sched_child_runs_first, value: \"1\"}");
    agent.write_manifest("forbidden.yaml", &pod("forbidden", &sched, "", "echo done"));
    let hostipc = pod("hostipc", &sysctls(&msgmax), "", "echo done");
    let hostipc = hostipc.replace("  restartPolicy: Never\n", "  restartPolicy: Never\n  hostIPC: true\n");
    agent.write_manifest("hostipc.yaml", &hostipc);

    let (code, out) = run_to_end(&agent, "msgmax");
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some(value), "{out}");
    assert_eq!(lines.get(1).map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["20000", "30000"]), "{out}");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap(), host_msgmax, "the host's IPC namespace is untouched");

    for (name, why) in [
        ("forbidden", r#"forbidden sysctl: "kernel.sched_child_runs_first" not allowlisted"#),
        ("hostipc", r#"forbidden sysctl: "kernel.msgmax" not allowed with host ipc enabled"#),
    ] {
        let p = agent.wait_pod(name, Duration::from_secs(60), "rejected", |p| (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone()));
        let st = p.status.clone().unwrap();
        assert_eq!((st.reason.as_deref(), st.message.as_deref()), (Some("SysctlForbidden"), Some(format!("Pod was rejected: {why}").as_str())));
        let uid = p.metadata.uid.clone().unwrap();
        assert!(containerd_containers(&uid).is_empty(), "{name}: nothing started");
        assert!(agent.events().iter().any(|e| e.reason == "SysctlForbidden" && e.message == why), "{name}: the event");
    }
}

/// A sub path through a symlink the pod planted (`esc` -> /etc) is refused with
/// upstream's message while a plain one works; the sub path is bound from
/// `<pod dir>/volume-subpaths`, which goes with the pod and leaves the volume's
/// content alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_sub_path_symlink_out_of_its_volume_is_refused() {
    let agent = tokio::task::block_in_place(|| Agent::new("s3"));
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sub}}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         volumes: [{{name: data, emptyDir: {{}}}}]\n  initContainers:\n  - name: plant\n    image: {BUSYBOX}\n    \
         command: [sh, -c, 'ln -s /etc /data/esc && mkdir -p /data/ok && echo inside > /data/ok/f']\n    \
         volumeMounts: [{{name: data, mountPath: /data}}]\n  containers:\n  - name: victim\n    image: {BUSYBOX}\n    \
         command: [sh, -c, 'ls /mnt; sleep 3600']\n    volumeMounts: [{{name: data, mountPath: /mnt, subPath: esc}}]\n  \
         - name: fine\n    image: {BUSYBOX}\n    command: [sh, -c, 'cat /mnt/f; sleep 3600']\n    \
         volumeMounts: [{{name: data, mountPath: /mnt, subPath: ok}}]\n"
    );
    tokio::task::block_in_place(|| {
        agent.write_manifest("sub.yaml", &yaml);
        let waiting = |p: &Pod, name: &str| {
            let cs = p.status.as_ref()?.container_statuses.as_ref()?;
            let w = cs.iter().find(|c| c.name == name)?.state.as_ref()?.waiting.clone()?;
            Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
        };
        let (reason, message) = agent.wait_pod("sub", Duration::from_secs(90), "victim refused", |p| waiting(p, "victim").filter(|(r, _)| r == "CreateContainerConfigError"));
        assert_eq!(message, "failed to prepare subPath for volumeMount \"data\" of container \"victim\"", "{reason}");
        let p = agent.wait_pod("sub", Duration::from_secs(60), "fine running", |p| {
            let cs = p.status.as_ref()?.container_statuses.as_ref()?;
            cs.iter().find(|c| c.name == "fine")?.state.as_ref()?.running.is_some().then(|| p.clone())
        });
        let mut out = String::new();
        agent.wait_until(Duration::from_secs(30), "fine's output", || {
            out = agent.container_output(&p, "fine", 0);
            out.contains("inside")
        });
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let pod_dir = agent.state_dir().join("pods").join(&uid);
        let bound = pod_dir.join("volume-subpaths/data/fine/0");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(bound.to_str().unwrap())), "{} is a bind mount", bound.display());
        assert!(!pod_dir.join("volume-subpaths/data/victim").exists(), "nothing bound for the refused mount");
        let log = std::fs::read_to_string(agent.root.join("agent.log")).unwrap_or_default();
        assert!(log.contains("Failed to prepare subPath for volumeMount of the container") && log.contains("not within volume path"), "{}", agent.log_tail(30));
        // The pod goes: its sub path binds are unmounted and its directory removed.
        agent.remove_manifest("sub.yaml");
        agent.wait_until(Duration::from_secs(60), "the pod directory removed", || !pod_dir.exists());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&uid), "no mount of the pod left");
    });
}

/// AppArmor asked for on a host without it (this one: no AppArmor module): the
/// pod stays Pending with reason AppArmor and upstream's message, its container
/// waits as Blocked and nothing is created; an Unconfined pod runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_apparmor_on_a_host_without_it_blocks_the_pod_with_upstreams_message() {
    assert!(
        !std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.starts_with('Y')),
        "this test expects a host without AppArmor"
    );
    let agent = tokio::task::block_in_place(|| Agent::new("s4"));
    tokio::task::block_in_place(|| {
        agent.write_manifest("aa.yaml", &pod("aa", "appArmorProfile: {type: RuntimeDefault}", "", "echo done; sleep 3600"));
        agent.write_manifest("free.yaml", &pod("free", "appArmorProfile: {type: Unconfined}", "", "echo done; sleep 3600"));
        let p = agent.wait_pod("aa", Duration::from_secs(60), "blocked", |p| {
            let st = p.status.as_ref()?;
            (st.reason.as_deref() == Some("AppArmor")).then(|| p.clone())
        });
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        assert_eq!(st.message.as_deref(), Some("Cannot enforce AppArmor: AppArmor is not enabled on the host"));
        let w = st.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().waiting.clone().unwrap();
        assert_eq!(w.reason.as_deref(), Some("Blocked"));
        running(&agent, "free");
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let made = ctr(&["containers", "ls", "-q", &format!("labels.\"io.kubernetes.pod.uid\"=={uid}")]);
        assert!(made.trim().is_empty(), "nothing created for the blocked pod: {made}");
    });
}
