//! Node pressure (issue 14): the eviction manager against real memory use on
//! this host. The test sets `memory.available` a few GiB under what the node
//! has, fills a tmpfs of its own past it, and reads the outcome through the
//! strict test API server and `kubectl`: the MemoryPressure condition and its
//! taint, BestEffort admission refused, pods evicted BestEffort first with
//! upstream's message, and the condition gone a transition period after the
//! memory is back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::*;
use common::*;
use serde_json::Value;

const GIB: i64 = 1 << 30;

/// memory.available as upstream computes it (capacity less the root cgroup's
/// working set), in bytes.
fn memory_available() -> i64 {
    let (cap, ws) = rkubelet::eviction::observe::node_memory().expect("node memory");
    cap - ws
}

/// A tmpfs the test fills (its pages count in the node's working set); unmounted on drop.
struct Hog(PathBuf);

impl Hog {
    fn mount(dir: &Path, gib: i64) -> Hog {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={}g", gib + 1), "rk-hog", dir.to_str().unwrap()]).status().unwrap().success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        let hog = Hog(dir.to_path_buf());
        let out = Command::new("dd").args(["if=/dev/zero", &format!("of={}/fill", dir.display()), "bs=1M", &format!("count={}", gib * 1024)]).output().unwrap();
        assert!(out.status.success(), "dd: {}", String::from_utf8_lossy(&out.stderr));
        hog
    }

    fn release(&self) {
        let _ = std::fs::remove_file(self.0.join("fill"));
        if Command::new("mountpoint").arg("-q").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.release();
    }
}

fn sleeper(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 30\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'trap \"\" TERM; exec sleep 3600']\n{resources}"
    )
}

