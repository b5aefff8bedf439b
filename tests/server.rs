//! The kubelet API (issue 5, first slice): `/healthz` on 127.0.0.1:10248 and the
//! authenticated HTTPS API on :10250 — x509 client certificates against
//! `--client-ca-file`, bearer tokens through the test API server's TokenReview,
//! SubjectAccessReview authorization, `/pods` and `/containerLogs`. Requests are
//! made with curl to 127.0.0.1 only.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::api::*;
use common::*;
use rkubelet_test_apiserver::{Options, TestApiServer, User};

/// curl to the kubelet API: (HTTP code, body).
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn write_cert(srv: &TestApiServer, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (c, k) = srv.issue_client_cert(cn, &[], Duration::from_secs(3600)).unwrap();
    let (cp, kp) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    std::fs::write(&cp, c).unwrap();
    std::fs::write(&kp, k).unwrap();
    (cp, kp)
}

/// A GET /healthz with one header of `size` bytes, sent whole over TLS with the
/// client certificate: the status code of the answer.
async fn big_header_status(cert_args: &[&str], size: usize) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = kubelet_tls(cert_args).await;
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
    req.resize(req.len() + size, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(20), tls.write_all(&req)).await.ok()?.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut head)).await.ok()?.ok()?;
    String::from_utf8_lossy(&head[..n]).strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The status code the kubelet API answers to `GET <target>` sent as raw bytes over
