//! The agent against an API server (issue 3): node registration, readiness,
//! lease, pods bound to the node, status, events, deletion. The API server is the
//! in-repo strict test server (`tests/apiserver`); containerd, runc and CNI are real;
//! `kubectl` is the real client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::Value;

fn node_ready(n: &Value) -> Option<(String, String)> {
    let c = n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.to_string(), c["message"].as_str().unwrap_or("").to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_node_registers_turns_ready_with_cni_and_renews_its_lease() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a1-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a1", &[], &["--kubeconfig", &node_kc, "--node-lease-duration-seconds", "8"]));
    let good = std::fs::read_to_string(agent.cni_conf.join("10-test.conflist")).unwrap();
    std::fs::remove_file(agent.cni_conf.join("10-test.conflist")).unwrap();
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        // Registered, NotReady with upstream's message while there is no CNI config.
        let (status, msg) = wait_for(Duration::from_secs(30), "node registered NotReady", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).and_then(|n| node_ready(&n)).filter(|(s, _)| s == "False")
        });
        assert_eq!(status, "False");
        assert!(msg.starts_with("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: "), "{msg}");
        let n = kubectl_json(&admin, &["get", "node", NODE]).unwrap();
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], NODE);
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap().starts_with("containerd://1."));
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.36.0");
        assert!(n["status"]["capacity"]["pods"] == "110" && n["status"]["allocatable"]["memory"].as_str().unwrap().ends_with("Ki"));

        // A CNI config appears: Ready within seconds.
        std::fs::write(agent.cni_conf.join("10-test.conflist"), &good).unwrap();
        wait_for(Duration::from_secs(20), "node Ready", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).and_then(|n| node_ready(&n)).filter(|(s, _)| s == "True")
        });
        let (ok, out) = kubectl(&admin, &["get", "nodes"]);
        assert!(ok && out.lines().any(|l| l.starts_with(NODE) && l.contains(" Ready ")), "{out}");

        // The Lease is renewed every duration/4 (2 s here).
        let renew = || kubectl_json(&admin, &["get", "lease", "-n", "kube-node-lease", NODE]).and_then(|l| l["spec"]["renewTime"].as_str().map(String::from));
        let first = wait_for(Duration::from_secs(10), "lease", &agent, renew);
        let second = wait_for(Duration::from_secs(10), "lease renewed", &agent, || renew().filter(|r| *r != first));
        assert_ne!(first, second);
        let l = kubectl_json(&admin, &["get", "lease", "-n", "kube-node-lease", NODE]).unwrap();
        assert_eq!(l["spec"]["holderIdentity"], NODE);
        assert_eq!(l["metadata"]["ownerReferences"][0]["kind"], "Node");
    });
    let mut agent = agent;
    assert!(tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))), "SIGTERM ends the agent in API mode");
    assert_api_clean(&api.srv);
}

