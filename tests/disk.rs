//! Disk: image garbage collection and disk pressure (issue 14) on a node with a
//! small disk of the test's own (tests/common/small.rs: a loop-mounted ext4
//! holding the agent's root dir and its own containerd's store), with the strict
//! test API server and the real kubectl.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::*;
use common::small::*;
use common::*;
use serde_json::Value;

const MIB: i64 = 1 << 20;

fn pod(name: &str, image: &str, command: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Never\n    command: [sh, -c, '{command}']\n"
    )
}

fn running(admin: &Path, agent: &Agent, name: &str) {
    wait_for(Duration::from_secs(60), "pod Running", agent, || pod_phase(admin, name).filter(|p| p["status"]["phase"] == "Running"));
}

/// Deletes the pods and waits (bounded) until this node's containerd has none of theirs.
fn delete_pods(admin: &Path, agent: &Agent, node: &SmallNode, names: &[&str]) {
    let mut args = vec!["delete", "pod", "--wait=false"];
    args.extend_from_slice(names);
    let (ok, out) = kubectl(admin, &args);
    assert!(ok, "{out}");
    wait_for(Duration::from_secs(60), "pods gone", agent, || names.iter().all(|n| pod_phase(admin, n).is_none()).then_some(()));
    let _ = node;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_image_gc_removes_the_least_recently_used_image_and_remembers_uses_across_restarts() {
    let small = tokio::task::block_in_place(|| SmallNode::start("d1", 400, &[BUSYBOX, PAUSE]));
    let (a, b) = ("localhost/filler/a:1", "localhost/filler/b:1");
    for name in [a, b] {
        let tar = filler_image(&small.dir, BUSYBOX, name, 8);
        small.import(&tar);
    }
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/d1-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let base: Vec<String> = small.agent_args().into_iter().chain(["--kubeconfig".into(), node_kc.clone(), "--eviction-hard".into(), "memory.available<100Mi".into()]).collect();
    // Collection off (high 100): the agent only records what it sees.
    let first: Vec<String> = base.iter().cloned().chain(["--image-gc-high-threshold".into(), "100".into()]).collect();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("d1", &[], &first.iter().map(String::as_str).collect::<Vec<_>>()));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let records = small.fs.join("kubelet").join("image-gc.json");
    tokio::task::block_in_place(|| {
        // a is used, then b; busybox stays in use by a running pod.
        agent.wait_until(Duration::from_secs(30), "node registered", || kubectl_json(&admin, &["get", "node", NODE]).is_some());
        for (p, img) in [("pa", a), ("pb", b)] {
            create(&admin, &agent.root, &format!("{p}.yaml"), &pod(p, img, "exec sleep 3600", ""));
            running(&admin, &agent, p);
            std::thread::sleep(Duration::from_secs(1));
            delete_pods(&admin, &agent, &small, &[p]);
        }
        create(&admin, &agent.root, "keep.yaml", &pod("keep", BUSYBOX, "exec sleep 3600", ""));
        running(&admin, &agent, "keep");
        // The uses are on disk once the agent stops.
        agent.stop();
        let rec: Value = serde_json::from_slice(&std::fs::read(&records).expect("image-gc.json")).unwrap();
        let used: Vec<&str> = rec.as_object().unwrap().values().filter_map(|r| r["lastUsed"].as_str()).collect();
        assert!(used.len() >= 2, "last uses saved: {rec}");

        // The image filesystem just over the threshold, a few MiB short of it:
        // one 8 MiB image is enough to go.
        let (avail, cap) = small.statfs();
        let usage = 100 - avail * 100 / cap;
        let h = usage + 3;
        let target = cap * (100 - h) / 100 - 3 * MIB;
        small.fill("filler", avail - target);
        let (avail2, _) = small.statfs();
        eprintln!("image fs: {} MiB of {} MiB free, threshold {h}% (to free: {} MiB)", avail2 / MIB, cap / MIB, (cap * (100 - h) / 100 - avail2) / MIB);
        let second: Vec<String> = base
            .iter()
            .cloned()
            .chain(["--image-gc-high-threshold".into(), h.to_string(), "--image-gc-low-threshold".into(), h.to_string(), "--minimum-image-ttl-duration".into(), "0s".into()])
            .collect();
        agent.set_args(&second.iter().map(String::as_str).collect::<Vec<_>>());
        agent.start();
        agent.wait_until(Duration::from_secs(40), "image a collected", || !small.images().iter().any(|i| i == a));
        let left = small.images();
        for keep in [b, BUSYBOX, PAUSE] {
            assert!(left.iter().any(|i| i == keep), "{keep} must stay (b: used later; busybox: in use; pause: pinned): {left:?}");
        }
        let log = std::fs::read_to_string(agent.root.join("agent.log")).unwrap_or_default();
        assert!(log.contains("image garbage collected") && log.contains("filler/a:1"), "{}", agent.log_tail(30));
        let evs = kubectl_json(&admin, &["get", "events", "-n", "default", "--field-selector", "reason=FreeDiskSpaceFailed"]).unwrap();
        assert!(evs["items"].as_array().unwrap().is_empty(), "enough was eligible: {evs}");

        // 24 MiB more on the disk: more than b (8 MiB, the last eligible image)
        // frees. b still goes, and the shortfall is a FreeDiskSpaceFailed node
        // event with upstream's message.
        agent.stop();
        small.fill("filler-2", 24 * MIB);
        agent.start();
        let failed = || {
            let evs = kubectl_json(&admin, &["get", "events", "-n", "default", "--field-selector", "reason=FreeDiskSpaceFailed"])?;
            evs["items"].as_array()?.first().cloned()
        };
        agent.wait_until(Duration::from_secs(40), "a FreeDiskSpaceFailed event", || failed().is_some());
        let ev = failed().unwrap();
        assert_eq!(ev["type"], "Warning", "{ev}");
        assert_eq!(ev["involvedObject"]["kind"], "Node", "{ev}");
        let msg = ev["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with("Failed to garbage collect required amount of images. Attempted to free ") && msg.contains("bytes, but only found "), "{msg}");
        let left = small.images();
        assert!(!left.iter().any(|i| i == b), "b was eligible and went: {left:?}");
        for keep in [BUSYBOX, PAUSE] {
            assert!(left.iter().any(|i| i == keep), "{keep} must stay: {left:?}");
        }
        delete_pods(&admin, &agent, &small, &["keep"]);
    });
    drop(agent);
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_disk_pressure_reclaims_containers_and_images_then_evicts_the_pod_filling_the_disk() {
    let small = tokio::task::block_in_place(|| SmallNode::start("d2", 300, &[BUSYBOX, PAUSE]));
    let unused = "localhost/filler/unused:1";
    small.import(&filler_image(&small.dir, BUSYBOX, unused, 8));
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/d2-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let args: Vec<String> = small
        .agent_args()
        .into_iter()
        .chain(
            ["--kubeconfig", &node_kc, "--eviction-hard", "memory.available<100Mi,nodefs.available<35%", "--eviction-pressure-transition-period", "10s", "--image-gc-high-threshold", "100", "--minimum-image-ttl-duration", "0s"]
                .map(String::from),
        )
        .collect();
    let agent = tokio::task::block_in_place(|| Agent::with_options("d2", &[], &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        agent.wait_until(Duration::from_secs(30), "node registered", || kubectl_json(&admin, &["get", "node", NODE]).is_some());
        // A finished pod (its exited container stays), a quiet one, and one that fills an emptyDir.
        create(&admin, &agent.root, "done.yaml", &pod("done", BUSYBOX, "exit 0", "  restartPolicy: Never\n"));
        wait_for(Duration::from_secs(60), "done Succeeded", &agent, || pod_phase(&admin, "done").filter(|p| p["status"]["phase"] == "Succeeded"));
        let done_uid = pod_phase(&admin, "done").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let done_containers = || small.ctr(&["containers", "ls", "-q", &format!("labels.\"io.kubernetes.pod.uid\"=={done_uid},labels.\"io.rkubelet.kind\"==app")]).1.lines().filter(|l| !l.is_empty()).count();
        assert!(done_containers() >= 1, "the finished pod's containers are kept until reclaimed");
        create(&admin, &agent.root, "quiet.yaml", &pod("quiet", BUSYBOX, "exec sleep 3600", ""));
        running(&admin, &agent, "quiet");
        let (avail, cap) = small.statfs();
        // Down to 20% free: past the 35% threshold by far more than the unused image.
        let write_mib = (avail - cap / 5) / MIB;
        let fill = format!("dd if=/dev/urandom of=/data/f bs=1M count={write_mib} 2>/dev/null; sync; exec sleep 3600");
        let vol = "  volumes: [{name: data, emptyDir: {}}]\n";
        create(&admin, &agent.root, "hog.yaml", &pod("hog", BUSYBOX, &fill, vol).replace("    command:", "    volumeMounts: [{name: data, mountPath: /data}]\n    command:"));
        let n = wait_for(Duration::from_secs(90), "DiskPressure", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| condition(n, "DiskPressure").is_some_and(|c| c.0 == "True"))
        });
        assert_eq!(condition(&n, "DiskPressure"), Some(("True".into(), "KubeletHasDiskPressure".into(), "kubelet has disk pressure".into())));
        let hog = wait_for(Duration::from_secs(60), "hog evicted", &agent, || pod_phase(&admin, "hog").filter(|p| p["status"]["phase"] == "Failed"));
        assert_eq!(hog["status"]["reason"], "Evicted");
        let msg = hog["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: ") && msg.contains(", available: ") && msg.ends_with(", request is 0, has larger consumption of ephemeral-storage. "),
            "{msg}"
        );
        // Reclaimed first: the finished pod's exited container and the unused image.
        assert_eq!(done_containers(), 0, "exited containers go before any eviction");
        assert!(!small.images().iter().any(|i| i == unused), "{:?}", small.images());
        assert!(small.images().iter().any(|i| i == BUSYBOX), "an image in use stays");
        let log = std::fs::read_to_string(agent.root.join("agent.log")).unwrap_or_default();
        let reclaim = log.find("node-level reclaim").expect("a node-level reclaim");
        let evict = log.find("The node was low on resource: ephemeral-storage").expect("the eviction");
        assert!(reclaim < evict, "reclaim before eviction");
        // The evicted pod's emptyDir went with it: the pressure ends, nothing else was touched.
        wait_for(Duration::from_secs(60), "DiskPressure False", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| condition(n, "DiskPressure").is_some_and(|c| c.0 == "False"))
        });
        let q = pod_phase(&admin, "quiet").unwrap();
        assert_eq!((q["status"]["phase"].as_str(), q["status"]["containerStatuses"][0]["restartCount"].as_i64()), (Some("Running"), Some(0)));
        delete_pods(&admin, &agent, &small, &["quiet", "hog", "done"]);
    });
    drop(agent);
    assert_api_clean(&api.srv);
}