/// TLS with the client certificate (for targets curl would not send as they are).
async fn raw_get_status(cert_args: &[&str], target: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = kubelet_tls(cert_args).await;
    let req = [b"GET ".as_slice(), target, b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"].concat();
    tokio::time::timeout(Duration::from_secs(10), tls.write_all(&req)).await.ok()?.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut head)).await.ok()?.ok()?;
    String::from_utf8_lossy(head.get(..n)?).strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_the_kubelet_api_authenticates_authorizes_and_serves_pods_and_logs() {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/k1-api");
    let KubeletApi { srv, admin, node, ca } = kubelet_api_server(&dir).await;
    let (node_s, ca_s) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let agent = tokio::task::block_in_place(|| {
        Agent::with_options("k1", &[], &["--kubeconfig", &node_s, "--client-ca-file", &ca_s, "--container-log-max-size", "20Ki", "--container-log-max-files", "3"])
    });
    let _cleanup = DeletePods(admin.clone());
    let (allowed_crt, allowed_key) = write_cert(&srv, &dir, "apiserver-kubelet-client");
    let (viewer_crt, viewer_key) = write_cert(&srv, &dir, "viewer");
    let cert_args = |c: &Path, k: &Path| vec!["--cert".to_string(), c.display().to_string(), "--key".to_string(), k.display().to_string()];
    let allowed = cert_args(&allowed_crt, &allowed_key);
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let viewer = cert_args(&viewer_crt, &viewer_key);
    let viewer: Vec<&str> = viewer.iter().map(String::as_str).collect();
    let admin_token = format!("Authorization: Bearer {}", srv.admin_token());
    tokio::task::block_in_place(|| {
        // kubeadm's health check: plain HTTP on 127.0.0.1:10248.
        agent.wait_until(Duration::from_secs(20), "healthz ok", || curl("http://127.0.0.1:10248/healthz", &[]) == (200, "ok".into()));
        let api = "https://127.0.0.1:10250";
        agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl(&format!("{api}/healthz"), &[]).0 != 0);

        // No credentials: 401. An unknown token: 401.
        assert_eq!(curl(&format!("{api}/pods"), &[]), (401, "Unauthorized\n".into()));
        assert_eq!(curl(&format!("{api}/pods"), &["-H", "Authorization: Bearer nope"]).0, 401);
        // A valid certificate the SubjectAccessReview denies: 403 in upstream's words.
        assert_eq!(
            curl(&format!("{api}/pods"), &viewer),
            (403, "Forbidden (user=viewer, verb=get, resource=nodes, subresource=pods)\n".into())
        );
        assert_eq!(curl(&format!("{api}/containerLogs/default/x/c"), &viewer).1, "Forbidden (user=viewer, verb=get, resource=nodes, subresource=proxy)\n");
        // Allowed: a certificate bound to the kubelet API role, and the admin's token (TokenReview).
        assert_eq!(curl(&format!("{api}/healthz"), &allowed), (200, "ok".into()));
        assert_eq!(curl(&format!("{api}/healthz"), &["-H", &admin_token]), (200, "ok".into()));

        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, \"for i in 1 2 3 4 5; do echo line-$i; done; exec sleep 3600\"]\n    readinessProbe: {{exec: {{command: [\"true\"]}}, periodSeconds: 1}}\n  - name: ticker\n    image: {BUSYBOX}\n    command: [sh, -c, \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done\"]\n  - name: busy\n    image: {BUSYBOX}\n    command: [sh, -c, \"while true; do :; done\"]\n    resources: {{limits: {{cpu: 100m}}}}\n  - name: chatty\n    image: {BUSYBOX}\n    command: [sh, -c, \"i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo chatty-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done; exec sleep 3600\"]\n"
        );
        create(&admin, &dir, "talker.yaml", &pod);
        // A container that fails once, then runs: its first instance's log is `--previous`.
        let again = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: again, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: d, emptyDir: {{}}}}]\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    volumeMounts: [{{name: d, mountPath: /d}}]\n    command: [sh, -c, \"n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; echo attempt-$n; [ $n -gt 1 ] && exec sleep 3600; exit 1\"]\n"
        );
        create(&admin, &dir, "again.yaml", &again);
        wait_for(Duration::from_secs(60), "talker Running", &agent, || pod_phase(&admin, "talker").filter(|p| p["status"]["phase"] == "Running"));
        let (code, body) = curl(&format!("{api}/pods"), &allowed);
        assert_eq!(code, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["kind"], "PodList");
        assert!(list["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "talker" && p["status"]["phase"] == "Running"), "{body}");
        let mut logs = String::new();
        agent.wait_until(Duration::from_secs(15), "logs", || {
            logs = curl(&format!("{api}/containerLogs/default/talker/c"), &allowed).1;
            logs.contains("line-5")
        });
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?tailLines=2"), &allowed), (200, "line-4\nline-5\n".into()));
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?limitBytes=7"), &allowed).1, "line-1\n");
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?previous=true"), &allowed).0, 400, "no previous instance yet");
        assert_eq!(curl(&format!("{api}/containerLogs/default/nope/c"), &allowed).0, 404);
        // Issue 15: a query that does not decode is a 400 (never a crash); log options
        // as upstream: 400 when they do not decode, 422 when they fail validation.
        assert_eq!(curl(&format!("{api}/pods?x=%a%C3%A9"), &allowed), (400, "invalid query string: invalid URL escape \"%a%\"\n".into()));
        assert_eq!(curl(&format!("{api}/pods?x=%C3%28"), &allowed).0, 400, "invalid UTF-8 once decoded");
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?tailLines=%zz"), &allowed), (400, "invalid query string: invalid URL escape \"%zz\"\n".into()));
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?tailLines=zz"), &allowed), (400, "{\"message\": \"Unable to decode query.\"}\n".into()));
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?tailLines=-1"), &allowed), (422, "{\"message\": \"Invalid request.\"}\n".into()));
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?tail=2"), &allowed), (200, "line-4\nline-5\n".into()));
        assert_eq!(curl(&format!("{api}/containerLogs/default/talker/c?sinceSeconds=9223372036854775807&limitBytes=7"), &allowed), (200, "line-1\n".into()));
        assert_eq!(curl(&format!("{api}/exec/default/talker/c?command=%zz&output=1"), &allowed).0, 400);
        assert_eq!(curl(&format!("{api}/portForward/default/talker?port=%8"), &allowed).0, 400);
        // The issue's raw `%aé` (UTF-8 bytes in the request line): hyper refuses the
        // request target itself (400) before any handler; the agent serves on.
        let raw = tokio::runtime::Handle::current().block_on(raw_get_status(&allowed, "/pods?x=%a\u{e9}".as_bytes()));
        assert_eq!(raw, Some(400));
        assert_eq!(curl(&format!("{api}/healthz"), &allowed), (200, "ok".into()));
        // kubectl logs through the API server, which forwards to this node's kubelet API
        // (dialled on 127.0.0.1 here: tests only talk to loopback), as kube-apiserver does.
        let (ok, out) = kubectl(&admin, &["logs", "talker", "-c", "c"]);
        assert!(ok && out == "line-1\nline-2\nline-3\nline-4\nline-5\n", "{out}");
        let (ok, out) = kubectl(&admin, &["logs", "talker", "-c", "c", "--tail=2", "--timestamps"]);
        assert!(ok && out.lines().count() == 2 && out.lines().all(|l| l.split_once(' ').map(|(t, _)| chrono::DateTime::parse_from_rfc3339(t).is_ok()).unwrap_or(false)), "{out}");
        // Without -c, kubectl picks the first container itself.
        let (ok, out) = kubectl(&admin, &["logs", "talker"]);
        assert!(ok && out.contains("line-5") && out.contains("Defaulted container \"c\""), "{out}");
        let follow = Command::new("timeout").args(["3", "kubectl", "--kubeconfig", admin.to_str().unwrap(), "logs", "-f", "talker", "-c", "ticker"]).output().unwrap();
        let followed = String::from_utf8_lossy(&follow.stdout).to_string();
        let before = curl(&format!("{api}/containerLogs/default/talker/ticker"), &allowed).1.lines().count();
        assert!(followed.lines().filter(|l| l.starts_with("tick-")).count() + 3 >= before, "kubectl logs -f streamed {followed:?}");
        // timestamps=true: each line starts with the entry's RFC3339 time.
        let (_, ts) = curl(&format!("{api}/containerLogs/default/talker/c?timestamps=true&tailLines=1"), &allowed);
        let (t, rest) = ts.split_once(' ').unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok() && rest == "line-5\n", "{ts:?}");
        // follow: what was there, then new lines as they are written.
        let before = curl(&format!("{api}/containerLogs/default/talker/ticker"), &allowed).1.lines().count();
        let (code, followed) = curl(&format!("{api}/containerLogs/default/talker/ticker?follow=true"), &[&allowed[..], &["--max-time", "3"]].concat());
        assert_eq!(code, 200, "{followed}");
        let ticks: Vec<&str> = followed.lines().filter(|l| l.starts_with("tick-")).collect();
        assert!(ticks.len() >= before + 4, "followed {ticks:?} after {before} lines");
        // Rotation: at most containerLogMaxFiles files of about containerLogMaxSize.
        let uid = pod_phase(&admin, "talker").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let dir = PathBuf::from(format!("/var/log/pods/default_talker_{uid}/chatty"));
        agent.wait_until(Duration::from_secs(30), "chatty done", || curl(&format!("{api}/containerLogs/default/talker/chatty?tailLines=1"), &allowed).1.starts_with("chatty-3000-"));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().to_string(), e.metadata().unwrap().len())).collect();
        assert!(files.len() <= 3 && files.len() >= 2, "rotated files: {files:?}");
        assert!(files.iter().all(|(_, len)| *len < 22 * 1024), "{files:?}");
        assert!(files.iter().any(|(n, _)| n == "0.log") && files.iter().any(|(n, _)| n.starts_with("0.log.")), "{files:?}");
        // /var/log/containers links, as upstream names them.
        let cid = pod_phase(&admin, "talker").unwrap()["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == "c").unwrap()["containerID"].as_str().unwrap().trim_start_matches("containerd://").to_string();
        let link = PathBuf::from(format!("/var/log/containers/talker_default_c-{cid}.log"));
        assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from(format!("/var/log/pods/default_talker_{uid}/c/0.log")));

        // /stats/summary: the busy pod's CPU and memory, as its cgroup files show them.
        let cg = |ctrl: &str, file: &str| -> u64 {
            let v1 = format!("/sys/fs/cgroup/{ctrl}/kubepods/burstable/pod{uid}/{file}");
            std::fs::read_to_string(&v1).unwrap_or_else(|e| panic!("{v1}: {e}")).trim().parse().unwrap()
        };
        let cpu_before = cg("cpuacct", "cpuacct.usage");
        assert!(cpu_before > 0);
        let (code, body) = curl(&format!("{api}/stats/summary"), &allowed);
        let mem_after = cg("memory", "memory.usage_in_bytes");
        let cpu_after = cg("cpuacct", "cpuacct.usage");
        assert_eq!(code, 200, "{body}");
        let sum: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(sum["node"]["nodeName"], NODE);
        assert!(sum["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0 && sum["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
        // The eviction manager's filesystems: nodefs, and the image and container
        // filesystems of containerd's snapshotter store; rlimit for pid.available.
        let snap = nix::sys::statvfs::statvfs("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs").unwrap();
        for fs in ["imageFs", "containerFs"] {
            let v = &sum["node"]["runtime"][fs];
            assert_eq!(v["capacityBytes"].as_u64(), Some(snap.blocks() * snap.fragment_size()), "{fs}: {v}");
            assert!(v["inodesFree"].is_u64(), "{fs}: {v}");
        }
        assert!(sum["node"]["fs"]["availableBytes"].is_u64() && sum["node"]["rlimit"]["maxpid"].as_u64().unwrap() > sum["node"]["rlimit"]["curproc"].as_u64().unwrap(), "{}", sum["node"]);
        let p = sum["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "talker").expect("talker in the summary").clone();
        let cpu = p["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap();
        // From the housekeeping's last sample (taken before the request), as cadvisor's.
        assert!(cpu > 0 && cpu <= cpu_after, "pod CPU {cpu} at most the cgroup's {cpu_after}");
        let mem = p["memory"]["usageBytes"].as_u64().unwrap();
        assert!(mem > 0 && mem.abs_diff(mem_after) < 4 << 20, "pod memory {mem} vs cgroup {mem_after}");
        assert!(p["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
        let busy = p["containers"].as_array().unwrap().iter().find(|c| c["name"] == "busy").expect("busy container").clone();
        assert!(busy["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 10_000_000, "{busy}");
        assert!(p["network"]["name"] == "eth0" && p["network"]["rxBytes"].is_u64(), "{}", p["network"]);
        // A second scrape has a rate: about 0.1 core (the limit) for the busy container.
        std::thread::sleep(Duration::from_secs(2));
        let sum: serde_json::Value = serde_json::from_str(&curl(&format!("{api}/stats/summary"), &allowed).1).unwrap();
        let p = sum["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "talker").unwrap().clone();
        let rate = p["containers"].as_array().unwrap().iter().find(|c| c["name"] == "busy").unwrap()["cpu"]["usageNanoCores"].as_u64().expect("usageNanoCores");
        assert!((20_000_000..200_000_000).contains(&rate), "busy container at {rate} nanocores under a 100m limit");
        let (code, m) = curl(&format!("{api}/metrics/resource"), &allowed);
        assert_eq!(code, 200);
        assert!(m.lines().any(|l| l.starts_with("container_cpu_usage_seconds_total{container=\"busy\",namespace=\"default\",pod=\"talker\"}")), "{m}");
        assert!(m.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"talker\"}"), "{m}");
        assert!(m.lines().any(|l| l.starts_with("container_start_time_seconds{container=\"busy\",namespace=\"default\",pod=\"talker\"} ")), "{m}");
        // /metrics/cadvisor: cadvisor's series for the root, the pod and the busy
        // container, equal to the container's cgroup files.
        let bid = pod_phase(&admin, "talker").unwrap()["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == "busy").unwrap()["containerID"].as_str().unwrap().trim_start_matches("containerd://").to_string();
        let (code, m) = curl(&format!("{api}/metrics/cadvisor"), &allowed);
        assert_eq!(code, 200, "{m}");
        let sample = |name: &str, labels: &[&str]| -> f64 {
            let line = m.lines().find(|l| (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))) && labels.iter().all(|x| l.contains(x))).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{m}"));
            line.rsplit(' ').nth(1).unwrap().parse().unwrap()
        };
        let bimage = pod_phase(&admin, "talker").unwrap()["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == "busy").unwrap()["image"].as_str().unwrap().to_string();
        let busy_owned = [r#"container="busy""#.to_string(), format!(r#"id="/kubepods/burstable/pod{uid}/{bid}""#), format!(r#"image="{bimage}""#), format!(r#"name="{bid}""#), r#"namespace="default""#.into(), r#"pod="talker""#.into()];
        let busy_l: Vec<&str> = busy_owned.iter().map(|s| s.as_str()).collect();
        let cgc = |ctrl: &str, file: &str| -> f64 { std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/kubepods/burstable/pod{uid}/{bid}/{file}")).unwrap().trim().parse().unwrap() };
        let cpu = sample("container_cpu_usage_seconds_total", &[&busy_l[..], &[r#"cpu="total""#][..]].concat());
        assert!(cpu > 0.01 && cpu <= cgc("cpuacct", "cpuacct.usage") / 1e9, "busy cpu {cpu}");
        assert_eq!(sample("container_threads", &busy_l), cgc("pids", "pids.current"), "container_threads is pids.current");
        assert_eq!(sample("container_processes", &busy_l), 1.0, "the busy loop is one process");
        assert!(sample("container_memory_working_set_bytes", &busy_l) > 0.0);
        let pod_id = format!(r#"id="/kubepods/burstable/pod{uid}""#);
        assert!(sample("container_memory_usage_bytes", &[r#"container="""#, &pod_id, r#"pod="talker""#]) > 0.0, "the pod cgroup's series");
        assert!(sample("container_cpu_usage_seconds_total", &[r#"id="/""#]) > 0.0, "the root cgroup's series");
        assert!(sample("machine_memory_bytes", &[]) > 0.0);
        let (code, cz) = curl(&format!("{api}/configz"), &allowed);
        let cz: serde_json::Value = serde_json::from_str(&cz).unwrap_or_default();
        assert_eq!(code, 200);
        let kc = &cz["kubeletconfig"];
        assert_eq!((kc["port"].as_i64(), kc["maxPods"].as_i64(), kc["containerLogMaxFiles"].as_i64()), (Some(10250), Some(110), Some(3)), "{cz}");
        assert_eq!(kc["authentication"]["x509"]["clientCAFile"], ca_s.as_str());
        assert_eq!(kc["authorization"]["mode"], "Webhook");
        assert_eq!(curl(&format!("{api}/stats/summary"), &viewer).1, "Forbidden (user=viewer, verb=get, resource=nodes, subresource=stats)\n");
        assert_eq!(curl(&format!("{api}/no/such/path"), &allowed).0, 404);
        // A request head past Go's 1 MiB limit gets 431 (the client can send it all
        // and read the answer), one under it is served, and the server goes on.
        let rt = tokio::runtime::Handle::current();
        for (size, want) in [(8 << 20, 431), (2 << 20, 431), (1000 << 10, 200)] {
            assert_eq!(rt.block_on(big_header_status(&allowed, size)), Some(want), "a {size}-byte header");
        }
        assert_eq!(curl(&format!("{api}/healthz"), &allowed), (200, "ok".into()));

        // /run: a command's combined output (POST, cmd split on spaces).
        let post: Vec<&str> = allowed.iter().copied().chain(["-X", "POST"]).collect();
        let (code, out) = curl(&format!("{api}/run/default/talker/c?cmd=echo%20ran%20inside"), &post);
        assert_eq!((code, out.as_str()), (200, "ran inside\n"));
        assert_eq!(curl(&format!("{api}/run/default/talker/c?cmd=true"), &allowed).0, 405, "GET is not allowed");
        assert_eq!(curl(&format!("{api}/run/default/nope/c?cmd=true"), &post), (404, "pod does not exist\n".to_string()));
        assert_eq!(curl(&format!("{api}/run/default/talker/c?cmd=true"), &viewer.iter().copied().chain(["-X", "POST"]).collect::<Vec<_>>()).1, "Forbidden (user=viewer, verb=create, resource=nodes, subresource=proxy)\n");

        // /metrics: upstream's kubelet metric names, with what this node did.
        let (code, m) = curl(&format!("{api}/metrics"), &allowed);
        assert_eq!(code, 200, "{m}");
        let value = |m: &str, series: &str| m.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()));
        assert_eq!(value(&m, &format!("kubelet_node_name{{node=\"{NODE}\"}}")), Some(1.0), "{m}");
        assert!(value(&m, "kubelet_running_pods").unwrap_or(0.0) >= 1.0, "{m}");
        assert!(value(&m, "kubelet_running_containers{container_state=\"running\"}").unwrap_or(0.0) >= 4.0, "{m}");
        assert!(value(&m, "kubelet_pod_start_duration_seconds_count").unwrap_or(0.0) >= 1.0, "{m}");
        for op in ["run_podsandbox", "create_container", "start_container"] {
            assert!(value(&m, &format!("kubelet_runtime_operations_total{{operation_type=\"{op}\"}}")).unwrap_or(0.0) >= 1.0, "{op}: {m}");
        }
        assert_eq!(curl(&format!("{api}/metrics"), &viewer).1, "Forbidden (user=viewer, verb=get, resource=nodes, subresource=metrics)\n");
        // previous: the instance before the running one (the backoff after the first
        // exit is 10 s, so it has restarted by now or soon).
        wait_for(Duration::from_secs(60), "again restarted and running", &agent, || {
            pod_phase(&admin, "again").and_then(|p| p["status"]["containerStatuses"][0].as_object().cloned()).filter(|c| c["restartCount"] == 1 && c["state"]["running"].is_object())
        });
        let (ok, out) = kubectl(&admin, &["logs", "again", "--previous"]);
        assert!(ok && out == "attempt-1\n", "kubectl logs --previous: {out:?}");
        let (ok, out) = kubectl(&admin, &["logs", "again"]);
        assert!(ok && out == "attempt-2\n", "kubectl logs: {out:?}");
        assert_eq!(curl(&format!("{api}/containerLogs/default/again/c?previous=true&timestamps=true"), &allowed).1.split_once(' ').map(|(_, l)| l.to_string()), Some("attempt-1\n".into()));

        // Slow clients hold only their own connections: 50 that never start TLS, 5
        // that stop mid-request-head, 3 following a log without reading. Meanwhile
        // other clients are served and the pod worker keeps probing (below).
        let slow = rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
            for _ in 0..50 {
                held.push(Box::new(tokio::net::TcpStream::connect("127.0.0.1:10250").await.unwrap()));
            }
            for i in 0..8 {
                let mut tls = kubelet_tls(&allowed).await;
                let req: &[u8] = if i < 5 { b"GET /healthz HTTP/1.1\r\nHost: 127.0" } else { b"GET /containerLogs/default/talker/ticker?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" };
                tls.write_all(req).await.unwrap();
                held.push(Box::new(tls));
            }
            held
        });
        for _ in 0..10 {
            assert_eq!(curl(&format!("{api}/healthz"), &allowed), (200, "ok".into()), "served next to slow clients");
        }
        assert_eq!(curl(&format!("{api}/pods"), &allowed).0, 200);
        // /metrics/probes: the readiness probe of container c, counted by result.
        let (code, m) = curl(&format!("{api}/metrics/probes"), &allowed);
        assert_eq!(code, 200, "{m}");
        let series = |m: &str| m.lines().find(|l| l.starts_with("prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"c\",pod=\"talker\",namespace=\"default\"")).map(String::from);
        assert!(series(&m).is_some(), "{m}");
        let count = |l: String| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let first = count(series(&m).unwrap());
        std::thread::sleep(Duration::from_millis(2500));
        let again = count(series(&curl(&format!("{api}/metrics/probes"), &allowed).1).unwrap());
        assert!(again > first, "the probe counter rises with each probe ({first} -> {again})");
        drop(slow);
    });
    let reviews = srv.requests().iter().filter(|r| r.resource == "subjectaccessreviews" && r.verb == "create").count();
    assert!(reviews >= 2, "authorization went through SubjectAccessReviews ({reviews})");
    assert_api_clean(&srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_server_tls_bootstrap_serves_a_cluster_signed_certificate_once_approved() {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/k2-api");
    std::fs::create_dir_all(&dir).unwrap();
    let srv = TestApiServer::start(Options { kubelet_api_users: vec!["apiserver-kubelet-client".into()], ..Options::default() }).await.unwrap();
    let node = dir.join("node.kubeconfig");
    srv.write_kubeconfig(&node, &User::Node(NODE.to_string())).unwrap();
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, srv.ca_pem()).unwrap();
    let (node_s, ca_s) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let agent = tokio::task::block_in_place(|| Agent::with_options("k2", &[], &["--kubeconfig", &node_s, "--client-ca-file", &ca_s, "--rotate-server-certificates"]));
    let (crt, key) = write_cert(&srv, &dir, "apiserver-kubelet-client");
    let verified = |path: &str| -> (u16, String) {
        // Verified against the cluster CA, for the node's DNS name: no -k.
        let out = Command::new("curl")
            .args(["-s", "--noproxy", "*", "--max-time", "5", "-w", "\n%{http_code}", "--cacert", &ca_s, "--resolve", &format!("{NODE}:10250:127.0.0.1")])
            .args(["--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .arg(format!("https://{NODE}:10250{path}"))
            .output()
            .expect("curl");
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    tokio::task::block_in_place(|| {
        let csr = wait_for(Duration::from_secs(30), "a kubelet-serving CSR", &agent, || {
            srv.list("certificatesigningrequests", None).into_iter().find(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving")
        });
        let usages: Vec<&str> = csr["spec"]["usages"].as_array().unwrap().iter().filter_map(|u| u.as_str()).collect();
        assert_eq!(usages, ["digital signature", "server auth"]);
        assert_eq!(csr["spec"]["username"], format!("system:node:{NODE}"));
        // Not approved yet: no certificate to present, the handshake fails.
        assert_eq!(verified("/healthz").0, 0);
        srv.approve_csr(csr["metadata"]["name"].as_str().unwrap()).unwrap();
        agent.wait_until(Duration::from_secs(20), "the cluster-signed serving certificate", || verified("/healthz") == (200, "ok".into()));
        let current = agent.state_dir().join("pki/kubelet-server-current.pem");
        let target = std::fs::read_link(&current).expect("kubelet-server-current.pem is a symlink");
        assert!(target.file_name().unwrap().to_string_lossy().starts_with("kubelet-server-20"), "{target:?}");
    });
    assert_api_clean(&srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_stats_summary_has_cpu_rates_right_after_a_start_and_later() {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/k3-api");
    let KubeletApi { srv, ca, node, .. } = kubelet_api_server(&dir).await;
    let (node_s, ca_s) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("k3", &[], &["--kubeconfig", &node_s, "--client-ca-file", &ca_s]));
    let (crt, key) = write_cert(&srv, &dir, "apiserver-kubelet-client");
    let (crt, key) = (crt.display().to_string(), key.display().to_string());
    let summary = || {
        let (code, body) = curl("https://127.0.0.1:10250/stats/summary", &["--cert", &crt, "--key", &key]);
        (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    tokio::task::block_in_place(|| {
        agent.write_manifest(
            "cpu.yaml",
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: cpu}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: busy, image: \"{BUSYBOX}\", command: [sh, -c, 'while :; do :; done']}}\n  - {{name: idle, image: \"{BUSYBOX}\", command: [sleep, \"3600\"]}}\n"),
        );
        agent.wait_pod("cpu", Duration::from_secs(60), "both containers running", |p| {
            let cs = p.status.as_ref()?.container_statuses.as_ref()?;
            (cs.len() == 2 && cs.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))).then_some(())
        });
        // A new agent: its first summaries already carry rates.
        agent.kill9();
        agent.start();
        agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl("https://127.0.0.1:10250/healthz", &[]).0 != 0);
        let check = |s: &serde_json::Value, when: &str| {
            let rate = |v: &serde_json::Value| v["cpu"]["usageNanoCores"].as_u64();
            assert!(rate(&s["node"]).is_some(), "{when}: node usageNanoCores: {}", s["node"]["cpu"]);
            let pods_sys = s["node"]["systemContainers"].as_array().unwrap().iter().find(|c| c["name"] == "pods").cloned().unwrap();
            assert!(rate(&pods_sys).is_some(), "{when}: the pods system container: {pods_sys}");
            let pod = s["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == format!("cpu-{NODE}")).unwrap_or_else(|| panic!("{when}: pod listed: {s}"));
            assert!(rate(pod).is_some(), "{when}: pod usageNanoCores: {}", pod["cpu"]);
            let containers = pod["containers"].as_array().unwrap();
            assert_eq!(containers.len(), 2, "{when}: {pod}");
            for c in containers {
                assert!(rate(c).is_some(), "{when}: {} usageNanoCores: {}", c["name"], c["cpu"]);
            }
            let busy = containers.iter().find(|c| c["name"] == "busy").map(rate).unwrap().unwrap();
            println!("{when}: busy container {busy} nanocores, node {}", rate(&s["node"]).unwrap());
            assert!((600_000_000..=1_300_000_000).contains(&busy), "{when}: a busy loop uses about one core: {busy}");
            let idle = containers.iter().find(|c| c["name"] == "idle").map(rate).unwrap().unwrap();
            assert!(idle < 50_000_000, "{when}: a sleeping container uses next to none: {idle}");
        };
        let first = wait_for(Duration::from_secs(5), "first summary", &agent, summary);
        check(&first, "right after the start");
        std::thread::sleep(Duration::from_secs(20));
        check(&summary().unwrap(), "20 s later");
        agent.remove_manifest("cpu.yaml");
    });
    assert_api_clean(&srv);
}

/// curl's exit code and `-w` output for a TLS handshake with `extra` options.
fn curl_tls(url: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sk", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
}

/// The subject of the certificate served on `addr` (openssl s_client).
fn served_subject(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("timeout 10 openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -subject"))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Kills a process this test started, by PID, when dropped.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_tls_min_version_cipher_suites_and_configured_certificate() {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/k4-api");
    let KubeletApi { srv: _srv, ca, node, .. } = kubelet_api_server(&dir).await;
    let (node_s, ca_s) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    // A serving pair of the test's own (ECDSA P-256, CN rk-configured-serving).
    let (crt, key) = (dir.join("serving.crt"), dir.join("serving.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=rk-configured-serving"])
        .args(["-keyout", key.to_str().unwrap(), "-out", crt.to_str().unwrap()])
        .output()
        .expect("openssl req");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("k4", &[], &["--kubeconfig", &node_s, "--client-ca-file", &ca_s]));
    let api = "https://127.0.0.1:10250/healthz";
    let old_tls = ["--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT:@SECLEVEL=0"];
    tokio::task::block_in_place(|| {
        agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl(api, &[]).0 != 0);
        // Control: this curl does speak TLS 1.1 (to an openssl server on loopback that allows it).
        let port = 18000 + std::process::id() % 1000;
        let ctl = Killed(
            Command::new("openssl")
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert", &crt_s, "-key", &key_s, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-www"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        let control = format!("https://127.0.0.1:{port}/");
        agent.wait_until(Duration::from_secs(10), "the TLS 1.1 control server answers", || curl_tls(&control, &old_tls) == (0, "200".into()));
        drop(ctl);
        // Default: TLS 1.1 refused, TLS 1.2 and 1.3 served; the self-signed certificate.
        let (rc, code) = curl_tls(api, &old_tls);
        assert!(rc != 0 && code == "000", "TLS 1.1 must be refused by default: curl exit {rc}, code {code}");
        assert_ne!(curl_tls(api, &["--tlsv1.2", "--tls-max", "1.2"]).1, "000", "TLS 1.2 served");
        assert_ne!(curl_tls(api, &["--tlsv1.3"]).1, "000", "TLS 1.3 served");
        assert!(served_subject("127.0.0.1:10250").contains(&format!("CN = {NODE}@")), "self-signed: {}", served_subject("127.0.0.1:10250"));

        // tlsCertFile/tlsPrivateKeyFile and one TLS 1.2 suite.
        agent.stop();
        agent.set_args(&["--kubeconfig", &node_s, "--client-ca-file", &ca_s, "--tls-cert-file", &crt_s, "--tls-private-key-file", &key_s, "--tls-cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]);
        agent.start();
        agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl(api, &[]).0 != 0);
        assert_eq!(served_subject("127.0.0.1:10250"), "subject=CN = rk-configured-serving");
        let tls12 = |cipher: &str| curl_tls(api, &["--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher]);
        assert_ne!(tls12("ECDHE-ECDSA-AES256-GCM-SHA384").1, "000", "the configured suite is served");
        assert_eq!(tls12("ECDHE-ECDSA-AES128-GCM-SHA256").1, "000", "another TLS 1.2 suite is refused");
        assert_ne!(curl_tls(api, &["--tlsv1.3"]).1, "000", "TLS 1.3 suites stay on, as in Go");

        // tlsMinVersion VersionTLS13: TLS 1.2 refused.
        agent.stop();
        agent.set_args(&["--kubeconfig", &node_s, "--client-ca-file", &ca_s, "--tls-min-version", "VersionTLS13"]);
        agent.start();
        agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl(api, &[]).0 != 0);
        assert_eq!(curl_tls(api, &["--tlsv1.2", "--tls-max", "1.2"]).1, "000", "TLS 1.2 refused under VersionTLS13");
        assert_ne!(curl_tls(api, &["--tlsv1.3"]).1, "000", "TLS 1.3 served");

        // A bad name stops the agent with upstream's message (exit 64).
        agent.stop();
        agent.set_args(&["--kubeconfig", &node_s, "--tls-cipher-suites", "TLS_NOT_A_SUITE"]);
        agent.start();
        agent.wait_until(Duration::from_secs(20), "the agent exits", || agent.log_tail(20).contains("Cipher suite TLS_NOT_A_SUITE not supported or doesn't exist"));
    });
}