fn has_taint(n: &Value, key: &str) -> bool {
    n["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|t| t["key"] == key && t["effect"] == "NoSchedule"))
}

/// The `Evicted` events' (pod, time), oldest first.
fn evicted_events(admin: &Path) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = kubectl_json(admin, &["get", "events", "-n", "default", "--field-selector", "reason=Evicted"])
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let t = e["eventTime"].as_str().or(e["firstTimestamp"].as_str()).unwrap_or("").to_string();
            (e["involvedObject"]["name"].as_str().unwrap_or("").to_string(), t, e["message"].as_str().unwrap_or("").to_string())
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_memory_pressure_sets_the_condition_refuses_best_effort_and_evicts_best_effort_first() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/e1-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    // 3 GiB under what the node has now; the test's 6 GiB tmpfs goes 3 GiB past it.
    let threshold_gib = memory_available() / GIB - 3;
    assert!(threshold_gib >= 2, "this host has too little memory for the test: {} GiB available", memory_available() / GIB);
    let hard = format!("memory.available<{threshold_gib}Gi");
    let agent = tokio::task::block_in_place(|| {
        Agent::with_options("e1", &[], &["--kubeconfig", &node_kc, "--eviction-hard", &hard, "--eviction-pressure-transition-period", "20s"])
    });
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        let node = || kubectl_json(&admin, &["get", "node", NODE]);
        wait_for(Duration::from_secs(30), "node Ready, no memory pressure", &agent, || {
            node().filter(|n| condition(n, "Ready").is_some_and(|c| c.0 == "True") && condition(n, "MemoryPressure").is_some_and(|c| c.0 == "False"))
        });
        // A BestEffort and a Burstable pod (well under its 64Mi request), both running.
        create(&admin, &agent.root, "be.yaml", &sleeper("be", ""));
        create(&admin, &agent.root, "bu.yaml", &sleeper("bu", "    resources: {requests: {memory: 64Mi}}\n"));
        for p in ["be", "bu"] {
            wait_for(Duration::from_secs(60), "pod Running", &agent, || pod_phase(&admin, p).filter(|p| p["status"]["phase"] == "Running"));
        }

        let hog = Hog::mount(&agent.root.join("hog"), 6);
        let filled = Instant::now();
        // The condition (upstream's reason and message), its taint, and the node event.
        let n = wait_for(Duration::from_secs(40), "MemoryPressure True with its taint", &agent, || {
            node().filter(|n| condition(n, "MemoryPressure").is_some_and(|c| c.0 == "True") && has_taint(n, "node.kubernetes.io/memory-pressure"))
        });
        assert_eq!(
            condition(&n, "MemoryPressure"),
            Some(("True".into(), "KubeletHasInsufficientMemory".into(), "kubelet has insufficient memory available".into()))
        );
        eprintln!("MemoryPressure {:.1} s after the tmpfs was filled", filled.elapsed().as_secs_f64());

        // Evicted: BestEffort first, with upstream's status, condition and message.
        let be = wait_for(Duration::from_secs(60), "be evicted", &agent, || pod_phase(&admin, "be").filter(|p| p["status"]["phase"] == "Failed"));
        assert_eq!(be["status"]["reason"], "Evicted");
        let msg = be["status"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with(&format!("The node was low on resource: memory. Threshold quantity: {threshold_gib}Gi, available: ")) && msg.contains("Container c was using ") && msg.ends_with(", request is 0, has larger consumption of memory. "),
            "{msg}"
        );
        let dt = be["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DisruptionTarget").cloned().expect("DisruptionTarget");
        assert_eq!((dt["status"].as_str(), dt["reason"].as_str(), dt["message"].as_str()), (Some("True"), Some("TerminationByKubelet"), Some(msg.as_str())));
        // The container ignores SIGTERM and has 30 s: the hard threshold's 1 s grace killed it.
        let term = &be["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 137, "{term}");

        // A new BestEffort pod is refused while the pressure lasts.
        create(&admin, &agent.root, "late.yaml", &sleeper("late", ""));
        let late = wait_for(Duration::from_secs(30), "late rejected", &agent, || pod_phase(&admin, "late").filter(|p| p["status"]["phase"] == "Failed"));
        assert_eq!((late["status"]["reason"].as_str(), late["status"]["message"].as_str()), (Some("Evicted"), Some("Pod was rejected: The node had condition: [MemoryPressure]. ")));

        // The memory stays short: the Burstable pod goes next, after the BestEffort one.
        wait_for(Duration::from_secs(60), "bu evicted", &agent, || pod_phase(&admin, "bu").filter(|p| p["status"]["phase"] == "Failed"));
        let evs = evicted_events(&admin);
        let order: Vec<&str> = evs.iter().filter(|(p, _, m)| p != "late" && m.starts_with("The node was low")).map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(order, vec!["be", "bu"], "{evs:?}");
        let node_evs = kubectl_json(&admin, &["get", "events", "-n", "default", "--field-selector", "involvedObject.kind=Node"]).unwrap();
        let reasons: Vec<(String, String)> = node_evs["items"].as_array().unwrap().iter().map(|e| (e["reason"].as_str().unwrap_or("").into(), e["message"].as_str().unwrap_or("").into())).collect();
        assert!(reasons.contains(&("EvictionThresholdMet".into(), "Attempting to reclaim memory".into())), "{reasons:?}");
        assert!(reasons.contains(&("NodeHasInsufficientMemory".into(), format!("Node {NODE} status is now: NodeHasInsufficientMemory"))), "{reasons:?}");

        // Memory back: the condition holds for the transition period, then clears with its taint.
        hog.release();
        let released = Instant::now();
        let n = wait_for(Duration::from_secs(60), "MemoryPressure False, taint gone", &agent, || {
            node().filter(|n| condition(n, "MemoryPressure").is_some_and(|c| c.0 == "False") && !has_taint(n, "node.kubernetes.io/memory-pressure"))
        });
        let after = released.elapsed();
        // Last seen at most one 10 s monitoring period before the release: not before 10 s.
        assert!(after >= Duration::from_secs(9), "the condition cleared {after:?} after the memory came back, inside the 20 s transition period");
        assert_eq!(condition(&n, "MemoryPressure").unwrap().1, "KubeletHasSufficientMemory");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_pid_pressure_when_pid_available_is_under_its_threshold() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/e2-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    // A threshold just above what the node has: PIDPressure from the first pass.
    let (max, procs) = rkubelet::eviction::observe::pids().expect("pid counts");
    let hard = format!("memory.available<100Mi,pid.available<{}", max - procs + 5000);
    let agent = tokio::task::block_in_place(|| Agent::with_options("e2", &[], &["--kubeconfig", &node_kc, "--eviction-hard", &hard]));
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        let n = wait_for(Duration::from_secs(40), "PIDPressure True", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| condition(n, "PIDPressure").is_some_and(|c| c.0 == "True") && has_taint(n, "node.kubernetes.io/pid-pressure"))
        });
        assert_eq!(condition(&n, "PIDPressure"), Some(("True".into(), "KubeletHasInsufficientPID".into(), "kubelet has insufficient PID available".into())));
        // Any pressure but memory refuses every pod.
        let _cleanup = DeletePods(admin.clone());
        create(&admin, &agent.root, "bu.yaml", &sleeper("bu", "    resources: {requests: {memory: 64Mi}}\n"));
        let p = wait_for(Duration::from_secs(30), "bu rejected", &agent, || pod_phase(&admin, "bu").filter(|p| p["status"]["phase"] == "Failed"));
        assert_eq!((p["status"]["reason"].as_str(), p["status"]["message"].as_str()), (Some("Evicted"), Some("Pod was rejected: The node had condition: [PIDPressure]. ")));
    });
    assert_api_clean(&api.srv);
}