fn pod_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 3
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "echo hi-$(POD_IP) > /tmp/i && exec httpd -f -p 8080 -h /tmp"]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_a_pod_bound_to_the_node_runs_reports_status_and_is_deleted_cleanly() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a3-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a3", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let manifest = agent.root.join("pod.yaml");
    tokio::task::block_in_place(|| {
        std::fs::write(&manifest, pod_yaml("web")).unwrap();
        let (ok, out) = kubectl(&admin, &["create", "--validate=false", "-f", manifest.to_str().unwrap()]);
        assert!(ok, "{out}");
        let pod = wait_for(Duration::from_secs(60), "pod Running and Ready", &agent, || {
            let p = kubectl_json(&admin, &["get", "pod", "web"])?;
            let ready = p["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
            (p["status"]["phase"] == "Running" && ready).then_some(p)
        });
        let st = &pod["status"];
        let ip = st["podIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.244.77."), "{ip}");
        assert_eq!(st["podIPs"][0]["ip"], ip.as_str());
        assert!(st["hostIP"].is_string() && st["startTime"].is_string());
        assert_eq!(st["qosClass"], "BestEffort");
        let types: Vec<&str> = st["conditions"].as_array().unwrap().iter().filter_map(|c| c["type"].as_str()).collect();
        for t in ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"] {
            assert!(types.contains(&t), "{t} in {types:?}");
        }
        let cs = &st["containerStatuses"][0];
        assert!(cs["containerID"].as_str().unwrap().starts_with("containerd://"));
        assert_eq!((cs["ready"].as_bool(), cs["started"].as_bool(), cs["restartCount"].as_i64()), (Some(true), Some(true), Some(0)));
        assert!(cs["state"]["running"]["startedAt"].is_string());
        assert!(cs["imageID"].as_str().unwrap().contains("@sha256:"));
        let mut body = None;
        agent.wait_until(Duration::from_secs(15), "HTTP from the pod", || {
            body = http_get(&ip, 8080, "/i");
            body.is_some()
        });
        assert!(body.unwrap().contains(&format!("hi-{ip}")), "status.podIP reached the env");

        let (ok, out) = kubectl(&admin, &["get", "pods", "-o", "wide"]);
        assert!(ok && out.lines().any(|l| l.starts_with("web ") && l.contains("Running") && l.contains(&ip) && l.contains(NODE)), "{out}");
        let (ok, out) = kubectl(&admin, &["get", "events", "-n", "default"]);
        assert!(ok, "{out}");
        for reason in ["Pulled", "Created", "Started"] {
            assert!(out.contains(reason), "event {reason} in:\n{out}");
        }

        // Graceful delete: the agent stops it, cleans up and finishes the delete.
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let (ok, out) = kubectl(&admin, &["delete", "pod", "web", "--wait=false"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(30), "pod gone from the API", &agent, || kubectl_json(&admin, &["get", "pod", "web"]).is_none().then_some(()));
        let patches = api.srv.requests().into_iter().filter(|r| r.verb == "patch" && r.subresource == "status" && r.name == "web").count();
        assert!(patches >= 2, "a final status (containers stopped) went out before the delete: {patches} status patches");
        assert!(containerd_containers(&uid).is_empty(), "containers left");
        assert!(!agent.state_dir().join("pods").join(&uid).exists(), "pod dir left");
    });
    let v = api.srv.violations();
    assert!(v.is_empty(), "requests the real server would reject: {v:?}");
    let reqs = api.srv.requests();
    assert!(!reqs.iter().any(|r| r.verb == "get" && r.path.ends_with("/status")), "a node may not GET status subresources");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_an_api_outage_keeps_pods_running_and_status_and_lease_resume() {
    let mut api = api_server(Path::new("/var/lib/rkubelet-test/agents/a5-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a5", &[], &["--kubeconfig", &node_kc, "--node-lease-duration-seconds", "8"]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let before = tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "web.yaml", &pod_yaml("steady"));
        wait_for(Duration::from_secs(60), "pod Running", &agent, || {
            let p = pod_phase(&admin, "steady")?;
            (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true).then_some(p)
        })
    });
    let cid = before["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().to_string();
    let ip = before["status"]["podIP"].as_str().unwrap().to_string();

    api.srv.stop().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(tokio::task::block_in_place(|| http_get(&ip, 8080, "/i")).is_some(), "the pod keeps serving during the outage");
    api.srv.restart().await.expect("restart the API server");
    let restarted_at = chrono::Utc::now();

    tokio::task::block_in_place(|| {
        // A pod created after the outage runs.
        create(&admin, &agent.root, "late.yaml", &pod_yaml("late"));
        wait_for(Duration::from_secs(90), "the late pod Running", &agent, || {
            let p = pod_phase(&admin, "late")?;
            (p["status"]["phase"] == "Running").then_some(())
        });
        // The lease is renewed again.
        wait_for(Duration::from_secs(30), "lease renewed after the outage", &agent, || {
            let l = kubectl_json(&admin, &["get", "lease", "-n", "kube-node-lease", NODE])?;
            let t = chrono::DateTime::parse_from_rfc3339(l["spec"]["renewTime"].as_str()?).ok()?;
            (t > restarted_at).then_some(())
        });
        // The first pod was never restarted.
        let after = pod_phase(&admin, "steady").unwrap();
        let cs = &after["status"]["containerStatuses"][0];
        assert_eq!(cs["containerID"].as_str(), Some(cid.as_str()));
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(after["status"]["phase"], "Running");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_a_pod_that_does_not_fit_fails_with_out_of_memory_and_never_runs() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a6-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a6", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(
            &admin,
            &agent.root,
            "big.yaml",
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: big, namespace: default}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    resources: {{requests: {{memory: 100Ti}}}}\n"),
        );
        let p = wait_for(Duration::from_secs(30), "pod Failed", &agent, || {
            let p = pod_phase(&admin, "big")?;
            (p["status"]["phase"] == "Failed").then_some(p)
        });
        assert_eq!(p["status"]["reason"], "OutOfmemory");
        let msg = p["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with("Pod was rejected: Node didn't have enough resource: memory, requested: 109951162777600, used: 0, capacity: "), "{msg}");
        let uid = p["metadata"]["uid"].as_str().unwrap();
        assert!(containerd_containers(uid).is_empty(), "no container ran");
        let (_, ev) = kubectl(&admin, &["get", "events", "-n", "default"]);
        assert!(ev.contains("OutOfmemory"), "{ev}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_events_for_start_crash_loop_and_image_errors_carry_upstream_reasons() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a7-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a7", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "crash.yaml", &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: crash, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [sh, -c, \"exit 1\"]}}\n"));
        create(&admin, &agent.root, "noimg.yaml", &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: noimg, namespace: default}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - {{name: c, image: \"127.0.0.1:5000/test/nope:1\"}}\n"));
        let events = || -> Vec<Value> { kubectl_json(&admin, &["get", "events", "-n", "default"]).and_then(|v| v["items"].as_array().cloned()).unwrap_or_default() };
        let has = |evs: &[Value], pod: &str, reason: &str, msg_prefix: &str| {
            evs.iter().any(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason && e["message"].as_str().map(|m| m.starts_with(msg_prefix)).unwrap_or(false))
        };
        let evs = wait_for(Duration::from_secs(90), "crash-loop and image-error events", &agent, || {
            let evs = events();
            (has(&evs, "crash", "BackOff", "Back-off restarting failed container c in pod crash_default(")
                && has(&evs, "noimg", "BackOff", "Back-off pulling image")
                && has(&evs, "noimg", "Failed", "Error: ImagePullBackOff"))
            .then_some(evs)
        });
        for (pod, reason, msg) in [
            ("crash", "Pulled", "Container image \"localhost/test/busybox:1.0\" already present on machine"),
            ("crash", "Created", "Container created"),
            ("crash", "Started", "Container started"),
            ("noimg", "Pulling", "Pulling image \"127.0.0.1:5000/test/nope:1\""),
            ("noimg", "Failed", "Failed to pull image \"127.0.0.1:5000/test/nope:1\": "),
            ("noimg", "Failed", "Error: ErrImagePull"),
            ("noimg", "Failed", "Error: ImagePullBackOff"),
        ] {
            assert!(has(&evs, pod, reason, msg), "{pod} {reason} {msg:?} in {:#?}", evs.iter().map(|e| (e["involvedObject"]["name"].clone(), e["reason"].clone(), e["message"].clone())).collect::<Vec<_>>());
        }
        let started = evs.iter().find(|e| e["reason"] == "Started" && e["involvedObject"]["name"] == "crash").unwrap();
        assert_eq!(started["source"]["component"], "kubelet");
        assert_eq!(started["source"]["host"], NODE);
        assert_eq!(started["involvedObject"]["fieldPath"], "spec.containers{c}");
        assert!(started["count"].as_i64().unwrap() >= 2, "repeats are aggregated into count");
        let p = pod_phase(&admin, "crash").unwrap();
        assert!(p["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap() >= 1);
        // `kubectl describe pod` finds them (by the pod's uid) and reads like upstream's.
        let (ok, out) = kubectl(&admin, &["describe", "pod", "crash"]);
        assert!(ok, "{out}");
        let events = out.split("Events:").nth(1).unwrap_or("");
        for needle in ["Type", "Reason", "From", "Message", "Normal   Started", "kubelet", "Container started", "Warning  BackOff", "Back-off restarting failed container c in pod crash_default("] {
            assert!(events.contains(needle), "{needle:?} in the describe events:\n{out}");
        }
        assert!(out.contains("Restart Count:") && out.contains("Last State:     Terminated"), "{out}");
        let (ok, out) = kubectl(&admin, &["get", "events", "-n", "default", "--sort-by=.lastTimestamp"]);
        assert!(ok && out.lines().next().map(|h| h.contains("LAST SEEN") && h.contains("REASON")).unwrap_or(false), "{out}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a9_static_pods_get_mirror_pods_with_status() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a9-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a9", &[], &["--kubeconfig", &node_kc]));
    let admin = api.admin.clone();
    let manifest = |cmd: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: static-web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: \"{BUSYBOX}\", command: [sleep, \"{cmd}\"]}}\n");
    let name = format!("static-web-{NODE}");
    // The mirror pod's (uid, config.mirror hash), as kubectl shows it.
    let mirror = || kubectl_json(&admin, &["get", "pod", &name]).map(|p| (p["metadata"]["uid"].as_str().unwrap().to_string(), p["metadata"]["annotations"]["kubernetes.io/config.mirror"].as_str().unwrap_or("").to_string(), p));
    tokio::task::block_in_place(|| {
        let node = wait_for(Duration::from_secs(30), "node registered", &agent, || kubectl_json(&admin, &["get", "node", NODE]));
        let node_uid = node["metadata"]["uid"].as_str().unwrap().to_string();
        agent.write_manifest("static.yaml", &manifest("3600"));
        // Created at once (through a real server's Node authorizer: no GET before the create).
        let (uid1, hash1, m) = wait_for(Duration::from_secs(5), "mirror pod created within 5 s", &agent, mirror);
        let ann = &m["metadata"]["annotations"];
        assert_eq!(ann["kubernetes.io/config.source"], "file");
        assert_eq!(hash1, ann["kubernetes.io/config.hash"].as_str().unwrap());
        assert!(ann["kubernetes.io/config.seen"].is_string());
        assert_eq!(m["metadata"]["ownerReferences"], serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": true}]));
        assert_eq!(m["spec"]["nodeName"], NODE);
        let running = |uid: &str| {
            let uid = uid.to_string();
            move || mirror().filter(|(u, _, p)| *u == uid && p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true)
        };
        wait_for(Duration::from_secs(60), "mirror pod Running and ready", &agent, running(&uid1));
        // The mirror is not run as a second pod.
        assert_eq!(agent.pods().len(), 1);

        // A changed manifest: the old mirror is replaced by one with the new hash.
        agent.write_manifest("static.yaml", &manifest("3601"));
        let (uid2, hash2, _) = wait_for(Duration::from_secs(30), "mirror pod replaced", &agent, || mirror().filter(|(_, h, _)| *h != hash1));
        assert_ne!(uid2, uid1);
        wait_for(Duration::from_secs(60), "new mirror pod Running", &agent, running(&uid2));

        // Deleted by a user (graceful, as kubectl does): it comes back, with the same hash.
        let (ok, out) = kubectl(&admin, &["delete", "pod", &name, "--wait=false"]);
        assert!(ok, "{out}");
        let (uid3, hash3, _) = wait_for(Duration::from_secs(5), "mirror pod back within 5 s of kubectl delete", &agent, || mirror().filter(|(u, _, p)| *u != uid2 && p["metadata"]["deletionTimestamp"].is_null()));
        assert_eq!(hash3, hash2);
        wait_for(Duration::from_secs(30), "recreated mirror pod shows the running pod", &agent, running(&uid3));
        // Force-deleted: back as well.
        let (ok, out) = kubectl(&admin, &["delete", "pod", &name, "--force", "--grace-period=0"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(5), "mirror pod back within 5 s of a forced delete", &agent, || mirror().filter(|(u, _, _)| *u != uid3));
        // The static pod itself never restarted.
        let p = agent.pod("static-web").unwrap();
        assert_eq!(p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count, 0);

        agent.remove_manifest("static.yaml");
        wait_for(Duration::from_secs(30), "mirror pod deleted", &agent, || mirror().is_none().then_some(()));
    });
    assert_api_clean(&api.srv);
}

fn sleeper(name: &str, extra_spec: &str, extra_container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n{extra_container}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_node_events_reserved_allocatable_readiness_gates_and_admission() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a10-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| {
        Agent::with_options("a10", &[], &["--kubeconfig", &node_kc, "--kube-reserved", "cpu=300m,memory=256Mi", "--system-reserved", "cpu=200m"])
    });
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        // Allocatable = capacity - kubeReserved - systemReserved - hard eviction.
        let n = wait_for(Duration::from_secs(30), "node Ready", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| node_ready(n).map(|(s, _)| s == "True").unwrap_or(false))
        });
        let ki = |v: &Value| v.as_str().unwrap().trim_end_matches("Ki").parse::<i64>().unwrap();
        let cap_cpu: i64 = n["status"]["capacity"]["cpu"].as_str().unwrap().parse().unwrap();
        assert_eq!(n["status"]["allocatable"]["cpu"].as_str().unwrap(), format!("{}m", cap_cpu * 1000 - 500));
        assert_eq!(ki(&n["status"]["allocatable"]["memory"]), ki(&n["status"]["capacity"]["memory"]) - 256 * 1024 - 100 * 1024);
        // ... and enforced on the pods cgroup (capacity minus the reservations).
        let limit = ["/sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes", "/sys/fs/cgroup/kubepods/memory.max"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .expect("a kubepods memory limit");
        assert_eq!(limit.trim().parse::<i64>().unwrap(), ki(&n["status"]["capacity"]["memory"]) * 1024 - (256 << 20));

        // Node events as upstream records them.
        let node_events = || -> Vec<(String, String)> {
            kubectl_json(&admin, &["get", "events", "-n", "default", "--field-selector", "involvedObject.kind=Node"])
                .and_then(|v| v["items"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
                .collect()
        };
        let evs = wait_for(Duration::from_secs(20), "node events", &agent, || {
            let evs = node_events();
            evs.iter().any(|(r, _)| r == "NodeReady").then_some(evs)
        });
        for (reason, msg) in [
            ("Starting", "Starting kubelet.".to_string()),
            ("NodeAllocatableEnforced", "Updated Node Allocatable limit across pods".to_string()),
            ("NodeHasSufficientMemory", format!("Node {NODE} status is now: NodeHasSufficientMemory")),
            ("NodeHasNoDiskPressure", format!("Node {NODE} status is now: NodeHasNoDiskPressure")),
            ("NodeHasSufficientPID", format!("Node {NODE} status is now: NodeHasSufficientPID")),
            ("NodeReady", format!("Node {NODE} status is now: NodeReady")),
        ] {
            assert!(evs.iter().any(|(r, m)| r == reason && *m == msg), "{reason}: {msg:?} in {evs:?}");
        }
        // Like a 1.36 kubelet's, the reference is kind+name only (no uid), so the
        // events show in `kubectl get events`, not under `kubectl describe node`.
        let (ok, out) = kubectl(&admin, &["get", "events", "-n", "default"]);
        assert!(ok && out.contains("node/rk-test") && out.contains("Starting kubelet."), "{out}");

        // A readiness gate holds Ready until its condition is True.
        create(&admin, &agent.root, "gated.yaml", &sleeper("gated", "  readinessGates:\n  - conditionType: example.com/lb\n", ""));
        let p = wait_for(Duration::from_secs(60), "gated pod Running, containers ready", &agent, || {
            let p = pod_phase(&admin, "gated")?;
            (condition(&p, "ContainersReady")?.0 == "True").then_some(p)
        });
        let (status, reason, msg) = condition(&p, "Ready").unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "ReadinessGatesNotReady"));
        assert_eq!(msg, "corresponding condition of pod readiness gate \"example.com/lb\" does not exist.");
        let (ok, out) = kubectl(
            &admin,
            &["patch", "pod", "gated", "--subresource=status", "--type=strategic", "-p", r#"{"status":{"conditions":[{"type":"example.com/lb","status":"True"}]}}"#],
        );
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(20), "gated pod Ready", &agent, || {
            let p = pod_phase(&admin, "gated")?;
            (condition(&p, "Ready")?.0 == "True").then_some(p)
        });
        assert_eq!(condition(&p, "example.com/lb").map(|c| c.0), Some("True".into()), "the gate's condition survives the kubelet's patches");

        // A host port already taken: NodePorts. Required node affinity that does not match: NodeAffinity.
        let port = "    ports:\n    - {containerPort: 80, hostPort: 18080}\n";
        create(&admin, &agent.root, "port1.yaml", &sleeper("port1", "", port));
        wait_for(Duration::from_secs(60), "port1 Running", &agent, || pod_phase(&admin, "port1").filter(|p| p["status"]["phase"] == "Running"));
        create(&admin, &agent.root, "port2.yaml", &sleeper("port2", "", port));
        let affinity = "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions:\n          - {key: kubernetes.io/hostname, operator: In, values: [elsewhere]}\n";
        create(&admin, &agent.root, "away.yaml", &sleeper("away", affinity, ""));
        for (pod, reason, msg) in [
            ("port2", "NodePorts", "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"),
            ("away", "NodeAffinity", "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"),
        ] {
            let p = wait_for(Duration::from_secs(30), "rejected pod Failed", &agent, || pod_phase(&admin, pod).filter(|p| p["status"]["phase"] == "Failed"));
            assert_eq!((p["status"]["reason"].as_str(), p["status"]["message"].as_str()), (Some(reason), Some(msg)));
            assert!(containerd_containers(p["metadata"]["uid"].as_str().unwrap()).is_empty(), "{pod}: no container ran");
        }
        // Deleting a rejected pod completes: the node has nothing to stop.
        let (ok, out) = kubectl(&admin, &["delete", "pod", "port2", "away", "--wait=false"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(20), "rejected pods gone from the API", &agent, || {
            (pod_phase(&admin, "port2").is_none() && pod_phase(&admin, "away").is_none()).then_some(())
        });
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a11_pods_deleted_while_the_agent_was_down_are_cleaned_up_when_it_returns() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a11-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("a11", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let uids: Vec<String> = tokio::task::block_in_place(|| {
        ["graceful", "forced", "kept"]
            .iter()
            .map(|name| {
                create(&admin, &agent.root, &format!("{name}.yaml"), &sleeper(name, "", ""));
                let p = wait_for(Duration::from_secs(60), "pod Running", &agent, || pod_phase(&admin, name).filter(|p| p["status"]["phase"] == "Running"));
                p["metadata"]["uid"].as_str().unwrap().to_string()
            })
            .collect()
    });
    assert!(tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))));
    tokio::task::block_in_place(|| {
        // While the agent is down: one graceful delete (the object waits for the node), one forced.
        let (ok, out) = kubectl(&admin, &["delete", "pod", "graceful", "--wait=false"]);
        assert!(ok, "{out}");
        let (ok, out) = kubectl(&admin, &["delete", "pod", "forced", "--force", "--grace-period=0"]);
        assert!(ok, "{out}");
        assert!(pod_phase(&admin, "graceful").map(|p| p["metadata"]["deletionTimestamp"].is_string()).unwrap_or(false));
        assert!(!containerd_containers(&uids[0]).is_empty() && !containerd_containers(&uids[1]).is_empty(), "pods kept running without the agent");
        agent.start();
        wait_for(Duration::from_secs(30), "graceful delete finished", &agent, || pod_phase(&admin, "graceful").is_none().then_some(()));
        // Containers, then the pod dirs (container GC at start may remove the
        // exited containers before the pods' cleanup workers are done).
        wait_for(Duration::from_secs(30), "containers and dirs of both deleted pods removed", &agent, || {
            uids[..2].iter().all(|uid| containerd_containers(uid).is_empty() && !agent.state_dir().join("pods").join(uid).exists()).then_some(())
        });
        let kept = pod_phase(&admin, "kept").unwrap();
        assert_eq!(kept["status"]["phase"], "Running");
        assert_eq!(kept["status"]["containerStatuses"][0]["restartCount"], 0, "the surviving pod was adopted, not restarted");
        assert!(!containerd_containers(&uids[2]).is_empty());
    });
    assert_api_clean(&api.srv);
}