/// Exited instances of the pod's container `c` in containerd: (attempt, id), oldest first.
fn exited_instances(uid: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = containerd_containers(uid)
        .into_iter()
        .filter_map(|id| {
            let info: Value = serde_json::from_str(&ctr(&["containers", "info", &id])).ok()?;
            let labels = &info["Labels"];
            (labels["io.rkubelet.kind"] == "app" && labels["io.rkubelet.finished-at"].is_string()).then(|| (labels["io.rkubelet.attempt"].as_str().unwrap_or("0").parse().unwrap_or(0), id))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn e3_container_gc_keeps_one_exited_instance_per_container() {
    let mut agent = Agent::new("e3");
    agent.write_manifest(
        "crash.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [sh, -c, \"exit 3\"]}}\n"),
    );
    let uid = agent.wait_pod("crash", Duration::from_secs(60), "pod known", |p| p.metadata.uid.clone());
    // The worker keeps the newest two exited instances while it backs off.
    let before = wait_for(Duration::from_secs(90), "two exited instances", &agent, || Some(exited_instances(&uid)).filter(|v| v.len() >= 2));
    let (old, newest) = (before[before.len() - 2].1.clone(), before[before.len() - 1].1.clone());
    // At the agent's start (and every minute) container GC keeps one per container.
    agent.stop();
    agent.start();
    wait_for(Duration::from_secs(30), "the older exited instance collected", &agent, || (!containerd_containers(&uid).contains(&old)).then_some(()));
    assert!(containerd_containers(&uid).contains(&newest), "the newest exited instance stays: {:?}", exited_instances(&uid));
    assert!(agent.log_tail(usize::MAX).contains("exited container garbage collected"), "{}", agent.log_tail(20));
    agent.remove_all_pods();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_a_soft_threshold_waits_its_grace_period_and_evicts_with_the_max_pod_grace_period() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/e4-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let threshold_gib = memory_available() / GIB - 3;
    assert!(threshold_gib >= 2, "this host has too little memory for the test");
    let soft = format!("memory.available<{threshold_gib}Gi");
    let agent = tokio::task::block_in_place(|| {
        Agent::with_options(
            "e4",
            &[],
            &["--kubeconfig", &node_kc, "--eviction-soft", &soft, "--eviction-soft-grace-period", "memory.available=8s", "--eviction-max-pod-grace-period", "4", "--eviction-pressure-transition-period", "10s"],
        )
    });
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(30), "node Ready", &agent, || kubectl_json(&admin, &["get", "node", NODE]).filter(|n| condition(n, "Ready").is_some_and(|c| c.0 == "True")));
        // Ignores SIGTERM and has 30 s: only the soft eviction's 4 s ends it.
        create(&admin, &agent.root, "be.yaml", &sleeper("be", ""));
        wait_for(Duration::from_secs(60), "be Running", &agent, || pod_phase(&admin, "be").filter(|p| p["status"]["phase"] == "Running"));
        let hog = Hog::mount(&agent.root.join("hog"), 6);
        // The condition comes at once; the eviction only after the 8 s grace period.
        let seen = wait_for(Duration::from_secs(40), "MemoryPressure True", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| condition(n, "MemoryPressure").is_some_and(|c| c.0 == "True")).map(|_| Instant::now())
        });
        let be = wait_for(Duration::from_secs(60), "be evicted", &agent, || pod_phase(&admin, "be").filter(|p| p["status"]["phase"] == "Failed"));
        let evicted_after = seen.elapsed();
        assert_eq!(be["status"]["reason"], "Evicted");
        assert!(be["status"]["message"].as_str().unwrap().starts_with(&format!("The node was low on resource: memory. Threshold quantity: {threshold_gib}Gi, available: ")), "{}", be["status"]["message"]);
        assert!(evicted_after >= Duration::from_secs(5), "evicted {evicted_after:?} after the condition, inside the 8 s soft grace period");
        // Killed after the 4 s evictionMaxPodGracePeriod (not 1 s, not its own 30 s).
        let term = &be["status"]["containerStatuses"][0]["state"]["terminated"];
        let (started, finished) = (term["startedAt"].as_str().unwrap(), term["finishedAt"].as_str().unwrap());
        assert_eq!(term["exitCode"], 137, "{term}");
        let evs = evicted_events(&admin);
        let evicted_at = chrono::DateTime::parse_from_rfc3339(&evs.iter().find(|(p, _, _)| p == "be").expect("Evicted event").1).unwrap();
        let killed_after = chrono::DateTime::parse_from_rfc3339(finished).unwrap() - evicted_at;
        // Both times are whole seconds: 3 s at least (a hard eviction's 1 s would show 1-2 s).
        assert!(killed_after >= chrono::Duration::seconds(3) && killed_after < chrono::Duration::seconds(25), "killed {killed_after:?} after the eviction (started {started})");
        hog.release();
    });
    assert_api_clean(&api.srv);
}