/// A CNI plugin (appended to the test chain) that fails a second DEL of the same
/// container, as plugins with no idempotent DEL do; it records each DEL.
fn del_tracking_plugin(bin_dir: &Path, state: &Path) {
    std::fs::create_dir_all(bin_dir).unwrap();
    std::fs::create_dir_all(state).unwrap();
    let script = format!(
        r#"#!/bin/sh
s={state}
case "$CNI_COMMAND" in
ADD) rm -f "$s/$CNI_CONTAINERID.del"; jq -c '.prevResult' ;;
DEL) if [ -e "$s/$CNI_CONTAINERID.del" ]; then
       printf '{{"cniVersion":"1.0.0","code":999,"msg":"second DEL of %s"}}' "$CNI_CONTAINERID"; exit 1
     fi
     echo "$CNI_CONTAINERID" >> "$s/dels"; touch "$s/$CNI_CONTAINERID.del" ;;
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
esac
"#,
        state = state.display()
    );
    let p = bin_dir.join("rk-deltrack");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a12_an_agent_restart_during_a_graceful_termination_tears_the_pod_down_once_at_its_deadline() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a12-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let base = Path::new("/var/lib/rkubelet-test/a12-cni");
    let _ = std::fs::remove_dir_all(base);
    let (bin, state) = (base.join("bin"), base.join("state"));
    del_tracking_plugin(&bin, &state);
    let bin_dirs = format!("{},/opt/cni/bin,/usr/lib/cni", bin.display());
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("a12", &[], &["--kubeconfig", &node_kc, "--cni-bin-dir", &bin_dirs]));
    let _cleanup = DeletePods(api.admin.clone());
    // The harness's chain with the tracking plugin last.
    let conf = agent.cni_conf.join("10-test.conflist");
    let mut list: Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    list["plugins"].as_array_mut().unwrap().push(serde_json::json!({"type": "rk-deltrack"}));
    std::fs::write(&conf, list.to_string()).unwrap();
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        // Restarted by kill -9, then by SIGTERM (systemctl restart): either way the
        // next agent finishes the termination at its deadline, tearing it down once.
        for (name, sigterm) in [("killed", false), ("stopped", true)] {
            // sleep as PID 1 ignores SIGTERM: the pod stops only when its grace period ends.
            create(&admin, &agent.root, &format!("{name}.yaml"), &sleeper(name, "", "").replace("terminationGracePeriodSeconds: 1", "terminationGracePeriodSeconds: 10"));
            let p = wait_for(Duration::from_secs(60), "pod Running", &agent, || pod_phase(&admin, name).filter(|p| p["status"]["phase"] == "Running"));
            let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
            let deleted_at = std::time::Instant::now();
            let (ok, out) = kubectl(&admin, &["delete", "pod", name, "--wait=false"]);
            assert!(ok, "{out}");
            agent.wait_until(Duration::from_secs(10), "termination started", || agent.log_tail(400).contains(&format!("stopping pod pod_uid={uid}")));
            std::thread::sleep(Duration::from_secs(4));
            if sigterm {
                assert!(agent.terminate(Duration::from_secs(5)), "SIGTERM does not wait for a pod's grace period");
                assert!(!containerd_containers(&uid).is_empty(), "the terminating pod is left to the next agent");
            } else {
                agent.kill9();
            }
            agent.start();
            wait_for(Duration::from_secs(40), "graceful delete finished", &agent, || pod_phase(&admin, name).is_none().then_some(()));
            let took = deleted_at.elapsed();
            assert!(took >= Duration::from_secs(9), "{name}: the grace period was honoured across the restart: {took:?}");
            assert!(took < Duration::from_secs(13), "{name}: the grace period ran to its first deadline, not anew from the restart: {took:?}");
            wait_for(Duration::from_secs(10), "containers removed", &agent, || containerd_containers(&uid).is_empty().then_some(()));
            let log = agent.log_tail(100_000);
            let removed = log.matches(&format!("pod removed pod_uid={uid}")).count();
            assert_eq!(removed, 1, "{name}: one teardown of {uid}:\n{log}");
            let dels = std::fs::read_to_string(state.join("dels")).unwrap_or_default();
            assert_eq!(dels.lines().count(), if sigterm { 2 } else { 1 }, "{name}: the plugin saw one DEL per sandbox: {dels}");
        }
        let log = agent.log_tail(100_000);
        assert_eq!(log.matches("pod network detached").count(), 2, "one CNI DEL per pod:\n{log}");
        assert!(!log.contains("second DEL") && !log.contains("CNI teardown failed"), "{log}");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a13_a_burst_of_spec_updates_ends_with_the_generation_observed() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a13-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a13", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "gen.yaml", &sleeper("gen", "  activeDeadlineSeconds: 100000\n", ""));
        wait_for(Duration::from_secs(60), "pod Running with generation 1 observed", &agent, || {
            pod_phase(&admin, "gen").filter(|p| p["status"]["phase"] == "Running" && p["status"]["observedGeneration"] == 1)
        });
    });
    // 200 spec updates as fast as the API takes them (activeDeadlineSeconds may only go down).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&admin).unwrap();
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
    let before = api.srv.count_requests("patch", "pods/status");
    for i in 1..=200 {
        let patch = serde_json::json!({"spec": {"activeDeadlineSeconds": 100000 - i}});
        pods.patch("gen", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    }
    let p = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(60), "generation 201 observed", &agent, || {
            pod_phase(&admin, "gen").filter(|p| p["metadata"]["generation"] == 201 && p["status"]["observedGeneration"] == 201)
        })
    });
    for c in p["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 201, "{c}");
    }
    assert_eq!(p["spec"]["activeDeadlineSeconds"], 99800);
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "spec updates of mutable fields restart nothing");
    let patches = api.srv.count_requests("patch", "pods/status") - before;
    println!("200 spec updates: {patches} status patches");
    assert!(patches <= 200, "at most one status patch per update: {patches}");
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a14_containers_get_the_variables_of_the_kubernetes_service_and_their_namespaces_services() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a14-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a14", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        // As the e2e spec "Pods should contain environment variables for services".
        create(&admin, &agent.root, "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: fooservice, namespace: default}\nspec:\n  selector: {name: srv}\n  ports:\n  - {port: 8765, targetPort: 8080}\n");
        create(&admin, &agent.root, "headless.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: nohost, namespace: default}\nspec:\n  clusterIP: None\n  ports:\n  - {port: 80}\n");
        create(&admin, &agent.root, "second.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: my-db, namespace: default}\nspec:\n  ports:\n  - {name: sql, port: 5432}\n  - {name: metrics, port: 9187}\n");
        create(&admin, &agent.root, "other-ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: elsewhere}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: faraway, namespace: elsewhere}\nspec:\n  ports:\n  - {port: 80}\n");
        let svc = kubectl_json(&admin, &["get", "service", "fooservice"]).unwrap();
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        let printer = |name: &str, links: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  restartPolicy: Never\n{links}  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'env | sort']\n    env: [{{name: API, value: \"https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)\"}}]\n"
            )
        };
        create(&admin, &agent.root, "envs.yaml", &printer("envs", ""));
        create(&admin, &agent.root, "nolinks.yaml", &printer("nolinks", "  enableServiceLinks: false\n"));
        let env_of = |pod: &str| -> Vec<String> {
            let p = wait_for(Duration::from_secs(60), "printer Succeeded", &agent, || pod_phase(&admin, pod).filter(|p| p["status"]["phase"] == "Succeeded"));
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(p).unwrap();
            agent.container_output(&pod, "c", 0).lines().map(String::from).collect()
        };
        let envs = env_of("envs");
        for want in [
            "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
            "KUBERNETES_SERVICE_PORT=443".into(),
            "KUBERNETES_SERVICE_PORT_HTTPS=443".into(),
            "KUBERNETES_PORT=tcp://10.96.0.1:443".into(),
            "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1".into(),
            "API=https://10.96.0.1:443".into(),
            format!("FOOSERVICE_SERVICE_HOST={ip}"),
            "FOOSERVICE_SERVICE_PORT=8765".into(),
            format!("FOOSERVICE_PORT=tcp://{ip}:8765"),
            format!("FOOSERVICE_PORT_8765_TCP=tcp://{ip}:8765"),
            "FOOSERVICE_PORT_8765_TCP_PROTO=tcp".into(),
            "FOOSERVICE_PORT_8765_TCP_PORT=8765".into(),
            format!("FOOSERVICE_PORT_8765_TCP_ADDR={ip}"),
        ] {
            assert!(envs.contains(&want), "{want} in {envs:#?}");
        }
        assert!(!envs.iter().any(|l| l.starts_with("NOHOST_")), "a headless service gives no variables: {envs:#?}");
        for want in ["MY_DB_SERVICE_PORT=5432", "MY_DB_SERVICE_PORT_SQL=5432", "MY_DB_SERVICE_PORT_METRICS=9187", "MY_DB_PORT_9187_TCP_PORT=9187"] {
            assert!(envs.contains(&want.to_string()), "{want} in {envs:#?}");
        }
        assert!(!envs.iter().any(|l| l.starts_with("FARAWAY_")), "another namespace's service is not linked: {envs:#?}");
        let nolinks = env_of("nolinks");
        assert!(nolinks.contains(&"KUBERNETES_SERVICE_HOST=10.96.0.1".to_string()), "{nolinks:#?}");
        assert!(!nolinks.iter().any(|l| l.starts_with("FOOSERVICE_")), "enableServiceLinks: false: {nolinks:#?}");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a15_runtime_classes_pick_the_containerd_runtime_of_their_handler() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a15-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a15", &[], &["--kubeconfig", &node_kc, "--runtime-handler", "legacy=io.containerd.runc.v1"]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "rc.yaml", "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: old-shim}\nhandler: legacy\n---\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: unconfigured}\nhandler: missing\n");
        let node = wait_for(Duration::from_secs(30), "node lists its runtime handlers", &agent, || {
            kubectl_json(&admin, &["get", "node", NODE]).filter(|n| n["status"]["runtimeHandlers"].is_array())
        });
        let names: Vec<&str> = node["status"]["runtimeHandlers"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["", "legacy", "runc"]);
        let with_class = |name: &str, class: &str| sleeper(name, &format!("  runtimeClassName: {class}\n"), "");
        create(&admin, &agent.root, "old.yaml", &with_class("old", "old-shim"));
        let p = wait_for(Duration::from_secs(60), "pod of the legacy handler Running", &agent, || pod_phase(&admin, "old").filter(|p| p["status"]["phase"] == "Running"));
        let uid = p["metadata"]["uid"].as_str().unwrap();
        let ids = containerd_containers(uid);
        assert_eq!(ids.len(), 2, "sandbox and container: {ids:?}");
        for id in ids {
            let info: Value = serde_json::from_str(&ctr(&["containers", "info", &id])).unwrap();
            assert_eq!(info["Runtime"]["Name"], "io.containerd.runc.v1", "{id}: the handler's runtime");
        }
        // A class whose handler this node does not have: containerd CRI's error.
        create(&admin, &agent.root, "unconf.yaml", &with_class("unconf", "unconfigured"));
        wait_for(Duration::from_secs(30), "FailedCreatePodSandBox", &agent, || {
            let evs = kubectl_json(&admin, &["get", "events", "--field-selector", "involvedObject.name=unconf"])?;
            evs["items"].as_array()?.iter().find(|e| e["reason"] == "FailedCreatePodSandBox" && e["message"] == "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: no runtime for \"missing\" is configured").cloned()
        });
        // A class that does not exist: the API server's RuntimeClass admission refuses the pod.
        let f = agent.root.join("nope.yaml");
        std::fs::write(&f, with_class("nope", "nope")).unwrap();
        let (ok, out) = kubectl(&admin, &["create", "-f", f.to_str().unwrap()]);
        assert!(!ok && out.contains("pod rejected: RuntimeClass \"nope\" not found"), "{out}");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_a_changed_image_restarts_only_that_container() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a16-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a16", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        let two = format!("  - name: d\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n");
        create(&admin, &agent.root, "img.yaml", &format!("{}{two}", sleeper("img", "  restartPolicy: Never\n", "")));
        let p = wait_for(Duration::from_secs(60), "pod Running", &agent, || pod_phase(&admin, "img").filter(|p| p["status"]["phase"] == "Running"));
        let ids = |p: &Value| p["status"]["containerStatuses"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().to_string(), c["containerID"].as_str().unwrap_or("").to_string())).collect::<Vec<_>>();
        let before = ids(&p);
        // The same busybox by another name, pulled from the registry.
        let (ok, out) = kubectl(&admin, &["set", "image", "pod/img", "c=127.0.0.1:5000/test/busybox:1.0"]);
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(60), "c restarted with the new image", &agent, || {
            let p = pod_phase(&admin, "img")?;
            let c = p["status"]["containerStatuses"].as_array()?.iter().find(|c| c["name"] == "c")?.clone();
            (c["restartCount"] == 1 && c["image"] == "127.0.0.1:5000/test/busybox:1.0" && c["state"]["running"].is_object()).then_some(p)
        });
        assert_eq!(p["status"]["phase"], "Running", "restartPolicy Never does not stop a changed container from restarting");
        let after = ids(&p);
        assert_ne!(after[0], before[0]);
        assert_eq!(after[1], before[1], "the other container kept running");
        let evs = kubectl_json(&admin, &["get", "events", "--field-selector", "involvedObject.name=img"]).unwrap();
        assert!(
            evs["items"].as_array().unwrap().iter().any(|e| e["reason"] == "Killing" && e["message"] == "Container c definition changed, will be restarted"),
            "{evs}"
        );
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a17_kubectl_debug_starts_an_ephemeral_container_in_the_targets_process_namespace() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/a17-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("a17", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "target.yaml", &sleeper("target", "", ""));
        wait_for(Duration::from_secs(60), "target Running", &agent, || pod_phase(&admin, "target").filter(|p| p["status"]["phase"] == "Running"));
        let (ok, out) = kubectl(&admin, &["debug", "target", &format!("--image={BUSYBOX}"), "--target=c", "--container=dbg", "--", "sh", "-c", "ps; sleep 30"]);
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(60), "ephemeral container running", &agent, || {
            let p = pod_phase(&admin, "target")?;
            (p["status"]["ephemeralContainerStatuses"][0]["state"]["running"].is_object()).then_some(p)
        });
        let st = &p["status"]["ephemeralContainerStatuses"][0];
        assert_eq!((st["name"].as_str(), st["ready"].as_bool(), st["restartCount"].as_i64()), (Some("dbg"), Some(false), Some(0)), "{st}");
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "the target keeps running");
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(p).unwrap();
        agent.wait_until(Duration::from_secs(20), "ps shows the target's process", || agent.container_output(&pod, "dbg", 0).contains("sleep 3600"));
        // Another debug container without a target sees only itself.
        let (ok, out) = kubectl(&admin, &["debug", "target", &format!("--image={BUSYBOX}"), "--container=alone", "--", "sh", "-c", "ps; sleep 30"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(60), "second ephemeral container running", &agent, || {
            pod_phase(&admin, "target")?["status"]["ephemeralContainerStatuses"].as_array()?.iter().find(|s| s["name"] == "alone" && s["state"]["running"].is_object()).cloned()
        });
        let mut shown = String::new();
        agent.wait_until(Duration::from_secs(20), "ps printed", || {
            shown = agent.container_output(&pod, "alone", 0);
            shown.contains("ps")
        });
        assert!(!shown.contains("sleep 3600"), "{shown}");
        let evs = kubectl_json(&admin, &["get", "events", "--field-selector", "involvedObject.name=target"]).unwrap();
        assert!(evs["items"].as_array().unwrap().iter().any(|e| e["reason"] == "Started" && e["involvedObject"]["fieldPath"] == "spec.ephemeralContainers{dbg}"), "{evs}");
    });
    assert_api_clean(&api.srv);
}

/// The container's cgroup files as the container sees them (cgroup v1 here, v2 on real nodes).
fn cgroup_limits(admin: &Path, pod: &str, c: &str) -> Option<(String, String)> {
    let (ok, out) = kubectl(admin, &["exec", pod, "-c", c, "--", "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || (cat /sys/fs/cgroup/memory.max; cut -d' ' -f1 /sys/fs/cgroup/cpu.max)"]);
    let mut l = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let got = ok.then(|| Some((l.next()?.to_string(), l.next()?.to_string()))).flatten();
    if got.is_none() {
        eprintln!("reading {pod}/{c}'s cgroup failed: {out}");
    }
    got
}

fn event_messages(admin: &Path, pod: &str, reason: &str) -> Vec<String> {
    let evs = kubectl_json(admin, &["get", "events", "--field-selector", &format!("involvedObject.name={pod},reason={reason}")]).unwrap_or_default();
    evs["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a18_kubectl_resize_changes_cgroup_limits_in_place_or_restarts_per_resize_policy() {
    // The kubelet API serves the API server's exec/attach (client certificates).
    let KubeletApi { srv, admin, node, ca } = kubelet_api_server(Path::new("/var/lib/rkubelet-test/agents/a18-api")).await;
    let (node_kc, ca) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let agent = tokio::task::block_in_place(|| Agent::with_options("a18", &[], &["--kubeconfig", &node_kc, "--client-ca-file", &ca]));
    let _cleanup = DeletePods(admin.clone());
    tokio::task::block_in_place(|| {
        let res = "    resources: {requests: {cpu: 100m, memory: 32Mi}, limits: {cpu: 200m, memory: 64Mi}}\n";
        let restarting = format!("{res}  - name: r\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n{res}    resizePolicy: [{{resourceName: memory, restartPolicy: RestartContainer}}]\n");
        create(&admin, &agent.root, "rz.yaml", &sleeper("rz", "", &restarting));
        let p = wait_for(Duration::from_secs(60), "rz Running with status resources", &agent, || {
            pod_phase(&admin, "rz").filter(|p| p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["resources"].is_object())
        });
        let want = serde_json::json!({"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "100m", "memory": "32Mi"}});
        assert_eq!(p["status"]["containerStatuses"][0]["resources"], want, "{}", p["status"]);
        let id = p["status"]["containerStatuses"][0]["containerID"].clone();
        assert_eq!(cgroup_limits(&admin, "rz", "c"), Some(((64u64 << 20).to_string(), "20000".into())));

        // The API server's rules for pods/resize.
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"200m","memory":"64Mi"}}},{"name":"r","resources":{"requests":{"cpu":"200m","memory":"64Mi"}}}]}}"#]);
        assert!(!ok && out.contains("Pod QOS Class may not change as a result of resizing"), "{out}");
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"ephemeral-storage":"1Gi"}}}]}}"#]);
        assert!(!ok && out.contains("only cpu and memory resources are mutable"), "{out}");

        // In place: memory and cpu limits grow, the container keeps running.
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"300m","memory":"96Mi"}}}]}}"#]);
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(60), "resize of c completed", &agent, || {
            pod_phase(&admin, "rz").filter(|p| p["status"]["containerStatuses"][0]["resources"]["limits"]["memory"] == "96Mi" && condition(p, "PodResizeInProgress").is_none())
        });
        let st = &p["status"]["containerStatuses"][0];
        assert_eq!((&st["containerID"], &st["restartCount"], &st["resources"]["limits"]["cpu"]), (&id, &serde_json::json!(0), &serde_json::json!("300m")), "{st}");
        assert_eq!(p["status"]["observedGeneration"], p["metadata"]["generation"]);
        assert_eq!(cgroup_limits(&admin, "rz", "c"), Some(((96u64 << 20).to_string(), "30000".into())));
        // The pod cgroup's summed limits follow (96Mi + 64Mi).
        let pod_mem = format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{}/memory.limit_in_bytes", p["metadata"]["uid"].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(&pod_mem).ok().map(|s| s.trim().to_string()), Some((160u64 << 20).to_string()), "{pod_mem}");
        let started = event_messages(&admin, "rz", "ResizeStarted");
        assert!(started.iter().any(|m| m.starts_with(r#"Pod resize started: {"containers":[{"name":"c","resources":{"limits":{"cpu":"300m","memory":"96Mi"}"#)), "{started:?}");
        let done = event_messages(&admin, "rz", "ResizeCompleted");
        assert!(done.iter().any(|m| m.starts_with("Pod resize completed: ") && m.contains(r#""generation":2"#)), "{done:?}");

        // Beyond the node: Infeasible, nothing changes; a feasible one replaces it.
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"900Gi"},"limits":{"memory":"900Gi"}}}]}}"#]);
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(30), "PodResizePending Infeasible", &agent, || pod_phase(&admin, "rz").filter(|p| condition(p, "PodResizePending").is_some()));
        let (s, r, m) = condition(&p, "PodResizePending").unwrap();
        assert_eq!((s.as_str(), r.as_str()), ("True", "Infeasible"), "{m}");
        assert!(m.starts_with("Node didn't have enough capacity: memory, requested: 966401196032, capacity: "), "{m}");
        assert!(event_messages(&admin, "rz", "ResizeInfeasible").iter().any(|m| m.starts_with("Pod resize Infeasible: ")));
        assert_eq!(cgroup_limits(&admin, "rz", "c").map(|l| l.0), Some((96u64 << 20).to_string()));
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"32Mi"},"limits":{"memory":"80Mi"}}}]}}"#]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(60), "pending cleared and 80Mi applied", &agent, || {
            pod_phase(&admin, "rz").filter(|p| condition(p, "PodResizePending").is_none() && condition(p, "PodResizeInProgress").is_none() && p["status"]["containerStatuses"][0]["resources"]["limits"]["memory"] == "80Mi")
        });
        assert_eq!(cgroup_limits(&admin, "rz", "c").map(|l| l.0), Some((80u64 << 20).to_string()));

        // resizePolicy RestartContainer for memory: that container restarts with the new limit.
        let (ok, out) = kubectl(&admin, &["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"r","resources":{"limits":{"memory":"128Mi"}}}]}}"#]);
        assert!(ok, "{out}");
        let p = wait_for(Duration::from_secs(60), "r restarted with 128Mi", &agent, || {
            pod_phase(&admin, "rz").filter(|p| {
                let r = &p["status"]["containerStatuses"][1];
                r["restartCount"] == 1 && r["state"]["running"].is_object() && r["resources"]["limits"]["memory"] == "128Mi" && condition(p, "PodResizeInProgress").is_none()
            })
        });
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "c kept running");
        assert_eq!(cgroup_limits(&admin, "rz", "r").map(|l| l.0), Some((128u64 << 20).to_string()));
        let killing = event_messages(&admin, "rz", "Killing");
        assert!(killing.iter().any(|m| m.contains("Container r resize requires restart")), "{killing:?}");
    });
    assert_api_clean(&srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a19_kubectl_debug_attaches_to_the_ephemeral_container() {
    // The kubelet API serves the API server's exec/attach (client certificates).
    let KubeletApi { srv, admin, node, ca } = kubelet_api_server(Path::new("/var/lib/rkubelet-test/agents/a19-api")).await;
    let (node_kc, ca) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let agent = tokio::task::block_in_place(|| Agent::with_options("a19", &[], &["--kubeconfig", &node_kc, "--client-ca-file", &ca]));
    let _cleanup = DeletePods(admin.clone());
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "target.yaml", &sleeper("target", "", ""));
        wait_for(Duration::from_secs(60), "target Running", &agent, || pod_phase(&admin, "target").filter(|p| p["status"]["phase"] == "Running"));
        // `kubectl debug -i`: creates the container, waits for it, attaches its stdin
        // and output; the shell reads our commands and sees the target's processes.
        let script = "sleep 3; echo 'echo marker-$((6*7))'; echo ps; sleep 3";
        let out = std::process::Command::new("timeout")
            .args(["60", "sh", "-c", &format!("({script}) | kubectl --kubeconfig {} debug -i target --image={BUSYBOX} --target=c --container=dbg -- sh", admin.display())])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod_phase(&admin, "target").unwrap()).unwrap();
        assert!(stdout.contains("marker-42"), "stdout: {stdout}\nstderr: {stderr}\ncontainer log: {}", agent.container_output(&pod, "dbg", 0));
        assert!(stdout.contains("sleep 3600"), "the target's process is visible: {stdout}");
        let p = pod_phase(&admin, "target").unwrap();
        let st = &p["status"]["ephemeralContainerStatuses"][0];
        assert_eq!(st["name"], "dbg", "{st}");
    });
    assert_api_clean(&srv);
}
